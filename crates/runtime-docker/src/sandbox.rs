//! [`DockerSandbox`]: one container.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sandkit_core::{
    CommandSpec, ErrorKind, FileStore, FsEventStream, Metrics, Process, ProcessInfo, Result,
    Sandbox, SandboxExt, SandboxInfo, SandboxState,
};
use tracing::debug;

use crate::error::{err, map};
use crate::exec::{run_helper, script};
use crate::files::DockerFiles;
use crate::labels::epoch;
use crate::runtime::DockerRuntime;
use crate::template::TemplateInfo;

/// Replaces `/.sandkit/deadline` whole (a reader never sees it empty), for sandboxes that keep their
/// own deadline.
const SET_DEADLINE: &str = r#"printf '%s\n' "$1" > /.sandkit/deadline.new && mv -f /.sandkit/deadline.new /.sandkit/deadline"#;

/// The most the host reads of a deadline file the sandbox can write.
const DEADLINE_BYTES: usize = 32;

/// Who keeps a sandbox's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    /// The deadline keeper, outside the sandbox; `initial` is the deadline set at create.
    Keeper { initial: Option<u64> },
    /// The sandbox itself, in `/.sandkit/deadline` (no agent binary was available).
    File,
}

impl Ttl {
    pub(crate) fn from_labels(
        labels: &std::collections::HashMap<String, String>,
        l: &crate::labels::Labels,
    ) -> Self {
        match labels.get(&l.ttl()).map(String::as_str) {
            Some("keeper") => Ttl::Keeper {
                initial: labels.get(&l.deadline()).and_then(|d| d.parse().ok()),
            },
            _ => Ttl::File,
        }
    }
}

