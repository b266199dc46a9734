//! Faults, hostile input and load against `e2b-local` over Docker.
//!
//! - a fault-injecting proxy between the E2B backend and e2b-local: 429/502/503 bursts, stalls
//!   past the request timeout, streams cut mid-envelope or dropped: typed errors or correct
//!   retries, and a command is never started twice by a retry;
//! - malformed JSON, oversized bodies, bad ids, bad keys and tokens, hostile user names;
//! - the server killed with SIGKILL and restarted: its sandboxes are served again;
//! - no key or token in the logs at TRACE level;
//! - 20 sandboxes and 200 concurrent command streams, with the server's peak memory.
//!
//! Needs Docker; without an engine the tests fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::StreamExt;
use sandkit_core::{
    CommandSpec, ErrorKind, FileStoreExt, ListFilter, Runtime, SandboxExt, SandboxSpec,
};
use sandkit_docker::DockerRuntime;
use sandkit_e2b::E2bRuntime;
use sandkit_e2b_local::{Server, ServerConfig};

const LABEL: &str = "sandkit-robustness";

async fn docker() -> DockerRuntime {
    sandkit_conformance::needs_engine(DockerRuntime::builder().build().await)
}

/// An in-process server; returns (api, envd) addresses.
async fn serve(key: &str) -> (SocketAddr, SocketAddr) {
    let docker = docker().await;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (api.local_addr().unwrap(), envd.local_addr().unwrap());
    let server = Server::new(
        Arc::new(docker),
        ServerConfig {
            api_key: Some(key.into()),
            ..Default::default()
        },
    )
    .expect("the server starts");
    tokio::spawn(server.serve(api, envd, std::future::pending()));
    addrs
}

/// The E2B backend in the standard stack of layers, as `Config::runtime` builds it (retries
/// are the retry layer's).
fn client(api: SocketAddr, envd: SocketAddr, key: &str, timeout: Duration) -> Arc<dyn Runtime> {
    let backend = E2bRuntime::builder()
        .api_key(key)
        .api_url(format!("http://{api}"))
        .sandbox_url(format!("http://{envd}"))
        .request_timeout(timeout)
        .build()
        .unwrap();
    sandkit_core::layer::standard(
        Arc::new(backend),
        Some(sandkit_core::layer::RetryLayer::default()),
    )
}

/// Kills the sandboxes one test labelled (tests run at once: each has its own label value).
async fn kill_labelled(rt: &dyn Runtime, test: &str) {
    if let Ok(list) = rt.list(&ListFilter::all().metadata(LABEL, test)).await {
        for i in list {
            let _ = rt.kill(&i.id).await;
        }
    }
}

// ---- the fault-injecting proxy --------------------------------------------------------------

#[derive(Debug, Clone)]
enum Fault {
    /// Answer with this status (and `Retry-After: 0` for 429) instead of forwarding.
    Status(u16),
    /// Wait this long before forwarding.
    Stall(Duration),
    /// Forward, but end the answer after this many bytes (cleanly, or by breaking it).
    Cut { after: usize, abort: bool },
}

#[derive(Default)]
struct Plan {
    rules: Vec<(String, usize, Fault)>,
    forwarded: HashMap<String, usize>,
}

#[derive(Clone)]
struct Proxy {
    api: SocketAddr,
    envd: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    http: reqwest::Client,
}

impl Proxy {
    fn fault(&self, path_part: &str, times: usize, fault: Fault) {
        self.plan
            .lock()
            .unwrap()
            .rules
            .push((path_part.into(), times, fault));
    }
    fn forwarded(&self, path_part: &str) -> usize {
        self.plan
            .lock()
            .unwrap()
            .forwarded
            .iter()
            .filter(|(p, _)| p.contains(path_part))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn proxy_handler(State(p): State<Proxy>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let fault = {
        let mut plan = p.plan.lock().unwrap();
        let hit = plan
            .rules
            .iter_mut()
            .find(|(part, left, _)| *left > 0 && path.contains(part.as_str()));
        hit.map(|(_, left, f)| {
            *left -= 1;
            f.clone()
        })
    };
    match &fault {
        Some(Fault::Status(code)) => {
            let mut r = Response::new(Body::from(format!(
                "{{\"code\":{code},\"message\":\"injected\"}}"
            )));
            *r.status_mut() = axum::http::StatusCode::from_u16(*code).unwrap();
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            if *code == 429 {
                r.headers_mut().insert("retry-after", "0".parse().unwrap());
            }
            return r;
        }
        Some(Fault::Stall(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    *p.plan
        .lock()
        .unwrap()
        .forwarded
        .entry(path.clone())
        .or_default() += 1;
    let envd = path.starts_with("/process.")
        || path.starts_with("/filesystem.")
        || path.starts_with("/files")
        || path == "/health"
        || path == "/envs";
    let upstream = if envd { p.envd } else { p.api };
    let url = format!(
        "http://{upstream}{}",
        req.uri()
            .path_and_query()
            .map(|x| x.as_str())
            .unwrap_or("/")
    );
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let mut fwd = p.http.request(method, url).body(body);
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" && k != "transfer-encoding" {
            fwd = fwd.header(k, v);
        }
    }
    let upstream = match fwd.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .unwrap()
        }
    };
    let mut builder = Response::builder().status(upstream.status().as_u16());
    for (k, v) in upstream.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            builder = builder.header(k, v);
        }
    }
    let stream = upstream.bytes_stream();
    let body = match fault {
        Some(Fault::Cut { after, abort }) => {
            let mut sent = 0usize;
            let cut = stream
                .map(move |chunk| {
                    let chunk = chunk.unwrap_or_default();
                    let room = after.saturating_sub(sent);
                    sent += chunk.len();
                    if room == 0 {
                        return None;
                    }
                    Some(chunk.slice(..room.min(chunk.len())))
                })
                .take_while(|c| futures_util::future::ready(c.is_some()))
                .map(|c| Ok::<Bytes, std::io::Error>(c.unwrap()));
            if abort {
                Body::from_stream(cut.chain(futures_util::stream::once(async {
                    Err(std::io::Error::other("connection dropped"))
                })))
            } else {
                Body::from_stream(cut)
            }
        }
        _ => Body::from_stream(stream),
    };
    builder.body(body).unwrap()
}

