//! The CUDA backend: device buffers, our own PTX kernels (kernels/README.md) and the launches
//! that implement every [`BackendStorage`] primitive, through cudarc's driver API loaded at
//! run time (a build needs no CUDA installation; a machine without a driver gets an error
//! from [`CudaDevice::new`], never a panic).
//!
//! # Devices, modules, streams
//!
//! [`CudaDevice::new`] opens the primary context of a GPU once per process and returns a
//! cheap handle to it (later calls for the same ordinal share it). Every kernel and fill
//! goes to the device's one stream (the legacy default stream) in program order, and host
//! copies are synchronous on it, so no events are needed to order two uses of a buffer. The eight PTX modules are embedded in the
//! binary (`include_str!` of kernels/ptx), JIT-compiled by the driver the first time one of
//! their kernels runs, and each function handle is cached.
//!
//! # Memory
//!
//! Storage is contiguous row-major f32 (indices u32). Host↔device copies happen only in
//! [`CudaDevice::storage_from_host`], [`CudaDevice::index_from_host`] and `to_host`. Output
//! buffers come from a per-device pool keyed by length ([`pool`]): a steady-state training
//! step makes no device allocation ([`CudaDevice::allocations`] counts the real ones).
//! Each op reads its inputs once and writes its output once, except the fused kernels'
//! documented second passes (block-row softmax re-reads its row, and so does the fused
//! cross-entropy's fallback for rows over 32768 columns).
//!
//! # Kernel choice and determinism
//!
//! Variants and grids are chosen from the shape alone ([`plan`]), never from the device, so
//! every GPU runs the same reduction trees: results are bitwise reproducible run to run and
//! GPU to GPU (except `index_add_rows` with repeated indices, whose atomic adds may round in
//! any order). GPU and CPU agree to rounding: reductions and GEMM sum in other orders, the
//! transcendental functions are CUDA's, `affine` is one fused multiply-add, and Adam follows
//! `optim.cu` (`m = β1·m + (1-β1)·g` with `1-β` rounded in f32, PyTorch's formula up to
//! rounding). Special values: `max`, `maximum` and `relu` propagate NaN and `argmax` counts
//! NaN as the largest value (PyTorch's conventions), where the CPU backend ignores NaN.
//!
//! # Index checks
//!
//! Indices uploaded from the host remember their largest value (and its first position),
//! so an index or label out of range is a typed error before any launch, with no device
//! round trip. Indices made on the device (`argmax_rows`) carry an upper bound; when that
//! bound cannot prove an op's indices in range, the kernel's error flag is read after the
//! launch instead (one 4-byte copy). Kernels never follow an index out of range.

mod emulator;
mod kernels;
mod launch;
mod plan;
mod pool;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};

use self::emulator::HostBuf;
use self::kernels::{Kernel, PtxModule, MODULE_COUNT};
use self::launch::{CudaAlloc, GemmDims, Operand, Region, XentLaunch};
use self::plan::{GemmPlan, ReducePlan, RowVariant, ThinTaPlan, XentVariant};
use self::pool::Pool;
use super::{AdamStep, BackendStorage, BinaryOp, ReduceOp, SgdStep, UnaryOp, XentArgs};
use crate::error::{Error, Result};
use crate::shape::Shape;

/// A real GPU's context, stream and loaded kernels.
struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<[Option<Arc<CudaModule>>; MODULE_COUNT]>,
    functions: Vec<OnceLock<CudaFunction>>,
}

/// One device: a GPU (or, without `gpu`, the host emulator), its buffer pools and counters.
struct DeviceInner {
    ordinal: usize,
    name: String,
    gpu: Option<Gpu>,
    pool_f32: Mutex<Pool<f32>>,
    pool_u32: Mutex<Pool<u32>>,
    allocations: AtomicU64,
    poison: AtomicBool,
    /// Launches per kernel ([`Kernel::index`]), for tests that check which variants ran.
    launches: Vec<AtomicU64>,
    /// Fused cross-entropy on the kernels that predate the single-pass ones (benchmarks).
    xent_previous: AtomicBool,
}

/// A handle on one CUDA device (cheap to clone; all handles of an ordinal share the device's
/// context, kernels and buffer pool).
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner.ordinal {
            EMULATOR_ORDINAL => write!(f, "Cuda(emulator)"),
            o => write!(f, "Cuda({o}: {})", self.inner.name),
        }
    }
}

/// Devices opened so far, one per ordinal.
static DEVICES: Mutex<Vec<CudaDevice>> = Mutex::new(Vec::new());

/// The registry key of the host emulator.
const EMULATOR_ORDINAL: usize = usize::MAX;

fn driver_err(what: impl std::fmt::Display, e: cudarc::driver::DriverError) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

fn internal(what: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("internal: {what}"))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Device memory: a CUDA buffer, or host memory standing in for one on the emulator.
enum DevBuf<T> {
    Cuda(CudaAlloc, PhantomData<T>),
    Host(HostBuf, PhantomData<T>),
}

impl<T> DevBuf<T> {
    fn len(&self) -> usize {
        match self {
            DevBuf::Cuda(a, _) => a.len(),
            DevBuf::Host(h, _) => h.len(),
        }
    }
}

/// Buffer element types (4 bytes each) with a pool of their own.
trait Pooled: Copy + Default {
    fn pool(dev: &DeviceInner) -> &Mutex<Pool<Self>>;
    fn to_word(self) -> u32;
    fn from_word(w: u32) -> Self;
}

impl Pooled for f32 {
    fn pool(dev: &DeviceInner) -> &Mutex<Pool<f32>> {
        &dev.pool_f32
    }
    fn to_word(self) -> u32 {
        self.to_bits()
    }
    fn from_word(w: u32) -> Self {
        f32::from_bits(w)
    }
}

impl Pooled for u32 {
    fn pool(dev: &DeviceInner) -> &Mutex<Pool<u32>> {
        &dev.pool_u32
    }
    fn to_word(self) -> u32 {
        self
    }
    fn from_word(w: u32) -> Self {
        w
    }
}

impl DeviceInner {
    fn open(ordinal: usize) -> Result<DeviceInner> {
        let (ctx, stream) = launch::open_context(ordinal)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(DeviceInner::with(
            ordinal,
            name,
            Some(Gpu {
                ctx,
                stream,
                modules: Mutex::new(Default::default()),
                functions: (0..Kernel::COUNT).map(|_| OnceLock::new()).collect(),
            }),
        ))
    }

    fn with(ordinal: usize, name: String, gpu: Option<Gpu>) -> DeviceInner {
        DeviceInner {
            ordinal,
            name,
            gpu,
            pool_f32: Mutex::new(Pool::new()),
            pool_u32: Mutex::new(Pool::new()),
            allocations: AtomicU64::new(0),
            poison: AtomicBool::new(false),
            launches: (0..Kernel::COUNT).map(|_| AtomicU64::new(0)).collect(),
            xent_previous: AtomicBool::new(false),
        }
    }

