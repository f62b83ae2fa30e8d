//! The per-device buffer pool: a free list of device buffers keyed by their length.
//!
//! A dropped [`super::CudaStorage`] or [`super::CudaIndex`] hands its buffer back here instead
//! of freeing it, and the next request for the same length takes it back. A training step
//! allocates the same lengths every time, so from the second step on every request is
//! served from the pool and the device sees no allocation at all (the device counts real
//! allocations: [`super::CudaDevice::allocations`]).
//!
//! Reuse is safe without events because the backend uses one stream per device: any kernel
//! that read or wrote a buffer before it was returned is queued before any kernel that uses
//! it after it is taken again. The pool keeps at most [`POOL_MAX_BYTES`]; beyond that a
//! returned buffer is freed, and a failed allocation empties the pool before retrying.

use std::collections::HashMap;

use super::DevBuf;

/// Most bytes the pool keeps cached (per element type, per device).
pub(super) const POOL_MAX_BYTES: usize = 8 << 30;

/// Free buffers of one element type (4-byte f32 or u32).
pub(super) struct Pool<T> {
    free: HashMap<usize, Vec<DevBuf<T>>>,
    cached_bytes: usize,
}

impl<T> Pool<T> {
    pub(super) fn new() -> Self {
        Pool {
            free: HashMap::new(),
            cached_bytes: 0,
        }
    }

    /// A cached buffer of exactly `len` elements, if one is free.
    pub(super) fn take(&mut self, len: usize) -> Option<DevBuf<T>> {
        let buf = self.free.get_mut(&len)?.pop()?;
        self.cached_bytes -= 4 * len;
        Some(buf)
    }

    /// Caches `buf`; returns it instead when the pool is full (the caller frees it outside
    /// the lock).
    pub(super) fn give(&mut self, buf: DevBuf<T>) -> Option<DevBuf<T>> {
        let bytes = 4 * buf.len();
        if self.cached_bytes + bytes > POOL_MAX_BYTES {
            return Some(buf);
        }
        self.cached_bytes += bytes;
        self.free.entry(buf.len()).or_default().push(buf);
        None
    }

    /// Every cached buffer, emptying the pool.
    pub(super) fn drain(&mut self) -> Vec<DevBuf<T>> {
        self.cached_bytes = 0;
        self.free.drain().flat_map(|(_, v)| v).collect()
    }

    pub(super) fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }
}
