//! Fused linear layer + shifted softmax-cross-entropy on the CPU, for few classes.
//!
//! For `z_i = W x_i + b` (`W` is `C × D`, `C ≤ 4`), the loss of
//! [`xent`](super::xent) and its gradients `dW = Σ_i dz_i x_iᵀ`, `db = Σ_i dz_i`, computed in
//! one pass over `X`. Each thread takes a run of consecutive rows in groups of [`GROUP`]:
//! while the cross-entropy of one group is done, the next group's logits are taken in the
//! same passes over the columns as this group's share of `dW` ([`dots_and_axpy4`]: four
//! rows' share beside the logits of as many rows as the registers hold, [`dot_rows`]), so
//! `X` is read from memory once (`4·N·D` bytes) and the gradient's arithmetic runs while the
//! next rows arrive. The unfused chain (`X · Wᵀ`, cross-entropy, `dZᵀ · X`) streams `X` twice.
//!
//! Optional extra weight rows (`also`, e.g. the other XRM twin) get their logits from the same
//! pass, so a caller that needs `X · Wᵀ` for the loss and `X · Vᵀ` for something else reads
//! `X` from memory once.
//!
//! Determinism: `dW` is summed over blocks of [`ROWS`] rows, each block's partial accumulated
//! four rows at a time in row order ([`accumulate_rows`]' association), and the partials are
//! added in block order: the same bits for any thread count and any split of the rows. The
//! partials (`⌈N/64⌉ · C·D` floats, 230 KB for 1000 × 1800 → 2) live in one buffer of the
//! calling thread, kept between calls up to [`KEEP_PARTIALS`] elements: allocated per call,
//! their pages were faulted in (and zeroed by the kernel) on every step.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{accumulate_rows, dots_and_axpy4, row_block_dots, row_dots};
use super::{xent, CpuStorage};
use crate::backend::{LinearXentArgs, LinearXentOut};
use crate::error::{Error, Result};

/// Rows per block.
const ROWS: usize = 64;
/// Rows per group: the cross-entropy runs on a group while the next group's logits are taken
/// (a multiple of 4, the rows `accumulate_rows` takes per pass).
const GROUP: usize = 8;
/// Largest class count of the fused path.
pub(super) const MAX_CLASSES: usize = 4;