    fn count_launch(&self, k: Kernel) {
        self.launches[k.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The loaded module, loading (and JIT-compiling) it on first use.
    fn module(&self, gpu: &Gpu, m: PtxModule) -> Result<Arc<CudaModule>> {
        let mut modules = gpu
            .modules
            .lock()
            .map_err(|_| internal("the module table lock is poisoned"))?;
        if let Some(loaded) = &modules[m.index()] {
            return Ok(loaded.clone());
        }
        let loaded = gpu
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(m.ptx()))
            .map_err(|e| {
                driver_err(
                    format!("loading kernels/ptx/{}.ptx on {}", m.name(), self.name),
                    e,
                )
            })?;
        modules[m.index()] = Some(loaded.clone());
        Ok(loaded)
    }

    /// The kernel's function handle on a GPU, cached after the first lookup.
    fn function<'g>(&self, gpu: &'g Gpu, k: Kernel) -> Result<&'g CudaFunction> {
        let slot = &gpu.functions[k.index()];
        if let Some(f) = slot.get() {
            return Ok(f);
        }
        let f = self
            .module(gpu, k.module())?
            .load_function(k.name())
            .map_err(|e| driver_err(format!("looking up kernel {}", k.name()), e))?;
        let smem = k.max_dynamic_smem();
        if smem > 0 {
            use sys::CUfunction_attribute as A;
            // Dynamic shared memory beyond 48 KiB must be opted into per function; and these
            // kernels stream their data, so they prefer the whole carveout as shared memory
            // (two 96 KiB blocks per SM), not L1.
            for (attribute, value, what) in [
                (
                    A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                    "the dynamic shared memory limit",
                ),
                (
                    A::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                    100,
                    "the shared memory carveout",
                ),
            ] {
                f.set_attribute(attribute, value).map_err(|e| {
                    driver_err(
                        format!("setting {what} of {} on {}", k.name(), self.name),
                        e,
                    )
                })?;
            }
        }
        // Another thread may have cached the same handle first; either is fine.
        let _ = slot.set(f);
        slot.get()
            .ok_or_else(|| internal(format!("kernel {} was not cached", k.name())))
    }

    fn addr<T>(&self, buf: &DevBuf<T>) -> u64 {
        match buf {
            DevBuf::Cuda(a, _) => a.addr(),
            DevBuf::Host(h, _) => h.addr(),
        }
    }

    /// A device buffer of `len` elements (at least one), from the pool or freshly allocated.
    /// With `uninit` and poisoning on, its bytes are set to 0xFF (NaN / u32::MAX) first.
    fn obtain<T: Pooled>(&self, len: usize, uninit: bool) -> Result<(DevBuf<T>, u64)> {
        let cap = len.max(1);
        let reused = T::pool(self).lock().ok().and_then(|mut p| p.take(cap));
        let buf = match reused {
            Some(b) => b,
            None => self.fresh::<T>(cap)?,
        };
        let addr = self.addr(&buf);
        if uninit && self.poison.load(Ordering::Relaxed) {
            launch::memset(self, Region { addr, len: cap }, 0xFF)?;
        }
        Ok((buf, addr))
    }

    fn fresh<T: Pooled>(&self, cap: usize) -> Result<DevBuf<T>> {
        let Some(gpu) = &self.gpu else {
            self.allocations.fetch_add(1, Ordering::Relaxed);
            return Ok(DevBuf::Host(HostBuf::new(cap), PhantomData));
        };
        let failed = |e| driver_err(format!("allocating {} bytes on {}", 4 * cap, self.name), e);
        let buf = match CudaAlloc::new(&gpu.ctx, cap) {
            Ok(b) => b,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                // Cached buffers of other sizes may be what is missing: free them, retry once.
                self.release_pool();
                CudaAlloc::new(&gpu.ctx, cap).map_err(failed)?
            }
            Err(e) => return Err(failed(e)),
        };
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(DevBuf::Cuda(buf, PhantomData))
    }

    fn recycle<T: Pooled>(&self, buf: DevBuf<T>) {
        let rejected = match T::pool(self).lock() {
            Ok(mut p) => p.give(buf),
            Err(_) => Some(buf),
        };
        // A buffer the pool did not keep is freed here, outside the lock.
        drop(rejected);
    }

    fn release_pool(&self) {
        let f = self
            .pool_f32
            .lock()
            .map(|mut p| p.drain())
            .unwrap_or_default();
        let u = self
            .pool_u32
            .lock()
            .map(|mut p| p.drain())
            .unwrap_or_default();
        drop((f, u));
    }

    fn synchronize(&self) -> Result<()> {
        match &self.gpu {
            Some(gpu) => gpu
                .stream
                .synchronize()
                .map_err(|e| driver_err(format!("synchronizing {}", self.name), e)),
            None => Ok(()),
        }
    }

    /// Copies host data into the first `data.len()` elements of `buf`.
    fn upload<T: Pooled>(&self, data: &[T], buf: &mut DevBuf<T>, addr: u64) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if buf.len() < data.len() {
            return Err(internal(format!(
                "uploading {} elements into {}",
                data.len(),
                buf.len()
            )));
        }
        match (buf, &self.gpu) {
            (DevBuf::Cuda(a, _), Some(gpu)) => launch::upload(&gpu.ctx, a, data),
            (DevBuf::Host(..), _) => {
                let words: Vec<u32> = data.iter().map(|v| v.to_word()).collect();
                emulator::write(addr, &words)
            }
            (DevBuf::Cuda(..), None) => Err(internal("a CUDA buffer on the emulator")),
        }
    }

    /// Reads elements `start..start + len` of `buf` back to the host, after every queued
    /// kernel (so a fault of any of them is reported here).
    fn download<T: Pooled>(
        &self,
        buf: Option<&DevBuf<T>>,
        start: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let buf = buf.ok_or_else(|| internal("storage without a buffer"))?;
        if start + len > buf.len() {
            return Err(internal(format!(
                "reading {start}..{} of {}",
                start + len,
                buf.len()
            )));
        }
        match (buf, &self.gpu) {
            (DevBuf::Cuda(a, _), Some(gpu)) => {
                let mut out = vec![T::default(); len];
                launch::download(&gpu.ctx, a, start, &mut out)?;
                // Surfaces a fault of any kernel queued before the copy.
                self.synchronize()?;
                Ok(out)
            }
            (DevBuf::Host(h, _), _) => Ok(emulator::read(h.addr() + 4 * start as u64, len)?
                .into_iter()
                .map(T::from_word)
                .collect()),
            (DevBuf::Cuda(..), None) => Err(internal("a CUDA buffer on the emulator")),
        }
    }
}

