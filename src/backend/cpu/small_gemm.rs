//! Products with one small dimension (`m ≤ 32` or `k ≤ 32`), without packing the large
//! operand.
//!
//! `C (m×n, row-major, overwritten) = op(A) · op(B)`, where `op(A)` is `m×k` read through the
//! strides `(rsa, csa)` and `op(B)` is `k×n` read through `(rsb, csb)`; a transposed operand is
//! swapped strides, never a copy.
//!
//! A packed GEMM (matrixmultiply) first copies both operands into its own panel layout. With
//! `m ≈ 20` a product has only `20·k·n` multiply-adds to pay for copying the `k·n` operand,
//! so the copy costs about as much as the product. The kernels here read the operands where
//! they lie, in three register-blocked forms:
//!
//! - **dots** (`csa = 1`, `rsb = 1`: rows of `op(A)` and columns of `op(B)` contiguous along
//!   `k`, e.g. `H · Wᵀ` with `W` stored `n×k`): `C[i, j]` is the dot of row `i` of A with
//!   column `j` of B. A block of [`DOT_ROWS`] rows of A by [`DOT_COLS`] columns of B keeps 12
//!   vector accumulators; per 8 values of `k` it loads 4 + 3 vectors for 12 multiply-adds,
//!   and folds the 8 lanes of each accumulator once at the end.
//! - **rows** (`csb = 1`: rows of `op(B)` contiguous along `n`, e.g. `dH · W` or `dZᵀ · H`):
//!   `C[i, :] = Σ_p A(i, p) · B[p, :]`. A block of [`ROW_BLOCK`] output rows by [`ROW_COLS`]
//!   columns stays in 12 vector registers for the whole `k` loop; per `p` it loads 2 vectors
//!   of B and broadcasts 6 values of A for 12 multiply-adds, and writes C once. (A 24-column
//!   block measured 1.6× slower: its B rows span three cache lines instead of two.)
//! - **panel rows** ([`small_k`] only, `k ≤ SMALL_K_MAX` and `csb ≠ 1`): each slice of
//!   [`ROW_COLS`] columns of `op(B)` (`k × 16`, at most 2 KiB) is transposed into a panel in
//!   L1 and the rows kernel runs every row block against it. This copies `k·n` values once —
//!   what the dot form loads anyway — and saves the dot form's lane folds, which for
//!   `k ≤ 32` cost as much as the multiply-adds.
//!
//! Any other layout takes a plain strided loop (correct, not fast).
//!
//! Memory traffic. [`small_m`] walks the large operand B once, block of columns by block, and
//! runs all the row blocks of A against a block while it sits in L1; A (`m·k` values, 24 KiB
//! for 20×300) is re-read from L1/L2 per block of B. [`small_k`] keeps the small `op(B)`
//! (`k·n` values) in L1 and writes the large output C once, without reading it.
//!
//! Summation order. Each call runs on the calling thread, and the order of every output
//! element depends on the form (chosen from the strides and on `k ≤ SMALL_K_MAX`) and `k`
//! alone — not on where the element falls in a block (tails run the same kernels with fewer
//! rows, or masked lanes that add exact zeros), nor on threads or timing:
//!
//! - dots: lane `l` of 8 accumulates the products with `p ≡ l (mod 8)` in increasing `p`, then
//!   the lanes fold as `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`;
//! - rows, panel rows and strided: one accumulator per element, starting at 0, adding the
//!   products in increasing `p`.
//!
//! The x86_64 AVX2+FMA path fuses each multiply-add; the portable path rounds the product,
//! then adds (its rows, panel-rows and strided loops give identical bits). Which path runs is
//! decided once per process from the CPU's features.

/// Largest `m` that [`small_m`] is meant for: beyond it the rows of A no longer stay in L1
/// while a block of B is swept.
pub(super) const SMALL_M_MAX: usize = 32;
/// Largest `k` that [`small_k`] is meant for (the panel of `op(B)` is `SMALL_K_MAX × 16`).
pub(super) const SMALL_K_MAX: usize = 32;

/// f32 lanes of an AVX2 vector, and accumulators of the portable dot.
const LANES: usize = 8;
/// Rows of A per dot block: 4×3 accumulators + 3 B vectors + 1 A vector fill the 16 AVX2
/// registers (a 3×4 block needs 17 and spills).
const DOT_ROWS: usize = 4;
/// Columns of `op(B)` per dot block.
const DOT_COLS: usize = 3;
/// Output rows per rows block: 6×2 accumulators + 2 B vectors + 1 broadcast (+ 1 lane mask
/// for a column tail) fit the 16 AVX2 registers.
const ROW_BLOCK: usize = 6;
/// Vectors of [`LANES`] output columns per rows block.
const ROW_VECS: usize = 2;
/// Output columns per rows block.
const ROW_COLS: usize = ROW_VECS * LANES;

