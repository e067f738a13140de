//! Attention's `softmax(scores * scale + mask)` over the key axis as one op with its own backward
//! (CPU, float32), for training.
//!
//! In elementary ops the scaled, masked softmax is seven passes forward (three single-threaded:
//! the scale's affine map, the row max, the row sum) and about fifteen backward, each into a new
//! `[batch, heads, queries, keys]` tensor, with gradients computed and thrown away for the mask
//! and the detached max. This op reads the scores once forward and writes their gradient once
//! backward. Every value is computed as the elementary ops and their backward compute it, in the
//! same float32 order (candle's row sum included), so results are the same bits (tested below).

use super::cpu_op::{contiguous_f32, for_chunks, with_f32_values, SharedOut};
use super::row_sum::candle_row_sum;
use super::vector_exp::exp_in_place;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Rows per unit of work on candle's thread pool.
const ROWS_PER_CHUNK: usize = 64;

/// `softmax(scores * scale + mask)` for `scores: [B, H, T, S]` and an additive `mask: [B, 1, T, S]`
/// shared by the heads; `None` where this op does not apply (not float32 on the CPU, other
/// shapes), for the caller to use the elementary ops. The mask gets no gradient.
pub fn scaled_masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let applies = scores.dtype() == DType::F32
        && mask.dtype() == DType::F32
        && scores.device().is_cpu()
        && mask.device().is_cpu()
        && scores.rank() == 4
        && mask.rank() == 4;
    if !applies {
        return Ok(None);
    }
    let (b, h, t, s) = scores.dims4()?;
    if mask.dims4()? != (b, 1, t, s) {
        return Ok(None);
    }
    let op = ScaledMaskedSoftmax { scale: scale as f32, heads: h, row_stats: Mutex::new(Vec::new()) };
    Ok(Some(scores.contiguous()?.apply_op2(&mask.contiguous()?, op)?))
}

struct ScaledMaskedSoftmax {
    /// The scale as candle's affine map applies it to float32 values.
    scale: f32,
    heads: usize,
    /// `(max, sum of exp(z - max))` per row, from the forward, for the backward.
    row_stats: Mutex<Vec<(f32, f32)>>,
}

/// Shape bookkeeping shared by forward and backward: `rows` rows of `keys` values; row `r`
/// reads mask row `mask_row(r)`.
struct Rows {
    rows: usize,
    keys: usize,
    heads: usize,
    queries: usize,
}

impl Rows {
    fn of(shape: &Shape, heads: usize) -> Result<Self> {
        let (b, h, t, s) = shape.dims4()?;
        debug_assert_eq!(h, heads);
        Ok(Self { rows: b * h * t, keys: s, heads, queries: t })
    }

    fn mask_row(&self, r: usize) -> usize {
        let batch = r / (self.heads * self.queries);
        batch * self.queries + r % self.queries
    }
}

impl ScaledMaskedSoftmax {
    /// The masked, scaled row `z` as the elementary ops compute it: `x * scale + 0` (candle's
    /// affine map), then `+ mask`.
    fn masked_row(&self, x: &[f32], mask: &[f32], z: &mut [f32]) {
        for ((z, &x), &m) in z.iter_mut().zip(x).zip(mask) {
            *z = (x * self.scale + 0.0) + m;
        }
    }
}

