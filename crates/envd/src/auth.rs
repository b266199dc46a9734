//! Who may use a sandbox: [`Resolve`] finds the sandbox a request is for after checking its
//! credentials; [`OneSandbox`] is the resolver of a server with one sandbox and one token.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use sandkit_e2b_protocol::{file_signature, headers, secrets_equal, ConnectError};
use serde::Deserialize;

use crate::wire::plain_error;
use crate::Served;

/// How a request proves it may use the sandbox it is for.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `X-Access-Token` required (RPCs, `/envs`).
    Header,
    /// The header token, or the URL's signature for `op` (`/files`).
    File {
        /// The request's query.
        query: &'a FileQuery,
        /// `"read"` or `"write"`.
        op: &'static str,
    },
    /// None (`/health`).
    None,
}

/// Finds the sandbox a request is for, after checking its credentials.
///
/// The check must come first and use only what the server holds: a rejected request reaches
/// no backend. An `Err` is the whole answer (401, 502 for an unknown sandbox, ...).
#[async_trait]
pub trait Resolve: Send + Sync + 'static {
    /// The sandbox `headers` (and, for `/files`, the query) name, if the request may use it.
    async fn resolve(&self, headers: &HeaderMap, auth: Auth<'_>) -> Result<Arc<Served>, Response>;

    /// The environment variables the sandbox was made with (`GET /envs`).
    async fn envs(&self, served: &Served) -> Result<BTreeMap<String, String>, Response> {
        let _ = served;
        Ok(BTreeMap::new())
    }
}

/// A server of one sandbox: every request is for it, and is let in with `token` (when there
/// is one) in `X-Access-Token` or a URL signed with it. `/health` needs no token.
pub struct OneSandbox {
    served: Arc<Served>,
    token: Option<String>,
    envs: BTreeMap<String, String>,
}

impl std::fmt::Debug for OneSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneSandbox")
            .field("sandbox", &self.served.id())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl OneSandbox {
    /// Serves `served`, letting in requests that carry `token` (`None`: no token needed).
    pub fn new(served: Arc<Served>, token: Option<String>) -> Self {
        OneSandbox {
            served,
            token,
            envs: BTreeMap::new(),
        }
    }

    /// Sets what `GET /envs` answers.
    pub fn envs(mut self, envs: BTreeMap<String, String>) -> Self {
        self.envs = envs;
        self
    }
}

#[async_trait]
impl Resolve for OneSandbox {
    async fn resolve(&self, headers: &HeaderMap, auth: Auth<'_>) -> Result<Arc<Served>, Response> {
        if let Some(token) = &self.token {
            match auth {
                Auth::None => {}
                Auth::File { query, op } => check_file_auth(token, headers, query, op)?,
                Auth::Header => {
                    let given = headers
                        .get(headers::ACCESS_TOKEN)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    if !secrets_equal(given, token) {
                        return Err(unauthorized());
                    }
                }
            }
        }
        Ok(self.served.clone())
    }

    async fn envs(&self, _: &Served) -> Result<BTreeMap<String, String>, Response> {
        Ok(self.envs.clone())
    }
}

/// envd's answer to a request without valid credentials.
pub fn unauthorized() -> Response {
    plain_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized access, please provide a valid access token or method signing if supported",
    )
}

/// The query of a `/files` request.
#[derive(Debug, Default, Deserialize)]
pub struct FileQuery {
    /// The file's path.
    pub path: Option<String>,
    /// The user the request acts as.
    pub username: Option<String>,
    /// A signature of the URL made with the access token, in place of the header.
    pub signature: Option<String>,
    /// When the signature expires (Unix seconds).
    pub signature_expiration: Option<u64>,
}

/// Checks the header token or the URL signature of a `/files` request against `token`.
pub fn check_file_auth(
    token: &str,
    headers: &HeaderMap,
    q: &FileQuery,
    op: &str,
) -> Result<(), Response> {
    if let Some(given) = headers
        .get(headers::ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok())
    {
        if secrets_equal(given, token) {
            return Ok(());
        }
        return Err(plain_error(
            StatusCode::UNAUTHORIZED,
            "invalid access token",
        ));
    }
    let Some(sig) = &q.signature else {
        return Err(unauthorized());
    };
    if let Some(exp) = q.signature_expiration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if exp < now {
            return Err(plain_error(
                StatusCode::UNAUTHORIZED,
                "signature is already expired",
            ));
        }
    }
    let expected = file_signature(
        q.path.as_deref().unwrap_or(""),
        op,
        q.username.as_deref().unwrap_or(""),
        token,
        q.signature_expiration,
    );
    if secrets_equal(sig, &expected) {
        Ok(())
    } else {
        Err(plain_error(StatusCode::UNAUTHORIZED, "invalid signature"))
    }
}

/// The user from `Authorization: Basic base64("user:")`, if any.
pub(crate) fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next()?.to_string();
    (!user.is_empty()).then_some(user)
}

/// A user name as envd accepts it.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !user.starts_with(['-', '.'])
}

/// The user a request acts as: the one it names, else the sandbox's default.
pub(crate) async fn user_of(
    served: &Served,
    asked: Option<String>,
) -> Result<String, ConnectError> {
    match asked {
        Some(u) if valid_user(&u) => Ok(u),
        Some(u) => Err(ConnectError::new(
            "unauthenticated",
            format!("invalid username: '{u}'"),
        )),
        None => Ok(served.default_user().await),
    }
}
