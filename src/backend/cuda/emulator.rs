//! A host emulator of the kernels, for testing everything above them without a GPU.
//!
//! [`super::CudaDevice::emulated`] gives a device whose buffers live in host memory and whose
//! launches run here: each kernel is re-implemented sequentially from its contract in
//! kernels/README.md (ranges of columns a variant handles, what it leaves unwritten, error
//! flags, split-K and two-stage slabs, which launch shapes are required exactly), so the
//! backend's choice of kernels, grids, strides, leading dimensions and offsets, its index
//! checks, pool and poisoning can be exercised and compared with the CPU backend. The
//! single-pass cross-entropy kernels and the XRM flip are mirrored more closely: the same
//! per-thread partition of each row and the same reduction trees (the flip: the same f64
//! steps, hence the same bits as the CPU path). It says nothing about the real kernels'
//! speed or their last-bit rounding (CUDA's `expf` is not Rust's): the GPU tests do.
//!
//! Memory: every buffer is registered with its address range. A kernel argument is resolved
//! to the live buffer that contains it, and every element access is bounds-checked against
//! that buffer; an access outside one is reported as a device fault (an error), like
//! `CUDA_ERROR_ILLEGAL_ADDRESS`. Fresh buffers are filled with all-ones bytes (NaN), like
//! unpredictable device memory.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;

use super::kernels::Kernel;
use super::launch::Value as Arg;
use crate::error::{Error, Result};

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
    /// Words the buffer exposes (its registered length).
    len: usize,
    /// 256-byte units allocated.
    units: usize,
}

// SAFETY: the buffer is plain heap memory owned by this value; concurrent access goes
// through raw pointers to distinct buffers (ops never share an output buffer).
unsafe impl Send for HostBuf {}
// SAFETY: as above; `&HostBuf` exposes only the address and length.
unsafe impl Sync for HostBuf {}

impl HostBuf {
    /// `len` words of all-ones bytes (at least one word, so every buffer has an address).
    pub(super) fn new(len: usize) -> HostBuf {
        let len = len.max(1);
        let units = len.div_ceil(64);
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
        // SAFETY: `ptr` and `units` come from `Box::into_raw` of a boxed slice of `units`
        // `Aligned256` in `new`, and are freed exactly once, here.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr as *mut Aligned256,
                self.units,
            )))
        };
    }
}

/// The words from `addr` to the end of the live buffer containing it; accesses outside
/// them record a fault instead of touching memory.
struct View<'f> {
    base: *mut u32,
    len: usize,
    fault: &'f Cell<Option<String>>,
    name: &'static str,
}

impl View<'_> {
    fn is_null(&self) -> bool {
        self.base.is_null()
    }

    fn ok(&self, i: usize) -> bool {
        if i < self.len {
            return true;
        }
        // Keep the first fault.
        let first = self.fault.take();
        self.fault.set(first.or_else(|| {
            Some(format!(
                "{}: access to element {i} of a buffer with {} elements from this address",
                self.name, self.len
            ))
        }));
        false
    }

    fn u(&self, i: usize) -> u32 {
        if self.ok(i) {
            // SAFETY: `i < len`, and `base..base + len` lies inside a live buffer (resolved in
            // `view`) that the launching op keeps alive.
            unsafe { self.base.add(i).read() }
        } else {
            u32::MAX
        }
    }

    fn f(&self, i: usize) -> f32 {
        f32::from_bits(self.u(i))
    }

    fn set_u(&self, i: usize, v: u32) {
        if self.ok(i) {
            // SAFETY: as in `u`.
            unsafe { self.base.add(i).write(v) }
        }
    }

    fn set_f(&self, i: usize, v: f32) {
        self.set_u(i, v.to_bits())
    }
}

fn resolve(addr: u64) -> Result<(u64, usize)> {
    let live = LIVE
        .lock()
        .map_err(|_| Error::Cuda("emulator: buffer registry poisoned".into()))?;
    if let Some((&start, &len)) = live.range(..=addr).next_back() {
        let end = start + 4 * len as u64;
        if addr < end && (addr - start).is_multiple_of(4) {
            return Ok((start, len));
        }
    }
    Err(Error::Cuda(format!(
        "emulator: address {addr:#x} is not inside a live buffer"
    )))
}

/// Sets `words` words at `addr` to the byte pattern `byte`.
pub(super) fn memset(addr: u64, words: usize, byte: u8) -> Result<()> {
    let fault = Cell::new(None);
    let v = view(addr, &fault, "memset")?;
    let word = u32::from_ne_bytes([byte; 4]);
    for i in 0..words {
        v.set_u(i, word);
    }
    finish(fault)
}

/// Copies `words` words from `src` to `dst`.
pub(super) fn copy(src: u64, dst: u64, words: usize) -> Result<()> {
    let fault = Cell::new(None);
    let (s, d) = (view(src, &fault, "copy")?, view(dst, &fault, "copy")?);
    for i in 0..words {
        d.set_u(i, s.u(i));
    }
    finish(fault)
}

