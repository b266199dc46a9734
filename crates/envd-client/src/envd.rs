//! [`Envd`]: the requests of envd's protocol (Connect with the JSON codec, `/files`,
//! `/metrics`, `/health`), sent over a [`Transport`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sandkit_core::{Error, ErrorKind, Result};
use sandkit_e2b_protocol::connect::{code_for_status, kind_for_code};
use sandkit_e2b_protocol::{
    encode_message, headers, ConnectError, EndStream, EnvelopeDecoder, STREAM_CONTENT_TYPE,
    UNARY_CONTENT_TYPE,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::err;
use crate::transport::{Body, Call, Transport};

/// Keepalive interval asked of envd on streams, in seconds (the SDK's value).
const KEEPALIVE_SECS: &str = "50";

/// The envd of one sandbox: where requests go (`base`, the transport) and who asks (the sandbox
/// id and its access token).
#[derive(Clone)]
pub(crate) struct Envd {
    transport: Arc<dyn Transport>,
    pub(crate) base: String,
    sandbox_id: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Envd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envd")
            .field("base", &self.base)
            .field("sandbox_id", &self.sandbox_id)
            .field("transport", &self.transport)
            .finish()
    }
}

/// The `Authorization` header for a user (`Basic base64("user:")`).
pub(crate) fn basic_auth(user: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    )
}

/// `?path=...&username=...`, percent-encoded.
fn file_query(path: &str, user: Option<&str>) -> String {
    let mut q = format!("?path={}", utf8_percent_encode(path, NON_ALPHANUMERIC));
    if let Some(u) = user {
        q.push_str(&format!(
            "&username={}",
            utf8_percent_encode(u, NON_ALPHANUMERIC)
        ));
    }
    q
}

/// A whole answer, or the error that cut it. Never retryable: the request went out and may have
/// been acted on (a `mkdir` whose answer was lost must not run again).
async fn collect(body: Body, op: &'static str) -> Result<Bytes> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| body_error(e, op, "the answer from envd was cut").with_retryable(false))
}

