//! Attacks on `e2b-local`, each performed and shown to do no harm (the security issue's
//! findings 1, 3 and 5):
//!
//! - envd's `debug_sandbox_id` without debug mode: no sandbox is made, nothing runs;
//! - a request naming a foreign host (DNS rebinding): refused on both ports;
//! - listeners beyond loopback: refused without `allow_remote`, always in debug/no-auth mode;
//! - a request with a bad token or a forged file signature: rejected before the backend is
//!   asked anything (a paused sandbox stays paused, its deadline unchanged);
//! - a second server with another key on the same engine: cannot list, read, use or kill the
//!   first one's sandboxes; reserved metadata keys are refused.
//!
//! Needs Docker; without an engine the tests fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sandkit_core::{
    Capabilities, ListFilter, Runtime, Sandbox, SandboxInfo, SandboxSpec, SandboxState,
};
use sandkit_docker::DockerRuntime;
use sandkit_e2b_local::{Server, ServerConfig};
use serde_json::json;

async fn docker() -> DockerRuntime {
    sandkit_conformance::needs_engine(DockerRuntime::builder().build().await)
}

/// A runtime that counts every call the server makes to the backend.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Runtime>,
    calls: AtomicUsize,
}

impl Counting {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Runtime for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn create(&self, spec: SandboxSpec) -> sandkit_core::Result<Box<dyn Sandbox>> {
        self.count();
        self.inner.create(spec).await
    }
    async fn connect(&self, id: &str) -> sandkit_core::Result<Box<dyn Sandbox>> {
        self.count();
        self.inner.connect(id).await
    }
    async fn list(&self, filter: &ListFilter) -> sandkit_core::Result<Vec<SandboxInfo>> {
        self.count();
        self.inner.list(filter).await
    }
    async fn info(&self, id: &str) -> sandkit_core::Result<SandboxInfo> {
        self.count();
        self.inner.info(id).await
    }
    async fn kill(&self, id: &str) -> sandkit_core::Result<()> {
        self.count();
        self.inner.kill(id).await
    }
}

struct Served {
    api: SocketAddr,
    envd: SocketAddr,
    key: String,
    /// The secret it signs tokens with (what its operator holds).
    secret: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The data directory of every server these tests start: one secret for all of them,
/// as servers on one machine share `~/.local/state/e2b-local`, so a token one server mints is
/// one another server would mint too.
fn shared_data_dir() -> std::path::PathBuf {
    // Under the build's own scratch directory, reused by every run: nothing is left in /tmp.
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2b-local-security")
}

/// The owner digest e2b-local puts on what `--api-key`'s key makes.
fn owner_of(key: &str) -> String {
    sandkit_e2b_protocol::derive_token(key, "", "owner")
}

async fn serve(runtime: Arc<dyn Runtime>, mut config: ServerConfig) -> Served {
    config.data_dir.get_or_insert_with(shared_data_dir);
    let data_dir = config.data_dir.clone().unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, e) = (api.local_addr().unwrap(), envd.local_addr().unwrap());
    let key = config.api_key.clone().unwrap_or_default();
    let (stop, rx) = tokio::sync::oneshot::channel();
    let server = Server::new(runtime, config).expect("the server starts");
    let secret = std::fs::read_to_string(data_dir.join("secret")).unwrap();
    let task = tokio::spawn(server.serve(api, envd, async {
        let _ = rx.await;
    }));
    Served {
        api: a,
        envd: e,
        key,
        secret,
        stop,
        task,
    }
}

fn keyed(key: &str) -> ServerConfig {
    ServerConfig {
        api_key: Some(key.into()),
        ..Default::default()
    }
}

