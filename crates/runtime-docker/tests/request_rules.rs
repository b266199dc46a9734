//! Request rules on Docker, performed: a sandbox's HTTPS and HTTP requests to a domain with
//! rules reach a server of the test's own (in a network namespace it makes, with its own CA)
//! carrying a header whose value comes from a secret, and the sandbox never holds the secret.
//!
//! The server answers every request with a digest of the `Authorization` header it got (never
//! the value), the address it was reached at, and the `Host` asked for. The runtime tells the
//! guard to trust the test's CA for the servers behind rules (`egress_trust`).

use sandkit_core::{
    ErrorKind, NetworkPolicy, RequestRule, Runtime, Sandbox, SandboxExt, ALL_TRAFFIC,
};
use sandkit_docker::DockerRuntime;

mod internet;
use internet::Internet;

/// HTTP on 80 and 8080 and HTTPS on 443, answering `auth=<digest or none> at=<address> host=<Host>`.
const SERVER: &str = r#"
import hashlib, ssl, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        a = self.headers.get('Authorization')
        digest = hashlib.sha256(a.encode()).hexdigest()[:16] if a else 'none'
        body = ('auth=%s at=%s host=%s\n' % (digest, self.connection.getsockname()[0], self.headers.get('Host'))).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
plain = ThreadingHTTPServer(('0.0.0.0', 80), H)
other = ThreadingHTTPServer(('0.0.0.0', 8080), H)
tls = ThreadingHTTPServer(('0.0.0.0', 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
for s in (plain, other, tls):
    threading.Thread(target=s.serve_forever, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"#;

/// What the server answers for an `Authorization` header of `value`.
fn digest(value: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:16])",
            value,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A CA of the test's own, and a certificate it signed for `api.test` and `other.test`:
/// (CA PEM, certificate file, key file).
fn test_pki(dir: &std::path::Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "request rules test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["api.test".into(), "other.test".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert, keyf) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert, leaf.pem() + &ca_cert.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    (
        ca_cert.pem(),
        cert.display().to_string(),
        keyf.display().to_string(),
    )
}

async fn sh(sb: &dyn Sandbox, script: &str) -> String {
    let out = sb.exec_shell(script).await.unwrap();
    format!("{}{}", out.stdout_text(), out.stderr_text())
        .trim()
        .to_string()
}

#[tokio::test]
async fn a_rule_sets_a_secret_header_the_sandbox_never_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let net = Internet::serving(SERVER, &[&cert, &key]);
    let rt =
        sandkit_conformance::needs_engine(DockerRuntime::builder().egress_trust(ca).build().await);
    let secret = format!("sk-{:032x}", rand::random::<u128>());
    // Put in the sandbox's environment, to show the search below finds what is there.
    let marker = format!("marker-{:032x}", rand::random::<u128>());
    let rule = |n: &str| {
        RequestRule::new().header("Authorization", format!("Bearer ${{e2b.secrets.{n}}}"))
    };
    let policy = NetworkPolicy::new()
        .deny_out([ALL_TRAFFIC])
        .allow_out(["api.test", "other.test"])
        .rule("api.test", rule("api-token"))
        .secret("api-token", &secret);
    let spec = net
        .spec("rules")
        .add_host("api.test", std::net::IpAddr::V4(net.a))
        .add_host("other.test", std::net::IpAddr::V4(net.b))
        .env("RULES_TEST_MARKER", &marker)
        .network_policy(policy.clone());
    let sb = rt.create(spec).await.unwrap();
    let result = async {
        let authorized = format!("auth={} at={}", digest(&format!("Bearer {secret}")), net.a);
        let curl = "curl --noproxy '*' -sS -m 10";
        // HTTPS through the system bundle (curl), HTTP/2 to the guard, Python's ssl through
        // SSL_CERT_FILE, and plain HTTP: the server gets the secret each time.
        for (what, cmd) in [
            ("curl https", format!("{curl} https://api.test/")),
            ("curl h2", format!("{curl} --http2 https://api.test/ -w ' %{{http_version}}'")),
            (
                "python",
                "python3 -c \"import urllib.request as u; print(u.urlopen('https://api.test/').read().decode())\"".into(),
            ),
            ("curl http", format!("{curl} http://api.test/")),
            (
                "a header of the sandbox's own is replaced",
                format!("{curl} -H 'Authorization: Bearer mine' https://api.test/"),
            ),
        ] {
            let out = sh(&*sb, &cmd).await;
            assert!(out.starts_with(&authorized), "{what}: {out}");
            if what == "curl h2" {
                assert!(out.ends_with(" 2"), "HTTP/2 to the guard: {out}");
            }
        }
        // The name decides where the request goes: pointed at the other address, it still
        // reaches api.test's own.
        let out = sh(
            &*sb,
            &format!("{curl} --resolve api.test:443:{} https://api.test/", net.b),
        )
        .await;
        assert!(out.starts_with(&authorized), "resolved elsewhere: {out}");
        // A domain without rules is not touched: its own certificate (which the sandbox does
        // not trust), no header.
        let out = sh(&*sb, &format!("{curl} https://other.test/")).await;
        assert!(!out.contains("auth="), "other.test is passed through: {out}");
        let out = sh(&*sb, &format!("{curl} -k https://other.test/")).await;
        assert!(out.starts_with(&format!("auth=none at={}", net.b)), "{out}");
        // A request on api.test's TLS connection for another host is refused, not sent.
        let out = sh(&*sb, &format!("{curl} -H 'Host: other.test' https://api.test/")).await;
        assert!(out.contains("this connection is for api.test"), "{out}");
        assert!(!out.contains("auth="), "{out}");
        // Nor is one that names another host some other way: an absolute target, a Host
        // with user info, two Host headers.
        for (what, flags) in [
            ("absolute target", "--request-target https://other.test/".to_string()),
            ("user info", "-H 'Host: api.test:@other.test'".to_string()),
        ] {
            let out = sh(&*sb, &format!("{curl} {flags} https://api.test/")).await;
            assert!(!out.contains("auth="), "{what}: {out}");
        }
        let two_hosts = sh(
            &*sb,
            "python3 -c \"import socket,ssl; s=ssl.create_default_context().wrap_socket(\
             socket.create_connection(('api.test',443)),server_hostname='api.test'); \
             s.sendall(b'GET / HTTP/1.1\\r\\nHost: api.test\\r\\nHost: other.test\\r\\n\
             Connection: close\\r\\n\\r\\n'); print(s.recv(4096).decode())\"",
        )
        .await;
        assert!(two_hosts.contains(" 421 "), "two Hosts: {two_hosts}");
        assert!(!two_hosts.contains("auth="), "two Hosts: {two_hosts}");
        // Plain text to the HTTPS port carries no rule's header.
        let out = sh(&*sb, &format!("{curl} http://api.test:443/")).await;
        assert!(!out.contains("auth="), "plain text on 443: {out}");
        // Over plain HTTP the name is the Host header's: other.test's own server, untouched.
        let out = sh(&*sb, &format!("{curl} -H 'Host: other.test' http://api.test/")).await;
        assert!(out.starts_with(&format!("auth=none at={}", net.b)), "{out}");
        // The secret is nowhere in the sandbox: not in any process's environment or command
        // line, not in its files. What is looked at is brought out and searched here (a
        // search inside would put the secret on its own command line).
        let inside = sb
            .exec_shell(
                "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null; \
                 tar cf - /etc /tmp /root /home /workspace /run /opt /var/tmp 2>/dev/null; true",
            )
            .await?;
        assert!(inside.stdout.len() > 100_000, "the search saw little: {}", inside.stdout.len());
        let holds = |s: &str| inside.stdout.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(holds(&marker), "the search does not see the sandbox's environment");
        assert!(!holds(&secret), "the secret is inside the sandbox");
        // A live change: a new value, resolved at the next request.
        let second = format!("sk-{:032x}", rand::random::<u128>());
        sb.set_network_policy(policy.clone().secret("api-token", &second))
            .await?;
        let out = sh(&*sb, &format!("{curl} https://api.test/")).await;
        assert!(
            out.starts_with(&format!("auth={}", digest(&format!("Bearer {second}")))),
            "after the change: {out}"
        );
        // A fork keeps the rules and their secrets.
        let fork = sb.fork(1, None).await?.pop().expect("one fork")?;
        let out = sh(&*fork, &format!("{curl} https://api.test/")).await;
        fork.kill().await?;
        assert!(
            out.starts_with(&format!("auth={}", digest(&format!("Bearer {second}")))),
            "in the fork: {out}"
        );
        // A rule does not allow its domain: with only the other address allowed, a
        // connection there naming api.test goes nowhere.
        sb.set_network_policy(
            NetworkPolicy::new()
                .deny_out([ALL_TRAFFIC])
                .allow_out([format!("{}/32", net.b)])
                .rule("api.test", rule("api-token"))
                .secret("api-token", &second),
        )
        .await?;
        let out = sh(
            &*sb,
            &format!("{curl} --resolve api.test:443:{} https://api.test/", net.b),
        )
        .await;
        assert!(!out.contains("auth="), "a rule domain the lists do not allow: {out}");
        sb.set_network_policy(policy.clone().secret("api-token", &second))
            .await?;
        // A rule naming a secret that is not set is refused, and the last policy holds.
        let e = sb
            .set_network_policy(policy.clone().rule("other.test", rule("missing")))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.message().contains("\"missing\""), "{e}");
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    sb.kill().await.unwrap();
    result.unwrap();
}

