//! The wrappers of [`Runtime`], [`Sandbox`], [`FileStore`] and [`Process`] that send every
//! operation through a [`Layer`], written once for every layer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::{Call, Layer, Next};
use crate::process::ProcessControl;
use crate::Operation;
use crate::{
    ByteStream, Capabilities, CommandSpec, EntryInfo, Error, ErrorKind, FileStore, FsEventStream,
    ListFilter, Metrics, NetworkPolicy, Process, ProcessHandle, ProcessInfo, PtySize, Result,
    Runtime, Sandbox, SandboxInfo, SandboxSpec, Signal, Snapshot, Volume,
};

/// Runs `call` on `inner`, the object below, through `layer` as `op`.
async fn through<'a, L: Layer, I: ?Sized + Sync, T: Send + 'a>(
    layer: &'a L,
    op: &'a Call<'a>,
    inner: &'a I,
    call: impl Fn(&'a I) -> BoxFuture<'a, Result<T>> + Send + Sync + 'a,
) -> Result<T> {
    let call = || call(inner);
    layer.call(op, Next::new(&call)).await
}

/// Takes a value a call consumes, for calls that run once (see [`Call::repeatable`]).
fn take_once<T>(slot: &Mutex<Option<T>>, op: Operation) -> Result<T> {
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

    fn op<'a>(&self, operation: Operation) -> Call<'a> {
        Call::new(self.inner.name(), operation, self.inner.capabilities())
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
        let op = self.op(Operation::Create).with_spec(&spec);
        let made = through(&*self.layer, &op, &*self.inner, |inner| {
            inner.create(spec.clone())
        })
        .await?;
        Ok(self.sandbox(made))
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>> {
        let op = self.op(Operation::Connect).with_sandbox(id);
        let sandbox = through(&*self.layer, &op, &*self.inner, |inner| inner.connect(id)).await?;
        Ok(self.sandbox(sandbox))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        through(
            &*self.layer,
            &self.op(Operation::List),
            &*self.inner,
            |inner| inner.list(filter),
        )
        .await
    }

    async fn info(&self, id: &str) -> Result<SandboxInfo> {
        through(
            &*self.layer,
            &self.op(Operation::Info).with_sandbox(id),
            &*self.inner,
            |inner| inner.info(id),
        )
        .await
    }

    async fn kill(&self, id: &str) -> Result<()> {
        through(
            &*self.layer,
            &self.op(Operation::Kill).with_sandbox(id),
            &*self.inner,
            |inner| inner.kill(id),
        )
        .await
    }

    async fn snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<Snapshot>> {
        let mut op = self.op(Operation::Snapshots);
        if let Some(id) = sandbox_id {
            op = op.with_sandbox(id);
        }
        through(&*self.layer, &op, &*self.inner, |inner| {
            inner.snapshots(sandbox_id)
        })
        .await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        through(
            &*self.layer,
            &self.op(Operation::DeleteSnapshot),
            &*self.inner,
            |inner| inner.delete_snapshot(id),
        )
        .await
    }

    async fn create_volume(
        &self,
        name: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Volume> {
        through(
            &*self.layer,
            &self.op(Operation::CreateVolume),
            &*self.inner,
            |inner| inner.create_volume(name, metadata.clone()),
        )
        .await
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        through(
            &*self.layer,
            &self.op(Operation::Volumes),
            &*self.inner,
            |inner| inner.volumes(),
        )
        .await
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        through(
            &*self.layer,
            &self.op(Operation::RemoveVolume),
            &*self.inner,
            |inner| inner.remove_volume(name),
        )
        .await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }

    async fn gauges(&self) -> Vec<crate::Gauge> {
        self.inner.gauges().await
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
    fn op<'a>(&'a self, operation: Operation) -> Call<'a> {
        Call::new(self.backend, operation, self.capabilities).with_sandbox(&*self.sandbox_id)
    }

    /// Sends each error of `stream` through [`Layer::error`].
    fn stream<S, I>(
        &self,
        op: Call<'_>,
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
        let op = self.shared.op(Operation::Spawn).with_command(&spec);
        let process = through(self.layer(), &op, &*self.inner, |inner| {
            inner.spawn(spec.clone())
        })
        .await?;
        Ok(layered_process(&self.shared, op, process))
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        through(
            self.layer(),
            &self.shared.op(Operation::Processes),
            &*self.inner,
            |inner| inner.processes(),
        )
        .await
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
            Err(e) => Err(self.layer().error(&self.shared.op(Operation::FilesAs), e)),
        }
    }

    async fn info(&self) -> Result<SandboxInfo> {
        through(
            self.layer(),
            &self.shared.op(Operation::Info),
            &*self.inner,
            |inner| inner.info(),
        )
        .await
    }

    async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        through(
            self.layer(),
            &self.shared.op(Operation::SetTimeout),
            &*self.inner,
            |inner| inner.set_timeout(timeout),
        )
        .await
    }

    async fn kill(&self) -> Result<()> {
        through(
            self.layer(),
            &self.shared.op(Operation::Kill),
            &*self.inner,
            |inner| inner.kill(),
        )
        .await
    }

    async fn pause(&self) -> Result<()> {
        through(
            self.layer(),
            &self.shared.op(Operation::Pause),
            &*self.inner,
            |inner| inner.pause(),
        )
        .await
    }

    async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        let op = self.shared.op(Operation::Watch).with_path(path);
        let events = through(self.layer(), &op, &*self.inner, |inner| {
            inner.watch(path, recursive)
        })
        .await?;
        Ok(self.shared.stream(op, events))
    }

    async fn metrics(&self) -> Result<Metrics> {
        through(
            self.layer(),
            &self.shared.op(Operation::Metrics),
            &*self.inner,
            |inner| inner.metrics(),
        )
        .await
    }

    async fn set_network_policy(&self, policy: NetworkPolicy) -> Result<()> {
        through(
            self.layer(),
            &self.shared.op(Operation::SetNetworkPolicy),
            &*self.inner,
            |inner| inner.set_network_policy(policy.clone()),
        )
        .await
    }

    async fn snapshot(&self, name: Option<&str>) -> Result<Snapshot> {
        let mut op = self.shared.op(Operation::Snapshot);
        if name.is_none() {
            // Each call makes another snapshot.
            op = op.once();
        }
        through(self.layer(), &op, &*self.inner, |inner| {
            inner.snapshot(name)
        })
        .await
    }

    async fn fork(
        &self,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Box<dyn Sandbox>>>> {
        let op = self.shared.op(Operation::Fork);
        let copies = through(self.layer(), &op, &*self.inner, |inner| {
            inner.fork(count, timeout)
        })
        .await?;
        Ok(copies
            .into_iter()
            .map(|copy| match copy {
                Ok(sandbox) => Ok(self.wrap(sandbox)),
                Err(e) => Err(self.layer().error(&op, e)),
            })
            .collect())
    }

    async fn get_host(&self, port: u16) -> Result<String> {
        through(
            self.layer(),
            &self.shared.op(Operation::GetHost),
            &*self.inner,
            |inner| inner.get_host(port),
        )
        .await
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

    /// A write, with or without metadata: run once, since the stream is consumed.
    async fn write(
        &self,
        path: &str,
        content: ByteStream,
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<()> {
        let op = self.shared.op(Operation::WriteStream).with_path(path);
        let content = Mutex::new(Some(content));
        through(self.layer(), &op, self.store(), |store| {
            match take_once(&content, Operation::WriteStream) {
                Ok(content) => match metadata {
                    None => store.write_stream(path, content),
                    Some(metadata) => store.write_stream_with_metadata(path, content, metadata),
                },
                Err(e) => futures_util::future::ready(Err(e)).boxed(),
            }
        })
        .await
    }
}

#[async_trait]
impl<L: Layer> FileStore for LayeredFiles<L> {
    async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        let op = self.shared.op(Operation::ReadStream).with_path(path);
        let stream = through(self.layer(), &op, self.store(), |store| {
            store.read_stream(path)
        })
        .await?;
        Ok(self.shared.stream(op, stream))
    }

    async fn write_stream(&self, path: &str, content: ByteStream) -> Result<()> {
        self.write(path, content, None).await
    }

    async fn write_stream_with_metadata(
        &self,
        path: &str,
        content: ByteStream,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.write(path, content, Some(metadata)).await
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        through(
            self.layer(),
            &self.shared.op(Operation::ListFiles).with_path(path),
            self.store(),
            |store| store.list(path, depth),
        )
        .await
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        through(
            self.layer(),
            &self.shared.op(Operation::Stat).with_path(path),
            self.store(),
            |store| store.stat(path),
        )
        .await
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        through(
            self.layer(),
            &self.shared.op(Operation::Mkdir).with_path(path),
            self.store(),
            |store| store.mkdir(path),
        )
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        through(
            self.layer(),
            &self.shared.op(Operation::Rename).with_path(from),
            self.store(),
            |store| store.rename(from, to),
        )
        .await
    }

    async fn remove(&self, path: &str) -> Result<()> {
        through(
            self.layer(),
            &self.shared.op(Operation::Remove).with_path(path),
            self.store(),
            |store| store.remove(path),
        )
        .await
    }
}

/// A process whose events and control go through the layer. The deadline stays with the
/// process below, which enforces it.
fn layered_process<L: Layer>(shared: &Arc<Shared<L>>, op: Call<'_>, inner: Process) -> Process {
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
    fn op(&self, operation: Operation) -> Call<'_> {
        self.shared.op(operation)
    }
}

#[async_trait]
impl<L: Layer> ProcessControl for LayeredControl<L> {
    async fn write_stdin(&self, data: Bytes) -> Result<()> {
        // Written twice, the input would be read twice.
        let op = self.op(Operation::WriteStdin);
        through(&*self.shared.layer, &op, &self.handle, |handle| {
            let data = data.clone();
            async move { handle.write_stdin(data).await }.boxed()
        })
        .await
    }

    async fn close_stdin(&self) -> Result<()> {
        through(
            &*self.shared.layer,
            &self.op(Operation::CloseStdin),
            &self.handle,
            |handle| async move { handle.close_stdin().await }.boxed(),
        )
        .await
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        through(
            &*self.shared.layer,
            &self.op(Operation::Signal),
            &self.handle,
            |handle| async move { handle.signal(signal).await }.boxed(),
        )
        .await
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        through(
            &*self.shared.layer,
            &self.op(Operation::Resize),
            &self.handle,
            |handle| async move { handle.resize(size.cols, size.rows).await }.boxed(),
        )
        .await
    }
}
