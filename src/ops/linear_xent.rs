//! `linear_shifted_cross_entropy`: a linear layer and MAT's loss in one op.
//!
//! `loss = reduce_i w_i · CE(W x_i + b + s_i, y_i)` with the gradients of `W` and `b` written
//! while the logits are computed (one pass over `x` on the CPU, see
//! `backend::cpu::linear_xent`). The logits come back too (detached), for accuracy. When the
//! fused kernel does not apply — another device, more than four classes, an input that needs
//! a gradient, or a per-row loss vector — the op is the composite
//! `x · Wᵀ + b → shifted_cross_entropy`, with the same value and gradients.

use super::Reduction;
use crate::autograd::Op;
use crate::backend::cpu::linear_xent::{linear_xent, LinearXentArgs, MAX_CLASSES};
use crate::backend::cpu::sum_fixed_order;
use crate::backend::{IndexStorage, Storage};
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
        let on_cpu = |t: Option<&Tensor>| t.is_none_or(|t| t.device().is_cpu());
        let fused = self.device().is_cpu()
            && weight.device().is_cpu()
            && on_cpu(bias)
            && on_cpu(shift)
            && on_cpu(weights)
            && on_cpu(also.map(|(w, _)| w))
            && on_cpu(also.and_then(|(_, b)| b))
            && labels.device().is_cpu()
            && c <= MAX_CLASSES
            && n > 0
            && !self.tracks_grad()
            && reduction != Reduction::None
            && !(reduction == Reduction::WeightedMean && weights.is_none());
        let other_logits = |x: &Tensor| -> Result<Option<Tensor>> {
            also.map(|(w, b)| {
                crate::autograd::no_grad(|| {
                    let z = x.matmul_t(w)?;
                    match b {
                        Some(b) => z.broadcast_add(b),
                        None => Ok(z),
                    }
                })
            })
            .transpose()
        };
        if !fused {
            let also_logits = other_logits(self)?;
            let mut z = self.matmul_t(weight)?;
            if let Some(b) = bias {
                z = z.broadcast_add(b)?;
            }
            let loss = z.shifted_cross_entropy(labels, shift, weights, reduction)?;
            return Ok((loss, z.detach(), also_logits));
        }
        // The composite checks these; the fused path must too.
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
        // Borrow every operand's host buffer: no copies on the training step's path.
        let (x, w) = (self.storage(), weight.storage());
        let (b, s, wt) = (
            bias.map(|t| t.storage()),
            shift.map(|t| t.storage()),
            weights.map(|t| t.storage()),
        );
        let (Some(x_v), Some(w_v)) = (host_slice(&x), host_slice(&w)) else {
            return Err(Error::Device(format!(
                "{OP}: the fused path needs CPU tensors"
            )));
        };
        let also_w = also.map(|(w, _)| w.storage());
        let also_v = also_w.as_deref().and_then(host_slice);
        let bias_v = b.as_deref().and_then(host_slice);
        let shift_v = s.as_deref().and_then(host_slice);
        let weights_v = wt.as_deref().and_then(host_slice);
        // Irrefutable without the `cuda` feature.
        #[allow(irrefutable_let_patterns)]
        let IndexStorage::Cpu(labels_v) = &*labels.storage
        else {
            return Err(Error::Device(format!(
                "{OP}: the fused path needs CPU labels"
            )));
        };
        let grad_scale = match reduction {
            Reduction::Mean => 1.0 / n as f32,
            Reduction::Sum | Reduction::None => 1.0,
            Reduction::WeightedMean => {
                let total: f32 = weights_v.map_or(0.0, |w| w.iter().sum());
                if !(total.is_finite() && total > 0.0) {
                    return Err(Error::NonFinite {
                        op: OP,
                        what: format!("the weights sum to {total}"),
                    });
                }
                1.0 / total
            }
        };
        let out = linear_xent(LinearXentArgs {
            x: x_v,
            n,
            d,
            w: w_v,
            classes: c,
            bias: bias_v,
            shift: shift_v,
            labels: labels_v,
            weights: weights_v,
            grad_scale,
            also: also_v,
        })?;
        let device = self.device();
        let loss_value = sum_fixed_order(&out.row_losses) * grad_scale;
        let logits = Tensor::from_vec(out.logits, (n, c), device)?;
        let grad_w = Tensor::from_vec(out.grad_w, (c, d), device)?;
        let grad_b = Tensor::from_vec(out.grad_b, c, device)?;
        let storage = device.storage_from_vec(vec![loss_value])?;
        let mut inputs = vec![weight];
        inputs.extend(bias);
        let loss = Tensor::from_op(storage, Shape::from(()), device, &inputs, || {
            Op::LinearXent {
                weight: weight.clone(),
                bias: bias.cloned(),
                grad_w,
                grad_b,
            }
        });
        super::check_finite(&loss, OP)?;
        let also_logits = match also {
            Some((_, other_bias)) => {
                let mut z = out.also_logits;
                if let (Some(b), true) = (other_bias, also_rows > 0) {
                    // f32 adds, as broadcast_add makes them.
                    let b = b.to_vec()?;
                    for row in z.chunks_exact_mut(also_rows) {
                        row.iter_mut().zip(&b).for_each(|(z, b)| *z += b);
                    }
                }
                Some(Tensor::from_vec(z, (n, also_rows), device)?)
            }
            None => None,
        };
        Ok((loss, logits, also_logits))
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

/// The host buffer behind a storage (`None` on a device).
fn host_slice(s: &Storage) -> Option<&[f32]> {
    match s {
        Storage::Cpu(c) => Some(c.as_slice()),
        #[cfg(feature = "cuda")]
        Storage::Cuda(_) => None,
    }
}
