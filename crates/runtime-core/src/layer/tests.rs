//! The layers against a scripted backend: each test makes the backend fail as a real one
//! does and checks what the caller sees and how often the backend was asked.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::*;
use crate::process::ProcessControl;
use crate::{
    ByteStream, Capabilities, CommandSpec, EntryInfo, EntryKind, Error, ErrorKind, FileStore,
    FileStoreExt, ListFilter, Mount, Operation, Process, ProcessEvent, ProcessInfo, Result,
    Sandbox, SandboxExt, SandboxInfo, SandboxSpec, Signal,
};

/// A backend that records each call and answers with the next scripted error, if any.
#[derive(Debug)]
struct Script {
    calls: Mutex<Vec<&'static str>>,
    errors: Mutex<VecDeque<Error>>,
    capabilities: Capabilities,
}

impl Script {
    fn new(capabilities: Capabilities) -> Arc<Script> {
        Arc::new(Script {
            calls: Mutex::new(Vec::new()),
            errors: Mutex::new(VecDeque::new()),
            capabilities,
        })
    }

    fn fail_next(&self, errors: impl IntoIterator<Item = Error>) {
        self.errors.lock().unwrap().extend(errors);
    }

    fn answer(&self, call: &'static str) -> Result<()> {
        self.calls.lock().unwrap().push(call);
        match self.errors.lock().unwrap().pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn count(&self, call: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c == call)
            .count()
    }
}

#[derive(Debug)]
struct ScriptRuntime(Arc<Script>);

#[derive(Debug)]
struct ScriptSandbox(Arc<Script>);

#[async_trait]
impl Runtime for ScriptRuntime {
    fn name(&self) -> &'static str {
        "script"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities
    }
    async fn create(&self, _: SandboxSpec) -> Result<Box<dyn Sandbox>> {
        self.0.answer("create")?;
        Ok(Box::new(ScriptSandbox(self.0.clone())))
    }
    async fn connect(&self, _: &str) -> Result<Box<dyn Sandbox>> {
        self.0.answer("connect")?;
        Ok(Box::new(ScriptSandbox(self.0.clone())))
    }
    async fn list(&self, _: &ListFilter) -> Result<Vec<SandboxInfo>> {
        self.0.answer("list")?;
        Ok(Vec::new())
    }
    async fn kill(&self, _: &str) -> Result<()> {
        self.0.answer("kill")
    }
}

#[derive(Debug)]
struct NoControl;

#[async_trait]
impl ProcessControl for NoControl {
    async fn write_stdin(&self, _: bytes::Bytes) -> Result<()> {
        Err(Error::new(ErrorKind::InvalidInput, "stdin is closed"))
    }
    async fn close_stdin(&self) -> Result<()> {
        Ok(())
    }
    async fn signal(&self, _: Signal) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Sandbox for ScriptSandbox {
    fn id(&self) -> &str {
        "sb-1"
    }
    async fn spawn(&self, spec: CommandSpec) -> Result<Process> {
        self.0.answer("spawn")?;
        let mut events = vec![Ok(ProcessEvent::Stdout("out".into()))];
        if spec.timeout.is_none() {
            events.push(Err(Error::new(
                ErrorKind::Unavailable,
                "connection to the sandbox lost",
            )));
        }
        let events = futures_util::stream::iter(events);
        let events = events.chain(futures_util::stream::pending()).boxed();
        Ok(Process::new(7, events, Arc::new(NoControl)).with_timeout(spec.timeout))
    }
    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.0.answer("processes")?;
        Ok(Vec::new())
    }
    fn files(&self) -> &dyn FileStore {
        self
    }
    async fn info(&self) -> Result<SandboxInfo> {
        self.0.answer("info")?;
        Ok(SandboxInfo::new("sb-1", "t", "script"))
    }
    async fn set_timeout(&self, _: Duration) -> Result<()> {
        self.0.answer("set_timeout")
    }
    async fn kill(&self) -> Result<()> {
        self.0.answer("kill")
    }
    async fn pause(&self) -> Result<()> {
        self.0.answer("pause")
    }
    async fn get_host(&self, _: u16) -> Result<String> {
        self.0.answer("host")?;
        Ok("127.0.0.1:1".into())
    }
}

