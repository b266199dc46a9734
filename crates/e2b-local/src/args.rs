//! The command-line options of a server, shared by the `e2b-local` binary and `sandkit serve-e2b`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sandkit_core::Runtime;

use crate::{Limits, Revoked, Server, ServerConfig};

/// How to serve: addresses, keys, modes and limits.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the control plane (what E2B_API_URL points at).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub api_addr: SocketAddr,
    /// Address of envd (what E2B_SANDBOX_URL points at).
    #[arg(long, default_value = "127.0.0.1:49983")]
    pub envd_addr: SocketAddr,
    /// Address of the port proxy, which serves `get_host(port)`: `<port>-<id>.localhost:<P>`
    /// where P is this address's port (`E2B_DOMAIN=localhost:<P>`). Default: none (ports are
    /// not served).
    #[arg(long)]
    pub ports_addr: Option<SocketAddr>,
    /// An API key clients may send (the key named `default`). Default: E2B_API_KEY.
    #[arg(long, env = "E2B_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A keys file: more keys, each with a name and its own limits, stored as SHA-256
    /// hashes (`[[key]] name = "ci"  sha256 = "..."  max_sandboxes = 20
    /// creates_per_minute = 120`), or a directory of such `*.toml` files. Read again when it
    /// changes and on SIGHUP; keys that do not load are refused whole and the keys before
    /// them stay.
    #[arg(long, env = "E2B_LOCAL_KEYS_FILE", value_name = "FILE")]
    pub keys_file: Option<std::path::PathBuf>,
    /// What happens to what a key owns when it leaves the keys file: kept out of reach
    /// (served again if the key comes back), or removed.
    #[arg(long, value_enum, default_value_t = Revoked::Keep)]
    pub revoked: Revoked,
    /// Append the audit log (every change a key makes: key name, method, path, sandbox,
    /// status) to this file as well as to stderr.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<std::path::PathBuf>,
    /// Where the server keeps its token-signing secret and template uploads. Default:
    /// $XDG_STATE_HOME/e2b-local, else ~/.local/state/e2b-local.
    #[arg(long, env = "E2B_LOCAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Accept any API key and no access tokens (loopback only, on a machine you trust).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Serve the SDK's debug mode (E2B_DEBUG=true): envd requests for `debug_sandbox_id` need
    /// no token and make that sandbox on first use. Loopback only.
    #[arg(long)]
    pub debug: bool,
    /// Listen on addresses beyond loopback (prints a warning; put TLS in front).
    #[arg(long)]
    pub allow_remote: bool,
    /// A host name clients may use to reach the server, besides IP addresses and localhost
    /// (repeatable). Requests naming any other host are refused (DNS rebinding).
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// An engine image clients may start sandboxes and template builds from (repeatable; a
    /// trailing `*` matches by prefix). Replaces the default, which is the images sandkit
    /// builds (`sandkit-base:*`, `sandkit-mini:*`); any other image is not found.
    #[arg(long = "allow-image", value_name = "IMAGE")]
    pub allowed_images: Vec<String>,
    /// Leave the sandboxes running when the server stops.
    #[arg(long)]
    pub keep_sandboxes: bool,
    /// Longest sandbox time to live a client may ask for, in hours.
    #[arg(long, default_value_t = 24)]
    pub max_timeout_hours: u64,
    /// Open connections per listener. Past it, a new connection closes the oldest one that
    /// never had an authenticated answer, or is refused when all have.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Open connections per listener from one source address (same rule).
    #[arg(long, default_value_t = Limits::default().max_connections_per_source)]
    pub max_connections_per_source: usize,
    /// Seconds a client may take to send a request's headers (and an idle HTTP/1 connection
    /// is kept).
    #[arg(long, default_value_t = Limits::default().header_timeout.as_secs())]
    pub header_timeout_secs: u64,
    /// Sandboxes a key may have at once; past it, create answers 429.
    #[arg(long, default_value_t = Limits::default().max_sandboxes)]
    pub max_sandboxes: usize,
    /// Sandbox creates a key may make a minute; past it, create answers 429 with Retry-After.
    #[arg(long, default_value_t = Limits::default().creates_per_minute)]
    pub creates_per_minute: u32,
    /// Snapshots a key may keep (templates not counted); past it, a snapshot answers 429.
    #[arg(long, default_value_t = Limits::default().max_snapshots)]
    pub max_snapshots: usize,
    /// Volumes a key may keep; past it, a new volume answers 429.
    #[arg(long, default_value_t = Limits::default().max_volumes)]
    pub max_volumes: usize,
    /// Template builds a key may run at once; past it, starting one answers 429.
    #[arg(long, default_value_t = Limits::default().max_builds)]
    pub max_builds: usize,
    /// Disk a key may hold, in MiB (its snapshots' and templates' own bytes, and its template
    /// uploads); past it, a snapshot, a build or an upload answers 429.
    #[arg(long, default_value_t = Limits::default().max_disk_mib)]
    pub max_disk_mib: u64,
}

