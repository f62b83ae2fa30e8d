//! The cross-entropy kernels (the scalar fallbacks through the CPU reference; the single-pass
//! kernels bespoke, with the same per-thread chunks and butterfly trees) and XRM's flip (the
//! kernel's f64 steps).

use super::memory::{fault, flag};
use super::{read, write, Args};
use crate::backend::cpu::CpuStorage;
use crate::backend::cuda::kernels::Kernel;
use crate::backend::cuda::xent::{XENT_BLOCK_VR, XENT_BLOCK_VS, XENT_BLOCK_VS_LONG};
use crate::backend::{BackendStorage, XentArgs};
use crate::error::{Error, Result};

/// A fused cross-entropy launch (`xent.cu`'s argument list) with its buffers read from the
/// device; `dz` when it writes the gradient.
struct Xent<'a> {
    a: Args<'a>,
    z: Vec<f32>,
    s: Option<Vec<f32>>,
    y: Vec<u32>,
    w: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
    loss: Vec<f32>,
    dz: Option<Vec<f32>>,
}

impl<'a> Xent<'a> {
    fn read(a: Args<'a>) -> Result<Xent<'a>> {
        let (rows, cols, write_grad) = (a.u(6), a.u(7), a.u(9) != 0);
        if write_grad && a.p(5) == 0 {
            return Err(Error::Cuda("emulator: write_grad without dz".into()));
        }
        let opt = |i: usize, n: usize, on: bool| (on && a.p(i) != 0).then(|| read(a.p(i), n));
        Ok(Xent {
            z: read(a.p(0), rows * cols)?,
            s: opt(1, rows * cols, true).transpose()?,
            y: read(a.p(2), rows)?,
            w: opt(3, rows, true).transpose()?,
            loss: read(a.p(4), rows)?,
            dz: opt(5, rows * cols, write_grad).transpose()?,
            a,
            rows,
            cols,
        })
    }

    /// Writes back the losses, the gradient, and the flag for the bad rows.
    fn write(&self) -> Result<()> {
        write(self.a.p(4), &self.loss)?;
        if let Some(dz) = &self.dz {
            write(self.a.p(5), dz)?;
        }
        let bad: Vec<usize> = (0..self.rows).filter(|&r| self.bad(r)).collect();
        flag(self.a.p(10), &bad)
    }

    fn bad(&self, r: usize) -> bool {
        self.y[r] as usize >= self.cols
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

    /// `grad_scale · w_r`.
    fn coef(&self, r: usize) -> f32 {
        self.a.f(8) * self.w.as_ref().map_or(1.0, |w| w[r])
    }

    /// Row `r`'s loss from its max `m` and exp-sum, NaN for a bad label.
    fn finish_row(&mut self, r: usize, m: f32, sum: f32) {
        let w = self.w.as_ref().map_or(1.0, |w| w[r]);
        self.loss[r] = match self.bad(r) {
            false => w * ((m - self.t(r, self.y[r] as usize)) + sum.ln()),
            true => f32::NAN,
        };
    }

    /// The gradient of column `j` from its exp value `e` and `a = coef / S` (times the
    /// thread's rescale in the block kernels): `e·a`, or `fma(e, a, −coef)` at the label.
    fn grad(&mut self, r: usize, j: usize, e: f32, a: f32) {
        let (cols, bad, label, coef) = (self.cols, self.bad(r), self.y[r] as usize, self.coef(r));
        if let Some(dz) = self.dz.as_mut().filter(|_| j < cols) {
            dz[r * cols + j] = match (bad, j == label) {
                (true, _) => f32::NAN,
                (false, true) => e.mul_add(a, -coef),
                (false, false) => e * a,
            };
        }
    }
}

/// The scalar fallback kernels, whose order is not the point: the CPU reference, with bad
/// labels' rows NaN.
pub(super) fn xent_fallback(a: Args) -> Result<()> {
    let mut x = Xent::read(a)?;
    let cols = x.cols;
    let labels: Vec<u32> =
        x.y.iter()
            .map(|&l| if l as usize >= cols { 0 } else { l })
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
        cols,
        grad_scale: a.f(8),
        write_grad: x.dz.is_some(),
    })?;
    x.loss = loss.as_slice().to_vec();
    x.dz = grad.map(|g| g.as_slice().to_vec());
    for r in (0..x.rows).filter(|&r| x.y[r] as usize >= cols) {
        x.loss[r] = f32::NAN;
        if let Some(dz) = &mut x.dz {
            dz[r * cols..(r + 1) * cols].fill(f32::NAN);
        }
    }
    x.write()
}

