//! The guard's resolver for sandboxes whose policy names domains. Their DNS (UDP and TCP port
//! 53, to any address) is redirected here by the rules, so DNS cannot carry data out: a query
//! is forwarded only when every name it asks about is one the policy allows, with a fresh random
//! id, to the resolvers of the guard's host (never to a server the sandbox chose); any other
//! query is answered `REFUSED` here and reaches no resolver. Messages are read and written with
//! `hickory-proto`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Entry, Guard};

/// How long one upstream resolver may take to answer.
const UPSTREAM_FOR: Duration = Duration::from_secs(2);
/// Queries of one sandbox under way at once; more are dropped (a client asks again).
const PER_SANDBOX: usize = 32;
/// The largest message over TCP.
const MAX_TCP: usize = 16 << 10;

/// What to do with a sandbox's query.
#[derive(Debug, PartialEq)]
pub(crate) enum Judged {
    /// Every name it asks about is allowed: forward it.
    Forward(Message),
    /// Answer this instead (`REFUSED`, or `FORMERR` for what does not parse).
    Answer(Vec<u8>),
}

/// Judges a query from the sandbox of `entry` (`None`: not a sandbox the guard holds).
pub(crate) fn judge(entry: Option<&Entry>, packet: &[u8]) -> Option<Judged> {
    let Ok(query) = Message::from_vec(packet) else {
        // Not DNS: an answer needs an id, which a message too short to have one lacks.
        let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
        let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
        return Some(Judged::Answer(reply.to_vec().ok()?));
    };
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let allowed = |q: &Query| {
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        entry.is_some_and(|e| {
            e.policy.lists().is_ok_and(|r| {
                r.allow.iter().any(|d| {
                    matches!(d, sandkit_core::Destination::Domain(_))
                        && d.matches(IpAddr::V4(Ipv4Addr::UNSPECIFIED), Some(&name))
                })
            })
        })
    };
    let ok = query.metadata.op_code == OpCode::Query
        && !query.queries.is_empty()
        && query.queries.iter().all(allowed);
    if ok {
        return Some(Judged::Forward(query));
    }
    let mut reply = Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::Refused,
    );
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.add_queries(query.queries.iter().cloned());
    Some(Judged::Answer(reply.to_vec().ok()?))
}

/// The resolvers of the guard's host (`/etc/resolv.conf`; the guard runs on the host's
/// network).
fn upstreams() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver")?.trim().parse().ok())
        .collect()
}

/// Sends `query` upstream under a fresh random id and returns the answer under the id the
/// sandbox chose.
async fn forward(mut query: Message, tcp: bool) -> Option<Vec<u8>> {
    let theirs = query.metadata.id;
    for server in upstreams() {
        let ours: u16 = rand::random();
        query.metadata.id = ours;
        let packet = query.to_vec().ok()?;
        let asked = async {
            if tcp {
                ask_tcp(server, &packet).await
            } else {
                ask_udp(server, &packet, ours).await
            }
        };
        if let Ok(Ok(answer)) = tokio::time::timeout(UPSTREAM_FOR, asked).await {
            if let Ok(mut answer) = Message::from_vec(&answer) {
                if answer.metadata.id == ours {
                    answer.metadata.id = theirs;
                    return answer.to_vec().ok();
                }
            }
        }
    }
    None
}

async fn ask_udp(server: IpAddr, packet: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect((server, 53)).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        // An answer to another id is not ours (a spoofed or late one): keep waiting.
        if n >= 2 && buf[..2] == id.to_be_bytes() {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(server: IpAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect((server, 53)).await?;
    s.write_all(&(packet.len() as u16).to_be_bytes()).await?;
    s.write_all(packet).await?;
    read_framed(&mut s).await
}

async fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    if len > MAX_TCP {
        return Err(std::io::Error::other("message too large"));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The addresses a DNS answer gives for A records (the guard's own look-ups).
pub(crate) fn a_records(answer: &[u8]) -> Vec<IpAddr> {
    let Ok(m) = Message::from_vec(answer) else {
        return Vec::new();
    };
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// A query for the A records of `name`, with a random id.
pub(crate) fn a_query(name: &str) -> Option<(u16, Vec<u8>)> {
    let name = Name::from_ascii(name).ok()?;
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, RecordType::A));
    Some((m.metadata.id, m.to_vec().ok()?))
}

/// Queries under way, per sandbox.
#[derive(Default)]
struct Inflight(std::sync::Mutex<std::collections::HashMap<Ipv4Addr, Arc<AtomicUsize>>>);

impl Inflight {
    /// A slot for a query of `from`, if it has one free.
    fn take(&self, from: Ipv4Addr) -> Option<Slot> {
        let n = self
            .0
            .lock()
            .expect("inflight")
            .entry(from)
            .or_default()
            .clone();
        if n.fetch_add(1, Ordering::SeqCst) >= PER_SANDBOX {
            n.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(n))
    }
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves redirected DNS on `udp` and `tcp` (one port).
pub(crate) async fn run(udp: UdpSocket, tcp: TcpListener, guard: Arc<Guard>) {
    let udp = Arc::new(udp);
    let inflight = Arc::new(Inflight::default());
    let tcp_guard = guard.clone();
    let tcp_inflight = inflight.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let IpAddr::V4(from) = peer.ip() else {
                continue;
            };
            let Some(slot) = tcp_inflight.take(from) else {
                continue;
            };
            let g = tcp_guard.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tokio::time::timeout(Duration::from_secs(10), serve_tcp(stream, from, &g))
                    .await;
            });
        }
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
            continue;
        };
        let IpAddr::V4(from) = peer.ip() else {
            continue;
        };
        let Some(slot) = inflight.take(from) else {
            continue;
        };
        let judged = judge(guard.by_ip(from).as_ref(), &buf[..n]);
        let udp = udp.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let reply = match judged {
                Some(Judged::Answer(a)) => Some(a),
                Some(Judged::Forward(q)) => forward(q, false).await,
                None => None,
            };
            if let Some(r) = reply {
                let _ = udp.send_to(&r, peer).await;
            }
        });
    }
}

