//! `sandkit-agent serve` end to end, through the E2B backend's envd client (`EnvdClient`):
//!
//! - `agent_stdio::*` and `agent_tcp::*`: the Sandbox and actions conformance cases against
//!   agents started on this host, one per sandbox, reached over their stdin/stdout and over
//!   TCP. The harness here is the runtime: it starts an agent for `create` and stops it for
//!   `kill` or at the deadline; everything else goes through envd.
//! - `agent_container::*`: the static agent (`SANDKIT_AGENT_BIN`, built by `cargo xtask agent`)
//!   inside `sandkit-mini` (busybox, no libc) and `sandkit-base` containers, over the stdio of a
//!   `docker run -i`: `/health`, a command's output, a file.
//! - `agent_auth::*`: without the token, nothing but `/health`.

use std::collections::HashMap;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sandkit_conformance::{SandboxTarget, Suite};
use sandkit_core::{
    Capabilities, CommandSpec, Error, ErrorKind, ExecOutput, FileStore, FileStoreExt,
    FsEventStream, ListFilter, Metrics, Process, ProcessEvent, ProcessInfo, Result, Runtime,
    Sandbox, SandboxInfo, SandboxSpec,
};
use sandkit_envd_client::{Connect, EnvdClient, EnvdIo};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::watch;

const AGENT: &str = env!("CARGO_BIN_EXE_sandkit-agent");

fn main() -> ExitCode {
    // Each agent gets a /tmp and a home of its own (see `start_agent`), as a container would.
    let private_tmp = euid() == 0;
    let mut suite = Suite::new();
    let home = tempfile::tempdir().expect("a home directory");
    for (label, tcp) in [("agent_stdio", false), ("agent_tcp", true)] {
        let runtime: Arc<dyn Runtime> = Arc::new(AgentRuntime::new(tcp, home.path()));
        suite.add_sandbox(
            SandboxTarget::new(label, runtime, SandboxSpec::new()).with_python(private_tmp),
        );
    }
    suite.add_trial(
        "agent_auth::nothing_but_health_without_the_token".into(),
        false,
        nothing_but_health_without_the_token,
    );
    suite.add_trial(
        "agent_files::metadata_kept_read_back_and_replaced".into(),
        false,
        metadata_kept_read_back_and_replaced,
    );
    let static_bin = std::env::var("SANDKIT_AGENT_BIN").ok();
    for (label, image) in [
        ("mini", "sandkit-mini:latest"),
        ("base", "sandkit-base:bookworm"),
    ] {
        let bin = static_bin.clone();
        let name = format!("agent_container::{label}_over_stdio");
        // Without the engine, the image or the static agent the case is ignored, saying so
        // (with SANDKIT_REQUIRE_DOCKER=1 it runs and fails, naming what is missing).
        let ready = bin.is_some() && image_present(image);
        if !ready {
            eprintln!("note: {name} is ignored: {}", container_needs(image));
        }
        let ignored = !ready && !sandkit_conformance::engine_required();
        suite.add_trial(name, ignored, move || in_container(image, bin));
    }
    suite.run()
}

/// The agent binary as agents are started here: through a descriptor opened once, because
/// each agent's private `/tmp` and `/root` may hide the checkout it was built in.
fn agent_exe() -> String {
    static FD: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    let fd = FD.get_or_init(|| {
        use std::os::fd::IntoRawFd;
        let fd = std::fs::File::open(AGENT).ok()?.into_raw_fd();
        // SAFETY: clearing close-on-exec on a descriptor this process owns, so that the
        // child can exec it by its /proc path.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        Some(fd)
    });
    match fd {
        Some(fd) if euid() == 0 => format!("/proc/self/fd/{fd}"),
        _ => AGENT.to_string(),
    }
}

fn euid() -> u32 {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() }
}

/// Everything a process printed, and its exit code.
async fn collect(mut p: Process) -> Result<ExecOutput> {
    let mut out = ExecOutput::default();
    while let Some(ev) = p.next_event().await {
        match ev? {
            ProcessEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
            ProcessEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
            ProcessEvent::Exited { code } => out.exit_code = Some(code),
        }
    }
    Ok(out)
}

// ---- the harness runtime -------------------------------------------------------------------

/// A connection that exists once: the agent's stdio.
#[derive(Debug)]
struct Stdio1(Mutex<Option<(ChildStdout, ChildStdin)>>);

