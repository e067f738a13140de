//! The gated MLP's `silu(gate) * up` as one op with its own backward (CPU, float32).
//!
//! In elementary ops (candle's `silu`, then a product) a training step passes over the
//! `[tokens, intermediate]` activations about a dozen times per layer: candle's silu backward
//! alone is seven ops, three of them single-threaded affine maps, and every gradient is
//! accumulated into fresh zeros. This op passes once forward and once backward. It computes the
//! same float32 operations in the same order as the elementary ops and their backward, so the
//! values and gradients are the same bits (tested below): training runs do not move.

use super::cpu_op::{contiguous_f32, for_chunks, with_f32_values, SharedOut};
use super::vector_exp::exp_in_place;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Elements per unit of work handed to candle's thread pool (as its element-wise ops do).
const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up`, recording a backward for whichever input tracks a gradient.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.device().is_cpu()
        && up.device().is_cpu()
        && gate.shape() == up.shape();
    if !fused {
        return candle_nn::ops::silu(gate)? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let gate = contiguous_f32(s1, l1, "silu-mul")?;
        let up = contiguous_f32(s2, l2, "silu-mul")?;
        let mut out = vec![0f32; gate.len()];
        let shared = SharedOut::new(&mut out);
        for_chunks(gate.len(), CHUNK, 1, |range| {
            // SAFETY: chunks are disjoint; `out` outlives the call.
            let out = unsafe { shared.slice(range.clone()) };
            let (gate, up) = (&gate[range.clone()], &up[range]);
            for (o, &g) in out.iter_mut().zip(gate) {
                *o = -g;
            }
            exp_in_place(out);
            // candle's silu, `g / (1 + exp(-g))`, times `up`.
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + *o) * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// candle's chain, value by value: the product's backward gives `G * up` to silu's output
    /// (into zeros) and `G * silu(gate)` to `up`; silu's backward is
    /// `G_s * (sigmoid * (1 - silu) + silu)` with `sigmoid = recip(exp(-gate) * 1 + 1)` and
    /// `1 - silu` as the affine map `silu * -1 + 1`.
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_gate, want_up) = (gate.track_op(), up.track_op());
        if !want_gate && !want_up {
            return Ok((None, None));
        }
        let grad = grad.contiguous()?;
        with_f32_values([gate, up, &grad], "silu-mul", |[g, u, r]| {
            let n = g.len();
            let mut d_gate = if want_gate { vec![0f32; n] } else { Vec::new() };
            let mut d_up = if want_up { vec![0f32; n] } else { Vec::new() };
            let (gate_out, up_out) = (SharedOut::new(&mut d_gate), SharedOut::new(&mut d_up));
            for_chunks(n, CHUNK, 1, |range| {
                let (g, u, r) = (&g[range.clone()], &u[range.clone()], &r[range.clone()]);
                // SAFETY: chunks are disjoint; the buffers outlive the call. An unwanted gradient's
                // buffer is empty and never sliced.
                let d_up = if want_up { unsafe { up_out.slice(range.clone()) } } else { &mut [] };
                let d_gate = if want_gate { unsafe { gate_out.slice(range) } } else { &mut [] };
                // One exponential serves silu (`g / (1 + e)`) and its sigmoid (`recip(e * 1 + 1)`).
                let mut exps: Vec<f32> = g.iter().map(|&v| -v).collect();
                exp_in_place(&mut exps);
                for i in 0..g.len() {
                    let e = exps[i];
                    let s = g[i] / (1.0 + e);
                    if want_up {
                        d_up[i] = r[i] * s;
                    }
                    if want_gate {
                        let grad_silu = 0.0 + r[i] * u[i];
                        let sigmoid = (e * 1.0 + 1.0).recip();
                        let local = sigmoid * (s * -1.0 + 1.0) + s;
                        d_gate[i] = grad_silu * local;
                    }
                }
            });
            let shape = gate.shape();
            let wrap = |v: Vec<f32>, want: bool| -> Result<Option<Tensor>> {
                if want {
                    Ok(Some(Tensor::from_vec(v, shape, gate.device())?))
                } else {
                    Ok(None)
                }
            };
            Ok((wrap(d_gate, want_gate)?, wrap(d_up, want_up)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_op::test_values as values;
    use candle_core::{Device, Var};

    /// Forward and both gradients against candle's silu and product, bit for bit, on sizes below
    /// and above the parallel threshold, with extreme gates (exp overflows to inf).
    #[test]
    fn values_and_gradients_are_the_elementary_ops_bit_for_bit() -> Result<()> {
        for (rows, cols) in [(3, 7), (40, 2000)] {
            let n = rows * cols;
            let mut g = values(n, 1, 24.0);
            g[0] = -120.0;
            g[1] = 95.0;
            let gate = Var::from_vec(g, (rows, cols), &Device::Cpu)?;
            let up = Var::from_vec(values(n, 2, 4.0), (rows, cols), &Device::Cpu)?;
            let weights = Tensor::from_vec(values(n, 3, 2.0), (rows, cols), &Device::Cpu)?;
            let fused = silu_mul(gate.as_tensor(), up.as_tensor())?;
            let elementary = (candle_nn::ops::silu(gate.as_tensor())? * up.as_tensor())?;
            assert_eq!(fused.flatten_all()?.to_vec1::<f32>()?, elementary.flatten_all()?.to_vec1::<f32>()?);
            let grads_fused = (fused * &weights)?.sum_all()?.backward()?;
            let grads_elementary = (elementary * &weights)?.sum_all()?.backward()?;
            for var in [&gate, &up] {
                let a = grads_fused.get(var.as_tensor()).expect("fused gradient").flatten_all()?.to_vec1::<f32>()?;
                let b = grads_elementary.get(var.as_tensor()).expect("gradient").flatten_all()?.to_vec1::<f32>()?;
                assert_eq!(a.len(), n);
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "gradients differ ({rows}x{cols})");
            }
        }
        Ok(())
    }

    /// A frozen `up` gets no gradient; the gate's is still the elementary one.
    #[test]
    fn only_tracked_inputs_get_gradients() -> Result<()> {
        let gate = Var::from_vec(values(300, 4, 8.0), (10, 30), &Device::Cpu)?;
        let up = Tensor::from_vec(values(300, 5, 8.0), (10, 30), &Device::Cpu)?;
        let grads = silu_mul(gate.as_tensor(), &up)?.sum_all()?.backward()?;
        let reference = (candle_nn::ops::silu(gate.as_tensor())? * &up)?.sum_all()?.backward()?;
        assert!(grads.get(&up).is_none());
        let a = grads.get(gate.as_tensor()).expect("gate gradient").flatten_all()?.to_vec1::<f32>()?;
        let b = reference.get(gate.as_tensor()).expect("gate gradient").flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b);
        Ok(())
    }

    #[test]
    fn other_dtypes_use_the_elementary_ops() -> Result<()> {
        let gate = Tensor::from_vec(values(12, 6, 4.0), (3, 4), &Device::Cpu)?.to_dtype(DType::F64)?;
        let up = gate.affine(0.5, 1.0)?;
        let fused = silu_mul(&gate, &up)?;
        let elementary = (candle_nn::ops::silu(&gate)? * &up)?;
        assert_eq!(fused.flatten_all()?.to_vec1::<f64>()?, elementary.flatten_all()?.to_vec1::<f64>()?);
        Ok(())
    }
}