impl CudaDevice {
    /// Opens CUDA device `ordinal` (once per process; later calls share it). Errors, never
    /// panics, when there is no driver, no such device, or the driver fails.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        if ordinal == EMULATOR_ORDINAL {
            return Err(Error::Device(format!("no CUDA device {ordinal}")));
        }
        Self::registered(ordinal, || {
            std::panic::catch_unwind(|| DeviceInner::open(ordinal)).unwrap_or_else(|p| {
                Err(Error::Cuda(format!(
                    "the CUDA driver failed while opening device {ordinal}: {}",
                    panic_text(p.as_ref())
                )))
            })
        })
    }

    /// The host emulator of the kernels (see the `emulator` module): a device whose buffers
    /// live in host memory and whose launches run sequential re-implementations of each
    /// kernel's contract, with bounds-checked memory. For testing the backend without a GPU;
    /// it is slow and says nothing about the real kernels' speed.
    #[doc(hidden)]
    pub fn emulated() -> Result<CudaDevice> {
        Self::registered(EMULATOR_ORDINAL, || {
            Ok(DeviceInner::with(
                EMULATOR_ORDINAL,
                "host emulator of the CUDA kernels".into(),
                None,
            ))
        })
    }

    fn registered(
        ordinal: usize,
        open: impl FnOnce() -> Result<DeviceInner>,
    ) -> Result<CudaDevice> {
        let mut devices = DEVICES
            .lock()
            .map_err(|_| internal("the CUDA device registry lock is poisoned"))?;
        if let Some(d) = devices.iter().find(|d| d.inner.ordinal == ordinal) {
            return Ok(d.clone());
        }
        let dev = CudaDevice {
            inner: Arc::new(open()?),
        };
        devices.push(dev.clone());
        Ok(dev)
    }

    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// The GPU's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether this is the host emulator rather than a GPU.
    pub fn is_emulated(&self) -> bool {
        self.inner.gpu.is_none()
    }

    pub fn same_device(&self, other: &CudaDevice) -> bool {
        self.inner.ordinal == other.inner.ordinal
    }

    /// Device allocations made so far (pool misses). Constant across steady-state training
    /// steps: every buffer a step needs comes back from the pool.
    pub fn allocations(&self) -> u64 {
        self.inner.allocations.load(Ordering::Relaxed)
    }

    /// Bytes held by the pool in free buffers.
    pub fn pooled_bytes(&self) -> usize {
        let f = self
            .inner
            .pool_f32
            .lock()
            .map(|p| p.cached_bytes())
            .unwrap_or(0);
        let u = self
            .inner
            .pool_u32
            .lock()
            .map(|p| p.cached_bytes())
            .unwrap_or(0);
        f + u
    }

    /// Frees every buffer the pool holds.
    pub fn release_pool(&self) {
        self.inner.release_pool();
    }

    /// For tests: when on, every output buffer an op receives uninitialized is first filled
    /// with all-ones bytes (NaN as f32, `u32::MAX` as an index), so an element a kernel
    /// fails to write shows up. Costs one memset per output.
    pub fn set_poison_outputs(&self, on: bool) {
        self.inner.poison.store(on, Ordering::Relaxed);
    }

    /// Waits for every queued kernel and copy; reports asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    /// How many times the kernel with this entry name (kernels/README.md) has been launched
    /// on this device; `None` for a name the backend does not launch. For tests that check
    /// which variant a shape picks.
    #[doc(hidden)]
    pub fn kernel_launches(&self, name: &str) -> Option<u64> {
        Kernel::ALL
            .iter()
            .find(|k| k.name() == name)
            .map(|k| self.inner.launches[k.index()].load(Ordering::Relaxed))
    }

    /// For benchmarks: when on, the fused cross-entropy runs on the kernels that predate the
    /// single-pass ones (`xent_small_c_f32`, `xent_warp_row_f32`, `xent_block_row_f32`).
    #[doc(hidden)]
    pub fn set_xent_previous_kernels(&self, on: bool) {
        self.inner.xent_previous.store(on, Ordering::Relaxed);
    }

    fn storage(&self, len: usize, uninit: bool) -> Result<CudaStorage> {
        let (buf, addr) = self.inner.obtain::<f32>(len, uninit)?;
        Ok(CudaStorage {
            buf: Some(buf),
            addr,
            len,
            dev: self.clone(),
        })
    }

    /// An output buffer whose elements the caller's kernel writes (poisoned when asked).
    fn output(&self, len: usize) -> Result<CudaStorage> {
        self.storage(len, true)
    }

    /// A copy of host data on the device.
    pub fn storage_from_host(&self, data: &[f32]) -> Result<CudaStorage> {
        let mut s = self.storage(data.len(), false)?;
        let addr = s.addr;
        let buf = s
            .buf
            .as_mut()
            .ok_or_else(|| internal("storage without a buffer"))?;
        self.inner.upload(data, buf, addr)?;
        Ok(s)
    }

    /// `len` zeros.
    pub fn zeros(&self, len: usize) -> Result<CudaStorage> {
        let s = self.storage(len, false)?;
        launch::memset(&self.inner, s.region(), 0)?;
        Ok(s)
    }

    /// `len` copies of `value`.
    pub fn full(&self, len: usize, value: f32) -> Result<CudaStorage> {
        let s = self.storage(len, false)?;
        launch::fill(&self.inner, s.region(), len, value)?;
        Ok(s)
    }

    /// Indices on the device; their largest value is recorded for range checks.
    pub fn index_from_host(&self, data: &[u32]) -> Result<CudaIndex> {
        let (mut buf, addr) = self.inner.obtain::<u32>(data.len(), false)?;
        self.inner.upload(data, &mut buf, addr)?;
        // The first position of the largest value.
        let bound = data
            .iter()
            .enumerate()
            .fold(None, |best: Option<(usize, u32)>, (p, &v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((p, v)),
            })
            .map_or(IndexBound::Empty, |(position, value)| IndexBound::Max {
                value,
                position,
            });
        Ok(CudaIndex {
            buf: Some(buf),
            addr,
            len: data.len(),
            bound,
            dev: self.clone(),
        })
    }

    /// A u32 output buffer whose elements the caller's kernel writes (poisoned when asked).
    fn output_u32(&self, len: usize) -> Result<CudaIndex> {
        let (buf, addr) = self.inner.obtain::<u32>(len, true)?;
        Ok(CudaIndex {
            buf: Some(buf),
            addr,
            len,
            bound: IndexBound::AtMost(u32::MAX),
            dev: self.clone(),
        })
    }

    fn zeros_u32(&self, len: usize) -> Result<CudaIndex> {
        let (buf, addr) = self.inner.obtain::<u32>(len, false)?;
        let idx = CudaIndex {
            buf: Some(buf),
            addr,
            len,
            bound: IndexBound::Max {
                value: 0,
                position: 0,
            },
            dev: self.clone(),
        };
        launch::memset(&self.inner, idx.region(), 0)?;
        Ok(idx)
    }

    /// Copies `src` into `dst` (same length) on the device: the device-to-device copy whose
    /// bandwidth the benchmarks use as the memory roofline.
    pub fn copy(&self, src: &CudaStorage, dst: &mut CudaStorage) -> Result<()> {
        src.check_device(self, "copy")?;
        dst.check_device(self, "copy")?;
        launch::copy_dtod(&self.inner, src.region(), dst.region())
    }
}

