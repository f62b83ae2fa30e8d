//! Backends: where tensor data lives and the primitive kernels that operate on it.
//!
//! The autodiff layer above speaks only to [`Storage`] and [`IndexStorage`], which dispatch to
//! the CPU backend ([`cpu`]) or, with the `cuda` feature, the CUDA backend (`cuda`). Every
//! backend implements the same short list of primitives ([`BackendStorage`]): composite ops and
//! every backward rule are built from them, so a backend that implements the list runs
//! training end to end. A fused primitive (`linear_xent`) has a default composed from the
//! others, the reference a backend's own kernel must match. All buffers are contiguous
//! row-major f32; shapes travel beside them.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::buffer::F32Buffer;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// Elementwise unary maps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Tanh,
    Relu,
    Sigmoid,
    Sqrt,
    Square,
    Recip,
    /// `1` where `x > 0`, else `0` (no gradient: a mask).
    Step,
    /// `mul * x + add`.
    Affine {
        mul: f32,
        add: f32,
    },
    /// `x^p`.
    Powf(f32),
}

/// Elementwise binary maps with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    /// `1` where `lhs == rhs`, else `0` (no gradient: a mask).
    Eq,
}

/// Reductions over one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Optimizer hyperparameters for the fused SGD update (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// First step with momentum: the buffer is set to the gradient, not blended.
    pub first_step: bool,
}

/// Optimizer hyperparameters for the fused Adam/AdamW update (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW: weight decay applied to the parameter, not added to the gradient.
    pub decoupled: bool,
    /// 1-based step count for bias correction.
    pub step: u32,
}

/// The fused shifted softmax-cross-entropy's inputs besides the logits.
pub struct XentArgs<'a, S, I> {
    pub shift: Option<&'a S>,
    pub labels: &'a I,
    pub weights: Option<&'a S>,
    pub rows: usize,
    pub cols: usize,
    /// Multiplies the gradient: `1/N` for a mean, `1/sum(w)` for a weighted mean, 1 for none.
    pub grad_scale: f32,
    pub write_grad: bool,
}

impl<'a, S, I> XentArgs<'a, S, I> {
    /// The same arguments with the storages of another type (a backend's own, from
    /// [`Storage`]); `None` where an operand is on another device.
    fn cast<T, J>(
        &self,
        f: impl Fn(&'a S) -> Option<&'a T>,
        labels: &'a J,
    ) -> Option<XentArgs<'a, T, J>> {
        Some(XentArgs {
            shift: self.shift.map(&f).map_or(Some(None), |s| s.map(Some))?,
            labels,
            weights: self.weights.map(&f).map_or(Some(None), |s| s.map(Some))?,
            rows: self.rows,
            cols: self.cols,
            grad_scale: self.grad_scale,
            write_grad: self.write_grad,
        })
    }
}

/// The fused linear layer + shifted cross-entropy's inputs besides `x` (`rows × d`, the
/// storage the primitive is called on): logits `z = x · Wᵀ + b` go into the cross-entropy
/// described by `xent` (`rows × cols`; `write_grad` is ignored, the gradient is always formed).
pub struct LinearXentArgs<'a, S, I> {
    /// `W`, `cols × d`.
    pub weight: &'a S,
    /// `b`, `cols` values.
    pub bias: Option<&'a S>,
    pub d: usize,
    pub xent: XentArgs<'a, S, I>,
    /// Extra rows `V` (`rows_v × d`) and their bias, whose logits `x · Vᵀ + c` come from the
    /// same pass over `x`, untouched by the loss (XRM's other twin).
    pub also: Option<(&'a S, Option<&'a S>, usize)>,
}

impl<'a, S, I> LinearXentArgs<'a, S, I> {
    fn cast<T, J>(
        &self,
        f: impl Fn(&'a S) -> Option<&'a T> + Copy,
        labels: &'a J,
    ) -> Option<LinearXentArgs<'a, T, J>> {
        let opt = |s: Option<&'a S>| s.map(f).map_or(Some(None), |t| t.map(Some));
        Some(LinearXentArgs {
            weight: f(self.weight)?,
            bias: opt(self.bias)?,
            d: self.d,
            xent: self.xent.cast(f, labels)?,
            also: match self.also {
                Some((v, c, rows)) => Some((f(v)?, opt(c)?, rows)),
                None => None,
            },
        })
    }
}

