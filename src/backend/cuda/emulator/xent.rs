//! The cross-entropy kernels (the single-pass ones bespoke, with the same per-thread chunks
//! and butterfly trees; the scalar fallbacks through the CPU reference) and XRM's flip (the
//! kernel's f64 steps).

use super::memory::{fault, screen};
use super::{read, write, Args};
use crate::backend::cpu::CpuStorage;
use crate::backend::cuda::kernels::Kernel;
use crate::backend::cuda::plan::Dim3;
use crate::backend::cuda::xent::{XENT_BLOCK_VR, XENT_BLOCK_VS, XENT_BLOCK_VS_LONG};
use crate::backend::{BackendStorage, XentArgs};
use crate::error::Result;

/// A row as a single-pass kernel reduces it: its max, its exp-sum, and per column its exp
/// value and rescale.
type Row = (f32, f32, Vec<(f32, f32)>);

/// How a single-pass kernel reduces a row (`None`: a fallback kernel).
type RowFn<'a> = Option<&'a dyn Fn(&[f32]) -> Row>;

/// A fused cross-entropy launch (`xent.cu`'s argument list). The single-pass kernels are
/// mirrored: which shapes each handles (the kernel's dispatch on `cols`, `blockDim.x` and
/// shared memory; outside it, nothing is written), float4 alignment faults, and each row's
/// thread partition and reduction tree; then `loss = w·((m − t_y) + ln S)` and `dz = e·a`,
/// `fma(e, a, −coef)` at the label, with `a = rescale · (coef / S)`, `coef = grad_scale · w`.
/// The scalar fallbacks, whose order is not the point, are the CPU reference. Bad labels are
/// read as 0 and their rows written NaN.
pub(super) fn xent(k: Kernel, block: Dim3, smem: u32, a: Args) -> Result<()> {
    use Kernel as K;
    // A float4 access at an address that is not 16-byte aligned faults on a GPU.
    if k.is_vectorized_xent() && [0, 1, 5].iter().any(|&i| !a.p(i).is_multiple_of(16)) {
        return Err(fault(format!("{}: a misaligned float4 access", k.name())));
    }
    let (cols, b) = (a.u(7), block.0 as usize);
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
    let row: RowFn = match k {
        K::XentSmallC | K::XentWarpRow | K::XentBlockRow => None,
        K::XentGroupVec if aligned && (4..=128).contains(&cols) => {
            Some(&|t| vec_row(t, (cols / 4).next_power_of_two(), 1))
        }
        K::XentWarpVec if aligned && (129..=512).contains(&cols) => {
            Some(&|t| vec_row(t, 32, if cols <= 256 { 2 } else { 4 }))
        }
        K::XentWarpVec8 if aligned && (513..=1024).contains(&cols) => Some(&|t| vec_row(t, 32, 8)),
        K::XentBlockVec if block_fits && aligned => Some(&|t| block_row(t, b, vs, true)),
        K::XentBlockScalar if block_fits => Some(&|t| block_row(t, b, vs, false)),
        _ => return Ok(()),
    };
    // `t = z + s` (one rounding, as the kernels); weights 1 when absent.
    let (rows, n, write_grad) = (a.u(6), a.u(6) * cols, a.u(9) != 0);
    let mut t = read::<f32>(a.p(0), n)?;
    if a.p(1) != 0 {
        t.iter_mut()
            .zip(read::<f32>(a.p(1), n)?)
            .for_each(|(t, s)| *t += s);
    }
    let y = read::<u32>(a.p(2), rows)?;
    let (safe, bad) = screen(&y, cols, a.p(10))?;
    let w = match a.p(3) {
        0 => vec![1.0; rows],
        p => read(p, rows)?,
    };
    let (mut loss, mut dz) = match row {
        None => {
            // The same bits as the reference on `z`, `s` and no weights: it forms the same
            // `z + s`, and `1·x = x`.
            let (t, w) = (CpuStorage::new(t), CpuStorage::new(w));
            let (loss, dz) = t.xent(XentArgs {
                shift: None,
                labels: &safe,
                weights: Some(&w),
                rows,
                cols,
                grad_scale: a.f(8),
                write_grad,
            })?;
            (loss.0.to_vec(), dz.map(|g| g.0.to_vec()))
        }
        Some(row) => {
            let (mut loss, mut dz) = (vec![0.0; rows], write_grad.then(|| vec![0.0; n]));
            for r in 0..rows {
                let t = &t[r * cols..(r + 1) * cols];
                let (m, sum, e) = row(t);
                let (label, coef) = (y[r] as usize, a.f(8) * w[r]);
                if label < cols {
                    loss[r] = w[r] * ((m - t[label]) + sum.ln());
                }
                if let Some(dz) = &mut dz {
                    for (j, &(e, rescale)) in e.iter().enumerate() {
                        let a = rescale * (coef / sum);
                        dz[r * cols + j] = if j == label {
                            e.mul_add(a, -coef)
                        } else {
                            e * a
                        };
                    }
                }
            }
            (loss, dz)
        }
    };
    for &r in &bad {
        loss[r] = f32::NAN;
        if let Some(dz) = &mut dz {
            dz[r * cols..(r + 1) * cols].fill(f32::NAN);
        }
    }
    write(a.p(4), &loss)?;
    // (A null `dz` with `write_grad` faults here, as the kernel's write would.)
    dz.map_or(Ok(()), |dz| write(a.p(5), &dz))
}