/// f32 data on a CUDA device. Dropping it returns the buffer to the device's pool.
pub struct CudaStorage {
    buf: Option<DevBuf<f32>>,
    addr: u64,
    len: usize,
    dev: CudaDevice,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage{{len: {}, device: {:?}}}",
            self.len, self.dev
        )
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.dev.inner.recycle(buf);
        }
    }
}

/// What is known about an index buffer's values without reading it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IndexBound {
    Empty,
    /// The exact largest value and its first position (host uploads).
    Max {
        value: u32,
        position: usize,
    },
    /// Every value is at most this (device results).
    AtMost(u32),
}

/// The outcome of checking indices against `0..size`.
enum IndexCheck {
    InRange,
    OutOfRange {
        position: usize,
        value: u32,
    },
    /// Only the kernel's error flag can tell.
    OnDevice,
}

/// u32 indices on a CUDA device. Dropping it returns the buffer to the device's pool.
pub struct CudaIndex {
    buf: Option<DevBuf<u32>>,
    addr: u64,
    len: usize,
    bound: IndexBound,
    dev: CudaDevice,
}

impl Drop for CudaIndex {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.dev.inner.recycle(buf);
        }
    }
}

impl std::fmt::Debug for CudaIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaIndex{{len: {}, device: {:?}}}", self.len, self.dev)
    }
}

impl CudaIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn to_host(&self) -> Result<Vec<u32>> {
        self.dev.inner.download(self.buf.as_ref(), 0, self.len)
    }

    fn region(&self) -> Region {
        Region {
            addr: self.addr,
            len: self.len,
        }
    }

    /// Whether the first `used` indices lie in `0..size`, from the recorded bound.
    fn check(&self, size: usize, used: usize) -> IndexCheck {
        match self.bound {
            IndexBound::Empty => IndexCheck::InRange,
            IndexBound::Max { value, .. } | IndexBound::AtMost(value)
                if (value as usize) < size =>
            {
                IndexCheck::InRange
            }
            IndexBound::Max { value, position } if position < used => {
                IndexCheck::OutOfRange { position, value }
            }
            _ => IndexCheck::OnDevice,
        }
    }
}

impl CudaStorage {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    fn inner(&self) -> &DeviceInner {
        &self.dev.inner
    }

    fn region(&self) -> Region {
        Region {
            addr: self.addr,
            len: self.len,
        }
    }

    fn check_device(&self, dev: &CudaDevice, op: &str) -> Result<()> {
        if !self.dev.same_device(dev) {
            return Err(Error::Device(format!(
                "{op}: operands on CUDA devices {} and {}",
                self.dev.ordinal(),
                dev.ordinal()
            )));
        }
        Ok(())
    }

    fn check_len(&self, need: usize, what: &str) -> Result<()> {
        if self.len < need {
            return Err(internal(format!(
                "{what}: {} elements where {need} are needed",
                self.len
            )));
        }
        Ok(())
    }

    /// Validates `idx` for an op reading its first `used` entries as indices into `0..size`:
    /// `Ok(None)` when they are known to be in range, `Ok(Some(flag))` when the kernel's
    /// error flag must be read afterwards, the typed error when one is known to be out of
    /// range.
    fn index_guard(
        &self,
        idx: &CudaIndex,
        size: usize,
        used: usize,
        err: impl Fn(usize, u32) -> Error,
    ) -> Result<Option<CudaIndex>> {
        if !idx.dev.same_device(&self.dev) {
            return Err(Error::Device("indices on another CUDA device".into()));
        }
        if idx.len < used {
            return Err(internal(format!(
                "{} indices where {used} are read",
                idx.len
            )));
        }
        match idx.check(size, used) {
            IndexCheck::InRange => Ok(None),
            IndexCheck::OutOfRange { position, value } => Err(err(position, value)),
            IndexCheck::OnDevice => Ok(Some(self.dev.zeros_u32(1)?)),
        }
    }

    /// After a launch with an error flag: the typed error for the position it reports.
    fn index_verdict(
        &self,
        flag: Option<CudaIndex>,
        idx: &CudaIndex,
        err: impl Fn(usize, u32) -> Error,
    ) -> Result<()> {
        let Some(flag) = flag else { return Ok(()) };
        let reported = flag.to_host()?.first().copied().unwrap_or(0);
        if reported == 0 {
            return Ok(());
        }
        let position = reported as usize - 1;
        let value = self
            .inner()
            .download(idx.buf.as_ref(), position, 1)?
            .first()
            .copied()
            .unwrap_or(u32::MAX);
        Err(err(position, value))
    }

    fn same_op_kernel(op: BinaryOp) -> (Kernel, Kernel) {
        match op {
            BinaryOp::Add => (Kernel::Add, Kernel::AddBcast),
            BinaryOp::Sub => (Kernel::Sub, Kernel::SubBcast),
            BinaryOp::Mul => (Kernel::Mul, Kernel::MulBcast),
            BinaryOp::Div => (Kernel::Div, Kernel::DivBcast),
            BinaryOp::Maximum => (Kernel::Maximum, Kernel::MaximumBcast),
            BinaryOp::Eq => (Kernel::Eq, Kernel::EqBcast),
        }
    }
}

/// `a · b` with an overflow check (sizes come from shapes the caller built).
fn mul(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::Device(format!("size {a} × {b} overflows")))
}

