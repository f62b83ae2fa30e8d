//! Branch-free elementwise math for f32 slices that the compiler vectorizes: `exp` and `ln`
//! (the scalar instantiations of [`simd::exp`](super::simd::exp) and
//! [`simd::ln`](super::simd::ln), which state their accuracy), `tanh`, and the row passes of
//! softmax and cross-entropy.
//!
//! The same arithmetic runs on every path (no fused multiply-add, no reassociation), so the
//! scalar and vector versions give the same bits. libm's `expf` and `logf` are a function
//! call per element; softmax and cross-entropy spent most of their time in them.

use super::simd::{self, Scalar};

/// `e^x` (see [`simd::exp`]).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    simd::exp(Scalar, x)
}

/// `ln x` (see [`simd::ln`]).
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    simd::ln(Scalar, x)
}

/// `tanh x = sign(x) · m / (m + 2)` with `m = e^{2|x|} - 1`; for `2|x| < 0.5`, `m` comes from
/// its Taylor series to the 8th power (no cancellation near 0), otherwise from [`exp`].
/// Beyond `|x| = 20` the result is ±1. Error below 3 ulp; branch-free, so it vectorizes.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let y = 2.0 * x.abs();
    let y = if y > 40.0 { 40.0 } else { y };
    let series = y
        * (1.0
            + y * (0.5
                + y * (1.0 / 6.0
                    + y * (1.0 / 24.0
                        + y * (1.0 / 120.0
                            + y * (1.0 / 720.0 + y * (1.0 / 5040.0 + y * (1.0 / 40320.0))))))));
    let m = if y < 0.5 { series } else { exp(y) - 1.0 };
    let t = m / (m + 2.0);
    f32::from_bits(t.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// `out[i] = f(x[i])` compiled for AVX2 (the closure is inlined into this body).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map_avx2(x: &[f32], out: &mut [f32], f: &impl Fn(f32) -> f32) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
}

/// `out[i] = f(x[i])`, vectorized with AVX2 where the CPU has it (same bits either way: the
/// maps used here contain no fused multiply-adds or reassociation).
#[inline(always)]
pub(crate) fn map(x: &[f32], out: &mut [f32], f: &impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { map_avx2(x, out, f) };
    }
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
}

/// `v[i] = exp(v[i] - shift)` in place; returns `Σ v` (summed in 8 fixed lanes, then a fixed
/// tree, then the tail in order).
#[inline(always)]
fn exp_shifted_sum_generic(v: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let body = v.len() / 8 * 8;
    for chunk in v[..body].chunks_exact_mut(8) {
        for l in 0..8 {
            chunk[l] = exp(chunk[l] - shift);
            lanes[l] += chunk[l];
        }
    }
    finish_exp_sum(lanes, &mut v[body..], shift)
}

