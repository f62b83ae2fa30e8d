//! Every kernel launch of the CUDA backend, from the kernel table.
//!
//! A launch site states its arguments in the kernel's parameter order as [`Arg`]s: a buffer
//! with the number of elements the kernel touches in it for the given sizes, a size, a float
//! or a flag. [`launch`] converts them to the widths the kernel table lists
//! ([`Kernel::params`], itself checked against the PTX by a unit test), so an argument of
//! the wrong kind or position, a size that does not fit an `unsigned int`, or a buffer
//! shorter than what the launch touches is an error before anything runs; empty grids are
//! skipped. What remains unsafe is the claim that the stated extents are what the kernel
//! touches (kernels/README.md) and that outputs do not alias inputs: one `// SAFETY:`
//! argument per kernel family below.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{driver_err, internal, DeviceInner};
use super::kernels::{Kernel, ParamKind};
use super::plan::{self, extent, Dim3, MAX_GRID};
use super::xent::XentPlan;
use crate::backend::{AdamStep, SgdStep};
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
            let what = format!("offset {elems} past a buffer of {} elements", self.len);
            return Err(internal(what));
        }
        let (addr, len) = (self.addr + 4 * elems as u64, self.len - elems);
        Ok(Region { addr, len })
    }
}

/// One kernel argument as a launch site states it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Arg {
    /// A buffer of which the launch touches the first `.1` elements.
    Buf(Region, usize),
    /// An optional buffer: null, or one holding `.1` elements.
    Opt(Region, usize),
    /// A size: `unsigned int` (must fit) or `size_t`, as the table says.
    N(usize),
    F(f32),
    /// An `unsigned int` flag, 0 or 1.
    Flag(bool),
}

use Arg::{Buf, Flag, Opt, F, N};

/// One kernel parameter's value, of the kind the table lists.
#[derive(Clone, Copy, Debug)]
pub(super) enum Value {
    Ptr(u64),
    Usize(u64),
    U32(u32),
    F32(f32),
}

/// `v` as a kernel's `unsigned int` parameter.
pub(super) fn to_u32(v: usize, what: &str, kernel: Kernel) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        let k = kernel.name();
        Error::Device(format!(
            "{k}: {what} = {v} exceeds the kernel's 32-bit size limit"
        ))
    })
}

/// The kernel's parameter values for `args`, every buffer checked to hold what it claims.
fn values(kernel: Kernel, args: &[Arg]) -> Result<Vec<Value>> {
    let params = kernel.params();
    let mismatch = || {
        let k = kernel.name();
        internal(format!(
            "{k}: arguments {args:?} do not match the parameters {params:?}"
        ))
    };
    if args.len() != params.len() {
        return Err(mismatch());
    }
    let mut out = Vec::with_capacity(args.len());
    for (i, (&a, &p)) in args.iter().zip(params).enumerate() {
        out.push(match (a, p) {
            (Buf(r, need), ParamKind::Ptr) | (Opt(r, need), ParamKind::Ptr) => {
                let optional_null = matches!(a, Opt(..)) && r.addr == 0;
                if !optional_null && (r.len < need || r.addr == 0) {
                    return Err(internal(format!(
                        "{}: argument {i} holds {} elements but the launch touches {need}",
                        kernel.name(),
                        r.len
                    )));
                }
                Value::Ptr(r.addr)
            }
            (N(n), ParamKind::Usize) => Value::Usize(n as u64),
            (N(n), ParamKind::U32) => Value::U32(to_u32(n, &format!("argument {i}"), kernel)?),
            (Flag(b), ParamKind::U32) => Value::U32(u32::from(b)),
            (F(v), ParamKind::F32) => Value::F32(v),
            _ => return Err(mismatch()),
        });
    }
    Ok(out)
}