/// A SOCKS5 server (no credentials) that writes each `CONNECT` target to the file it is given
/// and joins it, resolving `api.test` and `other.test` to the addresses it is given.
const SOCKS: &str = r#"
import asyncio, socket, sys
log = open(sys.argv[1], 'a', buffering=1)
names = {'api.test': sys.argv[2], 'other.test': sys.argv[3]}
async def pipe(r, w):
    try:
        while True:
            d = await r.read(65536)
            if not d: break
            w.write(d)
            await w.drain()
    except Exception: pass
    finally:
        try: w.close()
        except Exception: pass
async def handle(r, w):
    try:
        g = await r.readexactly(2)
        await r.readexactly(g[1])
        w.write(b'\x05\x00'); await w.drain()
        h = await r.readexactly(4)
        if h[3] == 1: host = socket.inet_ntoa(await r.readexactly(4))
        elif h[3] == 3: host = (await r.readexactly((await r.readexactly(1))[0])).decode()
        else: return w.close()
        port = int.from_bytes(await r.readexactly(2), 'big')
        log.write('%s:%d\n' % (host, port))
        ur, uw = await asyncio.open_connection(names.get(host, host), port)
        w.write(b'\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00'); await w.drain()
        await asyncio.gather(pipe(r, uw), pipe(ur, w))
    except Exception:
        w.close()
