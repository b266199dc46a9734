//! The guard's transparent proxy: HTTP and TLS connections of sandboxes whose policy names
//! domains arrive here (redirected by the rules), are judged by the name they carry and by
//! address, and are joined to their destination — the name's own addresses when a name
//! allowed them, so naming an allowed domain cannot reach any other address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::intercept;
use super::names::{self, Peek};
use super::socks;
use super::{Entry, Guard};

/// How long a connection may take to say its name.
const PEEK_FOR: Duration = Duration::from_secs(10);
/// How long joining the destination may take.
const CONNECT_FOR: Duration = Duration::from_secs(10);
/// Each direction's copy buffer.
const COPY_BUF: usize = 128 << 10;
/// The most bytes read before a name must be known.
const PEEK_MAX: usize = 16 << 10;
/// Connections one sandbox may have through the proxy at once; more are closed at once.
const PER_SANDBOX: usize = 128;
/// Connections through the proxy at once, all sandboxes together: with [`COPY_BUF`] and
/// [`PEEK_MAX`], at most about 150 MiB, under the guard's memory limit (256 MiB), so a flood
/// of connections cannot make the guard die.
const MAX_CONNECTIONS: usize = 512;

/// Where a judged connection goes.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// To the addresses of this allowed name.
    Name(String),
    /// To the address the sandbox asked for.
    Address,
    /// Nowhere.
    Refused,
}

/// The connections the proxy holds, judged again when their sandbox's policy changes.
#[derive(Default)]
pub(crate) struct Live {
    next: AtomicU64,
    /// Connections that ended in an error, for the log.
    failed: AtomicU64,
    conns: Mutex<HashMap<u64, Conn>>,
}

struct Conn {
    from: Ipv4Addr,
    name: Option<String>,
    dst: IpAddr,
    verdict: Verdict,
    abort: tokio::task::AbortHandle,
}

