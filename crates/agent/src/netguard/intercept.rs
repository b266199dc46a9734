//! Request rules applied in the guard: HTTP and HTTPS connections to a domain that has rules
//! in the sandbox's policy are answered here, each request gets the rule's headers (secrets
//! resolved at the moment it is sent), and it goes on to the name's own server.
//!
//! For HTTPS the guard is the server the sandbox talks to, with a certificate for the name
//! signed by the guard's own authority ([`Authority`]; its key stays in the guard's state,
//! never in a sandbox or a label), which the backend adds to the sandbox's trust. The
//! connection on to the real server is verified against the guard's roots (the system's,
//! plus any the backend adds). HTTP/1.1 and HTTP/2 are served, each request judged alone:
//! one that names another host than the connection's is refused, so a rule's headers only
//! ever go to the server its domain names. Connections to domains without rules never come
//! here (the proxy joins them as they are).

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls::{provider, system_roots};

/// Leaf certificates kept at once; the cache starts over when full.
const LEAVES: usize = 1024;

type Body = Either<Incoming, Full<Bytes>>;

/// The policy the sandbox is held to at this moment (`None`: it is held no more).
pub(crate) type PolicyNow = Arc<dyn Fn() -> Option<sandkit_core::NetworkPolicy> + Send + Sync>;

/// The guard's certificate authority, and the TLS settings made from it.
pub(crate) struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    /// Server settings per name, each with its own leaf certificate.
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    /// Where the authority and the roots backends added are kept.
    dir: Option<std::path::PathBuf>,
    /// The roots the real servers are verified against, and the settings made from them.
    upstream: Mutex<Upstreams>,
}

/// Settings for the real servers, from one set of roots.
struct Upstreams {
    roots: rustls::RootCertStore,
    /// HTTP/1.1 only, and HTTP/2 or HTTP/1.1.
    h1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
}

impl Upstreams {
    fn new(roots: rustls::RootCertStore) -> Result<Upstreams, String> {
        let client = |alpn: &[&[u8]]| -> Result<Arc<rustls::ClientConfig>, String> {
            let mut c = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(c))
        };
        Ok(Upstreams {
            h1: client(&[b"http/1.1"])?,
            h2: client(&[b"h2", b"http/1.1"])?,
            roots,
        })
    }
}