/// `xent_vec_rows<log2(g), v>`: a group of `g` lanes per row, lane `q` holding the float4
/// chunks `q + g·e`, `e < v`; the max (NaN ignored) over the row, each lane's exp values
/// summed in chunk and component order, then xor butterflies over the group.
fn vec_row(t: &[f32], g: usize, v: usize) -> Row {
    let m = t.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let chunk = |k: usize| t.get(4 * k..4 * k + 4).unwrap_or(&[]);
    let lane = |q: usize| {
        (0..v)
            .flat_map(|e| chunk(q + g * e))
            .fold(0.0, |s, &t| s + (t - m).exp())
    };
    let sum = butterfly((0..g).map(lane).collect(), |p, q| p + q);
    (m, sum, t.iter().map(|&t| ((t - m).exp(), 1.0)).collect())
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
/// NaN-propagating max `mt` and exps `exp(t − mt)` (`t − 0` for an all -inf thread) summed
/// in chunk and component order; the block merges the `(mt, St)` pairs warp by warp, then
/// over the warps' partials; the gradient rescales by `exp(mt − m)`.
fn block_row(t: &[f32], block: usize, vs: usize, vec: bool) -> Row {
    let col = |tid: usize, i: usize| match vec {
        true => 4 * (tid + block * (i / 4)) + i % 4,
        false => tid + block * i,
    };
    let max_nan = |a: f32, b: f32| if a > b || a.is_nan() { a } else { b };
    let base = |mt: f32| if mt == f32::NEG_INFINITY { 0.0 } else { mt };
    let threads: Vec<(f32, f32)> = (0..block)
        .map(|tid| {
            let vals = (0..4 * (XENT_BLOCK_VR + vs))
                .map(|i| *t.get(col(tid, i)).unwrap_or(&f32::NEG_INFINITY));
            let mt = vals.clone().fold(f32::NEG_INFINITY, max_nan);
            (mt, vals.fold(0.0, |s, t| s + (t - base(mt)).exp()))
        })
        .collect();
    let mut partials: Vec<(f32, f32)> = threads
        .chunks(32)
        .map(|w| butterfly(w.to_vec(), lse_merge))
        .collect();
    partials.resize(32, (f32::NEG_INFINITY, 0.0));
    let (m, sum) = butterfly(partials, lse_merge);
    let e = t.iter().enumerate().map(|(j, &t)| {
        let (mt, _) = threads[if vec { j / 4 % block } else { j % block }];
        let rescale = if mt == f32::NEG_INFINITY {
            0.0
        } else {
            (mt - m).exp()
        };
        ((t - base(mt)).exp(), rescale)
    });
    (m, sum, e.collect())
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
