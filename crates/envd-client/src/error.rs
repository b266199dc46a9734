//! Errors of the envd client.

use sandkit_core::{Error, ErrorKind};

/// An error of an envd call.
pub(crate) fn err(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Error {
    Error::new(kind, message.into()).with_operation(op)
}