/// Launches `kernel` on the device's stream (or the host emulator).
///
/// # Safety
/// For the given sizes the kernel touches no element of a buffer argument beyond the extent
/// stated with it, and outputs do not alias inputs unless kernels/README.md allows it.
unsafe fn launch(
    dev: &DeviceInner,
    kernel: Kernel,
    grid: Dim3,
    block: Dim3,
    smem_bytes: u32,
    args: &[Arg],
) -> Result<()> {
    let values = values(kernel, args)?;
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        // A zero grid dimension is a launch error: there is no work.
        return Ok(());
    }
    if let Some(exact) = kernel.exact_block().filter(|&b| b != block) {
        let k = kernel.name();
        return Err(internal(format!(
            "{k} needs block {exact:?} exactly, launched with {block:?}"
        )));
    }
    if smem_bytes > kernel.max_dynamic_smem() {
        return Err(internal(format!(
            "{}: {smem_bytes} bytes of dynamic shared memory, at most {} allowed",
            kernel.name(),
            kernel.max_dynamic_smem()
        )));
    }
    dev.count_launch(kernel);
    let Some(gpu) = &dev.gpu else {
        return super::emulator::run(kernel, grid, block, smem_bytes, &values);
    };
    let func = dev.function(gpu, kernel)?;
    let mut builder = gpu.stream.launch_builder(func);
    for v in &values {
        match v {
            Value::Ptr(v) | Value::Usize(v) => builder.arg(v),
            Value::U32(v) => builder.arg(v),
            Value::F32(v) => builder.arg(v),
        };
    }
    let (grid_dim, block_dim, shared_mem_bytes) = (grid, block, smem_bytes);
    let cfg = LaunchConfig {
        grid_dim,
        block_dim,
        shared_mem_bytes,
    };
    // SAFETY: the values match the kernel's PTX parameters (checked in `values`), every
    // pointer covers what the kernel touches (the caller's contract, the extents checked).
    unsafe { builder.launch(cfg) }
        .map(|_| ())
        .map_err(|e| driver_err(format!("launching {}", kernel.name()), e))
}

const B256: Dim3 = (256, 1, 1);
const B32X8: Dim3 = (32, 8, 1);

/// `blocks` blocks in x, or no launch when `work` is 0.
fn unless_empty(work: usize, blocks: u32) -> Dim3 {
    (if work == 0 { 0 } else { blocks }, 1, 1)
}

/// A grid-stride grid over `work` items, `per_block` a block; empty when there is no work.
fn stride(work: usize, per_block: usize) -> Dim3 {
    unless_empty(work, plan::grid_stride_blocks(work, per_block))
}

/// The buffers of a parameter list followed by its sizes (`unsigned int` or `size_t`).
fn with_sizes<const B: usize>(bufs: [Arg; B], sizes: &[usize]) -> Vec<Arg> {
    bufs.into_iter()
        .chain(sizes.iter().map(|&n| N(n)))
        .collect()
}

// ----------------------------------------------------------------- elementwise and optimizers
//
// SAFETY (elementwise.cu, optim.cu): each kernel is a grid-stride loop over `i < n` that
// touches element `i` of each buffer and nothing else, and every buffer is stated with `n`
// elements (a null buffer only where the kernel never reads it: SGD without momentum).
// Outputs are fresh buffers or, where the README allows, the input itself.

/// `(buffers…, n, scalars…)`, block 256.
pub(super) fn elementwise(
    dev: &DeviceInner,
    k: Kernel,
    bufs: &[Region],
    n: usize,
    scalars: &[Arg],
) -> Result<()> {
    // Only SGD's momentum buffer (its third) may be null.
    let optional = |i| k == Kernel::SgdStep && i == 2;
    let buf = |(i, &r)| if optional(i) { Opt(r, n) } else { Buf(r, n) };
    let mut args: Vec<Arg> = bufs.iter().enumerate().map(buf).collect();
    args.push(N(n));
    args.extend_from_slice(scalars);
    // SAFETY: the elementwise family above.
    unsafe { launch(dev, k, stride(n, 256), B256, 0, &args) }
}

pub(super) fn sgd(
    dev: &DeviceInner,
    [p, g, buf]: [Region; 3],
    n: usize,
    h: &SgdStep,
) -> Result<()> {
    // The kernel reads the momentum buffer only when momentum != 0.
    if h.momentum != 0.0 && buf.addr == 0 {
        return Err(internal("sgd_step_f32: momentum without a buffer"));
    }
    let hyper = [h.lr, h.momentum, h.dampening, h.weight_decay].map(F);
    let flags = [Flag(h.nesterov), Flag(h.first_step)];
    let scalars: Vec<Arg> = hyper.into_iter().chain(flags).collect();
    elementwise(dev, Kernel::SgdStep, &[p, g, buf], n, &scalars)
}

