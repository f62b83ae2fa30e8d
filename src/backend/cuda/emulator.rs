//! A host emulator of the kernels, for running the CUDA backend without a GPU.
//!
//! [`super::CudaDevice::emulated`] gives a device whose buffers live in host memory and whose
//! launches run here, so the backend's choice of kernels, grids, strides, leading dimensions
//! and offsets, its argument and index checks, pool and poisoning run as on a GPU and can be
//! compared with the CPU backend. Each launch reads the buffer ranges its arguments name and
//! writes its outputs back. The plain math (elementwise maps, broadcasts, reductions,
//! gathers and scatters, softmax, GEMM, optimizer steps) is the CPU backend's own, applied to
//! what the launch covers: the part of `C` a GEMM grid covers, the column tiles and `z` slabs
//! of a reduction, the column range a row variant handles (outside it a kernel writes
//! nothing), error flags for bad indices. Bespoke emulation is kept where the thread
//! partition or reduction order is the point: the single-pass cross-entropy kernels (the same
//! per-thread chunks and butterfly trees), the fixed partial sums, and XRM's flip (the
//! kernel's f64 steps). It says nothing about the kernels' speed or their last-bit rounding
//! (CUDA's `expf` is not Rust's), and it follows the CPU's NaN conventions for `max` and
//! `argmax`: the GPU tests do the rest.
//!
//! Memory: every buffer is registered with its address range; an argument resolves to the
//! live buffer containing it, and a range past that buffer's end is a device fault (an
//! error), like `CUDA_ERROR_ILLEGAL_ADDRESS`. Fresh buffers hold all-ones bytes (NaN).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::kernels::Kernel;
use super::launch::Value;
use super::xent::{XENT_BLOCK_VR, XENT_BLOCK_VS, XENT_BLOCK_VS_LONG};
use crate::backend::cpu::CpuStorage;
use crate::backend::{AdamStep, BackendStorage, BinaryOp, ReduceOp, SgdStep, UnaryOp, XentArgs};
use crate::error::{Error, Result};
use crate::shape::Shape;

/// Live emulated buffers: start address → length in 4-byte words.
static LIVE: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

/// 256 bytes, 256-byte aligned: the allocation unit of [`HostBuf`], so that emulated buffers
/// are aligned like `cuMemAlloc`'s (and float4 kernels find their rows 16-byte aligned).
#[repr(C, align(256))]
#[derive(Clone, Copy)]
struct Aligned256([u32; 64]);

/// Host memory standing in for a device buffer of 4-byte words.
pub(super) struct HostBuf {
    ptr: *mut u32,
    len: usize,
    units: usize,
}

// SAFETY: the buffer is plain heap memory owned by this value; it is read and written only
// through `load` and `store`, by the op that owns it (ops never share an output buffer).
unsafe impl Send for HostBuf {}
// SAFETY: as above; `&HostBuf` exposes only the address and length.
unsafe impl Sync for HostBuf {}

impl HostBuf {
    /// `len` words of all-ones bytes (at least one word, so every buffer has an address).
    pub(super) fn new(len: usize) -> HostBuf {
        let (len, units) = (len.max(1), len.max(1).div_ceil(64));
        let ptr =
            Box::into_raw(vec![Aligned256([u32::MAX; 64]); units].into_boxed_slice()) as *mut u32;
        if let Ok(mut live) = LIVE.lock() {
            live.insert(ptr as u64, len);
        }
        HostBuf { ptr, len, units }
    }

    pub(super) fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.remove(&(self.ptr as u64));
        }
        let units = std::ptr::slice_from_raw_parts_mut(self.ptr as *mut Aligned256, self.units);
        // SAFETY: `ptr` and `units` come from `Box::into_raw` of a boxed slice of `units`
        // `Aligned256` in `new`, and are freed exactly once, here.
        unsafe { drop(Box::from_raw(units)) };
    }
}

fn fault(what: String) -> Error {
    Error::Cuda(format!("emulated device fault: {what}"))
}

/// Checks that `n` words from `addr` lie in one live buffer.
fn check(addr: u64, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let live = LIVE
        .lock()
        .map_err(|_| fault("buffer registry poisoned".into()))?;
    match live.range(..=addr).next_back() {
        Some((&start, &len)) if (addr - start).is_multiple_of(4) => {
            let have = len.saturating_sub(((addr - start) / 4) as usize);
            match n <= have {
                true => Ok(()),
                false => Err(fault(format!(
                    "access to {n} elements of a buffer with {have} from {addr:#x}"
                ))),
            }
        }
        _ => Err(fault(format!(
            "address {addr:#x} is not inside a live buffer"
        ))),
    }
}

