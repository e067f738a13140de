//! Building blocks of the decoders. Each op has an inference form (fused candle kernels) and a
//! differentiable form: candle's fused rms_norm, softmax_last_dim and rope record no backward op,
//! so training must not use them (see docs/ARCHITECTURE.md). On the CPU in float32 the
//! differentiable RMSNorm, attention softmax, rotary and SwiGLU are this crate's fused ops with
//! their own backward, which compute the elementary ops' bits (`ForwardOptions::elementary`
//! turns them off, for the tests that check it).

use super::attention_softmax::scaled_masked_softmax;
use super::few_rows::few_rows_linear;
use super::frozen::frozen_linear;
use super::rms_norm::rms_norm as fused_rms_norm;
use super::rotary::rotate_half;
use candle_core::{DType, Module, Tensor, Var, D};
use rand::Rng;
use std::cell::RefCell;

/// The generator of LoRA dropout masks: `rand`'s `StdRng` by name (the same stream for the same
/// seed), whose position a step checkpoint can save and restore.
pub type DropoutRng = rand_chacha::ChaCha12Rng;

/// Where a [`HiddenHook`] is called inside each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// Output of the attention module, before the residual add (Vaccine perturbs here).
    AttentionOutput,
    /// Output of the MLP, before the residual add (RepNoise matches these to noise).
    MlpOutput,
    /// The residual stream after the block (logit lens).
    LayerOutput,
}

/// Observes or replaces hidden states during a forward. Methods use it to record activations
/// (their gradients are then read from the `GradStore`) and to add perturbations.
pub trait HiddenHook {
    fn on_hidden(&self, point: HookPoint, layer: usize, hidden: Tensor) -> candle_core::Result<Tensor>;
}

/// Which LoRA adapters a forward applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Adapters {
    /// The adapters as they are now (trained ones included).
    #[default]
    Live,
    /// None: the frozen base model.
    Off,
    /// The model as the stage loaded it: adapters at their frozen reference values
    /// ([`LoraAdapter::reference`]); adapters without one (fresh this stage) are left out.
    Reference,
}

/// How a forward pass runs.
#[derive(Clone, Copy, Default)]
pub struct ForwardOptions<'a> {
    /// Use only ops with a backward (required whenever gradients are taken).
    pub differentiable: bool,
    pub adapters: Adapters,
    /// Source of LoRA dropout masks; `None` disables dropout (evaluation).
    pub dropout_rng: Option<&'a RefCell<DropoutRng>>,
    pub hook: Option<&'a dyn HiddenHook>,
    /// Compose every op from candle's elementary ops, bypassing this crate's fused ops (which
    /// compute the same bits); for the tests that check that they do.
    pub elementary: bool,
}

impl<'a> ForwardOptions<'a> {
    /// Inference: fused kernels, adapters on, no dropout.
    pub fn inference() -> Self {
        Self { differentiable: false, adapters: Adapters::Live, dropout_rng: None, hook: None, elementary: false }
    }
    /// Training: differentiable ops, adapters on; dropout when an rng is given.
    pub fn training(dropout_rng: Option<&'a RefCell<DropoutRng>>) -> Self {
        Self { differentiable: true, adapters: Adapters::Live, dropout_rng, hook: None, elementary: false }
    }
    pub fn with_hook(mut self, hook: &'a dyn HiddenHook) -> Self {
        self.hook = Some(hook);
        self
    }
    pub fn elementary(mut self) -> Self {
        self.elementary = true;
        self
    }
    pub fn without_adapters(mut self) -> Self {
        self.adapters = Adapters::Off;
        self
    }
    /// The frozen reference model (the model before this stage; KL terms, DPO): same kernels as
    /// `self`, no dropout, no hook.
    pub fn reference(mut self) -> Self {
        self.adapters = Adapters::Reference;
        self.dropout_rng = None;
        self.hook = None;
        self
    }
    pub(crate) fn apply_hook(&self, point: HookPoint, layer: usize, h: Tensor) -> candle_core::Result<Tensor> {
        match self.hook {
            Some(hook) => hook.on_hidden(point, layer, h),
            None => Ok(h),
        }
    }
}

/// A LoRA adapter on one linear layer: `y += scale * B(A(dropout(x)))`. A and B stay f32
/// whatever the base dtype, so optimizer updates are not lost to rounding.
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
    /// Copies of A and B as the stage loaded them, for [`Adapters::Reference`]; `None` for an
    /// adapter that is new in this stage (not part of the reference model).
    pub reference: Option<(Tensor, Tensor)>,
}

impl LoraAdapter {
    pub fn new(a: Var, b: Var, scale: f64, dropout: f32) -> Self {
        Self { a, b, scale, dropout, reference: None }
    }
}

