//! The stage process's side of stopping: a stage stopped by SIGTERM or SIGINT (the scheduler
//! forwarding Ctrl-C, or the kernel when the runner died: see `PR_SET_PDEATHSIG` in `local.rs`)
//! records itself as interrupted before it exits, so `runner status` says so and a rerun
//! resumes it. SIGUSR1 (Slurm's warning before a time limit, `--signal=B:USR1@N`) asks a
//! training stage to save a step checkpoint after its current step and stop; it then puts its
//! Slurm task back in the queue ([`requeue_slurm_task`]) and the next attempt resumes.

use std::path::{Path, PathBuf};

use crate::store::{StageState, StageStatus, StoreError};

/// Exit status of a stage process that was stopped (128 + SIGINT, as the runner's own).
pub const INTERRUPTED_EXIT: i32 = 130;

/// Starts a thread that, on SIGTERM, SIGINT or SIGHUP, marks the stage in `stage_dir`
/// interrupted (unless it is done already) and exits the process with [`INTERRUPTED_EXIT`];
/// on SIGUSR1 it sets [`crate::stage::STOP_REQUESTED`]. Call once, early in the stage process.
pub fn record_interruption_on_signal(stage_dir: &Path) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let dir: PathBuf = stage_dir.to_path_buf();
    std::thread::Builder::new().name("stage-signals".into()).spawn(move || {
        for sig in signals.forever() {
            if sig == SIGUSR1 {
                crate::stage::STOP_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!("SIGUSR1: a training stage saves a step checkpoint after this step and stops; other stages go on");
                continue;
            }
            if let Err(e) = mark_interrupted(&dir, &reason(sig)) {
                eprintln!("recording the interruption: {e}");
            }
            std::process::exit(INTERRUPTED_EXIT);
        }
    })?;
    Ok(())
}

/// Puts this process's Slurm task back in the queue (`scontrol requeue $SLURM_JOB_ID`; the
/// script asks for `--requeue`). `None` outside Slurm; otherwise what happened, as a sentence.
pub fn requeue_slurm_task() -> Option<Result<String, String>> {
    let job = std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty())?;
    let out = std::process::Command::new("scontrol").args(["requeue", &job]).output();
    Some(match out {
        Ok(o) if o.status.success() => Ok(format!("Slurm job {job} requeued")),
        Ok(o) => Err(format!("scontrol requeue {job}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("scontrol requeue {job}: {e}")),
    })
}

fn reason(sig: i32) -> String {
    let name = match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    };
    format!("interrupted ({name}: stopped by the runner, or the runner itself was stopped); rerun to resume")
}

/// Marks the stage interrupted with `reason`, keeping a `done` status as it is (its outputs are
/// complete) and an `interrupted` one (its reason says more: a stage that stopped at a step
/// checkpoint and requeued itself is then killed by Slurm's requeue).
pub fn mark_interrupted(stage_dir: &Path, reason: &str) -> Result<(), StoreError> {
    let status = StageStatus::read(stage_dir)?;
    if status.is_done() || status.state == StageState::Interrupted {
        return Ok(());
    }
    status.finished(StageState::Interrupted, Some(reason.to_string()), None).write(stage_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_stage_becomes_interrupted_and_a_done_one_stays_done() {
        let dir = tempfile::tempdir().unwrap();
        StageStatus::running(2).write(dir.path()).unwrap();
        mark_interrupted(dir.path(), &reason(signal_hook::consts::SIGTERM)).unwrap();
        let st = StageStatus::read(dir.path()).unwrap();
        assert_eq!(st.state, StageState::Interrupted);
        assert_eq!(st.attempt, 2, "the attempt is kept");
        assert!(st.reason.as_deref().unwrap().contains("SIGTERM"), "{:?}", st.reason);
        assert!(st.finished_at.is_some());

        StageStatus::running(1).finished(StageState::Done, None, None).write(dir.path()).unwrap();
        mark_interrupted(dir.path(), "x").unwrap();
        assert!(StageStatus::read(dir.path()).unwrap().is_done());
    }
}