impl DeviceInner {
    /// `C = op(A) op(B)`, `C` contiguous `m × n`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        dev: &CudaDevice,
        a: Operand,
        b: Operand,
        c: Region,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        match plan::gemm_plan(m, n) {
            GemmPlan::Thin => self.gemm_thin(dev, a, b, c, GemmDims { m, n, k, ldc: n }),
            GemmPlan::ThinTransposed => {
                // Cᵀ = op(B)ᵀ op(A)ᵀ: each operand is read with its transpose flag flipped.
                let ct = dev.output(mul(n, m)?)?;
                let at = Operand {
                    trans: !b.trans,
                    ..b
                };
                let bt = Operand {
                    trans: !a.trans,
                    ..a
                };
                self.gemm_thin(
                    dev,
                    at,
                    bt,
                    ct.region(),
                    GemmDims {
                        m: n,
                        n: m,
                        k,
                        ldc: m,
                    },
                )?;
                launch::transpose2d(self, ct.region(), c, n, m)
            }
            p @ (GemmPlan::Tiled128 | GemmPlan::Tiled64) => {
                let (kernel, tile) = if p == GemmPlan::Tiled128 {
                    (Kernel::Sgemm128, 128)
                } else {
                    (Kernel::Sgemm64, 64)
                };
                // The grid's y dimension holds at most 65535 row tiles: split taller products.
                let max_rows = plan::MAX_GRID * tile;
                let mut i0 = 0;
                while i0 < m {
                    let rows = max_rows.min(m - i0);
                    let a_off = if a.trans { i0 } else { i0 * a.ld };
                    let a_part = Operand {
                        r: a.r.offset(a_off)?,
                        ..a
                    };
                    let c_part = c.offset(i0 * n)?;
                    launch::sgemm_tiled(
                        self,
                        kernel,
                        a_part,
                        b,
                        c_part,
                        GemmDims {
                            m: rows,
                            n,
                            k,
                            ldc: n,
                        },
                    )?;
                    i0 += rows;
                }
                Ok(())
            }
        }
    }

    /// `C = op(A) op(B)` with `d.n <= 16`.
    fn gemm_thin(
        &self,
        dev: &CudaDevice,
        a: Operand,
        b: Operand,
        c: Region,
        d: GemmDims,
    ) -> Result<()> {
        if !a.trans {
            return launch::sgemm_thin(self, Kernel::SgemmThin, a, b, c, d);
        }
        match plan::thin_ta_plan(d.m, d.k) {
            ThinTaPlan::Single { .. } => launch::sgemm_thin(self, Kernel::SgemmThinTa, a, b, c, d),
            ThinTaPlan::Split { blocks, z } => {
                let work = dev.output(mul(z as usize, mul(d.m, d.n)?)?)?;
                launch::sgemm_thin_partial(self, a, b, work.region(), d, blocks, z)?;
                launch::sgemm_thin_finish(self, work.region(), c, d.m, d.n, z, d.ldc)
            }
        }
    }
}

impl BackendStorage for CudaStorage {
    /// XRM's label-flip step on `rows × k` held-out logits, on the device (kernels/xrm.cu,
    /// `xrm_flip_targets_f32`): for each row, `Some(ŷ)` when its dynamic label flips to the
    /// held-out prediction `ŷ` (the first largest logit), `None` when it keeps its label;
    /// row `i` flips when `uniforms[i] < (p − 1/k)·k/(k − 1)`, `p` the largest softmax
    /// probability, all in f64 exactly as the CPU backend computes it. The
    /// logits stay on the device; the uniforms go up (8 bytes a row) and the targets come
    /// back (4 bytes a row). `k < 2`: no row flips.
    ///
    /// Errors: a storage shorter than `rows × k`, `uniforms.len() != rows`.
    fn flip_targets(&self, rows: usize, k: usize, uniforms: &[f64]) -> Result<Vec<Option<u32>>> {
        self.check_len(mul(rows, k)?, "XRM held-out logits")?;
        if uniforms.len() != rows {
            return Err(Error::arg(
                "uniforms",
                format!("{} uniforms for {rows} rows", uniforms.len()),
            ));
        }
        if rows == 0 || k < 2 {
            return Ok(vec![None; rows]);
        }
        // Each f64 as two u32 words, low word first (the device is little-endian).
        let words: Vec<u32> = uniforms
            .iter()
            .flat_map(|u| {
                let bits = u.to_bits();
                [bits as u32, (bits >> 32) as u32]
            })
            .collect();
        let u = self.dev.index_from_host(&words)?;
        let target = self.dev.output_u32(rows)?;
        launch::xrm_flip_targets(
            self.inner(),
            self.region(),
            u.region(),
            target.region(),
            rows,
            k,
        )?;
        Ok(target
            .to_host()?
            .into_iter()
            .map(|t| (t != u32::MAX).then_some(t))
            .collect())
    }

    type Index = CudaIndex;

    fn len(&self) -> usize {
        self.len
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        self.inner().download(self.buf.as_ref(), 0, self.len)
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        let n = self.len;
        let out = self.dev.output(n)?;
        let (x, y, dev) = (self.region(), out.region(), self.inner());
        match op {
            UnaryOp::Neg => launch::unary(dev, Kernel::Neg, x, y, n),
            UnaryOp::Exp => launch::unary(dev, Kernel::Exp, x, y, n),
            UnaryOp::Log => launch::unary(dev, Kernel::Log, x, y, n),
            UnaryOp::Tanh => launch::unary(dev, Kernel::Tanh, x, y, n),
            UnaryOp::Relu => launch::unary(dev, Kernel::Relu, x, y, n),
            UnaryOp::Sigmoid => launch::unary(dev, Kernel::Sigmoid, x, y, n),
            UnaryOp::Sqrt => launch::unary(dev, Kernel::Sqrt, x, y, n),
            UnaryOp::Square => launch::unary(dev, Kernel::Square, x, y, n),
            UnaryOp::Recip => launch::unary(dev, Kernel::Recip, x, y, n),
            UnaryOp::Step => launch::unary(dev, Kernel::Step, x, y, n),
            UnaryOp::Affine { mul, add } => launch::affine(dev, x, y, n, mul, add),
            UnaryOp::Powf(p) => launch::powf(dev, x, y, n, p),
        }?;
        Ok(out)
    }

    fn binary(
        &self,
        rhs: &Self,
        op: BinaryOp,
        lhs_shape: &Shape,
        rhs_shape: &Shape,
        out_shape: &Shape,
    ) -> Result<Self> {
        rhs.check_device(&self.dev, "binary")?;
        self.check_len(lhs_shape.elem_count(), "binary lhs")?;
        rhs.check_len(rhs_shape.elem_count(), "binary rhs")?;
        let n = out_shape.elem_count();
        let out = self.dev.output(n)?;
        if n == 0 {
            return Ok(out);
        }
        let (same, bcast) = Self::same_op_kernel(op);
        let dev = self.inner();
        if lhs_shape.elem_count() == n && rhs_shape.elem_count() == n {
            launch::binary_same(dev, same, self.region(), rhs.region(), out.region(), n)?;
            return Ok(out);
        }
        let plan = plan::BroadcastPlan::new(
            out_shape.dims(),
            &lhs_shape.broadcast_strides(out_shape),
            &rhs_shape.broadcast_strides(out_shape),
        );
        let (d, sa, sb) = plan.inner4();
        for (oa, ob, oo) in plan.launches() {
            launch::binary_bcast(
                dev,
                bcast,
                self.region().offset(oa)?,
                rhs.region().offset(ob)?,
                out.region().offset(oo)?,
                d,
                sa,
                sb,
            )?;
        }
        Ok(out)
    }

