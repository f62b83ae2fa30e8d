//! The fused shifted softmax-cross-entropy on the CPU.
//!
//! Per row `i` with logits `z_i`, optional constant shift `s_i`, label `y_i` and optional
//! weight `w_i` (1 when absent):
//!
//! ```text
//! u_i    = z_i + s_i
//! lse_i  = max(u_i) + ln Σ_j exp(u_ij - max(u_i))
//! loss_i = w_i · (lse_i - u_iy)
//! dz_ij  = grad_scale · w_i · (exp(u_ij - max u_i) / Σ_j exp(u_ij - max u_i) - [j = y_i])
//! ```
//!
//! One pass over each row: `z` and `s` are read once, `u` is kept in the output gradient
//! row while it is in L1, and `dz` is written once — `3·N·C·4` bytes against `5–6·N·C·4`
//! for the unfused add → log_softmax → pick → backward chain.
//!
//! Two kernels compute these formulas with the same operations per row, so they give the
//! same bits:
//!
//! - **per row** (any `C`): the row's classes run on vector lanes
//!   ([`math::load_max`](super::math::load_max), [`math::exp_shifted_sum`](super::math::exp_shifted_sum)).
//!   At `C` of a few classes most of a row's time is loop overhead and a horizontal reduction.
//! - **across rows** (`C ≤` [`ACROSS_MAX_CLASSES`]): [`LANES`] rows side by side, one row per
//!   vector lane (one AVX-512 register, two AVX2 registers), the class loop unrolled. Each lane
//!   repeats the per-row kernel's arithmetic exactly — the same 8 running maxima and partial
//!   sums for the first `⌊C/8⌋·8` classes, the same fixed tree, the rest in order, the same
//!   [`math::exp`](super::math::exp), `ln` and scaling — so only the placement of rows in
//!   registers changes. Its AVX-512 and AVX2 versions are the portable code compiled for those
//!   instruction sets (no fused multiply-add, no reassociation): the same bits again.
//!
//! Rows run in parallel above a size threshold; each row is computed by one thread, so results
//! do not depend on the thread count.

use rayon::prelude::*;

use super::{math, CpuStorage, PAR_MIN_ELEMS};
use crate::backend::XentArgs;
use crate::error::{Error, Result};

/// Rows side by side in the across-rows kernel.
const LANES: usize = 16;
/// Largest class count of the across-rows kernel.
pub(super) const ACROSS_MAX_CLASSES: usize = 16;
/// Rows per parallel task of the across-rows kernel (a multiple of [`LANES`]).
const TASK_ROWS: usize = 1024;

/// The inputs of one call, as slices.
#[derive(Clone, Copy)]
struct Rows<'a> {
    z: &'a [f32],
    shift: Option<&'a [f32]>,
    labels: &'a [u32],
    weights: Option<&'a [f32]>,
    cols: usize,
    grad_scale: f32,
}

/// Which compiled version of the across-rows kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_avx512() {
                return Isa::Avx512;
            }
            if super::has_avx2() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

pub(super) fn shifted_xent(
    z: &CpuStorage,
    args: XentArgs<'_, CpuStorage, Vec<u32>>,
) -> Result<(CpuStorage, Option<CpuStorage>)> {
    let XentArgs {
        shift,
        labels,
        weights,
        rows,
        cols,
        grad_scale,
        write_grad,
    } = args;
    if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &y)| y as usize >= cols) {
        return Err(Error::LabelOutOfRange {
            op: "shifted_cross_entropy",
            row,
            label,
            classes: cols,
        });
    }
    let input = Rows {
        z: z.as_slice(),
        shift: shift.map(|s| s.as_slice()),
        labels,
        weights: weights.map(|w| w.as_slice()),
        cols,
        grad_scale,
    };
    let mut losses = vec![0.0f32; rows];
    let mut grad = if write_grad {
        // Every element is written below.
        super::pool::take_for_overwrite(rows * cols)
    } else {
        Vec::new()
    };
    let grad_out = write_grad.then_some(&mut grad[..]);
    if (1..=ACROSS_MAX_CLASSES).contains(&cols) {
        across_rows(Isa::best(), input, &mut losses, grad_out);
    } else {
        per_row(input, &mut losses, grad_out);
    }
    Ok((
        CpuStorage::new(losses),
        write_grad.then_some(CpuStorage::new(grad)),
    ))
}

