//! Matrix products on the CPU.
//!
//! `C (m×n) = op(A) · op(B)`, row-major, with a transposed operand read through swapped
//! strides (never copied). Four paths:
//!
//! - **dot products** (`n ≤ THIN`, e.g. an 1800→2 linear layer's forward, or `n ≤ 64` with
//!   `k ≥ 512`, e.g. 32 snapshots of that layer evaluated at once): each output row is `n`
//!   dot products of a contiguous row of A with a column of B, taken several rows by up to
//!   four columns at a time (on AVX-512 as many rows as the registers hold: 8 against one
//!   column down to 3 against four; elsewhere two), so A streams through the cache once,
//!   several rows in flight from memory: `4·m·k` bytes read for
//!   `2·m·n·k` flops. Every dot has the same 32 partial sums and the same final tree
//!   whatever the blocking and the instruction set, so a column has the same bits in a
//!   product of any width;
//! - **thin left** (`m ≤ THIN`, e.g. that layer's weight gradient `dZᵀ·X`): `m` running
//!   `axpy`s over the rows of B, again one pass over B;
//! - **one small dimension** (`k ≤ 32` or `m ≤ 32`, below the parallel threshold, e.g. the
//!   20-example batches of Figure 3): the unpacked kernels of `small_gemm`, with few rows
//!   split by columns across threads from a million multiply-adds;
//! - otherwise, for products at least 512 on every side on an AVX-512 CPU, the packed kernel
//!   of `packed` (one fused chain per element); else `matrixmultiply::sgemm`; either split
//!   across rayon threads when the product is large, into blocks of output rows (or, for
//!   `matrixmultiply` with 64 rows or fewer, of output columns).
//!
//! A general GEMM would pack the whole 1000×1800 operand of the thin cases first, moving
//! twice the bytes the product needs.
//!
//! Determinism: each output element is accumulated in a fixed order by one thread, whatever
//! the blocks, so results do not depend on the thread count.

use rayon::prelude::*;

use super::packed;
use super::simd::{self, Simd};
use super::small_gemm;

/// Widest output (in columns, or rows for the thin-left path) handled by the thin paths.
pub(super) const THIN: usize = 4;
/// Most dots (rows × columns) one AVX-512 block of [`row_block_dots`] keeps in registers:
/// two accumulators each, 24 of the 32.
const MAX_CELLS: usize = 12;
/// Widest output handled by the dot-product path in groups of [`THIN`] columns, when rows are
/// long enough that streaming A once beats packing it (e.g. a batch of weight snapshots).
const DOTS_MAX_COLS: usize = 64;
/// Shortest rows for which wide outputs take the dot-product path.
const DOTS_MIN_K: usize = 512;
/// Products above this many multiply-adds are split across threads.
const PAR_MIN_MACS: usize = 1 << 21;
/// Products of few rows (`small_gemm::small_m`) above this many multiply-adds are split
/// across threads by columns: at 20×300×300 (1.8 M) one thread takes about 40 µs, well above
/// the cost of handing half to another.
const SMALL_PAR_MIN_MACS: usize = 1 << 20;
/// Rows per parallel block of the general path.
const ROW_BLOCK: usize = 64;
/// Fewest columns per parallel block of the general path when it has too few rows to split.
const COL_BLOCK: usize = 64;
/// Largest thin-left output (elements) that each thread keeps a private copy of.
const ROW_SPLIT_MAX_OUT: usize = 1 << 14;

/// Accumulators per output in the thin-output kernel: 4 independent chains of 8 lanes hide
/// the add latency and map onto 8-wide vector registers.
pub(super) const LANES: usize = 32;

/// `out[j] = a · cols[j]` for every column `j < N`, one pass over `a`. The summation order is
/// fixed (32 strided partial sums, then a fixed tree, then the tail in order), so every
/// instruction set gives the same bits. `N` is a constant so the accumulators stay in
/// registers.
#[inline(always)]
fn row_dots_n<const N: usize>(a: &[f32], cols: &[Vec<f32>], out: &mut [f32]) {
    let k = a.len();
    let body = k / LANES * LANES;
    let cols: [&[f32]; N] = std::array::from_fn(|j| &cols[j][..k]);
    let mut acc = [[0.0f32; LANES]; N];
    for p in (0..body).step_by(LANES) {
        let x: &[f32; LANES] = a[p..p + LANES].try_into().expect("slice of LANES elements");
        for j in 0..N {
            let c: &[f32; LANES] = cols[j][p..p + LANES]
                .try_into()
                .expect("slice of LANES elements");
            for l in 0..LANES {
                acc[j][l] += x[l] * c[l];
            }
        }
    }
    for j in 0..N {
        out[j] = finish_lanes(acc[j], &a[body..], &cols[j][body..k]);
    }
}

#[inline(always)]
fn row_dots_generic(a: &[f32], cols: &[Vec<f32>], out: &mut [f32]) {
    match cols.len() {
        1 => row_dots_n::<1>(a, cols, out),
        2 => row_dots_n::<2>(a, cols, out),
        3 => row_dots_n::<3>(a, cols, out),
        _ => row_dots_n::<4>(a, cols, out),
    }
}

/// `out[i, :] += a(i, p) · b_row` for the `m` rows of a thin left operand.
/// `out[i, :] += (c[i][0]·b[0] + c[i][1]·b[1]) + (c[i][2]·b[2] + c[i][3]·b[3])`: four rows of
/// B per pass over the output, so the output row is loaded and stored once per four rows.
#[inline(always)]
fn axpy4_rows_generic(coef: &[[f32; 4]], b: [&[f32]; 4], out: &mut [f32], width: usize) {
    axpy4_columns(coef, b, out, width, 0);
}

/// [`axpy4_rows_generic`] on columns `from..width` only, one at a time: the vector kernels'
/// tails.
#[inline(always)]
fn axpy4_columns(coef: &[[f32; 4]], b: [&[f32]; 4], out: &mut [f32], width: usize, from: usize) {
    for (i, c) in coef.iter().enumerate() {
        let o = &mut out[i * width..(i + 1) * width];
        for (q, o) in o.iter_mut().enumerate().skip(from) {
            *o += (c[0] * b[0][q] + c[1] * b[1][q]) + (c[2] * b[2][q] + c[3] * b[3][q]);
        }
    }
}

