//! The control-plane client (REST).

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use sandkit_core::{Error, ErrorKind, Result};
use sandkit_e2b_protocol::api::ApiError;
use sandkit_e2b_protocol::headers;
use serde::de::DeserializeOwned;

use crate::config::E2bConfig;
use crate::error::{err, kind_of_status};

/// Idle pooled connections are dropped before a server closes them (e2b-local keeps an idle
/// HTTP/1 connection 30 s by default): a request never races the server's close.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(20);

/// The user agent, as the Python SDK sends it on REST calls.
pub(crate) const USER_AGENT: &str = concat!("sandkit-e2b/", env!("CARGO_PKG_VERSION"));

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
