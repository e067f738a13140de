//! `exp` over a slice of float32 values, eight at a time, giving the bits libm's `expf` gives.
//!
//! A training step computes tens of millions of exponentials (the loss over the vocabulary, the
//! attention softmax, SiLU; forward and backward), one libm call each: about 6 % of a SmolLM2 LoRA
//! step. glibc's `expf` (2.27 and later, from Arm's optimized-routines) evaluates
//! `2^(k/32) * p(r)` in double precision; on a CPU with AVX2 and FMA it runs its FMA build. This
//! module evaluates the same double-precision expression with the same fused operations, four
//! doubles per instruction, so every result is the libm result and training runs do not move
//! (an exhaustive test below compares all 2^32 inputs). Inputs outside the range where that
//! expression applies (overflow, near-underflow, NaN, infinity) are handed to libm itself. With
//! another libm (musl, glibc before 2.27) the values are glibc's rather than that libm's, and
//! the exhaustive test says so by failing.

/// Sets every value to its exponential, as `f32::exp` would.
pub(crate) fn exp_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { avx2::exp_in_place(values) };
        return;
    }
    for v in values {
        *v = v.exp();
    }
}

/// `2^(i/32)` rounded to double, as bits, less `i << 47` (so that adding `k << 47` for `k` with
/// `k % 32 == i` gives the bits of `2^(k/32)`): glibc's `__exp2f_data.tab`, checked against the
/// definition below.
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `32 / ln 2`.
const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
/// `1.5 * 2^52`: adding it rounds to an integer held in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The polynomial `C0 r^3 + C1 r^2 + C2 r + 1` for `2^(r/32)`, `|r| <= 1/2`.
const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);
/// Above this libm overflows to infinity.
const OVERFLOW_ABOVE: f32 = f32::from_bits(0x42b17217);
/// Below this libm returns +0.
const ZERO_BELOW: f32 = f32::from_bits(0xc2cff1b4);
/// Between `ZERO_BELOW` and this libm returns a fixed tiny value (it may underflow).
const MAY_UNDERFLOW_BELOW: f32 = f32::from_bits(0xc2ce8ecf);

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(values: &mut [f32]) {
        let mut chunks = values.chunks_exact_mut(8);
        for chunk in &mut chunks {
            exp_lanes(chunk);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            // The tail goes through the same kernel, so equal inputs give equal outputs anywhere.
            let mut lanes = [0f32; 8];
            lanes[..rest.len()].copy_from_slice(rest);
            exp_lanes(&mut lanes);
            rest.copy_from_slice(&lanes[..rest.len()]);
        }
    }

    /// Eight values in place; the lanes outside the kernel's range go to libm.
    #[target_feature(enable = "avx2,fma")]
    fn exp_lanes(chunk: &mut [f32]) {
        assert_eq!(chunk.len(), 8);
        // SAFETY: eight values, read and written unaligned.
        let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
        let (y, rare) = exp8(x);
        if rare == 0 {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), y) };
            return;
        }
        let input: [f32; 8] = chunk.try_into().expect("eight lanes");
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), y) };
        for (lane, v) in chunk.iter_mut().enumerate() {
            if rare & (1 << lane) != 0 {
                *v = input[lane].exp();
            }
        }
    }

    /// `exp` of eight floats where libm computes it by the expression below or returns +0 (below
    /// `ZERO_BELOW`, -infinity included), with a bit set for each other lane (overflow, the narrow
    /// near-underflow band, NaN, +infinity), whose value is left for libm.
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> (__m256, i32) {
        let low = exp4(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
        let high = exp4(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
        let y = _mm256_set_m128(high, low);
        let computed = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(MAY_UNDERFLOW_BELOW)),
            _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(OVERFLOW_ABOVE)),
        );
        let zero = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(ZERO_BELOW));
        let rare = !_mm256_movemask_ps(_mm256_or_ps(computed, zero)) & 0xff;
        (_mm256_and_ps(y, computed), rare)
    }

    /// glibc's `expf` body for four inputs widened to double, rounded back to float.
    #[target_feature(enable = "avx2,fma")]
    fn exp4(xd: __m256d) -> __m128 {
        let inv_ln2_n = _mm256_set1_pd(INV_LN2_N);
        let shift = _mm256_set1_pd(SHIFT);
        // k = round(x * 32 / ln 2), in the low bits of kd; r = x * 32 / ln 2 - k.
        let kd = _mm256_fmadd_pd(inv_ln2_n, xd, shift);
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, shift);
        let r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);
        // s = 2^(k/32) from the table entry of k % 32 with k's bits added to the exponent.
        let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        // SAFETY: every index is below 32, the table's length.
        let t = unsafe { _mm256_i64gather_epi64::<8>(TABLE.as_ptr() as *const i64, index) };
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(r, _mm256_set1_pd(C0), _mm256_set1_pd(C1));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, _mm256_set1_pd(C2), _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Each entry is `2^(i/32)` (to within the last bit of a double) less `i << 47`.
    #[test]
    fn the_table_holds_the_powers_of_two() {
        for (i, &entry) in TABLE.iter().enumerate() {
            let power = f64::from_bits(entry + ((i as u64) << 47));
            let expected = (i as f64 / 32.0).exp2();
            assert!(power.to_bits().abs_diff(expected.to_bits()) <= 1, "entry {i}: {power} against {expected}");
        }
    }

    /// Every float32 input, NaNs and infinities included, against libm's `expf`. Where the CPU
    /// lacks AVX2 or FMA both sides are libm.
    #[test]
    fn every_input_gives_libms_bits() {
        const BLOCK: u64 = 1 << 20;
        let mismatches: Vec<u32> = (0..(1u64 << 32) / BLOCK)
            .into_par_iter()
            .flat_map_iter(|block| {
                let inputs: Vec<f32> = (block * BLOCK..(block + 1) * BLOCK).map(|bits| f32::from_bits(bits as u32)).collect();
                let mut ours = inputs.clone();
                exp_in_place(&mut ours);
                inputs
                    .into_iter()
                    .zip(ours)
                    .filter(|(x, y)| {
                        let libm = x.exp();
                        !(libm.to_bits() == y.to_bits() || (libm.is_nan() && y.is_nan()))
                    })
                    .map(|(x, _)| x.to_bits())
                    .take(4)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(mismatches.is_empty(), "{} blocks differ, first inputs {:x?}", mismatches.len(), &mismatches[..mismatches.len().min(8)]);
    }

    /// Lengths that are not a multiple of eight, with rare lanes in the tail.
    #[test]
    fn tails_and_rare_lanes_are_libms() {
        for n in 0..20 {
            let inputs: Vec<f32> = (0..n).map(|i| [1.5, -200.0, 100.0, f32::NAN, -103.5, f32::INFINITY, -0.25][i % 7]).collect();
            let mut ours = inputs.clone();
            exp_in_place(&mut ours);
            for (x, y) in inputs.iter().zip(&ours) {
                assert!(x.exp().to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()), "{x}: {y} against {}", x.exp());
            }
        }
    }
}
