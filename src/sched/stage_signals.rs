//! The stage process's side of stopping: a stage stopped by SIGTERM or SIGINT (the scheduler
//! forwarding Ctrl-C, or the kernel when the runner died: see `PR_SET_PDEATHSIG` in `local.rs`)
//! records itself as interrupted before it exits, so `runner status` says so and a rerun
//! resumes it.

use std::path::{Path, PathBuf};

use crate::store::{StageState, StageStatus, StoreError};

/// Exit status of a stage process that was stopped (128 + SIGINT, as the runner's own).
pub const INTERRUPTED_EXIT: i32 = 130;

/// Starts a thread that, on SIGTERM, SIGINT or SIGHUP, marks the stage in `stage_dir`
/// interrupted (unless it is done already) and exits the process with [`INTERRUPTED_EXIT`].
/// Call once, early in the stage process.
pub fn record_interruption_on_signal(stage_dir: &Path) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let dir: PathBuf = stage_dir.to_path_buf();
    std::thread::Builder::new().name("stage-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            if let Err(e) = mark_interrupted(&dir, &reason(sig)) {
                eprintln!("recording the interruption: {e}");
            }
            std::process::exit(INTERRUPTED_EXIT);
        }
    })?;
    Ok(())
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
/// complete).
pub fn mark_interrupted(stage_dir: &Path, reason: &str) -> Result<(), StoreError> {
    let status = StageStatus::read(stage_dir)?;
    if status.is_done() {
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
