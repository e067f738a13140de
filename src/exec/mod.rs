//! Running one stage in its own process (`runner exec STAGE_DIR`): read the resolved config,
//! mark the stage running, dispatch to its method (`methods::run_stage`), write its metrics, and
//! mark it done (last) or failed with the reason. A training stage that stopped at a step
//! checkpoint on request is marked interrupted and, under Slurm, requeues its task.

use std::path::Path;

use crate::model::ModelError;
use crate::sched::stage_signals::requeue_slurm_task;
use crate::stage::{StageContext, StageError};
use crate::store::{self, StageDir, StageState, StageStatus};

/// Runs the stage in `dir` to completion and records its state. Returns the stage's error too,
/// after recording it, so the process exits non-zero.
pub fn exec_stage(dir: &Path) -> Result<(), StageError> {
    let attempt = std::env::var("RUNNER_ATTEMPT").ok().and_then(|a| a.parse().ok()).unwrap_or(1);
    StageStatus::running(attempt).write(dir)?;
    let files = StageDir::new(dir);
    let result = StageContext::from_dir(dir).and_then(|ctx| {
        // Outputs of an earlier, interrupted attempt are not trusted.
        for stale in files.attempt_outputs() {
            let _ = std::fs::remove_file(stale);
        }
        let metrics = crate::methods::run_stage(&ctx)?;
        store::write_json(&files.metrics(), &metrics)?;
        Ok(())
    });
    let status = StageStatus::read(dir)?;
    match &result {
        Ok(()) => status.finished(StageState::Done, None, None).write(dir)?,
        Err(e @ StageError::Model(ModelError::Stopped { .. })) => {
            // Written before the requeue, which ends this process.
            let interrupted = |why: String| status.clone().finished(StageState::Interrupted, Some(why), None).write(dir);
            interrupted(format!("{e}; requeueing"))?;
            match requeue_slurm_task() {
                None => interrupted(format!("{e}; rerun to resume"))?,
                Some(Ok(done)) => tracing::info!("{done}"),
                Some(Err(why)) => interrupted(format!("{e}; requeueing failed ({why}): rerun to resume"))?,
            }
        }
        Err(e) => status.finished(StageState::Failed, Some(e.to_string()), Some(store::tail(&files.stderr(), 20))).write(dir)?,
    }
    result
}