/// What the fused linear layer + shifted cross-entropy computes.
pub struct LinearXentOut<S> {
    /// `z = x · Wᵀ + b`, `rows × cols`.
    pub logits: S,
    /// `w_i · CE(z_i + s_i, y_i)`, `rows` values.
    pub row_losses: S,
    /// `Σ_i dz_iᵀ x_i` with `dz` as [`BackendStorage::xent`] writes it, `cols × d`.
    pub grad_w: S,
    /// `Σ_i dz_i`, when there is a bias.
    pub grad_b: Option<S>,
    /// `x · Vᵀ + c`, `rows × rows_v`, when asked for.
    pub also_logits: Option<S>,
}

impl<S> LinearXentOut<S> {
    fn map<T>(self, f: impl Fn(S) -> T) -> LinearXentOut<T> {
        LinearXentOut {
            logits: f(self.logits),
            row_losses: f(self.row_losses),
            grad_w: f(self.grad_w),
            grad_b: self.grad_b.map(&f),
            also_logits: self.also_logits.map(&f),
        }
    }
}

/// The fused linear layer + shifted cross-entropy composed from the other primitives: the
/// reference every backend's [`BackendStorage::linear_xent`] must match, and the
/// implementation of backends without a fused kernel (the CUDA backend, whose fused CE kernel
/// it calls). It runs the operations autograd runs for `(x · Wᵀ + b).shifted_cross_entropy`
/// and its backward pass, in the same order, so it gives their bits: `x · Wᵀ`, `+ b`, the
/// fused CE with its gradient `dz`, `dW = dzᵀ · x` and `db = Σ_i dz_i`.
pub fn linear_xent_composite<S: BackendStorage>(
    x: &S,
    a: LinearXentArgs<'_, S, S::Index>,
) -> Result<LinearXentOut<S>> {
    let (n, c, d) = (a.xent.rows, a.xent.cols, a.d);
    let affine = |w: &S, b: Option<&S>, rows: usize| -> Result<S> {
        let z = x.matmul(w, n, d, rows, false, true)?;
        match b {
            Some(b) => z.binary(
                b,
                BinaryOp::Add,
                &Shape::from((n, rows)),
                &Shape::from(rows),
                &Shape::from((n, rows)),
            ),
            None => Ok(z),
        }
    };
    let also_logits = a.also.map(|(v, b, rows)| affine(v, b, rows)).transpose()?;
    let logits = affine(a.weight, a.bias, c)?;
    let (row_losses, dz) = logits.xent(XentArgs {
        write_grad: true,
        ..a.xent
    })?;
    let dz = dz.ok_or_else(|| {
        Error::Device("linear_shifted_cross_entropy: the CE kernel wrote no gradient".into())
    })?;
    let grad_w = dz.matmul(x, c, n, d, true, false)?;
    let grad_b = a
        .bias
        .map(|_| dz.reduce(ReduceOp::Sum, 1, n, c))
        .transpose()?;
    Ok(LinearXentOut {
        logits,
        row_losses,
        grad_w,
        grad_b,
        also_logits,
    })
}

