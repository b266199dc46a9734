//! Errors of this backend.

use runtime_core::{Error, ErrorKind};

pub(crate) const BACKEND: &str = "e2b";

/// An error of this backend.
pub(crate) fn err(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Error {
    Error::new(kind, message.into())
        .with_backend(BACKEND)
        .with_operation(op)
}
