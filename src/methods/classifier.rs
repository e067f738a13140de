//! The `classifier` train method: a safe/unsafe judge trained by the runner. LoRA (from
//! `[model.lora]`) on the base model plus a fresh f32 score head (2 labels: safe, unsafe) read at
//! the last token of the judge input, trained with cross-entropy on labelled responses. Writes
//! `adapter/` (PEFT), `score.safetensors` (`score.weight`, and `score.center`: the mean pooled
//! state of the training inputs before training, subtracted before the head) and `classifier.json`
//! ([`TrainedJudgeInfo`]) into the stage directory; an eval stage uses it with
//! `judge = { kind = "trained", stage = "<this stage's id>" }`.
//!
//! The judge always starts from the base `[model]` (earlier adapters of the pipeline are not
//! merged into it), and the stage passes the pipeline's model through unchanged: its
//! `lineage.json` is its parent's, so the stage after it continues from the same model as if the
//! judge stage were not there.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::params::{OptimizerParams, StageInputs, Trained, Validate};
use super::sft::lora_config;
use crate::eval::judge::{strip_control_tokens, JudgeTemplate, TrainedJudgeInfo};
use crate::model::{self, ClassifierHead, ForwardOptions, HeadConfig, LoadOptions, Pooling, ProblemType};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::store;
use crate::train::{self, classification_example, ClassificationLoss, FrozenPrefix};

/// Label order of trained judges: index 1 is unsafe.
pub const LABELS: [&str; 2] = ["safe", "unsafe"];

/// The judge's own keys; the optimizer block comes beside them (`max_len` also cuts the judge
/// inputs, in training and when judging).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierParams {
    /// Labelled responses (`beavertails`, or preference pairs with `view = "labeled"`).
    pub data: String,
    /// Use at most this many examples (the first ones).
    #[serde(default)]
    pub samples: Option<usize>,
    /// The judge input: `beaverdam` (default) or inline text with `{prompt}`, `{response}`, `{eos}`.
    #[serde(default)]
    pub template: Option<String>,
    /// Standard deviation of the head's initial weights (transformers' initializer_range).
    #[serde(default = "default_init_std")]
    pub head_init_std: f64,
}

fn default_init_std() -> f64 {
    0.02
}

impl Validate for ClassifierParams {
    fn validate(&self, _: &str) -> Result<(), ParamError> {
        let err = |key: &str, msg: String| Err(ParamError::new(key, msg));
        if let Some(t) = &self.template {
            if let Err(msg) = JudgeTemplate::resolve(t) {
                return err("template", msg);
            }
        }
        if self.samples == Some(0) {
            return err("samples", "must be at least 1".into());
        }
        if !(self.head_init_std > 0.0 && self.head_init_std.is_finite()) {
            return err("head_init_std", "must be a positive number".into());
        }
        Ok(())
    }
}

impl StageInputs for ClassifierParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.data.as_str()]
    }
}

/// The `classifier` train method.
pub struct Classifier;

impl super::TypedMethod for Classifier {
    const NAME: &'static str = "classifier";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    /// A judge: later stages read it as an input, they do not continue from it.
    const CHANGES_MODEL: bool = false;
    type Params = Trained<ClassifierParams>;
    fn run(ctx: &StageContext, p: &Self::Params) -> Result<Metrics, StageError> {
        run(ctx, &p.optim, &p.params)
    }
}