impl CustomOp2 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "scaled-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let rows = Rows::of(l1.shape(), self.heads)?;
        let (x, mask) = (contiguous_f32(s1, l1, "scaled-masked-softmax")?, contiguous_f32(s2, l2, "scaled-masked-softmax")?);
        let k = rows.keys;
        let mut out = vec![0f32; rows.rows * k];
        let mut stats = vec![(0f32, 0f32); rows.rows];
        let (shared_out, shared_stats) = (SharedOut::new(&mut out), SharedOut::new(&mut stats));
        for_chunks(rows.rows, ROWS_PER_CHUNK, k, |range| {
            for r in range {
                // SAFETY: each row belongs to one chunk; `out` outlives the call.
                let y = unsafe { shared_out.slice(r * k..(r + 1) * k) };
                let m = rows.mask_row(r);
                self.masked_row(&x[r * k..(r + 1) * k], &mask[m * k..(m + 1) * k], y);
                let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for v in y.iter_mut() {
                    *v -= max;
                }
                exp_in_place(y);
                let sum = candle_row_sum(y);
                for v in y.iter_mut() {
                    *v /= sum;
                }
                // SAFETY: as above, one writer per row.
                unsafe { shared_stats.slice(r..r + 1)[0] = (max, sum) };
            }
        });
        *self.row_stats.lock().expect("row stats lock") = stats;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// The elementary chain's backward, value by value: the division gives `0 + G / s` to the
    /// exponentials and `0 - G * e / (s * s)` to the broadcast sum, whose row sum (candle's order)
    /// comes back to every exponential; the exponential multiplies by `e`; the mask's addition
    /// passes the gradient on; the scale's affine map gives `g * scale + 0`.
    fn bwd(&self, scores: &Tensor, mask: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !scores.track_op() {
            return Ok((None, None));
        }
        let rows = Rows::of(scores.shape(), self.heads)?;
        let stats = self.row_stats.lock().expect("row stats lock").clone();
        if stats.len() != rows.rows {
            return Err(candle_core::Error::Msg("scaled-masked-softmax: backward without its forward".into()));
        }
        let grad = grad.contiguous()?;
        with_f32_values([scores, mask, &grad], "scaled-masked-softmax", |[x, mask, g]| {
            let k = rows.keys;
            let mut d_scores = vec![0f32; rows.rows * k];
            let shared = SharedOut::new(&mut d_scores);
            for_chunks(rows.rows, ROWS_PER_CHUNK, k, |range| {
                let mut e = vec![0f32; k];
                let mut to_sum = vec![0f32; k];
                for r in range {
                    let (max, sum) = stats[r];
                    let m = rows.mask_row(r);
                    self.masked_row(&x[r * k..(r + 1) * k], &mask[m * k..(m + 1) * k], &mut e);
                    for v in e.iter_mut() {
                        *v -= max;
                    }
                    exp_in_place(&mut e);
                    let g = &g[r * k..(r + 1) * k];
                    let sum_sq = sum * sum;
                    for ((t, &gj), &ej) in to_sum.iter_mut().zip(g).zip(&e) {
                        *t = 0.0 - (gj * ej) / sum_sq;
                    }
                    let grad_sum = 0.0 + candle_row_sum(&to_sum);
                    // SAFETY: each row belongs to one chunk; `d_scores` outlives the call.
                    let d = unsafe { shared.slice(r * k..(r + 1) * k) };
                    for ((d, &gj), &ej) in d.iter_mut().zip(g).zip(&e) {
                        let grad_e = (0.0 + gj / sum) + grad_sum;
                        let grad_z = 0.0 + grad_e * ej;
                        *d = grad_z * self.scale + 0.0;
                    }
                }
            });
            Ok((Some(Tensor::from_vec(d_scores, scores.shape(), scores.device())?), None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_op::test_values as values;
    use candle_core::{Device, Var, D};

    /// The elementary form this op replaces (`layers::attention` before it).
    fn elementary(scores: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
        let z = (scores * scale).unwrap().broadcast_add(mask).unwrap();
        let max = z.max_keepdim(D::Minus1).unwrap().detach();
        let e = z.broadcast_sub(&max).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    /// A causal mask over `t` queries and `s = past + t` keys, with the first `pad` keys of
    /// batch row 1 masked (left padding), as `decoder` builds it.
    fn causal_mask(b: usize, t: usize, past: usize, pad: usize) -> Tensor {
        let s = past + t;
        let mut m = vec![0f32; b * t * s];
        for bi in 0..b {
            for q in 0..t {
                for key in 0..s {
                    if key > past + q || (bi == 1 && key < pad) {
                        m[(bi * t + q) * s + key] = f32::MIN;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, t, s), &Device::Cpu).unwrap()
    }

    #[test]
    fn values_and_gradients_are_the_elementary_ops_bit_for_bit() {
        // Small rows and rows long enough for candle's vectorized sum; few rows (one thread) and
        // enough to split over the pool.
        for (b, h, t, past) in [(2, 3, 5, 0), (2, 4, 40, 3), (2, 9, 128, 0)] {
            let s = past + t;
            let scale = 1.0 / (64f64).sqrt();
            let scores = Var::from_vec(values(b * h * t * s, 7, 40.0), (b, h, t, s), &Device::Cpu).unwrap();
            let mask = causal_mask(b, t, past, 2);
            let weights = Tensor::from_vec(values(b * h * t * s, 8, 2.0), (b, h, t, s), &Device::Cpu).unwrap();
            let fused = scaled_masked_softmax(scores.as_tensor(), &mask, scale).unwrap().unwrap();
            let reference = elementary(scores.as_tensor(), &mask, scale);
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&fused), flat(&reference), "values, {b}x{h}x{t}x{s}");
            let g1 = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, r) = (flat(g1.get(scores.as_tensor()).unwrap()), flat(g2.get(scores.as_tensor()).unwrap()));
            assert!(a.iter().zip(&r).all(|(x, y)| x.to_bits() == y.to_bits()), "gradients, {b}x{h}x{t}x{s}");
            assert!(g1.get(&mask).is_none());
        }
    }

    #[test]
    fn other_shapes_and_dtypes_are_left_to_the_elementary_ops() {
        let scores = Tensor::zeros((1, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let mask = causal_mask(1, 3, 0, 0);
        assert!(scaled_masked_softmax(&scores, &mask.squeeze(1).unwrap(), 1.0).unwrap().is_none());
        assert!(scaled_masked_softmax(&scores.to_dtype(DType::F64).unwrap(), &mask, 1.0).unwrap().is_none());
        let per_head = Tensor::zeros((1, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(scaled_masked_softmax(&scores, &per_head, 1.0).unwrap().is_none());
    }
}
