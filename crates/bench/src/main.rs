//! `cargo xtask bench`: sandkit against its peers, measured side by side in one run.
//!
//! 1. command round trip (`true` in a running sandbox): sandkit vs `docker exec`;
//! 2. create → first command → kill: sandkit vs `docker run --rm`;
//! 3. 64 MiB upload and download: sandkit vs `docker cp`;
//! 4. 50 sandboxes at once, 20 commands each: time, errors, peak memory of the process;
//! 5. the E2B backend vs the official Python SDK against the same e2b-local: command round
//!    trip and 8 MiB file round trip;
//! 6. under gVisor (when the engine has `runsc`): rows 1 and 2 again, against `docker exec` and
//!    `docker run --rm --runtime=runsc`;
//! 7. the cost of a network policy (as root, which linking the server needs): connection setup
//!    and a 64 MiB HTTP download from a server container on the engine, with an address allow
//!    list and with a domain allow list (judged by the guard's proxy), against no policy.
//!
//! Prints a Markdown table of ratios (sandkit / peer, lower is better for sandkit) and writes the raw
//! figures to `bench-results/latest.json`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sandkit_core::{CommandSpec, FileStoreExt, Runtime, SandboxExt, SandboxSpec};
use sandkit_docker::DockerRuntime;
use serde_json::json;

const IMAGE: &str = "sandkit-base:bookworm";
const LABEL: &str = "sandkit-bench";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone)]
struct Series {
    samples: Vec<f64>,
}

impl Series {
    fn new() -> Self {
        Series {
            samples: Vec::new(),
        }
    }
    fn add(&mut self, d: Duration) {
        self.samples.push(d.as_secs_f64() * 1000.0);
    }
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let i = ((s.len() as f64 - 1.0) * p).round() as usize;
        s[i]
    }
    fn median(&self) -> f64 {
        self.pct(0.5)
    }
    fn p90(&self) -> f64 {
        self.pct(0.9)
    }
    fn json(&self) -> serde_json::Value {
        json!({"median_ms": self.median(), "p90_ms": self.p90(), "n": self.samples.len(), "samples_ms": self.samples})
    }
}

struct Row {
    name: String,
    ours: Series,
    peer_name: String,
    peer: Series,
}

impl Row {
    /// One line for the `--*-only` tuning modes.
    fn line(&self) -> String {
        format!(
            "{}: {:.2} ms (p90 {:.2}) vs {} {:.2} ms (p90 {:.2}) ({:.2})",
            self.name,
            self.ours.median(),
            self.ours.p90(),
            self.peer_name,
            self.peer.median(),
            self.peer.p90(),
            self.ours.median() / self.peer.median()
        )
    }
}

async fn docker_cli(args: &[&str]) -> Res<()> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// The runtime as programs get it from `Config::runtime`: the backend inside the standard
/// layers (error context, retries, capability checks, tracing), so the rows count their cost.
fn layered(docker: &DockerRuntime) -> Arc<dyn Runtime> {
    sandkit_core::layer::standard(
        Arc::new(docker.clone()),
        Some(sandkit_core::layer::RetryLayer::default()),
    )
}

fn spec() -> SandboxSpec {
    SandboxSpec::new().template(IMAGE).metadata(LABEL, "1")
}

async fn round_trip(docker: &DockerRuntime, n: usize, under: &str) -> Res<Row> {
    let docker = layered(docker);
    let sb = docker.create(spec()).await?;
    let container = format!("sandkit-{}", sb.id());
    let (mut ours, mut peer) = (Series::new(), Series::new());
    for _ in 0..3 {
        sb.exec(CommandSpec::program("true", Vec::<String>::new()))
            .await?;
        docker_cli(&["exec", &container, "true"]).await?;
    }
    for _ in 0..n {
        let t = Instant::now();
        let out = sb
            .exec(CommandSpec::program("true", Vec::<String>::new()))
            .await?;
        ours.add(t.elapsed());
        assert_eq!(out.exit_code, Some(0));
        let t = Instant::now();
        docker_cli(&["exec", &container, "true"]).await?;
        peer.add(t.elapsed());
    }
    sb.kill().await?;
    Ok(Row {
        name: format!("command round trip (`true`){under}"),
        ours,
        peer_name: "docker exec".into(),
        peer,
    })
}

