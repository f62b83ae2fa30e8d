//! A host emulator of the kernels, for running the CUDA backend without a GPU.
//!
//! [`super::CudaDevice::emulated`] gives a device whose buffers live in host memory
//! (`memory.rs`: a range past a live buffer's end is a device fault) and whose launches run
//! here, so the backend's choice of kernels, grids, strides, leading dimensions and offsets,
//! its argument and index checks, pool and poisoning run as on a GPU and can be compared
//! with the CPU backend. A launch reads its operands as the kernel indexes them ([`view`]),
//! computes with the CPU backend, and writes the part of each output its grid covers
//! ([`store`]: GEMM tiles and split-K slabs, a reduction's column tiles and `z` slabs; a row
//! variant outside its column range writes nothing); bad indices are flagged as the kernels
//! flag them. Bespoke emulation is kept where the thread partition or reduction order is the
//! point: the fixed partial sums here, and in `xent.rs` the single-pass cross-entropy kernels
//! (the same per-thread chunks and butterfly trees) and XRM's flip (the kernel's f64 steps).
//! It says nothing about the kernels' speed or their last-bit rounding (CUDA's `expf` is not
//! Rust's), and it follows the CPU's NaN conventions for `max` and `argmax`: the GPU tests
//! do the rest.

mod memory;
mod xent;

pub(super) use memory::{copy, memset, read, write, HostBuf};

use super::kernels::{Kernel, PtxModule};
use super::launch::Value;
use super::plan::{extent, Dim3};
use crate::backend::cpu::CpuStorage;
use crate::backend::{AdamStep, BackendStorage, BinaryOp, ReduceOp, SgdStep};
use crate::error::{Error, Result};
use crate::shape::Shape;
use memory::screen;
use std::ops::Range;

/// Kernel arguments by position (their kinds were checked against the kernel table).
#[derive(Clone, Copy)]
struct Args<'a>(&'a [Value]);

impl Args<'_> {
    /// Argument `i` as a size, or as an address (0 for a float).
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
    /// Pointer argument `i` advanced by `elems` 4-byte elements.
    fn at(self, i: usize, elems: usize) -> u64 {
        self.p(i) + 4 * elems as u64
    }
    /// Argument `i` as a float (NaN where there is none).
    fn f(self, i: usize) -> f32 {
        match self.0.get(i) {
            Some(&Value::F32(v)) => v,
            _ => f32::NAN,
        }
    }
    /// The `n` floats at pointer argument `i`.
    fn cpu(self, i: usize, n: usize) -> Result<CpuStorage> {
        read(self.p(i), n).map(CpuStorage::new)
    }
}