/// The error inside a body: a transport's own error as it was made, else `message`.
fn body_error(e: crate::transport::BoxError, op: &'static str, message: &str) -> Error {
    let e = match e.downcast::<Error>() {
        Ok(e) => return *e,
        Err(e) => e,
    };
    let kind = match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_timeout() => ErrorKind::Timeout,
        _ => ErrorKind::Unavailable,
    };
    err(kind, op, message.to_string()).with_source(e)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl Envd {
    /// The envd at `base` (`http://envd` when the transport is a connection), for sandbox
    /// `sandbox_id`; unary calls may take `timeout`.
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        base: String,
        sandbox_id: String,
        token: Option<String>,
        timeout: Duration,
    ) -> Self {
        Envd {
            transport,
            base,
            sandbox_id,
            token,
            timeout,
        }
    }

    /// A request to `path` with the headers every envd request carries.
    fn request(&self, method: Method, path: &str, user: Option<&str>) -> http::request::Builder {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(headers::SANDBOX_ID, &self.sandbox_id)
            .header(
                headers::SANDBOX_PORT,
                sandkit_e2b_protocol::envd::ENVD_PORT.to_string(),
            );
        if let Some(t) = &self.token {
            req = req.header(headers::ACCESS_TOKEN, t);
        }
        if let Some(u) = user {
            req = req.header("authorization", basic_auth(u));
        }
        req
    }

    async fn send(
        &self,
        request: http::request::Builder,
        body: Body,
        call: Call,
    ) -> Result<Response<Body>> {
        let request = request.body(body).map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                call.op,
                "cannot build the envd request",
            )
            .with_source(e)
        })?;
        self.transport.send(request, call).await
    }

    /// A unary Connect call.
    pub(crate) async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        user: Option<&str>,
        op: &'static str,
    ) -> Result<Resp> {
        let body = serde_json::to_vec(request).expect("json");
        let req = self
            .request(Method::POST, path, user)
            .header("content-type", UNARY_CONTENT_TYPE)
            .header("connect-protocol-version", "1")
            .header(
                headers::CONNECT_TIMEOUT,
                self.timeout.as_millis().to_string(),
            );
        let response = self
            .send(req, full(body), Call::new(op).timeout(self.timeout))
            .await?;
        let status = response.status();
        let bytes = collect(response.into_body(), op).await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                err(
                    ErrorKind::Unexpected,
                    op,
                    format!("unexpected answer from envd: {e}"),
                )
            });
        }
        Err(envd_error(status.as_u16(), &bytes, op, &self.sandbox_id))
    }

    /// A server-streaming Connect call: the decoded messages, ending with an error if the
    /// stream's end message carries one or the stream is cut.
    pub(crate) async fn server_stream<Req: Serialize, Msg: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
        request: &Req,
        user: Option<&str>,
        timeout: Option<Duration>,
        op: &'static str,
    ) -> Result<BoxStream<'static, Result<Msg>>> {
        let mut req = self
            .request(Method::POST, path, user)
            .header("content-type", STREAM_CONTENT_TYPE)
            .header("connect-protocol-version", "1")
            .header("connect-content-encoding", "identity")
            .header("connect-accept-encoding", "identity")
            .header(headers::KEEPALIVE, KEEPALIVE_SECS);
        if let Some(t) = timeout {
            req = req.header(headers::CONNECT_TIMEOUT, t.as_millis().max(1).to_string());
        }
        let response = self
            .send(req, full(encode_message(request)), Call::new(op))
            .await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !status.is_success() || !content_type.starts_with(STREAM_CONTENT_TYPE) {
            let bytes = collect(response.into_body(), op).await.unwrap_or_default();
            return Err(envd_error(status.as_u16(), &bytes, op, &self.sandbox_id));
        }
        Ok(decode_stream(
            response.into_body(),
            op,
            self.sandbox_id.clone(),
        ))
    }

    /// `GET /files`, streamed.
    pub(crate) async fn download(
        &self,
        path: &str,
        user: Option<&str>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let req = self.request(
            Method::GET,
            &format!("/files{}", file_query(path, user)),
            None,
        );
        let response = self
            .send(req, full(Bytes::new()), Call::new("read").file_transfer())
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = collect(response.into_body(), "read")
                .await
                .unwrap_or_default();
            return Err(envd_error(status, &bytes, "read", &self.sandbox_id));
        }
        let broke = format!("the download of {path} broke");
        Ok(response
            .into_body()
            .into_data_stream()
            .map_err(move |e| {
                let e = body_error(e, "read", &broke);
                if e.message() == broke {
                    e
                } else {
                    // The transport's own error, with the path it was reading.
                    err(e.kind(), "read", format!("{broke}: {}", e.message()))
                        .with_retryable(e.is_retryable())
                }
            })
            .boxed())
    }

    /// `POST /files` with an octet-stream body.
    pub(crate) async fn upload(
        &self,
        path: &str,
        user: Option<&str>,
        content: sandkit_core::ByteStream,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut req = self
            .request(
                Method::POST,
                &format!("/files{}", file_query(path, user)),
                None,
            )
            .header("content-type", "application/octet-stream");
        for (k, v) in metadata {
            req = req.header(format!("X-Metadata-{k}"), v);
        }
        let body = http_body_util::StreamBody::new(
            content
                .map_ok(http_body::Frame::data)
                .map_err(|e| Box::new(e) as crate::transport::BoxError),
        )
        .boxed_unsync();
        let response = self
            .send(req, body, Call::new("write").file_transfer())
            .await?;
        let status = response.status().as_u16();
        let bytes = collect(response.into_body(), "write")
            .await
            .unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(envd_error(status, &bytes, "write", &self.sandbox_id))
    }

    /// `GET /metrics`.
    pub(crate) async fn metrics(&self) -> Result<sandkit_e2b_protocol::envd::EnvdMetrics> {
        let req = self.request(Method::GET, "/metrics", None);
        let response = self
            .send(
                req,
                full(Bytes::new()),
                Call::new("metrics").timeout(self.timeout),
            )
            .await?;
        let status = response.status().as_u16();
        let bytes = collect(response.into_body(), "metrics").await?;
        if !(200..300).contains(&status) {
            return Err(envd_error(status, &bytes, "metrics", &self.sandbox_id));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            err(
                ErrorKind::Unexpected,
                "metrics",
                format!("unexpected metrics from envd: {e}"),
            )
        })
    }

    /// `GET /health`: whether envd answers.
    pub(crate) async fn health(&self) -> Result<bool> {
        let req = self.request(Method::GET, "/health", None);
        let response = self
            .send(
                req,
                full(Bytes::new()),
                Call::new("health").timeout(Duration::from_secs(5)),
            )
            .await?;
        Ok(response.status().is_success())
    }
}

