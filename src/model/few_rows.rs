//! `x W^T` for a handful of rows on the CPU: a generation step (one token per sequence).
//!
//! `gemm` repacks the whole weight into panels on every call; with four rows that packing costs
//! more than the products (half of a SmolLM2 generation step in `perf`). Here each weight row is
//! read once, in place, and dotted with every input row while it is in cache: the step becomes
//! a single pass over the weights, which is what bounds it.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::frozen::transpose;

/// Up to this many rows the dot-product kernel beats `gemm` here (`runner bench generate`).
pub const MAX_ROWS: usize = 8;

/// Weight rows one task computes: enough to amortize rayon's scheduling.
const ROWS_PER_TASK: usize = 64;

/// `x W^T` (`x: [.., k]`, `weight: [n, k]`, both f32 on the CPU, at most [`MAX_ROWS`] rows of x);
/// `None` when the case is not this kernel's (other dtypes or devices, more rows, a strided
/// weight), for the caller to use the general product. Inference only: records no backward.
pub fn few_rows_linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else { return Ok(None) };
    let m: usize = lead.iter().product();
    let (n, wk) = match weight.dims() {
        &[n, wk] => (n, wk),
        _ => return Ok(None),
    };
    if m == 0 || m > MAX_ROWS || k != wk || k == 0 || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return Ok(None);
    }
    if !matches!(x.device(), Device::Cpu) || !matches!(weight.device(), Device::Cpu) {
        return Ok(None);
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let (storage, layout) = weight.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else { return Ok(None) };
    let w = &cpu.as_slice::<f32>()?[start..end];

    // Computed transposed (`[n, m]`, contiguous per task), then laid out as `[m, n]`.
    let mut out_t = vec![0f32; n * m];
    out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
        let first = task * ROWS_PER_TASK;
        for (r, o) in out.chunks_exact_mut(m).enumerate() {
            let j = first + r;
            dot_rows(&xs, &w[j * k..(j + 1) * k], o);
        }
    });
    let out = transpose(&out_t, n, m);
    let mut shape = lead.to_vec();
    shape.push(n);
    Ok(Some(Tensor::from_vec(out, shape, &Device::Cpu)?))
}

/// `out[i] = x_i . w` for the `out.len()` rows of `xs` (each `w.len()` long).
fn dot_rows(xs: &[f32], w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_rows_avx2(xs, w, out) };
    }
    dot_rows_portable(xs, w, out)
}

/// Four rows at a time share each load of the weight; sixteen lanes per row (two registers) with
/// fused multiply-adds. A row's order of operations is the same whichever block it is in.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(xs: &[f32], w: &[f32], out: &mut [f32]) {
    let k = w.len();
    for (block, o) in out.chunks_mut(4).enumerate() {
        let x = &xs[block * 4 * k..(block * 4 + o.len()) * k];
        match o.len() {
            1 => dot_block_avx2::<1>(x, w, o),
            2 => dot_block_avx2::<2>(x, w, o),
            3 => dot_block_avx2::<3>(x, w, o),
            _ => dot_block_avx2::<4>(x, w, o),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_block_avx2<const R: usize>(xs: &[f32], w: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = w.len();
    let body = k - k % 16;
    debug_assert!(xs.len() == R * k && out.len() == R);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let mut c = 0;
    while c < body {
        // SAFETY: c + 16 <= body <= k, and every row of xs is k long.
        let w0 = _mm256_loadu_ps(w.as_ptr().add(c));
        let w1 = _mm256_loadu_ps(w.as_ptr().add(c + 8));
        for (r, a) in acc.iter_mut().enumerate() {
            let x = xs.as_ptr().add(r * k + c);
            a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x), w0, a[0]);
            a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), w1, a[1]);
        }
        c += 16;
    }
    for (r, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a[0], a[1]));
        let mut sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
        for (p, q) in xs[r * k + body..(r + 1) * k].iter().zip(&w[body..]) {
            sum += p * q;
        }
        out[r] = sum;
    }
}

/// Without AVX2: sixteen lanes per row, summed pairwise at the end. Every row's order of
/// additions is fixed, whatever the batch.
fn dot_rows_portable(xs: &[f32], w: &[f32], out: &mut [f32]) {
    const LANES: usize = 16;
    let k = w.len();
    let body = k - k % LANES;
    for (i, o) in out.iter_mut().enumerate() {
        let x = &xs[i * k..(i + 1) * k];
        let mut acc = [0f32; LANES];
        for (xc, wc) in x[..body].chunks_exact(LANES).zip(w[..body].chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += xc[l] * wc[l];
            }
        }
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for l in 0..width {
                acc[l] += acc[l + width];
            }
        }
        let mut sum = acc[0];
        for (a, b) in x[body..].iter().zip(&w[body..]) {
            sum += a * b;
        }
        *o = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| (((i as u64 * 2654435761 + seed * 7919) % 2001) as f32 / 1000.0) - 1.0).collect()
    }

    #[test]
    fn matches_the_general_product() {
        for (lead, n, k) in [(vec![1, 1], 70, 37), (vec![4, 1], 130, 576), (vec![2, 4], 65, 48), (vec![3], 5, 16)] {
            let m: usize = lead.iter().product();
            let mut shape = lead.clone();
            shape.push(k);
            let x = Tensor::from_vec(values(m * k, 1), shape, &Device::Cpu).unwrap();
            let w = Tensor::from_vec(values(n * k, 2), (n, k), &Device::Cpu).unwrap();
            let ours = few_rows_linear(&x, &w).unwrap().expect("a few-rows case");
            let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            assert_eq!(ours.dims(), want.dims());
            let (a, b) = (ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_others() {
        // Same row alone or among others: the same bits (a step's logits do not depend on the batch).
        let (n, k) = (40, 100);
        let w = Tensor::from_vec(values(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let rows = Tensor::from_vec(values(5 * k, 4), (5, k), &Device::Cpu).unwrap();
        let all = few_rows_linear(&rows, &w).unwrap().unwrap().to_vec2::<f32>().unwrap();
        let alone = few_rows_linear(&rows.narrow(0, 2, 1).unwrap(), &w).unwrap().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(all[2], alone[0]);
    }

    #[test]
    fn other_cases_are_left_to_the_general_product() {
        let w = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(few_rows_linear(&Tensor::zeros((MAX_ROWS + 1, 8), DType::F32, &Device::Cpu).unwrap(), &w).unwrap().is_none());
        assert!(few_rows_linear(&Tensor::zeros((2, 8), DType::F16, &Device::Cpu).unwrap(), &w.to_dtype(DType::F16).unwrap())
            .unwrap()
            .is_none());
        assert!(few_rows_linear(&Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap(), &w.t().unwrap()).unwrap().is_none());
    }
}
