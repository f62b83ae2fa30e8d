//! A small pool of large host buffers.
//!
//! A fresh multi-megabyte `Vec` is served by `mmap`, and its first write faults in every
//! page (the kernel zeroes each one): for the cross-entropy gradient of an 8192 × 1000 batch
//! that is 8000 page faults per step, more than the kernel's own arithmetic. Dropped buffers
//! of at least [`MIN_LEN`] elements are kept here (at most [`MAX_KEPT`] of them) and handed
//! to the next kernel that overwrites every element of an output of at most that length.

use std::sync::Mutex;

/// Buffers below this many elements go back to the allocator.
pub(crate) const MIN_LEN: usize = 1 << 18;
/// Buffers above this many elements (64 MiB) go back to the allocator too: a one-off gather
/// of a large data set's rows must not stay resident for the rest of the process.
const MAX_LEN: usize = 1 << 24;
/// Most buffers kept at once.
const MAX_KEPT: usize = 4;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Keeps `buf` for reuse if it is large; when the pool is full the longest-kept buffer goes,
/// so buffers of sizes no longer in use (a data set's setup, an earlier shape) cannot keep
/// the current ones out.
pub(crate) fn give(buf: Vec<f32>) {
    if buf.len() < MIN_LEN || buf.len() > MAX_LEN {
        return;
    }
    if let Ok(mut pool) = POOL.lock() {
        if pool.len() == MAX_KEPT {
            pool.remove(0);
        }
        pool.push(buf);
    }
}

/// A buffer of exactly `len` elements whose contents are unspecified (zeros, or values a
/// previous tensor held): for outputs that the caller overwrites completely.
pub(crate) fn take_for_overwrite(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        if let Ok(mut pool) = POOL.lock() {
            // The smallest kept buffer that is long enough; truncating it keeps every
            // element initialised.
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len && b.len() <= 2 * len)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut buf = pool.remove(i);
                buf.truncate(len);
                return buf;
            }
        }
    }
    vec![0.0; len]
}
