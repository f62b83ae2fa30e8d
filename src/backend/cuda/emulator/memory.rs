//! Host memory standing in for device memory: every buffer is registered with its address
//! range; an argument resolves to the live buffer containing it, and a range past that
//! buffer's end is a device fault (an error), like `CUDA_ERROR_ILLEGAL_ADDRESS`. Fresh
//! buffers hold all-ones bytes (NaN).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::backend::cpu::CpuStorage;
use crate::error::{Error, Result};

/// Live emulated buffers: start address → length in 4-byte words.
static LIVE: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

/// 256 bytes, 256-byte aligned: the allocation unit of [`HostBuf`], so that emulated buffers
/// are aligned like `cuMemAlloc`'s (and float4 kernels find their rows 16-byte aligned).
#[repr(C, align(256))]
#[derive(Clone, Copy)]
struct Aligned256([u32; 64]);

/// Host memory standing in for a device buffer of 4-byte words.
pub(in crate::backend::cuda) struct HostBuf {
    ptr: *mut u32,
    len: usize,
    units: usize,
}

// SAFETY: the buffer is plain heap memory owned by this value; it is read and written only
// through `load` and `store`, by the op that owns it (ops never share an output buffer).
unsafe impl Send for HostBuf {}
// SAFETY: as above; `&HostBuf` exposes only the address and length.
unsafe impl Sync for HostBuf {}

impl HostBuf {
    /// `len` words of all-ones bytes (at least one word, so every buffer has an address).
    pub(in crate::backend::cuda) fn new(len: usize) -> HostBuf {
        let (len, units) = (len.max(1), len.max(1).div_ceil(64));
        let ptr =
            Box::into_raw(vec![Aligned256([u32::MAX; 64]); units].into_boxed_slice()) as *mut u32;
        if let Ok(mut live) = LIVE.lock() {
            live.insert(ptr as u64, len);
        }
        HostBuf { ptr, len, units }
    }

    pub(in crate::backend::cuda) fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub(in crate::backend::cuda) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.remove(&(self.ptr as u64));
        }
        let units = std::ptr::slice_from_raw_parts_mut(self.ptr as *mut Aligned256, self.units);
        // SAFETY: `ptr` and `units` come from `Box::into_raw` of a boxed slice of `units`
        // `Aligned256` in `new`, and are freed exactly once, here.
        unsafe { drop(Box::from_raw(units)) };
    }
}

pub(super) fn fault(what: String) -> Error {
    Error::Cuda(format!("emulated device fault: {what}"))
}

/// Checks that `n` words from `addr` lie in one live buffer.
fn check(addr: u64, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let live = LIVE
        .lock()
        .map_err(|_| fault("buffer registry poisoned".into()))?;
    match live.range(..=addr).next_back() {
        Some((&start, &len)) if (addr - start).is_multiple_of(4) => {
            let have = len.saturating_sub(((addr - start) / 4) as usize);
            match n <= have {
                true => Ok(()),
                false => Err(fault(format!(
                    "access to {n} elements of a buffer with {have} from {addr:#x}"
                ))),
            }
        }
        _ => Err(fault(format!(
            "address {addr:#x} is not inside a live buffer"
        ))),
    }
}

/// The `n` words at `addr`.
pub(in crate::backend::cuda) fn read(addr: u64, n: usize) -> Result<Vec<u32>> {
    check(addr, n)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut out = vec![0u32; n];
    // SAFETY: `addr..addr + 4n` lies inside a live buffer (checked), which the launching op
    // keeps alive, and `out` is a distinct host vector of `n` words.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u32, out.as_mut_ptr(), n) };
    Ok(out)
}

/// Writes `data` to the words at `addr`.
pub(in crate::backend::cuda) fn write(addr: u64, data: &[u32]) -> Result<()> {
    check(addr, data.len())?;
    if data.is_empty() {
        return Ok(());
    }
    // SAFETY: as in `read`; the op writing a buffer is the only one using it.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u32, data.len()) };
    Ok(())
}

pub(in crate::backend::cuda) fn memset(addr: u64, words: usize, byte: u8) -> Result<()> {
    write(addr, &vec![u32::from_ne_bytes([byte; 4]); words])
}

pub(in crate::backend::cuda) fn copy(src: u64, dst: u64, words: usize) -> Result<()> {
    write(dst, &read(src, words)?)
}

pub(super) fn readf(addr: u64, n: usize) -> Result<Vec<f32>> {
    Ok(read(addr, n)?.into_iter().map(f32::from_bits).collect())
}

pub(super) fn writef(addr: u64, data: &[f32]) -> Result<()> {
    write(addr, &data.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
}

/// A CPU storage of the `n` floats at `addr`.
pub(super) fn cpu(addr: u64, n: usize) -> Result<CpuStorage> {
    readf(addr, n).map(CpuStorage::new)
}

/// `atomicMax(bad, position + 1)` for each bad position, when a flag is given.
pub(super) fn flag(bad: u64, positions: &[usize]) -> Result<()> {
    match (bad, positions.iter().max()) {
        (0, _) | (_, None) => Ok(()),
        (_, Some(&p)) => {
            let v = read(bad, 1)?[0].max((p as u32).saturating_add(1));
            write(bad, &[v])
        }
    }
}