/// The per-row kernel: losses of all rows, and the gradient into `grad` when given.
fn per_row(input: Rows<'_>, losses: &mut [f32], grad: Option<&mut [f32]>) {
    let Rows {
        z,
        shift,
        labels,
        weights,
        cols,
        grad_scale,
    } = input;
    let rows = losses.len();
    let write_grad = grad.is_some();
    // One row: `u` is scratch for z + s (the gradient row when it is written).
    let row_op = |i: usize, u: &mut [f32]| -> f32 {
        let zr = &z[i * cols..(i + 1) * cols];
        let sr = shift.map(|s| &s[i * cols..(i + 1) * cols]);
        let m = math::load_max(zr, sr, u);
        let y = labels[i] as usize;
        let u_y = u[y];
        // One exp per element: u becomes exp(u - m), and softmax = that / Σ.
        let sum = math::exp_shifted_sum(u, m);
        let lse = m + sum.ln();
        let w = weights.map_or(1.0, |w| w[i]);
        let loss = w * (lse - u_y);
        if write_grad {
            let scale = grad_scale * w;
            let factor = scale / sum;
            for v in u.iter_mut() {
                *v *= factor;
            }
            u[y] -= scale;
        }
        loss
    };

    if let Some(grad) = grad {
        let body = |(i, (l, g)): (usize, (&mut f32, &mut [f32]))| *l = row_op(i, g);
        if rows * cols >= PAR_MIN_ELEMS {
            losses
                .par_iter_mut()
                .zip(grad.par_chunks_mut(cols))
                .enumerate()
                .for_each(body);
        } else {
            losses
                .iter_mut()
                .zip(grad.chunks_mut(cols))
                .enumerate()
                .for_each(body);
        }
    } else {
        let body = |scratch: &mut Vec<f32>, (i, l): (usize, &mut f32)| *l = row_op(i, scratch);
        if rows * cols >= PAR_MIN_ELEMS {
            losses
                .par_iter_mut()
                .enumerate()
                .for_each_init(|| vec![0.0f32; cols], body);
        } else {
            let mut scratch = vec![0.0f32; cols];
            losses
                .iter_mut()
                .enumerate()
                .for_each(|item| body(&mut scratch, item));
        }
    }
}

/// The across-rows kernel for `1 ≤ C ≤ ACROSS_MAX_CLASSES`, in tasks of [`TASK_ROWS`] rows.
fn across_rows(isa: Isa, input: Rows<'_>, losses: &mut [f32], grad: Option<&mut [f32]>) {
    let cols = input.cols;
    let task = |(t, (l, g)): (usize, (&mut [f32], Option<&mut [f32]>))| {
        across_dispatch(isa, input, t * TASK_ROWS, l, g)
    };
    let parallel = losses.len() * cols >= PAR_MIN_ELEMS;
    match grad {
        Some(grad) if parallel => losses
            .par_chunks_mut(TASK_ROWS)
            .zip(grad.par_chunks_mut(TASK_ROWS * cols))
            .enumerate()
            .for_each(|(t, (l, g))| task((t, (l, Some(g))))),
        Some(grad) => losses
            .chunks_mut(TASK_ROWS)
            .zip(grad.chunks_mut(TASK_ROWS * cols))
            .enumerate()
            .for_each(|(t, (l, g))| task((t, (l, Some(g))))),
        None if parallel => losses
            .par_chunks_mut(TASK_ROWS)
            .enumerate()
            .for_each(|(t, l)| task((t, (l, None)))),
        None => losses
            .chunks_mut(TASK_ROWS)
            .enumerate()
            .for_each(|(t, l)| task((t, (l, None)))),
    }
}