async fn serve_tcp(mut stream: TcpStream, from: Ipv4Addr, guard: &Guard) -> std::io::Result<()> {
    loop {
        let packet = read_framed(&mut stream).await?;
        let reply = match judge(guard.by_ip(from).as_ref(), &packet) {
            Some(Judged::Answer(a)) => a,
            Some(Judged::Forward(q)) => match forward(q, true).await {
                Some(a) => a,
                None => return Ok(()),
            },
            None => return Ok(()),
        };
        stream
            .write_all(&(reply.len() as u16).to_be_bytes())
            .await?;
        stream.write_all(&reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandkit_core::{NetworkPolicy, ALL_TRAFFIC};

    fn entry() -> Entry {
        Entry {
            id: "a".into(),
            bridge: "br-x".into(),
            ip: "172.20.0.2".parse().unwrap(),
            mac: None,
            policy: NetworkPolicy::new()
                .deny_out([ALL_TRAFFIC])
                .allow_out(["pypi.org", "*.allowed.test"]),
            hosts: Default::default(),
            secrets: Default::default(),
        }
    }

    fn rcode(answer: &[u8]) -> ResponseCode {
        Message::from_vec(answer).unwrap().metadata.response_code
    }

    #[test]
    fn only_allowed_names_are_forwarded() {
        let e = entry();
        for name in ["pypi.org", "files.allowed.test.", "PyPI.org"] {
            let (_, q) = a_query(name).unwrap();
            assert!(
                matches!(judge(Some(&e), &q), Some(Judged::Forward(_))),
                "{name}"
            );
        }
        for name in [
            "c2VjcmV0.exfil.attacker.test",
            "allowed.test",
            "pypi.org.attacker.test",
        ] {
            let (id, q) = a_query(name).unwrap();
            let Some(Judged::Answer(a)) = judge(Some(&e), &q) else {
                panic!("{name} forwarded");
            };
            assert_eq!(rcode(&a), ResponseCode::Refused, "{name}");
            assert_eq!(Message::from_vec(&a).unwrap().metadata.id, id);
        }
        // A sandbox the guard does not hold gets nothing forwarded.
        let (_, q) = a_query("pypi.org").unwrap();
        assert!(matches!(judge(None, &q), Some(Judged::Answer(_))));
        // Not DNS at all.
        let Some(Judged::Answer(a)) = judge(Some(&e), b"\x12\x34garbage") else {
            panic!("garbage forwarded");
        };
        assert_eq!(rcode(&a), ResponseCode::FormErr);
        assert_eq!(judge(Some(&e), b"x"), None);
    }

    #[test]
    fn query_ids_are_random_and_answers_parse() {
        let ids: std::collections::HashSet<u16> =
            (0..64).map(|_| a_query("pypi.org").unwrap().0).collect();
        assert!(ids.len() > 50, "ids repeat: {ids:?}");
        let (id, q) = a_query("pypi.org").unwrap();
        let mut answer = Message::from_vec(&q).unwrap();
        answer.metadata.id = id;
        answer.metadata.message_type = MessageType::Response;
        answer.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("pypi.org.").unwrap(),
            60,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(151, 101, 0, 223))),
        ));
        assert_eq!(
            a_records(&answer.to_vec().unwrap()),
            vec![IpAddr::V4(Ipv4Addr::new(151, 101, 0, 223))]
        );
    }
}
