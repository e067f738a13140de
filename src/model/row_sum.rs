//! Row sums in the order candle 0.11 computes them, for fused ops that must give the same bits
//! as the elementary ops they replace.

/// A row summed as candle 0.11's `sum_keepdim` over the last dimension sums it: with AVX2, four
/// 8-lane accumulators over blocks of 32, combined (0+1)+(2+3), halves added, two horizontal
/// adds, then the remainder one by one; without, one by one from zero.
pub(crate) fn candle_row_sum(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { candle_row_sum_avx(row) };
    }
    row.iter().fold(0f32, |s, &x| s + x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn candle_row_sum_avx(row: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let body = row.len() - row.len() % 32;
    let p = row.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < body {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 32 <= body <= row.len().
            *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(i + 8 * j)));
        }
        i += 32;
    }
    let all = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let halves = _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1));
    let pairs = _mm_hadd_ps(halves, halves);
    let mut sum = _mm_cvtss_f32(_mm_hadd_ps(pairs, pairs));
    for &x in &row[body..] {
        sum += x;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, D};

    fn rows(n: usize, v: usize, seed: u64) -> Tensor {
        let data: Vec<f32> = (0..n * v).map(|i| ((((i as u64 + seed) * 2654435761) % 10007) as f32 / 700.0) - 7.0).collect();
        Tensor::from_vec(data, (n, v), &Device::Cpu).unwrap()
    }

    #[test]
    fn row_sums_are_candles_bit_for_bit() {
        for len in [1, 7, 31, 32, 33, 100, 576, 4099] {
            let x = rows(3, len, len as u64);
            let want = x.sum_keepdim(D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got: Vec<f32> = x.to_vec2::<f32>().unwrap().iter().map(|r| candle_row_sum(r)).collect();
            assert_eq!(got, want, "length {len}");
        }
    }
}
