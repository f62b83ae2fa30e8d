//! The tensor: a cheap-to-clone handle on contiguous row-major f32 data, its shape, its
//! device, and — when it takes part in a differentiated computation — the op that made it.
//!
//! Storage is shared behind `Arc<RwLock<_>>`: `reshape` is a view (same buffer, new shape),
//! everything else produces a new buffer. The lock lets an optimizer update parameters in
//! place while graphs that read them have been dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::autograd::{self, Op};
use crate::backend::{Device, IndexStorage, Storage};
use crate::buffer::F32Buffer;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::shape::Shape;

/// A unique tensor id (graph node key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    pub(crate) fn fresh() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        TensorId(COUNTER.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorInner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) shape: Shape,
    pub(crate) device: Device,
    /// The op that produced this tensor, recorded only when gradients flow through it.
    pub(crate) op: Option<Op>,
    /// A leaf whose gradient `backward` reports.
    pub(crate) is_variable: bool,
}

/// An n-dimensional f32 tensor. Cloning is cheap (an `Arc` bump).
///
/// ```
/// use memaware::{Device, Indices, Reduction, Tensor};
///
/// # fn main() -> memaware::Result<()> {
/// let z = Tensor::from_vec(vec![2.0, 0.0, 0.0, 1.0], (2, 2), &Device::Cpu)?.variable();
/// let y = Indices::new(vec![0, 1], &Device::Cpu)?;
/// let loss = z.shifted_cross_entropy(&y, None, None, Reduction::Mean)?;
/// let grads = loss.backward()?;
/// // ∂loss/∂z = (softmax(z) − onehot(y)) / N: each row's gradient sums to zero.
/// let dz = grads.get(&z).expect("z is a variable").to_vec()?;
/// assert!((dz[0] + dz[1]).abs() < 1e-7 && dz[0] < 0.0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor{{shape: {:?}, device: {:?}, grad: {}}}",
            self.shape(),
            self.device(),
            self.tracks_grad()
        )
    }
}

/// u32 indices (class labels, row ids) on a device.
#[derive(Clone)]
pub struct Indices {
    pub(crate) storage: Arc<IndexStorage>,
    pub(crate) device: Device,
}

impl std::fmt::Debug for Indices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Indices{{len: {}, device: {:?}}}",
            self.len(),
            self.device
        )
    }
}

impl Indices {
    /// Indices on `device`.
    pub fn new(data: Vec<u32>, device: &Device) -> Result<Indices> {
        Ok(Indices {
            storage: Arc::new(device.index_from_vec(data)?),
            device: device.clone(),
        })
    }

