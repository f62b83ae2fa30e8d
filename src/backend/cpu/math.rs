//! Elementwise math for f32 slices that the compiler vectorizes: `exp` and `ln_of_sum` (the
//! scalar instantiations of [`simd::exp`](super::simd::exp) and
//! [`simd::ln_of_sum`](super::simd::ln_of_sum), which state their accuracy; branch-free),
//! `tanh`, and the row passes of softmax and cross-entropy (whose only branches are the
//! prefetches' bounds and the masked tails).
//!
//! The same arithmetic runs on every path (no reassociation; the fused multiply-adds of
//! `exp` and `ln_of_sum` are `mul_add`, rounded once everywhere), so the scalar and vector
//! versions give the same bits. Where the build has no FMA instruction (x86-64 without AVX2,
//! or `MEMAWARE_SIMD=portable`) a `mul_add` is a libm call, so those paths are much slower.
//! libm's `expf` and `logf` are a function call per element; softmax and cross-entropy spent
//! most of their time in them.

use super::simd::{self, Scalar};

/// `e^x` (see [`simd::exp`]).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    simd::exp(Scalar, x)
}

/// `ln` of a softmax's denominator, at least 1 (see [`simd::ln_of_sum`]), for one row at a
/// time: compiled with FMA where the CPU has it, since elsewhere each of its `mul_add`s is a
/// libm call.
#[inline(always)]
pub(crate) fn ln_of_sum(x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 and FMA support was detected at run time.
        return unsafe { ln_of_sum_fma(x) };
    }
    simd::ln_of_sum(Scalar, x)
}

/// [`ln_of_sum`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn ln_of_sum_fma(x: f32) -> f32 {
    simd::ln_of_sum(Scalar, x)
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

/// `out[i] = f(x[i])` compiled for AVX2 and FMA (the closure is inlined into this body).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2(x: &[f32], out: &mut [f32], f: &impl Fn(f32) -> f32) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
}

/// `out[i] = f(x[i])`, vectorized with AVX2 and FMA where the CPU has them (same bits either
/// way: the maps used here fuse multiply-adds only through `mul_add` and never reassociate).
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
/// tree, then the tail in order). Prefetches `next` as [`exp_shifted_sum`] says.
#[inline(always)]
fn exp_shifted_sum_generic(v: &mut [f32], shift: f32, next: [&[f32]; 2]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let body = v.len() / 8 * 8;
    for (c, chunk) in v[..body].chunks_exact_mut(8).enumerate() {
        if c % 2 == 0 {
            for n in next {
                prefetch(n, 8 * c);
            }
        }
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

/// [`exp_shifted_sum_generic`] on 8 AVX2 lanes, one chunk per vector (the accumulator's
/// lanes are the generic code's 8 partial sums); the tail runs scalar, in order. Written
/// over the token rather than left to the vectorizer, which splits `exp`'s fused
/// multiply-adds into 4-lane halves.
///
/// # Safety
/// The CPU must support AVX2 and FMA (the token says so).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_sum_avx2(s: simd::Avx2, v: &mut [f32], shift: f32, next: [&[f32]; 2]) -> f32 {
    use super::simd::Simd;
    let body = v.len() / 8 * 8;
    let sh = s.splat(shift);
    let mut acc = s.splat(0.0);
    for p in (0..body).step_by(8) {
        if p % 16 == 0 {
            for n in next {
                prefetch(n, p);
            }
        }
        // SAFETY: `p + 8 <= body <= v.len()`.
        unsafe {
            let at = v.as_mut_ptr().add(p);
            let e = simd::exp(s, s.sub(s.load(at), sh));
            s.store(at, e);
            acc = s.add(acc, e);
        }
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { s.store(lanes.as_mut_ptr(), acc) };
    finish_exp_sum(lanes, &mut v[body..], shift)
}

/// The lanes of a 16-lane block that hold elements `p ..` of a row of `len`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_mask(p: usize, len: usize) -> u16 {
    if len - p >= 16 {
        0xffff
    } else {
        ((1u32 << (len - p)) - 1) as u16
    }
}

/// [`exp_shifted_sum_generic`] with the exponentials on 16 AVX-512 lanes: each 16 values are
/// two of the generic code's chunks of 8, added to the 8 partial sums one chunk after the
/// other, so every partial sum sees the same additions in the same order. The tail's
/// exponentials run masked on the vector too (`exp` is the same per lane), then are added
/// in order.
///
/// # Safety
/// The CPU must support AVX-512F (the token says so).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_sum_avx512(
    s: simd::Avx512,
    v: &mut [f32],
    shift: f32,
    next: [&[f32]; 2],
) -> f32 {
    use super::simd::Simd;
    use std::arch::x86_64::*;
    let (len, body) = (v.len(), v.len() / 8 * 8);
    let sh = s.splat(shift);
    let mut acc = _mm256_setzero_ps();
    let mut p = 0;
    while p < len {
        let mask = block_mask(p, len);
        for n in next {
            prefetch(n, p);
        }
        // SAFETY: the mask covers `p .. min(p + 16, len)`, inside `v`.
        unsafe {
            let at = v.as_mut_ptr().add(p);
            let e = simd::exp(s, s.sub(_mm512_maskz_loadu_ps(mask, at), sh));
            _mm512_mask_storeu_ps(at, mask, e);
            if p + 8 <= body {
                acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
            }
            if p + 16 <= body {
                let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e));
                acc = _mm256_add_ps(acc, _mm256_castpd_ps(hi));
            }
        }
        p += 16;
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    v[body..].iter().fold(tree8(lanes), |sum, &e| sum + e)
}

