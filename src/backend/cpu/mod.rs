//! The CPU backend: contiguous `Vec<f32>` buffers, loops that the compiler vectorizes, rayon for
//! row-parallel work above `PAR_MIN_ELEMS` (2^15 elements), and packed GEMM kernels of its own
//! (`matrixmultiply` for products below 512 on a side or without AVX-512).
//!
//! Determinism: every output element is computed by one thread in a fixed order, and reductions
//! that span threads use fixed chunk boundaries that do not depend on the thread count, so the
//! same inputs give bitwise-identical outputs with 1 or N threads.
//!
//! Small tensors stay on the calling thread: the paper's models are tiny, and waking a thread
//! pool costs more than the work.

mod gemm;
mod linear_xent;
mod math;
mod optim;
mod packed;
mod pool;
mod simd;
mod small_gemm;
mod xent;

use rayon::prelude::*;

use super::{
    AdamStep, BackendStorage, BinaryOp, LinearXentArgs, LinearXentOut, ReduceOp, SgdStep, UnaryOp,
    XentArgs,
};
use crate::buffer::F32Buffer;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// Elementwise work below this many elements runs on the calling thread.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;
/// Fixed chunk for parallel elementwise loops (independent of the thread count).
pub(crate) const CHUNK: usize = 1 << 13;

/// The most columns that an `m × k` by `(n × k)ᵀ` product stacks with each column keeping
/// the bits of its own product (the dot-product path of `gemm`); see
/// [`Device::stackable_columns`](super::Device::stackable_columns).
pub(crate) fn stackable_columns(k: usize) -> usize {
    gemm::dot_path_width(k)
}

/// Index of the first maximum of `row`; NaN never wins. The rule of `argmax_rows`.
fn argmax_first_max(row: &[f32]) -> usize {
    let mut best = 0usize;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = j;
        }
    }
    best
}

/// Largest softmax probability of `logits` and its class (first on ties), in f64.
fn max_softmax(logits: &[f32]) -> (f64, u32) {
    let mut best = 0usize;
    for (j, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = j;
        }
    }
    let max = logits[best] as f64;
    let total: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    (1.0 / total, best as u32)
}

/// The widest instruction set the crate's own kernels may use: `MEMAWARE_SIMD=avx2` or
/// `portable` caps it below what the CPU has (to measure or test the narrower paths on a
/// wider machine); unset or `avx512`, no cap. Read once per process. (`matrixmultiply`, which
/// runs the large products where the crate has no packed kernel, probes the CPU itself.)
fn simd_cap() -> u8 {
    static CAP: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("MEMAWARE_SIMD").as_deref() {
        Err(_) | Ok("avx512") => 2,
        Ok("avx2") => 1,
        Ok("portable") => 0,
        Ok(other) => {
            eprintln!(
                "memaware: MEMAWARE_SIMD={other:?} is not one of avx512, avx2, portable; ignored"
            );
            2
        }
    })
}

/// Defines a function that says whether the CPU has every listed feature and
/// [`simd_cap`] allows instruction sets of that `$rank` (1: AVX2, 2: AVX-512), probed once
/// per process (so a process never mixes a kernel's two paths).
macro_rules! cpu_features {
    ($(#[$doc:meta])* $name:ident, $rank:literal: $($feature:tt),+) => {
        $(#[$doc])*
        pub(crate) fn $name() -> bool {
            #[cfg(target_arch = "x86_64")]
            {
                static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                *HAS.get_or_init(|| {
                    simd_cap() >= $rank $(&& is_x86_feature_detected!($feature))+
                })
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        }
    };
}

cpu_features!(
    /// AVX2 and FMA (every CPU with AVX2 has FMA; the token promises both). Kernels with an
    /// AVX2 version compute the same bits as their portable version; only the speed differs.
    has_avx2, 1: "avx2", "fma"
);
cpu_features!(
    /// AVX-512F; its kernels, too, give the portable bits.
    has_avx512, 2: "avx512f"
);

/// A host buffer: owned by the tensor, or shared read-only with others (a data set's
/// features, possibly mapped from their file; see [`F32Buffer`]). Ops read either kind the
/// same way and always write new owned buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuStorage(pub F32Buffer);

impl Drop for CpuStorage {
    fn drop(&mut self) {
        // Large owned buffers go back to the pool instead of the allocator (see `pool`);
        // shared and mapped ones belong to someone else.
        if self.0.len() >= pool::MIN_LEN {
            if let Some(v) = self.0.take_owned() {
                pool::give(v);
            }
        }
    }
}

impl CpuStorage {
    /// Storage that owns `values`.
    pub fn new(values: Vec<f32>) -> CpuStorage {
        CpuStorage(F32Buffer::new(values))
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
}

/// `out[i] = f(x[i])`, in parallel chunks when large.
fn map_unary(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    if x.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| math::map(i, o, &f));
    } else {
        math::map(x, &mut out, &f);
    }
    out
}

/// `out[i] = f(a[i], b[i])` for equal lengths.
fn map_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    if a.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    *o = f(x, y)
                }
            });
    } else {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y)
        }
    }
    out
}

