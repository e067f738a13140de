//! Booster (Huang et al. 2024): alignment with a regularizer that attenuates the drop of the
//! harmful loss after a simulated harmful step. Per optimizer step, as the official
//! `BoosterAlignmentTrainer.training_step` does it (METHODS.md 1.2):
//!
//! 1. a harmful batch from its own cycling, shuffled loader (batch size 10 in the official code);
//! 2. `g_h` = gradient of the harmful loss;
//! 3. `w <- w - alpha * g_h / (||g_h|| + 1e-7)` (global norm over trainable tensors);
//! 4. `g_h'` = gradient of the harmful loss at the perturbed weights;
//! 5. exact restore of `w`;
//! 6. `g_f` = gradient of the alignment loss;
//! 7. step with `g_f + lambda * (g_h - g_h')` (then clipping and AdamW, by the trainer).
//!
//! `perturb_aware = true` is "Booster + Vaccine" (`smooth_align_perturb.sh`): step 6 takes the
//! Vaccine gradient of the alignment loss (the attention outputs perturbed with radius `rho`), and
//! the step's loss is that perturbed alignment loss, as the official `loss3`.

use candle_core::Var;
use serde::{Deserialize, Serialize};

use super::params::{MethodOptions, StageInputs, Trained, Validate};
use super::sft::TrainParams;
use super::vaccine::VaccineRule;
use crate::model::{CausalLm, ForwardOptions, Result};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::grads::perturb;
use crate::train::{accumulated_gradients, lm_loss, Example, GradientRule, Gradients, Order, ParamSnapshot, Stream, TrainBatch};

/// `booster = { ... }`: the regularizer's harmful data and weights.
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
    /// Booster + Vaccine: the alignment gradient is Vaccine's perturbation-aware one.
    #[serde(default)]
    pub perturb_aware: bool,
    /// Vaccine's perturbation radius when `perturb_aware` (the official script's default 5).
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
    5.0
}

impl MethodOptions for BoosterParams {
    const KEY: &'static str = "booster";
}

impl StageInputs for BoosterParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.harmful.as_str()]
    }
}

impl Validate for BoosterParams {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        super::params::check_range("booster.lambda", self.lambda, 0.0, f64::INFINITY)?;
        super::params::check_range("booster.alpha", self.alpha, 0.0, f64::INFINITY)?;
        super::params::check_range("booster.rho", self.rho, 0.0, f64::INFINITY)?;
        if self.harmful_batch_size == 0 {
            return Err(ParamError::new("booster.harmful_batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

pub struct BoosterRule {
    /// The harmful loader: its own cycling, shuffled stream.
    pub harmful: Stream<Example>,
    pub lambda: f64,
    pub alpha: f64,
    /// Booster + Vaccine: the alignment gradient comes from this Vaccine rule.
    pub perturb_aware: Option<VaccineRule>,
}

/// The three gradients of one Booster step, kept for tests and logging.
pub struct BoosterGradients {
    pub align: Gradients,
    pub harmful: Gradients,
    pub harmful_perturbed: Gradients,
    pub align_loss: f64,
}

impl BoosterRule {
    pub fn gradients_parts(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[TrainBatch],
        opts: &ForwardOptions,
    ) -> Result<BoosterGradients> {
        let harmful_batch = self.harmful.next_batch();
        let harmful = Gradients::of(&lm_loss(model, &harmful_batch, opts)?, params)?;
        let norm = harmful.global_norm()? + 1e-7;
        let snapshot = ParamSnapshot::take(params)?;
        perturb(params, &harmful, -self.alpha / norm)?;
        let perturbed = lm_loss(model, &harmful_batch, opts).and_then(|loss| Gradients::of(&loss, params));
        // Restore before looking at the result, so an error never leaves the weights perturbed.
        snapshot.restore(params)?;
        let harmful_perturbed = perturbed?;
        let (align_loss, align) = match &mut self.perturb_aware {
            Some(vaccine) => vaccine.gradients(model, params, micro_batches, opts)?,
            None => accumulated_gradients(model, params, micro_batches, opts)?,
        };
        Ok(BoosterGradients { align, harmful, harmful_perturbed, align_loss })
    }
}

impl GradientRule for BoosterRule {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[TrainBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        let parts = self.gradients_parts(model, params, micro_batches, opts)?;
        let mut g = parts.align;
        g.add_scaled(&parts.harmful, self.lambda)?;
        g.add_scaled(&parts.harmful_perturbed, -self.lambda)?;
        Ok((parts.align_loss, g))
    }

    /// Where the harmful loader is (the Vaccine part keeps no state).
    fn state(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "harmful_draws": self.harmful.draws() }))
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let draws = state["harmful_draws"]
            .as_u64()
            .ok_or_else(|| crate::model::ModelError::Input("the step checkpoint's Booster state lacks `harmful_draws`".into()))?;
        self.harmful.replay(draws as usize);
        Ok(())
    }
}

/// The `booster` train method: SFT on the alignment data with the Booster gradient rule.
pub struct Booster;

impl super::TypedMethod for Booster {
    const NAME: &'static str = "booster";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 2;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<TrainParams, BoosterParams>;
    fn run(ctx: &StageContext, p: &Self::Params) -> std::result::Result<Metrics, StageError> {
        let bp = &p.options;
        let harmful = ctx.dataset(&bp.harmful)?;
        let harmful_items = harmful.as_instructions()?.to_vec();
        let (lambda, alpha, batch) = (bp.lambda, bp.alpha, bp.harmful_batch_size);
        let rho = bp.rho;
        let perturb_aware = bp.perturb_aware;
        let seed = ctx.config.seed;
        super::sft::run_with(ctx, &p.optim, &p.params, &|lm| {
            let pairs = super::sft::render_pairs(lm, harmful.template(), &harmful_items, p.params.prompt_format)?;
            let mut examples = super::sft::tokenize_pairs(&lm.tokenizer, &pairs, p.optim.max_len)?;
            // A harmful batch of cut-off examples only would have no loss at all: leave them out.
            examples.retain(super::sft::has_target);
            Ok(Box::new(BoosterRule {
                harmful: Stream::new(examples, batch, Order::Shuffled, seed.wrapping_add(17)),
                lambda,
                alpha,
                perturb_aware: perturb_aware.then_some(VaccineRule { rho }),
            }))
        })
    }
}
