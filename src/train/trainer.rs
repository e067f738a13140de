//! The training loop, as transformers' `Trainer` runs it: seeded shuffling per epoch, batches,
//! gradient accumulation, a warmup schedule over the total number of optimizer steps, global-norm
//! clipping, AdamW. What a step is made of is pluggable ([`BatchSource`]: single sequences,
//! pairs, several streams), and so is how a step's gradient is computed ([`GradientRule`]: plain
//! SFT, or the multi-pass rules of Booster, Vaccine and RepNoise).

use candle_core::Var;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::batches::{Batch, BatchSource, EpochBatches};
use super::checkpoint::{self, Checkpointing, SavedState};
use super::{accumulated_gradients, AdamW, AdamWConfig, Gradients, LrSchedule, ScheduleKind, TrainBatch};
use crate::model::{CausalLm, DropoutRng, ForwardOptions, ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f64,
    /// A fixed number of warmup steps, instead of `warmup_ratio` of the total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    /// The schedule runs over this many times the run's steps (DeepSpeed's `total_num_steps` as
    /// Dromedary's finetune.py sets it: steps × processes), so its decay stops short of 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_steps_multiplier: Option<usize>,
    pub weight_decay: f64,
    /// transformers' default is 1.0; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Stop after this many optimizer steps (overrides epochs when smaller).
    pub max_steps: Option<usize>,
    pub seed: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-4,
            schedule: ScheduleKind::Constant,
            warmup_ratio: 0.0,
            warmup_steps: None,
            schedule_steps_multiplier: None,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            max_steps: None,
            seed: 0,
        }
    }
}