/// The primitive kernels every backend provides. Buffers are contiguous row-major f32.
pub trait BackendStorage: Sized {
    type Index;

    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn to_host(&self) -> Result<Vec<f32>>;
    fn unary(&self, op: UnaryOp) -> Result<Self>;
    /// `out = lhs op rhs`, with both operands broadcast to `out`.
    fn binary(
        &self,
        rhs: &Self,
        op: BinaryOp,
        lhs_shape: &Shape,
        rhs_shape: &Shape,
        out: &Shape,
    ) -> Result<Self>;
    /// `mask != 0 ? on_true : on_false`, all of the same length.
    fn where_cond(&self, on_true: &Self, on_false: &Self) -> Result<Self>;
    /// Reduce `(outer, len, inner)` over the middle axis to `(outer, inner)`.
    fn reduce(&self, op: ReduceOp, outer: usize, len: usize, inner: usize) -> Result<Self>;
    /// `op(lhs) · op(rhs)` with `op(lhs)` m×k and `op(rhs)` k×n; a transposed operand is
    /// stored as its transpose (k×m or n×k) and read with swapped strides, never copied.
    ///
    /// Row independence: with `lhs` untransposed and `n ≤`
    /// [`Device::row_independent_columns`]`(k)`, row `i` of the result has the same bits for
    /// every `m` and every content of the other rows of `lhs` (a backend that cannot keep
    /// this for a shape reports fewer columns there; callers rely on nothing beyond it).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        rhs: &Self,
        m: usize,
        k: usize,
        n: usize,
        lhs_t: bool,
        rhs_t: bool,
    ) -> Result<Self>;
    /// Rows `idx` of a `? × cols` matrix.
    fn index_select_rows(&self, cols: usize, idx: &Self::Index) -> Result<Self>;
    /// `out[idx[i]] += self[i]` into a zero `out_rows × cols` matrix.
    fn index_add_rows(&self, cols: usize, idx: &Self::Index, out_rows: usize) -> Result<Self>;
    /// `out[i] = self[i, idx[i]]`.
    fn gather_cols(&self, rows: usize, cols: usize, idx: &Self::Index) -> Result<Self>;
    /// `out[i, idx[i]] = self[i]`, zero elsewhere.
    fn scatter_cols(&self, rows: usize, cols: usize, idx: &Self::Index) -> Result<Self>;
    /// Copies a `rows × cols` block between strided row-major buffers.
    #[allow(clippy::too_many_arguments)]
    fn copy2d(
        &self,
        dst: &mut Self,
        rows: usize,
        cols: usize,
        src_stride: usize,
        dst_stride: usize,
        src_offset: usize,
        dst_offset: usize,
    ) -> Result<()>;
    fn transpose2d(&self, rows: usize, cols: usize) -> Result<Self>;
    /// Row softmax (or log-softmax) of a `rows × cols` matrix.
    fn softmax_rows(&self, rows: usize, cols: usize, log: bool) -> Result<Self>;
    /// Index of the largest value of each row (first on ties).
    fn argmax_rows(&self, rows: usize, cols: usize) -> Result<Self::Index>;
    /// Fused shifted softmax-cross-entropy: per-row weighted losses and, when asked,
    /// `dz = grad_scale * w_i * (softmax(z_i + s_i) - onehot(y_i))`.
    fn xent(&self, args: XentArgs<'_, Self, Self::Index>) -> Result<(Self, Option<Self>)>;
    /// [`Self::xent`] with the per-row losses summed as [`Self::sum_all`] would sum them (the
    /// same bits): a one-element total. The default sums what [`Self::xent`] returns; a
    /// backend overrides it where it can add the losses while they are still in registers
    /// or cache instead of writing them out and reading them back.
    fn xent_total(&self, args: XentArgs<'_, Self, Self::Index>) -> Result<(Self, Option<Self>)> {
        let (losses, grad) = self.xent(args)?;
        Ok((losses.sum_all()?, grad))
    }
    /// Fused linear layer + shifted softmax-cross-entropy (see [`LinearXentArgs`]). The
    /// default is [`linear_xent_composite`]; a backend overrides it with a kernel that reads
    /// `x` once, for the shapes where it has one.
    fn linear_xent(
        &self,
        args: LinearXentArgs<'_, Self, Self::Index>,
    ) -> Result<LinearXentOut<Self>> {
        linear_xent_composite(self, args)
    }
    /// XRM's label-flip step on `rows × cols` held-out logits with one uniform in `[0, 1)` per
    /// row: `Some(ŷ)` when row `i` flips to its prediction `ŷ` (the first largest logit),
    /// that is when `uniforms[i] <` [`flip_probability`]`(p_i, cols)` with `p_i` the largest
    /// softmax probability, in f64; `None` when it keeps its label.
    fn flip_targets(&self, rows: usize, cols: usize, uniforms: &[f64]) -> Result<Vec<Option<u32>>>;
    /// Sum of all elements, in a fixed order.
    fn sum_all(&self) -> Result<Self>;
    fn sgd_update(
        &mut self,
        grad: &Self,
        momentum_buf: Option<&mut Self>,
        h: SgdStep,
    ) -> Result<()>;
    fn adam_update(&mut self, grad: &Self, m: &mut Self, v: &mut Self, h: AdamStep) -> Result<()>;
}

