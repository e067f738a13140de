//! The `respond` generate method: the model answers every prompt of a dataset; the answers
//! become an instruction dataset (`dataset.jsonl`, Alpaca layout) that later stages read as
//! `data = "@<stage id>"`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{StageInputs, Validate};
use crate::data::{Instruction, Items};
use crate::eval::generation::{instructions, GenerationSetup, PromptFormat};
use crate::eval::strategy::StrategySpec;
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondParams {
    /// Prompts (or instructions, whose outputs are replaced).
    pub data: String,
    #[serde(default)]
    pub prompt_format: PromptFormat,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The inference strategy (`eval::strategy`), e.g. mistake analysis's induction hint
    /// `{ kind = "hint", suffix = "..." }`. The records keep the dataset's instruction as it was.
    #[serde(default, skip_serializing_if = "StrategySpec::is_plain")]
    pub strategy: StrategySpec,
}

// Defaults shared with the other generate methods (`review`).
pub(super) fn default_max_new_tokens() -> usize {
    128
}
pub(super) fn one() -> f64 {
    1.0
}
pub(super) fn default_batch() -> usize {
    8
}

/// Checks sampling options: top-p in (0, 1], a non-negative temperature (0 = greedy).
pub(super) fn check_sampling(temperature: f64, top_p: f64) -> Result<(), ParamError> {
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ParamError::new("top_p", "must be in (0, 1]"));
    }
    if temperature < 0.0 {
        return Err(ParamError::new("temperature", "must be >= 0"));
    }
    Ok(())
}

crate::whole_table_params!(RespondParams);

/// The `respond` generate method.
pub struct Respond;

impl super::TypedMethod for Respond {
    const NAME: &'static str = "respond";
    const KIND: StageKind = StageKind::Generate;
    // 2: Alpaca prompts stop at the next "### Response:".
    const VERSION: u32 = 2;
    const CHANGES_MODEL: bool = false;
    type Params = RespondParams;
    fn run(ctx: &StageContext, p: &RespondParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

impl Validate for RespondParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        check_sampling(self.temperature, self.top_p)?;
        self.strategy.check().map_err(|(key, msg)| ParamError::new(format!("strategy.{key}"), msg))?;
        if self.strategy.needs_grader() {
            return Err(ParamError::new("strategy.critic", "the ground-truth critic needs gold answers: metric = \"bbq_generate\" only"));
        }
        Ok(())
    }
}

impl StageInputs for RespondParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
}

fn run(ctx: &StageContext, p: &RespondParams) -> Result<Metrics, StageError> {
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let data = ctx.dataset(&p.data)?;
    let items = instructions(&data)?;
    let mut setup = GenerationSetup::plain(p.prompt_format, p.max_new_tokens, p.batch_size);
    setup.options.temperature = p.temperature;
    setup.options.top_p = p.top_p;
    setup.options.seed = ctx.config.seed;
    setup.strategy = p.strategy.build()?;
    // A multi-round strategy answers each prompt several times: the bar counts responses.
    let progress = ctx.progress((items.len() * setup.strategy.generations()) as u64, "response");
    let tick = |n: usize| (0..n).for_each(|_| progress.step(None, 0));
    let (conversations, generator) = setup.prepare(&lm, data.template(), &items)?;
    let outcomes = setup.strategy.run(&conversations, &generator.with_progress(&tick))?;
    progress.finish();
    let out: Vec<Instruction> =
        items.iter().zip(outcomes).map(|(item, o)| Instruction { output: o.response.text, ..item.clone() }).collect();
    let n = out.len();
    ctx.write_dataset(&Items::Instructions(out))?;
    Ok(BTreeMap::from([("generated".to_string(), n as f64)]))
}