async fn lifecycle(docker: &DockerRuntime, n: usize, run_args: &[&str], under: &str) -> Res<Row> {
    let docker = layered(docker);
    let (mut ours, mut peer) = (Series::new(), Series::new());
    for _ in 0..n {
        let t = Instant::now();
        let sb = docker.create(spec()).await?;
        sb.exec(CommandSpec::program("true", Vec::<String>::new()))
            .await?;
        sb.kill().await?;
        ours.add(t.elapsed());
        let t = Instant::now();
        let mut args = vec!["run", "--rm", "--label", "sandkit-bench=1"];
        args.extend_from_slice(run_args);
        args.extend([IMAGE, "true"]);
        docker_cli(&args).await?;
        peer.add(t.elapsed());
    }
    Ok(Row {
        name: format!("create → first command → kill{under}"),
        ours,
        peer_name: format!("docker run --rm {}", run_args.join(" "))
            .trim_end()
            .to_string(),
        peer,
    })
}

async fn files(docker: &DockerRuntime, n: usize, under: &str) -> Res<(Row, Row)> {
    let docker = layered(docker);
    let sb = docker.create(spec()).await?;
    let container = format!("sandkit-{}", sb.id());
    let data = Bytes::from(
        (0..64u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let dir = std::env::temp_dir().join(format!("sandkit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let host_file = dir.join("up.bin");
    std::fs::write(&host_file, &data)?;
    let (mut up, mut up_peer, mut down, mut down_peer) =
        (Series::new(), Series::new(), Series::new(), Series::new());
    for i in 0..n {
        let t = Instant::now();
        sb.files()
            .write(&format!("/tmp/ours{i}.bin"), data.clone())
            .await?;
        up.add(t.elapsed());
        let t = Instant::now();
        docker_cli(&[
            "cp",
            host_file.to_str().unwrap(),
            &format!("{container}:/tmp/peer{i}.bin"),
        ])
        .await?;
        up_peer.add(t.elapsed());
        let t = Instant::now();
        let mut s = sb.files().read_stream(&format!("/tmp/ours{i}.bin")).await?;
        let mut f = tokio::fs::File::create(dir.join("down.bin")).await?;
        while let Some(c) = s.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut f, &c?).await?;
        }
        down.add(t.elapsed());
        let t = Instant::now();
        docker_cli(&[
            "cp",
            &format!("{container}:/tmp/peer{i}.bin"),
            dir.join("peer-down.bin").to_str().unwrap(),
        ])
        .await?;
        down_peer.add(t.elapsed());
    }
    assert_eq!(std::fs::metadata(dir.join("down.bin"))?.len(), 64 << 20);
    sb.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        Row {
            name: format!("64 MiB upload{under}"),
            ours: up,
            peer_name: "docker cp".into(),
            peer: up_peer,
        },
        Row {
            name: format!("64 MiB download{under}"),
            ours: down,
            peer_name: "docker cp".into(),
            peer: down_peer,
        },
    ))
}

/// 50 sandboxes, 20 commands each, all at once (run in a child process so its peak RSS is
/// this load's alone).
async fn load(docker: Arc<DockerRuntime>) -> Res<serde_json::Value> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let d = docker.clone();
        tasks.push(tokio::spawn(async move {
            let sb = d.create(spec()).await?;
            let mut errors = 0;
            for j in 0..20 {
                match sb.exec(CommandSpec::shell(format!("echo {i}-{j}"))).await {
                    Ok(o) if o.stdout_text() == format!("{i}-{j}\n") => {}
                    _ => errors += 1,
                }
            }
            sb.kill().await?;
            Ok::<u32, sandkit_core::Error>(errors)
        }));
    }
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok(e) => errors += e,
            Err(e) => {
                eprintln!("load: {e}");
                errors += 20;
            }
        }
    }
    Ok(
        json!({"sandboxes": 50, "commands": 1000, "total_s": started.elapsed().as_secs_f64(), "errors": errors, "peak_rss_mib": peak_rss_kib() as f64 / 1024.0}),
    )
}

