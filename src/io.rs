//! Files, written so that no reader sees half of one: atomic writes (a temporary file in the
//! same folder, then a rename), pretty JSON, and JSON lines. The bottom of the crate: every
//! layer may use it, and it uses nothing but [`crate::error`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The temporary name of an atomic write to `path`: `path` with `.partial` appended. It sits
/// in the same folder, so the final rename never crosses file systems.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Writes every `(path, bytes)` to its [`partial_path`], then renames them in order, creating
/// missing folders. If any write fails, the temporary files are removed and no file is
/// replaced, so a failed save leaves earlier outputs as they were.
pub fn write_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    for (path, _) in files {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    let written = files.iter().try_for_each(|(path, bytes)| {
        let tmp = partial_path(path);
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))
    });
    if let Err(e) = written {
        for (path, _) in files {
            let tmp = partial_path(path);
            // Best effort: a leftover temporary file is harmless, the error matters.
            if tmp.is_file() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        return Err(e);
    }
    files.iter().try_for_each(|(path, _)| {
        std::fs::rename(partial_path(path), path).map_err(|e| Error::io(*path, e))
    })
}

/// Writes `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(&[(path, text.as_bytes())])
}

/// `value` as pretty JSON; `path` names the file in the error.
pub fn to_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_text(path, &to_json(path, value)?)
}

/// Reads a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Appends records to a JSON-lines file, one flushed line per record, so a run that stops
/// early leaves every finished record readable.
pub struct JsonlWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlWriter {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(JsonlWriter {
            path,
            out: BufWriter::new(file),
        })
    }

    /// Opens `path` for appending, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(JsonlWriter {
            path,
            out: BufWriter::new(file),
        })
    }

    /// Writes one record as one line and flushes it.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::Json {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Writes `records` to `path` (created or truncated), one JSON record per line.
pub fn write_jsonl<T: Serialize>(path: impl AsRef<Path>, records: &[T]) -> Result<()> {
    let mut w = JsonlWriter::create(path)?;
    records.iter().try_for_each(|r| w.write(r))
}

/// Reads a JSON-lines file. Blank lines are skipped; a line that does not parse (a truncated
/// last record, for instance) is an error naming the path and the line number.
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        records.push(serde_json::from_str(&line).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?);
    }
    Ok(records)
}

/// A line of a JSON-lines file that did not parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub problem: String,
}

/// Reads a JSON-lines file, keeping every record that parses and reporting each line that
/// does not (a truncated last record, a damaged line in the middle) instead of failing.
/// Blank lines are skipped. Errors: the file cannot be opened or read.
pub fn read_jsonl_lenient<T: DeserializeOwned>(
    path: impl AsRef<Path>,
) -> Result<(Vec<T>, Vec<BadLine>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => records.push(r),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                problem: e.to_string(),
            }),
        }
    }
    Ok((records, bad))
}

/// A 64-bit FNV-1a digest over words, for telling configurations and data apart (not a
/// cryptographic hash). Feed it bytes, `u32`/`f32` slices or JSON values; [`Digest::hex`]
/// gives 16 hex digits.
#[derive(Clone, Debug)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Self {
        Self::default()
    }

    fn word(&mut self, w: u64) {
        for b in w.to_le_bytes() {
            self.0 = (self.0 ^ b as u64).wrapping_mul(Self::PRIME);
        }
    }

    /// Adds `bytes`, preceded by their length (so concatenations differ).
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.word(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            // Whole words at a time: one multiply per 8 bytes keeps large inputs cheap.
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0 ^ w).wrapping_mul(Self::PRIME);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0 ^ b as u64).wrapping_mul(Self::PRIME);
        }
        self
    }

    /// Adds a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Adds 32-bit values (labels, or f32 bit patterns).
    pub fn u32s(&mut self, mut values: impl ExactSizeIterator<Item = u32>) -> &mut Self {
        self.word(values.len() as u64);
        while let Some(a) = values.next() {
            let b = values.next().unwrap_or(0);
            self.0 = (self.0 ^ (a as u64 | (b as u64) << 32)).wrapping_mul(Self::PRIME);
        }
        self
    }

    /// Adds the bit patterns of `x`, fast enough for gigabytes: fixed blocks of
    /// [`Digest::BLOCK`] values are digested in parallel, each as four interleaved FNV lanes
    /// (no single chain of dependent multiplies), and the blocks' digests are then added in
    /// order. Not the value [`Digest::u32s`] gives for the same bits; the same on any thread
    /// count.
    pub fn f32s(&mut self, x: &[f32]) -> &mut Self {
        use rayon::prelude::*;
        let block = |b: &[f32]| -> u64 {
            let mut lanes = [Digest::new().0, 1, 2, 3];
            let mut words = b.chunks_exact(8);
            for c in &mut words {
                for (lane, pair) in lanes.iter_mut().zip(c.chunks_exact(2)) {
                    let w = pair[0].to_bits() as u64 | (pair[1].to_bits() as u64) << 32;
                    *lane = (*lane ^ w).wrapping_mul(Self::PRIME);
                }
            }
            for v in words.remainder() {
                lanes[0] = (lanes[0] ^ v.to_bits() as u64).wrapping_mul(Self::PRIME);
            }
            let mut d = Digest::new();
            lanes.iter().for_each(|&l| d.word(l));
            d.0
        };
        let blocks: Vec<u64> = x.par_chunks(Self::BLOCK).map(block).collect();
        self.word(x.len() as u64);
        blocks.iter().for_each(|&b| self.word(b));
        self
    }

    /// Values per parallel block of [`Digest::f32s`] (1 MiB).
    pub const BLOCK: usize = 1 << 18;

    /// Adds `value` as compact JSON; `path` names the record in the error.
    pub fn json<T: Serialize + ?Sized>(&mut self, path: &Path, value: &T) -> Result<&mut Self> {
        let text = serde_json::to_string(value).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(self.str(&text))
    }

    /// The digest as 16 lowercase hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Digest;

    #[test]
    fn f32_digests_are_thread_independent_and_see_every_bit() {
        // Three blocks and a ragged tail.
        let x: Vec<f32> = (0..2 * Digest::BLOCK + 13)
            .map(|i| i as f32 * 0.5)
            .collect();
        let digest = |x: &[f32], threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| Digest::new().f32s(x).hex())
        };
        let one = digest(&x, 1);
        assert_eq!(one, digest(&x, 3));
        for i in [0, 5, Digest::BLOCK + 7, x.len() - 1] {
            let mut y = x.clone();
            y[i] = f32::from_bits(y[i].to_bits() ^ 1);
            assert_ne!(
                digest(&y, 2),
                one,
                "a flipped bit at {i} must change the digest"
            );
        }
        // Moving a value between lanes changes it too.
        let mut y = x.clone();
        y.swap(0, 2);
        assert_ne!(digest(&y, 2), one);
        assert_ne!(digest(&x[..x.len() - 1], 2), one);
    }
}
