//! What the network tests share: "the internet" (a network namespace of the test's own), a
//! listener on the host, and the probes sandboxes run. Included by `network.rs` and
//! `guard_flood.rs` (each uses part of it).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};

use sandkit_core::{CommandSpec, FileStoreExt, Runtime, Sandbox, SandboxExt, SandboxSpec};
use sandkit_docker::DockerRuntime;

/// What a sandbox runs to probe a destination: prints the server's answer, or `blocked`.
pub const PROBE: &str = r#"
import socket, sys, struct, os, time
mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
name = sys.argv[4] if len(sys.argv) > 4 else None
def hello(name):
    n = name.encode()
    sni = struct.pack('!HBH', len(n) + 3, 0, len(n)) + n
    ext = struct.pack('!HH', 0, len(sni)) + sni
    body = b'\x03\x03' + b'\x07' * 32 + b'\x00' + b'\x00\x02\x13\x01' + b'\x01\x00' + struct.pack('!H', len(ext)) + ext
    hs = b'\x01' + len(body).to_bytes(3, 'big') + body
    return b'\x16\x03\x01' + struct.pack('!H', len(hs)) + hs
def first():
    if mode == 'tls': return hello(name)
    if mode == 'http': return ('GET / HTTP/1.1\r\nHost: %s\r\n\r\n' % name).encode()
    return b'ping\n'
try:
    s = socket.create_connection((ip, port), timeout=3)
    s.sendall(first())
    got = s.recv(200)
    print(got.decode().strip() if got else 'blocked: closed', flush=True)
    if mode == 'hold':
        while not os.path.exists('/tmp/go'): time.sleep(0.05)
        s.sendall(b'ping\n')
        got = s.recv(200)
        print(got.decode().strip() if got else 'blocked: closed', flush=True)
except Exception as e:
    print('blocked:', type(e).__name__, flush=True)
"#;

/// The server in the namespace: answers every chunk with where it was reached.
pub const SERVER: &str = r#"
import asyncio, sys
async def serve(reader, writer):
    here = writer.get_extra_info('sockname')
    try:
        while True:
            data = await reader.read(4096)
            if not data: break
            writer.write(('reached %s:%d\n' % here[:2]).encode())
            await writer.drain()
    except Exception: pass
    writer.close()
async def main():
    servers = [await asyncio.start_server(serve, '0.0.0.0', p) for p in (80, 443, 8080)]
    print('ready', flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))
asyncio.run(main())
"#;

/// A network namespace standing for the internet.
pub struct Internet {
    pub ns: String,
    pub host_if: String,
    server: Child,
    /// `allowed.test`.
    pub a: Ipv4Addr,
    /// `denied.test`.
    pub b: Ipv4Addr,
    /// A link-local address routed into the namespace.
    pub link_local: Ipv4Addr,
}

impl Internet {
    pub fn new() -> Internet {
        Internet::serving(SERVER, &[])
    }

