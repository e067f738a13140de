//! `runner run | plan | status | report | exec`.

use anyhow::Context;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use runner::plan::{self, Plan};
use runner::sched::{self, LocalOptions, SlurmOptions};
use runner::spec;
use runner::store::{self, ProgressSnapshot, ResultsDir, StageState, StageStatus};
use std::collections::{BTreeSet, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ExitError;

#[derive(Args, Debug)]
pub struct SpecArgs {
    /// The experiment spec (TOML).
    pub spec: PathBuf,
    /// Override a key: `--set stage.align.lr=5e-4` (repeatable; after RUNNER_* variables).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Results directory (default: results/<experiment name>).
    #[arg(long)]
    pub results: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// auto | cpu | cuda:0,1,...
    #[arg(long, default_value = "auto")]
    pub devices: String,
    #[arg(long, default_value_t = 1)]
    pub jobs_per_device: usize,
    /// local | slurm (resources from the spec's `[slurm]` table; `--set slurm.time=2:00:00`)
    #[arg(long, default_value = "local")]
    pub backend: String,
    /// Stop starting new stages after the first failure.
    #[arg(long)]
    pub fail_fast: bool,
}

fn load_plan(args: &SpecArgs, lenient: bool) -> anyhow::Result<(spec::LoadedSpec, Plan, ResultsDir)> {
    let loaded = spec::load(&args.spec, &args.sets)?;
    let ctx = runner::methods::Registry::new(&args.spec);
    let plan = if lenient { plan::build_lenient(&loaded, &ctx)? } else { plan::build(&loaded, &ctx)? };
    let root = args.results.clone().unwrap_or_else(|| PathBuf::from("results").join(&plan.experiment));
    // Absolute, so that what stage processes read from earlier stages (`@stage` datasets,
    // adapters) does not depend on their working directory.
    let root = std::path::absolute(&root).with_context(|| format!("results directory {}", root.display()))?;
    Ok((loaded, plan, ResultsDir::new(root)))
}

/// Writes `spec.toml`, `plan.json`, and each stage's `stage.toml` and each run's `run.toml`.
fn write_plan(loaded: &spec::LoadedSpec, plan: &Plan, results: &ResultsDir) -> anyhow::Result<()> {
    results.create()?;
    store::write_file(&results.root.join("spec.toml"), toml::to_string(&loaded.document)?.as_bytes())?;
    store::write_json(&results.plan_path(), plan)?;
    for s in &plan.stages {
        let dir = results.stage_dir(&s.id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        store::write_file(&results.stage(&s.id).config(), toml::to_string(&s.config)?.as_bytes())?;
    }
    for r in &plan.runs {
        let dir = results.run_dir(&r.run_id);
        std::fs::create_dir_all(&dir)?;
        store::write_file(&dir.join("run.toml"), toml::to_string(r)?.as_bytes())?;
    }
    Ok(())
}

pub fn plan_cmd(args: SpecArgs) -> anyhow::Result<()> {
    let (_loaded, plan, results) = load_plan(&args, true)?;
    let states = plan::done_stages(&plan, &results);
    println!("experiment {}: {} runs, {} stages -> {}", plan.experiment, plan.runs.len(), plan.stages.len(), results.root.display());
    println!("\nruns:");
    let keys: Vec<String> = plan.runs.first().map(|r| r.params.keys().cloned().collect()).unwrap_or_default();
    println!("  {:<16} {}", "run", keys.join("  "));
    for r in &plan.runs {
        let vals: Vec<String> = keys
            .iter()
            .map(|k| match r.params.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            })
            .collect();
        println!("  {:<16} {}", r.run_id, vals.join("  "));
    }
    println!("\nstages:");
    for s in &plan.stages {
        let state = states.get(&s.id).copied().unwrap_or(StageState::Pending);
        let after = s.depends_on.first().map(|d| format!(" after {d}")).unwrap_or_default();
        println!(
            "  {:<28} {:<6} {:<10} {:?}{after}  shared by {} run(s)",
            s.id,
            s.config.kind.to_string(),
            s.config.method.clone().unwrap_or_default(),
            state,
            s.runs.len()
        );
    }
    let (shared, unshared) = plan.execution_counts();
    let done = states.values().filter(|s| **s == StageState::Done).count();
    println!("\n{shared} stage executions with sharing ({unshared} without); {done} already done, {} to run", shared - done);
    if !plan.missing_inputs.is_empty() {
        println!("\nnot available on this machine (`runner run` needs them):");
        for m in &plan.missing_inputs {
            println!("  {m}");
        }
    }
    Ok(())
}

struct SweepProgress<'a> {
    bar: ProgressBar,
    _multi: MultiProgress,
    /// When stderr is not a terminal (the bar is hidden then): plain lines for logs.
    plain: Option<PlainLines>,
    /// The sweep, to refresh the results page whenever a stage finishes.
    plan: &'a Plan,
    results: ResultsDir,
}

