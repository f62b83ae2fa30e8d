//! `linear_shifted_cross_entropy`: a linear layer and MAT's loss in one op.
//!
//! `loss = reduce_i w_i · CE(W x_i + b + s_i, y_i)` with the gradients of `W` and `b` formed
//! with the logits by the backend primitive `linear_xent` (on the CPU, for up to four classes,
//! in one pass over `x`: 4·n·d bytes read instead of 8·n·d for the product, the CE and the
//! gradient product apart). The logits come back too (detached), for accuracy. An input that
//! needs a gradient, or a per-row loss vector, takes the graph instead:
//! `x · Wᵀ + b → shifted_cross_entropy`, with the same value and gradients.

use super::Reduction;
use crate::autograd::Op;
use crate::backend::{LinearXentArgs, UnaryOp, XentArgs};
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::{Indices, Tensor};

const OP: &str = "linear_shifted_cross_entropy";

impl Tensor {
    /// Fused `(self · weightᵀ + bias).shifted_cross_entropy(labels, shift, weights, reduction)`;
    /// returns the loss and the (detached) logits.
    pub fn linear_shifted_cross_entropy(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        labels: &Indices,
        shift: Option<&Tensor>,
        weights: Option<&Tensor>,
        reduction: Reduction,
    ) -> Result<(Tensor, Tensor)> {
        let (loss, logits, _) =
            self.linear_xent_impl(weight, bias, labels, shift, weights, reduction, None)?;
        Ok((loss, logits))
    }

    /// [`linear_shifted_cross_entropy`](Tensor::linear_shifted_cross_entropy) that also
    /// returns `self · otherᵀ + other_bias` (no gradient) from the same pass over `self`:
    /// XRM reads a twin's rows once for that twin's held-in loss and the other twin's
    /// held-out logits. On the CPU the extra logits have the bits of `self.matmul_t(other)`
    /// followed by `broadcast_add(other_bias)` wherever that product takes the dot-product
    /// path (at most 4 rows in `other`, or 512 columns and more).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_shifted_cross_entropy_beside(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        labels: &Indices,
        shift: Option<&Tensor>,
        weights: Option<&Tensor>,
        reduction: Reduction,
        other: &Tensor,
        other_bias: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (loss, logits, also) = self.linear_xent_impl(
            weight,
            bias,
            labels,
            shift,
            weights,
            reduction,
            Some((other, other_bias)),
        )?;
        let also = also.expect("linear_xent_impl returns the extra logits it was asked for");
        Ok((loss, logits, also))
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_xent_impl(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        labels: &Indices,
        shift: Option<&Tensor>,
        weights: Option<&Tensor>,
        reduction: Reduction,
        also: Option<(&Tensor, Option<&Tensor>)>,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (n, d) = self.shape().dims2(OP)?;
        let c = self.linear_rows(weight, bias, "weight")?;
        let also_rows = match also {
            Some((w, b)) => self.linear_rows(w, b, "other weight")?,
            None => 0,
        };
        if labels.len() != n {
            return Err(Error::shape_detail(
                OP,
                self.dims(),
                &[labels.len()],
                "one label per row",
            ));
        }
        if let Some(s) = shift {
            if s.dims() != [n, c] {
                return Err(Error::shape_detail(
                    OP,
                    &[n, c],
                    s.dims(),
                    "shift must match the logits",
                ));
            }
        }
        if let Some(w) = weights {
            if w.dims() != [n] {
                return Err(Error::shape_detail(
                    OP,
                    &[n, c],
                    w.dims(),
                    "weights must be one per row",
                ));
            }
        }
        // A gradient for `x`, a per-row loss vector or a weighted mean without weights need
        // the graph (or its error): the composite.
        if n == 0
            || self.tracks_grad()
            || reduction == Reduction::None
            || (reduction == Reduction::WeightedMean && weights.is_none())
        {
            let also_logits = also
                .map(|(w, b)| crate::autograd::no_grad(|| linear(self, w, b)))
                .transpose()?;
            let z = linear(self, weight, bias)?;
            let loss = z.shifted_cross_entropy(labels, shift, weights, reduction)?;
            return Ok((loss, z.detach(), also_logits));
        }
        let grad_scale = match reduction {
            Reduction::Mean => 1.0 / n as f32,
            Reduction::Sum | Reduction::None => 1.0,
            Reduction::WeightedMean => {
                let total = weights.map_or(Ok(0.0), |w| w.sum_all()?.to_scalar())?;
                if !(total.is_finite() && total > 0.0) {
                    return Err(Error::NonFinite {
                        op: OP,
                        what: format!("the weights sum to {total}"),
                    });
                }
                1.0 / total
            }
        };
        let out = {
            let (x, w) = (self.storage(), weight.storage());
            let (b, s, wt) = (
                bias.map(|t| t.storage()),
                shift.map(|t| t.storage()),
                weights.map(|t| t.storage()),
            );
            let also_w = also.map(|(w, b)| (w.storage(), b.map(|b| b.storage())));
            x.linear_xent(LinearXentArgs {
                weight: &w,
                bias: b.as_deref(),
                d,
                xent: XentArgs {
                    shift: s.as_deref(),
                    labels: &labels.storage,
                    weights: wt.as_deref(),
                    rows: n,
                    cols: c,
                    grad_scale,
                    write_grad: true,
                },
                also: also_w
                    .as_ref()
                    .map(|(w, b)| (&**w, b.as_deref(), also_rows)),
            })?
        };
        let device = self.device();
        let total = out.row_losses.sum_all()?;
        let loss_storage = if grad_scale == 1.0 {
            total
        } else {
            total.unary(UnaryOp::Affine {
                mul: grad_scale,
                add: 0.0,
            })?
        };
        let logits = Tensor::from_storage(out.logits, Shape::from((n, c)), device.clone());
        let grad_w = Tensor::from_storage(out.grad_w, weight.shape().clone(), device.clone());
        let grad_b = out
            .grad_b
            .map(|g| Tensor::from_storage(g, Shape::from(c), device.clone()));
        let mut inputs = vec![weight];
        inputs.extend(bias);
        let loss = Tensor::from_op(loss_storage, Shape::from(()), device, &inputs, || {
            Op::LinearXent {
                weight: weight.clone(),
                bias: bias.cloned(),
                grad_w,
                grad_b,
            }
        });
        super::check_finite(&loss, OP)?;
        let also_logits = out
            .also_logits
            .map(|z| Tensor::from_storage(z, Shape::from((n, also_rows)), device.clone()));
        Ok((loss, logits, also_logits))
    }
}

/// `x · wᵀ + b`.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let z = x.matmul_t(w)?;
    match b {
        Some(b) => z.broadcast_add(b),
        None => Ok(z),
    }
}

impl Tensor {
    /// The output rows of a linear map `weight` (`rows × d`, with `bias` of `rows` values) on
    /// the `n × d` matrix `self`; a shape error naming `what` otherwise.
    fn linear_rows(&self, weight: &Tensor, bias: Option<&Tensor>, what: &str) -> Result<usize> {
        let (_, d) = self.shape().dims2(OP)?;
        let (rows, d2) = weight.shape().dims2(OP)?;
        if d != d2 {
            return Err(Error::shape_detail(
                OP,
                self.dims(),
                weight.dims(),
                format!("inputs and {what} columns differ"),
            ));
        }
        if let Some(b) = bias {
            if b.dims() != [rows] {
                return Err(Error::shape_detail(
                    OP,
                    weight.dims(),
                    b.dims(),
                    format!("one bias per row of the {what}"),
                ));
            }
        }
        Ok(rows)
    }
}
