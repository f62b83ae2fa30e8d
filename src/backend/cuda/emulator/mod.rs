//! A host emulator of the kernels, for running the CUDA backend without a GPU.
//!
//! [`super::CudaDevice::emulated`] gives a device whose buffers live in host memory
//! (`memory.rs`: a range past a live buffer's end is a device fault) and whose launches run
//! here, so the backend's choice of kernels, grids, strides, leading dimensions and offsets,
//! its argument and index checks, pool and poisoning run as on a GPU and can be compared
//! with the CPU backend. The plain math (maps, broadcasts, reductions, gathers and scatters,
//! softmax, GEMM, optimizer steps) is the CPU backend's own, applied to what the launch
//! covers: the operand elements a broadcast's strides name, the part of `C` a GEMM grid
//! covers, the column tiles and `z` slabs of a reduction, the column range a row variant
//! handles (outside it a kernel writes nothing), error flags for bad indices. Bespoke
//! emulation is kept where the thread partition or reduction order is the point: the fixed
//! partial sums here, and in `xent.rs` the single-pass cross-entropy kernels (the same
//! per-thread chunks and butterfly trees) and XRM's flip (the kernel's f64 steps). It says
//! nothing about the kernels' speed or their last-bit rounding (CUDA's `expf` is not
//! Rust's), and it follows the CPU's NaN conventions for `max` and `argmax`: the GPU tests
//! do the rest.

mod memory;
mod xent;

pub(super) use memory::{copy, memset, read, write, HostBuf};

use super::kernels::{Kernel, PtxModule};
use super::launch::Value;
use super::plan::{extent, Dim3};
use crate::backend::cpu::CpuStorage;
use crate::backend::{AdamStep, BackendStorage, BinaryOp, ReduceOp, SgdStep, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::Shape;
use memory::{cpu, screen};

/// Kernel arguments by position (their kinds were checked against the kernel table).
#[derive(Clone, Copy)]
struct Args<'a>(&'a [Value]);