/// [`axpy4_rows_generic`] on the `S::LANES` columns from `q`, with its association.
///
/// # Safety
/// `q + S::LANES` is at most `width`, the length of every row of `b`; `out` holds
/// `coef.len()` rows of `width`.
#[inline(always)]
unsafe fn axpy4_vector<S: Simd>(
    s: S,
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
    width: usize,
    q: usize,
) {
    // SAFETY: the caller's promise.
    unsafe {
        let bv = b.map(|row| s.load(row.as_ptr().add(q)));
        for (i, c) in coef.iter().enumerate() {
            axpy4_at(s, c, &bv, out.as_mut_ptr().add(i * width + q));
        }
    }
}

/// `o[..S::LANES] += (c[0]·b[0] + c[1]·b[1]) + (c[2]·b[2] + c[3]·b[3])`, the association of
/// [`axpy4_rows_generic`], with the four rows of B already loaded.
///
/// # Safety
/// `o` is valid for reads and writes of `S::LANES` floats.
#[inline(always)]
unsafe fn axpy4_at<S: Simd>(s: S, c: &[f32; 4], bv: &[S::F; 4], o: *mut f32) {
    let t01 = s.add(s.mul(s.splat(c[0]), bv[0]), s.mul(s.splat(c[1]), bv[1]));
    let t23 = s.add(s.mul(s.splat(c[2]), bv[2]), s.mul(s.splat(c[3]), bv[3]));
    // SAFETY: the caller's promise.
    unsafe { s.store(o, s.add(s.load(o), s.add(t01, t23))) };
}

#[inline(always)]
fn axpy_rows_generic(coef: &[f32], b_row: &[f32], out: &mut [f32], width: usize) {
    for (i, &s) in coef.iter().enumerate() {
        let o = &mut out[i * width..(i + 1) * width];
        for (o, &v) in o.iter_mut().zip(b_row) {
            *o += s * v;
        }
    }
}

/// AVX2 versions of the two thin kernels with the same association as the generic code
/// (products rounded, then added; lane `l` of register `c` is partial sum `8c + l`), so
/// both give the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::LANES;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    unsafe fn row_dots_n<const N: usize>(a: &[f32], cols: &[Vec<f32>], out: &mut [f32]) {
        let k = a.len();
        let body = k / LANES * LANES;
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        let mut p = 0;
        while p < body {
            // SAFETY: p + 32 <= body <= k, the length of `a` and of every column.
            let x = [
                _mm256_loadu_ps(a.as_ptr().add(p)),
                _mm256_loadu_ps(a.as_ptr().add(p + 8)),
                _mm256_loadu_ps(a.as_ptr().add(p + 16)),
                _mm256_loadu_ps(a.as_ptr().add(p + 24)),
            ];
            for (acc_j, col) in acc.iter_mut().zip(cols) {
                let c = col.as_ptr().add(p);
                for (r, (acc_r, &x_r)) in acc_j.iter_mut().zip(&x).enumerate() {
                    let prod = _mm256_mul_ps(x_r, _mm256_loadu_ps(c.add(8 * r)));
                    *acc_r = _mm256_add_ps(*acc_r, prod);
                }
            }
            p += LANES;
        }
        for ((o, acc_j), col) in out.iter_mut().zip(&acc).zip(cols) {
            let mut w = [0.0f32; LANES];
            for (r, &v) in acc_j.iter().enumerate() {
                _mm256_storeu_ps(w.as_mut_ptr().add(8 * r), v);
            }
            *o = super::finish_lanes(w, &a[body..], &col[body..k]);
        }
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_dots(a: &[f32], cols: &[Vec<f32>], out: &mut [f32]) {
        match cols.len() {
            1 => row_dots_n::<1>(a, cols, out),
            2 => row_dots_n::<2>(a, cols, out),
            3 => row_dots_n::<3>(a, cols, out),
            _ => row_dots_n::<4>(a, cols, out),
        }
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn axpy_rows(coef: &[f32], b_row: &[f32], out: &mut [f32], width: usize) {
        let body = width / 8 * 8;
        for (i, &s) in coef.iter().enumerate() {
            let o = out[i * width..(i + 1) * width].as_mut_ptr();
            let sv = _mm256_set1_ps(s);
            let mut q = 0;
            while q < body {
                // SAFETY: q + 8 <= width, the length of this output row and of `b_row`.
                let prod = _mm256_mul_ps(sv, _mm256_loadu_ps(b_row.as_ptr().add(q)));
                _mm256_storeu_ps(o.add(q), _mm256_add_ps(_mm256_loadu_ps(o.add(q)), prod));
                q += 8;
            }
            for (q, &v) in b_row.iter().enumerate().take(width).skip(body) {
                *o.add(q) += s * v;
            }
        }
    }
}

