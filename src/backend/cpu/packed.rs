//! Large products `C (m×n) = op(A) · op(B)` from packed operands through a register-blocked
//! kernel, on AVX-512 or on AVX2 with FMA (elsewhere `gemm` calls `matrixmultiply`).
//!
//! Layout (the BLIS design). `op(B)` is packed once, whole, into slabs of [`KC`] rows, each
//! cut into panels of `NR` columns stored row by row (`kc × NR`, zero past column `n`). The
//! rows of C are split into blocks of whole A panels, one task each; a task packs its block
//! of `op(A)` per slab into panels of `MR` rows stored column by column (`kc × MR`, zero past
//! row `m`), then for each panel of B runs the kernel against every panel of its A block.
//! The kernel holds an `MR × NR` tile of C in registers (AVX-512: 12 × 32 in 24 registers;
//! AVX2: 6 × 16 in 12) and per step of `p` loads `NR/LANES` vectors of B and broadcasts `MR`
//! values of A into `MR·NR/LANES` fused multiply-adds.
//!
//! Memory traffic. `op(A)` and `op(B)` are each read once from where they lie and written
//! once into the packs (B's from the buffer pool, A's in a per-thread buffer, so neither
//! faults pages in per call). The B panel (`kc·NR·4` bytes, 32 KiB on AVX-512) stays in L1
//! while the task's A block (at most about `MC·kc·4` = 240 KiB) streams from L2; each tile
//! also prefetches its share of the next B panel, which would otherwise arrive from L2 or L3
//! on demand at the start of the next column of tiles. C is written once per slab and read
//! once per slab after the first (the first slab overwrites, so the output needs no zeroing).
//! Packing costs `m·k + k·n` copies against `m·n·k` multiply-adds.
//!
//! Summation order. Each element of C is one chain of fused multiply-adds over `p` in
//! increasing order, from +0: `c ← fma(A(i, p), B(p, j), c)`. The chain does not depend on
//! the tile sizes, the slabs (a slab resumes from the f32 the previous one stored, which is
//! what the chain holds anyway), the blocks or the instruction set, so every element has the
//! same bits on AVX-512, AVX2 and the portable instantiation, for any thread count.

use rayon::prelude::*;

use super::simd::Simd;

/// Depth of a slab of B (and of an A block): the B panel, `KC·NR` floats, fits L1.
const KC: usize = 256;
/// Rows of C per task, at most (before rounding to whole A panels and to the thread count).
const MC: usize = 240;
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

