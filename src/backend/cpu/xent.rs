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
//! Three kernels compute these formulas with the same operations per row, so they give the
//! same bits:
//!
//! - **per row** (any `C`; used above the wide kernel's range, and above 16 classes without
//!   AVX2): the row's classes run on vector lanes
//!   ([`math::load_max`](super::math::load_max), [`math::exp_shifted_sum`](super::math::exp_shifted_sum)).
//!   Rows run in groups of [`GROUP_ROWS`], each pass over the whole group before the next, so
//!   the rows' dependency chains overlap; while a group's exponentials run, the same rows of
//!   the next group are prefetched, so that memory and arithmetic overlap (a row streamed in
//!   whole before its arithmetic would leave one idle while the other runs). At `C` of a few
//!   classes most of a row's time is loop overhead and a horizontal reduction.
//! - **across rows** (`C ≤` [`ACROSS_MAX_CLASSES`]): a block of rows side by side, one row
//!   per vector lane, the class loop unrolled. The block is written once over
//!   [`Simd`](super::simd::Simd) and runs as 8 lanes of arrays (portable), 8 AVX2 lanes or 16
//!   AVX-512 lanes; the block's `C` contiguous vectors are deinterleaved into one vector per
//!   class by permutes (up to 6 classes on AVX-512, 4 on AVX2) or above that by 16 × 16 or
//!   8 × 8 transposes, and the gradient interleaved back the same way. Blocks go in groups
//!   so that their dependency chains overlap: on 8 lanes four, each phase (exponentials and
//!   sums, then `ln`, then the gradient) over all four before the next; on 16 lanes eight,
//!   the exponentials of all eight, then the rest block by block; above 8 classes on 8 lanes
//!   and 7 on 16, one block at a time (see [`GROUP_BLOCKS`]); the next group's inputs and
//!   gradient rows are prefetched during the exponentials (the per-row kernel prefetches the
//!   inputs only: its gradient rows are another task's). Each lane repeats the per-row
//!   kernel's arithmetic exactly — the same 8 running maxima and partial sums for the first
//!   `⌊C/8⌋·8` classes, the same fixed tree, the rest in order ([`max_in_order`],
//!   [`exp_sum_in_order`]), the same [`math::exp`](super::math::exp),
//!   [`math::ln_of_sum`](super::math::ln_of_sum) and scaling — so every path gives the same
//!   bits; at two classes the exponential of the class at the maximum is `(m - m) + 1`, its
//!   exact value, so a row takes one ([`exp_sum_across`]). Labels are range-checked as the
//!   block reads them.
//! - **wide** (`ACROSS_MAX_CLASSES < C ≤` 127 on AVX-512, 48 on AVX2): a block of rows side
//!   by side as above, for any `C` at run time: the block's `z` and `s` are loaded tile by
//!   tile where they lie, added, and transposed ([`Simd::transpose_in`], 8 × 8 or 16 × 16,
//!   the last tile masked to the row's end) into one vector per class in an L1-sized buffer,
//!   the per-row kernel's passes run on those vectors (the next block's rows prefetched
//!   beside the exponentials), and the gradient is scaled as it is transposed back into
//!   place ([`Simd::transpose_out`], which saves a pass over the buffer): `u` is never
//!   written row-major. Above that `C` the per-row kernel measured faster on rows streamed
//!   from memory ([`Isa::wide_max_classes`]), and so it is above 48 classes for calls larger
//!   than a last-level cache ([`WIDE_CACHED_BYTES`]); so it is on CPUs without AVX2, where
//!   the per-row kernel is the portable twin (the same bits, tested).
//!
//! Rows run in parallel above a size threshold; each row is computed by one thread, so results
//! do not depend on the thread count.

use rayon::prelude::*;

use super::simd::{self, Lanes8, Simd};
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::{math, CpuStorage, PAR_MIN_ELEMS};
use crate::backend::XentArgs;
use crate::error::{Error, Result};

/// The most rows side by side in the across-rows kernel (one per lane of the widest vector).
const LANES: usize = 16;
/// Largest class count of the across-rows kernel.
pub(super) const ACROSS_MAX_CLASSES: usize = 16;
/// Rows per parallel task of the across-rows kernel (a multiple of [`LANES`]).
const TASK_ROWS: usize = 1024;

/// The inputs of one call, as slices.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub z: &'a [f32],
    pub shift: Option<&'a [f32]>,
    pub labels: &'a [u32],
    pub weights: Option<&'a [f32]>,
    pub cols: usize,
    pub grad_scale: f32,
}

impl<'a> Rows<'a> {
    /// The rows from `r0` on.
    fn starting_at(self, r0: usize) -> Rows<'a> {
        let c = self.cols;
        Rows {
            z: &self.z[r0 * c..],
            shift: self.shift.map(|s| &s[r0 * c..]),
            labels: &self.labels[r0..],
            weights: self.weights.map(|w| &w[r0..]),
            ..self
        }
    }
}

/// Which kernel takes rows of a given class count (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Across,
    Wide,
    PerRow,
}

impl Kernel {
    /// The kernel for rows of `cols` classes, the call reading and writing `bytes` in all.
    fn choose(isa: Isa, cols: usize, bytes: usize) -> Kernel {
        if (1..=ACROSS_MAX_CLASSES).contains(&cols) {
            Kernel::Across
        } else if cols <= isa.wide_max_classes(bytes) {
            Kernel::Wide
        } else {
            Kernel::PerRow
        }
    }
}

/// The most bytes (logits, shift and gradient) for which the wide kernel takes rows of more
/// than 48 classes on AVX-512. Beyond what the last-level cache holds the rows stream from
/// memory, and there the per-row kernel, reading each row in order, kept the memory busier
/// than the wide kernel's blocks of rows (AMD EPYC, Zen 4, 32 MiB L3, 2 threads, best of 3,
/// wide against per row: 100 classes, 24576 rows (29 MB) 1.12 against 1.21 ms, 32768 rows
/// (39 MB) 1.67 against 1.31, 81920 rows (98 MB) 4.66 against 3.24; 64 classes, 32768 rows
/// (25 MB) 0.68 against 0.87, 65536 rows (50 MB) 2.47 against 1.70; 128 classes, 65536
/// rows 4.74 against 2.66). Up to 48 classes the wide kernel stayed the faster from memory
/// too (131072 × 48 rows, 75 MB, 2.59 against 3.02 ms; AVX2 3.38 against 3.63).
const WIDE_CACHED_BYTES: usize = 32 << 20;

/// Which instruction set runs the across-rows kernel.
#[derive(Clone, Copy, Debug)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
}

