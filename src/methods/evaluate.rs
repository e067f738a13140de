//! The `eval` stage: the model of the previous train stage (adapters merged) runs each metric.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;

use super::params::{StageInputs, Validate};
use crate::eval::judge::JudgeEnv;
use crate::eval::{run_metric, MetricSpec};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalParams {
    pub metrics: Vec<MetricSpec>,
}

crate::whole_table_params!(EvalParams);

/// The `eval` stage's method (eval stages name no method).
pub struct Evaluate;

impl super::TypedMethod for Evaluate {
    const NAME: &'static str = "eval";
    const KIND: StageKind = StageKind::Eval;
    /// The stage's own version; each metric has its own too (`components`).
    const VERSION: u32 = 3;
    const CHANGES_MODEL: bool = false;
    type Params = EvalParams;
    fn run(ctx: &StageContext, p: &EvalParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

impl Validate for EvalParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        for (i, m) in self.metrics.iter().enumerate() {
            m.check().map_err(|(key, msg)| ParamError::new(format!("metrics.{i}.{key}"), msg))?;
        }
        Ok(())
    }
}

impl StageInputs for EvalParams {
    fn datasets(&self) -> Vec<&str> {
        self.metrics.iter().map(|m| m.data()).collect()
    }
    fn stages(&self) -> Vec<&str> {
        self.metrics.iter().filter_map(|m| m.judge()?.stage.as_deref()).collect()
    }
    fn models(&self) -> Vec<(String, &str)> {
        let mut v = Vec::new();
        for (i, m) in self.metrics.iter().enumerate() {
            if let Some(model) = m.judge().and_then(|j| j.model.as_deref()) {
                v.push((format!("metrics.{i}.judge.model"), model));
            }
            if let Some((key, model)) = m.other_model() {
                v.push((format!("metrics.{i}.{key}"), model));
            }
        }
        v
    }
    fn components(&self) -> BTreeMap<String, u32> {
        self.metrics.iter().map(|m| (format!("metric.{}", m.kind().name()), m.kind().version())).collect()
    }
}

fn run(ctx: &StageContext, p: &EvalParams) -> Result<Metrics, StageError> {
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let env = JudgeEnv {
        device: ctx.device.clone(),
        dtype: ctx.dtype(),
        stage_dirs: ctx.config.inputs.iter().map(|(name, id)| (name.clone(), ctx.stage_dir(id).root().to_path_buf())).collect(),
    };
    let path = ctx.dir.outputs();
    let tmp = ctx.dir.root().join(".outputs.jsonl.tmp");
    let mut out = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    let mut values = BTreeMap::new();
    let progress = ctx.progress(p.metrics.len() as u64, "metric");
    for spec in &p.metrics {
        let data = ctx.dataset(spec.data())?;
        tracing::info!(metric = spec.kind().name(), data = spec.data(), items = data.len(), "evaluating");
        let result = run_metric(spec, &lm, &data, &env)?;
        for r in &result.records {
            let line = serde_json::json!({"metric": spec.kind(), "name": spec.prefix(), "data": spec.data(), "record": r});
            writeln!(out, "{line}").map_err(|e| StoreError::io(&tmp, e))?;
        }
        values.extend(result.values);
        progress.step(None, 0);
    }
    progress.finish();
    out.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    Ok(values)
}
