//! Host memory standing in for device memory: the registry owns every buffer's words by its
//! address; an argument resolves to the live buffer containing it, and a range past that
//! buffer's end is a device fault (an error), like `CUDA_ERROR_ILLEGAL_ADDRESS`. Buffers are
//! 256-byte aligned like `cuMemAlloc`'s (so float4 kernels find their rows 16-byte aligned)
//! and hold all-ones bytes (NaN) when fresh.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::backend::cuda::device::Word;
use crate::error::{Error, Result};

/// Live buffers: address → (index of the word at that address, the words).
static LIVE: Mutex<BTreeMap<u64, (usize, Vec<u32>)>> = Mutex::new(BTreeMap::new());

/// A buffer of `len` words (at least one, so that every buffer has an address), read and
/// written by address only; dropping it frees the words.
pub(in crate::backend::cuda) struct HostBuf {
    addr: u64,
    len: usize,
}

impl HostBuf {
    pub(in crate::backend::cuda) fn new(len: usize) -> HostBuf {
        let len = len.max(1);
        // 63 spare words: the buffer starts at the first 256-byte aligned one.
        let mut words = vec![u32::MAX; len + 63];
        let skip = (words.as_ptr() as usize).wrapping_neg() % 256 / 4;
        words.truncate(skip + len);
        let addr = words[skip..].as_ptr() as u64;
        if let Ok(mut live) = LIVE.lock() {
            live.insert(addr, (skip, words));
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
    }
}

pub(super) fn fault(what: String) -> Error {
    Error::Cuda(format!("emulated device fault: {what}"))
}

/// Runs `f` on the `n` words from `addr`, which must lie in one live buffer (none: no access).
fn words(addr: u64, n: usize, f: impl FnOnce(&mut [u32])) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let mut live = LIVE
        .lock()
        .map_err(|_| fault("buffer registry poisoned".into()))?;
    let Some((&start, (skip, words))) = live.range_mut(..=addr).next_back() else {
        return Err(fault(format!(
            "address {addr:#x} is not inside a live buffer"
        )));
    };
    let (at, words) = (((addr - start) / 4) as usize, &mut words[*skip..]);
    let (have, aligned) = (words.len(), (addr - start).is_multiple_of(4));
    let range = words.get_mut(at..).and_then(|w| w.get_mut(..n));
    range.filter(|_| aligned).map(f).ok_or_else(|| {
        let what = format!("access to {n} elements from {addr:#x}, in a buffer of {have}");
        fault(format!("{what} from {start:#x}"))
    })
}

/// The `n` words at `addr`.
pub(in crate::backend::cuda) fn read<T: Word>(addr: u64, n: usize) -> Result<Vec<T>> {
    let mut out = vec![T::default(); n];
    let dst = out.as_mut_ptr().cast::<u32>();
    // SAFETY: `T` is a 4-byte plain value (`Word`): `out` holds `n` words, as `w` does.
    words(addr, n, |w| unsafe {
        std::ptr::copy_nonoverlapping(w.as_ptr(), dst, n)
    })?;
    Ok(out)
}

/// Writes `data` to the words at `addr`.
pub(in crate::backend::cuda) fn write<T: Word>(addr: u64, data: &[T]) -> Result<()> {
    let (src, n) = (data.as_ptr().cast::<u32>(), data.len());
    // SAFETY: as in `read`.
    words(addr, n, |w| unsafe {
        std::ptr::copy_nonoverlapping(src, w.as_mut_ptr(), n)
    })
}

pub(in crate::backend::cuda) fn memset(addr: u64, words: usize, byte: u8) -> Result<()> {
    write(addr, &vec![u32::from_ne_bytes([byte; 4]); words])
}

pub(in crate::backend::cuda) fn copy(src: u64, dst: u64, words: usize) -> Result<()> {
    write(dst, &read::<u32>(src, words)?)
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
