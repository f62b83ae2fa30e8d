//! The bespoke emulation, where the thread partition or reduction order is the point: the
//! single-pass cross-entropy kernels (the same per-thread chunks and butterfly trees) and
//! XRM's flip (the kernel's f64 steps).

use super::memory::{fault, flag, read, readf, write, writef};
use super::Args;
use crate::backend::cpu::CpuStorage;
use crate::backend::cuda::kernels::Kernel;
use crate::backend::cuda::launch::Value;
use crate::backend::cuda::xent::{XENT_BLOCK_VR, XENT_BLOCK_VS, XENT_BLOCK_VS_LONG};
use crate::backend::{BackendStorage, XentArgs};
use crate::error::{Error, Result};

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
pub(super) fn xent_fallback(args: &[Value]) -> Result<()> {
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
pub(super) fn xent_single_pass(
    k: Kernel,
    block: (u32, u32, u32),
    smem: u32,
    args: &[Value],
) -> Result<()> {
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
pub(super) fn xrm_flip_targets(args: &[Value]) -> Result<()> {
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
