//! [`ContextLayer`]: every error names where it came from.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Layer, Next, Operation};
use crate::{Error, Result};

/// Adds to every error the backend, the operation, and the sandbox id and path it was on
/// (each only where the backend did not name it), so that backends need not:
///
/// `docker: read_stream: no such file (not found; path=/x, sandbox_id=4f2a…)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextLayer;

impl Layer for ContextLayer {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Operation<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        next.run()
            .map(move |r| r.map_err(|e| self.error(op, e)))
            .boxed()
    }

    fn error(&self, op: &Operation<'_>, error: Error) -> Error {
        let mut error = error.with_backend(op.backend()).with_operation(op.name());
        if let Some(path) = op.path() {
            error = error.with_context_once("path", path);
        }
        if let Some(id) = op.sandbox_id() {
            error = error.with_context_once("sandbox_id", id);
        }
        error
    }
}
