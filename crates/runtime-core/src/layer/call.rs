//! What a layer is: the [`Layer`] trait, the [`Call`] it sees and the [`Next`] it runs.

use std::borrow::Cow;
use std::fmt;

use futures_util::future::BoxFuture;

use crate::{Capabilities, CommandSpec, Error, Operation, Result, SandboxSpec};

/// Behaviour around every operation of a runtime and of what it hands out.
///
/// Implement [`Layer::call`]; [`wrap`](super::wrap) does the rest (the wrappers of [`Runtime`](crate::Runtime),
/// [`Sandbox`](crate::Sandbox), [`FileStore`](crate::FileStore) and
/// [`Process`](crate::Process) are written once, here).
pub trait Layer: Send + Sync + fmt::Debug + 'static {
    /// Runs the call: `next.run()` calls the layer below (at most once where
    /// [`Call::repeatable`] is false).
    fn call<'a, T: Send + 'a>(
        &'a self,
        call: &'a Call<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>>;

    /// An error that did not come back through [`Layer::call`]: one from a stream the operation
    /// returned (a read's chunks, a watch's events, a process's events) or from a call that is
    /// not async ([`Sandbox::files_as`](crate::Sandbox::files_as)). The default returns it as
    /// it is.
    fn error(&self, call: &Call<'_>, error: Error) -> Error {
        let _ = call;
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
pub struct Call<'a> {
    backend: &'static str,
    operation: Operation,
    capabilities: Capabilities,
    sandbox_id: Option<Cow<'a, str>>,
    path: Option<Cow<'a, str>>,
    spec: Option<&'a SandboxSpec>,
    command: Option<&'a CommandSpec>,
    repeatable: bool,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        backend: &'static str,
        operation: Operation,
        capabilities: Capabilities,
    ) -> Self {
        Call {
            backend,
            operation,
            capabilities,
            sandbox_id: None,
            path: None,
            spec: None,
            command: None,
            repeatable: operation.repeatable(),
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

    /// Marks a call that must not be made twice for its arguments (an unnamed snapshot).
    pub(crate) fn once(mut self) -> Self {
        self.repeatable = false;
        self
    }

    /// The same call without borrows, for the streams it returns (specs are dropped).
    pub(crate) fn into_owned(self) -> Call<'static> {
        Call {
            backend: self.backend,
            operation: self.operation,
            capabilities: self.capabilities,
            sandbox_id: self.sandbox_id.map(|s| Cow::Owned(s.into_owned())),
            path: self.path.map(|s| Cow::Owned(s.into_owned())),
            spec: None,
            command: None,
            repeatable: self.repeatable,
        }
    }

    /// The backend's name ([`Runtime::name`](crate::Runtime::name)).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The method called.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// What the backend can do ([`Runtime::capabilities`](crate::Runtime::capabilities)).
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

    /// Whether running the call again is safe: false where [`Operation::repeatable`] is, and
    /// for an unnamed snapshot (each call makes another).
    pub fn repeatable(&self) -> bool {
        self.repeatable
    }
}
