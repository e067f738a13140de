//! The methods a stage can run: one file per method behind one trait ([`Method`]), listed in one
//! static table ([`METHODS`]). The planner validates stages and reads versions and declared inputs
//! through [`Registry`] (its `PlanContext`); `runner exec` runs them through [`run_stage`].
//!
//! | kind | method | file |
//! |---|---|---|
//! | train | sft | `sft.rs` |
//! | train | booster | `booster.rs` |
//! | train | vaccine | `vaccine.rs` |
//! | train | repnoise | `repnoise.rs` |
//! | train | lisa | `lisa.rs` (a fine-tune-stage defense) |
//! | train | unlearn | `unlearn.rs` (gradient ascent, random mismatch, KL to the original) |
//! | train | dpo | `dpo.rs` |
//! | train | coh | `coh.rs` (Chain of Hindsight) |
//! | train | classifier | `classifier.rs` (a safe/unsafe judge) |
//! | generate | respond | `respond.rs` |
//! | generate | review | `review.rs` (an analysis, critique or revision of each record's answer) |
//! | generate | filter | `filter.rs` |
//! | generate | self_instruct | `self_instruct.rs` (SELF-ALIGN stage 1: Self-Instruct with the official filters) |
//! | generate | tgrt_topics | `tgrt_topics.rs` (SELF-ALIGN stage 1: red-teaming topics per adversarial type) |
//! | generate | tgrt_questions | `tgrt_questions.rs` (SELF-ALIGN stage 1: questions from (type, topic) hints) |
//! | generate | principle_align | `principle_align.rs` (SELF-ALIGN stage 2: Watson-prompted answers, the official filters, the identity conversations) |
//! | train | engrave | `engrave.rs` (SELF-ALIGN stages 3 and 4: principle engraving, the verbose-cloned student) |
//! | generate | verbose_clone | `verbose_clone.rs` (SELF-ALIGN stage 4: the verbose teacher's answers, filtered) |
//! | generate | gcg_transfer | `gcg_transfer.rs` (Check-as-Context's GCG-transfer attack: a fixed suffix on every behaviour) |
//! | generate | gcg | `gcg.rs` (GCG-individual jailbreak: an adversarial suffix per AdvBench goal) |
//! | generate | autodan | `autodan.rs` (the AutoDAN-GA jailbreak attack: one evolved prompt per AdvBench goal) |
//! | eval | eval (the stage's `metrics = [...]`) | `evaluate.rs` |
//!
//! `attack.rs` holds what the three attacks share (it is not a method).
//!
//! Adding a method: a new file with a unit struct implementing [`TypedMethod`] (its parameters
//! as a serde struct implementing [`params::Validate`] and [`StageInputs`]), and one line in
//! [`METHODS`].

pub mod attack;
pub mod autodan;
pub mod booster;
pub mod classifier;
pub mod coh;
pub mod dpo;
pub mod engrave;
pub mod evaluate;
pub mod filter;
pub mod gcg;
pub mod gcg_transfer;
pub mod lisa;
pub mod params;
pub mod principle_align;
pub mod repnoise;
pub mod respond;
pub mod review;
pub mod self_instruct;
pub mod sft;
pub mod tgrt_questions;
pub mod tgrt_topics;
pub mod unlearn;
pub mod vaccine;
pub mod verbose_clone;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Table;

use crate::data::DataSpec;
use crate::plan::{DataSource, ParamError, PlanContext, StageRequirements};
use crate::spec::{closest, ModelSpec, StageKind};
use crate::stage::{Metrics, StageContext, StageError};
pub use params::{StageInputs, Validate};

/// A method as the planner and the stage process see it. Implemented for every [`TypedMethod`].
pub trait Method: Sync {
    fn name(&self) -> &'static str;
    fn kind(&self) -> StageKind;
    /// The algorithm version: bump it when a change alters results, so finished stages of the old
    /// version are recomputed.
    fn version(&self) -> u32;
    /// Whether later stages continue from this stage's model (train methods that adapt it; not a
    /// judge classifier, which later stages only read).
    fn changes_model(&self) -> bool;
    /// Validates a stage's parameters (before any compute) and returns what it reads.
    fn check(&self, params: &Table) -> Result<Declared, ParamError>;
    /// Runs the stage.
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError>;
}

/// What a stage's parameters declare: datasets, earlier stages and other models it reads, and
/// the versions of its parts (an eval stage's metrics) that enter its identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declared {
    pub datasets: Vec<String>,
    pub stages: Vec<String>,
    pub models: Vec<(String, String)>,
    pub components: BTreeMap<String, u32>,
}

/// A method with typed parameters: the blanket [`Method`] impl parses and validates them.
pub trait TypedMethod: Sync {
    const NAME: &'static str;
    const KIND: StageKind;
    const VERSION: u32;
    const CHANGES_MODEL: bool;
    type Params: params::StageParams + Validate + StageInputs;
    fn run(ctx: &StageContext, p: &Self::Params) -> Result<Metrics, StageError>;
}

impl<T: TypedMethod> Method for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn kind(&self) -> StageKind {
        T::KIND
    }
    fn version(&self) -> u32 {
        T::VERSION
    }
    fn changes_model(&self) -> bool {
        T::CHANGES_MODEL
    }
    fn check(&self, params: &Table) -> Result<Declared, ParamError> {
        let p = <T::Params as params::StageParams>::from_table(params)?;
        p.validate(T::NAME)?;
        Ok(Declared {
            datasets: p.datasets().into_iter().map(str::to_string).collect(),
            stages: p.stages().into_iter().map(str::to_string).collect(),
            models: p.models().into_iter().map(|(k, v)| (k, v.to_string())).collect(),
            components: p.components(),
        })
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics, StageError> {
        let c = &ctx.config;
        let p =
            <T::Params as params::StageParams>::from_table(&c.params).map_err(|e| StageError::Method(format!("stage {}: {e}", c.name)))?;
        T::run(ctx, &p)
    }
}

