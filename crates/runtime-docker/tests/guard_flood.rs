//! The network guard flooded and killed (in a test binary of its own: the other network tests
//! rely on the guard running). The egress issue's hole 3: a sandbox opens connections through
//! the guard's proxy as fast as it can while it tries, every 0.2 s, the host's port and a denied
//! address; the guard is killed in the middle and comes back. Nothing gets through at any
//! moment, and the guard works again afterwards.
//!
//! Needs root (a network namespace), Docker and the agent binary, like `network.rs`.

use std::time::Duration;

use sandkit_core::{
    CommandSpec, FileStoreExt, NetworkPolicy, Process, ProcessEvent, Runtime, ALL_TRAFFIC,
};

mod internet;
use internet::{gateway, host_service, probe, reached, setup};

/// Tries each `ip:port` target every 0.2 s until the time is up; one line per attempt.
const LOOP: &str = r#"
import socket, sys, time
end, targets = time.time() + float(sys.argv[1]), [t.rsplit(':', 1) for t in sys.argv[2:]]
with open('/tmp/loop.log', 'a', buffering=1) as out:
    while time.time() < end:
        for ip, port in targets:
            try:
                s = socket.create_connection((ip, int(port)), timeout=0.5)
                s.sendall(b'ping\n')
                got = s.recv(100)
                out.write(('reached %s:%s %r\n' % (ip, port, got)) if got else 'closed\n')
                s.close()
            except Exception as e:
                out.write('blocked %s\n' % type(e).__name__)
        time.sleep(0.2)
"#;

/// Keeps up to N connections open to `ip:80` that never say a name, reopening those closed.
const FLOOD: &str = r#"
import socket, sys, time, selectors
end, ip, n = time.time() + float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sel, opened = selectors.DefaultSelector(), 0
def open_one():
    global opened
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect_ex((ip, 80))
        sel.register(s, selectors.EVENT_READ)
        opened += 1
    except Exception:
        s.close()
while time.time() < end:
    while len(sel.get_map()) < n and time.time() < end:
        open_one()
    for key, _ in sel.select(timeout=0.2):
        sel.unregister(key.fileobj)
        key.fileobj.close()
print(opened, flush=True)
"#;

/// What a process prints, once it has ended.
async fn stdout_of(mut p: Process) -> String {
    let mut out = Vec::new();
    while let Some(ev) = p.next_event().await {
        if let Ok(ProcessEvent::Stdout(b)) = ev {
            out.extend_from_slice(&b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_flooded_or_killed_guard_lets_nothing_through() {
    let (rt, net) = setup("flood").await;
    let host_port = host_service().await;
    let policy = || {
        NetworkPolicy::new()
            .deny_out([ALL_TRAFFIC])
            .allow_out(["allowed.test"])
    };
    let sb = rt
        .create(net.spec("flood").network_policy(policy()))
        .await
        .unwrap();
    let gw = gateway(&*sb).await;
    sb.files().write_str("/tmp/loop.py", LOOP).await.unwrap();
    sb.files().write_str("/tmp/flood.py", FLOOD).await.unwrap();
    let secs = 30;
    let looping = sb
        .spawn(CommandSpec::program(
            "python3",
            [
                "/tmp/loop.py".to_string(),
                secs.to_string(),
                format!("{gw}:{host_port}"),
                format!("{}:8080", net.b),
            ],
        ))
        .await
        .unwrap();
    let flooding = sb
        .spawn(CommandSpec::program(
            "python3",
            [
                "/tmp/flood.py".to_string(),
                (secs - 5).to_string(),
                net.a.to_string(),
                "1000".to_string(),
            ],
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let killed = tokio::process::Command::new("docker")
        .args(["kill", "sandkit-netguard"])
        .output()
        .await
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The next change brings the guard back; it reloads what it held.
    let other = rt
        .create(net.spec("flood").network_policy(policy()))
        .await
        .unwrap();
    let flood = stdout_of(flooding).await;
    let _ = stdout_of(looping).await;
    let opened: u64 = flood.trim().parse().unwrap_or(0);
    let log = sb.files().read_to_string("/tmp/loop.log").await.unwrap();
    let attempts = log.lines().count();
    let through: Vec<&str> = log.lines().filter(|l| l.starts_with("reached")).collect();
    // Afterwards the guard judges by name again, for the old sandbox and the new one.
    let after_old = probe(&*sb, "http", net.a, 80, "allowed.test").await;
    let after_new = probe(&*other, "http", net.a, 80, "allowed.test").await;
    let denied_new = probe(&*other, "tcp", net.b, 8080, "").await;
    sb.kill().await.unwrap();
    other.kill().await.unwrap();
    eprintln!(
        "flood: {opened} connections opened, {attempts} attempts at the host and a denied address"
    );
    assert!(through.is_empty(), "got through: {through:?}");
    // Two targets a round, a round every 1.2 s at worst (two 0.5 s timeouts and a pause).
    assert!(attempts >= 40, "the loop tried only {attempts} times");
    assert!(opened >= 1000, "the flood opened only {opened} connections");
    assert!(
        reached(&after_old, net.a, 80),
        "the old sandbox afterwards: {after_old}"
    );
    assert!(
        reached(&after_new, net.a, 80),
        "a new sandbox afterwards: {after_new}"
    );
    assert!(denied_new.starts_with("blocked"), "{denied_new}");
}