#[async_trait]
impl FileStore for ScriptSandbox {
    async fn read_stream(&self, _: &str) -> Result<ByteStream> {
        self.0.answer("read_stream")?;
        Ok(futures_util::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"ab")),
            Err(Error::new(ErrorKind::Unavailable, "cut")),
        ])
        .boxed())
    }
    async fn write_stream(&self, _: &str, mut content: ByteStream) -> Result<()> {
        while content.next().await.is_some() {}
        self.0.answer("write_stream")
    }
    async fn list(&self, _: &str, _: u32) -> Result<Vec<EntryInfo>> {
        self.0.answer("list")?;
        Ok(Vec::new())
    }
    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        self.0.answer("stat")?;
        Ok(EntryInfo::new(path, EntryKind::File))
    }
    async fn mkdir(&self, _: &str) -> Result<()> {
        self.0.answer("mkdir")
    }
    async fn rename(&self, _: &str, _: &str) -> Result<()> {
        self.0.answer("rename")
    }
    async fn remove(&self, _: &str) -> Result<()> {
        self.0.answer("remove")
    }
}

fn stack(script: &Arc<Script>) -> Arc<dyn Runtime> {
    standard(
        Arc::new(ScriptRuntime(script.clone())),
        Some(RetryLayer::default().base_wait(Duration::from_millis(1))),
    )
}

fn busy() -> Error {
    Error::new(ErrorKind::Unavailable, "engine busy")
}

#[tokio::test]
async fn errors_name_backend_operation_sandbox_and_path_once() {
    let script = Script::new(Capabilities::all());
    let sandbox = stack(&script).create(SandboxSpec::new()).await.unwrap();
    script.fail_next([Error::new(ErrorKind::NotFound, "no such file")]);
    let e = sandbox.files().stat("/x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        "script: stat: no such file (not found; path=/x, sandbox_id=sb-1)"
    );
    // What the backend named already is not named twice; the operation is the contract's,
    // and the backend's own name for its step is kept as `step`.
    script.fail_next([Error::new(ErrorKind::NotFound, "gone")
        .with_operation("lookup")
        .with_context("path", "/y/z")]);
    let e = sandbox.files().stat("/y/z").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "script: stat: gone (not found; path=/y/z, step=lookup, sandbox_id=sb-1)"
    );
    assert_eq!(e.operation(), Some(Operation::Stat.as_str()));
    assert_eq!(e.context().len(), 3, "{:?}", e.context());
    // A backend that names the contract's operation itself gets no `step`.
    script.fail_next([Error::new(ErrorKind::NotFound, "gone").with_operation(Operation::Stat)]);
    let e = sandbox.files().stat("/y").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "script: stat: gone (not found; path=/y, sandbox_id=sb-1)"
    );
}

