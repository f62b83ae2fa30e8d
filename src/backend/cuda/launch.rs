//! Every `unsafe` call of the CUDA backend, each with its `// SAFETY:` argument (the host
//! emulator's own memory handling aside).
//!
//! Kernel launches go through [`launch`], which checks the argument list against the
//! kernel's parameter table ([`Kernel::params`], itself checked against the PTX by a unit
//! test) and skips empty grids. The typed wrappers below take device [`Region`]s (address
//! and length in 4-byte elements) and check, before launching, that every region covers the
//! elements the kernel reads or writes for the given sizes; sizes that do not fit the
//! kernel's `unsigned int` parameters are errors.

use std::sync::Arc;

use cudarc::driver::{
    result as cu, CudaContext, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};

use super::kernels::{Kernel, ParamKind};
use super::DeviceInner;
use crate::error::{Error, Result};

/// A device buffer (or part of one): address and length in 4-byte elements (f32 or u32).
#[derive(Clone, Copy, Debug)]
pub(super) struct Region {
    pub addr: u64,
    pub len: usize,
}

impl Region {
    /// The null pointer of an absent optional argument.
    pub const NULL: Region = Region { addr: 0, len: 0 };

    /// The part of this region from element `elems` on.
    pub fn offset(self, elems: usize) -> Result<Region> {
        if elems > self.len {
            return Err(Error::Cuda(format!(
                "internal: offset {elems} past a buffer of {} elements",
                self.len
            )));
        }
        Ok(Region {
            addr: self.addr + 4 * elems as u64,
            len: self.len - elems,
        })
    }
}

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub(super) enum Arg {
    Ptr(u64),
    Usize(u64),
    U32(u32),
    F32(f32),
}

impl Arg {
    fn kind(&self) -> ParamKind {
        match self {
            Arg::Ptr(_) => ParamKind::Ptr,
            Arg::Usize(_) => ParamKind::Usize,
            Arg::U32(_) => ParamKind::U32,
            Arg::F32(_) => ParamKind::F32,
        }
    }
}

fn ptr(r: Region) -> Arg {
    Arg::Ptr(r.addr)
}

fn size(n: usize) -> Arg {
    Arg::Usize(n as u64)
}

/// `v` as a kernel's `unsigned int` parameter.
pub(super) fn to_u32(v: usize, what: &str, kernel: Kernel) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::Device(format!(
            "{}: {what} = {v} exceeds the kernel's 32-bit size limit",
            kernel.name()
        ))
    })
}

fn u32_arg(v: usize, what: &str, kernel: Kernel) -> Result<Arg> {
    to_u32(v, what, kernel).map(Arg::U32)
}

/// Errors unless `r` holds at least `n` elements.
fn need(r: Region, n: usize, what: &str, kernel: Kernel) -> Result<()> {
    if r.len < n {
        return Err(Error::Cuda(format!(
            "internal: {}: `{what}` holds {} elements but the launch touches {n}",
            kernel.name(),
            r.len
        )));
    }
    Ok(())
}

/// [`need`] for an optional argument: a null region is always fine.
fn need_opt(r: Region, n: usize, what: &str, kernel: Kernel) -> Result<()> {
    if r.addr == 0 {
        return Ok(());
    }
    need(r, n, what, kernel)
}

fn driver_err(what: impl std::fmt::Display, e: DriverError) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

/// Launches `kernel` on the device's stream.
///
/// # Safety
/// Every pointer argument must address device memory that covers everything the kernel
/// touches for the given sizes (or be null where the kernel allows it), and outputs must not
/// alias inputs unless kernels/README.md allows it.
unsafe fn launch(
    dev: &DeviceInner,
    kernel: Kernel,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    args: &[Arg],
) -> Result<()> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { launch_smem(dev, kernel, grid, block, 0, args) }
}

/// [`launch`] with `smem_bytes` of dynamic shared memory (at most the kernel's
/// [`Kernel::max_dynamic_smem`], whose attribute is raised when the function is loaded).
///
/// # Safety
/// As for [`launch`].
unsafe fn launch_smem(
    dev: &DeviceInner,
    kernel: Kernel,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem_bytes: u32,
    args: &[Arg],
) -> Result<()> {
    let params = kernel.params();
    if args.len() != params.len() || args.iter().zip(params).any(|(a, p)| a.kind() != *p) {
        return Err(Error::Cuda(format!(
            "internal: {}: arguments {:?} do not match the parameters {:?}",
            kernel.name(),
            args,
            params
        )));
    }
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        // A zero grid dimension is a launch error: there is no work.
        return Ok(());
    }
    if smem_bytes > kernel.max_dynamic_smem() {
        return Err(Error::Cuda(format!(
            "internal: {}: {smem_bytes} bytes of dynamic shared memory, at most {} allowed",
            kernel.name(),
            kernel.max_dynamic_smem()
        )));
    }
    dev.count_launch(kernel);
    let Some(gpu) = &dev.gpu else {
        return super::emulator::run(kernel, grid, block, smem_bytes, args);
    };
    let func = dev.function(gpu, kernel)?;
    let mut builder = gpu.stream.launch_builder(func);
    for a in args {
        match a {
            Arg::Ptr(v) | Arg::Usize(v) => builder.arg(v),
            Arg::U32(v) => builder.arg(v),
            Arg::F32(v) => builder.arg(v),
        };
    }
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: smem_bytes,
    };
    // SAFETY: the argument list matches the kernel's PTX parameters (checked above) and the
    // caller guarantees that every pointer covers what the kernel touches.
    unsafe { builder.launch(cfg) }
        .map(|_| ())
        .map_err(|e| driver_err(format!("launching {}", kernel.name()), e))
}