/// The probability that XRM flips an example's dynamic label to the held-out prediction when
/// that prediction has probability `p` (the largest of `k` classes): `(p − 1/k) · k/(k−1)`,
/// 0 at the uniform prediction, 1 at a certain one; clamped to `[0, 1]` against rounding.
/// Returns 0 for `k < 2` (nothing to flip to).
pub fn flip_probability(p: f64, k: usize) -> f64 {
    if k < 2 {
        return 0.0;
    }
    let k = k as f64;
    ((p - 1.0 / k) * k / (k - 1.0)).clamp(0.0, 1.0)
}

/// Where tensors live.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(cuda::CudaDevice),
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            #[cfg(feature = "cuda")]
            (Device::Cuda(a), Device::Cuda(b)) => a.same_device(b),
            #[cfg(feature = "cuda")]
            _ => false,
        }
    }
}

impl Device {
    /// The first CUDA device, or an error that says why there is none (never a panic).
    pub fn cuda_if_available() -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            Ok(Device::Cuda(cuda::CudaDevice::new(0)?))
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(Error::Device(
                "this build has no CUDA support: rebuild with `--features cuda`".into(),
            ))
        }
    }

    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(name: &str) -> Result<Device> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Device::cuda_if_available(),
            other => match other.strip_prefix("cuda:") {
                #[cfg(feature = "cuda")]
                Some(n) => {
                    let ordinal = n
                        .parse::<usize>()
                        .map_err(|_| Error::arg("device", format!("bad CUDA ordinal `{n}`")))?;
                    Ok(Device::Cuda(cuda::CudaDevice::new(ordinal)?))
                }
                #[cfg(not(feature = "cuda"))]
                Some(_) => Device::cuda_if_available(),
                None => Err(Error::arg(
                    "device",
                    format!("`{other}`: expected cpu, cuda or cuda:N"),
                )),
            },
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// The most output columns for which `x · Wᵀ` at depth `k` computes every column with
    /// the operations of its own product, whatever the width: linear maps stacked into one
    /// product up to this width each get the bits of a product of their own. 1 where the
    /// backend promises nothing.
    pub fn stackable_columns(&self, k: usize) -> usize {
        match self {
            Device::Cpu => cpu::stackable_columns(k),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => 1,
        }
    }

    /// The row-independence promise ([`BackendStorage::matmul`]): the most output columns
    /// `n` for which `x · Wᵀ` (`x` untransposed, `m × k`; `W` stored `n × k`) gives every
    /// row of `x` the bits it has in a product of its own, whatever `m` and whatever the
    /// other rows are. Within it a row's logits do not depend on the batch, so a product may
    /// be split into row blocks, or a gathered subset's rows read from the product over all
    /// rows, without changing a bit. 0 where the backend promises nothing (every product
    /// must then be taken over exactly the rows it was taken over before).
    ///
    /// The CPU promises it on its dot-product path ([`Device::stackable_columns`] columns:
    /// 4, or 64 when `k ≥ 512`): each element is the dot of one row with one column, summed
    /// in an order fixed by `k` alone (32 partial sums, a fixed tree, the tail in order),
    /// whatever the row blocking, the thread count and the instruction set; `tests/rows.rs`
    /// checks it. The CUDA backend promises nothing (0).
    pub fn row_independent_columns(&self, k: usize) -> usize {
        match self {
            Device::Cpu => cpu::stackable_columns(k),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => 0,
        }
    }

    pub(crate) fn storage_from_vec(&self, data: Vec<f32>) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(cpu::CpuStorage::new(data))),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Storage::Cuda(d.storage_from_host(&data)?)),
        }
    }

    /// Storage over `data`: used in place on the CPU (a shared or mapped buffer is not
    /// copied), uploaded once to a GPU.
    pub(crate) fn storage_from_buffer(&self, data: F32Buffer) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(cpu::CpuStorage(data))),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Storage::Cuda(d.storage_from_host(&data)?)),
        }
    }

    pub(crate) fn zeros_storage(&self, len: usize) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(cpu::CpuStorage::new(vec![0.0; len]))),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Storage::Cuda(d.zeros(len)?)),
        }
    }

    pub(crate) fn full_storage(&self, len: usize, value: f32) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(cpu::CpuStorage::new(vec![value; len]))),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Storage::Cuda(d.full(len, value)?)),
        }
    }

    pub(crate) fn index_from_vec(&self, data: Vec<u32>) -> Result<IndexStorage> {
        match self {
            Device::Cpu => Ok(IndexStorage::Cpu(data)),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(IndexStorage::Cuda(d.index_from_host(&data)?)),
        }
    }

    /// Waits for queued device work (a no-op on the CPU); for timing.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d.synchronize(),
        }
    }
}

