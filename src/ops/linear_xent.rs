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
        let (n, d) = self.shape().dims2(OP)?;
        let (c, d2) = weight.shape().dims2(OP)?;
        if d != d2 {
            return Err(Error::shape_detail(
                OP,
                self.dims(),
                weight.dims(),
                "inputs and weight columns differ",
            ));
        }
        if let Some(b) = bias {
            if b.dims() != [c] {
                return Err(Error::shape_detail(
                    OP,
                    weight.dims(),
                    b.dims(),
                    "one bias per class",
                ));
            }
        }
        let on_cpu = |t: Option<&Tensor>| t.is_none_or(|t| t.device().is_cpu());
        let fused = self.device().is_cpu()
            && weight.device().is_cpu()
            && on_cpu(bias)
            && on_cpu(shift)
            && on_cpu(weights)
            && labels.device().is_cpu()
            && c <= MAX_CLASSES
            && n > 0
            && !self.tracks_grad()
            && reduction != Reduction::None
            && !(reduction == Reduction::WeightedMean && weights.is_none());
        if !fused {
            let mut z = self.matmul_t(weight)?;
            if let Some(b) = bias {
                z = z.broadcast_add(b)?;
            }
            let loss = z.shifted_cross_entropy(labels, shift, weights, reduction)?;
            return Ok((loss, z.detach()));
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
        Ok((loss, logits))
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
