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
//! partition or reduction order is the point (`xent.rs`): the single-pass cross-entropy
//! kernels (the same per-thread chunks and butterfly trees) and XRM's flip (the kernel's f64
//! steps); and the fixed partial sums here. It says nothing about the kernels' speed or their
//! last-bit rounding (CUDA's `expf` is not Rust's), and it follows the CPU's NaN conventions
//! for `max` and `argmax`: the GPU tests do the rest.
//!
//! Memory (`memory.rs`): every buffer is registered with its address range, and a range past
//! a live buffer's end is a device fault.

mod memory;
mod xent;

pub(super) use memory::{copy, memset, read, write, HostBuf};

use super::kernels::Kernel;
use super::launch::Value;
use super::plan::extent;
use crate::backend::cpu::CpuStorage;
use crate::backend::{AdamStep, BackendStorage, BinaryOp, ReduceOp, SgdStep, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::Shape;
use memory::{cpu, flag};

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
    /// The `n` floats at pointer argument `i` as a CPU storage.
    fn cpu(self, i: usize, n: usize) -> Result<CpuStorage> {
        cpu(self.p(i), n)
    }
    /// Writes `data` to pointer argument `i`.
    fn put(self, i: usize, data: &[f32]) -> Result<()> {
        write(self.p(i), data)
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
        let what = format!("emulator: {}: bad block {block:?}", k.name());
        return Err(Error::Cuda(what));
    }
    let a = Args(args);
    let (u, f) = (|i| a.u(i), |i| a.f(i));
    let flat = |n: usize| Shape::from(vec![n]);
    let binary = |op, x: CpuStorage, y: CpuStorage, n| -> Result<()> {
        a.put(2, &x.binary(&y, op, &flat(n), &flat(n), &flat(n))?.0)
    };
    use Kernel as K;
    match k {
        K::Neg => unary(a, UnaryOp::Neg),
        K::Exp => unary(a, UnaryOp::Exp),
        K::Log => unary(a, UnaryOp::Log),
        K::Tanh => unary(a, UnaryOp::Tanh),
        K::Relu => unary(a, UnaryOp::Relu),
        K::Sigmoid => unary(a, UnaryOp::Sigmoid),
        K::Sqrt => unary(a, UnaryOp::Sqrt),
        K::Square => unary(a, UnaryOp::Square),
        K::Recip => unary(a, UnaryOp::Recip),
        K::Step => unary(a, UnaryOp::Step),
        K::Affine => unary(
            a,
            UnaryOp::Affine {
                mul: f(3),
                add: f(4),
            },
        ),
        K::Powf => unary(a, UnaryOp::Powf(f(3))),
        K::Fill => a.put(0, &vec![f(2); u(1)]),
        K::Add | K::Sub | K::Mul | K::Div | K::Maximum | K::Eq => {
            binary(binary_op(k), a.cpu(0, u(3))?, a.cpu(1, u(3))?, u(3))
        }
        K::AddBcast | K::SubBcast | K::MulBcast | K::DivBcast | K::MaximumBcast | K::EqBcast => {
            // The kernel's index arithmetic: each operand gathered by its strides.
            let n = u(3);
            let d = [n / (u(4) * u(5) * u(6)).max(1), u(4), u(5), u(6)];
            let gather = |x: usize, s: usize| -> Result<CpuStorage> {
                let offset = |i: usize| -> usize {
                    let c = [
                        i / (d[1] * d[2] * d[3]),
                        i / (d[2] * d[3]) % d[1],
                        i / d[3] % d[2],
                    ];
                    (0..3).map(|j| c[j] * u(s + j)).sum::<usize>() + i % d[3] * u(s + 3)
                };
                let reach = if n == 0 { 0 } else { 1 + offset(n - 1) };
                let src = a.cpu(x, reach)?;
                Ok(CpuStorage::new((0..n).map(|i| src.0[offset(i)]).collect()))
            };
            binary(binary_op(k), gather(0, 7)?, gather(1, 11)?, n)
        }
        K::WhereCond => {
            let (c, t, e) = (a.cpu(0, u(4))?, a.cpu(1, u(4))?, a.cpu(2, u(4))?);
            write(a.p(3), &c.where_cond(&t, &e)?.0)
        }
        K::SumAxisWarp
        | K::MaxAxisWarp
        | K::SumAxisBlock
        | K::MaxAxisBlock
        | K::SumAxisCols
        | K::MaxAxisCols => reduce(k, grid, a),
        K::ArgmaxRows => {
            let (rows, cols) = (u(1), u(2));
            let best = a.cpu(0, rows * cols)?.argmax_rows(rows, cols)?;
            let none = best.iter().map(|&b| if cols == 0 { u32::MAX } else { b });
            write(a.p(3), &none.collect::<Vec<_>>())
        }
        K::IndexSelectRows | K::IndexAddRows | K::GatherCols | K::ScatterCols => index_kernel(k, a),
        K::Copy2d => {
            let (rows, cols, ss, ds, so, dof) = (u(2), u(3), u(4), u(5), u(6), u(7));
            let mut dst = a.cpu(1, dof + extent(rows, cols, ds))?;
            a.cpu(0, so + extent(rows, cols, ss))?
                .copy2d(&mut dst, rows, cols, ss, ds, so, dof)?;
            a.put(1, &dst.0)
        }
        K::Transpose2d => a.put(1, &a.cpu(0, u(2) * u(3))?.transpose2d(u(2), u(3))?.0),
        K::SoftmaxSmallC
        | K::LogSoftmaxSmallC
        | K::SoftmaxWarpRow
        | K::LogSoftmaxWarpRow
        | K::SoftmaxBlockRow
        | K::LogSoftmaxBlockRow => {
            use K::{LogSoftmaxBlockRow as LB, LogSoftmaxSmallC as LS, LogSoftmaxWarpRow as LW};
            let (rows, cols, log) = (u(2), u(3), matches!(k, LS | LW | LB));
            if !handles(k, cols) {
                return Ok(());
            }
            a.put(1, &a.cpu(0, rows * cols)?.softmax_rows(rows, cols, log)?.0)
        }
        K::XentSmallC | K::XentWarpRow | K::XentBlockRow if !handles(k, u(7)) => Ok(()),
        K::XentSmallC | K::XentWarpRow | K::XentBlockRow => xent::xent_fallback(a),
        K::XentGroupVec
        | K::XentWarpVec
        | K::XentWarpVec8
        | K::XentBlockVec
        | K::XentBlockScalar => xent::xent_single_pass(k, block, smem, a),
        K::XrmFlipTargets => xent::xrm_flip_targets(a),
        K::SumAll if grid != (1, 1, 1) => Err(Error::Cuda(format!(
            "emulator: {} needs one block",
            k.name()
        ))),
        K::SumAll => a.put(2, &[f(3) * a.cpu(0, u(1))?.sum_all()?.0[0]]),
        K::SumPartials => {
            // Block b sums the elements its grid-stride loop visits, in order.
            let (x, g) = (a.cpu(0, u(1))?, grid.0 as usize);
            let mut acc = vec![0.0f32; g];
            for (i, v) in x.0.iter().enumerate() {
                acc[(i % (g * 256)) / 256] += v;
            }
            a.put(2, &acc)
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
            let mut buf = a.cpu(2, if h.momentum != 0.0 { n } else { 0 })?;
            let mut p = a.cpu(0, n)?;
            p.sgd_update(&a.cpu(1, n)?, (h.momentum != 0.0).then_some(&mut buf), h)?;
            a.put(0, &p.0)?;
            a.put(2, &buf.0)
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
            let (mut p, mut m, mut v) = (a.cpu(0, n)?, a.cpu(2, n)?, a.cpu(3, n)?);
            p.adam_update(&a.cpu(1, n)?, &mut m, &mut v, h)?;
            a.put(0, &p.0)?;
            a.put(2, &m.0)?;
            a.put(3, &v.0)
        }
        K::Sgemm128
        | K::Sgemm64
        | K::SgemmThin
        | K::SgemmThinTa
        | K::SgemmThinTaPartial
        | K::SgemmThinFinish => gemm(k, grid, a),
    }
}