/// Tensor data on some device.
pub enum Storage {
    Cpu(cpu::CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(cuda::CudaStorage),
}

/// u32 indices (labels, row ids) on some device.
pub enum IndexStorage {
    Cpu(Vec<u32>),
    #[cfg(feature = "cuda")]
    Cuda(cuda::CudaIndex),
}

impl IndexStorage {
    pub fn len(&self) -> usize {
        match self {
            IndexStorage::Cpu(v) => v.len(),
            #[cfg(feature = "cuda")]
            IndexStorage::Cuda(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_host(&self) -> Result<Vec<u32>> {
        match self {
            IndexStorage::Cpu(v) => Ok(v.clone()),
            #[cfg(feature = "cuda")]
            IndexStorage::Cuda(c) => c.to_host(),
        }
    }
}

/// The fused CE on one backend: row losses, or their total as `sum_all` adds them.
fn xent_on<B: BackendStorage>(
    z: &B,
    args: XentArgs<'_, B, B::Index>,
    total: bool,
) -> Result<(B, Option<B>)> {
    if total {
        z.xent_total(args)
    } else {
        z.xent(args)
    }
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn device_mismatch(op: &'static str) -> Error {
    Error::Device(format!("{op}: operands live on different devices"))
}

/// Applies a backend method to one storage, keeping the variant.
macro_rules! unary_dispatch {
    ($s:expr, $x:ident => $body:expr) => {
        match $s {
            Storage::Cpu($x) => Ok(Storage::Cpu($body?)),
            #[cfg(feature = "cuda")]
            Storage::Cuda($x) => Ok(Storage::Cuda($body?)),
        }
    };
}

/// Applies a backend method to two storages of the same variant.
macro_rules! binary_dispatch {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $body:expr) => {
        match ($a, $b) {
            (Storage::Cpu($x), Storage::Cpu($y)) => Ok(Storage::Cpu($body?)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda($x), Storage::Cuda($y)) => Ok(Storage::Cuda($body?)),
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch($op)),
        }
    };
}

/// Applies a backend method to a storage and an index storage of the same device.
macro_rules! index_dispatch {
    ($op:expr, $a:expr, $i:expr, ($x:ident, $idx:ident) => $body:expr) => {
        match ($a, $i) {
            (Storage::Cpu($x), IndexStorage::Cpu($idx)) => Ok(Storage::Cpu($body?)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda($x), IndexStorage::Cuda($idx)) => Ok(Storage::Cuda($body?)),
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch($op)),
        }
    };
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_host(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(s) => s.to_host(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.to_host(),
        }
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Storage> {
        unary_dispatch!(self, s => s.unary(op))
    }

    pub fn binary(
        &self,
        rhs: &Storage,
        op: BinaryOp,
        lhs_shape: &Shape,
        rhs_shape: &Shape,
        out: &Shape,
    ) -> Result<Storage> {
        binary_dispatch!("binary", self, rhs, (a, b) => a.binary(b, op, lhs_shape, rhs_shape, out))
    }

    pub fn where_cond(&self, on_true: &Storage, on_false: &Storage) -> Result<Storage> {
        match (self, on_true, on_false) {
            (Storage::Cpu(m), Storage::Cpu(t), Storage::Cpu(f)) => {
                Ok(Storage::Cpu(m.where_cond(t, f)?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(m), Storage::Cuda(t), Storage::Cuda(f)) => {
                Ok(Storage::Cuda(m.where_cond(t, f)?))
            }
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch("where_cond")),
        }
    }

    pub fn reduce(&self, op: ReduceOp, outer: usize, len: usize, inner: usize) -> Result<Storage> {
        unary_dispatch!(self, s => s.reduce(op, outer, len, inner))
    }

    pub fn matmul(
        &self,
        rhs: &Storage,
        dims: (usize, usize, usize),
        lhs_t: bool,
        rhs_t: bool,
    ) -> Result<Storage> {
        let (m, k, n) = dims;
        binary_dispatch!("matmul", self, rhs, (a, b) => a.matmul(b, m, k, n, lhs_t, rhs_t))
    }

    pub fn index_select_rows(&self, cols: usize, idx: &IndexStorage) -> Result<Storage> {
        index_dispatch!("index_select", self, idx, (s, i) => s.index_select_rows(cols, i))
    }

    pub fn index_add_rows(
        &self,
        cols: usize,
        idx: &IndexStorage,
        out_rows: usize,
    ) -> Result<Storage> {
        index_dispatch!("index_add", self, idx, (s, i) => s.index_add_rows(cols, i, out_rows))
    }

    pub fn gather_cols(&self, rows: usize, cols: usize, idx: &IndexStorage) -> Result<Storage> {
        index_dispatch!("gather", self, idx, (s, i) => s.gather_cols(rows, cols, i))
    }

    pub fn scatter_cols(&self, rows: usize, cols: usize, idx: &IndexStorage) -> Result<Storage> {
        index_dispatch!("scatter", self, idx, (s, i) => s.scatter_cols(rows, cols, i))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn copy2d(
        &self,
        dst: &mut Storage,
        rows: usize,
        cols: usize,
        src_stride: usize,
        dst_stride: usize,
        src_offset: usize,
        dst_offset: usize,
    ) -> Result<()> {
        match (self, dst) {
            (Storage::Cpu(s), Storage::Cpu(d)) => s.copy2d(
                d, rows, cols, src_stride, dst_stride, src_offset, dst_offset,
            ),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(s), Storage::Cuda(d)) => s.copy2d(
                d, rows, cols, src_stride, dst_stride, src_offset, dst_offset,
            ),
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch("copy2d")),
        }
    }

    pub fn transpose2d(&self, rows: usize, cols: usize) -> Result<Storage> {
        unary_dispatch!(self, s => s.transpose2d(rows, cols))
    }

    pub fn softmax_rows(&self, rows: usize, cols: usize, log: bool) -> Result<Storage> {
        unary_dispatch!(self, s => s.softmax_rows(rows, cols, log))
    }

    pub fn argmax_rows(&self, rows: usize, cols: usize) -> Result<IndexStorage> {
        match self {
            Storage::Cpu(s) => Ok(IndexStorage::Cpu(s.argmax_rows(rows, cols)?)),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Ok(IndexStorage::Cuda(s.argmax_rows(rows, cols)?)),
        }
    }

    pub fn sum_all(&self) -> Result<Storage> {
        unary_dispatch!(self, s => s.sum_all())
    }

    /// Fused shifted softmax-CE; see [`BackendStorage::xent`].
    pub fn xent(
        &self,
        args: XentArgs<'_, Storage, IndexStorage>,
    ) -> Result<(Storage, Option<Storage>)> {
        self.xent_with(args, false)
    }

    /// The fused CE with the row losses summed; see [`BackendStorage::xent_total`].
    pub fn xent_total(
        &self,
        args: XentArgs<'_, Storage, IndexStorage>,
    ) -> Result<(Storage, Option<Storage>)> {
        self.xent_with(args, true)
    }

    fn xent_with(
        &self,
        args: XentArgs<'_, Storage, IndexStorage>,
        total: bool,
    ) -> Result<(Storage, Option<Storage>)> {
        const OP: &str = "shifted_cross_entropy";
        match (self, args.labels) {
            (Storage::Cpu(z), IndexStorage::Cpu(y)) => {
                let args = args
                    .cast(Storage::as_cpu, y)
                    .ok_or_else(|| device_mismatch(OP))?;
                let (l, g) = xent_on(z, args, total)?;
                Ok((Storage::Cpu(l), g.map(Storage::Cpu)))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(z), IndexStorage::Cuda(y)) => {
                let args = args
                    .cast(Storage::as_cuda, y)
                    .ok_or_else(|| device_mismatch(OP))?;
                let (l, g) = xent_on(z, args, total)?;
                Ok((Storage::Cuda(l), g.map(Storage::Cuda)))
            }
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch(OP)),
        }
    }

    /// Fused linear layer + shifted softmax-CE; see [`BackendStorage::linear_xent`].
    pub fn linear_xent(
        &self,
        args: LinearXentArgs<'_, Storage, IndexStorage>,
    ) -> Result<LinearXentOut<Storage>> {
        const OP: &str = "linear_shifted_cross_entropy";
        match (self, args.xent.labels) {
            (Storage::Cpu(x), IndexStorage::Cpu(y)) => {
                let args = args
                    .cast(Storage::as_cpu, y)
                    .ok_or_else(|| device_mismatch(OP))?;
                Ok(x.linear_xent(args)?.map(Storage::Cpu))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(x), IndexStorage::Cuda(y)) => {
                let args = args
                    .cast(Storage::as_cuda, y)
                    .ok_or_else(|| device_mismatch(OP))?;
                Ok(x.linear_xent(args)?.map(Storage::Cuda))
            }
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch(OP)),
        }
    }