/// The certificates of `pem`.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// The authority kept in `dir` (`ca.pem`, and `ca.key` readable by the guard only), made
    /// there on first start; upstreams verified against the system's roots and those
    /// [`trust`](Self::trust) kept there.
    pub(crate) fn open(dir: &Path) -> Result<Authority, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !key.exists() || !cert.exists() {
            let (pem, key_pem) = make_ca()?;
            write_private(&dir.join(".ca.key.tmp"), &key, key_pem.as_bytes())?;
            std::fs::write(dir.join(".ca.pem.tmp"), &pem).map_err(|e| e.to_string())?;
            std::fs::rename(dir.join(".ca.pem.tmp"), &cert).map_err(|e| e.to_string())?;
        }
        let pem = std::fs::read_to_string(&cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        let key_pem =
            std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
        let mut authority = Authority::from_pem(&pem, &key_pem)?;
        authority.dir = Some(dir.to_path_buf());
        let mut kept: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("trust-"))
            })
            .collect();
        kept.sort();
        for path in kept {
            let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            authority
                .add_roots(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(authority)
    }

    /// An authority of this process only (for tests).
    #[cfg(test)]
    pub(crate) fn ephemeral() -> Authority {
        let (pem, key) = make_ca().expect("a CA");
        Authority::from_pem(&pem, &key).expect("an authority")
    }

    /// Trusts the certificates of `pem` too, from now on and after a restart: a backend's
    /// roots for servers with a private CA. Roots are only ever added (backends on one
    /// engine share the guard).
    pub(crate) fn trust(&self, pem: &[u8]) -> Result<(), String> {
        self.add_roots(pem)?;
        if let Some(dir) = &self.dir {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            pem.hash(&mut h);
            let path = dir.join(format!("trust-{:016x}.pem", h.finish()));
            if !path.exists() {
                let tmp = dir.join(format!(".trust-{:016x}.tmp", h.finish()));
                std::fs::write(&tmp, pem).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn add_roots(&self, pem: &[u8]) -> Result<(), String> {
        let certs = certificates(pem)?;
        let mut upstream = self.upstream.lock().expect("upstream");
        let mut roots = upstream.roots.clone();
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("not a usable root: {e}"))?;
        }
        *upstream = Upstreams::new(roots)?;
        Ok(())
    }

    fn from_pem(pem: &str, key_pem: &str) -> Result<Authority, String> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("the CA key: {e}"))?;
        // The certificate was made from these same parameters (its subject and key usages
        // are fixed), so they describe it as an issuer.
        let issuer = rcgen::Issuer::new(ca_params()?, key);
        let ca_der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in system_roots() {
            let _ = roots.add(c);
        }
        Ok(Authority {
            issuer,
            ca_der,
            ca_pem: pem.to_string(),
            leaves: Mutex::new(HashMap::new()),
            dir: None,
            upstream: Mutex::new(Upstreams::new(roots)?),
        })
    }

    /// The authority's certificate (PEM), for the sandboxes' trust.
    pub(crate) fn certificate(&self) -> &str {
        &self.ca_pem
    }

    /// Server settings presenting a certificate for `name`.
    fn server(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        if let Some(c) = self.leaves.lock().expect("leaves").get(name) {
            return Ok(c.clone());
        }
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut leaves = self.leaves.lock().expect("leaves");
        if leaves.len() >= LEAVES {
            leaves.clear();
        }
        leaves.insert(name.to_string(), config.clone());
        Ok(config)
    }
}

/// A new CA: its certificate and key, PEM.
fn make_ca() -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = ca_params()?.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What every guard's CA certificate says of itself.
fn ca_params() -> Result<rcgen::CertificateParams, String> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sandkit network guard");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    Ok(params)
}

/// Writes `bytes` to `to` readable by this user only, through `tmp`.
fn write_private(tmp: &Path, to: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes).map_err(|e| e.to_string())?;
    std::fs::rename(tmp, to).map_err(|e| e.to_string())
}

