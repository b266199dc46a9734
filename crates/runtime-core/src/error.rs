//! The one error type every sandkit crate returns.

use std::borrow::Cow;
use std::fmt;

use crate::ExecOutput;

/// What went wrong, in a form code can branch on.
///
/// Tests and callers match on the kind, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The sandbox, file, process or image does not exist.
    NotFound,
    /// The thing to create is already there.
    AlreadyExists,
    /// The request itself is wrong: a bad path, a bad value, a bad argument.
    InvalidInput,
    /// No credentials, or credentials the backend refused.
    Unauthenticated,
    /// Credentials are fine but the operation is not allowed (or would escape a root).
    PermissionDenied,
    /// A deadline passed. For commands, the error carries the output produced so far. Not
    /// retryable by default: the call may have taken effect before the deadline.
    Timeout,
    /// The backend cannot be reached or is not working right now.
    Unavailable,
    /// The backend asked us to slow down.
    RateLimited,
    /// The backend cannot do this at all.
    Unsupported,
    /// The request conflicts with the current state (for example pausing a paused sandbox).
    Conflict,
    /// Anything else: a bug, or a response we did not expect.
    Unexpected,
}

impl ErrorKind {
    /// A short lowercase name, as used in messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unexpected => "unexpected",
        }
    }

    /// Whether trying again later can help, for errors of this kind by default.
    pub fn is_retryable_by_default(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::RateLimited)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from any sandkit crate: a [`ErrorKind`], a message saying what happened and what to