impl Connect for Stdio1 {
    fn connect(&self) -> BoxFuture<'static, std::io::Result<Box<dyn EnvdIo>>> {
        let taken = self.0.lock().unwrap().take();
        Box::pin(async move {
            let (r, w) = taken.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the agent's stdio was used up",
                )
            })?;
            Ok(Box::new(tokio::io::join(r, w)) as Box<dyn EnvdIo>)
        })
    }
}

#[derive(Debug)]
struct Tcp(std::net::SocketAddr);

impl Connect for Tcp {
    fn connect(&self) -> BoxFuture<'static, std::io::Result<Box<dyn EnvdIo>>> {
        let addr = self.0;
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Box<dyn EnvdIo>)
        })
    }
}

/// Starts an agent on this host with `token`; returns it and how to reach it.
async fn start_agent(
    tcp: bool,
    token: &str,
    spec: &SandboxSpec,
    home: &std::path::Path,
) -> Result<(Child, Arc<dyn Connect>, Option<std::net::SocketAddr>)> {
    let mut cmd = tokio::process::Command::new(agent_exe());
    cmd.arg("serve");
    if tcp {
        cmd.args(["--listen", "127.0.0.1:0"]);
    } else {
        cmd.arg("--stdio");
    }
    if let Some(c) = &spec.cwd {
        cmd.args(["--cwd", c]);
    }
    let root = euid() == 0;
    // SAFETY: only system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Started the way a non-interactive shell's background job starts it (CI runners,
            // supervisors, `nohup`): SIGINT and SIGQUIT ignored, SIGINT blocked besides. The
            // suite's interrupt cases (`C-c` in a session, `Signal::Interrupt`) must still
            // stop commands.
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
            let mut blocked: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut blocked);
            libc::sigaddset(&mut blocked, libc::SIGINT);
            libc::sigprocmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
            if root && !sandkit_conformance::private_scratch() {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.env("SANDKIT_AGENT_TOKEN", token)
        .env("HOME", home)
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut tcp_addr = None;
    let connect: Arc<dyn Connect> = if tcp {
        let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, "the agent did not say where it listens"))??
            .unwrap_or_default();
        let addr = line
            .strip_prefix("sandkit-agent: listening on tcp ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, format!("agent said: {line}")))?;
        tcp_addr = Some(addr);
        Arc::new(Tcp(addr))
    } else {
        let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        Arc::new(Stdio1(Mutex::new(Some(io))))
    };
    // What the agent logs later goes to the test's stderr.
    tokio::spawn(async move {
        while let Ok(Some(l)) = stderr.next_line().await {
            eprintln!("agent: {l}");
        }
    });
    Ok((child, connect, tcp_addr))
}

/// One agent: a sandbox as far as the suite can tell.
#[derive(Debug)]
struct Agent {
    id: String,
    metadata: std::collections::BTreeMap<String, String>,
    started_at: SystemTime,
    client: EnvdClient,
    child: tokio::sync::Mutex<Option<Child>>,
    stopped: std::sync::atomic::AtomicBool,
    deadline: watch::Sender<SystemTime>,
}

impl Agent {
    /// Stops the agent (it stops what it started) and waits for it; false if it was stopped.
    async fn stop(&self) -> bool {
        let Some(mut child) = self.child.lock().await.take() else {
            return false;
        };
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        true
    }

    fn gone(&self) -> Error {
        Error::new(ErrorKind::NotFound, format!("agent {} is stopped", self.id))
    }
}

#[derive(Debug)]
struct AgentRuntime {
    tcp: bool,
    home: std::path::PathBuf,
    agents: Arc<Mutex<HashMap<String, Arc<Agent>>>>,
}

impl AgentRuntime {
    fn new(tcp: bool, home: &std::path::Path) -> Self {
        AgentRuntime {
            tcp,
            home: home.to_path_buf(),
            agents: Default::default(),
        }
    }
}