pub(super) fn adam(dev: &DeviceInner, bufs: [Region; 4], n: usize, h: &AdamStep) -> Result<()> {
    let hyper = [h.lr, h.beta1, h.beta2, h.eps, h.weight_decay].map(F);
    let scalars: Vec<Arg> = hyper
        .into_iter()
        .chain([N(h.step.max(1) as usize), Flag(h.decoupled)])
        .collect();
    elementwise(dev, Kernel::AdamStep, &bufs, n, &scalars)
}

/// One broadcast launch over output dims `d` (four, outermost first) with operand strides
/// `sa`, `sb`; `out` is contiguous.
pub(super) fn binary_bcast(
    dev: &DeviceInner,
    k: Kernel,
    [a, b, out]: [Region; 3],
    d: [usize; 4],
    sa: [usize; 4],
    sb: [usize; 4],
) -> Result<()> {
    let n: usize = d.iter().product();
    // The kernel's u32 grid-stride index must not wrap: keep n well below 2^32.
    if n > (1usize << 31) {
        return Err(Error::Device(format!(
            "{}: a broadcast of {n} elements exceeds the kernel's limit of 2^31",
            k.name()
        )));
    }
    // The largest operand offset the kernel forms is Σ (d_i − 1) · s_i.
    let reach = |s: [usize; 4]| match n {
        0 => 0,
        _ => 1 + (0..4).map(|i| (d[i] - 1) * s[i]).sum::<usize>(),
    };
    let mut args = vec![Buf(a, reach(sa)), Buf(b, reach(sb)), Buf(out, n), N(n)];
    args.extend(d[1..].iter().chain(&sa).chain(&sb).map(|&v| N(v)));
    // SAFETY: the kernel reads `a` and `b` only at offsets Σ c_i·s_i < reach and writes
    // `out[0..n]` (all stated); `out` is a fresh buffer.
    unsafe { launch(dev, k, stride(n, 256), B256, 0, &args) }
}

// ----------------------------------------------------------------------------- reductions
//
// SAFETY (reduce.cu, xent.cu's sums): a kernel viewing `x` as (outer, len, inner) reads
// `outer·len·inner` elements and writes `outer·inner` (times `z` slabs for the split column
// reduction, `1` for the full sums, one per block for the partial sums), as stated; the
// block shapes are those the kernels' trees assume; outputs are fresh buffers.

/// `*_axis_warp` (`inner` 1: `(x, out, outer, len)`, block 256), `*_axis_block` (block 256)
/// or `*_axis_cols` (grid `(tiles, outer blocks, z)`, block (32, 8); with `z > 1`, `out`
/// receives `z` slabs of `outer × inner` partials).
pub(super) fn reduce(
    dev: &DeviceInner,
    k: Kernel,
    [x, out]: [Region; 2],
    (outer, len, inner): (usize, usize, usize),
    grid: Dim3,
) -> Result<()> {
    let warp = matches!(k, Kernel::SumAxisWarp | Kernel::MaxAxisWarp);
    let cols = matches!(k, Kernel::SumAxisCols | Kernel::MaxAxisCols);
    if (warp && inner != 1) || (cols && (grid.0 as usize) * 32 < inner) {
        let what = format!("{}: grid {grid:?} for ({outer}, {len}, {inner})", k.name());
        return Err(internal(what));
    }
    let (x_len, out_len) = (outer * len * inner, grid.2 as usize * outer * inner);
    let mut args = vec![Buf(x, x_len), Buf(out, out_len), N(outer), N(len), N(inner)];
    args.truncate(if warp { 4 } else { 5 });
    let block = if cols { B32X8 } else { B256 };
    // SAFETY: the reductions family above.
    unsafe { launch(dev, k, grid, block, 0, &args) }
}

pub(super) fn argmax(
    dev: &DeviceInner,
    [x, out]: [Region; 2],
    rows: usize,
    cols: usize,
) -> Result<()> {
    let args = [Buf(x, rows * cols), N(rows), N(cols), Buf(out, rows)];
    // SAFETY: the reductions family above.
    unsafe { launch(dev, Kernel::ArgmaxRows, stride(rows, 8), B256, 0, &args) }
}

/// `out[0] = Σ x[0..n]` in one block of 1024.
pub(super) fn sum_one_block(dev: &DeviceInner, x: Region, n: usize, out: Region) -> Result<()> {
    let args = [Buf(x, n), N(n), Buf(out, 1), F(1.0)];
    // SAFETY: the reductions family above.
    unsafe { launch(dev, Kernel::SumAll, (1, 1, 1), (1024, 1, 1), 0, &args) }
}

