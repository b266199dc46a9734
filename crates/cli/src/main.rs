//! `sandkit`: make sandboxes, run commands in them, move files, on the backend the configuration
//! picks (Docker or E2B).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sandkit_config::Config;
use sandkit_core::{
    copy_tree, CommandSpec, EntryKind, Error, ErrorKind, ListFilter, ProcessEvent, Runtime,
    Sandbox, SandboxSpec,
};
use sandkit_filestore::LocalFileStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sandboxes for AI agents: one CLI over Docker and E2B.
#[derive(Debug, Parser)]
#[command(name = "sandkit", version, propagate_version = true)]
struct Cli {
    /// The backend: docker or e2b (default: the configuration's, else docker).
    #[arg(long, global = true)]
    runtime: Option<String>,
    /// A configuration file (default: SANDKIT_CONFIG, else ./sandkit.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make a sandbox, run a command in it with live output, kill it; exits with the
    /// command's exit code.
    Run {
        #[command(flatten)]
        make: Make,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Make a sandbox and print its id.
    Create {
        #[command(flatten)]
        make: Make,
    },
    /// List sandboxes.
    Ls {
        /// Only those with this metadata (KEY=VALUE; repeatable).
        #[arg(long = "meta", value_parser = parse_pair)]
        meta: Vec<(String, String)>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a sandbox, with live output; exits with the command's exit code.
    Exec {
        /// The sandbox id.
        id: String,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// User to run as.
        #[arg(long)]
        user: Option<String>,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// An interactive shell in a sandbox (on a terminal where the backend has one).
    Shell {
        /// The sandbox id.
        id: String,
    },
    /// Copy files or directories; write a sandbox path as ID:/path.
    Cp {
        /// From: a host path or ID:/path.
        src: String,
        /// To: a host path or ID:/path.
        dst: String,
    },
    /// Replace a running sandbox's network policy (takes effect on open connections too).
    Network {
        /// The sandbox id.
        id: String,
        #[command(flatten)]
        policy: Policy,
    },
    /// Kill sandboxes.
    Kill {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print the merged configuration with the source of each value (secrets redacted).
    Config,
    /// Templates (e2b.toml + Dockerfile) on the Docker backend.
    Template {
        #[command(subcommand)]
        command: TemplateCmd,
    },
    /// Serve the E2B API and envd over this machine's backend (see e2b-local).
    ServeE2b(sandkit_e2b_local::ServeArgs),
    /// Serve sandbox tools over MCP: on stdin/stdout, or with --http on ADDR at /mcp. Each MCP
    /// session gets a sandbox on its first tool call, killed when the session ends.
    Mcp {
        /// Serve streamable HTTP on this address (loopback: 127.0.0.1:PORT) instead of stdio.
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum TemplateCmd {
    /// Build DIR (with an e2b.toml) into a local image named after the template.
    Build {
        /// The template directory.
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Make {
    /// Template or image (default: the configured image).
    #[arg(long, alias = "image")]
    template: Option<String>,
    /// Time to live in seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = parse_pair)]
    meta: Vec<(String, String)>,
    /// Environment KEY=VALUE for every command (repeatable).
    #[arg(long = "env", value_parser = parse_pair)]
    env: Vec<(String, String)>,
    /// Resolve NAME to IP in the sandbox (NAME=IP; repeatable).
    #[arg(long = "add-host", value_parser = parse_host)]
    hosts: Vec<(String, std::net::IpAddr)>,
    #[command(flatten)]
    policy: Policy,
}

/// A network policy on the command line (see `sandkit_core::NetworkPolicy`).
#[derive(Debug, clap::Args)]
struct Policy {
    /// Always allow this address, CIDR or domain (`*.example.com`; repeatable).
    #[arg(long = "allow-out")]
    allow_out: Vec<String>,
    /// Refuse this address or CIDR unless allowed (`0.0.0.0/0`: everything; repeatable).
    #[arg(long = "deny-out")]
    deny_out: Vec<String>,
    /// Let the sandbox reach the machine that runs it.
    #[arg(long)]
    allow_host: bool,
    /// Let the sandbox reach link-local addresses (169.254.0.0/16).
    #[arg(long)]
    allow_link_local: bool,
    /// Set a header on the sandbox's HTTP(S) requests to a domain, outside the sandbox:
    /// `DOMAIN:HEADER=VALUE`; the value may name a secret, `${e2b.secrets.NAME}` (repeatable).
    #[arg(long = "rule", value_parser = parse_rule)]
    rules: Vec<(String, String, String)>,
    /// A secret for the rules: `NAME=VARIABLE`, its value read from that environment variable
    /// (never from the command line, which other users can see; repeatable).
    #[arg(long = "secret", value_parser = parse_secret)]
    secrets: Vec<(String, String)>,
    /// Send the sandbox's outbound TCP through this SOCKS5 proxy (`host:port`), after the
    /// policy's filtering.
    #[arg(long)]
    egress_proxy: Option<String>,
}

impl Policy {
    /// The policy, `None` when no flag was given (the configuration's then applies).
    fn get(&self) -> Option<sandkit_core::NetworkPolicy> {
        let mut p = sandkit_core::NetworkPolicy::new()
            .allow_out(self.allow_out.clone())
            .deny_out(self.deny_out.clone())
            .allow_host(self.allow_host)
            .allow_link_local(self.allow_link_local);
        for (domain, header, value) in &self.rules {
            p = p.rule(
                domain,
                sandkit_core::RequestRule::new().header(header, value),
            );
        }
        for (name, value) in &self.secrets {
            p = p.secret(name, value);
        }
        if let Some(address) = &self.egress_proxy {
            p = p.egress_proxy(sandkit_core::EgressProxy::new(address));
        }
        (p != sandkit_core::NetworkPolicy::new()).then_some(p)
    }
}

fn parse_host(s: &str) -> Result<(String, std::net::IpAddr), String> {
    let (k, v) = parse_pair(s)?;
    let ip = v
        .parse()
        .map_err(|_| format!("expected NAME=IP, got {s:?} ({v:?} is not an IP address)"))?;
    Ok((k, ip))
}

fn parse_rule(s: &str) -> Result<(String, String, String), String> {
    let bad = || format!("expected DOMAIN:HEADER=VALUE, got {s:?}");
    let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
    let (header, value) = rest.split_once('=').ok_or_else(bad)?;
    if domain.is_empty() || header.is_empty() {
        return Err(bad());
    }
    Ok((domain.to_string(), header.to_string(), value.to_string()))
}

fn parse_secret(s: &str) -> Result<(String, String), String> {
    let (name, var) = parse_pair(s)?;
    let value = std::env::var(&var).map_err(|_| {
        format!("secret {name}: the environment variable {var} is not set (NAME=VARIABLE)")
    })?;
    Ok((name, value))
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// An error for the user: one line, and what to do.
struct Failure {
    message: String,
    hint: Option<String>,
    code: u8,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let hint = match e.kind() {
            ErrorKind::NotFound if e.to_string().contains("sandbox") => {
                Some("`sandkit ls` lists the sandboxes that exist".into())
            }
            ErrorKind::Unavailable => {
                Some("is the backend running? `cargo xtask docker` starts a Docker engine".into())
            }
            ErrorKind::Unauthenticated => {
                Some("set E2B_API_KEY (or [e2b] api_key in sandkit.toml)".into())
            }
            _ => None,
        };
        Failure {
            message: e.to_string(),
            hint,
            code: 1,
        }
    }
}

fn fail(message: impl Into<String>, hint: Option<&str>) -> Failure {
    Failure {
        message: message.into(),
        hint: hint.map(String::from),
        code: 2,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let audit_log = match &cli.command {
        Cmd::ServeE2b(args) => args.audit_log.clone(),
        _ => None,
    };
    if let Err(e) = sandkit_e2b_local::init_logging("warn", audit_log.as_deref()) {
        eprintln!("sandkit: {e}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("sandkit: error: {}", f.message);
            if let Some(h) = f.hint {
                eprintln!("sandkit: hint: {h}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let mut b = Config::builder();
    if let Some(p) = &cli.config {
        b = b.file(p);
    }
    if let Some(r) = &cli.runtime {
        b = b.set("core.runtime", r.as_str());
    }
    b.load().map_err(|e| Failure {
        message: e.to_string(),
        hint: Some("`sandkit config` shows every key and where its value comes from".into()),
        code: 2,
    })
}

/// Says what is happening on a terminal; quiet when piped.
fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{msg}");
        let _ = std::io::stderr().flush();
    }
}

fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
}

fn spec_of(make: &Make) -> SandboxSpec {
    let mut spec = SandboxSpec::new();
    if let Some(t) = &make.template {
        spec = spec.template(t);
    }
    if let Some(t) = make.timeout {
        spec = spec.timeout(Duration::from_secs(t));
    }
    for (k, v) in &make.meta {
        spec = spec.metadata(k, v);
    }
    for (k, v) in &make.env {
        spec = spec.env(k, v);
    }
    for (name, ip) in &make.hosts {
        spec = spec.add_host(name, *ip);
    }
    if let Some(policy) = make.policy.get() {
        spec = spec.network_policy(policy);
    }
    spec
}

/// Ctrl-C, SIGTERM or SIGHUP: what stops a server (`sandkit mcp`) so that it cleans up first.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let wait = |s: Option<tokio::signal::unix::Signal>| async move {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = wait(term.take()) => {}
        () = wait(hup.take()) => {}
    }
}

/// A program with arguments, or one argument as a shell line.
fn command_of(words: &[String]) -> CommandSpec {
    match words {
        [line] if line.contains(' ') || line.contains('|') || line.contains(';') => {
            CommandSpec::shell(line.clone())
        }
        [program, args @ ..] => CommandSpec::program(program.clone(), args.to_vec()),
        [] => unreachable!("clap requires a command"),
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let config = load_config(&cli)?;
    match cli.command {
        Cmd::Config => {
            print!("{}", config.to_toml_with_sources());
            Ok(0)
        }
        Cmd::Template {
            command: TemplateCmd::Build { dir },
        } => {
            if config.core.runtime != sandkit_config::RuntimeKind::Docker {
                return Err(fail(
                    "templates are built on the Docker backend",
                    Some("use --runtime docker"),
                ));
            }
            let docker = config.docker().await?;
            let tag = docker
                .build_template(&dir, |line| eprintln!("{line}"))
                .await?;
            println!("{tag}");
            Ok(0)
        }
        Cmd::ServeE2b(args) => {
            args.config().map_err(|e| fail(e, None))?;
            let runtime = sandkit_e2b_local::serving_config(config.clone())
                .runtime()
                .await?;
            eprintln!(
                "serving E2B: E2B_API_URL=http://{} E2B_SANDBOX_URL=http://{}",
                args.api_addr, args.envd_addr
            );
            args.serve(runtime, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| fail(e, None))?;
            Ok(0)
        }
        Cmd::Mcp { http } => {
            let runtime = config.runtime().await?;
            let options = sandkit_actions::SessionOptions::from_config(&config);
            let server = sandkit_mcp::McpServer::new(runtime.clone(), options);
            let served = match http {
                None => server
                    .serve_stdio(stop_signal())
                    .await
                    .map_err(Failure::from),
                Some(addr) => {
                    if !addr.ip().is_loopback() {
                        return Err(fail(
                            format!("{addr} is not a loopback address"),
                            Some("MCP carries no authentication here: serve it on 127.0.0.1"),
                        ));
                    }
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| fail(format!("cannot listen on {addr}: {e}"), None))?;
                    eprintln!("MCP over streamable HTTP at http://{addr}/mcp");
                    server
                        .serve_http(listener, stop_signal())
                        .await
                        .map_err(|e| fail(e.to_string(), None))
                }
            };
            runtime.shutdown().await;
            served.map(|()| 0)
        }
        other => {
            progress("connecting to the backend…");
            let runtime = config.runtime().await;
            progress_done();
            let runtime = runtime?;
            let result = with_runtime(runtime.clone(), other).await;
            // A warm pool this process started is not left behind.
            runtime.shutdown().await;
            result
        }
    }
}

async fn with_runtime(runtime: Arc<dyn Runtime>, cmd: Cmd) -> Result<u8, Failure> {
    match cmd {
        Cmd::Run { make, command } => {
            progress("starting a sandbox…");
            let sandbox = runtime.create(spec_of(&make)).await;
            progress_done();
            let sandbox = sandbox?;
            let result = stream(sandbox.as_ref(), command_of(&command)).await;
            let killed = sandbox.kill().await;
            let code = result?;
            killed?;
            Ok(code)
        }
        Cmd::Create { make } => {
            progress("starting a sandbox…");
            let sandbox = runtime.create(spec_of(&make)).await;
            progress_done();
            println!("{}", sandbox?.id());
            Ok(0)
        }
        Cmd::Ls { meta, json } => {
            let mut filter = ListFilter::all();
            for (k, v) in meta {
                filter = filter.metadata(k, v);
            }
            let mut list = runtime.list(&filter).await?;
            list.sort_by_key(|i| i.started_at);
            if json {
                let items: Vec<serde_json::Value> = list
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": i.id, "template": i.template, "state": i.state.as_str(), "metadata": i.metadata,
                            "started_at": sandkit_core::raw::time::rfc3339(i.started_at),
                            "expires_at": i.expires_at.map(sandkit_core::raw::time::rfc3339),
                            "backend": i.backend, "details": i.details,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items).expect("json"));
            } else {
                println!(
                    "{:<22} {:<8} {:<24} {:<20} METADATA",
                    "ID", "STATE", "TEMPLATE", "STARTED"
                );
                for i in list {
                    let meta: Vec<String> =
                        i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let started = sandkit_core::raw::time::rfc3339(i.started_at);
                    println!(
                        "{:<22} {:<8} {:<24} {:<20} {}",
                        i.id,
                        i.state.as_str(),
                        i.template,
                        &started[..started.len().min(19)],
                        meta.join(",")
                    );
                }
            }
            Ok(0)
        }
        Cmd::Exec {
            id,
            cwd,
            user,
            timeout,
            command,
        } => {
            let sandbox = runtime.connect(&id).await?;
            let mut spec = command_of(&command);
            if let Some(c) = cwd {
                spec = spec.cwd(c);
            }
            if let Some(u) = user {
                spec = spec.user(u);
            }
            if let Some(t) = timeout {
                spec = spec.timeout(Duration::from_secs(t));
            }
            stream(sandbox.as_ref(), spec).await
        }
        Cmd::Shell { id } => {
            let sandbox = runtime.connect(&id).await?;
            shell(runtime.as_ref(), sandbox.as_ref()).await
        }
        Cmd::Cp { src, dst } => {
            cp(runtime.as_ref(), &src, &dst).await?;
            Ok(0)
        }
        Cmd::Network { id, policy } => {
            let sandbox = runtime.connect(&id).await?;
            sandbox
                .set_network_policy(policy.get().unwrap_or_default())
                .await?;
            Ok(0)
        }
        Cmd::Kill { ids } => {
            let mut failed = false;
            for id in ids {
                match runtime.kill(&id).await {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("sandkit: error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Failure {
                    message: "some sandboxes were not killed".into(),
                    hint: Some("`sandkit ls` lists the sandboxes that exist".into()),
                    code: 1,
                });
            }
            Ok(0)
        }
        Cmd::Config | Cmd::Template { .. } | Cmd::ServeE2b(_) | Cmd::Mcp { .. } => {
            unreachable!("handled before")
        }
    }
}

/// Runs a command, copying its output as it comes and our stdin to it; returns its exit code.
async fn stream(sandbox: &dyn Sandbox, spec: CommandSpec) -> Result<u8, Failure> {
    let interactive_input = !std::io::stdin().is_terminal();
    let mut process = sandbox.spawn(spec.stdin(interactive_input)).await?;
    if interactive_input {
        let handle = process.handle();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if handle
                            .write_stdin(bytes::Bytes::copy_from_slice(&buf[..n]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = handle.close_stdin().await;
        });
    }
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    while let Some(ev) = process.next_event().await {
        match ev {
            Ok(ProcessEvent::Stdout(b)) => {
                let _ = out.write_all(&b).await;
                let _ = out.flush().await;
            }
            Ok(ProcessEvent::Stderr(b)) => {
                let _ = err.write_all(&b).await;
                let _ = err.flush().await;
            }
            Ok(ProcessEvent::Exited { code }) => return Ok(code.clamp(0, 255) as u8),
            Err(e) if e.kind() == ErrorKind::Timeout => {
                return Err(Failure {
                    message: e.to_string(),
                    hint: None,
                    code: 124,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(fail(
        "the command's output ended without an exit code",
        None,
    ))
}

/// An interactive shell: a PTY where the backend has one, the terminal in raw mode.
async fn shell(runtime: &dyn Runtime, sandbox: &dyn Sandbox) -> Result<u8, Failure> {
    let tty = std::io::stdin().is_terminal();
    let mut spec = CommandSpec::program(
        "sh",
        [
            "-c",
            "if command -v bash >/dev/null; then exec bash -i; else exec sh -i; fi",
        ],
    )
    .stdin(true);
    if tty && runtime.capabilities().pty {
        let (cols, rows) = terminal_size();
        spec = spec.pty(cols, rows).env(
            "TERM",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        );
        let _ = std::process::Command::new("stty")
            .args(["raw", "-echo"])
            .status();
    }
    let result = stream(sandbox, spec).await;
    if tty {
        let _ = std::process::Command::new("stty").arg("sane").status();
    }
    result
}

fn terminal_size() -> (u16, u16) {
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .output();
    if let Ok(o) = out {
        let text = String::from_utf8_lossy(&o.stdout);
        let mut it = text.split_whitespace();
        if let (Some(r), Some(c)) = (it.next(), it.next()) {
            if let (Ok(r), Ok(c)) = (r.parse(), c.parse()) {
                return (c, r);
            }
        }
    }
    (80, 24)
}

/// `ID:/path` → (id, path); anything else is a host path.
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (id, path) = arg.split_once(':')?;
    (!id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && path.starts_with('/'))
    .then_some((id, path))
}

/// A host path as a store rooted at its parent, and its name in that store.
fn host_store(path: &Path) -> Result<(LocalFileStore, String), Failure> {
    let abs =
        std::path::absolute(path).map_err(|e| fail(format!("{}: {e}", path.display()), None))?;
    let name = abs
        .file_name()
        .ok_or_else(|| fail(format!("{} has no file name", path.display()), None))?
        .to_string_lossy()
        .into_owned();
    let parent = abs.parent().unwrap_or(Path::new("/"));
    Ok((LocalFileStore::new(parent)?, name))
}

async fn cp(runtime: &dyn Runtime, src: &str, dst: &str) -> Result<(), Failure> {
    match (remote(src), remote(dst)) {
        (Some((id, path)), None) => {
            let sandbox = runtime.connect(id).await?;
            let host = Path::new(dst);
            // Copying into an existing directory puts the item inside it, as `cp` does.
            let target = if host.is_dir() {
                host.join(
                    path.trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or("copy"),
                )
            } else {
                host.to_path_buf()
            };
            let (store, name) = host_store(&target)?;
            copy_tree(sandbox.files(), path, &store, &name).await?;
        }
        (None, Some((id, path))) => {
            let sandbox = runtime.connect(id).await?;
            let (store, name) = host_store(Path::new(src))?;
            let dest = match sandbox.files().stat(path).await {
                Ok(e) if e.kind == EntryKind::Dir => {
                    format!("{}/{name}", path.trim_end_matches('/'))
                }
                _ => path.to_string(),
            };
            copy_tree(&store, &name, sandbox.files(), &dest).await?;
        }
        (Some(_), Some(_)) => {
            return Err(fail(
                "copying between two sandboxes is not supported",
                Some("copy to the host first"),
            ))
        }
        (None, None) => {
            return Err(fail(
                "one side must be a sandbox path, written ID:/path",
                None,
            ))
        }
    }
    Ok(())
}