#[async_trait]
impl Runtime for AgentRuntime {
    fn name(&self) -> &'static str {
        "agent"
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.pty = true;
        c.host_ports = true;
        c.watch = true;
        c.metrics = true;
        c
    }
    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let id = format!("{:016x}", rand::random::<u64>());
        let token = format!("{:032x}", rand::random::<u128>());
        let (child, connect, _) = start_agent(self.tcp, &token, &spec, &self.home).await?;
        let client = EnvdClient::over(connect, id.clone(), Some(token))
            .with_defaults(spec.user.clone(), spec.cwd.clone());
        let ttl = spec
            .timeout
            .unwrap_or(sandkit_core::DEFAULT_SANDBOX_TIMEOUT);
        let (deadline, mut rx) = watch::channel(SystemTime::now() + ttl);
        let agent = Arc::new(Agent {
            id: id.clone(),
            metadata: spec.metadata.clone(),
            started_at: SystemTime::now(),
            client,
            child: tokio::sync::Mutex::new(Some(child)),
            stopped: Default::default(),
            deadline,
        });
        self.agents.lock().unwrap().insert(id, agent.clone());
        let (weak, all) = (Arc::downgrade(&agent), self.agents.clone());
        tokio::spawn(async move {
            loop {
                let at = *rx.borrow_and_update();
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(wait) => if at <= SystemTime::now() { break },
                }
            }
            if let Some(a) = weak.upgrade() {
                all.lock().unwrap().remove(&a.id);
                a.stop().await;
            }
        });
        Ok(Box::new(AgentSandbox(agent)))
    }
    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>> {
        let agent = self.agents.lock().unwrap().get(id).cloned();
        let agent = agent
            .filter(|a| !a.stopped.load(std::sync::atomic::Ordering::SeqCst))
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no agent {id}")))?;
        Ok(Box::new(AgentSandbox(agent)))
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        let all: Vec<_> = self.agents.lock().unwrap().values().cloned().collect();
        Ok(all
            .iter()
            .filter(|a| !a.stopped.load(std::sync::atomic::Ordering::SeqCst))
            .map(|a| info(a))
            .filter(|i| filter.matches(i))
            .collect())
    }
    async fn kill(&self, id: &str) -> Result<()> {
        let agent = self.agents.lock().unwrap().remove(id);
        match agent {
            Some(a) if a.stop().await => Ok(()),
            Some(a) => Err(a.gone()),
            None => Err(Error::new(ErrorKind::NotFound, format!("no agent {id}"))),
        }
    }
}

fn info(a: &Agent) -> SandboxInfo {
    let mut i = SandboxInfo::new(a.id.clone(), "agent", "agent");
    i.metadata = a.metadata.clone();
    i.started_at = a.started_at;
    i.expires_at = Some(*a.deadline.borrow());
    i
}

#[derive(Debug)]
struct AgentSandbox(Arc<Agent>);

impl AgentSandbox {
    async fn alive(&self) -> Result<()> {
        if self.0.child.lock().await.is_none() {
            return Err(self.0.gone());
        }
        Ok(())
    }
}

#[async_trait]
impl Sandbox for AgentSandbox {
    fn id(&self) -> &str {
        &self.0.id
    }
    async fn spawn(&self, spec: CommandSpec) -> Result<Process> {
        self.alive().await?;
        self.0.client.spawn(spec).await
    }
    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.0.client.processes().await
    }
    fn files(&self) -> &dyn FileStore {
        self.0.client.files()
    }
    fn files_as(&self, user: &str) -> Result<Box<dyn FileStore>> {
        Ok(Box::new(self.0.client.files_as(user)))
    }
    async fn info(&self) -> Result<SandboxInfo> {
        self.alive().await?;
        Ok(info(&self.0))
    }
    async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.alive().await?;
        self.0.deadline.send_replace(SystemTime::now() + timeout);
        Ok(())
    }
    async fn kill(&self) -> Result<()> {
        if self.0.stop().await {
            Ok(())
        } else {
            Err(self.0.gone())
        }
    }
    async fn pause(&self) -> Result<()> {
        Err(Error::unsupported("agent", "pause"))
    }
    async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        self.alive().await?;
        self.0.client.watch(path, recursive).await
    }
    async fn metrics(&self) -> Result<Metrics> {
        self.alive().await?;
        self.0.client.metrics().await
    }
    async fn get_host(&self, port: u16) -> Result<String> {
        Ok(format!("127.0.0.1:{port}"))
    }
}

// ---- own trials ----------------------------------------------------------------------------

