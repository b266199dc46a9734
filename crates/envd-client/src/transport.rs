//! How requests reach envd: a [`Transport`] sends one HTTP request and returns the answer.
//! This crate brings one, HTTP/2 cleartext over any byte stream (an agent's stdio through one
//! attached exec, a Unix socket) opened by a [`Connect`] and reopened when it drops; the E2B
//! backend brings another, over URLs with its HTTP client.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sandkit_core::{ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tracing::debug;

use crate::error::err;

/// An error inside a body. A transport that meets its own failure mid-body may put a
/// [`sandkit_core::Error`] here: the client returns it as it is.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request or an answer.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What a request is, besides its HTTP: the operation it serves (for errors), how long it may
/// take, and whether it moves a file.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Call {
    /// The operation, as errors name it (`read`, `spawn`, ...).
    pub op: &'static str,
    /// How long the request may take; `None`: as long as it streams.
    pub timeout: Option<Duration>,
    /// A `/files` transfer. Over a URL these go on HTTP/1.1 (see the protocol notes).
    pub file_transfer: bool,
}

impl Call {
    /// A call for operation `op`, with no time limit.
    pub fn new(op: &'static str) -> Self {
        Call {
            op,
            timeout: None,
            file_transfer: false,
        }
    }

    /// Limits the call to `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks a `/files` transfer.
    pub fn file_transfer(mut self) -> Self {
        self.file_transfer = true;
        self
    }
}

/// Sends requests to one envd. A transport maps its own failures to [`sandkit_core::Error`]s:
/// a connection never made is retryable, anything later is not (the request may have run).
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Sends `request` and returns the answer's head with its body still streaming.
    fn send(
        &self,
        request: http::Request<Body>,
        call: Call,
    ) -> BoxFuture<'_, Result<http::Response<Body>>>;
}

/// How long opening a connection may take when the request sets no time of its own.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to envd.
pub trait EnvdIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> EnvdIo for T {}

/// Opens byte streams to one envd: each is one HTTP/2 connection, on which every request of
/// an [`EnvdClient`](crate::EnvdClient) is multiplexed.
///
/// ```
/// use sandkit_envd_client::{Connect, EnvdIo};
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
    sender: Mutex<Option<SendRequest<Body>>>,
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
    async fn ready(&self, op: &'static str) -> Result<SendRequest<Body>> {
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
}

impl Transport for Conn {
    /// A connection found dead before the request went out is replaced once; a request that
    /// went out is never sent twice.
    fn send(
        &self,
        mut request: http::Request<Body>,
        call: Call,
    ) -> BoxFuture<'_, Result<http::Response<Body>>> {
        Box::pin(async move {
            let op = call.op;
            *request.version_mut() = http::Version::HTTP_2;
            // Opening the connection counts against the request's time too (a hung engine or
            // relay must not hold every request of the sandbox).
            let mut sender =
                tokio::time::timeout(call.timeout.unwrap_or(CONNECT_TIMEOUT), self.ready(op))
                    .await
                    .map_err(|_| {
                        err(ErrorKind::Timeout, op, "connecting to envd took too long")
                    })??;
            let send = sender.send_request(request);
            let response = match call.timeout {
                Some(t) => tokio::time::timeout(t, send)
                    .await
                    .map_err(|_| err(ErrorKind::Timeout, op, "envd did not answer in time"))?,
                None => send.await,
            }
            .map_err(|e| {
                err(ErrorKind::Unavailable, op, "the request to envd failed").with_source(e)
            })?;
            Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
        })
    }
}