/// Which blocks the outer loop walks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outer {
    /// Blocks of columns of `op(B)` outside, row blocks of A inside: each block of the large
    /// B is read from memory once ([`small_m`]).
    Columns,
    /// Row blocks outside: the large output is written in row order while the small `op(B)`
    /// stays in L1 ([`small_k`]).
    Rows,
}

/// `op(A)` is `m×k` with strides `(rsa, csa)`, `op(B)` is `k×n` with strides `(rsb, csb)`.
#[derive(Clone, Copy)]
struct Product<'a> {
    a: &'a [f32],
    rsa: usize,
    csa: usize,
    b: &'a [f32],
    rsb: usize,
    csb: usize,
    m: usize,
    k: usize,
    n: usize,
}

/// `C = op(A) · op(B)` for a small `m` (≤ [`SMALL_M_MAX`]); `c` is `m×n` row-major and is
/// overwritten. The large operand B is read block by block, never packed. See the module docs
/// for the order of the sums.
///
/// # Panics
/// If `c` holds fewer than `m·n` values or A or B is too short for its strides (a caller bug:
/// the kernels read through raw pointers, so the bounds are checked once up front).
#[allow(clippy::too_many_arguments)]
pub(super) fn small_m(
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    m: usize,
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    let prod = Product {
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        m,
        k,
        n,
    };
    run(prod, c, Outer::Columns, super::has_avx2());
}

/// `C = op(A) · op(B)` for a small `k` (≤ [`SMALL_K_MAX`]); `c` is `m×n` row-major and is
/// overwritten. `op(B)` stays in L1 and C is written once. See the module docs for the order
/// of the sums.
///
/// # Panics
/// As [`small_m`].
#[allow(clippy::too_many_arguments)]
pub(super) fn small_k(
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    m: usize,
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    let prod = Product {
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        m,
        k,
        n,
    };
    run(prod, c, Outer::Rows, super::has_avx2());
}

/// One past the largest index a `rows×cols` view with strides `(rs, cs)` touches (both ≥ 1).
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// Checks the bounds, then picks the form (see the module docs); `simd` selects the AVX2+FMA
/// kernels and may only be true when the CPU has them.
fn run(prod: Product<'_>, c: &mut [f32], outer: Outer, simd: bool) {
    let Product {
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        m,
        k,
        n,
    } = prod;
    assert!(
        c.len() >= m * n,
        "small_gemm: C holds {} values, fewer than {m}×{n}",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if k == 0 {
        c.fill(0.0);
        return;
    }
    // The vector kernels index through raw pointers: these checks put every access in bounds.
    assert!(
        a.len() >= extent(m, k, rsa, csa),
        "small_gemm: A holds {} values, too few for {m}×{k} with strides ({rsa}, {csa})",
        a.len()
    );
    assert!(
        b.len() >= extent(k, n, rsb, csb),
        "small_gemm: B holds {} values, too few for {k}×{n} with strides ({rsb}, {csb})",
        b.len()
    );
    if outer == Outer::Rows && csb == 1 {
        rows(prod, c, outer, simd);
    } else if outer == Outer::Rows && k <= SMALL_K_MAX {
        panel_rows(prod, c, simd);
    } else if csa == 1 && rsb == 1 {
        dots(prod, c, outer, simd);
    } else if csb == 1 {
        rows(prod, c, outer, simd);
    } else {
        strided(prod, c);
    }
}

/// Calls `f(i0, rows, j0, cols)` for every block of the `m×n` output, in the order `outer`
/// asks for.
fn for_blocks(
    m: usize,
    n: usize,
    block_rows: usize,
    block_cols: usize,
    outer: Outer,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let row_blocks = (0..m)
        .step_by(block_rows)
        .map(|i0| (i0, block_rows.min(m - i0)));
    let col_blocks = (0..n)
        .step_by(block_cols)
        .map(|j0| (j0, block_cols.min(n - j0)));
    match outer {
        Outer::Columns => {
            for (j0, cols) in col_blocks {
                for (i0, rows) in row_blocks.clone() {
                    f(i0, rows, j0, cols);
                }
            }
        }
        Outer::Rows => {
            for (i0, rows) in row_blocks {
                for (j0, cols) in col_blocks.clone() {
                    f(i0, rows, j0, cols);
                }
            }
        }
    }
}

/// Dots form (`csa = 1`, `rsb = 1`).
fn dots(prod: Product<'_>, c: &mut [f32], outer: Outer, simd: bool) {
    let Product {
        a,
        rsa,
        b,
        csb,
        m,
        k,
        n,
        ..
    } = prod;
    for_blocks(m, n, DOT_ROWS, DOT_COLS, outer, |i0, rows, j0, cols| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2 and FMA were detected (`simd`); `run` checked that A holds rows
            // i0..i0+rows, k contiguous values each from i·rsa, and B columns j0..j0+cols, k
            // contiguous values each from j·csb; C is m×n with i0+rows ≤ m, j0+cols ≤ n.
            unsafe {
                avx2::dot_block(
                    a.as_ptr().add(i0 * rsa),
                    rsa,
                    b.as_ptr().add(j0 * csb),
                    csb,
                    k,
                    c.as_mut_ptr().add(i0 * n + j0),
                    n,
                    rows,
                    cols,
                );
            }
            return;
        }
        for i in i0..i0 + rows {
            let a_row = &a[i * rsa..i * rsa + k];
            for j in j0..j0 + cols {
                c[i * n + j] = dot_lanes(a_row, &b[j * csb..j * csb + k]);
            }
        }
    });
}