/// The fused pass over `x` (`n × d`, row-major) for `a.xent.cols <= MAX_CLASSES`; see
/// [`BackendStorage::linear_xent`](crate::backend::BackendStorage::linear_xent).
pub(super) fn linear_xent(
    x: &[f32],
    a: LinearXentArgs<'_, CpuStorage, Vec<u32>>,
) -> Result<LinearXentOut<CpuStorage>> {
    let (n, d, c) = (a.xent.rows, a.d, a.xent.cols);
    let labels = a.xent.labels.as_slice();
    if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &y)| y as usize >= c) {
        return Err(Error::LabelOutOfRange {
            op: "linear_shifted_cross_entropy",
            row,
            label,
            classes: c,
        });
    }
    let w = a.weight.as_slice();
    let bias = a.bias.map(CpuStorage::as_slice);
    let shift = a.xent.shift.map(CpuStorage::as_slice);
    let weights = a.xent.weights.map(CpuStorage::as_slice);
    let grad_scale = a.xent.grad_scale;
    let e = a.also.map_or(0, |(_, _, rows)| rows);
    // The loss's classes first, then the extra rows: every logit is one dot product, whatever
    // group of columns it is taken in.
    let also = a.also.map_or(&[][..], |(v, _, _)| v.as_slice());
    let cols: Vec<Vec<f32>> = (0..c)
        .map(|j| w[j * d..(j + 1) * d].to_vec())
        .chain((0..e).map(|j| also[j * d..(j + 1) * d].to_vec()))
        .collect();
    let mut logits = vec![0.0f32; n * c];
    let mut also_logits = vec![0.0f32; n * e];
    let mut row_losses = vec![0.0f32; n];
    let pass = Pass {
        x,
        d,
        cols: &cols,
        c,
        bias,
        shift,
        labels,
        weights,
        grad_scale,
    };
    // Runs of whole blocks: two per thread (the bits do not depend on the split).
    let blocks = n.div_ceil(ROWS).max(1);
    let parallel = n * d >= 1 << 18;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let run_rows = blocks.div_ceil(2 * threads).max(1) * ROWS;
    // Every block's share of dW, one buffer for the call (each run zeroes its blocks).
    let stride = pass.partial_stride();
    let mut block_gw = PARTIALS.take();
    block_gw.resize(blocks * stride, 0.0);
    /// A run's logits, losses and blocks of partials.
    type RunOut<'a> = ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]);
    let run = |(ri, ((z, l), gw)): (usize, RunOut)| pass.run(ri * run_rows, z, l, gw);
    let run_gw = (run_rows / ROWS) * stride;
    let partials: Vec<Partial> = if parallel {
        let runs: Vec<Vec<Partial>> = logits
            .par_chunks_mut(run_rows * c)
            .zip(row_losses.par_chunks_mut(run_rows))
            .zip(block_gw.par_chunks_mut(run_gw))
            .enumerate()
            .map(run)
            .collect();
        runs.into_iter().flatten().collect()
    } else {
        logits
            .chunks_mut(run_rows * c)
            .zip(row_losses.chunks_mut(run_rows))
            .zip(block_gw.chunks_mut(run_gw))
            .enumerate()
            .flat_map(run)
            .collect()
    };
    let mut grad_w = vec![0.0f32; c * d];
    let mut grad_b = vec![0.0f32; c];
    for (p, gw) in partials.iter().zip(block_gw.chunks_exact(stride)) {
        grad_w
            .iter_mut()
            .zip(&gw[..c * d])
            .for_each(|(o, &v)| *o += v);
        grad_b.iter_mut().zip(&p.gb).for_each(|(o, &v)| *o += v);
    }
    if block_gw.len() <= KEEP_PARTIALS {
        PARTIALS.set(block_gw);
    }
    for (dst, p) in also_logits.chunks_mut(ROWS * e.max(1)).zip(&partials) {
        dst.copy_from_slice(&p.also);
    }
    // The extra rows' bias in f32 adds, as `broadcast_add` makes them.
    if let Some((_, Some(b), _)) = a.also {
        for row in also_logits.chunks_exact_mut(e.max(1)) {
            row.iter_mut().zip(b.as_slice()).for_each(|(z, b)| *z += b);
        }
    }
    Ok(LinearXentOut {
        logits: CpuStorage::new(logits),
        row_losses: CpuStorage::new(row_losses),
        grad_w: CpuStorage::new(grad_w),
        grad_b: a.bias.map(|_| CpuStorage::new(grad_b)),
        also_logits: a.also.map(|_| CpuStorage::new(also_logits)),
    })
}

/// Largest buffer of per-block `dW` partials (elements) a thread keeps between calls.
const KEEP_PARTIALS: usize = 1 << 20;

