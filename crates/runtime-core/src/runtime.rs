//! [`Runtime`] (where sandboxes live) and [`Sandbox`] (one live sandbox).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Capabilities, CommandSpec, FileStore, FsEventStream, ListFilter, Metrics, Process, ProcessInfo,
    Result, SandboxInfo, SandboxSpec, Snapshot, Volume,
};

fn no_volumes(op: crate::Operation) -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Unsupported,
        "this backend keeps no volumes of its own",
    )
    .with_operation(op)
}

/// The most copies one [`Sandbox::fork`] makes (as on E2B).
pub const MAX_FORKS: usize = 20;

fn no_snapshots(op: crate::Operation) -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Unsupported,
        "this backend cannot snapshot sandboxes",
    )
    .with_operation(op)
}

/// A place where sandboxes live: an E2B account, a Docker engine.
///
/// # Contract
/// - `create` returns a running sandbox, or an error that says what to fix (a missing image
///   names the command that builds it).
/// - Sandboxes outlive the process that made them until their time to live passes or they
///   are killed; `connect`, `list` and `kill` work from any process.
/// - `connect` resumes a paused sandbox.
/// - `list` returns the sandboxes of this runtime that pass the filter, in no set order.
///
/// # Errors
/// An unknown or already-killed id is [`ErrorKind::NotFound`](crate::ErrorKind::NotFound). An
/// unreachable backend is [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) and
/// retryable. Every error names the backend.
#[async_trait]
pub trait Runtime: Send + Sync + fmt::Debug {
    /// The backend's name: `"docker"`, `"e2b"`, ...
    fn name(&self) -> &'static str;
    /// What this backend can do beyond the core contract.
    fn capabilities(&self) -> Capabilities;
    /// Makes a new sandbox.
    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>>;
    /// Attaches to an existing sandbox, resuming it if paused.
    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>>;
    /// Lists sandboxes.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>>;
    /// Information about one sandbox, without attaching to it or resuming it: a paused
    /// sandbox stays paused. The default looks the id up in [`Runtime::list`]; backends
    /// override it with a direct look-up.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown or ended sandbox.
    async fn info(&self, id: &str) -> Result<SandboxInfo> {
        self.list(&ListFilter::all())
            .await?
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| {
                crate::Error::new(
                    crate::ErrorKind::NotFound,
                    format!("sandbox {id} doesn't exist (killed, expired, or never made here)"),
                )
                .with_backend(self.name())
                .with_operation(crate::Operation::Info)
                .with_context("sandbox_id", id)
            })
    }
    /// Kills a sandbox by id.
    async fn kill(&self, id: &str) -> Result<()>;
    /// The snapshots this runtime keeps, newest first; with `sandbox_id`, only those taken
    /// from that sandbox.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend cannot
    /// snapshot ([`Capabilities::snapshots`]).
    async fn snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<Snapshot>> {
        let _ = sandbox_id;
        Err(no_snapshots(crate::Operation::Snapshots))
    }
    /// Deletes a snapshot by its [`Snapshot::id`]. Sandboxes already made from it keep
    /// running; no new ones can be made from it.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an id that is not a snapshot
    /// here (or was deleted); [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where
    /// the backend cannot snapshot.
    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(no_snapshots(crate::Operation::DeleteSnapshot))
    }
    /// Makes a volume named `name` (its metadata is kept with it), to mount into sandboxes
    /// with [`MountSource::Volume`](crate::MountSource::Volume).
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when a volume of that name exists;
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a name the backend
    /// cannot use; [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend
    /// keeps no volumes ([`Capabilities::volumes`]).
    async fn create_volume(
        &self,
        name: &str,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<Volume> {
        let _ = (name, metadata);
        Err(no_volumes(crate::Operation::CreateVolume))
    }
    /// The volumes this runtime made.
    async fn volumes(&self) -> Result<Vec<Volume>> {
        Err(no_volumes(crate::Operation::Volumes))
    }
    /// Removes a volume this runtime made, with its content.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for one it did not make or that is
    /// gone; [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) while a sandbox mounts it.
    async fn remove_volume(&self, name: &str) -> Result<()> {
        let _ = name;
        Err(no_volumes(crate::Operation::RemoveVolume))
    }
    /// Releases what the runtime keeps ready for later creates (Docker's warm pool), for a
    /// process about to end. Sandboxes handed out are not touched. The default does nothing.
    async fn shutdown(&self) {}
    /// What an operator watches of the runtime now (a warm pool's depth, a network guard's
    /// state), for a server's `/metrics`. Cheap, and never starts anything to measure it. The
    /// default has none.
    async fn gauges(&self) -> Vec<crate::Gauge> {
        Vec::new()
    }
}

