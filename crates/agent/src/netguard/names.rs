//! Names: the server name a connection carries (TLS SNI, HTTP `Host`), and resolving a name
//! to addresses without NSS (the agent is static): fixed hosts, `/etc/hosts`, then DNS over
//! UDP to the servers in `/etc/resolv.conf`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What the first bytes of a connection tell about its server name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peek {
    /// More bytes are needed to tell.
    More,
    /// The connection names this server (lower case, no port, no trailing dot).
    Name(String),
    /// The connection carries no name we can read.
    NoName,
}

/// Reads the server name from the start of a connection: a TLS ClientHello's SNI, or the
/// `Host` header of an HTTP/1 request.
pub(crate) fn peek(buf: &[u8]) -> Peek {
    match buf.first() {
        None => Peek::More,
        Some(0x16) => sni(buf),
        Some(_) => http_host(buf),
    }
}

fn clean(name: &str) -> Peek {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    // An address is not a name: `Host: [::ffff:169.254.169.254]` must not pass as a name an
    // allowed wildcard matches. Such a connection is judged by where it was sent.
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() || literal.parse::<IpAddr>().is_ok() {
        Peek::NoName
    } else {
        Peek::Name(name)
    }
}

fn http_host(buf: &[u8]) -> Peek {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let head = match end {
        Some(e) => &buf[..e],
        None if buf.len() >= 16 * 1024 => return Peek::NoName,
        None => {
            // Not HTTP at all: no need to wait for more.
            let first = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
            if first > 10 || !buf[..first].iter().all(|b| b.is_ascii_uppercase()) {
                return Peek::NoName;
            }
            return Peek::More;
        }
    };
    let Ok(text) = std::str::from_utf8(head) else {
        return Peek::NoName;
    };
    for line in text.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("host") {
                let v = v.trim();
                let host = if let Some(rest) = v.strip_prefix('[') {
                    rest.split(']').next().unwrap_or("")
                } else {
                    v.rsplit_once(':').map_or(v, |(h, p)| {
                        if p.bytes().all(|b| b.is_ascii_digit()) {
                            h
                        } else {
                            v
                        }
                    })
                };
                return clean(host);
            }
        }
    }
    Peek::NoName
}

/// The SNI of a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3), possibly split across
/// records.
fn sni(buf: &[u8]) -> Peek {
    // Gather the handshake bytes from as many records as have arrived.
    let mut hs = Vec::new();
    let mut at = 0;
    while at + 5 <= buf.len() {
        if buf[at] != 0x16 {
            return Peek::NoName;
        }
        let len = u16::from_be_bytes([buf[at + 3], buf[at + 4]]) as usize;
        let end = (at + 5 + len).min(buf.len());
        hs.extend_from_slice(&buf[at + 5..end]);
        at += 5 + len;
    }
    if hs.len() < 4 {
        return if buf.len() > 16 * 1024 {
            Peek::NoName
        } else {
            Peek::More
        };
    }
    if hs[0] != 0x01 {
        return Peek::NoName;
    }
    let body_len = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
    if hs.len() < 4 + body_len {
        return if buf.len() > 64 * 1024 {
            Peek::NoName
        } else {
            Peek::More
        };
    }
    let b = &hs[4..4 + body_len];
    let mut p = 2 + 32; // version, random
    let skip = |p: &mut usize, width: usize| -> Option<()> {
        let n = match width {
            1 => *b.get(*p)? as usize,
            _ => u16::from_be_bytes([*b.get(*p)?, *b.get(*p + 1)?]) as usize,
        };
        *p += width + n;
        (*p <= b.len()).then_some(())
    };
    let found = (|| {
        skip(&mut p, 1)?; // session id
        skip(&mut p, 2)?; // cipher suites
        skip(&mut p, 1)?; // compression methods
        let ext_len = u16::from_be_bytes([*b.get(p)?, *b.get(p + 1)?]) as usize;
        p += 2;
        let end = (p + ext_len).min(b.len());
        while p + 4 <= end {
            let kind = u16::from_be_bytes([b[p], b[p + 1]]);
            let len = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
            let data = b.get(p + 4..p + 4 + len)?;
            if kind == 0 {
                // server_name_list: u16 length, then (type u8, u16 length, name).
                let mut q = 2;
                while q + 3 <= data.len() {
                    let t = data[q];
                    let n = u16::from_be_bytes([data[q + 1], data[q + 2]]) as usize;
                    let name = data.get(q + 3..q + 3 + n)?;
                    if t == 0 {
                        return Some(Some(String::from_utf8_lossy(name).into_owned()));
                    }
                    q += 3 + n;
                }
                return Some(None);
            }
            p += 4 + len;
        }
        Some(None)
    })();
    match found {
        Some(Some(name)) => clean(&name),
        _ => Peek::NoName,
    }
}

