//! Matrix products with a constant right-hand side (a frozen weight, the embedding table).
//!
//! candle's backward of `lhs.matmul(rhs)` always computes both gradients, tracked or not: with a
//! frozen base (LoRA), every linear layer would compute and accumulate a weight-sized gradient
//! nobody reads, a third of a training step's matrix work plus the zeroed buffers it adds into.
//! [`frozen_matmul`] runs the same kernel on the same layouts as `Tensor::matmul` (the forward is
//! bit-for-bit the same) and records a backward for `lhs` only.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `lhs.matmul(rhs)` where `rhs` gets no gradient. Shapes as `Tensor::matmul`:
/// `[.., m, k] x [.., k, n]` with the same leading dims.
pub fn frozen_matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    lhs.apply_op1(ConstantRhsMatmul { rhs: rhs.clone() })
}

/// `x W^T` for a frozen `weight: [out, in]`, with the layouts candle-nn's `Linear` uses
/// (a contiguous batch is folded into the rows; otherwise the weight is broadcast).
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    match *x.dims() {
        [b1, b2, m, k] if x.is_contiguous() => frozen_matmul(&x.reshape((b1 * b2 * m, k))?, &weight.t()?)?.reshape((b1, b2, m, ())),
        [b1, b2, _, _] => frozen_matmul(x, &weight.broadcast_left((b1, b2))?.t()?),
        [bsize, m, k] if x.is_contiguous() => frozen_matmul(&x.reshape((bsize * m, k))?, &weight.t()?)?.reshape((bsize, m, ())),
        [bsize, _, _] => frozen_matmul(x, &weight.broadcast_left(bsize)?.t()?),
        _ => frozen_matmul(x, &weight.t()?),
    }
}

fn device_mismatch() -> candle_core::Error {
    candle_core::Error::Msg("frozen_matmul: the two sides are on different devices".into())
}

struct ConstantRhsMatmul {
    rhs: Tensor,
}

impl ConstantRhsMatmul {
    /// `(batch, m, n, k)` and the output shape, checked as `Tensor::matmul` checks them.
    fn dims(&self, lhs: &Shape) -> Result<((usize, usize, usize, usize), Shape)> {
        let (a, b) = (lhs.dims(), self.rhs.dims());
        let mismatch =
            || candle_core::Error::ShapeMismatchBinaryOp { lhs: lhs.clone(), rhs: self.rhs.shape().clone(), op: "frozen_matmul" };
        if a.len() < 2 || a.len() != b.len() {
            return Err(mismatch());
        }
        let d = a.len();
        let (m, k, k2, n) = (a[d - 2], a[d - 1], b[d - 2], b[d - 1]);
        let batch: usize = a[..d - 2].iter().product();
        if k != k2 || batch != b[..d - 2].iter().product::<usize>() {
            return Err(mismatch());
        }
        Ok(((batch, m, n, k), Shape::from(&a[..d - 2]).extend(&[m, n])))
    }
}

impl CustomOp1 for ConstantRhsMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, lhs: &CpuStorage, lhs_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bmnk, shape) = self.dims(lhs_layout.shape())?;
        let (rhs, rhs_layout) = self.rhs.storage_and_layout();
        match &*rhs {
            Storage::Cpu(rhs) if shape.elem_count() > 0 && bmnk.3 > 0 => Ok((lhs.matmul(rhs, bmnk, lhs_layout, rhs_layout)?, shape)),
            Storage::Cpu(_) => {
                // An empty product (k = 0 or no output): zeros, as `Tensor::matmul` gives.
                let zeros = Tensor::zeros(&shape, lhs.dtype(), &candle_core::Device::Cpu)?;
                let (storage, _) = zeros.storage_and_layout();
                match &*storage {
                    Storage::Cpu(z) => Ok((z.clone(), shape)),
                    _ => Err(candle_core::Error::Msg("frozen_matmul: zeros off the CPU".into())),
                }
            }
            _ => Err(device_mismatch()),
        }
    }

    fn cuda_fwd(&self, lhs: &CudaStorage, lhs_layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (bmnk, shape) = self.dims(lhs_layout.shape())?;
        if shape.elem_count() == 0 || bmnk.3 == 0 {
            return Err(candle_core::Error::Msg("frozen_matmul: empty product on CUDA".into()));
        }
        let (rhs, rhs_layout) = self.rhs.storage_and_layout();
        match &*rhs {
            Storage::Cuda(rhs) => Ok((lhs.matmul(rhs, bmnk, lhs_layout, rhs_layout)?, shape)),
            _ => Err(device_mismatch()),
        }
    }

    /// The gradient of `lhs`, as candle's matmul backward computes it: `grad rhs^T`.
    fn bwd(&self, _lhs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.rhs.t()?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_and_lhs_gradient_are_those_of_matmul_bit_for_bit() {
        let w = rand(&[7, 5], 1);
        for shape in [vec![3, 5], vec![2, 3, 5], vec![2, 2, 3, 5]] {
            let x = Var::from_tensor(&rand(&shape, 2)).unwrap();
            let ours = frozen_linear(x.as_tensor(), &w).unwrap();
            let theirs = candle_nn::Module::forward(&candle_nn::Linear::new(w.clone(), None), x.as_tensor()).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert_eq!(ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let g_ours = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g_theirs = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (g_ours.get(x.as_tensor()).unwrap(), g_theirs.get(x.as_tensor()).unwrap());
            assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn a_non_contiguous_input_and_a_mismatch() {
        let w = rand(&[4, 6], 3);
        let x = rand(&[2, 6, 3], 4).transpose(1, 2).unwrap();
        let ours = frozen_linear(&x, &w).unwrap();
        let theirs = candle_nn::Module::forward(&candle_nn::Linear::new(w.clone(), None), &x).unwrap();
        assert_eq!(ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let err = frozen_matmul(&rand(&[2, 5], 5), &w).unwrap_err();
        assert!(err.to_string().contains("frozen_matmul"), "{err}");
    }

    #[test]
    fn the_frozen_side_gets_no_gradient() {
        let w = rand(&[4, 6], 6);
        let x = Var::from_tensor(&rand(&[3, 6], 7)).unwrap();
        let grads = frozen_linear(x.as_tensor(), &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_none());
        // d/dx sum(x W^T) = column sums of W, for every row.
        let want = w.sum(0).unwrap().to_vec1::<f32>().unwrap();
        for row in grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap() {
            for (a, b) in row.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }
}
