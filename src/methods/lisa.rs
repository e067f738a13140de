//! Lisa (Huang et al., NeurIPS 2024), a fine-tuning-stage defense, as the Booster repository's
//! `ADMMTrainer` runs it (METHODS.md 1.6):
//!
//! - The stage fine-tunes on its data (the attack mix), but alternates phases: `alignment_steps`
//!   steps on batches of the alignment data (its own shuffled, cycling loader; the fine-tune batch
//!   of those steps is consumed and dropped, as the official `check_mode` replaces it), then
//!   `finetune_steps` steps on the fine-tune data, and so on, starting with alignment.
//! - Entering a phase stores the current weights as the other phase's last state; once more than
//!   `proximal_after` of the fine-tune data's steps are done, each step's loss adds
//!   `rho / 2 * ||w - w_other||^2` over the trainable weights.
//!
//! The official trainer counts `training_step` calls (micro-batches) for the clock and the 10%
//! threshold; here too: with `grad_accum > 1` each micro-batch is one tick.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::params::{MethodOptions, StageInputs, Trained, Validate};
use super::sft::TrainParams;
use crate::model::{CausalLm, ForwardOptions, Result};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::{accumulate, lm_loss, EpochBatches, Example, GradientRule, Gradients, Order, Stream, TrainBatch};

/// `lisa = { ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LisaParams {
    /// The alignment (guide) data: refusals to harmful prompts.
    pub alignment: String,
    /// Steps per alignment phase (the official `--alignment_step`, 100).
    #[serde(default = "default_k1")]
    pub alignment_steps: usize,
    /// Steps per fine-tune phase (the official `--finetune_step`, 900).
    #[serde(default = "default_k2")]
    pub finetune_steps: usize,
    /// Weight of the proximal term (the official `--rho`, 0.01).
    #[serde(default = "default_rho")]
    pub rho: f64,
    /// Share of the fine-tune data's steps before the proximal term starts (official: 0.1).
    #[serde(default = "default_after")]
    pub proximal_after: f64,
}

fn default_k1() -> usize {
    100
}
fn default_k2() -> usize {
    900
}
fn default_rho() -> f64 {
    0.01
}
fn default_after() -> f64 {
    0.1
}

impl MethodOptions for LisaParams {
    const KEY: &'static str = "lisa";
}

impl StageInputs for LisaParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.alignment.as_str()]
    }
}