/// Rows `r0 .. r0 + losses.len()` with the kernel for `input.cols` classes on `isa`.
fn across_dispatch(
    isa: Isa,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    macro_rules! classes {
        ($($c:literal)*) => {
            match input.cols {
                $($c => across_isa::<$c>(isa, input, r0, losses, grad),)*
                c => unreachable!("across-rows kernel called with {c} classes"),
            }
        };
    }
    classes!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

fn across_isa<const C: usize>(
    isa: Isa,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    match isa {
        Isa::Portable => across::<C>(input, r0, losses, grad, block::<C>),
        // SAFETY: `Isa::best` chose these only where the CPU has the instruction set, and the
        // tests ask for them only where it does.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { across_avx2::<C>(input, r0, losses, grad) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { across_avx512::<C>(input, r0, losses, grad) },
    }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn across_avx2<const C: usize>(
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    across::<C>(input, r0, losses, grad, block::<C>)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn across_avx512<const C: usize>(
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    across::<C>(input, r0, losses, grad, |z, s, y, w, gs, l, g| {
        // SAFETY: this function runs only where the CPU has AVX-512F.
        unsafe { avx512::block::<C>(z, s, y, w, gs, l, g) }
    })
}

/// Rows `r0 .. r0 + losses.len()`, [`LANES`] at a time; the last partial block runs padded.
#[inline(always)]
fn across<const C: usize>(
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    mut grad: Option<&mut [f32]>,
    block: impl Fn(&[f32], Option<&[f32]>, &[u32], Option<&[f32]>, f32, &mut [f32], Option<&mut [f32]>),
) {
    let n = losses.len();
    let z = &input.z[r0 * C..(r0 + n) * C];
    let shift = input.shift.map(|s| &s[r0 * C..(r0 + n) * C]);
    let labels = &input.labels[r0..r0 + n];
    let weights = input.weights.map(|w| &w[r0..r0 + n]);
    let full = n / LANES * LANES;
    for b in (0..full).step_by(LANES) {
        let e = b * C..(b + LANES) * C;
        block(
            &z[e.clone()],
            shift.map(|s| &s[e.clone()]),
            &labels[b..b + LANES],
            weights.map(|w| &w[b..b + LANES]),
            input.grad_scale,
            &mut losses[b..b + LANES],
            grad.as_deref_mut().map(|g| &mut g[e]),
        );
    }
    let rest = n - full;
    if rest > 0 {
        // Padding rows: zero logits and shift, label 0, weight 1; their results are dropped.
        let mut zp = [[0.0f32; C]; LANES];
        let mut sp = [[0.0f32; C]; LANES];
        let mut yp = [0u32; LANES];
        let mut wp = [1.0f32; LANES];
        let mut lp = [0.0f32; LANES];
        let mut gp = [[0.0f32; C]; LANES];
        zp.as_flattened_mut()[..rest * C].copy_from_slice(&z[full * C..]);
        if let Some(s) = shift {
            sp.as_flattened_mut()[..rest * C].copy_from_slice(&s[full * C..]);
        }
        yp[..rest].copy_from_slice(&labels[full..]);
        if let Some(w) = weights {
            wp[..rest].copy_from_slice(&w[full..]);
        }
        block(
            zp.as_flattened(),
            shift.map(|_| sp.as_flattened()),
            &yp,
            weights.map(|_| &wp[..]),
            input.grad_scale,
            &mut lp,
            grad.is_some().then_some(gp.as_flattened_mut()),
        );
        losses[full..].copy_from_slice(&lp[..rest]);
        if let Some(g) = grad {
            g[full * C..].copy_from_slice(&gp.as_flattened()[..rest * C]);
        }
    }
}

/// [`LANES`] rows of `C` classes: `z`, `s` and `grad` hold `LANES · C` values, row-major;
/// `labels`, `weights` and `losses` hold `LANES`. Lane `r` repeats the per-row kernel on row
/// `r` operation for operation (see the module docs).
#[inline(always)]
fn block<const C: usize>(
    z: &[f32],
    s: Option<&[f32]>,
    labels: &[u32],
    weights: Option<&[f32]>,
    grad_scale: f32,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    let z = &z[..LANES * C];
    let labels = &labels[..LANES];
    let losses = &mut losses[..LANES];
    // u[j][r] = z + s of row r, class j (`math::load_max`'s first loop).
    let mut u = [[0.0f32; LANES]; C];
    match s {
        Some(s) => {
            let s = &s[..LANES * C];
            for r in 0..LANES {
                for j in 0..C {
                    u[j][r] = z[r * C + j] + s[r * C + j];
                }
            }
        }
        None => {
            for r in 0..LANES {
                for j in 0..C {
                    u[j][r] = z[r * C + j];
                }
            }
        }
    }
    // The maximum as `math::load_max` takes it: 8 running maxima over the first ⌊C/8⌋·8
    // classes (a strict `>`), folded with `f32::max` from -∞, then the rest in order.
    let body = C / 8 * 8;
    let mut lanes = [[f32::NEG_INFINITY; LANES]; 8];
    for c0 in (0..body).step_by(8) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            for r in 0..LANES {
                let v = u[c0 + l][r];
                lane[r] = if v > lane[r] { v } else { lane[r] };
            }
        }
    }
    let mut m = [f32::NEG_INFINITY; LANES];
    for lane in &lanes {
        for r in 0..LANES {
            m[r] = m[r].max(lane[r]);
        }
    }
    for uj in &u[body..] {
        for r in 0..LANES {
            m[r] = m[r].max(uj[r]);
        }
    }
    // u at the label, before the exponentials.
    let mut u_y = [0.0f32; LANES];
    for (j, uj) in u.iter().enumerate() {
        for r in 0..LANES {
            u_y[r] = if labels[r] as usize == j {
                uj[r]
            } else {
                u_y[r]
            };
        }
    }
    // exp(u - m) and its sum as `math::exp_shifted_sum` takes it: 8 partial sums from 0 over
    // the first ⌊C/8⌋·8 classes, the fixed tree, then the rest in order.
    let mut acc = [[0.0f32; LANES]; 8];
    for c0 in (0..body).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            for r in 0..LANES {
                let e = math::exp(u[c0 + l][r] - m[r]);
                u[c0 + l][r] = e;
                a[r] += e;
            }
        }
    }
    let mut sum = [0.0f32; LANES];
    for r in 0..LANES {
        sum[r] = ((acc[0][r] + acc[4][r]) + (acc[2][r] + acc[6][r]))
            + ((acc[1][r] + acc[5][r]) + (acc[3][r] + acc[7][r]));
    }
    for uj in u[body..].iter_mut() {
        for r in 0..LANES {
            let e = math::exp(uj[r] - m[r]);
            uj[r] = e;
            sum[r] += e;
        }
    }
    let mut w = [1.0f32; LANES];
    if let Some(weights) = weights {
        w.copy_from_slice(&weights[..LANES]);
    }
    for r in 0..LANES {
        let lse = m[r] + sum[r].ln();
        losses[r] = w[r] * (lse - u_y[r]);
    }
    if let Some(grad) = grad {
        let grad = &mut grad[..LANES * C];
        let mut scale = [0.0f32; LANES];
        let mut factor = [0.0f32; LANES];
        for r in 0..LANES {
            scale[r] = grad_scale * w[r];
            factor[r] = scale[r] / sum[r];
        }
        for (j, uj) in u.iter_mut().enumerate() {
            for r in 0..LANES {
                let g = uj[r] * factor[r];
                uj[r] = if labels[r] as usize == j {
                    g - scale[r]
                } else {
                    g
                };
            }
        }
        for r in 0..LANES {
            for j in 0..C {
                grad[r * C + j] = u[j][r];
            }
        }
    }
}