/// How long [`TemplateInfo::ready_cmd`] may take to succeed.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A sandbox on a Docker engine: one container labelled as ours.
pub struct DockerSandbox {
    runtime: DockerRuntime,
    id: String,
    container: String,
    user: Option<String>,
    files: DockerFiles,
    ttl: Ttl,
    /// The agent inside the sandbox, when it runs one (the fast path).
    agent: Option<sandkit_envd_client::EnvdClient>,
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
        ttl: Ttl,
        agent_token: Option<&str>,
    ) -> Result<Self> {
        let agent = match agent_token {
            Some(token) => Some(crate::inside::client(
                &runtime.docker,
                &container,
                &id,
                token,
                user.as_deref().unwrap_or("root"),
                &workdir,
            )?),
            None => None,
        };
        let files = DockerFiles::new(runtime.docker.clone(), container.clone(), workdir);
        Ok(DockerSandbox {
            runtime,
            id,
            container,
            user,
            files,
            ttl,
            agent,
        })
    }

    /// Whether commands and files go to the agent inside the sandbox (else the exec API).
    pub fn uses_agent(&self) -> bool {
        self.agent.is_some()
    }

    /// Opens the connection to the agent now (a pooled sandbox is handed out with it open).
    pub(crate) async fn warm(&self) -> Result<()> {
        match &self.agent {
            Some(agent) if agent.is_running().await? => Ok(()),
            Some(_) => Err(err(
                ErrorKind::Unavailable,
                "create",
                "the agent inside the sandbox does not answer",
            )),
            None => Ok(()),
        }
    }

    /// This pooled sandbox as what it was claimed as: the user, directory and environment of
    /// its commands. The agent connection is kept.
    pub(crate) fn claimed(mut self, claim: &crate::pool::Claim) -> Self {
        if claim.user.is_some() {
            self.user = claim.user.clone();
        }
        if let Some(agent) = self.agent.take() {
            let cwd = claim
                .cwd
                .clone()
                .or_else(|| agent.default_cwd().map(String::from));
            let user = self.user.clone().unwrap_or_else(|| "root".into());
            self.agent = Some(
                agent
                    .with_defaults(Some(user), cwd)
                    .with_env(claim.env.clone()),
            );
        }
        self
    }

    /// An error of the agent path as this backend reports it: a sandbox that is gone (or
    /// paused) is [`ErrorKind::NotFound`] / [`ErrorKind::Conflict`], as on the exec path.
    async fn agent_error(&self, e: sandkit_core::Error, op: &'static str) -> sandkit_core::Error {
        if !matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Unexpected) {
            return e;
        }
        match self
            .runtime
            .docker
            .inspect_container(&self.container, None)
            .await
        {
            Ok(c) => match c.state.and_then(|s| s.status) {
                Some(bollard::models::ContainerStateStatusEnum::RUNNING) => e,
                Some(bollard::models::ContainerStateStatusEnum::PAUSED) => err(
                    ErrorKind::Conflict,
                    op,
                    format!("sandbox {} is paused; connect to resume it", self.id),
                ),
                _ => gone(&self.id, op),
            },
            Err(_) => gone(&self.id, op),
        }
    }

    /// Whether the deadline keeper, outside the sandbox, holds its time to live.
    pub(crate) fn ttl_kept_outside(&self) -> bool {
        matches!(self.ttl, Ttl::Keeper { .. })
    }

    /// Whether the sandbox is past its deadline.
    pub(crate) async fn expired(&self) -> bool {
        self.runtime
            .deadline(&self.id, &self.ttl, None)
            .await
            .is_some_and(|d| d <= SystemTime::now())
    }

    /// The container's name on the engine.
    pub fn container_name(&self) -> &str {
        &self.container
    }

    pub(crate) async fn write_deadline(&self, ttl: Duration, op: &'static str) -> Result<()> {
        let deadline = epoch(SystemTime::now() + ttl);
        if let (Ttl::Keeper { .. }, Some(keeper)) = (&self.ttl, &self.runtime.settings.keeper) {
            return keeper.set_deadline(&self.id, deadline).await;
        }
        if self.ttl_kept_outside() {
            return Err(err(
                ErrorKind::Unavailable,
                op,
                "this sandbox's deadline is held by the deadline keeper, and this process has \
                 no sandkit-agent binary to run one; set SANDKIT_AGENT_BIN (see `cargo xtask agent`)",
            )
            .with_retryable(false));
        }
        let out = run_helper(
            &self.runtime.docker,
            &self.container,
            script(SET_DEADLINE, &[&deadline.to_string()]),
            None,
            op,
        )
        .await?;
        if out.code == 0 {
            return Ok(());
        }
        // The helper fails to start on a busy engine; the write is idempotent, and the retry
        // layer runs `set_timeout` and `connect` again.
        Err(err(
            ErrorKind::Unavailable,
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

/// The deadline a sandbox keeps in its own `/.sandkit/deadline` (epoch seconds), reading at most
/// [`DEADLINE_BYTES`] of it whatever the sandbox put there. `None` when it cannot be read
/// (paused, missing, not a number).
pub(crate) async fn own_deadline(files: &DockerFiles) -> Option<u64> {
    use futures_util::StreamExt;
    let mut stream = files.read_stream("/.sandkit/deadline").await.ok()?;
    let mut head = Vec::with_capacity(DEADLINE_BYTES);
    while head.len() < DEADLINE_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk[..chunk.len().min(DEADLINE_BYTES)]),
            _ => break,
        }
    }
    // Dropping the stream closes the download: the rest of a huge file is never read.
    drop(stream);
    head.truncate(DEADLINE_BYTES);
    std::str::from_utf8(&head).ok()?.trim().parse().ok()
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn spawn(&self, spec: CommandSpec) -> Result<Process> {
        if let Some(agent) = &self.agent {
            if let Some(user) = &spec.user {
                crate::process::check_user(user)?;
            }
            return match agent.spawn(spec).await {
                Ok(p) => Ok(p),
                Err(e) => Err(self.agent_error(e, "spawn").await),
            };
        }
        crate::process::spawn(
            &self.runtime.docker,
            &self.container,
            self.user.as_deref(),
            spec,
        )
        .await
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        if let Some(agent) = &self.agent {
            return match agent.processes().await {
                Ok(p) => Ok(p),
                Err(e) => Err(self.agent_error(e, "processes").await),
            };
        }
        crate::process::list(&self.runtime.docker, &self.container).await
    }

    fn files(&self) -> &dyn FileStore {
        match &self.agent {
            Some(agent) => agent.files(),
            None => &self.files,
        }
    }

    fn files_as(&self, user: &str) -> Result<Box<dyn FileStore>> {
        crate::process::check_user(user)?;
        match &self.agent {
            Some(agent) => Ok(Box::new(agent.files_as(user))),
            None => Ok(Box::new(self.files.as_user(user))),
        }
    }

    async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        let Some(agent) = &self.agent else {
            return Err(err(
                ErrorKind::Unsupported,
                "watch",
                "this sandbox has no agent inside it (the exec path cannot watch directories)",
            ));
        };
        match agent.watch(path, recursive).await {
            Ok(w) => Ok(w),
            Err(e) => Err(self.agent_error(e, "watch").await),
        }
    }

    async fn metrics(&self) -> Result<Metrics> {
        let Some(agent) = &self.agent else {
            return Err(err(
                ErrorKind::Unsupported,
                "metrics",
                "this sandbox has no agent inside it (the exec path cannot measure it)",
            ));
        };
        match agent.metrics().await {
            Ok(m) => Ok(m),
            Err(e) => Err(self.agent_error(e, "metrics").await),
        }
    }

    async fn info(&self) -> Result<SandboxInfo> {
        // NotFound once the sandbox has ended, even before the engine removed its container.
        let (_, state, labels) = self
            .runtime
            .sandbox_from_container(&self.id, "info")
            .await?;
        let mut info = self.runtime.info_from_labels(&self.id, &labels, state);
        if state == SandboxState::Running || self.ttl_kept_outside() {
            info.expires_at = self.runtime.deadline(&self.id, &self.ttl, None).await;
        }
        if state == SandboxState::Running && info.expires_at.is_some_and(|d| d <= SystemTime::now())
        {
            if self.runtime.reap_expired(&info).await {
                info.state = SandboxState::Paused;
                return Ok(info);
            }
            return Err(err(
                ErrorKind::NotFound,
                "info",
                format!("sandbox {} reached its time to live", self.id),
            ));
        }
        Ok(info)
    }

    async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.write_deadline(timeout, "set_timeout").await
    }

    async fn kill(&self) -> Result<()> {
        use sandkit_core::Runtime;
        self.runtime.kill(&self.id).await
    }

    async fn snapshot(&self, name: Option<&str>) -> Result<sandkit_core::Snapshot> {
        self.runtime.commit_snapshot(&self.id, name, false).await
    }

    async fn fork(
        &self,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Box<dyn Sandbox>>>> {
        self.runtime.fork_sandbox(&self.id, count, timeout).await
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
            Err(e) => Err(map(e, "pause", "sandbox")),
        }
    }

    async fn set_network_policy(&self, policy: sandkit_core::NetworkPolicy) -> Result<()> {
        self.runtime.set_network_policy(&self.id, &policy).await
    }

    async fn get_host(&self, port: u16) -> Result<String> {
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
        let settings = inspect.network_settings.unwrap_or_default();
        let binding = settings
            .ports
            .as_ref()
            .and_then(|p| p.get(&format!("{port}/tcp")).cloned().flatten())
            .and_then(|b| b.into_iter().next());
        if let Some(b) = binding {
            let ip = match b.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") => "127.0.0.1".to_string(),
                Some("::") => "[::1]".to_string(),
                Some(ip) => ip.to_string(),
            };
            return Ok(format!("{ip}:{}", b.host_port.unwrap_or_default()));
        }
        // Not published: where the engine runs on this machine, the sandbox's own address on
        // its network answers (this machine routes to its bridges).
        if self.runtime.settings.local_engine {
            let own = settings
                .networks
                .iter()
                .flat_map(|n| n.values())
                .find_map(|n| n.ip_address.clone().filter(|ip| !ip.is_empty()));
            if let Some(ip) = own {
                return Ok(format!("{ip}:{port}"));
            }
        }
        Err(err(
            ErrorKind::InvalidInput,
            "host",
            format!(
                "port {port} is not published and the engine is not on this machine; ask for \
                 it with SandboxSpec::port({port}) at create"
            ),
        ))
    }
}

fn gone(id: &str, op: &'static str) -> sandkit_core::Error {
    err(
        ErrorKind::NotFound,
        op,
        format!("sandbox {id} doesn't exist (killed, expired, or never made here)"),
    )
}
