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
//! Memory (`memory.rs`): every buffer is registered with its address range, and a range past
//! a live buffer's end is a device fault. The bespoke kernels are in `xent.rs`.

mod memory;
mod xent;

pub(super) use memory::{copy, memset, read, write, HostBuf};

use super::kernels::Kernel;
use super::launch::Value;
use crate::backend::cpu::CpuStorage;
use crate::backend::{AdamStep, BackendStorage, BinaryOp, ReduceOp, SgdStep, UnaryOp};
use crate::error::{Error, Result};
use crate::shape::Shape;
use memory::{cpu, flag, readf, writef};

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
            true => xent::xent_fallback(args),
            false => Ok(()),
        },
        K::XentGroupVec
        | K::XentWarpVec
        | K::XentWarpVec8
        | K::XentBlockVec
        | K::XentBlockScalar => xent::xent_single_pass(k, block, smem, args),
        K::XrmFlipTargets => xent::xrm_flip_targets(args),
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