/// AVX-512F: `R` rows of A against up to four columns at once. Partial sum `l` of each dot
/// is lane `l % 16` of register `l / 16`, updated with a rounded product and then an add, in
/// the order of the portable code: the same bits. The rows share every column load and the
/// columns share every row load; the `2·R·N` accumulators take at most 24 of the 32 vector
/// registers (`R·N ≤ 12`, [`MAX_CELLS`](super::MAX_CELLS)). Per 32 columns the loop holds
/// the columns' `2·N` registers and streams the rows through two, or, where those do not
/// fit beside the accumulators (`N = 4`), holds the rows' `2·R` and streams the columns:
/// the same operations in another order (one thread, 1000 × 1800 from L3, AMD EPYC Zen 4:
/// three rows against three or four columns, four against three, six against two and
/// eight against one took 9–11 % less time than pairs of rows).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LANES, MAX_CELLS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    unsafe fn rows_n<const R: usize, const N: usize>(
        a: [&[f32]; R],
        cols: &[Vec<f32>],
        out: [&mut [f32]; R],
    ) {
        // Known at compile time: instances past the register budget compile to this check.
        assert!(R * N <= MAX_CELLS, "rows_n: {R} rows × {N} columns spill");
        let k = a[0].len();
        let body = k / LANES * LANES;
        let mut acc = [[[_mm512_setzero_ps(); 2]; N]; R];
        let mut p = 0;
        // Columns held: 2·N of them, 2·R·N accumulators and a row's two registers; else the
        // rows' 2·R registers held and the columns streamed.
        let columns_held = 2 * N * (R + 1) + 2 <= 32;
        while columns_held && p < body {
            // SAFETY: p + 32 <= body <= k, the length of every row and of every column.
            let c: [[__m512; 2]; N] = std::array::from_fn(|j| {
                [
                    _mm512_loadu_ps(cols[j].as_ptr().add(p)),
                    _mm512_loadu_ps(cols[j].as_ptr().add(p + 16)),
                ]
            });
            for r in 0..R {
                let x = [
                    _mm512_loadu_ps(a[r].as_ptr().add(p)),
                    _mm512_loadu_ps(a[r].as_ptr().add(p + 16)),
                ];
                for j in 0..N {
                    for h in 0..2 {
                        acc[r][j][h] = _mm512_add_ps(acc[r][j][h], _mm512_mul_ps(x[h], c[j][h]));
                    }
                }
            }
            p += LANES;
        }
        while p < body {
            // SAFETY: p + 32 <= body <= k, the length of every row and of every column.
            let x: [[__m512; 2]; R] = std::array::from_fn(|r| {
                [
                    _mm512_loadu_ps(a[r].as_ptr().add(p)),
                    _mm512_loadu_ps(a[r].as_ptr().add(p + 16)),
                ]
            });
            for (j, col) in cols.iter().enumerate().take(N) {
                let c = [
                    _mm512_loadu_ps(col.as_ptr().add(p)),
                    _mm512_loadu_ps(col.as_ptr().add(p + 16)),
                ];
                for r in 0..R {
                    for h in 0..2 {
                        acc[r][j][h] = _mm512_add_ps(acc[r][j][h], _mm512_mul_ps(x[r][h], c[h]));
                    }
                }
            }
            p += LANES;
        }
        for (r, out) in out.into_iter().enumerate() {
            for (j, (o, col)) in out.iter_mut().zip(cols).enumerate().take(N) {
                *o = super::add_tail(fold_lanes(acc[r][j]), &a[r][body..], &col[body..k]);
            }
        }
    }

    /// The tree of `finish_lanes` in registers: `w[l] += w[l + width]` for width 16, 8, 4,
    /// 2, 1 is an add of the two registers, then of the halves of each result.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fold_lanes(acc: [__m512; 2]) -> f32 {
        let v16 = _mm512_add_ps(acc[0], acc[1]);
        let high8 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v16), 1));
        let v8 = _mm256_add_ps(_mm512_castps512_ps256(v16), high8);
        let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
        let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
        let v1 = _mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1));
        _mm_cvtss_f32(v1)
    }

    /// `out[r][j] = a[r] · cols[j]` for `R` rows and `cols.len() ≤ 4` columns.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; every row and every column holds `a[0].len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows<const R: usize>(
        a: [&[f32]; R],
        cols: &[Vec<f32>],
        out: [&mut [f32]; R],
    ) {
        match cols.len() {
            1 => rows_n::<R, 1>(a, cols, out),
            2 => rows_n::<R, 2>(a, cols, out),
            3 => rows_n::<R, 3>(a, cols, out),
            _ => rows_n::<R, 4>(a, cols, out),
        }
    }
}

/// `out[r][j] = a[r] · cols[j]` for `R` rows of A and at most [`THIN`] columns, with the bits
/// of [`row_dots`] on each row: on AVX-512 in one pass where `R · cols.len() ≤ 12`, else row
/// by row.
pub(super) fn row_block_dots<const R: usize>(
    a: [&[f32]; R],
    cols: &[Vec<f32>],
    out: [&mut [f32]; R],
) {
    let k = a.first().map_or(0, |row| row.len());
    assert!(
        a.iter().all(|row| row.len() == k) && cols.iter().all(|col| col.len() == k),
        "row_block_dots: rows and columns of one length (the kernels read that many values)"
    );
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() && R * cols.len() <= MAX_CELLS {
        // SAFETY: AVX-512F support was detected at run time; callers pass rows and columns of
        // one length.
        return unsafe { avx512::rows(a, cols, out) };
    }
    for (a, out) in a.into_iter().zip(out) {
        row_dots(a, cols, out);
    }
}

/// Folds 32 partial sums with a fixed tree, then adds the tail products in order.
#[inline(always)]
fn finish_lanes(mut w: [f32; LANES], a_tail: &[f32], c_tail: &[f32]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            w[l] += w[l + width];
        }
        width /= 2;
    }
    add_tail(w[0], a_tail, c_tail)
}

/// `s` plus the tail products of a dot, added in order.
#[inline(always)]
fn add_tail(mut s: f32, a_tail: &[f32], c_tail: &[f32]) -> f32 {
    for (&x, &c) in a_tail.iter().zip(c_tail) {
        s += x * c;
    }
    s
}

pub(super) fn row_dots(a: &[f32], cols: &[Vec<f32>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { avx2::row_dots(a, cols, out) };
    }
    row_dots_generic(a, cols, out)
}

fn axpy4_rows(coef: &[[f32; 4]], b: [&[f32]; 4], out: &mut [f32], width: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = simd::Avx512::new() {
            // SAFETY: the token exists, so the CPU has AVX-512F.
            return unsafe { axpy4_rows_avx512(s, coef, b, out, width) };
        }
        if let Some(s) = simd::Avx2::new() {
            // SAFETY: the token exists, so the CPU has AVX2.
            return unsafe { axpy4_rows_avx2(s, coef, b, out, width) };
        }
    }
    axpy4_rows_generic(coef, b, out, width)
}

