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

use candle_core::Var;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::model::{CausalLm, ForwardOptions, Result};
use crate::train::grads::perturb;
use crate::train::{accumulated_gradients, lm_loss, Example, GradientRule, Gradients, ParamSnapshot, TrainBatch};

/// Cycles through examples in seeded random order, reshuffling at every pass.
pub struct CyclingLoader {
    examples: Vec<Example>,
    order: Vec<usize>,
    at: usize,
    batch_size: usize,
    rng: StdRng,
}

impl CyclingLoader {
    pub fn new(examples: Vec<Example>, batch_size: usize, seed: u64) -> Self {
        let mut me = Self { order: Vec::new(), at: 0, batch_size: batch_size.max(1), rng: StdRng::seed_from_u64(seed), examples };
        me.reshuffle();
        me
    }

    fn reshuffle(&mut self) {
        self.order = (0..self.examples.len()).collect();
        self.order.shuffle(&mut self.rng);
        self.at = 0;
    }

    pub fn next_batch(&mut self) -> TrainBatch {
        if self.at >= self.order.len() {
            self.reshuffle();
        }
        let end = (self.at + self.batch_size).min(self.order.len());
        let idx = &self.order[self.at..end];
        self.at = end;
        TrainBatch {
            input_ids: idx.iter().map(|&i| self.examples[i].input_ids.clone()).collect(),
            labels: idx.iter().map(|&i| self.examples[i].labels.clone()).collect(),
        }
    }
}

pub struct BoosterRule {
    pub harmful: CyclingLoader,
    pub lambda: f64,
    pub alpha: f64,
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
        let (align_loss, align) = accumulated_gradients(model, params, micro_batches, opts)?;
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
}

/// The `booster` train method: SFT on the alignment data with the Booster gradient rule.
pub fn run(
    ctx: &crate::exec::StageContext,
    p: &super::sft::TrainParams,
) -> std::result::Result<std::collections::BTreeMap<String, f64>, crate::exec::ExecError> {
    let bp = p.booster.clone().ok_or_else(|| crate::exec::ExecError::Method("booster needs `booster = { harmful = ... }`".into()))?;
    let harmful = super::load_dataset(ctx, &bp.harmful)?;
    let harmful_items = harmful.as_instructions().map_err(|e| crate::exec::ExecError::Method(e.to_string()))?.to_vec();
    let (lambda, alpha, batch) = (bp.lambda, bp.alpha, bp.harmful_batch_size);
    let seed = ctx.config.seed;
    super::sft::run_with(ctx, p, &|lm| {
        let pairs = super::sft::render_pairs(lm, harmful.template(), &harmful_items, p.prompt_format)?;
        let mut examples = super::sft::tokenize_pairs(&lm.tokenizer, &pairs, p.max_len)?;
        // A harmful batch of cut-off examples only would have no loss at all: leave them out.
        examples.retain(super::sft::has_target);
        Ok(Box::new(BoosterRule { harmful: CyclingLoader::new(examples, batch, seed.wrapping_add(17)), lambda, alpha }))
    })
}