/// The `n` words at `addr`.
pub(super) fn read(addr: u64, n: usize) -> Result<Vec<u32>> {
    check(addr, n)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut out = vec![0u32; n];
    // SAFETY: `addr..addr + 4n` lies inside a live buffer (checked), which the launching op
    // keeps alive, and `out` is a distinct host vector of `n` words.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u32, out.as_mut_ptr(), n) };
    Ok(out)
}

/// Writes `data` to the words at `addr`.
pub(super) fn write(addr: u64, data: &[u32]) -> Result<()> {
    check(addr, data.len())?;
    if data.is_empty() {
        return Ok(());
    }
    // SAFETY: as in `read`; the op writing a buffer is the only one using it.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u32, data.len()) };
    Ok(())
}

pub(super) fn memset(addr: u64, words: usize, byte: u8) -> Result<()> {
    write(addr, &vec![u32::from_ne_bytes([byte; 4]); words])
}

pub(super) fn copy(src: u64, dst: u64, words: usize) -> Result<()> {
    write(dst, &read(src, words)?)
}

fn readf(addr: u64, n: usize) -> Result<Vec<f32>> {
    Ok(read(addr, n)?.into_iter().map(f32::from_bits).collect())
}

fn writef(addr: u64, data: &[f32]) -> Result<()> {
    write(addr, &data.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
}

/// A CPU storage of the `n` floats at `addr`.
fn cpu(addr: u64, n: usize) -> Result<CpuStorage> {
    readf(addr, n).map(CpuStorage::new)
}

/// `atomicMax(bad, position + 1)` for each bad position, when a flag is given.
fn flag(bad: u64, positions: &[usize]) -> Result<()> {
    match (bad, positions.iter().max()) {
        (0, _) | (_, None) => Ok(()),
        (_, Some(&p)) => {
            let v = read(bad, 1)?[0].max((p as u32).saturating_add(1));
            write(bad, &[v])
        }
    }
}

/// Kernel arguments by position (their kinds were checked against the kernel table).
#[derive(Clone, Copy)]
struct Args<'a>(&'a [Value]);

impl Args<'_> {
    fn p(self, i: usize) -> u64 {
        match self.0[i] {
            Value::Ptr(a) => a,
            _ => 0,
        }
    }
    fn u(self, i: usize) -> usize {
        match self.0[i] {
            Value::U32(v) => v as usize,
            Value::Usize(v) => v as usize,
            _ => 0,
        }
    }
    fn f(self, i: usize) -> f32 {
        match self.0[i] {
            Value::F32(v) => v,
            _ => f32::NAN,
        }
    }
}