/// A stream that first yields what the proxy already read from it.
pub(crate) struct Rewind {
    head: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub(crate) fn new(head: Vec<u8>, inner: TcpStream) -> Self {
        Rewind {
            head: head.into(),
            inner,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let head = self.head.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection on to the real server.
#[derive(Clone)]
enum Upstream {
    H1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Incoming>>>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

impl Upstream {
    async fn send(&self, req: Request<Incoming>) -> hyper::Result<Response<Incoming>> {
        match self {
            Upstream::H1(s) => {
                let mut s = s.lock().await;
                s.ready().await?;
                let answer = s.send_request(req);
                drop(s);
                answer.await
            }
            Upstream::H2(s) => s.clone().send_request(req).await,
        }
    }
}

/// How long the sandbox's TLS handshake, the server's, or a request's headers may take.
const HANDSHAKE_FOR: Duration = Duration::from_secs(10);
/// HTTP/2 streams of one sandbox connection at once, and the flow-control windows: with the
/// proxy's connection caps they bound what one sandbox can make the guard hold.
const H2_STREAMS: u32 = 32;
const H2_STREAM_WINDOW: u32 = 256 << 10;
const H2_CONN_WINDOW: u32 = 1 << 20;
/// The most header bytes a request may carry.
const MAX_HEADERS: usize = 64 << 10;

/// Serves the connection of the sandbox at `from` to `name`, whose first bytes (`inbound`'s
/// head) the proxy already read, joined to the real server over `outbound`. Plain HTTP only
/// on port 80: a rule's headers never go out unencrypted to an HTTPS port.
pub(crate) async fn serve(
    auth: Arc<Authority>,
    policy_now: PolicyNow,
    name: String,
    port: u16,
    inbound: Rewind,
    outbound: super::socks::Stream,
) -> Result<(), String> {
    let tls = inbound.head.first() == Some(&0x16);
    let site = Site { name, port };
    if !tls {
        if port != 80 {
            return Err(format!(
                "{}:{port}: plain text to a port other than 80 carries no rule's headers; closed",
                site.name
            ));
        }
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(outbound))
            .await
            .map_err(|e| format!("{}: {e}", site.name))?;
        let up = Upstream::H1(Arc::new(tokio::sync::Mutex::new(sender)));
        let closed = drive(conn);
        return answer(
            TokioIo::new(inbound),
            false,
            up,
            closed,
            policy_now,
            site,
            "http",
        )
        .await;
    }
    let inbound = tokio::time::timeout(
        HANDSHAKE_FOR,
        tokio_rustls::TlsAcceptor::from(auth.server(&site.name)?).accept(inbound),
    )
    .await
    .map_err(|_| format!("{}: the sandbox's TLS handshake took too long", site.name))?
    .map_err(|e| format!("{}: the sandbox's TLS: {e}", site.name))?;
    let h2_in = inbound.get_ref().1.alpn_protocol() == Some(b"h2");
    let config = {
        let up = auth.upstream.lock().expect("upstream");
        if h2_in {
            up.h2.clone()
        } else {
            up.h1.clone()
        }
    };
    let server_name =
        ServerName::try_from(site.name.clone()).map_err(|e| format!("{}: {e}", site.name))?;
    let outbound = tokio::time::timeout(
        HANDSHAKE_FOR,
        tokio_rustls::TlsConnector::from(config).connect(server_name, outbound),
    )
    .await
    .map_err(|_| format!("{}: the server's TLS handshake took too long", site.name))?
    .map_err(|e| format!("{}: the server's TLS: {e}", site.name))?;
    let (up, closed) = if outbound.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .handshake(TokioIo::new(outbound))
            .await
            .map_err(|e| format!("{}: {e}", site.name))?;
        (Upstream::H2(sender), drive(conn))
    } else {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADERS.max(8 << 10) * 2)
            .handshake(TokioIo::new(outbound))
            .await
            .map_err(|e| format!("{}: {e}", site.name))?;
        (
            Upstream::H1(Arc::new(tokio::sync::Mutex::new(sender))),
            drive(conn),
        )
    };
    answer(
        TokioIo::new(inbound),
        h2_in,
        up,
        closed,
        policy_now,
        site,
        "https",
    )
    .await
}

/// The real server a connection goes to.
#[derive(Debug, Clone)]
struct Site {
    name: String,
    port: u16,
}

impl Site {
    /// `name`, with the port when it is not the scheme's own.
    fn authority(&self, scheme: &str) -> String {
        match (scheme, self.port) {
            ("http", 80) | ("https", 443) => self.name.clone(),
            (_, p) => format!("{}:{p}", self.name),
        }
    }
}

/// The server's connection, driven on its own task (a server that closes after its answer
/// must not cut the answer short) and aborted when the returned guard is dropped (a policy
/// change aborts the sandbox's connection, and the server's goes with it); the receiver
/// learns when it ended.
fn drive<C, E>(conn: C) -> Driven
where
    C: std::future::Future<Output = Result<(), E>> + Send + 'static,
{
    let (done, ended) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = conn.await;
        let _ = done.send(());
    });
    Driven {
        _abort: AbortOnDrop(task.abort_handle()),
        ended,
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server connection being driven: [`drive`].
struct Driven {
    _abort: AbortOnDrop,
    ended: tokio::sync::oneshot::Receiver<()>,
}

/// Serves the sandbox's requests over `io` (HTTP/2 when `h2`), each sent on through `up`.
/// When the server's connection ends (an idle keep-alive closed, a GOAWAY), the sandbox's is
/// shut down gracefully too, so that its client opens a new one rather than getting errors.
async fn answer<IO>(
    io: TokioIo<IO>,
    h2: bool,
    up: Upstream,
    mut closed: Driven,
    policy_now: PolicyNow,
    site: Site,
    scheme: &'static str,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let up_h2 = matches!(up, Upstream::H2(_));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (up, policy_now, site) = (up.clone(), policy_now.clone(), site.clone());
        async move {
            let answer = match prepare(req, &policy_now, &site, scheme, up_h2) {
                Err((status, why)) => refuse(status, &why),
                Ok(req) => match up.send(req).await {
                    Ok(resp) => resp.map(Either::Left),
                    Err(e) => refuse(StatusCode::BAD_GATEWAY, &format!("{}: {e}", site.name)),
                },
            };
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    // The two protocols' connections are different types with the same methods.
    macro_rules! until_done {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = &mut closed.ended => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }};
    }
    let timer = hyper_util::rt::TokioTimer::new();
    let result = if h2 {
        until_done!(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(timer)
                .max_concurrent_streams(H2_STREAMS)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .max_header_list_size(MAX_HEADERS as u32)
                .serve_connection(io, service)
        )
    } else {
        until_done!(hyper::server::conn::http1::Builder::new()
            .timer(timer)
            .header_read_timeout(HANDSHAKE_FOR)
            .max_buf_size(MAX_HEADERS.max(8 << 10) * 2)
            .serve_connection(io, service))
    };
    result.map_err(|e| e.to_string())
}