/// [`axpy4_rows_generic`] on `S::LANES` output columns at a time. Each output element gets
/// the generic code's operations (the width of a vector changes no association), so every
/// instruction set gives the same bits.
#[inline(always)]
fn axpy4_rows_simd<S: Simd>(
    s: S,
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
    width: usize,
) {
    assert!(b.iter().all(|row| row.len() >= width) && out.len() >= coef.len() * width);
    let body = width / S::LANES * S::LANES;
    for q in (0..body).step_by(S::LANES) {
        // SAFETY: q + LANES <= width, within every row of B and every output row (checked
        // above).
        unsafe { axpy4_vector(s, coef, b, out, width, q) };
    }
    axpy4_columns(coef, b, out, width, body);
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn axpy4_rows_avx2(
    s: simd::Avx2,
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
    width: usize,
) {
    axpy4_rows_simd(s, coef, b, out, width)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy4_rows_avx512(
    s: simd::Avx512,
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
    width: usize,
) {
    axpy4_rows_simd(s, coef, b, out, width)
}

/// Two independent jobs in one pass over `k` columns, for the fused linear + CE: the dot
/// products `dots[r][j] = a[r] · cols[j]` of `R` rows (the next rows' logits, streamed from
/// memory) and `out[i, :] += (c[i][0]·b[0] + c[i][1]·b[1]) + (c[i][2]·b[2] + c[i][3]·b[3])`
/// (a weight gradient over four rows already in cache). Each job has the bits of its own
/// kernel ([`row_dots`], [`accumulate_rows`]); together, the gradient's arithmetic runs while
/// the next rows arrive instead of after them.
pub(super) fn dots_and_axpy4<const R: usize>(
    a: [&[f32]; R],
    cols: &[Vec<f32>],
    dots: [&mut [f32]; R],
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
) {
    let k = a[0].len();
    assert!(
        a.iter().all(|r| r.len() == k)
            && (1..=THIN).contains(&cols.len())
            && cols.iter().all(|c| c.len() == k)
            && dots.iter().all(|d| d.len() >= cols.len())
            && coef.len() <= THIN
            && b.iter().all(|r| r.len() == k)
            && out.len() >= coef.len() * k,
        "dots_and_axpy4: rows, columns and gradient rows of one length"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = simd::Avx512::new() {
            // SAFETY: the token exists, so the CPU has AVX-512F; lengths checked above.
            return unsafe { dots_and_axpy4_avx512(s, a, cols, dots, coef, b, out) };
        }
        if let Some(s) = simd::Avx2::new() {
            // SAFETY: the token exists, so the CPU has AVX2; lengths checked above.
            return unsafe { dots_and_axpy4_avx2(s, a, cols, dots, coef, b, out) };
        }
    }
    dots_and_axpy4_n(simd::Lanes8, a, cols, dots, coef, b, out)
}

#[inline(always)]
fn dots_and_axpy4_n<S: Simd, const R: usize>(
    s: S,
    a: [&[f32]; R],
    cols: &[Vec<f32>],
    dots: [&mut [f32]; R],
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
) {
    // Both counts as constants: the loops over columns and gradient rows unroll, and the
    // gradient rows' addresses stay in registers instead of being recomputed from a slice.
    macro_rules! by_rows {
        ($n:literal) => {
            match coef.len() {
                0 => dots_and_axpy4_simd::<S, R, $n, 0>(s, a, cols, dots, coef, b, out),
                1 => dots_and_axpy4_simd::<S, R, $n, 1>(s, a, cols, dots, coef, b, out),
                2 => dots_and_axpy4_simd::<S, R, $n, 2>(s, a, cols, dots, coef, b, out),
                3 => dots_and_axpy4_simd::<S, R, $n, 3>(s, a, cols, dots, coef, b, out),
                _ => dots_and_axpy4_simd::<S, R, $n, 4>(s, a, cols, dots, coef, b, out),
            }
        };
    }
    match cols.len() {
        1 => by_rows!(1),
        2 => by_rows!(2),
        3 => by_rows!(3),
        _ => by_rows!(4),
    }
}

/// [`dots_and_axpy4`] with `N` columns and `M` gradient rows: lane `l` of accumulator `v` is
/// partial sum `v·S::LANES + l` of [`row_dots`]' 32; the gradient as [`axpy4_rows_simd`].
#[inline(always)]
fn dots_and_axpy4_simd<S: Simd, const R: usize, const N: usize, const M: usize>(
    s: S,
    a: [&[f32]; R],
    cols: &[Vec<f32>],
    dots: [&mut [f32]; R],
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
) {
    let k = a[0].len();
    let per = LANES / S::LANES;
    let body = k / LANES * LANES;
    let zero = s.splat(0.0);
    // acc[v][r][j]: vector `v` of the partial sums of row `r` and column `j`.
    let mut acc = [[[zero; N]; R]; 4];
    let c: [&[f32]; N] = std::array::from_fn(|j| &cols[j][..k]);
    let coef: &[[f32; 4]; M] = coef.try_into().expect("M gradient rows");
    let (ap, cp, bp) = (
        a.map(<[f32]>::as_ptr),
        c.map(<[f32]>::as_ptr),
        b.map(<[f32]>::as_ptr),
    );
    // SAFETY: `out` holds M rows of k (checked by the caller).
    let op: [*mut f32; M] = std::array::from_fn(|i| unsafe { out.as_mut_ptr().add(i * k) });
    let mut p = 0;
    while p < body {
        for (v, acc) in acc.iter_mut().enumerate().take(per) {
            let q = p + v * S::LANES;
            // SAFETY (loads and stores): q + S::LANES <= body <= k, the length of every row,
            // column and gradient row (checked by the caller).
            unsafe {
                let x: [S::F; R] = std::array::from_fn(|r| s.load(ap[r].add(q)));
                for (j, col) in cp.iter().enumerate() {
                    let w = s.load(col.add(q));
                    for (acc, &x) in acc.iter_mut().zip(&x) {
                        acc[j] = s.add(acc[j], s.mul(x, w));
                    }
                }
                let bv = bp.map(|row| s.load(row.add(q)));
                for (c, &o) in coef.iter().zip(&op) {
                    axpy4_at(s, c, &bv, o.add(q));
                }
            }
        }
        p += LANES;
    }
    for (r, dots) in dots.into_iter().enumerate() {
        for j in 0..N {
            let mut w = [0.0f32; LANES];
            for (v, acc) in acc.iter().enumerate().take(per) {
                // SAFETY: `w` holds LANES = per · S::LANES floats.
                unsafe { s.store(w.as_mut_ptr().add(v * S::LANES), acc[r][j]) };
            }
            dots[j] = finish_lanes(w, &a[r][body..], &c[j][body..]);
        }
    }
    // The gradient's columns past the last whole block of 32.
    axpy4_columns(coef, b, out, k, body);
}

/// # Safety
/// The CPU must support AVX2; lengths as [`dots_and_axpy4`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_and_axpy4_avx2<const R: usize>(
    s: simd::Avx2,
    a: [&[f32]; R],
    cols: &[Vec<f32>],
    dots: [&mut [f32]; R],
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
) {
    dots_and_axpy4_n(s, a, cols, dots, coef, b, out)
}

/// # Safety
/// The CPU must support AVX-512F; lengths as [`dots_and_axpy4`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_and_axpy4_avx512<const R: usize>(
    s: simd::Avx512,
    a: [&[f32]; R],
    cols: &[Vec<f32>],
    dots: [&mut [f32]; R],
    coef: &[[f32; 4]],
    b: [&[f32]; 4],
    out: &mut [f32],
) {
    dots_and_axpy4_n(s, a, cols, dots, coef, b, out)
}