/// An agent with a token answers `/health` to anyone and nothing else without the token.
async fn nothing_but_health_without_the_token() -> sandkit_conformance::CaseResult {
    let home = tempfile::tempdir()?;
    let (mut child, connect, _) =
        start_agent(true, "right-token", &SandboxSpec::new(), home.path()).await?;
    let wrong = EnvdClient::over(connect.clone(), "x", Some("wrong-token".into()));
    let none = EnvdClient::over(connect.clone(), "x", None);
    let right = EnvdClient::over(connect, "x", Some("right-token".into()));
    assert!(wrong.is_running().await?, "/health needs no token");
    let marker = format!("/tmp/sandkit-auth-{:x}", rand::random::<u64>());
    for client in [&wrong, &none] {
        let err = client
            .spawn(CommandSpec::shell(format!("touch {marker}")))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        let err = client.files().read("/etc/hostname").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        let err = client.files().write_str(&marker, "x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        let err = client.files().list("/", 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    }
    assert!(!std::path::Path::new(&marker).exists(), "nothing ran");
    let out = collect(right.spawn(CommandSpec::shell("echo let in")).await?).await?;
    assert_eq!(out.stdout_text(), "let in\n");
    let _ = child.kill().await;
    Ok(())
}

/// One HTTP/1.1 request on a fresh connection; the status and body.
async fn http1(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// `X-Metadata-*` on an upload: kept with the file (keys lowercased), in the answer and in
/// `Stat`; replaced by the next upload; refused whole when invalid.
async fn metadata_kept_read_back_and_replaced() -> sandkit_conformance::CaseResult {
    let home = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    let (mut child, connect, addr) =
        start_agent(true, "t", &SandboxSpec::new(), home.path()).await?;
    let addr = addr.expect("a TCP agent has an address");
    let client = EnvdClient::over(connect, "x", Some("t".into()));
    let path = dir.path().join("m.txt");
    let path = path.to_str().unwrap();
    let upload = |extra: &str| {
        format!(
            "POST /files?path={path}&username=root HTTP/1.1\r\nX-Access-Token: t\r\n\
             Content-Type: application/octet-stream{extra}"
        )
    };
    let (status, body) = http1(
        addr,
        &upload("\r\nX-Metadata-Owner: Alice\r\nX-Metadata-Stage: draft 1"),
        b"hello",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""metadata":{"owner":"Alice","stage":"draft 1"}"#),
        "{body}"
    );
    let e = client.files().stat(path).await?;
    assert_eq!(e.metadata.get("owner").map(String::as_str), Some("Alice"));
    assert_eq!(e.metadata.len(), 2);
    // Another upload replaces the set; one without headers clears it.
    let (status, body) = http1(addr, &upload("\r\nX-Metadata-Stage: final"), b"v2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        client.files().stat(path).await?.metadata,
        std::collections::BTreeMap::from([("stage".to_string(), "final".to_string())])
    );
    let (status, body) = http1(addr, &upload(""), b"v3").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("metadata"), "{body}");
    assert!(client.files().stat(path).await?.metadata.is_empty());
    // Invalid: refused before anything is written.
    let long = "k".repeat(300);
    let (status, body) = http1(addr, &upload(&format!("\r\nX-Metadata-{long}: v")), b"v4").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid metadata"), "{body}");
    assert_eq!(client.files().read_to_string(path).await?, "v3");
    let _ = child.kill().await;
    Ok(())
}

fn image_present(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn container_needs(image: &str) -> String {
    format!(
        "needs Docker with {image} and SANDKIT_AGENT_BIN naming the static agent \
         (`cargo xtask image`, `cargo xtask agent`)"
    )
}

/// The static agent in a container, reached over `docker run -i`'s stdio.
async fn in_container(image: &'static str, bin: Option<String>) -> sandkit_conformance::CaseResult {
    let Some(bin) = bin.filter(|_| image_present(image)) else {
        return Err(sandkit_core::Error::new(
            sandkit_core::ErrorKind::Unavailable,
            container_needs(image),
        ));
    };
    let name = format!("sandkit-agent-test-{:x}", rand::random::<u64>());
    let mut child = tokio::process::Command::new("docker")
        .args(["run", "--rm", "-i", "--name", &name])
        .args(["--label", "sandkit-test=agent", "--network", "none"])
        .args(["-v", &format!("{bin}:/sandkit-agent:ro")])
        .args(["-e", "SANDKIT_AGENT_TOKEN=container-token", image])
        .args(["/sandkit-agent", "serve", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let connect: Arc<dyn Connect> = Arc::new(Stdio1(Mutex::new(Some(io))));
    let result = async {
        let client = EnvdClient::over(connect, &name, Some("container-token".into()));
        assert!(client.is_running().await?, "/health over stdio");
        // As the image's `user` by default, as on E2B; as root when asked.
        let p = client
            .spawn(CommandSpec::shell("echo from inside; id -un"))
            .await?;
        let out = collect(p).await?;
        assert_eq!(out.stdout_text(), "from inside\nuser\n", "{out:?}");
        let p = client
            .spawn(CommandSpec::program("id", ["-u"]).user("root"))
            .await?;
        assert_eq!(collect(p).await?.stdout_text(), "0\n");
        client
            .files()
            .write_str("/tmp/agent.txt", "written")
            .await?;
        assert_eq!(
            client.files().read_to_string("/tmp/agent.txt").await?,
            "written"
        );
        Ok::<_, Error>(())
    }
    .await;
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill().await;
    result
}
