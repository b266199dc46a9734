//! An [MCP](https://modelcontextprotocol.io) server, built on `rmcp` (the official Rust SDK),
//! that serves a sandbox's tools: one sandbox per MCP session, made on the session's first
//! tool call on the backend the configuration picks, killed when the session ends (the
//! client closes it, the stdio stream ends, or the server stops).
//!
//! | tool | arguments | answer |
//! |---|---|---|
//! | `run_command` | `command`, `timeout_secs?` | `exit_code`, `stdout`, `stderr`, `timed_out`, `cwd` (structured, and as JSON text) |
//! | `read_file` | `path` | the text |
//! | `write_file` | `path`, `content` | what was written |
//! | `list_files` | `path?` | one name per line, directories with a trailing `/` |
//! | `edit` | `command` (`view`, `create`, `str_replace`, `insert`, `undo_edit`), `path`, ... | the editor's answer |
//! | `ipython` | `code`, `timeout_secs?` | what the cell printed, then its value or traceback |
//!
//! Commands run in the session's shell: its directory and exported variables are kept between
//! calls. A command past its timeout is interrupted (`C-c`) and answered with `timed_out`.
//! Failures come back as tool errors (`isError`), for the model to read.
//!
//! Sessions need the protocol's `initialize` handshake, so the server speaks MCP up to
//! `2025-11-25`; a client that probes for the stateless `2026-07-28` revision falls back to it.
//!
//! ```no_run
//! # async fn demo() -> sandkit_core::Result<()> {
//! let config = sandkit_config::Config::load()?;
//! let options = sandkit_actions::SessionOptions::from_config(&config);
//! let server = sandkit_mcp::McpServer::new(config.runtime().await?, options);
//! server.serve_stdio(std::future::pending()).await // until the client closes stdin
//! # }
//! ```

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ProtocolVersion, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ServerHandler, ServiceExt};
use sandkit_actions::{EditRequest, RunRequest, Session, SessionOptions};
use sandkit_core::Runtime;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// How long an HTTP session may go without a request before it ends (and its sandbox).
const SESSION_IDLE: Duration = Duration::from_secs(15 * 60);
/// The longest a `run_command` may run.
const MAX_COMMAND: Duration = Duration::from_secs(600);

/// The server: a backend and the options of the sessions it opens, and the sessions open now.
#[derive(Debug, Clone)]
pub struct McpServer {
    runtime: Arc<dyn Runtime>,
    options: SessionOptions,
    live: Arc<Mutex<Vec<Weak<Sandboxed>>>>,
}

impl McpServer {
    /// A server making sandboxes on `runtime` with `options` (the time to live, directory and
    /// shell timeouts of each session).
    pub fn new(runtime: Arc<dyn Runtime>, options: SessionOptions) -> Self {
        McpServer {
            runtime,
            // A session's sandbox never outlives it (whatever keep_runtime_alive says).
            options: options.kill_on_drop(true).keep_alive(false),
            live: Arc::default(),
        }
    }

    /// The tools of one new MCP session (its sandbox is made on first use).
    pub fn session(&self) -> SandboxTools {
        let inner = Arc::new(Sandboxed {
            runtime: self.runtime.clone(),
            options: self.options.clone(),
            session: tokio::sync::Mutex::new(None),
            closed: AtomicBool::new(false),
            id: format!("mcp-{:016x}", rand::random::<u64>()),
        });
        let mut live = self.live.lock().expect("live");
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&inner));
        SandboxTools {
            tool_router: SandboxTools::tool_router(),
            inner,
        }
    }

    /// Serves one session on stdin and stdout until the client closes them or `shutdown`
    /// completes; its sandbox is killed before this returns.
    pub async fn serve_stdio(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> sandkit_core::Result<()> {
        let tools = self.session();
        let inner = tools.inner.clone();
        let running = tools.serve(rmcp::transport::stdio()).await.map_err(|e| {
            sandkit_core::Error::new(
                sandkit_core::ErrorKind::Unavailable,
                format!("MCP over stdio did not start: {e}"),
            )
        })?;
        tokio::select! {
            reason = running.waiting() => debug!(?reason, "the MCP stdio session ended"),
            () = shutdown => debug!("stopping the MCP stdio session"),
        }
        inner.close().await;
        Ok(())
    }

    /// The streamable HTTP endpoint, at `/mcp`: a session per MCP session id (its sandbox
    /// killed when the client deletes the session, or after it is idle for 15 minutes). Only
    /// loopback `Host` names are accepted (rmcp's guard against DNS rebinding).
    pub fn http_router(&self) -> axum::Router {
        self.router_with(StreamableHttpServerConfig::default())
    }

    fn router_with(&self, config: StreamableHttpServerConfig) -> axum::Router {
        let server = self.clone();
        let mut sessions = LocalSessionManager::default();
        // Longer than the longest command a tool call may run, so a call under way never
        // outlives its session.
        sessions.session_config.keep_alive = Some(SESSION_IDLE);
        let service =
            StreamableHttpService::new(move || Ok(server.session()), Arc::new(sessions), config);
        axum::Router::new().nest_service("/mcp", service)
    }

    /// Serves [`McpServer::http_router`] on `listener` until `shutdown`, then kills the
    /// sandboxes of the sessions still open.
    pub async fn serve_http(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        info!(addr = ?listener.local_addr().ok(), "serving MCP over streamable HTTP at /mcp");
        let config = StreamableHttpServerConfig::default();
        // Open streams end with the server, so shutting down never waits on a client.
        let streams = config.cancellation_token.clone();
        let server = self.clone();
        axum::serve(listener, self.router_with(config))
            .with_graceful_shutdown(async move {
                shutdown.await;
                // The sessions' sandboxes first, while their handlers still hold them (a kill
                // left to a handler's drop could be cut short by the process ending).
                server.close_all().await;
                streams.cancel();
            })
            .await?;
        self.close_all().await;
        Ok(())
    }

    /// Kills the sandboxes of every session still open.
    pub async fn close_all(&self) {
        let live: Vec<Arc<Sandboxed>> = self
            .live
            .lock()
            .expect("live")
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            for s in &live {
                s.close().await;
            }
        })
        .await;
    }
}

