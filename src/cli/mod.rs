//! Command-line surface: raw arguments (clap) are validated into library calls here.

mod bench;
mod experiment;
mod generate;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "Runs LLM safety-alignment experiments from TOML specs, on candle.",
    after_help = "Exit status: 0 all done, 1 some runs failed (or another error), 2 invalid spec, data or \
                  arguments, 130 interrupted (Ctrl-C or SIGTERM; run the same command again to resume)."
)]
pub struct Cli {
    /// More logging (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Expand the sweep, run every stage not done yet, and write tables and figures.
    Run(experiment::RunArgs),
    /// Show the expanded runs, the stage graph with sharing, and what is already done.
    Plan(experiment::SpecArgs),
    /// State of every stage and run in a results directory.
    Status { results: std::path::PathBuf },
    /// Rebuild the summary, tables and figures from whatever has finished.
    Report { results: std::path::PathBuf },
    /// Internal: run one stage in this process.
    #[command(hide = true)]
    Exec { stage_dir: std::path::PathBuf },
    /// Generate text with a model (a directory, a .gguf file or a hub id in the local HF cache).
    Generate(generate::GenerateArgs),
    /// Throughput benchmarks (tokens/s) of training steps and generation.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Exit status: some runs failed, or any error not covered by the others.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: the spec, a dataset or a command-line value is invalid (also clap's usage errors).
pub const EXIT_INVALID: i32 = 2;
/// Exit status: stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// An error that carries its own exit status.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct ExitError {
    pub code: i32,
    pub msg: String,
}

impl ExitError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ExitError { code: EXIT_INVALID, msg: msg.into() }
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        ExitError { code: EXIT_FAILED, msg: msg.into() }
    }
    pub fn interrupted(msg: impl Into<String>) -> Self {
        ExitError { code: EXIT_INTERRUPTED, msg: msg.into() }
    }
}

/// The exit status for an error: an [`ExitError`]'s own, 2 for an invalid spec or dataset
/// anywhere in the chain of causes, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(x) = cause.downcast_ref::<ExitError>() {
            return x.code;
        }
        if cause.is::<runner::spec::SpecError>() || cause.is::<runner::data::DataError>() {
            return EXIT_INVALID;
        }
    }
    EXIT_FAILED
}

/// Whether a command's output is its purpose (a listing a reader may stop reading early, as
/// `head` does). Such commands die quietly of SIGPIPE like other Unix tools; `run` and `exec`
/// keep the default Rust behaviour (writes fail instead), so a closed pipe never kills a sweep.
pub fn dies_on_closed_pipe(command: &Command) -> bool {
    !matches!(command, Command::Run(_) | Command::Exec { .. })
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => experiment::run_cmd(args),
        Command::Plan(args) => experiment::plan_cmd(args),
        Command::Status { results } => experiment::status_cmd(&results),
        Command::Report { results } => experiment::report_cmd(&results),
        Command::Exec { stage_dir } => experiment::exec_cmd(&stage_dir),
        Command::Generate(args) => generate::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