/// `v[i] = exp(v[i] - shift)` in place and `Σ v`, vectorized where the CPU allows (same
/// bits on every path).
///
/// While it runs it prefetches the slices of `next` into L1, a line of each per 16 values of
/// `v` (pass empty slices for none). A caller streaming rows from memory names the rows it
/// reads next: they then arrive while these exponentials, a row's arithmetic, run, instead
/// of after them (per-row CE, 8192 × 1000 on 2 threads: 3.6 → 2.8 ms).
pub(crate) fn exp_shifted_sum(v: &mut [f32], shift: f32, next: [&[f32]; 2]) -> f32 {
    // AVX-512 wherever the CPU has it: with the tail on the vector too, it measured at least
    // as fast as AVX2 at 20, 40, 100 and 1000 classes.
    #[cfg(target_arch = "x86_64")]
    if let Some(s) = simd::Avx512::new() {
        // SAFETY: the token exists, so the CPU has AVX-512F.
        return unsafe { exp_shifted_sum_avx512(s, v, shift, next) };
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(s) = simd::Avx2::new() {
        // SAFETY: the token exists, so the CPU has AVX2 and FMA.
        return unsafe { exp_shifted_sum_avx2(s, v, shift, next) };
    }
    exp_shifted_sum_generic(v, shift, next)
}

/// Hints the line holding `v[at]` into L1 where `at` is inside `v` (past the end, nothing).
#[inline(always)]
pub(super) fn prefetch(v: &[f32], at: usize) {
    if at < v.len() {
        prefetch_line(v[at..].as_ptr());
    }
}

/// A hint to bring the line at `p` into L1: it changes no value, never faults, and elsewhere
/// than x86-64 does nothing.
#[inline(always)]
pub(super) fn prefetch_line(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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

/// [`load_max_generic`] on 16 AVX-512 lanes: each 16 values are two of the generic code's
/// chunks of 8, taken into the 8 running maxima one after the other (`max_ps(v, m)` is
/// `v > m ? v : m`, the generic strict `>`); the tail is loaded masked and its maximum taken
/// in order.
///
/// # Safety
/// The CPU must support AVX-512F (the token says so).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load_max_avx512(z: &[f32], s: Option<&[f32]>, u: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let (len, body) = (u.len(), u.len() / 8 * 8);
    assert!(z.len() == len && s.is_none_or(|s| s.len() == len));
    let mut lanes = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut p = 0;
    while p < len {
        let mask = block_mask(p, len);
        // SAFETY: the mask covers `p .. min(p + 16, len)`, inside all three slices.
        unsafe {
            let mut v = _mm512_maskz_loadu_ps(mask, z.as_ptr().add(p));
            if let Some(s) = s {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, s.as_ptr().add(p)));
            }
            _mm512_mask_storeu_ps(u.as_mut_ptr().add(p), mask, v);
            if p + 8 <= body {
                lanes = _mm256_max_ps(_mm512_castps512_ps256(v), lanes);
            }
            if p + 16 <= body {
                let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
                lanes = _mm256_max_ps(_mm256_castpd_ps(hi), lanes);
            }
        }
        p += 16;
    }
    let mut l = [0.0f32; 8];
    // SAFETY: `l` holds 8 values.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), lanes) };
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    u[body..].iter().fold(m, |m, &v| m.max(v))
}

/// `u = z + s` (or `z`) and its maximum, vectorized where the CPU allows.
pub(crate) fn load_max(z: &[f32], s: Option<&[f32]>, u: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        // SAFETY: AVX-512F support was detected at run time.
        return unsafe { load_max_avx512(z, s, u) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { load_max_avx2(z, s, u) };
    }
    load_max_generic(z, s, u)
}