/// Writes the results page from the stages' current state. A page that cannot be written is
/// worth a warning, never a failed sweep.
fn refresh_page(plan: &Plan, results: &ResultsDir) {
    let written = runner::results::collect_rows(plan, results)
        .map_err(runner::results::ResultsError::from)
        .and_then(|rows| runner::results::write_page(plan, results, &rows));
    if let Err(e) = written {
        tracing::warn!("results page not refreshed: {e}");
    }
}

/// Plain progress lines at a steady interval: the sweep's counts and each running stage's
/// `progress.json`.
struct PlainLines {
    every: Duration,
    results: ResultsDir,
    last: Mutex<Option<Instant>>,
    running: Mutex<BTreeSet<String>>,
}

/// A line on stderr; a closed stderr must not stop the sweep.
fn log_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

impl PlainLines {
    fn report(&self, done: usize, running: usize, failed: usize, pending: usize) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        *last = Some(Instant::now());
        log_line(&format!("sweep: done {done} | running {running} | failed {failed} | pending {pending}"));
        for id in self.running.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            match ProgressSnapshot::read(&self.results.stage_dir(id)) {
                Some(p) => log_line(&format!("  {}", p.line(id))),
                None => log_line(&format!("  stage {id}: starting")),
            }
        }
    }
}

impl sched::Progress for SweepProgress<'_> {
    fn started(&self, stage: &str, place: &str) {
        let line = format!("start  {stage} on {place}");
        match &self.plain {
            Some(plain) => {
                plain.running.lock().unwrap_or_else(|e| e.into_inner()).insert(stage.to_string());
                log_line(&line);
            }
            None => self.bar.println(line),
        }
        tracing::info!(stage, place, "stage started");
    }
    fn finished(&self, stage: &str, state: StageState) {
        self.bar.inc(1);
        let line = format!("{:<6} {stage}", format!("{state:?}").to_lowercase());
        match &self.plain {
            Some(plain) => {
                plain.running.lock().unwrap_or_else(|e| e.into_inner()).remove(stage);
                log_line(&line);
            }
            None => self.bar.println(line),
        }
        tracing::info!(stage, ?state, "stage finished");
        refresh_page(self.plan, &self.results);
    }
    fn tick(&self, done: usize, running: usize, failed: usize, pending: usize) {
        self.bar.set_message(format!("done {done} | running {running} | failed {failed} | pending {pending}"));
        if let Some(plain) = &self.plain {
            plain.report(done, running, failed, pending);
        }
    }
}

/// Parses every file dataset that a stage still to run reads, before the first stage starts:
/// a malformed row fails now, naming file, row and field, not after hours of training.
/// Datasets written by earlier generate stages (`@stage`) do not exist yet and are not in
/// `config.data`.
fn check_datasets(plan: &Plan, results: &ResultsDir) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for s in &plan.stages {
        if results.stage_status(&s.id).is_ok_and(|st| st.is_done()) {
            continue;
        }
        for (name, table) in &s.config.data {
            if table.contains_key(runner::data::STAGE_KEY) {
                continue;
            }
            if !seen.insert(format!("{name}:{}", serde_json::to_string(table)?)) {
                continue;
            }
            let spec = runner::methods::params::parse::<runner::data::DataSpec>(table)
                .map_err(|e| ExitError::invalid(format!("data.{name}: key `{}`: {}", e.key, e.msg)))?;
            runner::data::load_named(name, &spec, Path::new("/"))
                .with_context(|| format!("dataset `{name}` (read by stage {})", s.config.name))?;
        }
    }
    Ok(())
}

/// Seconds between two reads of the Slurm queue: `RUNNER_SLURM_POLL_SECS`, 5 by default.
fn slurm_poll_interval(var: Option<&str>) -> anyhow::Result<Duration> {
    match var {
        None => Ok(Duration::from_secs(5)),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.1)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| ExitError::invalid(format!("RUNNER_SLURM_POLL_SECS={v:?}: expected seconds (at least 0.1)")).into()),
    }
}

