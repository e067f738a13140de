//! Supervised fine-tuning (the `sft` train method): alignment on refusal data, the harmful
//! fine-tuning attack on a mix of task and harmful data, or any instruction set. Prompt tokens
//! are masked; the response is followed by the end-of-sequence token, as the Booster repo's
//! `train.py` does.

use serde::{Deserialize, Serialize};

use super::params::{OptimizerParams, StageInputs, Trained, Validate};
use crate::data::{self, Instruction};
use crate::eval::generation::{render_prompt, PromptFormat};
use crate::model::{LoadedModel, LoraConfig, TextTokenizer};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{AdapterMode, Metrics, StageContext, StageError};
use crate::train::{self, EpochBatches, Example, PlainSft, IGNORE_INDEX};
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

/// The training data of the SFT family (sft, booster, vaccine, repnoise): a dataset or a mix,
/// and how prompts are rendered. The optimizer block and the method option tables come beside it
/// (see [`super::params::Trained`]).
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
    /// The dataset's text template (default) or the model's chat template.
    #[serde(default)]
    pub prompt_format: PromptFormat,
    /// Keep training the previous stage's adapter instead of merging it and adding a new one.
    #[serde(default)]
    pub single_lora: bool,
    /// What trains: a LoRA adapter (`[model.lora]`) or every weight.
    #[serde(default)]
    pub finetune: Finetune,
}

/// What a train stage trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    /// A LoRA adapter as `[model.lora]` configures it (new, or the previous one continued).
    #[default]
    Lora,
    /// Every weight of the model (f32 optimizer state); the stage saves the full weights in HF
    /// safetensors layout and later stages start from them.
    Full,
}

/// The model a train stage trains, and what it saves at the end.
pub struct Trainee {
    pub lm: LoadedModel,
    /// The adapter's configuration; `None` under full fine-tuning.
    lora: Option<LoraConfig>,
    continued: bool,
}

impl Trainee {
    /// Loads the stage's model for training: every weight (`full`), the previous adapter
    /// continued (`single_lora`) or a new adapter.
    pub fn load(ctx: &StageContext, finetune: Finetune, single_lora: bool) -> Result<Self, StageError> {
        match finetune {
            Finetune::Full if single_lora => Err(StageError::Method(format!(
                "stage {}: `single_lora` continues an adapter; it cannot go with finetune = \"full\"",
                ctx.config.name
            ))),
            Finetune::Full => Ok(Self { lm: ctx.load_model(AdapterMode::Full)?, lora: None, continued: false }),
            Finetune::Lora => {
                let lora = lora_config(ctx)?;
                let mode = if single_lora { AdapterMode::ContinueLast } else { AdapterMode::NewAdapter(lora.clone()) };
                Ok(Self { lm: ctx.load_model(mode)?, lora: Some(lora), continued: single_lora })
            }
        }
    }

    pub fn is_full(&self) -> bool {
        self.lora.is_none()
    }

    /// Saves what trained (the adapter, or every weight) and the lineage later stages load.
    pub fn save(&self, ctx: &StageContext) -> Result<(), StageError> {
        match &self.lora {
            Some(cfg) => ctx.save_adapter(&self.lm, cfg, self.continued),
            None => ctx.save_full_weights(&self.lm),
        }
    }
}

/// The `sft` method: plain supervised fine-tuning.
pub struct Sft;

impl super::TypedMethod for Sft {
    const NAME: &'static str = "sft";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<TrainParams>;
    fn run(ctx: &StageContext, p: &Self::Params) -> Result<Metrics, StageError> {
        let mut metrics = run_with(ctx, &p.optim, &p.params, &|_| Ok(Box::new(PlainSft)))?;
        // One forward and one backward pass over every training token.
        let tokens = metrics["train_tokens"];
        metrics.insert("compute_forward_tokens".into(), tokens);
        metrics.insert("compute_backward_tokens".into(), tokens);
        Ok(metrics)
    }
}

impl Validate for TrainParams {
    /// Checks the data selection: `data` or a well-formed `mix`.
    fn validate(&self, _method: &str) -> Result<(), ParamError> {
        let err = |key: &str, msg: &str| Err(ParamError::new(key, msg));
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
        if self.samples == Some(0) {
            return err("samples", "must be at least 1");
        }
        if self.single_lora && self.finetune == Finetune::Full {
            return err("finetune", "`single_lora` continues an adapter: it cannot go with finetune = \"full\"");
        }
        Ok(())
    }
}

/// The instructions a stage trains on, and the template of the dataset they came from (a mix
/// uses its first dataset's template: mixed sets share one layout).
pub fn training_items(ctx: &StageContext, p: &TrainParams) -> Result<(Vec<Instruction>, data::Template), StageError> {
    let method_err = |e: data::DataError| StageError::Method(e.to_string());
    match (&p.data, &p.mix) {
        (Some(name), _) => {
            let ds = ctx.dataset(name)?;
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
                loaded.push((ctx.dataset(&part.data)?, part.ratio));
            }
            let explicit: f64 = parts.iter().filter_map(|x| x.ratio).sum();
            let items: Vec<(Vec<Instruction>, f64)> = loaded
                .iter()
                .map(|(ds, r)| Ok((ds.as_instructions().map_err(method_err)?.to_vec(), r.unwrap_or(1.0 - explicit))))
                .collect::<Result<_, StageError>>()?;
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
        (None, None) => Err(StageError::Method("sft needs `data` or `mix`".into())),
    }
}