/// The single-pass kernels, mirrored: which shapes each handles (the kernel's dispatch on
/// `cols`, `blockDim.x` and shared memory; outside it, nothing is written), float4
/// alignment faults, and each row's thread partition and reduction tree.
pub(super) fn xent_single_pass(
    k: Kernel,
    block: (u32, u32, u32),
    smem: u32,
    a: Args,
) -> Result<()> {
    use Kernel as K;
    for (i, what) in [(0, "z"), (1, "s"), (5, "dz")] {
        // A float4 access at an address that is not 16-byte aligned faults on a GPU.
        if k.is_vectorized_xent() && !a.p(i).is_multiple_of(16) {
            return Err(fault(format!(
                "{}: misaligned address of `{what}`",
                k.name()
            )));
        }
    }
    let mut x = Xent::read(a)?;
    let (cols, b) = (x.cols, block.0 as usize);
    let aligned = cols.is_multiple_of(4);
    let vs = if cols <= 32 * b {
        XENT_BLOCK_VS
    } else {
        XENT_BLOCK_VS_LONG
    };
    let block_fits = (block.1, block.2) == (1, 1)
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
    x.write()
}

/// `xent_vec_rows<log2(g), v>`: a group of `g` lanes per row, lane `q` holding the float4
/// chunks `q + g·e`, `e < v`; the lane's max (NaN ignored) and its exp values summed in
/// chunk and component order, then xor butterflies over the group.
fn xent_vec_rows(x: &mut Xent, g: usize, v: usize) {
    let quads = x.cols / 4;
    // Slot `i` of the row: lane `i / v`'s chunk `i % v`.
    let chunk = |i: usize| i / v + g * (i % v);
    for r in 0..x.rows {
        let slots: Vec<Option<[f32; 4]>> = (0..g * v)
            .map(|i| (chunk(i) < quads).then(|| std::array::from_fn(|c| x.t(r, 4 * chunk(i) + c))))
            .collect();
        let m = slots
            .iter()
            .flatten()
            .flatten()
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let exps: Vec<Option<[f32; 4]>> = slots
            .iter()
            .map(|c| c.map(|c| c.map(|t| (t - m).exp())))
            .collect();
        let lane_sums = exps
            .chunks(v)
            .map(|l| l.iter().flatten().flatten().fold(0.0, |s, &e| s + e));
        let sum = butterfly(lane_sums.collect(), |p, q| p + q);
        x.finish_row(r, m, sum);
        let a = x.coef(r) / sum;
        for (i, e) in exps.iter().enumerate() {
            for (c, &e) in e.iter().flatten().enumerate() {
                x.grad(r, 4 * chunk(i) + c, e, a);
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
        let a = x.coef(r) / sum;
        for (tid, &(mt, _)) in threads.iter().enumerate() {
            let rescale = if mt == f32::NEG_INFINITY {
                0.0
            } else {
                (mt - m).exp()
            };
            for i in 0..per_thread {
                x.grad(r, col(tid, i), exps[tid * per_thread + i], rescale * a);
            }
        }
    }
}

/// XRM's flip (kernels/xrm.cu): the kernel's f64 steps, in its order, one row at a time.
pub(super) fn xrm_flip_targets(a: Args) -> Result<()> {
    let (u, rows, k) = (a.p(1), a.u(3), a.u(4));
    if !u.is_multiple_of(8) {
        return Err(fault("xrm_flip_targets_f32: misaligned `u`".into()));
    }
    let (z, words) = (read::<f32>(a.p(0), rows * k)?, read::<u32>(u, 2 * rows)?);
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
    write(a.p(2), &(0..rows).map(flip).collect::<Vec<_>>())
}
