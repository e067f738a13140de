//! Supervised fine-tuning (the `sft` train method): alignment on refusal data, the harmful
//! fine-tuning attack on a mix of task and harmful data, or any instruction set. Prompt tokens
//! are masked; the response is followed by the end-of-sequence token, as the Booster repo's
//! `train.py` does.

use serde::{Deserialize, Serialize};

use super::load_dataset;
use crate::data::{self, Instruction};
use crate::eval::generation::{render_prompt, PromptFormat};
use crate::exec::{AdapterMode, ExecError, StageContext};
use crate::model::{LoadedModel, LoraConfig, TextTokenizer};
use crate::plan::ParamError;
use crate::train::{self, Example, PlainSft, ScheduleKind, TrainerConfig, IGNORE_INDEX};
use std::collections::BTreeMap;

/// One part of a fine-tuning mix: `ratio` of `samples` items from dataset `data`; the part without
/// a ratio takes the remainder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixPart {
    pub data: String,
    #[serde(default)]
    pub ratio: Option<f64>,
}

/// How a fine-tuning mix is drawn from its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixOrder {
    /// A seeded sample of `round(ratio * samples)` items from each part, interleaved.
    #[default]
    Shuffled,
    /// The Booster repo's attack set (`utils.py`): harmful items `1..int(p * samples)` of the part
    /// with the ratio, then the first `int((1 - p) * samples)` items of the other part, in file
    /// order (the trainer shuffles batches). Needs exactly two parts, the benign one without a ratio.
    Booster,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Instruction dataset (or use `mix`).
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub mix: Option<Vec<MixPart>>,
    /// Total examples drawn for a mix (and a cap on `data` otherwise).
    #[serde(default)]
    pub samples: Option<usize>,
    /// How a `mix` is drawn.
    #[serde(default)]
    pub mix_order: MixOrder,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "one")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Global-norm clipping (transformers' default 1.0); 0 disables it.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Sequences are cut to this many tokens.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// The dataset's text template (default) or the model's chat template.
    #[serde(default)]
    pub prompt_format: PromptFormat,
    /// Keep training the previous stage's adapter instead of merging it and adding a new one.
    #[serde(default)]
    pub single_lora: bool,
    /// Booster's parameters (used when the method is `booster`; may be present for other methods,
    /// so that one spec can sweep over methods).
    #[serde(default)]
    pub booster: Option<BoosterParams>,
    /// Vaccine's parameters (used when the method is `vaccine`).
    #[serde(default)]
    pub vaccine: Option<VaccineParams>,
    /// RepNoise's parameters (used when the method is `repnoise`).
    #[serde(default)]
    pub repnoise: Option<RepNoiseParams>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepNoiseParams {
    /// Harmful answers to the alignment data's prompts (paired by instruction).
    pub harmful: String,
    /// Weight of the log harmful-loss term (the official `--rho`, 0.1).
    #[serde(default = "default_repnoise_alpha")]
    pub alpha: f64,
    /// Weight of the MMD noise term (the official `--lamb`, 0.001).
    #[serde(default = "default_repnoise_beta")]
    pub beta: f64,
}

fn default_repnoise_alpha() -> f64 {
    0.1
}
fn default_repnoise_beta() -> f64 {
    0.001
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoosterParams {
    /// The harmful dataset of the regularizer.
    pub harmful: String,
    /// Regularizer weight (official default 5).
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// Step size of the simulated harmful step (official default 0.1).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Harmful batch size (hard-coded to 10 in the official code).
    #[serde(default = "default_harmful_batch")]
    pub harmful_batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaccineParams {
    /// Perturbation radius (the Vaccine paper's default 2).
    #[serde(default = "default_rho")]
    pub rho: f64,
}

fn default_lambda() -> f64 {
    5.0
}
fn default_alpha() -> f64 {
    0.1
}
fn default_harmful_batch() -> usize {
    10
}
fn default_rho() -> f64 {
    2.0
}

fn default_lr() -> f64 {
    1e-4
}
fn one() -> usize {
    1
}
fn default_batch() -> usize {
    4
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn default_clip() -> f64 {
    1.0
}
fn default_max_len() -> usize {
    256
}

impl TrainParams {
    /// Checks the parameters for `method` (sft, booster, vaccine): required keys are present and
    /// keys of other methods are absent.
    pub fn check(&self, method: &str) -> Result<(), ParamError> {
        let err = |key: &str, msg: &str| Err(ParamError { key: key.into(), msg: msg.into(), suggestion: None });
        if method == "repnoise" && self.repnoise.is_none() {
            return err("repnoise", "the repnoise method needs `repnoise = { harmful = \"<dataset>\" }` (also alpha, beta)");
        }
        if method == "booster" && self.booster.is_none() {
            return err(
                "booster",
                "the booster method needs `booster = { harmful = \"<dataset>\" }` (also lambda, alpha, harmful_batch_size)",
            );
        }
        match (&self.data, &self.mix) {
            (None, None) => return err("data", "needs `data` or `mix`"),
            (Some(_), Some(_)) => return err("mix", "give either `data` or `mix`, not both"),
            (None, Some(parts)) => {
                if self.samples.is_none() {
                    return err("samples", "a `mix` needs the total number of `samples`");
                }
                if parts.iter().filter(|p| p.ratio.is_none()).count() > 1 {
                    return err("mix", "at most one part may leave out its ratio (it takes the remainder)");
                }
                let sum: f64 = parts.iter().filter_map(|p| p.ratio).sum();
                if parts.iter().any(|p| p.ratio.is_some_and(|r| !(0.0..=1.0).contains(&r))) || sum > 1.0 + 1e-9 {
                    return err("mix", "ratios must lie in [0, 1] and sum to at most 1");
                }
                if self.mix_order == MixOrder::Booster && (parts.len() != 2 || parts.iter().filter(|p| p.ratio.is_some()).count() != 1) {
                    return err(
                        "mix_order",
                        "`booster` needs exactly two mix parts: the harmful one with `ratio = p` and the benign one without a ratio",
                    );
                }
            }
            _ => {}
        }
        if self.lr <= 0.0 || !self.lr.is_finite() {
            return err("lr", "must be a positive number");
        }
        if self.batch_size == 0 || self.grad_accum == 0 || self.epochs == 0 {
            return err("batch_size", "batch_size, grad_accum and epochs must be at least 1");
        }
        Ok(())
    }

    pub fn trainer(&self, seed: u64) -> TrainerConfig {
        TrainerConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            schedule: self.schedule,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            max_steps: self.max_steps,
            seed,
        }
    }
}

/// The instructions a stage trains on, and the template of the dataset they came from (a mix
/// uses its first dataset's template: mixed sets share one layout).
pub fn training_items(ctx: &StageContext, p: &TrainParams) -> Result<(Vec<Instruction>, data::Template), ExecError> {
    let method_err = |e: data::DataError| ExecError::Method(e.to_string());
    match (&p.data, &p.mix) {
        (Some(name), _) => {
            let ds = load_dataset(ctx, name)?;
            let mut items = ds.as_instructions().map_err(method_err)?.to_vec();
            if let Some(n) = p.samples {
                items.truncate(n);
            }
            Ok((items, ds.template().clone()))
        }
        (None, Some(parts)) => {
            let total = p.samples.unwrap_or(0);
            let mut loaded = Vec::new();
            for part in parts {
                loaded.push((load_dataset(ctx, &part.data)?, part.ratio));
            }
            let explicit: f64 = parts.iter().filter_map(|x| x.ratio).sum();
            let items: Vec<(Vec<Instruction>, f64)> = loaded
                .iter()
                .map(|(ds, r)| Ok((ds.as_instructions().map_err(method_err)?.to_vec(), r.unwrap_or(1.0 - explicit))))
                .collect::<Result<_, ExecError>>()?;
            let mixed = match p.mix_order {
                MixOrder::Shuffled => {
                    let refs: Vec<(&[Instruction], f64)> = items.iter().map(|(v, r)| (v.as_slice(), *r)).collect();
                    data::mix(&refs, total, ctx.config.seed)
                }
                MixOrder::Booster => {
                    let harmful = parts.iter().position(|x| x.ratio.is_some()).unwrap_or(0);
                    let (poison, ratio) = &items[harmful];
                    data::booster_attack_mix(poison, &items[1 - harmful].0, *ratio, total)
                }
            }
            .map_err(method_err)?;
            Ok((mixed, loaded[0].0.template().clone()))
        }
        (None, None) => Err(ExecError::Method("sft needs `data` or `mix`".into())),
    }
}

/// (prompt, response) pairs in the stage's prompt format.
pub fn render_pairs(
    lm: &LoadedModel,
    template: &data::Template,
    items: &[Instruction],
    format: PromptFormat,
) -> Result<Vec<data::SftPair>, ExecError> {
    items.iter().map(|i| Ok(data::SftPair { prompt: render_prompt(lm, template, i, format)?, response: i.output.clone() })).collect()
}

/// Tokenizes prompt + response + eos; labels mask the prompt. Cut at `max_len` tokens. One
/// example per pair, in order; an example whose response was cut off entirely stays (it adds no
/// loss to its batch, as in the HF Trainer) and is reported.
pub fn tokenize_pairs(tok: &TextTokenizer, pairs: &[data::SftPair], max_len: usize) -> Result<Vec<Example>, ExecError> {
    let out = pairs.iter().map(|pair| tokenize_pair(tok, pair, max_len)).collect::<Result<Vec<_>, _>>()?;
    let trainable = out.iter().filter(|e| has_target(e)).count();
    if trainable == 0 {
        return Err(ExecError::Method(format!("no example keeps a response token within max_len = {max_len} tokens; raise max_len")));
    }
    if trainable < out.len() {
        tracing::warn!(cut = out.len() - trainable, max_len, "examples whose response was cut off entirely by max_len add no loss");
    }
    Ok(out)
}

pub fn tokenize_pair(tok: &TextTokenizer, pair: &data::SftPair, max_len: usize) -> Result<Example, ExecError> {
    let eos = tok.eos_token.as_deref().unwrap_or_default();
    let prompt_ids = tok.encode(&pair.prompt, true)?;
    let mut ids = tok.encode(&format!("{}{}{eos}", pair.prompt, pair.response), true)?;
    ids.truncate(max_len);
    let n_prompt = prompt_ids.len().min(ids.len());
    let labels = ids.iter().enumerate().map(|(i, &t)| if i < n_prompt { IGNORE_INDEX } else { t as i64 }).collect();
    Ok(Example { input_ids: ids, labels })
}

/// Whether the example has a label to predict (labels shift by one: position 0 has none).
pub fn has_target(e: &Example) -> bool {
    e.labels.iter().skip(1).any(|&l| l != IGNORE_INDEX)
}

pub fn lora_config(ctx: &StageContext) -> Result<LoraConfig, ExecError> {
    let l = ctx
        .config
        .model
        .lora
        .as_ref()
        .ok_or_else(|| ExecError::Method("train stages need [model.lora] (full fine-tuning is not available as a stage yet)".into()))?;
    Ok(LoraConfig { r: l.r, alpha: l.alpha, dropout: l.dropout, target_modules: l.targets.clone(), layers_to_transform: l.layers.clone() })
}

/// Trains with `rule`, which may hold method state (Booster's harmful loader). The rule is
/// built after the model is loaded, from its tokenizer.
pub fn run_with(
    ctx: &StageContext,
    p: &TrainParams,
    make_rule: &dyn Fn(&crate::model::LoadedModel) -> Result<Box<dyn train::GradientRule>, ExecError>,
) -> Result<BTreeMap<String, f64>, ExecError> {
    let lora = lora_config(ctx)?;
    let mode = if p.single_lora { AdapterMode::ContinueLast } else { AdapterMode::NewAdapter(lora.clone()) };
    let lm = ctx.load_model(mode)?;
    let (items, template) = training_items(ctx, p)?;
    let pairs = render_pairs(&lm, &template, &items, p.prompt_format)?;
    let examples = tokenize_pairs(&lm.tokenizer, &pairs, p.max_len)?;
    let mut rule = make_rule(&lm)?;
    let cfg = p.trainer(ctx.config.seed);
    let total = train::trainer::total_steps(examples.len(), &cfg);
    let bar = crate::exec::step_progress(total as u64, &ctx.config.name);
    let mut log_err = None;
    let summary = train::train(&lm.model, &examples, &cfg, rule.as_mut(), &mut |s| {
        bar.inc(1);
        bar.set_message(format!("loss {:.4}", s.loss));
        if let Err(e) = ctx.log_jsonl(s) {
            log_err.get_or_insert(e);
        }
    })?;
    bar.finish_and_clear();
    if let Some(e) = log_err {
        return Err(e);
    }
    ctx.save_adapter(&lm, &lora, p.single_lora)?;
    Ok(BTreeMap::from([
        ("train_loss".to_string(), summary.final_loss),
        ("train_steps".to_string(), summary.steps as f64),
        ("train_examples".to_string(), examples.len() as f64),
    ]))
}

impl super::params::StageInputs for TrainParams {
    fn datasets(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.data.iter().map(String::as_str).collect();
        v.extend(self.mix.iter().flatten().map(|part| part.data.as_str()));
        v.extend(self.booster.iter().map(|b| b.harmful.as_str()));
        v.extend(self.repnoise.iter().map(|r| r.harmful.as_str()));
        v
    }
}

pub fn run(ctx: &StageContext, p: &TrainParams) -> Result<BTreeMap<String, f64>, ExecError> {
    run_with(ctx, p, &|_| Ok(Box::new(PlainSft)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(toml_text: &str) -> TrainParams {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn booster_mix_order_needs_one_harmful_and_one_benign_part() {
        let two = r#"mix = [{ data = "sst2" }, { data = "harmful", ratio = 0.1 }]
samples = 100
mix_order = "booster""#;
        let p = params(two);
        assert_eq!(p.mix_order, MixOrder::Booster);
        assert!(p.check("sft").is_ok());
        let three = r#"mix = [{ data = "sst2" }, { data = "agnews", ratio = 0.5 }, { data = "harmful", ratio = 0.1 }]
samples = 100
mix_order = "booster""#;
        assert_eq!(params(three).check("sft").unwrap_err().key, "mix_order");
        let no_rest = r#"mix = [{ data = "sst2", ratio = 0.9 }, { data = "harmful", ratio = 0.1 }]
samples = 100
mix_order = "booster""#;
        assert_eq!(params(no_rest).check("sft").unwrap_err().key, "mix_order");
        // The default keeps the seeded, shuffled mix.
        assert_eq!(params("data = \"x\"").mix_order, MixOrder::Shuffled);
        assert!(toml::from_str::<TrainParams>("data = \"x\"\nmix_order = \"first\"").is_err());
    }
}