/// Maps an envd (or edge proxy) error answer.
pub(crate) fn envd_error(status: u16, body: &[u8], op: &'static str, sandbox_id: &str) -> Error {
    if let Ok(e) = serde_json::from_slice::<ConnectError>(body) {
        return connect_error(&e, op, sandbox_id);
    }
    #[derive(serde::Deserialize)]
    struct Plain {
        #[serde(default)]
        message: String,
    }
    let message = serde_json::from_slice::<Plain>(body)
        .map(|p| p.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(300).collect());
    connect_error(
        &ConnectError::new(code_for_status(status), message),
        op,
        sandbox_id,
    )
}

/// Maps a Connect error; "was not found" from the proxy means the sandbox is gone.
pub(crate) fn connect_error(e: &ConnectError, op: &'static str, sandbox_id: &str) -> Error {
    if e.code == "unavailable" && e.message.contains("was not found") {
        return err(
            ErrorKind::NotFound,
            op,
            format!(
                "sandbox {sandbox_id} is not running (expired or killed): {}",
                e.message
            ),
        );
    }
    let kind = kind_for_code(&e.code);
    err(kind, op, format!("{}: {}", e.code, e.message))
        .with_retryable(kind == ErrorKind::Unavailable)
}

fn decode_stream<Msg: DeserializeOwned + Send + 'static>(
    body: Body,
    op: &'static str,
    sandbox_id: String,
) -> BoxStream<'static, Result<Msg>> {
    struct State {
        body: BoxStream<'static, std::result::Result<Bytes, crate::transport::BoxError>>,
        decoder: EnvelopeDecoder,
        done: bool,
        sandbox_id: String,
    }
    let state = State {
        body: body.into_data_stream().boxed(),
        decoder: EnvelopeDecoder::default(),
        done: false,
        sandbox_id,
    };
    futures_util::stream::unfold(state, move |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.decoder.next_envelope() {
                Err(e) => {
                    s.done = true;
                    return Some((Err(err(ErrorKind::Unexpected, op, e.to_string())), s));
                }
                Ok(Some(env)) if env.is_end_stream() => {
                    s.done = true;
                    let end: EndStream = serde_json::from_slice(&env.payload).unwrap_or_default();
                    return match end.error {
                        Some(e) => Some((Err(connect_error(&e, op, &s.sandbox_id)), s)),
                        None => None,
                    };
                }
                Ok(Some(env)) => {
                    let msg = serde_json::from_slice::<Msg>(&env.payload).map_err(|e| {
                        err(
                            ErrorKind::Unexpected,
                            op,
                            format!("unexpected message from envd: {e}"),
                        )
                    });
                    return Some((msg, s));
                }
                Ok(None) => {}
            }
            match s.body.next().await {
                Some(Ok(chunk)) => s.decoder.push(&chunk),
                Some(Err(e)) => {
                    s.done = true;
                    let e = body_error(e, op, "the stream from envd broke");
                    return Some((Err(e), s));
                }
                None => {
                    s.done = true;
                    let cut = if s.decoder.pending() > 0 {
                        " in the middle of a message"
                    } else {
                        ""
                    };
                    return Some((
                        Err(err(
                            ErrorKind::Unavailable,
                            op,
                            format!("the stream from envd ended without its end message{cut}"),
                        )),
                        s,
                    ));
                }
            }
        }
    })
    .boxed()
}
