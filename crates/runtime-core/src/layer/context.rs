//! [`ContextLayer`]: every error names where it came from.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Call, Layer, Next};
use crate::{Error, Result};

/// Adds to every error the backend, the operation, and the sandbox id and path it was on, so
/// that backends need not. The backend, id and path are kept where the backend named them; the
/// operation is always the contract's ([`Operation`](crate::Operation)), and a backend's own
/// name for its step stays as `step`:
///
/// `docker: read_stream: no such file (not found; step=read, path=/x, sandbox_id=4f2a…)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextLayer;

impl Layer for ContextLayer {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Call<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        next.run()
            .map(move |r| r.map_err(|e| self.error(op, e)))
            .boxed()
    }

    fn error(&self, op: &Call<'_>, error: Error) -> Error {
        let mut error = error
            .with_backend(op.backend())
            .in_operation(op.operation());
        if let Some(path) = op.path() {
            error = error.with_context_once("path", path);
        }
        if let Some(id) = op.sandbox_id() {
            error = error.with_context_once("sandbox_id", id);
        }
        error
    }
}