/// `v[i] *= factor` on 16 AVX-512 lanes, the tail masked.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scale_avx512(v: &mut [f32], factor: f32) {
    use std::arch::x86_64::*;
    let f = _mm512_set1_ps(factor);
    let mut p = 0;
    while p < v.len() {
        let mask = block_mask(p, v.len());
        // SAFETY: the mask covers `p .. min(p + 16, len)`, inside `v`.
        unsafe {
            let at = v.as_mut_ptr().add(p);
            _mm512_mask_storeu_ps(at, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, at), f));
        }
        p += 16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scale_avx2(v: &mut [f32], factor: f32) {
    v.iter_mut().for_each(|x| *x *= factor);
}

/// `v[i] *= factor`, vectorized where the CPU allows (one product per element on every path).
pub(crate) fn scale(v: &mut [f32], factor: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        // SAFETY: AVX-512F support was detected at run time.
        return unsafe { scale_avx512(v, factor) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { scale_avx2(v, factor) };
    }
    v.iter_mut().for_each(|x| *x *= factor);
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

    const NONE: [&[f32]; 2] = [&[], &[]];

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn vector_and_scalar_paths_agree() {
        let mut rng = crate::rng::Rng::new(5);
        let x = rng.uniform_vec(1003, -30.0, 5.0);
        let mut a = x.clone();
        let mut b = x.clone();
        let sa = exp_shifted_sum(&mut a, 1.5, NONE);
        let sb = exp_shifted_sum_generic(&mut b, 1.5, NONE);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        // Each instruction set this CPU has, at every length up to 40 and two long rows (the
        // AVX-512 loop's full, half and empty last blocks, every tail), each prefetching a
        // shorter and a longer slice than the row.
        #[cfg(target_arch = "x86_64")]
        for len in (0..=40).chain([100, 1000]) {
            let x = rng.uniform_vec(len, -30.0, 5.0);
            let longer = vec![1.0f32; len + 20];
            let next = [&x[..len / 2], &longer[..]];
            let mut want = x.clone();
            let sum = exp_shifted_sum_generic(&mut want, 0.5, NONE);
            let mut paths: Vec<(&str, f32, Vec<f32>)> = Vec::new();
            if let Some(t) = simd::Avx2::new() {
                let mut v = x.clone();
                // SAFETY: the token exists, so the CPU has AVX2 and FMA.
                let s = unsafe { exp_shifted_sum_avx2(t, &mut v, 0.5, next) };
                paths.push(("AVX2", s, v));
            }
            if let Some(t) = simd::Avx512::new() {
                let mut v = x.clone();
                // SAFETY: the token exists, so the CPU has AVX-512F.
                let s = unsafe { exp_shifted_sum_avx512(t, &mut v, 0.5, next) };
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
        // The other two row passes on AVX-512, against the generic code: every block and tail
        // shape, with and without a shift, with NaN, ±∞ and ±0 among the values (NaN never
        // wins the maximum, the first of equal maxima does).
        #[cfg(target_arch = "x86_64")]
        if crate::backend::cpu::has_avx512() {
            let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 3.0];
            for len in (0..=40).chain([100, 1000]) {
                for poison in [false, true] {
                    let mut z = rng.uniform_vec(len, -30.0, 5.0);
                    if poison {
                        for (i, v) in z.iter_mut().enumerate().filter(|(i, _)| i % 7 == 3) {
                            *v = specials[i % specials.len()];
                        }
                    }
                    let sh = rng.uniform_vec(len, -1.0, 1.0);
                    for shift in [None, Some(&sh[..])] {
                        let (mut want, mut got) = (vec![0.0; len], vec![1.0; len]);
                        let m = load_max_generic(&z, shift, &mut want);
                        // SAFETY: AVX-512F was detected.
                        let m2 = unsafe { load_max_avx512(&z, shift, &mut got) };
                        assert_eq!(m.to_bits(), m2.to_bits(), "max, length {len}");
                        assert_eq!(bits(&want), bits(&got), "values, length {len}");
                        want.iter_mut().for_each(|x| *x *= 0.37);
                        // SAFETY: as above.
                        unsafe { scale_avx512(&mut got, 0.37) };
                        assert_eq!(bits(&want), bits(&got), "scaled, length {len}");
                    }
                }
            }
        }
        // Every tail length, on rows short and long.
        for len in (1..=19).chain([100, 1000]) {
            let x = rng.uniform_vec(len, -30.0, 5.0);
            let (mut a, mut b) = (x.clone(), x);
            let sa = exp_shifted_sum(&mut a, 0.5, NONE);
            let sb = exp_shifted_sum_generic(&mut b, 0.5, NONE);
            assert_eq!(sa.to_bits(), sb.to_bits(), "sum, length {len}");
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}
