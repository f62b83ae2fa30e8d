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