/// Runs one launch on the host.
pub(super) fn run(
    k: Kernel,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    args: &[Value],
) -> Result<()> {
    if block.0 * block.1 * block.2 > 1024 || !block.0.is_multiple_of(32) {
        return Err(Error::Cuda(format!(
            "emulator: {}: bad block {block:?}",
            k.name()
        )));
    }
    let a = Args(args);
    let (p, u, f) = (|i| a.p(i), |i| a.u(i), |i| a.f(i));
    let shape = |n: usize| Shape::from(vec![n]);
    use Kernel as K;
    let unary = |op| -> Result<()> { writef(p(1), &cpu(p(0), u(2))?.unary(op)?.0) };
    let binary = |op, a: CpuStorage, b: CpuStorage, out: u64, n| -> Result<()> {
        writef(out, &a.binary(&b, op, &shape(n), &shape(n), &shape(n))?.0)
    };
    match k {
        K::Neg => unary(UnaryOp::Neg),
        K::Exp => unary(UnaryOp::Exp),
        K::Log => unary(UnaryOp::Log),
        K::Tanh => unary(UnaryOp::Tanh),
        K::Relu => unary(UnaryOp::Relu),
        K::Sigmoid => unary(UnaryOp::Sigmoid),
        K::Sqrt => unary(UnaryOp::Sqrt),
        K::Square => unary(UnaryOp::Square),
        K::Recip => unary(UnaryOp::Recip),
        K::Step => unary(UnaryOp::Step),
        K::Affine => unary(UnaryOp::Affine {
            mul: f(3),
            add: f(4),
        }),
        K::Powf => unary(UnaryOp::Powf(f(3))),
        K::Fill => writef(p(0), &vec![f(2); u(1)]),
        K::Add | K::Sub | K::Mul | K::Div | K::Maximum | K::Eq => {
            let n = u(3);
            binary(binary_op(k), cpu(p(0), n)?, cpu(p(1), n)?, p(2), n)
        }
        K::AddBcast | K::SubBcast | K::MulBcast | K::DivBcast | K::MaximumBcast | K::EqBcast => {
            // The kernel's index arithmetic: each operand gathered by its strides.
            let (n, d) = (u(3), [u(3) / (u(4) * u(5) * u(6)).max(1), u(4), u(5), u(6)]);
            let gather = |x: u64, s: usize| -> Result<CpuStorage> {
                let reach = 1
                    + (0..4)
                        .map(|i| d[i].saturating_sub(1) * u(s + i))
                        .sum::<usize>();
                let src = readf(x, if n == 0 { 0 } else { reach })?;
                let at = |i: usize| -> usize {
                    let c = [
                        i / (d[1] * d[2] * d[3]),
                        i / (d[2] * d[3]) % d[1],
                        i / d[3] % d[2],
                        i % d[3],
                    ];
                    (0..4).map(|j| c[j] * u(s + j)).sum()
                };
                Ok(CpuStorage::new((0..n).map(|i| src[at(i)]).collect()))
            };
            binary(binary_op(k), gather(p(0), 7)?, gather(p(1), 11)?, p(2), n)
        }
        K::WhereCond => {
            let n = u(4);
            writef(
                p(3),
                &cpu(p(0), n)?.where_cond(&cpu(p(1), n)?, &cpu(p(2), n)?)?.0,
            )
        }
        K::SumAxisWarp
        | K::MaxAxisWarp
        | K::SumAxisBlock
        | K::MaxAxisBlock
        | K::SumAxisCols
        | K::MaxAxisCols => {
            let op = match k {
                K::SumAxisWarp | K::SumAxisBlock | K::SumAxisCols => ReduceOp::Sum,
                _ => ReduceOp::Max,
            };
            let (outer, len, inner, z, covered) = match k {
                K::SumAxisWarp | K::MaxAxisWarp => (u(2), u(3), 1, 1, 1),
                K::SumAxisBlock | K::MaxAxisBlock => (u(2), u(3), u(4), 1, u(4)),
                _ => (
                    u(2),
                    u(3),
                    u(4),
                    grid.2 as usize,
                    (32 * grid.0 as usize).min(u(4)),
                ),
            };
            let x = cpu(p(0), outer * len * inner)?;
            let mut out = readf(p(1), z * outer * inner)?;
            // Slab `zi` reduces its chunk of the axis; column tiles cover `covered` columns.
            let chunk = len.div_ceil(z.max(1));
            for zi in 0..z {
                let (begin, end) = (len.min(zi * chunk), len.min((zi + 1) * chunk));
                let w = (end - begin) * inner;
                let mut part = CpuStorage::new(vec![0.0; outer * w]);
                x.copy2d(&mut part, outer, w, len * inner, w, begin * inner, 0)?;
                let r = part.reduce(op, outer, end - begin, inner)?;
                for (i, &v) in r.0.iter().enumerate().filter(|(i, _)| i % inner < covered) {
                    out[zi * outer * inner + i] = v;
                }
            }
            writef(p(1), &out)
        }
        K::ArgmaxRows => {
            let (rows, cols) = (u(1), u(2));
            let best = cpu(p(0), rows * cols)?.argmax_rows(rows, cols)?;
            write(
                p(3),
                &best
                    .iter()
                    .map(|&b| if cols == 0 { u32::MAX } else { b })
                    .collect::<Vec<_>>(),
            )
        }
        K::IndexSelectRows | K::IndexAddRows | K::GatherCols | K::ScatterCols => index_kernel(k, a),
        K::Copy2d => {
            let (rows, cols, ss, ds, so, dof) = (u(2), u(3), u(4), u(5), u(6), u(7));
            let ext = |off, s| off + super::plan::extent(rows, cols, s);
            let mut dst = cpu(p(1), ext(dof, ds))?;
            cpu(p(0), ext(so, ss))?.copy2d(&mut dst, rows, cols, ss, ds, so, dof)?;
            writef(p(1), &dst.0)
        }
        K::Transpose2d => writef(p(1), &cpu(p(0), u(2) * u(3))?.transpose2d(u(2), u(3))?.0),
        K::SoftmaxSmallC
        | K::LogSoftmaxSmallC
        | K::SoftmaxWarpRow
        | K::LogSoftmaxWarpRow
        | K::SoftmaxBlockRow
        | K::LogSoftmaxBlockRow => {
            let log = matches!(
                k,
                K::LogSoftmaxSmallC | K::LogSoftmaxWarpRow | K::LogSoftmaxBlockRow
            );
            let (rows, cols) = (u(2), u(3));
            match handles(k, cols) {
                true => writef(
                    p(1),
                    &cpu(p(0), rows * cols)?.softmax_rows(rows, cols, log)?.0,
                ),
                false => Ok(()),
            }
        }
        K::XentSmallC | K::XentWarpRow | K::XentBlockRow => match handles(k, u(7)) {
            true => xent_fallback(args),
            false => Ok(()),
        },
        K::XentGroupVec
        | K::XentWarpVec
        | K::XentWarpVec8
        | K::XentBlockVec
        | K::XentBlockScalar => xent_single_pass(k, block, smem, args),
        K::XrmFlipTargets => xrm_flip_targets(args),
        K::SumAll => {
            if grid != (1, 1, 1) {
                return Err(Error::Cuda(format!(
                    "emulator: {} needs one block",
                    k.name()
                )));
            }
            writef(p(2), &[f(3) * cpu(p(0), u(1))?.sum_all()?.0[0]])
        }
        K::SumPartials => {
            // Block b sums the elements its grid-stride loop visits, in order.
            let (x, g) = (readf(p(0), u(1))?, grid.0 as usize);
            let mut acc = vec![0.0f32; g];
            for (i, v) in x.iter().enumerate() {
                acc[(i % (g * 256)) / 256] += v;
            }
            writef(p(2), &acc)
        }
        K::SgdStep => {
            let n = u(3);
            let h = SgdStep {
                lr: f(4),
                momentum: f(5),
                dampening: f(6),
                weight_decay: f(7),
                nesterov: u(8) != 0,
                first_step: u(9) != 0,
            };
            let (mut param, mut buf) = (
                cpu(p(0), n)?,
                cpu(p(2), if h.momentum != 0.0 { n } else { 0 })?,
            );
            param.sgd_update(&cpu(p(1), n)?, (h.momentum != 0.0).then_some(&mut buf), h)?;
            writef(p(0), &param.0)?;
            writef(p(2), &buf.0)
        }
        K::AdamStep => {
            let n = u(4);
            let h = AdamStep {
                lr: f(5),
                beta1: f(6),
                beta2: f(7),
                eps: f(8),
                weight_decay: f(9),
                step: u(10) as u32,
                decoupled: u(11) != 0,
            };
            let (mut param, mut m, mut v) = (cpu(p(0), n)?, cpu(p(2), n)?, cpu(p(3), n)?);
            param.adam_update(&cpu(p(1), n)?, &mut m, &mut v, h)?;
            writef(p(0), &param.0)?;
            writef(p(2), &m.0)?;
            writef(p(3), &v.0)
        }
        K::Sgemm128
        | K::Sgemm64
        | K::SgemmThin
        | K::SgemmThinTa
        | K::SgemmThinTaPartial
        | K::SgemmThinFinish => gemm(k, grid, a),
    }
}

