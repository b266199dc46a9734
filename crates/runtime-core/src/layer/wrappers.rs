//! The wrappers of [`Runtime`], [`Sandbox`], [`FileStore`] and [`Process`] that send every
//! operation through a [`Layer`], written once for every layer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::{Layer, Next, Operation};
use crate::process::ProcessControl;
use crate::{
    ByteStream, Capabilities, CommandSpec, EntryInfo, Error, ErrorKind, FileStore, FsEventStream,
    ListFilter, Metrics, NetworkPolicy, Process, ProcessHandle, ProcessInfo, PtySize, Result,
    Runtime, Sandbox, SandboxInfo, SandboxSpec, Signal, Snapshot, Volume,
};

/// Runs `call` through `layer` as `op`.
async fn through<'a, L: Layer, T: Send + 'a>(
    layer: &'a L,
    op: &'a Operation<'a>,
    call: &'a (dyn Fn() -> BoxFuture<'a, Result<T>> + Send + Sync + 'a),
) -> Result<T> {
    layer.call(op, Next::new(call)).await
}

/// Takes a value a call consumes, for calls that run once (see [`Operation::repeatable`]).
fn take_once<T>(slot: &Mutex<Option<T>>, op: &'static str) -> Result<T> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                "a layer ran a call that consumes its input twice",
            )
            .with_operation(op)
        })
}

#[derive(Debug)]
pub(super) struct LayeredRuntime<L> {
    inner: Arc<dyn Runtime>,
    layer: Arc<L>,
}

impl<L: Layer> LayeredRuntime<L> {
    pub(super) fn new(inner: Arc<dyn Runtime>, layer: Arc<L>) -> Self {
        LayeredRuntime { inner, layer }
    }

    fn op<'a>(&self, name: &'static str) -> Operation<'a> {
        Operation::new(self.inner.name(), name, self.inner.capabilities())
    }

    fn sandbox(&self, inner: Box<dyn Sandbox>) -> Box<dyn Sandbox> {
        Box::new(LayeredSandbox::new(
            Arc::from(inner),
            self.layer.clone(),
            self.inner.name(),
            self.inner.capabilities(),
        ))
    }
}