/// Writes host words to `addr`.
pub(super) fn write(addr: u64, data: &[u32]) -> Result<()> {
    let fault = Cell::new(None);
    let v = view(addr, &fault, "upload")?;
    for (i, &w) in data.iter().enumerate() {
        v.set_u(i, w);
    }
    finish(fault)
}

/// Reads `len` words from `addr`.
pub(super) fn read(addr: u64, len: usize) -> Result<Vec<u32>> {
    let fault = Cell::new(None);
    let v = view(addr, &fault, "download")?;
    let out = (0..len).map(|i| v.u(i)).collect();
    finish(fault)?;
    Ok(out)
}

fn view<'f>(addr: u64, fault: &'f Cell<Option<String>>, name: &'static str) -> Result<View<'f>> {
    if addr == 0 {
        return Ok(View {
            base: std::ptr::null_mut(),
            len: 0,
            fault,
            name,
        });
    }
    let (start, len) = resolve(addr)?;
    let skip = ((addr - start) / 4) as usize;
    Ok(View {
        base: addr as *mut u32,
        len: len - skip,
        fault,
        name,
    })
}

fn finish(fault: Cell<Option<String>>) -> Result<()> {
    match fault.take() {
        None => Ok(()),
        Some(f) => Err(Error::Cuda(format!("emulated device fault: {f}"))),
    }
}

/// Kernel arguments by position (their kinds were checked against the kernel's table).
struct Args<'a, 'f> {
    args: &'a [Arg],
    fault: &'f Cell<Option<String>>,
    name: &'static str,
}

impl<'f> Args<'_, 'f> {
    /// The address of pointer argument `i` (0 for anything else).
    fn addr(&self, i: usize) -> u64 {
        match self.args[i] {
            Arg::Ptr(a) => a,
            _ => 0,
        }
    }

    fn p(&self, i: usize) -> Result<View<'f>> {
        match self.args[i] {
            Arg::Ptr(a) => view(a, self.fault, self.name),
            _ => Err(Error::Cuda(format!(
                "emulator: {}: argument {i} is not a pointer",
                self.name
            ))),
        }
    }
    fn u(&self, i: usize) -> usize {
        match self.args[i] {
            Arg::U32(v) => v as usize,
            Arg::Usize(v) => v as usize,
            _ => usize::MAX,
        }
    }
    fn f(&self, i: usize) -> f32 {
        match self.args[i] {
            Arg::F32(v) => v,
            _ => f32::NAN,
        }
    }
}

fn max_nan(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

fn argmax_better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if bv.is_nan() {
        return v.is_nan() && i < bi;
    }
    if v.is_nan() {
        return true;
    }
    v > bv || (v == bv && i < bi)
}

fn require_block(name: &str, block: (u32, u32, u32), want: (u32, u32, u32)) -> Result<()> {
    if block != want {
        return Err(Error::Cuda(format!(
            "emulator: {name} needs block {want:?} exactly, launched with {block:?}"
        )));
    }
    Ok(())
}

