//! The methods a stage can run, registered in code: validation and versions for the planner
//! ([`Registry`] implements `PlanContext`), and execution for `runner exec`.
//!
//! | kind | method | file |
//! |---|---|---|
//! | train | sft | `sft.rs` |
//! | train | booster | `booster.rs` |
//! | train | vaccine | `vaccine.rs` |
//! | train | repnoise | `repnoise.rs` |
//! | train | classifier | `classifier.rs` (a safe/unsafe judge) |
//! | generate | respond | `respond.rs` |
//! | eval | (metrics list) | `evaluate.rs` |

pub mod booster;
pub mod classifier;
pub mod evaluate;
pub mod params;
pub mod repnoise;
pub mod respond;
pub mod sft;
pub mod vaccine;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Table;

use crate::data::DataSpec;
use crate::exec::{ExecError, StageContext};
use crate::plan::{ParamError, PlanContext, StageRequirements};
use crate::spec::{closest, ModelSpec, StageKind};
use params::StageInputs;

/// Train methods known to this build (name, algorithm version). Bump a version when a change
/// alters results: finished stages of the old version are then recomputed.
const TRAIN_METHODS: [(&str, u32); 5] = [("sft", 1), ("booster", 2), ("vaccine", 1), ("repnoise", 2), ("classifier", 1)];
const EVAL_VERSION: u32 = 3;
const GENERATE_VERSION: u32 = 1;

/// Validation and identities for the planner.
pub struct Registry {
    spec_dir: PathBuf,
}

impl Registry {
    pub fn new(spec_path: &Path) -> Self {
        Self { spec_dir: spec_path.parent().map(Path::to_path_buf).unwrap_or_default() }
    }
}

/// The references a stage's typed parameters declare, split as the planner wants them.
fn requirements(version: u32, changes_model: bool, inputs: &dyn StageInputs) -> StageRequirements {
    let mut datasets = Vec::new();
    let mut stage_inputs: Vec<String> = inputs.stages().into_iter().map(str::to_string).collect();
    for d in inputs.datasets() {
        match d.strip_prefix('@') {
            Some(stage) => stage_inputs.push(stage.to_string()),
            None => datasets.push(d.to_string()),
        }
    }
    datasets.sort();
    datasets.dedup();
    stage_inputs.sort();
    stage_inputs.dedup();
    let models = inputs.models().into_iter().map(|(key, path)| (key, path.to_string())).collect();
    StageRequirements { version, changes_model, datasets, stage_inputs, models }
}

impl PlanContext for Registry {
    fn check_stage(
        &self,
        kind: StageKind,
        method: Option<&str>,
        params: &Table,
        datasets: &[String],
    ) -> Result<StageRequirements, ParamError> {
        let req = match (kind, method) {
            (StageKind::Train, Some(m)) => {
                let (_, version) = TRAIN_METHODS.iter().find(|(n, _)| *n == m).ok_or_else(|| ParamError {
                    key: "method".into(),
                    msg: format!("unknown train method {m:?} (available: {})", TRAIN_METHODS.map(|(n, _)| n).join(", ")),
                    suggestion: closest(m, TRAIN_METHODS.iter().map(|(n, _)| *n)),
                })?;
                if m == "classifier" {
                    let p = params::parse::<classifier::ClassifierParams>(params)?;
                    p.check()?;
                    // A judge: later stages read it as an input, they do not continue from it.
                    requirements(*version, false, &p)
                } else {
                    let p = params::parse::<sft::TrainParams>(params)?;
                    p.check(m)?;
                    requirements(*version, true, &p)
                }
            }
            (StageKind::Train, None) => {
                return Err(ParamError { key: "method".into(), msg: "a train stage needs a method".into(), suggestion: None })
            }
            (StageKind::Eval, None) => {
                let p = params::parse::<evaluate::EvalParams>(params)?;
                p.check()?;
                requirements(EVAL_VERSION, true, &p)
            }
            (StageKind::Eval, Some(m)) => {
                return Err(ParamError {
                    key: "method".into(),
                    msg: format!("eval stages take `metrics = [...]`, not a method ({m:?})"),
                    suggestion: None,
                })
            }
            (StageKind::Generate, Some("respond")) => {
                let p = params::parse::<respond::RespondParams>(params)?;
                p.check()?;
                requirements(GENERATE_VERSION, true, &p)
            }
            (StageKind::Generate, m) => {
                return Err(ParamError {
                    key: "method".into(),
                    msg: format!("unknown generate method {m:?} (available: respond)"),
                    suggestion: m.and_then(|m| closest(m, ["respond"])),
                })
            }
        };
        for r in &req.datasets {
            if !datasets.contains(r) {
                return Err(ParamError {
                    key: "data".into(),
                    msg: format!("dataset `{r}` is not defined (defined: {})", datasets.join(", ")),
                    suggestion: closest(r, datasets.iter().map(String::as_str)),
                });
            }
        }
        Ok(req)
    }