/// Every method of this build.
pub static METHODS: &[&dyn Method] = &[
    &sft::Sft,
    &booster::Booster,
    &vaccine::Vaccine,
    &repnoise::RepNoise,
    &lisa::Lisa,
    &unlearn::Unlearn,
    &dpo::Dpo,
    &coh::Coh,
    &classifier::Classifier,
    &respond::Respond,
    &review::Review,
    &filter::Filter,
    &self_instruct::SelfInstruct,
    &tgrt_topics::TgrtTopics,
    &tgrt_questions::TgrtQuestions,
    &principle_align::PrincipleAlign,
    &engrave::Engrave,
    &verbose_clone::VerboseClone,
    &gcg_transfer::GcgTransfer,
    &gcg::Gcg,
    &autodan::Autodan,
    &evaluate::Evaluate,
];

/// The method a stage names; eval stages name none and run `eval`.
pub fn find(kind: StageKind, method: Option<&str>) -> Result<&'static dyn Method, ParamError> {
    let of_kind: Vec<&'static dyn Method> = METHODS.iter().copied().filter(|m| m.kind() == kind).collect();
    let names = || of_kind.iter().map(|m| m.name()).collect::<Vec<_>>();
    match (kind, method) {
        (StageKind::Eval, Some(m)) => Err(ParamError::new("method", format!("eval stages take `metrics = [...]`, not a method ({m:?})"))),
        (StageKind::Eval, None) => Ok(of_kind[0]),
        (_, None) => Err(ParamError::new("method", format!("a {kind} stage needs a method (available: {})", names().join(", ")))),
        (_, Some(m)) => of_kind.iter().copied().find(|x| x.name() == m).ok_or_else(|| ParamError {
            key: "method".into(),
            msg: format!("unknown {kind} method {m:?} (available: {})", names().join(", ")),
            suggestion: closest(m, names()),
        }),
    }
}

/// Validation and identities for the planner.
pub struct Registry {
    spec_dir: PathBuf,
}

impl Registry {
    pub fn new(spec_path: &Path) -> Self {
        Self { spec_dir: spec_path.parent().map(Path::to_path_buf).unwrap_or_default() }
    }
}

impl PlanContext for Registry {
    fn check_stage(
        &self,
        kind: StageKind,
        method: Option<&str>,
        params: &Table,
        datasets: &[String],
    ) -> Result<StageRequirements, ParamError> {
        let m = find(kind, method)?;
        let declared = m.check(params)?;
        let mut data = Vec::new();
        let mut stage_inputs = declared.stages.clone();
        for d in &declared.datasets {
            match d.strip_prefix('@') {
                Some(stage) => stage_inputs.push(stage.to_string()),
                None => data.push(d.clone()),
            }
        }
        data.sort();
        data.dedup();
        stage_inputs.sort();
        stage_inputs.dedup();
        for r in &data {
            if !datasets.contains(r) {
                return Err(ParamError {
                    key: "data".into(),
                    msg: format!("dataset `{r}` is not defined (defined: {})", datasets.join(", ")),
                    suggestion: closest(r, datasets.iter().map(String::as_str)),
                });
            }
        }
        Ok(StageRequirements {
            version: m.version(),
            changes_model: m.changes_model(),
            datasets: data,
            stage_inputs,
            models: declared.models,
            components: declared.components,
        })
    }

    fn check_data(&self, _name: &str, table: &Table) -> Result<(), ParamError> {
        // A table reading a generate stage's records is checked with a stand-in format and path.
        let probe = crate::data::stage_reference(table).map(|(_, probe)| probe);
        let spec = params::parse::<DataSpec>(probe.as_ref().unwrap_or(table))?;
        spec.validate().map_err(|e| ParamError::new("", e.to_string()))
    }

    fn data_source(&self, _name: &str, table: &Table) -> Result<DataSource, ParamError> {
        if let Some((stage, _)) = crate::data::stage_reference(table) {
            return Ok(DataSource::Stage(stage.to_string()));
        }
        let spec = params::parse::<DataSpec>(table)?;
        Ok(DataSource::File(spec.identity(&self.spec_dir).map_err(|e| e.to_string())))
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
pub fn run_stage(ctx: &StageContext) -> Result<Metrics, StageError> {
    let c = &ctx.config;
    let m = find(c.kind, c.method.as_deref()).map_err(|e| StageError::Method(format!("stage {}: {e}", c.name)))?;
    m.run(ctx)
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
        // Only the running method's tables count: a `booster` table of an sft stage is no input.
        let train: Table = toml::from_str("data = \"pku_test\"\nbooster = { harmful = \"pku_test\" }").unwrap();
        let req = Registry::new(Path::new("spec.toml")).check_stage(StageKind::Train, Some("booster"), &train, &datasets).unwrap();
        assert_eq!((req.datasets, req.changes_model), (vec!["pku_test".to_string()], true));
    }

    #[test]
    fn the_table_names_each_method_once_and_unknown_names_get_suggestions() {
        let mut names: Vec<(String, &str)> = METHODS.iter().map(|m| (m.kind().to_string(), m.name())).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        let e = find(StageKind::Train, Some("boster")).err().unwrap();
        assert_eq!(e.suggestion.as_deref(), Some("booster"));
        assert!(find(StageKind::Generate, Some("sft")).is_err());
        assert_eq!(find(StageKind::Eval, None).unwrap().name(), "eval");
    }
}