    fn where_cond(&self, on_true: &Self, on_false: &Self) -> Result<Self> {
        on_true.check_device(&self.dev, "where_cond")?;
        on_false.check_device(&self.dev, "where_cond")?;
        let n = self.len;
        on_true.check_len(n, "where_cond on_true")?;
        on_false.check_len(n, "where_cond on_false")?;
        let out = self.dev.output(n)?;
        launch::where_cond(
            self.inner(),
            self.region(),
            on_true.region(),
            on_false.region(),
            out.region(),
            n,
        )?;
        Ok(out)
    }

    fn reduce(&self, op: ReduceOp, outer: usize, len: usize, inner: usize) -> Result<Self> {
        self.check_len(mul(mul(outer, len)?, inner)?, "reduce input")?;
        let n_out = mul(outer, inner)?;
        let out = self.dev.output(n_out)?;
        if n_out == 0 {
            return Ok(out);
        }
        let (warp, block, cols) = match op {
            ReduceOp::Sum => (
                Kernel::SumAxisWarp,
                Kernel::SumAxisBlock,
                Kernel::SumAxisCols,
            ),
            ReduceOp::Max => (
                Kernel::MaxAxisWarp,
                Kernel::MaxAxisBlock,
                Kernel::MaxAxisCols,
            ),
        };
        let (dev, x, y) = (self.inner(), self.region(), out.region());
        match plan::reduce_plan(outer, len, inner) {
            ReducePlan::Warp { blocks } => {
                launch::reduce_warp(dev, warp, x, y, outer, len, blocks)?
            }
            ReducePlan::Block { blocks } => {
                launch::reduce_block(dev, block, x, y, outer, len, inner, blocks)?
            }
            ReducePlan::Cols {
                tiles,
                outer_blocks,
                z: 1,
            } => launch::reduce_cols(dev, cols, x, y, outer, len, inner, (tiles, outer_blocks, 1))?,
            ReducePlan::Cols {
                tiles,
                outer_blocks,
                z,
            } => {
                // Stage 1: z slabs of partial results over chunks of the axis; stage 2 reduces
                // the slabs, viewed as (1, z, outer·inner).
                let partial = self.dev.output(mul(z as usize, n_out)?)?;
                launch::reduce_cols(
                    dev,
                    cols,
                    x,
                    partial.region(),
                    outer,
                    len,
                    inner,
                    (tiles, outer_blocks, z),
                )?;
                let tiles2 = launch::to_u32(n_out.div_ceil(32), "column tiles", cols)?;
                launch::reduce_cols(
                    dev,
                    cols,
                    partial.region(),
                    y,
                    1,
                    z as usize,
                    n_out,
                    (tiles2, 1, 1),
                )?;
            }
        }
        Ok(out)
    }

    fn matmul(
        &self,
        rhs: &Self,
        m: usize,
        k: usize,
        n: usize,
        lhs_t: bool,
        rhs_t: bool,
    ) -> Result<Self> {
        rhs.check_device(&self.dev, "matmul")?;
        self.check_len(mul(m, k)?, "matmul lhs")?;
        rhs.check_len(mul(k, n)?, "matmul rhs")?;
        let out = self.dev.output(mul(m, n)?)?;
        if m == 0 || n == 0 {
            return Ok(out);
        }
        // A stored transposed is k × m (leading dimension m); B stored transposed is n × k.
        let a = Operand {
            r: self.region(),
            trans: lhs_t,
            ld: if lhs_t { m } else { k },
        };
        let b = Operand {
            r: rhs.region(),
            trans: rhs_t,
            ld: if rhs_t { k } else { n },
        };
        self.inner().gemm(&self.dev, a, b, out.region(), m, n, k)?;
        Ok(out)
    }

    fn index_select_rows(&self, cols: usize, idx: &CudaIndex) -> Result<Self> {
        let rows = self.len.checked_div(cols).unwrap_or(0);
        let err = |position: usize, value: u32| Error::IndexOutOfRange {
            op: "index_select",
            position,
            index: value as usize,
            size: rows,
        };
        let flag = self.index_guard(idx, rows, idx.len, err)?;
        let out = self.dev.output(mul(idx.len, cols)?)?;
        let bad = flag.as_ref().map_or(Region::NULL, CudaIndex::region);
        launch::index_rows(
            self.inner(),
            Kernel::IndexSelectRows,
            self.region(),
            idx.region(),
            out.region(),
            idx.len,
            cols,
            rows,
            bad,
        )?;
        self.index_verdict(flag, idx, err)?;
        Ok(out)
    }

    fn index_add_rows(&self, cols: usize, idx: &CudaIndex, out_rows: usize) -> Result<Self> {
        self.check_len(mul(idx.len, cols)?, "index_add source")?;
        let err = |position: usize, value: u32| Error::IndexOutOfRange {
            op: "index_add",
            position,
            index: value as usize,
            size: out_rows,
        };
        let flag = self.index_guard(idx, out_rows, idx.len, err)?;
        let out = self.dev.zeros(mul(out_rows, cols)?)?;
        let bad = flag.as_ref().map_or(Region::NULL, CudaIndex::region);
        launch::index_rows(
            self.inner(),
            Kernel::IndexAddRows,
            self.region(),
            idx.region(),
            out.region(),
            idx.len,
            cols,
            out_rows,
            bad,
        )?;
        self.index_verdict(flag, idx, err)?;
        Ok(out)
    }

    fn gather_cols(&self, rows: usize, cols: usize, idx: &CudaIndex) -> Result<Self> {
        self.check_len(mul(rows, cols)?, "gather source")?;
        let err = |position: usize, value: u32| Error::IndexOutOfRange {
            op: "gather",
            position,
            index: value as usize,
            size: cols,
        };
        let flag = self.index_guard(idx, cols, rows, err)?;
        let out = self.dev.output(rows)?;
        let bad = flag.as_ref().map_or(Region::NULL, CudaIndex::region);
        launch::cols_by_label(
            self.inner(),
            Kernel::GatherCols,
            self.region(),
            idx.region(),
            out.region(),
            rows,
            cols,
            bad,
        )?;
        self.index_verdict(flag, idx, err)?;
        Ok(out)
    }

    fn scatter_cols(&self, rows: usize, cols: usize, idx: &CudaIndex) -> Result<Self> {
        self.check_len(rows, "scatter source")?;
        let err = |position: usize, value: u32| Error::IndexOutOfRange {
            op: "scatter",
            position,
            index: value as usize,
            size: cols,
        };
        let flag = self.index_guard(idx, cols, rows, err)?;
        let out = self.dev.output(mul(rows, cols)?)?;
        let bad = flag.as_ref().map_or(Region::NULL, CudaIndex::region);
        launch::cols_by_label(
            self.inner(),
            Kernel::ScatterCols,
            self.region(),
            idx.region(),
            out.region(),
            rows,
            cols,
            bad,
        )?;
        self.index_verdict(flag, idx, err)?;
        Ok(out)
    }

