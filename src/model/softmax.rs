//! Softmax and log-softmax over the last dimension for inference (CPU, float32): candle's values,
//! with the exponentials taken eight at a time (`model::vector_exp`).
//!
//! candle's `softmax_last_dim` calls libm once per value, and `log_softmax` is five elementary
//! ops, each a tensor the size of the logits (SmolLM2's vocabulary is 49,152 tokens): libm's
//! `expf` alone was 4 % of a scoring run. These ops compute every value with the same float32
//! operations in the same order (candle's row max and row sum included), so the results are the
//! same bits (tested below). They record no backward: training uses `attention_softmax` and
//! `train::cross_entropy`.

use super::cpu_op::{contiguous_f32, for_chunks, SharedOut};
use super::row_sum::candle_row_sum;
use super::vector_exp::exp_in_place;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Elements per unit of work on candle's thread pool.
const CHUNK_ELEMENTS: usize = 16 * 1024;

/// `softmax` over the last dimension, as `candle_nn::ops::softmax_last_dim`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !applies(x) {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    x.contiguous()?.apply_op1_no_bwd(&RowOp::Softmax)
}

/// `log_softmax` over the last dimension, as `candle_nn::ops::log_softmax(x, D::Minus1)`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !applies(x) {
        return candle_nn::ops::log_softmax(x, candle_core::D::Minus1);
    }
    x.contiguous()?.apply_op1_no_bwd(&RowOp::LogSoftmax)
}

fn applies(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu() && x.rank() >= 1 && x.dim(candle_core::D::Minus1).is_ok_and(|k| k > 0)
}

enum RowOp {
    Softmax,
    LogSoftmax,
}

impl RowOp {
    /// One row into `out`. Softmax: candle's `vec_reduce_max` (`f32::max` from the first value),
    /// `exp(x - max)`, its vectorized row sum, a division. Log-softmax: `max_keepdim` (the first
    /// largest value), `x - max`, the row sum of its exponentials, `ln`, a subtraction.
    fn row(&self, x: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
        match self {
            RowOp::Softmax => {
                let max = x[1..].iter().fold(x[0], |m, &v| m.max(v));
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v - max;
                }
                exp_in_place(out);
                let sum = candle_row_sum(out);
                for o in out.iter_mut() {
                    *o /= sum;
                }
            }
            RowOp::LogSoftmax => {
                let max = x.iter().fold(x[0], |m, &v| if m < v { v } else { m });
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v - max;
                }
                scratch.clear();
                scratch.extend_from_slice(out);
                exp_in_place(scratch);
                let log_sum = candle_row_sum(scratch).ln();
                for o in out.iter_mut() {
                    *o -= log_sum;
                }
            }
        }
    }
}

impl CustomOp1 for RowOp {
    fn name(&self) -> &'static str {
        match self {
            RowOp::Softmax => "softmax-last-dim",
            RowOp::LogSoftmax => "log-softmax-last-dim",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let k = layout.shape().dims().last().copied().unwrap_or(1);
        let rows = x.len() / k;
        let mut out = vec![0f32; x.len()];
        let shared = SharedOut::new(&mut out);
        for_chunks(rows, (CHUNK_ELEMENTS / k).max(1), k, |range| {
            let mut scratch = Vec::new();
            for r in range {
                // SAFETY: each row belongs to one chunk; `out` outlives the call.
                let out = unsafe { shared.slice(r * k..(r + 1) * k) };
                self.row(&x[r * k..(r + 1) * k], out, &mut scratch);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_op::test_values as values;
    use candle_core::{Device, D};

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Rows of lengths around candle's 32-value sum blocks and a vocabulary's, with masked keys
    /// (`f32::MIN`, as the decoder's mask adds) and values far below the row's max.
    #[test]
    fn values_are_candles_bit_for_bit() {
        for (rows, k) in [(1, 1), (3, 7), (5, 32), (4, 33), (40, 100), (6, 49152)] {
            let mut v = values(rows * k, 5, 60.0);
            for (i, x) in v.iter_mut().enumerate() {
                if i % 5 == 3 {
                    *x = f32::MIN;
                } else if i % 7 == 2 {
                    *x -= 120.0;
                }
            }
            let x = Tensor::from_vec(v, (rows, k), &Device::Cpu).unwrap();
            let ours = softmax_last_dim(&x).unwrap();
            assert_eq!(bits(&ours), bits(&candle_nn::ops::softmax_last_dim(&x).unwrap()), "softmax {rows}x{k}");
            let ours = log_softmax_last_dim(&x).unwrap();
            assert_eq!(bits(&ours), bits(&candle_nn::ops::log_softmax(&x, D::Minus1).unwrap()), "log-softmax {rows}x{k}");
        }
    }

    /// Other dtypes, and non-contiguous inputs, give candle's results too.
    #[test]
    fn other_dtypes_and_layouts_are_candles() {
        let x = Tensor::from_vec(values(24, 6, 8.0), (4, 6), &Device::Cpu).unwrap();
        let t = x.t().unwrap();
        assert_eq!(bits(&softmax_last_dim(&t).unwrap()), bits(&candle_nn::ops::softmax_last_dim(&t.contiguous().unwrap()).unwrap()));
        let x64 = x.to_dtype(DType::F64).unwrap();
        let ours = log_softmax_last_dim(&x64).unwrap().to_dtype(DType::F32).unwrap();
        let theirs = candle_nn::ops::log_softmax(&x64, D::Minus1).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(bits(&ours), bits(&theirs));
    }
}