/// The sandboxes on the engine that belong to the server with this API key (tests run at
/// once, each with its own key).
async fn sandbox_ids(docker: &DockerRuntime, key: &str) -> Vec<String> {
    let owner = owner_of(key);
    docker
        .list(&ListFilter::all().metadata("sandkit.e2b.owner", owner))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

async fn create(http: &reqwest::Client, s: &Served, metadata: serde_json::Value) -> String {
    let r = http
        .post(format!("http://{}/sandboxes", s.api))
        .header("x-api-key", &s.key)
        .header("content-type", "application/json")
        .body(json!({"templateID": "base", "timeout": 120, "metadata": metadata}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    body["sandboxID"].as_str().unwrap().to_string()
}

/// A `process.Start` of `sh -c <cmd>` as root, the way the critical finding ran it.
fn start_as_root(
    http: &reqwest::Client,
    envd: SocketAddr,
    sandbox: &str,
    cmd: &str,
) -> reqwest::RequestBuilder {
    let body = json!({"process": {"cmd": "/bin/sh", "args": ["-c", cmd]}});
    let mut framed = vec![0u8];
    let payload = serde_json::to_vec(&body).unwrap();
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(&payload);
    http.post(format!("http://{envd}/process.Process/Start"))
        .header("content-type", "application/connect+json")
        .header("e2b-sandbox-id", sandbox)
        .header("authorization", "Basic cm9vdDo=")
        .body(framed)
}

#[tokio::test]
async fn debug_sandbox_needs_debug_mode() {
    let docker = docker().await;
    let docker = Arc::new(docker);
    let server = serve(docker.clone(), keyed("e2b_security_debug")).await;
    let http = reqwest::Client::new();
    let before = sandbox_ids(&docker, &server.key).await;
    let r = start_as_root(&http, server.envd, "debug_sandbox_id", "id -u > /tmp/pwned")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "{}", r.text().await.unwrap());
    let upload = http
        .post(format!("http://{}/files?path=/tmp/pwned", server.envd))
        .header("e2b-sandbox-id", "debug_sandbox_id")
        .header("content-type", "application/octet-stream")
        .body("owned")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 502);
    let after = sandbox_ids(&docker, &server.key).await;
    let made: Vec<_> = after.iter().filter(|id| !before.contains(id)).collect();
    assert!(made.is_empty(), "a sandbox was made: {made:?}");
    server.stop().await;
}

#[tokio::test]
async fn foreign_host_names_are_refused() {
    let docker = docker().await;
    let counting = Arc::new(Counting {
        inner: Arc::new(docker),
        calls: AtomicUsize::new(0),
    });
    let server = serve(counting.clone(), keyed("e2b_security_hosts")).await;
    let http = reqwest::Client::new();
    // A page on attacker.example whose name now resolves to 127.0.0.1.
    let r = http
        .post(format!("http://{}/sandboxes", server.api))
        .header("host", format!("attacker.example:{}", server.api.port()))
        .header("x-api-key", &server.key)
        .header("content-type", "application/json")
        .body(json!({"templateID": "base"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = start_as_root(&http, server.envd, "debug_sandbox_id", "true")
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(counting.calls(), 0, "a refused request reached the backend");
    // The names a local client uses still work.
    for host in ["localhost", "127.0.0.1"] {
        let r = http
            .get(format!("http://{}/health", server.api))
            .header("host", format!("{host}:{}", server.api.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    server.stop().await;
}

#[tokio::test]
async fn listeners_beyond_loopback_need_consent() {
    let docker = docker().await;
    let docker: Arc<dyn Runtime> = Arc::new(docker);
    let attempt = |config: ServerConfig| {
        let docker = docker.clone();
        async move {
            let api = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
            let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tokio::time::timeout(
                Duration::from_secs(5),
                Server::new(docker, config)?.serve(api, envd, async {}),
            )
            .await
            .expect("serve returns")
        }
    };
    let e = attempt(keyed("k")).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("--allow-remote"), "{e}");
    let debug = ServerConfig {
        debug: true,
        allow_remote: true,
        ..keyed("k")
    };
    assert!(attempt(debug).await.is_err(), "debug mode beyond loopback");
    let no_auth = ServerConfig {
        insecure_no_auth: true,
        allow_remote: true,
        ..Default::default()
    };
    assert!(attempt(no_auth).await.is_err(), "no auth beyond loopback");
    let consented = ServerConfig {
        allow_remote: true,
        ..keyed("k")
    };
    attempt(consented).await.expect("allowed with allow_remote");
}

#[tokio::test]
async fn rejected_requests_have_no_effect() {
    let docker = docker().await;
    let docker = Arc::new(docker);
    let counting = Arc::new(Counting {
        inner: docker.clone(),
        calls: AtomicUsize::new(0),
    });
    let server = serve(counting.clone(), keyed("e2b_security_auth")).await;
    let http = reqwest::Client::new();
    let id = create(&http, &server, json!({})).await;
    let r = http
        .post(format!("http://{}/sandboxes/{id}/pause", server.api))
        .header("x-api-key", &server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let paused = docker.info(&id).await.unwrap();
    assert_eq!(paused.state, SandboxState::Paused);

    let calls = counting.calls();
    // A wrong token, on an RPC and on /files.
    let r = start_as_root(&http, server.envd, &id, "true")
        .header("x-access-token", "0123456789abcdef0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("http://{}/files?path=/etc/hostname", server.envd))
        .header("e2b-sandbox-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A forged signature with no sandbox header: nothing is listed, no deadline is read.
    let r = http
        .get(format!(
            "http://{}/files?path=/etc/hostname&signature=v1_forged",
            server.envd
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        counting.calls(),
        calls,
        "a rejected request reached the backend"
    );
    let still = docker.info(&id).await.unwrap();
    assert_eq!(
        still.state,
        SandboxState::Paused,
        "a rejected request resumed it"
    );
    assert_eq!(
        still.expires_at, paused.expires_at,
        "a rejected request moved the deadline"
    );

    // Even with the right token, envd does not resume a paused sandbox: it is gone until
    // resumed through the API.
    let token = sandkit_e2b_protocol::derive_token(&server.secret, &id, "envd");
    let r = start_as_root(&http, server.envd, &id, "true")
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(docker.info(&id).await.unwrap().state, SandboxState::Paused);
    docker.kill(&id).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn tenants_cannot_reach_each_other() {
    let docker = docker().await;
    let docker = Arc::new(docker);
    let a = serve(docker.clone(), keyed("e2b_tenant_a")).await;
    let b = serve(docker.clone(), keyed("e2b_tenant_b")).await;
    let http = reqwest::Client::new();
    let id = create(&http, &a, json!({"who": "a"})).await;

    // B lists nothing of A's, and A's sandbox is 404 to B on every route.
    let list = http
        .get(format!("http://{}/v2/sandboxes", b.api))
        .header("x-api-key", &b.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!list.contains(&id), "B lists A's sandbox: {list}");
    for (method, path) in [
        ("GET", format!("/sandboxes/{id}")),
        ("DELETE", format!("/sandboxes/{id}")),
        ("POST", format!("/sandboxes/{id}/timeout")),
        ("POST", format!("/sandboxes/{id}/pause")),
        ("POST", format!("/sandboxes/{id}/connect")),
        ("GET", format!("/sandboxes/{id}/metrics")),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("http://{}{path}", b.api))
            .header("x-api-key", &b.key)
            .header("content-type", "application/json")
            .body(json!({"timeout": 60}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
    }
    // B's operator can compute B's token for any id (here the very token A's server gives:
    // both keep their secret in one data directory): B's envd still does not serve A's
    // sandbox.
    let forged = sandkit_e2b_protocol::derive_token(&b.secret, &id, "envd");
    let r = start_as_root(&http, b.envd, &id, "touch /tmp/pwned")
        .header("x-access-token", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    // A's sandbox is untouched and still A's.
    let r = http
        .get(format!("http://{}/sandboxes/{id}", a.api))
        .header("x-api-key", &a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let detail: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(detail["metadata"], json!({"who": "a"}));
    assert_eq!(docker.info(&id).await.unwrap().state, SandboxState::Running);

    // A client cannot claim the server's own metadata keys.
    for key in [
        "sandkit.e2b.owner",
        "sandkit.e2b.server",
        "sandkit.e2b.template",
    ] {
        let r = http
            .post(format!("http://{}/sandboxes", b.api))
            .header("x-api-key", &b.key)
            .header("content-type", "application/json")
            .body(json!({"templateID": "base", "metadata": {key: "x"}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{key}");
    }
    a.stop().await;
    b.stop().await;
    assert!(
        docker.info(&id).await.is_err(),
        "A's sandbox outlived A's server"
    );
}

/// Finding 10 through envd: `..` as a user name is refused (not a 500 from the engine), and a
/// FIFO is not called a directory.
#[tokio::test]
async fn small_findings_are_answered_clearly() {
    let docker = docker().await;
    let docker = Arc::new(docker);
    let server = serve(docker.clone(), keyed("e2b_security_small")).await;
    let http = reqwest::Client::new();
    let id = create(&http, &server, json!({})).await;
    let token = sandkit_e2b_protocol::derive_token(&server.secret, &id, "envd");
    use base64::Engine as _;
    for user in ["..", "."] {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        let r = http
            .post(format!("http://{}/filesystem.Filesystem/Stat", server.envd))
            .header("content-type", "application/json")
            .header("e2b-sandbox-id", &id)
            .header("x-access-token", &token)
            .header("authorization", format!("Basic {basic}"))
            .body(r#"{"path":"/tmp"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{user}: {}", r.text().await.unwrap());
    }
    let sandbox = docker.connect(&id).await.unwrap();
    use sandkit_core::SandboxExt;
    let out = sandbox
        .exec_shell("mkfifo /tmp/pipe && echo ok")
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "ok\n");
    let r = http
        .get(format!("http://{}/files?path=/tmp/pipe", server.envd))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("not a regular file"), "{text}");
    docker.kill(&id).await.unwrap();
    server.stop().await;
}

/// Finding 6: connections that say nothing, or send half a header, are closed after the
/// header timeout; past the cap, new connections are closed at once; the server keeps
/// answering real clients.
#[tokio::test]
async fn silent_and_slow_connections_are_dropped_and_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let docker = docker().await;
    let config = ServerConfig {
        limits: sandkit_e2b_local::Limits {
            max_connections: 40,
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..keyed("e2b_security_conns")
    };
    let server = serve(Arc::new(docker), config).await;
    let mut silent = Vec::new();
    for i in 0..200 {
        let mut s = tokio::net::TcpStream::connect(server.envd).await.unwrap();
        if i % 2 == 0 {
            // Slowloris: half a request, then nothing.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .await
                .unwrap();
        }
        silent.push(s);
    }
    // Every one of them is closed by the server within a few header timeouts.
    let closed = futures_util::future::join_all(silent.iter_mut().map(|s| async move {
        let mut buf = [0u8; 512];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => continue, // an error answer, then the close
                    }
                }
            })
            .await,
            Ok(true)
        )
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of 200 idle connections were kept");
    let r = reqwest::Client::new()
        .get(format!("http://{}/health", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

/// Finding 6: a key past its concurrent sandboxes or its create rate gets `429` with
/// `Retry-After`, as E2B answers.
#[tokio::test]
async fn per_key_limits_answer_429() {
    let docker = docker().await;
    let docker = Arc::new(docker);
    let http = reqwest::Client::new();
    let post = |s: &Served| {
        http.post(format!("http://{}/sandboxes", s.api))
            .header("x-api-key", &s.key)
            .header("content-type", "application/json")
            .body(json!({"templateID": "base", "timeout": 60}).to_string())
            .send()
    };

    let one = ServerConfig {
        limits: sandkit_e2b_local::Limits {
            max_sandboxes: 1,
            ..Default::default()
        },
        ..keyed("e2b_security_quota")
    };
    let server = serve(docker.clone(), one).await;
    assert_eq!(post(&server).await.unwrap().status(), 201);
    let r = post(&server).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    server.stop().await; // kills what it made

    let rate = ServerConfig {
        limits: sandkit_e2b_local::Limits {
            creates_per_minute: 2,
            ..Default::default()
        },
        ..keyed("e2b_security_rate")
    };
    let server = serve(docker.clone(), rate).await;
    assert_eq!(post(&server).await.unwrap().status(), 201);
    assert_eq!(post(&server).await.unwrap().status(), 201);
    let r = post(&server).await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    server.stop().await;
}

/// Finding 7 through `/files`: a cut upload leaves the old content, a large upload does not
/// write through a link to `/etc/shadow`, and a download as `user` cannot read what `user`
/// cannot.
#[tokio::test]
async fn uploads_are_atomic_and_run_as_the_user() {
    use sandkit_core::{CommandSpec, FileStoreExt, SandboxExt};
    use tokio::io::AsyncWriteExt;
    let docker = docker().await;
    let docker = Arc::new(docker);
    let server = serve(docker.clone(), keyed("e2b_security_uploads")).await;
    let http = reqwest::Client::new();
    let id = create(&http, &server, json!({})).await;
    let token = sandkit_e2b_protocol::derive_token(&server.secret, &id, "envd");
    let sandbox = docker.connect(&id).await.unwrap();
    let shadow = || async {
        sandbox
            .exec(CommandSpec::shell("md5sum /etc/shadow").user("root"))
            .await
            .unwrap()
            .stdout_text()
    };
    let before = shadow().await;
    sandbox
        .files()
        .write_str("/home/user/keep.txt", "old content")
        .await
        .unwrap();
    sandbox
        .exec(CommandSpec::shell("ln -s /etc/shadow /home/user/link").user("user"))
        .await
        .unwrap();

    // A client that promises 20 MiB and goes away after 10.
    let mut raw = tokio::net::TcpStream::connect(server.envd).await.unwrap();
    let head = format!(
        "POST /files?path=/home/user/keep.txt&username=user HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         E2b-Sandbox-Id: {id}\r\nX-Access-Token: {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        20 << 20
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    raw.write_all(&vec![b'x'; 10 << 20]).await.unwrap();
    drop(raw);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sandbox
            .files()
            .read_to_string("/home/user/keep.txt")
            .await
            .unwrap(),
        "old content",
        "a cut upload destroyed the old content"
    );

    // Over 8 MiB (streamed) onto the user's link to /etc/shadow: the link is replaced.
    let r = http
        .post(format!(
            "http://{}/files?path=/home/user/link&username=user",
            server.envd
        ))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .header("content-type", "application/octet-stream")
        .body(vec![b'y'; 12 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(shadow().await, before, "/etc/shadow was written");
    let kind = sandbox
        .exec_shell("stat -c '%U %F %s' /home/user/link")
        .await
        .unwrap();
    assert_eq!(
        kind.stdout_text(),
        format!("user regular file {}\n", 12 << 20)
    );

    // As `user`, /etc/shadow cannot be read or written: 403, permission denied (not 401: the
    // credentials are fine).
    let r = http
        .get(format!(
            "http://{}/files?path=/etc/shadow&username=user",
            server.envd
        ))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    let r = http
        .post(format!(
            "http://{}/files?path=/etc/shadow&username=user",
            server.envd
        ))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .header("content-type", "application/octet-stream")
        .body("owned")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(shadow().await, before);
    docker.kill(&id).await.unwrap();
    server.stop().await;
}

/// A network policy the server cannot enforce is refused, never dropped: a sandbox made
/// without it would be more open than its creator asked. Over a backend without the network
/// guard, allow and deny lists are refused too (with it, they are enforced: see
/// tests/e2b-sdk/test_network.py and sandkit-docker's network tests).
#[tokio::test]
async fn unenforced_network_options_are_refused() {
    let docker = docker().await;
    let unguarded = Arc::new(
        DockerRuntime::builder()
            .network_guard(false)
            .build()
            .await
            .unwrap(),
    );
    let docker = Arc::new(docker);
    let http = reqwest::Client::new();
    let lists = [
        json!({"templateID": "base", "network": {"denyOut": ["0.0.0.0/0"]}}),
        json!({"templateID": "base", "network": {"allowOut": ["example.com"], "denyOut": ["0.0.0.0/0"]}}),
        json!({"templateID": "base", "network": {"egressProxy": {"address": "p:1080"}}}),
        json!({"templateID": "base", "network": {"rules": {"a.test": [{"transform": {"headers": {"A": "1"}}}]}}}),
    ];
    let never = [
        json!({"templateID": "base", "network": {"maskRequestHost": "not a host"}}),
        json!({"templateID": "base", "network": {"httpsPorts": [3000]}}),
        json!({"templateID": "base", "network": {"egressProxy": {"address": "no-port"}}}),
        json!({"templateID": "base", "network": {"rules": {"*": []}}}),
        json!({"templateID": "base", "network": {"denyOut": ["example.com"]}}),
        json!({"templateID": "base", "network": {"allowOut": ["example.com"]}}),
        json!({"templateID": "base", "autoResume": {"enabled": true}}),
        json!({"templateID": "base", "volumeMounts": [{"name": "v", "path": "/data"}]}),
        json!({"templateID": "base", "iam": {"tokens": {"aws": {"audience": "sts", "type": "JWT-SVID"}}}}),
        json!({"templateID": "base", "someFutureOption": true}),
    ];
    let unguarded_server = serve(unguarded.clone(), keyed("e2b_security_network_off")).await;
    let server = serve(docker.clone(), keyed("e2b_security_network")).await;
    for (srv, bodies) in [
        (
            &unguarded_server,
            lists.iter().chain(never.iter()).collect::<Vec<_>>(),
        ),
        (&server, never.iter().collect()),
    ] {
        let before = sandbox_ids(&docker, &srv.key).await.len();
        for body in bodies {
            let r = http
                .post(format!("http://{}/v2/sandboxes", srv.api))
                .header("x-api-key", &srv.key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{}: {body}", srv.key);
        }
        assert_eq!(
            sandbox_ids(&docker, &srv.key).await.len(),
            before,
            "a sandbox was made"
        );
    }
    unguarded_server.stop().await;
    // What every sandbox here has anyway is accepted.
    let id = create(&http, &server, json!({})).await;
    let r = http
        .post(format!("http://{}/v2/sandboxes", server.api))
        .header("x-api-key", &server.key)
        .header("content-type", "application/json")
        .body(json!({"templateID": "base", "network": {"allowPublicTraffic": true}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let _ = docker.kill(&id).await;
    server.stop().await;
}

/// The team issue's first tenancy hole: a second server on the same engine, with a key of its
/// own, mints a content token for the first server's volume id (with every formula it could
/// guess) and tries to read and overwrite its file. Nothing is read, nothing changes.
#[tokio::test]
async fn another_server_cannot_open_a_volume() {
    let docker = docker().await;
    let docker = Arc::new(docker);
    let a = serve(docker.clone(), keyed("e2b_volume_owner_a")).await;
    let b = serve(docker.clone(), keyed("e2b_volume_owner_b")).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{}/volumes", a.api))
        .header("x-api-key", &a.key)
        .header("content-type", "application/json")
        .body(json!({"name": "victim"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let (id, token) = (
        created["volumeID"].as_str().unwrap().to_string(),
        created["token"].as_str().unwrap().to_string(),
    );
    let file = |s: &Served| format!("http://{}/volumecontent/{id}/file?path=/secret.txt", s.api);
    let r = http
        .put(file(&a))
        .bearer_auth(&token)
        .body("mine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let minted = [
        sandkit_e2b_protocol::derive_token(&b.secret, &format!("volume/{id}"), "volume"),
        sandkit_e2b_protocol::derive_token(
            &b.secret,
            &format!("volume/{}/{id}", owner_of(&b.key)),
            "volume",
        ),
        sandkit_e2b_protocol::derive_token(
            &b.secret,
            &format!("volume/{}/{id}", owner_of(&a.key)),
            "volume",
        ),
    ];
    for forged in minted.iter().chain([&token]) {
        let r = http.get(file(&b)).bearer_auth(forged).send().await.unwrap();
        assert!(
            [401, 404].contains(&r.status().as_u16()),
            "B read A's volume: {} {}",
            r.status(),
            r.text().await.unwrap()
        );
        let r = http
            .put(format!("{}&force=true", file(&b)))
            .bearer_auth(forged)
            .body("overwritten")
            .send()
            .await
            .unwrap();
        assert!(
            [401, 404].contains(&r.status().as_u16()),
            "B wrote A's volume: {}",
            r.status()
        );
    }
    let r = http.get(file(&a)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "mine");
    let r = http
        .delete(format!("http://{}/volumes/{id}", a.api))
        .header("x-api-key", &a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    a.stop().await;
    b.stop().await;
}

/// The team issue's second tenancy hole: `templateID` and a build's `fromImage` name an engine
/// image the operator did not allow (here the keeper's own image, and an image the test
/// tags): nothing is made from it; the allowed images still work.
#[tokio::test]
async fn only_allowed_images_boot() {
    let docker = docker().await;
    let docker = Arc::new(docker);
    // An image of the operator's: the base image under another name.
    let private = "sandkit-test-operator-private:latest";
    let tagged = tokio::process::Command::new("docker")
        .args(["tag", "sandkit-mini:latest", private])
        .status()
        .await
        .unwrap();
    assert!(tagged.success(), "docker tag failed");
    let server = serve(docker.clone(), keyed("e2b_security_images")).await;
    let http = reqwest::Client::new();
    let before = sandbox_ids(&docker, &server.key).await.len();
    for image in [private, "sandkit-test-operator-private"] {
        let r = http
            .post(format!("http://{}/sandboxes", server.api))
            .header("x-api-key", &server.key)
            .header("content-type", "application/json")
            .body(json!({"templateID": image, "timeout": 60}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{image}");
        assert!(r.text().await.unwrap().contains("--allow-image"));
    }
    assert_eq!(sandbox_ids(&docker, &server.key).await.len(), before);
    // The same image is fine once the operator allows it.
    server.stop().await;
    let allowing = ServerConfig {
        allowed_images: vec!["sandkit-test-operator-*".into()],
        ..keyed("e2b_security_images")
    };
    let server = serve(docker.clone(), allowing).await;
    let r = http
        .post(format!("http://{}/sandboxes", server.api))
        .header("x-api-key", &server.key)
        .header("content-type", "application/json")
        .body(json!({"templateID": private, "timeout": 60}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    server.stop().await; // kills what it made
    let _ = tokio::process::Command::new("docker")
        .args(["rmi", private])
        .status()
        .await;
}

/// The team issue's third tenancy hole: a stranger holds 3,000 connections to the envd port
/// that never send a request (reopening each one the server closes, as fast as it can), at the
/// server's default limits. `/health` on both ports and a command in a sandbox still answer
/// within 2 s, round after round.
#[tokio::test]
async fn a_connection_flood_locks_nobody_out() {
    use tokio::io::AsyncReadExt;
    let docker = docker().await;
    let server = serve(Arc::new(docker), keyed("e2b_security_flood")).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let id = create(&http, &server, json!({})).await;
    let token = sandkit_e2b_protocol::derive_token(&server.secret, &id, "envd");

    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let held = Arc::new(AtomicUsize::new(0));
    let reopened = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..3000 {
        let (flooding, held, reopened, envd) = (
            flooding.clone(),
            held.clone(),
            reopened.clone(),
            server.envd,
        );
        flood.spawn(async move {
            let mut first = true;
            while flooding.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(envd).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if !first {
                    reopened.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                held.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 64];
                // Held until the server closes it (or the test ends).
                let _ = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
                held.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    // The flood is in place.
    let began = std::time::Instant::now();
    while held.load(Ordering::Relaxed) < 2900 && began.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("flood: {} connections held", held.load(Ordering::Relaxed));
    for round in 0..5 {
        for addr in [server.api, server.envd] {
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                http.get(format!("http://{addr}/health"))
                    .header("e2b-sandbox-id", &id)
                    .send(),
            )
            .await
            .unwrap_or_else(|_| panic!("round {round}: /health on {addr} took over 2 s"))
            .unwrap();
            assert!(r.status().is_success(), "round {round}: {}", r.status());
        }
        let out = tokio::time::timeout(Duration::from_secs(2), async {
            let r = start_as_root(&http, server.envd, &id, "echo flood-$((20+1))")
                .header("x-access-token", &token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: a command took over 2 s"));
        // `flood-21\n`, base64 in the stream's stdout event.
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("flood-21\n");
        assert!(
            String::from_utf8_lossy(&out).contains(&expected),
            "round {round}: {}",
            String::from_utf8_lossy(&out)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "flood: {} held at the end, {} reopened after the server closed them",
        held.load(Ordering::Relaxed),
        reopened.load(Ordering::Relaxed)
    );
    flooding.store(false, Ordering::Relaxed);
    flood.abort_all();
    while flood.join_next().await.is_some() {}
    server.stop().await; // kills what it made
}
