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
use super::plan::{self, extent, MAX_GRID};
use crate::backend::AdamStep;
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
            return Err(internal(format!(
                "offset {elems} past a buffer of {} elements",
                self.len
            )));
        }
        Ok(Region {
            addr: self.addr + 4 * elems as u64,
            len: self.len - elems,
        })
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
        Error::Device(format!(
            "{}: {what} = {v} exceeds the kernel's 32-bit size limit",
            kernel.name()
        ))
    })
}

/// The kernel's parameter values for `args`, every buffer checked to hold what it claims.
fn values(kernel: Kernel, args: &[Arg]) -> Result<Vec<Value>> {
    let params = kernel.params();
    let mismatch = || {
        internal(format!(
            "{}: arguments {args:?} do not match the parameters {params:?}",
            kernel.name()
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
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem_bytes: u32,
    args: &[Arg],
) -> Result<()> {
    let values = values(kernel, args)?;
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        // A zero grid dimension is a launch error: there is no work.
        return Ok(());
    }
    if kernel.exact_block().is_some_and(|b| b != block) {
        return Err(internal(format!(
            "{} needs block {:?} exactly, launched with {block:?}",
            kernel.name(),
            kernel.exact_block()
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
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: smem_bytes,
    };
    // SAFETY: the values match the kernel's PTX parameters (checked in `values`), every
    // pointer covers what the kernel touches (the caller's contract, the extents checked).
    unsafe { builder.launch(cfg) }
        .map(|_| ())
        .map_err(|e| driver_err(format!("launching {}", kernel.name()), e))
}

const B256: (u32, u32, u32) = (256, 1, 1);
const B32X8: (u32, u32, u32) = (32, 8, 1);

fn grid1(blocks: u32) -> (u32, u32, u32) {
    (blocks, 1, 1)
}

/// A grid-stride grid over `work` items, `per_block` a block; empty when there is no work.
fn stride(work: usize, per_block: usize) -> (u32, u32, u32) {
    grid1(if work == 0 {
        0
    } else {
        plan::grid_stride_blocks(work, per_block)
    })
}

/// `blocks`, or no launch when `work` is 0.
fn unless_empty(work: usize, blocks: u32) -> (u32, u32, u32) {
    grid1(if work == 0 { 0 } else { blocks })
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
    let mut args: Vec<Arg> = bufs.iter().map(|&r| Opt(r, n)).collect();
    if k != Kernel::SgdStep && bufs.iter().any(|r| r.addr == 0) {
        return Err(internal(format!("{}: a null buffer", k.name())));
    }
    args.push(N(n));
    args.extend_from_slice(scalars);
    // SAFETY: the elementwise family above.
    unsafe { launch(dev, k, stride(n, 256), B256, 0, &args) }
}

pub(super) fn sgd(
    dev: &DeviceInner,
    [p, g, buf]: [Region; 3],
    n: usize,
    h: &crate::backend::SgdStep,
) -> Result<()> {
    // The kernel reads the momentum buffer only when momentum != 0.
    if h.momentum != 0.0 && buf.addr == 0 {
        return Err(internal("sgd_step_f32: momentum without a buffer"));
    }
    let scalars = [
        F(h.lr),
        F(h.momentum),
        F(h.dampening),
        F(h.weight_decay),
        Flag(h.nesterov),
        Flag(h.first_step),
    ];
    elementwise(dev, Kernel::SgdStep, &[p, g, buf], n, &scalars)
}

pub(super) fn adam(dev: &DeviceInner, bufs: [Region; 4], n: usize, h: &AdamStep) -> Result<()> {
    let scalars = [
        F(h.lr),
        F(h.beta1),
        F(h.beta2),
        F(h.eps),
        F(h.weight_decay),
        N(h.step.max(1) as usize),
        Flag(h.decoupled),
    ];
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
    let reach = |s: &[usize; 4]| -> usize {
        match n {
            0 => 0,
            _ => {
                1 + d
                    .iter()
                    .zip(s)
                    .map(|(&di, &si)| (di - 1) * si)
                    .sum::<usize>()
            }
        }
    };
    let mut args = vec![Buf(a, reach(&sa)), Buf(b, reach(&sb)), Buf(out, n), N(n)];
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

/// One warp (`*_axis_warp`) per row of `len`: `(x, out, rows, len)`.
pub(super) fn reduce_rows(
    dev: &DeviceInner,
    k: Kernel,
    [x, out]: [Region; 2],
    rows: usize,
    len: usize,
    blocks: u32,
) -> Result<()> {
    let args = [Buf(x, rows * len), Buf(out, rows), N(rows), N(len)];
    // SAFETY: the reductions family above.
    unsafe { launch(dev, k, grid1(blocks), B256, 0, &args) }
}

/// `*_axis_block` (grid `(blocks, 1, 1)`, block 256) or `*_axis_cols` (grid
/// `(tiles, outer blocks, z)`, block (32, 8)); with `z > 1`, `out` receives `z` slabs of
/// `outer × inner` partials.
pub(super) fn reduce_axis(
    dev: &DeviceInner,
    k: Kernel,
    [x, out]: [Region; 2],
    (outer, len, inner): (usize, usize, usize),
    grid: (u32, u32, u32),
) -> Result<()> {
    let cols = matches!(k, Kernel::SumAxisCols | Kernel::MaxAxisCols);
    if cols && (grid.0 as usize) * 32 < inner {
        return Err(internal(format!("{}: grid does not cover inner", k.name())));
    }
    let args = [
        Buf(x, outer * len * inner),
        Buf(out, grid.2 as usize * outer * inner),
        N(outer),
        N(len),
        N(inner),
    ];
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

/// `out[0] = scale · Σ x[0..n]` in one block of 1024.
pub(super) fn sum_one_block(
    dev: &DeviceInner,
    x: Region,
    n: usize,
    out: Region,
    scale: f32,
) -> Result<()> {
    let args = [Buf(x, n), N(n), Buf(out, 1), F(scale)];
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
    unsafe { launch(dev, Kernel::SumPartials, grid1(blocks), B256, 0, &args) }
}

// ------------------------------------------------------------------------------- indexing
//
// SAFETY (index.cu, xrm.cu): the row and column kernels read and write the rows their sizes
// name (stated), never follow an index or label out of range (they flag it in the optional
// `bad` word instead), and write fresh buffers; copy2d and transpose2d touch the strided
// blocks stated, between distinct buffers (a `&` and a `&mut` storage, or a fresh output).

/// `index_select_rows` (reads `table_rows`, writes `n_idx` rows) or `index_add_rows` (reads
/// `n_idx` rows, adds into `table_rows`).
pub(super) fn index_rows(
    dev: &DeviceInner,
    k: Kernel,
    [src, idx, dst, bad]: [Region; 4],
    n_idx: usize,
    cols: usize,
    table_rows: usize,
) -> Result<()> {
    let (src_len, dst_len) = match k {
        Kernel::IndexSelectRows => (table_rows * cols, n_idx * cols),
        _ => (n_idx * cols, table_rows * cols),
    };
    let args = [
        Buf(src, src_len),
        Buf(idx, n_idx),
        Buf(dst, dst_len),
        N(n_idx),
        N(cols),
        N(table_rows),
        Opt(bad, 1),
    ];
    // SAFETY: the indexing family above.
    unsafe { launch(dev, k, stride(n_idx * cols, 256), B256, 0, &args) }
}

/// `gather_cols` (`out` holds rows) or `scatter_cols` (`out` holds rows × cols).
pub(super) fn cols_by_label(
    dev: &DeviceInner,
    k: Kernel,
    [src, labels, out, bad]: [Region; 4],
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (src_len, out_len) = match k {
        Kernel::GatherCols => (rows * cols, rows),
        _ => (rows, rows * cols),
    };
    let args = [
        Buf(src, src_len),
        Buf(labels, rows),
        Buf(out, out_len),
        N(rows),
        N(cols),
        Opt(bad, 1),
    ];
    let work = if k == Kernel::GatherCols {
        rows
    } else {
        out_len
    };
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
    let args = [
        Buf(src, src_off + extent(rows, cols, src_stride)),
        Buf(dst, dst_off + extent(rows, cols, dst_stride)),
        N(rows),
        N(cols),
        N(src_stride),
        N(dst_stride),
        N(src_off),
        N(dst_off),
    ];
    // SAFETY: the indexing family above.
    unsafe {
        launch(
            dev,
            Kernel::Copy2d,
            stride(rows * cols, 256),
            B256,
            0,
            &args,
        )
    }
}

pub(super) fn transpose2d(
    dev: &DeviceInner,
    src: Region,
    dst: Region,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let n = rows * cols;
    let grid = match n {
        0 => (0, 1, 1),
        _ => (
            cols.div_ceil(32).min(MAX_GRID) as u32,
            rows.div_ceil(32).min(MAX_GRID) as u32,
            1,
        ),
    };
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
    let args = [
        Buf(logits, rows * k),
        Buf(uniforms, 2 * rows),
        Buf(target, rows),
        N(rows),
        N(k),
    ];
    // SAFETY: the indexing family above (one thread per row reads its row and uniform).
    unsafe {
        launch(
            dev,
            Kernel::XrmFlipTargets,
            stride(rows, 256),
            B256,
            0,
            &args,
        )
    }
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
    rows: usize,
    cols: usize,
    blocks: u32,
) -> Result<()> {
    let n = rows * cols;
    let args = [Buf(x, n), Buf(y, n), N(rows), N(cols)];
    // SAFETY: the row family above; block 256 as the block-row variant's tree assumes.
    unsafe { launch(dev, k, unless_empty(n, blocks), B256, 0, &args) }
}

/// A fused cross-entropy launch (`xent.cu`); `s`, `w`, `bad` may be [`Region::NULL`], and
/// `dz` when `write_grad` is false. Grid, block and shared memory come from the plan.
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
    // float4 accesses: every row must start 16-byte aligned.
    if k.is_vectorized_xent()
        && (!a.cols.is_multiple_of(4)
            || [a.z, a.s, a.dz].iter().any(|r| !r.addr.is_multiple_of(16)))
    {
        return Err(internal(format!(
            "{} needs cols % 4 == 0 and 16-byte aligned buffers",
            k.name()
        )));
    }
    let n = a.rows * a.cols;
    let dz = match a.write_grad {
        true => Buf(a.dz, n),
        false => Opt(Region::NULL, 0),
    };
    let args = [
        Buf(a.z, n),
        Opt(a.s, n),
        Buf(a.y, a.rows),
        Opt(a.w, a.rows),
        Buf(a.loss, a.rows),
        dz,
        N(a.rows),
        N(a.cols),
        F(a.grad_scale),
        Flag(a.write_grad),
        Opt(a.bad, 1),
    ];
    let (grid, block) = (unless_empty(a.rows, a.blocks), (a.block, 1, 1));
    // SAFETY: the row family above.
    unsafe { launch(dev, k, grid, block, a.smem_bytes, &args) }
}

// ----------------------------------------------------------------------------------- GEMM
//
// SAFETY (gemm.cu): `C = op(A) op(B)` reads the strided `m × k` and `k × n` blocks of A and
// B and writes the `m × n` block of C (leading dimensions as given; split-K: `z` slabs of
// `m × n` in `work`), all stated; the grids cover C once; C is distinct from A and B.

/// A GEMM operand: its region, whether the product reads it transposed, its leading
/// dimension.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operand {
    pub r: Region,
    pub trans: bool,
    pub ld: usize,
}

impl Operand {
    /// The elements the product reads of this operand, `rows × cols` as `op(·)` sees it.
    fn extent(&self, rows: usize, cols: usize) -> usize {
        match self.trans {
            true => extent(cols, rows, self.ld),
            false => extent(rows, cols, self.ld),
        }
    }
}

/// Dimensions of `C = op(A) op(B)` (`m × k` times `k × n`) with `C`'s leading dimension.
#[derive(Clone, Copy, Debug)]
pub(super) struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ldc: usize,
}

/// `(A, B, C, M, N, K, lda, ldb, ldc)`, every block stated.
fn gemm_args(a: Operand, b: Operand, c: Region, d: GemmDims) -> Vec<Arg> {
    let c_need = extent(d.m, d.n, d.ldc);
    vec![
        Buf(a.r, a.extent(d.m, d.k)),
        Buf(b.r, b.extent(d.k, d.n)),
        Buf(c, c_need),
        N(d.m),
        N(d.n),
        N(d.k),
        N(a.ld),
        N(b.ld),
        N(d.ldc),
    ]
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
    let tile = if kernel == Kernel::Sgemm128 { 128 } else { 64 };
    let grid = (
        to_u32(d.n.div_ceil(tile), "column tiles", kernel)?,
        to_u32(d.m.div_ceil(tile), "row tiles", kernel)?,
        1,
    );
    if grid.1 as usize > MAX_GRID {
        return Err(internal(format!(
            "{}: {} row tiles exceed the grid",
            kernel.name(),
            grid.1
        )));
    }
    let mut args = gemm_args(a, b, c, d);
    args.extend([F(1.0), F(0.0), Flag(a.trans), Flag(b.trans)]);
    // SAFETY: the GEMM family above.
    unsafe { launch(dev, kernel, grid, B256, 0, &args) }
}

/// `C = op(A) op(B)` with `n <= 16`: `SgemmThin` (A not transposed, one warp per row) or
/// `SgemmThinTa` (A transposed, 32 rows per block).
pub(super) fn sgemm_thin(
    dev: &DeviceInner,
    a: Operand,
    b: Operand,
    c: Region,
    d: GemmDims,
) -> Result<()> {
    if d.n > plan::THIN_MAX {
        return Err(internal(format!("a thin product with N = {}", d.n)));
    }
    let (kernel, grid, block) = match a.trans {
        false => (Kernel::SgemmThin, stride(d.m * d.n, 8), B256),
        true => (Kernel::SgemmThinTa, stride(d.m * d.n, 32), B32X8),
    };
    let grid = grid1(
        grid.0
            .min(plan::grid_stride_blocks(d.m, if a.trans { 32 } else { 8 })),
    );
    let mut args = gemm_args(a, b, c, d);
    args.extend([F(1.0), F(0.0), Flag(b.trans)]);
    // SAFETY: the GEMM family above; N <= 16 as the kernels require.
    unsafe { launch(dev, kernel, grid, block, 0, &args) }
}

/// Split-K stage 1 of `C = Aᵀ op(B)` (A stored K × M, N <= 16): `work` receives `z` slabs of
/// `M × N` partial sums; stage 2 sums them into `C`.
pub(super) fn sgemm_thin_split(
    dev: &DeviceInner,
    a: Operand,
    b: Operand,
    [work, c]: [Region; 2],
    d: GemmDims,
    blocks: u32,
    z: u32,
) -> Result<()> {
    if !a.trans || d.n > plan::THIN_MAX {
        return Err(internal("split-K on an unsupported layout"));
    }
    let slabs = z as usize * d.m * d.n;
    let mut args = gemm_args(a, b, work, GemmDims { ldc: d.n, ..d });
    args[2] = Buf(work, slabs);
    args.pop(); // no ldc: the slabs are dense
    args.push(Flag(b.trans));
    let grid = (if d.m * d.n == 0 { 0 } else { blocks }, z, 1);
    // SAFETY: the GEMM family above.
    unsafe { launch(dev, Kernel::SgemmThinTaPartial, grid, B32X8, 0, &args) }?;
    let args = [
        Buf(work, slabs),
        Buf(c, extent(d.m, d.n, d.ldc)),
        N(d.m),
        N(d.n),
        N(z as usize),
        N(d.ldc),
        F(1.0),
        F(0.0),
    ];
    // SAFETY: the GEMM family above.
    unsafe {
        launch(
            dev,
            Kernel::SgemmThinFinish,
            stride(d.m * d.n, 256),
            B256,
            0,
            &args,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_argument_list_is_an_error() {
        let dev = super::super::CudaDevice::emulated().unwrap();
        let x = dev.zeros(4).unwrap().region();
        // neg_f32 takes (ptr, ptr, size_t): a flag in place of the size is refused.
        let args = [Buf(x, 4), Buf(x, 4), Flag(true)];
        // SAFETY: the call is refused by the signature check; nothing is launched.
        let err =
            unsafe { launch(&dev.inner, Kernel::Neg, (1, 1, 1), B256, 0, &args) }.unwrap_err();
        assert!(err.to_string().contains("do not match"), "{err}");
        // A buffer shorter than the launch touches is refused.
        let args = [Buf(x, 5), Buf(x, 5), N(5)];
        // SAFETY: refused by the extent check; nothing is launched.
        let err =
            unsafe { launch(&dev.inner, Kernel::Neg, (1, 1, 1), B256, 0, &args) }.unwrap_err();
        assert!(err.to_string().contains("holds 4 elements"), "{err}");
        // An exact block shape is enforced.
        let args = [Buf(x, 4), Buf(x, 4), N(1), N(4)];
        // SAFETY: x holds 4 elements, one row of 4; the launch shape is refused.
        let err = unsafe { launch(&dev.inner, Kernel::Transpose2d, (1, 1, 1), B256, 0, &args) }
            .unwrap_err();
        assert!(err.to_string().contains("needs block"), "{err}");
    }
}
