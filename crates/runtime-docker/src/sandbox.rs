//! [`DockerSandbox`]: one container.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use runtime_core::{
    CommandSpec, ErrorKind, FileStore, FileStoreExt, Process, ProcessInfo, Result, Sandbox,
    SandboxExt, SandboxInfo, SandboxState,
};
use tracing::{debug, info_span, Instrument};

use crate::error::{err, map, BACKEND};
use crate::exec::{run_helper, script};
use crate::files::DockerFiles;
use crate::runtime::{epoch, DockerRuntime};
use crate::template::TemplateInfo;

const SET_DEADLINE: &str = r#"printf '%s\n' "$1" > /.sbx/deadline"#;

/// How long [`TemplateInfo::ready_cmd`] may take to succeed.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A sandbox on a Docker engine: one container labelled as ours.
pub struct DockerSandbox {
    runtime: DockerRuntime,
    id: String,
    container: String,
    user: Option<String>,
    files: DockerFiles,
}

impl std::fmt::Debug for DockerSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSandbox")
            .field("id", &self.id)
            .field("container", &self.container)
            .finish()
    }
}

impl DockerSandbox {
    pub(crate) fn new(
        runtime: DockerRuntime,
        id: String,
        container: String,
        workdir: String,
        user: Option<String>,
    ) -> Self {
        let files = DockerFiles::new(runtime.docker.clone(), container.clone(), workdir);
        DockerSandbox {
            runtime,
            id,
            container,
            user,
            files,
        }
    }

    /// The container's name on the engine.
    pub fn container_name(&self) -> &str {
        &self.container
    }

    pub(crate) async fn write_deadline(&self, ttl: Duration, op: &'static str) -> Result<()> {
        let deadline = epoch(SystemTime::now() + ttl).to_string();
        // An exec can fail to start on a busy engine; the write is idempotent, so try again.
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            let out = run_helper(
                &self.runtime.docker,
                &self.container,
                script(SET_DEADLINE, &[&deadline]),
                None,
                op,
            )
            .await?;
            if out.code == 0 {
                return Ok(());
            }
            last = Some(out);
        }
        let out = last.expect("tried");
        Err(err(
            ErrorKind::Unexpected,
            op,
            format!(
                "could not write the deadline (exit code {}): {}",
                out.code,
                out.stderr_text()
            ),
        ))
    }

    /// Runs a template's start command in the background and waits for its ready command.
    pub(crate) async fn wait_ready(&self, template: &TemplateInfo) -> Result<()> {
        if let Some(start) = &template.start_cmd {
            debug!(start, "starting the template's start command");
            // Left running in the background; its output is not collected.
            let _process = self
                .spawn(CommandSpec::shell(start.clone()).tag("start_cmd"))
                .await?;
        }
        if let Some(ready) = &template.ready_cmd {
            let begun = std::time::Instant::now();
            loop {
                let out = self
                    .exec(CommandSpec::shell(ready.clone()).timeout(Duration::from_secs(30)))
                    .await;
                if matches!(&out, Ok(o) if o.success()) {
                    break;
                }
                if begun.elapsed() > READY_TIMEOUT {
                    return Err(err(
                        ErrorKind::Timeout,
                        "create",
                        format!(
                            "the template's ready command `{ready}` did not succeed within {READY_TIMEOUT:?}"
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }
}

/// When a sandbox expires, from its deadline file (`None` when it cannot be read, e.g. paused).
pub(crate) async fn deadline_of(files: &DockerFiles) -> Option<SystemTime> {
    let text = files.read_to_string("/.sbx/deadline").await.ok()?;
    let secs: u64 = text.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn spawn(&self, spec: CommandSpec) -> Result<Process> {
        let span = info_span!("spawn", backend = BACKEND, sandbox_id = %self.id);
        crate::process::spawn(
            &self.runtime.docker,
            &self.container,
            self.user.as_deref(),
            spec,
        )
        .instrument(span)
        .await
        .map_err(|e| e.with_context("sandbox_id", &self.id))
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        crate::process::list(&self.runtime.docker, &self.container).await
    }

    fn files(&self) -> &dyn FileStore {
        &self.files
    }

    async fn info(&self) -> Result<SandboxInfo> {
        // NotFound once the sandbox has ended, even before the engine removed its container.
        let (_, state, labels) = self
            .runtime
            .sandbox_from_container(&self.id, "info")
            .await?;
        let mut info = self.runtime.info_from_labels(&self.id, &labels, state);
        if state == SandboxState::Running {
            info.expires_at = deadline_of(&self.files).await;
        }
        Ok(info)
    }

    async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.write_deadline(timeout, "set_timeout")
            .await
            .map_err(|e| e.with_context("sandbox_id", &self.id))
    }

    async fn kill(&self) -> Result<()> {
        use runtime_core::Runtime;
        self.runtime.kill(&self.id).await
    }

    async fn pause(&self) -> Result<()> {
        match self.runtime.docker.pause_container(&self.container).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("paused") => Err(err(
                ErrorKind::Conflict,
                "pause",
                "the sandbox is already paused",
            )),
            Err(e) => Err(map(e, "pause", "sandbox").with_context("sandbox_id", &self.id)),
        }
    }

    async fn host(&self, port: u16) -> Result<String> {
        let inspect = self
            .runtime
            .docker
            .inspect_container(&self.container, None)
            .await
            .map_err(|e| map(e, "host", "sandbox"))?;
        if inspect
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            == Some("host")
        {
            return Ok(format!("127.0.0.1:{port}"));
        }
        let binding = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&format!("{port}/tcp")).cloned().flatten())
            .and_then(|b| b.into_iter().next());
        match binding {
            Some(b) => {
                let ip = match b.host_ip.as_deref() {
                    None | Some("") | Some("0.0.0.0") => "127.0.0.1".to_string(),
                    Some("::") => "[::1]".to_string(),
                    Some(ip) => ip.to_string(),
                };
                Ok(format!("{ip}:{}", b.host_port.unwrap_or_default()))
            }
            None => Err(err(
                ErrorKind::InvalidInput,
                "host",
                format!("port {port} is not published; ask for it with SandboxSpec::port({port}) at create"),
            )
            .with_context("sandbox_id", &self.id)),
        }
    }
}