/// Runs one launch on the host.
pub(super) fn run(
    kernel: Kernel,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem_bytes: u32,
    args: &[Arg],
) -> Result<()> {
    let fault = Cell::new(None);
    let a = Args {
        args,
        fault: &fault,
        name: kernel.name(),
    };
    let name = kernel.name();
    if block.0 * block.1 * block.2 > 1024 || !block.0.is_multiple_of(32) {
        return Err(Error::Cuda(format!(
            "emulator: {name}: bad block {block:?}"
        )));
    }
    use Kernel as K;
    match kernel {
        K::Neg
        | K::Exp
        | K::Log
        | K::Tanh
        | K::Relu
        | K::Sigmoid
        | K::Sqrt
        | K::Square
        | K::Recip
        | K::Step => {
            let (x, y, n) = (a.p(0)?, a.p(1)?, a.u(2));
            let f = |v: f32| -> f32 {
                match kernel {
                    K::Neg => -v,
                    K::Exp => v.exp(),
                    K::Log => v.ln(),
                    K::Tanh => v.tanh(),
                    K::Relu => {
                        if v < 0.0 {
                            0.0
                        } else {
                            v
                        }
                    }
                    K::Sigmoid => {
                        if v >= 0.0 {
                            1.0 / (1.0 + (-v).exp())
                        } else {
                            let e = v.exp();
                            e / (1.0 + e)
                        }
                    }
                    K::Sqrt => v.sqrt(),
                    K::Square => v * v,
                    K::Recip => 1.0 / v,
                    _ => {
                        if v > 0.0 {
                            1.0
                        } else {
                            0.0
                        }
                    }
                }
            };
            for i in 0..n {
                y.set_f(i, f(x.f(i)));
            }
        }
        K::Affine => {
            let (x, y, n, m, c) = (a.p(0)?, a.p(1)?, a.u(2), a.f(3), a.f(4));
            for i in 0..n {
                y.set_f(i, m.mul_add(x.f(i), c));
            }
        }
        K::Powf => {
            let (x, y, n, p) = (a.p(0)?, a.p(1)?, a.u(2), a.f(3));
            for i in 0..n {
                y.set_f(i, x.f(i).powf(p));
            }
        }
        K::Fill => {
            let (y, n, v) = (a.p(0)?, a.u(1), a.f(2));
            for i in 0..n {
                y.set_f(i, v);
            }
        }
        K::Add
        | K::Sub
        | K::Mul
        | K::Div
        | K::Maximum
        | K::Eq
        | K::AddBcast
        | K::SubBcast
        | K::MulBcast
        | K::DivBcast
        | K::MaximumBcast
        | K::EqBcast => {
            let op = |x: f32, y: f32| -> f32 {
                match kernel {
                    K::Add | K::AddBcast => x + y,
                    K::Sub | K::SubBcast => x - y,
                    K::Mul | K::MulBcast => x * y,
                    K::Div | K::DivBcast => x / y,
                    K::Maximum | K::MaximumBcast => {
                        if x.is_nan() || x > y {
                            x
                        } else {
                            y
                        }
                    }
                    _ => {
                        if x == y {
                            1.0
                        } else {
                            0.0
                        }
                    }
                }
            };
            let (x, y, out) = (a.p(0)?, a.p(1)?, a.p(2)?);
            let bcast = matches!(
                kernel,
                K::AddBcast
                    | K::SubBcast
                    | K::MulBcast
                    | K::DivBcast
                    | K::MaximumBcast
                    | K::EqBcast
            );
            if !bcast {
                for i in 0..a.u(3) {
                    out.set_f(i, op(x.f(i), y.f(i)));
                }
            } else {
                let (n, d1, d2, d3) = (a.u(3), a.u(4), a.u(5), a.u(6));
                let sa = [a.u(7), a.u(8), a.u(9), a.u(10)];
                let sb = [a.u(11), a.u(12), a.u(13), a.u(14)];
                if d1 == 0 || d2 == 0 || d3 == 0 {
                    return Err(Error::Cuda(format!("emulator: {name}: zero dimension")));
                }
                for i in 0..n {
                    let mut r = i;
                    let c3 = r % d3;
                    r /= d3;
                    let c2 = r % d2;
                    r /= d2;
                    let c1 = r % d1;
                    let c0 = r / d1;
                    let ia = c0 * sa[0] + c1 * sa[1] + c2 * sa[2] + c3 * sa[3];
                    let ib = c0 * sb[0] + c1 * sb[1] + c2 * sb[2] + c3 * sb[3];
                    out.set_f(i, op(x.f(ia), y.f(ib)));
                }
            }
        }
        K::WhereCond => {
            let (m, t, f, out, n) = (a.p(0)?, a.p(1)?, a.p(2)?, a.p(3)?, a.u(4));
            for i in 0..n {
                out.set_f(i, if m.f(i) != 0.0 { t.f(i) } else { f.f(i) });
            }
        }
        K::SumAxisWarp
        | K::MaxAxisWarp
        | K::SumAxisBlock
        | K::MaxAxisBlock
        | K::SumAxisCols
        | K::MaxAxisCols => {
            let is_max = matches!(kernel, K::MaxAxisWarp | K::MaxAxisBlock | K::MaxAxisCols);
            let (init, comb): (f32, fn(f32, f32) -> f32) = if is_max {
                (f32::NEG_INFINITY, max_nan)
            } else {
                (0.0, |p, q| p + q)
            };
            let (x, out) = (a.p(0)?, a.p(1)?);
            let (outer, len, inner, z, tiles) = match kernel {
                K::SumAxisWarp | K::MaxAxisWarp => (a.u(2), a.u(3), 1, 1, usize::MAX),
                K::SumAxisBlock | K::MaxAxisBlock => {
                    require_block(name, block, (256, 1, 1))?;
                    (a.u(2), a.u(3), a.u(4), 1, usize::MAX)
                }
                _ => {
                    require_block(name, block, (32, 8, 1))?;
                    (a.u(2), a.u(3), a.u(4), grid.2 as usize, grid.0 as usize)
                }
            };
            let chunk = len.div_ceil(z.max(1));
            for zi in 0..z {
                let begin = len.min(zi * chunk);
                let end = if len - begin < chunk {
                    len
                } else {
                    begin + chunk
                };
                for o in 0..outer {
                    // Column tiles cover only 32 · gridDim.x columns.
                    for k in 0..inner.min(tiles.saturating_mul(32)) {
                        let mut acc = init;
                        for l in begin..end {
                            acc = comb(acc, x.f((o * len + l) * inner + k));
                        }
                        out.set_f(zi * outer * inner + o * inner + k, acc);
                    }
                }
            }
        }
        K::ArgmaxRows => {
            let (x, rows, cols, out) = (a.p(0)?, a.u(1), a.u(2), a.p(3)?);
            for r in 0..rows {
                let (mut best, mut bi) = (f32::NEG_INFINITY, u32::MAX);
                for j in 0..cols {
                    let v = x.f(r * cols + j);
                    if argmax_better(v, j as u32, best, bi) {
                        best = v;
                        bi = j as u32;
                    }
                }
                out.set_u(r, bi);
            }
        }
        K::IndexSelectRows | K::IndexAddRows => {
            let (src, idx, dst) = (a.p(0)?, a.p(1)?, a.p(2)?);
            let (n_idx, cols, rows, bad) = (a.u(3), a.u(4), a.u(5), a.p(6)?);
            for r in 0..n_idx {
                let t = idx.u(r) as usize;
                if t >= rows {
                    flag(&bad, r);
                }
                for c in 0..cols {
                    if kernel == K::IndexSelectRows {
                        let v = if t < rows {
                            src.f(t * cols + c)
                        } else {
                            f32::NAN
                        };
                        dst.set_f(r * cols + c, v);
                    } else if t < rows {
                        dst.set_f(t * cols + c, dst.f(t * cols + c) + src.f(r * cols + c));
                    }
                }
            }
        }
        K::GatherCols => {
            let (x, labels, out, rows, cols, bad) =
                (a.p(0)?, a.p(1)?, a.p(2)?, a.u(3), a.u(4), a.p(5)?);
            for i in 0..rows {
                let l = labels.u(i) as usize;
                if l < cols {
                    out.set_f(i, x.f(i * cols + l));
                } else {
                    out.set_f(i, f32::NAN);
                    flag(&bad, i);
                }
            }
        }
        K::ScatterCols => {
            let (g, labels, out, rows, cols, bad) =
                (a.p(0)?, a.p(1)?, a.p(2)?, a.u(3), a.u(4), a.p(5)?);
            for i in 0..rows {
                let l = labels.u(i) as usize;
                for c in 0..cols {
                    out.set_f(i * cols + c, if c == l { g.f(i) } else { 0.0 });
                }
                if l >= cols {
                    flag(&bad, i);
                }
            }
        }
        K::Copy2d => {
            let (src, dst) = (a.p(0)?, a.p(1)?);
            let (rows, cols, ss, ds, so, dof) = (a.u(2), a.u(3), a.u(4), a.u(5), a.u(6), a.u(7));
            for r in 0..rows {
                for c in 0..cols {
                    dst.set_f(dof + r * ds + c, src.f(so + r * ss + c));
                }
            }
        }
        K::Transpose2d => {
            require_block(name, block, (32, 8, 1))?;
            let (src, dst, rows, cols) = (a.p(0)?, a.p(1)?, a.u(2), a.u(3));
            for r in 0..rows {
                for c in 0..cols {
                    dst.set_f(c * rows + r, src.f(r * cols + c));
                }
            }
        }
        K::SoftmaxSmallC
        | K::LogSoftmaxSmallC
        | K::SoftmaxWarpRow
        | K::LogSoftmaxWarpRow
        | K::SoftmaxBlockRow
        | K::LogSoftmaxBlockRow => {
            let log = matches!(
                kernel,
                K::LogSoftmaxSmallC | K::LogSoftmaxWarpRow | K::LogSoftmaxBlockRow
            );
            let (x, y, rows, cols) = (a.p(0)?, a.p(1)?, a.u(2), a.u(3));
            let handles = match kernel {
                K::SoftmaxSmallC | K::LogSoftmaxSmallC => (1..=32).contains(&cols),
                K::SoftmaxWarpRow | K::LogSoftmaxWarpRow => (33..=1024).contains(&cols),
                _ => {
                    require_block(name, block, (256, 1, 1))?;
                    true
                }
            };
            if handles {
                for r in 0..rows {
                    let row: Vec<f32> = (0..cols).map(|j| x.f(r * cols + j)).collect();
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
                    for (j, &v) in row.iter().enumerate() {
                        y.set_f(
                            r * cols + j,
                            if log {
                                (v - m) - s.ln()
                            } else {
                                (v - m).exp() / s
                            },
                        );
                    }
                }
            }
        }
        K::XentSmallC | K::XentWarpRow | K::XentBlockRow => {
            let (z, s, y, w, loss, dz) = (a.p(0)?, a.p(1)?, a.p(2)?, a.p(3)?, a.p(4)?, a.p(5)?);
            let (rows, cols, scale, write_grad, bad) =
                (a.u(6), a.u(7), a.f(8), a.u(9) != 0, a.p(10)?);
            let handles = match kernel {
                K::XentSmallC => (1..=32).contains(&cols),
                K::XentWarpRow => (33..=1024).contains(&cols),
                _ => {
                    require_block(name, block, (256, 1, 1))?;
                    true
                }
            };
            if write_grad && dz.is_null() {
                return Err(Error::Cuda(format!(
                    "emulator: {name}: write_grad without dz"
                )));
            }
            if handles {
                for r in 0..rows {
                    let t: Vec<f32> = (0..cols)
                        .map(|j| {
                            let i = r * cols + j;
                            if s.is_null() {
                                z.f(i)
                            } else {
                                z.f(i) + s.f(i)
                            }
                        })
                        .collect();
                    let label = y.u(r) as usize;
                    let is_bad = label >= cols;
                    let m = t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = t.iter().map(|&v| (v - m).exp()).sum();
                    let wi = if w.is_null() { 1.0 } else { w.f(r) };
                    let l = if is_bad {
                        f32::NAN
                    } else {
                        wi * ((m - t[label]) + sum.ln())
                    };
                    loss.set_f(r, l);
                    if is_bad {
                        flag(&bad, r);
                    }
                    if write_grad {
                        let coef = scale * wi;
                        for (j, &v) in t.iter().enumerate() {
                            let g = if is_bad {
                                f32::NAN
                            } else {
                                coef * ((v - m).exp() / sum - if j == label { 1.0 } else { 0.0 })
                            };
                            dz.set_f(r * cols + j, g);
                        }
                    }
                }
            }
        }
        K::XentGroupVec
        | K::XentWarpVec
        | K::XentWarpVec8
        | K::XentBlockVec
        | K::XentBlockScalar => {
            let vec = kernel != K::XentBlockScalar;
            if vec {
                // A float4 access at an address that is not 16-byte aligned faults on a GPU.
                for (i, what) in [(0, "z"), (1, "s"), (5, "dz")] {
                    if !a.addr(i).is_multiple_of(16) {
                        return Err(Error::Cuda(format!(
                            "emulated device fault: {name}: misaligned address of `{what}`"
                        )));
                    }
                }
            }
            let x = XentArgs {
                z: a.p(0)?,
                s: a.p(1)?,
                y: a.p(2)?,
                w: a.p(3)?,
                loss: a.p(4)?,
                dz: a.p(5)?,
                rows: a.u(6),
                cols: a.u(7),
                grad_scale: a.f(8),
                write_grad: a.u(9) != 0,
                bad: a.p(10)?,
            };
            if x.write_grad && x.dz.is_null() {
                return Err(Error::Cuda(format!(
                    "emulator: {name}: write_grad without dz"
                )));
            }
            let cols = x.cols;
            let aligned_cols = cols.is_multiple_of(4);
            match kernel {
                K::XentGroupVec if aligned_cols && (4..=128).contains(&cols) => {
                    xent_vec_rows(&x, next_pow2(cols / 4), 1)
                }
                K::XentWarpVec if aligned_cols && (129..=512).contains(&cols) => {
                    xent_vec_rows(&x, 32, if cols <= 256 { 2 } else { 4 })
                }
                K::XentWarpVec8 if aligned_cols && (513..=1024).contains(&cols) => {
                    xent_vec_rows(&x, 32, 8)
                }
                K::XentBlockVec | K::XentBlockScalar if block.1 == 1 && block.2 == 1 => {
                    // The kernel's dispatch on blockDim.x; outside it, nothing is written.
                    let b = block.0 as usize;
                    let vs = if cols <= 32 * b {
                        XENT_BLOCK_VS
                    } else {
                        XENT_BLOCK_VS_LONG
                    };
                    let fits = matches!(b, 64 | 128 | 256 | 512)
                        && (cols <= 32 * b || (b == 512 && cols <= 64 * b))
                        && smem_bytes as usize >= b * vs * 16
                        && (!vec || aligned_cols);
                    if fits {
                        xent_block_rows(&x, b, vs, vec);
                    }
                }
                _ => {}
            }
        }
        K::XrmFlipTargets => {
            if !a.addr(1).is_multiple_of(8) {
                return Err(Error::Cuda(format!(
                    "emulated device fault: {name}: misaligned address of `u`"
                )));
            }
            let (logits, u, target, rows, k) = (a.p(0)?, a.p(1)?, a.p(2)?, a.u(3), a.u(4));
            // The kernel's f64 steps, in its order (kernels/xrm.cu).
            let kd = k as f64;
            for i in 0..rows {
                let mut out = u32::MAX;
                if k >= 2 {
                    let row = |j: usize| logits.f(i * k + j);
                    let (mut best, mut best_v) = (0usize, row(0));
                    for j in 1..k {
                        if row(j) > best_v {
                            best_v = row(j);
                            best = j;
                        }
                    }
                    let mx = best_v as f64;
                    let mut total = 0.0f64;
                    for j in 0..k {
                        total += (row(j) as f64 - mx).exp();
                    }
                    let p = 1.0 / total;
                    let q = ((p - 1.0 / kd) * kd) / (kd - 1.0);
                    let ui = f64::from_bits(u.u(2 * i) as u64 | (u.u(2 * i + 1) as u64) << 32);
                    if ui < q {
                        out = best as u32;
                    }
                }
                target.set_u(i, out);
            }
        }
        K::SumAll => {
            require_block(name, block, (1024, 1, 1))?;
            if grid != (1, 1, 1) {
                return Err(Error::Cuda(format!("emulator: {name} needs one block")));
            }
            let (x, n, out, scale) = (a.p(0)?, a.u(1), a.p(2)?, a.f(3));
            let total: f32 = (0..n).map(|i| x.f(i)).sum();
            out.set_f(0, scale * total);
        }
        K::SumPartials => {
            require_block(name, block, (256, 1, 1))?;
            let (x, n, partials) = (a.p(0)?, a.u(1), a.p(2)?);
            let g = grid.0 as usize;
            let mut acc = vec![0.0f32; g];
            for i in 0..n {
                acc[(i % (g * 256)) / 256] += x.f(i);
            }
            for (b, v) in acc.into_iter().enumerate() {
                partials.set_f(b, v);
            }
        }
        K::SgdStep => {
            let (p, g, buf, n) = (a.p(0)?, a.p(1)?, a.p(2)?, a.u(3));
            let (lr, mom, damp, wd, nesterov, first) =
                (a.f(4), a.f(5), a.f(6), a.f(7), a.u(8) != 0, a.u(9) != 0);
            for i in 0..n {
                let pi = p.f(i);
                let mut d = g.f(i);
                if wd != 0.0 {
                    d += wd * pi;
                }
                if mom != 0.0 {
                    let b = if first {
                        d
                    } else {
                        mom * buf.f(i) + (1.0 - damp) * d
                    };
                    buf.set_f(i, b);
                    d = if nesterov { d + mom * b } else { b };
                }
                p.set_f(i, pi - lr * d);
            }
        }
        K::AdamStep => {
            let (p, g, m, v, n) = (a.p(0)?, a.p(1)?, a.p(2)?, a.p(3)?, a.u(4));
            let (lr, b1, b2, eps, wd, step, decoupled) = (
                a.f(5),
                a.f(6),
                a.f(7),
                a.f(8),
                a.f(9),
                a.u(10),
                a.u(11) != 0,
            );
            let bc1 = 1.0 - (b1 as f64).powf(step as f64);
            let bc2 = 1.0 - (b2 as f64).powf(step as f64);
            let step_size = (lr as f64 / bc1) as f32;
            let bc2_sqrt = bc2.sqrt() as f32;
            let decay = (1.0 - lr as f64 * wd as f64) as f32;
            let (c1, c2) = (1.0 - b1, 1.0 - b2);
            for i in 0..n {
                let (mut pi, mut gi) = (p.f(i), g.f(i));
                if wd != 0.0 {
                    if decoupled {
                        pi *= decay;
                    } else {
                        gi += wd * pi;
                    }
                }
                let mi = b1 * m.f(i) + c1 * gi;
                let vi = b2 * v.f(i) + (c2 * gi) * gi;
                m.set_f(i, mi);
                v.set_f(i, vi);
                let denom = vi.sqrt() / bc2_sqrt + eps;
                p.set_f(i, pi - step_size * (mi / denom));
            }
        }
        K::Sgemm128 | K::Sgemm64 | K::SgemmThin | K::SgemmThinTa => {
            let (pa, pb, pc) = (a.p(0)?, a.p(1)?, a.p(2)?);
            let (m, n, k, lda, ldb, ldc) = (a.u(3), a.u(4), a.u(5), a.u(6), a.u(7), a.u(8));
            let (alpha, beta) = (a.f(9), a.f(10));
            let (ta, tb, rows, cols) = match kernel {
                K::Sgemm128 | K::Sgemm64 => {
                    require_block(name, block, (256, 1, 1))?;
                    let tile = if kernel == K::Sgemm128 { 128 } else { 64 };
                    // Tiles: only the part of C the grid covers is written.
                    let rows = m.min(grid.1 as usize * tile);
                    let cols = n.min(grid.0 as usize * tile);
                    (a.u(11) != 0, a.u(12) != 0, rows, cols)
                }
                K::SgemmThin => {
                    require_block(name, block, (256, 1, 1))?;
                    (false, a.u(11) != 0, m, if n > 16 { 0 } else { n })
                }
                _ => {
                    require_block(name, block, (32, 8, 1))?;
                    (true, a.u(11) != 0, m, if n > 16 { 0 } else { n })
                }
            };
            for i in 0..rows {
                for j in 0..cols {
                    let mut acc = 0.0f32;
                    for kk in 0..k {
                        let av = if ta {
                            pa.f(kk * lda + i)
                        } else {
                            pa.f(i * lda + kk)
                        };
                        let bv = if tb {
                            pb.f(j * ldb + kk)
                        } else {
                            pb.f(kk * ldb + j)
                        };
                        acc = av.mul_add(bv, acc);
                    }
                    let c = i * ldc + j;
                    let r = alpha * acc;
                    pc.set_f(
                        c,
                        if beta == 0.0 {
                            r
                        } else {
                            beta.mul_add(pc.f(c), r)
                        },
                    );
                }
            }
        }
        K::SgemmThinTaPartial => {
            require_block(name, block, (32, 8, 1))?;
            let (pa, pb, work) = (a.p(0)?, a.p(1)?, a.p(2)?);
            let (m, n, k, lda, ldb, tb) = (a.u(3), a.u(4), a.u(5), a.u(6), a.u(7), a.u(8) != 0);
            if n <= 16 {
                let z = grid.1 as usize;
                let chunk = k.div_ceil(z);
                for zi in 0..z {
                    let begin = k.min(zi * chunk);
                    let end = if k - begin < chunk { k } else { begin + chunk };
                    for i in 0..m {
                        for j in 0..n {
                            let mut acc = 0.0f32;
                            for kk in begin..end {
                                let bv = if tb {
                                    pb.f(j * ldb + kk)
                                } else {
                                    pb.f(kk * ldb + j)
                                };
                                acc = pa.f(kk * lda + i).mul_add(bv, acc);
                            }
                            work.set_f((zi * m + i) * n + j, acc);
                        }
                    }
                }
            }
        }
        K::SgemmThinFinish => {
            let (work, pc) = (a.p(0)?, a.p(1)?);
            let (m, n, z, ldc, alpha, beta) = (a.u(2), a.u(3), a.u(4), a.u(5), a.f(6), a.f(7));
            for q in 0..m * n {
                let acc: f32 = (0..z).map(|zi| work.f(zi * m * n + q)).sum();
                let c = (q / n) * ldc + q % n;
                let r = alpha * acc;
                pc.set_f(
                    c,
                    if beta == 0.0 {
                        r
                    } else {
                        beta.mul_add(pc.f(c), r)
                    },
                );
            }
        }
    }
    finish(fault)
}