async def main():
    s = await asyncio.start_server(handle, '0.0.0.0', 1080)
    print('ready', flush=True)
    await s.serve_forever()
asyncio.run(main())
"#;

#[tokio::test]
async fn an_egress_proxy_carries_what_the_policy_allows_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let net = Internet::serving(SERVER, &[&cert, &key]);
    let log = dir.path().join("socks.log");
    std::fs::write(&log, "").unwrap();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut socks = std::process::Command::new("ip")
        .args(["netns", "exec", &net.ns, "python3", "-c", SOCKS])
        .arg(&log)
        .args([net.a.to_string(), net.b.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(socks.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let _socks = Killed(socks);
    assert_eq!(ready, "ready\n");
    let rt =
        sandkit_conformance::needs_engine(DockerRuntime::builder().egress_trust(ca).build().await);
    let secret = format!("sk-{:032x}", rand::random::<u128>());
    let policy = NetworkPolicy::new()
        .deny_out([ALL_TRAFFIC])
        .allow_out(["api.test".to_string(), format!("{}/32", net.a)])
        .rule(
            "api.test",
            RequestRule::new().header("Authorization", "Bearer ${e2b.secrets.t}"),
        )
        .secret("t", &secret)
        .egress_proxy(sandkit_core::EgressProxy::new(format!("{}:1080", net.a)));
    let spec = net
        .spec("socks")
        .add_host("api.test", std::net::IpAddr::V4(net.a))
        .network_policy(policy);
    let sb = rt.create(spec).await.unwrap();
    let result = async {
        let curl = "curl --noproxy '*' -sS -m 10";
        // An allowed domain with a rule: the header is set, and the proxy is asked for the
        // name (it resolves it).
        let out = sh(&*sb, &format!("{curl} https://api.test/")).await;
        assert!(
            out.starts_with(&format!(
                "auth={} at={}",
                digest(&format!("Bearer {secret}")),
                net.a
            )),
            "through the proxy: {out}"
        );
        // An allowed address on another port: through the proxy too.
        let out = sh(&*sb, &format!("{curl} http://{}:8080/", net.a)).await;
        assert!(
            out.starts_with(&format!("auth=none at={}", net.a)),
            "port 8080: {out}"
        );
        // What the policy denies never reaches the proxy.
        let out = sh(&*sb, &format!("{curl} http://{}:8080/", net.b)).await;
        assert!(!out.contains("auth="), "denied: {out}");
        let asked = std::fs::read_to_string(&log).unwrap();
        assert!(asked.lines().any(|l| l == "api.test:443"), "{asked}");
        assert!(
            asked.lines().any(|l| l == format!("{}:8080", net.a)),
            "{asked}"
        );
        assert!(
            !asked.contains(&net.b.to_string()),
            "the denied address reached the proxy: {asked}"
        );
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    sb.kill().await.unwrap();
    result.unwrap();
}