fn binary_op(k: Kernel) -> BinaryOp {
    use Kernel as K;
    match k {
        K::Add | K::AddBcast => BinaryOp::Add,
        K::Sub | K::SubBcast => BinaryOp::Sub,
        K::Mul | K::MulBcast => BinaryOp::Mul,
        K::Div | K::DivBcast => BinaryOp::Div,
        K::Maximum | K::MaximumBcast => BinaryOp::Maximum,
        _ => BinaryOp::Eq,
    }
}

/// Whether a row variant handles `cols` columns (outside its range it writes nothing).
fn handles(k: Kernel, cols: usize) -> bool {
    use Kernel as K;
    match k {
        K::SoftmaxSmallC | K::LogSoftmaxSmallC | K::XentSmallC => (1..=32).contains(&cols),
        K::SoftmaxWarpRow | K::LogSoftmaxWarpRow | K::XentWarpRow => (33..=1024).contains(&cols),
        _ => true,
    }
}

/// The row and column index kernels: bad entries are flagged and never followed (selected
/// rows and gathered values NaN, scattered rows zero, added rows skipped); the good ones go
/// through the CPU backend.
fn index_kernel(k: Kernel, a: Args) -> Result<()> {
    use Kernel as K;
    let (src, idx, dst, n, cols) = (a.p(0), a.p(1), a.p(2), a.u(3), a.u(4));
    // (the range the entries index, the flag)
    let (size, bad) = match k {
        K::IndexSelectRows | K::IndexAddRows => (a.u(5), a.p(6)),
        _ => (cols, a.p(5)),
    };
    let idx = read(idx, n)?;
    let bad_rows: Vec<usize> = (0..n).filter(|&r| idx[r] as usize >= size).collect();
    let safe: Vec<u32> = idx
        .iter()
        .map(|&i| if i as usize >= size { 0 } else { i })
        .collect();
    flag(bad, &bad_rows)?;
    let row = |r: usize| r * cols..(r + 1) * cols;
    let mut out = match k {
        K::IndexSelectRows => cpu(src, size * cols)?.index_select_rows(cols, &safe)?,
        K::IndexAddRows => {
            let mut src = cpu(src, n * cols)?;
            bad_rows.iter().for_each(|&r| src.0[row(r)].fill(0.0));
            let added = src.index_add_rows(cols, &safe, size)?;
            let flat = Shape::from(vec![size * cols]);
            cpu(dst, size * cols)?.binary(&added, BinaryOp::Add, &flat, &flat, &flat)?
        }
        K::GatherCols => cpu(src, n * cols)?.gather_cols(n, cols, &safe)?,
        _ => cpu(src, n)?.scatter_cols(n, cols, &safe)?,
    };
    for &r in &bad_rows {
        match k {
            K::IndexSelectRows => out.0[row(r)].fill(f32::NAN),
            K::GatherCols => out.0[r] = f32::NAN,
            K::ScatterCols => out.0[row(r)].fill(0.0),
            _ => {}
        }
    }
    writef(dst, &out.0)
}