/// Binary map with NumPy broadcasting, with fast paths for the layouts training uses:
/// equal shapes, a scalar operand, a row vector over a matrix and a column over a matrix.
fn map_broadcast(
    a: &[f32],
    b: &[f32],
    a_shape: &Shape,
    b_shape: &Shape,
    out: &Shape,
    f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy,
) -> Vec<f32> {
    let n = out.elem_count();
    if n == 0 {
        return Vec::new();
    }
    if a.len() == n && b.len() == n {
        return map_zip(a, b, f);
    }
    if b.len() == 1 && a.len() == n {
        let s = b[0];
        return map_unary(a, move |x| f(x, s));
    }
    if a.len() == 1 && b.len() == n {
        let s = a[0];
        return map_unary(b, move |y| f(s, y));
    }
    let mut o = vec![0.0f32; n];
    let last = out.dims().last().copied().unwrap_or(1);
    // Row vector: the small operand's length equals the last dimension and it is
    // broadcast over all leading dimensions.
    let is_row = |s: &Shape, len: usize| {
        len == last && s.dims().last().copied() == Some(last) && len * (n / last.max(1)) == n
    };
    if a.len() == n && is_row(b_shape, b.len()) {
        o.chunks_mut(last).zip(a.chunks(last)).for_each(|(o, a)| {
            o.iter_mut()
                .zip(a)
                .zip(b)
                .for_each(|((o, &x), &y)| *o = f(x, y))
        });
        return o;
    }
    if b.len() == n && is_row(a_shape, a.len()) {
        o.chunks_mut(last).zip(b.chunks(last)).for_each(|(o, b)| {
            o.iter_mut()
                .zip(a)
                .zip(b)
                .for_each(|((o, &x), &y)| *o = f(x, y))
        });
        return o;
    }
    // Column: (R, 1) against (R, C).
    if out.rank() == 2 && a.len() == n && b_shape.dims() == [out.dims()[0], 1] {
        o.chunks_mut(last)
            .zip(a.chunks(last))
            .zip(b)
            .for_each(|((o, a), &y)| o.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x, y)));
        return o;
    }
    if out.rank() == 2 && b.len() == n && a_shape.dims() == [out.dims()[0], 1] {
        o.chunks_mut(last)
            .zip(b.chunks(last))
            .zip(a)
            .for_each(|((o, b), &x)| o.iter_mut().zip(b).for_each(|(o, &y)| *o = f(x, y)));
        return o;
    }
    // General case: odometer over the output index.
    let sa = a_shape.broadcast_strides(out);
    let sb = b_shape.broadcast_strides(out);
    let dims = out.dims();
    let mut idx = vec![0usize; dims.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    for v in o.iter_mut() {
        *v = f(a[ia], b[ib]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < dims[d] {
                break;
            }
            ia -= sa[d] * dims[d];
            ib -= sb[d] * dims[d];
            idx[d] = 0;
        }
    }
    o
}

fn check_index(op: &'static str, idx: &[u32], size: usize) -> Result<()> {
    if let Some((p, &i)) = idx.iter().enumerate().find(|(_, &i)| i as usize >= size) {
        return Err(Error::IndexOutOfRange {
            op,
            position: p,
            index: i as usize,
            size,
        });
    }
    Ok(())
}

