//! RepNoise (Rosati et al. 2024), as the Booster repository's `loss_func/repnoise_loss.py`
//! computes it on paired batches (the same prompt with a safe and with a harmful answer):
//!
//! `L = CE_harmless + beta * MMD(h_harmful, N(0, I)) - alpha * log(mean_layers CE_harmful + 1)`
//!
//! - MMD: per layer, the MLP outputs of the harmful batch at the positions where its tokens differ
//!   from the harmless batch's (the answer), flattened per sample, against Gaussian noise under
//!   the same mask; a 5-kernel Gaussian mixture (bandwidth from the data, multiplier 2); averaged
//!   over layers.
//! - CE_harmful: the harmful answer's next-token loss from the final logits and from the logit
//!   lens of the embedding output and of every layer's output (L + 2 terms, as the official loop
//!   over `hidden_states`), averaged, plus 1 inside the log.
//!
//! Two ways to get the harmful batch (`repnoise.harmful_batch`):
//! - `independent` (default): the official trainer's `next(iter(harmful_loader))`, a fresh random
//!   batch of the harmful set at every micro-batch ([`Order::Resampled`]), row i compared with row
//!   i of the harmless batch for the mask (as the official code compares the two id tensors);
//! - `paired`: the harmful answer to each alignment example's own prompt ([`ResponsePair`]s,
//!   batched together).
//!
//! Deviations, documented: the harmless loss masks the prompt by construction (not by comparing
//! ids); the official code also zeroes logits at masked positions, which only turns the first
//! answer token's loss into a constant, and applies the final norm twice to the last hidden
//! state in its lens loop: neither is reproduced.