/// Portable dot with the lane split and fold of the vector path.
fn dot_lanes(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut ys = y.chunks_exact(LANES);
    for (xc, yc) in (&mut xs).zip(&mut ys) {
        for l in 0..LANES {
            acc[l] += xc[l] * yc[l];
        }
    }
    for (l, (&xv, &yv)) in xs.remainder().iter().zip(ys.remainder()).enumerate() {
        acc[l] += xv * yv;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Rows form (`csb = 1`).
fn rows(prod: Product<'_>, c: &mut [f32], outer: Outer, simd: bool) {
    let Product {
        a,
        rsa,
        csa,
        b,
        rsb,
        m,
        k,
        n,
        ..
    } = prod;
    #[cfg(target_arch = "x86_64")]
    if simd {
        for_blocks(m, n, ROW_BLOCK, ROW_COLS, outer, |i0, rows, j0, cols| {
            // SAFETY: AVX2 and FMA were detected (`simd`); `run` checked that A holds every
            // (i, p), i < m, p < k, and B every (p, j), p < k, j < n (csb = 1); C is m×n
            // with i0+rows ≤ m, j0+cols ≤ n.
            unsafe {
                avx2::rows_block(
                    a.as_ptr().add(i0 * rsa),
                    rsa,
                    csa,
                    b.as_ptr().add(j0),
                    rsb,
                    k,
                    c.as_mut_ptr().add(i0 * n + j0),
                    n,
                    rows,
                    cols,
                );
            }
        });
        return;
    }
    let _ = (simd, outer, m);
    // One output row at a time: it stays in L1 while the k rows of B stream past.
    for (i, c_row) in c.chunks_exact_mut(n).enumerate() {
        c_row.fill(0.0);
        for p in 0..k {
            let s = a[i * rsa + p * csa];
            for (o, &v) in c_row.iter_mut().zip(&b[p * rsb..p * rsb + n]) {
                *o += s * v;
            }
        }
    }
}

/// Panel-rows form ([`small_k`] with `k ≤ SMALL_K_MAX`, `csb ≠ 1`).
fn panel_rows(prod: Product<'_>, c: &mut [f32], simd: bool) {
    let Product {
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        m,
        k,
        n,
    } = prod;
    let mut panel = [[0.0f32; ROW_COLS]; SMALL_K_MAX];
    for j0 in (0..n).step_by(ROW_COLS) {
        let cols = ROW_COLS.min(n - j0);
        let copied = transpose_groups(b, csb, rsb, k, j0, cols, &mut panel, simd);
        for q in copied..cols {
            let col = (j0 + q) * csb;
            for (p, panel_row) in panel.iter_mut().enumerate().take(k) {
                panel_row[q] = b[p * rsb + col];
            }
        }
        #[cfg(target_arch = "x86_64")]
        if simd {
            for i0 in (0..m).step_by(ROW_BLOCK) {
                // SAFETY: AVX2 and FMA were detected (`simd`); `run` checked that A holds
                // every (i, p), i < m, p < k; the panel holds k ≤ SMALL_K_MAX rows of
                // ROW_COLS ≥ cols values; C is m×n with i0 + rows ≤ m, j0 + cols ≤ n.
                unsafe {
                    avx2::rows_block(
                        a.as_ptr().add(i0 * rsa),
                        rsa,
                        csa,
                        panel.as_ptr().cast(),
                        ROW_COLS,
                        k,
                        c.as_mut_ptr().add(i0 * n + j0),
                        n,
                        ROW_BLOCK.min(m - i0),
                        cols,
                    );
                }
            }
            continue;
        }
        for (i, c_row) in c.chunks_exact_mut(n).enumerate() {
            let c_row = &mut c_row[j0..j0 + cols];
            c_row.fill(0.0);
            for (p, panel_row) in panel.iter().enumerate().take(k) {
                let s = a[i * rsa + p * csa];
                for (o, &v) in c_row.iter_mut().zip(panel_row) {
                    *o += s * v;
                }
            }
        }
    }
}

/// Copies whole groups of 8 columns of the `cols`-wide slice at `j0` into the panel with the
/// in-register transpose when the vector path runs and the columns are contiguous along `k`
/// (`rsb = 1`); returns how many columns it copied (the caller copies the rest).
#[allow(clippy::too_many_arguments)]
fn transpose_groups(
    b: &[f32],
    csb: usize,
    rsb: usize,
    k: usize,
    j0: usize,
    cols: usize,
    panel: &mut [[f32; ROW_COLS]; SMALL_K_MAX],
    simd: bool,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if simd && rsb == 1 {
        let groups = cols / LANES * LANES;
        for q0 in (0..groups).step_by(LANES) {
            // SAFETY: AVX2 was detected (`simd`); `run` checked that B holds (p, j) for p < k,
            // j < n, and j0 + q0 + 8 ≤ j0 + cols ≤ n; the panel has k ≤ SMALL_K_MAX rows and
            // q0 + 8 ≤ ROW_COLS columns.
            unsafe {
                avx2::transpose_into_panel(
                    b.as_ptr().add((j0 + q0) * csb),
                    csb,
                    k,
                    panel.as_mut_ptr().cast::<f32>().add(q0),
                    ROW_COLS,
                );
            }
        }
        return groups;
    }
    let _ = (b, csb, rsb, k, j0, cols, panel, simd);
    0
}

/// Any layout: one accumulator per element, products added in increasing `p`.
fn strided(prod: Product<'_>, c: &mut [f32]) {
    let Product {
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        k,
        n,
        ..
    } = prod;
    for (i, c_row) in c.chunks_exact_mut(n).enumerate() {
        for (j, o) in c_row.iter_mut().enumerate() {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * rsa + p * csa] * b[p * rsb + j * csb];
            }
            *o = s;
        }
    }
}