#[async_trait]
impl<L: Layer> Runtime for LayeredRuntime<L> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let op = self.op("create").with_spec(&spec);
        let inner = &self.inner;
        let made = through(&*self.layer, &op, &|| inner.create(spec.clone())).await?;
        Ok(self.sandbox(made))
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>> {
        let op = self.op("connect").with_sandbox(id);
        let inner = &self.inner;
        let sandbox = through(&*self.layer, &op, &|| inner.connect(id)).await?;
        Ok(self.sandbox(sandbox))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        let op = self.op("list");
        let inner = &self.inner;
        through(&*self.layer, &op, &|| inner.list(filter)).await
    }

    async fn info(&self, id: &str) -> Result<SandboxInfo> {
        let op = self.op("info").with_sandbox(id);
        let inner = &self.inner;
        through(&*self.layer, &op, &|| inner.info(id)).await
    }

    async fn kill(&self, id: &str) -> Result<()> {
        let op = self.op("kill").with_sandbox(id);
        let inner = &self.inner;
        through(&*self.layer, &op, &|| inner.kill(id)).await
    }

    async fn snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<Snapshot>> {
        let mut op = self.op("snapshots");
        if let Some(id) = sandbox_id {
            op = op.with_sandbox(id);
        }
        let inner = &self.inner;
        through(&*self.layer, &op, &|| inner.snapshots(sandbox_id)).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let op = self.op("delete_snapshot");
        let inner = &self.inner;
        through(&*self.layer, &op, &|| inner.delete_snapshot(id)).await
    }

    async fn create_volume(
        &self,
        name: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Volume> {
        let op = self.op("create_volume");
        let inner = &self.inner;
        through(&*self.layer, &op, &|| {
            inner.create_volume(name, metadata.clone())
        })
        .await
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        let op = self.op("volumes");
        let inner = &self.inner;
        through(&*self.layer, &op, &|| inner.volumes()).await
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        let op = self.op("remove_volume");
        let inner = &self.inner;
        through(&*self.layer, &op, &|| inner.remove_volume(name)).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// Where a wrapped store's files come from.
#[derive(Debug)]
enum Store {
    /// The sandbox's own ([`Sandbox::files`]).
    OfSandbox(Arc<dyn Sandbox>),
    /// One the sandbox handed out ([`Sandbox::files_as`]).
    Own(Box<dyn FileStore>),
}

/// What every wrapper of one sandbox shares.
#[derive(Debug)]
struct Shared<L> {
    layer: Arc<L>,
    backend: &'static str,
    capabilities: Capabilities,
    sandbox_id: Arc<str>,
}

impl<L: Layer> Shared<L> {
    fn op<'a>(&'a self, name: &'static str) -> Operation<'a> {
        Operation::new(self.backend, name, self.capabilities).with_sandbox(&*self.sandbox_id)
    }

    /// Sends each error of `stream` through [`Layer::error`].
    fn stream<S, I>(
        &self,
        op: Operation<'_>,
        stream: S,
    ) -> futures_util::stream::BoxStream<'static, Result<I>>
    where
        S: futures_util::Stream<Item = Result<I>> + Send + 'static,
        I: Send + 'static,
    {
        let layer = self.layer.clone();
        let op = op.into_owned();
        stream
            .map(move |item| item.map_err(|e| layer.error(&op, e)))
            .boxed()
    }
}

#[derive(Debug)]
struct LayeredSandbox<L> {
    inner: Arc<dyn Sandbox>,
    shared: Arc<Shared<L>>,
    files: LayeredFiles<L>,
}

impl<L: Layer> LayeredSandbox<L> {
    fn new(
        inner: Arc<dyn Sandbox>,
        layer: Arc<L>,
        backend: &'static str,
        capabilities: Capabilities,
    ) -> Self {
        let shared = Arc::new(Shared {
            layer,
            backend,
            capabilities,
            sandbox_id: Arc::from(inner.id()),
        });
        LayeredSandbox {
            files: LayeredFiles {
                store: Store::OfSandbox(inner.clone()),
                shared: shared.clone(),
            },
            inner,
            shared,
        }
    }

    fn wrap(&self, inner: Box<dyn Sandbox>) -> Box<dyn Sandbox> {
        Box::new(LayeredSandbox::new(
            Arc::from(inner),
            self.shared.layer.clone(),
            self.shared.backend,
            self.shared.capabilities,
        ))
    }

    fn layer(&self) -> &L {
        &self.shared.layer
    }
}

#[async_trait]
impl<L: Layer> Sandbox for LayeredSandbox<L> {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn spawn(&self, spec: CommandSpec) -> Result<Process> {
        let op = self.shared.op("spawn").with_command(&spec).once();
        let inner = &self.inner;
        let process = through(self.layer(), &op, &|| inner.spawn(spec.clone())).await?;
        Ok(layered_process(&self.shared, op, process))
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        let op = self.shared.op("processes");
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.processes()).await
    }

    fn files(&self) -> &dyn FileStore {
        &self.files
    }

    fn files_as(&self, user: &str) -> Result<Box<dyn FileStore>> {
        match self.inner.files_as(user) {
            Ok(store) => Ok(Box::new(LayeredFiles {
                store: Store::Own(store),
                shared: self.shared.clone(),
            })),
            Err(e) => Err(self.layer().error(&self.shared.op("files_as"), e)),
        }
    }

    async fn info(&self) -> Result<SandboxInfo> {
        let op = self.shared.op("info");
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.info()).await
    }

    async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        let op = self.shared.op("set_timeout");
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.set_timeout(timeout)).await
    }

    async fn kill(&self) -> Result<()> {
        let op = self.shared.op("kill");
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.kill()).await
    }

    async fn pause(&self) -> Result<()> {
        let op = self.shared.op("pause");
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.pause()).await
    }

    async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        let op = self.shared.op("watch").with_path(path);
        let inner = &self.inner;
        let events = through(self.layer(), &op, &|| inner.watch(path, recursive)).await?;
        Ok(self.shared.stream(op, events))
    }

    async fn metrics(&self) -> Result<Metrics> {
        let op = self.shared.op("metrics");
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.metrics()).await
    }

    async fn set_network_policy(&self, policy: NetworkPolicy) -> Result<()> {
        let op = self.shared.op("set_network_policy");
        let inner = &self.inner;
        through(self.layer(), &op, &|| {
            inner.set_network_policy(policy.clone())
        })
        .await
    }

    async fn snapshot(&self, name: Option<&str>) -> Result<Snapshot> {
        let mut op = self.shared.op("snapshot");
        if name.is_none() {
            // Each call makes another snapshot.
            op = op.once();
        }
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.snapshot(name)).await
    }

    async fn fork(
        &self,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Box<dyn Sandbox>>>> {
        let op = self.shared.op("fork").once();
        let inner = &self.inner;
        let copies = through(self.layer(), &op, &|| inner.fork(count, timeout)).await?;
        Ok(copies
            .into_iter()
            .map(|copy| match copy {
                Ok(sandbox) => Ok(self.wrap(sandbox)),
                Err(e) => Err(self.layer().error(&op, e)),
            })
            .collect())
    }

    async fn host(&self, port: u16) -> Result<String> {
        let op = self.shared.op("host");
        let inner = &self.inner;
        through(self.layer(), &op, &|| inner.host(port)).await
    }
}