/// Headers that belong to one connection, not to the request (never sent on over HTTP/2;
/// `te` only as `trailers`).
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The host a request names: its target's authority and its `Host` headers, which must all
/// agree (one `Host` at most). `None` when they do not, or it names none.
fn named_host(req: &Request<Incoming>) -> Option<String> {
    let mut hosts: Vec<String> = Vec::new();
    if let Some(a) = req.uri().authority() {
        hosts.push(a.host().to_ascii_lowercase());
    }
    let headers: Vec<_> = req.headers().get_all(http::header::HOST).iter().collect();
    if headers.len() > 1 {
        return None;
    }
    for h in headers {
        let a = h.to_str().ok()?.parse::<http::uri::Authority>().ok()?;
        if a.as_str().contains('@') {
            return None;
        }
        hosts.push(a.host().to_ascii_lowercase());
    }
    let first = hosts.first()?.trim_end_matches('.').to_string();
    hosts
        .iter()
        .all(|h| h.trim_end_matches('.') == first)
        .then_some(first)
}

/// The request as it goes on: the rule's headers set (secrets resolved now, from the policy
/// the guard holds at this moment), its target and `Host` written by the guard for the
/// connection's own site, in the form the server's protocol wants. A request that names
/// another host than the connection's (by target, `Host`, a second `Host`, or user info), or
/// whose rules cannot be applied, is answered here instead.
fn prepare(
    mut req: Request<Incoming>,
    policy_now: &PolicyNow,
    site: &Site,
    scheme: &str,
    up_h2: bool,
) -> Result<Request<Incoming>, (StatusCode, String)> {
    let name = site.name.as_str();
    match named_host(&req) {
        Some(h) if h.eq_ignore_ascii_case(name.trim_end_matches('.')) => {}
        other => {
            return Err(refusal(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "this connection is for {name}; a request for {} needs its own",
                    other.map_or_else(|| "another or no host".to_string(), |h| format!("{h:?}"))
                ),
            ))
        }
    }
    let Some(policy) = policy_now() else {
        return Err(refusal(StatusCode::FORBIDDEN, "no policy for this sandbox"));
    };
    let headers = policy
        .headers_for(name)
        .map_err(|e| refusal(StatusCode::BAD_GATEWAY, e.message()))?;
    for (h, v) in headers {
        let (Ok(h), Ok(mut v)) = (
            HeaderName::from_bytes(h.as_bytes()),
            HeaderValue::from_str(&v),
        ) else {
            return Err(refusal(
                StatusCode::BAD_GATEWAY,
                &format!("the rule for {name} has a header that cannot be sent"),
            ));
        };
        v.set_sensitive(true);
        req.headers_mut().insert(h, v);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let authority = site.authority(scheme);
    let uri = if up_h2 {
        for h in HOP_BY_HOP {
            req.headers_mut().remove(h);
        }
        let trailers = req
            .headers()
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !trailers {
            req.headers_mut().remove(http::header::TE);
        }
        req.headers_mut().remove(http::header::HOST);
        format!("{scheme}://{authority}{path}")
    } else {
        let host = HeaderValue::from_str(&authority)
            .map_err(|e| refusal(StatusCode::BAD_REQUEST, &e.to_string()))?;
        req.headers_mut().insert(http::header::HOST, host);
        path
    };
    *req.uri_mut() = uri
        .parse::<Uri>()
        .map_err(|e| refusal(StatusCode::BAD_REQUEST, &e.to_string()))?;
    *req.version_mut() = if up_h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    Ok(req)
}

