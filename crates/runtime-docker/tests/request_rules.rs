//! Request rules on Docker, performed: a sandbox's HTTPS and HTTP requests to a domain with
//! rules reach a server of the test's own (in a network namespace it makes, with its own CA)
//! carrying a header whose value comes from a secret, and the sandbox never holds the secret.
//!
//! The server answers every request with a digest of the `Authorization` header it got (never
//! the value), the address it was reached at, and the `Host` asked for. The runtime tells the
//! guard to trust the test's CA for the servers behind rules (`egress_trust`).

use sandkit_core::{
    ErrorKind, NetworkPolicy, RequestRule, Runtime, Sandbox, SandboxExt,
    ALL_TRAFFIC,
};
use sandkit_docker::DockerRuntime;

mod internet;
use internet::Internet;

/// HTTP on 80 and HTTPS on 443, answering `auth=<digest or none> at=<address> host=<Host>`.
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
tls = ThreadingHTTPServer(('0.0.0.0', 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
for s in (plain, tls):
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
    let rt = sandkit_conformance::needs_engine(
        DockerRuntime::builder().egress_trust(ca).build().await,
    );
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
