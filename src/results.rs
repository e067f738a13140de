//! From stage outputs to run rows: each run's `result.json` (written last, once its stages have
//! finished), then the summary, the report and the results page.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::plan::Plan;
use crate::report::page::{self, PageInput, PageRun, PageStage};
use crate::report::{self, ReportSpec, RunRow, RunStatus};
use crate::spec::StageKind;
use crate::store::{self, ProgressSnapshot, ResultsDir, StageState, StageStatus, StoreError};

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

/// The page's view of the plan and its stages now: every run with `rows`' state, every stage
/// with its status, progress, metrics and (once done) its per-sample records.
pub fn page_input(plan: &Plan, results: &ResultsDir, rows: &[RunRow]) -> Result<PageInput, ResultsError> {
    let report: ReportSpec =
        toml::Value::Table(plan.report.clone()).try_into().map_err(|e: toml::de::Error| ResultsError::Spec(e.to_string()))?;
    let spec_toml = std::fs::read_to_string(results.root.join("spec.toml")).unwrap_or_default();
    let runs = plan
        .runs
        .iter()
        .map(|run| {
            let row = rows.iter().find(|r| r.run_id == run.run_id).cloned().unwrap_or_else(|| RunRow {
                run_id: run.run_id.clone(),
                status: RunStatus::Pending,
                error: None,
                seed: Some(run.seed),
                params: run.params.clone(),
                metrics: BTreeMap::new(),
            });
            PageRun { row, stages: run.stages.clone() }
        })
        .collect();
    let mut stages = Vec::with_capacity(plan.stages.len());
    for s in &plan.stages {
        let dir = results.stage(&s.id);
        let status = StageStatus::read(dir.root())?;
        let done = status.is_done();
        let metrics = if done && dir.metrics().exists() { store::read_json(&dir.metrics())? } else { BTreeMap::new() };
        let records = match s.config.kind {
            StageKind::Eval if done => Some(dir.outputs()),
            StageKind::Generate if done => Some(dir.dataset()),
            _ => None,
        };
        stages.push(PageStage {
            id: s.id.clone(),
            name: s.config.name.clone(),
            kind: s.config.kind.to_string(),
            method: s.config.method.clone(),
            runs: s.runs.clone(),
            depends_on: s.depends_on.clone(),
            progress: ProgressSnapshot::read(dir.root()),
            status,
            metrics,
            records,
        });
    }
    Ok(PageInput { experiment: plan.experiment.clone(), spec_toml, runs, stages, report })
}

/// Writes `index.html` (and the records scripts of finished eval and generate stages) into the
/// results directory; returns its path.
pub fn write_page(plan: &Plan, results: &ResultsDir, rows: &[RunRow]) -> Result<PathBuf, ResultsError> {
    let input = page_input(plan, results, rows)?;
    Ok(page::write_page(&results.root, &input)?)
}
