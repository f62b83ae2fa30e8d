//! Host memory standing in for device memory: every buffer is registered with its address
//! range; an argument resolves to the live buffer containing it, and a range past that
//! buffer's end is a device fault (an error), like `CUDA_ERROR_ILLEGAL_ADDRESS`. Fresh
//! buffers hold all-ones bytes (NaN).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::backend::cpu::CpuStorage;
use crate::backend::cuda::device::Word;
use crate::error::{Error, Result};

/// Live emulated buffers: start address → length in 4-byte words.
static LIVE: Mutex<BTreeMap<u64, usize>> = Mutex::new(BTreeMap::new());

/// 256 bytes, 256-byte aligned: the allocation unit of [`HostBuf`], so that emulated buffers
/// are aligned like `cuMemAlloc`'s (and float4 kernels find their rows 16-byte aligned).
#[repr(C, align(256))]
#[derive(Clone, Copy)]
struct Aligned256([u32; 64]);

/// Host memory standing in for a device buffer of `len` 4-byte words (at least one, so that
/// every buffer has an address), read and written by address only.
pub(in crate::backend::cuda) struct HostBuf {
    addr: u64,
    len: usize,
}

impl HostBuf {
    pub(in crate::backend::cuda) fn new(len: usize) -> HostBuf {
        let len = len.max(1);
        let units = vec![Aligned256([u32::MAX; 64]); len.div_ceil(64)].into_boxed_slice();
        let addr = Box::into_raw(units) as *mut Aligned256 as u64;
        if let Ok(mut live) = LIVE.lock() {
            live.insert(addr, len);
        }
        HostBuf { addr, len }
    }

    pub(in crate::backend::cuda) fn addr(&self) -> u64 {
        self.addr
    }

    pub(in crate::backend::cuda) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.remove(&self.addr);
        }
        let units = self.len.div_ceil(64);
        let ptr = std::ptr::slice_from_raw_parts_mut(self.addr as *mut Aligned256, units);
        // SAFETY: `addr` and `units` are those of the boxed slice `new` leaked, freed
        // exactly once, here.
        unsafe { drop(Box::from_raw(ptr)) };
    }
}

pub(super) fn fault(what: String) -> Error {
    Error::Cuda(format!("emulated device fault: {what}"))
}

/// Checks that `n` words from `addr` lie in one live buffer.
fn check(addr: u64, n: usize) -> Result<()> {
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
pub(in crate::backend::cuda) fn read<T: Word>(addr: u64, n: usize) -> Result<Vec<T>> {
    let mut out = vec![T::default(); n];
    if n > 0 {
        check(addr, n)?;
        // SAFETY: `addr..addr + 4n` lies inside a live buffer (checked; 4-byte aligned),
        // which the launching op keeps alive; `T` is a 4-byte plain value (`Word`) and `out`
        // a distinct host vector of `n` of them.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const T, out.as_mut_ptr(), n) };
    }
    Ok(out)
}

/// Writes `data` to the words at `addr`.
pub(in crate::backend::cuda) fn write<T: Word>(addr: u64, data: &[T]) -> Result<()> {
    if !data.is_empty() {
        check(addr, data.len())?;
        // SAFETY: as in `read`; the op writing a buffer is the only one using it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut T, data.len()) };
    }
    Ok(())
}

pub(in crate::backend::cuda) fn memset(addr: u64, words: usize, byte: u8) -> Result<()> {
    write(addr, &vec![u32::from_ne_bytes([byte; 4]); words])
}

pub(in crate::backend::cuda) fn copy(src: u64, dst: u64, words: usize) -> Result<()> {
    write(dst, &read::<u32>(src, words)?)
}

/// A CPU storage of the `n` floats at `addr`.
pub(super) fn cpu(addr: u64, n: usize) -> Result<CpuStorage> {
    read(addr, n).map(CpuStorage::new)
}

/// The positions of the entries of `idx` at or past `size` (flagged in the word at `bad`, as
/// `atomicMax(bad, position + 1)`, when a flag is given), and `idx` with those entries read as
/// 0: kernels never follow them.
pub(super) fn screen(idx: &[u32], size: usize, bad: u64) -> Result<(Vec<u32>, Vec<usize>)> {
    let bad_at: Vec<usize> = (0..idx.len())
        .filter(|&r| idx[r] as usize >= size)
        .collect();
    if let (true, Some(&p)) = (bad != 0, bad_at.last()) {
        let v = read::<u32>(bad, 1)?[0].max((p as u32).saturating_add(1));
        write(bad, &[v])?;
    }
    let safe = idx.iter().map(|&i| if i as usize >= size { 0 } else { i });
    Ok((safe.collect(), bad_at))
}