impl Isa {
    /// Largest class count the wide kernel takes on this instruction set (0: none). Above it
    /// the per-row kernel measured faster on rows streamed from memory (2 threads, with both
    /// kernels prefetching; AVX-512: 16384 × 100 0.67–0.69 against 0.72–0.77 ms, × 127
    /// 0.75 against 0.84–0.89, 8192 × 128 0.39–0.40 against 0.37–0.38, × 200 0.69 against
    /// 0.56; AVX2: 32768 × 48 0.78–0.81 against 0.91–0.94, 16384 × 100 0.94 against 0.81).
    /// Without AVX2 the wide kernel's portable instantiation was the slower (100 classes: 98
    /// against 72 µs for 512 rows), so the per-row kernel is the portable twin. On AVX-512
    /// above 48 classes it also depends on `bytes`, what the call reads and writes: see
    /// [`WIDE_CACHED_BYTES`].
    fn wide_max_classes(self, bytes: usize) -> usize {
        match self {
            Isa::Portable => 0,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => 48,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) if bytes <= WIDE_CACHED_BYTES => 127,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => 48,
        }
    }

    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(s) = Avx512::new() {
                return Isa::Avx512(s);
            }
            if let Some(s) = Avx2::new() {
                return Isa::Avx2(s);
            }
        }
        Isa::Portable
    }
}

pub(super) fn shifted_xent(
    z: &CpuStorage,
    args: XentArgs<'_, CpuStorage, Vec<u32>>,
) -> Result<(CpuStorage, Option<CpuStorage>)> {
    fused(z, args, false)
}

/// [`shifted_xent`] with the row losses summed as `sum_all` sums them (blocks of its
/// `CHUNK` rows, each in 8 lanes and a fixed tree, then the blocks in order): each parallel
/// task is one such block, whose losses go to a task-local buffer and are added while in
/// L1, so no row-loss buffer is written to memory and read back. Below
/// [`SUMMED_MIN_BLOCKS_PER_THREAD`] blocks per thread the rows run as in [`shifted_xent`]
/// (in finer tasks) and are then summed: the same bits either way.
pub(super) fn shifted_xent_total(
    z: &CpuStorage,
    args: XentArgs<'_, CpuStorage, Vec<u32>>,
) -> Result<(CpuStorage, Option<CpuStorage>)> {
    fused(z, args, true)
}

/// Blocks of `sum_all` per thread below which the summed CE keeps the finer row split (a
/// block is `CHUNK` = 8192 rows; fewer blocks than this per thread would leave threads idle
/// or unevenly loaded).
const SUMMED_MIN_BLOCKS_PER_THREAD: usize = 4;

fn fused(
    z: &CpuStorage,
    args: XentArgs<'_, CpuStorage, Vec<u32>>,
    total: bool,
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
    let label_error = || {
        let (row, &label) = labels
            .iter()
            .enumerate()
            .find(|(_, &y)| y as usize >= cols)?;
        Some(Error::LabelOutOfRange {
            op: "shifted_cross_entropy",
            row,
            label,
            classes: cols,
        })
    };
    let isa = Isa::best();
    let streams = 1 + usize::from(shift.is_some()) + usize::from(write_grad);
    let kernel = Kernel::choose(isa, cols, (streams * 4).saturating_mul(rows * cols));
    // The across-rows kernel checks labels as it reads them; the others index by them.
    if kernel != Kernel::Across {
        if let Some(e) = label_error() {
            return Err(e);
        }
    }
    let input = Rows {
        z: z.as_slice(),
        shift: shift.map(|s| s.as_slice()),
        labels,
        weights: weights.map(|w| w.as_slice()),
        cols,
        grad_scale,
    };
    // Every element of both outputs is written below.
    let mut grad = if write_grad {
        super::pool::take_for_overwrite(rows * cols)
    } else {
        Vec::new()
    };
    let grad_out = write_grad.then_some(&mut grad[..]);
    let blocks = rows.div_ceil(SUM_BLOCK);
    let (losses, labels_ok) =
        if total && blocks >= SUMMED_MIN_BLOCKS_PER_THREAD * rayon::current_num_threads() {
            let (sum, ok) = summed_rows(isa, kernel, input, grad_out);
            (vec![sum], ok)
        } else {
            let mut losses = super::pool::take_for_overwrite(rows);
            let ok = match kernel {
                Kernel::Across => across_rows(isa, input, &mut losses, grad_out),
                Kernel::Wide => {
                    wide_rows(isa, input, &mut losses, grad_out);
                    true
                }
                Kernel::PerRow => {
                    per_row(input, &mut losses, grad_out, rows * cols >= PAR_MIN_ELEMS);
                    true
                }
            };
            if total {
                let sum = super::sum_fixed_order(&losses);
                super::pool::give(losses);
                (vec![sum], ok)
            } else {
                (losses, ok)
            }
        };
    if !labels_ok {
        if let Some(e) = label_error() {
            return Err(e);
        }
    }
    Ok((
        CpuStorage::new(losses),
        write_grad.then_some(CpuStorage::new(grad)),
    ))
}

/// Rows per block of `sum_all`'s fixed order.
const SUM_BLOCK: usize = super::CHUNK;

/// The rows in parallel tasks of one `sum_all` block each (each task runs its kernel on its
/// own thread, without splitting further): returns the sum of the row losses in `sum_all`'s
/// order and whether every label was below `C`.
fn summed_rows(isa: Isa, kernel: Kernel, input: Rows<'_>, grad: Option<&mut [f32]>) -> (f32, bool) {
    let (rows, cols) = (input.labels.len(), input.cols);
    let task = |l: &mut Vec<f32>, t: usize, g: Option<&mut [f32]>| {
        let r0 = t * SUM_BLOCK;
        let l = &mut l[..SUM_BLOCK.min(rows - r0)];
        match kernel {
            // The across-rows kernel adds its losses up as it writes them.
            Kernel::Across => {
                let done = across_dispatch(isa, input, r0, l, g);
                (
                    super::block_sum_from(done.lanes, done.summed, l),
                    done.labels_ok,
                )
            }
            Kernel::Wide => {
                wide_dispatch(isa, input, r0, l, g);
                (super::block_sum(l), true)
            }
            Kernel::PerRow => {
                per_row(input.starting_at(r0), l, g, false);
                (super::block_sum(l), true)
            }
        }
    };
    let scratch = || vec![0.0f32; SUM_BLOCK];
    let blocks: Vec<(f32, bool)> = match grad {
        Some(grad) => grad
            .par_chunks_mut(SUM_BLOCK * cols)
            .enumerate()
            .map_init(scratch, |l, (t, g)| task(l, t, Some(g)))
            .collect(),
        None => (0..rows.div_ceil(SUM_BLOCK))
            .into_par_iter()
            .map_init(scratch, |l, t| task(l, t, None))
            .collect(),
    };
    let sum = super::sum_blocks(blocks.iter().map(|b| b.0));
    (sum, blocks.iter().all(|b| b.1))
}

/// The across-rows kernel on the calling thread, for callers that split the rows themselves
/// (the fused linear + CE): `losses.len()` rows of `1 ..= ACROSS_MAX_CLASSES` classes, with
/// the bits of every other path. Returns whether every label was below `cols`.
pub(super) fn across_rows_here(
    input: Rows<'_>,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) -> bool {
    across_dispatch(Isa::best(), input, 0, losses, grad).labels_ok
}

/// Rows per group of the per-row kernel: each pass runs over the group's rows before the next
/// pass starts, so the rows' dependency chains (maximum → exponentials and sum → `ln` and
/// scale) overlap instead of running one after the other.
const GROUP_ROWS: usize = 4;

