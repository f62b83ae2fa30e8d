//! The op surface on [`Tensor`]: arithmetic with explicit broadcasting, elementwise maps,
//! reductions, matrix products, indexing, concatenation, selection, softmax and losses.
//!
//! Each op checks its operands (shape, device, index range) and returns a typed error that
//! names the op and both shapes; then it runs one backend primitive and records itself for
//! autodiff. Composite ops (mean, MSE, composed cross-entropy) are written with other ops and
//! need no backward rule of their own.

mod linear_xent;
mod xent;

pub use crate::backend::flip_probability;
pub use xent::Reduction;

use crate::autograd::Op;
use crate::backend::{BinaryOp, ReduceOp, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::{Indices, Tensor};

impl Tensor {
    fn unary_op(&self, op: UnaryOp) -> Result<Tensor> {
        let storage = self.storage().unary(op)?;
        Ok(Tensor::from_op(
            storage,
            self.shape().clone(),
            self.device(),
            &[self],
            || Op::Unary(self.clone(), op),
        ))
    }

    fn binary_op(
        &self,
        rhs: &Tensor,
        op: BinaryOp,
        name: &'static str,
        broadcast: bool,
    ) -> Result<Tensor> {
        self.check_same_device(rhs, name)?;
        let out = if broadcast {
            self.shape().broadcast(rhs.shape(), name)?
        } else {
            if self.shape() != rhs.shape() {
                return Err(Error::shape_detail(
                    name,
                    self.dims(),
                    rhs.dims(),
                    "use the broadcast_ variant to broadcast",
                ));
            }
            self.shape().clone()
        };
        let storage = {
            let (a, b) = (self.storage(), rhs.storage());
            a.binary(&b, op, self.shape(), rhs.shape(), &out)?
        };
        Ok(Tensor::from_op(
            storage,
            out,
            self.device(),
            &[self, rhs],
            || Op::Binary(self.clone(), rhs.clone(), op),
        ))
    }

    /// Elementwise `self + rhs` (equal shapes).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Add, "add", false)
    }
    /// Elementwise `self - rhs` (equal shapes).
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Sub, "sub", false)
    }
    /// Elementwise `self * rhs` (equal shapes).
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Mul, "mul", false)
    }
    /// Elementwise `self / rhs` (equal shapes).
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Div, "div", false)
    }
    /// `self + rhs` with NumPy broadcasting.
    pub fn broadcast_add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Add, "broadcast_add", true)
    }
    /// `self - rhs` with NumPy broadcasting.
    pub fn broadcast_sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Sub, "broadcast_sub", true)
    }
    /// `self * rhs` with NumPy broadcasting.
    pub fn broadcast_mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Mul, "broadcast_mul", true)
    }
    /// `self / rhs` with NumPy broadcasting.
    pub fn broadcast_div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Div, "broadcast_div", true)
    }
    /// Elementwise maximum with NumPy broadcasting.
    pub fn broadcast_maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Maximum, "broadcast_maximum", true)
    }
    /// `1` where `self == rhs`, else `0`, with broadcasting (no gradient).
    pub fn broadcast_eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Eq, "broadcast_eq", true)
    }

    /// This tensor broadcast to `shape` (a copy).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let target = self.shape().broadcast(&shape, "broadcast_as")?;
        if target != shape {
            return Err(Error::shape_detail(
                "broadcast_as",
                self.dims(),
                shape.dims(),
                "target must contain the source's shape",
            ));
        }
        let zeros = Tensor::zeros(shape, self.device())?;
        self.broadcast_add(&zeros)
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Log)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Tanh)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Relu)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sigmoid)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqrt)
    }
    pub fn square(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Square)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Recip)
    }
    /// `1` where `x > 0`, else `0` (no gradient).
    pub fn step(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Step)
    }
    /// `mul * x + add`.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        self.unary_op(UnaryOp::Affine { mul, add })
    }
    /// `x * s`.
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.affine(s, 0.0)
    }
    /// `x^p`.
    pub fn powf(&self, p: f32) -> Result<Tensor> {
        self.unary_op(UnaryOp::Powf(p))
    }

    fn reduce_keepdim(&self, op: ReduceOp, axis: usize, name: &'static str) -> Result<Tensor> {
        self.shape().check_axis(name, axis)?;
        let (outer, len, inner) = self.shape().split_at_axis(axis);
        if len == 0 {
            return Err(Error::bad_shape(
                name,
                self.dims(),
                "reduction over an empty axis",
            ));
        }
        let storage = self.storage().reduce(op, outer, len, inner)?;
        Ok(Tensor::from_op(
            storage,
            self.shape().with_axis_one(axis),
            self.device(),
            &[self],
            || Op::Reduce(self.clone(), op, axis),
        ))
    }

    /// Sum over `axis`, keeping it with size 1.
    pub fn sum_keepdim(&self, axis: usize) -> Result<Tensor> {
        self.reduce_keepdim(ReduceOp::Sum, axis, "sum")
    }
    /// Sum over `axis`, removing it.
    pub fn sum(&self, axis: usize) -> Result<Tensor> {
        let s = self.sum_keepdim(axis)?;
        s.reshape(self.shape().without_axis(axis))
    }
    /// Maximum over `axis`, keeping it with size 1. The gradient is shared among ties.
    pub fn max_keepdim(&self, axis: usize) -> Result<Tensor> {
        self.reduce_keepdim(ReduceOp::Max, axis, "max")
    }
    /// Maximum over `axis`, removing it.
    pub fn max(&self, axis: usize) -> Result<Tensor> {
        let s = self.max_keepdim(axis)?;
        s.reshape(self.shape().without_axis(axis))
    }
    /// Mean over `axis`, keeping it with size 1.
    pub fn mean_keepdim(&self, axis: usize) -> Result<Tensor> {
        self.shape().check_axis("mean", axis)?;
        let n = self.dims()[axis];
        self.sum_keepdim(axis)?.scale(1.0 / n as f32)
    }
    /// Mean over `axis`, removing it.
    pub fn mean(&self, axis: usize) -> Result<Tensor> {
        self.shape().check_axis("mean", axis)?;
        let n = self.dims()[axis];
        self.sum(axis)?.scale(1.0 / n as f32)
    }
    /// Sum of all elements (a scalar).
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flatten()?.sum(0)
    }
    /// Mean of all elements (a scalar).
    pub fn mean_all(&self) -> Result<Tensor> {
        let n = self.elem_count();
        if n == 0 {
            return Err(Error::bad_shape("mean_all", self.dims(), "no elements"));
        }
        self.sum_all()?.scale(1.0 / n as f32)
    }
    /// Maximum of all elements (a scalar).
    pub fn max_all(&self) -> Result<Tensor> {
        self.flatten()?.max(0)
    }

    /// The same data with a new shape of equal size (a view: no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::shape_detail(
                "reshape",
                self.dims(),
                shape.dims(),
                "element counts differ",
            ));
        }
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let track = crate::autograd::grad_enabled() && self.tracks_grad();
        Ok(Tensor(std::sync::Arc::new(crate::tensor::TensorInner {
            id: crate::tensor::TensorId::fresh(),
            storage: self.0.storage.clone(),
            shape,
            device: self.device().clone(),
            op: track.then(|| Op::Reshape(self.clone())),
            is_variable: false,
        })))
    }

    /// A rank-1 view.
    pub fn flatten(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }

    /// The transpose of a matrix (a copy). Prefer [`Tensor::matmul_t`] and friends, which
    /// read a transposed operand without copying it.
    pub fn t(&self) -> Result<Tensor> {
        let (r, c) = self.shape().dims2("transpose")?;
        let storage = self.storage().transpose2d(r, c)?;
        Ok(Tensor::from_op(
            storage,
            Shape::from((c, r)),
            self.device(),
            &[self],
            || Op::Transpose(self.clone()),
        ))
    }

    fn matmul_impl(
        &self,
        rhs: &Tensor,
        lhs_t: bool,
        rhs_t: bool,
        name: &'static str,
    ) -> Result<Tensor> {
        self.check_same_device(rhs, name)?;
        let (ar, ac) = self.shape().dims2(name)?;
        let (br, bc) = rhs.shape().dims2(name)?;
        let (m, k) = if lhs_t { (ac, ar) } else { (ar, ac) };
        let (k2, n) = if rhs_t { (bc, br) } else { (br, bc) };
        if k != k2 {
            return Err(Error::shape_detail(
                name,
                self.dims(),
                rhs.dims(),
                format!("inner dimensions {k} and {k2} differ"),
            ));
        }
        let storage = {
            let (a, b) = (self.storage(), rhs.storage());
            a.matmul(&b, (m, k, n), lhs_t, rhs_t)?
        };
        Ok(Tensor::from_op(
            storage,
            Shape::from((m, n)),
            self.device(),
            &[self, rhs],
            || Op::Matmul {
                lhs: self.clone(),
                rhs: rhs.clone(),
                lhs_t,
                rhs_t,
            },
        ))
    }

    /// `self · rhs`.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_impl(rhs, false, false, "matmul")
    }
    /// `self · rhsᵀ` without copying `rhs` (a linear layer's forward with `W` stored out×in).
    pub fn matmul_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_impl(rhs, false, true, "matmul_t")
    }
    /// `selfᵀ · rhs` without copying `self`.
    pub fn t_matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_impl(rhs, true, false, "t_matmul")
    }

    /// `selfᵀ · rhsᵀ` without copying either.
    pub fn t_matmul_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_impl(rhs, true, true, "t_matmul_t")
    }

    /// Rows `idx` of a matrix (or of the first axis of any tensor).
    pub fn index_select(&self, idx: &Indices) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::bad_shape(
                "index_select",
                self.dims(),
                "needs rank >= 1",
            ));
        }
        if idx.device() != self.device() {
            return Err(Error::Device(
                "index_select: indices on another device".into(),
            ));
        }
        let rows = self.dims()[0];
        let cols = self.elem_count() / rows.max(1);
        let storage = self.storage().index_select_rows(cols, &idx.storage)?;
        let mut dims = self.dims().to_vec();
        dims[0] = idx.len();
        Ok(Tensor::from_op(
            storage,
            Shape::from(dims),
            self.device(),
            &[self],
            || Op::IndexSelect(self.clone(), idx.clone()),
        ))
    }

    /// `out[i] = self[i, idx[i]]` for a matrix: picks one column per row (a label's logit).
    pub fn gather(&self, idx: &Indices) -> Result<Tensor> {
        let (rows, cols) = self.shape().dims2("gather")?;
        if idx.len() != rows {
            return Err(Error::shape_detail(
                "gather",
                self.dims(),
                &[idx.len()],
                "one index per row",
            ));
        }
        if idx.device() != self.device() {
            return Err(Error::Device("gather: indices on another device".into()));
        }
        let storage = self.storage().gather_cols(rows, cols, &idx.storage)?;
        Ok(Tensor::from_op(
            storage,
            Shape::from(rows),
            self.device(),
            &[self],
            || Op::Gather(self.clone(), idx.clone()),
        ))
    }

    /// Concatenation along `axis`; all other dimensions must agree.
    pub fn cat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::arg("tensors", "cat needs at least one tensor"))?;
        first.shape().check_axis("cat", axis)?;
        let mut total = 0;
        for t in tensors {
            first.check_same_device(t, "cat")?;
            let ok = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !ok {
                return Err(Error::shape_detail(
                    "cat",
                    first.dims(),
                    t.dims(),
                    format!("all dimensions but axis {axis} must agree"),
                ));
            }
            total += t.dims()[axis];
        }
        let mut dims = first.dims().to_vec();
        dims[axis] = total;
        let out_shape = Shape::from(dims);
        let (outer, _, inner) = out_shape.split_at_axis(axis);
        let device = first.device();
        let mut out = device.zeros_storage(out_shape.elem_count())?;
        let mut offset = 0;
        for t in tensors {
            let len = t.dims()[axis];
            t.storage().copy2d(
                &mut out,
                outer,
                len * inner,
                len * inner,
                total * inner,
                0,
                offset * inner,
            )?;
            offset += len;
        }
        let inputs: Vec<&Tensor> = tensors.to_vec();
        Ok(Tensor::from_op(out, out_shape, device, &inputs, || {
            Op::Concat(tensors.iter().map(|t| (*t).clone()).collect(), axis)
        }))
    }

    /// `len` entries of `axis` starting at `start` (a copy).
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        self.shape().check_axis("narrow", axis)?;
        let dim = self.dims()[axis];
        if start.checked_add(len).is_none_or(|end| end > dim) {
            return Err(Error::bad_shape(
                "narrow",
                self.dims(),
                format!("{len} entries from {start} exceed axis {axis} of size {dim}"),
            ));
        }
        let (outer, _, inner) = self.shape().split_at_axis(axis);
        let mut dims = self.dims().to_vec();
        dims[axis] = len;
        let out_shape = Shape::from(dims);
        let mut out = self.device().zeros_storage(out_shape.elem_count())?;
        self.storage().copy2d(
            &mut out,
            outer,
            len * inner,
            dim * inner,
            len * inner,
            start * inner,
            0,
        )?;
        Ok(Tensor::from_op(
            out,
            out_shape,
            self.device(),
            &[self],
            || Op::Narrow {
                input: self.clone(),
                axis,
                start,
            },
        ))
    }

    /// `mask != 0 ? on_true : on_false`, elementwise; all three of one shape. `self` is the mask.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        for (t, _) in [(on_true, 0), (on_false, 1)] {
            self.check_same_device(t, "where_cond")?;
            if t.shape() != self.shape() {
                return Err(Error::shape("where_cond", self.dims(), t.dims()));
            }
        }
        let storage = {
            let (m, a, b) = (self.storage(), on_true.storage(), on_false.storage());
            m.where_cond(&a, &b)?
        };
        Ok(Tensor::from_op(
            storage,
            self.shape().clone(),
            self.device(),
            &[on_true, on_false],
            || Op::Where {
                mask: self.clone(),
                on_true: on_true.clone(),
                on_false: on_false.clone(),
            },
        ))
    }

    fn softmax_impl(&self, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        if self.rank() == 0 {
            return Err(Error::bad_shape(name, self.dims(), "needs rank >= 1"));
        }
        let cols = *self.dims().last().expect("rank >= 1 checked above");
        let rows = self.elem_count() / cols.max(1);
        let storage = self.storage().softmax_rows(rows, cols, log)?;
        Ok(Tensor::from_op(
            storage,
            self.shape().clone(),
            self.device(),
            &[self],
            || {
                if log {
                    Op::LogSoftmax(self.clone())
                } else {
                    Op::Softmax(self.clone())
                }
            },
        ))
    }

    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        self.softmax_impl(false)
    }
    /// Log-softmax over the last axis.
    pub fn log_softmax(&self) -> Result<Tensor> {
        self.softmax_impl(true)
    }

    /// Index of the largest entry of each row of a matrix (first on ties; no gradient).
    pub fn argmax_rows(&self) -> Result<Indices> {
        let (r, c) = self.shape().dims2("argmax_rows")?;
        if c == 0 {
            return Err(Error::bad_shape("argmax_rows", self.dims(), "no columns"));
        }
        Ok(Indices {
            storage: std::sync::Arc::new(self.storage().argmax_rows(r, c)?),
            device: self.device().clone(),
        })
    }

    /// `argmax (self · W_sᵀ + b_s)` for every row of `self` (`n × d`) and each linear map `s`
    /// in `maps` (`W_s` as `k × d` row-major host values, `b_s` as `k`), with the bits of
    /// `self.matmul_t(W_s)`, `broadcast_add(b_s)` and `argmax_rows` for each map alone. Maps
    /// are stacked into one product (one pass over `self`) as far as the device keeps each
    /// column's bits ([`Device::stackable_columns`](crate::Device::stackable_columns)).
    pub fn linear_predictions(
        &self,
        maps: &[(&[f32], Option<&[f32]>)],
        k: usize,
    ) -> Result<Vec<Vec<u32>>> {
        const OP: &str = "linear_predictions";
        let (n, d) = self.shape().dims2(OP)?;
        if k == 0 {
            return Err(Error::bad_shape(OP, self.dims(), "no classes"));
        }
        let with_bias = maps.first().is_some_and(|(_, b)| b.is_some());
        if let Some((w, b)) = maps
            .iter()
            .find(|(w, b)| w.len() != k * d || b.map(<[f32]>::len) != with_bias.then_some(k))
        {
            return Err(Error::shape_detail(
                OP,
                &[k, d],
                &[w.len(), b.map_or(0, <[f32]>::len)],
                "every map is k × d, with k biases for all maps or none",
            ));
        }
        let per_pass = (self.device().stackable_columns(d) / k).max(1);
        let mut out = Vec::with_capacity(maps.len());
        crate::autograd::no_grad(|| -> Result<()> {
            for group in maps.chunks(per_pass) {
                let s = group.len();
                let w: Vec<f32> = group.iter().flat_map(|(w, _)| w.iter().copied()).collect();
                let mut z = self.matmul_t(&Tensor::from_vec(w, (s * k, d), self.device())?)?;
                if with_bias {
                    let b: Vec<f32> = group
                        .iter()
                        .flat_map(|(_, b)| b.unwrap_or(&[]))
                        .copied()
                        .collect();
                    z = z.broadcast_add(&Tensor::from_vec(b, s * k, self.device())?)?;
                }
                // Row `i·s + t` of the reshaped logits is row `i` of map `t`.
                let pred = z.reshape((n * s, k))?.argmax_rows()?.to_vec()?;
                out.extend((0..s).map(|t| pred.iter().skip(t).step_by(s).copied().collect()));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// XRM's label-flip step on these held-out logits (`rows × K`), one uniform in `[0, 1)`
    /// per row: `Some(ŷ)` where the row's dynamic label flips to the prediction `ŷ` (the first
    /// largest logit), i.e. `uniforms[i] <` [`flip_probability`]`(p_i, K)` with `p_i` the
    /// largest softmax probability in f64; `None` where it keeps its label. On a GPU the
    /// logits stay on the device: the uniforms go up and the targets come back. The device's
    /// f64 `exp` may differ from the host's in the last bit, which can change a flip only
    /// for a uniform within a few ulps of its probability.
    pub fn xrm_flip_targets(&self, uniforms: &[f64]) -> Result<Vec<Option<u32>>> {
        let (rows, k) = self.shape().dims2("xrm_flip_targets")?;
        if uniforms.len() != rows {
            return Err(Error::arg(
                "uniforms",
                format!("{} uniforms for {rows} held-out rows", uniforms.len()),
            ));
        }
        self.storage().flip_targets(rows, k, uniforms)
    }

    /// Mean squared error `mean((self - target)²)`, composed from primitives.
    pub fn mse(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::shape("mse", self.dims(), target.dims()));
        }
        let loss = self.sub(target)?.square()?.mean_all()?;
        check_finite(&loss, "mse")?;
        Ok(loss)
    }

    /// Mean cross-entropy of logits against labels, composed from primitives
    /// (`log_softmax → gather → mean`); the reference for the fused op.
    pub fn cross_entropy(&self, labels: &Indices) -> Result<Tensor> {
        let (rows, c) = self.shape().dims2("cross_entropy")?;
        if labels.len() != rows {
            return Err(Error::shape_detail(
                "cross_entropy",
                self.dims(),
                &[labels.len()],
                "one label per row",
            ));
        }
        check_labels(labels, c, "cross_entropy")?;
        let loss = self.log_softmax()?.gather(labels)?.mean_all()?.neg()?;
        check_finite(&loss, "cross_entropy")?;
        Ok(loss)
    }
}

/// Errors when a loss came out NaN or infinite, naming the op.
pub(crate) fn check_finite(loss: &Tensor, op: &'static str) -> Result<()> {
    if loss.device().is_cpu() {
        let v = loss.to_vec()?;
        if let Some(x) = v.iter().find(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                op,
                what: format!("the loss is {x}"),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_labels(labels: &Indices, classes: usize, op: &'static str) -> Result<()> {
    if labels.device().is_cpu() {
        let v = labels.to_vec()?;
        if let Some((row, &label)) = v.iter().enumerate().find(|(_, &y)| y as usize >= classes) {
            return Err(Error::LabelOutOfRange {
                op,
                row,
                label,
                classes,
            });
        }
    }
    Ok(())
}
