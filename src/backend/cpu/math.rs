//! Branch-free `exp` for f32 slices that the compiler vectorizes.
//!
//! `exp(x) = 2^k · e^r` with `k = round(x / ln 2)` and `r = x - k·ln 2` (ln 2 split in a
//! high and a low part, Cody–Waite), `|r| ≤ ln 2 / 2`, and `e^r` from a degree-6 Taylor
//! polynomial in Horner form: relative error below 3 ulp over the normal range. Inputs are
//! clamped to `[-104, 89]` (where `e^x` is already 0 or infinite in f32), and `2^k` is
//! applied as two normal powers of two, so underflow gives 0 (through denormals) and
//! overflow gives infinity, as `expf` does. NaN propagates.
//!
//! The same arithmetic runs on every path (no fused multiply-add, no reassociation), so the
//! scalar and vector versions give the same bits. libm's `expf` is a function call per
//! element; softmax and cross-entropy spend most of their time in it.

const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// `e^x` with the properties of the module docs.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Comparisons (not `clamp`/`max`) so that NaN passes through and the selects vectorize.
    let x = if x < -104.0 { -104.0 } else { x };
    let x = if x > 89.0 { 89.0 } else { x };
    // Round to nearest through the 1.5·2^23 trick: the integer k lands in the low mantissa
    // bits of `t`, so it is read with integer arithmetic instead of a float→int conversion
    // (Rust's saturating `as` does not vectorize).
    const SHIFTER: f32 = 12_582_912.0;
    let t = x * LOG2_E + SHIFTER;
    let kf = t - SHIFTER;
    let k = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k as two normal powers of two, so k ∈ [-150, 128] neither wraps the exponent field
    // nor loses the underflow to zero and the overflow to infinity.
    let half = k >> 1;
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    (p * pow2(half)) * pow2(k.wrapping_sub(half))
}

/// [`exp`] on 16 lanes with AVX-512F: the same operations in the same order (compare-and-select
/// clamps, separate multiplies and adds, integer exponent arithmetic), so the same bits.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const SHIFTER: f32 = 12_582_912.0;
    let s = _mm512_set1_ps;
    let x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, s(-104.0)), x, s(-104.0));
    let x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, s(89.0)), x, s(89.0));
    let t = _mm512_add_ps(_mm512_mul_ps(x, s(LOG2_E)), s(SHIFTER));
    let kf = _mm512_sub_ps(t, s(SHIFTER));
    let k = _mm512_sub_epi32(
        _mm512_castps_si512(t),
        _mm512_set1_epi32(SHIFTER.to_bits() as i32),
    );
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(kf, s(LN2_HI))),
        _mm512_mul_ps(kf, s(LN2_LO)),
    );
    let mut q = s(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        q = _mm512_add_ps(s(c), _mm512_mul_ps(r, q));
    }
    let half = _mm512_srai_epi32::<1>(k);
    let pow2 = |e: __m512i| {
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            e,
            _mm512_set1_epi32(127),
        )))
    };
    _mm512_mul_ps(
        _mm512_mul_ps(q, pow2(half)),
        pow2(_mm512_sub_epi32(k, half)),
    )
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
    let mut s = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    for o in v[body..].iter_mut() {
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

/// `v[i] = exp(v[i] - shift)` in place and `Σ v`, vectorized where the CPU allows (same
/// bits on every path).
pub(crate) fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp_gives_the_bits_of_exp() {
        if !super::super::has_avx512() {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        // Every 997th f32 bit pattern (both signs, denormals, the clamps, NaNs), ±inf, and a fine
        // sweep of the range where the result is normal.
        let mut xs: Vec<f32> = (0..u32::MAX / 997)
            .map(|i| f32::from_bits(i * 997))
            .collect();
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            -104.0,
            89.0,
            88.7,
            -87.4,
        ]);
        xs.extend((0..1 << 20).map(|i| -104.0 + i as f32 * (194.0 / (1 << 20) as f32)));
        for chunk in xs.chunks_exact(16) {
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F was detected; `chunk` and `got` hold 16 values.
            unsafe {
                use std::arch::x86_64::*;
                let v = exp_avx512(_mm512_loadu_ps(chunk.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), v);
            }
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = exp(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp({x:e}): {g:e} against {want:e}"
                );
            }
        }
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
    }
}
