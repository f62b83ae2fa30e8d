//! Fused linear layer + shifted softmax-cross-entropy on the CPU, for few classes.
//!
//! For `z_i = W x_i + b` (`W` is `C × D`, `C ≤ 4`), the loss of
//! [`xent`](super::xent) and its gradients `dW = Σ_i dz_i x_iᵀ`, `db = Σ_i dz_i`, computed in
//! one pass over `X`: each block of [`ROWS`] rows is read from memory once for its logits and
//! read again from cache (a block is `ROWS · D · 4` bytes, 460 KB for `D = 1800`) for its share
//! of `dW`. The unfused chain (`X · Wᵀ`, cross-entropy, `dZᵀ · X`) streams `X` twice.
//!
//! Optional extra weight rows (`also`, e.g. the other XRM twin) get their logits from the same
//! pass, so a caller that needs `X · Wᵀ` for the loss and `X · Vᵀ` for something else reads
//! `X` from memory once.
//!
//! Determinism: each block's partial `dW` is accumulated in row order by one thread, and the
//! partials are added in block order, whatever the thread count.

use rayon::prelude::*;

use super::gemm::{accumulate_rows, row_block_dots, row_dots};
use super::{math, CpuStorage};
use crate::backend::{LinearXentArgs, LinearXentOut};
use crate::error::{Error, Result};

/// Rows per block.
const ROWS: usize = 64;
/// Rows per group within a block: a multiple of 4, the rows `accumulate_rows` takes per pass.
const GROUP: usize = 4;
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
    let width = c + e;
    let mut logits = vec![0.0f32; n * c];
    let mut also_logits = vec![0.0f32; n * e];
    let mut row_losses = vec![0.0f32; n];
    let block =
        |(bi, (z, l)): (usize, (&mut [f32], &mut [f32]))| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let r0 = bi * ROWS;
            let rows = l.len();
            let mut dz = vec![0.0f32; rows * c];
            let mut all = vec![0.0f32; rows * width];
            let mut gw = vec![0.0f32; c * d];
            // Groups of GROUP rows: logits, loss and dz of the group, then its share of dW
            // while its rows are still in L1. The groups start at multiples of 4 from the
            // block's first row, so dW is accumulated exactly as one pass over the block would.
            for g0 in (0..rows).step_by(GROUP) {
                let g1 = (g0 + GROUP).min(rows);
                // Logits two rows at a time (each column load serves both rows).
                for (pi, zp) in all[g0 * width..g1 * width]
                    .chunks_mut(2 * width)
                    .enumerate()
                {
                    let i = r0 + g0 + 2 * pi;
                    let x0 = &x[i * d..(i + 1) * d];
                    if zp.len() == 2 * width {
                        let (z0, z1) = zp.split_at_mut(width);
                        let x1 = &x[(i + 1) * d..(i + 2) * d];
                        for ((group, z0), z1) in cols
                            .chunks(MAX_CLASSES)
                            .zip(z0.chunks_mut(MAX_CLASSES))
                            .zip(z1.chunks_mut(MAX_CLASSES))
                        {
                            row_block_dots([x0, x1], group, [z0, z1]);
                        }
                    } else {
                        for (group, z0) in cols.chunks(MAX_CLASSES).zip(zp.chunks_mut(MAX_CLASSES))
                        {
                            row_dots(x0, group, z0);
                        }
                    }
                }
                for r in g0..g1 {
                    let i = r0 + r;
                    let zr = &mut z[r * c..(r + 1) * c];
                    zr.copy_from_slice(&all[r * width..r * width + c]);
                    if let Some(b) = bias {
                        zr.iter_mut().zip(b).for_each(|(z, &b)| *z += b);
                    }
                    let mut u = [0.0f32; MAX_CLASSES];
                    for j in 0..c {
                        u[j] = zr[j] + shift.map_or(0.0, |s| s[i * c + j]);
                    }
                    let m = u[..c].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for v in u[..c].iter_mut() {
                        *v = math::exp(*v - m);
                        sum += *v;
                    }
                    let y = labels[i] as usize;
                    let wi = weights.map_or(1.0, |w| w[i]);
                    let u_y = zr[y] + shift.map_or(0.0, |s| s[i * c + y]);
                    l[r] = wi * (m + math::ln(sum) - u_y);
                    let scale = grad_scale * wi;
                    let factor = scale / sum;
                    for j in 0..c {
                        dz[r * c + j] = factor * u[j];
                    }
                    dz[r * c + y] -= scale;
                }
                let dz_at = |j: usize, p: usize| dz[(p - r0) * c + j];
                accumulate_rows(&dz_at, c, r0 + g0..r0 + g1, x, d, 0, d, &mut gw);
            }
            let mut also_block = Vec::with_capacity(rows * e);
            for row in all.chunks_exact(width) {
                also_block.extend_from_slice(&row[c..]);
            }
            let mut gb = vec![0.0f32; c];
            for r in 0..rows {
                for j in 0..c {
                    gb[j] += dz[r * c + j];
                }
            }
            (gw, gb, also_block)
        };
    let partials: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = if n * d >= 1 << 18 {
        logits
            .par_chunks_mut(ROWS * c)
            .zip(row_losses.par_chunks_mut(ROWS))
            .enumerate()
            .map(block)
            .collect()
    } else {
        logits
            .chunks_mut(ROWS * c)
            .zip(row_losses.chunks_mut(ROWS))
            .enumerate()
            .map(block)
            .collect()
    };
    let mut grad_w = vec![0.0f32; c * d];
    let mut grad_b = vec![0.0f32; c];
    for (gw, gb, _) in &partials {
        grad_w.iter_mut().zip(gw).for_each(|(o, &v)| *o += v);
        grad_b.iter_mut().zip(gb).for_each(|(o, &v)| *o += v);
    }
    for (dst, (_, _, src)) in also_logits.chunks_mut(ROWS * e.max(1)).zip(&partials) {
        dst.copy_from_slice(src);
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