/// The GEMM kernels on densified operands: `C = α op(A) op(B) + β C` over the part of `C`
/// the launch covers (tiles: what the grid covers; thin: `N <= 16`), split-K slab by slab.
fn gemm(k: Kernel, grid: (u32, u32, u32), args: Args) -> Result<()> {
    use Kernel as K;
    let (p, u, f) = (|i| args.p(i), |i| args.u(i), |i| args.f(i));
    if k == K::SgemmThinFinish {
        let (m, n, z, ldc, alpha, beta) = (u(2), u(3), u(4), u(5), f(6), f(7));
        let sums = cpu(p(0), z * m * n)?.reduce(ReduceOp::Sum, 1, z, m * n)?;
        return store_c(p(1), &sums.0, (m, n, ldc), (m, n), (alpha, beta));
    }
    let (m, n, kk, lda, ldb) = (u(3), u(4), u(5), u(6), u(7));
    let (ta, tb, rows, cols) = match k {
        K::Sgemm128 | K::Sgemm64 => {
            let tile = if k == K::Sgemm128 { 128 } else { 64 };
            (
                u(11) != 0,
                u(12) != 0,
                m.min(grid.1 as usize * tile),
                n.min(grid.0 as usize * tile),
            )
        }
        K::SgemmThin => (false, u(11) != 0, m, if n > 16 { 0 } else { n }),
        K::SgemmThinTa => (true, u(11) != 0, m, if n > 16 { 0 } else { n }),
        _ => (true, u(8) != 0, m, if n > 16 { 0 } else { n }),
    };
    // op(A) op(B) over the K range `ks`, from the dense blocks of A and B it reads.
    let prod = |ks: std::ops::Range<usize>| -> Result<CpuStorage> {
        let (l, kn) = (ks.start, ks.len());
        let a = match ta {
            true => dense(p(0), kn, m, lda, l * lda)?,
            false => dense(p(0), m, kn, lda, l)?,
        };
        let b = match tb {
            true => dense(p(1), n, kn, ldb, l)?,
            false => dense(p(1), kn, n, ldb, l * ldb)?,
        };
        a.matmul(&b, m, kn, n, ta, tb)
    };
    if k != K::SgemmThinTaPartial {
        let c = prod(0..kk)?;
        return store_c(p(2), &c.0, (m, n, u(8)), (rows, cols), (f(9), f(10)));
    }
    // Split-K: slab `zi` holds the product over its chunk of K.
    let (z, chunk) = (grid.1 as usize, kk.div_ceil(grid.1 as usize));
    for zi in 0..z {
        let c = prod(kk.min(zi * chunk)..kk.min((zi + 1) * chunk))?;
        let slab = p(2) + 4 * (zi * m * n) as u64;
        store_c(slab, &c.0, (m, n, n), (rows, cols), (1.0, 0.0))?;
    }
    Ok(())
}

/// The `rows × cols` block at `off` of a matrix with leading dimension `ld`, made dense.
fn dense(addr: u64, rows: usize, cols: usize, ld: usize, off: usize) -> Result<CpuStorage> {
    let mut out = CpuStorage::new(vec![0.0; rows * cols]);
    if rows * cols > 0 {
        let src = cpu(addr, off + super::plan::extent(rows, cols, ld))?;
        src.copy2d(&mut out, rows, cols, ld, cols, off, 0)?;
    }
    Ok(out)
}