#[derive(Debug)]
struct LayeredFiles<L> {
    store: Store,
    shared: Arc<Shared<L>>,
}

impl<L: Layer> LayeredFiles<L> {
    fn store(&self) -> &dyn FileStore {
        match &self.store {
            Store::OfSandbox(sandbox) => sandbox.files(),
            Store::Own(store) => store.as_ref(),
        }
    }

    fn layer(&self) -> &L {
        &self.shared.layer
    }
}

#[async_trait]
impl<L: Layer> FileStore for LayeredFiles<L> {
    async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        let op = self.shared.op("read_stream").with_path(path);
        let store = self.store();
        let stream = through(self.layer(), &op, &|| store.read_stream(path)).await?;
        Ok(self.shared.stream(op, stream))
    }

    async fn write_stream(&self, path: &str, content: ByteStream) -> Result<()> {
        let op = self.shared.op("write_stream").with_path(path).once();
        let store = self.store();
        let content = Mutex::new(Some(content));
        through(
            self.layer(),
            &op,
            &|| match take_once(&content, "write_stream") {
                Ok(content) => store.write_stream(path, content),
                Err(e) => futures_util::future::ready(Err(e)).boxed(),
            },
        )
        .await
    }

    async fn write_stream_with_metadata(
        &self,
        path: &str,
        content: ByteStream,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let op = self.shared.op("write_stream").with_path(path).once();
        let store = self.store();
        let content = Mutex::new(Some(content));
        through(
            self.layer(),
            &op,
            &|| match take_once(&content, "write_stream") {
                Ok(content) => store.write_stream_with_metadata(path, content, metadata),
                Err(e) => futures_util::future::ready(Err(e)).boxed(),
            },
        )
        .await
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let op = self.shared.op("list").with_path(path);
        let store = self.store();
        through(self.layer(), &op, &|| store.list(path, depth)).await
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let op = self.shared.op("stat").with_path(path);
        let store = self.store();
        through(self.layer(), &op, &|| store.stat(path)).await
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let op = self.shared.op("mkdir").with_path(path);
        let store = self.store();
        through(self.layer(), &op, &|| store.mkdir(path)).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let op = self.shared.op("rename").with_path(from);
        let store = self.store();
        through(self.layer(), &op, &|| store.rename(from, to)).await
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let op = self.shared.op("remove").with_path(path);
        let store = self.store();
        through(self.layer(), &op, &|| store.remove(path)).await
    }
}

/// A process whose events and control go through the layer. The deadline stays with the
/// process below, which enforces it.
fn layered_process<L: Layer>(
    shared: &Arc<Shared<L>>,
    op: Operation<'_>,
    inner: Process,
) -> Process {
    let pid = inner.pid();
    let handle = inner.handle();
    let events = futures_util::stream::unfold(inner, |mut process| async move {
        let event = process.next_event().await?;
        Some((event, process))
    });
    let events = shared.stream(op, events);
    Process::new(
        pid,
        events,
        Arc::new(LayeredControl {
            handle,
            shared: shared.clone(),
        }),
    )
}

#[derive(Debug)]
struct LayeredControl<L> {
    handle: ProcessHandle,
    shared: Arc<Shared<L>>,
}

impl<L: Layer> LayeredControl<L> {
    fn op(&self, name: &'static str) -> Operation<'_> {
        self.shared.op(name)
    }
}

#[async_trait]
impl<L: Layer> ProcessControl for LayeredControl<L> {
    async fn write_stdin(&self, data: Bytes) -> Result<()> {
        // Written twice, the input would be read twice.
        let op = self.op("write_stdin").once();
        let handle = &self.handle;
        through(&*self.shared.layer, &op, &|| {
            let data = data.clone();
            async move { handle.write_stdin(data).await }.boxed()
        })
        .await
    }

    async fn close_stdin(&self) -> Result<()> {
        let op = self.op("close_stdin");
        let handle = &self.handle;
        through(&*self.shared.layer, &op, &|| {
            async move { handle.close_stdin().await }.boxed()
        })
        .await
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        let op = self.op("signal");
        let handle = &self.handle;
        through(&*self.shared.layer, &op, &|| {
            async move { handle.signal(signal).await }.boxed()
        })
        .await
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        let op = self.op("resize");
        let handle = &self.handle;
        through(&*self.shared.layer, &op, &|| {
            async move { handle.resize(size.cols, size.rows).await }.boxed()
        })
        .await
    }
}
