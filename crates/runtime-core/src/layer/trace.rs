//! [`TracingLayer`]: a span per operation.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::Instrument;

use super::{Call, Layer, Next};
use crate::Result;

/// Runs every operation in an `info` span named `sandkit` with fields `backend`, `op`, and
/// `sandbox_id` and `path` where the operation has them; a failure is logged at `debug` in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer;

impl Layer for TracingLayer {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Call<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        let span = tracing::info_span!(
            "sandkit",
            backend = op.backend(),
            op = op.operation().as_str(),
            sandbox_id = tracing::field::Empty,
            path = tracing::field::Empty,
        );
        if let Some(id) = op.sandbox_id() {
            span.record("sandbox_id", id);
        }
        if let Some(path) = op.path() {
            span.record("path", path);
        }
        async move {
            let result = next.run().await;
            if let Err(e) = &result {
                tracing::debug!(error = %e, "failed");
            }
            result
        }
        .instrument(span)
        .boxed()
    }
}