/// Runs one launch on the host.
pub(super) fn run(k: Kernel, grid: Dim3, block: Dim3, smem: u32, args: &[Value]) -> Result<()> {
    let (a, name) = (Args(args), k.name());
    if block.0 * block.1 * block.2 > 1024 || !block.0.is_multiple_of(32) {
        return Err(Error::Cuda(format!(
            "emulator: {name}: bad block {block:?}"
        )));
    }
    use Kernel as K;
    match k.module() {
        PtxModule::Elementwise => elementwise(k, a),
        PtxModule::Reduce => reduce(k, grid, a),
        PtxModule::Index => index(k, a),
        PtxModule::Softmax if !handles(k, a.u(3)) => Ok(()),
        PtxModule::Softmax => {
            let (rows, cols, log) = (a.u(2), a.u(3), name.starts_with("log_"));
            let y = a.cpu(0, rows * cols)?.softmax_rows(rows, cols, log)?;
            write(a.p(1), &y.0)
        }
        PtxModule::Xent => match k {
            K::SumAll if grid != (1, 1, 1) => {
                Err(Error::Cuda(format!("emulator: {name} needs one block")))
            }
            K::SumAll => write(a.p(2), &[a.f(3) * a.cpu(0, a.u(1))?.sum_all()?.0[0]]),
            K::SumPartials => {
                // Block b sums the elements its grid-stride loop visits, in order.
                let (x, g) = (a.cpu(0, a.u(1))?, grid.0 as usize);
                let mut acc = vec![0.0f32; g];
                for (i, v) in x.0.iter().enumerate() {
                    acc[(i % (g * 256)) / 256] += v;
                }
                write(a.p(2), &acc)
            }
            _ if !handles(k, a.u(7)) => Ok(()),
            _ => xent::xent(k, block, smem, a),
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

/// The elements at offsets `Σ c_i·s_i` from `addr`, for the coordinates `c` of `dims` in
/// row-major order: an operand as a kernel's index arithmetic reads it, made dense.
fn view(addr: u64, dims: &[usize], strides: &[usize]) -> Result<CpuStorage> {
    let offset = |i: usize| {
        let (mut rest, mut o) = (i, 0);
        for (&d, &s) in dims.iter().zip(strides).rev() {
            (o, rest) = (o + rest % d * s, rest / d);
        }
        o
    };
    let n: usize = dims.iter().product();
    let src = read::<f32>(addr, if n == 0 { 0 } else { 1 + offset(n - 1) })?;
    Ok(CpuStorage::new((0..n).map(|i| src[offset(i)]).collect()))
}

/// Slab `zi` of an axis of `len` split into `z` chunks of `ceil(len / z)`: `(zi, its range)`.
fn slabs(len: usize, z: usize) -> impl Iterator<Item = (usize, Range<usize>)> {
    let chunk = len.div_ceil(z);
    (0..z).map(move |zi| (zi, len.min(zi * chunk)..len.min((zi + 1) * chunk)))
}

/// Sets element `(i, j)` of the `m × n` matrix with leading dimension `ld` at `addr` to
/// `f(i, j, old value)` where the launch covers it, `i < rows` and `j < cols`; the rest keeps
/// what it held (the poison, where the device poisons outputs).
fn store(
    addr: u64,
    (m, n, ld): (usize, usize, usize),
    (rows, cols): (usize, usize),
    f: impl Fn(usize, usize, f32) -> f32,
) -> Result<()> {
    let mut out = read::<f32>(addr, extent(m, n, ld))?;
    for i in 0..rows.min(m) {
        for j in 0..cols.min(n) {
            out[i * ld + j] = f(i, j, out[i * ld + j]);
        }
    }
    write(addr, &out)
}

/// The maps, same-shape and broadcast (`n`, dims 1..4 and each operand's strides).
fn elementwise(k: Kernel, a: Args) -> Result<()> {
    if let Some(op) = k.binary_op() {
        return binary(k, op, a);
    }
    match k {
        Kernel::Fill => write(a.p(0), &vec![a.f(2); a.u(1)]),
        Kernel::WhereCond => {
            let (c, t, e) = (a.cpu(0, a.u(4))?, a.cpu(1, a.u(4))?, a.cpu(2, a.u(4))?);
            write(a.p(3), &c.where_cond(&t, &e)?.0)
        }
        _ => {
            let op = k.unary_op([a.f(3), a.f(4)]).ok_or_else(|| {
                Error::Cuda(format!(
                    "emulator: {} is not an elementwise kernel",
                    k.name()
                ))
            })?;
            write(a.p(1), &a.cpu(0, a.u(2))?.unary(op)?.0)
        }
    }
}

fn binary(k: Kernel, op: BinaryOp, a: Args) -> Result<()> {
    let n = a.u(3);
    // A broadcast operand over dims (d0, d1, d2, d3) with its strides from argument `s`.
    let operand = |x: usize, s: usize| match k.name().ends_with("_bcast_f32") {
        true => {
            let d = [a.u(4), a.u(5), a.u(6)];
            let dims = [n / d.iter().product::<usize>().max(1), d[0], d[1], d[2]];
            view(a.p(x), &dims, &[a.u(s), a.u(s + 1), a.u(s + 2), a.u(s + 3)])
        }
        false => a.cpu(x, n),
    };
    let flat = Shape::from(vec![n]);
    let out = operand(0, 7)?.binary(&operand(1, 11)?, op, &flat, &flat, &flat)?;
    write(a.p(2), &out.0)
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
    let (z, cols) = match k {
        K::SumAxisCols | K::MaxAxisCols => (grid.2 as usize, 32 * grid.0 as usize),
        _ => (1, inner),
    };
    for (zi, axis) in slabs(len, z) {
        let dims = [outer, axis.len() * inner];
        let x = view(a.at(0, axis.start * inner), &dims, &[len * inner, 1])?;
        let r = x.reduce(op, outer, axis.len(), inner)?;
        let slab = a.at(1, zi * outer * inner);
        store(slab, (outer, inner, inner), (outer, cols), |i, j, _| {
            r.0[i * inner + j]
        })?;
    }
    Ok(())
}

/// The row and column index kernels (bad entries are flagged and never followed: selected
/// rows and gathered values NaN, scattered rows zero, added rows skipped; the good ones go
/// through the CPU backend), `copy2d` and `transpose2d`.
fn index(k: Kernel, a: Args) -> Result<()> {
    use Kernel as K;
    let u = |i| a.u(i);
    match k {
        K::Copy2d => {
            let (rows, cols, dst) = (u(2), u(3), a.at(1, u(7)));
            let src = view(a.at(0, u(6)), &[rows, cols], &[u(4), 1])?;
            return store(dst, (rows, cols, u(5)), (rows, cols), |i, j, _| {
                src.0[i * cols + j]
            });
        }
        K::Transpose2d => {
            let (rows, cols) = (u(2), u(3));
            return write(a.p(1), &a.cpu(0, rows * cols)?.transpose2d(rows, cols)?.0);
        }
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
    write(a.p(2), &out.0)
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
        write(a.p(0), &p.0)?;
        return write(a.p(2), &buf.0);
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
    write(a.p(0), &p.0)?;
    write(a.p(2), &m.0)?;
    write(a.p(3), &v.0)
}

/// The GEMM kernels: `C = α op(A) op(B) + β C` (`C` not read when `β == 0`) with the operands
/// read as the kernel indexes them, over the part of `C` the launch covers (the tiles of the
/// grid; the thin kernels: `N <= 16`); split-K slab `z` holds the product over its chunk of
/// `K`, and the finishing pass sums the slabs.
fn gemm(k: Kernel, grid: Dim3, a: Args) -> Result<()> {
    use Kernel as K;
    let u = |i| a.u(i);
    let axpby = |(alpha, beta): (f32, f32), p: f32, c: f32| match beta == 0.0 {
        true => alpha * p,
        false => beta.mul_add(c, alpha * p),
    };
    if k == K::SgemmThinFinish {
        let (m, n, z, ab) = (u(2), u(3), u(4), (a.f(6), a.f(7)));
        let sums = a.cpu(0, z * m * n)?.reduce(ReduceOp::Sum, 1, z, m * n)?;
        let c = |i: usize, j: usize, c| axpby(ab, sums.0[i * n + j], c);
        return store(a.p(1), (m, n, u(5)), (m, n), c);
    }
    let (m, n, kk, lda, ldb) = (u(3), u(4), u(5), u(6), u(7));
    // B's transpose flag is the last parameter; A's a parameter of the tile kernels only.
    let tb = u(a.0.len() - 1) != 0;
    let (ta, covered) = match k {
        K::Sgemm128 | K::Sgemm64 => {
            let tile = if k == K::Sgemm128 { 128 } else { 64 };
            (u(11) != 0, (grid.1 as usize * tile, grid.0 as usize * tile))
        }
        _ => (k != K::SgemmThin, (m, if n > 16 { 0 } else { n })),
    };
    // The partial kernel writes dense slabs of plain products.
    let (ldc, ab, z) = match k {
        K::SgemmThinTaPartial => (n, (1.0, 0.0), grid.1 as usize),
        _ => (u(8), (a.f(9), a.f(10)), 1),
    };
    for (zi, ks) in slabs(kk, z) {
        let (l, kn) = (ks.start, ks.len());
        // op(A) is m × kn and op(B) kn × n, from K index l on.
        let x = match ta {
            true => view(a.at(0, l * lda), &[m, kn], &[1, lda])?,
            false => view(a.at(0, l), &[m, kn], &[lda, 1])?,
        };
        let y = match tb {
            true => view(a.at(1, l), &[kn, n], &[1, ldb])?,
            false => view(a.at(1, l * ldb), &[kn, n], &[ldb, 1])?,
        };
        let p = x.matmul(&y, m, kn, n, false, false)?;
        let c = |i: usize, j: usize, c| axpby(ab, p.0[i * n + j], c);
        store(a.at(2, zi * m * n), (m, n, ldc), covered, c)?;
    }
    Ok(())
}