/// One partial sum of `x[0..n]` per block into `partials`.
pub(super) fn sum_partials(
    dev: &DeviceInner,
    x: Region,
    n: usize,
    partials: Region,
    blocks: u32,
) -> Result<()> {
    let args = [Buf(x, n), N(n), Buf(partials, blocks as usize)];
    // SAFETY: the reductions family above.
    unsafe { launch(dev, Kernel::SumPartials, (blocks, 1, 1), B256, 0, &args) }
}

// ------------------------------------------------------------------------------- indexing
//
// SAFETY (index.cu, xrm.cu): the row and column kernels read and write the rows their sizes
// name (stated), never follow an index or label out of range (they flag it in the optional
// `bad` word instead), and write fresh buffers; copy2d and transpose2d touch the strided
// blocks stated, between distinct buffers (a `&` and a `&mut` storage, or a fresh output).

/// The kernels that follow the first `n` entries of `idx` into `0..size`:
/// `index_select_rows` (reads `size` rows of `src`, writes `n` rows), `index_add_rows`
/// (reads `n` rows, adds into `size` rows), `gather_cols` (`size` = `cols`: writes one value
/// per row) and `scatter_cols` (reads one value per row, writes `n × cols`).
pub(super) fn indexed(
    dev: &DeviceInner,
    k: Kernel,
    [src, idx, dst, bad]: [Region; 4],
    (n, cols, size): (usize, usize, usize),
) -> Result<()> {
    let (table, rows) = (size * cols, n * cols);
    let (src_len, dst_len, work) = match k {
        Kernel::IndexSelectRows => (table, rows, rows),
        Kernel::IndexAddRows => (rows, table, rows),
        Kernel::GatherCols => (rows, n, n),
        _ => (n, rows, rows),
    };
    let bufs = [Buf(src, src_len), Buf(idx, n), Buf(dst, dst_len)];
    let mut args = with_sizes(bufs, &[n, cols]);
    // The row kernels also take the number of rows the entries index.
    if matches!(k, Kernel::IndexSelectRows | Kernel::IndexAddRows) {
        args.push(N(size));
    }
    args.push(Opt(bad, 1));
    // SAFETY: the indexing family above.
    unsafe { launch(dev, k, stride(work, 256), B256, 0, &args) }
}

/// `dst[dst_off + r·dst_stride + c] = src[src_off + r·src_stride + c]`.
pub(super) fn copy2d(
    dev: &DeviceInner,
    [src, dst]: [Region; 2],
    (rows, cols): (usize, usize),
    (src_stride, dst_stride): (usize, usize),
    (src_off, dst_off): (usize, usize),
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let bufs = [
        Buf(src, src_off + extent(rows, cols, src_stride)),
        Buf(dst, dst_off + extent(rows, cols, dst_stride)),
    ];
    let sizes = [rows, cols, src_stride, dst_stride, src_off, dst_off];
    let (k, args) = (Kernel::Copy2d, with_sizes(bufs, &sizes));
    // SAFETY: the indexing family above.
    unsafe { launch(dev, k, stride(rows * cols, 256), B256, 0, &args) }
}

pub(super) fn transpose2d(
    dev: &DeviceInner,
    src: Region,
    dst: Region,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let n = rows * cols;
    let tiles = |d: usize| d.div_ceil(32).min(MAX_GRID) as u32;
    let grid = (if n == 0 { 0 } else { tiles(cols) }, tiles(rows), 1);
    let args = [Buf(src, n), Buf(dst, n), N(rows), N(cols)];
    // SAFETY: the indexing family above; block (32, 8) as the tile loop assumes.
    unsafe { launch(dev, Kernel::Transpose2d, grid, B32X8, 0, &args) }
}

/// XRM's flip targets: `logits` holds `rows × k`, `uniforms` `rows` f64 values (2 words
/// each, 8-byte aligned), `target` receives `rows` u32.
pub(super) fn xrm_flip_targets(
    dev: &DeviceInner,
    [logits, uniforms, target]: [Region; 3],
    rows: usize,
    k: usize,
) -> Result<()> {
    if !uniforms.addr.is_multiple_of(8) {
        return Err(internal(
            "xrm_flip_targets_f32: the uniforms are not 8-byte aligned",
        ));
    }
    let bufs = [
        Buf(logits, rows * k),
        Buf(uniforms, 2 * rows),
        Buf(target, rows),
    ];
    let args = with_sizes(bufs, &[rows, k]);
    let kernel = Kernel::XrmFlipTargets;
    // SAFETY: the indexing family above (one thread per row reads its row and uniform).
    unsafe { launch(dev, kernel, stride(rows, 256), B256, 0, &args) }
}