use candle_core::{DType, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use rand_distr_free::standard_normal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::params::{MethodOptions, StageInputs, Trained, Validate};
use super::sft::TrainParams;
use crate::model::layers::RecordingHook;
use crate::model::{CausalLm, ForwardOptions, HookPoint, PaddedBatch, Padding, Result};
use crate::plan::ParamError;
use crate::spec::StageKind;
use crate::stage::{Metrics, StageContext, StageError};
use crate::train::loss::{loss_at, supervised_positions};
use crate::train::{
    accumulate, lm_loss, EpochBatches, Example, GradientRule, Gradients, Order, PairBatch, ResponsePair, Stream, TrainBatch, IGNORE_INDEX,
};

/// `repnoise = { ... }`. Method version 3: the lens term has the embedding output's CE too, and
/// `independent` is the default harmful batch (both as the official code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepNoiseParams {
    /// Harmful answers (paired by instruction with the alignment data in the `paired` mode).
    pub harmful: String,
    /// Weight of the log harmful-loss term (the official `--rho`, 0.1).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Weight of the MMD noise term (the official `--lamb`, 0.001).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// How each step's harmful batch is drawn.
    #[serde(default)]
    pub harmful_batch: HarmfulBatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HarmfulBatch {
    /// The harmful answers to the batch's own prompts.
    Paired,
    /// A fresh random batch of the harmful set (the official trainer).
    #[default]
    Independent,
}

fn default_alpha() -> f64 {
    0.1
}
fn default_beta() -> f64 {
    0.001
}

impl MethodOptions for RepNoiseParams {
    const KEY: &'static str = "repnoise";
}

impl StageInputs for RepNoiseParams {
    fn datasets(&self) -> Vec<&str> {
        vec![self.harmful.as_str()]
    }
}

impl Validate for RepNoiseParams {
    fn validate(&self, _: &str) -> std::result::Result<(), ParamError> {
        super::params::check_range("repnoise.alpha", self.alpha, 0.0, f64::INFINITY)?;
        super::params::check_range("repnoise.beta", self.beta, 0.0, f64::INFINITY)
    }
}

/// Normal samples without an extra crate (Box-Muller).
mod rand_distr_free {
    use rand::Rng;
    pub fn standard_normal(rng: &mut impl Rng, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random();
            let r = (-2.0 * u1.ln()).sqrt();
            out.push((r * (2.0 * std::f64::consts::PI * u2).cos()) as f32);
            out.push((r * (2.0 * std::f64::consts::PI * u2).sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// The RepNoise loss; the harmful batch comes with each micro-batch ([`PairBatch`]) or from the
/// rule's own stream (`harmful`).
pub struct RepNoiseRule {
    pub alpha: f64,
    pub beta: f64,
    /// The noise generator (`StdRng`'s by name: its position goes into step checkpoints).
    pub rng: ChaCha12Rng,
    /// The independent harmful stream (`None` in the paired mode).
    pub harmful: Option<Stream<Example>>,
}

impl RepNoiseRule {
    pub fn new(alpha: f64, beta: f64, seed: u64) -> Self {
        Self { alpha, beta, rng: ChaCha12Rng::seed_from_u64(seed), harmful: None }
    }

    /// The rule of the `independent` mode: a fresh random harmful batch per micro-batch.
    pub fn independent(harmful: Vec<Example>, batch_size: usize, alpha: f64, beta: f64, seed: u64) -> Self {
        let stream = Stream::new(harmful, batch_size, Order::Resampled, seed.wrapping_add(1));
        Self { harmful: Some(stream), ..Self::new(alpha, beta, seed) }
    }

    /// The RepNoise loss of one micro-batch: `harmful[i]` is compared with `harmless[i]`.
    pub fn loss(&mut self, model: &CausalLm, harmless: &TrainBatch, harmful: &[Vec<u32>], opts: &ForwardOptions) -> Result<Tensor> {
        if harmful.is_empty() {
            return Err(crate::model::ModelError::Input("RepNoise needs a harmful batch".into()));
        }
        // Harmful labels: the tokens that differ from the harmless sequence at the same position.
        let mut harmful_batch = TrainBatch { input_ids: Vec::new(), labels: Vec::new() };
        let mut masks = Vec::new();
        for (h, safe) in harmful.iter().zip(harmless.input_ids.iter().cycle()) {
            let mask: Vec<bool> = h.iter().enumerate().map(|(t, id)| safe.get(t) != Some(id)).collect();
            harmful_batch.labels.push(h.iter().zip(&mask).map(|(&id, &m)| if m { id as i64 } else { IGNORE_INDEX }).collect());
            harmful_batch.input_ids.push(h.clone());
            masks.push(mask);
        }
        let harmless_loss = lm_loss(model, harmless, opts)?;
        let padded = PaddedBatch::new(&harmful_batch.input_ids, 0, Padding::Right, &model.device)?;
        let (b, width) = padded.ids.dims2()?;
        let record = RecordingHook::new(&[HookPoint::MlpOutput, HookPoint::LayerOutput]);
        let hidden = model.forward_hidden(&padded.ids, &padded.positions, &padded.valid, None, &opts.with_hook(&record))?;
        let (rows, targets) = supervised_positions(&harmful_batch, width);
        if rows.is_empty() {
            return Ok(harmless_loss);
        }
        let mut ce_sum = loss_at(model, &hidden, &rows, &targets, opts, false)?;
        let layer_outputs = record.at(HookPoint::LayerOutput);
        for h in &layer_outputs {
            ce_sum = (ce_sum + loss_at(model, h, &rows, &targets, opts, true)?)?;
        }
        // The official lens also reads the embedding output (HF's `hidden_states[0]`): the final
        // CE and L + 1 lens terms, L + 2 in all.
        let embedded = model.embed(&padded.ids, &padded.positions, opts)?;
        ce_sum = (ce_sum + loss_at(model, &embedded, &rows, &targets, opts, true)?)?;
        let harmful_ce = ((ce_sum / (layer_outputs.len() + 2) as f64)? + 1.0)?;

        let mask_data: Vec<f32> =
            masks.iter().flat_map(|m| (0..width).map(move |t| if m.get(t).copied().unwrap_or(false) { 1.0 } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask_data, (b, width, 1), &model.device)?;
        let mlp = record.at(HookPoint::MlpOutput);
        let mut mmd_sum = Tensor::zeros((), DType::F32, &model.device)?;
        for h in &mlp {
            let h = h.to_dtype(DType::F32)?.broadcast_mul(&mask)?;
            let noise = Tensor::from_vec(standard_normal(&mut self.rng, h.elem_count()), h.shape(), &model.device)?.broadcast_mul(&mask)?;
            mmd_sum = (mmd_sum + mmd(&h.flatten_from(1)?, &noise.flatten_from(1)?)?)?;
        }
        let mmd_mean = (mmd_sum / mlp.len().max(1) as f64)?;
        let loss = ((harmless_loss + (mmd_mean * self.beta)?)? - (harmful_ce.log()? * self.alpha)?)?;
        Ok(loss)
    }
}

/// Maximum mean discrepancy with a 5-kernel Gaussian mixture whose bandwidth comes from the
/// mean pairwise squared distance (detached), as DAN-style `MMD_loss(kernel_mul=2, kernel_num=5)`.
pub fn mmd(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let total = Tensor::cat(&[x, y], 0)?;
    let m = total.dim(0)?;
    let sq = total.sqr()?.sum_keepdim(D::Minus1)?;
    let dist = (sq.broadcast_add(&sq.t()?)? - (total.matmul(&total.t()?)? * 2.0)?)?.relu()?;
    let bandwidth = (dist.detach().sum_all()?.to_scalar::<f32>()? as f64 / ((m * m - m).max(1)) as f64).max(1e-12) / 4.0;
    let mut kernels = Tensor::zeros((m, m), DType::F32, x.device())?;
    for i in 0..5 {
        kernels = (kernels + (dist.clone() / (bandwidth * 2f64.powi(i)))?.neg()?.exp()?)?;
    }
    let xx = kernels.narrow(0, 0, n)?.narrow(1, 0, n)?;
    let yy = kernels.narrow(0, n, m - n)?.narrow(1, n, m - n)?;
    let xy = kernels.narrow(0, 0, n)?.narrow(1, n, m - n)?;
    let yx = kernels.narrow(0, n, m - n)?.narrow(1, 0, n)?;
    (((xx + yy)? - xy)? - yx)?.mean_all()
}

impl GradientRule<PairBatch> for RepNoiseRule {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[PairBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        // Equal weights: the loss mixes per-batch means (CE, MMD, logit-lens terms).
        accumulate(params, micro_batches, |_| 1, |mb| self.loss(model, &mb.preferred, &mb.rejected.input_ids, opts))
    }

    fn state(&self) -> Option<serde_json::Value> {
        self.checkpoint_state()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.restore_state(state)
    }
}

impl GradientRule for RepNoiseRule {
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
            |mb| {
                let stream =
                    self.harmful.as_mut().ok_or_else(|| crate::model::ModelError::Input("no independent harmful stream".into()))?;
                let harmful = stream.next_batch().input_ids;
                self.loss(model, mb, &harmful, opts)
            },
        )
    }

    fn state(&self) -> Option<serde_json::Value> {
        self.checkpoint_state()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.restore_state(state)
    }
}

impl RepNoiseRule {
    /// The noise generator's position and the harmful stream's draws.
    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "noise_word_pos": self.rng.get_word_pos().to_string(),
            "harmful_draws": self.harmful.as_ref().map(Stream::draws),
        }))
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let bad = |k: &str| crate::model::ModelError::Input(format!("the step checkpoint's RepNoise state lacks `{k}`"));
        let pos = state["noise_word_pos"].as_str().and_then(|s| s.parse::<u128>().ok()).ok_or_else(|| bad("noise_word_pos"))?;
        self.rng.set_word_pos(pos);
        if let Some(stream) = self.harmful.as_mut() {
            stream.replay(state["harmful_draws"].as_u64().ok_or_else(|| bad("harmful_draws"))? as usize);
        }
        Ok(())
    }
}

