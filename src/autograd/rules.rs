//! Every backward rule, in one place. Given an op, its output and the gradient `g` of the
//! loss with respect to that output, each rule returns the gradient with respect to each
//! input that may need one. Rules run under `no_grad` and use tensor ops, or for the adjoints
//! of indexing (`index_select`, `gather`, `narrow`) the matching storage primitive
//! (`index_add_rows`, `scatter_cols`, `copy2d`) that every backend implements, so they work
//! on every backend.

use super::Op;
use crate::backend::{BinaryOp, ReduceOp, UnaryOp};
use crate::error::Result;
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Sums `g` down to `shape`: the adjoint of NumPy broadcasting.
pub(crate) fn sum_to(g: &Tensor, shape: &Shape) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let mut t = g.clone();
    // Leading axes that broadcasting added.
    while t.rank() > shape.rank() {
        t = t.sum(0)?;
    }
    for axis in 0..shape.rank() {
        if shape.dims()[axis] == 1 && t.dims()[axis] != 1 {
            t = t.sum_keepdim(axis)?;
        }
    }
    t.reshape(shape.clone())
}

/// `g_is_one` says that `g` is the seed of `backward` (all ones), which the fused
/// cross-entropy uses to hand over its precomputed gradient without another pass over it.
pub(super) fn backward(
    op: &Op,
    out: &Tensor,
    g: &Tensor,
    g_is_one: bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    Ok(match op {
        Op::Unary(x, u) => {
            let dx = match *u {
                UnaryOp::Neg => g.neg()?,
                UnaryOp::Exp => g.mul(out)?,
                UnaryOp::Log => g.div(x)?,
                UnaryOp::Tanh => g.mul(&out.square()?.affine(-1.0, 1.0)?)?,
                UnaryOp::Relu => g.mul(&x.step()?)?,
                UnaryOp::Sigmoid => g.mul(&out.mul(&out.affine(-1.0, 1.0)?)?)?,
                UnaryOp::Sqrt => g.div(&out.scale(2.0)?)?,
                UnaryOp::Square => g.mul(&x.scale(2.0)?)?,
                UnaryOp::Recip => g.mul(&out.square()?)?.neg()?,
                UnaryOp::Step => return Ok(vec![]),
                UnaryOp::Affine { mul, .. } => g.scale(mul)?,
                UnaryOp::Powf(p) => g.mul(&x.powf(p - 1.0)?.scale(p)?)?,
            };
            vec![(x.clone(), dx)]
        }
        Op::Binary(a, b, op) => {
            let (da, db) = match op {
                BinaryOp::Add => (g.clone(), g.clone()),
                BinaryOp::Sub => (g.clone(), g.neg()?),
                BinaryOp::Mul => (g.broadcast_mul(b)?, g.broadcast_mul(a)?),
                BinaryOp::Div => {
                    let da = g.broadcast_div(b)?;
                    let db = g.broadcast_mul(a)?.broadcast_div(&b.square()?)?.neg()?;
                    (da, db)
                }
                BinaryOp::Maximum => {
                    // The gradient goes to the operand that won; ties go to the left one.
                    let left_won = out.broadcast_eq(a)?;
                    let da = g.mul(&left_won)?;
                    let db = g.mul(&left_won.affine(-1.0, 1.0)?)?;
                    (da, db)
                }
                BinaryOp::Eq => return Ok(vec![]),
            };
            let mut out = Vec::with_capacity(2);
            if a.tracks_grad() {
                out.push((a.clone(), sum_to(&da, a.shape())?));
            }
            if b.tracks_grad() {
                out.push((b.clone(), sum_to(&db, b.shape())?));
            }
            out
        }
        Op::Reduce(x, ReduceOp::Sum, _) => vec![(x.clone(), g.broadcast_as(x.shape().clone())?)],
        Op::Reduce(x, ReduceOp::Max, axis) => {
            let is_max = x.broadcast_eq(out)?;
            let ties = is_max.sum_keepdim(*axis)?;
            let dx = is_max.broadcast_mul(&g.div(&ties)?)?;
            vec![(x.clone(), dx)]
        }
        Op::Matmul {
            lhs,
            rhs,
            lhs_t,
            rhs_t,
        } => {
            // With C = op(A)·op(B): d op(A) = g·op(B)ᵀ and d op(B) = op(A)ᵀ·g; a stored
            // transpose receives the transpose of that, written as a product that reads its
            // operands transposed instead of copying them.
            // An operand that needs no gradient (a data batch) costs nothing: its gradient
            // would be as large as the data.
            let mut out = Vec::with_capacity(2);
            if lhs.tracks_grad() {
                let da = match (lhs_t, rhs_t) {
                    (false, false) => g.matmul_t(rhs)?,
                    (false, true) => g.matmul(rhs)?,
                    (true, false) => rhs.matmul_t(g)?,
                    (true, true) => rhs.t_matmul_t(g)?,
                };
                out.push((lhs.clone(), da));
            }
            if rhs.tracks_grad() {
                let db = match (lhs_t, rhs_t) {
                    (false, false) => lhs.t_matmul(g)?,
                    (true, false) => lhs.matmul(g)?,
                    (false, true) => g.t_matmul(lhs)?,
                    (true, true) => g.t_matmul_t(lhs)?,
                };
                out.push((rhs.clone(), db));
            }
            out
        }
        Op::Reshape(x) => vec![(x.clone(), g.reshape(x.shape().clone())?)],
        Op::Transpose(x) => vec![(x.clone(), g.t()?)],
        Op::IndexSelect(x, idx) => {
            let rows = x.dims()[0];
            let cols = x.elem_count() / rows.max(1);
            let storage = g.storage().index_add_rows(cols, &idx.storage, rows)?;
            let dx = Tensor::from_storage(storage, x.shape().clone(), x.device().clone());
            vec![(x.clone(), dx)]
        }
        Op::Gather(x, idx) => {
            let (rows, cols) = x.dims2()?;
            let storage = g.storage().scatter_cols(rows, cols, &idx.storage)?;
            let dx = Tensor::from_storage(storage, x.shape().clone(), x.device().clone());
            vec![(x.clone(), dx)]
        }
        Op::Concat(xs, axis) => {
            let mut start = 0;
            let mut out = Vec::with_capacity(xs.len());
            for x in xs {
                let len = x.dims()[*axis];
                out.push((x.clone(), g.narrow(*axis, start, len)?));
                start += len;
            }
            out
        }
        Op::Narrow { input, axis, start } => {
            let dim = input.dims()[*axis];
            let len = g.dims()[*axis];
            let (outer, _, inner) = input.shape().split_at_axis(*axis);
            let mut dx = input.device().zeros_storage(input.elem_count())?;
            g.storage().copy2d(
                &mut dx,
                outer,
                len * inner,
                len * inner,
                dim * inner,
                0,
                start * inner,
            )?;
            let dx = Tensor::from_storage(dx, input.shape().clone(), input.device().clone());
            vec![(input.clone(), dx)]
        }
        Op::Where {
            mask,
            on_true,
            on_false,
        } => {
            let zeros = Tensor::zeros(g.shape().clone(), g.device())?;
            vec![
                (on_true.clone(), mask.where_cond(g, &zeros)?),
                (on_false.clone(), mask.where_cond(&zeros, g)?),
            ]
        }
        Op::Softmax(x) => {
            let last = x.rank() - 1;
            let dot = g.mul(out)?.sum_keepdim(last)?;
            vec![(x.clone(), out.mul(&g.broadcast_sub(&dot)?)?)]
        }
        Op::LogSoftmax(x) => {
            let last = x.rank() - 1;
            let gsum = g.sum_keepdim(last)?;
            vec![(x.clone(), g.sub(&out.exp()?.broadcast_mul(&gsum)?)?)]
        }
        Op::LinearXent {
            weight,
            bias,
            grad_w,
            grad_b,
        } => {
            let scaled = |t: &Tensor| {
                if g_is_one {
                    Ok(t.clone())
                } else {
                    t.broadcast_mul(g)
                }
            };
            let mut out = vec![(weight.clone(), scaled(grad_w)?)];
            if let (Some(b), Some(gb)) = (bias, grad_b) {
                out.push((b.clone(), scaled(gb)?));
            }
            out
        }
        Op::ShiftedXent { logits, unit_grad } if g_is_one => {
            vec![(logits.clone(), unit_grad.clone())]
        }
        Op::ShiftedXent { logits, unit_grad } => {
            let upstream = if g.rank() == 0 {
                g.clone()
            } else {
                g.reshape((g.elem_count(), 1))?
            };
            vec![(logits.clone(), unit_grad.broadcast_mul(&upstream)?)]
        }
    })
}