/// [`block`] in AVX-512 registers, one row per lane: the same operations in the same order,
/// with one exception that cannot show in the results: the maximum is taken with `vmaxps`,
/// which differs from `f32::max` only on NaN (a row holding a NaN gives NaN whatever its
/// maximum) and on the sign of a zero maximum (`u - m` and `m + ln Σ` are the same for `m = ±0`).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::LANES;
    use crate::backend::cpu::math::exp_avx512;
    use std::arch::x86_64::*;

    /// Class `j` of the 16 rows at `p` (row-major, `C` classes).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_class<const C: usize>(p: &[f32], j: usize) -> __m512 {
        debug_assert!(p.len() >= LANES * C);
        if C == 2 {
            let lo = _mm512_loadu_ps(p.as_ptr());
            let hi = _mm512_loadu_ps(p.as_ptr().add(16));
            let idx = _mm512_add_epi32(
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                _mm512_set1_epi32(j as i32),
            );
            return _mm512_permutex2var_ps(lo, idx, hi);
        }
        let idx = _mm512_add_epi32(
            _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(C as i32),
            ),
            _mm512_set1_epi32(j as i32),
        );
        _mm512_i32gather_ps::<4>(idx, p.as_ptr())
    }

    /// Writes the 16 rows of `C` classes at `p` from one register per class.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_classes<const C: usize>(p: &mut [f32], g: &[__m512; C]) {
        debug_assert!(p.len() >= LANES * C);
        if C == 2 {
            let lo = _mm512_permutex2var_ps(
                g[0],
                _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
                g[1],
            );
            let hi = _mm512_permutex2var_ps(
                g[0],
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
                g[1],
            );
            _mm512_storeu_ps(p.as_mut_ptr(), lo);
            _mm512_storeu_ps(p.as_mut_ptr().add(16), hi);
            return;
        }
        let rows = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(C as i32),
        );
        for (j, &v) in g.iter().enumerate() {
            let idx = _mm512_add_epi32(rows, _mm512_set1_epi32(j as i32));
            _mm512_i32scatter_ps::<4>(p.as_mut_ptr(), idx, v);
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F; the slices hold what [`super::block`] asks for.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const C: usize>(
        z: &[f32],
        s: Option<&[f32]>,
        labels: &[u32],
        weights: Option<&[f32]>,
        grad_scale: f32,
        losses: &mut [f32],
        grad: Option<&mut [f32]>,
    ) {
        assert!(
            z.len() >= LANES * C
                && s.is_none_or(|s| s.len() >= LANES * C)
                && labels.len() >= LANES
                && weights.is_none_or(|w| w.len() >= LANES)
                && losses.len() >= LANES
                && grad.as_ref().is_none_or(|g| g.len() >= LANES * C)
        );
        let mut u: [__m512; C] = std::array::from_fn(|j| load_class::<C>(z, j));
        if let Some(s) = s {
            for (j, uj) in u.iter_mut().enumerate() {
                *uj = _mm512_add_ps(*uj, load_class::<C>(s, j));
            }
        }
        let body = C / 8 * 8;
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut m = neg_inf;
        if body > 0 {
            let mut lanes = [neg_inf; 8];
            for c0 in (0..body).step_by(8) {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let v = u[c0 + l];
                    *lane =
                        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, *lane), *lane, v);
                }
            }
            for lane in lanes {
                m = _mm512_max_ps(m, lane);
            }
        }
        for &uj in &u[body..] {
            m = _mm512_max_ps(m, uj);
        }
        let y = _mm512_loadu_si512(labels.as_ptr().cast());
        let is_label = |j: usize| _mm512_cmpeq_epi32_mask(y, _mm512_set1_epi32(j as i32));
        let mut u_y = _mm512_setzero_ps();
        for (j, &uj) in u.iter().enumerate() {
            u_y = _mm512_mask_blend_ps(is_label(j), u_y, uj);
        }
        let mut acc = [_mm512_setzero_ps(); 8];
        for c0 in (0..body).step_by(8) {
            for (l, a) in acc.iter_mut().enumerate() {
                let e = exp_avx512(_mm512_sub_ps(u[c0 + l], m));
                u[c0 + l] = e;
                *a = _mm512_add_ps(*a, e);
            }
        }
        let mut sum = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(acc[0], acc[4]), _mm512_add_ps(acc[2], acc[6])),
            _mm512_add_ps(_mm512_add_ps(acc[1], acc[5]), _mm512_add_ps(acc[3], acc[7])),
        );
        for uj in u[body..].iter_mut() {
            let e = exp_avx512(_mm512_sub_ps(*uj, m));
            *uj = e;
            sum = _mm512_add_ps(sum, e);
        }
        // ln from the C library, as the per-row kernel takes it.
        let mut ln = [0.0f32; LANES];
        _mm512_storeu_ps(ln.as_mut_ptr(), sum);
        for v in ln.iter_mut() {
            *v = v.ln();
        }
        let w = match weights {
            Some(w) => _mm512_loadu_ps(w.as_ptr()),
            None => _mm512_set1_ps(1.0),
        };
        let lse = _mm512_add_ps(m, _mm512_loadu_ps(ln.as_ptr()));
        _mm512_storeu_ps(
            losses.as_mut_ptr(),
            _mm512_mul_ps(w, _mm512_sub_ps(lse, u_y)),
        );
        if let Some(grad) = grad {
            let scale = _mm512_mul_ps(_mm512_set1_ps(grad_scale), w);
            let factor = _mm512_div_ps(scale, sum);
            let mut g = u;
            for (j, gj) in g.iter_mut().enumerate() {
                let v = _mm512_mul_ps(*gj, factor);
                *gj = _mm512_mask_blend_ps(is_label(j), v, _mm512_sub_ps(v, scale));
            }
            store_classes::<C>(grad, &g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled version of the across-rows kernel this CPU can run.
    fn isas() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::has_avx2() {
                out.push(Isa::Avx2);
            }
            if super::super::has_avx512() {
                out.push(Isa::Avx512);
            }
        }
        out
    }

    /// Logits that exercise every branch: ordinary values, ±1e4, ties, ±0, and (with
    /// `poison`) NaN and ±∞.
    fn logits(rng: &mut crate::rng::Rng, len: usize, poison: bool) -> Vec<f32> {
        let mut v = rng.uniform_vec(len, -6.0, 6.0);
        for (i, x) in v.iter_mut().enumerate() {
            match rng.below(if poison { 14 } else { 10 }) {
                0 => *x = 1e4,
                1 => *x = -1e4,
                2 => *x = 0.0,
                3 => *x = -0.0,
                4 => *x = (i % 3) as f32,
                10 => *x = f32::NAN,
                11 => *x = f32::INFINITY,
                12 => *x = f32::NEG_INFINITY,
                _ => {}
            }
        }
        v
    }

    /// The bits of each value, every NaN as one: Rust (RFC 3514) and LLVM leave the sign and
    /// payload of a NaN result unspecified, so only NaN-ness is comparable (and a NaN loss is
    /// an error one layer up).
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter()
            .map(|x| {
                if x.is_nan() {
                    f32::NAN.to_bits()
                } else {
                    x.to_bits()
                }
            })
            .collect()
    }

    #[test]
    fn across_rows_matches_per_row_bit_for_bit_on_every_path() {
        let mut rng = crate::rng::Rng::new(19);
        for cols in 1..=ACROSS_MAX_CLASSES {
            for rows in [1, 15, 16, 17, 100, 2 * TASK_ROWS + 37] {
                for poison in [false, true] {
                    let z = logits(&mut rng, rows * cols, poison);
                    let s = logits(&mut rng, rows * cols, false);
                    let y: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
                    let w = rng.uniform_vec(rows, 0.0, 3.0);
                    for (with_shift, with_weights, write_grad) in [
                        (false, false, true),
                        (true, false, true),
                        (false, true, true),
                        (true, true, true),
                        (true, true, false),
                    ] {
                        let input = Rows {
                            z: &z,
                            shift: with_shift.then_some(&s[..]),
                            labels: &y,
                            weights: with_weights.then_some(&w[..]),
                            cols,
                            grad_scale: 0.37,
                        };
                        let mut want_l = vec![0.0f32; rows];
                        let mut want_g = vec![0.0f32; rows * cols];
                        per_row(input, &mut want_l, write_grad.then_some(&mut want_g[..]));
                        for isa in isas() {
                            let what = format!(
                                "{isa:?} C={cols} N={rows} poison={poison} shift={with_shift} \
                                 weights={with_weights} grad={write_grad}"
                            );
                            let mut l = vec![7.0f32; rows];
                            let mut g = vec![7.0f32; rows * cols];
                            across_rows(isa, input, &mut l, write_grad.then_some(&mut g[..]));
                            assert_eq!(bits(&l), bits(&want_l), "losses, {what}");
                            if write_grad {
                                assert_eq!(bits(&g), bits(&want_g), "gradient, {what}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn across_rows_gives_the_same_bits_for_any_thread_count() {
        let mut rng = crate::rng::Rng::new(20);
        for cols in [2, 3, 10] {
            let rows = 3 * TASK_ROWS + 5;
            let z = logits(&mut rng, rows * cols, false);
            let s = logits(&mut rng, rows * cols, false);
            let y: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
            let input = Rows {
                z: &z,
                shift: Some(&s),
                labels: &y,
                weights: None,
                cols,
                grad_scale: 1.0 / rows as f32,
            };
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                pool.install(|| {
                    let mut l = vec![0.0f32; rows];
                    let mut g = vec![0.0f32; rows * cols];
                    across_rows(Isa::best(), input, &mut l, Some(&mut g));
                    (bits(&l), bits(&g))
                })
            };
            let one = run(1);
            for threads in [2, 3, 8] {
                assert_eq!(run(threads), one, "C={cols}, {threads} threads");
            }
        }
    }
}