/// `out (m × width) += A(:, rows) · B[rows, c0..c0 + width]`, four rows of B at a time, then
/// the remaining rows one by one: the fixed association of the thin-left product.
#[allow(clippy::too_many_arguments)]
pub(super) fn accumulate_rows(
    a_at: &impl Fn(usize, usize) -> f32,
    m: usize,
    rows: std::ops::Range<usize>,
    b: &[f32],
    n: usize,
    c0: usize,
    width: usize,
    out: &mut [f32],
) {
    let row = |p: usize| &b[p * n + c0..p * n + c0 + width];
    let mut p = rows.start;
    let mut coef4 = [[0.0f32; 4]; THIN];
    while p + 4 <= rows.end {
        for (i, c) in coef4.iter_mut().enumerate().take(m) {
            *c = [a_at(i, p), a_at(i, p + 1), a_at(i, p + 2), a_at(i, p + 3)];
        }
        axpy4_rows(
            &coef4[..m],
            [row(p), row(p + 1), row(p + 2), row(p + 3)],
            out,
            width,
        );
        p += 4;
    }
    let mut coef = [0.0f32; THIN];
    while p < rows.end {
        for (i, c) in coef.iter_mut().enumerate().take(m) {
            *c = a_at(i, p);
        }
        axpy_rows(&coef[..m], row(p), out, width);
        p += 1;
    }
}

fn axpy_rows(coef: &[f32], b_row: &[f32], out: &mut [f32], width: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 support was detected at run time.
        return unsafe { avx2::axpy_rows(coef, b_row, out, width) };
    }
    axpy_rows_generic(coef, b_row, out, width)
}

/// Whether `op(A) · op(B)` with an untransposed A takes the dot-product path.
fn dot_path_covers(k: usize, n: usize) -> bool {
    n <= THIN || (n <= DOTS_MAX_COLS && k >= DOTS_MIN_K)
}

/// The widest output the dot-product path takes at depth `k`: it computes each column with
/// the same operations whatever the width, so products up to this width stack exactly.
pub(super) fn dot_path_width(k: usize) -> usize {
    if k >= DOTS_MIN_K {
        DOTS_MAX_COLS
    } else {
        THIN
    }
}