impl ServeArgs {
    /// The server configuration these options describe.
    ///
    /// # Errors
    /// No API key or keys file without `--insecure-no-auth`.
    pub fn config(&self) -> Result<ServerConfig, String> {
        let api_key = self.api_key.clone().filter(|k| !k.is_empty());
        if api_key.is_none() && self.keys_file.is_none() && !self.insecure_no_auth {
            return Err(
                "no API key: pass --api-key or set E2B_API_KEY (clients send the same key), \
                 give a --keys-file, or run with --insecure-no-auth on a machine you trust"
                    .into(),
            );
        }
        Ok(ServerConfig {
            api_key,
            keys_file: self.keys_file.clone(),
            revoked: self.revoked,
            data_dir: self.data_dir.clone().or_else(default_data_dir),
            insecure_no_auth: self.insecure_no_auth,
            keep_sandboxes: self.keep_sandboxes,
            max_timeout: Duration::from_secs(self.max_timeout_hours.max(1) * 3600),
            debug: self.debug,
            allow_remote: self.allow_remote,
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_images: if self.allowed_images.is_empty() {
                crate::state::default_allowed_images()
            } else {
                self.allowed_images.clone()
            },
            limits: Limits {
                max_connections: self.max_connections,
                max_connections_per_source: self.max_connections_per_source,
                header_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
                max_sandboxes: self.max_sandboxes,
                creates_per_minute: self.creates_per_minute,
                max_snapshots: self.max_snapshots,
                max_volumes: self.max_volumes,
                max_builds: self.max_builds,
                max_disk_mib: self.max_disk_mib,
            },
            ..Default::default()
        })
    }

    /// Binds the addresses and serves `runtime` until `shutdown` completes.
    ///
    /// # Errors
    /// A bad option, an address that cannot be bound or is refused (beyond loopback without
    /// `--allow-remote`), with what to do.
    pub async fn serve(
        self,
        runtime: Arc<dyn Runtime>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let config = self.config()?;
        let api = tokio::net::TcpListener::bind(self.api_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", self.api_addr))?;
        let envd = tokio::net::TcpListener::bind(self.envd_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", self.envd_addr))?;
        let ports = match self.ports_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
            ),
            None => None,
        };
        let server = Server::new(runtime, config).map_err(|e| e.to_string())?;
        if self.keys_file.is_some() {
            let keys = server.clone();
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reading the keys file again");
                    keys.reload_keys().await;
                }
            });
        }
        server
            .serve_with_ports(api, envd, ports, shutdown)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Where a server keeps what outlives a run, when no `--data-dir` is given.
fn default_data_dir() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(state) => std::path::PathBuf::from(state),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("e2b-local"))
}

/// `config` as e2b-local serves it: where `[docker] no_new_privileges` is left at its
/// default, sandboxes let `user` run `sudo`, as E2B's base template does (E2B's own SDK tests
/// run it); every other hardening stays (capabilities, no raw sockets, the network guard).
/// Set `no_new_privileges = true` to refuse it. Both binaries that serve E2B call this.
pub fn serving_config(mut config: sandkit_config::Config) -> sandkit_config::Config {
    if config.source_of("docker.no_new_privileges") == "default" {
        config.docker.no_new_privileges = false;
        tracing::info!(
            "sandboxes let `user` sudo, as on E2B ([docker] no_new_privileges = true refuses it)"
        );
    }
    config
}

/// Sets up a server binary's logs: stderr at the level `RUST_LOG` (or `SANDKIT_LOG`) asks for,
/// else `default_level`; and with `audit_log`, the audit lines (target `e2b_local::audit`)
/// appended to that file whatever the stderr level.
///
/// # Errors
/// The audit log file cannot be opened for appending.
pub fn init_logging(
    default_level: &str,
    audit_log: Option<&std::path::Path>,
) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let level = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("SANDKIT_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(level);
    let audit = match audit_log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(file))
                    .with_filter(
                        tracing_subscriber::filter::Targets::new()
                            .with_target("e2b_local::audit", tracing::Level::INFO),
                    ),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(audit)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}
