//! RMSNorm `x / sqrt(mean(x^2) + eps) * weight` over the last dimension as one op with its own
//! backward (CPU, float32), for training.
//!
//! In elementary ops the norm is seven tensors forward and about twenty backward per call (two
//! calls a layer), several single-threaded, with a gradient computed and thrown away for a frozen
//! weight. This op passes once each way. It computes every value as the elementary ops and their
//! backward compute it (candle's row sum included), and hands its input's gradient back in the
//! two parts the elementary graph adds to it one after the other (through the division, then
//! through the square), so even the input's accumulated gradient is the same bits (tested below
//! and on whole models in `tests/fused_ops.rs`).

use super::cpu_op::{contiguous_f32, for_chunks, with_f32_values, SharedOut};
use super::row_sum::candle_row_sum;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Rows per unit of work on candle's thread pool.
const ROWS_PER_CHUNK: usize = 16;

/// RMSNorm of a contiguous float32 CPU `x` with `weight: [hidden]`; `None` where this op does not
/// apply, for the caller to use the elementary ops.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let applies = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.device().is_cpu()
        && weight.device().is_cpu()
        && x.rank() >= 1
        && x.is_contiguous()
        && weight.dims() == [x.dim(candle_core::D::Minus1)?];
    if !applies {
        return Ok(None);
    }
    let op = RmsNorm { eps: eps as f32, denominators: Mutex::new(Vec::new()) };
    // `x` twice: the backward returns its gradient through the division and through the square
    // as two gradients, which candle adds to `x`'s in that order, as for the elementary graph.
    Ok(Some(x.apply_op3(x, &weight.contiguous()?, op)?))
}

struct RmsNorm {
    /// `eps` as candle's affine map adds it to float32 values.
    eps: f32,
    /// `sqrt(mean(x^2) + eps)` per row, from the forward, for the backward.
    denominators: Mutex<Vec<f32>>,
}

/// The row's denominator as the elementary ops compute it: squares, candle's row sum, the
/// mean's affine map `* (1/n) + 0`, the affine `* 1 + eps`, the square root.
fn denominator(row: &[f32], squares: &mut [f32], eps: f32) -> f32 {
    for (s, &x) in squares.iter_mut().zip(row) {
        *s = x * x;
    }
    let inv_n = (1f64 / row.len() as f64) as f32;
    let mean = candle_row_sum(squares) * inv_n + 0.0;
    (mean * 1.0 + eps).sqrt()
}

