//! Layers: behaviour written once and wrapped around every operation of a [`Runtime`] and of
//! everything it hands out — its [`Sandbox`](crate::Sandbox)es, their [`FileStore`](crate::FileStore)s and their [`Process`](crate::Process)es —
//! whatever the backend, as OpenDAL's layers wrap its storage services.
//!
//! A [`Layer`] sees each call as an [`Operation`] (backend, name, sandbox id, path, spec) and
//! [`Next`], the same call on the layer below, which it runs once, runs again, or does not run.
//! [`wrap`] puts one layer around a runtime; [`standard`] builds the stack every sandkit program
//! uses (`sandkit-config` builds it from the configuration):
//!
//! | layer | what it does |
//! |---|---|
//! | [`ContextLayer`] | every error names its backend, operation, sandbox id and path |
//! | [`RetryLayer`] | runs again what failed with a [retryable](crate::Error::is_retryable) error; never a spawn or a write of a stream |
//! | [`CapabilityLayer`] | refuses specs and calls the backend's [`Capabilities`] do not cover, before the backend sees them |
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
//! use sandkit_core::layer::{Layer, Next, Operation};
//!
//! /// Counts the calls that failed.
//! #[derive(Debug, Default)]
//! struct Failures(std::sync::atomic::AtomicU64);
//!
//! impl Layer for Failures {
//!     fn call<'a, T: Send + 'a>(
//!         &'a self,
//!         _op: &'a Operation<'a>,
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

mod capability;
mod context;
mod retry;
mod trace;
mod wrappers;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::{Capabilities, CommandSpec, Error, Result, Runtime, SandboxSpec};

pub use capability::{check_spec, CapabilityLayer};
pub use context::ContextLayer;
pub use retry::RetryLayer;
pub use trace::TracingLayer;

/// Behaviour around every operation of a runtime and of what it hands out.
///
/// Implement [`Layer::call`]; [`wrap`] does the rest (the wrappers of [`Runtime`],
/// [`Sandbox`](crate::Sandbox), [`FileStore`](crate::FileStore) and
/// [`Process`](crate::Process) are written once, here).
pub trait Layer: Send + Sync + fmt::Debug + 'static {
    /// Runs the operation: `next.run()` calls the layer below (at most once where
    /// [`Operation::repeatable`] is false).
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Operation<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>>;

    /// An error that did not come back through [`Layer::call`]: one from a stream the operation
    /// returned (a read's chunks, a watch's events, a process's events) or from a call that is
    /// not async ([`Sandbox::files_as`](crate::Sandbox::files_as)). The default returns it as
    /// it is.
    fn error(&self, op: &Operation<'_>, error: Error) -> Error {
        let _ = op;
        error
    }
}

/// The call on the layer below, as a [`Layer`] sees it.
pub struct Next<'a, T> {
    call: &'a (dyn Fn() -> BoxFuture<'a, Result<T>> + Send + Sync + 'a),
}

impl<'a, T> Next<'a, T> {
    /// Wraps a call; the wrappers do this.
    pub(crate) fn new(call: &'a (dyn Fn() -> BoxFuture<'a, Result<T>> + Send + Sync + 'a)) -> Self {
        Next { call }
    }

    /// Calls the layer below.
    pub fn run(&self) -> BoxFuture<'a, Result<T>> {
        (self.call)()
    }
}

impl<T> Clone for Next<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Next<'_, T> {}

impl<T> fmt::Debug for Next<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Next")
    }
}

/// One call as layers see it: which backend, which operation, on what.
#[derive(Debug, Clone)]
pub struct Operation<'a> {
    backend: &'static str,
    name: &'static str,
    capabilities: Capabilities,
    sandbox_id: Option<Cow<'a, str>>,
    path: Option<Cow<'a, str>>,
    spec: Option<&'a SandboxSpec>,
    command: Option<&'a CommandSpec>,
    repeatable: bool,
}

impl<'a> Operation<'a> {
    pub(crate) fn new(
        backend: &'static str,
        name: &'static str,
        capabilities: Capabilities,
    ) -> Self {
        Operation {
            backend,
            name,
            capabilities,
            sandbox_id: None,
            path: None,
            spec: None,
            command: None,
            repeatable: true,
        }
    }

    pub(crate) fn with_sandbox(mut self, id: impl Into<Cow<'a, str>>) -> Self {
        self.sandbox_id = Some(id.into());
        self
    }

    pub(crate) fn with_path(mut self, path: &'a str) -> Self {
        self.path = Some(Cow::Borrowed(path));
        self
    }

    pub(crate) fn with_spec(mut self, spec: &'a SandboxSpec) -> Self {
        self.spec = Some(spec);
        self
    }

    pub(crate) fn with_command(mut self, command: &'a CommandSpec) -> Self {
        self.command = Some(command);
        self
    }

    /// Marks a call that must not be made twice (a spawn, a write of a stream).
    pub(crate) fn once(mut self) -> Self {
        self.repeatable = false;
        self
    }

    /// The same operation without borrows, for the streams it returns (specs are dropped).
    pub(crate) fn into_owned(self) -> Operation<'static> {
        Operation {
            backend: self.backend,
            name: self.name,
            capabilities: self.capabilities,
            sandbox_id: self.sandbox_id.map(|s| Cow::Owned(s.into_owned())),
            path: self.path.map(|s| Cow::Owned(s.into_owned())),
            spec: None,
            command: None,
            repeatable: self.repeatable,
        }
    }

    /// The backend's name ([`Runtime::name`]).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The operation, named as the trait method is (`create`, `spawn`, `read_stream`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What the backend can do ([`Runtime::capabilities`]).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// The sandbox the operation is on, if any.
    pub fn sandbox_id(&self) -> Option<&str> {
        self.sandbox_id.as_deref()
    }

    /// The path the operation is on, for file operations (the source of a rename).
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The spec of a `create`.
    pub fn spec(&self) -> Option<&SandboxSpec> {
        self.spec
    }

    /// The command of a `spawn`.
    pub fn command(&self) -> Option<&CommandSpec> {
        self.command
    }

    /// Whether running the call again is safe: false for a spawn, a fork, an unnamed
    /// snapshot, a write of a stream (it is consumed) and writes to a process's stdin.
    pub fn repeatable(&self) -> bool {
        self.repeatable
    }
}

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
