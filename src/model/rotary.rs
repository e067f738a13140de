//! HF's `rotate_half` rotary embedding as one op with its own backward (CPU, float32).
//!
//! In elementary ops (two narrows, four broadcast products, a difference, a sum and a
//! concatenation) the backward also computes the gradients of the constant cos/sin tables and
//! pads each half's gradient with zeros to the full width before adding them. This op passes once
//! each way; every value is computed as the elementary ops and their backward compute it, so
//! results are the same bits (tested below).

use super::cpu_op::{contiguous_f32, for_chunks, with_f32_values, SharedOut};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Rows (positions of one head) per unit of work on candle's thread pool.
const ROWS_PER_CHUNK: usize = 128;

/// Rotates the first `2 * half` features of `x: [B, H, T, D]` by the angles whose `cos, sin:
/// [B, 1, T, half]` are given; the remaining features pass. `None` where this op does not apply
/// (not float32 on the CPU, other shapes), for the caller to use the elementary ops.
pub fn rotate_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu() && t.rank() == 4;
    if !(cpu_f32(x) && cpu_f32(cos) && cpu_f32(sin)) || cos.shape() != sin.shape() {
        return Ok(None);
    }
    let (b, _, t, d) = x.dims4()?;
    let (cb, one, ct, half) = cos.dims4()?;
    if (cb, one, ct) != (b, 1, t) || 2 * half > d {
        return Ok(None);
    }
    let op = RotateHalf { half };
    Ok(Some(x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)?))
}

struct RotateHalf {
    half: usize,
}

/// Where row `r` (one position of one head) of `x: [B, H, T, D]` finds its angles.
struct Rows {
    rows: usize,
    width: usize,
    heads: usize,
    positions: usize,
}

impl Rows {
    fn of(shape: &Shape) -> Result<Self> {
        let (b, h, t, d) = shape.dims4()?;
        Ok(Self { rows: b * h * t, width: d, heads: h, positions: t })
    }

    fn angle_row(&self, r: usize) -> usize {
        (r / (self.heads * self.positions)) * self.positions + r % self.positions
    }
}