/// The `repnoise` train method: alignment data (harmless answers) with the harmful answers of
/// `repnoise.harmful`, paired by instruction or drawn independently.
pub struct RepNoise;

impl super::TypedMethod for RepNoise {
    const NAME: &'static str = "repnoise";
    const KIND: StageKind = StageKind::Train;
    const VERSION: u32 = 3;
    const CHANGES_MODEL: bool = true;
    type Params = Trained<TrainParams, RepNoiseParams>;

    fn run(ctx: &StageContext, p: &Self::Params) -> std::result::Result<Metrics, StageError> {
        let err = StageError::Method;
        let rp = &p.options;
        let (optim, tp) = (&p.optim, &p.params);
        let harmful = ctx.dataset(&rp.harmful)?;
        let harmful_items = harmful.as_instructions()?.to_vec();
        let (align_items, align_template) = super::sft::training_items(ctx, tp)?;
        let seed = ctx.config.seed.wrapping_add(29);
        let trainee = super::sft::Trainee::load(ctx, tp.finetune, tp.single_lora)?;
        let lm = &trainee.lm;
        let tokenize = |items: &[crate::data::Instruction], template: &crate::data::Template| {
            super::sft::tokenize_pairs(&lm.tokenizer, &super::sft::render_pairs(lm, template, items, tp.prompt_format)?, optim.max_len)
        };
        let cfg = optim.trainer(ctx.config.seed);
        let (summary, n) = match rp.harmful_batch {
            HarmfulBatch::Paired => {
                let by_instruction: HashMap<&str, &crate::data::Instruction> =
                    harmful_items.iter().map(|h| (h.instruction.as_str(), h)).collect();
                let (safe, bad): (Vec<_>, Vec<_>) = align_items
                    .iter()
                    .filter_map(|item| by_instruction.get(item.instruction.as_str()).map(|h| (item.clone(), (*h).clone())))
                    .unzip();
                if safe.is_empty() {
                    return Err(err(format!(
                        "no alignment example shares its instruction with an example of `{}`: the paired mode needs paired data \
                         (or set repnoise.harmful_batch = \"independent\")",
                        rp.harmful
                    )));
                }
                // Both sides of a pair need a response token (the loss has a term on each).
                let pairs: Vec<ResponsePair> = tokenize(&safe, &align_template)?
                    .into_iter()
                    .zip(tokenize(&bad, harmful.template())?)
                    .filter(|(s, b)| super::sft::has_target(s) && super::sft::has_target(b))
                    .map(|(preferred, rejected)| ResponsePair { preferred, rejected })
                    .collect();
                if pairs.is_empty() {
                    return Err(err(format!(
                        "no (harmless, harmful) pair keeps a response token on both sides within max_len = {}",
                        optim.max_len
                    )));
                }
                let mut rule = RepNoiseRule::new(rp.alpha, rp.beta, seed);
                (super::sft::train_logged(ctx, lm, &mut EpochBatches::new(&pairs, &cfg), optim, &mut rule)?, pairs.len())
            }
            HarmfulBatch::Independent => {
                let mut safe = tokenize(&align_items, &align_template)?;
                safe.retain(super::sft::has_target);
                let mut bad = tokenize(&harmful_items, harmful.template())?;
                bad.retain(super::sft::has_target);
                if bad.is_empty() {
                    return Err(err(format!("no harmful example keeps a response token within max_len = {}", optim.max_len)));
                }
                let mut rule = RepNoiseRule::independent(bad, optim.batch_size, rp.alpha, rp.beta, seed);
                (super::sft::train_logged(ctx, lm, &mut EpochBatches::new(&safe, &cfg), optim, &mut rule)?, safe.len())
            }
        };
        trainee.save(ctx)?;
        Ok(std::collections::BTreeMap::from([
            ("train_loss".to_string(), summary.final_loss),
            ("train_steps".to_string(), summary.steps as f64),
            ("train_examples".to_string(), n as f64),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn mmd_is_zero_for_identical_samples_and_positive_otherwise() {
        let x = Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        assert!(mmd(&x, &x).unwrap().to_scalar::<f32>().unwrap().abs() < 1e-6);
        let y = Tensor::new(&[[5f32, 5.0], [6.0, 5.0]], &Device::Cpu).unwrap();
        assert!(mmd(&x, &y).unwrap().to_scalar::<f32>().unwrap() > 0.1);
    }
}