fn run(ctx: &StageContext, o: &OptimizerParams, p: &ClassifierParams) -> Result<Metrics, StageError> {
    let lora = lora_config(ctx)?;
    let template = JudgeTemplate::resolve(p.template.as_deref().unwrap_or("beaverdam")).map_err(StageError::Method)?;
    let data = ctx.dataset(&p.data)?;
    let items = data.as_labeled().map_err(|e| {
        StageError::Method(format!(
            "stage {}: data `{}`: {e} (the classifier trains on labelled responses: view = \"labeled\")",
            ctx.config.name, p.data
        ))
    })?;
    let items = &items[..p.samples.map_or(items.len(), |n| n.min(items.len()))];
    if items.is_empty() {
        return Err(StageError::Method(format!("stage {}: data `{}` holds no labelled response", ctx.config.name, p.data)));
    }

    // The judge's own model: the base, a fresh adapter, a fresh head.
    let opts = LoadOptions { device: ctx.device.clone(), dtype: ctx.dtype(), trainable: false };
    let mut lm = model::load(&ctx.config.model.path, &opts)?;
    model::add_lora(&mut lm.model, &lora, ctx.config.seed)?;
    let tok = &lm.tokenizer;
    let specials = tok.special_tokens();
    let eos = tok.eos_token.clone().unwrap_or_default();
    let mut examples = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = template.render(&strip_control_tokens(&item.prompt, &specials), &strip_control_tokens(&item.response, &specials), &eos);
        let mut ids = tok.encode(&text, true)?;
        ids.truncate(o.max_len);
        let class = usize::from(!item.is_safe);
        examples.push(classification_example(ids, class).map_err(|e| StageError::Method(format!("data `{}` item {i}: {e}", p.data)))?);
    }
    let unsafe_n = items.iter().filter(|x| !x.is_safe).count();
    tracing::info!(examples = examples.len(), unsafe_n, "training the classifier judge");

    let hidden = lm.model.config.word_embed_proj_dim;
    let head = ClassificationLoss::new_head(LABELS.len(), hidden, p.head_init_std, ctx.config.seed.wrapping_add(17), &ctx.device)?;
    let mut params = lm.model.trainable_params();
    params.push(("score.weight".to_string(), head.clone()));
    // Blocks below the lowest adapter never change: run them once per example, not per step.
    let prefix = match train::classify::first_trainable_layer(&lm.model) {
        Some(layer) if layer > 0 => {
            let seqs: Vec<Vec<u32>> = examples.iter().map(|e| e.input_ids.clone()).collect();
            tracing::info!(layer, "caching the frozen blocks below the adapters");
            Some(FrozenPrefix::compute(&lm.model, &seqs, layer, o.batch_size)?)
        }
        _ => None,
    };
    let mut rule = ClassificationLoss {
        prefix,
        head: ClassifierHead {
            weight: head.as_tensor().clone(),
            center: None,
            config: HeadConfig {
                labels: LABELS.iter().map(|s| s.to_string()).collect(),
                problem_type: ProblemType::SingleLabel,
                pooling: Pooling::LastValid,
            },
        },
        pad_id: tok.pad_id(),
    };
    // Center the pooled states on their mean over (up to 64 of) the training inputs, as the
    // model is before training (the adapters start at zero).
    let sample: Vec<Vec<u32>> = examples.iter().take(64).map(|e| e.input_ids.clone()).collect();
    let mut sum: Option<Tensor> = None;
    for chunk in sample.chunks(o.batch_size.max(1)) {
        let feats = train::classify::pooled_states(&lm.model, &rule.head, chunk, rule.pad_id, rule.prefix.as_ref())?;
        let s = feats.sum(0).map_err(model::ModelError::from)?;
        sum = Some(match sum {
            Some(acc) => (acc + s).map_err(model::ModelError::from)?,
            None => s,
        });
    }
    let center = sum.expect("at least one example").affine(1.0 / sample.len() as f64, 0.0).map_err(model::ModelError::from)?;
    rule.head.center = Some(center);
    let cfg = o.trainer(ctx.config.seed);
    let total = train::trainer::total_steps(examples.len(), &cfg);
    let progress = ctx.progress(total as u64, "step");
    let mut log_err = None;
    let summary = train::train_params(&lm.model, params, &examples, &cfg, &mut rule, &mut |s| {
        progress.step(Some(s.loss), s.tokens as u64);
        if let Err(e) = ctx.log_jsonl(s) {
            log_err.get_or_insert(e);
        }
    })?;
    progress.finish();
    if let Some(e) = log_err {
        return Err(e);
    }
    // Accuracy on the training examples (how well the head fits them).
    let mut correct = 0usize;
    for chunk in examples.chunks(o.batch_size.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|e| e.input_ids.clone()).collect();
        let logits = train::classify::classification_logits(
            &lm.model,
            &rule.head,
            &seqs,
            rule.pad_id,
            rule.prefix.as_ref(),
            &ForwardOptions::inference(),
        )?;
        let pred: Vec<u32> = logits.argmax(1).and_then(|t| t.to_vec1()).map_err(model::ModelError::from)?;
        correct += chunk.iter().zip(pred).filter(|(e, p)| e.labels.last().copied() == Some(*p as i64)).count();
    }

    model::save_adapter(&lm.model, &lora, &ctx.config.model.path, &ctx.dir.adapter())?;
    model::classify::save_head(head.as_tensor(), rule.head.center.as_ref(), &ctx.dir.score_head())?;
    let info = TrainedJudgeInfo {
        base_model: ctx.config.model.path.clone(),
        dtype: ctx.config.model.dtype,
        adapter: "adapter".into(),
        head: ctx.dir.score_head().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        unsafe_label: 1,
        template: template.text,
        max_len: o.max_len,
    };
    store::write_json(&ctx.dir.root().join(TrainedJudgeInfo::FILE), &info)?;
    // The pipeline's model passes through: this stage's lineage is its parent's.
    ctx.pass_lineage_through()?;
    Ok(BTreeMap::from([
        ("train_loss".to_string(), summary.final_loss),
        ("train_mean_loss".to_string(), summary.mean_loss),
        ("train_steps".to_string(), summary.steps as f64),
        ("train_examples".to_string(), examples.len() as f64),
        ("train_acc".to_string(), 100.0 * correct as f64 / examples.len().max(1) as f64),
        ("train_unsafe_share".to_string(), 100.0 * unsafe_n as f64 / items.len().max(1) as f64),
    ]))
}