/// (prompt, response) pairs in the stage's prompt format.
pub fn render_pairs(
    lm: &LoadedModel,
    template: &data::Template,
    items: &[Instruction],
    format: PromptFormat,
) -> Result<Vec<data::SftPair>, StageError> {
    items.iter().map(|i| Ok(data::SftPair { prompt: render_prompt(lm, template, i, format)?, response: i.output.clone() })).collect()
}

/// Tokenizes prompt + response + eos; labels mask the prompt. Cut at `max_len` tokens. One
/// example per pair, in order; an example whose response was cut off entirely stays (it adds no
/// loss to its batch, as in the HF Trainer) and is reported.
pub fn tokenize_pairs(tok: &TextTokenizer, pairs: &[data::SftPair], max_len: usize) -> Result<Vec<Example>, StageError> {
    let out = pairs.iter().map(|pair| tokenize_pair(tok, pair, max_len)).collect::<Result<Vec<_>, _>>()?;
    let trainable = out.iter().filter(|e| has_target(e)).count();
    if trainable == 0 {
        return Err(StageError::Method(format!("no example keeps a response token within max_len = {max_len} tokens; raise max_len")));
    }
    if trainable < out.len() {
        tracing::warn!(cut = out.len() - trainable, max_len, "examples whose response was cut off entirely by max_len add no loss");
    }
    Ok(out)
}

pub fn tokenize_pair(tok: &TextTokenizer, pair: &data::SftPair, max_len: usize) -> Result<Example, StageError> {
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

pub fn lora_config(ctx: &StageContext) -> Result<LoraConfig, StageError> {
    let l = ctx.config.model.lora.as_ref().ok_or_else(|| {
        StageError::Method(format!(
            "stage {}: LoRA training needs [model.lora] (or finetune = \"full\" to train every weight)",
            ctx.config.name
        ))
    })?;
    Ok(LoraConfig { r: l.r, alpha: l.alpha, dropout: l.dropout, target_modules: l.targets.clone(), layers_to_transform: l.layers.clone() })
}

/// Trains with `rule`, which may hold method state (Booster's harmful loader). The rule is
/// built after the model is loaded, from its tokenizer.
pub fn run_with(
    ctx: &StageContext,
    optim: &OptimizerParams,
    p: &TrainParams,
    make_rule: &dyn Fn(&LoadedModel) -> Result<Box<dyn train::GradientRule>, StageError>,
) -> Result<Metrics, StageError> {
    let trainee = Trainee::load(ctx, p.finetune, p.single_lora)?;
    let lm = &trainee.lm;
    let (items, template) = training_items(ctx, p)?;
    let pairs = render_pairs(lm, &template, &items, p.prompt_format)?;
    let examples = tokenize_pairs(&lm.tokenizer, &pairs, optim.max_len)?;
    let mut rule = make_rule(lm)?;
    let summary = train_logged(ctx, lm, &mut EpochBatches::new(&examples, &optim.trainer(ctx.config.seed)), optim, rule.as_mut())?;
    trainee.save(ctx)?;
    Ok(BTreeMap::from([
        ("train_loss".to_string(), summary.final_loss),
        ("train_steps".to_string(), summary.steps as f64),
        ("train_examples".to_string(), examples.len() as f64),
        ("train_tokens".to_string(), summary.tokens as f64),
    ]))
}

/// Runs the trainer over `source` with the stage's progress, step log and step checkpoints.
pub fn train_logged<B: train::Batch>(
    ctx: &StageContext,
    lm: &LoadedModel,
    source: &mut dyn train::BatchSource<Batch = B>,
    optim: &OptimizerParams,
    rule: &mut dyn train::GradientRule<B>,
) -> Result<train::TrainSummary, StageError> {
    let progress = ctx.progress(source.total_steps() as u64, "step");
    let mut log_err = None;
    let cfg = optim.trainer(ctx.config.seed);
    let checkpointing = ctx.checkpointing()?;
    let summary = train::train_checkpointed(
        &lm.model,
        lm.model.trainable_params(),
        source,
        &cfg,
        rule,
        &mut |s| {
            progress.step(Some(s.loss), s.tokens as u64);
            if let Err(e) = ctx.log_jsonl(s) {
                log_err.get_or_insert(e);
            }
        },
        &checkpointing,
    )?;
    progress.finish();
    match log_err {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

impl StageInputs for TrainParams {
    fn datasets(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.data.iter().map(String::as_str).collect();
        v.extend(self.mix.iter().flatten().map(|part| part.data.as_str()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(toml_text: &str) -> TrainParams {
        toml::from_str(toml_text).unwrap()
    }

    impl TrainParams {
        fn check(&self, method: &str) -> Result<(), ParamError> {
            self.validate(method)
        }
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
