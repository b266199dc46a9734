//! [`UrlTransport`]: envd over URLs (E2B's cloud, `e2b-local`), with reqwest.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use sandkit_core::{Error, ErrorKind, Result};
use sandkit_envd_client::{Body, BoxError, Call, Transport};

use crate::api::{POOL_IDLE, USER_AGENT};
use crate::error::err;

/// The HTTP clients every sandbox of one runtime shares: one pool of connections, not one per
/// sandbox handle.
#[derive(Clone)]
pub(crate) struct UrlTransport {
    http: reqwest::Client,
    /// HTTP/1.1 only, for file transfers (see the protocol notes).
    http1: reqwest::Client,
}

impl std::fmt::Debug for UrlTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlTransport")
    }
}

impl UrlTransport {
    pub(crate) fn new() -> Result<Self> {
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
        Ok(UrlTransport {
            http: build(false)?,
            http1: build(true)?,
        })
    }
}

impl Transport for UrlTransport {
    fn send(
        &self,
        request: http::Request<Body>,
        call: Call,
    ) -> BoxFuture<'_, Result<http::Response<Body>>> {
        Box::pin(async move {
            let op = call.op;
            let base = format!(
                "{}://{}",
                request.uri().scheme_str().unwrap_or("http"),
                request.uri().authority().map(|a| a.as_str()).unwrap_or("")
            );
            let (parts, body) = request.into_parts();
            // A body of known size goes as bytes: reqwest sends it with its length and may send
            // it again on an HTTP/2 refusal (GOAWAY, REFUSED_STREAM), which a stream cannot.
            let body = match http_body::Body::size_hint(&body).exact() {
                Some(_) => reqwest::Body::from(
                    body.collect()
                        .await
                        .map_err(|e| {
                            err(ErrorKind::InvalidInput, op, "cannot read the envd request")
                                .with_source(e)
                        })?
                        .to_bytes(),
                ),
                None => reqwest::Body::wrap_stream(body.into_data_stream()),
            };
            let mut request: reqwest::Request = http::Request::from_parts(parts, body)
                .try_into()
                .map_err(|e| {
                err(ErrorKind::InvalidInput, op, "cannot build the envd request").with_source(e)
            })?;
            *request.timeout_mut() = call.timeout;
            let client = if call.file_transfer {
                &self.http1
            } else {
                &self.http
            };
            let response = client
                .execute(request)
                .await
                .map_err(|e| transport_error(e, op, &base))?;
            let response: http::Response<reqwest::Body> = response.into();
            Ok(response.map(|b| {
                b.into_data_stream()
                    .map_err(move |e| Box::new(body_error(e, op)) as BoxError)
                    .into_body()
            }))
        })
    }
}

/// A body that stops with a reqwest error: its own error, timeouts told apart.
fn body_error(e: reqwest::Error, op: &'static str) -> Error {
    if e.is_timeout() {
        return err(ErrorKind::Timeout, op, "envd did not answer in time").with_source(e);
    }
    err(ErrorKind::Unavailable, op, "the answer from envd was cut").with_source(e)
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

/// A stream of chunks as a [`Body`].
trait IntoBody {
    fn into_body(self) -> Body;
}

impl<S> IntoBody for S
where
    S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, BoxError>> + Send + 'static,
{
    fn into_body(self) -> Body {
        http_body_util::StreamBody::new(self.map_ok(http_body::Frame::data)).boxed_unsync()
    }
}
