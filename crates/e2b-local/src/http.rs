//! What every route file shares: the server's state as routes hold it, and the API's answers
//! (errors as `{"code", "message"}`, `429` with `Retry-After`, a backend error's status,
//! request bodies parsed or refused).

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandkit_core::ErrorKind;
use sandkit_e2b_protocol::api::ApiError;
use sandkit_e2b_protocol::headers;

use crate::state::State;

pub(crate) type Shared = Arc<State>;

/// An API error answer: `{"code": status, "message": ...}`.
pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ApiError {
        code: status.as_u16(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

/// `429` with `Retry-After`. Past a few seconds the connection is closed after it: a client
/// that waits as told would otherwise send its retry on a connection the server closes as
/// idle at about the same moment (the header timeout, 30 s) and see it reset.
pub(crate) fn too_many(message: String, retry_after: u64) -> Response {
    let mut r = api_error(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_str(&retry_after.to_string()).expect("digits"),
    );
    if retry_after >= 10 {
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    r
}

/// The answer to a request whose key was revoked while it ran.
pub(crate) fn revoked_meanwhile() -> Response {
    api_error(
        StatusCode::UNAUTHORIZED,
        "Invalid API key, please check your E2B_API_KEY (it was revoked while this request ran)",
    )
}

pub(crate) fn not_found(id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        format!("Sandbox \"{id}\" doesn't exist or you don't have access to it"),
    )
}

pub(crate) fn from_error(e: &sandkit_core::Error, id: &str) -> Response {
    let mut response = match e.kind() {
        ErrorKind::NotFound => not_found(id),
        ErrorKind::InvalidInput => api_error(StatusCode::BAD_REQUEST, e.to_string()),
        ErrorKind::Conflict => api_error(StatusCode::CONFLICT, e.to_string()),
        ErrorKind::Unavailable | ErrorKind::Timeout => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        _ => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // The server's own retry layer already tried again (or trying again cannot help): a
    // client that would retry a 503 is told not to, so one call never multiplies into many.
    if response.status().is_server_error() && !e.is_retryable() {
        response
            .headers_mut()
            .insert(headers::SHOULD_RETRY, HeaderValue::from_static("false"));
    }
    response
}

/// Parses a JSON body, answering 400 with the reason when it is not.
pub(crate) fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, Response> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_wait_closes_the_connection_and_a_short_one_keeps_it() {
        // A client that waits 30 s as told must not retry on a connection closed as idle.
        let long = too_many("wait".into(), 30);
        assert_eq!(long.headers()["retry-after"], "30");
        assert_eq!(long.headers()["connection"], "close");
        let short = too_many("wait".into(), 1);
        assert!(short.headers().get("connection").is_none());
    }
}