/// `c = A · [cols]` (`m × n`, A row-major `m × k`) by blocks of `R` rows (the last block
/// shorter), each block by groups of [`THIN`] columns.
fn dot_row_blocks<const R: usize>(
    a: &[f32],
    k: usize,
    n: usize,
    cols: &[Vec<f32>],
    c: &mut [f32],
    parallel: bool,
) {
    let block = |(bi, out): (usize, &mut [f32])| {
        let i0 = R * bi;
        if out.len() == R * n {
            let rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i0 + r) * k..(i0 + r + 1) * k]);
            for (g, group) in cols.chunks(THIN).enumerate() {
                let j0 = g * THIN;
                let j1 = j0 + group.len();
                let mut rest = &mut *out;
                let outs: [&mut [f32]; R] = std::array::from_fn(|_| {
                    let (row, tail) = std::mem::take(&mut rest).split_at_mut(n);
                    rest = tail;
                    &mut row[j0..j1]
                });
                row_block_dots(rows, group, outs);
            }
        } else {
            for (r, out) in out.chunks_mut(n).enumerate() {
                let row = &a[(i0 + r) * k..(i0 + r + 1) * k];
                for (group, o) in cols.chunks(THIN).zip(out.chunks_mut(THIN)) {
                    row_dots(row, group, o);
                }
            }
        }
    };
    if parallel {
        c.par_chunks_mut(R * n).enumerate().for_each(block);
    } else {
        c.chunks_mut(R * n).enumerate().for_each(block);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    lhs_t: bool,
    rhs_t: bool,
) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    // The unpacked kernels accumulate into zeros; the packed one and `matrixmultiply` (with
    // β = 0, which never reads C) overwrite every element, so they take a pooled buffer.
    let zeros = || vec![0.0f32; m * n];
    let macs = m * n * k;
    // Strides of op(A) (m×k) and op(B) (k×n) in their stored buffers.
    let (rsa, csa) = if lhs_t { (1, m) } else { (k, 1) };
    let (rsb, csb) = if rhs_t { (1, k) } else { (n, 1) };

    if !lhs_t && dot_path_covers(k, n) {
        // Columns of op(B) as contiguous vectors (k·n values: small). Each row of A is read
        // once from memory and stays in L1 while its dots with every group of THIN columns
        // are taken; the dot of one row with one column is the same sequence of operations
        // whatever the group, so every element has the bits the one-group path gives it.
        let cols: Vec<Vec<f32>> = (0..n)
            .map(|j| (0..k).map(|p| b[p * rsb + j * csb]).collect())
            .collect();
        // Blocks of rows: each column load serves every row of the block (see
        // `row_block_dots`). On AVX-512 as many rows as the columns leave registers for
        // (a wide output, the snapshot evaluation, goes by groups of four columns: three
        // rows); elsewhere pairs for a thin output, three rows for a wide one.
        let mut c = zeros();
        let par = macs >= PAR_MIN_MACS;
        let wide_regs = super::has_avx512();
        match n {
            1 if wide_regs => dot_row_blocks::<8>(a, k, n, &cols, &mut c, par),
            2 if wide_regs => dot_row_blocks::<6>(a, k, n, &cols, &mut c, par),
            3 if wide_regs => dot_row_blocks::<4>(a, k, n, &cols, &mut c, par),
            1..=THIN if !wide_regs => dot_row_blocks::<2>(a, k, n, &cols, &mut c, par),
            _ => dot_row_blocks::<3>(a, k, n, &cols, &mut c, par),
        }
        return c;
    }

    if m <= THIN && !rhs_t {
        let mut c = zeros();
        // C[i, :] = Σ_p A(i, p) · B[p, :], accumulated over p in order, split by columns.
        const COLS: usize = 256;
        let a_at = |i: usize, p: usize| a[i * rsa + p * csa];
        let block = |c0: usize, width: usize, out: &mut [f32]| {
            // out is m × width, row stride width.
            accumulate_rows(&a_at, m, 0..k, b, n, c0, width, out);
        };
        if macs >= PAR_MIN_MACS && m * n <= ROW_SPLIT_MAX_OUT {
            // B streams row after row (prefetch-friendly) into a per-chunk copy of the small
            // output; the fixed chunks of K_CHUNK rows are then added in order, so the
            // result does not depend on the thread count.
            const K_CHUNK: usize = 64;
            let partials: Vec<Vec<f32>> = (0..k.div_ceil(K_CHUNK))
                .into_par_iter()
                .map(|ci| {
                    let mut out = vec![0.0f32; m * n];
                    let rows = ci * K_CHUNK..((ci + 1) * K_CHUNK).min(k);
                    accumulate_rows(&a_at, m, rows, b, n, 0, n, &mut out);
                    out
                })
                .collect();
            for part in &partials {
                for (o, &v) in c.iter_mut().zip(part) {
                    *o += v;
                }
            }
            return c;
        }
        let blocks: Vec<(usize, Vec<f32>)> = if macs >= PAR_MIN_MACS {
            (0..n.div_ceil(COLS))
                .into_par_iter()
                .map(|bi| {
                    let c0 = bi * COLS;
                    let w = COLS.min(n - c0);
                    let mut out = vec![0.0f32; m * w];
                    block(c0, w, &mut out);
                    (c0, out)
                })
                .collect()
        } else {
            let mut out = vec![0.0f32; m * n];
            block(0, n, &mut out);
            vec![(0, out)]
        };
        place_column_blocks(&mut c, n, blocks);
        return c;
    }

    if macs < PAR_MIN_MACS && (k <= small_gemm::SMALL_K_MAX || m <= small_gemm::SMALL_M_MAX) {
        // One small dimension: the unpacked kernels (a packed GEMM would copy the large
        // operand for every call, about as costly as the product itself).
        let mut c = zeros();
        let threads = rayon::current_num_threads();
        if k <= small_gemm::SMALL_K_MAX {
            small_gemm::small_k(a, rsa, csa, b, rsb, csb, m, k, n, &mut c);
        } else if macs >= SMALL_PAR_MIN_MACS && threads > 1 && n >= 2 * COL_BLOCK {
            // A few rows against a wide B (a 20-example batch through a 300-wide layer): one
            // block of columns of op(B) per thread, each into its own buffer. Every element's
            // sum depends on `k` alone, not on its block (see `small_gemm`), so the split
            // changes no bit.
            in_column_blocks(&mut c, m, n, threads, |c0, cols, out| {
                let b = &b[c0 * csb..];
                small_gemm::small_m(a, rsa, csa, b, rsb, csb, m, k, cols, out);
            });
        } else {
            small_gemm::small_m(a, rsa, csa, b, rsb, csb, m, k, n, &mut c);
        }
        return c;
    }

    let parallel = macs >= PAR_MIN_MACS;
    let a_op = packed::Strided {
        data: a,
        rs: rsa,
        cs: csa,
    };
    let b_op = packed::Strided {
        data: b,
        rs: rsb,
        cs: csb,
    };
    if let Some(c) = packed::product(a_op, b_op, (m, k, n), parallel) {
        return c;
    }
    // Every branch below writes every element: a block of rows or the whole product through
    // `sgemm` with β = 0, or blocks of columns copied into place.
    let mut c = super::pool::take_for_overwrite(m * n);
    // C[r0.., c0..] (rows × cols, row stride ldc) of the product.
    let sgemm_block =
        |(r0, rows): (usize, usize), (c0, cols): (usize, usize), out: &mut [f32], ldc: usize| {
            // SAFETY: the pointers cover op(A) rows r0..r0+rows (m×k with strides rsa, csa),
            // op(B) columns c0..c0+cols (k×n with rsb, csb) and `out` (rows×cols, row stride
            // ldc), all in bounds of their slices; matrixmultiply reads A and B and writes only
            // `out`.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    cols,
                    1.0,
                    a.as_ptr().add(r0 * rsa),
                    rsa as isize,
                    csa as isize,
                    b.as_ptr().add(c0 * csb),
                    rsb as isize,
                    csb as isize,
                    0.0,
                    out.as_mut_ptr(),
                    ldc as isize,
                    1,
                )
            }
        };
    // The splits cannot change any bit of the result: matrixmultiply computes every element
    // of C with the same sequence of operations wherever its row or column falls (the
    // k-blocking depends on k alone; edge tiles run the same kernel).
    let threads = rayon::current_num_threads();
    if parallel && m > ROW_BLOCK {
        // One block of rows per thread: each block packs all of op(B), so fewer, larger
        // blocks pack less.
        let blocks = threads.clamp(1, m / ROW_BLOCK);
        let rows_per_block = m.div_ceil(blocks);
        c.par_chunks_mut(rows_per_block * n)
            .enumerate()
            .for_each(|(bi, out)| {
                let rows = (bi * rows_per_block, out.len() / n);
                sgemm_block(rows, (0, n), out, n)
            });
    } else if parallel && threads > 1 && n >= 2 * COL_BLOCK {
        // Few rows (a batch of 64): blocks of columns instead, each packing its own part of
        // op(B), computed into its own buffer and copied into place.
        in_column_blocks(&mut c, m, n, threads, |c0, cols, out| {
            sgemm_block((0, m), (c0, cols), out, cols)
        });
    } else {
        sgemm_block((0, m), (0, n), &mut c, n);
    }
    c
}

/// `c` (`m × n`) by blocks of whole columns, one per thread and at least [`COL_BLOCK`] wide:
/// `block(c0, cols, out)` writes columns `c0..c0 + cols` into its own `m × cols` buffer, which
/// is then copied into place.
fn in_column_blocks(
    c: &mut [f32],
    m: usize,
    n: usize,
    threads: usize,
    block: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let width = n.div_ceil(threads.min(n / COL_BLOCK)).next_multiple_of(8);
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(width))
        .into_par_iter()
        .map(|bi| {
            let (c0, cols) = (bi * width, width.min(n - bi * width));
            let mut out = vec![0.0f32; m * cols];
            block(c0, cols, &mut out);
            (c0, out)
        })
        .collect();
    place_column_blocks(c, n, blocks);
}