async fn proxy(api: SocketAddr, envd: SocketAddr) -> (Proxy, SocketAddr) {
    let p = Proxy {
        api,
        envd,
        plan: Arc::default(),
        http: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(proxy_handler)
        .with_state(p.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (p, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_between_client_and_server() {
    let key = "e2b_fault_key";
    let (api, envd) = serve(key).await;
    let (p, addr) = proxy(api, envd).await;
    let rt = client(addr, addr, key, Duration::from_secs(3));
    let spec = || SandboxSpec::new().metadata(LABEL, "faults");

    // A 429 then a 502 before create: retried, and the sandbox is made once.
    p.fault("/v2/sandboxes", 1, Fault::Status(429));
    p.fault("/v2/sandboxes", 1, Fault::Status(502));
    let sb = rt
        .create(spec())
        .await
        .expect("retried through 429 and 502");
    assert_eq!(p.forwarded("/v2/sandboxes"), 1, "created once");

    let result = async {
        // A failed Start is not retried: the command must not run twice.
        p.fault("/process.Process/Start", 1, Fault::Status(503));
        let marker = format!("/tmp/ran-{:x}", rand::random::<u32>());
        let e = sb
            .exec(CommandSpec::shell(format!("echo x >> {marker}")))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert_eq!(p.forwarded("/process.Process/Start"), 0);
        sb.exec(CommandSpec::shell(format!("echo x >> {marker}")))
            .await?;
        let lines = sb
            .exec(CommandSpec::shell(format!("wc -l < {marker}")))
            .await?;
        assert_eq!(
            lines.stdout_text().trim(),
            "1",
            "the command ran exactly once"
        );

        // A stream cut in the middle of an envelope: a typed error, quickly.
        p.fault(
            "/process.Process/Start",
            1,
            Fault::Cut {
                after: 40,
                abort: false,
            },
        );
        let started = Instant::now();
        let e = sb
            .exec(CommandSpec::shell("echo one; sleep 1; echo two"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));

        // A connection dropped mid-stream.
        p.fault(
            "/process.Process/Start",
            1,
            Fault::Cut {
                after: 60,
                abort: true,
            },
        );
        let e = sb
            .exec(CommandSpec::shell("echo one; sleep 1; echo two"))
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Unexpected),
            "{e}"
        );

        // A stall past the request timeout: Timeout, not a hang.
        p.fault("/sandboxes/", 1, Fault::Stall(Duration::from_secs(8)));
        let started = Instant::now();
        let e = sb.info().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "gave up at the timeout"
        );

        // A 503 burst longer than the retries: Unavailable, and final once the retry layer
        // gave up (the architecture issue's retries that end: nothing above tries again).
        p.fault("/v2/sandboxes", 4, Fault::Status(503));
        let e = rt.list(&ListFilter::all()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(!e.is_retryable(), "{e:?}");

        // Files: a download cut short is an error, not a short file.
        sb.files()
            .write("/tmp/big.bin", Bytes::from(vec![1u8; 1 << 20]))
            .await?;
        p.fault(
            "/files",
            1,
            Fault::Cut {
                after: 1000,
                abort: true,
            },
        );
        let mut s = sb.files().read_stream("/tmp/big.bin").await?;
        let mut got = 0usize;
        let mut failed = false;
        while let Some(c) = s.next().await {
            match c {
                Ok(b) => got += b.len(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(
            failed && got < 1 << 20,
            "a cut download is reported ({got} bytes)"
        );
        // And everything works again afterwards.
        assert_eq!(sb.exec_shell("echo fine").await?.stdout_text(), "fine\n");
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    let _ = sb.kill().await;
    result.unwrap();
}

// ---- hostile input -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_clear_answers() {
    let key = "e2b_hostile_key";
    let (api, envd) = serve(key).await;
    let http = reqwest::Client::new();
    let a = |p: &str| format!("http://{api}{p}");
    let e = |p: &str| format!("http://{envd}{p}");
    let json = |r: &str| {
        serde_json::from_str::<serde_json::Value>(r).unwrap_or_else(|_| panic!("not JSON: {r}"))
    };

    // API keys: missing or wrong is 401, with the JSON body the SDK parses.
    let r = http
        .post(a("/v2/sandboxes"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(&r.text().await.unwrap())["code"], 401);
    let r = http
        .post(a("/v2/sandboxes"))
        .header("x-api-key", "e2b_hostile_kez")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Malformed JSON and oversized bodies.
    let r = http
        .post(a("/v2/sandboxes"))
        .header("x-api-key", key)
        .body("{\"templateID\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(json(&r.text().await.unwrap())["message"]
        .as_str()
        .unwrap()
        .contains("invalid request body"));
    let r = http
        .post(a("/v2/sandboxes"))
        .header("x-api-key", key)
        .body(vec![b' '; 3 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(json(&r.text().await.unwrap())["code"], 413);
    let r = http
        .post(a("/v2/sandboxes"))
        .header("x-api-key", key)
        .body("{\"templateID\":\"base\",\"timeout\":-5}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // What is not supported says so.
    let r = http
        .post(a("/v2/sandboxes"))
        .header("x-api-key", key)
        .body("{\"templateID\":\"base\",\"mcp\":{\"servers\":{}}}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(json(&r.text().await.unwrap())["message"]
        .as_str()
        .unwrap()
        .contains("mcp"));
    // The MCP gateway's own template, as the SDK asks for it: E2B's answer when a deployment
    // does not have it.
    let r = http
        .post(a("/v2/sandboxes"))
        .header("x-api-key", key)
        .body("{\"templateID\":\"mcp-gateway\",\"mcp\":{\"servers\":{}}}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(json(&r.text().await.unwrap())["message"]
        .as_str()
        .unwrap()
        .starts_with("template 'mcp-gateway' not found"));
    // Ids that are not ids.
    for id in ["..%2F..%2Fetc", "UPPER", "a%00b", "x;rm -rf /"] {
        let r = http
            .get(a(&format!("/sandboxes/{id}")))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{id}");
    }
    let r = http
        .get(e("/health"))
        .header("e2b-sandbox-id", "../../containers")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        json(&r.text().await.unwrap())["message"],
        "The sandbox was not found"
    );

    // A real sandbox, to test its envd.
    let r = http
        .post(a("/v2/sandboxes"))
        .header("x-api-key", key)
        .body(format!(
            "{{\"templateID\":\"base\",\"metadata\":{{\"{LABEL}\":\"hostile\"}}}}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created = json(&r.text().await.unwrap());
    let id = created["sandboxID"].as_str().unwrap().to_string();
    let token = created["envdAccessToken"].as_str().unwrap().to_string();
    let rpc = |path: &str, body: &'static str, token: Option<&str>| {
        let mut req = http
            .post(e(path))
            .header("e2b-sandbox-id", &id)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.header("x-access-token", t);
        }
        req.send()
    };
    // Tokens.
    assert_eq!(
        rpc("/filesystem.Filesystem/Stat", "{\"path\":\"/\"}", None)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        rpc(
            "/filesystem.Filesystem/Stat",
            "{\"path\":\"/\"}",
            Some("wrong")
        )
        .await
        .unwrap()
        .status(),
        401
    );
    assert_eq!(
        rpc(
            "/filesystem.Filesystem/Stat",
            "{\"path\":\"/\"}",
            Some(&token)
        )
        .await
        .unwrap()
        .status(),
        200
    );
    // Malformed RPC bodies.
    let r = rpc("/filesystem.Filesystem/Stat", "{\"path\":", Some(&token))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json(&r.text().await.unwrap())["code"], "invalid_argument");
    // A stream whose envelope claims 4 GiB.
    let r = http
        .post(e("/process.Process/Start"))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .header("content-type", "application/connect+json")
        .body(vec![0u8, 0xff, 0xff, 0xff, 0xff, b'{'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body[0], 2, "an end-of-stream error");
    assert!(String::from_utf8_lossy(&body[5..]).contains("invalid_argument"));
    // Hostile user names: refused, never a path.
    let r = http
        .get(e("/files?path=/etc/hostname&username=../../root"))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(e("/process.Process/List"))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .header("authorization", "Basic Li4vLi4vZXRjOg==") // "../../etc:"
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Paths with `..` stay paths inside the sandbox.
    let r = http
        .get(e("/files?path=../../../etc/hostname"))
        .header("e2b-sandbox-id", &id)
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hostname = r.text().await.unwrap();
    assert_eq!(
        hostname.trim().len(),
        12,
        "the sandbox's own /etc/hostname (a container id): {hostname}"
    );
    let r = http
        .delete(a(&format!("/sandboxes/{id}")))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

// ---- restart, logs, load: the real binary --------------------------------------------------

struct Bin {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The data directory the binary started by a test keeps its secret in (one per test
/// process and data tag; removed by [`Bin`]'s owner when it is done).
fn data_dir(tag: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("e2b-local-data-{tag}-{}", std::process::id()))
}

fn start_bin(key: &str, api: u16, envd: u16, level: &str, tag: &str) -> Bin {
    start_bin_with(&["--api-key", key], api, envd, level, tag)
}

/// The `e2b-local` binary with `args` besides its addresses and data directory.
fn start_bin_with(args: &[&str], api: u16, envd: u16, level: &str, tag: &str) -> Bin {
    // In the build's scratch directory (one file per tag, rewritten each run): kept to read
    // after a failure, never left in /tmp.
    let log =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2b-local-{tag}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let data = data_dir(tag.trim_end_matches(char::is_numeric));
    let child = Command::new(env!("CARGO_BIN_EXE_e2b-local"))
        .args([
            "--api-addr",
            &format!("127.0.0.1:{api}"),
            "--envd-addr",
            &format!("127.0.0.1:{envd}"),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(args)
        .env("SANDKIT_LOG", level)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", api)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Bin { child, log }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_server_restarts_and_serves_its_sandboxes_and_logs_no_secrets() {
    docker().await;
    let key = format!("e2b_restart_{:x}", rand::random::<u64>());
    let (api, envd) = (free_port(), free_port());
    let mut server = start_bin(&key, api, envd, "trace", "restart");
    let rt = client(
        SocketAddr::from(([127, 0, 0, 1], api)),
        SocketAddr::from(([127, 0, 0, 1], envd)),
        &key,
        Duration::from_secs(30),
    );
    let sb = rt
        .create(SandboxSpec::new().metadata(LABEL, "restart"))
        .await
        .unwrap();
    sb.files()
        .write("/tmp/kept.txt", Bytes::from_static(b"survives"))
        .await
        .unwrap();
    let token_seen = sb.exec_shell("echo hi").await.unwrap();
    assert_eq!(token_seen.stdout_text(), "hi\n");

    // SIGKILL: no clean-up runs. The sandbox lives on, with its time to live.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let log1 = std::fs::read_to_string(&server.log).unwrap();
    let restarted = start_bin(&key, api, envd, "trace", "restart2");
    let again = rt
        .connect(sb.id())
        .await
        .expect("the restarted server knows the sandbox");
    assert_eq!(
        again
            .exec_shell("cat /tmp/kept.txt")
            .await
            .unwrap()
            .stdout_text(),
        "survives"
    );
    again.kill().await.unwrap();
    let log2 = std::fs::read_to_string(&restarted.log).unwrap();
    drop(restarted);
    drop(server);

    // Secrets in no log line, at TRACE.
    let docker = DockerRuntime::builder().build().await.unwrap();
    let secret = std::fs::read_to_string(data_dir("restart").join("secret")).unwrap();
    let token = e2b_protocol_token(&secret, sb.id());
    let _ = std::fs::remove_dir_all(data_dir("restart"));
    for (name, log) in [("first", &log1), ("restarted", &log2)] {
        assert!(log.contains("request"), "{name} log has request lines");
        assert!(!log.contains(&key), "the API key is in the {name} log");
        assert!(
            !log.contains(&token),
            "an access token is in the {name} log"
        );
    }
    kill_labelled(&docker, "restart").await;
}

/// A raw E2B client (no retry layer: a 429 is seen as it comes).
fn raw_client(api: u16, envd: u16, key: &str) -> E2bRuntime {
    E2bRuntime::builder()
        .api_key(key)
        .api_url(format!("http://127.0.0.1:{api}"))
        .sandbox_url(format!("http://127.0.0.1:{envd}"))
        .request_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One `[[key]]` of a keys file.
fn key_entry(name: &str, key: &str, extra: &str) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("[[key]]\nname = \"{name}\"\nsha256 = \"{hash}\"\n{extra}\n")
}

/// A call to e2b-local with `key` as a bearer token (the API takes it as an API key, the
/// volume content routes as a volume token): the status and the JSON answer (`Null` if none).
async fn call_api(
    method: &'static str,
    url: String,
    key: String,
    body: &'static str,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Waits up to `secs` for `check` to hold.
async fn eventually<F: std::future::Future<Output = bool>>(
    secs: u64,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Many keys from a keys file: each key sees only what it made and has its own limits; a key
/// taken out of the file is refused at once after `SIGHUP`, on the control plane and on envd
/// with the access token it was given, while what it owned is kept; when the key comes back
/// (the file's change is noticed without a signal) its sandbox is its own again.
#[tokio::test(flavor = "multi_thread")]
async fn keys_file_tenants_have_their_own_limits_and_revoking_stops_access() {
    let docker = docker().await;
    let alice = format!("e2b_alice_{:x}", rand::random::<u64>());
    let bob = format!("e2b_bob_{:x}", rand::random::<u64>());
    let dir = data_dir("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys.toml");
    let both = key_entry("alice", &alice, "max_sandboxes = 1\nmax_volumes = 1")
        + &key_entry(
            "bob",
            &bob,
            "operator = true\nmax_snapshots = 0\nmax_builds = 0",
        );
    std::fs::write(&keys, &both).unwrap();
    let (api, envd) = (free_port(), free_port());
    let audit_log = dir.join("audit.log");
    let server = start_bin_with(
        &[
            "--keys-file",
            keys.to_str().unwrap(),
            "--audit-log",
            audit_log.to_str().unwrap(),
        ],
        api,
        envd,
        "info",
        "keys",
    );
    let (a, b) = (raw_client(api, envd, &alice), raw_client(api, envd, &bob));
    let spec = || {
        SandboxSpec::new()
            .template("sandkit-mini:latest")
            .metadata(LABEL, "keys")
    };
    let alices = Mutex::new(String::new());
    let result = async {
        let sa = a.create(spec()).await.expect("alice's first sandbox");
        *alices.lock().unwrap() = sa.id().to_string();
        // Alice's limit is hers: her second create is refused, Bob's first is not.
        let e = a
            .create(spec())
            .await
            .map(|s| s.id().to_string())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
        assert!(e.to_string().contains("concurrent sandboxes (1)"), "{e}");
        let sb = b.create(spec()).await.expect("bob's sandbox");
        // Each key sees and reaches only its own.
        let ids =
            |l: Vec<sandkit_core::SandboxInfo>| l.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(
            ids(a.list(&ListFilter::all()).await.unwrap()),
            vec![sa.id().to_string()]
        );
        assert_eq!(
            ids(b.list(&ListFilter::all()).await.unwrap()),
            vec![sb.id().to_string()]
        );
        for e in [
            b.connect(sa.id()).await.map(|_| ()).unwrap_err(),
            b.kill(sa.id()).await.unwrap_err(),
            a.connect(sb.id()).await.map(|_| ()).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        }
        assert_eq!(
            sa.exec_shell("echo alice").await.unwrap().stdout_text(),
            "alice\n"
        );
        // A metadata filter naming Alice's owner digest (anyone who reads the keys file can
        // compute it) does not replace Bob's own: he lists nothing of hers.
        let alice_owner = {
            use sha2::Digest;
            let hash: String = sha2::Sha256::digest(alice.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            sandkit_e2b_protocol::derive_token(&hash, "", "owner")
        };
        let call = |method: &'static str, path: String, key: &str, body: &'static str| {
            call_api(
                method,
                format!("http://127.0.0.1:{api}{path}"),
                key.to_string(),
                body,
            )
        };
        let (status, listed) = call(
            "GET",
            format!("/v2/sandboxes?metadata=sandkit.e2b.owner%3D{alice_owner}"),
            &bob,
            "",
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            !listed.to_string().contains(sa.id()),
            "bob listed alice's sandbox: {listed}"
        );

        // A volume's helper sandbox is admitted like a create: at her limit, Alice's volume
        // content answers 429 (and no helper is made).
        let (status, volume) =
            call("POST", "/volumes".into(), &alice, r#"{"name": "alices"}"#).await;
        assert_eq!(status, 201, "{volume}");
        let volume_id = volume["volumeID"].as_str().unwrap().to_string();
        let token = volume["token"].as_str().unwrap().to_string();
        let (status, listed) = call(
            "GET",
            format!("/volumecontent/{volume_id}/dir?path=/"),
            &token,
            "",
        )
        .await;
        assert_eq!(status, 429, "{listed}");
        // Her volume quota is one.
        let (status, second) = call(
            "POST",
            "/volumes".into(),
            &alice,
            r#"{"name": "alices-second"}"#,
        )
        .await;
        assert_eq!(status, 429, "{second}");
        let (status, _) = call("DELETE", format!("/volumes/{volume_id}"), &alice, "").await;
        assert!((200..300).contains(&status), "{status}");
        // Bob may keep no snapshot and run no build.
        let (status, snapshot) = call(
            "POST",
            format!("/sandboxes/{}/snapshots", sb.id()),
            &bob,
            "{}",
        )
        .await;
        assert_eq!(status, 429, "{snapshot}");
        let (status, registered) =
            call("POST", "/v3/templates".into(), &bob, r#"{"name": "bobs"}"#).await;
        assert_eq!(status, 202, "{registered}");
        let (status, started) = call(
            "POST",
            format!(
                "/v2/templates/{}/builds/{}",
                registered["templateID"].as_str().unwrap(),
                registered["buildID"].as_str().unwrap()
            ),
            &bob,
            r#"{"fromImage": "e2bdev/base"}"#,
        )
        .await;
        assert_eq!(status, 429, "{started}");

        // What the operator scrapes: per key, and Alice may not read it.
        let metrics = |key: &str| {
            reqwest::Client::new()
                .get(format!("http://127.0.0.1:{api}/metrics"))
                .bearer_auth(key)
                .send()
        };
        assert_eq!(metrics(&alice).await.unwrap().status(), 403);
        let scrape = metrics(&bob).await.unwrap();
        assert_eq!(scrape.status(), 200);
        let text = scrape.text().await.unwrap();
        for line in [
            "e2b_local_sandboxes{key=\"alice\",state=\"running\"} 1",
            "e2b_local_sandboxes{key=\"bob\",state=\"running\"} 1",
            "e2b_local_creates_total{key=\"alice\",outcome=\"made\"} 1",
            "e2b_local_quota_refusals_total{key=\"alice\",limit=\"concurrent\"} 2",
            "e2b_local_keys 2",
            "e2b_local_quota_refusals_total{key=\"alice\",limit=\"volumes\"} 1",
            "e2b_local_quota_refusals_total{key=\"bob\",limit=\"snapshots\"} 1",
            "e2b_local_quota_refusals_total{key=\"bob\",limit=\"builds\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} not in /metrics:\n{text}"
            );
        }
        assert!(
            text.contains("e2b_local_requests_total{listener=\"envd\",status=\"200\"}"),
            "{text}"
        );

        // A command of hers whose output stream is open when her key goes.
        let mut long = sa.spawn(CommandSpec::shell("sleep 40")).await.unwrap();

        // Alice revoked: the file without her, and SIGHUP.
        std::fs::write(&keys, key_entry("bob", &bob, "operator = true")).unwrap();
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
        assert!(
            eventually(5, || async { a.list(&ListFilter::all()).await.is_err() }).await,
            "alice's key is still served after SIGHUP"
        );
        let e = a.list(&ListFilter::all()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
        // Its stream ends now, not when the command does.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = long.next_event().await {
                if event.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "a revoked key's command stream stayed open");
        // The access token she was given opens nothing now.
        let e = sa.exec_shell("echo still").await.unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unauthenticated),
            "a revoked key's sandbox answered envd: {e}"
        );
        // Kept (the default), and Bob is not touched.
        let on_engine = ids(docker
            .list(&ListFilter::all().metadata(LABEL, "keys"))
            .await
            .unwrap());
        assert!(
            on_engine.contains(&sa.id().to_string()),
            "alice's sandbox was removed"
        );
        assert_eq!(
            sb.exec_shell("echo bob").await.unwrap().stdout_text(),
            "bob\n"
        );

        // Alice back: the file changes, no signal.
        std::fs::write(&keys, &both).unwrap();
        assert!(
            eventually(10, || async { a.list(&ListFilter::all()).await.is_ok() }).await,
            "the keys file's change was not noticed"
        );
        assert_eq!(
            ids(a.list(&ListFilter::all()).await.unwrap()),
            vec![sa.id().to_string()]
        );
        assert_eq!(
            sa.exec_shell("echo back").await.unwrap().stdout_text(),
            "back\n"
        );
    };
    // Clean up whatever the checks found, then report them.
    let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    drop(server);
    let audit = std::fs::read_to_string(&audit_log).unwrap_or_default();
    kill_labelled(&docker, "keys").await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !log.contains(&alice) && !log.contains(&bob),
        "a key is in the log"
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(
        log.contains("key revoked") && log.contains("alice"),
        "the revocation is not logged:\n{log}"
    );
    // The audit log says which key made Alice's sandbox, on stderr and in its own file
    // (which holds audit lines only).
    let made = alices.lock().unwrap().clone();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("alice") && l.contains(&made) && l.contains("201")),
        "no audit line for alice's create of {made} in the audit log:\n{audit}"
    );
    assert!(
        audit.lines().all(|l| l.contains("e2b_local::audit")),
        "the audit log holds other lines:\n{audit}"
    );
    assert!(
        log.lines().any(|l| l.contains("e2b_local::audit")
            && l.contains("alice")
            && l.contains(&made)
            && l.contains("201")),
        "no audit line for alice's create of {made}:\n{log}"
    );
}

/// The access token e2b-local gives a sandbox (derived from the server's secret).
fn e2b_protocol_token(secret: &str, id: &str) -> String {
    // Same derivation as the server: the protocol crate is a dependency of both.
    sandkit_e2b_protocol::derive_token(secret, id, "envd")
}

#[tokio::test(flavor = "multi_thread")]
async fn load_20_sandboxes_200_concurrent_streams() {
    let docker = docker().await;
    let key = format!("e2b_load_{:x}", rand::random::<u64>());
    let (api, envd) = (free_port(), free_port());
    let server = start_bin(&key, api, envd, "warn", "load");
    let rt = Arc::new(client(
        SocketAddr::from(([127, 0, 0, 1], api)),
        SocketAddr::from(([127, 0, 0, 1], envd)),
        &key,
        Duration::from_secs(60),
    ));
    let sandboxes = futures_util::future::join_all(
        (0..20).map(|_| rt.create(SandboxSpec::new().metadata(LABEL, "load"))),
    )
    .await;
    let sandboxes: Vec<_> = sandboxes
        .into_iter()
        .map(|s| Arc::new(s.expect("created")))
        .collect();
    // The official SDK in parallel, when a Python with it is given (`cargo xtask ci` does).
    let sdk = std::env::var("E2B_SDK_PYTHON").ok().map(|python| {
        let script = format!(
            "from e2b import Sandbox\n\
             s = Sandbox.create(metadata={{'{LABEL}': 'load'}})\n\
             for i in range(50):\n    assert s.commands.run(f'echo sdk{{i}}').stdout == f'sdk{{i}}\\n'\n\
             s.kill()\nprint('sdk ok')\n"
        );
        tokio::process::Command::new(python)
            .args(["-c", &script])
            .env("E2B_API_KEY", &key)
            .env("E2B_API_URL", format!("http://127.0.0.1:{api}"))
            .env("E2B_SANDBOX_URL", format!("http://127.0.0.1:{envd}"))
            .output()
    });
    if sdk.is_none() {
        eprintln!("E2B_SDK_PYTHON is not set: the official SDK does not run alongside");
    }
    let started = Instant::now();
    let streams = (0..200).map(|i| {
        let sb = sandboxes[i % 20].clone();
        async move {
            let out = sb
                .exec(CommandSpec::shell(format!(
                    "for j in 1 2 3 4 5; do echo {i}-$j; sleep 0.2; done"
                )))
                .await?;
            Ok::<bool, sandkit_core::Error>(
                out.stdout_text() == (1..=5).map(|j| format!("{i}-{j}\n")).collect::<String>(),
            )
        }
    });
    let (results, sdk_out) = tokio::join!(futures_util::future::join_all(streams), async {
        match sdk {
            Some(run) => Some(run.await),
            None => None,
        }
    });
    let elapsed = started.elapsed();
    let sdk_ok = match sdk_out {
        None => true,
        Some(out) => {
            let out = out.expect("run python");
            let ok =
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sdk ok");
            if !ok {
                eprintln!("SDK run failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            ok
        }
    };
    let errors = results.iter().filter(|r| !matches!(r, Ok(true))).count();
    let peak = peak_rss_kib(server.child.id());
    for sb in &sandboxes {
        let _ = sb.kill().await;
    }
    eprintln!("load: 20 sandboxes, 200 concurrent streams in {:.1}s, {errors} errors, e2b-local peak RSS {} MiB", elapsed.as_secs_f64(), peak / 1024);
    drop(server);
    let _ = std::fs::remove_dir_all(data_dir("load"));
    kill_labelled(&docker, "load").await;
    assert_eq!(
        errors,
        0,
        "{:?}",
        results
            .iter()
            .filter(|r| !matches!(r, Ok(true)))
            .collect::<Vec<_>>()
    );
    assert!(
        sdk_ok,
        "the official SDK's 50 commands alongside all succeeded"
    );
    assert!(
        peak > 0 && peak < 512 * 1024,
        "e2b-local's memory stays bounded: {peak} KiB"
    );
    let left = docker
        .list(&ListFilter::all().metadata(LABEL, "load"))
        .await
        .unwrap();
    assert!(left.is_empty(), "no sandbox left: {left:?}");
}

/// A backend whose engine is always busy (a retryable error), counting what it is asked.
#[derive(Debug, Default)]
struct AlwaysBusy {
    lists: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Runtime for AlwaysBusy {
    fn name(&self) -> &'static str {
        "busy"
    }
    fn capabilities(&self) -> sandkit_core::Capabilities {
        sandkit_core::Capabilities::default()
    }
    async fn create(
        &self,
        _: sandkit_core::SandboxSpec,
    ) -> sandkit_core::Result<Box<dyn sandkit_core::Sandbox>> {
        Err(busy())
    }
    async fn connect(&self, _: &str) -> sandkit_core::Result<Box<dyn sandkit_core::Sandbox>> {
        Err(busy())
    }
    async fn list(&self, _: &ListFilter) -> sandkit_core::Result<Vec<sandkit_core::SandboxInfo>> {
        self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(busy())
    }
    async fn info(&self, _: &str) -> sandkit_core::Result<sandkit_core::SandboxInfo> {
        Err(busy())
    }
    async fn kill(&self, _: &str) -> sandkit_core::Result<()> {
        Err(busy())
    }
}

fn busy() -> sandkit_core::Error {
    sandkit_core::Error::new(sandkit_core::ErrorKind::Unavailable, "the engine is busy")
}

/// The architecture issue's retries that multiply: an E2B client (retry layer) over e2b-local
/// (retry layer) over a busy engine used to reach the engine 4 x 4 = 16 times for one call.
/// The server's layer gives up after 4 and says so (`Should-Retry: false`): 4 in all.
#[tokio::test]
async fn retries_end_across_the_whole_chain() {
    let engine = Arc::new(AlwaysBusy::default());
    let stacked = sandkit_core::layer::standard(
        engine.clone(),
        Some(sandkit_core::layer::RetryLayer::default()),
    );
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, e) = (api.local_addr().unwrap(), envd.local_addr().unwrap());
    let key = "e2b_retries_end";
    let server = Server::new(
        stacked,
        ServerConfig {
            api_key: Some(key.into()),
            ..Default::default()
        },
    )
    .expect("the server starts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(api, envd, async {
        let _ = stopped.await;
    }));
    let client = client(a, e, key, Duration::from_secs(10));
    let error = client.list(&ListFilter::all()).await.unwrap_err();
    assert_eq!(
        error.kind(),
        sandkit_core::ErrorKind::Unavailable,
        "{error}"
    );
    assert!(!error.is_retryable(), "{error:?}");
    assert_eq!(
        engine.lists.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "engine calls for one list through client and server"
    );
    let _ = stop.send(());
    let _ = task.await;
}

/// Holds every create until it is let go, and says when one is waiting.
#[derive(Debug, Clone, Default)]
struct HoldCreates {
    waiting: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
}

impl sandkit_core::layer::Layer for HoldCreates {
    fn call<'a, T: Send + 'a>(
        &'a self,
        call: &'a sandkit_core::layer::Call<'a>,
        next: sandkit_core::layer::Next<'a, T>,
    ) -> futures_util::future::BoxFuture<'a, sandkit_core::Result<T>> {
        Box::pin(async move {
            if call.operation() == sandkit_core::Operation::Create {
                self.waiting.notify_one();
                self.go.notified().await;
            }
            next.run().await
        })
    }
}

/// A key revoked while its create is under way: the create answers `401` and, with
/// `--revoked remove`, the sandbox it made is removed (it would otherwise outlive the sweep
/// that removed the key's other things).
#[tokio::test(flavor = "multi_thread")]
async fn a_create_under_way_when_its_key_is_revoked_leaves_nothing() {
    let docker: Arc<dyn Runtime> = Arc::new(sandkit_conformance::needs_engine(
        DockerRuntime::builder().build().await,
    ));
    let hold = HoldCreates::default();
    let runtime = sandkit_core::layer::wrap(docker.clone(), hold.clone());
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let (alice, bob) = ("e2b_revoke_race_alice", "e2b_revoke_race_bob");
    std::fs::write(
        &keys,
        key_entry("alice", alice, "") + &key_entry("bob", bob, ""),
    )
    .unwrap();
    let server = Server::new(
        runtime,
        ServerConfig {
            keys_file: Some(keys.clone()),
            revoked: sandkit_e2b_local::Revoked::Remove,
            ..Default::default()
        },
    )
    .expect("the server starts");
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, e) = (api.local_addr().unwrap(), envd.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.clone().serve(api, envd, async {
        let _ = stopped.await;
    }));
    let test = "revoked_mid_create";
    let bobs = client(a, e, bob, Duration::from_secs(60));
    let create = tokio::spawn(async move {
        bobs.create(
            SandboxSpec::new()
                .template("sandkit-mini:latest")
                .metadata(LABEL, test),
        )
        .await
    });
    hold.waiting.notified().await;
    std::fs::write(&keys, key_entry("alice", alice, "")).unwrap();
    server.reload_keys().await;
    hold.go.notify_one();
    let outcome = create.await.unwrap();
    let left = docker
        .list(&ListFilter::all().metadata(LABEL, test))
        .await
        .unwrap();
    kill_labelled(docker.as_ref(), test).await;
    let _ = stop.send(());
    let _ = task.await;
    let error = outcome.map(|s| s.id().to_string()).unwrap_err();
    assert!(error.to_string().contains("revoked"), "{error}");
    assert!(
        left.is_empty(),
        "the revoked key's new sandbox was kept: {left:?}"
    );
}