    /// XRM's label-flip step; see [`BackendStorage::flip_targets`].
    pub fn flip_targets(
        &self,
        rows: usize,
        cols: usize,
        uniforms: &[f64],
    ) -> Result<Vec<Option<u32>>> {
        match self {
            Storage::Cpu(s) => s.flip_targets(rows, cols, uniforms),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.flip_targets(rows, cols, uniforms),
        }
    }

    fn as_cpu(&self) -> Option<&cpu::CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            #[cfg(feature = "cuda")]
            _ => None,
        }
    }

    #[cfg(feature = "cuda")]
    fn as_cuda(&self) -> Option<&cuda::CudaStorage> {
        match self {
            Storage::Cuda(s) => Some(s),
            _ => None,
        }
    }

    pub fn sgd_update(
        &mut self,
        grad: &Storage,
        momentum_buf: Option<&mut Storage>,
        h: SgdStep,
    ) -> Result<()> {
        match (self, grad, momentum_buf) {
            (Storage::Cpu(p), Storage::Cpu(g), None) => p.sgd_update(g, None, h),
            (Storage::Cpu(p), Storage::Cpu(g), Some(Storage::Cpu(b))) => {
                p.sgd_update(g, Some(b), h)
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(p), Storage::Cuda(g), None) => p.sgd_update(g, None, h),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(p), Storage::Cuda(g), Some(Storage::Cuda(b))) => {
                p.sgd_update(g, Some(b), h)
            }
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch("sgd_update")),
        }
    }

    pub fn adam_update(
        &mut self,
        grad: &Storage,
        m: &mut Storage,
        v: &mut Storage,
        h: AdamStep,
    ) -> Result<()> {
        match (self, grad, m, v) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => {
                p.adam_update(g, m, v, h)
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => {
                p.adam_update(g, m, v, h)
            }
            #[cfg(feature = "cuda")]
            _ => Err(device_mismatch("adam_update")),
        }
    }
}
