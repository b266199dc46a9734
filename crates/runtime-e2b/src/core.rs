//! The HTTP clients: the control plane (REST) and envd (Connect with the JSON codec).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use sandkit_core::{Error, ErrorKind, Result};
use sandkit_e2b_protocol::api::ApiError;
use sandkit_e2b_protocol::connect::{code_for_status, kind_for_code};
use sandkit_e2b_protocol::{
    encode_message, headers, ConnectError, EndStream, EnvelopeDecoder, STREAM_CONTENT_TYPE,
    UNARY_CONTENT_TYPE,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::E2bConfig;
use crate::conn::{Conn, Connect};
use crate::error::{err, kind_of_status};

/// Idle pooled connections are dropped before a server closes them (e2b-local keeps an idle
/// HTTP/1 connection 30 s by default): a request never races the server's close.
const POOL_IDLE: Duration = Duration::from_secs(20);

/// The user agent, as the Python SDK sends it on REST calls.
pub(crate) const USER_AGENT: &str = concat!("sandkit-runtime-e2b/", env!("CARGO_PKG_VERSION"));
/// Keepalive interval asked of envd on streams, in seconds (the SDK's value).
const KEEPALIVE_SECS: &str = "50";

/// The control-plane client.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    timeout: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

/// A REST answer: status, headers we use, body.
pub(crate) struct ApiResponse {
    pub(crate) status: StatusCode,
    pub(crate) next_token: Option<String>,
    /// Whether the SDK would send it again (its status, or `Should-Retry`).
    pub(crate) should_retry: bool,
    /// The server's `Retry-After`.
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Bytes,
}

impl ApiResponse {
    pub(crate) fn json<T: DeserializeOwned>(&self, op: &'static str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            err(
                ErrorKind::Unexpected,
                op,
                format!("unexpected answer from the E2B API: {e}"),
            )
        })
    }

    /// Whether a 404 is the API's own JSON error (a missing sandbox) rather than a missing
    /// route (an older server).
    pub(crate) fn is_api_error(&self) -> bool {
        serde_json::from_slice::<ApiError>(&self.body)
            .map(|e| e.code != 0 || !e.message.is_empty())
            .unwrap_or(false)
    }

    /// The error this answer means.
    pub(crate) fn error(&self, op: &'static str) -> Error {
        let body = serde_json::from_slice::<ApiError>(&self.body).ok();
        let message = body
            .map(|b| b.message)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(300)
                    .collect()
            });
        let status = self.status.as_u16();
        let kind = kind_of_status(status);
        let hint = match status {
            401 => " (check E2B_API_KEY)",
            _ => "",
        };
        let error =
            err(kind, op, format!("{status}: {message}{hint}")).with_retryable(self.should_retry);
        match self.retry_after {
            Some(wait) => error.with_retry_after(wait),
            None => error,
        }
    }
}

impl Api {
    pub(crate) fn new(config: &E2bConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .map_err(|e| {
                err(
                    ErrorKind::Unexpected,
                    "connect",
                    "cannot build the HTTP client",
                )
                .with_source(e)
            })?;
        Ok(Api {
            http,
            base: config.api_url(),
            key: config.api_key.clone(),
            timeout: config.request_timeout,
        })
    }

    /// Sends a request. An answer the SDK would retry (429/502/503/504, or `Should-Retry:
    /// true`) becomes a retryable error carrying the server's `Retry-After`; the
    /// [`RetryLayer`](sandkit_core::layer::RetryLayer) does the retrying.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
        op: &'static str,
    ) -> Result<ApiResponse> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header(headers::API_KEY, &self.key)
            .timeout(self.timeout)
            .query(query);
        if let Some(b) = &body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b).expect("json"));
        }
        let response = match req.send().await {
            Ok(r) => r,
            // The request may have been acted on: not run again.
            Err(e) if e.is_timeout() => {
                return Err(err(
                    ErrorKind::Timeout,
                    op,
                    format!("the E2B API did not answer within {:?}", self.timeout),
                )
                .with_retryable(false)
                .with_source(e))
            }
            Err(e) => {
                return Err(err(
                    ErrorKind::Unavailable,
                    op,
                    format!("cannot reach the E2B API at {}", self.base),
                )
                .with_retryable(e.is_connect())
                .with_source(e))
            }
        };
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        let should_retry = header(headers::SHOULD_RETRY)
            .map(|v| v.eq_ignore_ascii_case("true"))
            .unwrap_or(matches!(status.as_u16(), 429 | 502 | 503 | 504));
        let retry_after = header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let next_token = header(headers::NEXT_TOKEN);
        let body = response
            .bytes()
            .await
            // The request was acted on: not run again.
            .map_err(|e| {
                err(ErrorKind::Unavailable, op, "the answer was cut")
                    .with_retryable(false)
                    .with_source(e)
            })?;
        Ok(ApiResponse {
            status,
            next_token,
            should_retry,
            retry_after,
            body,
        })
    }
}

