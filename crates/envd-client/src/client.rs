//! [`EnvdClient`]: envd's process and filesystem services as sandkit types, over a URL (E2B's
//! cloud, `e2b-local`) or over any connection ([`Connect`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sandkit_core::{
    CommandSpec, ErrorKind, FsEvent, FsEventKind, FsEventStream, Metrics, Process, ProcessInfo,
    Result,
};
use sandkit_e2b_protocol::envd::{rpc, EventType, WatchDirResponse, WatchRequest};

use crate::envd::Envd;
use crate::error::err;
use crate::files::EnvdFiles;
use crate::transport::{Conn, Connect, Transport};

/// Defaults for commands that do not name their own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Defaults {
    pub(crate) cwd: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) env: std::collections::BTreeMap<String, String>,
}

/// The commands and files of one sandbox through its envd: what the E2B backend uses over URLs,
/// and what a backend that runs envd itself (the Docker backend with `sandkit-agent`) uses over
/// the agent's connection.
///
/// ```no_run
/// # async fn run(connect: std::sync::Arc<dyn sandkit_envd_client::Connect>) -> sandkit_core::Result<()> {
/// use sandkit_core::{CommandSpec, FileStoreExt};
/// let envd = sandkit_envd_client::EnvdClient::over(connect, "sandbox-1", Some("token".into()));
/// let mut p = envd.spawn(CommandSpec::shell("echo hi")).await?;
/// envd.files().write_str("/tmp/x", "y").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EnvdClient {
    pub(crate) envd: Envd,
    defaults: Defaults,
    files: EnvdFiles,
}

/// How long a unary envd call may take.
const UNARY_TIMEOUT: Duration = Duration::from_secs(60);

impl EnvdClient {
    pub(crate) fn new(envd: Envd, defaults: Defaults) -> Self {
        let files = EnvdFiles::new(envd.clone(), defaults.user.clone());
        EnvdClient {
            envd,
            defaults,
            files,
        }
    }

    /// A client of the envd that `connect` reaches, for sandbox `id`, sending `token` as
    /// `X-Access-Token`. Every request is multiplexed on one HTTP/2 connection, reopened when
    /// it drops.
    pub fn over(connect: Arc<dyn Connect>, id: impl Into<String>, token: Option<String>) -> Self {
        EnvdClient::with_transport(
            Arc::new(Conn::new(connect)),
            "http://envd",
            id,
            token,
            UNARY_TIMEOUT,
        )
    }

    /// A client of the envd at `base` (a URL with no trailing `/`) that `transport` reaches, for
    /// sandbox `id`; unary calls may take `timeout`.
    pub fn with_transport(
        transport: Arc<dyn Transport>,
        base: impl Into<String>,
        id: impl Into<String>,
        token: Option<String>,
        timeout: Duration,
    ) -> Self {
        let envd = Envd::new(transport, base.into(), id.into(), token, timeout);
        EnvdClient::new(envd, Defaults::default())
    }

    /// Sets the user and working directory of commands (and the user of files) that name none.
    /// The connection is kept.
    pub fn with_defaults(self, user: Option<String>, cwd: Option<String>) -> Self {
        let env = self.defaults.env;
        EnvdClient::new(self.envd, Defaults { cwd, user, env })
    }

    /// The working directory of commands that name none.
    pub fn default_cwd(&self) -> Option<&str> {
        self.defaults.cwd.as_deref()
    }

    /// Sets environment variables every command gets (a command's own win). The connection
    /// is kept.
    pub fn with_env(self, env: std::collections::BTreeMap<String, String>) -> Self {
        let mut defaults = self.defaults;
        defaults.env = env;
        EnvdClient::new(self.envd, defaults)
    }

    /// Starts a command (see [`Sandbox::spawn`](sandkit_core::Sandbox::spawn)).
    pub async fn spawn(&self, mut spec: CommandSpec) -> Result<Process> {
        for (k, v) in &self.defaults.env {
            spec.env.entry(k.clone()).or_insert_with(|| v.clone());
        }
        crate::process::spawn(
            &self.envd,
            spec,
            self.defaults.user.as_deref(),
            self.defaults.cwd.as_deref(),
        )
        .await
    }

    /// The processes started through envd that still run.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        crate::process::list(&self.envd).await
    }

    /// The files, as the default user.
    pub fn files(&self) -> &EnvdFiles {
        &self.files
    }

    /// The files as `user` sees them.
    pub fn files_as(&self, user: &str) -> EnvdFiles {
        self.files.as_user(user)
    }

    /// Watches a directory through envd's `WatchDir` (see
    /// [`Sandbox::watch`](sandkit_core::Sandbox::watch)).
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        let req = WatchRequest {
            path: path.to_string(),
            recursive,
            ..Default::default()
        };
        let mut stream = self
            .envd
            .server_stream::<_, WatchDirResponse>(
                rpc::WATCH_DIR,
                &req,
                self.defaults.user.as_deref(),
                None,
                "watch",
            )
            .await?;
        match stream.next().await {
            Some(Ok(WatchDirResponse::Start(_))) => {}
            Some(Ok(other)) => {
                return Err(err(
                    ErrorKind::Unexpected,
                    "watch",
                    format!("expected the start of the watch, got {other:?}"),
                ))
            }
            Some(Err(e)) => return Err(e),
            None => {
                return Err(err(
                    ErrorKind::Unexpected,
                    "watch",
                    "the watch ended before it started",
                ))
            }
        }
        let events = stream.filter_map(|m| async move {
            match m {
                Ok(WatchDirResponse::Filesystem(ev)) => {
                    let kind = match ev.kind {
                        EventType::Create => FsEventKind::Create,
                        EventType::Write => FsEventKind::Write,
                        EventType::Remove => FsEventKind::Remove,
                        EventType::Rename => FsEventKind::Rename,
                        EventType::Chmod => FsEventKind::Chmod,
                        EventType::Unspecified => return None,
                    };
                    Some(Ok(FsEvent::new(ev.name.clone(), kind)))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        });
        Ok(Box::pin(events))
    }

    /// What the sandbox uses now, from envd's `GET /metrics`.
    pub async fn metrics(&self) -> Result<Metrics> {
        let m = self.envd.metrics().await?;
        let mut out = Metrics::new();
        out.timestamp = std::time::UNIX_EPOCH + Duration::from_secs(m.ts.max(0) as u64);
        out.cpu_count = m.cpu_count;
        out.cpu_used_pct = m.cpu_used_pct as f64;
        out.mem_used = m.mem_used;
        out.mem_total = m.mem_total;
        out.mem_cache = m.mem_cache;
        out.disk_used = m.disk_used;
        out.disk_total = m.disk_total;
        Ok(out)
    }

    /// Whether envd answers `GET /health` (an unreachable envd is `false`).
    pub async fn is_running(&self) -> Result<bool> {
        match self.envd.health().await {
            Ok(up) => Ok(up),
            Err(e) if e.kind() == ErrorKind::Unavailable => Ok(false),
            Err(e) => Err(e),
        }
    }
}
