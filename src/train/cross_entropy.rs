//! Per-row cross-entropy `log sum exp(x - max) - (x_t - max)` as one op with its own backward.
//!
//! Written in elementary tensor ops, the loss over a `[N, vocab]` logit matrix allocates and
//! passes over that matrix about twenty times per step (shift, exp, the gather's scatter, every
//! gradient accumulated into fresh zeros, the detached max's discarded gradient). This op reads
//! the logits twice forward and writes their gradient once backward. It computes every value in
//! the order the elementary ops do (candle's row sum included), so the loss and the gradient are
//! the same bits as before: training runs do not move.

use crate::model::row_sum::candle_row_sum;
use crate::model::vector_exp::exp_in_place;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// `[N]` losses of `logits: [N, V]` (f32) at `targets: [N]`; `None` where this op does not apply
/// (not f32 on the CPU), for the caller to use the elementary ops.
pub fn row_cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
    if logits.dtype() != DType::F32 || !logits.device().is_cpu() || logits.rank() != 2 {
        return Ok(None);
    }
    let (n, v) = logits.dims2()?;
    if n != targets.len() || targets.iter().any(|&t| t as usize >= v) {
        return Err(candle_core::Error::Msg(format!(
            "cross-entropy: {} targets for {n} rows of {v} logits (or a target out of range)",
            targets.len()
        )));
    }
    let op = RowCrossEntropy { targets: targets.to_vec(), row_stats: Mutex::new(Vec::new()) };
    Ok(Some(logits.contiguous()?.apply_op1(op)?))
}

struct RowCrossEntropy {
    targets: Vec<u32>,
    /// `(max, sum of exp(x - max))` per row, from the forward, for the backward.
    row_stats: Mutex<Vec<(f32, f32)>>,
}

impl CustomOp1 for RowCrossEntropy {
    fn name(&self) -> &'static str {
        "row-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::Msg("cross-entropy: non-contiguous logits".into()));
        };
        let x = &storage.as_slice::<f32>()?[start..end];
        let stats: Vec<(f32, f32)> = x.par_chunks(v).map(row_stats).collect();
        let losses =
            stats.iter().zip(&self.targets).enumerate().map(|(i, (&(max, sum), &t))| sum.ln() - (x[i * v + t as usize] - max)).collect();
        *self.row_stats.lock().expect("row stats lock") = stats;
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    /// `d loss_i / d x_iv = (g_i / s_i) * exp(x_iv - max_i)`, minus `g_i` at the target: the
    /// elementary ops' chain (log, sum, exp, gather) in their rounding order.
    fn bwd(&self, logits: &Tensor, _losses: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, v) = logits.dims2()?;
        let g = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let stats = self.row_stats.lock().expect("row stats lock").clone();
        if stats.len() != n {
            return Err(candle_core::Error::Msg("cross-entropy: backward without its forward".into()));
        }
        let (storage, layout) = logits.storage_and_layout();
        let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
            return Err(candle_core::Error::Msg("cross-entropy: logits left the CPU".into()));
        };
        let x = &cpu.as_slice::<f32>()?[start..end];
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(i, (o, row))| {
            let (max, sum) = stats[i];
            let q = g[i] / sum;
            for (o, &xv) in o.iter_mut().zip(row) {
                *o = xv - max;
            }
            exp_in_place(o);
            for o in o.iter_mut() {
                *o *= q;
            }
            let t = self.targets[i] as usize;
            o[t] += -g[i];
        });
        Ok(Some(Tensor::from_vec(out, (n, v), logits.device())?))
    }
}

/// The row's max and `sum(exp(x - max))`, the sum in candle's order.
fn row_stats(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut shifted: Vec<f32> = row.iter().map(|&x| x - max).collect();
    exp_in_place(&mut shifted);
    (max, candle_row_sum(&shifted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn logits(n: usize, v: usize, seed: u64) -> Tensor {
        let data: Vec<f32> = (0..n * v).map(|i| ((((i as u64 + seed) * 2654435761) % 10007) as f32 / 700.0) - 7.0).collect();
        Tensor::from_vec(data, (n, v), &Device::Cpu).unwrap()
    }

    /// The elementary form this op replaces (what `cross_entropy` computed before it).
    fn elementary(x: &Tensor, targets: &[u32]) -> Tensor {
        let max = x.max_keepdim(D::Minus1).unwrap().detach();
        let shifted = x.broadcast_sub(&max).unwrap();
        let log_z = shifted.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap();
        let t = Tensor::new(targets, &Device::Cpu).unwrap().unsqueeze(1).unwrap();
        (log_z - shifted.gather(&t, 1).unwrap()).unwrap().mean_all().unwrap()
    }

    #[test]
    fn loss_and_gradient_are_the_elementary_ops_bit_for_bit() {
        for (n, v) in [(1, 5), (6, 97), (4, 1000)] {
            let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 3) % v as u32).collect();
            let x = Var::from_tensor(&logits(n, v, 11)).unwrap();
            let ours = row_cross_entropy(x.as_tensor(), &targets).unwrap().unwrap().mean_all().unwrap();
            let theirs = elementary(x.as_tensor(), &targets);
            assert_eq!(ours.to_scalar::<f32>().unwrap(), theirs.to_scalar::<f32>().unwrap());
            let (g1, g2) = (ours.backward().unwrap(), theirs.backward().unwrap());
            let a = g1.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = g2.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{n} x {v}");
        }
    }

    #[test]
    fn bad_targets_and_other_dtypes() {
        let x = logits(2, 4, 1);
        assert!(row_cross_entropy(&x, &[0]).is_err());
        assert!(row_cross_entropy(&x, &[0, 4]).is_err());
        assert!(row_cross_entropy(&x.to_dtype(DType::F16).unwrap(), &[0, 1]).unwrap().is_none());
    }
}