/// The per-row kernel: losses of all rows, and the gradient into `grad` when given.
fn per_row(input: Rows<'_>, losses: &mut [f32], grad: Option<&mut [f32]>, parallel: bool) {
    let Rows {
        z,
        shift,
        labels,
        weights,
        cols,
        grad_scale,
    } = input;
    let write_grad = grad.is_some();
    // Rows `g·GROUP_ROWS ..`: `u` is scratch for z + s (the gradient rows when they are written).
    let group_op = |g: usize, l: &mut [f32], u: &mut [f32]| {
        let i0 = g * GROUP_ROWS;
        let mut m = [0.0f32; GROUP_ROWS];
        let mut u_y = [0.0f32; GROUP_ROWS];
        let mut sum = [0.0f32; GROUP_ROWS];
        for (r, ur) in u.chunks_exact_mut(cols).enumerate().take(l.len()) {
            let i = i0 + r;
            m[r] = math::load_max(
                &z[i * cols..(i + 1) * cols],
                shift.map(|s| &s[i * cols..(i + 1) * cols]),
                ur,
            );
            u_y[r] = ur[labels[i] as usize];
        }
        // One exp per element: u becomes exp(u - m), and softmax = that / Σ.
        for (r, ur) in u.chunks_exact_mut(cols).enumerate().take(l.len()) {
            // The same row of the next group, whose loads would otherwise wait on memory
            // after this group's arithmetic instead of arriving during it.
            let next = ((i0 + GROUP_ROWS + r) * cols).min(z.len())..;
            let next = next.start..(next.start + cols).min(z.len());
            let next_s = shift.map_or(&[][..], |s| &s[next.clone()]);
            sum[r] = math::exp_shifted_sum(ur, m[r], [&z[next], next_s]);
        }
        for (r, ur) in u.chunks_exact_mut(cols).enumerate().take(l.len()) {
            let i = i0 + r;
            let lse = m[r] + math::ln_of_sum(sum[r]);
            let w = weights.map_or(1.0, |w| w[i]);
            l[r] = w * (lse - u_y[r]);
            if write_grad {
                let scale = grad_scale * w;
                math::scale(ur, scale / sum[r]);
                ur[labels[i] as usize] -= scale;
            }
        }
    };
    if let Some(grad) = grad {
        let body = |(g, (l, u)): (usize, (&mut [f32], &mut [f32]))| group_op(g, l, u);
        let u_rows = GROUP_ROWS * cols;
        if parallel {
            let l = losses.par_chunks_mut(GROUP_ROWS);
            l.zip(grad.par_chunks_mut(u_rows))
                .enumerate()
                .for_each(body);
        } else {
            let l = losses.chunks_mut(GROUP_ROWS);
            l.zip(grad.chunks_mut(u_rows)).enumerate().for_each(body);
        }
    } else {
        let body = |scratch: &mut Vec<f32>, (g, l): (usize, &mut [f32])| group_op(g, l, scratch);
        let scratch = || vec![0.0f32; GROUP_ROWS * cols];
        if parallel {
            losses
                .par_chunks_mut(GROUP_ROWS)
                .enumerate()
                .for_each_init(scratch, body);
        } else {
            let mut u = scratch();
            losses
                .chunks_mut(GROUP_ROWS)
                .enumerate()
                .for_each(|item| body(&mut u, item));
        }
    }
}

/// The across-rows kernel for `1 ≤ C ≤ ACROSS_MAX_CLASSES`, in tasks of [`TASK_ROWS`] rows.
/// Returns whether every label was below `C` (a row with another label gets no `-scale` and
/// a loss as if `u_y = 0`; the caller reports it).
fn across_rows(isa: Isa, input: Rows<'_>, losses: &mut [f32], grad: Option<&mut [f32]>) -> bool {
    let cols = input.cols;
    let task = |(t, (l, g)): (usize, (&mut [f32], Option<&mut [f32]>))| {
        across_dispatch(isa, input, t * TASK_ROWS, l, g).labels_ok
    };
    let parallel = losses.len() * cols >= PAR_MIN_ELEMS;
    match grad {
        Some(grad) if parallel => losses
            .par_chunks_mut(TASK_ROWS)
            .zip(grad.par_chunks_mut(TASK_ROWS * cols))
            .enumerate()
            .map(|(t, (l, g))| task((t, (l, Some(g)))))
            .reduce(|| true, |a, b| a & b),
        Some(grad) => losses
            .chunks_mut(TASK_ROWS)
            .zip(grad.chunks_mut(TASK_ROWS * cols))
            .enumerate()
            .fold(true, |ok, (t, (l, g))| task((t, (l, Some(g)))) & ok),
        None if parallel => losses
            .par_chunks_mut(TASK_ROWS)
            .enumerate()
            .map(|(t, l)| task((t, (l, None))))
            .reduce(|| true, |a, b| a & b),
        None => losses
            .chunks_mut(TASK_ROWS)
            .enumerate()
            .fold(true, |ok, (t, l)| task((t, (l, None))) & ok),
    }
}

/// What the across-rows kernel gives besides its losses and gradient.
#[derive(Clone, Copy, Debug)]
struct AcrossDone {
    /// Whether every label was below `C`.
    labels_ok: bool,
    /// `block_sum`'s 8 lane sums over the losses of the first `summed` rows (whole blocks,
    /// a multiple of 8), added as the kernel wrote them.
    lanes: [f32; 8],
    summed: usize,
}

/// Rows `r0 .. r0 + losses.len()` with the kernel for `input.cols` classes on `isa`.
fn across_dispatch(
    isa: Isa,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) -> AcrossDone {
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
) -> AcrossDone {
    match isa {
        Isa::Portable => across::<Lanes8, C>(Lanes8, input, r0, losses, grad),
        // SAFETY: the token exists, so the CPU has the instruction set.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(s) => unsafe { across_avx2::<C>(s, input, r0, losses, grad) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(s) => unsafe { across_avx512::<C>(s, input, r0, losses, grad) },
    }
}

/// [`across`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn across_avx2<const C: usize>(
    s: Avx2,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) -> AcrossDone {
    across::<Avx2, C>(s, input, r0, losses, grad)
}

/// [`across`] compiled for AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn across_avx512<const C: usize>(
    s: Avx512,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) -> AcrossDone {
    across::<Avx512, C>(s, input, r0, losses, grad)
}