impl CustomOp3 for RotateHalf {
    fn name(&self) -> &'static str {
        "rotate-half"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let rows = Rows::of(l1.shape())?;
        let (x, cos, sin) =
            (contiguous_f32(s1, l1, "rotate-half")?, contiguous_f32(s2, l2, "rotate-half")?, contiguous_f32(s3, l3, "rotate-half")?);
        let (d, half) = (rows.width, self.half);
        let mut out = vec![0f32; x.len()];
        let shared = SharedOut::new(&mut out);
        for_chunks(rows.rows, ROWS_PER_CHUNK, d, |range| {
            for r in range {
                // SAFETY: each row belongs to one chunk; `out` outlives the call.
                let y = unsafe { shared.slice(r * d..(r + 1) * d) };
                let x = &x[r * d..(r + 1) * d];
                let a = rows.angle_row(r) * half;
                let (c, s) = (&cos[a..a + half], &sin[a..a + half]);
                for j in 0..half {
                    let (x1, x2) = (x[j], x[half + j]);
                    y[j] = x1 * c[j] - x2 * s[j];
                    y[half + j] = x2 * c[j] + x1 * s[j];
                }
                y[2 * half..].copy_from_slice(&x[2 * half..]);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// The elementary chain's backward, value by value: the concatenation hands `G1` and `G2` on
    /// (into zeros); `x1` gets `(0 + G1) * cos` then `+ (0 + G2) * sin`, `x2` gets
    /// `(0 - G1) * sin` then `+ (0 + G2) * cos`; the narrows pad with zeros and add.
    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None, None));
        }
        let rows = Rows::of(x.shape())?;
        let grad = grad.contiguous()?;
        with_f32_values([cos, sin, &grad], "rotate-half", |[cos, sin, g]| {
            let (d, half) = (rows.width, self.half);
            let mut dx = vec![0f32; g.len()];
            let shared = SharedOut::new(&mut dx);
            for_chunks(rows.rows, ROWS_PER_CHUNK, d, |range| {
                for r in range {
                    // SAFETY: each row belongs to one chunk; `dx` outlives the call.
                    let dx = unsafe { shared.slice(r * d..(r + 1) * d) };
                    let g = &g[r * d..(r + 1) * d];
                    let a = rows.angle_row(r) * half;
                    let (c, s) = (&cos[a..a + half], &sin[a..a + half]);
                    for j in 0..half {
                        let (g1, g2) = (0.0 + g[j], 0.0 + g[half + j]);
                        dx[j] = 0.0 + ((0.0 + g1 * c[j]) + g2 * s[j]);
                        dx[half + j] = 0.0 + ((0.0 + (0.0 - g[j]) * s[j]) + g2 * c[j]);
                    }
                    for (dx, &g) in dx[2 * half..].iter_mut().zip(&g[2 * half..]) {
                        *dx = 0.0 + g;
                    }
                }
            });
            Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), None, None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_op::test_values as values;
    use candle_core::{Device, Var, D};

    /// The elementary form this op replaces (`RotaryAngles::apply` before it).
    fn elementary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = x.dim(D::Minus1).unwrap();
        let half = cos.dim(D::Minus1).unwrap();
        let x1 = x.narrow(D::Minus1, 0, half).unwrap();
        let x2 = x.narrow(D::Minus1, half, half).unwrap();
        let r1 = (x1.broadcast_mul(cos).unwrap() - x2.broadcast_mul(sin).unwrap()).unwrap();
        let r2 = (x2.broadcast_mul(cos).unwrap() + x1.broadcast_mul(sin).unwrap()).unwrap();
        let mut parts = vec![r1, r2];
        if 2 * half < d {
            parts.push(x.narrow(D::Minus1, 2 * half, d - 2 * half).unwrap());
        }
        Tensor::cat(&parts, D::Minus1).unwrap()
    }

    #[test]
    fn values_and_gradients_are_the_elementary_ops_bit_for_bit() {
        // Full and partial rotation (GPT-NeoX rotates a quarter); one thread and the pool.
        for (b, h, t, d, half) in [(2, 3, 5, 8, 4), (1, 2, 7, 16, 2), (2, 9, 128, 64, 32)] {
            let n = b * h * t * d;
            let x = Var::from_vec(values(n, 1, 6.0), (b, h, t, d), &Device::Cpu).unwrap();
            let angles = Tensor::from_vec(values(b * t * half, 2, 20.0), (b, 1, t, half), &Device::Cpu).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let weights = Tensor::from_vec(values(n, 3, 2.0), (b, h, t, d), &Device::Cpu).unwrap();
            let fused = rotate_half(x.as_tensor(), &cos, &sin).unwrap().unwrap();
            let reference = elementary(x.as_tensor(), &cos, &sin);
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&fused), flat(&reference), "values, {b}x{h}x{t}x{d}");
            let g1 = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, r) = (flat(g1.get(x.as_tensor()).unwrap()), flat(g2.get(x.as_tensor()).unwrap()));
            assert!(a.iter().zip(&r).all(|(p, q)| p.to_bits() == q.to_bits()), "gradients, {b}x{h}x{t}x{d}");
        }
    }

    #[test]
    fn other_shapes_and_dtypes_are_left_to_the_elementary_ops() {
        let x = Tensor::zeros((1, 2, 3, 8), DType::F32, &Device::Cpu).unwrap();
        let cos = Tensor::zeros((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(rotate_half(&x.to_dtype(DType::F64).unwrap(), &cos, &cos).unwrap().is_none());
        assert!(rotate_half(&x, &cos.narrow(2, 0, 2).unwrap(), &cos.narrow(2, 0, 2).unwrap()).unwrap().is_none());
        let wide = Tensor::zeros((1, 1, 3, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(rotate_half(&x, &wide, &wide).unwrap().is_none());
    }
}