    /// A namespace where `server` (Python, run with `args`; it prints `ready` once it
    /// listens) answers on all of its addresses.
    pub fn serving(server: &str, args: &[&str]) -> Internet {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
        assert!(
            is_root,
            "the network tests make a network namespace: run them as root"
        );
        // Distinct for every namespace this process makes (tests run at once, and two with the
        // same number would route the same addresses), from a random start.
        static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
        let next = NEXT
            .get_or_init(|| std::sync::atomic::AtomicU32::new(rand::random::<u32>() % 200))
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let n: u8 = 10 + (next % 200) as u8;
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns = format!("sbxt-{tag}");
        let host_if = format!("sbxt{tag}h");
        let peer = format!("sbxt{tag}n");
        let (h, a, b) = (
            format!("10.203.{n}.1"),
            Ipv4Addr::new(10, 203, n, 2),
            Ipv4Addr::new(10, 203, n, 3),
        );
        let link_local = Ipv4Addr::new(169, 254, n, 2);
        let sh = |script: &str| {
            let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
            if !out.status.success() {
                // Nothing half-made is left behind.
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
                let _ = Command::new("ip")
                    .args(["link", "del", &host_if])
                    .stderr(Stdio::null())
                    .status();
                panic!("{script}: {}", String::from_utf8_lossy(&out.stderr));
            }
        };
        sh(&format!(
            "ip netns add {ns} && ip link add {host_if} type veth peer name {peer} && \
             ip link set {peer} netns {ns} && ip addr add {h}/24 dev {host_if} && \
             ip link set {host_if} up && \
             ip netns exec {ns} sh -c 'ip link set lo up && ip addr add {a}/24 dev {peer} && \
               ip addr add {b}/24 dev {peer} && ip addr add {link_local}/32 dev {peer} && \
               ip link set {peer} up && ip route add default via {h}' && \
             ip route add {link_local}/32 via {a}"
        ));
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", server])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        Internet {
            ns,
            host_if,
            server,
            a,
            b,
            link_local,
        }
    }

    /// Routes `addr` into the namespace, where the server answers on it too (the route goes
    /// with the veth pair when the test ends).
    pub fn route_into(&self, addr: Ipv4Addr) {
        let peer = format!("{}n", self.host_if.trim_end_matches('h'));
        let script = format!(
            "ip netns exec {ns} ip addr add {addr}/32 dev {peer} && ip route add {addr}/32 via {a}",
            ns = self.ns,
            a = self.a
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A spec naming the two servers.
    pub fn spec(&self, test: &str) -> SandboxSpec {
        SandboxSpec::new()
            .metadata("sandkit-network-test", test)
            .add_host("allowed.test", IpAddr::V4(self.a))
            .add_host("denied.test", IpAddr::V4(self.b))
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

pub async fn setup(test: &str) -> (DockerRuntime, Internet) {
    let rt = sandkit_conformance::needs_engine(DockerRuntime::builder().build().await);
    assert!(
        rt.capabilities().network_policy,
        "{test}: no network guard: it needs the agent (`cargo xtask agent` or SANDKIT_AGENT_BIN)"
    );
    (rt, Internet::new())
}

/// Runs the probe in `sb`: `mode` is `tcp`, `tls` (a ClientHello naming `name`) or `http`
/// (a request with `Host: name`).
pub async fn probe(
    sb: &dyn Sandbox,
    mode: &str,
    ip: impl ToString,
    port: u16,
    name: &str,
) -> String {
    sb.files().write_str("/tmp/probe.py", PROBE).await.unwrap();
    let out = sb
        .exec(CommandSpec::program(
            "python3",
            [
                "/tmp/probe.py".to_string(),
                mode.to_string(),
                ip.to_string(),
                port.to_string(),
                name.to_string(),
            ],
        ))
        .await
        .unwrap();
    out.stdout_text().trim().to_string()
}

/// A service on all of the host's addresses answering `reached the host`; returns its port.
pub async fn host_service() -> u16 {
    let host = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = host.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = host.accept().await {
            let _ = s.write_all(b"reached the host\n").await;
        }
    });
    port
}

/// The sandbox's default gateway (the host, on a bridge), from the kernel's routing table.
pub async fn gateway(sb: &dyn Sandbox) -> String {
    let out = sb
        .exec(CommandSpec::program(
            "python3",
            [
                "-c",
                "import socket,struct\nfor l in open('/proc/net/route').readlines()[1:]:\n f=l.split()\n if f[1]=='00000000': print(socket.inet_ntoa(struct.pack('<I', int(f[2], 16))))",
            ],
        ))
        .await
        .unwrap()
        .stdout_text();
    let gw = out.trim().to_string();
    assert!(!gw.is_empty(), "no default route");
    gw
}

pub fn reached(answer: &str, ip: Ipv4Addr, port: u16) -> bool {
    answer == format!("reached {ip}:{port}")
}