/// Writes `α·prod + β·C` (`C` not read when `β == 0`) for the first `rows × cols` of the
/// `m × n` product into `C` with leading dimension `ldc`.
fn store_c(
    c: u64,
    prod: &[f32],
    (m, n, ldc): (usize, usize, usize),
    (rows, cols): (usize, usize),
    (alpha, beta): (f32, f32),
) -> Result<()> {
    let mut out = readf(c, super::plan::extent(m, n, ldc))?;
    for i in 0..rows {
        for j in 0..cols {
            let r = alpha * prod[i * n + j];
            let o = &mut out[i * ldc + j];
            *o = if beta == 0.0 { r } else { beta.mul_add(*o, r) };
        }
    }
    writef(c, &out)
}

/// The arguments of a fused cross-entropy launch, read from the device.
struct Xent {
    z: Vec<f32>,
    s: Option<Vec<f32>>,
    y: Vec<u32>,
    w: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
    grad_scale: f32,
    write_grad: bool,
    loss: Vec<f32>,
    dz: Vec<f32>,
}

impl Xent {
    fn read(args: &[Value]) -> Result<(Xent, [u64; 3])> {
        let a = Args(args);
        let (z, s, y, w, loss, dz) = (a.p(0), a.p(1), a.p(2), a.p(3), a.p(4), a.p(5));
        let (rows, cols, grad_scale, write_grad, bad) =
            (a.u(6), a.u(7), a.f(8), a.u(9) != 0, a.p(10));
        if write_grad && dz == 0 {
            return Err(Error::Cuda("emulator: write_grad without dz".into()));
        }
        let opt = |a: u64, n: usize| (a != 0).then(|| readf(a, n)).transpose();
        let x = Xent {
            z: readf(z, rows * cols)?,
            s: opt(s, rows * cols)?,
            y: read(y, rows)?,
            w: opt(w, rows)?,
            rows,
            cols,
            grad_scale,
            write_grad,
            loss: readf(loss, rows)?,
            dz: if write_grad {
                readf(dz, rows * cols)?
            } else {
                Vec::new()
            },
        };
        Ok((x, [loss, dz, bad]))
    }

    /// Writes back the losses, the gradient, and the flag for the bad rows.
    fn write(&self, [loss, dz, bad]: [u64; 3]) -> Result<()> {
        writef(loss, &self.loss)?;
        if self.write_grad {
            writef(dz, &self.dz)?;
        }
        let bad_rows: Vec<usize> = (0..self.rows)
            .filter(|&r| self.y[r] as usize >= self.cols)
            .collect();
        flag(bad, &bad_rows)
    }

    /// `t = z + s` at column `j` of row `r`, or -inf past the row (the kernels' padding).
    fn t(&self, r: usize, j: usize) -> f32 {
        let i = r * self.cols + j;
        match (j < self.cols, &self.s) {
            (false, _) => f32::NEG_INFINITY,
            (true, None) => self.z[i],
            (true, Some(s)) => self.z[i] + s[i],
        }
    }

    fn weight(&self, r: usize) -> f32 {
        self.w.as_ref().map_or(1.0, |w| w[r])
    }

    /// Row `r`'s loss from its max `m` and exp-sum, NaN for a bad label.
    fn finish_row(&mut self, r: usize, m: f32, sum: f32) {
        let label = self.y[r] as usize;
        self.loss[r] = match label < self.cols {
            true => self.weight(r) * ((m - self.t(r, label)) + sum.ln()),
            false => f32::NAN,
        };
    }

    /// The gradient of column `j` from its exp value `e` and `a = coef / S` (times the
    /// thread's rescale in the block kernels): `e·a`, or `fma(e, a, −coef)` at the label.
    fn grad(&mut self, r: usize, j: usize, e: f32, a: f32) {
        if j >= self.cols {
            return;
        }
        let (label, coef) = (self.y[r] as usize, self.grad_scale * self.weight(r));
        self.dz[r * self.cols + j] = match (label < self.cols, j == label) {
            (false, _) => f32::NAN,
            (true, true) => e.mul_add(a, -coef),
            (true, false) => e * a,
        };
    }
}

