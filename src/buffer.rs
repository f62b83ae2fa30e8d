//! Host f32 buffers that can be shared without copying: feature matrices read from a file,
//! used in place where the file is mapped, and the CPU backend's tensor storage.
//!
//! An [`F32Buffer`] is one of
//! - an owned vector (what every op writes: mutable, dropped with its tensor);
//! - a shared, frozen vector (`Arc`): a data set's features once built or converted, handed to
//!   any number of tensors and runs without a copy;
//! - a run of little-endian f32 values inside a read-only file mapping ([`MappedFile`]): a
//!   feature file's matrix used where it lies, so that opening a 1.7 GB file costs no copy and
//!   its pages are read (and shared with the page cache) only when a row is used.
//!
//! Reading is the same for all three (`Deref<Target = [f32]>`). Writing (`DerefMut`) is copy on
//! write: a shared or mapped buffer is first copied into an owned vector, so a mapping is never
//! written and one run's buffer never changes another's. Training never writes its features,
//! so in practice they are never copied.
//!
//! # What a mapping cannot protect against
//!
//! Every size is checked against the mapped length before a byte is read, so a truncated or
//! damaged file gives an error, never a fault. What no check can prevent: another process
//! truncating (or rewriting) the file *while it is mapped*. Reading a page past the new end of
//! the file then raises `SIGBUS` and the process dies; rewritten bytes change the features
//! under a running job. Do not modify a feature file while a run uses it (write a new file and
//! rename it over the old one, which leaves the mapped inode intact).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// Index of the first NaN or infinite value of `x`: one pass at memory speed, in parallel
/// chunks (fixed boundaries; the answer does not depend on the thread count).
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    // Exponent all ones: an infinity or a NaN. A branch-free fold that the compiler vectorizes.
    let any_bad = |c: &[f32]| {
        c.iter().fold(false, |acc, v| {
            acc | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        })
    };
    let chunk = x.par_chunks(CHUNK).position_first(any_bad)?;
    let base = chunk * CHUNK;
    x[base..]
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| base + i)
}

/// A file mapped read-only into memory.
pub struct MappedFile {
    path: PathBuf,
    /// `None` for an empty file (an empty mapping is not allowed on every system).
    map: Option<memmap2::Mmap>,
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedFile({:?}, {} bytes)", self.path, self.len())
    }
}

impl MappedFile {
    /// Maps `path` read-only. Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<MappedFile>> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and private to this process; every read of it
            // goes through `bytes()`, whose length is the file's length at mapping time, and
            // every size taken from the file is checked against it before use. What this
            // cannot exclude — another process truncating or rewriting the file while it is
            // mapped — is documented in the module docs.
            let map = unsafe { memmap2::MmapOptions::new().map(&file) }
                .map_err(|e| Error::io(path, e))?;
            Some(map)
        };
        Ok(Arc::new(MappedFile {
            path: path.to_path_buf(),
            map,
        }))
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the kernel to read `range` ahead (`madvise(WILLNEED)`): a hint, errors ignored.
    pub fn will_need(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if let Some(map) = &self.map {
            if offset.checked_add(len).is_some_and(|end| end <= map.len()) {
                let _ = map.advise_range(memmap2::Advice::WillNeed, offset, len);
            }
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }
}

/// Where the values of an [`F32Buffer`] live.
#[derive(Clone)]
enum Repr {
    Owned(Vec<f32>),
    /// `data[start..start + len]`.
    Shared {
        data: Arc<Vec<f32>>,
        start: usize,
        len: usize,
        scan: Scan,
    },
    /// `len` f32 values at byte `offset` of `file` (4-byte aligned, in bounds, checked when
    /// made).
    Mapped {
        file: Arc<MappedFile>,
        offset: usize,
        len: usize,
        scan: Scan,
    },
}

/// The first non-finite value of a shared buffer, found once and shared by its clones (their
/// values cannot change: writing copies them into an owned buffer).
type Scan = Arc<OnceLock<Option<usize>>>;

