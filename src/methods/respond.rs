//! The `respond` generate method: the model answers every prompt of a dataset; the answers
//! become an instruction dataset (`dataset.jsonl`, Alpaca layout) that later stages read as
//! `data = "@<stage id>"`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::load_dataset;
use crate::data::{Instruction, Items};
use crate::eval::generation::{instructions, GenerationSetup, PromptFormat};
use crate::exec::{AdapterMode, ExecError, StageContext};
use crate::plan::ParamError;

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
}

fn default_max_new_tokens() -> usize {
    128
}
fn one() -> f64 {
    1.0
}
fn default_batch() -> usize {
    8
}

impl RespondParams {
    pub fn check(&self) -> Result<(), ParamError> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ParamError { key: "top_p".into(), msg: "must be in (0, 1]".into(), suggestion: None });
        }
        if self.temperature < 0.0 {
            return Err(ParamError { key: "temperature".into(), msg: "must be >= 0".into(), suggestion: None });
        }
        Ok(())
    }
}

impl super::params::StageInputs for RespondParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
}

pub fn run(ctx: &StageContext, p: &RespondParams) -> Result<BTreeMap<String, f64>, ExecError> {
    let lm = ctx.load_model(AdapterMode::Merged)?;
    let data = load_dataset(ctx, &p.data)?;
    let items = instructions(&data)?;
    let bar = crate::exec::step_progress(items.len() as u64, &ctx.config.name);
    let tick = |n: usize| bar.inc(n as u64);
    let mut setup = GenerationSetup::plain(p.prompt_format, p.max_new_tokens, p.batch_size);
    setup.options.temperature = p.temperature;
    setup.options.top_p = p.top_p;
    setup.options.seed = ctx.config.seed;
    let (conversations, generator) = setup.prepare(&lm, data.template(), &items)?;
    let responses = generator.with_progress(&tick).generate(&conversations)?;
    bar.finish_and_clear();
    let out: Vec<Instruction> = items.iter().zip(responses).map(|(item, r)| Instruction { output: r.text, ..item.clone() }).collect();
    let n = out.len();
    crate::data::write_jsonl(&ctx.dir.join("dataset.jsonl"), &Items::Instructions(out)).map_err(|e| ExecError::Method(e.to_string()))?;
    Ok(BTreeMap::from([("generated".to_string(), n as f64)]))
}