async fn e2b(docker: DockerRuntime, python: &PathBuf, n: usize) -> Res<(Row, Row)> {
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (api_addr, envd_addr) = (api.local_addr()?, envd.local_addr()?);
    let key = "e2b_bench_key";
    let server = sandkit_e2b_local::Server::new(
        Arc::new(docker),
        sandkit_e2b_local::ServerConfig {
            api_key: Some(key.into()),
            ..Default::default()
        },
    )?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(api, envd, async move {
        let _ = stop_rx.await;
    }));
    let e2b = sandkit_e2b::E2bRuntime::builder()
        .api_key(key)
        .api_url(format!("http://{api_addr}"))
        .sandbox_url(format!("http://{envd_addr}"))
        .build()?;
    let sb = e2b.create(SandboxSpec::new().metadata(LABEL, "1")).await?;
    let data = Bytes::from(vec![7u8; 8 << 20]);
    let (mut cmd, mut file) = (Series::new(), Series::new());
    for _ in 0..3 {
        sb.exec(CommandSpec::shell("true")).await?;
    }
    for _ in 0..n {
        let t = Instant::now();
        sb.exec(CommandSpec::shell("true")).await?;
        cmd.add(t.elapsed());
    }
    for _ in 0..(n / 4).max(3) {
        let t = Instant::now();
        sb.files().write("/tmp/rt.bin", data.clone()).await?;
        let back = sb.files().read("/tmp/rt.bin").await?;
        file.add(t.elapsed());
        assert_eq!(back.len(), data.len());
    }
    sb.kill().await?;
    let script = format!(
        r#"
import json, time
from e2b import Sandbox
s = Sandbox.create(metadata={{"{LABEL}": "1"}})
for _ in range(3): s.commands.run("true")
cmd = []
for _ in range({n}):
    t = time.perf_counter(); s.commands.run("true"); cmd.append((time.perf_counter() - t) * 1000)
data = b"\x07" * (8 << 20)
files = []
for _ in range({m}):
    t = time.perf_counter(); s.files.write("/tmp/rt.bin", data); b = s.files.read("/tmp/rt.bin", format="bytes"); files.append((time.perf_counter() - t) * 1000)
    assert len(b) == len(data)
s.kill()
print(json.dumps({{"cmd": cmd, "file": files}}))
"#,
        m = (n / 4).max(3)
    );
    let out = tokio::process::Command::new(python)
        .args(["-c", &script])
        .env("E2B_API_KEY", key)
        .env("E2B_API_URL", format!("http://{api_addr}"))
        .env("E2B_SANDBOX_URL", format!("http://{envd_addr}"))
        .output()
        .await?;
    let _ = stop_tx.send(());
    let _ = handle.await;
    if !out.status.success() {
        return Err(format!(
            "the Python SDK run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let series = |k: &str| Series {
        samples: v[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect(),
    };
    Ok((
        Row {
            name: "E2B command round trip (via e2b-local)".into(),
            ours: cmd,
            peer_name: "official Python SDK".into(),
            peer: series("cmd"),
        },
        Row {
            name: "E2B 8 MiB write + read (via e2b-local)".into(),
            ours: file,
            peer_name: "official Python SDK".into(),
            peer: series("file"),
        },
    ))
}

/// The server of row 7: one-line echo on 8080, and 64 MiB over HTTP on 80.
const NET_SERVER: &str = r#"
import asyncio
BIG = b'\0' * (64 << 20)
async def echo(r, w):
    while await r.readline():
        w.write(b'ok\n'); await w.drain()
    w.close()
async def http(r, w):
    first = await r.readline()
    while (await r.readline()) not in (b'\r\n', b''):
        pass
    w.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(BIG))
    if not first.startswith(b'HEAD'):
        w.write(BIG)
    await w.drain(); w.close()
async def small(r, w):
    try:
        while True:
            first = await r.readline()
            if not first: break
            while (await r.readline()) not in (b'\r\n', b''):
                pass
            w.write(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
            await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    import os, ssl
    a = await asyncio.start_server(echo, '0.0.0.0', 8080)
    b = await asyncio.start_server(http, '0.0.0.0', 80)
    open('/tmp/cert.pem', 'w').write(os.environ['CERT'])
    open('/tmp/key.pem', 'w').write(os.environ['KEY'])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain('/tmp/cert.pem', '/tmp/key.pem')
    c = await asyncio.start_server(small, '0.0.0.0', 443, ssl=ctx)
    print('ready', flush=True)
    await asyncio.gather(a.serve_forever(), b.serve_forever(), c.serve_forever())
asyncio.run(main())
"#;

/// A CA of the benchmark's own and a certificate it signed for `server.test`: (CA, cert, key).
fn bench_pki() -> Res<(String, String, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec!["server.test".to_string()])?.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), leaf.pem(), key.serialize_pem()))
}

