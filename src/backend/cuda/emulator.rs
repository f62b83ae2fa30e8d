//! A host emulator of the kernels, for testing everything above them without a GPU.
//!
//! [`super::CudaDevice::emulated`] gives a device whose buffers live in host memory and whose
//! launches run here: each kernel is re-implemented sequentially from its contract in
//! kernels/README.md (ranges of columns a variant handles, what it leaves unwritten, error
//! flags, split-K and two-stage slabs, which launch shapes are required exactly), so the
//! backend's choice of kernels, grids, strides, leading dimensions and offsets, its index
//! checks, pool and poisoning can be exercised and compared with the CPU backend. It says
//! nothing about the real kernels' speed or last-bit rounding: the GPU tests do.
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
use super::launch::Arg;
use crate::error::{Error, Result};

/// Live emulated buffers: start address → length in 4-byte words.
static LIVE: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

/// Host memory standing in for a device buffer of 4-byte words.
pub(super) struct HostBuf {
    ptr: *mut u32,
    len: usize,
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
        let ptr = Box::into_raw(vec![u32::MAX; len].into_boxed_slice()) as *mut u32;
        if let Ok(mut live) = LIVE.lock() {
            live.insert(ptr as u64, len);
        }
        HostBuf { ptr, len }
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
        // SAFETY: `ptr` and `len` come from `Box::into_raw` of a boxed slice in `new`, and
        // are freed exactly once, here.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr, self.len,
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
        if addr < end && (addr - start) % 4 == 0 {
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
    args: &[Arg],
) -> Result<()> {
    let fault = Cell::new(None);
    let a = Args {
        args,
        fault: &fault,
        name: kernel.name(),
    };
    let name = kernel.name();
    if block.0 * block.1 * block.2 > 1024 || block.0 % 32 != 0 {
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

/// `atomicMax(bad, position + 1)` when a flag is given.
fn flag(bad: &View<'_>, position: usize) {
    if !bad.is_null() {
        let v = (position as u32).saturating_add(1);
        if v > bad.u(0) {
            bad.set_u(0, v);
        }
    }
}