/// One MCP session's sandbox, made on first use.
#[derive(Debug)]
struct Sandboxed {
    runtime: Arc<dyn Runtime>,
    options: SessionOptions,
    /// Held while the sandbox is made, so a close waits for a make under way.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    closed: AtomicBool,
    id: String,
}

impl Sandboxed {
    async fn get(&self) -> sandkit_core::Result<Arc<Session>> {
        let mut held = self.session.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(sandkit_core::Error::new(
                sandkit_core::ErrorKind::Unavailable,
                "this MCP session has ended",
            ));
        }
        if let Some(s) = &*held {
            return Ok(s.clone());
        }
        let s =
            Arc::new(Session::open(self.runtime.clone(), &self.id, self.options.clone()).await?);
        info!(session = %self.id, sandbox_id = %s.sandbox().id(), "sandbox made for an MCP session");
        keep_alive(Arc::downgrade(&s), self.options.time_to_live);
        *held = Some(s.clone());
        Ok(s)
    }

    /// Kills the sandbox (no lock of the session's shell is needed: a command under way ends
    /// with it); later tool calls are refused.
    async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let taken = self.session.lock().await.take();
        if let Some(s) = taken {
            kill(&self.runtime, &s, &self.id).await;
        }
    }
}

async fn kill(runtime: &Arc<dyn Runtime>, s: &Session, session: &str) {
    match runtime.kill(s.sandbox().id()).await {
        Ok(()) => debug!(session, "MCP session ended; its sandbox is killed"),
        Err(e) if e.kind() == sandkit_core::ErrorKind::NotFound => {}
        Err(e) => warn!(session, error = %e, "could not kill an MCP session's sandbox"),
    }
}

/// Keeps a session's sandbox alive while the MCP session lives (an idle stdio session may
/// last longer than the sandbox's time to live).
fn keep_alive(session: Weak<Session>, ttl: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep((ttl / 3).max(Duration::from_secs(1))).await;
            let Some(s) = session.upgrade() else { return };
            if let Err(e) = s.sandbox().set_timeout(ttl).await {
                debug!(error = %e, "an MCP session's sandbox is gone");
                return;
            }
        }
    });
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        // The session ended (deleted, timed out): its sandbox goes with it.
        self.closed.store(true, Ordering::SeqCst);
        let taken = self.session.get_mut().take();
        if let (Some(s), Ok(handle)) = (taken, tokio::runtime::Handle::try_current()) {
            let (runtime, id) = (self.runtime.clone(), self.id.clone());
            handle.spawn(async move { kill(&runtime, &s, &id).await });
        }
    }
}

/// The tools of one MCP session.
#[derive(Debug, Clone)]
pub struct SandboxTools {
    #[expect(
        dead_code,
        reason = "the tool_handler macro routes through the router it builds"
    )]
    tool_router: ToolRouter<SandboxTools>,
    inner: Arc<Sandboxed>,
}

/// `run_command` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunArgs {
    /// The shell line to run.
    pub command: String,
    /// Interrupt it after this many seconds (default: the session's hard timeout; at most
    /// 600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `run_command`'s answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RunOutput {
    /// The exit code; -1 when it was interrupted at its timeout.
    pub exit_code: i32,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
    /// Whether the timeout interrupted it.
    pub timed_out: bool,
    /// What the shell said of it (how it ended, a restarted shell), when anything.
    pub note: String,
    /// The shell's directory after it.
    pub cwd: String,
}

/// A path.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PathArgs {
    /// The file (relative paths from the shell's directory).
    pub path: String,
}

/// `write_file` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteArgs {
    /// The file (relative paths from the shell's directory).
    pub path: String,
    /// Its whole new content.
    pub content: String,
}

/// `list_files` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListArgs {
    /// The directory (default: the shell's).
    #[serde(default)]
    pub path: Option<String>,
}