/// The across-rows kernel for wide rows (`C > ACROSS_MAX_CLASSES`), in tasks of about
/// [`WIDE_TASK_ELEMS`] logits. The label of every row must be below `C` (checked before).
fn wide_rows(isa: Isa, input: Rows<'_>, losses: &mut [f32], grad: Option<&mut [f32]>) {
    let cols = input.cols;
    let task = (WIDE_TASK_ELEMS / cols / LANES).max(1) * LANES;
    let run = |(t, (l, g)): (usize, (&mut [f32], Option<&mut [f32]>))| {
        wide_dispatch(isa, input, t * task, l, g)
    };
    let parallel = losses.len() * cols >= PAR_MIN_ELEMS;
    match grad {
        Some(grad) if parallel => losses
            .par_chunks_mut(task)
            .zip(grad.par_chunks_mut(task * cols))
            .enumerate()
            .for_each(|(t, (l, g))| run((t, (l, Some(g))))),
        Some(grad) => losses
            .chunks_mut(task)
            .zip(grad.chunks_mut(task * cols))
            .enumerate()
            .for_each(|(t, (l, g))| run((t, (l, Some(g))))),
        None if parallel => losses
            .par_chunks_mut(task)
            .enumerate()
            .for_each(|(t, l)| run((t, (l, None)))),
        None => losses
            .chunks_mut(task)
            .enumerate()
            .for_each(|(t, l)| run((t, (l, None)))),
    }
}

/// Logits per parallel task of the wide kernel.
const WIDE_TASK_ELEMS: usize = 1 << 17;

fn wide_dispatch(
    isa: Isa,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    match isa {
        Isa::Portable => wide::<Lanes8>(Lanes8, input, r0, losses, grad),
        // SAFETY: the token exists, so the CPU has the instruction set.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(s) => unsafe { wide_avx2(s, input, r0, losses, grad) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(s) => unsafe { wide_avx512(s, input, r0, losses, grad) },
    }
}

/// [`wide`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wide_avx2(
    s: Avx2,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    wide::<Avx2>(s, input, r0, losses, grad)
}

/// [`wide`] compiled for AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_avx512(
    s: Avx512,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
) {
    wide::<Avx512>(s, input, r0, losses, grad)
}

/// Rows `r0 .. r0 + losses.len()` of `C` classes, `S::LANES` at a time, one row per lane: the
/// block's `u = z + s` is added and transposed tile by tile into one vector per class, the
/// per-row kernel's passes run on those vectors — the same 8 running maxima and partial sums
/// over the first `⌊C/8⌋·8` classes, the fixed tree, the rest in order, the same `exp`,
/// `ln_of_sum` and scaling, so the same bits — and the gradient is transposed back. A last
/// partial block runs padded (zero logits, label 0, weight 1; its results are dropped).
#[inline(always)]
fn wide<S: Simd>(
    s: S,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    mut grad: Option<&mut [f32]>,
) {
    let (c, n, rows) = (input.cols, S::LANES, losses.len());
    assert!(
        n <= LANES
            && input.z.len() >= (r0 + rows) * c
            && input.shift.is_none_or(|v| v.len() >= (r0 + rows) * c)
            && input.labels.len() >= r0 + rows
            && input.weights.is_none_or(|w| w.len() >= r0 + rows)
            && grad.as_ref().is_none_or(|g| g.len() == rows * c)
    );
    // Class-major vectors, padded to whole tiles (the transposes write them as floats: a
    // vector is its `n` lanes in order), and row-major scratch for a last partial block.
    assert_eq!(std::mem::size_of::<S::F>(), 4 * n);
    let mut t = vec![s.splat(0.0); c.div_ceil(n) * n];
    let mut scratch = vec![0.0f32; n * c];
    for b in (0..rows).step_by(n) {
        let k = (rows - b).min(n);
        let (i0, e) = (r0 + b, (r0 + b) * c..(r0 + b + k) * c);
        let z = &input.z[e.clone()];
        // A whole block is read where it lies (z + s added as the tiles load); a last partial
        // one is padded with zero rows in the scratch first.
        let full = k == n;
        let (src, add) = if full {
            (z.as_ptr(), input.shift.map(|sh| sh[e.clone()].as_ptr()))
        } else {
            match input.shift {
                Some(sh) => {
                    for ((d, &a), &v) in scratch.iter_mut().zip(z).zip(&sh[e.clone()]) {
                        *d = a + v;
                    }
                }
                None => scratch[..k * c].copy_from_slice(z),
            }
            scratch[k * c..].fill(0.0);
            (scratch.as_ptr(), None)
        };
        let tp = t.as_mut_ptr().cast::<f32>();
        for j0 in (0..c).step_by(n) {
            // SAFETY: `n` rows of `c` floats from `src` (and `add`), column tile `j0` of `t`.
            unsafe {
                s.transpose_in(
                    src.add(j0),
                    add.map(|a| a.add(j0)),
                    c,
                    (c - j0).min(n),
                    tp.add(j0 * n),
                )
            };
        }
        let mut y = [0u32; LANES];
        let mut u_y = [0.0f32; LANES];
        let mut w = [1.0f32; LANES];
        for r in 0..k {
            y[r] = input.labels[i0 + r];
            // SAFETY: `y < c` (checked before the kernel runs): lane r of vector y.
            u_y[r] = unsafe { *tp.add(y[r] as usize * n + r) };
            w[r] = input.weights.map_or(1.0, |w| w[i0 + r]);
        }
        let m = max_in_order(s, &t[..c]);
        // The next block's logits, shift and gradient rows, prefetched beside the exponentials.
        let ahead = ((i0 + n) * c).min(input.z.len())..((i0 + 2 * n) * c).min(input.z.len());
        let ahead_g = ((b + n) * c).min(rows * c)..((b + 2 * n) * c).min(rows * c);
        let next = [
            &input.z[ahead.clone()],
            input.shift.map_or(&[][..], |s| &s[ahead]),
            grad.as_deref().map_or(&[][..], |g| &g[ahead_g]),
        ];
        let sum = exp_sum_in_order(s, &mut t[..c], m, &next);
        let wv = unsafe { s.load(w.as_ptr()) };
        let lse = s.add(m, simd::ln_of_sum(s, sum));
        let mut l = [0.0f32; LANES];
        unsafe { s.store(l.as_mut_ptr(), s.mul(wv, s.sub(lse, s.load(u_y.as_ptr())))) };
        losses[b..b + k].copy_from_slice(&l[..k]);
        let Some(g) = grad.as_deref_mut() else {
            continue;
        };
        let scale = s.mul(s.splat(input.grad_scale), wv);
        let factor = s.div(scale, sum);
        let out = if full {
            &mut g[b * c..(b + n) * c]
        } else {
            &mut scratch[..]
        };
        for j0 in (0..c).step_by(n) {
            // SAFETY: column tile `j0` of `t`, `n` rows of `c` floats of `out`.
            unsafe {
                s.transpose_out(
                    t.as_ptr().cast::<f32>().add(j0 * n),
                    factor,
                    (c - j0).min(n),
                    out.as_mut_ptr().add(j0),
                    c,
                )
            };
        }
        let mut sc = [0.0f32; LANES];
        unsafe { s.store(sc.as_mut_ptr(), scale) };
        for r in 0..k {
            out[r * c + y[r] as usize] -= sc[r];
        }
        if !full {
            g[b * c..(b + k) * c].copy_from_slice(&scratch[..k * c]);
        }
    }
}

