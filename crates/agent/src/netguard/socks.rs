//! Joining a sandbox's connection through its policy's SOCKS5 proxy (RFC 1928, with RFC 1929
//! credentials), over plain TCP or verified TLS. Reached only after the policy judged the
//! connection: what it refuses never gets here.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sandkit_core::EgressProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A joined connection: to the destination, or through the proxy, plain or over TLS.
pub(crate) trait Joined: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Joined for T {}

/// A boxed [`Joined`].
pub(crate) type Stream = Box<dyn Joined>;

/// Where the proxy is asked to connect.
#[derive(Debug, Clone)]
pub(crate) enum Dest {
    /// A name the policy allowed: the proxy resolves it (ATYP domain).
    Name(String, u16),
    /// An address the policy allowed.
    Addr(SocketAddr),
}

/// A connection to `dest` through `proxy`.
pub(crate) async fn connect(proxy: &EgressProxy, dest: &Dest) -> Result<Stream, String> {
    let (host, port) = proxy
        .host_port()
        .ok_or_else(|| format!("egress proxy address {:?} is not host:port", proxy.address))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot reach the egress proxy {}: {e}", proxy.address))?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Stream = match &proxy.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let mut roots = rustls::RootCertStore::empty();
            match &tls.ca_cert {
                Some(pem) => {
                    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                        let c = c.map_err(|e| format!("the egress proxy's ca_cert: {e}"))?;
                        roots
                            .add(c)
                            .map_err(|e| format!("the egress proxy's ca_cert: {e}"))?;
                    }
                }
                None => {
                    for c in super::tls::system_roots() {
                        let _ = roots.add(c);
                    }
                }
            }
            let config = rustls::ClientConfig::builder_with_provider(super::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = tls.server_name.clone().unwrap_or_else(|| host.to_string());
            let name = ServerName::try_from(name)
                .map_err(|e| format!("the egress proxy's server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to the egress proxy {}: {e}", proxy.address))?;
            Box::new(tls)
        }
    };
    handshake(&mut stream, proxy, dest)
        .await
        .map_err(|e| format!("egress proxy {}: {e}", proxy.address))?;
    Ok(stream)
}

/// The SOCKS5 exchange on `s`: method, credentials when given, `CONNECT dest`.
async fn handshake(s: &mut Stream, proxy: &EgressProxy, dest: &Dest) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let auth = proxy.username.is_some();
    s.write_all(if auth { &[5, 1, 2] } else { &[5, 1, 0] })
        .await
        .map_err(io)?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).await.map_err(io)?;
    match reply {
        [5, 0] if !auth => {}
        [5, 2] if auth => {
            let user = proxy.username.as_deref().unwrap_or_default().as_bytes();
            let pass = proxy.password.as_deref().unwrap_or_default().as_bytes();
            let mut m = vec![1, user.len() as u8];
            m.extend_from_slice(user);
            m.push(pass.len() as u8);
            m.extend_from_slice(pass);
            s.write_all(&m).await.map_err(io)?;
            s.read_exact(&mut reply).await.map_err(io)?;
            if reply[1] != 0 {
                return Err("it refused the credentials".into());
            }
        }
        [5, 0xff] => return Err("it accepts none of the offered methods".into()),
        other => return Err(format!("it answered the greeting with {other:?}")),
    }
    let mut m = vec![5, 1, 0];
    let port = match dest {
        Dest::Name(name, port) => {
            if name.len() > 255 {
                return Err("the name is too long for SOCKS5".into());
            }
            m.push(3);
            m.push(name.len() as u8);
            m.extend_from_slice(name.as_bytes());
            *port
        }
        Dest::Addr(SocketAddr::V4(a)) => {
            m.push(1);
            m.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            m.push(4);
            m.extend_from_slice(&a.ip().octets());
            a.port()
        }
    };
    m.extend_from_slice(&port.to_be_bytes());
    s.write_all(&m).await.map_err(io)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 5 {
        return Err("it did not answer in SOCKS5".into());
    }
    if head[1] != 0 {
        return Err(format!("it refused the connection (reply {})", head[1]));
    }
    // The bound address, read and dropped.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await.map_err(io)?;
            n[0] as usize + 2
        }
        t => return Err(format!("it answered with address type {t}")),
    };
    let mut bound = vec![0u8; rest];
    s.read_exact(&mut bound).await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SOCKS5 server for one connection that checks what it is sent and answers `ok`.
    async fn server(expect_auth: bool) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut g = [0u8; 3];
            s.read_exact(&mut g).await.unwrap();
            if expect_auth {
                assert_eq!(g, [5, 1, 2]);
                s.write_all(&[5, 2]).await.unwrap();
                let mut h = [0u8; 2];
                s.read_exact(&mut h).await.unwrap();
                let mut u = vec![0u8; h[1] as usize];
                s.read_exact(&mut u).await.unwrap();
                let mut pl = [0u8; 1];
                s.read_exact(&mut pl).await.unwrap();
                let mut p = vec![0u8; pl[0] as usize];
                s.read_exact(&mut p).await.unwrap();
                assert_eq!((u.as_slice(), p.as_slice()), (&b"me"[..], &b"pw"[..]));
                s.write_all(&[1, 0]).await.unwrap();
            } else {
                assert_eq!(g, [5, 1, 0]);
                s.write_all(&[5, 0]).await.unwrap();
            }
            let mut req = vec![0u8; 5];
            s.read_exact(&mut req).await.unwrap();
            let mut rest = vec![0u8; req[4] as usize + 2];
            s.read_exact(&mut rest).await.unwrap();
            req.extend_from_slice(&rest);
            s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0, b'o', b'k'])
                .await
                .unwrap();
            req
        });
        (port, task)
    }

    #[tokio::test]
    async fn connects_by_name_with_and_without_credentials() {
        for auth in [false, true] {
            let (port, task) = server(auth).await;
            let mut proxy = EgressProxy::new(format!("127.0.0.1:{port}"));
            if auth {
                proxy = proxy.credentials("me", "pw");
            }
            let mut s = connect(&proxy, &Dest::Name("api.test".into(), 443))
                .await
                .unwrap();
            let mut ok = [0u8; 2];
            s.read_exact(&mut ok).await.unwrap();
            assert_eq!(&ok, b"ok");
            let req = task.await.unwrap();
            assert_eq!(&req[..5], &[5, 1, 0, 3, 8]);
            assert_eq!(&req[5..13], b"api.test");
            assert_eq!(&req[13..], &443u16.to_be_bytes());
        }
    }
}