fn unary(a: Args, op: UnaryOp) -> Result<()> {
    a.put(1, &a.cpu(0, a.u(2))?.unary(op)?.0)
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

/// The axis reductions over `(outer, len, inner)`: slab `z` of a split column reduction
/// reduces its chunk of the axis, and column tiles write the columns they cover.
fn reduce(k: Kernel, grid: (u32, u32, u32), a: Args) -> Result<()> {
    use Kernel as K;
    let op = match k {
        K::SumAxisWarp | K::SumAxisBlock | K::SumAxisCols => ReduceOp::Sum,
        _ => ReduceOp::Max,
    };
    let (outer, len, warp) = (a.u(2), a.u(3), matches!(k, K::SumAxisWarp | K::MaxAxisWarp));
    let inner = if warp { 1 } else { a.u(4) };
    let (z, covered) = match k {
        K::SumAxisCols | K::MaxAxisCols => (grid.2 as usize, (32 * grid.0 as usize).min(inner)),
        _ => (1, inner),
    };
    let x = a.cpu(0, outer * len * inner)?;
    let mut out = a.cpu(1, z * outer * inner)?;
    let chunk = len.div_ceil(z.max(1));
    for zi in 0..z {
        let (begin, end) = (len.min(zi * chunk), len.min((zi + 1) * chunk));
        let w = (end - begin) * inner;
        let mut part = CpuStorage::new(vec![0.0; outer * w]);
        x.copy2d(&mut part, outer, w, len * inner, w, begin * inner, 0)?;
        let r = part.reduce(op, outer, end - begin, inner)?;
        for (i, &v) in r.0.iter().enumerate().filter(|(i, _)| i % inner < covered) {
            out.0[zi * outer * inner + i] = v;
        }
    }
    a.put(1, &out.0)
}

/// The row and column index kernels: bad entries are flagged and never followed (selected
/// rows and gathered values NaN, scattered rows zero, added rows skipped); the good ones go
/// through the CPU backend.
fn index_kernel(k: Kernel, a: Args) -> Result<()> {
    use Kernel as K;
    let (n, cols, rows_kernel) = (
        a.u(3),
        a.u(4),
        matches!(k, K::IndexSelectRows | K::IndexAddRows),
    );
    // (the range the entries index, the flag)
    let (size, bad) = if rows_kernel {
        (a.u(5), a.p(6))
    } else {
        (cols, a.p(5))
    };
    let idx = read::<u32>(a.p(1), n)?;
    let bad_rows: Vec<usize> = (0..n).filter(|&r| idx[r] as usize >= size).collect();
    let safe: Vec<u32> = idx
        .iter()
        .map(|&i| if i as usize >= size { 0 } else { i })
        .collect();
    flag(bad, &bad_rows)?;
    let row = |r: usize| r * cols..(r + 1) * cols;
    let mut out = match k {
        K::IndexSelectRows => a.cpu(0, size * cols)?.index_select_rows(cols, &safe)?,
        K::IndexAddRows => {
            let mut src = a.cpu(0, n * cols)?;
            bad_rows.iter().for_each(|&r| src.0[row(r)].fill(0.0));
            let added = src.index_add_rows(cols, &safe, size)?;
            let flat = Shape::from(vec![size * cols]);
            a.cpu(2, size * cols)?
                .binary(&added, BinaryOp::Add, &flat, &flat, &flat)?
        }
        K::GatherCols => a.cpu(0, n * cols)?.gather_cols(n, cols, &safe)?,
        _ => a.cpu(0, n)?.scatter_cols(n, cols, &safe)?,
    };
    for &r in &bad_rows {
        match k {
            K::IndexSelectRows => out.0[row(r)].fill(f32::NAN),
            K::GatherCols => out.0[r] = f32::NAN,
            K::ScatterCols => out.0[row(r)].fill(0.0),
            _ => {}
        }
    }
    a.put(2, &out.0)
}

/// The GEMM kernels on densified operands: `C = α op(A) op(B) + β C` over the part of `C`
/// the launch covers (tiles: what the grid covers; thin: `N <= 16`), split-K slab by slab.
fn gemm(k: Kernel, grid: (u32, u32, u32), a: Args) -> Result<()> {
    use Kernel as K;
    let u = |i| a.u(i);
    if k == K::SgemmThinFinish {
        let (m, n, z, ldc) = (u(2), u(3), u(4), u(5));
        let sums = a.cpu(0, z * m * n)?.reduce(ReduceOp::Sum, 1, z, m * n)?;
        return store_c(a.p(1), &sums.0, (m, n, ldc), (m, n), (a.f(6), a.f(7)));
    }
    let (m, n, kk, lda, ldb) = (u(3), u(4), u(5), u(6), u(7));
    let thin_cols = if n > 16 { 0 } else { n };
    let (ta, tb, rows, cols) = match k {
        K::Sgemm128 | K::Sgemm64 => {
            let tile = if k == K::Sgemm128 { 128 } else { 64 };
            let (rows, cols) = (m.min(grid.1 as usize * tile), n.min(grid.0 as usize * tile));
            (u(11) != 0, u(12) != 0, rows, cols)
        }
        K::SgemmThin => (false, u(11) != 0, m, thin_cols),
        K::SgemmThinTa => (true, u(11) != 0, m, thin_cols),
        _ => (true, u(8) != 0, m, thin_cols),
    };
    // op(A) op(B) over the K range `ks`, from the dense blocks of A and B it reads.
    let prod = |ks: std::ops::Range<usize>| -> Result<CpuStorage> {
        let (l, kn) = (ks.start, ks.len());
        let x = match ta {
            true => dense(a.p(0), kn, m, lda, l * lda)?,
            false => dense(a.p(0), m, kn, lda, l)?,
        };
        let y = match tb {
            true => dense(a.p(1), n, kn, ldb, l)?,
            false => dense(a.p(1), kn, n, ldb, l * ldb)?,
        };
        x.matmul(&y, m, kn, n, ta, tb)
    };
    if k != K::SgemmThinTaPartial {
        let c = prod(0..kk)?;
        return store_c(a.p(2), &c.0, (m, n, u(8)), (rows, cols), (a.f(9), a.f(10)));
    }
    // Split-K: slab `zi` holds the product over its chunk of K.
    let (z, chunk) = (grid.1 as usize, kk.div_ceil(grid.1 as usize));
    for zi in 0..z {
        let c = prod(kk.min(zi * chunk)..kk.min((zi + 1) * chunk))?;
        let slab = a.p(2) + 4 * (zi * m * n) as u64;
        store_c(slab, &c.0, (m, n, n), (rows, cols), (1.0, 0.0))?;
    }
    Ok(())
}

/// The `rows × cols` block at `off` of a matrix with leading dimension `ld`, made dense.
fn dense(addr: u64, rows: usize, cols: usize, ld: usize, off: usize) -> Result<CpuStorage> {
    let mut out = CpuStorage::new(vec![0.0; rows * cols]);
    if rows * cols > 0 {
        let src = cpu(addr, off + extent(rows, cols, ld))?;
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
    let mut out = read::<f32>(c, extent(m, n, ldc))?;
    for i in 0..rows {
        for j in 0..cols {
            let r = alpha * prod[i * n + j];
            let o = &mut out[i * ldc + j];
            *o = if beta == 0.0 { r } else { beta.mul_add(*o, r) };
        }
    }
    write(c, &out)
}
