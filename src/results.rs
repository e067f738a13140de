//! From stage outputs to run rows: each run's `result.json` (written last, once its stages have
//! finished), then the summary and the report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::plan::Plan;
use crate::report::{self, ReportSpec, RunRow, RunStatus};
use crate::store::{self, ResultsDir, StageState, StageStatus, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error("[report]: {0}")]
    Spec(String),
}

/// The row of every run, from the current state of its stages.
pub fn collect_rows(plan: &Plan, results: &ResultsDir) -> Result<Vec<RunRow>, StoreError> {
    let mut rows = Vec::new();
    for run in &plan.runs {
        let mut metrics = BTreeMap::new();
        let mut status = RunStatus::Done;
        let mut error = None;
        for stage_id in &run.stages {
            let dir = results.stage_dir(stage_id);
            let st = StageStatus::read(&dir)?;
            let name = plan.stage(stage_id).map(|s| s.config.name.clone()).unwrap_or_default();
            match st.state {
                StageState::Done => {
                    let path = results.stage(stage_id).metrics();
                    if path.exists() {
                        let m: BTreeMap<String, f64> = store::read_json(&path)?;
                        metrics.extend(m.into_iter().map(|(k, v)| (format!("{name}.{k}"), v)));
                    }
                }
                StageState::Failed => {
                    status = RunStatus::Failed;
                    error.get_or_insert_with(|| format!("stage {name} ({stage_id}): {}", st.reason.unwrap_or_default()));
                }
                StageState::Interrupted if status == RunStatus::Done => status = RunStatus::Interrupted,
                StageState::Running if status == RunStatus::Done => status = RunStatus::Running,
                StageState::Pending if status == RunStatus::Done => status = RunStatus::Pending,
                _ => {}
            }
        }
        rows.push(RunRow { run_id: run.run_id.clone(), status, error, seed: Some(run.seed), params: run.params.clone(), metrics });
    }
    Ok(rows)
}

/// Writes `runs/<id>/result.json` for every run that finished (done or failed).
pub fn write_run_results(plan: &Plan, results: &ResultsDir) -> Result<Vec<RunRow>, StoreError> {
    let rows = collect_rows(plan, results)?;
    for row in &rows {
        if matches!(row.status, RunStatus::Done | RunStatus::Failed) {
            let dir = results.run_dir(&row.run_id);
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            store::write_json(&dir.join("result.json"), row)?;
        }
    }
    Ok(rows)
}

/// `summary.parquet`/`.csv`, tables and figures, from the rows.
pub fn write_reports(results: &ResultsDir, rows: &[RunRow], report_table: &toml::Table) -> Result<Vec<PathBuf>, ResultsError> {
    let spec: ReportSpec =
        toml::Value::Table(report_table.clone()).try_into().map_err(|e: toml::de::Error| ResultsError::Spec(e.to_string()))?;
    report::write_summary(&results.root, rows)?;
    let mut files = vec![results.root.join("summary.parquet"), results.root.join("summary.csv")];
    files.extend(report::write_report(&results.root, rows, &spec)?);
    Ok(files)
}