impl BackendStorage for CpuStorage {
    type Index = Vec<u32>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        Ok(self.0.to_vec())
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        let x = &self.0;
        let out = match op {
            UnaryOp::Neg => map_unary(x, |v| -v),
            UnaryOp::Exp => map_unary(x, math::exp),
            UnaryOp::Log => map_unary(x, f32::ln),
            UnaryOp::Tanh => map_unary(x, math::tanh),
            UnaryOp::Relu => map_unary(x, |v| if v > 0.0 { v } else { 0.0 }),
            UnaryOp::Sigmoid => map_unary(x, |v| 1.0 / (1.0 + math::exp(-v))),
            UnaryOp::Sqrt => map_unary(x, f32::sqrt),
            UnaryOp::Square => map_unary(x, |v| v * v),
            UnaryOp::Recip => map_unary(x, |v| 1.0 / v),
            UnaryOp::Step => map_unary(x, |v| if v > 0.0 { 1.0 } else { 0.0 }),
            UnaryOp::Affine { mul, add } => map_unary(x, move |v| mul * v + add),
            UnaryOp::Powf(p) => map_unary(x, move |v| v.powf(p)),
        };
        Ok(CpuStorage::new(out))
    }

    fn binary(
        &self,
        rhs: &Self,
        op: BinaryOp,
        lhs_shape: &Shape,
        rhs_shape: &Shape,
        out: &Shape,
    ) -> Result<Self> {
        let (a, b) = (&self.0, &rhs.0);
        let o = match op {
            BinaryOp::Add => map_broadcast(a, b, lhs_shape, rhs_shape, out, |x, y| x + y),
            BinaryOp::Sub => map_broadcast(a, b, lhs_shape, rhs_shape, out, |x, y| x - y),
            BinaryOp::Mul => map_broadcast(a, b, lhs_shape, rhs_shape, out, |x, y| x * y),
            BinaryOp::Div => map_broadcast(a, b, lhs_shape, rhs_shape, out, |x, y| x / y),
            BinaryOp::Maximum => map_broadcast(a, b, lhs_shape, rhs_shape, out, f32::max),
            BinaryOp::Eq => map_broadcast(a, b, lhs_shape, rhs_shape, out, |x, y| {
                if x == y {
                    1.0
                } else {
                    0.0
                }
            }),
        };
        Ok(CpuStorage::new(o))
    }

    fn where_cond(&self, on_true: &Self, on_false: &Self) -> Result<Self> {
        let out = self
            .0
            .iter()
            .zip(on_true.0.iter().zip(&on_false.0))
            .map(|(&m, (&t, &f))| if m != 0.0 { t } else { f })
            .collect();
        Ok(CpuStorage::new(out))
    }

    fn reduce(&self, op: ReduceOp, outer: usize, len: usize, inner: usize) -> Result<Self> {
        let x = &self.0;
        let init = match op {
            ReduceOp::Sum => 0.0f32,
            ReduceOp::Max => f32::NEG_INFINITY,
        };
        let combine = move |acc: f32, v: f32| match op {
            ReduceOp::Sum => acc + v,
            ReduceOp::Max => acc.max(v),
        };
        let mut out = vec![init; outer * inner];
        if out.is_empty() {
            // A zero-size result (an empty dimension besides the reduced one).
            return Ok(CpuStorage::new(out));
        }
        let reduce_block = |o: &mut [f32], block: &[f32]| {
            // block is len × inner; each output column is accumulated in row order.
            for row in block.chunks(inner) {
                for (acc, &v) in o.iter_mut().zip(row) {
                    *acc = combine(*acc, v);
                }
            }
        };
        if outer * len * inner >= PAR_MIN_ELEMS && outer > 1 {
            out.par_chunks_mut(inner)
                .zip(x.par_chunks(len * inner))
                .for_each(|(o, b)| reduce_block(o, b));
        } else if outer == 1 && inner >= 64 && len * inner >= PAR_MIN_ELEMS {
            // Column sums of a tall matrix: split the columns, never the rows.
            out.par_chunks_mut(64).enumerate().for_each(|(c, o)| {
                let c0 = c * 64;
                for r in 0..len {
                    let row = &x[r * inner + c0..r * inner + c0 + o.len()];
                    for (acc, &v) in o.iter_mut().zip(row) {
                        *acc = combine(*acc, v);
                    }
                }
            });
        } else {
            out.chunks_mut(inner)
                .zip(x.chunks(len * inner))
                .for_each(|(o, b)| reduce_block(o, b));
        }
        Ok(CpuStorage::new(out))
    }

    fn matmul(
        &self,
        rhs: &Self,
        m: usize,
        k: usize,
        n: usize,
        lhs_t: bool,
        rhs_t: bool,
    ) -> Result<Self> {
        Ok(CpuStorage::new(gemm::matmul(
            &self.0, &rhs.0, m, k, n, lhs_t, rhs_t,
        )))
    }

    fn index_select_rows(&self, cols: usize, idx: &Vec<u32>) -> Result<Self> {
        let rows = self.0.len().checked_div(cols).unwrap_or(0);
        check_index("index_select", idx, rows)?;
        let mut out = Vec::with_capacity(idx.len() * cols);
        for &i in idx {
            let i = i as usize;
            out.extend_from_slice(&self.0[i * cols..(i + 1) * cols]);
        }
        Ok(CpuStorage::new(out))
    }

    fn index_add_rows(&self, cols: usize, idx: &Vec<u32>, out_rows: usize) -> Result<Self> {
        check_index("index_add", idx, out_rows)?;
        let mut out = vec![0.0f32; out_rows * cols];
        for (r, &i) in idx.iter().enumerate() {
            let i = i as usize;
            let dst = &mut out[i * cols..(i + 1) * cols];
            for (d, &s) in dst.iter_mut().zip(&self.0[r * cols..(r + 1) * cols]) {
                *d += s;
            }
        }
        Ok(CpuStorage::new(out))
    }

    fn gather_cols(&self, rows: usize, cols: usize, idx: &Vec<u32>) -> Result<Self> {
        check_index("gather", idx, cols)?;
        Ok(CpuStorage::new(
            (0..rows)
                .map(|r| self.0[r * cols + idx[r] as usize])
                .collect(),
        ))
    }

    fn scatter_cols(&self, rows: usize, cols: usize, idx: &Vec<u32>) -> Result<Self> {
        check_index("scatter", idx, cols)?;
        let mut out = vec![0.0f32; rows * cols];
        for r in 0..rows {
            out[r * cols + idx[r] as usize] = self.0[r];
        }
        Ok(CpuStorage::new(out))
    }

    fn copy2d(
        &self,
        dst: &mut Self,
        rows: usize,
        cols: usize,
        src_stride: usize,
        dst_stride: usize,
        src_offset: usize,
        dst_offset: usize,
    ) -> Result<()> {
        for r in 0..rows {
            let s = src_offset + r * src_stride;
            let d = dst_offset + r * dst_stride;
            dst.0[d..d + cols].copy_from_slice(&self.0[s..s + cols]);
        }
        Ok(())
    }

    fn transpose2d(&self, rows: usize, cols: usize) -> Result<Self> {
        let mut out = vec![0.0f32; rows * cols];
        const B: usize = 32;
        for r0 in (0..rows).step_by(B) {
            for c0 in (0..cols).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    for c in c0..(c0 + B).min(cols) {
                        out[c * rows + r] = self.0[r * cols + c];
                    }
                }
            }
        }
        Ok(CpuStorage::new(out))
    }

    fn softmax_rows(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let mut out = vec![0.0f32; rows * cols];
        let row_op = |o: &mut [f32], x: &[f32]| {
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            o.copy_from_slice(x);
            let sum = math::exp_shifted_sum(o, m, [&[], &[]]);
            if log {
                let lse = m + math::ln_of_sum(sum);
                o.iter_mut().zip(x).for_each(|(o, &v)| *o = v - lse);
            } else {
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|o| *o *= inv);
            }
        };
        if cols == 0 {
            return Ok(CpuStorage::new(out));
        }
        if rows * cols >= PAR_MIN_ELEMS {
            out.par_chunks_mut(cols)
                .zip(self.0.par_chunks(cols))
                .for_each(|(o, x)| row_op(o, x));
        } else {
            out.chunks_mut(cols)
                .zip(self.0.chunks(cols))
                .for_each(|(o, x)| row_op(o, x));
        }
        Ok(CpuStorage::new(out))
    }

    fn argmax_rows(&self, rows: usize, cols: usize) -> Result<Vec<u32>> {
        Ok((0..rows)
            .map(|r| argmax_first_max(&self.0[r * cols..(r + 1) * cols]) as u32)
            .collect())
    }

    fn xent(&self, args: XentArgs<'_, Self, Vec<u32>>) -> Result<(Self, Option<Self>)> {
        xent::shifted_xent(self, args)
    }

    fn xent_total(&self, args: XentArgs<'_, Self, Vec<u32>>) -> Result<(Self, Option<Self>)> {
        xent::shifted_xent_total(self, args)
    }

    fn linear_xent(&self, a: LinearXentArgs<'_, Self, Vec<u32>>) -> Result<LinearXentOut<Self>> {
        if a.xent.cols > linear_xent::MAX_CLASSES {
            return super::linear_xent_composite(self, a);
        }
        linear_xent::linear_xent(&self.0, a)
    }

    fn flip_targets(&self, rows: usize, cols: usize, uniforms: &[f64]) -> Result<Vec<Option<u32>>> {
        if cols < 2 {
            return Ok(vec![None; rows]);
        }
        Ok(self.0[..rows * cols]
            .chunks_exact(cols)
            .zip(uniforms)
            .map(|(row, &u)| {
                let (p, yhat) = max_softmax(row);
                (u < super::flip_probability(p, cols)).then_some(yhat)
            })
            .collect())
    }

    fn sum_all(&self) -> Result<Self> {
        Ok(CpuStorage::new(vec![sum_fixed_order(&self.0)]))
    }

    fn sgd_update(
        &mut self,
        grad: &Self,
        momentum_buf: Option<&mut Self>,
        h: SgdStep,
    ) -> Result<()> {
        optim::sgd(&mut self.0, &grad.0, momentum_buf.map(|b| &mut b.0[..]), h);
        Ok(())
    }

    fn adam_update(&mut self, grad: &Self, m: &mut Self, v: &mut Self, h: AdamStep) -> Result<()> {
        optim::adam(&mut self.0, &grad.0, &mut m.0, &mut v.0, h);
        Ok(())
    }
}