/// f32 values on the host: owned, shared or mapped from a file (see the module docs).
///
/// Cloning an owned buffer copies it (like a `Vec`); cloning a shared or mapped one is an
/// `Arc` bump. [`F32Buffer::into_shared`] freezes an owned buffer so that its clones share it.
#[derive(Clone)]
pub struct F32Buffer(Repr);

impl F32Buffer {
    /// An owned buffer.
    pub fn new(values: Vec<f32>) -> F32Buffer {
        F32Buffer(Repr::Owned(values))
    }

    /// The same values, shared from now on: clones cost an `Arc` bump.
    pub fn into_shared(self) -> F32Buffer {
        match self.0 {
            Repr::Owned(v) => F32Buffer(Repr::Shared {
                start: 0,
                len: v.len(),
                data: Arc::new(v),
                scan: Scan::default(),
            }),
            other => F32Buffer(other),
        }
    }

    /// `len` f32 values stored little-endian at byte `offset` of `file`, used in place when
    /// they are 4-byte aligned (and the machine is little-endian), else copied once into a
    /// shared vector. `Err` (a message) when the range is not inside the file or the memory
    /// for a copy cannot be had.
    pub fn from_mapped(
        file: &Arc<MappedFile>,
        offset: usize,
        len: usize,
    ) -> std::result::Result<F32Buffer, String> {
        let bytes = len
            .checked_mul(4)
            .and_then(|b| b.checked_add(offset).map(|end| (b, end)))
            .filter(|&(_, end)| end <= file.len())
            .map(|(b, _)| b)
            .ok_or_else(|| {
                format!(
                    "{len} f32 values at byte {offset} do not fit the file's {} bytes",
                    file.len()
                )
            })?;
        let data = &file.bytes()[offset..offset + bytes];
        if cfg!(target_endian = "little") && (data.as_ptr() as usize).is_multiple_of(4) {
            return Ok(F32Buffer(Repr::Mapped {
                file: file.clone(),
                offset,
                len,
                scan: Scan::default(),
            }));
        }
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| format!("cannot allocate {len} f32 values (not enough memory)"))?;
        v.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
        Ok(F32Buffer::new(v).into_shared())
    }

    /// Values `start..start + len` of this buffer, shared with it (no copy; an owned buffer
    /// is made shared first). `None` when the range is out of bounds.
    pub fn slice(self, start: usize, len: usize) -> Option<F32Buffer> {
        let end = start.checked_add(len).filter(|&e| e <= self.len())?;
        Some(match self.into_shared().0 {
            Repr::Shared { data, start: s, .. } => F32Buffer(Repr::Shared {
                data,
                start: s + start,
                len: end - start,
                scan: Scan::default(),
            }),
            Repr::Mapped { file, offset, .. } => F32Buffer(Repr::Mapped {
                file,
                offset: offset + 4 * start,
                len: end - start,
                scan: Scan::default(),
            }),
            Repr::Owned(_) => unreachable!("into_shared leaves no owned buffer"),
        })
    }

    /// Index of the first NaN or infinity, if any: one parallel pass at memory speed, done
    /// once for a shared or mapped buffer (whose values cannot change) and remembered by its
    /// clones, so that checking a 1.7 GB feature matrix again costs nothing.
    pub fn first_non_finite(&self) -> Option<usize> {
        match &self.0 {
            Repr::Owned(v) => first_non_finite(v),
            Repr::Shared { scan, .. } | Repr::Mapped { scan, .. } => {
                *scan.get_or_init(|| first_non_finite(self.as_slice()))
            }
        }
    }

    /// Whether the values are read in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Repr::Mapped { .. })
    }

    /// Whether clones share the values (shared or mapped).
    pub fn is_shared(&self) -> bool {
        !matches!(self.0, Repr::Owned(_))
    }

    /// The values as a slice.
    pub fn as_slice(&self) -> &[f32] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Shared {
                data, start, len, ..
            } => &data[*start..*start + *len],
            Repr::Mapped {
                file, offset, len, ..
            } => {
                let bytes = &file.bytes()[*offset..*offset + 4 * *len];
                // SAFETY: `from_mapped` checked that these `4 len` bytes lie inside the
                // mapping and start 4-byte aligned, on a little-endian machine; every bit
                // pattern is a valid f32; the mapping is read-only and lives as long as
                // `file`, which this buffer holds.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
        }
    }

    /// The values as a mutable slice: a shared or mapped buffer becomes an owned vector first
    /// (moved out of its `Arc` when no one else shares it, else copied), so that neither the
    /// file nor another buffer changes, and no remembered scan ([`F32Buffer::first_non_finite`])
    /// outlives the values it was made from.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        if !matches!(self.0, Repr::Owned(_)) {
            let shared = std::mem::take(self);
            *self = F32Buffer::new(shared.into_vec());
        }
        match &mut self.0 {
            Repr::Owned(v) => v,
            _ => unreachable!("the buffer was made owned above"),
        }
    }

    /// The values as a vector: moved out when owned (or shared by no one else), else copied.
    pub fn into_vec(self) -> Vec<f32> {
        match self.0 {
            Repr::Owned(v) => v,
            Repr::Shared {
                data, start, len, ..
            } if start == 0 && len == data.len() => {
                Arc::try_unwrap(data).unwrap_or_else(|v| v.as_ref().clone())
            }
            _ => self.as_slice().to_vec(),
        }
    }

    /// The owned vector, leaving this buffer empty; `None` for a shared or mapped buffer.
    pub(crate) fn take_owned(&mut self) -> Option<Vec<f32>> {
        match &mut self.0 {
            Repr::Owned(v) => Some(std::mem::take(v)),
            _ => None,
        }
    }
}