/// Copies blocks of whole columns, each given as its first column and its values row-major,
/// into `c` (row stride `n`).
fn place_column_blocks(c: &mut [f32], n: usize, blocks: Vec<(usize, Vec<f32>)>) {
    let m = c.len() / n;
    for (c0, out) in blocks {
        let width = out.len() / m;
        for (row, part) in c.chunks_mut(n).zip(out.chunks(width)) {
            row[c0..c0 + width].copy_from_slice(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += x as f64 * y as f64;
                }
            }
        }
        c
    }

    #[test]
    fn vector_kernels_give_the_portable_bits() {
        let mut rng = crate::rng::Rng::new(9);
        let width = 1003;
        let rows: Vec<Vec<f32>> = (0..4).map(|_| rng.normal_vec(width)).collect();
        let coef = [[0.3f32, -1.7, 2.2, 0.01], [1.1, 0.5, -0.25, 3.0]];
        let start = rng.normal_vec(2 * width);
        let (mut fast, mut portable) = (start.clone(), start.clone());
        let b = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
        axpy4_rows(&coef, b, &mut fast, width);
        axpy4_rows_generic(&coef, b, &mut portable, width);
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&fast, &portable));
        // Each instruction set this CPU has, not only the one `axpy4_rows` picks.
        #[cfg(target_arch = "x86_64")]
        for (isa, out) in [
            (
                "AVX2",
                simd::Avx2::new().map(|s| {
                    let mut o = start.clone();
                    // SAFETY: the token exists, so the CPU has AVX2.
                    unsafe { axpy4_rows_avx2(s, &coef, b, &mut o, width) };
                    o
                }),
            ),
            (
                "AVX-512",
                simd::Avx512::new().map(|s| {
                    let mut o = start.clone();
                    // SAFETY: the token exists, so the CPU has AVX-512F.
                    unsafe { axpy4_rows_avx512(s, &coef, b, &mut o, width) };
                    o
                }),
            ),
        ] {
            if let Some(out) = out {
                assert!(same(&out, &portable), "{isa}");
            }
        }
        let cols: Vec<Vec<f32>> = (0..3).map(|_| rng.normal_vec(width)).collect();
        let (mut d_fast, mut d_portable) = ([0.0f32; 3], [0.0f32; 3]);
        row_dots(&rows[0], &cols, &mut d_fast);
        row_dots_generic(&rows[0], &cols, &mut d_portable);
        assert_eq!(d_fast.map(f32::to_bits), d_portable.map(f32::to_bits));
        let cols: Vec<Vec<f32>> = (0..4).map(|_| rng.normal_vec(width)).collect();
        let portable = |r: usize, n: usize| {
            let mut p = [0.0f32; 4];
            row_dots_generic(&rows[r], &cols[..n], &mut p);
            p.map(f32::to_bits)
        };
        for n in 1..=4 {
            let (mut r0, mut r1) = ([0.0f32; 4], [0.0f32; 4]);
            row_block_dots([&rows[1], &rows[2]], &cols[..n], [&mut r0, &mut r1]);
            assert_eq!(r0.map(f32::to_bits), portable(1, n));
            assert_eq!(r1.map(f32::to_bits), portable(2, n));
            let mut r = [[0.0f32; 4]; 3];
            let [o0, o1, o2] = &mut r;
            row_block_dots([&rows[0], &rows[3], &rows[1]], &cols[..n], [o0, o1, o2]);
            for (got, row) in r.iter().zip([0, 3, 1]) {
                assert_eq!(got.map(f32::to_bits), portable(row, n));
            }
        }
    }

    /// Thin products (`n ≤ 4`) by blocks of 8, 6, 4, 3 or 2 rows, whichever the instruction
    /// set and `n` pick, with a last block shorter and a tail past the blocks of 32: every
    /// row has the portable dot's bits. `row_block_dots` at each block size the AVX-512
    /// path uses, and at one row more than its registers hold (the portable fallback).
    #[test]
    fn thin_products_give_every_row_its_dot_bits() {
        let mut rng = crate::rng::Rng::new(21);
        let (m, k) = (29, 1003);
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(THIN * k); // rows: the columns of op(B)
        let cols: Vec<Vec<f32>> = b.chunks(k).map(<[f32]>::to_vec).collect();
        let row = |i: usize| &a[i * k..(i + 1) * k];
        let portable = |i: usize, n: usize| {
            let mut p = [0.0f32; THIN];
            row_dots_generic(row(i), &cols[..n], &mut p);
            p[..n].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        for n in 1..=THIN {
            let c = matmul(&a, &b[..n * k], m, k, n, false, true);
            for i in 0..m {
                let got: Vec<u32> = c[i * n..(i + 1) * n].iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, portable(i, n), "n = {n}, row {i}");
            }
        }
        fn block<const R: usize>(rows: [&[f32]; R], cols: &[Vec<f32>]) -> Vec<Vec<u32>> {
            let mut out = [[0.0f32; THIN]; R];
            let outs = out.each_mut().map(|o| &mut o[..]);
            row_block_dots(rows, cols, outs);
            out.iter()
                .map(|o| o[..cols.len()].iter().map(|v| v.to_bits()).collect())
                .collect()
        }
        // Rows 1, 4, 7, …: not adjacent in A.
        let spread = |r: usize| row(3 * r + 1);
        for n in 1..=THIN {
            let want = |r: usize| portable(3 * r + 1, n);
            let check = |got: Vec<Vec<u32>>| {
                for (r, g) in got.into_iter().enumerate() {
                    assert_eq!(g, want(r), "{n} columns, block row {r}");
                }
            };
            let cols = &cols[..n];
            check(block::<3>(std::array::from_fn(spread), cols));
            check(block::<4>(std::array::from_fn(spread), cols));
            check(block::<5>(std::array::from_fn(spread), cols));
            check(block::<6>(std::array::from_fn(spread), cols));
            check(block::<8>(std::array::from_fn(spread), cols));
            check(block::<9>(std::array::from_fn(spread), cols));
        }
    }

    /// The fused kernel of the linear + CE pass gives each of its two jobs the bits of that
    /// job's own kernel, on the portable lanes and on every instruction set this CPU has, at
    /// lengths with and without a tail past the blocks of 32 and 16.
    #[test]
    fn dots_beside_gradient_rows_have_the_bits_of_each_alone() {
        let mut rng = crate::rng::Rng::new(12);
        for k in [1usize, 31, 32, 47, 64, 1003] {
            let rows: Vec<Vec<f32>> = (0..8).map(|_| rng.normal_vec(k)).collect();
            let cols: Vec<Vec<f32>> = (0..4).map(|_| rng.normal_vec(k)).collect();
            let b = std::array::from_fn(|t| &rows[4 + t][..]);
            for (n, m) in [(1, 1), (2, 2), (3, 1), (4, 4), (4, 2)] {
                let coef: Vec<[f32; 4]> = (0..m)
                    .map(|_| std::array::from_fn(|_| rng.normal()))
                    .collect();
                let start = rng.normal_vec(m * k);
                let mut want_out = start.clone();
                axpy4_rows_generic(&coef, b, &mut want_out, k);
                let want_dot = |r: usize| {
                    let mut p = [0.0f32; 4];
                    row_dots_generic(&rows[r], &cols[..n], &mut p);
                    p.map(f32::to_bits)
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                type Run<'a> = &'a dyn Fn([&mut [f32]; 4], &mut [f32]);
                let check = |isa: &str, run: Run| {
                    let mut d = [[0.0f32; 4]; 4];
                    let mut out = start.clone();
                    let [d0, d1, d2, d3] = &mut d;
                    run([d0, d1, d2, d3], &mut out);
                    assert_eq!(bits(&out), bits(&want_out), "{isa}: gradient, k {k}, m {m}");
                    for (r, got) in d.iter().enumerate() {
                        assert_eq!(got.map(f32::to_bits), want_dot(r), "{isa}: dot {r}, k {k}");
                    }
                };
                let a4: [&[f32]; 4] = std::array::from_fn(|r| &rows[r][..]);
                let cols = &cols[..n];
                check("portable", &|[d0, d1, d2, d3], out| {
                    dots_and_axpy4_n(simd::Lanes8, a4, cols, [d0, d1, d2, d3], &coef, b, out)
                });
                check("chosen, two rows", &|[d0, d1, d2, d3], out| {
                    dots_and_axpy4([a4[0], a4[1]], cols, [d0, d1], &coef, b, out);
                    row_dots_generic(a4[2], cols, d2);
                    row_dots_generic(a4[3], cols, d3);
                });
                #[cfg(target_arch = "x86_64")]
                {
                    if let Some(s) = simd::Avx2::new() {
                        check("AVX2", &|d, out| {
                            // SAFETY: the token exists, so the CPU has AVX2.
                            unsafe { dots_and_axpy4_avx2(s, a4, cols, d, &coef, b, out) }
                        });
                    }
                    if let Some(s) = simd::Avx512::new() {
                        check("AVX-512", &|d, out| {
                            // SAFETY: the token exists, so the CPU has AVX-512F.
                            unsafe { dots_and_axpy4_avx512(s, a4, cols, d, &coef, b, out) }
                        });
                    }
                }
            }
        }
    }

    #[test]
    fn wide_dot_products_give_each_column_its_thin_path_bits() {
        let mut rng = crate::rng::Rng::new(4);
        // Seven rows: two blocks of three and a last row alone.
        let (m, k, n) = (7, 1800, 34);
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(n * k); // n × k: rows are the columns of op(B)
        let wide = matmul(&a, &b, m, k, n, false, true);
        for j0 in (0..n).step_by(2) {
            let thin = matmul(&a, &b[j0 * k..(j0 + 2) * k], m, k, 2, false, true);
            for i in 0..m {
                for dj in 0..2 {
                    assert_eq!(wide[i * n + j0 + dj].to_bits(), thin[i * 2 + dj].to_bits());
                }
            }
        }
    }

    /// A product with too few rows to split by rows is split by columns on several threads,
    /// with the bits of the unsplit product (one thread): on `matrixmultiply` (64 and 40 rows)
    /// and on the small-`m` kernels (20 and 32 rows, 1–2 M multiply-adds, both layouts of B).
    #[test]
    fn column_blocks_give_the_bits_of_one_block() {
        let mut rng = crate::rng::Rng::new(5);
        for (m, k, n, rhs_t) in [
            (64, 390, 392, false),
            (64, 392, 390, true),
            (40, 300, 777, false),
            (20, 300, 300, true),
            (20, 300, 300, false),
            (32, 200, 251, true),
        ] {
            let (a, b) = (rng.normal_vec(m * k), rng.normal_vec(k * n));
            let on = |threads: usize| {
                let pool = super::super::test_pool(threads);
                pool.install(|| matmul(&a, &b, m, k, n, false, rhs_t))
            };
            let one: Vec<u32> = on(1).iter().map(|x| x.to_bits()).collect();
            for threads in [2, 3] {
                let split: Vec<u32> = on(threads).iter().map(|x| x.to_bits()).collect();
                assert!(split == one, "{m}x{k}x{n} rhs_t={rhs_t}, {threads} threads");
            }
            let want = naive(&a, &b, m, k, n, false, rhs_t);
            for (got, want) in on(2).iter().zip(&want) {
                assert!(
                    (*got as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
        }
    }

    /// The `matrixmultiply` path writes every element of a reused (pooled) output holding
    /// old values, by blocks of rows and by blocks of columns, on 1 to 3 threads.
    #[test]
    fn matrixmultiply_products_overwrite_a_dirty_pooled_output() {
        let mut rng = crate::rng::Rng::new(13);
        // Below the packed kernel's side, outputs the pool keeps: 600 rows go by blocks of
        // rows, 40 by blocks of columns.
        for (m, k, n) in [(600, 300, 450), (40, 300, 7000)] {
            assert!(m * n >= super::super::pool::MIN_LEN);
            let (a, b) = (rng.normal_vec(m * k), rng.normal_vec(k * n));
            let want = naive(&a, &b, m, k, n, false, true);
            let mut first = None;
            for threads in 1..=3 {
                let pool = super::super::test_pool(threads);
                super::super::pool::give(vec![f32::NAN; m * n]);
                let got = pool.install(|| matmul(&a, &b, m, k, n, false, true));
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(),
                        "{m}x{k}x{n}, {threads} threads: {g} vs {w}"
                    );
                }
                let bits: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                assert_eq!(
                    *first.get_or_insert(bits.clone()),
                    bits,
                    "{m}x{k}x{n}, {threads}"
                );
            }
        }
    }

    #[test]
    fn all_paths_match_naive() {
        let mut rng = crate::rng::Rng::new(1);
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 5, 3),
            (1000, 37, 2),
            (2, 1000, 300),
            (65, 70, 66),
            (300, 200, 150),
            (3, 9, 4),
            (33, 600, 14),
            (9, 1800, 32),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = rng.normal_vec(m * k);
                    let b = rng.normal_vec(k * n);
                    let got = matmul(&a, &b, m, k, n, ta, tb);
                    let want = naive(&a, &b, m, k, n, ta, tb);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(),
                            "m{m} k{k} n{n} ta{ta} tb{tb}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
