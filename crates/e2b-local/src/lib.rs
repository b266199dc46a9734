//! `e2b-local`: E2B's control plane and envd, served over any sandkit backend.
//!
//! Point the official E2B SDKs at it and they run against a local Docker engine:
//!
//! ```text
//! e2b-local --api-key e2b_local_key &
//! E2B_API_KEY=e2b_local_key E2B_API_URL=http://127.0.0.1:3000 \
//!   E2B_SANDBOX_URL=http://127.0.0.1:49983 python3 -c \
//!   'from e2b import Sandbox; s = Sandbox.create(); print(s.commands.run("echo hi").stdout)'
//! ```
//!
//! The control plane (create, connect, info, list, kill, timeout, pause/resume) answers on one
//! listener, envd (processes, filesystem, `/files`, `/health`) on another, routed by the
//! `E2b-Sandbox-Id` header. With `E2B_DEBUG=true` the SDK skips the control plane and sends
//! envd traffic for `debug_sandbox_id`: that sandbox is made on first use.
//!
//! The envd side is written over [`sandkit_core::Sandbox`] only, so any backend can serve it.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// Handlers return a ready HTTP answer as their error; boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod api;
mod args;
mod builds;
mod caller;
mod catalog;
mod control;
mod dashboard;
mod disk;
mod history;
mod hosts;
mod http;
mod keys;
mod listen;
mod logs;
mod metrics;
mod network;
mod observe;
mod ports;
mod resolve;
mod secret_store;
mod secrets;
mod snapshots;
mod state;
mod templates;
mod volume_helpers;
mod volumes;

use std::future::Future;
use std::sync::Arc;

use sandkit_core::Runtime;
use tokio::net::TcpListener;
use tracing::info;

pub use args::{init_logging, serving_config, ServeArgs};
pub use keys::Revoked;
pub use state::{Limits, ServerConfig};

/// A running pair of listeners (control plane and envd) over one backend.
///
/// ```no_run
/// # async fn demo(runtime: std::sync::Arc<dyn sandkit_core::Runtime>) -> std::io::Result<()> {
/// use sandkit_e2b_local::{Server, ServerConfig};
/// let config = ServerConfig { api_key: Some("e2b_local_key".into()), ..Default::default() };
/// let api = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// let envd = tokio::net::TcpListener::bind("127.0.0.1:49983").await?;
/// Server::new(runtime, config)?.serve(api, envd, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Clone)]
pub struct Server {
    state: Arc<state::State>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server over `runtime`: its keys read, its data directory ready.
    ///
    /// # Errors
    /// No API key without [`ServerConfig::insecure_no_auth`], a keys file that does not load,
    /// or a data directory that cannot be made (`InvalidInput` or the I/O error, with what
    /// to do).
    pub fn new(runtime: Arc<dyn Runtime>, config: ServerConfig) -> std::io::Result<Self> {
        Ok(Server {
            state: Arc::new(state::State::new(runtime, config)?),
        })
    }

    /// Reads the keys file again (what `SIGHUP` does for `e2b-local`, and what the server
    /// does itself when the file changes): a key taken out is refused from the next request
    /// on, and what it owns is kept or removed as [`ServerConfig::revoked`] says. A file that
    /// does not load leaves the keys as they were (the error is logged).
    pub async fn reload_keys(&self) {
        if let Err(e) = self.state.reload_keys().await {
            tracing::error!(error = %e, "the keys file was not read again; the keys before it stay");
        }
    }

    /// The control-plane routes, for embedding in another server. Requests naming a host
    /// that is not allowed are refused (see [`ServerConfig::allowed_hosts`]).
    pub fn api_router(&self) -> axum::Router {
        self.guarded(api::router(self.state.clone()), "api")
    }

    /// The envd routes, for embedding in another server. Requests naming a host that is not
    /// allowed are refused (see [`ServerConfig::allowed_hosts`]).
    pub fn envd_router(&self) -> axum::Router {
        self.guarded(sandkit_envd::router(self.state.clone()), "envd")
    }

