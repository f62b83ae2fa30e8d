//! Large products `C (m×n) = op(A) · op(B)` from packed operands through a register-blocked
//! kernel, on AVX-512 for products at least [`MIN_SIDE`] on every side (elsewhere `gemm`
//! calls `matrixmultiply`).
//!
//! Layout (the BLIS design). `op(B)` is packed once, whole, into slabs of [`KC`] rows, each
//! cut into panels of `NR` columns stored row by row (`kc × NR`, zero past column `n`). The
//! rows of C are split into blocks of whole A panels, one task each; a task packs its block
//! of `op(A)` per slab into panels of `MR` rows stored column by column (`kc × MR`, zero past
//! row `m`), then for each panel of B runs the kernel against every panel of its A block.
//! The kernel is written once over `Simd` (tests run its portable instantiations against the
//! same bits); on AVX-512 it holds a 12 × 32 tile of C in 24 registers and per step of `p`
//! loads 2 vectors of B and broadcasts 12 values of A into 24 fused multiply-adds.
//!
//! Memory traffic. `op(A)` and `op(B)` are each read once from where they lie and written
//! once into the packs (reused buffers: B's from the buffer pool, which holds anything
//! [`MIN_SIDE`]² or larger; A's per thread; so no pack faults pages in per call). The B panel
//! (`kc·NR·4` bytes, 64 KiB on AVX-512) and the task's A block (at most about `MC·kc·4` =
//! 480 KiB) stay in L2, from which a tile streams both (per step 128 + 48 bytes for 24 FMAs).
//! C is written once per slab and read once per slab after the first (the first slab
//! overwrites, so the output needs no zeroing): the deep slab halves that traffic against a
//! panel sized for L1 (`KC` = 256 measured 4–9 % slower at 1024³ and 2048³). While a tile
//! runs it prefetches, a line per step, its share of the next B panel and the rows of the
//! next tile of C: both would otherwise arrive from L2 or L3 on demand (a tile's rows are a
//! row stride apart, which no hardware prefetcher follows). Packing costs `m·k + k·n` copies
//! against `m·n·k` multiply-adds.
//!
//! Summation order. Each element of C is one chain of fused multiply-adds over `p` in
//! increasing order, from +0: `c ← fma(A(i, p), B(p, j), c)`. The chain does not depend on
//! the tile sizes, the slabs (a slab resumes from the f32 the previous one stored, which is
//! what the chain holds anyway), the blocks or the instruction set, so every element has the
//! same bits on AVX-512 and the portable instantiations, for any thread count.

use rayon::prelude::*;

use super::simd::Simd;

/// Depth of a slab of B (and of an A block): the A block, `MC·KC` floats, stays well inside
/// a 1 MiB L2 (AVX-512 CPUs have 1–2 MiB per core).
const KC: usize = 512;
/// Rows of C per task, at most (before rounding to whole A panels and to the thread count).
const MC: usize = 240;
/// Smallest side of a product taken here. Below it the fixed costs (packing all of B for few
/// rows, short slabs, edge tiles) outweigh the wider FMA, and `matrixmultiply`'s AVX2 kernel,
/// which runs at the higher AVX2 clock, was as fast or faster (Xeon, model 167: a batch-64
/// Adam step of the 392-390-390 MLP took 1.62–1.68 ms here against 1.37–1.40; 1024³ was
/// 3–15 % faster here).
const MIN_SIDE: usize = 512;
/// Largest `MR·NR` of a kernel (the edge tiles' scratch).
const MAX_TILE: usize = 512;

