//! Mapping Docker engine errors into [`sandkit_core::Error`].

use sandkit_core::{Error, ErrorKind};

pub(crate) const BACKEND: &str = "docker";

/// Maps a bollard error. `what` names the object a 404 is about ("sandbox", "image", "path").
///
/// The engine answers 500 for what went wrong inside a container as well as for its own
/// trouble: the message decides the kind, so a write into a read-only mount is not taken for
/// an engine that may come back (and retried).
pub(crate) fn map(e: bollard::errors::Error, op: &'static str, what: &str) -> Error {
    use bollard::errors::Error as B;
    let mut keep_source = true;
    let (kind, message) = match &e {
        B::DockerResponseServerError {
            status_code,
            message: raw,
        } => {
            let message = strip_host_paths(raw);
            // The engine's own text held a host path: it stays out of the source chain too.
            keep_source = message == *raw;
            let lower = message.to_ascii_lowercase();
            let kind = match status_code {
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                // Two networks of one name, made at the same moment by two processes: the one
                // that sees it first removes the extra (`ensure_isolated_network`), so trying
                // again works.
                400 if lower.contains("is ambiguous") => ErrorKind::Unavailable,
                400 => ErrorKind::InvalidInput,
                401 => ErrorKind::Unauthenticated,
                403 => ErrorKind::PermissionDenied,
                500 if lower.contains("file name too long") => {
                    return Error::new(
                        ErrorKind::InvalidInput,
                        "a file name is too long (at most 255 bytes a name, 4096 a path)",
                    )
                    .with_operation(op);
                }
                500 if lower.contains("read-only file system")
                    || lower.contains("permission denied")
                    || lower.contains("operation not permitted") =>
                {
                    ErrorKind::PermissionDenied
                }
                500 if lower.contains("no such file or directory") => ErrorKind::NotFound,
                500 if lower.contains("not a directory") || lower.contains("is a directory") => {
                    ErrorKind::InvalidInput
                }
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
    let mapped = Error::new(kind, message).with_operation(op);
    if keep_source {
        mapped.with_source(e)
    } else {
        mapped
    }
}

/// Removes the engine's host paths (`/var/lib/docker/<driver>/<id>/merged/...`) from an engine
/// message, keeping the path as the sandbox sees it: where the engine keeps containers is none
/// of the caller's business.
pub(crate) fn strip_host_paths(message: &str) -> String {
    let mut out = message.to_string();
    for marker in ["/merged/", "/diff/"] {
        while let Some(at) = out.find(marker) {
            let start = out[..at]
                .rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '(')
                .map(|i| i + 1)
                .unwrap_or(0);
            out.replace_range(start..at + marker.len() - 1, "");
        }
    }
    out
}

/// An error of this backend without an engine error behind it.
pub(crate) fn err(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Error {
    Error::new(kind, message.into()).with_operation(op)
}

#[cfg(test)]
mod tests {
    use sandkit_core::ErrorKind;

    fn engine(status_code: u16, message: &str) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    /// Every engine answer we map, with its class (and whether a retry can help).
    #[test]
    fn engine_errors_are_classified() {
        let cases = [
            (404, "No such container: x", ErrorKind::NotFound),
            (409, "Container x is paused", ErrorKind::Conflict),
            (400, "bad parameter", ErrorKind::InvalidInput),
            (401, "unauthorized", ErrorKind::Unauthenticated),
            (403, "forbidden", ErrorKind::PermissionDenied),
            (
                500,
                "Error processing tar file(exit status 1): open /data/x: read-only file system",
                ErrorKind::PermissionDenied,
            ),
            (
                500,
                "mkdir /root/x: permission denied",
                ErrorKind::PermissionDenied,
            ),
            (
                500,
                "lstat /var/lib/docker/overlay2/abc/merged/x: no such file or directory",
                ErrorKind::NotFound,
            ),
            (
                500,
                "open /etc/passwd/x: not a directory",
                ErrorKind::InvalidInput,
            ),
            (
                500,
                "open /tmp/aaa: file name too long",
                ErrorKind::InvalidInput,
            ),
            (
                500,
                "containerd: connection refused",
                ErrorKind::Unavailable,
            ),
            (418, "teapot", ErrorKind::Unexpected),
        ];
        for (code, message, kind) in cases {
            let e = super::map(engine(code, message), "write", "path");
            assert_eq!(e.kind(), kind, "{code} {message}: {e}");
            assert!(!e.to_string().contains("/var/lib/docker"), "{e}");
        }
        assert!(super::map(engine(503, "busy"), "write", "path").is_retryable());
        let twin = "network sandkit-isolated is ambiguous (2 matches found on name)";
        assert!(super::map(engine(400, twin), "create", "network").is_retryable());
        assert!(!super::map(engine(400, "bad parameter"), "create", "x").is_retryable());
        assert!(
            !super::map(engine(500, "x: read-only file system"), "write", "path").is_retryable()
        );
    }

    #[test]
    fn host_paths_are_removed() {
        let m = "open /var/lib/docker/fuse-overlayfs/0123abcd/merged/tmp/aaa: file name too long";
        assert_eq!(
            super::strip_host_paths(m),
            "open /tmp/aaa: file name too long"
        );
        assert_eq!(super::strip_host_paths("no path here"), "no path here");
    }
}