#[tokio::test]
async fn errors_inside_streams_get_context_too() {
    let script = Script::new(Capabilities::all());
    let sandbox = stack(&script).create(SandboxSpec::new()).await.unwrap();
    let mut chunks = sandbox.files().read_stream("/big").await.unwrap();
    assert_eq!(&chunks.next().await.unwrap().unwrap()[..], b"ab");
    let e = chunks.next().await.unwrap().unwrap_err();
    assert_eq!(e.backend(), Some("script"));
    assert_eq!(e.operation(), Some("read_stream"));
    assert!(e.context().contains(&("path", "/big".into())));

    let mut p = sandbox.spawn(CommandSpec::shell("x")).await.unwrap();
    assert_eq!(p.pid(), 7);
    assert!(matches!(
        p.next_event().await,
        Some(Ok(ProcessEvent::Stdout(_)))
    ));
    let e = p.next_event().await.unwrap().unwrap_err();
    assert_eq!(e.operation(), Some("spawn"));
    assert!(e.context().contains(&("sandbox_id", "sb-1".into())));
    assert!(p.next_event().await.is_none());
    // Control goes through the layers as well.
    let e = p.write_stdin("x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(e.operation(), Some("write_stdin"));
}

#[tokio::test]
async fn a_deadline_below_the_layers_still_holds_and_is_not_retried() {
    let script = Script::new(Capabilities::all());
    let sandbox = stack(&script).create(SandboxSpec::new()).await.unwrap();
    // The scripted process never exits after its output; its own deadline ends it.
    let mut p = sandbox
        .spawn(CommandSpec::shell("hang").timeout(Duration::from_millis(50)))
        .await
        .unwrap();
    let e = loop {
        match p.next_event().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the timeout"),
        }
    };
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(!e.is_retryable());
    assert_eq!(e.backend(), Some("script"));
    assert!(p.next_event().await.is_none());
    assert_eq!(script.count("spawn"), 1);
}