/// A matrix read through strides: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl Strided<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// `op(A) · op(B)` (`m × n`, row-major) on the packed AVX-512 kernel, or `None` where the CPU
/// has no AVX-512 or the product is smaller than [`MIN_SIDE`] on a side. The output comes
/// from the buffer pool: the first slab writes every element.
pub(super) fn product(
    a: Strided,
    b: Strided,
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) -> Option<Vec<f32>> {
    if m.min(k).min(n) < MIN_SIDE {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(s) = super::simd::Avx512::new() {
        return Some(run::<_, 12, 2>(
            s,
            a,
            b,
            (m, k, n),
            parallel,
            |s, job, r0, out| {
                // SAFETY: the token proves AVX-512F.
                unsafe { block_avx512(s, job, r0, out) }
            },
        ));
    }
    let _ = (a, b, parallel);
    None
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(s: super::simd::Avx512, job: &Job, r0: usize, out: &mut [f32]) {
    block::<_, 12, 2>(s, job, r0, out)
}

/// What every task of one product shares.
struct Job<'a> {
    a: Strided<'a>,
    packed_b: &'a [f32],
    k: usize,
    n: usize,
}

/// The product with `MR × NV·LANES` tiles: packs B, splits the rows of C into
/// blocks of whole A panels (as equal as possible; a multiple of the thread count when
/// parallel — the split cannot change any bit, see the module docs) and runs `block` on each.
fn run<S: Simd + Send + Sync, const MR: usize, const NV: usize>(
    s: S,
    a: Strided,
    b: Strided,
    (m, k, n): (usize, usize, usize),
    parallel: bool,
    block: impl Fn(S, &Job, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut c = super::pool::take_for_overwrite(m * n);
    let packed_b = pack_b(b, k, n, NV * S::LANES, parallel);
    let job = Job {
        a,
        packed_b: &packed_b[..],
        k,
        n,
    };
    let panels_m = m.div_ceil(MR);
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let blocks = ((panels_m * MR).div_ceil(MC).div_ceil(threads) * threads).clamp(1, panels_m);
    let mut rest = &mut c[..];
    let mut tasks = Vec::with_capacity(blocks);
    let mut row = 0;
    for bi in 0..blocks {
        let panels = panels_m * (bi + 1) / blocks - panels_m * bi / blocks;
        let rows = (panels * MR).min(m - row);
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(rows * n);
        rest = tail;
        tasks.push((row, mine));
        row += rows;
    }
    let task = |(r0, out): (usize, &mut [f32])| block(s, &job, r0, out);
    if blocks > 1 {
        tasks.into_par_iter().for_each(task);
    } else {
        tasks.into_iter().for_each(task);
    }
    super::pool::give(packed_b);
    c
}

/// One task: rows `r0..r0 + out.len()/n` of C, slab by slab of `k`.
#[inline(always)]
fn block<S: Simd, const MR: usize, const NV: usize>(s: S, job: &Job, r0: usize, out: &mut [f32]) {
    let nr = NV * S::LANES;
    assert!(MR * nr <= MAX_TILE, "tile shape");
    let &Job { a, packed_b, k, n } = job;
    let rows = out.len() / n;
    // Taken out and put back rather than borrowed in a closure: a closure would not inherit
    // the caller's target features, and the kernel would not be inlined into it.
    let mut pack = PACK_A.take();
    let need = rows.div_ceil(MR) * MR * KC.min(k);
    if pack.len() < need {
        pack.resize(need, 0.0);
    }
    let (panels_n, tiles) = (n.div_ceil(nr), rows.div_ceil(MR));
    for (q, p0) in (0..k).step_by(KC).enumerate() {
        let kc = KC.min(k - p0);
        // Each tile's share of the next B panel, a line per step of `p`.
        let share = (kc * nr / 16).div_ceil(tiles);
        pack_a::<MR>(a, r0, rows, p0, kc, &mut pack);
        let slab = &packed_b[q * KC * panels_n * nr..];
        for jp in 0..panels_n {
            let bp = &slab[jp * kc * nr..(jp + 1) * kc * nr];
            let (j0, cols) = (jp * nr, nr.min(n - jp * nr));
            for ip in 0..tiles {
                let ap = &pack[ip * kc * MR..(ip + 1) * kc * MR];
                let (i0, tile_rows) = (ip * MR, MR.min(rows - ip * MR));
                let next_b = match jp + 1 < panels_n {
                    true => (
                        slab[(jp + 1) * kc * nr..]
                            .as_ptr()
                            .wrapping_add(ip * share * 16),
                        share,
                    ),
                    false => (slab.as_ptr(), 0),
                };
                // The next tile's rows of C (down this column of tiles, then the next column):
                // read at that tile's start on the slabs after the first, written at its end.
                let next_c = match (ip + 1 < tiles, jp + 1 < panels_n) {
                    (true, _) => (out.as_ptr().wrapping_add((i0 + MR) * n + j0), n),
                    (false, true) => (out.as_ptr().wrapping_add(j0 + nr), n),
                    (false, false) => (out.as_ptr(), 0),
                };
                let ahead = Ahead {
                    b: next_b,
                    c: next_c,
                };
                let corner = &mut out[i0 * n + j0..];
                let first = p0 == 0;
                if tile_rows == MR && cols == nr {
                    // SAFETY: the tile's MR rows of nr floats at row stride n lie in `corner`
                    // (its last row ends at column j0 + nr ≤ n); the packs hold kc·MR and
                    // kc·nr floats.
                    unsafe {
                        tile::<S, MR, NV>(s, kc, ap, bp, corner.as_mut_ptr(), n, first, ahead)
                    };
                } else {
                    // Edge tile: through a full-size copy (rows and columns past C's edge are
                    // computed from the packs' zeros and dropped).
                    let mut t = [0.0f32; MAX_TILE];
                    if !first {
                        for i in 0..tile_rows {
                            t[i * nr..i * nr + cols].copy_from_slice(&corner[i * n..i * n + cols]);
                        }
                    }
                    // SAFETY: `t` holds MR rows of nr floats (MR·nr ≤ MAX_TILE, checked above).
                    unsafe { tile::<S, MR, NV>(s, kc, ap, bp, t.as_mut_ptr(), nr, first, ahead) };
                    for i in 0..tile_rows {
                        corner[i * n..i * n + cols].copy_from_slice(&t[i * nr..i * nr + cols]);
                    }
                }
            }
        }
    }
    PACK_A.set(pack);
}

thread_local! {
    /// Each thread's packed block of A (below the buffer pool's sizes): reused, because a
    /// fresh buffer per task is zeroed or faults its pages in.
    static PACK_A: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `op(B)` as slabs of [`KC`] rows, each as `⌈n/nr⌉` panels of `kc × nr` floats (row `p` of a
/// panel holds its columns at depth `p`, zero past column `n`).
fn pack_b(b: Strided, k: usize, n: usize, nr: usize, parallel: bool) -> Vec<f32> {
    let panels_n = n.div_ceil(nr);
    let slab = KC * panels_n * nr;
    // Column j of op(B) as lane j, along depth p.
    let lanes = Strided {
        data: b.data,
        rs: b.cs,
        cs: b.rs,
    };
    // Every element a kernel reads is written (padding included).
    let len = k.div_ceil(KC) * slab;
    let mut packed = super::pool::take_for_overwrite(len);
    let fill = |(q, out): (usize, &mut [f32])| {
        let (p0, kc) = (q * KC, KC.min(k - q * KC));
        for (jp, panel) in out.chunks_mut(kc * nr).take(panels_n).enumerate() {
            let (j0, cols) = (jp * nr, nr.min(n - jp * nr));
            pack_panel(lanes, j0, cols, nr, p0, kc, panel);
        }
    };
    if parallel {
        packed[..len]
            .par_chunks_mut(slab)
            .enumerate()
            .for_each(fill);
    } else {
        packed[..len].chunks_mut(slab).enumerate().for_each(fill);
    }
    packed
}

/// Rows `r0..r0+rows`, depths `p0..p0+kc` of `op(A)` as panels of `kc × MR` floats (row `p`
/// of a panel holds its rows at depth `p`, zero past the block).
fn pack_a<const MR: usize>(
    a: Strided,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    pack: &mut [f32],
) {
    for (ip, panel) in pack.chunks_mut(kc * MR).take(rows.div_ceil(MR)).enumerate() {
        let live = MR.min(rows - ip * MR);
        pack_panel(a, r0 + ip * MR, live, MR, p0, kc, panel);
    }
}

/// Lanes `l0..l0+live` of `x` (lane `l` at depth `p` is `x.at(l, p)`), depths `p0..p0+kc`,
/// as `kc` rows of `width` floats (zero from lane `live` on).
fn pack_panel(
    x: Strided,
    l0: usize,
    live: usize,
    width: usize,
    p0: usize,
    kc: usize,
    panel: &mut [f32],
) {
    let rows = panel[..kc * width].chunks_exact_mut(width);
    if x.rs == 1 {
        // Lanes contiguous: each row of the panel is one copy (by 8 floats where whole, so
        // that it compiles to vector moves rather than a call per row).
        for (p, dst) in rows.enumerate() {
            let src = &x.data[(p0 + p) * x.cs + l0..][..live];
            let whole = live / 8 * 8;
            for (d, s) in dst[..whole].chunks_exact_mut(8).zip(src.chunks_exact(8)) {
                d.copy_from_slice(s);
            }
            dst[whole..live].copy_from_slice(&src[whole..]);
            dst[live..].fill(0.0);
        }
        return;
    }
    for dst in rows {
        dst[live..].fill(0.0);
    }
    if x.cs == 1 {
        // Depths contiguous: four lanes' streams at a time, read in step (the slices have
        // length kc, so the reads need no checks inside the loop).
        const G: usize = 4;
        let full = live / G * G;
        for g0 in (0..full).step_by(G) {
            let src: [&[f32]; G] =
                std::array::from_fn(|i| &x.data[(l0 + g0 + i) * x.rs + p0..][..kc]);
            for (p, dst) in panel.chunks_exact_mut(width).take(kc).enumerate() {
                let dst: &mut [f32; G] = (&mut dst[g0..g0 + G]).try_into().expect("four lanes");
                *dst = std::array::from_fn(|i| src[i][p]);
            }
        }
        for l in full..live {
            let src = &x.data[(l0 + l) * x.rs + p0..][..kc];
            for (dst, &v) in panel.chunks_exact_mut(width).zip(src) {
                dst[l] = v;
            }
        }
    } else {
        for (p, dst) in panel.chunks_exact_mut(width).take(kc).enumerate() {
            for (l, d) in dst[..live].iter_mut().enumerate() {
                *d = x.at(l0 + l, p0 + p);
            }
        }
    }
}

/// Lines a tile prefetches while it runs, one per step of `p`: `b.1` consecutive lines from
/// `b.0` (a share of the next B panel), then the rows of the next tile of C from `c.0` at
/// row stride `c.1` (none when `c.1` is 0).
#[derive(Clone, Copy)]
struct Ahead {
    b: (*const f32, usize),
    c: (*const f32, usize),
}

/// `C[i, j] ← fma(A(i, p), B(p, j), C[i, j])` for `p` in `0..kc` over one `MR × NV·LANES`
/// tile, held in registers; on the `first` slab C is not read (the chain starts from +0).
///
/// # Safety
/// `c` is valid for reads and writes of `MR` rows of `NV·LANES` floats at row stride `ldc`;
/// `a` holds `kc·MR` floats and `b` `kc·NV·LANES`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    first: bool,
    ahead: Ahead,
) {
    let l = S::LANES;
    // Cache lines per tile row, and the steps that fetch the next tile of C.
    let per_row = (NV * l).div_ceil(16);
    let c_steps = if ahead.c.1 == 0 { 0 } else { MR * per_row };
    assert!(
        a.len() >= kc * MR && b.len() >= kc * NV * l,
        "packed panels"
    );
    // SAFETY (all pointer reads and writes below): the caller's promise on `c`, and the
    // lengths just checked for `a` and `b`.
    unsafe {
        let mut acc = [[s.splat(0.0); NV]; MR];
        if !first {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = s.load(c.add(i * ldc + v * l));
                }
            }
        }
        let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
        // One step of `p`: a macro, not a closure (a closure would not inherit the caller's
        // target features).
        macro_rules! step {
            () => {
                let mut bv = [s.splat(0.0); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = s.load(bp.add(v * l));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = s.splat(*ap.add(i));
                    for (acc, &bv) in row.iter_mut().zip(&bv) {
                        *acc = s.mul_add(ai, bv, *acc);
                    }
                }
                ap = ap.add(MR);
                bp = bp.add(NV * l);
            };
        }
        // The steps that prefetch, then the rest two at a time without the prefetch tests.
        let prefetching = ahead.b.1.max(c_steps).min(kc);
        for p in 0..prefetching {
            if p < ahead.b.1 {
                super::math::prefetch_line(ahead.b.0.wrapping_add(16 * p));
            }
            if p < c_steps {
                super::math::prefetch_line(
                    ahead
                        .c
                        .0
                        .wrapping_add(p / per_row * ahead.c.1 + p % per_row * 16),
                );
            }
            step!();
        }
        let mut p = prefetching;
        while p + 2 <= kc {
            step!();
            step!();
            p += 2;
        }
        if p < kc {
            step!();
        }
        // The last step's advance is never read.
        let _ = (ap, bp);
        for (i, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                s.store(c.add(i * ldc + v * l), x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::{Lanes8, Scalar};
    use crate::rng::Rng;

    /// The product as the module docs define it: one fused chain per element, in order of `p`.
    fn chain(a: Strided, b: Strided, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).fold(0.0f32, |acc, p| a.at(i, p).mul_add(b.at(p, j), acc));
            }
        }
        c
    }

    /// `op(A)` (`m×k`) and `op(B)` (`k×n`) read through the strides of their storage, stored
    /// transposed where asked.
    fn operands<'a>(
        a: &'a [f32],
        b: &'a [f32],
        (m, k, n): (usize, usize, usize),
        (ta, tb): (bool, bool),
    ) -> (Strided<'a>, Strided<'a>) {
        let (rs, cs) = if ta { (1, m) } else { (k, 1) };
        let a = Strided { data: a, rs, cs };
        let (rs, cs) = if tb { (1, k) } else { (n, 1) };
        (a, Strided { data: b, rs, cs })
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every instantiation (portable 8 lanes, scalar with odd tiles, and the CPU's own kernel)
    /// gives each element the bits of its chain, for every layout of the operands, at sizes
    /// that leave edge tiles, span several slabs and blocks, and on 1 to 3 threads.
    #[test]
    fn every_instruction_set_gives_the_bits_of_the_chain() {
        let mut rng = Rng::new(7);
        let shapes = [
            (1, 1, 1),
            (5, 3, 7),
            (13, KC + 44, 33),
            (40, 513, 70),
            (7, 2 * KC + 5, 19),
            (301, 260, 49),
        ];
        for (m, k, n) in shapes {
            let a_store = rng.normal_vec(m * k);
            let b_store = rng.normal_vec(k * n);
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (a, b) = operands(&a_store, &b_store, (m, k, n), (ta, tb));
                let want = bits(&chain(a, b, (m, k, n)));
                let what = format!("{m}x{k}x{n} ta={ta} tb={tb}");
                for threads in 1..=3 {
                    let pool = super::super::test_pool(threads);
                    let got = pool.install(|| {
                        run::<_, 6, 2>(Lanes8, a, b, (m, k, n), true, |s, job, r0, out| {
                            block::<_, 6, 2>(s, job, r0, out)
                        })
                    });
                    assert_eq!(bits(&got), want, "portable, {what}, {threads} threads");
                    let got = pool.install(|| {
                        run::<_, 3, 5>(Scalar, a, b, (m, k, n), true, |s, job, r0, out| {
                            block::<_, 3, 5>(s, job, r0, out)
                        })
                    });
                    assert_eq!(bits(&got), want, "scalar, {what}, {threads} threads");
                    if let Some(got) = pool.install(|| product(a, b, (m, k, n), true)) {
                        assert_eq!(
                            bits(&got),
                            want,
                            "this CPU's kernel, {what}, {threads} threads"
                        );
                    }
                }
            }
        }
    }

    /// The AVX-512 kernel, where the CPU has it, at a size `product` leaves to
    /// `matrixmultiply` (edge tiles in both directions, two slabs).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_kernel_gives_the_bits_of_the_chain() {
        use crate::backend::cpu::simd::Avx512;
        let (m, k, n) = (29, KC + 14, 45);
        let mut rng = Rng::new(3);
        let (a_store, b_store) = (rng.normal_vec(m * k), rng.normal_vec(k * n));
        let a = Strided {
            data: &a_store,
            rs: k,
            cs: 1,
        };
        let b = Strided {
            data: &b_store,
            rs: n,
            cs: 1,
        };
        if let Some(s) = Avx512::new() {
            let got = run::<_, 12, 2>(s, a, b, (m, k, n), false, |s, job, r0, out| {
                // SAFETY: the token proves AVX-512F.
                unsafe { block_avx512(s, job, r0, out) }
            });
            assert_eq!(bits(&got), bits(&chain(a, b, (m, k, n))));
        }
    }

    /// A reused (pooled) output buffer holding old values gives the same product: the first
    /// slab overwrites every element, edge tiles included; and `product` takes products of
    /// at least `MIN_SIDE` on every side, on 1 to 3 threads, in every operand layout.
    #[test]
    fn large_products_overwrite_a_dirty_pooled_output() {
        let (m, k, n) = (530, 520, 515);
        let mut rng = Rng::new(11);
        let (a_store, b_store) = (rng.normal_vec(m * k), rng.normal_vec(k * n));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, b) = operands(&a_store, &b_store, (m, k, n), (ta, tb));
            let want = bits(&chain(a, b, (m, k, n)));
            super::super::pool::give(vec![f32::NAN; m * n]);
            let got = run::<_, 6, 2>(Lanes8, a, b, (m, k, n), true, |s, job, r0, out| {
                block::<_, 6, 2>(s, job, r0, out)
            });
            assert_eq!(bits(&got), want, "portable, ta={ta} tb={tb}");
            for threads in 1..=3 {
                let pool = super::super::test_pool(threads);
                super::super::pool::give(vec![f32::NAN; m * n]);
                if let Some(got) = pool.install(|| product(a, b, (m, k, n), true)) {
                    assert_eq!(bits(&got), want, "ta={ta} tb={tb}, {threads} threads");
                }
            }
        }
    }
}
