//! Index buffers and the one index check every indexed op goes through.
//!
//! Indices uploaded from the host remember their largest value (and its first position), so
//! an index or label out of range is a typed error before any launch, with no device round
//! trip. Indices made on the device (`argmax_rows`) carry an upper bound; when that bound
//! cannot prove an op's indices in range, the kernel's error flag is read after the launch
//! instead (one 4-byte copy). Kernels never follow an index out of range.

use super::device::{internal, CudaDevice, DevBuf};
use super::launch::Region;
use crate::error::{Error, Result};

/// u32 indices on a CUDA device. Dropping it returns the buffer to the device's pool.
pub struct CudaIndex {
    pub(super) buf: Option<DevBuf>,
    pub(super) addr: u64,
    pub(super) len: usize,
    pub(super) bound: IndexBound,
    pub(super) dev: CudaDevice,
}

/// What is known about an index buffer's values without reading it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IndexBound {
    Empty,
    /// The exact largest value and its first position (host uploads).
    Max {
        value: u32,
        position: usize,
    },
    /// Every value is at most this (device results, zeroed buffers).
    AtMost(u32),
}

impl IndexBound {
    /// The bound of host data: its largest value's first position.
    pub(super) fn of(data: &[u32]) -> IndexBound {
        let first_max = data.iter().enumerate().rev().max_by_key(|&(_, &v)| v);
        first_max.map_or(IndexBound::Empty, |(position, &value)| IndexBound::Max {
            value,
            position,
        })
    }
}

/// The outcome of checking indices against `0..size`.
#[derive(Debug)]
enum IndexCheck {
    InRange,
    OutOfRange {
        position: usize,
        value: u32,
    },
    /// Only the kernel's error flag can tell.
    OnDevice,
}

impl Drop for CudaIndex {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.dev.inner.recycle(buf);
        }
    }
}

impl std::fmt::Debug for CudaIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaIndex{{len: {}, device: {:?}}}", self.len, self.dev)
    }
}

impl CudaIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn to_host(&self) -> Result<Vec<u32>> {
        self.dev.inner.download(self.buf.as_ref(), 0, self.len)
    }

    pub(super) fn region(&self) -> Region {
        let (addr, len) = (self.addr, self.len);
        Region { addr, len }
    }

    /// Whether the first `used` indices lie in `0..size`, from the recorded bound.
    fn check(&self, size: usize, used: usize) -> IndexCheck {
        match self.bound {
            IndexBound::Empty => IndexCheck::InRange,
            IndexBound::Max { value, .. } | IndexBound::AtMost(value)
                if (value as usize) < size =>
            {
                IndexCheck::InRange
            }
            IndexBound::Max { value, position } if position < used => {
                IndexCheck::OutOfRange { position, value }
            }
            _ => IndexCheck::OnDevice,
        }
    }
}

/// `Error::IndexOutOfRange` of `op` for indices into `0..size`.
pub(super) fn out_of_range(op: &'static str, size: usize) -> impl Fn(usize, u32) -> Error {
    move |position, value| Error::IndexOutOfRange {
        op,
        position,
        index: value as usize,
        size,
    }
}

/// Runs `launch` for an op that reads the first `used` entries of `idx` as indices into
/// `0..size`, on `dev`; `err` makes the typed error for a bad entry (position, value).
/// Indices known to be in range launch with a null error flag; one known to be out of range
/// is its typed error before anything runs; otherwise `launch` gets a zeroed flag word, and
/// a nonzero flag afterwards becomes the typed error for the position it reports.
pub(super) fn with_index_check(
    dev: &CudaDevice,
    idx: &CudaIndex,
    (used, size): (usize, usize),
    err: impl Fn(usize, u32) -> Error,
    launch: impl FnOnce(Region) -> Result<()>,
) -> Result<()> {
    if !idx.dev.same_device(dev) {
        return Err(Error::Device("indices on another CUDA device".into()));
    }
    if idx.len < used {
        let what = format!("{} indices where {used} are read", idx.len);
        return Err(internal(what));
    }
    let flag = match idx.check(size, used) {
        IndexCheck::InRange => return launch(Region::NULL),
        IndexCheck::OutOfRange { position, value } => return Err(err(position, value)),
        IndexCheck::OnDevice => dev.zeros_u32(1)?,
    };
    launch(flag.region())?;
    let reported = flag.to_host()?.first().copied().unwrap_or(0);
    if reported == 0 {
        return Ok(());
    }
    let position = reported as usize - 1;
    let value = dev.inner.download(idx.buf.as_ref(), position, 1)?;
    Err(err(position, value.first().copied().unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_indices_record_their_largest_value() {
        let dev = CudaDevice::emulated().expect("the emulator needs no driver");
        let idx = dev.index_from_host(&[3, 9, 2, 9]).unwrap();
        let max9 = IndexBound::Max {
            value: 9,
            position: 1,
        };
        assert_eq!(idx.bound, max9);
        assert!(matches!(idx.check(10, 4), IndexCheck::InRange));
        assert!(matches!(
            idx.check(9, 4),
            IndexCheck::OutOfRange {
                position: 1,
                value: 9
            }
        ));
        // The largest value lies beyond the entries an op reads: only the device can tell.
        assert!(matches!(idx.check(9, 1), IndexCheck::OnDevice));
        let empty = dev.index_from_host(&[]).unwrap();
        assert!(matches!(empty.check(0, 0), IndexCheck::InRange));
        assert_eq!(empty.to_host().unwrap(), Vec::<u32>::new());
    }
}