/// AVX2+FMA kernels. Block sizes are const generics so the accumulators stay in registers;
/// a tail block picks a smaller instance.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::simd::store_lanes_below;
    use super::{DOT_COLS, DOT_ROWS, LANES, ROW_BLOCK, ROW_VECS};
    use std::arch::x86_64::*;

    /// Lanes `0..width` set (`width ≤ 8`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lane_mask(width: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(width as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// Folds four accumulators into four sums, each `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`:
    /// three `hadd`s and one add serve four outputs.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fold4(v: [__m256; 4]) -> __m128 {
        let h01 = _mm256_hadd_ps(v[0], v[1]);
        let h23 = _mm256_hadd_ps(v[2], v[3]);
        let h = _mm256_hadd_ps(h01, h23);
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
    }

    /// `C[r, q] = A[r, :] · B[:, q]` for `R` rows of A (at `a + r·rsa`) and `Q` columns of B
    /// (at `b + q·csb`), each `k` long and contiguous.
    ///
    /// # Safety
    /// AVX2 and FMA available; those rows and columns readable; C writable for `R` rows of
    /// `Q` values at row stride `ldc`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot_kernel<const R: usize, const Q: usize>(
        a: *const f32,
        rsa: usize,
        b: *const f32,
        csb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); Q]; R];
        let body = k / LANES * LANES;
        let mut p = 0;
        while p < body {
            let bv: [__m256; Q] = std::array::from_fn(|q| _mm256_loadu_ps(b.add(q * csb + p)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(a.add(r * rsa + p));
                for (acc_rq, &bq) in acc_r.iter_mut().zip(&bv) {
                    *acc_rq = _mm256_fmadd_ps(av, bq, *acc_rq);
                }
            }
            p += LANES;
        }
        if body < k {
            // The last k mod 8 values land in lanes 0.. as in the portable dot; the other
            // lanes load 0 and add 0·0.
            let mask = lane_mask(k - body);
            let bv: [__m256; Q] =
                std::array::from_fn(|q| _mm256_maskload_ps(b.add(q * csb + body), mask));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_maskload_ps(a.add(r * rsa + body), mask);
                for (acc_rq, &bq) in acc_r.iter_mut().zip(&bv) {
                    *acc_rq = _mm256_fmadd_ps(av, bq, *acc_rq);
                }
            }
        }
        // Four rows of one column per fold; missing rows fold zeros and are dropped.
        for (g, rows4) in acc.chunks(4).enumerate() {
            for q in 0..Q {
                let v: [__m256; 4] =
                    std::array::from_fn(|t| rows4.get(t).map_or(_mm256_setzero_ps(), |row| row[q]));
                let mut sums = [0.0f32; 4];
                _mm_storeu_ps(sums.as_mut_ptr(), fold4(v));
                for (t, &s) in sums.iter().enumerate().take(rows4.len()) {
                    *c.add((4 * g + t) * ldc + q) = s;
                }
            }
        }
    }

    type DotArgs = (*const f32, usize, *const f32, usize, usize, *mut f32, usize);

    /// Runs a `rows × cols` dot block (`rows ≤ DOT_ROWS`, `cols ≤ DOT_COLS`).
    ///
    /// # Safety
    /// As [`dot_kernel`] with `R = rows`, `Q = cols`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_block(
        a: *const f32,
        rsa: usize,
        b: *const f32,
        csb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        const _: () = assert!(DOT_ROWS == 4 && DOT_COLS == 3, "the arms below cover 4×3");
        let args = (a, rsa, b, csb, k, c, ldc);
        match rows {
            1 => dots_by_cols::<1>(args, cols),
            2 => dots_by_cols::<2>(args, cols),
            3 => dots_by_cols::<3>(args, cols),
            4 => dots_by_cols::<4>(args, cols),
            _ => unreachable!("dot block of {rows} rows exceeds {DOT_ROWS}"),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_by_cols<const R: usize>(args: DotArgs, cols: usize) {
        let (a, rsa, b, csb, k, c, ldc) = args;
        match cols {
            1 => dot_kernel::<R, 1>(a, rsa, b, csb, k, c, ldc),
            2 => dot_kernel::<R, 2>(a, rsa, b, csb, k, c, ldc),
            3 => dot_kernel::<R, 3>(a, rsa, b, csb, k, c, ldc),
            _ => unreachable!("dot block of {cols} columns exceeds {DOT_COLS}"),
        }
    }

    /// `panel[p·ldp + q] = b[q·csb + p]` for `q < 8`, `p < k`: eight rows of the stored B
    /// (columns of `op(B)`, contiguous along `k`) become eight panel columns. Full 8×8 tiles
    /// use an in-register transpose (8 loads, 24 shuffles, 8 stores for 64 values); the last
    /// `k mod 8` rows are copied one value at a time.
    ///
    /// # Safety
    /// AVX2 available; `b + q·csb + p` readable and `panel + p·ldp + q` writable for `q < 8`,
    /// `p < k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn transpose_into_panel(
        b: *const f32,
        csb: usize,
        k: usize,
        panel: *mut f32,
        ldp: usize,
    ) {
        let body = k / LANES * LANES;
        let mut p = 0;
        while p < body {
            let r: [__m256; 8] = std::array::from_fn(|q| _mm256_loadu_ps(b.add(q * csb + p)));
            // Interleave pairs, then quads, then swap 128-bit halves.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (t, &v) in out.iter().enumerate() {
                _mm256_storeu_ps(panel.add((p + t) * ldp), v);
            }
            p += LANES;
        }
        for p in body..k {
            for q in 0..LANES {
                *panel.add(p * ldp + q) = *b.add(q * csb + p);
            }
        }
    }

    /// `C[r, :] = Σ_p A(r, p) · B[p, :]` for `R` output rows and `V` vectors of columns, the
    /// last holding `last` (1..=8) columns; `MASKED` is `last < 8`, so full blocks run
    /// without masks.
    ///
    /// # Safety
    /// AVX2 and FMA available; A(r, p) at `a + r·rsa + p·csa` and the `8(V-1) + last` values
    /// of row p of B at `b + p·rsb` readable for r < R, p < k; C writable for `R` rows of
    /// that many values at row stride `ldc`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_kernel<const R: usize, const V: usize, const MASKED: bool>(
        a: *const f32,
        rsa: usize,
        csa: usize,
        b: *const f32,
        rsb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        last: usize,
    ) {
        let mask = lane_mask(last);
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        for p in 0..k {
            let b_row = b.add(p * rsb);
            let bv: [__m256; V] = std::array::from_fn(|v| {
                if MASKED && v == V - 1 {
                    _mm256_maskload_ps(b_row.add(v * LANES), mask)
                } else {
                    _mm256_loadu_ps(b_row.add(v * LANES))
                }
            });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let s = _mm256_set1_ps(*a.add(r * rsa + p * csa));
                for (acc_rv, &b_v) in acc_r.iter_mut().zip(&bv) {
                    *acc_rv = _mm256_fmadd_ps(s, b_v, *acc_rv);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let c_row = c.add(r * ldc);
            for (v, &x) in acc_r.iter().enumerate() {
                if MASKED && v == V - 1 {
                    store_lanes_below(c_row.add(v * LANES), x, last);
                } else {
                    _mm256_storeu_ps(c_row.add(v * LANES), x);
                }
            }
        }
    }

    type RowsArgs = (
        *const f32,
        usize,
        usize,
        *const f32,
        usize,
        usize,
        *mut f32,
        usize,
        usize,
    );

    /// Runs a `rows × cols` rows block (`rows ≤ ROW_BLOCK`, `cols ≤ ROW_VECS · 8`).
    ///
    /// # Safety
    /// As [`rows_kernel`] for that block.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows_block(
        a: *const f32,
        rsa: usize,
        csa: usize,
        b: *const f32,
        rsb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        const _: () = assert!(ROW_BLOCK == 6 && ROW_VECS == 2, "the arms below cover 6×2");
        let vecs = cols.div_ceil(LANES);
        let last = cols - (vecs - 1) * LANES;
        let args = (a, rsa, csa, b, rsb, k, c, ldc, last);
        match rows {
            1 => rows_by_vecs::<1>(args, vecs),
            2 => rows_by_vecs::<2>(args, vecs),
            3 => rows_by_vecs::<3>(args, vecs),
            4 => rows_by_vecs::<4>(args, vecs),
            5 => rows_by_vecs::<5>(args, vecs),
            6 => rows_by_vecs::<6>(args, vecs),
            _ => unreachable!("rows block of {rows} rows exceeds {ROW_BLOCK}"),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_by_vecs<const R: usize>(args: RowsArgs, vecs: usize) {
        let (a, rsa, csa, b, rsb, k, c, ldc, last) = args;
        macro_rules! go {
            ($v:literal) => {
                if last == LANES {
                    rows_kernel::<R, $v, false>(a, rsa, csa, b, rsb, k, c, ldc, last)
                } else {
                    rows_kernel::<R, $v, true>(a, rsa, csa, b, rsb, k, c, ldc, last)
                }
            };
        }
        match vecs {
            1 => go!(1),
            2 => go!(2),
            _ => unreachable!("rows block of {vecs} vectors exceeds {ROW_VECS}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Both paths this machine can run: portable, and AVX2+FMA where the CPU has it.
    fn paths() -> Vec<bool> {
        if crate::backend::cpu::has_avx2() {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    /// Strides of op(A) (m×k) and op(B) (k×n) stored as the transposes say.
    fn strides(m: usize, k: usize, n: usize, lhs_t: bool, rhs_t: bool) -> [usize; 4] {
        let (rsa, csa) = if lhs_t { (1, m) } else { (k, 1) };
        let (rsb, csb) = if rhs_t { (1, k) } else { (n, 1) };
        [rsa, csa, rsb, csb]
    }

    /// Runs one form on a path into a fresh buffer full of NaN, so stale values that leak into
    /// the result show.
    fn product(prod: Product<'_>, outer: Outer, simd: bool) -> Vec<f32> {
        let mut c = vec![f32::NAN; prod.m * prod.n];
        run(prod, &mut c, outer, simd);
        c
    }

    /// Checks every element against the f64 product: error within `1e-5·sqrt(k)` of
    /// `Σ_p |A(i,p)·B(p,j)|`, and the same bits from a second call.
    fn check(prod: Product<'_>, outer: Outer, simd: bool, what: &str) {
        let Product {
            a,
            rsa,
            csa,
            b,
            rsb,
            csb,
            m,
            k,
            n,
        } = prod;
        let c = product(prod, outer, simd);
        let again = product(prod, outer, simd);
        let same_bits = c
            .iter()
            .zip(&again)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same_bits, "two calls differ: {what}");
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut scale) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                    exact += t;
                    scale += t.abs();
                }
                let err = (c[i * n + j] as f64 - exact).abs();
                let tol = 1e-5 * (k as f64).sqrt() * scale;
                assert!(
                    err <= tol,
                    "C[{i},{j}] = {} vs {exact} (error {err:e} > {tol:e}): {what}",
                    c[i * n + j]
                );
            }
        }
    }

    #[test]
    fn matches_f64_product_for_every_layout_size_and_path() {
        let mut rng = Rng::new(11);
        let cases: [(Outer, &[usize], &[usize]); 2] = [
            (Outer::Columns, &[1, 3, 20, 32], &[1, 7, 31, 300]),
            (Outer::Rows, &[1, 3, 20, 32, 300], &[1, 7, 20, 31, 32]),
        ];
        for (outer, ms, ks) in cases {
            for &m in ms {
                for &k in ks {
                    for n in [1, 5, 31, 300] {
                        let a = rng.uniform_vec(m * k, -1.0, 1.0);
                        let b = rng.uniform_vec(k * n, -1.0, 1.0);
                        for lhs_t in [false, true] {
                            for rhs_t in [false, true] {
                                let [rsa, csa, rsb, csb] = strides(m, k, n, lhs_t, rhs_t);
                                let prod = Product {
                                    a: &a,
                                    rsa,
                                    csa,
                                    b: &b,
                                    rsb,
                                    csb,
                                    m,
                                    k,
                                    n,
                                };
                                for simd in paths() {
                                    let what = format!(
                                        "{outer:?} m={m} k={k} n={n} lhs_t={lhs_t} \
                                         rhs_t={rhs_t} simd={simd}"
                                    );
                                    check(prod, outer, simd, &what);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn public_entry_points_compute_the_product() {
        let mut rng = Rng::new(2);
        let (m, k, n) = (3, 5, 4);
        let a = rng.uniform_vec(m * k, -1.0, 1.0);
        let b = rng.uniform_vec(k * n, -1.0, 1.0);
        for kernel in [small_m, small_k] {
            let mut c = vec![f32::NAN; m * n];
            kernel(&a, k, 1, &b, n, 1, m, k, n, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                        .sum();
                    assert!((c[i * n + j] as f64 - exact).abs() <= 1e-5, "C[{i},{j}]");
                }
            }
        }
    }

    #[test]
    fn general_strides_are_correct_and_the_strided_loop_adds_in_order() {
        // op(A) takes every other value of its rows and op(B) every third value: no operand
        // is contiguous along any axis, so small_m (and small_k beyond SMALL_K_MAX) take the
        // strided loop, while small_k up to SMALL_K_MAX copies panels.
        let mut rng = Rng::new(5);
        for (outer, k) in [(Outer::Columns, 9), (Outer::Rows, 9), (Outer::Rows, 40)] {
            let (m, n) = (3, 19);
            let a = rng.uniform_vec(2 * m * k, -1.0, 1.0);
            let b = rng.uniform_vec(3 * k * n, -1.0, 1.0);
            let (rsa, csa, rsb, csb) = (2 * k, 2, 3, 3 * k);
            let prod = Product {
                a: &a,
                rsa,
                csa,
                b: &b,
                rsb,
                csb,
                m,
                k,
                n,
            };
            for simd in paths() {
                check(prod, outer, simd, &format!("{outer:?} k={k} simd={simd}"));
                let takes_strided_loop = !(outer == Outer::Rows && k <= SMALL_K_MAX);
                if takes_strided_loop || !simd {
                    // The portable forms and the strided loop add unfused products in order.
                    let c = product(prod, outer, simd);
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = 0.0f32;
                            for p in 0..k {
                                s += a[i * rsa + p * csa] * b[p * rsb + j * csb];
                            }
                            assert_eq!(c[i * n + j].to_bits(), s.to_bits(), "C[{i},{j}]");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_inner_dimension_gives_zeros_and_empty_output_is_untouched() {
        let mut c = vec![3.0f32; 6];
        small_m(&[], 0, 1, &[], 3, 1, 2, 0, 3, &mut c);
        assert!(c.iter().all(|&v| v == 0.0));
        let mut c = vec![3.0f32; 6];
        small_k(&[], 1, 2, &[], 1, 0, 2, 0, 3, &mut c);
        assert!(c.iter().all(|&v| v == 0.0));
        let mut c = vec![3.0f32; 4];
        small_k(&[1.0; 4], 4, 1, &[], 1, 1, 0, 4, 5, &mut c);
        assert!(c.iter().all(|&v| v == 3.0));
    }

    #[test]
    fn an_element_has_the_same_bits_in_any_block_position() {
        // Row 0 of a 1-row product (a tail block) and of a 20-row product (a full block), and
        // the first 5 columns of a 37-column product against a 5-column one: the order of an
        // element depends on k alone.
        let mut rng = Rng::new(3);
        for (outer, k) in [(Outer::Columns, 300), (Outer::Rows, 31)] {
            for rhs_t in [false, true] {
                let (m, n) = (20, 37);
                let a = rng.uniform_vec(m * k, -1.0, 1.0);
                let b = rng.uniform_vec(k * n, -1.0, 1.0);
                let [rsa, csa, rsb, csb] = strides(m, k, n, false, rhs_t);
                for simd in paths() {
                    let full = product(
                        Product {
                            a: &a,
                            rsa,
                            csa,
                            b: &b,
                            rsb,
                            csb,
                            m,
                            k,
                            n,
                        },
                        outer,
                        simd,
                    );
                    let one_row = product(
                        Product {
                            a: &a,
                            rsa,
                            csa,
                            b: &b,
                            rsb,
                            csb,
                            m: 1,
                            k,
                            n,
                        },
                        outer,
                        simd,
                    );
                    let same = one_row
                        .iter()
                        .zip(&full)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "one row: {outer:?} rhs_t={rhs_t} simd={simd}");
                    // The first 5 columns of op(B) are the same buffer with a smaller n
                    // (rhs_t: the first 5 stored rows; otherwise a row stride of 37).
                    let narrow = product(
                        Product {
                            a: &a,
                            rsa,
                            csa,
                            b: &b,
                            rsb,
                            csb,
                            m,
                            k,
                            n: 5,
                        },
                        outer,
                        simd,
                    );
                    for i in 0..m {
                        for j in 0..5 {
                            assert_eq!(
                                narrow[i * 5 + j].to_bits(),
                                full[i * n + j].to_bits(),
                                "C[{i},{j}]: {outer:?} rhs_t={rhs_t} simd={simd}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Microseconds per call of `f`, the best of several rounds.
    fn time_us(mut f: impl FnMut()) -> f64 {
        let calls = 200;
        for _ in 0..calls {
            f();
        }
        (0..9)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..calls {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e6 / calls as f64
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// The Figure-3 products (MLP 31→300→300→1, batch 20; plus `dH·W1`, which that model does
    /// not need), each kernel against single-threaded `matrixmultiply::sgemm`. Run with
    /// `cargo test --release --lib small_gemm -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, run by hand"]
    fn timing_against_matrixmultiply() {
        let mut rng = Rng::new(1);
        let shapes: [(&str, usize, usize, usize, bool, bool); 6] = [
            ("fwd  H·W1ᵀ  20×31·31×300 ", 20, 31, 300, false, true),
            ("fwd  H·W2ᵀ  20×300·300×300", 20, 300, 300, false, true),
            ("bwd  dH·W2  20×300·300×300", 20, 300, 300, false, false),
            ("bwd  dH·W1  20×300·300×31 ", 20, 300, 31, false, false),
            ("grad dZᵀ·H  300×20·20×300 ", 300, 20, 300, true, false),
            ("grad dZᵀ·X  300×20·20×31  ", 300, 20, 31, true, false),
        ];
        for (name, m, k, n, lhs_t, rhs_t) in shapes {
            let a = rng.uniform_vec(m * k, -1.0, 1.0);
            let b = rng.uniform_vec(k * n, -1.0, 1.0);
            let [rsa, csa, rsb, csb] = strides(m, k, n, lhs_t, rhs_t);
            let mut c = vec![0.0f32; m * n];
            let mm = time_us(|| {
                // SAFETY: a is m×k, b k×n and c m×n with the given strides, all in bounds.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        rsa as isize,
                        csa as isize,
                        b.as_ptr(),
                        rsb as isize,
                        csb as isize,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            });
            let sm = time_us(|| small_m(&a, rsa, csa, &b, rsb, csb, m, k, n, &mut c));
            let sk = time_us(|| small_k(&a, rsa, csa, &b, rsb, csb, m, k, n, &mut c));
            println!(
                "{name}: matrixmultiply {mm:6.2} µs, small_m {sm:6.2} µs, small_k {sk:6.2} µs"
            );
        }
    }
}
