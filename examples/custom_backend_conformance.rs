//! Running the behaviour suite against your own backend.
//!
//! A third-party backend implements `Runtime`/`Sandbox`/`FileStore` and registers itself with
//! the suite from a test target with `harness = false`, exactly as below. Here the "backend" is
//! a thin wrapper that counts sandboxes over the Docker backend: replace it with yours.
//!
//! `cargo run -p sandkit-examples --example custom_backend_conformance -- --list`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sandkit::{Capabilities, ListFilter, Result, Runtime, Sandbox, SandboxInfo, SandboxSpec};
use sandkit_conformance::{SandboxTarget, Suite};

/// A backend of our own: it delegates, and counts what it made.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Runtime>,
    made: AtomicUsize,
}

#[async_trait]
impl Runtime for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>> {
        self.made.fetch_add(1, Ordering::Relaxed);
        self.inner.create(spec).await
    }
    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>> {
        self.inner.connect(id).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        self.inner.list(filter).await
    }
    async fn kill(&self, id: &str) -> Result<()> {
        self.inner.kill(id).await
    }
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    match suite
        .tokio()
        .block_on(sandkit::docker::DockerRuntime::builder().build())
    {
        Ok(docker) => {
            let ours = Arc::new(Counting {
                inner: Arc::new(docker),
                made: AtomicUsize::new(0),
            });
            let spec = SandboxSpec::new().template("sandkit-base:bookworm");
            suite.add_sandbox(SandboxTarget::new("counting", ours, spec).with_python(true));
        }
        Err(e) => suite.add_ignored("counting", &e.to_string()),
    }
    suite.run()
}