const B256: (u32, u32, u32) = (256, 1, 1);
const B32X8: (u32, u32, u32) = (32, 8, 1);

fn grid1(blocks: u32) -> (u32, u32, u32) {
    (blocks, 1, 1)
}

// ------------------------------------------------------------------------ device and memory

/// Opens the primary context of `ordinal` after checking, without panicking, that a driver
/// and that device exist; the backend launches on its legacy default stream.
pub(super) fn open_context(ordinal: usize) -> Result<(Arc<CudaContext>, Arc<CudaStream>)> {
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
    pub(super) fn new(
        ctx: &Arc<CudaContext>,
        len: usize,
    ) -> std::result::Result<CudaAlloc, DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: allocates `4 · len` bytes in the current (this device's) context; the
        // memory is uninitialized, and every user fills it or has a kernel write every
        // element it later exposes.
        let addr = unsafe { cu::malloc_sync(4 * len.max(1)) }?;
        Ok(CudaAlloc {
            addr,
            len,
            ctx: ctx.clone(),
        })
    }

    pub(super) fn addr(&self) -> u64 {
        self.addr
    }

    pub(super) fn len(&self) -> usize {
        self.len
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

/// Copies host words into the start of `dst`.
pub(super) fn upload<T: Copy>(ctx: &CudaContext, dst: &CudaAlloc, data: &[T]) -> Result<()> {
    if std::mem::size_of::<T>() != 4 || data.len() > dst.len {
        return Err(Error::Cuda(format!(
            "internal: uploading {} elements into {}",
            data.len(),
            dst.len
        )));
    }
    if data.is_empty() {
        return Ok(());
    }
    ctx.bind_to_thread()
        .map_err(|e| driver_err("binding the CUDA context", e))?;
    // SAFETY: `dst` holds at least `data.len()` 4-byte elements (checked above); the copy is
    // synchronous (legacy default stream), ordered after queued kernels, and `data` outlives it.
    unsafe { cu::memcpy_htod_sync(dst.addr, data) }
        .map_err(|e| driver_err("copying host data to the device", e))
}

/// Copies elements `start..start + out.len()` of `src` to the host, after queued kernels.
pub(super) fn download<T: Copy>(
    ctx: &CudaContext,
    src: &CudaAlloc,
    start: usize,
    out: &mut [T],
) -> Result<()> {
    if std::mem::size_of::<T>() != 4 || start + out.len() > src.len {
        return Err(Error::Cuda(format!(
            "internal: reading {start}..{} of {}",
            start + out.len(),
            src.len
        )));
    }
    if out.is_empty() {
        return Ok(());
    }
    ctx.bind_to_thread()
        .map_err(|e| driver_err("binding the CUDA context", e))?;
    // SAFETY: the range lies inside `src` (checked above) and `out` has room for it; the
    // copy is synchronous and ordered after every queued kernel on the legacy stream.
    unsafe { cu::memcpy_dtoh_sync(out, src.addr + 4 * start as u64) }
        .map_err(|e| driver_err("copying device data to the host", e))
}

/// Sets `bytes` bytes at `addr` to `byte`.
pub(super) fn memset(dev: &DeviceInner, r: Region, byte: u8) -> Result<()> {
    if r.len == 0 {
        return Ok(());
    }
    let Some(gpu) = &dev.gpu else {
        return super::emulator::memset(r.addr, r.len, byte);
    };
    gpu.ctx
        .bind_to_thread()
        .map_err(|e| driver_err("binding the CUDA context", e))?;
    // SAFETY: `r` is a live device buffer of `r.len` 4-byte elements owned by the caller;
    // the memset is ordered on the device's only stream.
    unsafe { cu::memset_d8_async(r.addr, byte, 4 * r.len, gpu.stream.cu_stream()) }
        .map_err(|e| driver_err("cuMemsetD8Async", e))
}

/// Copies `src` to `dst` (equal lengths, distinct buffers) on the device.
pub(super) fn copy_dtod(dev: &DeviceInner, src: Region, dst: Region) -> Result<()> {
    if src.len != dst.len {
        return Err(Error::Cuda(format!(
            "internal: device copy of {} elements into {}",
            src.len, dst.len
        )));
    }
    if src.len == 0 {
        return Ok(());
    }
    let Some(gpu) = &dev.gpu else {
        return super::emulator::copy(src.addr, dst.addr, src.len);
    };
    gpu.ctx
        .bind_to_thread()
        .map_err(|e| driver_err("binding the CUDA context", e))?;
    // SAFETY: both regions are live device buffers of `len` elements owned by the caller,
    // distinct (a `&` and a `&mut` storage), and the copy is ordered on the device's stream.
    unsafe { cu::memcpy_dtod_async(dst.addr, src.addr, 4 * src.len, gpu.stream.cu_stream()) }
        .map_err(|e| driver_err("cuMemcpyDtoDAsync", e))
}

// ------------------------------------------------------------------------ elementwise

pub(super) fn unary(dev: &DeviceInner, k: Kernel, x: Region, y: Region, n: usize) -> Result<()> {
    need(x, n, "x", k)?;
    need(y, n, "y", k)?;
    let blocks = super::plan::grid_stride_blocks(n, 256);
    if n == 0 {
        return Ok(());
    }
    // SAFETY: x and y hold n elements (checked above); y may equal x (README: in place).
    unsafe { launch(dev, k, grid1(blocks), B256, &[ptr(x), ptr(y), size(n)]) }
}

pub(super) fn affine(
    dev: &DeviceInner,
    x: Region,
    y: Region,
    n: usize,
    a: f32,
    b: f32,
) -> Result<()> {
    let k = Kernel::Affine;
    need(x, n, "x", k)?;
    need(y, n, "y", k)?;
    if n == 0 {
        return Ok(());
    }
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: x and y hold n elements (checked above).
    unsafe {
        launch(
            dev,
            k,
            grid1(blocks),
            B256,
            &[ptr(x), ptr(y), size(n), Arg::F32(a), Arg::F32(b)],
        )
    }
}

pub(super) fn powf(dev: &DeviceInner, x: Region, y: Region, n: usize, p: f32) -> Result<()> {
    let k = Kernel::Powf;
    need(x, n, "x", k)?;
    need(y, n, "y", k)?;
    if n == 0 {
        return Ok(());
    }
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: x and y hold n elements (checked above).
    unsafe {
        launch(
            dev,
            k,
            grid1(blocks),
            B256,
            &[ptr(x), ptr(y), size(n), Arg::F32(p)],
        )
    }
}

pub(super) fn fill(dev: &DeviceInner, y: Region, n: usize, value: f32) -> Result<()> {
    let k = Kernel::Fill;
    need(y, n, "y", k)?;
    if n == 0 {
        return Ok(());
    }
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: y holds n elements (checked above).
    unsafe {
        launch(
            dev,
            k,
            grid1(blocks),
            B256,
            &[ptr(y), size(n), Arg::F32(value)],
        )
    }
}

pub(super) fn binary_same(
    dev: &DeviceInner,
    k: Kernel,
    a: Region,
    b: Region,
    out: Region,
    n: usize,
) -> Result<()> {
    need(a, n, "a", k)?;
    need(b, n, "b", k)?;
    need(out, n, "out", k)?;
    if n == 0 {
        return Ok(());
    }
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: a, b and out hold n elements (checked above).
    unsafe {
        launch(
            dev,
            k,
            grid1(blocks),
            B256,
            &[ptr(a), ptr(b), ptr(out), size(n)],
        )
    }
}

/// One broadcast launch over output dims `d` (four, outermost first) with operand strides
/// `sa`, `sb`; `out` is contiguous.
#[allow(clippy::too_many_arguments)]
pub(super) fn binary_bcast(
    dev: &DeviceInner,
    k: Kernel,
    a: Region,
    b: Region,
    out: Region,
    d: [usize; 4],
    sa: [usize; 4],
    sb: [usize; 4],
) -> Result<()> {
    let n: usize = d.iter().product();
    if n == 0 {
        return Ok(());
    }
    // The kernel's u32 grid-stride index must not wrap: keep n well below 2^32.
    if n > (1usize << 31) {
        return Err(Error::Device(format!(
            "{}: a broadcast of {n} elements exceeds the kernel's limit of 2^31",
            k.name()
        )));
    }
    // The largest operand offset the kernel forms is Σ (d_i - 1) · s_i.
    let reach = |s: &[usize; 4]| -> usize {
        d.iter()
            .zip(s)
            .map(|(&di, &si)| (di - 1) * si)
            .sum::<usize>()
            + 1
    };
    need(a, reach(&sa), "a", k)?;
    need(b, reach(&sb), "b", k)?;
    need(out, n, "out", k)?;
    let mut args = vec![ptr(a), ptr(b), ptr(out), u32_arg(n, "n", k)?];
    for (v, what) in [(d[1], "d1"), (d[2], "d2"), (d[3], "d3")] {
        args.push(u32_arg(v, what, k)?);
    }
    for s in sa.iter().chain(&sb) {
        args.push(u32_arg(*s, "stride", k)?);
    }
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: every offset the kernel forms is below the operands' lengths and out holds n
    // elements (checked above); out is a fresh buffer distinct from a and b.
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

pub(super) fn where_cond(
    dev: &DeviceInner,
    m: Region,
    a: Region,
    b: Region,
    out: Region,
    n: usize,
) -> Result<()> {
    let k = Kernel::WhereCond;
    for (r, what) in [(m, "mask"), (a, "a"), (b, "b"), (out, "out")] {
        need(r, n, what, k)?;
    }
    if n == 0 {
        return Ok(());
    }
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: all four regions hold n elements (checked above).
    unsafe {
        launch(
            dev,
            k,
            grid1(blocks),
            B256,
            &[ptr(m), ptr(a), ptr(b), ptr(out), size(n)],
        )
    }
}

// ------------------------------------------------------------------------ reductions

pub(super) fn reduce_warp(
    dev: &DeviceInner,
    k: Kernel,
    x: Region,
    out: Region,
    rows: usize,
    len: usize,
    blocks: u32,
) -> Result<()> {
    need(x, rows * len, "x", k)?;
    need(out, rows, "out", k)?;
    let args = [
        ptr(x),
        ptr(out),
        u32_arg(rows, "rows", k)?,
        u32_arg(len, "len", k)?,
    ];
    // SAFETY: x holds rows × len and out rows elements (checked above).
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn reduce_block(
    dev: &DeviceInner,
    k: Kernel,
    x: Region,
    out: Region,
    outer: usize,
    len: usize,
    inner: usize,
    blocks: u32,
) -> Result<()> {
    need(x, outer * len * inner, "x", k)?;
    need(out, outer * inner, "out", k)?;
    let args = [
        ptr(x),
        ptr(out),
        u32_arg(outer, "outer", k)?,
        u32_arg(len, "len", k)?,
        u32_arg(inner, "inner", k)?,
    ];
    // SAFETY: x holds outer × len × inner and out outer × inner elements (checked above).
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

/// Column-tile reduction; with `z > 1`, `out` receives `z` slabs of `outer × inner` partials.
#[allow(clippy::too_many_arguments)]
pub(super) fn reduce_cols(
    dev: &DeviceInner,
    k: Kernel,
    x: Region,
    out: Region,
    outer: usize,
    len: usize,
    inner: usize,
    grid: (u32, u32, u32),
) -> Result<()> {
    need(x, outer * len * inner, "x", k)?;
    need(out, grid.2 as usize * outer * inner, "out", k)?;
    if (grid.0 as usize) * 32 < inner {
        return Err(Error::Cuda(format!(
            "internal: {}: grid does not cover inner",
            k.name()
        )));
    }
    let args = [
        ptr(x),
        ptr(out),
        u32_arg(outer, "outer", k)?,
        u32_arg(len, "len", k)?,
        u32_arg(inner, "inner", k)?,
    ];
    // SAFETY: x holds outer × len × inner and out z × outer × inner elements (checked
    // above); the block shape is the (32, 8) the kernel's tree assumes.
    unsafe { launch(dev, k, grid, B32X8, &args) }
}

pub(super) fn argmax(
    dev: &DeviceInner,
    x: Region,
    out: Region,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let k = Kernel::ArgmaxRows;
    need(x, rows * cols, "x", k)?;
    need(out, rows, "out", k)?;
    if rows == 0 {
        return Ok(());
    }
    let args = [
        ptr(x),
        u32_arg(rows, "rows", k)?,
        u32_arg(cols, "cols", k)?,
        ptr(out),
    ];
    let blocks = super::plan::grid_stride_blocks(rows, 8);
    // SAFETY: x holds rows × cols floats and out rows u32s (checked above).
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

pub(super) fn sum_one_block(
    dev: &DeviceInner,
    x: Region,
    n: usize,
    out: Region,
    scale: f32,
) -> Result<()> {
    let k = Kernel::SumAll;
    need(x, n, "x", k)?;
    need(out, 1, "out", k)?;
    let args = [ptr(x), u32_arg(n, "n", k)?, ptr(out), Arg::F32(scale)];
    // SAFETY: x holds n elements and out one (checked above); block 1024 as the tree assumes.
    unsafe { launch(dev, k, (1, 1, 1), (1024, 1, 1), &args) }
}

pub(super) fn sum_partials(
    dev: &DeviceInner,
    x: Region,
    n: usize,
    partials: Region,
    blocks: u32,
) -> Result<()> {
    let k = Kernel::SumPartials;
    need(x, n, "x", k)?;
    need(partials, blocks as usize, "partials", k)?;
    // SAFETY: x holds n elements and partials one per block (checked above); block 256.
    unsafe {
        launch(
            dev,
            k,
            grid1(blocks),
            B256,
            &[ptr(x), size(n), ptr(partials)],
        )
    }
}

// ------------------------------------------------------------------------ indexing

#[allow(clippy::too_many_arguments)]
pub(super) fn index_rows(
    dev: &DeviceInner,
    k: Kernel,
    src: Region,
    idx: Region,
    dst: Region,
    n_idx: usize,
    cols: usize,
    table_rows: usize,
    bad: Region,
) -> Result<()> {
    // index_select reads table rows and writes n_idx rows; index_add reads n_idx rows and
    // adds into table rows. The kernels never follow an index >= table_rows.
    let (src_len, dst_len) = match k {
        Kernel::IndexSelectRows => (table_rows * cols, n_idx * cols),
        Kernel::IndexAddRows => (n_idx * cols, table_rows * cols),
        _ => {
            return Err(Error::Cuda(format!(
                "internal: {} is not a row-index kernel",
                k.name()
            )))
        }
    };
    need(src, src_len, "src", k)?;
    need(dst, dst_len, "dst", k)?;
    need(idx, n_idx, "idx", k)?;
    need_opt(bad, 1, "bad", k)?;
    let total = n_idx * cols;
    if total == 0 {
        return Ok(());
    }
    let args = [
        ptr(src),
        ptr(idx),
        ptr(dst),
        u32_arg(n_idx, "n_idx", k)?,
        u32_arg(cols, "cols", k)?,
        u32_arg(table_rows, "rows", k)?,
        ptr(bad),
    ];
    let blocks = super::plan::grid_stride_blocks(total, 256);
    // SAFETY: the regions cover the rows read and written (checked above); indices out of
    // range are never followed (kernels/README.md).
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

/// `gather_cols` (out holds rows) or `scatter_cols` (out holds rows × cols).
#[allow(clippy::too_many_arguments)]
pub(super) fn cols_by_label(
    dev: &DeviceInner,
    k: Kernel,
    src: Region,
    labels: Region,
    out: Region,
    rows: usize,
    cols: usize,
    bad: Region,
) -> Result<()> {
    let (src_len, out_len, work) = match k {
        Kernel::GatherCols => (rows * cols, rows, rows),
        Kernel::ScatterCols => (rows, rows * cols, rows * cols),
        _ => {
            return Err(Error::Cuda(format!(
                "internal: {} is not a column-label kernel",
                k.name()
            )))
        }
    };
    need(src, src_len, "src", k)?;
    need(labels, rows, "labels", k)?;
    need(out, out_len, "out", k)?;
    need_opt(bad, 1, "bad", k)?;
    if work == 0 {
        return Ok(());
    }
    let args = [
        ptr(src),
        ptr(labels),
        ptr(out),
        u32_arg(rows, "rows", k)?,
        u32_arg(cols, "cols", k)?,
        ptr(bad),
    ];
    let blocks = super::plan::grid_stride_blocks(work, 256);
    // SAFETY: the regions cover what the kernel reads and writes (checked above); labels out
    // of range are never followed.
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn copy2d(
    dev: &DeviceInner,
    src: Region,
    dst: Region,
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst_stride: usize,
    src_off: usize,
    dst_off: usize,
) -> Result<()> {
    let k = Kernel::Copy2d;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    need(
        src,
        src_off + super::plan::extent(rows, cols, src_stride),
        "src",
        k,
    )?;
    need(
        dst,
        dst_off + super::plan::extent(rows, cols, dst_stride),
        "dst",
        k,
    )?;
    let args = [
        ptr(src),
        ptr(dst),
        u32_arg(rows, "rows", k)?,
        u32_arg(cols, "cols", k)?,
        u32_arg(src_stride, "src_stride", k)?,
        u32_arg(dst_stride, "dst_stride", k)?,
        size(src_off),
        size(dst_off),
    ];
    let blocks = super::plan::grid_stride_blocks(rows * cols, 256);
    // SAFETY: both blocks lie inside their buffers (checked above); src and dst are distinct
    // storages (a `&` and a `&mut`), so they do not overlap.
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

pub(super) fn transpose2d(
    dev: &DeviceInner,
    src: Region,
    dst: Region,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let k = Kernel::Transpose2d;
    need(src, rows * cols, "src", k)?;
    need(dst, rows * cols, "dst", k)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let grid = (
        cols.div_ceil(32).min(super::plan::MAX_GRID) as u32,
        rows.div_ceil(32).min(super::plan::MAX_GRID) as u32,
        1,
    );
    let args = [
        ptr(src),
        ptr(dst),
        u32_arg(rows, "rows", k)?,
        u32_arg(cols, "cols", k)?,
    ];
    // SAFETY: src and dst hold rows × cols elements (checked above) and are distinct; block
    // (32, 8) as the kernel's tile loop assumes.
    unsafe { launch(dev, k, grid, B32X8, &args) }
}

// ------------------------------------------------------------------------ softmax, xent

#[allow(clippy::too_many_arguments)]
pub(super) fn softmax(
    dev: &DeviceInner,
    k: Kernel,
    x: Region,
    y: Region,
    rows: usize,
    cols: usize,
    blocks: u32,
) -> Result<()> {
    need(x, rows * cols, "x", k)?;
    need(y, rows * cols, "y", k)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let args = [
        ptr(x),
        ptr(y),
        u32_arg(rows, "rows", k)?,
        u32_arg(cols, "cols", k)?,
    ];
    // SAFETY: x and y hold rows × cols elements (checked above); block 256 as the
    // block-row variant's tree assumes.
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

/// The fused shifted softmax-cross-entropy (`xent.cu`); `s`, `w`, `dz` and `bad` may be
/// [`Region::NULL`] (`dz` only when `write_grad` is false). Grid, block and dynamic shared
/// memory come from [`super::plan::xent_plan`].
pub(super) struct XentLaunch {
    pub kernel: Kernel,
    pub z: Region,
    pub s: Region,
    pub y: Region,
    pub w: Region,
    pub loss: Region,
    pub dz: Region,
    pub rows: usize,
    pub cols: usize,
    pub grad_scale: f32,
    pub write_grad: bool,
    pub bad: Region,
    pub blocks: u32,
    pub block: u32,
    pub smem_bytes: u32,
}

pub(super) fn xent(dev: &DeviceInner, a: &XentLaunch) -> Result<()> {
    let k = a.kernel;
    let vectorized = matches!(
        k,
        Kernel::XentGroupVec | Kernel::XentWarpVec | Kernel::XentWarpVec8 | Kernel::XentBlockVec
    );
    // float4 accesses: every row must start 16-byte aligned.
    if vectorized
        && (!a.cols.is_multiple_of(4)
            || [a.z, a.s, a.dz].iter().any(|r| !r.addr.is_multiple_of(16)))
    {
        return Err(Error::Cuda(format!(
            "internal: {} needs cols % 4 == 0 and 16-byte aligned buffers",
            k.name()
        )));
    }
    let n = a.rows * a.cols;
    need(a.z, n, "z", k)?;
    need_opt(a.s, n, "s", k)?;
    need(a.y, a.rows, "y", k)?;
    need_opt(a.w, a.rows, "w", k)?;
    need(a.loss, a.rows, "loss", k)?;
    if a.write_grad {
        need(a.dz, n, "dz", k)?;
    }
    need_opt(a.bad, 1, "bad", k)?;
    if a.rows == 0 {
        return Ok(());
    }
    let args = [
        ptr(a.z),
        ptr(a.s),
        ptr(a.y),
        ptr(a.w),
        ptr(a.loss),
        ptr(if a.write_grad { a.dz } else { Region::NULL }),
        u32_arg(a.rows, "rows", k)?,
        u32_arg(a.cols, "cols", k)?,
        Arg::F32(a.grad_scale),
        Arg::U32(u32::from(a.write_grad)),
        ptr(a.bad),
    ];
    // SAFETY: every region covers the rows × cols (or rows) elements the kernel touches, the
    // optional ones being null or full size (checked above), aligned for the vectorized
    // kernels; loss and dz are fresh buffers (dz = z is allowed).
    unsafe {
        launch_smem(
            dev,
            k,
            grid1(a.blocks),
            (a.block, 1, 1),
            a.smem_bytes,
            &args,
        )
    }
}

/// XRM's flip targets (`xrm_flip_targets_f32`): `logits` holds `rows × k`, `uniforms` `rows`
/// f64 values (2 words each, 8-byte aligned), `target` receives `rows` u32.
pub(super) fn xrm_flip_targets(
    dev: &DeviceInner,
    logits: Region,
    uniforms: Region,
    target: Region,
    rows: usize,
    k: usize,
) -> Result<()> {
    let kernel = Kernel::XrmFlipTargets;
    need(logits, rows * k, "logits", kernel)?;
    need(uniforms, 2 * rows, "u", kernel)?;
    need(target, rows, "target", kernel)?;
    if !uniforms.addr.is_multiple_of(8) {
        return Err(Error::Cuda(format!(
            "internal: {}: the uniforms are not 8-byte aligned",
            kernel.name()
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let args = [
        ptr(logits),
        ptr(uniforms),
        ptr(target),
        u32_arg(rows, "rows", kernel)?,
        u32_arg(k, "k", kernel)?,
    ];
    let blocks = super::plan::grid_stride_blocks(rows, 256);
    // SAFETY: logits, uniforms (as f64) and target cover the rows the kernel reads and writes
    // (checked above); target is a fresh buffer.
    unsafe { launch(dev, kernel, grid1(blocks), B256, &args) }
}

// ------------------------------------------------------------------------ optimizers

#[allow(clippy::too_many_arguments)]
pub(super) fn sgd(
    dev: &DeviceInner,
    p: Region,
    g: Region,
    buf: Region,
    n: usize,
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    nesterov: bool,
    first_step: bool,
) -> Result<()> {
    let k = Kernel::SgdStep;
    need(p, n, "param", k)?;
    need(g, n, "grad", k)?;
    if momentum != 0.0 {
        need(buf, n, "momentum_buf", k)?;
    }
    if n == 0 {
        return Ok(());
    }
    let args = [
        ptr(p),
        ptr(g),
        ptr(if momentum != 0.0 { buf } else { Region::NULL }),
        size(n),
        Arg::F32(lr),
        Arg::F32(momentum),
        Arg::F32(dampening),
        Arg::F32(weight_decay),
        Arg::U32(u32::from(nesterov)),
        Arg::U32(u32::from(first_step)),
    ];
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: param, grad (and the momentum buffer when momentum != 0, the only case the
    // kernel reads it) hold n elements (checked above).
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn adam(
    dev: &DeviceInner,
    p: Region,
    g: Region,
    m: Region,
    v: Region,
    n: usize,
    h: &crate::backend::AdamStep,
) -> Result<()> {
    let k = Kernel::AdamStep;
    for (r, what) in [(p, "param"), (g, "grad"), (m, "m"), (v, "v")] {
        need(r, n, what, k)?;
    }
    if n == 0 {
        return Ok(());
    }
    let args = [
        ptr(p),
        ptr(g),
        ptr(m),
        ptr(v),
        size(n),
        Arg::F32(h.lr),
        Arg::F32(h.beta1),
        Arg::F32(h.beta2),
        Arg::F32(h.eps),
        Arg::F32(h.weight_decay),
        Arg::U32(h.step.max(1)),
        Arg::U32(u32::from(h.decoupled)),
    ];
    let blocks = super::plan::grid_stride_blocks(n, 256);
    // SAFETY: param, grad, m and v hold n elements (checked above).
    unsafe { launch(dev, k, grid1(blocks), B256, &args) }
}

// ------------------------------------------------------------------------ GEMM

/// A GEMM operand: its region, whether the product reads it transposed, its leading
/// dimension.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operand {
    pub r: Region,
    pub trans: bool,
    pub ld: usize,
}

/// Dimensions of `C = op(A) op(B)` (`m × k` times `k × n`) with `C`'s leading dimension.
#[derive(Clone, Copy, Debug)]
pub(super) struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ldc: usize,
}

fn check_gemm(kernel: Kernel, a: Operand, b: Operand, c: Region, d: GemmDims) -> Result<()> {
    use super::plan::extent;
    let a_need = if a.trans {
        extent(d.k, d.m, a.ld)
    } else {
        extent(d.m, d.k, a.ld)
    };
    let b_need = if b.trans {
        extent(d.n, d.k, b.ld)
    } else {
        extent(d.k, d.n, b.ld)
    };
    need(a.r, a_need, "A", kernel)?;
    need(b.r, b_need, "B", kernel)?;
    need(c, extent(d.m, d.n, d.ldc), "C", kernel)
}

fn gemm_args(kernel: Kernel, a: Operand, b: Operand, c: Region, d: GemmDims) -> Result<Vec<Arg>> {
    Ok(vec![
        ptr(a.r),
        ptr(b.r),
        ptr(c),
        u32_arg(d.m, "M", kernel)?,
        u32_arg(d.n, "N", kernel)?,
        u32_arg(d.k, "K", kernel)?,
        u32_arg(a.ld, "lda", kernel)?,
        u32_arg(b.ld, "ldb", kernel)?,
        u32_arg(d.ldc, "ldc", kernel)?,
    ])
}

/// `C = op(A) op(B)` with a tile kernel (`Sgemm128` or `Sgemm64`); `d.m` must fit the grid.
pub(super) fn sgemm_tiled(
    dev: &DeviceInner,
    kernel: Kernel,
    a: Operand,
    b: Operand,
    c: Region,
    d: GemmDims,
) -> Result<()> {
    let tile = match kernel {
        Kernel::Sgemm128 => 128,
        Kernel::Sgemm64 => 64,
        _ => {
            return Err(Error::Cuda(format!(
                "internal: {} is not a tile kernel",
                kernel.name()
            )))
        }
    };
    check_gemm(kernel, a, b, c, d)?;
    if d.m == 0 || d.n == 0 {
        return Ok(());
    }
    let grid = (
        to_u32(d.n.div_ceil(tile), "column tiles", kernel)?,
        to_u32(d.m.div_ceil(tile), "row tiles", kernel)?,
        1,
    );
    if grid.1 as usize > super::plan::MAX_GRID {
        return Err(Error::Cuda(format!(
            "internal: {}: {} row tiles exceed the grid",
            kernel.name(),
            grid.1
        )));
    }
    let mut args = gemm_args(kernel, a, b, c, d)?;
    args.extend([
        Arg::F32(1.0),
        Arg::F32(0.0),
        Arg::U32(u32::from(a.trans)),
        Arg::U32(u32::from(b.trans)),
    ]);
    // SAFETY: A, B and C cover the strided blocks the product reads and writes (checked
    // above); the grid covers C exactly once; C is distinct from A and B.
    unsafe { launch(dev, kernel, grid, B256, &args) }
}

/// `C = op(A) op(B)` with `n <= 16`: `SgemmThin` (A not transposed, one warp per row) or
/// `SgemmThinTa` (A transposed, 32 rows per block).
pub(super) fn sgemm_thin(
    dev: &DeviceInner,
    kernel: Kernel,
    a: Operand,
    b: Operand,
    c: Region,
    d: GemmDims,
) -> Result<()> {
    let (grid, block) = match (kernel, a.trans) {
        (Kernel::SgemmThin, false) => (grid1(super::plan::grid_stride_blocks(d.m, 8)), B256),
        (Kernel::SgemmThinTa, true) => (grid1(super::plan::grid_stride_blocks(d.m, 32)), B32X8),
        _ => {
            return Err(Error::Cuda(format!(
                "internal: {} with trans_a = {}",
                kernel.name(),
                a.trans
            )))
        }
    };
    if d.n > super::plan::THIN_MAX {
        return Err(Error::Cuda(format!(
            "internal: {} with N = {}",
            kernel.name(),
            d.n
        )));
    }
    check_gemm(kernel, a, b, c, d)?;
    if d.m == 0 || d.n == 0 {
        return Ok(());
    }
    let mut args = gemm_args(kernel, a, b, c, d)?;
    args.extend([Arg::F32(1.0), Arg::F32(0.0), Arg::U32(u32::from(b.trans))]);
    // SAFETY: A, B and C cover the blocks the product touches (checked above); N <= 16 as
    // the kernel requires; C is distinct from A and B.
    unsafe { launch(dev, kernel, grid, block, &args) }
}

/// Split-K stage 1 of `C = Aᵀ op(B)` (A stored K × M, N <= 16): `work` receives `z` slabs of
/// `M × N` partial sums.
pub(super) fn sgemm_thin_partial(
    dev: &DeviceInner,
    a: Operand,
    b: Operand,
    work: Region,
    d: GemmDims,
    blocks: u32,
    z: u32,
) -> Result<()> {
    let kernel = Kernel::SgemmThinTaPartial;
    if !a.trans || d.n > super::plan::THIN_MAX {
        return Err(Error::Cuda(format!(
            "internal: {} on an unsupported layout",
            kernel.name()
        )));
    }
    // C is not touched here: check A and B as for the full product.
    check_gemm(kernel, a, b, Region::NULL, GemmDims { m: 0, ..d })?;
    need(a.r, super::plan::extent(d.k, d.m, a.ld), "A", kernel)?;
    need(work, z as usize * d.m * d.n, "work", kernel)?;
    if d.m == 0 || d.n == 0 {
        return Ok(());
    }
    let args = [
        ptr(a.r),
        ptr(b.r),
        ptr(work),
        u32_arg(d.m, "M", kernel)?,
        u32_arg(d.n, "N", kernel)?,
        u32_arg(d.k, "K", kernel)?,
        u32_arg(a.ld, "lda", kernel)?,
        u32_arg(b.ld, "ldb", kernel)?,
        Arg::U32(u32::from(b.trans)),
    ];
    // SAFETY: A and B cover what the product reads and work holds z × M × N (checked above).
    unsafe { launch(dev, kernel, (blocks, z, 1), B32X8, &args) }
}

/// Split-K stage 2: `C = Σ_z work[z]`.
pub(super) fn sgemm_thin_finish(
    dev: &DeviceInner,
    work: Region,
    c: Region,
    m: usize,
    n: usize,
    z: u32,
    ldc: usize,
) -> Result<()> {
    let kernel = Kernel::SgemmThinFinish;
    need(work, z as usize * m * n, "work", kernel)?;
    need(c, super::plan::extent(m, n, ldc), "C", kernel)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let args = [
        ptr(work),
        ptr(c),
        u32_arg(m, "M", kernel)?,
        u32_arg(n, "N", kernel)?,
        Arg::U32(z),
        u32_arg(ldc, "ldc", kernel)?,
        Arg::F32(1.0),
        Arg::F32(0.0),
    ];
    let blocks = super::plan::grid_stride_blocks(m * n, 256);
    // SAFETY: work holds z × M × N and C covers M rows of ldc (checked above).
    unsafe { launch(dev, kernel, grid1(blocks), B256, &args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_argument_list_is_an_error() {
        let dev = super::super::CudaDevice::emulated().unwrap();
        let x = dev.zeros(4).unwrap();
        // neg_f32 takes (ptr, ptr, size_t): a u32 size is refused before anything runs.
        let args = [ptr(x.region()), ptr(x.region()), Arg::U32(4)];
        // SAFETY: the call is refused by the signature check; nothing is launched.
        let err = unsafe { launch(&dev.inner, Kernel::Neg, (1, 1, 1), B256, &args) }.unwrap_err();
        assert!(err.to_string().contains("do not match"), "{err}");
        // An exact block shape is enforced (here by the emulator).
        let args = [ptr(x.region()), ptr(x.region()), Arg::U32(1), Arg::U32(4)];
        // SAFETY: x holds 4 elements, one row of 4; the launch shape is refused.
        let err =
            unsafe { launch(&dev.inner, Kernel::Transpose2d, (1, 1, 1), B256, &args) }.unwrap_err();
        assert!(err.to_string().contains("needs block"), "{err}");
    }
}