/// The fixed tree over 8 partial sums that every 8-lane sum of the CPU backend ends with.
#[inline(always)]
pub(crate) fn tree8(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// The partial sums folded by [`tree8`], then the tail's exponentials added in order.
#[inline(always)]
fn finish_exp_sum(lanes: [f32; 8], tail: &mut [f32], shift: f32) -> f32 {
    let mut s = tree8(lanes);
    for o in tail.iter_mut() {
        *o = exp(*o - shift);
        s += *o;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_sum_avx2(v: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_generic(v, shift)
}

/// Shortest row that [`exp_shifted_sum`] runs on AVX-512.
#[cfg(target_arch = "x86_64")]
const AVX512_MIN_ROW: usize = 256;

/// [`exp_shifted_sum_generic`] with the exponentials on 16 AVX-512 lanes: each 16 values are
/// two of the generic code's chunks of 8, added to the 8 partial sums one chunk after the
/// other, so every partial sum sees the same additions in the same order.
///
/// # Safety
/// The CPU must support AVX-512F (the token says so).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_sum_avx512(s: simd::Avx512, v: &mut [f32], shift: f32) -> f32 {
    use super::simd::Simd;
    use std::arch::x86_64::*;
    let body = v.len() / 8 * 8;
    let sh = s.splat(shift);
    let mut acc = _mm256_setzero_ps();
    let mut p = 0;
    while p < body {
        // A last single chunk of 8 runs masked to its 8 lanes.
        let mask: __mmask16 = if p + 16 <= body { 0xffff } else { 0x00ff };
        // SAFETY: the mask covers `p .. min(p + 16, body)`, inside `v`.
        unsafe {
            let at = v.as_mut_ptr().add(p);
            let e = simd::exp(s, s.sub(_mm512_maskz_loadu_ps(mask, at), sh));
            _mm512_mask_storeu_ps(at, mask, e);
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
            if mask == 0xffff {
                let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e));
                acc = _mm256_add_ps(acc, _mm256_castpd_ps(hi));
            }
        }
        p += 16;
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    finish_exp_sum(lanes, &mut v[body..], shift)
}

/// `v[i] = exp(v[i] - shift)` in place and `Σ v`, vectorized where the CPU allows (same
/// bits on every path).
pub(crate) fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
    // Short rows run faster on AVX2 (measured at 100: 1.21 against 1.34 ms for the fused CE
    // of 16384 rows); long ones on AVX-512 (at 1000: 6.4 against 5.3 ms).
    #[cfg(target_arch = "x86_64")]
    if v.len() >= AVX512_MIN_ROW {
        if let Some(s) = simd::Avx512::new() {
            // SAFETY: the token exists, so the CPU has AVX-512F.
            return unsafe { exp_shifted_sum_avx512(s, v, shift) };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { exp_shifted_sum_avx2(v, shift) };
    }
    exp_shifted_sum_generic(v, shift)
}

/// `u[i] = z[i] + s[i]` (or `z[i]`) and `max u`, in one pass with 8 running maxima.
/// NaN never wins the maximum (as `f32::max`); it still reaches the exponentials.
#[inline(always)]
fn load_max_generic(z: &[f32], s: Option<&[f32]>, u: &mut [f32]) -> f32 {
    match s {
        Some(s) => u
            .iter_mut()
            .zip(z.iter().zip(s))
            .for_each(|(u, (&a, &b))| *u = a + b),
        None => u.copy_from_slice(z),
    }
    let mut lanes = [f32::NEG_INFINITY; 8];
    let body = u.len() / 8 * 8;
    for chunk in u[..body].chunks_exact(8) {
        for l in 0..8 {
            lanes[l] = if chunk[l] > lanes[l] {
                chunk[l]
            } else {
                lanes[l]
            };
        }
    }
    let mut m = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in &u[body..] {
        m = m.max(v);
    }
    m
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn load_max_avx2(z: &[f32], s: Option<&[f32]>, u: &mut [f32]) -> f32 {
    load_max_generic(z, s, u)
}

/// `u = z + s` (or `z`) and its maximum, vectorized where the CPU allows.
pub(crate) fn load_max(z: &[f32], s: Option<&[f32]>, u: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { load_max_avx2(z, s, u) };
    }
    load_max_generic(z, s, u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_safe() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        // Normal results only: denormals carry fewer significant bits.
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e4), 0.0);
        assert_eq!(exp(1e4), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(88.5).is_finite());
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        let tiny = exp(-95.0) as f64;
        assert!((tiny - (-95.0f64).exp()).abs() < 1e-44);
    }

    #[test]
    fn tanh_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = (x as f64).tanh();
            let got = tanh(x) as f64;
            if want != 0.0 {
                worst = worst.max(((got - want) / want).abs());
            }
            x += 0.001_37;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst}");
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(30.0), 1.0);
        assert_eq!(tanh(-1e30), -1.0);
        assert!(tanh(f32::NAN).is_nan());
        assert!((tanh(1e-6) - 1e-6).abs() < 1e-12);
    }

    #[test]
    fn vector_and_scalar_paths_agree() {
        let mut rng = crate::rng::Rng::new(5);
        let x = rng.uniform_vec(1003, -30.0, 5.0);
        let mut a = x.clone();
        let mut b = x.clone();
        let sa = exp_shifted_sum(&mut a, 1.5);
        let sb = exp_shifted_sum_generic(&mut b, 1.5);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        // Each instruction set this CPU has, at every length up to 40 and two long rows (the
        // AVX-512 loop's full, half and empty last blocks, every tail).
        #[cfg(target_arch = "x86_64")]
        for len in (0..=40).chain([100, 1000]) {
            let x = rng.uniform_vec(len, -30.0, 5.0);
            let mut want = x.clone();
            let sum = exp_shifted_sum_generic(&mut want, 0.5);
            let mut paths: Vec<(&str, f32, Vec<f32>)> = Vec::new();
            if super::super::has_avx2() {
                let mut v = x.clone();
                // SAFETY: AVX2 was detected.
                let s = unsafe { exp_shifted_sum_avx2(&mut v, 0.5) };
                paths.push(("AVX2", s, v));
            }
            if let Some(t) = simd::Avx512::new() {
                let mut v = x.clone();
                // SAFETY: the token exists, so the CPU has AVX-512F.
                let s = unsafe { exp_shifted_sum_avx512(t, &mut v, 0.5) };
                paths.push(("AVX-512", s, v));
            }
            for (isa, s, v) in paths {
                assert_eq!(s.to_bits(), sum.to_bits(), "{isa} sum, length {len}");
                assert!(
                    v.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{isa} values, length {len}"
                );
            }
        }
        // Every tail length, on rows short and long.
        for len in (1..=19).chain([100, 1000]) {
            let x = rng.uniform_vec(len, -30.0, 5.0);
            let (mut a, mut b) = (x.clone(), x);
            let sa = exp_shifted_sum(&mut a, 0.5);
            let sb = exp_shifted_sum_generic(&mut b, 0.5);
            assert_eq!(sa.to_bits(), sb.to_bits(), "sum, length {len}");
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}