/// Chunks per thread of the block cross-entropy kernels (kernels/xent.cu): in registers, in
/// shared memory, and in shared memory for rows over `32 · blockDim.x` columns.
const XENT_BLOCK_VR: usize = 4;
const XENT_BLOCK_VS: usize = 4;
const XENT_BLOCK_VS_LONG: usize = 12;

fn next_pow2(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// The arguments of a fused cross-entropy launch.
struct XentArgs<'f> {
    z: View<'f>,
    s: View<'f>,
    y: View<'f>,
    w: View<'f>,
    loss: View<'f>,
    dz: View<'f>,
    rows: usize,
    cols: usize,
    grad_scale: f32,
    write_grad: bool,
    bad: View<'f>,
}

impl XentArgs<'_> {
    /// `t = z + s` at column `j` of row `r`, or -inf past the row (the kernels' padding).
    fn t(&self, r: usize, j: usize) -> f32 {
        if j >= self.cols {
            return f32::NEG_INFINITY;
        }
        let i = r * self.cols + j;
        if self.s.is_null() {
            self.z.f(i)
        } else {
            self.z.f(i) + self.s.f(i)
        }
    }

    fn weight(&self, r: usize) -> f32 {
        if self.w.is_null() {
            1.0
        } else {
            self.w.f(r)
        }
    }

    /// Writes row `r`'s loss, flags a bad label.
    fn finish_row(&self, r: usize, m: f32, t_label: f32, sum: f32, bad: bool) {
        let loss = if bad {
            f32::NAN
        } else {
            self.weight(r) * ((m - t_label) + sum.ln())
        };
        self.loss.set_f(r, loss);
        if bad {
            flag(&self.bad, r);
        }
    }

    /// The gradient of column `j` from its exp value `e`, with `a = coef / S` (times the
    /// thread's rescale in the block kernels): `e·a`, or `fma(e, a, −coef)` at the label.
    fn grad(&self, r: usize, j: usize, e: f32, a: f32, label: usize, bad: bool) {
        if j >= self.cols {
            return;
        }
        let coef = self.grad_scale * self.weight(r);
        let g = if bad {
            f32::NAN
        } else if j == label {
            e.mul_add(a, -coef)
        } else {
            e * a
        };
        self.dz.set_f(r * self.cols + j, g);
    }
}

