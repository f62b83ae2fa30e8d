//! The device layer: contexts, the kernel modules, device memory and its pool.
//!
//! [`CudaDevice::new`] opens the primary context of a GPU once per process and returns a
//! cheap handle to it (later calls for the same ordinal share it); [`CudaDevice::emulated`]
//! is the host emulator (`emulator/`) behind the same interface. Every kernel and fill goes
//! to the device's one stream (the legacy default stream) in program order, and host copies
//! are synchronous on it, so no events are needed to order two uses of a buffer. The PTX
//! modules are JIT-compiled by the driver the first time one of their kernels runs, and each
//! function handle is cached.
//!
//! Output buffers come from a per-device pool keyed by length ([`Pool`]): a dropped storage
//! or index hands its buffer back instead of freeing it, and the next request for the same
//! length takes it (every buffer holds 4-byte words, f32 or u32 alike). A training step
//! allocates the same lengths every time, so from the second step on it makes no device
//! allocation ([`CudaDevice::allocations`] counts the real ones). Reuse is safe without
//! events because of the one stream: any kernel that used a buffer before it was returned is
//! queued before any kernel that uses it after it is taken again. The pool keeps at most
//! [`POOL_MAX_BYTES`]; a failed allocation empties it and retries.
//!
//! This module holds the driver's memory calls (allocation, copies, memset), each `unsafe`
//! with its `// SAFETY:` argument; kernel launches are in `launch.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    result as cu, sys, CudaContext, CudaFunction, CudaModule, CudaStream, DriverError,
};

use super::emulator::{self, HostBuf};
use super::index::{CudaIndex, IndexBound};
use super::kernels::{Kernel, PtxModule, MODULE_COUNT};
use super::launch::{self, Region};
use super::storage::CudaStorage;
use crate::error::{Error, Result};

/// A real GPU's context, stream and loaded kernels.
pub(super) struct Gpu {
    ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    modules: Mutex<[Option<Arc<CudaModule>>; MODULE_COUNT]>,
    functions: Vec<OnceLock<CudaFunction>>,
}

/// One device: a GPU (or, without `gpu`, the host emulator), its buffer pool and counters.
pub(super) struct DeviceInner {
    ordinal: usize,
    name: String,
    pub(super) gpu: Option<Gpu>,
    pool: Mutex<Pool>,
    allocations: AtomicU64,
    /// Bytes copied from the host so far.
    uploaded: AtomicU64,
    poison: AtomicBool,
    /// Launches per kernel ([`Kernel::index`]), for tests that check which variants ran.
    launches: Vec<AtomicU64>,
    /// Fused cross-entropy on the scalar fallback kernels only (benchmarks).
    pub(super) xent_fallback: AtomicBool,
}

/// A handle on one CUDA device (cheap to clone; all handles of an ordinal share the device's
/// context, kernels and buffer pool).
#[derive(Clone)]
pub struct CudaDevice {
    pub(super) inner: Arc<DeviceInner>,
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

pub(super) fn driver_err(what: impl std::fmt::Display, e: DriverError) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

pub(super) fn internal(what: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("internal: {what}"))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// The element types of device buffers: 4 bytes, every bit pattern a value (f32 data, u32
/// indices), so host copies move them as plain bytes.
pub(super) trait Word: Copy + Default {}
impl Word for f32 {}
impl Word for u32 {}

/// Device memory of 4-byte words: a CUDA buffer, or host memory standing in for one on the
/// emulator.
pub(super) enum DevBuf {
    Cuda(CudaAlloc),
    Host(HostBuf),
}

impl DevBuf {
    fn addr(&self) -> u64 {
        match self {
            DevBuf::Cuda(a) => a.addr,
            DevBuf::Host(h) => h.addr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            DevBuf::Cuda(a) => a.len,
            DevBuf::Host(h) => h.len(),
        }
    }
}

impl DeviceInner {
    fn open(ordinal: usize) -> Result<DeviceInner> {
        let (ctx, stream) = open_context(ordinal)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let gpu = Gpu {
            ctx,
            stream,
            modules: Mutex::new(Default::default()),
            functions: (0..Kernel::COUNT).map(|_| OnceLock::new()).collect(),
        };
        Ok(DeviceInner::with(ordinal, name, Some(gpu)))
    }