#[tokio::test]
async fn retryable_failures_are_tried_again_and_others_are_not() {
    let script = Script::new(Capabilities::all());
    let runtime = stack(&script);
    let sandbox = runtime.create(SandboxSpec::new()).await.unwrap();

    script.fail_next([busy(), busy()]);
    sandbox.info().await.unwrap();
    assert_eq!(script.count("info"), 3, "two busy answers, then the answer");

    // Four attempts at most, then the last error.
    script.fail_next([busy(), busy(), busy(), busy(), busy()]);
    let e = runtime.list(&ListFilter::all()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(script.count("list"), 4);
    // Final once this layer gave up: a layer or client above does not try it again.
    assert!(!e.is_retryable(), "{e:?}");
    script.errors.lock().unwrap().clear();

    // A second retry layer above the first adds no attempt to an error the first gave up on.
    let twice = crate::layer::wrap(runtime.clone(), crate::layer::RetryLayer::default());
    script.fail_next([
        busy(),
        busy(),
        busy(),
        busy(),
        busy(),
        busy(),
        busy(),
        busy(),
    ]);
    twice.list(&ListFilter::all()).await.unwrap_err();
    assert_eq!(script.count("list"), 8, "4 attempts, not 16");
    script.errors.lock().unwrap().clear();

    // Not retryable: a read-only file system, a missing file.
    script.fail_next([Error::new(
        ErrorKind::PermissionDenied,
        "read-only file system",
    )]);
    sandbox.files().mkdir("/ro/x").await.unwrap_err();
    assert_eq!(script.count("mkdir"), 1);

    // Nor a deadline that passed: the call may have taken effect.
    script.fail_next([Error::new(ErrorKind::Timeout, "no answer in time")]);
    sandbox
        .set_timeout(Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(script.count("set_timeout"), 1);
}

#[tokio::test]
async fn spawns_and_stream_writes_are_never_run_twice() {
    let script = Script::new(Capabilities::all());
    let sandbox = stack(&script).create(SandboxSpec::new()).await.unwrap();
    script.fail_next([busy()]);
    let e = sandbox
        .spawn(CommandSpec::shell("rm -rf x"))
        .await
        .unwrap_err();
    assert!(
        e.is_retryable(),
        "the caller may decide; the layer does not"
    );
    assert_eq!(script.count("spawn"), 1);

    script.fail_next([busy()]);
    sandbox
        .files()
        .write("/f", "data".into())
        .await
        .unwrap_err();
    assert_eq!(script.count("write_stream"), 1);

    // exec is spawn plus reads: a command is never started twice by the stack.
    script.fail_next([busy()]);
    sandbox.exec(CommandSpec::shell("echo")).await.unwrap_err();
    assert_eq!(script.count("spawn"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_wait_the_backend_asks_for_is_kept_and_a_long_one_is_not_waited() {
    let script = Script::new(Capabilities::all());
    let runtime = stack(&script);
    script
        .fail_next([Error::new(ErrorKind::RateLimited, "slow down")
            .with_retry_after(Duration::from_secs(3))]);
    let started = tokio::time::Instant::now();
    runtime.list(&ListFilter::all()).await.unwrap();
    assert_eq!(started.elapsed().as_secs(), 3);
    assert_eq!(script.count("list"), 2);

    script.fail_next([Error::new(ErrorKind::RateLimited, "come back tomorrow")
        .with_retry_after(Duration::from_secs(86_400))]);
    let e = runtime.list(&ListFilter::all()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(script.count("list"), 3);
}

#[tokio::test]
async fn specs_beyond_the_capabilities_are_refused_before_the_backend_sees_them() {
    let script = Script::new(Capabilities::none());
    let runtime = stack(&script);
    let refused = [
        SandboxSpec::new().mount(Mount::parse("/tmp:/mnt").unwrap()),
        SandboxSpec::new().resources(crate::Resources::new().memory_mb(64)),
        SandboxSpec::new().network(crate::NetworkMode::Host),
        SandboxSpec::new().network_policy(crate::NetworkPolicy::new().allow_out(["10.0.0.1"])),
        SandboxSpec::new().add_host("db", std::net::Ipv4Addr::LOCALHOST.into()),
        SandboxSpec::new().auto_pause(true),
    ];
    for spec in refused {
        let e = runtime.create(spec.clone()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{spec:?}");
        assert_eq!(e.backend(), Some("script"));
        assert!(e.message().contains("Capabilities::"), "{e}");
    }
    assert_eq!(script.count("create"), 0);

    // What every backend has is let through: no network at all is not a mode to lack.
    let sandbox = runtime
        .create(SandboxSpec::new().network(crate::NetworkMode::None))
        .await
        .unwrap();
    let pty = CommandSpec::shell("bash").pty(80, 24);
    assert_eq!(
        sandbox.spawn(pty).await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(
        sandbox.pause().await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(script.count("spawn") + script.count("pause"), 0);
}

/// Collects the spans made, with their fields, as text.
#[derive(Default)]
struct Spans(Mutex<Vec<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = span.metadata().name().to_string();
        span.record(&mut Fields(&mut text));
        let mut spans = self.0.lock().unwrap();
        spans.push(text);
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        let text = &mut spans[id.into_u64() as usize - 1];
        values.record(&mut Fields(text));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn every_operation_has_a_span_with_backend_operation_sandbox_and_path() {
    let spans = Arc::new(Spans::default());
    let subscriber = spans.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(ArcSubscriber(subscriber), || {
        runtime.block_on(async {
            let script = Script::new(Capabilities::all());
            let sandbox = stack(&script).create(SandboxSpec::new()).await.unwrap();
            sandbox.files().stat("/w/a.txt").await.unwrap();
            sandbox.set_timeout(Duration::from_secs(9)).await.unwrap();
        })
    });
    let spans = spans.0.lock().unwrap();
    assert_eq!(
        *spans,
        [
            "sandkit backend=script op=create",
            "sandkit backend=script op=stat sandbox_id=sb-1 path=/w/a.txt",
            "sandkit backend=script op=set_timeout sandbox_id=sb-1",
        ]
    );
}

/// `with_default` takes the subscriber by value; this shares it with the test.
struct ArcSubscriber(Arc<Spans>);

impl tracing::Subscriber for ArcSubscriber {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.0.new_span(span)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.0.record(id, values)
    }
    fn record_follows_from(&self, a: &tracing::span::Id, b: &tracing::span::Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, e: &tracing::Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, id: &tracing::span::Id) {
        self.0.enter(id)
    }
    fn exit(&self, id: &tracing::span::Id) {
        self.0.exit(id)
    }
}
