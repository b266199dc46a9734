//! The `e2b-local` command: an E2B-compatible server over the configured sbx backend.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use e2b_local::{Server, ServerConfig};

/// Serve E2B's API and envd over a local sbx backend (Docker by default), so the official E2B
/// SDKs run against this machine:
///
///   E2B_API_KEY=<key> E2B_API_URL=http://127.0.0.1:3000 E2B_SANDBOX_URL=http://127.0.0.1:49983
#[derive(Debug, Parser)]
#[command(name = "e2b-local", version)]
struct Args {
    /// Address of the control plane (what E2B_API_URL points at).
    #[arg(long, default_value = "127.0.0.1:3000")]
    api_addr: SocketAddr,
    /// Address of envd (what E2B_SANDBOX_URL points at).
    #[arg(long, default_value = "127.0.0.1:49983")]
    envd_addr: SocketAddr,
    /// The API key clients must send. Default: E2B_API_KEY.
    #[arg(long, env = "E2B_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Accept any API key and no access tokens (loopback only, on a machine you trust).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Serve the SDK's debug mode (E2B_DEBUG=true): envd requests for `debug_sandbox_id` need
    /// no token and make that sandbox on first use. Loopback only.
    #[arg(long)]
    debug: bool,
    /// Listen on addresses beyond loopback (prints a warning; put TLS in front).
    #[arg(long)]
    allow_remote: bool,
    /// A host name clients may use to reach the server, besides IP addresses and localhost
    /// (repeatable). Requests naming any other host are refused (DNS rebinding).
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Leave the sandboxes running when the server stops.
    #[arg(long)]
    keep_sandboxes: bool,
    /// The sbx configuration file (default: SBX_CONFIG, else ./sbx.toml).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Longest sandbox time to live a client may ask for, in hours.
    #[arg(long, default_value_t = 24)]
    max_timeout_hours: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SBX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2b-local: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let api_key = args.api_key.filter(|k| !k.is_empty());
    if api_key.is_none() && !args.insecure_no_auth {
        return Err(
            "no API key: pass --api-key or set E2B_API_KEY (clients send the same key), \
                    or run with --insecure-no-auth on a machine you trust"
                .into(),
        );
    }
    let mut builder = runtime_config::Config::builder();
    if let Some(path) = &args.config {
        builder = builder.file(path);
    }
    let config = builder.load().map_err(|e| e.to_string())?;
    if config.core.runtime == runtime_config::RuntimeKind::E2b {
        return Err(
            "e2b-local serves a local backend; set runtime = \"docker\" (RUNTIME=docker)".into(),
        );
    }
    let runtime = config.runtime().await.map_err(|e| e.to_string())?;
    let api = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.api_addr))?;
    let envd = tokio::net::TcpListener::bind(args.envd_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.envd_addr))?;
    let server_config = ServerConfig {
        api_key,
        insecure_no_auth: args.insecure_no_auth,
        keep_sandboxes: args.keep_sandboxes,
        max_timeout: Duration::from_secs(args.max_timeout_hours.max(1) * 3600),
        debug: args.debug,
        allow_remote: args.allow_remote,
        allowed_hosts: args.allowed_hosts,
        ..Default::default()
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    Server::new(runtime, server_config)
        .serve(api, envd, shutdown)
        .await
        .map_err(|e| e.to_string())
}
