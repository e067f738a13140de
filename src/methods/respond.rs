//! The `respond` generate method: the model answers every prompt of a dataset; the answers
//! become an instruction dataset (`dataset.jsonl`, Alpaca layout) that later stages read as
//! `data = "@<stage id>"`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{StageInputs, Validate};
use crate::data::{Instruction, Items};
use crate::eval::generation::{instructions, render_prompt, PromptFormat};
use crate::model::{generate, GenerationConfig};
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

crate::whole_table_params!(RespondParams);

/// The `respond` generate method.
pub struct Respond;

impl super::TypedMethod for Respond {
    const NAME: &'static str = "respond";
    const KIND: StageKind = StageKind::Generate;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = false;
    type Params = RespondParams;
    fn run(ctx: &StageContext, p: &RespondParams) -> Result<Metrics, StageError> {
        run(ctx, p)
    }
}

impl Validate for RespondParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ParamError { key: "top_p".into(), msg: "must be in (0, 1]".into(), suggestion: None });
        }
        if self.temperature < 0.0 {
            return Err(ParamError { key: "temperature".into(), msg: "must be >= 0".into(), suggestion: None });
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
    let tok = &lm.tokenizer;
    let mut stop: Vec<u32> = tok.eos_id().into_iter().collect();
    stop.extend(lm.model.config.eos_token_ids.iter().copied());
    let decode = |ids: &[u32]| tok.decode(ids, true).unwrap_or_default();
    let progress = ctx.progress(items.len() as u64, "prompt");
    let mut out = Vec::with_capacity(items.len());
    for (i, chunk) in items.chunks(p.batch_size.max(1)).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|item| tok.encode(&render_prompt(&lm, data.template(), item, p.prompt_format)?, true))
            .collect::<Result<_, _>>()?;
        // A different seed per batch keeps sampled batches independent and the stage reproducible.
        let cfg = GenerationConfig {
            max_new_tokens: p.max_new_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: ctx.config.seed.wrapping_add(i as u64),
            stop_token_ids: stop.clone(),
            ..Default::default()
        };
        for (item, g) in chunk.iter().zip(generate(&lm.model, &prompts, &cfg, tok.pad_id(), Some(&decode))?) {
            progress.step(None, g.token_ids.len() as u64);
            out.push(Instruction { output: g.text.unwrap_or_default().trim().to_string(), ..item.clone() });
        }
    }
    progress.finish();
    let n = out.len();
    ctx.write_dataset(&Items::Instructions(out))?;
    Ok(BTreeMap::from([("generated".to_string(), n as f64)]))
}
