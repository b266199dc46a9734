//! envd over a connection that is not a URL: HTTP/2 cleartext over any byte stream (an
//! agent's stdio through one attached exec, a Unix socket), opened by a [`Connect`] and
//! reopened transparently when it drops.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sandkit_core::{ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tracing::debug;

use crate::error::err;

/// How long opening a connection may take when the request sets no time of its own.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to envd.
pub trait EnvdIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> EnvdIo for T {}

/// Opens byte streams to one envd: each is one HTTP/2 connection, on which every request of
/// an [`EnvdClient`](crate::EnvdClient) is multiplexed.
///
/// ```
/// use sandkit_e2b::{Connect, EnvdIo};
/// #[derive(Debug)]
/// struct Socket(std::path::PathBuf);
/// impl Connect for Socket {
///     fn connect(&self) -> futures_util::future::BoxFuture<'static, std::io::Result<Box<dyn EnvdIo>>> {
///         let path = self.0.clone();
///         Box::pin(async move {
///             let s = tokio::net::UnixStream::connect(path).await?;
///             Ok(Box::new(s) as Box<dyn EnvdIo>)
///         })
///     }
/// }
/// ```
pub trait Connect: Send + Sync + fmt::Debug + 'static {
    /// Opens a new stream to envd.
    fn connect(&self) -> BoxFuture<'static, io::Result<Box<dyn EnvdIo>>>;
}

/// One HTTP/2 connection to envd, made on first use and again after it drops.
pub(crate) struct Conn {
    connect: Arc<dyn Connect>,
    sender: Mutex<Option<SendRequest<reqwest::Body>>>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("connect", &self.connect)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub(crate) fn new(connect: Arc<dyn Connect>) -> Self {
        Conn {
            connect,
            sender: Mutex::new(None),
        }
    }

    /// A sender on a live connection: the current one, or a new one.
    async fn ready(&self, op: &'static str) -> Result<SendRequest<reqwest::Body>> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_mut() {
            if s.ready().await.is_ok() {
                return Ok(s.clone());
            }
            debug!("envd connection dropped; reconnecting");
            *slot = None;
        }
        let io = self.connect.connect().await.map_err(|e| {
            err(
                ErrorKind::Unavailable,
                op,
                "cannot open a connection to envd",
            )
            .with_source(e)
        })?;
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            // Files stream through this one connection: large windows and frames keep a
            // 64 MiB copy from stalling on flow control and per-frame overhead.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 20)
            .max_send_buf_size(4 << 20);
        let (mut sender, conn) = builder.handshake(TokioIo::new(io)).await.map_err(|e| {
            err(
                ErrorKind::Unavailable,
                op,
                "the HTTP/2 handshake with envd failed",
            )
            .with_source(e)
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "envd connection ended");
            }
        });
        sender.ready().await.map_err(|e| {
            err(
                ErrorKind::Unavailable,
                op,
                "the envd connection closed at once",
            )
            .with_source(e)
        })?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Sends one request. A connection found dead before the request went out is replaced
    /// once; a request that went out is never sent twice.
    pub(crate) async fn send(
        &self,
        request: reqwest::Request,
        op: &'static str,
    ) -> Result<reqwest::Response> {
        let timeout = request.timeout().copied();
        let mut request: http::Request<reqwest::Body> = request.try_into().map_err(|e| {
            err(ErrorKind::InvalidInput, op, "cannot build the envd request").with_source(e)
        })?;
        *request.version_mut() = http::Version::HTTP_2;
        // Opening the connection counts against the request's time too (a hung engine or
        // relay must not hold every request of the sandbox).
        let mut sender = tokio::time::timeout(timeout.unwrap_or(CONNECT_TIMEOUT), self.ready(op))
            .await
            .map_err(|_| err(ErrorKind::Timeout, op, "connecting to envd took too long"))??;
        let send = sender.send_request(request);
        let response = match timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .map_err(|_| err(ErrorKind::Timeout, op, "envd did not answer in time"))?,
            None => send.await,
        }
        .map_err(|e| {
            err(ErrorKind::Unavailable, op, "the request to envd failed").with_source(e)
        })?;
        Ok(reqwest::Response::from(response.map(reqwest::Body::wrap)))
    }
}