/// The scalar fallback kernels, whose order is not the point: the CPU reference, with bad
/// labels' rows NaN.
fn xent_fallback(args: &[Value]) -> Result<()> {
    let (mut x, out) = Xent::read(args)?;
    let bad: Vec<bool> = x.y.iter().map(|&l| l as usize >= x.cols).collect();
    let labels: Vec<u32> =
        x.y.iter()
            .zip(&bad)
            .map(|(&l, &b)| if b { 0 } else { l })
            .collect();
    let (s, w) = (
        x.s.take().map(CpuStorage::new),
        x.w.take().map(CpuStorage::new),
    );
    let (loss, grad) = CpuStorage::new(std::mem::take(&mut x.z)).xent(XentArgs {
        shift: s.as_ref(),
        labels: &labels,
        weights: w.as_ref(),
        rows: x.rows,
        cols: x.cols,
        grad_scale: x.grad_scale,
        write_grad: x.write_grad,
    })?;
    x.loss = loss.as_slice().to_vec();
    if let Some(g) = grad {
        x.dz = g.as_slice().to_vec();
    }
    for r in (0..x.rows).filter(|&r| bad[r]) {
        x.loss[r] = f32::NAN;
        if x.write_grad {
            x.dz[r * x.cols..(r + 1) * x.cols].fill(f32::NAN);
        }
    }
    x.write(out)
}

/// The single-pass kernels, mirrored: which shapes each handles (the kernel's dispatch on
/// `cols`, `blockDim.x` and shared memory; outside it, nothing is written), float4
/// alignment faults, and each row's thread partition and reduction tree.
fn xent_single_pass(k: Kernel, block: (u32, u32, u32), smem: u32, args: &[Value]) -> Result<()> {
    use Kernel as K;
    if k.is_vectorized_xent() {
        // A float4 access at an address that is not 16-byte aligned faults on a GPU.
        for (i, what) in [(0, "z"), (1, "s"), (5, "dz")] {
            if matches!(args[i], Value::Ptr(a) if !a.is_multiple_of(16)) {
                return Err(fault(format!(
                    "{}: misaligned address of `{what}`",
                    k.name()
                )));
            }
        }
    }
    let (mut x, out) = Xent::read(args)?;
    let (cols, b) = (x.cols, block.0 as usize);
    let aligned = cols.is_multiple_of(4);
    let vs = if cols <= 32 * b {
        XENT_BLOCK_VS
    } else {
        XENT_BLOCK_VS_LONG
    };
    let block_fits = block.1 == 1
        && block.2 == 1
        && matches!(b, 64 | 128 | 256 | 512)
        && (cols <= 32 * b || (b == 512 && cols <= 64 * b))
        && smem as usize >= b * vs * 16;
    match k {
        K::XentGroupVec if aligned && (4..=128).contains(&cols) => {
            xent_vec_rows(&mut x, (cols / 4).next_power_of_two(), 1)
        }
        K::XentWarpVec if aligned && (129..=512).contains(&cols) => {
            xent_vec_rows(&mut x, 32, if cols <= 256 { 2 } else { 4 })
        }
        K::XentWarpVec8 if aligned && (513..=1024).contains(&cols) => xent_vec_rows(&mut x, 32, 8),
        K::XentBlockVec if block_fits && aligned => xent_block_rows(&mut x, b, vs, true),
        K::XentBlockScalar if block_fits => xent_block_rows(&mut x, b, vs, false),
        _ => return Ok(()),
    }
    x.write(out)
}

/// `xent_vec_rows<log2(g), v>`: a group of `g` lanes per row, lane `q` holding the float4
/// chunks `q + g·e`, `e < v`; the lane's max (NaN ignored) and its exp values summed in
/// chunk and component order, then xor butterflies over the group.
fn xent_vec_rows(x: &mut Xent, g: usize, v: usize) {
    let quads = x.cols / 4;
    for r in 0..x.rows {
        let chunk = |q: usize, e: usize| -> Option<[f32; 4]> {
            let k = q + g * e;
            (k < quads).then(|| std::array::from_fn(|c| x.t(r, 4 * k + c)))
        };
        let chunks: Vec<Option<[f32; 4]>> = (0..g * v).map(|i| chunk(i / v, i % v)).collect();
        let m = chunks
            .iter()
            .flatten()
            .flatten()
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let exps: Vec<Option<[f32; 4]>> = chunks
            .iter()
            .map(|c| c.map(|c| c.map(|t| (t - m).exp())))
            .collect();
        let partial = (0..g)
            .map(|q| {
                exps[q * v..(q + 1) * v]
                    .iter()
                    .flatten()
                    .flatten()
                    .fold(0.0f32, |a, &b| a + b)
            })
            .collect();
        let sum = butterfly(partial, |p, q| p + q);
        x.finish_row(r, m, sum);
        if x.write_grad {
            let a = x.grad_scale * x.weight(r) / sum;
            for (i, ex) in exps.iter().enumerate() {
                for (c, &e) in ex.iter().flatten().enumerate() {
                    x.grad(r, 4 * (i / v + g * (i % v)) + c, e, a);
                }
            }
        }
    }
}

