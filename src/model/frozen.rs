//! Matrix products with a constant right-hand side (a frozen weight, the embedding table).
//!
//! candle's backward of `lhs.matmul(rhs)` always computes both gradients, tracked or not: with a
//! frozen base (LoRA), every linear layer would compute and accumulate a weight-sized gradient
//! nobody reads, a third of a training step's matrix work plus the zeroed buffers it adds into.
//! [`frozen_matmul`] computes the forward bit-for-bit as `Tensor::matmul` does and records a
//! backward for `lhs` only. On the CPU in f32 it reads the weight in place when that pays
//! ([`matmul_f32_weight_in_place`]).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

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

/// Whether [`matmul_f32_weight_in_place`] beats `gemm`'s usual call for `m` rows of depth `k`.
/// It saves repacking the weight (`n * k` values) and adds a transposition of the output
/// (`m * n`), about as costly per value (0.3-0.5 ns in cache, 2-3 ns for outputs of tens of
/// megabytes). Measured with 2 threads on Zen 5 (docs/performance.md), it pays up to a quarter of
/// the depth (`[44, 1536] x [1536, 576]`: 74.5 -> 262.9 GFLOPS before the transposition; the
/// 256-row training batch through `down_proj`, depth 1536: 220 -> 278 with it) and loses on wide
/// outputs of many rows (the small Llama's 512-row training batch through its 32000-token head:
/// 380 -> 119 GFLOPS with the transposition, the training step 16-18 % slower).
fn pays_to_read_weight_in_place(m: usize, k: usize) -> bool {
    m * 4 <= k
}

/// `lhs [m, k] x rhs [k, n]` in f32, the same `gemm` call as `Tensor::matmul` but into a
/// column-major buffer, then laid out row-major.
///
/// `gemm` works in column-major terms: for the row-major destination candle asks for, it computes
/// the transposed product, in which the weight becomes a row-major left-hand side that must be
/// repacked into panels on every call (a weight-sized copy, whatever the number of rows). Asked for
/// a column-major destination it reads the weight in place and packs only the (small) rows. Each
/// output element is the same sum of the same products in the same order (the depth blocking
/// depends on `k` alone), so the result is bit-for-bit `Tensor::matmul`'s; the transposition of
/// the `[n, m]` result costs one pass over the output.
fn matmul_f32_weight_in_place(lhs: &[f32], lhs_l: &Layout, rhs: &[f32], rhs_l: &Layout, m: usize, n: usize, k: usize) -> Vec<f32> {
    let (ls, rs) = (lhs_l.stride(), rhs_l.stride());
    let (lhs_rs, lhs_cs) = (ls[ls.len() - 2], ls[ls.len() - 1]);
    let (rhs_rs, rhs_cs) = (rs[rs.len() - 2], rs[rs.len() - 1]);
    let lhs = &lhs[lhs_l.start_offset()..];
    let rhs = &rhs[rhs_l.start_offset()..];
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let mut out_t = vec![0f32; m * n];
    // SAFETY: the layouts come from candle tensors of these dims (`dims` checked them), so every
    // index gemm forms from them is inside `lhs` and `rhs`; `out_t` holds `m * n` elements at
    // row stride 1 and column stride `m`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out_t.as_mut_ptr(),
            m as isize,
            1,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    transpose(&out_t, n, m)
}

/// `[rows, cols]` row-major into `[cols, rows]` row-major. Each destination row is written a
/// cache line (16 floats) at a time, from a source block of 16 rows that stays in L1; writing in
/// square tiles instead sends the tile's destination lines, a power-of-two multiple of 4 KiB apart
/// for the output head, into one cache set (a fifth of a scoring run in `perf`).
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const LINE: usize = 16;
    const MIN_PARALLEL: usize = 1 << 16;
    let mut dst = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return dst;
    }
    // Destination rows `first..` (each `rows` long) from the whole source.
    let fill = |first: usize, out: &mut [f32]| {
        for r0 in (0..rows).step_by(LINE) {
            let width = LINE.min(rows - r0);
            let block = &src[r0 * cols..(r0 + width) * cols];
            for (i, dst_row) in out.chunks_exact_mut(rows).enumerate() {
                let c = first + i;
                for (j, d) in dst_row[r0..r0 + width].iter_mut().enumerate() {
                    *d = block[j * cols + c];
                }
            }
        }
    };
    if rows * cols < MIN_PARALLEL {
        fill(0, &mut dst);
    } else {
        let per_task = cols.div_ceil(rayon::current_num_threads() * 4).max(1);
        dst.par_chunks_mut(per_task * rows).enumerate().for_each(|(t, out)| fill(t * per_task, out));
    }
    dst
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
            Storage::Cpu(rhs) if shape.elem_count() > 0 && bmnk.3 > 0 => {
                if let (CpuStorage::F32(l), CpuStorage::F32(r), (1, m, n, k)) = (lhs, rhs, bmnk) {
                    if pays_to_read_weight_in_place(m, k) {
                        return Ok((CpuStorage::F32(matmul_f32_weight_in_place(l, lhs_layout, r, rhs_layout, m, n, k)), shape));
                    }
                }
                Ok((lhs.matmul(rhs, bmnk, lhs_layout, rhs_layout)?, shape))
            }
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

    /// Uniform in [-1, 1) off a xorshift stream: no lattice that would make sums exact.
    fn noise(shape: &[usize], seed: u64) -> Tensor {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_in_place_product_is_matmul_bit_for_bit_on_the_models_shapes() {
        // SmolLM2-135M's projections and output head, the small Llama's MLP (a transposed weight);
        // a contiguous right-hand side, as GCG's embedding lookup (`mix` x table); rows from one
        // token to a training batch, odd counts included.
        let shapes = [
            (576, 1536, true),
            (1536, 576, true),
            (576, 192, true),
            (576, 49152, true),
            (256, 688, true),
            (688, 256, true),
            (64, 100, true),
            (4000, 96, false),
        ];
        for (k, n, transposed) in shapes {
            let w = noise(&[n, k], (k * n) as u64);
            for m in [1, 3, 9, 17, 44, 128, 257] {
                let x = noise(&[m, k], m as u64);
                let wt = if transposed { w.t().unwrap() } else { w.reshape((k, n)).unwrap() };
                let theirs = x.matmul(&wt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // The kernel itself, whatever `pays_to_read_weight_in_place` picks, and the op.
                let (xs, xl) = x.storage_and_layout();
                let (ws, wl) = wt.storage_and_layout();
                let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(wv))) = (&*xs, &*ws) else { panic!() };
                let direct = matmul_f32_weight_in_place(xv, &xl, wv, &wl, m, n, k);
                let op = frozen_matmul(&x, &wt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for ours in [direct, op] {
                    let same = ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same && ours.len() == m * n, "k={k} n={n} m={m}");
                }
            }
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