thread_local! {
    /// The calling thread's buffer of per-block `dW` partials (see the module docs).
    static PARTIALS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One block's share of the bias gradient, and its rows' extra logits (its share of `dW`
/// lies in the call's buffer of partials).
struct Partial {
    gb: Vec<f32>,
    also: Vec<f32>,
}

/// What every run of rows reads: `x` (`n × d`), the weight rows as columns (the loss's `c`
/// first, then the extra rows), and the cross-entropy's inputs for all rows.
struct Pass<'a> {
    x: &'a [f32],
    d: usize,
    cols: &'a [Vec<f32>],
    c: usize,
    bias: Option<&'a [f32]>,
    shift: Option<&'a [f32]>,
    labels: &'a [u32],
    weights: Option<&'a [f32]>,
    grad_scale: f32,
}

impl Pass<'_> {
    /// Floats per block in the buffer of `dW` partials: `c × d`, but at least one, so that
    /// rows without features still split into runs.
    fn partial_stride(&self) -> usize {
        (self.c * self.d).max(1)
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// Rows `r0 .. r0 + l.len()` (whole blocks, but for the last run): their logits into `z`,
    /// losses into `l`, each block's share of `dW` into the first `c × d` of its
    /// [`partial_stride`](Self::partial_stride) floats of `gw` (overwritten), and one
    /// [`Partial`] per block.
    fn run(&self, r0: usize, z: &mut [f32], l: &mut [f32], gw: &mut [f32]) -> Vec<Partial> {
        let (rows, c, d, width) = (l.len(), self.c, self.d, self.cols.len());
        let mut all = vec![0.0f32; rows * width];
        let mut dz = vec![0.0f32; rows * c];
        gw.fill(0.0);
        let mut gw: Vec<&mut [f32]> = gw
            .chunks_mut(self.partial_stride())
            .map(|b| &mut b[..c * d])
            .collect();
        let groups: Vec<Range<usize>> = (0..rows)
            .step_by(GROUP)
            .map(|g0| g0..(g0 + GROUP).min(rows))
            .collect();
        for r in groups[0].clone().step_by(2) {
            self.logits(r0 + r, r + 1 < groups[0].end, &mut all[r * width..], 0);
        }
        // Rows of logits per pass with dW, and the columns that pass takes.
        let step = dot_rows(width);
        let first = &self.cols[..width.min(MAX_CLASSES)];
        for (gi, cur) in groups.iter().enumerate() {
            // The group's logits, losses and dz (labels were checked), by the cross-entropy's
            // own kernel.
            for (zr, row) in z[cur.start * c..cur.end * c]
                .chunks_exact_mut(c)
                .zip(all[cur.start * width..].chunks_exact(width))
            {
                zr.copy_from_slice(&row[..c]);
                if let Some(b) = self.bias {
                    zr.iter_mut().zip(b).for_each(|(z, &b)| *z += b);
                }
            }
            let at = r0 + cur.start..r0 + cur.end;
            let input = xent::Rows {
                z: &z[cur.start * c..cur.end * c],
                shift: self.shift.map(|s| &s[at.start * c..at.end * c]),
                labels: &self.labels[at.clone()],
                weights: self.weights.map(|w| &w[at.clone()]),
                cols: c,
                grad_scale: self.grad_scale,
            };
            let dz_cur = Some(&mut dz[cur.start * c..cur.end * c]);
            xent::across_rows_here(input, &mut l[cur.clone()], dz_cur);
            // The next group's logits; at every fourth row, `step` rows of them in one pass
            // with four of this group's rows' share of dW, while those are still in cache.
            let gw = &mut *gw[cur.start / ROWS];
            let next = groups.get(gi + 1).cloned().unwrap_or(cur.end..cur.end);
            let mut done = cur.start;
            let mut r = next.start;
            while r < next.end {
                if r + step > next.end || done + 4 > cur.end || (r - next.start) % 4 != 0 {
                    if step == 1 {
                        // One row by the same kernel, without dW: its portable twin runs
                        // on vectors, `row_dots`' does not.
                        let x = self.row(r0 + r);
                        let out = &mut all[r * width..(r + 1) * width];
                        dots_and_axpy4([x], first, [&mut *out], &[], [x; 4], gw);
                        if width > MAX_CLASSES {
                            self.logits(r0 + r, false, out, 1);
                        }
                        r += 1;
                        continue;
                    }
                    // In pairs, but none reaching over a fourth row, where a pass with dW
                    // starts.
                    let pair = r + 1 < next.end && (r + 1 - next.start) % 4 != 0;
                    self.logits(r0 + r, pair, &mut all[r * width..], 0);
                    r += 1 + usize::from(pair);
                    continue;
                }
                let mut coef = [[0.0f32; 4]; MAX_CLASSES];
                for (j, cf) in coef.iter_mut().enumerate().take(c) {
                    *cf = std::array::from_fn(|t| dz[(done + t) * c + j]);
                }
                let b = std::array::from_fn(|t| self.row(r0 + done + t));
                let out = &mut all[r * width..(r + step) * width];
                match step {
                    4 => {
                        let xs = std::array::from_fn(|t| self.row(r0 + r + t));
                        dots_and_axpy4(xs, first, rows4(out, width), &coef[..c], b, gw);
                    }
                    2 => {
                        let xs = [self.row(r0 + r), self.row(r0 + r + 1)];
                        let (z0, z1) = out.split_at_mut(width);
                        dots_and_axpy4(xs, first, [z0, z1], &coef[..c], b, gw);
                    }
                    _ => dots_and_axpy4([self.row(r0 + r)], first, [out], &coef[..c], b, gw),
                }
                // Logit columns past the first four, as a separate product takes them.
                if width > MAX_CLASSES {
                    self.logits(r0 + r, step == 2, out, 1);
                }
                done += 4;
                r += step;
            }
            let dz_at = |j: usize, p: usize| dz[(p - r0) * c + j];
            accumulate_rows(&dz_at, c, r0 + done..r0 + cur.end, self.x, d, 0, d, gw);
        }
        let blocks = dz.chunks(ROWS * c).zip(all.chunks(ROWS * width));
        blocks
            .map(|(dz, all)| {
                let mut gb = vec![0.0f32; c];
                for row in dz.chunks_exact(c) {
                    gb.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
                }
                let also = all.chunks_exact(width).flat_map(|row| &row[c..]);
                Partial {
                    gb,
                    also: also.copied().collect(),
                }
            })
            .collect()
    }

    /// Logits of row `i` and, when `pair`, of row `i + 1` into the rows of `z`, in groups of
    /// [`MAX_CLASSES`] columns from group `skip` on: each column load serves both rows.
    fn logits(&self, i: usize, pair: bool, z: &mut [f32], skip: usize) {
        let width = self.cols.len();
        let groups = self.cols.chunks(MAX_CLASSES).skip(skip);
        if pair {
            let (z0, z1) = z.split_at_mut(width);
            let xs = [self.row(i), self.row(i + 1)];
            let outs = z0.chunks_mut(MAX_CLASSES).zip(z1.chunks_mut(MAX_CLASSES));
            for (group, (z0, z1)) in groups.zip(outs.skip(skip)) {
                row_block_dots(xs, group, [z0, z1]);
            }
        } else {
            for (group, z0) in groups.zip(z.chunks_mut(MAX_CLASSES).skip(skip)) {
                row_dots(self.row(i), group, z0);
            }
        }
    }
}

/// Rows whose logits [`dots_and_axpy4`] takes in one pass beside a share of `dW`, for `width`
/// logit columns: as many as keep its accumulators (`rows · min(width, 4)` sets of 32
/// partial sums) in registers. On 16 lanes a set is two of 32 registers: four rows at up to
/// two columns, else two. On 8 lanes (AVX2's 16 registers, or the portable arrays) a set is
/// four, so one row: four rows there spilled (AMD EPYC, Zen 4, `MEMAWARE_SIMD=avx2`, one
/// thread, 1000 × 1800 → 2: 327–331 µs a step with one row against 374–382 with four, two
/// rows 344–346 in a probe; portable 554–568 against 583–589; level at 3 and 4 classes).
fn dot_rows(width: usize) -> usize {
    if super::has_avx512() {
        if width <= 2 {
            4
        } else {
            2
        }
    } else {
        1
    }
}

/// The first four rows of `width` floats of `z`.
fn rows4(z: &mut [f32], width: usize) -> [&mut [f32]; 4] {
    let (z0, rest) = z.split_at_mut(width);
    let (z1, rest) = rest.split_at_mut(width);
    let (z2, rest) = rest.split_at_mut(width);
    [z0, z1, z2, &mut rest[..width]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::XentArgs;

    /// The pipelined pass against its parts taken one after another: logits by `row_dots`
    /// (+ bias), the cross-entropy by its own kernel over all rows, `dW` as per-block
    /// `accumulate_rows` summed in block order: the same bits at awkward sizes (rows not a
    /// multiple of the group or the block, lengths with tails, up to four extra rows), with and
    /// without bias, shift and weights, on 1, 2 and 3 threads.
    #[test]
    fn the_pipelined_pass_has_the_bits_of_its_parts_on_any_thread_count() {
        let mut rng = crate::rng::Rng::new(41);
        let shapes = [
            (1usize, 5usize, 1usize, 0usize),
            (7, 33, 2, 0),
            (100, 47, 3, 1),
            (130, 64, 2, 2),
            (333, 129, 4, 4),
            (1000, 300, 2, 0),
            (517, 1800, 2, 2),
        ];
        for (case, &(n, d, c, e)) in shapes.iter().enumerate() {
            let x = rng.normal_vec(n * d);
            let w = rng.normal_vec(c * d);
            let v = rng.normal_vec(e * d);
            let bias = rng.normal_vec(c);
            let shift = rng.normal_vec(n * c);
            let weights = rng.uniform_vec(n, 0.2, 2.0);
            let labels: Vec<u32> = (0..n).map(|i| (i * 7 % c) as u32).collect();
            let (with_bias, with_shift, with_weights) =
                (case % 2 == 0, case % 3 != 1, case % 2 == 1);
            // The parts.
            let cols: Vec<Vec<f32>> = (0..c)
                .map(|j| w[j * d..(j + 1) * d].to_vec())
                .chain((0..e).map(|j| v[j * d..(j + 1) * d].to_vec()))
                .collect();
            let mut all = vec![0.0f32; n * (c + e)];
            for (i, out) in all.chunks_exact_mut(c + e).enumerate() {
                for (group, out) in cols.chunks(MAX_CLASSES).zip(out.chunks_mut(MAX_CLASSES)) {
                    row_dots(&x[i * d..(i + 1) * d], group, out);
                }
            }
            let mut z: Vec<f32> = all
                .chunks_exact(c + e)
                .flat_map(|r| r[..c].to_vec())
                .collect();
            if with_bias {
                z.chunks_exact_mut(c)
                    .for_each(|r| r.iter_mut().zip(&bias).for_each(|(z, b)| *z += b));
            }
            let also_want: Vec<f32> = all
                .chunks_exact(c + e)
                .flat_map(|r| r[c..].to_vec())
                .collect();
            let (mut loss_want, mut dz) = (vec![0.0f32; n], vec![0.0f32; n * c]);
            let input = xent::Rows {
                z: &z,
                shift: with_shift.then_some(&shift[..]),
                labels: &labels,
                weights: with_weights.then_some(&weights[..]),
                cols: c,
                grad_scale: 0.37,
            };
            assert!(xent::across_rows_here(input, &mut loss_want, Some(&mut dz)));
            let (mut gw_want, mut gb_want) = (vec![0.0f32; c * d], vec![0.0f32; c]);
            for b0 in (0..n).step_by(ROWS) {
                let b1 = (b0 + ROWS).min(n);
                let mut gw = vec![0.0f32; c * d];
                accumulate_rows(&|j, p| dz[p * c + j], c, b0..b1, &x, d, 0, d, &mut gw);
                let mut gb = vec![0.0f32; c];
                for row in dz[b0 * c..b1 * c].chunks_exact(c) {
                    gb.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
                }
                gw_want.iter_mut().zip(&gw).for_each(|(o, &v)| *o += v);
                gb_want.iter_mut().zip(&gb).for_each(|(o, &v)| *o += v);
            }
            // The pass.
            let store = |v: &[f32]| CpuStorage::new(v.to_vec());
            let (ws, bs, vs, ss, wts) = (
                store(&w),
                store(&bias),
                store(&v),
                store(&shift),
                store(&weights),
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for threads in [1, 2, 3] {
                let pool = super::super::test_pool(threads);
                let out = pool
                    .install(|| {
                        linear_xent(
                            &x,
                            LinearXentArgs {
                                weight: &ws,
                                bias: with_bias.then_some(&bs),
                                d,
                                xent: XentArgs {
                                    shift: with_shift.then_some(&ss),
                                    labels: &labels,
                                    weights: with_weights.then_some(&wts),
                                    rows: n,
                                    cols: c,
                                    grad_scale: 0.37,
                                    write_grad: true,
                                },
                                also: (e > 0).then_some((&vs, None, e)),
                            },
                        )
                    })
                    .unwrap();
                let what = format!("n {n}, d {d}, c {c}, e {e}, {threads} threads");
                assert_eq!(bits(out.logits.as_slice()), bits(&z), "logits, {what}");
                assert_eq!(
                    bits(out.row_losses.as_slice()),
                    bits(&loss_want),
                    "losses, {what}"
                );
                assert_eq!(bits(out.grad_w.as_slice()), bits(&gw_want), "dW, {what}");
                if with_bias {
                    assert_eq!(
                        bits(out.grad_b.unwrap().as_slice()),
                        bits(&gb_want),
                        "db, {what}"
                    );
                }
                if e > 0 {
                    assert_eq!(
                        bits(out.also_logits.unwrap().as_slice()),
                        bits(&also_want),
                        "also, {what}"
                    );
                }
            }
        }
    }
}