// ---------------------------------------------------------------------- softmax and xent
//
// SAFETY (softmax.cu, xent.cu): a row kernel reads and writes the `rows × cols` elements
// of its row buffers and `rows` of its per-row buffers (stated; optional ones null or full);
// the float4 kernels are refused rows that are not 16-byte aligned; outputs are fresh
// buffers, or the input itself where the README allows (y = x, dz = z).

pub(super) fn softmax(
    dev: &DeviceInner,
    k: Kernel,
    [x, y]: [Region; 2],
    (rows, cols): (usize, usize),
    blocks: u32,
) -> Result<()> {
    let n = rows * cols;
    let args = [Buf(x, n), Buf(y, n), N(rows), N(cols)];
    // SAFETY: the row family above; block 256 as the block-row variant's tree assumes.
    unsafe { launch(dev, k, unless_empty(n, blocks), B256, 0, &args) }
}

/// A fused cross-entropy launch (`xent.cu`) as planned: `s`, `w`, `bad` may be
/// [`Region::NULL`], and `dz`, which the kernel then does not write.
pub(super) fn xent(
    dev: &DeviceInner,
    p: &XentPlan,
    [z, s, y, w, loss, dz, bad]: [Region; 7],
    (rows, cols): (usize, usize),
    grad_scale: f32,
) -> Result<()> {
    // float4 accesses: every row must start 16-byte aligned.
    let misaligned = [z, s, dz].iter().any(|r| !r.addr.is_multiple_of(16));
    if p.kernel.is_vectorized_xent() && (!cols.is_multiple_of(4) || misaligned) {
        let k = p.kernel.name();
        return Err(internal(format!(
            "{k} needs cols % 4 == 0 and 16-byte aligned buffers"
        )));
    }
    let (n, write_grad) = (rows * cols, dz.addr != 0);
    let args = [
        Buf(z, n),
        Opt(s, n),
        Buf(y, rows),
        Opt(w, rows),
        Buf(loss, rows),
        Opt(dz, n),
        N(rows),
        N(cols),
        F(grad_scale),
        Flag(write_grad),
        Opt(bad, 1),
    ];
    let (grid, block) = (unless_empty(rows, p.blocks), (p.block, 1, 1));
    // SAFETY: the row family above.
    unsafe { launch(dev, p.kernel, grid, block, p.smem_bytes, &args) }
}

// ----------------------------------------------------------------------------------- GEMM
//
// SAFETY (gemm.cu): `C = op(A) op(B)` reads the strided `m × k` and `k × n` blocks of A and
// B and writes the `m × n` block of C (leading dimensions as given; split-K: `z` slabs of
// `m × n` in `work`), all stated; the grids cover C once; C is distinct from A and B.

/// A GEMM operand: its region, whether the product reads it transposed, its leading
/// dimension (C: never transposed).
#[derive(Clone, Copy, Debug)]
pub(super) struct Operand {
    pub r: Region,
    pub trans: bool,
    pub ld: usize,
}

impl Operand {
    pub fn new(r: Region, trans: bool, ld: usize) -> Operand {
        Operand { r, trans, ld }
    }

    /// The elements the product reads of this operand, `rows × cols` as `op(·)` sees it.
    fn extent(&self, rows: usize, cols: usize) -> usize {
        match self.trans {
            true => extent(cols, rows, self.ld),
            false => extent(rows, cols, self.ld),
        }
    }
}

/// `(A, B, C, M, N, K, lda, ldb, ldc)` of `C = op(A) op(B)` (`m × k` times `k × n`), every
/// block stated.
fn gemm_args(a: Operand, b: Operand, c: Operand, (m, n, k): (usize, usize, usize)) -> Vec<Arg> {
    let bufs = [
        Buf(a.r, a.extent(m, k)),
        Buf(b.r, b.extent(k, n)),
        Buf(c.r, c.extent(m, n)),
    ];
    with_sizes(bufs, &[m, n, k, a.ld, b.ld, c.ld])
}