    fn check_data(&self, _name: &str, table: &Table) -> Result<(), ParamError> {
        let spec = params::parse::<DataSpec>(table)?;
        spec.validate().map_err(|e| ParamError { key: String::new(), msg: e.to_string(), suggestion: None })
    }

    fn data_identity(&self, _name: &str, table: &Table) -> Result<String, String> {
        let spec = params::parse::<DataSpec>(table).map_err(|e| {
            let hint = e.suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
            format!("key `{}`: {}{hint}", e.key, e.msg)
        })?;
        spec.identity(&self.spec_dir).map_err(|e| e.to_string())
    }

    fn model_identity(&self, model: &ModelSpec) -> Result<String, String> {
        let location = crate::model::hub::resolve(&model.path).map_err(|e| e.to_string())?;
        crate::model::hub::fingerprint(&location).map_err(|e| e.to_string())
    }

    fn locate_model(&self, path: &str) -> Result<(), String> {
        crate::model::hub::resolve(path).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Runs the stage's method; returns its metrics (written to `metrics.json`).
pub fn run_stage(ctx: &StageContext) -> Result<BTreeMap<String, f64>, ExecError> {
    let c = &ctx.config;
    let bad = |e: ParamError| ExecError::Method(format!("stage {}: key `{}`: {}", c.name, e.key, e.msg));
    match (c.kind, c.method.as_deref()) {
        (StageKind::Train, Some("sft")) => sft::run(ctx, &params::parse(&c.params).map_err(bad)?),
        (StageKind::Train, Some("booster")) => booster::run(ctx, &params::parse(&c.params).map_err(bad)?),
        (StageKind::Train, Some("vaccine")) => vaccine::run(ctx, &params::parse(&c.params).map_err(bad)?),
        (StageKind::Train, Some("repnoise")) => repnoise::run(ctx, &params::parse(&c.params).map_err(bad)?),
        (StageKind::Train, Some("classifier")) => classifier::run(ctx, &params::parse(&c.params).map_err(bad)?),
        (StageKind::Eval, None) => evaluate::run(ctx, &params::parse(&c.params).map_err(bad)?),
        (StageKind::Generate, Some("respond")) => respond::run(ctx, &params::parse(&c.params).map_err(bad)?),
        (kind, method) => Err(ExecError::Method(format!("no {kind} method {method:?} in this build"))),
    }
}

/// Loads a dataset the stage declared (paths were made absolute by the planner).
pub fn load_dataset(ctx: &StageContext, name: &str) -> Result<crate::data::Dataset, ExecError> {
    // `@stage`: the dataset a generate stage wrote.
    if let Some(stage) = name.strip_prefix('@') {
        let id = ctx
            .config
            .inputs
            .get(stage)
            .ok_or_else(|| ExecError::Method(format!("stage {} reads `@{stage}`, which its config lacks", ctx.config.name)))?;
        let spec = DataSpec::new(crate::data::Format::InstructionJson, ctx.stage_dir(id).join("dataset.jsonl"));
        return crate::data::load_named(name, &spec, Path::new("/")).map_err(|e| ExecError::Method(e.to_string()));
    }
    let table = ctx
        .config
        .data
        .get(name)
        .ok_or_else(|| ExecError::Method(format!("stage {} reads dataset `{name}`, which its config lacks", ctx.config.name)))?;
    let spec = params::parse::<DataSpec>(table).map_err(|e| ExecError::Method(format!("data.{name}: key `{}`: {}", e.key, e.msg)))?;
    crate::data::load_named(name, &spec, Path::new("/")).map_err(|e| ExecError::Method(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_declare_their_datasets_stages_and_models() {
        let params: Table = toml::from_str(
            r#"metrics = [
                { metric = "judge_accuracy", data = "pku_test", judge = { kind = "trained", stage = "judge" } },
                { metric = "harmful_score", data = "@gen", judge = { kind = "classifier", model = "org/guard" } },
            ]"#,
        )
        .unwrap();
        let datasets = ["pku_test".to_string()];
        let req = Registry::new(Path::new("spec.toml")).check_stage(StageKind::Eval, None, &params, &datasets).unwrap();
        assert_eq!(req.datasets, vec!["pku_test"]);
        assert_eq!(req.stage_inputs, vec!["gen", "judge"]);
        assert_eq!(req.models, vec![("metrics.1.judge.model".to_string(), "org/guard".to_string())]);
        // Only declared keys count: a `harmful` key of an unrelated table is no dataset reference.
        let train: Table = toml::from_str("data = \"pku_test\"\nbooster = { harmful = \"pku_test\" }").unwrap();
        let req = Registry::new(Path::new("spec.toml")).check_stage(StageKind::Train, Some("booster"), &train, &datasets).unwrap();
        assert_eq!((req.datasets, req.changes_model), (vec!["pku_test".to_string()], true));
    }
}
