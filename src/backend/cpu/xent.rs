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
//! for the unfused add → log_softmax → pick → backward chain. Rows run in parallel above a
//! size threshold; each row is computed by one thread, so results do not depend on the
//! thread count.

use rayon::prelude::*;

use super::{CpuStorage, PAR_MIN_ELEMS};
use crate::backend::XentArgs;
use crate::error::{Error, Result};

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
    let z = z.as_slice();
    let shift = shift.map(|s| s.as_slice());
    let weights = weights.map(|w| w.as_slice());
    let mut losses = vec![0.0f32; rows];
    let mut grad = if write_grad {
        // Every element is written below.
        super::pool::take_for_overwrite(rows * cols)
    } else {
        Vec::new()
    };

    // One row: `u` is scratch for z + s (the gradient row when it is written).
    let row_op = |i: usize, u: &mut [f32]| -> f32 {
        let zr = &z[i * cols..(i + 1) * cols];
        let sr = shift.map(|s| &s[i * cols..(i + 1) * cols]);
        let m = super::math::load_max(zr, sr, u);
        let y = labels[i] as usize;
        let u_y = u[y];
        // One exp per element: u becomes exp(u - m), and softmax = that / Σ.
        let sum = super::math::exp_shifted_sum(u, m);
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

    if write_grad {
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
    Ok((
        CpuStorage::new(losses),
        write_grad.then_some(CpuStorage::new(grad)),
    ))
}