    /// `router` behind the host check, its requests counted for `/metrics` as `listener`'s.
    fn guarded(&self, router: axum::Router, listener: &'static str) -> axum::Router {
        router
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                hosts::check,
            ))
            .layer(axum::middleware::from_fn_with_state(
                (self.state.clone(), listener),
                count_request,
            ))
    }

    /// Serves both listeners until `shutdown` completes, then kills the sandboxes this server
    /// made (unless [`ServerConfig::keep_sandboxes`]). Listeners beyond loopback are refused
    /// unless [`ServerConfig::allow_remote`]; [`ServerConfig::limits`] applies to each.
    pub async fn serve(
        self,
        api: TcpListener,
        envd: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with_ports(api, envd, None, shutdown).await
    }

    /// As [`serve`](Self::serve), and with `ports` the port proxy: what the SDK's
    /// `get_host(port)` names, `<port>-<id>.localhost:<its port>`, joined to that port in the
    /// sandbox (sandboxes made with `allowPublicTraffic=false` need their traffic access
    /// token in `e2b-traffic-access-token`).
    pub async fn serve_with_ports(
        self,
        api: TcpListener,
        envd: TcpListener,
        ports: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mut addrs = vec![api.local_addr()?, envd.local_addr()?];
        if let Some(p) = &ports {
            addrs.push(p.local_addr()?);
        }
        self.check_binds(&addrs)?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let ports_task = match ports {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let domain = format!("localhost:{}", addr.port());
                info!("e2b-local serving sandbox ports on {addr}: E2B_DOMAIN={domain}");
                self.state.set_ports_domain(domain);
                Some(tokio::spawn(ports::serve(
                    listener,
                    self.state.clone(),
                    rx.clone(),
                )))
            }
            None => None,
        };
        info!(
            "e2b-local listening: E2B_API_URL=http://{} E2B_SANDBOX_URL=http://{}",
            api.local_addr()?,
            envd.local_addr()?
        );
        let keys_task = self
            .state
            .config
            .keys_file
            .clone()
            .map(|file| tokio::spawn(watch_keys(self.clone(), file, rx.clone())));
        let sampler = tokio::spawn(observe::sample_all(self.state.clone(), rx.clone()));
        let limits = self.state.config.limits.clone();
        // Two listeners' connections, and room for the backend's own files and sockets.
        listen::raise_open_file_limit(2 * limits.max_connections as u64 + 1024);
        let grace = std::time::Duration::from_secs(5);
        let api_task = tokio::spawn(listen::serve(
            api,
            self.api_router()
                .layer(axum::middleware::from_fn(log_request)),
            limits.clone(),
            rx.clone(),
            grace,
        ));
        let envd_task = tokio::spawn(listen::serve(
            envd,
            self.envd_router()
                .layer(axum::middleware::from_fn(log_request)),
            limits,
            rx,
            grace,
        ));
        shutdown.await;
        info!("shutting down");
        let _ = tx.send(true);
        let _ = api_task.await;
        let _ = envd_task.await;
        if let Some(t) = ports_task {
            let _ = t.await;
        }
        if let Some(t) = keys_task {
            t.abort();
        }
        sampler.abort();
        self.state.shutdown().await;
        Ok(())
    }
}

impl Server {
    /// Refuses listeners the configuration does not allow: beyond loopback without
    /// [`ServerConfig::allow_remote`], and any but loopback in debug or no-auth mode.
    fn check_binds(&self, addrs: &[std::net::SocketAddr]) -> std::io::Result<()> {
        let config = &self.state.config;
        for addr in addrs {
            if addr.ip().is_loopback() {
                continue;
            }
            let refuse =
                |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
            if config.debug {
                return refuse(format!(
                    "debug mode serves a sandbox without tokens: it listens on loopback only, not {addr}"
                ));
            }
            if config.insecure_no_auth {
                return refuse(format!(
                    "without authentication the server listens on loopback only, not {addr}"
                ));
            }
            if !config.allow_remote {
                return refuse(format!(
                    "{addr} is reachable beyond this machine; pass --allow-remote \
                     (ServerConfig::allow_remote) to serve there, or bind 127.0.0.1"
                ));
            }
            tracing::warn!(
                %addr,
                "listening beyond loopback: anyone who reaches this port can try API keys; \
                 put TLS in front of it and use a strong key"
            );
        }
        Ok(())
    }
}

/// Reads the keys file again whenever it changes (checked every 2 s), until `stop`.
async fn watch_keys(
    server: Server,
    file: std::path::PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::os::unix::fs::MetadataExt;
    // What identifies a version of the keys: each file's identity and times (replaced by a
    // rename, rewritten or touched), and in a directory which files there are.
    let version = |path: &std::path::Path| {
        keys::key_files(path).ok().map(|files| {
            files
                .into_iter()
                .map(|f| {
                    let m = std::fs::metadata(&f).ok();
                    let stamp = m.map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()));
                    (f, stamp)
                })
                .collect::<Vec<_>>()
        })
    };
    let mut loaded = version(&file);
    let mut last = loaded.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
        let now = version(&file);
        // Read only a version that stayed the same for a whole check: a file caught while
        // an editor or `cat >` writes it may parse and hold fewer keys than meant.
        if now != loaded && now == last {
            loaded = now.clone();
            info!(file = %file.display(), "the keys file changed: reading it again");
            server.reload_keys().await;
        }
        last = now;
    }
}

/// Counts a request and the time to its answer's head, for `/metrics`.
async fn count_request(
    axum::extract::State((state, listener)): axum::extract::State<(
        Arc<state::State>,
        &'static str,
    )>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .request(listener, response.status().as_u16(), started.elapsed());
    response
}

/// Logs each request (method, path, status, time); never headers, which carry secrets.
async fn log_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let sandbox = request
        .headers()
        .get(sandkit_e2b_protocol::headers::SANDBOX_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    info!(%method, path, sandbox, status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    response
}
