//! Expansion of a spec into runs and a graph of content-addressed stages. Identical stages
//! (same resolved config, same parent, same model and data, same method version and seed) get
//! the same id and are computed once. The planner knows nothing of models or methods: method
//! versions, parameter validation and identities come in through [`PlanContext`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use toml::Table;

use crate::spec::{self, LoadedSpec, ModelSpec, Origin, RunSpec, SpecError, StageKind};
use crate::store::{ResultsDir, StageState};

/// What the planner needs to know about the rest of the system.
pub trait PlanContext {
    /// Validates a stage's parameters and returns (method version, names of the datasets it
    /// reads, ids of earlier stages whose outputs it reads as data: `data = "@stage"`).
    /// Errors are `(key within the stage, message, closest valid key)`.
    fn check_stage(
        &self,
        kind: StageKind,
        method: Option<&str>,
        params: &Table,
        datasets: &[String],
    ) -> Result<StageRequirements, ParamError>;
    /// Checks a `[data.NAME]` table without reading its files: unknown keys, wrong types and
    /// option values. Never tolerated, not even by a lenient plan. Errors are `(key within the
    /// table, message, closest valid key)`.
    fn check_data(&self, name: &str, table: &Table) -> Result<(), ParamError>;
    /// Where the records of a `[data.*]` table come from (files and their identity, or an earlier
    /// generate stage). The planner calls it after [`PlanContext::check_data`] accepted the table.
    fn data_source(&self, name: &str, spec: &Table) -> Result<DataSource, ParamError>;
    /// Identity of the base model (config and weight file fingerprints).
    fn model_identity(&self, model: &ModelSpec) -> Result<String, String>;
    /// Checks that another model a stage reads (a judge) can be found.
    fn locate_model(&self, _path: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Where a dataset's records come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// Files: their content identity (file hashes + options), or why they cannot be read here.
    File(Result<String, String>),
    /// The records an earlier generate stage of the run writes (by its spec id).
    Stage(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageRequirements {
    pub version: u32,
    /// Whether later stages continue from this stage's model (train methods that adapt the model;
    /// not a judge classifier, which later stages only read as an input).
    pub changes_model: bool,
    pub datasets: Vec<String>,
    pub stage_inputs: Vec<String>,
    /// Other models the stage reads (judges): (key within the stage, path or hub id).
    pub models: Vec<(String, String)>,
    /// Versions of the stage's parts (an eval stage's metrics), part of its identity.
    pub components: BTreeMap<String, u32>,
}

pub use crate::spec::ParamError;

/// Everything that determines a stage's output; serialized as the stage's `stage.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    /// The id the spec gives the stage (e.g. "align").
    pub name: String,
    pub kind: StageKind,
    pub method: Option<String>,
    pub method_version: u32,
    /// Versions of the stage's parts (an eval stage's metrics): changing one metric re-runs only
    /// the stages that use it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, u32>,
    pub params: Table,
    pub seed: u64,
    pub model: ModelSpec,
    pub model_identity: String,
    /// Datasets read by this stage: name -> (spec table, identity).
    pub data: BTreeMap<String, Table>,
    pub data_identity: BTreeMap<String, String>,
    /// The stage whose model this stage continues from.
    pub parent: Option<String>,
    /// Earlier stages whose outputs are read as datasets: spec id -> stage id.
    pub inputs: BTreeMap<String, String>,
}

impl StageConfig {
    /// The content hash that names the stage directory.
    /// File paths are left out: contents enter through the model and data identities, so a
    /// results directory and its inputs can move without invalidating finished stages.
    pub fn id(&self) -> String {
        let mut view = self.clone();
        view.model.path = std::path::Path::new(&self.model.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for table in view.data.values_mut() {
            table.remove("path");
        }
        let json = serde_json::to_string(&view).expect("stage config serializes");
        let digest = Sha256::digest(json.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    pub run_id: String,
    pub params: BTreeMap<String, serde_json::Value>,
    pub seed: u64,
    /// Stage ids in pipeline order.
    pub stages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStage {
    pub id: String,
    pub config: StageConfig,
    /// Stage ids this stage waits for (its parent and its data inputs).
    pub depends_on: Vec<String>,
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub experiment: String,
    pub runs: Vec<PlannedRun>,
    /// In a dependency-respecting order.
    pub stages: Vec<PlannedStage>,
    /// Metric report layout, passed through to the report step.
    pub report: Table,
    /// Inputs that could not be identified (only in a lenient plan: `runner plan` shows the
    /// graph of a spec whose model or data live on another machine).
    #[serde(default)]
    pub missing_inputs: Vec<String>,
}

impl Plan {
    pub fn stage(&self, id: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// Stage executions with sharing, and without (one per run and stage).
    pub fn execution_counts(&self) -> (usize, usize) {
        (self.stages.len(), self.runs.iter().map(|r| r.stages.len()).sum())
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// A short, stable id for a run from its swept values.
fn run_id(index: usize, params: &BTreeMap<String, serde_json::Value>) -> String {
    let digest = Sha256::digest(serde_json::to_string(params).expect("params serialize").as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("run{index:03}-{hex}")
}

/// Builds the plan: validates every stage of every run (before any compute), hashes stages.
pub fn build(loaded: &LoadedSpec, ctx: &dyn PlanContext) -> Result<Plan, SpecError> {
    let runs = spec::expand(loaded)?;
    build_from_runs(loaded, &runs, ctx, false)
}

/// Like [`build`], but a model or dataset that cannot be found is recorded in
/// `missing_inputs` instead of failing (its identity becomes "missing"). For inspection only.
pub fn build_lenient(loaded: &LoadedSpec, ctx: &dyn PlanContext) -> Result<Plan, SpecError> {
    let runs = spec::expand(loaded)?;
    build_from_runs(loaded, &runs, ctx, true)
}

pub fn build_from_runs(loaded: &LoadedSpec, runs: &[RunSpec], ctx: &dyn PlanContext, lenient: bool) -> Result<Plan, SpecError> {
    let mut missing_inputs: Vec<String> = Vec::new();
    let mut tolerate = |what: String, e: SpecError| -> Result<String, SpecError> {
        if lenient {
            let line = format!("{what}: {e}");
            if !missing_inputs.contains(&line) {
                missing_inputs.push(line);
            }
            Ok("missing".to_string())
        } else {
            Err(e)
        }
    };
    let mut stages: Vec<PlannedStage> = Vec::new();
    let mut planned_runs = Vec::new();
    let mut identity_cache: BTreeMap<String, String> = BTreeMap::new();
    let mut checked_data: std::collections::HashSet<String> = std::collections::HashSet::new();
    let spec_dir = loaded.path.parent().unwrap_or(std::path::Path::new("."));
    for (index, run) in runs.iter().enumerate() {
        let s = &run.spec;
        let locate = |path: &[String]| -> Origin {
            // A swept key is reported at its [sweep] entry; anything else where the file has it.
            let dotted = spec::path::to_id_path(&loaded.document, path);
            if run.params.contains_key(&dotted) {
                loaded.sources.locate(&["sweep".into(), dotted])
            } else {
                loaded
                    .overrides
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == dotted)
                    .map(|(_, o)| o.clone())
                    .unwrap_or_else(|| loaded.sources.locate(path))
            }
        };
        let model_identity = match ctx.model_identity(&s.model) {
            Ok(id) => id,
            Err(msg) => tolerate(
                format!("model {}", s.model.path),
                SpecError::Invalid { origin: locate(&["model".into(), "path".into()]), key: "model.path".into(), msg, suggestion: None },
            )?,
        };
        let dataset_names: Vec<String> = s.data.keys().cloned().collect();
        // Every dataset table is checked, read by a stage or not: a lenient plan tolerates only
        // files and models it cannot find, never a malformed table.
        // A parameter error at `path` (+ its key within that table), located in the files.
        let invalid = |mut path: Vec<String>, e: ParamError| {
            path.extend(e.key.split('.').filter(|k| !k.is_empty()).map(str::to_string));
            SpecError::Invalid {
                origin: locate(&path),
                key: spec::path::to_id_path(&loaded.document, &path),
                msg: e.msg,
                suggestion: e.suggestion,
            }
        };
        for (name, table) in &s.data {
            let cache_key = format!("{name}:{}", serde_json::to_string(table).unwrap_or_default());
            if checked_data.insert(cache_key) {
                ctx.check_data(name, table).map_err(|e| invalid(vec!["data".to_string(), name.clone()], e))?;
            }
        }
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        let mut parent: Option<String> = None;
        let mut run_stage_ids = Vec::new();
        for (i, st) in s.stage.iter().enumerate() {
            let stage_path = |key: &str| -> Vec<String> {
                let mut p = vec!["stage".to_string(), i.to_string()];
                p.extend(key.split('.').map(str::to_string));
                p
            };
            let req = ctx
                .check_stage(st.kind, st.method.as_deref(), &st.params, &dataset_names)
                .map_err(|e| invalid(vec!["stage".to_string(), i.to_string()], e))?;
            // A skipped stage is still checked, so a typo in it fails in every run.
            if st.skip {
                continue;
            }
            let mut data = BTreeMap::new();
            let mut data_identity = BTreeMap::new();
            let mut data_stages = Vec::new();
            for name in &req.datasets {
                let table = s.data.get(name).ok_or_else(|| SpecError::Invalid {
                    origin: locate(&stage_path("data")),
                    key: format!("stage.{}", st.id),
                    msg: format!("reads dataset `{name}`, which no [data.{name}] defines"),
                    suggestion: spec::closest(name, dataset_names.iter().map(String::as_str)),
                })?;
                let cache_key = format!("{name}:{}", serde_json::to_string(table).unwrap_or_default());
                let id = match identity_cache.get(&cache_key) {
                    Some(id) => id.clone(),
                    None => {
                        let source = ctx.data_source(name, table).map_err(|e| invalid(vec!["data".to_string(), name.clone()], e))?;
                        let id = match source {
                            DataSource::File(Ok(id)) => id,
                            DataSource::File(Err(msg)) => tolerate(
                                format!("dataset {name}"),
                                SpecError::Invalid {
                                    origin: locate(&["data".into(), name.clone()]),
                                    key: format!("data.{name}"),
                                    msg,
                                    suggestion: None,
                                },
                            )?,
                            // The producing stage's id enters through `inputs`.
                            DataSource::Stage(stage) => {
                                data_stages.push(stage.clone());
                                format!("stage:{stage}")
                            }
                        };
                        if !id.starts_with("stage:") {
                            identity_cache.insert(cache_key, id.clone());
                        }
                        id
                    }
                };
                if let Some(stage) = id.strip_prefix("stage:") {
                    if !data_stages.iter().any(|s| s == stage) {
                        data_stages.push(stage.to_string());
                    }
                }
                data.insert(name.clone(), table.clone());
                data_identity.insert(name.clone(), id);
            }
            // Other models the stage reads (judges): relative paths made absolute in the stage's
            // parameters, then checked before any compute.
            let mut params = st.params.clone();
            for (key, path) in &req.models {
                let at = stage_path(key);
                let invalid = |msg: String| SpecError::Invalid {
                    origin: locate(&at),
                    key: spec::path::to_id_path(&loaded.document, &at),
                    msg,
                    suggestion: None,
                };
                let path = match spec::resolve_path(path, spec_dir) {
                    Some(abs) => {
                        spec::path::set(&mut params, key, toml::Value::String(abs.clone())).map_err(invalid)?;
                        abs
                    }
                    None => path.clone(),
                };
                if let Err(msg) = ctx.locate_model(&path) {
                    tolerate(format!("model {path}"), invalid(msg))?;
                }
            }
            let mut inputs = BTreeMap::new();
            let mut stage_inputs = req.stage_inputs.clone();
            stage_inputs.extend(data_stages);
            stage_inputs.sort();
            stage_inputs.dedup();
            for input in &stage_inputs {
                let id = by_name.get(input).ok_or_else(|| SpecError::Invalid {
                    origin: locate(&stage_path("data")),
                    key: format!("stage.{}", st.id),
                    msg: format!(
                        "reads `@{input}` (a `data = \"@{input}\"`, a `[data.*]` table's or a judge's `stage = \"{input}\"`), which is not an earlier stage"
                    ),
                    suggestion: spec::closest(input, by_name.keys().map(String::as_str)),
                })?;
                inputs.insert(input.clone(), id.clone());
            }
            let config = StageConfig {
                name: st.id.clone(),
                kind: st.kind,
                method: st.method.clone(),
                method_version: req.version,
                components: req.components.clone(),
                params,
                seed: st.seed.unwrap_or(run.seed),
                model: s.model.clone(),
                model_identity: model_identity.clone(),
                data,
                data_identity,
                parent: if st.from_base { None } else { parent.clone() },
                inputs,
            };
            let id = config.id();
            let run_key = run_id(index, &run.params.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect());
            match stages.iter_mut().find(|p| p.id == id) {
                Some(existing) => existing.runs.push(run_key),
                None => {
                    let mut depends_on: Vec<String> = config.parent.iter().cloned().collect();
                    depends_on.extend(config.inputs.values().cloned());
                    stages.push(PlannedStage { id: id.clone(), config, depends_on, runs: vec![run_key] });
                }
            }
            by_name.insert(st.id.clone(), id.clone());
            // Train stages change the model the next stage starts from; others pass it through.
            if st.kind == StageKind::Train && req.changes_model {
                parent = Some(id.clone());
            }
            run_stage_ids.push(id);
        }
        let params: BTreeMap<String, serde_json::Value> = run.params.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect();
        planned_runs.push(PlannedRun { run_id: run_id(index, &params), params, seed: run.seed, stages: run_stage_ids });
    }
    check_report(loaded, &planned_runs)?;
    Ok(Plan {
        experiment: loaded.spec.experiment.name.clone(),
        runs: planned_runs,
        stages,
        report: loaded.spec.report.clone(),
        missing_inputs,
    })
}

/// Checks the `[report]` section against the planned runs (their params) and the spec's stage
/// ids (the prefixes of metric keys), so that a typo fails now and not after the sweep.
fn check_report(loaded: &LoadedSpec, runs: &[PlannedRun]) -> Result<(), SpecError> {
    let params: Vec<BTreeMap<String, serde_json::Value>> = runs.iter().map(|r| r.params.clone()).collect();
    let stages: Vec<&str> = loaded.spec.stage.iter().map(|s| s.id.as_str()).collect();
    crate::report::check_spec(&loaded.spec.report, &params, &stages).map(|_| ()).map_err(|e| {
        let mut path = vec!["report".to_string()];
        path.extend(e.path);
        let key = spec::path::to_id_path(&loaded.document, &path);
        let origin =
            loaded.overrides.iter().rev().find(|(k, _)| *k == key).map(|(_, o)| o.clone()).unwrap_or_else(|| loaded.sources.locate(&path));
        SpecError::Invalid { origin, key, msg: e.msg, suggestion: e.suggestion }
    })
}

/// Which stages of a plan are already done in a results directory.
pub fn done_stages(plan: &Plan, results: &ResultsDir) -> BTreeMap<String, StageState> {
    plan.stages.iter().map(|s| (s.id.clone(), results.stage_status(&s.id).map(|st| st.state).unwrap_or(StageState::Pending))).collect()
}