/// One training example: token ids and per-token labels (`-100` = not trained on).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Computes the gradient of one optimizer step from its micro-batches (of type `B`: single
/// sequences by default, pairs or one batch per stream for other methods).
pub trait GradientRule<B = TrainBatch> {
    /// Returns the loss to log and the gradient to apply.
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[B],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)>;

    /// The rule's own state for a step checkpoint (counters, positions of the streams it draws
    /// from), or `None` when it keeps state it cannot save: its stages are not checkpointed.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores what [`GradientRule::state`] returned.
    fn restore(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// Plain supervised fine-tuning: the gradient of the mean next-token loss.
pub struct PlainSft;

impl GradientRule for PlainSft {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[TrainBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        accumulated_gradients(model, params, micro_batches, opts)
    }

    fn state(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::Null)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    /// Tokens of every step's batches.
    pub tokens: usize,
    pub final_loss: f64,
    pub mean_loss: f64,
}

pub fn total_steps(n_examples: usize, cfg: &TrainerConfig) -> usize {
    let per_epoch = n_examples.div_ceil(cfg.batch_size.max(1) * cfg.grad_accum.max(1));
    let total = per_epoch * cfg.epochs;
    cfg.max_steps.map_or(total, |m| m.min(total))
}

/// Trains the model's trainable parameters on `examples` (single sequences, Trainer order).
pub fn train(
    model: &CausalLm,
    examples: &[Example],
    cfg: &TrainerConfig,
    rule: &mut dyn GradientRule,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<TrainSummary> {
    train_params(model, model.trainable_params(), examples, cfg, rule, on_step)
}

/// Trains `params` (the model's trainable parameters plus any the rule owns, e.g. a
/// classification head) on `examples`.
pub fn train_params(
    model: &CausalLm,
    params: Vec<(String, Var)>,
    examples: &[Example],
    cfg: &TrainerConfig,
    rule: &mut dyn GradientRule,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<TrainSummary> {
    if examples.is_empty() {
        return Err(ModelError::Input("no training examples".into()));
    }
    train_on(model, params, &mut EpochBatches::new(examples, cfg), cfg, rule, on_step)
}

/// The training loop over any batch source: steps until the source is exhausted or
/// `source.total_steps()` steps are done. `cfg`'s epochs, batch size and accumulation are the
/// source's business; the trainer uses its optimizer settings and seed (dropout).
pub fn train_on<B: Batch>(
    model: &CausalLm,
    params: Vec<(String, Var)>,
    source: &mut dyn BatchSource<Batch = B>,
    cfg: &TrainerConfig,
    rule: &mut dyn GradientRule<B>,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<TrainSummary> {
    train_loop(model, params, source, cfg, rule, on_step, None)
}

/// [`train_on`] with step checkpoints: resumes from a checkpoint in `ckpt.dir` if there is one,
/// saves one every `ckpt.every`, and when `ckpt.stop` is set saves one after the current step
/// and returns [`ModelError::Stopped`]. A rule that cannot save its state
/// ([`GradientRule::state`] is `None`) trains without checkpoints. The steps of a resumed run
/// are reported to `on_step` again, so the step log is whole.
pub fn train_checkpointed<B: Batch>(
    model: &CausalLm,
    params: Vec<(String, Var)>,
    source: &mut dyn BatchSource<Batch = B>,
    cfg: &TrainerConfig,
    rule: &mut dyn GradientRule<B>,
    on_step: &mut dyn FnMut(&StepLog),
    ckpt: &Checkpointing,
) -> Result<TrainSummary> {
    let summary = train_loop(model, params, source, cfg, rule, on_step, Some(ckpt))?;
    checkpoint::remove(&ckpt.dir)?;
    Ok(summary)
}

fn train_loop<B: Batch>(
    model: &CausalLm,
    params: Vec<(String, Var)>,
    source: &mut dyn BatchSource<Batch = B>,
    cfg: &TrainerConfig,
    rule: &mut dyn GradientRule<B>,
    on_step: &mut dyn FnMut(&StepLog),
    ckpt: Option<&Checkpointing>,
) -> Result<TrainSummary> {
    if params.is_empty() {
        return Err(ModelError::Input("the model has no trainable parameters (add a LoRA adapter or load it trainable)".into()));
    }
    let total = source.total_steps();
    let schedule = LrSchedule {
        kind: cfg.schedule,
        base_lr: cfg.lr,
        warmup_steps: cfg.warmup_steps.unwrap_or((cfg.warmup_ratio * total as f64).ceil() as usize),
        total_steps: total * cfg.schedule_steps_multiplier.unwrap_or(1),
    };
    let mut opt = AdamW::new(&params, AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() })?;
    let dropout_rng = RefCell::new(DropoutRng::seed_from_u64(cfg.seed.wrapping_add(1)));
    let opts = ForwardOptions::training(Some(&dropout_rng));
    let mut step = 0;
    let mut logs: Vec<StepLog> = Vec::new();
    let ckpt = ckpt.filter(|_| {
        let saves = rule.state().is_some();
        if !saves {
            tracing::warn!("no step checkpoints: this method's gradient rule cannot save its state; a stopped run restarts");
        }
        saves
    });
    let fingerprint = checkpoint::fingerprint(&params, total, cfg);
    if let Some(c) = ckpt {
        if let Some((at, saved)) = checkpoint::find(&c.dir, &fingerprint)? {
            checkpoint::restore(&at, &params, &mut opt)?;
            let done = saved.logs.len();
            for replayed in 0..done {
                if source.next_step().is_none() {
                    return Err(ModelError::Input(format!(
                        "{}: the checkpoint is at step {}, but the data ends after {replayed} steps",
                        at.display(),
                        done
                    )));
                }
            }
            let pos = saved
                .dropout_word_pos
                .parse::<u128>()
                .map_err(|e| ModelError::CorruptFile { path: at.join("state.json"), msg: format!("dropout_word_pos: {e}") })?;
            dropout_rng.borrow_mut().set_word_pos(pos);
            rule.restore(&saved.rule)?;
            for log in &saved.logs {
                on_step(log);
            }
            tracing::info!(step = done, total, "resumed from the step checkpoint");
            step = done;
            logs = saved.logs;
        }
    }
    let mut saved_at = Instant::now();
    while step < total {
        let Some(super::batches::Step { epoch, micro_batches: micro }) = source.next_step() else { break };
        let (loss, mut grads) = rule.gradients(model, &params, &micro, &opts)?;
        if !loss.is_finite() {
            return Err(ModelError::Input(format!("the loss is {loss} at step {step} (epoch {epoch}); training stopped")));
        }
        let grad_norm = match cfg.max_grad_norm {
            Some(max) => grads.clip_global_norm(max)?,
            None => grads.global_norm()?,
        };
        if !grad_norm.is_finite() {
            return Err(ModelError::Input(format!("the gradient norm is {grad_norm} at step {step}; training stopped")));
        }
        let lr = schedule.lr_at(step);
        opt.step(&params, &grads, lr)?;
        let tokens = micro.iter().map(Batch::num_tokens).sum();
        let log = StepLog { step, epoch, loss, grad_norm, lr, tokens };
        on_step(&log);
        logs.push(log);
        step += 1;
        if let Some(c) = ckpt {
            let stop = c.stop.load(Ordering::SeqCst);
            if step < total && (stop || c.every.is_some_and(|every| saved_at.elapsed() >= every)) {
                let state = SavedState {
                    fingerprint: fingerprint.clone(),
                    logs: logs.clone(),
                    dropout_word_pos: dropout_rng.borrow().get_word_pos().to_string(),
                    rule: rule.state().unwrap_or_default(),
                };
                checkpoint::save(&c.dir, &params, &opt, &state)?;
                tracing::info!(step, total, "step checkpoint saved");
                saved_at = Instant::now();
                if stop {
                    return Err(ModelError::Stopped { step, total });
                }
            }
        }
    }
    Ok(TrainSummary {
        steps: step,
        tokens: logs.iter().map(|l| l.tokens).sum(),
        final_loss: logs.last().map_or(f64::NAN, |l| l.loss),
        mean_loss: logs.iter().map(|l| l.loss).sum::<f64>() / logs.len().max(1) as f64,
    })
}