/// The maximum over the class vectors `u` as `math::load_max` takes it: 8 running maxima over
/// the first `⌊C/8⌋·8` classes (a strict `>`), folded with `max` from -∞, then the rest in
/// order. (Loops, not closures: a closure is not compiled for the caller's instruction set.)
#[inline(always)]
fn max_in_order<S: Simd>(s: S, u: &[S::F]) -> S::F {
    let body = u.len() / 8 * 8;
    let neg_inf = s.splat(f32::NEG_INFINITY);
    let mut m = neg_inf;
    if body > 0 {
        let mut lanes = [neg_inf; 8];
        for chunk in u[..body].chunks_exact(8) {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane = s.select(s.gt(v, *lane), v, *lane);
            }
        }
        for lane in lanes {
            m = s.max(m, lane);
        }
    }
    for &v in &u[body..] {
        m = s.max(m, v);
    }
    m
}

/// `u = exp(u - m)` in place and its sum as `math::exp_shifted_sum` adds: 8 partial sums from
/// 0 over the first `⌊C/8⌋·8` classes, the fixed tree, then the rest in order. Beside the
/// exponential of class `j` it prefetches each slice of `next` at `j · S::LANES` (the next
/// block's logits, shift and gradient rows: one line of each per class on AVX-512, each line
/// twice on AVX2's 8 lanes; the gradient's lines are read ahead too, so that their stores
/// find them in L1).
#[inline(always)]
fn exp_sum_in_order<S: Simd>(s: S, u: &mut [S::F], m: S::F, next: &[&[f32]]) -> S::F {
    let body = u.len() / 8 * 8;
    let mut acc = [s.splat(0.0); 8];
    for (c, chunk) in u[..body].chunks_exact_mut(8).enumerate() {
        for (l, (a, v)) in acc.iter_mut().zip(chunk).enumerate() {
            for n in next {
                math::prefetch(n, (8 * c + l) * S::LANES);
            }
            *v = simd::exp(s, s.sub(*v, m));
            *a = s.add(*a, *v);
        }
    }
    let mut sum = s.add(
        s.add(s.add(acc[0], acc[4]), s.add(acc[2], acc[6])),
        s.add(s.add(acc[1], acc[5]), s.add(acc[3], acc[7])),
    );
    for (j, v) in u.iter_mut().enumerate().skip(body) {
        for n in next {
            math::prefetch(n, j * S::LANES);
        }
        *v = simd::exp(s, s.sub(*v, m));
        sum = s.add(sum, *v);
    }
    sum
}

/// `u = exp(u - m)` in place and its sum, as [`exp_sum_in_order`] gives them, with one
/// exponential per row at two classes: where `u_j == m` (ordered, so neither is NaN),
/// `exp(u_j - m)` is `exp(m - m)`, which is `(m - m) + 1` (1 for a finite `m`, NaN for an
/// infinite one, as `exp` gives them), so only the other class's exponential is taken.
/// Where neither class equals `m`, `m` is NaN or infinite or both `u` are NaN, and both
/// ways give NaN. (AMD EPYC, Zen 4, 32768 × 2 rows, one thread: 2–3 % faster on 16 lanes,
/// 4–11 % on AVX2's 8.)
#[inline(always)]
fn exp_sum_across<S: Simd, const C: usize>(
    s: S,
    u: &mut [S::F; C],
    m: S::F,
    next: &[&[f32]],
) -> S::F {
    if C != 2 {
        return exp_sum_in_order(s, u, m, next);
    }
    for n in next {
        math::prefetch(n, 0);
        math::prefetch(n, S::LANES);
    }
    let first = s.eq(u[0], m);
    let e = simd::exp(s, s.sub(s.select(first, u[1], u[0]), m));
    let one = s.add(s.sub(m, m), s.splat(1.0));
    u[0] = s.select(first, one, e);
    u[1] = s.select(first, e, one);
    // `exp_sum_in_order`'s order: the (empty) body's partial sums, 0, then each class.
    s.add(s.add(s.splat(0.0), u[0]), u[1])
}

/// Blocks of rows the across-rows kernel takes at once on 8 lanes, so that the blocks' long
/// dependency chains (exponentials, then `ln` and a division) overlap instead of each
/// block's waiting on its own: each phase of [`block`] (exponentials and sums, `ln` and
/// losses, gradient) runs over all of them before the next (on AVX2's 16 registers 3–27 %
/// faster than one block at a time; two phases 1–12 % slower, groups of two 4–16 % slower,
/// of eight within 3 %), up to [`GROUP_MAX_CLASSES`] classes.
const GROUP_BLOCKS: usize = 4;
/// Most classes for which 8-lane blocks run in groups: above that a group's class vectors
/// (`4 · C`) no longer fit AVX2's 16 registers near enough, and one block at a time measured
/// faster (AMD EPYC, Zen 4, `MEMAWARE_SIMD=avx2`, one thread, alternated in one process:
/// 7281 × 9 rows 43.0 against 48.1 µs, 6553 × 10 58.4 against 64.2, 5461 × 12 47.1 against
/// 51.0, 4096 × 16 level; at 8 classes groups stay 7 % faster).
const GROUP_MAX_CLASSES: usize = 8;
/// Blocks of rows taken at once on 16 lanes, up to [`TWO_PHASE_MAX_CLASSES`] classes:
/// [`block_two_phase`] runs the exponentials of all of them, then the rest block by block.
/// Four were faster than one block at a time (AMD EPYC, Zen 4, one thread, the kernels
/// alternated in one process: 32768 × 2 rows 48 against 62 µs, × 3 72 against 81, 16384 × 5
/// 56 against 74, 8192 × 7 54 against 58), where the three-phase order of [`block`] was
/// not; eight were another 2.5–4.5 % faster than four at 2 to 7 classes.
const TWO_PHASE_BLOCKS: usize = 8;
/// Most classes for which 16-lane blocks run in groups ([`block_two_phase`]); from 8 to 16
/// classes groups measured level with one block at a time (and groups of two no better).
const TWO_PHASE_MAX_CLASSES: usize = 7;