/// Resolves `name` to IPv4 addresses: `fixed` first (the sandbox's hosts entries, set by whoever
/// made it), then `/etc/hosts`, then DNS.
pub(crate) async fn resolve(name: &str, fixed: &BTreeMap<String, IpAddr>) -> Vec<IpAddr> {
    if let Some(ip) = fixed
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
    {
        return vec![ip];
    }
    if let Ok(hosts) = std::fs::read_to_string("/etc/hosts") {
        let found: Vec<IpAddr> = hosts
            .lines()
            .filter_map(|l| {
                let l = l.split('#').next()?;
                let mut words = l.split_whitespace();
                let ip: IpAddr = words.next()?.parse().ok()?;
                words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
            })
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    let servers: Vec<IpAddr> = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver")?.trim().parse().ok())
        .collect();
    for server in servers {
        for _ in 0..2 {
            if let Ok(Ok(found)) =
                tokio::time::timeout(Duration::from_secs(2), query_a(server, name)).await
            {
                return found;
            }
        }
    }
    Vec::new()
}

/// One DNS query for the A records of `name` (random id; an answer under another id is
/// ignored).
async fn query_a(server: IpAddr, name: &str) -> std::io::Result<Vec<IpAddr>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let (id, query) = super::dns::a_query(name.trim_end_matches('.'))
        .ok_or_else(|| std::io::Error::other("bad name"))?;
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect((server, 53)).await?;
    socket.send(&query).await?;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        if n >= 2 && buf[..2] == id.to_be_bytes() {
            return Ok(super::dns::a_records(&buf[..n]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as curl sends it, cut to what matters: SNI `api.example.com`.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        let list_len = 3 + name.len();
        sni.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut ext = Vec::new();
        ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats first
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_sni_whole_and_in_pieces() {
        let hello = client_hello("API.Example.com");
        assert_eq!(peek(&hello), Peek::Name("api.example.com".into()));
        assert_eq!(peek(&hello[..3]), Peek::More);
        assert_eq!(peek(&hello[..40]), Peek::More);
    }

    #[test]
    fn addresses_are_not_names() {
        for host in [
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]:80",
            "[fe80::1]",
            "127.0.0.1:8080",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(peek(req.as_bytes()), Peek::NoName, "{host}");
        }
        assert_eq!(clean("::ffff:10.0.0.1"), Peek::NoName);
        assert_eq!(clean("Example.COM."), Peek::Name("example.com".into()));
    }

    #[test]
    fn reads_http_host() {
        assert_eq!(
            peek(b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: Example.com:8080\r\n\r\n"),
            Peek::Name("example.com".into())
        );
        assert_eq!(peek(b"GET / HTTP/1.1\r\nHost: a"), Peek::More);
        assert_eq!(peek(b"GET / HTTP/1.0\r\n\r\n"), Peek::NoName);
        assert_eq!(peek(b"\x00\x01binary"), Peek::NoName);
    }

    #[test]
    fn parses_a_records() {
        // Header (id 1, 1 question, 1 answer), question example.com A IN, answer by pointer.
        let mut r = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        r.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 93, 184, 216, 34]);
        assert_eq!(
            super::super::dns::a_records(&r),
            vec!["93.184.216.34".parse::<IpAddr>().unwrap()]
        );
    }
}
