//! One error type for the whole crate. Every variant names what went wrong and where, so a
//! user can fix their input without reading our source.

use std::path::PathBuf;

/// Everything that can go wrong in memaware.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes that an op cannot combine.
    #[error("{op}: shape mismatch between {lhs:?} and {rhs:?}{}", fmt_detail(.detail))]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
        detail: String,
    },
    /// A shape that is wrong on its own (bad rank, zero size where data is needed, ...).
    #[error("{op}: invalid shape {shape:?}: {detail}")]
    BadShape {
        op: &'static str,
        shape: Vec<usize>,
        detail: String,
    },
    /// A class label outside `0..classes`.
    #[error("{op}: label {label} at row {row} is out of range for {classes} classes")]
    LabelOutOfRange {
        op: &'static str,
        row: usize,
        label: u32,
        classes: usize,
    },
    /// An index (row gather, group id, ...) outside its range.
    #[error("{op}: index {index} at position {position} is out of range (size {size})")]
    IndexOutOfRange {
        op: &'static str,
        position: usize,
        index: usize,
        size: usize,
    },
    /// NaN or infinity produced by an op or found in data.
    #[error("{op}: non-finite value ({what})")]
    NonFinite { op: &'static str, what: String },
    /// Ill-formed data set or data file contents.
    #[error("data: {0}")]
    Data(String),
    /// A data or parameter file whose contents are not what we expect.
    ///
    /// `tensor` says where in the file: a tensor name (printed as ``tensor `tr.x` ``), or a
    /// place that is not a tensor, written with a space or a backtick (``column `y` ``,
    /// `line 4`, `IDX header`) and printed as it is; an empty `tensor` (the file as a whole)
    /// is left out of the message.
    #[error("{}: {}{problem}", .path.display(), fmt_place(.tensor))]
    File {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    /// An I/O failure, with the path it concerned.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON (de)serialization failure, with the path it concerned.
    #[error("{}: invalid JSON: {message}", .path.display())]
    Json { path: PathBuf, message: String },
    /// Operands on different devices, or an op the device cannot run.
    #[error("device: {0}")]
    Device(String),
    /// A CUDA driver, NVRTC or kernel launch failure.
    #[error("cuda: {0}")]
    Cuda(String),
    /// Autodiff misuse (backward on a non-scalar, no gradient for a tensor, ...).
    #[error("autograd: {0}")]
    Autograd(String),
    /// An argument outside its valid range (learning rate, temperature, probability, ...).
    #[error("invalid argument `{name}`: {detail}")]
    InvalidArgument { name: &'static str, detail: String },
}

fn fmt_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// Where in a file an [`Error::File`] happened, followed by `": "`; empty for the whole file.
fn fmt_place(place: &str) -> String {
    if place.is_empty() {
        String::new()
    } else if place.contains([' ', '`']) {
        format!("{place}: ")
    } else {
        format!("tensor `{place}`: ")
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Self {
        Error::ShapeMismatch {
            op,
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec(),
            detail: String::new(),
        }
    }

    pub(crate) fn shape_detail(
        op: &'static str,
        lhs: &[usize],
        rhs: &[usize],
        detail: impl Into<String>,
    ) -> Self {
        Error::ShapeMismatch {
            op,
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec(),
            detail: detail.into(),
        }
    }

    pub(crate) fn bad_shape(op: &'static str, shape: &[usize], detail: impl Into<String>) -> Self {
        Error::BadShape {
            op,
            shape: shape.to_vec(),
            detail: detail.into(),
        }
    }

    pub(crate) fn arg(name: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            detail: detail.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