/// The value every lane ends with after xor butterflies `off = n/2, …, 1` over `vals`
/// (`combine` symmetric, so all lanes agree).
fn butterfly<T: Copy>(mut vals: Vec<T>, combine: impl Fn(T, T) -> T) -> T {
    let mut off = vals.len() / 2;
    while off > 0 {
        vals = (0..vals.len())
            .map(|l| combine(vals[l], vals[l ^ off]))
            .collect();
        off /= 2;
    }
    vals[0]
}

/// `ma_lse_merge` of kernels/common.cuh: two (max, sum of exp(x − max)) pairs into one.
fn lse_merge((m, s): (f32, f32), (om, os): (f32, f32)) -> (f32, f32) {
    let nm = m.max(om);
    let scaled = |m: f32, s: f32| {
        if m == f32::NEG_INFINITY {
            0.0
        } else {
            s * (m - nm).exp()
        }
    };
    (nm, scaled(m, s) + scaled(om, os))
}

/// `xent_block_rows<block, 4, vs, vec>`: thread `tid` holds chunks `k < 4 + vs`, chunk `k`
/// being columns `4(tid + block·k) + c` (vectorized) or `tid + block(4k + c)` (scalar); its
/// NaN-propagating max `mt`, exps `e = exp(t − mt)` (0 for an all -inf thread) summed in
/// chunk and component order; the block merges the `(mt, St)` pairs warp by warp, then over
/// the warps' partials; the gradient rescales by `exp(mt − m)`.
fn xent_block_rows(x: &mut Xent, block: usize, vs: usize, vec: bool) {
    let per_thread = 4 * (XENT_BLOCK_VR + vs);
    let col = |tid: usize, i: usize| -> usize {
        let (k, c) = (i / 4, i % 4);
        if vec {
            4 * (tid + block * k) + c
        } else {
            tid + block * (4 * k + c)
        }
    };
    let max_nan = |a: f32, b: f32| if a > b || a.is_nan() { a } else { b };
    for r in 0..x.rows {
        let mut threads = Vec::with_capacity(block);
        let mut exps = vec![0.0f32; block * per_thread];
        for tid in 0..block {
            let vals: Vec<f32> = (0..per_thread).map(|i| x.t(r, col(tid, i))).collect();
            let mt = vals.iter().copied().fold(f32::NEG_INFINITY, max_nan);
            let base = if mt == f32::NEG_INFINITY { 0.0 } else { mt };
            let mut st = 0.0f32;
            for (i, &t) in vals.iter().enumerate() {
                exps[tid * per_thread + i] = (t - base).exp();
                st += exps[tid * per_thread + i];
            }
            threads.push((mt, st));
        }
        let mut partials: Vec<(f32, f32)> = threads
            .chunks(32)
            .map(|w| butterfly(w.to_vec(), lse_merge))
            .collect();
        partials.resize(32, (f32::NEG_INFINITY, 0.0));
        let (m, sum) = butterfly(partials, lse_merge);
        x.finish_row(r, m, sum);
        if x.write_grad {
            let coef = x.grad_scale * x.weight(r);
            for (tid, &(mt, _)) in threads.iter().enumerate() {
                let rescale = if mt == f32::NEG_INFINITY {
                    0.0
                } else {
                    (mt - m).exp()
                };
                for i in 0..per_thread {
                    x.grad(
                        r,
                        col(tid, i),
                        exps[tid * per_thread + i],
                        rescale * (coef / sum),
                    );
                }
            }
        }
    }
}

/// XRM's flip (kernels/xrm.cu): the kernel's f64 steps, in its order, one row at a time.
fn xrm_flip_targets(args: &[Value]) -> Result<()> {
    let a = Args(args);
    let (logits, u, target, rows, k) = (a.p(0), a.p(1), a.p(2), a.u(3), a.u(4));
    if !u.is_multiple_of(8) {
        return Err(fault("xrm_flip_targets_f32: misaligned `u`".into()));
    }
    let (z, words) = (readf(logits, rows * k)?, read(u, 2 * rows)?);
    let kd = k as f64;
    let flip = |i: usize| -> u32 {
        let row = &z[i * k..(i + 1) * k];
        if k < 2 {
            return u32::MAX;
        }
        let best = (1..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        let mx = row[best] as f64;
        let total = row.iter().fold(0.0f64, |t, &v| t + (v as f64 - mx).exp());
        let q = ((1.0 / total - 1.0 / kd) * kd) / (kd - 1.0);
        let ui = f64::from_bits(words[2 * i] as u64 | (words[2 * i + 1] as u64) << 32);
        if ui < q {
            best as u32
        } else {
            u32::MAX
        }
    };
    write(target, &(0..rows).map(flip).collect::<Vec<_>>())
}