/// One live sandbox.
///
/// # Contract
/// - [`Sandbox::spawn`] is the primitive; [`SandboxExt::exec`](crate::SandboxExt::exec) and
///   friends are built on it once.
/// - Exit codes are data: a command that exits non-zero is a successful call.
/// - Commands started without a user run as the sandbox's default user; without a cwd, in
///   its default directory.
///
/// # Timeouts
/// A command's [`CommandSpec::timeout`] kills the command **and its children** inside the
/// sandbox when it passes, and the call fails with
/// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) carrying the output so far. No backend
/// leaves a timed-out process running. The sandbox's own time to live is separate: see
/// [`Sandbox::set_timeout`].
///
/// # Errors
/// Calls on a sandbox that is gone fail with [`ErrorKind::NotFound`](crate::ErrorKind::NotFound).
#[async_trait]
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// The sandbox id.
    fn id(&self) -> &str;
    /// Starts a command and returns its handle at once.
    async fn spawn(&self, spec: CommandSpec) -> Result<Process>;
    /// The processes started through this backend that are still running.
    async fn processes(&self) -> Result<Vec<ProcessInfo>>;
    /// The sandbox's files, as the backend's own identity sees them (root on Docker).
    fn files(&self) -> &dyn FileStore;
    /// The sandbox's files as `user` sees them: reads and writes are checked with that user's
    /// permissions, and what is made belongs to them (as E2B's envd does for each request).
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend acts as one
    /// user only (the default); [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// for a user name the sandbox cannot have.
    fn files_as(&self, user: &str) -> Result<Box<dyn FileStore>> {
        let _ = user;
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            "this backend's files act as one user only",
        )
        .with_operation(crate::Operation::FilesAs))
    }
    /// Current information.
    async fn info(&self) -> Result<SandboxInfo>;
    /// Sets the time to live, counted from now (shorter or longer than before).
    async fn set_timeout(&self, timeout: Duration) -> Result<()>;
    /// Kills the sandbox. Killing it again is [`ErrorKind::NotFound`](crate::ErrorKind::NotFound).
    async fn kill(&self) -> Result<()>;
    /// Pauses the sandbox; [`Runtime::connect`] resumes it.
    async fn pause(&self) -> Result<()>;
    /// Watches a directory: one event per change to an entry in it (and, with `recursive`,
    /// in every directory below it, including ones made later), in order, until the stream is
    /// dropped.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend cannot
    /// watch ([`Capabilities::watch`]); [`ErrorKind::NotFound`](crate::ErrorKind::NotFound)
    /// for a missing path and [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for
    /// one that is not a directory.
    async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        let _ = (path, recursive);
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            "this backend cannot watch directories",
        )
        .with_operation(crate::Operation::Watch))
    }
    /// What the sandbox uses now: CPU, memory, disk.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend cannot
    /// measure ([`Capabilities::metrics`]).
    async fn metrics(&self) -> Result<Metrics> {
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            "this backend cannot measure what a sandbox uses",
        )
        .with_operation(crate::Operation::Metrics))
    }
    /// Replaces the sandbox's network policy; it takes effect on new connections and on
    /// connections already open.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend cannot
    /// enforce a policy ([`Capabilities::network_policy`]);
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an entry that does not
    /// parse (see [`NetworkPolicy::validate`](crate::NetworkPolicy::validate)).
    async fn set_network_policy(&self, policy: crate::NetworkPolicy) -> Result<()> {
        let _ = policy;
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            "this backend cannot enforce a network policy",
        )
        .with_operation(crate::Operation::SetNetworkPolicy))
    }
    /// Saves the sandbox's files as a snapshot that new sandboxes can be made from (pass its
    /// [`Snapshot::id`] as [`SandboxSpec::template`]). The sandbox keeps running. With a
    /// `name`, the snapshot can be found by it; a later snapshot with the same name replaces
    /// it.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend cannot
    /// snapshot ([`Capabilities::snapshots`]);
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a name the backend
    /// cannot use.
    async fn snapshot(&self, name: Option<&str>) -> Result<Snapshot> {
        let _ = name;
        Err(no_snapshots(crate::Operation::Snapshot))
    }
    /// Makes `count` new sandboxes that start from this sandbox's state now: it is captured
    /// once, then each copy is made from that capture, with this sandbox's template, metadata,
    /// environment, user, directory and network settings, and a time to live of `timeout`
    /// (else the default). This sandbox keeps running.
    ///
    /// The outer error is a capture that failed; each copy then succeeds or fails on its own.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) where the backend cannot
    /// snapshot; [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a `count`
    /// of 0 or over [`MAX_FORKS`].
    async fn fork(
        &self,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Box<dyn Sandbox>>>> {
        let _ = (count, timeout);
        Err(no_snapshots(crate::Operation::Fork))
    }
    /// An address (`host:port`) at which `port` inside the sandbox is reachable from where the
    /// runtime runs. On backends that publish ports explicitly, a port asked for in
    /// [`SandboxSpec::ports`] always is; Docker also answers with the sandbox's own address
    /// for other ports when the engine runs on this machine.
    async fn get_host(&self, port: u16) -> Result<String>;
}