/// Rows `r0 .. r0 + losses.len()`, `S::LANES` at a time, in groups of [`GROUP_BLOCKS`]
/// blocks on 8 lanes (up to [`GROUP_MAX_CLASSES`] classes) and of [`TWO_PHASE_BLOCKS`] on 16
/// (up to [`TWO_PHASE_MAX_CLASSES`]), above that one by one; the last partial block runs
/// padded. Returns whether every label was below `C`.
#[inline(always)]
fn across<S: Simd, const C: usize>(
    s: S,
    input: Rows<'_>,
    r0: usize,
    losses: &mut [f32],
    mut grad: Option<&mut [f32]>,
) -> AcrossDone {
    let lanes = S::LANES;
    let n = losses.len();
    let z = &input.z[r0 * C..(r0 + n) * C];
    let shift = input.shift.map(|s| &s[r0 * C..(r0 + n) * C]);
    let labels = &input.labels[r0..r0 + n];
    let weights = input.weights.map(|w| &w[r0..r0 + n]);
    let full = n / lanes * lanes;
    let wide = lanes >= 16;
    let (blocks, max_classes) = if wide {
        (TWO_PHASE_BLOCKS, TWO_PHASE_MAX_CLASSES)
    } else {
        (GROUP_BLOCKS, GROUP_MAX_CLASSES)
    };
    let group = blocks * lanes;
    let grouped = if C > max_classes {
        0
    } else {
        n / group * group
    };
    let mut ok = true;
    let mut acc = s.zero_h();
    let mut b = 0;
    while b < full {
        let rows = if b < grouped { group } else { lanes };
        let e = b * C..(b + rows) * C;
        // The next group's logits, shift and gradient rows, prefetched while this group's
        // exponentials run.
        let ahead = ((b + rows) * C).min(z.len())..((b + 2 * rows) * C).min(z.len());
        let (g, next_g) = match grad.as_deref_mut() {
            Some(g) => {
                let (cur, rest) = g[e.start..].split_at_mut(e.len());
                (Some(cur), &rest[..ahead.len()])
            }
            None => (None, &[][..]),
        };
        let next = [
            &z[ahead.clone()],
            shift.map_or(&[][..], |s| &s[ahead]),
            next_g,
        ];
        let args = (
            &z[e.clone()],
            shift.map(|s| &s[e.clone()]),
            &labels[b..b + rows],
            weights.map(|w| &w[b..b + rows]),
        );
        let l = &mut losses[b..b + rows];
        let sum = (&mut acc, b);
        ok &= if b < grouped && wide {
            block_two_phase::<S, C, TWO_PHASE_BLOCKS>(s, args, next, input.grad_scale, l, g, sum)
        } else if b < grouped {
            block::<S, C, GROUP_BLOCKS>(s, args, next, input.grad_scale, l, g, sum)
        } else {
            block::<S, C, 1>(s, args, next, input.grad_scale, l, g, sum)
        };
        b += rows;
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
        ok &= block::<S, C, 1>(
            s,
            (
                &zp.as_flattened()[..lanes * C],
                shift.map(|_| &sp.as_flattened()[..lanes * C]),
                &yp[..lanes],
                weights.map(|_| &wp[..lanes]),
            ),
            [&[]; 3],
            input.grad_scale,
            &mut lp[..lanes],
            grad.is_some()
                .then_some(&mut gp.as_flattened_mut()[..lanes * C]),
            // The padding rows' losses are dropped: the caller adds the last rows up.
            (&mut s.zero_h(), 0),
        );
        losses[full..].copy_from_slice(&lp[..rest]);
        if let Some(g) = grad {
            g[full * C..].copy_from_slice(&gp.as_flattened()[..rest * C]);
        }
    }
    AcrossDone {
        labels_ok: ok,
        lanes: s.h_to_array(acc),
        summed: full,
    }
}

/// One group's inputs: logits, shift (`G · LANES · C` values, row-major), labels and weights
/// (`G · LANES`).
type BlockIn<'a> = (&'a [f32], Option<&'a [f32]>, &'a [u32], Option<&'a [f32]>);

/// The lengths a group of `G` blocks of `n` rows takes: `G · n · C` logits, shift and
/// gradient values, `G · n` labels, weights and losses.
#[inline(always)]
fn check_block<const C: usize, const G: usize>(
    n: usize,
    (z, shift, labels, weights): BlockIn<'_>,
    losses: &[f32],
    grad: Option<&[f32]>,
) {
    assert!(
        z.len() == G * n * C
            && shift.is_none_or(|v| v.len() == G * n * C)
            && labels.len() == G * n
            && weights.is_none_or(|w| w.len() == G * n)
            && losses.len() == G * n
            && grad.is_none_or(|g| g.len() == G * n * C)
    );
}

/// `G` blocks of `S::LANES` rows of `C` classes, one row per lane. `losses` holds
/// `G · LANES` values and `grad` `G · LANES · C`. Each lane repeats the per-row kernel on
/// its row operation for operation (see the module docs); each phase runs over the `G`
/// blocks before the next. `next` (logits, shift and gradient rows of the rows after these,
/// each possibly empty) is prefetched during the exponentials. Returns whether every label
/// was below `C`. The losses are added into `sum.0`'s running sums as they are written, the
/// first as value `sum.1` of the sequence.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<S: Simd, const C: usize, const G: usize>(
    s: S,
    (z, shift, labels, weights): BlockIn<'_>,
    next: [&[f32]; 3],
    grad_scale: f32,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
    (acc, row): (&mut S::H, usize),
) -> bool {
    let n = S::LANES;
    check_block::<C, G>(n, (z, shift, labels, weights), losses, grad.as_deref());
    let mut u = [[s.splat(0.0); C]; G];
    let mut m = [s.splat(0.0); G];
    let mut y = [s.splat_i(0); G];
    let mut u_y = [s.splat(0.0); G];
    let mut sum = [s.splat(0.0); G];
    let mut labels_ok = true;
    for g in 0..G {
        // SAFETY (every load and store in this function): the lengths were checked above.
        let e = unsafe { exps::<S, C>(s, (z, shift, labels), next, g, &mut labels_ok) };
        (u[g], m[g], y[g], u_y[g], sum[g]) = (e.e, e.m, e.y, e.u_y, e.sum);
    }
    let w: [S::F; G] = std::array::from_fn(|g| match weights {
        Some(w) => unsafe { s.load(w.as_ptr().add(g * n)) },
        None => s.splat(1.0),
    });
    for g in 0..G {
        let l = unsafe {
            store_losses(
                s,
                m[g],
                sum[g],
                u_y[g],
                w[g],
                losses.as_mut_ptr().add(g * n),
            )
        };
        *acc = s.add_in_sum_order(*acc, l, row + g * n);
    }
    if let Some(grad) = grad {
        for g in 0..G {
            let at = unsafe { grad.as_mut_ptr().add(g * n * C) };
            unsafe { store_gradient(s, &u[g], y[g], sum[g], w[g], grad_scale, at) };
        }
    }
    labels_ok
}

/// One block's state between its exponentials and the rest: `e_j = exp(u_j - m)`, the row
/// maxima `m`, the labels, `u` at the label and `Σ_j e_j`.
struct Exps<S: Simd, const C: usize> {
    e: [S::F; C],
    m: S::F,
    y: S::I,
    u_y: S::F,
    sum: S::F,
}

/// The first phase of block `g` of a group (`S::LANES` rows from row `g · S::LANES` of `z`,
/// `shift`, `labels`): `u = z + s`, its maxima, `u` at the label, and the exponentials with
/// their sums, prefetching the block's share of `next` (the rows after the group) beside the
/// exponentials. Clears `ok` if a label is not below `C`.
///
/// # Safety
/// `z` (and `shift`) must hold `(g + 1) · S::LANES · C` floats and `labels`
/// `(g + 1) · S::LANES` values.
#[inline(always)]
unsafe fn exps<S: Simd, const C: usize>(
    s: S,
    (z, shift, labels): (&[f32], Option<&[f32]>, &[u32]),
    next: [&[f32]; 3],
    g: usize,
    ok: &mut bool,
) -> Exps<S, C> {
    let n = S::LANES;
    let next = next.map(|v| v.get(g * n * C..).unwrap_or(&[]));
    // SAFETY: the caller's contract.
    let (z, shift, labels) = unsafe {
        (
            z.as_ptr().add(g * n * C),
            shift.map(|v| v.as_ptr().add(g * n * C)),
            labels.as_ptr().add(g * n),
        )
    };
    // u[j] = z + s of class j, one row per lane (`math::load_max`'s first loop).
    let mut e = unsafe { s.load_columns::<C>(z, shift) };
    let m = max_in_order(s, &e);
    // u at the label, before the exponentials.
    let y = unsafe { s.load_u32(labels) };
    *ok &= !s.any_at_least(y, C as u32);
    let mut u_y = s.splat(0.0);
    for (j, &uj) in e.iter().enumerate() {
        u_y = s.select(s.eq_i(y, j as i32), uj, u_y);
    }
    let sum = exp_sum_across(s, &mut e, m, &next);
    Exps { e, m, y, u_y, sum }
}

