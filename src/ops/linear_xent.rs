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
use crate::backend::cpu::linear_xent::{linear_xent, total, LinearXentArgs, MAX_CLASSES};
use crate::backend::Storage;
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
        let fused = self.device().is_cpu()
            && weight.device().is_cpu()
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
        let host = |t: &Tensor| -> Result<Vec<f32>> { t.to_vec() };
        let (x, w) = (self.storage(), weight.storage());
        // Irrefutable without the `cuda` feature.
        #[allow(irrefutable_let_patterns)]
        let (Storage::Cpu(x), Storage::Cpu(w)) = (&*x, &*w) else {
            return Err(Error::Device(format!(
                "{OP}: the fused path needs CPU tensors"
            )));
        };
        let bias_v = bias.map(host).transpose()?;
        let shift_v = shift.map(host).transpose()?;
        let weights_v = weights.map(host).transpose()?;
        let labels_v = labels.to_vec()?;
        let grad_scale = match reduction {
            Reduction::Mean => 1.0 / n as f32,
            Reduction::Sum | Reduction::None => 1.0,
            Reduction::WeightedMean => {
                let total: f32 = weights_v.as_deref().map_or(0.0, |w| w.iter().sum());
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
            x: x.as_slice(),
            n,
            d,
            w: w.as_slice(),
            classes: c,
            bias: bias_v.as_deref(),
            shift: shift_v.as_deref(),
            labels: &labels_v,
            weights: weights_v.as_deref(),
            grad_scale,
        })?;
        let device = self.device();
        let loss_value = total(&out.row_losses) * grad_scale;
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