/// Sum with a fixed association: blocks of [`CHUNK`], each summed in 8 interleaved lanes
/// (then a fixed tree), then the block sums left to right. Independent of the thread count;
/// the lanes also cut the rounding error of a long sequential sum by about 8×.
pub(crate) fn sum_fixed_order(x: &[f32]) -> f32 {
    if x.len() >= PAR_MIN_ELEMS {
        let partial: Vec<f32> = x.par_chunks(CHUNK).map(block_sum).collect();
        sum_blocks(partial)
    } else {
        sum_blocks(x.chunks(CHUNK).map(block_sum))
    }
}

/// One block of [`sum_fixed_order`] (at most [`CHUNK`] values): 8 interleaved lanes, the
/// fixed tree, then the tail in order.
pub(crate) fn block_sum(c: &[f32]) -> f32 {
    block_sum_from([0.0; 8], 0, c)
}

/// [`block_sum`] of `c` where `lanes` already holds its lanes' sums over `c[..done]` (`done` a
/// multiple of 8): for a kernel that added its outputs up as it wrote them.
pub(crate) fn block_sum_from(mut lanes: [f32; 8], done: usize, c: &[f32]) -> f32 {
    debug_assert!(done.is_multiple_of(8) && done <= c.len());
    let body = c.len() / 8 * 8;
    for chunk in c[done.min(body)..body].chunks_exact(8) {
        for l in 0..8 {
            lanes[l] += chunk[l];
        }
    }
    let mut s = math::tree8(lanes);
    for &v in &c[body..] {
        s += v;
    }
    s
}

/// The block sums of [`sum_fixed_order`], added left to right.
pub(crate) fn sum_blocks(blocks: impl IntoIterator<Item = f32>) -> f32 {
    blocks.into_iter().sum()
}

/// A rayon pool of `threads` threads, for the tests that compare thread counts.
#[cfg(test)]
fn test_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_softmax_matches_the_definition() {
        let (p, c) = max_softmax(&[0.0, (3.0f32).ln(), 0.0]);
        assert_eq!(c, 1);
        assert!((p - 0.6).abs() < 1e-7);
        let (p, c) = max_softmax(&[2.0, 2.0]);
        assert_eq!((p, c), (0.5, 0));
    }
}