    fn copy2d(
        &self,
        dst: &mut Self,
        rows: usize,
        cols: usize,
        src_stride: usize,
        dst_stride: usize,
        src_offset: usize,
        dst_offset: usize,
    ) -> Result<()> {
        dst.check_device(&self.dev, "copy2d")?;
        launch::copy2d(
            self.inner(),
            self.region(),
            dst.region(),
            rows,
            cols,
            src_stride,
            dst_stride,
            src_offset,
            dst_offset,
        )
    }

    fn transpose2d(&self, rows: usize, cols: usize) -> Result<Self> {
        let out = self.dev.output(mul(rows, cols)?)?;
        launch::transpose2d(self.inner(), self.region(), out.region(), rows, cols)?;
        Ok(out)
    }

    fn softmax_rows(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let out = self.dev.output(mul(rows, cols)?)?;
        let kernel = match (plan::row_variant(cols), log) {
            (RowVariant::SmallC, false) => Kernel::SoftmaxSmallC,
            (RowVariant::SmallC, true) => Kernel::LogSoftmaxSmallC,
            (RowVariant::WarpRow, false) => Kernel::SoftmaxWarpRow,
            (RowVariant::WarpRow, true) => Kernel::LogSoftmaxWarpRow,
            (RowVariant::BlockRow, false) => Kernel::SoftmaxBlockRow,
            (RowVariant::BlockRow, true) => Kernel::LogSoftmaxBlockRow,
        };
        let blocks = plan::softmax_blocks(rows, cols);
        launch::softmax(
            self.inner(),
            kernel,
            self.region(),
            out.region(),
            rows,
            cols,
            blocks,
        )?;
        Ok(out)
    }

    fn argmax_rows(&self, rows: usize, cols: usize) -> Result<CudaIndex> {
        self.check_len(mul(rows, cols)?, "argmax input")?;
        let (buf, addr) = self.inner().obtain::<u32>(rows, true)?;
        // Every result is a column index; a row without columns gets u32::MAX.
        let largest = match cols {
            0 => u32::MAX,
            c => u32::try_from(c - 1).unwrap_or(u32::MAX),
        };
        let out = CudaIndex {
            buf: Some(buf),
            addr,
            len: rows,
            bound: IndexBound::AtMost(largest),
            dev: self.dev.clone(),
        };
        launch::argmax(self.inner(), self.region(), out.region(), rows, cols)?;
        Ok(out)
    }

    fn xent(&self, args: XentArgs<'_, Self, CudaIndex>) -> Result<(Self, Option<Self>)> {
        let XentArgs {
            shift,
            labels,
            weights,
            rows,
            cols,
            grad_scale,
            write_grad,
        } = args;
        let n = mul(rows, cols)?;
        self.check_len(n, "cross-entropy logits")?;
        if let Some(s) = shift {
            s.check_device(&self.dev, "shifted_cross_entropy")?;
            s.check_len(n, "cross-entropy shift")?;
        }
        if let Some(w) = weights {
            w.check_device(&self.dev, "shifted_cross_entropy")?;
            w.check_len(rows, "cross-entropy weights")?;
        }
        let err = |row: usize, label: u32| Error::LabelOutOfRange {
            op: "shifted_cross_entropy",
            row,
            label,
            classes: cols,
        };
        let flag = self.index_guard(labels, cols, rows, err)?;
        let loss = self.dev.output(rows)?;
        let grad = if write_grad {
            Some(self.dev.output(n)?)
        } else {
            None
        };
        let z = self.region();
        let s = shift.map_or(Region::NULL, CudaStorage::region);
        let dz = grad.as_ref().map_or(Region::NULL, CudaStorage::region);
        // Whole device buffers are 256-byte aligned; checked anyway, as the float4 kernels
        // need it.
        let aligned = [z, s, dz].iter().all(|r| r.addr.is_multiple_of(16));
        let previous = self.inner().xent_previous.load(Ordering::Relaxed);
        let plan = plan::xent_plan(rows, cols, aligned, previous);
        let kernel = match plan.variant {
            XentVariant::GroupVec => Kernel::XentGroupVec,
            XentVariant::WarpVec => Kernel::XentWarpVec,
            XentVariant::WarpVec8 => Kernel::XentWarpVec8,
            XentVariant::BlockVec => Kernel::XentBlockVec,
            XentVariant::BlockScalar => Kernel::XentBlockScalar,
            XentVariant::SmallC => Kernel::XentSmallC,
            XentVariant::WarpRow => Kernel::XentWarpRow,
            XentVariant::BlockRow => Kernel::XentBlockRow,
        };
        launch::xent(
            self.inner(),
            &XentLaunch {
                kernel,
                z,
                s,
                y: labels.region(),
                w: weights.map_or(Region::NULL, CudaStorage::region),
                loss: loss.region(),
                dz,
                rows,
                cols,
                grad_scale,
                write_grad,
                bad: flag.as_ref().map_or(Region::NULL, CudaIndex::region),
                blocks: plan.blocks,
                block: plan.block,
                smem_bytes: plan.smem_bytes,
            },
        )?;
        self.index_verdict(flag, labels, err)?;
        Ok((loss, grad))
    }

    fn sum_all(&self) -> Result<Self> {
        let n = self.len;
        let out = self.dev.output(1)?;
        if n <= plan::SUM_ONE_BLOCK_MAX {
            launch::sum_one_block(self.inner(), self.region(), n, out.region(), 1.0)?;
        } else {
            // A fixed number of partial sums, so the association is the same on every GPU.
            let partials = self.dev.output(plan::SUM_PARTIALS)?;
            launch::sum_partials(
                self.inner(),
                self.region(),
                n,
                partials.region(),
                plan::SUM_PARTIALS as u32,
            )?;
            launch::sum_one_block(
                self.inner(),
                partials.region(),
                plan::SUM_PARTIALS,
                out.region(),
                1.0,
            )?;
        }
        Ok(out)
    }

    fn sgd_update(
        &mut self,
        grad: &Self,
        momentum_buf: Option<&mut Self>,
        h: SgdStep,
    ) -> Result<()> {
        grad.check_device(&self.dev, "sgd_update")?;
        let n = self.len;
        grad.check_len(n, "sgd gradient")?;
        // Without a buffer the update has no momentum, as on the CPU.
        let (buf, momentum) = match momentum_buf {
            Some(b) => {
                b.check_device(&self.dev, "sgd_update")?;
                b.check_len(n, "sgd momentum buffer")?;
                (b.region(), h.momentum)
            }
            None => (Region::NULL, 0.0),
        };
        launch::sgd(
            self.inner(),
            self.region(),
            grad.region(),
            buf,
            n,
            h.lr,
            momentum,
            h.dampening,
            h.weight_decay,
            h.nesterov,
            h.first_step,
        )
    }