/// `op(A) · op(B)` (`m × n`, row-major) where the CPU has a packed kernel, `None` where it
/// has none. The output comes from the buffer pool: the first slab writes every element.
pub(super) fn product(
    a: Strided,
    b: Strided,
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::simd::{Avx2, Avx512};
        if let Some(s) = Avx512::new() {
            return Some(run::<_, 12>(
                s,
                2,
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
        if let Some(s) = Avx2::new() {
            return Some(run::<_, 6>(
                s,
                2,
                a,
                b,
                (m, k, n),
                parallel,
                |s, job, r0, out| {
                    // SAFETY: the token proves AVX2 and FMA.
                    unsafe { block_avx2(s, job, r0, out) }
                },
            ));
        }
    }
    let _ = (a, b, m, k, n, parallel);
    None
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(s: super::simd::Avx512, job: &Job, r0: usize, out: &mut [f32]) {
    block::<_, 12, 2>(s, job, r0, out)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(s: super::simd::Avx2, job: &Job, r0: usize, out: &mut [f32]) {
    block::<_, 6, 2>(s, job, r0, out)
}

/// What every task of one product shares.
struct Job<'a> {
    a: Strided<'a>,
    packed_b: &'a [f32],
    k: usize,
    n: usize,
    nr: usize,
}

/// The product with `MR`-row tiles `nv` vectors wide: packs B, splits the rows of C into
/// blocks of whole A panels (as equal as possible; a multiple of the thread count when
/// parallel — the split cannot change any bit, see the module docs) and runs `block` on each.
fn run<S: Simd + Send + Sync, const MR: usize>(
    s: S,
    nv: usize,
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
    let nr = nv * S::LANES;
    let packed_b = pack_b(b, k, n, nr, parallel);
    let job = Job {
        a,
        packed_b: &packed_b[..],
        k,
        n,
        nr,
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
    assert!(
        job.nr == NV * S::LANES && MR * job.nr <= MAX_TILE,
        "tile shape"
    );
    let rows = out.len() / job.n;
    let k = job.k;
    // Taken out and put back rather than borrowed in a closure: a closure would not inherit
    // the caller's target features, and the kernel would not be inlined into it.
    let mut pack = PACK_A.take();
    let need = rows.div_ceil(MR) * MR * KC.min(k);
    if pack.len() < need {
        pack.resize(need, 0.0);
    }
    let &Job {
        a, packed_b, n, nr, ..
    } = job;
    let (panels_n, tiles) = (n.div_ceil(nr), rows.div_ceil(MR));
    for (q, p0) in (0..k).step_by(KC).enumerate() {
        let kc = KC.min(k - p0);
        pack_a::<MR>(a, r0, rows, p0, kc, &mut pack);
        let slab = &packed_b[q * KC * panels_n * nr..];
        for jp in 0..panels_n {
            let bp = &slab[jp * kc * nr..(jp + 1) * kc * nr];
            let (j0, cols) = (jp * nr, nr.min(n - jp * nr));
            for ip in 0..tiles {
                let ap = &pack[ip * kc * MR..(ip + 1) * kc * MR];
                let (i0, tile_rows) = (ip * MR, MR.min(rows - ip * MR));
                // This tile's share of the next B panel, a line per step of `p`.
                let share = (kc * nr / 16).div_ceil(tiles);
                let ahead = match jp + 1 < panels_n {
                    true => (
                        slab[(jp + 1) * kc * nr..]
                            .as_ptr()
                            .wrapping_add(ip * share * 16),
                        share,
                    ),
                    false => (slab.as_ptr(), 0),
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
                    for i in (0..tile_rows).filter(|_| !first) {
                        t[i * nr..i * nr + cols].copy_from_slice(&corner[i * n..i * n + cols]);
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
    /// Each thread's packed block of A (reused: a fresh one per task would fault its pages in).
    static PACK_A: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `op(B)` as slabs of [`KC`] rows, each as `⌈n/nr⌉` panels of `kc × nr` floats (row `p` of a
/// panel holds its columns at depth `p`, zero past column `n`).
fn pack_b(b: Strided, k: usize, n: usize, nr: usize, parallel: bool) -> Vec<f32> {
    let panels_n = n.div_ceil(nr);
    let slab = KC * panels_n * nr;
    // Every element a kernel reads is written below (padding included).
    let mut packed = super::pool::take_for_overwrite(k.div_ceil(KC) * slab);
    let fill = |(q, out): (usize, &mut [f32])| {
        let p0 = q * KC;
        let kc = KC.min(k - p0);
        for (jp, panel) in out.chunks_mut(kc * nr).take(panels_n).enumerate() {
            let (j0, cols) = (jp * nr, nr.min(n - jp * nr));
            if b.cs == 1 {
                for (p, dst) in panel.chunks_exact_mut(nr).enumerate() {
                    let from = (p0 + p) * b.rs + j0;
                    dst[..cols].copy_from_slice(&b.data[from..from + cols]);
                    dst[cols..].fill(0.0);
                }
            } else {
                if cols < nr {
                    panel.fill(0.0);
                }
                for j in 0..cols {
                    for p in 0..kc {
                        panel[p * nr + j] = b.at(p0 + p, j0 + j);
                    }
                }
            }
        }
    };
    if parallel {
        packed.par_chunks_mut(slab).enumerate().for_each(fill);
    } else {
        packed.chunks_mut(slab).enumerate().for_each(fill);
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
        let i0 = r0 + ip * MR;
        if a.cs == 1 && live == MR {
            // Rows contiguous along p: MR streams read in step, each panel row written whole.
            let src: [&[f32]; MR] = std::array::from_fn(|i| &a.data[(i0 + i) * a.rs + p0..][..kc]);
            for (p, dst) in panel.chunks_exact_mut(MR).take(kc).enumerate() {
                for (d, row) in dst.iter_mut().zip(&src) {
                    *d = row[p];
                }
            }
        } else if a.rs == 1 {
            // Columns contiguous along i (a transposed operand): each panel row is a copy.
            for (p, dst) in panel.chunks_exact_mut(MR).take(kc).enumerate() {
                dst[..live].copy_from_slice(&a.data[(p0 + p) * a.cs + i0..][..live]);
            }
        } else {
            for p in 0..kc {
                for i in 0..live {
                    panel[p * MR + i] = a.at(i0 + i, p0 + p);
                }
            }
        }
        for p in 0..kc {
            panel[p * MR + live..(p + 1) * MR].fill(0.0);
        }
    }
}

/// A hint to bring the line at `p` into L1 (never faults; no effect on results).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `C[i, j] ← fma(A(i, p), B(p, j), C[i, j])` for `p` in `0..kc` over one `MR × NV·LANES`
/// tile, held in registers; on the `first` slab C is not read (the chain starts from +0).
/// Step `p < ahead.1` also prefetches line `p` from `ahead.0`.
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
    ahead: (*const f32, usize),
) {
    let l = S::LANES;
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
        for p in 0..kc {
            if p < ahead.1 {
                prefetch(ahead.0.wrapping_add(16 * p));
            }
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
        }
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
            (13, 300, 33),
            (40, 513, 70),
            (301, 260, 49),
        ];
        for (m, k, n) in shapes {
            let a_store = rng.normal_vec(m * k);
            let b_store = rng.normal_vec(k * n);
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                // op(A) (m×k) and op(B) (k×n) read through the strides of their storage.
                let a = match ta {
                    false => Strided {
                        data: &a_store,
                        rs: k,
                        cs: 1,
                    },
                    true => Strided {
                        data: &a_store,
                        rs: 1,
                        cs: m,
                    },
                };
                let b = match tb {
                    false => Strided {
                        data: &b_store,
                        rs: n,
                        cs: 1,
                    },
                    true => Strided {
                        data: &b_store,
                        rs: 1,
                        cs: k,
                    },
                };
                let want = bits(&chain(a, b, (m, k, n)));
                let what = format!("{m}x{k}x{n} ta={ta} tb={tb}");
                for threads in 1..=3 {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("pool");
                    let got = pool.install(|| {
                        run::<_, 6>(Lanes8, 2, a, b, (m, k, n), true, |s, job, r0, out| {
                            block::<_, 6, 2>(s, job, r0, out)
                        })
                    });
                    assert_eq!(bits(&got), want, "portable, {what}, {threads} threads");
                    let got = pool.install(|| {
                        run::<_, 3>(Scalar, 5, a, b, (m, k, n), true, |s, job, r0, out| {
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

    /// Both vector kernels run where the CPU has them (a machine without AVX-512 still
    /// checks the AVX2 one here).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_vector_kernel_gives_the_bits_of_the_chain() {
        use crate::backend::cpu::simd::{Avx2, Avx512};
        let (m, k, n) = (29, 270, 45);
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
        let want = bits(&chain(a, b, (m, k, n)));
        if let Some(s) = Avx2::new() {
            let got = run::<_, 6>(s, 2, a, b, (m, k, n), false, |s, job, r0, out| {
                // SAFETY: the token proves AVX2 and FMA.
                unsafe { block_avx2(s, job, r0, out) }
            });
            assert_eq!(bits(&got), want, "AVX2");
        }
        if let Some(s) = Avx512::new() {
            let got = run::<_, 12>(s, 2, a, b, (m, k, n), false, |s, job, r0, out| {
                // SAFETY: the token proves AVX-512F.
                unsafe { block_avx512(s, job, r0, out) }
            });
            assert_eq!(bits(&got), want, "AVX-512");
        }
    }

    /// A reused (pooled) output buffer holding old values gives the same product: the first
    /// slab overwrites every element, edge tiles included.
    #[test]
    fn a_dirty_pooled_output_is_overwritten() {
        let (m, k, n) = (700, 520, 400);
        super::super::pool::give(vec![f32::NAN; m * n]);
        let mut rng = Rng::new(11);
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
        if let Some(got) = product(a, b, (m, k, n), true) {
            assert_eq!(bits(&got), bits(&chain(a, b, (m, k, n))));
        }
    }
}
