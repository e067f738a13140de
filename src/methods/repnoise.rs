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
//!   lens of every layer's output, averaged, plus 1 inside the log.
//!
//! Deviations, documented: the harmless loss masks the prompt by construction (not by comparing
//! ids); the official code also zeroes logits at masked positions, which only turns the first
//! answer token's loss into a constant, and applies the final norm twice to the last hidden
//! state in its lens loop: neither is reproduced.

use candle_core::{DType, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr_free::standard_normal;
use std::collections::HashMap;

use crate::model::layers::RecordingHook;
use crate::model::{CausalLm, ForwardOptions, HookPoint, PaddedBatch, Padding, Result};
use crate::train::loss::{loss_at, supervised_positions};
use crate::train::{accumulate, lm_loss, Example, GradientRule, Gradients, TrainBatch, IGNORE_INDEX};

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

pub struct RepNoiseRule {
    /// Harmful partner of each harmless example, keyed by the harmless token ids.
    pub partners: HashMap<Vec<u32>, Example>,
    pub alpha: f64,
    pub beta: f64,
    pub rng: StdRng,
}

impl RepNoiseRule {
    pub fn new(pairs: Vec<(Example, Example)>, alpha: f64, beta: f64, seed: u64) -> Self {
        Self {
            partners: pairs.into_iter().map(|(harmless, harmful)| (harmless.input_ids, harmful)).collect(),
            alpha,
            beta,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The RepNoise loss of one paired micro-batch.
    pub fn loss(&mut self, model: &CausalLm, harmless: &TrainBatch, opts: &ForwardOptions) -> Result<Tensor> {
        let harmful: Vec<&Example> = harmless
            .input_ids
            .iter()
            .map(|ids| {
                self.partners.get(ids).ok_or_else(|| crate::model::ModelError::Input("a harmless example has no harmful partner".into()))
            })
            .collect::<Result<_>>()?;
        // Harmful labels: the tokens that differ from the harmless sequence at the same position.
        let mut harmful_batch = TrainBatch { input_ids: Vec::new(), labels: Vec::new() };
        let mut masks = Vec::new();
        for (h, safe) in harmful.iter().zip(&harmless.input_ids) {
            let mask: Vec<bool> = h.input_ids.iter().enumerate().map(|(t, id)| safe.get(t) != Some(id)).collect();
            harmful_batch.labels.push(h.input_ids.iter().zip(&mask).map(|(&id, &m)| if m { id as i64 } else { IGNORE_INDEX }).collect());
            harmful_batch.input_ids.push(h.input_ids.clone());
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
        let harmful_ce = ((ce_sum / (layer_outputs.len() + 1) as f64)? + 1.0)?;

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

impl GradientRule for RepNoiseRule {
    fn gradients(
        &mut self,
        model: &CausalLm,
        params: &[(String, Var)],
        micro_batches: &[TrainBatch],
        opts: &ForwardOptions,
    ) -> Result<(f64, Gradients)> {
        // Equal weights: the loss mixes per-batch means (CE, MMD, logit-lens terms).
        accumulate(params, micro_batches, |_| 1, |mb| self.loss(model, mb, opts))
    }
}

/// The `repnoise` train method: alignment data (harmless answers) paired by instruction with the
/// harmful answers of `repnoise.harmful`.
pub fn run(
    ctx: &crate::exec::StageContext,
    p: &super::sft::TrainParams,
) -> std::result::Result<std::collections::BTreeMap<String, f64>, crate::exec::ExecError> {
    let err = |m: String| crate::exec::ExecError::Method(m);
    let rp = p.repnoise.clone().ok_or_else(|| err("repnoise needs `repnoise = { harmful = ... }`".into()))?;
    let harmful = super::load_dataset(ctx, &rp.harmful)?;
    let harmful_items = harmful.as_instructions().map_err(|e| err(e.to_string()))?.to_vec();
    let (align_items, align_template) = super::sft::training_items(ctx, p)?;
    let seed = ctx.config.seed;
    super::sft::run_with(ctx, p, &|lm| {
        let by_instruction: HashMap<&str, &crate::data::Instruction> = harmful_items.iter().map(|h| (h.instruction.as_str(), h)).collect();
        let mut safe = Vec::new();
        let mut bad = Vec::new();
        for item in &align_items {
            if let Some(h) = by_instruction.get(item.instruction.as_str()) {
                safe.push(item.clone());
                bad.push((*h).clone());
            }
        }
        if safe.is_empty() {
            return Err(err(format!(
                "no alignment example shares its instruction with an example of `{}`: RepNoise needs paired data",
                rp.harmful
            )));
        }
        let safe_ex =
            super::sft::tokenize_pairs(&lm.tokenizer, &super::sft::render_pairs(lm, &align_template, &safe, p.prompt_format)?, p.max_len)?;
        let bad_ex = super::sft::tokenize_pairs(
            &lm.tokenizer,
            &super::sft::render_pairs(lm, harmful.template(), &bad, p.prompt_format)?,
            p.max_len,
        )?;
        // Both sides of a pair need a response token (the loss has a term on each).
        let pairs: Vec<(Example, Example)> =
            safe_ex.into_iter().zip(bad_ex).filter(|(s, b)| super::sft::has_target(s) && super::sft::has_target(b)).collect();
        if pairs.is_empty() {
            return Err(err(format!("no (harmless, harmful) pair keeps a response token on both sides within max_len = {}", p.max_len)));
        }
        Ok(Box::new(RepNoiseRule::new(pairs, rp.alpha, rp.beta, seed.wrapping_add(29))))
    })
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