/// What a sandbox runs for row 7: `n` connections, each opened and used for one line; prints
/// the milliseconds of each.
const NET_CLIENT: &str = r#"
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    t = time.monotonic()
    s = socket.create_connection((host, port), timeout=5)
    if port == 80:
        s.sendall(b'HEAD / HTTP/1.1\r\nHost: ' + host.encode() + b'\r\n\r\n')
    else:
        s.sendall(b'x\n')
    s.recv(16)
    print((time.monotonic() - t) * 1000)
    s.close()
"#;

/// Row 7: the cost of a network policy.
async fn network(docker: &DockerRuntime, conns: usize, downloads: usize) -> Res<Vec<Row>> {
    if !docker.capabilities().network_policy {
        return Err("no network guard (SANDKIT_AGENT_BIN)".into());
    }
    let root = std::process::Command::new("id").arg("-u").output()?.stdout == b"0\n";
    if !root {
        return Err("linking the server container into the network needs root".into());
    }
    eprintln!("7/7 network policy: connection setup, 64 MiB download, HTTPS through a rule…");
    let name = format!("sandkit-bench-net-{:06x}", rand_u32() & 0xff_ffff);
    let (ca, cert, key) = bench_pki()?;
    let server = tokio::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--rm",
            "--network",
            "none",
            "--label",
            LABEL,
            "--name",
            &name,
            "-e",
            &format!("CERT={cert}"),
            "-e",
            &format!("KEY={key}"),
        ])
        .args([IMAGE, "python3", "-c", NET_SERVER])
        .output()
        .await?;
    if !server.status.success() {
        return Err(String::from_utf8_lossy(&server.stderr).into());
    }
    let host_if = format!("sbxb{:06x}", rand_u32() & 0xff_ffff);
    let result = async {
        let pid = String::from_utf8(
            tokio::process::Command::new("docker")
                .args(["inspect", "-f", "{{.State.Pid}}", &name])
                .output()
                .await?
                .stdout,
        )?;
        let pid = pid.trim();
        let sh = format!(
            "ip link add {host_if} type veth peer name {host_if}p && ip link set {host_if}p netns {pid} && \
             ip addr add 10.205.7.1/24 dev {host_if} && ip link set {host_if} up && \
             nsenter -t {pid} -n sh -c 'ip addr add 10.205.7.2/24 dev {host_if}p && ip link set {host_if}p up && \
             ip route add default via 10.205.7.1'"
        );
        let out = tokio::process::Command::new("sh").args(["-c", &sh]).output().await?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ip: std::net::IpAddr = "10.205.7.2".parse()?;
        let cidr = sandkit_core::NetworkPolicy::new()
            .deny_out([sandkit_core::ALL_TRAFFIC])
            .allow_out(["10.205.7.2"]);
        let domain = sandkit_core::NetworkPolicy::new()
            .deny_out([sandkit_core::ALL_TRAFFIC])
            .allow_out(["server.test"]);
        let mut setup: Vec<Series> = Vec::new();
        let mut download: Vec<Series> = Vec::new();
        for (policy, port) in [(None, 80), (Some(cidr), 80), (Some(domain), 80)] {
            let mut spec = spec().add_host("server.test", ip);
            if let Some(p) = policy {
                spec = spec.network_policy(p);
            }
            let sb = docker.create(spec).await?;
            sb.files().write_str("/tmp/client.py", NET_CLIENT).await?;
            // A few unmeasured connections first.
            sb.exec_shell(&format!("python3 /tmp/client.py server.test {port} 5"))
                .await?;
            let out = sb
                .exec_shell(&format!("python3 /tmp/client.py server.test {port} {conns}"))
                .await?;
            let mut s = Series::new();
            for line in out.stdout_text().lines() {
                if let Ok(ms) = line.trim().parse::<f64>() {
                    s.add(Duration::from_secs_f64(ms / 1000.0));
                }
            }
            if s.samples.len() != conns {
                return Err(format!("connections failed: {out:?}").into());
            }
            setup.push(s);
            let mut d = Series::new();
            // One unmeasured download first: each policy starts warm.
            for i in 0..=downloads {
                let out = sb
                    .exec_shell(
                        "curl --noproxy '*' -sS -o /dev/null -w '%{time_total} %{size_download}' http://server.test/",
                    )
                    .await?;
                let text = out.stdout_text();
                let mut f = text.split_whitespace();
                let secs: f64 = f.next().and_then(|v| v.parse().ok()).ok_or(format!("curl: {out:?}"))?;
                let size: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                if size != 64 << 20 {
                    return Err(format!("download was {size} bytes: {out:?}").into());
                }
                if i > 0 {
                    d.add(Duration::from_secs_f64(secs));
                }
            }
            download.push(d);
            let _ = sb.kill().await;
        }
        // HTTPS through a request rule (the guard answers TLS itself and sets a header from a
        // secret) against the same requests with no policy, on new and kept-alive connections.
        let trusting = DockerRuntime::builder().egress_trust(ca).build().await?;
        let rule = sandkit_core::NetworkPolicy::new()
            .rule(
                "server.test",
                sandkit_core::RequestRule::new()
                    .header("Authorization", "Bearer ${e2b.secrets.bench}"),
            )
            .secret("bench", "benchmark-token");
        let mut fresh: Vec<Series> = Vec::new();
        let mut kept: Vec<Series> = Vec::new();
        for policy in [None, Some(rule)] {
            let mut spec = spec().add_host("server.test", ip);
            if let Some(p) = policy {
                spec = spec.network_policy(p);
            }
            let sb = trusting.create(spec).await?;
            let curl = "curl --noproxy '*' -k -sS -w '%{time_total}\\n'";
            let times = |text: String| -> Series {
                let mut s = Series::new();
                for line in text.lines() {
                    if let Ok(secs) = line.trim().parse::<f64>() {
                        s.add(Duration::from_secs_f64(secs));
                    }
                }
                s
            };
            // One process and connection each (the first unmeasured).
            let out = sb
                .exec_shell(&format!(
                    "for i in $(seq {}); do {curl} -o /dev/null https://server.test/; done",
                    conns + 1
                ))
                .await?;
            let mut s = times(out.stdout_text());
            if s.samples.len() != conns + 1 {
                return Err(format!("HTTPS requests failed: {out:?}").into());
            }
            s.samples.remove(0);
            fresh.push(s);
            // One connection for all (its first request, which opens it, unmeasured).
            let urls: String = (0..=conns)
                .map(|_| " -o /dev/null https://server.test/")
                .collect();
            let out = sb.exec_shell(&format!("{curl}{urls}")).await?;
            let mut s = times(out.stdout_text());
            if s.samples.len() != conns + 1 {
                return Err(format!("kept-alive HTTPS requests failed: {out:?}").into());
            }
            s.samples.remove(0);
            kept.push(s);
            let _ = sb.kill().await;
        }
        let row = |name: &str, ours: &Series, peer: &Series| Row {
            name: name.into(),
            ours: ours.clone(),
            peer_name: "no policy".into(),
            peer: peer.clone(),
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(vec![
            row("connection setup + first reply, address allow list", &setup[1], &setup[0]),
            row("connection setup + first reply, domain allow list (proxy)", &setup[2], &setup[0]),
            row("64 MiB HTTP download, address allow list", &download[1], &download[0]),
            row("64 MiB HTTP download, domain allow list (proxy)", &download[2], &download[0]),
            row("HTTPS request, new connection, request rule (guard's TLS)", &fresh[1], &fresh[0]),
            row("HTTPS request, kept-alive connection, request rule (guard's TLS)", &kept[1], &kept[0]),
        ])
    }
    .await;
    let _ = docker_cli(&["rm", "-f", &name]).await;
    let _ = tokio::process::Command::new("ip")
        .args(["link", "del", &host_if])
        .output()
        .await;
    result
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id()
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("--load-only") {
        let exec_path = args.get(1).map(String::as_str) == Some("exec");
        let v = rt.block_on(async {
            let docker = DockerRuntime::builder()
                .agent_inside(!exec_path)
                .build()
                .await?;
            load(Arc::new(docker)).await
        })?;
        println!("{v}");
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("--network-only") {
        return rt.block_on(async {
            let docker = DockerRuntime::builder().build().await?;
            for r in network(&docker, 50, 3).await? {
                println!("{}", r.line());
            }
            Ok(())
        });
    }
    if args.first().map(String::as_str) == Some("--create-only") {
        // For tuning create: with and without the network guard.
        return rt.block_on(async {
            let guarded = DockerRuntime::builder().build().await?;
            let unguarded = DockerRuntime::builder()
                .network_guard(false)
                .build()
                .await?;
            let pooled = DockerRuntime::builder().pool(2).build().await?;
            let _ = pooled.create(spec()).await?.kill().await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            for (rt, under) in [
                (&pooled, ", warm pool of 2"),
                (&guarded, ", agent"),
                (&unguarded, ", agent, no network guard"),
            ] {
                let r = lifecycle(rt, 8, &[], under).await?;
                println!("{}", r.line());
            }
            pooled.drain_pool().await;
            Ok(())
        });
    }
    if args.first().map(String::as_str) == Some("--files-only") {
        // For tuning the file paths: the 64 MiB rows alone, both paths.
        return rt.block_on(async {
            let agent = DockerRuntime::builder().build().await?;
            let exec = DockerRuntime::builder().agent_inside(false).build().await?;
            for (rt, under) in [(&agent, ", agent"), (&exec, ", exec path")] {
                let (up, down) = files(rt, 3, under).await?;
                for r in [up, down] {
                    println!("{}", r.line());
                }
            }
            Ok(())
        });
    }
    let python = args
        .iter()
        .position(|a| a == "--python")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let quick = args.iter().any(|a| a == "--quick");
    let n = if quick { 10 } else { 50 };
    rt.block_on(async {
        // The agent inside the sandbox (the default), and the engine's exec API beside it.
        let docker = DockerRuntime::builder().build().await?;
        let exec_path = DockerRuntime::builder().agent_inside(false).build().await?;
        let mut rows = Vec::new();
        eprintln!("1/7 command round trip ({n} each, both paths)…");
        rows.push(round_trip(&docker, n, ", agent").await?);
        rows.push(round_trip(&exec_path, n, ", exec path").await?);
        eprintln!("2/7 create → command → kill ({} each, both paths)…", n / 5);
        rows.push(lifecycle(&docker, (n / 5).max(3), &[], ", agent").await?);
        rows.push(lifecycle(&exec_path, (n / 5).max(3), &[], ", exec path").await?);
        // The warm pool: create takes a ready sandbox (its refill runs in the background).
        let pooled = DockerRuntime::builder().pool(2).build().await?;
        let _ = pooled.create(spec()).await?.kill().await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        rows.push(lifecycle(&pooled, (n / 5).max(3), &[], ", warm pool of 2").await?);
        pooled.drain_pool().await;
        eprintln!("3/7 64 MiB upload and download (both paths)…");
        let files_n = if quick { 2 } else { 5 };
        for (rt, under) in [(&docker, ", agent"), (&exec_path, ", exec path")] {
            let (up, down) = files(rt, files_n, under).await?;
            rows.push(up);
            rows.push(down);
        }
        eprintln!("4/7 50 sandboxes × 20 commands (separate processes, both paths)…");
        let exe = std::env::current_exe()?;
        let mut loads = Vec::new();
        for which in ["agent", "exec"] {
            let out = tokio::process::Command::new(&exe)
                .args(["--load-only", which])
                .output()
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
                format!("load run: {e}: {}", String::from_utf8_lossy(&out.stderr))
            })?;
            loads.push((which, v));
        }
        match &python {
            Some(p) => {
                eprintln!("5/7 E2B backend vs the Python SDK through e2b-local…");
                let (c, f) = e2b(docker.clone(), p, n).await?;
                rows.push(c);
                rows.push(f);
            }
            None => eprintln!("5/7 skipped: no --python with the e2b SDK"),
        }
        let has_runsc = docker
            .docker()
            .info()
            .await
            .ok()
            .and_then(|i| i.runtimes)
            .is_some_and(|r| r.contains_key("runsc"));
        if has_runsc {
            eprintln!("6/7 under gVisor (runsc)…");
            let gvisor = DockerRuntime::builder().oci_runtime("runsc").build().await?;
            rows.push(round_trip(&gvisor, n, " under gVisor, agent").await?);
            rows.push(lifecycle(&gvisor, (n / 5).max(3), &["--runtime=runsc"], " under gVisor, agent").await?);
        } else {
            eprintln!("6/7 skipped: the engine has no runsc (cargo xtask docker --gvisor)");
        }
        match network(&docker, if quick { 20 } else { 100 }, if quick { 2 } else { 5 }).await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => eprintln!("7/7 skipped: {e}"),
        }
        let machine = format!(
            "{} cores, {} MiB RAM, Docker {}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok())).unwrap_or(0) / 1024,
            String::from_utf8_lossy(&std::process::Command::new("docker").args(["version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"]).output()?.stdout).trim()
        );
        let mut table = String::from("| measure | sandkit median (p90) ms | peer | peer median (p90) ms | ratio sandkit/peer |\n|---|---|---|---|---|\n");
        for r in &rows {
            table.push_str(&format!(
                "| {} | {:.1} ({:.1}) | {} | {:.1} ({:.1}) | {:.2} |\n",
                r.name, r.ours.median(), r.ours.p90(), r.peer_name, r.peer.median(), r.peer.p90(), r.ours.median() / r.peer.median()
            ));
        }
        for (which, load) in &loads {
            let total = load["total_s"].as_f64().unwrap_or(0.0);
            table.push_str(&format!(
                "| 50 sandboxes × 20 commands at once, {} | {:.1} s total, {:.0} commands/s, {} errors, peak RSS {:.0} MiB | | | |\n",
                if *which == "exec" { "exec path" } else { "agent" },
                total, 1000.0 / total.max(0.001), load["errors"], load["peak_rss_mib"].as_f64().unwrap_or(0.0)
            ));
        }
        println!("Machine: {machine}\n\n{table}");
        let raw = json!({
            "machine": machine,
            "rows": rows.iter().map(|r| json!({"name": r.name, "sandkit": r.ours.json(), "peer_name": r.peer_name, "peer": r.peer.json()})).collect::<Vec<_>>(),
            "load": loads.iter().map(|(w, v)| json!({"path": w, "result": v})).collect::<Vec<_>>(),
        });
        std::fs::create_dir_all("bench-results")?;
        std::fs::write("bench-results/latest.json", serde_json::to_string_pretty(&raw)?)?;
        std::fs::write("bench-results/latest.md", format!("Machine: {machine}\n\n{table}"))?;
        eprintln!("raw figures: bench-results/latest.json");
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })
}