/// The envd client of one sandbox.
#[derive(Clone)]
pub(crate) struct Envd {
    http: reqwest::Client,
    /// HTTP/1.1 only, for file downloads (see the protocol notes).
    http1: reqwest::Client,
    /// A connection that is not a URL (an agent's stdio), when there is one.
    conn: Option<Arc<Conn>>,
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

impl Envd {
    pub(crate) fn new(
        base: String,
        sandbox_id: String,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self> {
        let build = |http1: bool| {
            let b = reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(POOL_IDLE);
            let b = if http1 { b.http1_only() } else { b };
            b.build().map_err(|e| {
                err(
                    ErrorKind::Unexpected,
                    "connect",
                    "cannot build the HTTP client",
                )
                .with_source(e)
            })
        };
        Ok(Envd {
            http: build(false)?,
            http1: build(true)?,
            conn: None,
            base,
            sandbox_id,
            token,
            timeout,
        })
    }

    /// The client of an envd reached through `connect` rather than a URL.
    pub(crate) fn over(
        connect: Arc<dyn Connect>,
        sandbox_id: String,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self> {
        let mut envd = Envd::new("http://envd".into(), sandbox_id, token, timeout)?;
        envd.conn = Some(Arc::new(Conn::new(connect)));
        Ok(envd)
    }

    /// Sends a request over this client's transport.
    async fn send(&self, request: RequestBuilder, op: &'static str) -> Result<Response> {
        match &self.conn {
            None => request
                .send()
                .await
                .map_err(|e| transport_error(e, op, &self.base)),
            Some(conn) => {
                let request = request.build().map_err(|e| {
                    err(ErrorKind::InvalidInput, op, "cannot build the envd request").with_source(e)
                })?;
                conn.send(request, op).await
            }
        }
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        user: Option<&str>,
    ) -> RequestBuilder {
        let mut req = client
            .request(method, format!("{}{path}", self.base))
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

    /// A unary Connect call.
    pub(crate) async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        user: Option<&str>,
        op: &'static str,
    ) -> Result<Resp> {
        let body = serde_json::to_vec(request).expect("json");
        let response = self
            .send(
                self.request(&self.http, Method::POST, path, user)
                    .header("content-type", UNARY_CONTENT_TYPE)
                    .header("connect-protocol-version", "1")
                    .header(
                        headers::CONNECT_TIMEOUT,
                        self.timeout.as_millis().to_string(),
                    )
                    .timeout(self.timeout)
                    .body(body),
                op,
            )
            .await?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, op, &self.base))?;
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
            .request(&self.http, Method::POST, path, user)
            .header("content-type", STREAM_CONTENT_TYPE)
            .header("connect-protocol-version", "1")
            .header("connect-content-encoding", "identity")
            .header("connect-accept-encoding", "identity")
            .header(headers::KEEPALIVE, KEEPALIVE_SECS)
            .body(encode_message(request));
        if let Some(t) = timeout {
            req = req.header(headers::CONNECT_TIMEOUT, t.as_millis().max(1).to_string());
        }
        let response = self.send(req, op).await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !status.is_success() || !content_type.starts_with(STREAM_CONTENT_TYPE) {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(envd_error(status.as_u16(), &bytes, op, &self.sandbox_id));
        }
        Ok(decode_stream(response, op, self.sandbox_id.clone()))
    }

    /// `GET /files`, streamed, over HTTP/1.1.
    pub(crate) async fn download(&self, path: &str, user: Option<&str>) -> Result<Response> {
        let mut query = vec![("path", path.to_string())];
        if let Some(u) = user {
            query.push(("username", u.to_string()));
        }
        let response = self
            .send(
                self.request(&self.http1, Method::GET, "/files", None)
                    .query(&query),
                "read",
            )
            .await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        Err(envd_error(status, &bytes, "read", &self.sandbox_id))
    }

    /// `POST /files` with an octet-stream body.
    pub(crate) async fn upload(
        &self,
        path: &str,
        user: Option<&str>,
        body: reqwest::Body,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let mut query = vec![("path", path.to_string())];
        if let Some(u) = user {
            query.push(("username", u.to_string()));
        }
        let mut request = self
            .request(&self.http1, Method::POST, "/files", None)
            .query(&query)
            .header("content-type", "application/octet-stream");
        for (k, v) in metadata {
            request = request.header(format!("X-Metadata-{k}"), v);
        }
        let response = self.send(request.body(body), "write").await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(envd_error(status, &bytes, "write", &self.sandbox_id))
    }

    /// `GET /metrics`.
    pub(crate) async fn metrics(&self) -> Result<sandkit_e2b_protocol::envd::EnvdMetrics> {
        let request = self
            .request(&self.http, Method::GET, "/metrics", None)
            .timeout(self.timeout);
        let response = self.send(request, "metrics").await?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, "metrics", &self.base))?;
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
        let response = self
            .send(
                self.request(&self.http, Method::GET, "/health", None)
                    .timeout(Duration::from_secs(5)),
                "health",
            )
            .await?;
        Ok(response.status().is_success())
    }
}

fn transport_error(e: reqwest::Error, op: &'static str, base: &str) -> Error {
    if e.is_timeout() {
        return err(ErrorKind::Timeout, op, "envd did not answer in time").with_source(e);
    }
    // Only a connection never made is sure to have done nothing: anything later may have.
    let retryable = e.is_connect();
    err(
        ErrorKind::Unavailable,
        op,
        format!("cannot reach envd at {base}"),
    )
    .with_retryable(retryable)
    .with_source(e)
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
    response: Response,
    op: &'static str,
    sandbox_id: String,
) -> BoxStream<'static, Result<Msg>> {
    struct State {
        body: BoxStream<'static, reqwest::Result<Bytes>>,
        decoder: EnvelopeDecoder,
        done: bool,
        sandbox_id: String,
    }
    let state = State {
        body: response.bytes_stream().boxed(),
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
                    return Some((
                        Err(
                            err(ErrorKind::Unavailable, op, "the stream from envd broke")
                                .with_source(e),
                        ),
                        s,
                    ));
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