/// `C = op(A) op(B)` with a tile kernel (`Sgemm128` or `Sgemm64`); `m` must fit the grid.
pub(super) fn sgemm_tiled(
    dev: &DeviceInner,
    kernel: Kernel,
    [a, b, c]: [Operand; 3],
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let tile = if kernel == Kernel::Sgemm128 { 128 } else { 64 };
    let grid = (
        to_u32(n.div_ceil(tile), "column tiles", kernel)?,
        to_u32(m.div_ceil(tile), "row tiles", kernel)?,
        1,
    );
    if grid.1 as usize > MAX_GRID {
        let what = format!("{}: {} row tiles exceed the grid", kernel.name(), grid.1);
        return Err(internal(what));
    }
    let mut args = gemm_args(a, b, c, (m, n, k));
    args.extend([F(1.0), F(0.0), Flag(a.trans), Flag(b.trans)]);
    // SAFETY: the GEMM family above.
    unsafe { launch(dev, kernel, grid, B256, 0, &args) }
}

/// `C = op(A) op(B)` with `n <= 16`: `SgemmThin` (A not transposed, one warp per row) or
/// `SgemmThinTa` (A transposed, 32 rows per block).
pub(super) fn sgemm_thin(
    dev: &DeviceInner,
    [a, b, c]: [Operand; 3],
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    if n > plan::THIN_MAX {
        return Err(internal(format!("a thin product with N = {n}")));
    }
    let (kernel, rows_per_block, block) = match a.trans {
        false => (Kernel::SgemmThin, 8, B256),
        true => (Kernel::SgemmThinTa, 32, B32X8),
    };
    let grid = unless_empty(m * n, plan::grid_stride_blocks(m, rows_per_block));
    let mut args = gemm_args(a, b, c, (m, n, k));
    args.extend([F(1.0), F(0.0), Flag(b.trans)]);
    // SAFETY: the GEMM family above; N <= 16 as the kernels require.
    unsafe { launch(dev, kernel, grid, block, 0, &args) }
}

/// Split-K `C = Aᵀ op(B)` (A stored K × M, N <= 16): stage 1 writes `z` slabs of `M × N`
/// partial sums into `work`, stage 2 sums them into `C`.
pub(super) fn sgemm_thin_split(
    dev: &DeviceInner,
    [a, b, c]: [Operand; 3],
    work: Region,
    (m, n, k): (usize, usize, usize),
    (blocks, z): (u32, u32),
) -> Result<()> {
    if !a.trans || n > plan::THIN_MAX {
        return Err(internal("split-K on an unsupported layout"));
    }
    let slabs = z as usize * m * n;
    let mut args = gemm_args(a, b, Operand::new(work, false, n), (m, n, k));
    args[2] = Buf(work, slabs);
    args.pop(); // no ldc: the slabs are dense
    args.push(Flag(b.trans));
    let grid = (if m * n == 0 { 0 } else { blocks }, z, 1);
    // SAFETY: the GEMM family above.
    unsafe { launch(dev, Kernel::SgemmThinTaPartial, grid, B32X8, 0, &args) }?;
    let bufs = [Buf(work, slabs), Buf(c.r, c.extent(m, n))];
    let mut args = with_sizes(bufs, &[m, n, z as usize, c.ld]);
    args.extend([F(1.0), F(0.0)]);
    let finish = Kernel::SgemmThinFinish;
    // SAFETY: the GEMM family above.
    unsafe { launch(dev, finish, stride(m * n, 256), B256, 0, &args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_argument_list_is_an_error() {
        let dev = super::super::CudaDevice::emulated().unwrap();
        let x = dev.zeros(4).unwrap().region();
        let run = |k, block, args: &[Arg]| {
            // SAFETY: every call below is refused by a check; nothing is launched.
            let err = unsafe { launch(&dev.inner, k, (1, 1, 1), block, 0, args) };
            err.unwrap_err().to_string()
        };
        // neg_f32 takes (ptr, ptr, size_t): a flag in place of the size is refused.
        let err = run(Kernel::Neg, B256, &[Buf(x, 4), Buf(x, 4), Flag(true)]);
        assert!(err.contains("do not match"), "{err}");
        // A buffer shorter than the launch touches is refused.
        let err = run(Kernel::Neg, B256, &[Buf(x, 5), Buf(x, 5), N(5)]);
        assert!(err.contains("holds 4 elements"), "{err}");
        // An exact block shape is enforced.
        let err = run(
            Kernel::Transpose2d,
            B256,
            &[Buf(x, 4), Buf(x, 4), N(1), N(4)],
        );
        assert!(err.contains("needs block"), "{err}");
    }
}