pub fn run_cmd(args: RunArgs) -> anyhow::Result<()> {
    let slurm = match args.backend.as_str() {
        "local" => false,
        "slurm" => true,
        other => return Err(ExitError::invalid(format!("--backend {other}: expected local or slurm")).into()),
    };
    if args.jobs_per_device == 0 {
        return Err(ExitError::invalid("--jobs-per-device 0: at least one job per device").into());
    }
    // Slurm places the stages itself (`[slurm]` gpus, cpus); `--devices` is the local backend's.
    let devices = if slurm { Vec::new() } else { sched::parse_devices(&args.devices).map_err(ExitError::invalid)? };
    let poll = slurm_poll_interval(std::env::var("RUNNER_SLURM_POLL_SECS").ok().as_deref())?;
    let (loaded, plan, results) = load_plan(&args.spec, false)?;
    check_datasets(&plan, &results)?;
    let _lock = results.lock()?;
    write_plan(&loaded, &plan, &results)?;
    let exe = std::env::current_exe().context("locating the runner executable")?;
    let multi = MultiProgress::new();
    let bar = multi.add(ProgressBar::new(plan.stages.len() as u64));
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} stages  {msg}  (eta {eta})").expect("valid template"),
    );
    let plain = (!std::io::stderr().is_terminal()).then(|| PlainLines {
        every: store::progress::line_interval(std::env::var("RUNNER_PROGRESS_SECS").ok().as_deref()),
        results: results.clone(),
        last: Mutex::new(None),
        running: Mutex::new(BTreeSet::new()),
    });
    refresh_page(&plan, &results);
    let progress = SweepProgress { bar, _multi: multi, plain, plan: &plan, results: results.clone() };
    let outcome = if slurm {
        let opts = SlurmOptions {
            resources: loaded.spec.slurm.clone(),
            stage_resources: loaded.spec.stage_resources(),
            fail_fast: args.fail_fast,
            exe,
            poll,
        };
        sched::run_slurm(&plan, &results, &opts, &progress)?
    } else {
        let opts = LocalOptions { devices, jobs_per_device: args.jobs_per_device, fail_fast: args.fail_fast, exe };
        sched::run_local(&plan, &results, &opts, &progress)?
    };
    progress.bar.finish();
    let rows = runner::results::write_run_results(&plan, &results)?;
    // The page also shows why a report could not be written, so it is written either way.
    let reports = runner::results::write_reports(&results, &rows, &plan.report);
    runner::results::write_page(&plan, &results, &rows)?;
    reports?;
    let failed = rows.iter().filter(|r| r.status == runner::report::RunStatus::Failed).count();
    // `run` keeps SIGPIPE ignored (see `dies_on_closed_pipe`): a closed stdout is not an error.
    let _ = writeln!(
        std::io::stdout(),
        "{} stages run, {} reused, {} failed; {} of {} runs done; results in {}",
        outcome.executed.len(),
        outcome.reused.len(),
        outcome.failed.len(),
        rows.iter().filter(|r| r.status == runner::report::RunStatus::Done).count(),
        rows.len(),
        results.root.display()
    );
    if outcome.interrupted {
        return Err(ExitError::interrupted("interrupted; run the same command again to resume").into());
    }
    if failed > 0 {
        return Err(ExitError::failed(format!("{failed} run(s) failed; see `runner status {}`", results.root.display())).into());
    }
    Ok(())
}

pub fn status_cmd(dir: &Path) -> anyhow::Result<()> {
    let results = ResultsDir::new(dir);
    let plan: Plan =
        store::read_json(&results.plan_path()).with_context(|| format!("{} is not a results directory (no plan.json)", dir.display()))?;
    println!("experiment {} in {}", plan.experiment, dir.display());
    // What the Slurm backend last saw of the tasks it waits on (absent for the local backend).
    let queue: std::collections::BTreeMap<String, String> = store::read_json(&sched::slurm::queue_path(&results)).unwrap_or_default();
    for s in &plan.stages {
        let st = StageStatus::read(&results.stage_dir(&s.id))?;
        let reason = match (st.state, queue.get(&s.id)) {
            (StageState::Pending | StageState::Running, Some(line)) => format!("  {line}"),
            _ => st.reason.as_deref().map(|r| format!("  {}", r.lines().next().unwrap_or(""))).unwrap_or_default(),
        };
        println!("  {:<28} {:<12}{reason}", s.id, format!("{:?}", st.state).to_lowercase());
    }
    let rows = runner::results::collect_rows(&plan, &results)?;
    for r in &rows {
        let err = r.error.as_deref().map(|e| format!("  {}", e.lines().next().unwrap_or(""))).unwrap_or_default();
        println!("  run {:<16} {:<10}{err}", r.run_id, format!("{:?}", r.status).to_lowercase());
    }
    Ok(())
}

pub fn report_cmd(dir: &Path) -> anyhow::Result<()> {
    let results = ResultsDir::new(dir);
    let plan: Plan =
        store::read_json(&results.plan_path()).with_context(|| format!("{} is not a results directory (no plan.json)", dir.display()))?;
    let rows = runner::results::write_run_results(&plan, &results)?;
    let reports = runner::results::write_reports(&results, &rows, &plan.report);
    let page = runner::results::write_page(&plan, &results, &rows)?;
    for f in reports? {
        println!("{}", f.display());
    }
    println!("{}", page.display());
    Ok(())
}

pub fn exec_cmd(dir: &Path) -> anyhow::Result<()> {
    // Stopped by the scheduler, or by the kernel when the runner died: record it, then exit.
    sched::record_interruption_on_signal(dir).context("installing the stage's signal handler")?;
    runner::exec::exec_stage(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_poll_interval_from_the_environment() {
        assert_eq!(slurm_poll_interval(None).unwrap(), Duration::from_secs(5));
        assert_eq!(slurm_poll_interval(Some("0.5")).unwrap(), Duration::from_millis(500));
        for bad in ["0", "-1", "soon", "NaN"] {
            assert!(slurm_poll_interval(Some(bad)).is_err(), "{bad}");
        }
    }
}