impl CustomOp3 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (contiguous_f32(s1, l1, "rms-norm")?, contiguous_f32(s3, l3, "rms-norm")?);
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; x.len()];
        let mut denominators = vec![0f32; rows];
        let (shared_out, shared_d) = (SharedOut::new(&mut out), SharedOut::new(&mut denominators));
        for_chunks(rows, ROWS_PER_CHUNK, h, |range| {
            for r in range {
                // SAFETY: each row belongs to one chunk; the buffers outlive the call.
                let y = unsafe { shared_out.slice(r * h..(r + 1) * h) };
                let row = &x[r * h..(r + 1) * h];
                let d = denominator(row, y, self.eps);
                for ((y, &x), &w) in y.iter_mut().zip(row).zip(w) {
                    *y = (x / d) * w;
                }
                // SAFETY: as above.
                unsafe { shared_d.slice(r..r + 1)[0] = d };
            }
        });
        *self.denominators.lock().expect("denominators lock") = denominators;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// The elementary chain's backward, value by value. With `Gn = 0 + G * w`: through the
    /// division `Gn / d`; through the square `(x * g_sq) * 2 + 0`, where `g_sq` comes from the
    /// row sum (candle's order) of `0 - Gn * x / (d * d)` through the square root's `g / d * 0.5`
    /// and the two affine maps. The weight's gradient is candle's own sum of `0 + G * x / d`.
    fn bwd(
        &self,
        x: &Tensor,
        _x_again: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w) = (x.track_op(), weight.track_op());
        if !want_x && !want_w {
            return Ok((None, None, None));
        }
        let denominators = self.denominators.lock().expect("denominators lock").clone();
        let grad = grad.contiguous()?;
        with_f32_values([x, weight, &grad], "rms-norm", |[xv, w, g]| {
            let h = w.len();
            let rows = xv.len() / h;
            if denominators.len() != rows {
                return Err(candle_core::Error::Msg("rms-norm: backward without its forward".into()));
            }
            let inv_n = (1f64 / h as f64) as f32;
            let n = xv.len();
            let sized = |want: bool| if want { vec![0f32; n] } else { Vec::new() };
            let (mut via_div, mut via_sqr, mut for_weight) = (sized(want_x), sized(want_x), sized(want_w));
            let (div_out, sqr_out, w_out) = (SharedOut::new(&mut via_div), SharedOut::new(&mut via_sqr), SharedOut::new(&mut for_weight));
            for_chunks(rows, ROWS_PER_CHUNK, h, |range| {
                let mut to_sum = vec![0f32; h];
                for r in range {
                    let d = denominators[r];
                    let (x, g) = (&xv[r * h..(r + 1) * h], &g[r * h..(r + 1) * h]);
                    if want_w {
                        // SAFETY: each row belongs to one chunk; the buffers outlive the call.
                        let out = unsafe { w_out.slice(r * h..(r + 1) * h) };
                        for ((o, &g), &x) in out.iter_mut().zip(g).zip(x) {
                            *o = 0.0 + g * (x / d);
                        }
                    }
                    if !want_x {
                        continue;
                    }
                    // SAFETY: as above.
                    let (div, sqr) = unsafe { (div_out.slice(r * h..(r + 1) * h), sqr_out.slice(r * h..(r + 1) * h)) };
                    let d_sq = d * d;
                    for j in 0..h {
                        let grad_normed = 0.0 + g[j] * w[j];
                        div[j] = grad_normed / d;
                        to_sum[j] = 0.0 - (grad_normed * x[j]) / d_sq;
                    }
                    let grad_d = 0.0 + candle_row_sum(&to_sum);
                    let grad_var = 0.0 + ((0.0 + ((grad_d / d) * 0.5 + 0.0)) * 1.0 + 0.0);
                    let grad_square = 0.0 + (0.0 + (grad_var * inv_n + 0.0));
                    for j in 0..h {
                        sqr[j] = (x[j] * grad_square) * 2.0 + 0.0;
                    }
                }
            });
            let shape = x.shape();
            let as_tensor = |v: Vec<f32>| Tensor::from_vec(v, shape, x.device());
            let weight_grad = if want_w {
                // Candle's broadcast backward: sum over every leading dimension, squeezed.
                let leading: Vec<usize> = (0..shape.rank() - 1).collect();
                let mut summed = as_tensor(for_weight)?.sum_keepdim(leading.as_slice())?;
                for _ in 0..leading.len() {
                    summed = summed.squeeze(0)?;
                }
                Some(summed)
            } else {
                None
            };
            if !want_x {
                return Ok((None, None, weight_grad));
            }
            Ok((Some(as_tensor(via_div)?), Some(as_tensor(via_sqr)?), weight_grad))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_op::test_values as values;
    use candle_core::{Device, Var, D};

    /// The elementary form this op replaces (`layers::rms_norm`'s differentiable path).
    fn elementary(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
        let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = x.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
        normed.broadcast_mul(weight).unwrap()
    }

    /// Values and gradients bit for bit, with `x` also feeding a residual sum (as in a block),
    /// so the order in which its gradient parts are added is checked too; a trainable weight
    /// (full fine-tuning) and a frozen one (LoRA).
    #[test]
    fn values_and_gradients_are_the_elementary_ops_bit_for_bit() {
        for (b, t, h) in [(1, 3, 8), (2, 5, 33), (2, 128, 576)] {
            for weight_trains in [true, false] {
                let n = b * t * h;
                let x = Var::from_vec(values(n, 1, 3.0), (b, t, h), &Device::Cpu).unwrap();
                let w = Var::from_vec(values(h, 2, 2.0), h, &Device::Cpu).unwrap();
                let w_in = if weight_trains { w.as_tensor().clone() } else { w.as_tensor().detach() };
                let residual = Tensor::from_vec(values(n, 3, 1.0), (b, t, h), &Device::Cpu).unwrap();
                let weights = Tensor::from_vec(values(n, 4, 2.0), (b, t, h), &Device::Cpu).unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let run = |norm: Tensor| {
                    let out = ((x.as_tensor() + &residual).unwrap() + (norm * &weights).unwrap()).unwrap();
                    let grads = out.sum_all().unwrap().backward().unwrap();
                    (flat(grads.get(x.as_tensor()).unwrap()), grads.get(w.as_tensor()).map(flat))
                };
                let fused = rms_norm(x.as_tensor(), &w_in, 1e-5).unwrap().unwrap();
                let reference = elementary(x.as_tensor(), &w_in, 1e-5);
                assert_eq!(flat(&fused), flat(&reference), "values, {b}x{t}x{h}");
                let (a, r) = (run(fused), run(reference));
                assert!(a.0.iter().zip(&r.0).all(|(p, q)| p.to_bits() == q.to_bits()), "input gradient, {b}x{t}x{h}");
                assert_eq!(a.1.is_some(), weight_trains);
                if let (Some(p), Some(q)) = (a.1, r.1) {
                    assert!(p.iter().zip(&q).all(|(p, q)| p.to_bits() == q.to_bits()), "weight gradient, {b}x{t}x{h}");
                }
            }
        }
    }

    #[test]
    fn other_inputs_are_left_to_the_elementary_ops() {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        assert!(rms_norm(&x.to_dtype(DType::F64).unwrap(), &w.to_dtype(DType::F64).unwrap(), 1e-6).unwrap().is_none());
        assert!(rms_norm(&x.transpose(1, 2).unwrap(), &Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(), 1e-6).unwrap().is_none());
        assert!(rms_norm(&x, &Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(), 1e-6).unwrap().is_none());
    }
}