impl Default for F32Buffer {
    fn default() -> Self {
        F32Buffer::new(Vec::new())
    }
}

impl From<Vec<f32>> for F32Buffer {
    fn from(v: Vec<f32>) -> Self {
        F32Buffer::new(v)
    }
}

impl Deref for F32Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl DerefMut for F32Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.as_mut_slice()
    }
}

impl<'a> IntoIterator for &'a F32Buffer {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl PartialEq for F32Buffer {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<Vec<f32>> for F32Buffer {
    fn eq(&self, other: &Vec<f32>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for F32Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("memaware-buffer-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn mapped_values_are_read_in_place_and_copied_on_write() {
        let values = [1.5f32, -2.0, 3.25, 0.0];
        let mut bytes = vec![0u8; 4];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let path = temp_file("inplace", &bytes);
        let file = MappedFile::open(&path).unwrap();
        let buf = F32Buffer::from_mapped(&file, 4, 4).unwrap();
        assert!(buf.is_mapped());
        assert_eq!(&buf[..], &values);
        let mut copy = buf.clone();
        copy[0] = 9.0;
        assert!(!copy.is_mapped());
        assert_eq!(buf[0], 1.5);
        assert_eq!(copy[0], 9.0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn misaligned_values_are_copied_once() {
        let values = [1.5f32, -2.0];
        let mut bytes = vec![0u8; 2];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let path = temp_file("misaligned", &bytes);
        let file = MappedFile::open(&path).unwrap();
        let buf = F32Buffer::from_mapped(&file, 2, 2).unwrap();
        assert!(!buf.is_mapped() && buf.is_shared());
        assert_eq!(&buf[..], &values);
        assert!(F32Buffer::from_mapped(&file, 2, 3).is_err());
        assert!(F32Buffer::from_mapped(&file, usize::MAX, 1).is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn shared_buffers_copy_on_write() {
        let a = F32Buffer::new(vec![1.0, 2.0]).into_shared();
        let mut b = a.clone();
        b[1] = 5.0;
        assert_eq!(a, vec![1.0, 2.0]);
        assert_eq!(b, vec![1.0, 5.0]);
        let mut tail = a.clone().slice(1, 1).unwrap();
        assert_eq!(tail, vec![2.0]);
        tail[0] = 7.0;
        assert_eq!(a, vec![1.0, 2.0]);
        assert!(a.clone().slice(1, 2).is_none());
    }
}