/// A linear layer `y = x W^T + b`, with an optional LoRA adapter. `name` is the module path as
/// PEFT sees it (e.g. `model.layers.0.self_attn.q_proj`).
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn new(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { name: name.into(), weight, bias, lora: None }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, x: &Tensor, opts: &ForwardOptions) -> candle_core::Result<Tensor> {
        let base = self.base(x)?;
        let Some(lora) = &self.lora else { return Ok(base) };
        let (a, b) = match opts.adapters {
            Adapters::Live => (lora.a.as_tensor(), lora.b.as_tensor()),
            Adapters::Reference => match &lora.reference {
                Some((a, b)) => (a, b),
                None => return Ok(base),
            },
            Adapters::Off => return Ok(base),
        };
        let xf = x.to_dtype(DType::F32)?;
        let xf = match opts.dropout_rng {
            Some(rng) if lora.dropout > 0.0 => dropout(&xf, lora.dropout, &mut rng.borrow_mut())?,
            _ => xf,
        };
        let delta = xf.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
        let delta = (delta * lora.scale)?.to_dtype(base.dtype())?;
        base + delta
    }

    /// `x W^T + b`. A frozen weight (not a `Var`) goes through [`frozen_linear`], whose backward
    /// skips the weight's gradient and whose CPU product reads the weight in place.
    /// A product nobody differentiates with only a few rows (a generation step) reads the weight
    /// once in place ([`few_rows_linear`]) instead of through `gemm`.
    fn base(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let untracked = !x.track_op() && !self.weight.track_op();
        let y = match untracked.then(|| few_rows_linear(x, &self.weight)).transpose()?.flatten() {
            Some(y) => y,
            // A weight that carries gradients itself (full fine-tuning) needs candle's backward.
            None if self.weight.is_variable() || (!x.track_op() && self.weight.track_op()) => {
                return candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(x)
            }
            None => frozen_linear(x, &self.weight)?,
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }

    /// Folds the adapter into the weight (`W += scale * B A`) and removes it.
    pub fn merge_lora(&mut self) -> candle_core::Result<()> {
        if let Some(lora) = self.lora.take() {
            let delta = (lora.b.as_tensor().matmul(lora.a.as_tensor())? * lora.scale)?;
            // Detached: computed from the adapter's variables, the merged weight would otherwise
            // carry their graph into every later forward (each generation step's KV cache then
            // keeps all earlier ones alive) and every backward pass.
            self.weight = (self.weight.to_dtype(DType::F32)? + delta)?.to_dtype(self.weight.dtype())?.detach();
        }
        Ok(())
    }
}

/// Inverted dropout with a mask drawn from a seeded rng, so training runs are reproducible.
fn dropout(x: &Tensor, p: f32, rng: &mut DropoutRng) -> candle_core::Result<Tensor> {
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
    x * Tensor::from_vec(mask, x.shape(), x.device())?
}

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, opts: &ForwardOptions) -> candle_core::Result<Tensor> {
    if !opts.differentiable {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    if !opts.elementary {
        if let Some(normed) = fused_rms_norm(x, weight, eps)? {
            return Ok(normed);
        }
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// LayerNorm in elementary ops (differentiable, and exact enough for inference too).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)?.broadcast_add(bias)
}

pub fn softmax(x: &Tensor, opts: &ForwardOptions) -> candle_core::Result<Tensor> {
    if !opts.differentiable {
        if opts.elementary {
            return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
        }
        return super::softmax::softmax_last_dim(x);
    }
    // The max shift is a constant for the gradient; detaching it keeps the graph small.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// cos/sin tables for the positions of one forward, shaped `[B, 1, T, rot/2]`.
pub struct RotaryAngles {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RotaryAngles {
    /// `positions`: `[B, T]` absolute positions (u32), `inv_freq`: `[rot/2]`.
    pub fn new(positions: &Tensor, inv_freq: &Tensor, dtype: DType) -> candle_core::Result<Self> {
        let (b, t) = positions.dims2()?;
        let half = inv_freq.dim(0)?;
        let pos = positions.to_dtype(DType::F32)?.reshape((b, t, 1))?;
        let freqs = pos.broadcast_mul(&inv_freq.reshape((1, 1, half))?)?;
        let freqs = freqs.reshape((b, 1, t, half))?;
        Ok(Self { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? })
    }

    /// HF's `rotate_half` rotary on the first `2*half` dims of `x: [B, H, T, D]`; the rest pass.
    pub fn apply(&self, x: &Tensor, opts: &ForwardOptions) -> candle_core::Result<Tensor> {
        if !opts.elementary {
            if let Some(rotated) = rotate_half(x, &self.cos, &self.sin)? {
                return Ok(rotated);
            }
        }
        let d = x.dim(D::Minus1)?;
        let half = self.cos.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&self.cos)? - x2.broadcast_mul(&self.sin)?)?;
        let r2 = (x2.broadcast_mul(&self.cos)? + x1.broadcast_mul(&self.sin)?)?;
        if 2 * half == d {
            Tensor::cat(&[r1, r2], D::Minus1)
        } else {
            Tensor::cat(&[r1, r2, x.narrow(D::Minus1, 2 * half, d - 2 * half)?], D::Minus1)
        }
    }
}

/// Scaled dot-product attention. `q: [B, H, T, D]`, `k, v: [B, KV, S, D]`, `mask: [B, 1, T, S]`
/// additive (0 or a large negative number).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, opts: &ForwardOptions) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let groups = h / kv;
    // Grouped-query attention: fold the query heads of one group into the sequence axis so that
    // each group attends to its key/value head without copying keys and values.
    let q = q.reshape((b, kv, groups * t, d))?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = q.matmul(&k.t()?)?;
    let mask = mask.to_dtype(scores.dtype())?;
    // Inference keeps candle's fused softmax (no backward, its own rounding).
    let fused = if opts.differentiable && !opts.elementary {
        scaled_masked_softmax(&scores.reshape((b, h, t, k.dim(2)?))?, &mask, scale)?
    } else {
        None
    };
    let probs = match fused {
        Some(probs) => probs,
        None => {
            let scores = (scores * scale)?.reshape((b, h, t, k.dim(2)?))?;
            softmax(&scores.broadcast_add(&mask)?, opts)?
        }
    };
    let probs = probs.reshape((b, kv, groups * t, k.dim(2)?))?;
    probs.matmul(&v.contiguous()?)?.reshape((b, h, t, d))
}

pub fn activation(name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
    match name {
        "silu" | "swish" => candle_nn::ops::silu(x),
        "gelu" => x.gelu_erf(),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu(),
        "relu" => x.relu(),
        other => Err(candle_core::Error::Msg(format!("unsupported hidden_act {other:?}"))),
    }
}

/// Records the gradient of the loss with respect to the hidden states at one hook point, and
/// optionally adds a fixed perturbation there (Vaccine). candle keeps gradients only for
/// variables, so each hooked activation gets a zero-valued `Var` added to it: the gradient of
/// that probe is the gradient of the activation.
pub struct GradientProbe {
    pub point: HookPoint,
    probes: RefCell<Vec<(usize, Var)>>,
    perturbation: Option<Vec<Tensor>>,
}

impl GradientProbe {
    pub fn new(point: HookPoint) -> Self {
        Self { point, probes: RefCell::new(Vec::new()), perturbation: None }
    }

    /// Adds `perturbation[layer]` to the activation of each layer (broadcast over the batch).
    pub fn with_perturbation(point: HookPoint, perturbation: Vec<Tensor>) -> Self {
        Self { point, probes: RefCell::new(Vec::new()), perturbation: Some(perturbation) }
    }

    /// Gradients of the probed activations, by layer, after `loss.backward()`.
    pub fn gradients(&self, store: &candle_core::backprop::GradStore) -> candle_core::Result<Vec<Tensor>> {
        self.probes
            .borrow()
            .iter()
            .map(|(layer, v)| match store.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => v.as_tensor().zeros_like().map_err(|e| e.context(format!("layer {layer}"))),
            })
            .collect()
    }
}

