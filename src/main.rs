//! The `runner` binary: argument parsing and error reporting only; the work is in the library.

mod cli;

use clap::Parser;

fn main() {
    keep_freed_memory();
    let args = cli::Cli::parse();
    if cli::dies_on_closed_pipe(&args.command) {
        restore_sigpipe();
    }
    // A stage's stderr is its log file: it logs at info level by default.
    let verbose = if matches!(args.command, cli::Command::Exec { .. }) { args.verbose.max(1) } else { args.verbose };
    cli::init_logging(verbose);
    let computes = matches!(args.command, cli::Command::Exec { .. } | cli::Command::Generate(_) | cli::Command::Bench(_));
    if computes {
        fix_thread_count();
    }
    let result = if computes { on_rayon_worker(|| cli::dispatch(args)) } else { cli::dispatch(args) };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(cli::exit_code(&e));
    }
}

/// Rust ignores SIGPIPE, so `println!` to a closed pipe (`runner status DIR | head -1`) panics.
/// With the default action the process ends quietly instead, as `cat` does.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// candle looks up its thread count before every matrix product; unless `RAYON_NUM_THREADS` is
/// set, that reads and parses /proc/cpuinfo each time (4% of a generation step in `perf`). The
/// processes that compute set it once, to the count candle would find. `runner run` does not:
/// its scheduler reads a `RAYON_NUM_THREADS` of its own environment as the user's choice.
///
/// They also shorten how long candle's element-wise workers spin before they sleep (25,000
/// pauses by default, 1,000 here) unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set: the matrix
/// products run on rayon's threads, and a candle worker still spinning after an element-wise op
/// takes a core from them (15% of the CPU samples of a SmolLM2 LoRA step on 2 cores in `perf`;
/// 1,000 measured 17% faster there, docs/performance.md).
fn fix_thread_count() {
    // Before any thread that reads the environment is started (logging has none).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}

/// Runs `work` on a thread of rayon's pool, which then does the matrix products' first share
/// itself. From any other thread, each product (`gemm` splits it over rayon) parks the caller
/// and wakes it at the end: two context switches per product, a few thousand per training step.
fn on_rayon_worker<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    // candle's backward walks the graph recursively: the main thread's 8 MiB, not rayon's 2.
    match rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global() {
        Ok(()) => rayon::scope(|_| work()),
        // Only if something started rayon's pool first: the work still runs, just slower.
        Err(e) => {
            tracing::warn!("rayon's pool was already started ({e}); matrix products park the main thread");
            work()
        }
    }
}

/// candle allocates a new buffer for every tensor op. glibc serves large ones with mmap and hands
/// them back to the kernel on free, so every training step page-faults and zeroes them again
/// (about a fifth of a step in `perf`). Keeping freed memory in the heap makes LoRA training 1.4x
/// faster on CPU (README, Benchmarks). glibc's `MALLOC_*` variables, when set, take precedence.
///
/// The thresholds hold only for glibc's main arena: a thread other than the main one (the rayon
/// worker the compute runs on, [`on_rayon_worker`]) gets an arena of its own, whose blocks above
/// 64 MiB are always mmapped, so every step of full fine-tuning page-faulted 2.2 GB afresh (AdamW's
/// temporaries for the embedding table). One arena for all threads keeps those in the heap too:
/// full fine-tuning of SmolLM2 1.6x faster (docs/performance.md).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() && std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 1 << 29);
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: as above.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