    fn adam_update(&mut self, grad: &Self, m: &mut Self, v: &mut Self, h: AdamStep) -> Result<()> {
        let n = self.len;
        for (t, what) in [(grad, "adam gradient"), (&*m, "adam m"), (&*v, "adam v")] {
            t.check_device(&self.dev, "adam_update")?;
            t.check_len(n, what)?;
        }
        launch::adam(
            self.inner(),
            self.region(),
            grad.region(),
            m.region(),
            v.region(),
            n,
            &h,
        )
    }
}

#[cfg(test)]
mod tests {
    //! The device layer on the host emulator: pool, poisoning, index bounds, faults.
    use super::*;

    fn emu() -> CudaDevice {
        CudaDevice::emulated().expect("the emulator needs no driver")
    }

    #[test]
    fn buffers_return_to_the_pool_and_are_reused_by_length() {
        let dev = emu();
        // A length no other test uses (tests share the emulator and run concurrently).
        let len = 12_345;
        let a = dev.zeros(len).unwrap();
        let addr = a.addr;
        drop(a);
        assert!(dev.pooled_bytes() >= 4 * len);
        let b = dev.full(len, 2.0).unwrap();
        assert_eq!(
            b.addr, addr,
            "the pooled buffer of that length is handed out again"
        );
        assert_eq!(b.to_host().unwrap(), vec![2.0; len]);
        let c = dev.zeros(len).unwrap();
        assert_ne!(c.addr, addr, "a buffer in use is not handed out twice");
        drop((b, c));
        let before = dev.allocations();
        dev.release_pool();
        let d = dev.zeros(len).unwrap();
        assert!(
            dev.allocations() > before,
            "after a release the device allocates again"
        );
        drop(d);
    }

    #[test]
    fn poisoned_outputs_start_as_nan_and_zeros_stay_zero() {
        let dev = emu();
        dev.set_poison_outputs(true);
        let out = dev.output(7).unwrap();
        assert!(out.to_host().unwrap().iter().all(|v| v.is_nan()));
        drop(out);
        // The same buffer comes back zeroed when asked for zeros.
        assert_eq!(dev.zeros(7).unwrap().to_host().unwrap(), vec![0.0; 7]);
    }

    #[test]
    fn host_indices_record_their_largest_value() {
        let dev = emu();
        let idx = dev.index_from_host(&[3, 9, 2, 9]).unwrap();
        assert_eq!(
            idx.bound,
            IndexBound::Max {
                value: 9,
                position: 1
            }
        );
        assert!(matches!(idx.check(10, 4), IndexCheck::InRange));
        assert!(matches!(
            idx.check(9, 4),
            IndexCheck::OutOfRange {
                position: 1,
                value: 9
            }
        ));
        // The largest value lies beyond the entries an op reads: only the device can tell.
        assert!(matches!(idx.check(9, 1), IndexCheck::OnDevice));
        let empty = dev.index_from_host(&[]).unwrap();
        assert!(matches!(empty.check(0, 0), IndexCheck::InRange));
        assert_eq!(empty.to_host().unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn out_of_bounds_accesses_are_device_faults_not_memory_errors() {
        let dev = emu();
        let x = dev.full(4, 1.0).unwrap();
        let y = dev.output(4).unwrap();
        // Claim a longer region than the buffer: the emulator catches the access.
        let long = Region {
            addr: x.region().addr,
            len: 8,
        };
        let yr = Region {
            addr: y.region().addr,
            len: 8,
        };
        let err = launch::unary(&dev.inner, Kernel::Neg, long, yr, 8).unwrap_err();
        assert!(err.to_string().contains("emulated device fault"), "{err}");
        // A region shorter than the launch needs is refused before launching.
        let err = launch::unary(&dev.inner, Kernel::Neg, x.region(), y.region(), 5).unwrap_err();
        assert!(err.to_string().contains("holds 4 elements"), "{err}");
    }

    #[test]
    fn misaligned_rows_take_the_scalar_cross_entropy_kernels() {
        let dev = emu();
        let (rows, cols) = (3, 8);
        let data: Vec<f32> = (0..rows * cols + 1).map(|i| (i % 7) as f32 * 0.5).collect();
        let z = dev.storage_from_host(&data).unwrap();
        let y = dev.index_from_host(&[1, 7, 0]).unwrap();
        let shifted = z.region().offset(1).unwrap();
        let run = |kernel: Kernel, z: Region, block: u32| -> Result<Vec<f32>> {
            let loss = dev.output(rows)?;
            launch::xent(
                &dev.inner,
                &XentLaunch {
                    kernel,
                    z,
                    s: Region::NULL,
                    y: y.region(),
                    w: Region::NULL,
                    loss: loss.region(),
                    dz: Region::NULL,
                    rows,
                    cols,
                    grad_scale: 1.0,
                    write_grad: false,
                    bad: Region::NULL,
                    blocks: 1,
                    block,
                    smem_bytes: 0,
                },
            )?;
            loss.to_host()
        };
        // Rows 4 bytes past a 16-byte boundary: the float4 kernels refuse them…
        for kernel in [Kernel::XentGroupVec, Kernel::XentBlockVec] {
            let err = run(kernel, shifted, 256).unwrap_err();
            assert!(err.to_string().contains("16-byte aligned"), "{err}");
        }
        // …the plan sends them to the scalar kernels, which agree with the float4 kernel on
        // an aligned copy.
        let plan = plan::xent_plan(rows, cols, false, false);
        assert_eq!(plan.variant, XentVariant::SmallC);
        let aligned = dev.storage_from_host(&data[1..]).unwrap();
        let scalar = run(Kernel::XentSmallC, shifted, 256).unwrap();
        let vector = run(Kernel::XentGroupVec, aligned.region(), 256).unwrap();
        for (a, b) in scalar.iter().zip(&vector) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{scalar:?} vs {vector:?}"
            );
        }
    }

    #[test]
    fn storages_of_different_devices_do_not_mix() {
        let dev = emu();
        let a = dev.zeros(3).unwrap();
        assert!(a.check_device(&dev, "test").is_ok());
        assert!(CudaDevice::new(usize::MAX).is_err());
        // Without a driver (this machine, usually) opening a GPU is an error, not a panic.
        if let Err(e) = CudaDevice::new(0) {
            assert!(matches!(e, Error::Device(_) | Error::Cuda(_)), "{e}");
        }
    }
}