impl HiddenHook for GradientProbe {
    fn on_hidden(&self, point: HookPoint, layer: usize, hidden: Tensor) -> candle_core::Result<Tensor> {
        if point != self.point {
            return Ok(hidden);
        }
        let probe = Var::zeros(hidden.shape(), hidden.dtype(), hidden.device())?;
        let out = (&hidden + probe.as_tensor())?;
        self.probes.borrow_mut().push((layer, probe));
        match self.perturbation.as_ref().and_then(|p| p.get(layer)) {
            Some(eps) => out.broadcast_add(&eps.to_dtype(out.dtype())?),
            None => Ok(out),
        }
    }
}

/// Keeps the hidden states at the given points (still attached to the graph, so losses computed
/// from them backpropagate into the model: RepNoise's MMD on MLP outputs and logit lens).
pub struct RecordingHook {
    pub points: Vec<HookPoint>,
    recorded: RefCell<Vec<(HookPoint, usize, Tensor)>>,
}

impl RecordingHook {
    pub fn new(points: &[HookPoint]) -> Self {
        Self { points: points.to_vec(), recorded: RefCell::new(Vec::new()) }
    }

    /// The recorded tensors at `point`, in layer order.
    pub fn at(&self, point: HookPoint) -> Vec<Tensor> {
        let mut v: Vec<(usize, Tensor)> =
            self.recorded.borrow().iter().filter(|(p, _, _)| *p == point).map(|(_, l, t)| (*l, t.clone())).collect();
        v.sort_by_key(|(l, _)| *l);
        v.into_iter().map(|(_, t)| t).collect()
    }
}

impl HiddenHook for RecordingHook {
    fn on_hidden(&self, point: HookPoint, layer: usize, hidden: Tensor) -> candle_core::Result<Tensor> {
        if self.points.contains(&point) {
            self.recorded.borrow_mut().push((point, layer, hidden.clone()));
        }
        Ok(hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::DropoutRng;
    use rand::{RngCore, SeedableRng};

    #[test]
    fn the_dropout_rng_is_std_rng_by_name() {
        // Same seed, same stream: naming the generator (to save its position) moved no number.
        let (mut ours, mut std) = (DropoutRng::seed_from_u64(9), rand::rngs::StdRng::seed_from_u64(9));
        for _ in 0..1000 {
            assert_eq!(ours.next_u64(), std.next_u64());
        }
    }
}