impl Live {
    /// Connections open through the proxy now, and those that ended in an error so far.
    pub(crate) fn counts(&self) -> (usize, u64) {
        (
            self.conns.lock().expect("conns").len(),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Closes the connections of the sandbox at `from` that its policy no longer allows as
    /// they were allowed.
    pub(crate) fn rejudge(&self, guard: &Guard, from: Ipv4Addr) {
        let entry = guard.by_ip(from);
        let conns = self.conns.lock().expect("conns");
        for c in conns.values().filter(|c| c.from == from) {
            let now = judge(entry.as_ref(), c.name.as_deref(), c.dst);
            if now != c.verdict {
                c.abort.abort();
            }
        }
    }
}

/// The verdict on a connection from the sandbox of `entry` to `dst` naming `name`.
fn judge(entry: Option<&Entry>, name: Option<&str>, dst: IpAddr) -> Verdict {
    let Some(entry) = entry else {
        return Verdict::Refused;
    };
    let Ok(rules) = entry.policy.lists() else {
        return Verdict::Refused;
    };
    if let Some(n) = name {
        let by_name = rules
            .allow
            .iter()
            .any(|d| matches!(d, sandkit_core::Destination::Domain(_)) && d.matches(dst, Some(n)));
        if by_name {
            return Verdict::Name(n.to_string());
        }
    }
    if rules.allows(dst, None) {
        Verdict::Address
    } else {
        Verdict::Refused
    }
}

/// Whether the proxy may join a connection of `entry`'s sandbox to `addr`: never loopback,
/// never into another network of the engine (other containers); the host itself, link-local
/// and metadata addresses only when the policy allows them; and, when `wild_dns` (the address
/// came from DNS for a name only a wildcard allowed, so whoever answers that DNS chose it), a
/// private address only when the policy names that address. Mapped IPv6 addresses are judged
/// as the IPv4 addresses they are.
fn reachable(guard: &Guard, entry: &Entry, addr: IpAddr, wild_dns: bool) -> bool {
    let addr = addr.to_canonical();
    if addr.is_loopback() || addr.is_unspecified() || addr.is_multicast() {
        return false;
    }
    if matches!(addr, IpAddr::V4(v4) if v4.is_broadcast()) {
        return false;
    }
    let allowed = |exact: bool| {
        entry.policy.lists().is_ok_and(|r| {
            r.allow.iter().any(|d| {
                matches!(d, sandkit_core::Destination::Cidr(c)
                    if c.contains(addr) && (!exact || c.prefix == if addr.is_ipv4() { 32 } else { 128 }))
            })
        })
    };
    // Link-local only by the switch; the other metadata services by the switch or by their
    // own address written out (a range that happens to cover one, `0.0.0.0/0` above all,
    // does not open it).
    if super::is_link_local(addr) && !entry.policy.allow_link_local {
        return false;
    }
    if super::is_metadata(addr) && !entry.policy.allow_link_local && !allowed(true) {
        return false;
    }
    if wild_dns && super::is_private(addr) && !allowed(false) {
        return false;
    }
    if guard
        .engine_subnets
        .lock()
        .expect("subnets")
        .iter()
        .any(|c| c.contains(addr))
    {
        return false;
    }
    // An address this host can bind is one of its own.
    let local = std::net::UdpSocket::bind(SocketAddr::new(addr, 0)).is_ok();
    !local || entry.policy.allow_host
}

/// The connections open through the proxy, per sandbox address.
#[derive(Default)]
struct Open(Mutex<HashMap<IpAddr, usize>>);

impl Open {
    /// Counts a connection from `from`, unless that sandbox or the proxy is at its cap.
    fn admit(self: &Arc<Self>, from: IpAddr) -> Option<Admitted> {
        let mut open = self.0.lock().expect("open");
        let total: usize = open.values().sum();
        if open.get(&from).copied().unwrap_or(0) >= PER_SANDBOX || total >= MAX_CONNECTIONS {
            return None;
        }
        *open.entry(from).or_default() += 1;
        Some(Admitted(self.clone(), from))
    }
}

/// One counted connection; uncounted when dropped.
struct Admitted(Arc<Open>, IpAddr);

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock().expect("open");
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

pub(crate) async fn run(listener: TcpListener, guard: Arc<Guard>) {
    let open = Arc::new(Open::default());
    let mut refused: u64 = 0;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(admitted) = open.admit(peer.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                eprintln!(
                    "sandkit-agent netguard: {peer}: too many connections through the proxy \
                     ({PER_SANDBOX} a sandbox, {MAX_CONNECTIONS} in all); closed {refused} so far"
                );
            }
            continue;
        };
        let g = guard.clone();
        let id = guard.live.next.fetch_add(1, Ordering::Relaxed);
        // Detached: each connection ends on its own (or when a new policy aborts it).
        tokio::spawn(async move {
            let _admitted = admitted;
            let result = handle(stream, peer, &g, id).await;
            g.live.conns.lock().expect("conns").remove(&id);
            if let Err(e) = result {
                // A sandbox decides how many connections fail: the log shows the first ones
                // and then fewer and fewer, so that it cannot fill the host's disk.
                let n = g.live.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= 100 || n.is_power_of_two() {
                    eprintln!("sandkit-agent netguard: {peer}: {e} ({n} failed so far)");
                }
            }
        });
    }
}

