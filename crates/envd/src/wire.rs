//! What every service shares: error answers, JSON bodies, Connect streams.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sandkit_e2b_protocol::connect::{code_for_kind, encode_end_stream};
use sandkit_e2b_protocol::{headers, ConnectError, EnvelopeDecoder, STREAM_CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest unary request body.
pub(crate) const MAX_UNARY: usize = 4 << 20;

/// A JSON error answer, `{"code", "message"}`, as envd and its edge proxy send them.
pub fn plain_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    (status, Json(body)).into_response()
}

/// The edge proxy's answer for an unknown or expired sandbox (502).
pub fn sandbox_not_found(id: &str) -> Response {
    let body =
        serde_json::json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502});
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

pub(crate) fn connect_error_response(e: &ConnectError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e)).into_response()
}

pub(crate) fn from_core(e: &sandkit_core::Error) -> ConnectError {
    ConnectError::new(code_for_kind(e.kind()), e.message().to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConnectError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ConnectError::new("invalid_argument", format!("invalid request: {e}")))
}

pub(crate) fn reply<T: Serialize>(result: Result<T, ConnectError>) -> Response {
    match result {
        Ok(v) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&v).expect("json"),
        )
            .into_response(),
        Err(e) => connect_error_response(&e),
    }
}

/// An HTTP 200 stream of envelopes; an `Err` item breaks the response off (no end).
pub(crate) fn stream_response(body: BoxStream<'static, std::io::Result<Bytes>>) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, STREAM_CONTENT_TYPE)
        .body(Body::from_stream(body))
        .expect("response")
}

/// An HTTP 200 stream that holds only an end-of-stream error.
pub(crate) fn stream_error(e: ConnectError) -> Response {
    stream_response(
        futures_util::stream::once(async move { Ok(encode_end_stream(Some(&e))) }).boxed(),
    )
}

/// Reads the first envelope of a streaming request.
pub(crate) async fn first_message<T: DeserializeOwned>(body: Body) -> Result<T, ConnectError> {
    let mut decoder = EnvelopeDecoder::default();
    let mut stream = body.into_data_stream();
    loop {
        if let Some(env) = decoder
            .next_envelope()
            .map_err(|e| ConnectError::new("invalid_argument", e.0))?
        {
            return decode(&env.payload);
        }
        match stream.next().await {
            Some(Ok(chunk)) => decoder.push(&chunk),
            Some(Err(e)) => return Err(ConnectError::new("canceled", e.to_string())),
            None => {
                return Err(ConnectError::new(
                    "invalid_argument",
                    "the request has no message",
                ))
            }
        }
    }
}

pub(crate) fn keepalive_interval(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get(headers::KEEPALIVE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(90);
    Duration::from_secs(secs)
}

pub(crate) fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let ms = headers
        .get(headers::CONNECT_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)?;
    Some(Duration::from_millis(ms))
}

/// What every streaming call starts with: the sandbox (credentials checked), the request's
/// first message, and the user it acts as. `Err` is the whole answer.
pub(crate) async fn open_stream<T: DeserializeOwned>(
    state: &crate::Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<(std::sync::Arc<crate::Served>, T, String), Response> {
    let served = state.resolve(headers, crate::Auth::Header).await?;
    let req: T = first_message(body).await.map_err(stream_error)?;
    let user = crate::auth::user_of(&served, crate::auth::basic_user(headers))
        .await
        .map_err(stream_error)?;
    Ok((served, req, user))
}
