//! Mapping Docker engine errors into [`runtime_core::Error`].

use runtime_core::{Error, ErrorKind};

pub(crate) const BACKEND: &str = "docker";

/// Maps a bollard error. `what` names the object a 404 is about ("sandbox", "image", "path").
pub(crate) fn map(e: bollard::errors::Error, op: &'static str, what: &str) -> Error {
    use bollard::errors::Error as B;
    let (kind, message) = match &e {
        B::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match status_code {
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                400 => ErrorKind::InvalidInput,
                401 => ErrorKind::Unauthenticated,
                403 => ErrorKind::PermissionDenied,
                500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::Unexpected,
            };
            let msg = if *status_code == 404 {
                format!("{what} not found: {message}")
            } else {
                format!("the engine answered {status_code}: {message}")
            };
            (kind, msg)
        }
        B::RequestTimeoutError => (ErrorKind::Timeout, "the engine did not answer in time".into()),
        B::IOError { .. } | B::HyperResponseError { .. } | B::HyperLegacyError { .. } => (
            ErrorKind::Unavailable,
            "cannot talk to the Docker engine; is it running? (start it with `cargo xtask docker`, \
             or point DOCKER_HOST at a running engine)"
                .into(),
        ),
        _ => (ErrorKind::Unexpected, "unexpected answer from the Docker engine".into()),
    };
    Error::new(kind, message)
        .with_backend(BACKEND)
        .with_operation(op)
        .with_source(e)
}

/// An error of this backend without an engine error behind it.
pub(crate) fn err(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Error {
    Error::new(kind, message.into())
        .with_backend(BACKEND)
        .with_operation(op)
}