/// One block's losses `w · (m + ln Σ - u_y)` into `losses`; returns them.
///
/// # Safety
/// `losses` must hold `S::LANES` floats.
#[inline(always)]
unsafe fn store_losses<S: Simd>(
    s: S,
    m: S::F,
    sum: S::F,
    u_y: S::F,
    w: S::F,
    losses: *mut f32,
) -> S::F {
    let lse = s.add(m, simd::ln_of_sum(s, sum));
    let l = s.mul(w, s.sub(lse, u_y));
    unsafe { s.store(losses, l) };
    l
}

/// One block's gradient rows from `e_j = exp(u_j - m)`: `scale · e_j / Σ`, less `scale` at
/// the label (`scale = grad_scale · w`), interleaved back into `grad`.
///
/// # Safety
/// `grad` must hold `S::LANES · C` floats.
#[inline(always)]
unsafe fn store_gradient<S: Simd, const C: usize>(
    s: S,
    e: &[S::F; C],
    y: S::I,
    sum: S::F,
    w: S::F,
    grad_scale: f32,
    grad: *mut f32,
) {
    let scale = s.mul(s.splat(grad_scale), w);
    let factor = s.div(scale, sum);
    let mut v = *e;
    for (j, vj) in v.iter_mut().enumerate() {
        let p = s.mul(*vj, factor);
        *vj = s.select(s.eq_i(y, j as i32), s.sub(p, scale), p);
    }
    unsafe { s.store_columns::<C>(grad, &v) };
}