async fn handle(
    mut inbound: TcpStream,
    peer: SocketAddr,
    guard: &Arc<Guard>,
    id: u64,
) -> Result<(), String> {
    let IpAddr::V4(from) = peer.ip() else {
        return Err("not an IPv4 peer".into());
    };
    let dst = original_dst(&inbound).map_err(|e| format!("no original destination: {e}"))?;
    // Read until the connection names its server (or clearly names none). Only HTTP and TLS
    // ports carry names; on others (through an egress proxy) the server may speak first.
    let mut buf = Vec::with_capacity(4096);
    let named_port = matches!(dst.port(), 80 | 443);
    let name = tokio::time::timeout(PEEK_FOR, async {
        if !named_port {
            return Ok(None);
        }
        loop {
            match names::peek(&buf) {
                Peek::Name(n) => return Ok(Some(n)),
                Peek::NoName => return Ok(None),
                Peek::More if buf.len() >= PEEK_MAX => return Ok(None),
                Peek::More => {}
            }
            let mut chunk = [0u8; 4096];
            let n = inbound.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before naming its server".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| "named no server in time".to_string())??;

    let entry = guard.by_ip(from);
    let verdict = judge(entry.as_ref(), name.as_deref(), IpAddr::V4(*dst.ip()));
    let Some(entry) = entry else {
        return Err("no policy for this sandbox".into());
    };
    if verdict == Verdict::Refused {
        return Err(format!(
            "refused {from} -> {dst} ({})",
            name.as_deref().unwrap_or("no name")
        ));
    }
    // A name with request rules is served by the guard ([`intercept`]), and always joined to
    // the name's own addresses: a rule's headers never go where the sandbox pointed.
    let intercept = name
        .as_deref()
        .is_some_and(|n| entry.policy.has_rules_for(n));
    let lookup = match &verdict {
        Verdict::Name(n) => Some(n.clone()),
        _ if intercept => name.clone(),
        _ => None,
    };
    // Joined by a name only rules named (the address was allowed, not the name): the
    // name's addresses must be allowed by the lists too.
    let by_lists = intercept && verdict == Verdict::Address;
    let mut outbound =
        tokio::time::timeout(CONNECT_FOR, join(guard, &entry, dst, &lookup, by_lists))
            .await
            .map_err(|_| format!("{dst} ({lookup:?}) did not answer in time"))??;
    let _ = inbound.set_nodelay(true);
    // Register before joining, so a policy change from now on closes it.
    let joined = match (intercept, lookup) {
        (true, Some(n)) => tokio::spawn(intercept::serve(
            guard.authority.clone(),
            {
                let g = guard.clone();
                Arc::new(move || g.by_ip(from).map(|e| e.policy))
            },
            n,
            dst.port(),
            intercept::Rewind::new(buf, inbound),
            outbound,
        )),
        _ => {
            outbound.write_all(&buf).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                // Large buffers: with tokio's 8 KiB ones a 64 MiB download took 1.56 times as
                // long as without the proxy (the README's benchmark has the figure now);
                // bounded with the connection caps above.
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut inbound,
                    &mut outbound,
                    COPY_BUF,
                    COPY_BUF,
                )
                .await;
                Ok(())
            })
        }
    };
    guard.live.conns.lock().expect("conns").insert(
        id,
        Conn {
            from,
            name,
            dst: IpAddr::V4(*dst.ip()),
            verdict: verdict.clone(),
            abort: joined.abort_handle(),
        },
    );
    // A change that landed between the judgement and the registration is caught here.
    if judge(
        guard.by_ip(from).as_ref(),
        guard_name(guard, id).as_deref(),
        IpAddr::V4(*dst.ip()),
    ) != verdict
    {
        joined.abort();
    }
    match joined.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// The connection on for a sandbox's connection to `dst`, by `lookup` (the name whose own
/// addresses it goes to) or else by address: through the policy's egress proxy when it has
/// one (a name the lists allowed is sent as a name, resolved by the proxy), or straight to an
/// address the guard may reach. With `by_lists`, the name's addresses must be ones the
/// policy's lists allow.
async fn join(
    guard: &Guard,
    entry: &Entry,
    dst: SocketAddrV4,
    lookup: &Option<String>,
    by_lists: bool,
) -> Result<socks::Stream, String> {
    if let Some(proxy) = &entry.policy.egress_proxy {
        let dest = match lookup {
            Some(n) if !by_lists => socks::Dest::Name(n.clone(), dst.port()),
            None if reachable(guard, entry, IpAddr::V4(*dst.ip()), false) => {
                socks::Dest::Addr(SocketAddr::V4(dst))
            }
            None => return Err(format!("{dst} is not reachable from the guard")),
            Some(_) => socks::Dest::Addr(resolved(guard, entry, dst, lookup, by_lists).await?),
        };
        return socks::connect(proxy, &dest).await;
    }
    let target = resolved(guard, entry, dst, lookup, by_lists).await?;
    let outbound = TcpStream::connect(target)
        .await
        .map_err(|e| format!("cannot reach {target}: {e}"))?;
    let _ = outbound.set_nodelay(true);
    Ok(Box::new(outbound))
}

/// The address to join: `dst`, or the first of `lookup`'s own addresses the guard may reach
/// (and, with `by_lists`, the policy's lists allow).
async fn resolved(
    guard: &Guard,
    entry: &Entry,
    dst: SocketAddrV4,
    lookup: &Option<String>,
    by_lists: bool,
) -> Result<SocketAddr, String> {
    let targets: Vec<SocketAddr> = match lookup {
        None => vec![SocketAddr::V4(dst)],
        Some(n) => names::resolve(n, &entry.hosts)
            .await
            .into_iter()
            .map(|ip| SocketAddr::new(ip, dst.port()))
            .collect(),
    };
    let wild = lookup
        .as_ref()
        .is_some_and(|n| wild_dns(entry, &Verdict::Name(n.clone())));
    targets
        .into_iter()
        .filter(|t| !by_lists || entry.policy.allows(t.ip(), None))
        .find(|t| reachable(guard, entry, t.ip(), wild))
        .ok_or_else(|| format!("no reachable address for {dst} ({lookup:?})"))
}

/// Whether a verdict's addresses come from DNS for a name that only a wildcard of the policy
/// allowed (not written out in `allow_out`, not one of the sandbox's fixed hosts).
fn wild_dns(entry: &Entry, verdict: &Verdict) -> bool {
    let Verdict::Name(n) = verdict else {
        return false;
    };
    let fixed = entry.hosts.keys().any(|h| h.eq_ignore_ascii_case(n));
    let written = entry.policy.lists().is_ok_and(|r| {
        r.allow
            .iter()
            .any(|d| matches!(d, sandkit_core::Destination::Domain(x) if x == n))
    });
    !fixed && !written
}

fn guard_name(guard: &Guard, id: u64) -> Option<String> {
    guard
        .live
        .conns
        .lock()
        .expect("conns")
        .get(&id)
        .and_then(|c| c.name.clone())
}

/// The destination a redirected connection was sent to (`SO_ORIGINAL_DST`).
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, a plain C struct.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandkit_core::{NetworkPolicy, ALL_TRAFFIC};

    fn entry(policy: NetworkPolicy) -> Entry {
        Entry {
            id: "a".into(),
            bridge: "br-x".into(),
            ip: "172.20.0.2".parse().unwrap(),
            mac: None,
            policy,
            hosts: Default::default(),
            secrets: Default::default(),
        }
    }

    #[test]
    fn judges_by_name_then_address() {
        let e = entry(
            NetworkPolicy::new()
                .deny_out([ALL_TRAFFIC])
                .allow_out(["*.allowed.test", "10.9.0.0/16"]),
        );
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(
            judge(Some(&e), Some("a.allowed.test"), ip),
            Verdict::Name("a.allowed.test".into())
        );
        assert_eq!(judge(Some(&e), Some("denied.test"), ip), Verdict::Refused);
        assert_eq!(judge(Some(&e), None, ip), Verdict::Refused);
        assert_eq!(
            judge(Some(&e), Some("denied.test"), "10.9.3.3".parse().unwrap()),
            Verdict::Address
        );
        assert_eq!(judge(None, Some("a.allowed.test"), ip), Verdict::Refused);
    }

    #[test]
    fn connections_are_capped_per_sandbox_and_in_all() {
        let open = Arc::new(Open::default());
        let a: IpAddr = "172.20.0.2".parse().unwrap();
        let mut held: Vec<Admitted> = (0..PER_SANDBOX).map(|_| open.admit(a).unwrap()).collect();
        assert!(open.admit(a).is_none(), "past the sandbox's cap");
        held.pop();
        held.push(open.admit(a).expect("a slot freed"));
        let mut n = 3u8;
        while held.len() < MAX_CONNECTIONS {
            let ip = IpAddr::from([172, 20, 1, n]);
            while held.len() < MAX_CONNECTIONS {
                match open.admit(ip) {
                    Some(x) => held.push(x),
                    None => break,
                }
            }
            n += 1;
        }
        assert!(
            open.admit("172.20.9.9".parse().unwrap()).is_none(),
            "past the cap in all"
        );
        drop(held);
        assert!(open.0.lock().unwrap().is_empty());
    }

    fn guard() -> Guard {
        Guard {
            entries: Default::default(),
            state: std::env::temp_dir(),
            table: "t".into(),
            proxy_port: 0,
            dns_port: 0,
            live: Live::default(),
            authority: Arc::new(intercept::Authority::ephemeral()),
            engine_subnets: Mutex::new(vec![sandkit_core::Cidr::parse("172.20.0.0/16").unwrap()]),
            busy: Mutex::new(std::time::Instant::now()),
            writing: Mutex::new(()),
        }
    }

    #[test]
    fn addresses_a_name_leads_to_are_judged_whatever_their_spelling() {
        let g = guard();
        let open = entry(
            NetworkPolicy::new()
                .deny_out([ALL_TRAFFIC])
                .allow_out(["*"]),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for refused in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "::ffff:168.63.129.16",
            "fd00:ec2::254",
            "fe80::1",
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::1",
            "172.20.0.9",
            "::ffff:172.20.0.9",
            "0.0.0.0",
        ] {
            assert!(
                !reachable(&g, &open, ip(refused), true),
                "{refused} by name"
            );
            assert!(
                !reachable(&g, &open, ip(refused), false),
                "{refused} by address"
            );
        }
        // A name whose DNS answers with a private address does not lead there...
        for private in [
            "10.0.0.5",
            "192.168.1.1",
            "100.64.0.1",
            "::ffff:10.0.0.5",
            "fd12::1",
        ] {
            assert!(!reachable(&g, &open, ip(private), true), "{private}");
            // ...though the sandbox may connect to it by address (the kernel judges that).
            assert!(reachable(&g, &open, ip(private), false), "{private}");
        }
        // Named by address in the policy, they open.
        let named = entry(NetworkPolicy::new().deny_out([ALL_TRAFFIC]).allow_out([
            "*",
            "10.0.0.0/8",
            "100.100.100.200",
        ]));
        assert!(reachable(&g, &named, ip("10.0.0.5"), true));
        assert!(reachable(&g, &named, ip("100.100.100.200"), true));
        // A range that covers them opens neither link-local nor a metadata service.
        let everything = entry(NetworkPolicy::new().allow_out(["0.0.0.0/0", "100.64.0.0/10"]));
        for addr in [
            "169.254.169.254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                !reachable(&g, &everything, ip(addr), false),
                "{addr} through a range"
            );
        }
        // Link-local and metadata when the policy allows link-local.
        let link = entry(NetworkPolicy::new().allow_link_local(true));
        assert!(reachable(&g, &link, ip("169.254.169.254"), false));
        assert!(reachable(&g, &open, ip("93.184.216.34"), true));
        // Whose DNS chose the address: a wildcard's, not a written name's or a fixed host's.
        let mut e = entry(
            NetworkPolicy::new()
                .deny_out([ALL_TRAFFIC])
                .allow_out(["*.wild.test", "exact.test"]),
        );
        e.hosts.insert("fixed.wild.test".into(), ip("10.0.0.7"));
        let v = |n: &str| Verdict::Name(n.into());
        assert!(wild_dns(&e, &v("a.wild.test")));
        assert!(!wild_dns(&e, &v("exact.test")));
        assert!(!wild_dns(&e, &v("fixed.wild.test")));
        assert!(!wild_dns(&e, &Verdict::Address));
    }
}
