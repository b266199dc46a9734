//! Layers: behaviour written once and wrapped around every operation of a [`Runtime`] and of
//! everything it hands out — its [`Sandbox`](crate::Sandbox)es, their [`FileStore`](crate::FileStore)s and their [`Process`](crate::Process)es —
//! whatever the backend, as OpenDAL's layers wrap its storage services.
//!
//! A [`Layer`] sees each call as a [`Call`] (backend, [`Operation`](crate::Operation), sandbox id, path, spec) and
//! [`Next`], the same call on the layer below, which it runs once, runs again, or does not run.
//! [`wrap`] puts one layer around a runtime; [`standard`] builds the stack every sandkit program
//! uses (`sandkit-config` builds it from the configuration):
//!
//! | layer | what it does |
//! |---|---|
//! | [`ContextLayer`] | every error names its backend, operation, sandbox id and path |
//! | [`RetryLayer`] | runs again what failed with a [retryable](crate::Error::is_retryable) error; never a spawn or a write of a stream |
//! | [`CapabilityLayer`] | refuses specs and calls the backend's [`Capabilities`](crate::Capabilities) do not cover, before the backend sees them |
//! | [`TracingLayer`] | a span per operation, with backend, operation, sandbox id and path |
//!
//! ```
//! use std::sync::Arc;
//! use sandkit_core::layer::{self, RetryLayer};
//! use sandkit_core::Runtime;
//!
//! fn stack(backend: Arc<dyn Runtime>) -> Arc<dyn Runtime> {
//!     // Context innermost, tracing outermost; retries with the default policy.
//!     layer::standard(backend, Some(RetryLayer::default()))
//! }
//! ```
//!
//! Writing a layer takes one method:
//!
//! ```
//! use futures_util::future::BoxFuture;
//! use sandkit_core::layer::{Call, Layer, Next};
//!
//! /// Counts the calls that failed.
//! #[derive(Debug, Default)]
//! struct Failures(std::sync::atomic::AtomicU64);
//!
//! impl Layer for Failures {
//!     fn call<'a, T: Send + 'a>(
//!         &'a self,
//!         _call: &'a Call<'a>,
//!         next: Next<'a, T>,
//!     ) -> BoxFuture<'a, sandkit_core::Result<T>> {
//!         Box::pin(async move {
//!             let result = next.run().await;
//!             if result.is_err() {
//!                 self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!             }
//!             result
//!         })
//!     }
//! }
//! ```

mod call;
mod capability;
mod context;
mod retry;
mod trace;
mod wrappers;

use std::sync::Arc;

use crate::Runtime;

pub use call::{Call, Layer, Next};
pub use capability::{check_spec, CapabilityLayer};
pub use context::ContextLayer;
pub use retry::RetryLayer;
pub use trace::TracingLayer;

/// Wraps `inner` in `layer`: every operation on the runtime, and on every sandbox, file store
/// and process it hands out, goes through [`Layer::call`].
pub fn wrap<L: Layer>(inner: Arc<dyn Runtime>, layer: L) -> Arc<dyn Runtime> {
    Arc::new(wrappers::LayeredRuntime::new(inner, Arc::new(layer)))
}

/// The stack every sandkit program uses, from the inside out: [`ContextLayer`], `retry` (when
/// given), [`CapabilityLayer`], [`TracingLayer`].
pub fn standard(inner: Arc<dyn Runtime>, retry: Option<RetryLayer>) -> Arc<dyn Runtime> {
    let mut runtime = wrap(inner, ContextLayer);
    if let Some(retry) = retry {
        runtime = wrap(runtime, retry);
    }
    runtime = wrap(runtime, CapabilityLayer);
    wrap(runtime, TracingLayer)
}

#[cfg(test)]
mod tests;