/// [`block`] in two phases: the exponentials of all `G` blocks, then the rest of each block
/// in turn. The blocks' state is one `Exps` value each here, where `block` keeps arrays: one
/// function with either order over `Exps` values was level on 16 lanes but 2–4 % slower on
/// AVX2's 8 (AMD EPYC, Zen 4, 32768 × 2 and 6553 × 10 rows, one thread).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_two_phase<S: Simd, const C: usize, const G: usize>(
    s: S,
    (z, shift, labels, weights): BlockIn<'_>,
    next: [&[f32]; 3],
    grad_scale: f32,
    losses: &mut [f32],
    grad: Option<&mut [f32]>,
    (acc, row): (&mut S::H, usize),
) -> bool {
    let n = S::LANES;
    check_block::<C, G>(n, (z, shift, labels, weights), losses, grad.as_deref());
    let mut ok = true;
    // A loop, not `array::from_fn`: a closure is not compiled for the caller's instruction
    // set.
    let mut blocks = [const { std::mem::MaybeUninit::<Exps<S, C>>::uninit() }; G];
    for (g, b) in blocks.iter_mut().enumerate() {
        // SAFETY: the lengths were checked above.
        b.write(unsafe { exps::<S, C>(s, (z, shift, labels), next, g, &mut ok) });
    }
    let grad = grad.map(|g| g.as_mut_ptr());
    for (g, b) in blocks.iter().enumerate() {
        // SAFETY: the loop above wrote every block; the lengths were checked above.
        unsafe {
            let w = match weights {
                Some(w) => s.load(w.as_ptr().add(g * n)),
                None => s.splat(1.0),
            };
            let b = b.assume_init_ref();
            let l = store_losses(s, b.m, b.sum, b.u_y, w, losses.as_mut_ptr().add(g * n));
            *acc = s.add_in_sum_order(*acc, l, row + g * n);
            if let Some(p) = grad {
                store_gradient(s, &b.e, b.y, b.sum, w, grad_scale, p.add(g * n * C));
            }
        };
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled version of the across-rows kernel this CPU can run.
    fn isas() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            out.extend(Avx2::new().map(Isa::Avx2));
            out.extend(Avx512::new().map(Isa::Avx512));
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

    /// A test case's rows (logits, shift, labels, weights), with the shift and the weights
    /// where asked.
    fn rows_of<'a>(
        (z, s, y, w): (&'a [f32], &'a [f32], &'a [u32], &'a [f32]),
        cols: usize,
        with_shift: bool,
        with_weights: bool,
    ) -> Rows<'a> {
        Rows {
            z,
            shift: with_shift.then_some(s),
            labels: y,
            weights: with_weights.then_some(w),
            cols,
            grad_scale: 0.37,
        }
    }

    /// The per-row kernel's losses and gradient (zeros when not written).
    fn reference(input: Rows<'_>, write_grad: bool) -> (Vec<f32>, Vec<f32>) {
        let rows = input.labels.len();
        let mut l = vec![0.0f32; rows];
        let mut g = vec![0.0f32; rows * input.cols];
        per_row(input, &mut l, write_grad.then_some(&mut g[..]), true);
        (l, g)
    }

    /// `run` gives the per-row kernel's bits on every instruction set, for each class count
    /// and row count, with poisoned logits, with and without shift, weights and gradient.
    fn matches_per_row(
        seed: u64,
        classes: &[usize],
        row_counts: &[usize],
        run: impl Fn(Isa, Rows<'_>, &mut [f32], Option<&mut [f32]>),
    ) {
        let mut rng = crate::rng::Rng::new(seed);
        for &cols in classes {
            for &rows in row_counts {
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
                        (false, false, false),
                    ] {
                        let case = (&z[..], &s[..], &y[..], &w[..]);
                        let input = rows_of(case, cols, with_shift, with_weights);
                        let (want_l, want_g) = reference(input, write_grad);
                        for isa in isas() {
                            let what = format!(
                                "{isa:?} C={cols} N={rows} poison={poison} shift={with_shift} \
                                 weights={with_weights} grad={write_grad}"
                            );
                            let mut l = vec![7.0f32; rows];
                            let mut g = vec![7.0f32; rows * cols];
                            run(isa, input, &mut l, write_grad.then_some(&mut g[..]));
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
    fn across_rows_matches_per_row_bit_for_bit_on_every_path() {
        let classes: Vec<usize> = (1..=ACROSS_MAX_CLASSES).collect();
        let rows = [1, 15, 16, 17, 100, 2 * TASK_ROWS + 37];
        matches_per_row(19, &classes, &rows, |isa, input, l, g| {
            assert!(across_rows(isa, input, l, g), "labels in range");
        });
    }

    #[test]
    fn wide_rows_match_per_row_bit_for_bit_on_every_path() {
        let classes = [17, 23, 31, 32, 33, 48, 49, 100, 127, 128, 257, 1000];
        matches_per_row(23, &classes, &[1, 15, 16, 17, 100, 300], wide_rows);
    }

    #[test]
    fn summed_rows_give_sum_all_of_the_row_losses_on_every_path() {
        // Every kernel (across rows, wide, per row), whole and partial last blocks; the
        // gradient against the per-row kernel's.
        let mut rng = crate::rng::Rng::new(29);
        for (cols, rows) in [
            (2, 3 * SUM_BLOCK + 37),
            (3, 2 * SUM_BLOCK),
            (10, SUM_BLOCK + 1),
        ]
        .into_iter()
        .chain([(24, SUM_BLOCK + 9), (100, 2 * SUM_BLOCK - 3), (200, 5)])
        {
            let z = logits(&mut rng, rows * cols, true);
            let s = logits(&mut rng, rows * cols, false);
            let y: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
            let w = rng.uniform_vec(rows, 0.0, 3.0);
            for (with_shift, with_weights) in [(false, false), (true, true)] {
                let case = (&z[..], &s[..], &y[..], &w[..]);
                let input = rows_of(case, cols, with_shift, with_weights);
                let (want_l, want_g) = reference(input, true);
                let want = super::super::sum_fixed_order(&want_l);
                // Both choices by size: rows in cache and rows streamed from memory.
                for (isa, bytes) in isas().into_iter().flat_map(|i| [(i, 0), (i, usize::MAX)]) {
                    let kernel = Kernel::choose(isa, cols, bytes);
                    let what = format!("{isa:?} {kernel:?} C={cols} N={rows} shift={with_shift}");
                    let mut g = vec![7.0f32; rows * cols];
                    let (sum, ok) = summed_rows(isa, kernel, input, Some(&mut g));
                    assert!(ok, "labels in range, {what}");
                    assert_eq!(bits(&[sum]), bits(&[want]), "sum, {what}");
                    assert_eq!(bits(&g), bits(&want_g), "gradient, {what}");
                    let (sum, _) = summed_rows(isa, kernel, input, None);
                    assert_eq!(bits(&[sum]), bits(&[want]), "sum without gradient, {what}");
                }
            }
        }
    }

    #[test]
    fn the_kernel_is_chosen_by_class_count_and_size() {
        for isa in isas() {
            let choose = |cols, bytes| Kernel::choose(isa, cols, bytes);
            assert_eq!(choose(2, usize::MAX), Kernel::Across, "{isa:?}");
            assert_eq!(choose(16, 0), Kernel::Across, "{isa:?}");
            let (cached, streamed) = match isa {
                Isa::Portable => ([Kernel::PerRow; 3], [Kernel::PerRow; 3]),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(_) => (
                    [Kernel::Wide, Kernel::PerRow, Kernel::PerRow],
                    [Kernel::Wide, Kernel::PerRow, Kernel::PerRow],
                ),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512(_) => (
                    [Kernel::Wide, Kernel::Wide, Kernel::PerRow],
                    [Kernel::Wide, Kernel::PerRow, Kernel::PerRow],
                ),
            };
            for (i, cols) in [48, 100, 128].into_iter().enumerate() {
                assert_eq!(
                    choose(cols, WIDE_CACHED_BYTES),
                    cached[i],
                    "{isa:?} C={cols}"
                );
                assert_eq!(
                    choose(cols, WIDE_CACHED_BYTES + 1),
                    streamed[i],
                    "{isa:?} C={cols}"
                );
            }
        }
    }

    #[test]
    fn the_summed_loss_has_the_bits_of_the_summed_rows_for_any_thread_count() {
        // Through the backend entry points, so both the fused blocks (enough rows per thread)
        // and the rows-then-sum fallback run; and a label out of range is an error on both.
        let mut rng = crate::rng::Rng::new(31);
        for cols in [2, 10, 100] {
            let rows = 9 * SUM_BLOCK + 5;
            let z = CpuStorage::new(logits(&mut rng, rows * cols, false));
            let mut y: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
            fn args(y: &Vec<u32>, rows: usize, cols: usize) -> XentArgs<'_, CpuStorage, Vec<u32>> {
                XentArgs {
                    shift: None,
                    labels: y,
                    weights: None,
                    rows,
                    cols,
                    grad_scale: 0.5,
                    write_grad: true,
                }
            }
            let (rows_l, rows_g) = shifted_xent(&z, args(&y, rows, cols)).expect("row losses");
            let want = super::super::sum_fixed_order(rows_l.as_slice());
            let rows_g = bits(rows_g.expect("gradient").as_slice());
            for threads in [1, 2, 3] {
                let pool = super::super::test_pool(threads);
                let (l, g) = pool
                    .install(|| shifted_xent_total(&z, args(&y, rows, cols)))
                    .expect("summed loss");
                assert_eq!(l.as_slice().len(), 1);
                let what = format!("C={cols}, {threads} threads");
                assert_eq!(l.as_slice()[0].to_bits(), want.to_bits(), "{what}");
                assert_eq!(bits(g.expect("gradient").as_slice()), rows_g, "{what}");
            }
            y[rows - 2] = cols as u32;
            for threads in [1, 3] {
                let pool = super::super::test_pool(threads);
                let got = pool.install(|| shifted_xent_total(&z, args(&y, rows, cols)));
                assert!(
                    matches!(got, Err(Error::LabelOutOfRange { row, .. }) if row == rows - 2),
                    "C={cols}, {threads} threads"
                );
            }
        }
    }

    #[test]
    fn across_rows_flags_a_label_out_of_range_on_every_path() {
        let mut rng = crate::rng::Rng::new(21);
        for cols in [1, 2, 3, 5, 10, 16] {
            for rows in [1, 16, 100, 3 * TASK_ROWS + 5] {
                let z = logits(&mut rng, rows * cols, false);
                for bad in [cols as u32, cols as u32 + 5, u32::MAX] {
                    let mut y: Vec<u32> =
                        (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
                    y[rng.below(rows as u64) as usize] = bad;
                    let input = Rows {
                        z: &z,
                        shift: None,
                        labels: &y,
                        weights: None,
                        cols,
                        grad_scale: 1.0,
                    };
                    for isa in isas() {
                        let mut l = vec![0.0f32; rows];
                        let mut g = vec![0.0f32; rows * cols];
                        assert!(
                            !across_rows(isa, input, &mut l, Some(&mut g)),
                            "{isa:?} C={cols} N={rows} label {bad}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn across_rows_gives_the_same_bits_for_any_thread_count() {
        let mut rng = crate::rng::Rng::new(20);
        for cols in [2, 3, 10, 100] {
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
                let pool = super::super::test_pool(threads);
                pool.install(|| {
                    let mut l = vec![0.0f32; rows];
                    let mut g = vec![0.0f32; rows * cols];
                    if cols <= ACROSS_MAX_CLASSES {
                        across_rows(Isa::best(), input, &mut l, Some(&mut g));
                    } else {
                        wide_rows(Isa::best(), input, &mut l, Some(&mut g));
                    }
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
