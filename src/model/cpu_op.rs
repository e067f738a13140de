//! What the fused CPU ops share: reading their float32 inputs, and splitting their work over
//! candle's own thread pool, as candle's element-wise ops do (a second pool, rayon, would compete
//! with candle's spinning workers for the cores).

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use std::ops::Range;

/// The float32 values of a contiguous CPU storage.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::Msg(format!("{op}: non-contiguous input")));
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Runs `f` on the float32 values of contiguous CPU `tensors` (a backward's inputs), their
/// storage held for the call.
pub(crate) fn with_f32_values<const N: usize, R>(tensors: [&Tensor; N], op: &str, f: impl FnOnce([&[f32]; N]) -> Result<R>) -> Result<R> {
    let held: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut values = Vec::with_capacity(N);
    for (storage, layout) in &held {
        let Storage::Cpu(cpu) = &**storage else {
            return Err(candle_core::Error::Msg(format!("{op}: backward off the CPU")));
        };
        values.push(contiguous_f32(cpu, layout, op)?);
    }
    let values: [&[f32]; N] = values.try_into().expect("one slice per tensor");
    f(values)
}

/// Below this many elements one thread is faster than waking candle's pool (candle's own
/// element-wise ops use the same threshold).
const PARALLEL_MIN_ELEMENTS: usize = 64 * 1024;

/// Runs `f` over `0..n_items` (each `item_len` elements) in chunks of `chunk` items, on candle's
/// thread pool when the work is large enough to pay for waking it.
pub(crate) fn for_chunks(n_items: usize, chunk: usize, item_len: usize, f: impl Fn(Range<usize>) + Sync) {
    if n_items.saturating_mul(item_len) < PARALLEL_MIN_ELEMENTS {
        f(0..n_items);
        return;
    }
    let chunk = chunk.max(1);
    candle_core::utils::barrier_pool().execute_chunked(n_items.div_ceil(chunk), |units| {
        for unit in units {
            f(unit * chunk..n_items.min((unit + 1) * chunk));
        }
    });
}

/// A buffer that chunks running on several threads write to, each its own range.
pub(crate) struct SharedOut<T> {
    ptr: usize,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

impl<T> SharedOut<T> {
    pub(crate) fn new(buffer: &mut [T]) -> Self {
        Self { ptr: buffer.as_mut_ptr() as usize, len: buffer.len(), _values: std::marker::PhantomData }
    }

    /// The elements `range` of the buffer.
    ///
    /// # Safety
    /// The buffer outlives every use, and no two live slices overlap.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.end <= self.len, "range past the buffer");
        // SAFETY: in bounds (asserted); the caller guarantees exclusivity and lifetime.
        unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut T).add(range.start), range.len()) }
    }
}

/// Uniform values in `[-scale/2, scale/2)` from a seed, for the fused ops' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| (rng.random::<f32>() - 0.5) * scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_contiguous_cpu_tensors_and_errors_for_others() {
        let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &candle_core::Device::Cpu).unwrap();
        let sum = with_f32_values([&a, &a.narrow(0, 1, 1).unwrap()], "test", |[x, y]| Ok(x.len() * 10 + y.len())).unwrap();
        assert_eq!(sum, 42);
        let err = with_f32_values([&a.t().unwrap()], "test", |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("test: non-contiguous input"), "{err}");
    }

    #[test]
    fn every_item_is_visited_once() {
        for n in [0, 5, 1000, 70_000] {
            let mut out = vec![0f32; n];
            let shared = SharedOut::new(&mut out);
            for_chunks(n, 4096, 1, |range| {
                // SAFETY: chunks are disjoint and `out` outlives the call.
                for v in unsafe { shared.slice(range) } {
                    *v += 1.0;
                }
            });
            assert!(out.iter().all(|&v| v == 1.0), "{n} items");
        }
    }
}