/// `xent_vec_rows<log2(g), v>`: a group of `g` lanes per row, lane `q` holding the float4
/// chunks `q + g·e`, `e < v`; the lane's max (NaN ignored) and its exp values summed in
/// chunk and component order, then xor butterflies over the group.
fn xent_vec_rows(x: &XentArgs<'_>, g: usize, v: usize) {
    let quads = x.cols / 4;
    for r in 0..x.rows {
        let label = x.y.u(r) as usize;
        let bad = label >= x.cols;
        let chunk = |q: usize, e: usize| -> Option<[f32; 4]> {
            let k = q + g * e;
            (k < quads).then(|| std::array::from_fn(|c| x.t(r, 4 * k + c)))
        };
        let m = (0..g)
            .flat_map(|q| (0..v).filter_map(move |e| chunk(q, e)))
            .flatten()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut partial = vec![0.0f32; g];
        let mut exps = vec![None; g * v];
        for q in 0..g {
            for e in 0..v {
                if let Some(c) = chunk(q, e) {
                    let ex = c.map(|t| (t - m).exp());
                    for val in ex {
                        partial[q] += val;
                    }
                    exps[q * v + e] = Some(ex);
                }
            }
        }
        let sum = butterfly(partial, |p, q| p + q);
        let t_label = if bad { 0.0 } else { x.t(r, label) };
        x.finish_row(r, m, t_label, sum, bad);
        if x.write_grad {
            let a = x.grad_scale * x.weight(r) / sum;
            for q in 0..g {
                for e in 0..v {
                    if let Some(ex) = exps[q * v + e] {
                        for (c, &val) in ex.iter().enumerate() {
                            x.grad(r, 4 * (q + g * e) + c, val, a, label, bad);
                        }
                    }
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
    let a = if m == f32::NEG_INFINITY {
        0.0
    } else {
        s * (m - nm).exp()
    };
    let b = if om == f32::NEG_INFINITY {
        0.0
    } else {
        os * (om - nm).exp()
    };
    (nm, a + b)
}

/// `xent_block_rows<block, 4, vs, vec>`: thread `tid` holds chunks `k < 4 + vs`, chunk `k`
/// being columns `4(tid + block·k) + c` (vectorized) or `tid + block(4k + c)` (scalar); its
/// NaN-propagating max `mt`, exps `e = exp(t − mt)` (0 for an all -inf thread) summed in
/// chunk and component order; the block merges the `(mt, St)` pairs warp by warp, then over
/// the warps' partials; the gradient rescales by `exp(mt − m)`.
fn xent_block_rows(x: &XentArgs<'_>, block: usize, vs: usize, vec: bool) {
    let chunks = XENT_BLOCK_VR + vs;
    let col = |tid: usize, k: usize, c: usize| -> usize {
        if vec {
            4 * (tid + block * k) + c
        } else {
            tid + block * (4 * k + c)
        }
    };
    for r in 0..x.rows {
        let label = x.y.u(r) as usize;
        let bad = label >= x.cols;
        let mut thread_m = vec![f32::NEG_INFINITY; block];
        let mut thread_s = vec![0.0f32; block];
        let mut exps = vec![0.0f32; block * chunks * 4];
        for tid in 0..block {
            let vals: Vec<f32> = (0..chunks)
                .flat_map(|k| (0..4).map(move |c| (k, c)))
                .map(|(k, c)| x.t(r, col(tid, k, c)))
                .collect();
            let mt = vals.iter().copied().fold(f32::NEG_INFINITY, max_nan);
            let base = if mt == f32::NEG_INFINITY { 0.0 } else { mt };
            let mut st = 0.0f32;
            for (i, &t) in vals.iter().enumerate() {
                let e = (t - base).exp();
                st += e;
                exps[tid * chunks * 4 + i] = e;
            }
            thread_m[tid] = mt;
            thread_s[tid] = st;
        }
        let mut partials: Vec<(f32, f32)> = (0..block / 32)
            .map(|w| {
                let lanes = (0..32)
                    .map(|l| (thread_m[w * 32 + l], thread_s[w * 32 + l]))
                    .collect();
                butterfly(lanes, lse_merge)
            })
            .collect();
        partials.resize(32, (f32::NEG_INFINITY, 0.0));
        let (m, sum) = butterfly(partials, lse_merge);
        let t_label = if bad { 0.0 } else { x.t(r, label) };
        x.finish_row(r, m, t_label, sum, bad);
        if x.write_grad {
            let coef = x.grad_scale * x.weight(r);
            for tid in 0..block {
                let mt = thread_m[tid];
                let f = if mt == f32::NEG_INFINITY {
                    0.0
                } else {
                    (mt - m).exp()
                };
                let a = f * (coef / sum);
                for k in 0..chunks {
                    for c in 0..4 {
                        let e = exps[(tid * chunks + k) * 4 + c];
                        x.grad(r, col(tid, k, c), e, a, label, bad);
                    }
                }
            }
        }
    }
}

/// `atomicMax(bad, position + 1)` when a flag is given.
fn flag(bad: &View<'_>, position: usize) {
    if !bad.is_null() {
        let v = (position as u32).saturating_add(1);
        if v > bad.u(0) {
            bad.set_u(0, v);
        }
    }
}