/// do, the backend and operation it came from, context, and the underlying cause.
///
/// ```
/// use sandkit_core::{Error, ErrorKind};
///
/// let err = Error::new(ErrorKind::NotFound, "no such sandbox")
///     .with_backend("docker")
///     .with_operation("connect")
///     .with_context("sandbox_id", "abc");
/// assert_eq!(err.kind(), ErrorKind::NotFound);
/// assert_eq!(
///     err.to_string(),
///     "docker: connect: no such sandbox (not found; sandbox_id=abc)"
/// );
/// ```
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    backend: Option<&'static str>,
    operation: Option<&'static str>,
    context: Vec<(&'static str, String)>,
    retryable: bool,
    /// Milliseconds (kept small: the error travels in every `Result`).
    retry_after_ms: Option<u32>,
    output: Option<Box<ExecOutput>>,
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind`. Retryable by default when the kind usually is.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            backend: None,
            operation: None,
            context: Vec::new(),
            retryable: kind.is_retryable_by_default(),
            retry_after_ms: None,
            output: None,
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error naming the operation.
    pub fn unsupported(backend: &'static str, operation: impl Into<&'static str>) -> Self {
        let operation = operation.into();
        Error::new(
            ErrorKind::Unsupported,
            format!("the {backend} backend does not support {operation}"),
        )
        .with_backend(backend)
        .with_operation(operation)
    }

    /// Names the backend ("docker", "e2b", "local", ...). Kept if already set.
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend.get_or_insert(backend);
        self
    }

    /// Names the operation: an [`Operation`](crate::Operation) of the contract, or a step of
    /// one ("load config", "exec"). Kept if already set.
    pub fn with_operation(mut self, operation: impl Into<&'static str>) -> Self {
        self.operation.get_or_insert(operation.into());
        self
    }

    /// Names the contract's operation that failed, as layers know it: it replaces the name a
    /// backend gave its own step, which stays in the context as `step` (`docker: read_stream:
    /// ... (step=read)`).
    pub(crate) fn in_operation(mut self, operation: crate::Operation) -> Self {
        let name = operation.as_str();
        match self.operation.replace(name) {
            Some(step) if step != name => self.with_context_once("step", step),
            _ => self,
        }
    }

    /// Adds a key/value pair of context (a path, a sandbox id, ...). Never pass secrets.
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Sets whether trying again can help.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Says how long to wait before trying again, as the backend asked (an HTTP
    /// `Retry-After`). The [`RetryLayer`](crate::layer::RetryLayer) waits that long instead of
    /// its own backoff.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = Some(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX));
        self
    }

    /// Adds `key=value` to the context unless the context names `key` already.
    pub(crate) fn with_context_once(self, key: &'static str, value: impl fmt::Display) -> Self {
        if self.context.iter().any(|(k, _)| *k == key) {
            self
        } else {
            self.with_context(key, value)
        }
    }

    /// Attaches the output a command produced before it failed (timeouts carry it).
    pub fn with_output(mut self, output: ExecOutput) -> Self {
        self.output = Some(Box::new(output));
        self
    }

    /// Sets the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without backend, operation or context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The backend the error came from, if known.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// The operation that failed, if known.
    pub fn operation(&self) -> Option<&'static str> {
        self.operation
    }

    /// The key/value context.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// Whether trying the same call again later can help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// How long the backend asked to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_ms
            .map(|ms| std::time::Duration::from_millis(ms.into()))
    }

    /// The output produced before the failure, for command timeouts.
    pub fn output(&self) -> Option<&ExecOutput> {
        self.output.as_deref()
    }

    /// Takes the output produced before the failure, for command timeouts.
    pub fn take_output(&mut self) -> Option<ExecOutput> {
        self.output.take().map(|o| *o)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(backend) = self.backend {
            write!(f, "{backend}: ")?;
        }
        if let Some(op) = self.operation {
            write!(f, "{op}: ")?;
        }
        write!(f, "{} ({}", self.message, self.kind)?;
        for (i, (k, v)) in self.context.iter().enumerate() {
            f.write_str(if i == 0 { "; " } else { ", " })?;
            write!(f, "{k}={v}")?;
        }
        f.write_str(")")?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

/// Reads like [`Display`](fmt::Display), so that a `main` returning `Err` prints one line that
/// says what happened; `{:#?}` shows every field.
///
/// ```
/// use sandkit_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Timeout, "the command ran past 5s").with_operation("exec");
/// assert_eq!(format!("{err:?}"), "exec: the command ran past 5s (timeout)");
/// assert!(format!("{err:#?}").contains("kind: Timeout"));
/// ```
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("backend", &self.backend)
            .field("operation", &self.operation)
            .field("context", &self.context)
            .field("retryable", &self.retryable)
            .field("retry_after", &self.retry_after());
        if let Some(output) = &self.output {
            d.field("output", output);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    /// Maps an I/O error by its [`std::io::ErrorKind`]; the backend and operation are for the
    /// caller to add.
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match e.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::InvalidInput | Io::InvalidData => ErrorKind::InvalidInput,
            Io::TimedOut => ErrorKind::Timeout,
            Io::Unsupported => ErrorKind::Unsupported,
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::BrokenPipe
            | Io::UnexpectedEof => ErrorKind::Unavailable,
            Io::DirectoryNotEmpty | Io::IsADirectory | Io::NotADirectory => ErrorKind::Conflict,
            _ => ErrorKind::Unexpected,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

/// The result type of every sandkit crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_backend_operation_kind_context_and_source() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::new(ErrorKind::Unavailable, "engine not answering")
            .with_backend("docker")
            .with_operation("create")
            .with_context("socket", "/var/run/docker.sock")
            .with_context("image", "x")
            .with_source(io);
        assert_eq!(
            err.to_string(),
            "docker: create: engine not answering (unavailable; socket=/var/run/docker.sock, image=x): disk on fire"
        );
        assert!(err.is_retryable());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn backend_and_operation_keep_the_innermost() {
        let err = Error::new(ErrorKind::NotFound, "x")
            .with_operation("stat")
            .with_operation("exists");
        assert_eq!(err.operation(), Some("stat"));
    }

    #[test]
    fn io_errors_map_by_kind() {
        let e: Error = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e: Error = std::io::Error::from(std::io::ErrorKind::AlreadyExists).into();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(!e.is_retryable());
    }
}