    fn with(ordinal: usize, name: String, gpu: Option<Gpu>) -> DeviceInner {
        DeviceInner {
            ordinal,
            name,
            gpu,
            pool: Mutex::new(Pool::default()),
            allocations: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            poison: AtomicBool::new(false),
            launches: (0..Kernel::COUNT).map(|_| AtomicU64::new(0)).collect(),
            xent_fallback: AtomicBool::new(false),
        }
    }

    pub(super) fn count_launch(&self, k: Kernel) {
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
        let ptx = cudarc::nvrtc::Ptx::from_src(m.ptx());
        let loaded = gpu.ctx.load_module(ptx).map_err(|e| {
            let what = format!("loading kernels/ptx/{}.ptx on {}", m.name(), self.name);
            driver_err(what, e)
        })?;
        modules[m.index()] = Some(loaded.clone());
        Ok(loaded)
    }

    /// The kernel's function handle on a GPU, cached after the first lookup.
    pub(super) fn function<'g>(&self, gpu: &'g Gpu, k: Kernel) -> Result<&'g CudaFunction> {
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
            let set = |attribute, value, what| {
                f.set_attribute(attribute, value).map_err(|e| {
                    let on = format!("setting {what} of {} on {}", k.name(), self.name);
                    driver_err(on, e)
                })
            };
            // Dynamic shared memory beyond 48 KiB must be opted into per function; and these
            // kernels stream their data, so they prefer the whole carveout as shared memory
            // (two 96 KiB blocks per SM), not L1.
            let limit = A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            set(limit, smem as i32, "the dynamic shared memory limit")?;
            let carveout = A::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT;
            set(carveout, 100, "the shared memory carveout")?;
        }
        // Another thread may have cached the same handle first; either is fine.
        let _ = slot.set(f);
        slot.get()
            .ok_or_else(|| internal(format!("kernel {} was not cached", k.name())))
    }

    /// A device buffer of `len` elements (at least one), from the pool or freshly allocated.
    /// With `uninit` and poisoning on, its bytes are set to 0xFF (NaN / u32::MAX) first.
    fn obtain(&self, len: usize, uninit: bool) -> Result<(DevBuf, u64)> {
        let cap = len.max(1);
        let buf = match self.pool.lock().ok().and_then(|mut p| p.take(cap)) {
            Some(b) => b,
            None => self.fresh(cap)?,
        };
        let addr = buf.addr();
        if uninit && self.poison.load(Ordering::Relaxed) {
            memset(self, Region { addr, len: cap }, 0xFF)?;
        }
        Ok((buf, addr))
    }

    fn fresh(&self, cap: usize) -> Result<DevBuf> {
        let Some(gpu) = &self.gpu else {
            self.allocations.fetch_add(1, Ordering::Relaxed);
            return Ok(DevBuf::Host(HostBuf::new(cap)));
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
        Ok(DevBuf::Cuda(buf))
    }

    pub(super) fn recycle(&self, buf: DevBuf) {
        let rejected = match self.pool.lock() {
            Ok(mut p) => p.give(buf),
            Err(_) => Some(buf),
        };
        // A buffer the pool did not keep is freed here, outside the lock.
        drop(rejected);
    }

    fn release_pool(&self) {
        let freed = self.pool.lock().map(|mut p| p.drain()).unwrap_or_default();
        drop(freed);
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

    /// A buffer holding a copy of host data.
    fn upload<T: Word>(&self, data: &[T]) -> Result<(DevBuf, u64)> {
        let (buf, addr) = self.obtain(data.len(), false)?;
        self.uploaded
            .fetch_add(4 * data.len() as u64, Ordering::Relaxed);
        match (&buf, &self.gpu) {
            (_, _) if data.is_empty() => {}
            (DevBuf::Cuda(_), Some(gpu)) => {
                bind(&gpu.ctx)?;
                // SAFETY: the buffer holds at least `data.len()` elements of 4 bytes (`Word`);
                // the copy is synchronous (legacy default stream), ordered after queued
                // kernels, and `data` outlives it.
                unsafe { cu::memcpy_htod_sync(addr, data) }
                    .map_err(|e| driver_err("copying host data to the device", e))?
            }
            (DevBuf::Host(_), _) => emulator::write(addr, data)?,
            (DevBuf::Cuda(_), None) => return Err(internal("a CUDA buffer on the emulator")),
        }
        Ok((buf, addr))
    }

    /// Reads elements `start..start + len` of `buf` back to the host, after every queued
    /// kernel (so a fault of any of them is reported here).
    pub(super) fn download<T: Word>(
        &self,
        buf: Option<&DevBuf>,
        start: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let buf = buf.ok_or_else(|| internal("storage without a buffer"))?;
        if start + len > buf.len() {
            let what = format!("reading {start}..{} of {}", start + len, buf.len());
            return Err(internal(what));
        }
        let addr = buf.addr() + 4 * start as u64;
        match (buf, &self.gpu) {
            (DevBuf::Cuda(_), Some(gpu)) => {
                let mut out = vec![T::default(); len];
                bind(&gpu.ctx)?;
                // SAFETY: the range lies inside the buffer (checked above) and `out` has room
                // for it; the copy is synchronous and ordered after every queued kernel on
                // the legacy stream.
                unsafe { cu::memcpy_dtoh_sync(&mut out[..], addr) }
                    .map_err(|e| driver_err("copying device data to the host", e))?;
                // Surfaces a fault of any kernel queued before the copy.
                self.synchronize()?;
                Ok(out)
            }
            (DevBuf::Host(_), _) => emulator::read(addr, len),
            (DevBuf::Cuda(_), None) => Err(internal("a CUDA buffer on the emulator")),
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
        let name = "host emulator of the CUDA kernels";
        Self::registered(EMULATOR_ORDINAL, || {
            Ok(DeviceInner::with(EMULATOR_ORDINAL, name.into(), None))
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

    /// Bytes copied from the host so far. A training step uploads its batch's indices and
    /// a few scalars, never features: each feature matrix is uploaded once per run.
    pub fn uploaded_bytes(&self) -> u64 {
        self.inner.uploaded.load(Ordering::Relaxed)
    }

    /// Bytes held by the pool in free buffers.
    pub fn pooled_bytes(&self) -> usize {
        self.inner.pool.lock().map_or(0, |p| p.cached_bytes)
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

    /// For benchmarks: when on, the fused cross-entropy runs on its scalar fallback kernels
    /// only (`xent_small_c_f32`, `xent_warp_row_f32`, and the two-pass `xent_block_row_f32`;
    /// the selection table is in `xent.rs`), to time them beside the single-pass kernels.
    #[doc(hidden)]
    pub fn set_xent_fallback_kernels(&self, on: bool) {
        self.inner.xent_fallback.store(on, Ordering::Relaxed);
    }

    fn storage(&self, len: usize, (buf, addr): (DevBuf, u64)) -> CudaStorage {
        let dev = self.clone();
        let buf = Some(buf);
        CudaStorage {
            buf,
            addr,
            len,
            dev,
        }
    }

    fn index(&self, len: usize, (buf, addr): (DevBuf, u64), bound: IndexBound) -> CudaIndex {
        let (dev, buf) = (self.clone(), Some(buf));
        CudaIndex {
            buf,
            addr,
            len,
            bound,
            dev,
        }
    }

    /// An output buffer whose elements the caller's kernel writes (poisoned when asked).
    pub(super) fn output(&self, len: usize) -> Result<CudaStorage> {
        Ok(self.storage(len, self.inner.obtain(len, true)?))
    }

    /// A copy of host data on the device.
    pub fn storage_from_host(&self, data: &[f32]) -> Result<CudaStorage> {
        Ok(self.storage(data.len(), self.inner.upload(data)?))
    }

    /// `len` zeros.
    pub fn zeros(&self, len: usize) -> Result<CudaStorage> {
        let s = self.storage(len, self.inner.obtain(len, false)?);
        memset(&self.inner, s.region(), 0)?;
        Ok(s)
    }

    /// `len` copies of `value`.
    pub fn full(&self, len: usize, value: f32) -> Result<CudaStorage> {
        let s = self.storage(len, self.inner.obtain(len, false)?);
        let fill = [launch::Arg::F(value)];
        launch::elementwise(&self.inner, Kernel::Fill, &[s.region()], len, &fill)?;
        Ok(s)
    }

    /// Indices on the device; their largest value is recorded for range checks.
    pub fn index_from_host(&self, data: &[u32]) -> Result<CudaIndex> {
        let bound = IndexBound::of(data);
        Ok(self.index(data.len(), self.inner.upload(data)?, bound))
    }

    /// A u32 output buffer whose elements the caller's kernel writes (poisoned when asked).
    pub(super) fn output_u32(&self, len: usize) -> Result<CudaIndex> {
        let bound = IndexBound::AtMost(u32::MAX);
        Ok(self.index(len, self.inner.obtain(len, true)?, bound))
    }

    pub(super) fn zeros_u32(&self, len: usize) -> Result<CudaIndex> {
        let idx = self.index(len, self.inner.obtain(len, false)?, IndexBound::AtMost(0));
        memset(&self.inner, idx.region(), 0)?;
        Ok(idx)
    }

    /// Copies `src` into `dst` (same length) on the device: the device-to-device copy whose
    /// bandwidth the benchmarks use as the memory roofline.
    pub fn copy(&self, src: &CudaStorage, dst: &mut CudaStorage) -> Result<()> {
        src.check_device(self, "copy")?;
        dst.check_device(self, "copy")?;
        copy_dtod(&self.inner, src.region(), dst.region())
    }
}

// ------------------------------------------------------------- driver memory calls

/// Opens the primary context of `ordinal` after checking, without panicking, that a driver
/// and that device exist; the backend launches on its legacy default stream.
fn open_context(ordinal: usize) -> Result<(Arc<CudaContext>, Arc<CudaStream>)> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library by its usual names
    // (cudarc would panic on the first driver call if it were missing).
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Device(
            "no CUDA driver (libcuda.so) found: install the NVIDIA driver or run on the CPU \
             (--device cpu)"
                .into(),
        ));
    }
    let count = CudaContext::device_count()
        .map_err(|e| driver_err("initializing the CUDA driver (cuInit)", e))?;
    if count <= 0 {
        return Err(Error::Device("the CUDA driver reports no GPU".into()));
    }
    if ordinal >= count as usize {
        return Err(Error::Device(format!(
            "CUDA device {ordinal} requested, but the driver reports {count} device(s)"
        )));
    }
    let ctx = CudaContext::new(ordinal)
        .map_err(|e| driver_err(format!("creating a context on CUDA device {ordinal}"), e))?;
    let stream = ctx.default_stream();
    Ok((ctx, stream))
}

/// A device allocation of `len` 4-byte elements (contents undefined), freed when dropped.
///
/// Plain `cuMemAlloc`/`cuMemFree` rather than the stream-ordered allocator: allocations are
/// rare (the pool serves steady state), and plain allocation works on every driver setup.
pub(super) struct CudaAlloc {
    addr: u64,
    len: usize,
    ctx: Arc<CudaContext>,
}

impl CudaAlloc {
    fn new(ctx: &Arc<CudaContext>, len: usize) -> std::result::Result<CudaAlloc, DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: allocates `4 · len` bytes in the current (this device's) context; the
        // memory is uninitialized, and every user fills it or has a kernel write every
        // element it later exposes.
        let addr = unsafe { cu::malloc_sync(4 * len.max(1)) }?;
        let ctx = ctx.clone();
        Ok(CudaAlloc { addr, len, ctx })
    }
}

impl Drop for CudaAlloc {
    fn drop(&mut self) {
        // Queued kernels may still use the memory: wait for them before freeing. (Buffers
        // are freed only when the pool is full or released, never in a training step.)
        if self.ctx.bind_to_thread().is_ok() && self.ctx.synchronize().is_ok() {
            // SAFETY: `addr` came from `cuMemAlloc` in this context, is freed once, here, and
            // no queued work uses it any more (synchronized above).
            let _ = unsafe { cu::free_sync(self.addr) };
        }
    }
}

fn bind(ctx: &CudaContext) -> Result<()> {
    ctx.bind_to_thread()
        .map_err(|e| driver_err("binding the CUDA context", e))
}

/// Sets the bytes of `r` to `byte`.
fn memset(dev: &DeviceInner, r: Region, byte: u8) -> Result<()> {
    if r.len == 0 {
        return Ok(());
    }
    let Some(gpu) = &dev.gpu else {
        return emulator::memset(r.addr, r.len, byte);
    };
    bind(&gpu.ctx)?;
    // SAFETY: `r` is a live device buffer of `r.len` 4-byte elements owned by the caller;
    // the memset is ordered on the device's only stream.
    unsafe { cu::memset_d8_async(r.addr, byte, 4 * r.len, gpu.stream.cu_stream()) }
        .map_err(|e| driver_err("cuMemsetD8Async", e))
}

/// Copies `src` to `dst` (equal lengths, distinct buffers) on the device.
fn copy_dtod(dev: &DeviceInner, src: Region, dst: Region) -> Result<()> {
    if src.len != dst.len {
        let what = format!("device copy of {} elements into {}", src.len, dst.len);
        return Err(internal(what));
    }
    if src.len == 0 {
        return Ok(());
    }
    let Some(gpu) = &dev.gpu else {
        return emulator::copy(src.addr, dst.addr, src.len);
    };
    bind(&gpu.ctx)?;
    // SAFETY: both regions are live device buffers of `len` elements owned by the caller,
    // distinct (a `&` and a `&mut` storage), and the copy is ordered on the device's stream.
    unsafe { cu::memcpy_dtod_async(dst.addr, src.addr, 4 * src.len, gpu.stream.cu_stream()) }
        .map_err(|e| driver_err("cuMemcpyDtoDAsync", e))
}

// ------------------------------------------------------------------------- buffer pool

/// Most bytes the pool keeps cached (per device).
const POOL_MAX_BYTES: usize = 8 << 30;

/// Free buffers by length.
#[derive(Default)]
pub(super) struct Pool {
    free: HashMap<usize, Vec<DevBuf>>,
    cached_bytes: usize,
}

impl Pool {
    /// A cached buffer of exactly `len` elements, if one is free.
    fn take(&mut self, len: usize) -> Option<DevBuf> {
        let buf = self.free.get_mut(&len)?.pop()?;
        self.cached_bytes -= 4 * len;
        Some(buf)
    }

    /// Caches `buf`; returns it instead when the pool is full (the caller frees it outside
    /// the lock).
    fn give(&mut self, buf: DevBuf) -> Option<DevBuf> {
        let bytes = 4 * buf.len();
        if self.cached_bytes + bytes > POOL_MAX_BYTES {
            return Some(buf);
        }
        self.cached_bytes += bytes;
        self.free.entry(buf.len()).or_default().push(buf);
        None
    }

    /// Every cached buffer, emptying the pool.
    fn drain(&mut self) -> Vec<DevBuf> {
        self.cached_bytes = 0;
        self.free.drain().flat_map(|(_, v)| v).collect()
    }
}