/// `edit` arguments: OpenHands' `str_replace_editor`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EditArgs {
    /// `view`, `create`, `str_replace`, `insert` or `undo_edit`.
    pub command: String,
    /// The file or directory.
    pub path: String,
    /// `create`: the content.
    #[serde(default)]
    pub file_text: Option<String>,
    /// `str_replace`: the text to replace (found exactly once).
    #[serde(default)]
    pub old_str: Option<String>,
    /// `str_replace`, `insert`: the new text.
    #[serde(default)]
    pub new_str: Option<String>,
    /// `insert`: the line after which to insert (0: the top).
    #[serde(default)]
    pub insert_line: Option<i64>,
    /// `view`: `[first, last]` lines, 1-based (`last` -1: the end).
    #[serde(default)]
    pub view_range: Option<[i64; 2]>,
}

/// `ipython` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CellArgs {
    /// The cell.
    pub code: String,
    /// Interrupt it after this many seconds (default 60).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn tool_error(e: sandkit_core::Error) -> String {
    e.to_string()
}

#[tool_router]
impl SandboxTools {
    /// The sandbox's id, once made (for tests and logs).
    pub async fn sandbox_id(&self) -> Option<String> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .map(|s| s.sandbox().id().to_string())
    }

    #[tool(
        description = "Run a shell command in the sandbox. The shell keeps its working directory and exported variables between calls."
    )]
    async fn run_command(
        &self,
        Parameters(a): Parameters<RunArgs>,
    ) -> Result<Json<RunOutput>, String> {
        let session = self.inner.get().await.map_err(tool_error)?;
        let r = session
            .run(RunRequest {
                command: a.command,
                blocking: true,
                timeout: a
                    .timeout_secs
                    .map(|t| Duration::from_secs(t).min(MAX_COMMAND)),
                ..Default::default()
            })
            .await
            .map_err(tool_error)?;
        let timed_out = r.exit_code == -1 && r.suffix.contains("timed out");
        let mut out = RunOutput {
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            timed_out,
            cwd: r.cwd,
            note: format!("{}{}", r.prefix, r.suffix).trim().to_string(),
        };
        if timed_out {
            // Interrupted, so the next command runs.
            let after = session
                .run(RunRequest {
                    command: "C-c".into(),
                    is_input: true,
                    ..Default::default()
                })
                .await
                .map_err(tool_error)?;
            out.stdout.push_str(&after.stdout);
            out.stderr.push_str(&after.stderr);
            out.cwd = after.cwd;
        }
        Ok(Json(out))
    }

    #[tool(description = "Read a text file in the sandbox.")]
    async fn read_file(&self, Parameters(a): Parameters<PathArgs>) -> Result<String, String> {
        let session = self.inner.get().await.map_err(tool_error)?;
        session.read(&a.path, 0, -1).await.map_err(tool_error)
    }

    #[tool(description = "Write a text file in the sandbox whole, making its directories.")]
    async fn write_file(&self, Parameters(a): Parameters<WriteArgs>) -> Result<String, String> {
        let session = self.inner.get().await.map_err(tool_error)?;
        session
            .write(&a.path, &a.content, 0, -1)
            .await
            .map_err(tool_error)?;
        Ok(format!("wrote {} bytes to {}", a.content.len(), a.path))
    }

    #[tool(description = "List a directory in the sandbox: directories first, with a trailing /.")]
    async fn list_files(&self, Parameters(a): Parameters<ListArgs>) -> Result<String, String> {
        let session = self.inner.get().await.map_err(tool_error)?;
        let names = session
            .list_files(a.path.as_deref())
            .await
            .map_err(tool_error)?;
        Ok(names.join("\n"))
    }

    #[tool(
        description = "View, create and edit files in the sandbox: view (a file with line numbers, or a directory), create, str_replace (old_str must occur exactly once), insert (after insert_line), undo_edit."
    )]
    async fn edit(&self, Parameters(a): Parameters<EditArgs>) -> Result<String, String> {
        let session = self.inner.get().await.map_err(tool_error)?;
        let request = EditRequest {
            command: a.command,
            path: a.path,
            file_text: a.file_text,
            old_str: a.old_str,
            new_str: a.new_str,
            insert_line: a.insert_line,
            view_range: a.view_range,
        };
        session.editor(&request).await.map_err(tool_error)
    }

    #[tool(
        description = "Run a Python cell in the sandbox's IPython kernel (its state is kept between cells)."
    )]
    async fn ipython(&self, Parameters(a): Parameters<CellArgs>) -> Result<String, String> {
        let session = self.inner.get().await.map_err(tool_error)?;
        let cell = session
            .run_ipython(&a.code, Duration::from_secs(a.timeout_secs.unwrap_or(60)))
            .await
            .map_err(tool_error)?;
        Ok(cell.text())
    }
}

#[tool_handler]
impl ServerHandler for SandboxTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sandkit", env!("CARGO_PKG_VERSION")))
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        // A session (and so a sandbox) needs the initialize handshake.
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }
}