impl Args<'_> {
    /// Argument `i` as a size (0 for a float).
    fn u(self, i: usize) -> usize {
        match self.0[i] {
            Value::Ptr(v) | Value::Usize(v) => v as usize,
            Value::U32(v) => v as usize,
            Value::F32(_) => 0,
        }
    }
    /// Argument `i` as an address.
    fn p(self, i: usize) -> u64 {
        self.u(i) as u64
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
pub(super) fn run(k: Kernel, grid: Dim3, block: Dim3, smem: u32, args: &[Value]) -> Result<()> {
    if block.0 * block.1 * block.2 > 1024 || !block.0.is_multiple_of(32) {
        let what = format!("emulator: {}: bad block {block:?}", k.name());
        return Err(Error::Cuda(what));
    }
    let (a, name) = (Args(args), k.name());
    use Kernel as K;
    match k.module() {
        PtxModule::Elementwise => elementwise(k, a),
        PtxModule::Reduce => reduce(k, grid, a),
        PtxModule::Index => index(k, a),
        PtxModule::Softmax => {
            let (rows, cols, log) = (a.u(2), a.u(3), name.starts_with("log_"));
            match handles(k, cols) {
                true => a.put(1, &a.cpu(0, rows * cols)?.softmax_rows(rows, cols, log)?.0),
                false => Ok(()),
            }
        }
        PtxModule::Xent => match k {
            K::SumAll if grid != (1, 1, 1) => {
                Err(Error::Cuda(format!("emulator: {name} needs one block")))
            }
            K::SumAll => a.put(2, &[a.f(3) * a.cpu(0, a.u(1))?.sum_all()?.0[0]]),
            K::SumPartials => {
                // Block b sums the elements its grid-stride loop visits, in order.
                let (x, g) = (a.cpu(0, a.u(1))?, grid.0 as usize);
                let mut acc = vec![0.0f32; g];
                for (i, v) in x.0.iter().enumerate() {
                    acc[(i % (g * 256)) / 256] += v;
                }
                a.put(2, &acc)
            }
            K::XentSmallC | K::XentWarpRow | K::XentBlockRow if !handles(k, a.u(7)) => Ok(()),
            K::XentSmallC | K::XentWarpRow | K::XentBlockRow => xent::xent_fallback(a),
            _ => xent::xent_single_pass(k, block, smem, a),
        },
        PtxModule::Xrm => xent::xrm_flip_targets(a),
        PtxModule::Optim => optim(k, a),
        PtxModule::Gemm => gemm(k, grid, a),
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

/// The maps, same-shape and broadcast (`n`, dims 1..4 and each operand's strides).
fn elementwise(k: Kernel, a: Args) -> Result<()> {
    use {BinaryOp as B, Kernel as K, UnaryOp as U};
    let unary = match k {
        K::Neg => U::Neg,
        K::Exp => U::Exp,
        K::Log => U::Log,
        K::Tanh => U::Tanh,
        K::Relu => U::Relu,
        K::Sigmoid => U::Sigmoid,
        K::Sqrt => U::Sqrt,
        K::Square => U::Square,
        K::Recip => U::Recip,
        K::Step => U::Step,
        K::Affine => U::Affine {
            mul: a.f(3),
            add: a.f(4),
        },
        K::Powf => U::Powf(a.f(3)),
        K::Fill => return a.put(0, &vec![a.f(2); a.u(1)]),
        K::WhereCond => {
            let (c, t, e) = (a.cpu(0, a.u(4))?, a.cpu(1, a.u(4))?, a.cpu(2, a.u(4))?);
            return a.put(3, &c.where_cond(&t, &e)?.0);
        }
        K::Add | K::AddBcast => return binary(k, B::Add, a),
        K::Sub | K::SubBcast => return binary(k, B::Sub, a),
        K::Mul | K::MulBcast => return binary(k, B::Mul, a),
        K::Div | K::DivBcast => return binary(k, B::Div, a),
        K::Maximum | K::MaximumBcast => return binary(k, B::Maximum, a),
        K::Eq | K::EqBcast => return binary(k, B::Eq, a),
        _ => {
            return Err(Error::Cuda(format!(
                "emulator: {} is not an elementwise kernel",
                k.name()
            )))
        }
    };
    a.put(1, &a.cpu(0, a.u(2))?.unary(unary)?.0)
}

fn binary(k: Kernel, op: BinaryOp, a: Args) -> Result<()> {
    let n = a.u(3);
    let gather = |x: usize, s: usize| -> Result<CpuStorage> {
        if !k.name().ends_with("_bcast_f32") {
            return a.cpu(x, n);
        }
        // The kernel's index arithmetic over dims (d0, d1, d2, d3) with operand strides `st`.
        let (d, st) = ([a.u(4), a.u(5), a.u(6)], |j: usize| a.u(s + j));
        let offset = |i: usize| {
            let (c3, r) = (i % d[2], i / d[2]);
            let (c2, r) = (r % d[1], r / d[1]);
            (r / d[0]) * st(0) + (r % d[0]) * st(1) + c2 * st(2) + c3 * st(3)
        };
        let src = a.cpu(x, if n == 0 { 0 } else { 1 + offset(n - 1) })?;
        Ok(CpuStorage::new((0..n).map(|i| src.0[offset(i)]).collect()))
    };
    let flat = Shape::from(vec![n]);
    let out = gather(0, 7)?.binary(&gather(1, 11)?, op, &flat, &flat, &flat)?;
    a.put(2, &out.0)
}

/// The axis reductions over `(outer, len, inner)` (slab `z` of a split column reduction
/// reduces its chunk of the axis, and column tiles write the columns they cover), and
/// `argmax_rows`.
fn reduce(k: Kernel, grid: Dim3, a: Args) -> Result<()> {
    use Kernel as K;
    if k == K::ArgmaxRows {
        let (rows, cols) = (a.u(1), a.u(2));
        let best = a.cpu(0, rows * cols)?.argmax_rows(rows, cols)?;
        let none = best.iter().map(|&b| if cols == 0 { u32::MAX } else { b });
        return write(a.p(3), &none.collect::<Vec<_>>());
    }
    let op = match k.name().starts_with("sum_") {
        true => ReduceOp::Sum,
        false => ReduceOp::Max,
    };
    let (outer, len) = (a.u(2), a.u(3));
    let inner = match k {
        K::SumAxisWarp | K::MaxAxisWarp => 1,
        _ => a.u(4),
    };
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

/// The row and column index kernels (bad entries are flagged and never followed: selected
/// rows and gathered values NaN, scattered rows zero, added rows skipped; the good ones go
/// through the CPU backend), `copy2d` and `transpose2d`.
fn index(k: Kernel, a: Args) -> Result<()> {
    use Kernel as K;
    let u = |i| a.u(i);
    match k {
        K::Copy2d => {
            let (rows, cols, ss, ds, so, dof) = (u(2), u(3), u(4), u(5), u(6), u(7));
            let mut dst = a.cpu(1, dof + extent(rows, cols, ds))?;
            let src = a.cpu(0, so + extent(rows, cols, ss))?;
            src.copy2d(&mut dst, rows, cols, ss, ds, so, dof)?;
            return a.put(1, &dst.0);
        }
        K::Transpose2d => return a.put(1, &a.cpu(0, u(2) * u(3))?.transpose2d(u(2), u(3))?.0),
        _ => {}
    }
    // (the range the entries index, the flag)
    let (n, cols) = (u(3), u(4));
    let (size, bad) = match k {
        K::IndexSelectRows | K::IndexAddRows => (u(5), a.p(6)),
        _ => (cols, a.p(5)),
    };
    let (safe, bad_rows) = screen(&read::<u32>(a.p(1), n)?, size, bad)?;
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

/// The optimizer steps (`optim.cu`'s argument lists).
fn optim(k: Kernel, a: Args) -> Result<()> {
    let (u, f) = (|i| a.u(i), |i| a.f(i));
    if k == Kernel::SgdStep {
        let h = SgdStep {
            lr: f(4),
            momentum: f(5),
            dampening: f(6),
            weight_decay: f(7),
            nesterov: u(8) != 0,
            first_step: u(9) != 0,
        };
        let (n, momentum) = (u(3), h.momentum != 0.0);
        let (mut p, mut buf) = (a.cpu(0, n)?, a.cpu(2, if momentum { n } else { 0 })?);
        p.sgd_update(&a.cpu(1, n)?, momentum.then_some(&mut buf), h)?;
        a.put(0, &p.0)?;
        return a.put(2, &buf.0);
    }
    let h = AdamStep {
        lr: f(5),
        beta1: f(6),
        beta2: f(7),
        eps: f(8),
        weight_decay: f(9),
        step: u(10) as u32,
        decoupled: u(11) != 0,
    };
    let n = u(4);
    let (mut p, mut m, mut v) = (a.cpu(0, n)?, a.cpu(2, n)?, a.cpu(3, n)?);
    p.adam_update(&a.cpu(1, n)?, &mut m, &mut v, h)?;
    a.put(0, &p.0)?;
    a.put(2, &m.0)?;
    a.put(3, &v.0)
}

/// The GEMM kernels on densified operands: `C = α op(A) op(B) + β C` over the part of `C`
/// the launch covers (tiles: what the grid covers; thin: `N <= 16`), split-K slab by slab.
fn gemm(k: Kernel, grid: Dim3, a: Args) -> Result<()> {
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