    /// From `usize` row numbers (errors if one exceeds `u32`).
    pub fn from_usize(data: &[usize], device: &Device) -> Result<Indices> {
        let v = data
            .iter()
            .enumerate()
            .map(|(p, &i)| {
                u32::try_from(i).map_err(|_| Error::IndexOutOfRange {
                    op: "indices",
                    position: p,
                    index: i,
                    size: u32::MAX as usize,
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        Indices::new(v, device)
    }

    pub fn len(&self) -> usize {
        self.storage.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn to_vec(&self) -> Result<Vec<u32>> {
        self.storage.to_host()
    }

    pub fn to_device(&self, device: &Device) -> Result<Indices> {
        if &self.device == device {
            return Ok(self.clone());
        }
        Indices::new(self.to_vec()?, device)
    }
}

const LOCK_POISONED: &str = "tensor storage lock poisoned: a thread panicked while holding it";

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: Shape, device: Device) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::fresh(),
            storage: Arc::new(RwLock::new(storage)),
            shape,
            device,
            op: None,
            is_variable: false,
        }))
    }

    /// A tensor made by an op; records `op` when gradients are enabled and an input tracks
    /// gradients.
    pub(crate) fn from_op(
        storage: Storage,
        shape: Shape,
        device: &Device,
        inputs: &[&Tensor],
        op: impl FnOnce() -> Op,
    ) -> Tensor {
        let track = autograd::grad_enabled() && inputs.iter().any(|t| t.tracks_grad());
        Tensor(Arc::new(TensorInner {
            id: TensorId::fresh(),
            storage: Arc::new(RwLock::new(storage)),
            shape,
            device: device.clone(),
            op: if track { Some(op()) } else { None },
            is_variable: false,
        }))
    }

    /// A tensor from data in row-major order.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::bad_shape(
                "from_vec",
                shape.dims(),
                format!("{} values given", data.len()),
            ));
        }
        Ok(Tensor::from_storage(
            device.storage_from_vec(data)?,
            shape,
            device.clone(),
        ))
    }

    /// A tensor over a host buffer: on the CPU the tensor reads the buffer in place (a shared
    /// or mapped buffer — a data set's features — is not copied); on a GPU it is uploaded.
    pub fn from_buffer(
        data: F32Buffer,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::bad_shape(
                "from_buffer",
                shape.dims(),
                format!("{} values given", data.len()),
            ));
        }
        Ok(Tensor::from_storage(
            device.storage_from_buffer(data)?,
            shape,
            device.clone(),
        ))
    }

    /// A tensor from a slice, copied.
    pub fn from_slice(data: &[f32], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// A rank-0 tensor.
    pub fn scalar(value: f32, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(vec![value], (), device)
    }

    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Ok(Tensor::from_storage(
            device.zeros_storage(shape.elem_count())?,
            shape,
            device.clone(),
        ))
    }

    pub fn full(shape: impl Into<Shape>, value: f32, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Ok(Tensor::from_storage(
            device.full_storage(shape.elem_count(), value)?,
            shape,
            device.clone(),
        ))
    }

    pub fn ones(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, device)
    }

    /// Uniform in `[lo, hi)` from `rng`.
    pub fn rand_uniform(
        rng: &mut Rng,
        shape: impl Into<Shape>,
        lo: f32,
        hi: f32,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_vec(rng.uniform_vec(shape.elem_count(), lo, hi), shape, device)
    }

    /// Standard normal times `std` from `rng`.
    pub fn randn(
        rng: &mut Rng,
        shape: impl Into<Shape>,
        std: f32,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let mut v = rng.normal_vec(shape.elem_count());
        v.iter_mut().for_each(|x| *x *= std);
        Tensor::from_vec(v, shape, device)
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }

    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }

    pub fn elem_count(&self) -> usize {
        self.0.shape.elem_count()
    }

    /// `(rows, cols)` of a matrix.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        self.0.shape.dims2("dims2")
    }

    pub fn device(&self) -> &Device {
        &self.0.device
    }

    /// Whether gradients flow through this tensor.
    pub fn tracks_grad(&self) -> bool {
        self.0.is_variable || self.0.op.is_some()
    }

    /// Whether this is a leaf whose gradient `backward` reports.
    pub fn is_variable(&self) -> bool {
        self.0.is_variable
    }

    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }

    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().expect(LOCK_POISONED)
    }

    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().expect(LOCK_POISONED)
    }

    /// A leaf variable that shares this tensor's data: gradients of it are reported by
    /// `backward`, and optimizers update it in place.
    pub fn variable(&self) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::fresh(),
            storage: self.0.storage.clone(),
            shape: self.0.shape.clone(),
            device: self.0.device.clone(),
            op: None,
            is_variable: true,
        }))
    }

    /// The same data, cut off from the graph.
    pub fn detach(&self) -> Tensor {
        if !self.tracks_grad() {
            return self.clone();
        }
        Tensor(Arc::new(TensorInner {
            id: TensorId::fresh(),
            storage: self.0.storage.clone(),
            shape: self.0.shape.clone(),
            device: self.0.device.clone(),
            op: None,
            is_variable: false,
        }))
    }

    /// A deep copy (new buffer), detached.
    pub fn copy(&self) -> Result<Tensor> {
        Tensor::from_vec(self.to_vec()?, self.shape().clone(), self.device())
    }

    /// Rows `start..start + len` of the first axis, detached (no gradient flows back through
    /// them): read in place from a shared or mapped CPU buffer (a data set's features, no
    /// copy), else copied ([`Tensor::narrow`]). For row-blocked passes over a large matrix.
    pub fn rows(&self, start: usize, len: usize) -> Result<Tensor> {
        let Some(&n) = self.dims().first() else {
            return Err(Error::bad_shape("rows", self.dims(), "needs rank >= 1"));
        };
        if start.checked_add(len).is_none_or(|end| end > n) {
            return Err(Error::bad_shape(
                "rows",
                self.dims(),
                format!("rows {start}..{start}+{len} exceed {n}"),
            ));
        }
        let inner = self.dims()[1..].iter().product::<usize>();
        let mut dims = self.dims().to_vec();
        dims[0] = len;
        let view = match &*self.storage() {
            Storage::Cpu(s) if s.0.is_shared() => s.0.clone().slice(start * inner, len * inner),
            _ => None,
        };
        match view {
            Some(buf) => Tensor::from_buffer(buf, dims, &Device::Cpu),
            None => Ok(self.narrow(0, start, len)?.detach()),
        }
    }

    /// All values, row-major, on the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.storage().to_host()
    }

    /// The value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::bad_shape(
                "to_scalar",
                self.dims(),
                "expected exactly one element",
            ));
        }
        Ok(self.to_vec()?[0])
    }

    /// This tensor on `device` (a no-op when already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        Tensor::from_vec(self.to_vec()?, self.shape().clone(), device)
    }

    /// Overwrites the data in place with `src` (same shape and device). For parameters.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape("assign", self.dims(), src.dims()));
        }
        if src.device() != self.device() {
            return Err(Error::Device("assign: source on another device".into()));
        }
        let new = src.device().storage_from_vec(src.to_vec()?)?;
        *self.storage_mut() = new;
        Ok(())
    }

    pub(crate) fn check_same_device(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::Device(format!(
                "{op}: operands on {:?} and {:?}",
                self.device(),
                other.device()
            )));
        }
        Ok(())
    }
}