impl Validate for LisaParams {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        super::params::check_range("lisa.rho", self.rho, 0.0, f64::INFINITY)?;
        super::params::check_range("lisa.proximal_after", self.proximal_after, 0.0, 1.0)?;
        if self.alignment_steps == 0 && self.finetune_steps == 0 {
            return Err(ParamError::new("lisa.alignment_steps", "alignment_steps and finetune_steps cannot both be 0"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Alignment,
    Finetune,
}

/// Lisa's gradient rule: phase switching, the alignment loader and the proximal term.
pub struct LisaRule {
    pub alignment: Stream<Example>,
    pub alignment_steps: usize,
    pub finetune_steps: usize,
    pub rho: f64,
    /// Ticks (micro-batches) after which the proximal term applies.
    pub proximal_after: f64,
    pub phase: Phase,
    clock: usize,
    ticks: usize,
    /// The alignment phase's last weights (the fine-tune phase's anchor) and the fine-tune
    /// phase's (the alignment phase's anchor).
    alignment_weights: Vec<Tensor>,
    finetune_weights: Vec<Tensor>,
    /// Phase of every tick so far (for logs and tests).
    pub history: Vec<Phase>,
}

impl LisaRule {
    /// `total_ticks`: the fine-tune data's micro-batches over all epochs (the official
    /// `len(train_dataloader) * num_train_epochs`).
    pub fn new(params: &[(String, Var)], alignment: Stream<Example>, p: &LisaParams, total_ticks: usize) -> candle_core::Result<Self> {
        let weights = Self::snapshot(params)?;
        let phase = if p.alignment_steps > 0 && !alignment.is_empty() { Phase::Alignment } else { Phase::Finetune };
        Ok(Self {
            alignment,
            alignment_steps: p.alignment_steps,
            finetune_steps: p.finetune_steps,
            rho: p.rho,
            proximal_after: p.proximal_after * total_ticks as f64,
            phase,
            clock: 0,
            ticks: 0,
            alignment_weights: weights.clone(),
            finetune_weights: weights,
            history: Vec::new(),
        })
    }

    fn snapshot(params: &[(String, Var)]) -> candle_core::Result<Vec<Tensor>> {
        params.iter().map(|(_, v)| v.as_tensor().detach().copy()).collect()
    }

    /// The official `check_mode`: switches phase at the end of one, storing the weights the
    /// phase ends with; returns the phase of this tick.
    fn tick_phase(&mut self, params: &[(String, Var)]) -> candle_core::Result<Phase> {
        match self.phase {
            Phase::Alignment => {
                if self.ticks != 0 && self.finetune_steps != 0 && self.clock % self.alignment_steps.max(1) == 0 {
                    self.phase = Phase::Finetune;
                    self.alignment_weights = Self::snapshot(params)?;
                    self.clock = 0;
                }
            }
            Phase::Finetune => {
                let can_align = self.alignment_steps != 0 && !self.alignment.is_empty();
                if self.ticks != 0 && can_align && self.clock % self.finetune_steps.max(1) == 0 {
                    self.phase = Phase::Alignment;
                    self.finetune_weights = Self::snapshot(params)?;
                    self.clock = 0;
                }
            }
        }
        Ok(self.phase)
    }

    /// `rho / 2 * ||w - anchor||^2` summed over the trainable tensors.
    pub fn proximal(&self, params: &[(String, Var)], anchor: &[Tensor]) -> candle_core::Result<Tensor> {
        let mut sum = Tensor::zeros((), candle_core::DType::F32, anchor[0].device())?;
        for ((_, p), a) in params.iter().zip(anchor) {
            sum = (sum + (p.as_tensor() - a)?.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32)?)?;
        }
        sum * (self.rho / 2.0)
    }
}

impl GradientRule for LisaRule {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[TrainBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        accumulate(
            params,
            micro_batches,
            |_| 1,
            |finetune_batch| {
                let phase = self.tick_phase(params)?;
                let batch = match phase {
                    Phase::Alignment => self.alignment.next_batch(),
                    Phase::Finetune => finetune_batch.clone(),
                };
                let mut loss = lm_loss(model, &batch, opts)?;
                if self.rho > 0.0 && self.ticks as f64 > self.proximal_after {
                    let anchor = match phase {
                        Phase::Alignment => &self.finetune_weights,
                        Phase::Finetune => &self.alignment_weights,
                    };
                    loss = (loss + self.proximal(params, anchor)?)?;
                }
                self.history.push(phase);
                self.ticks += 1;
                self.clock += 1;
                Ok(loss)
            },
        )
    }
}

/// The `lisa` train method (a fine-tune stage).
pub struct Lisa;

impl super::TypedMethod for Lisa {
    const NAME: &'static str = "lisa";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 1;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<TrainParams, LisaParams>;

    fn run(ctx: &StageContext, p: &Self::Params) -> std::result::Result<Metrics, StageError> {
        let (optim, tp, lp) = (&p.optim, &p.params, &p.options);
        let trainee = super::sft::Trainee::load(ctx, tp.finetune, tp.single_lora)?;
        let lm = &trainee.lm;
        let (items, template) = super::sft::training_items(ctx, tp)?;
        let examples =
            super::sft::tokenize_pairs(&lm.tokenizer, &super::sft::render_pairs(lm, &template, &items, tp.prompt_format)?, optim.max_len)?;
        let guide = ctx.dataset(&lp.alignment)?;
        let guide_pairs = super::sft::render_pairs(lm, guide.template(), guide.as_instructions()?, tp.prompt_format)?;
        let mut guide_examples = super::sft::tokenize_pairs(&lm.tokenizer, &guide_pairs, optim.max_len)?;
        guide_examples.retain(super::sft::has_target);
        let cfg = optim.trainer(ctx.config.seed);
        let total_ticks = examples.len().div_ceil(optim.batch_size.max(1)) * optim.epochs;
        let stream = Stream::new(guide_examples, optim.batch_size, Order::Shuffled, ctx.config.seed.wrapping_add(31));
        let params = lm.model.trainable_params();
        let mut rule = LisaRule::new(&params, stream, lp, total_ticks).map_err(crate::model::ModelError::from)?;
        let summary = super::sft::train_logged(ctx, lm, &mut EpochBatches::new(&examples, &cfg), optim, &mut rule)?;
        trainee.save(ctx)?;
        let aligned = rule.history.iter().filter(|p| **p == Phase::Alignment).count();
        Ok(Metrics::from([
            ("train_loss".to_string(), summary.final_loss),
            ("train_steps".to_string(), summary.steps as f64),
            ("train_examples".to_string(), examples.len() as f64),
            ("lisa_alignment_ticks".to_string(), aligned as f64),
            ("lisa_finetune_ticks".to_string(), (rule.history.len() - aligned) as f64),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rule_with(k1: usize, k2: usize, rho: f64, after: f64, total: usize) -> (Vec<(String, Var)>, LisaRule) {
        let params = vec![("w".to_string(), Var::from_tensor(&Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap())];
        let ex = Example { input_ids: vec![1, 2], labels: vec![-100, 2] };
        let p = LisaParams { alignment: "a".into(), alignment_steps: k1, finetune_steps: k2, rho, proximal_after: after };
        let rule = LisaRule::new(&params, Stream::new(vec![ex], 1, Order::Shuffled, 0), &p, total).unwrap();
        (params, rule)
    }

    #[test]
    fn phases_alternate_starting_with_alignment() {
        let (params, mut rule) = rule_with(2, 3, 0.0, 0.1, 100);
        let mut phases = Vec::new();
        for _ in 0..11 {
            phases.push(rule.tick_phase(&params).unwrap());
            rule.ticks += 1;
            rule.clock += 1;
        }
        use Phase::{Alignment as A, Finetune as F};
        assert_eq!(phases, vec![A, A, F, F, F, A, A, F, F, F, A]);
        // Without alignment steps, only fine-tuning.
        let (params, mut rule) = rule_with(0, 3, 0.0, 0.1, 100);
        assert_eq!(rule.tick_phase(&params).unwrap(), F);
    }

    #[test]
    fn switching_stores_the_ending_phase_as_the_other_anchor_and_the_proximal_term_pulls_to_it() {
        let (params, mut rule) = rule_with(1, 1, 0.5, 0.0, 10);
        rule.tick_phase(&params).unwrap(); // alignment, tick 0
        rule.ticks += 1;
        rule.clock += 1;
        params[0].1.set(&Tensor::new(&[3f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(rule.tick_phase(&params).unwrap(), Phase::Finetune);
        assert_eq!(rule.alignment_weights[0].to_vec1::<f32>().unwrap(), vec![3.0, 2.0]);
        assert_eq!(rule.finetune_weights[0].to_vec1::<f32>().unwrap(), vec![1.0, 2.0], "still the initial weights");
        // rho/2 * ||(4, 2) - (3, 2)||^2 = 0.25, gradient rho * (w - anchor) = (0.5, 0).
        params[0].1.set(&Tensor::new(&[4f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        let prox = rule.proximal(&params, &rule.alignment_weights).unwrap();
        assert!((prox.to_scalar::<f32>().unwrap() - 0.25).abs() < 1e-6);
        let g = Gradients::of(&prox, &params).unwrap();
        assert_eq!(g.tensors[0].to_vec1::<f32>().unwrap(), vec![0.5, 0.0]);
    }
}
