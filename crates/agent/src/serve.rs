//! `sandkit-agent serve`: envd over this machine (the container the agent runs in), on a TCP
//! address, a Unix socket and/or the agent's own stdin/stdout, HTTP/1.1 and HTTP/2 cleartext.
//!
//! Every request but `GET /health` needs the token given at start in `X-Access-Token` (or a
//! `/files` URL signed with it). The token comes from `SANDKIT_AGENT_TOKEN`, which is removed from
//! the environment before anything runs, or from `--token-file`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use sandkit_core::SandboxSpec;
use sandkit_local::LocalSandbox;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

/// The environment variable the token is read from.
pub(crate) const TOKEN_ENV: &str = "SANDKIT_AGENT_TOKEN";

pub(crate) const USAGE: &str =
    "sandkit-agent serve [--listen HOST:PORT]... [--socket PATH]... [--stdio] \
[--token-file PATH | --insecure-no-token] [--user NAME] [--cwd DIR]";

#[derive(Debug, Default)]
pub(crate) struct Options {
    listen: Vec<SocketAddr>,
    sockets: Vec<PathBuf>,
    stdio: bool,
    token: Option<String>,
    no_token: bool,
    user: Option<String>,
    cwd: Option<String>,
}

impl Options {
    /// Parses the arguments and takes the token out of the environment.
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        let mut token_file = None;
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--listen" => {
                    let v = value("--listen")?;
                    o.listen.push(
                        v.parse()
                            .map_err(|e| format!("--listen {v}: not HOST:PORT ({e})"))?,
                    );
                }
                "--socket" => o.sockets.push(value("--socket")?.into()),
                "--stdio" => o.stdio = true,
                "--token-file" => token_file = Some(value("--token-file")?),
                "--insecure-no-token" => o.no_token = true,
                "--user" => o.user = Some(value("--user")?),
                "--cwd" => o.cwd = Some(value("--cwd")?),
                other => return Err(format!("unexpected argument '{other}'")),
            }
        }
        if o.listen.is_empty() && o.sockets.is_empty() && !o.stdio {
            return Err("say where to serve: --listen, --socket and/or --stdio".into());
        }
        let from_env = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        // Commands started by the agent must not see it.
        std::env::remove_var(TOKEN_ENV);
        o.token = match token_file {
            Some(f) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| format!("--token-file {f}: {e}"))?
                    .trim()
                    .to_string(),
            ),
            None => from_env,
        };
        if o.token.as_deref().is_some_and(str::is_empty) {
            return Err("the token is empty".into());
        }
        if o.token.is_none() && !o.no_token {
            return Err(format!(
                "no token: set {TOKEN_ENV} or --token-file (or --insecure-no-token to let anyone in)"
            ));
        }
        if o.token.is_some() && o.no_token {
            return Err("--insecure-no-token with a token: pick one".into());
        }
        Ok(o)
    }
}

pub(crate) fn run(options: Options) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("SANDKIT_LOG"))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandkit-agent serve: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandkit-agent serve: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(o: Options) -> Result<(), String> {
    let mut spec = SandboxSpec::new();
    if let Some(c) = &o.cwd {
        spec = spec.cwd(c);
    }
    let sandbox = LocalSandbox::this_machine(spec).map_err(|e| e.to_string())?;
    let served = Arc::new(sandkit_envd::Served::new(
        Box::new(sandbox),
        o.user.clone().unwrap_or_else(|| "user".into()),
    ));
    let envs: BTreeMap<String, String> = std::env::vars().collect();
    let resolver = sandkit_envd::OneSandbox::new(served.clone(), o.token.clone()).envs(envs);
    let app = sandkit_envd::router(Arc::new(resolver));

    let mut tasks = tokio::task::JoinSet::new();
    for addr in &o.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("sandkit-agent: listening on tcp {bound}");
        let app = app.clone();
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(connection(s, app.clone()));
                    }
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    for path in &o.sockets {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        // Only this agent's own user (root in a sandbox) may connect.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
        eprintln!("sandkit-agent: listening on unix {}", path.display());
        let app = app.clone();
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(connection(s, app.clone()));
                    }
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    let only_stdio = o.listen.is_empty() && o.sockets.is_empty();
    if o.stdio {
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        let app = app.clone();
        tasks.spawn(async move {
            connection(io, app).await;
            debug!("stdio connection closed");
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => debug!("terminated"),
        _ = tokio::signal::ctrl_c() => debug!("interrupted"),
        _ = tasks.join_next(), if only_stdio => {}
    }
    // Nothing the agent started outlives it.
    if let Err(e) = served.sandbox().kill().await {
        warn!(error = %e, "stopping the commands");
    }
    Ok(())
}

/// Serves one connection, HTTP/1.1 or HTTP/2 as the client speaks.
async fn connection<I>(io: I, app: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(1024)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .max_send_buf_size(4 << 20);
    let service = TowerToHyperService::new(app);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        debug!(error = %e, "connection ended with an error");
    }
}