/// Why the guard answers a request itself.
fn refusal(status: StatusCode, why: &str) -> (StatusCode, String) {
    (status, why.to_string())
}

/// An answer from the guard itself.
fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "sandkit network guard: {why}\n"
    )))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a client that trusts only `trusted`'s certificate completes a handshake with
    /// `a`'s server settings for `served`, asking for `asked`.
    async fn handshake_trusting(
        trusted: &Authority,
        a: &Authority,
        served: &str,
        asked: &str,
    ) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.ca_der.clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (c, s) = tokio::io::duplex(64 << 10);
        let acceptor = tokio_rustls::TlsAcceptor::from(a.server(served).unwrap());
        let server = tokio::spawn(async move { acceptor.accept(s).await.is_ok() });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from(asked.to_string()).unwrap();
        let ok = connector.connect(name, c).await.is_ok();
        let _ = server.await;
        ok
    }

    /// As [`handshake_trusting`], trusting `a` itself.
    async fn handshake(a: &Authority, served: &str, asked: &str) -> bool {
        handshake_trusting(a, a, served, asked).await
    }

    #[tokio::test]
    async fn leaves_are_signed_by_the_authority_for_their_name_only() {
        let a = Authority::ephemeral();
        assert!(Arc::ptr_eq(
            &a.server("api.example.test").unwrap(),
            &a.server("api.example.test").unwrap()
        ));
        assert!(a.certificate().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(handshake(&a, "api.example.test", "api.example.test").await);
        assert!(!handshake(&a, "api.example.test", "other.example.test").await);
        // Another guard's authority is not trusted for it.
        let b = Authority::ephemeral();
        assert!(!handshake_trusting(&b, &a, "x.test", "x.test").await);
    }

    #[tokio::test]
    async fn the_authority_is_kept_and_its_key_readable_by_the_guard_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::open(dir.path()).unwrap();
        let again = Authority::open(dir.path()).unwrap();
        assert_eq!(first.certificate(), again.certificate());
        // Leaves signed after a restart verify against the certificate sandboxes were given.
        assert!(handshake(&again, "after.test", "after.test").await);
        // Roots a backend adds are kept too, and anything else is refused.
        let other = Authority::ephemeral();
        again.trust(other.certificate().as_bytes()).unwrap();
        assert!(again.trust(b"not pem").is_err());
        let reopened = Authority::open(dir.path()).unwrap();
        let roots = reopened.upstream.lock().unwrap().roots.len();
        assert_eq!(roots, first.upstream.lock().unwrap().roots.len() + 1);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "ca.key is {mode:o}");
    }
}
