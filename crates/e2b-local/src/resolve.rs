//! How envd requests find their sandbox here: by the `E2b-Sandbox-Id` header (or a signed
//! `/files` URL) among the sandboxes this server holds, after checking the access token the
//! server derives for that sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use sandkit_core::ErrorKind;
use sandkit_e2b_protocol::{file_signature, headers, secrets_equal, DEBUG_SANDBOX_ID};
use sandkit_envd::{
    check_file_auth, plain_error, sandbox_not_found, unauthorized, Auth, FileQuery, Served,
};

use crate::state::{State, ENVS_KEY};

#[async_trait]
impl sandkit_envd::Resolve for State {
    /// Finds the sandbox a request is for, after checking its credentials.
    ///
    /// The check comes first and uses only what the server holds (tokens are derived from the
    /// server's secret and the sandbox id): a rejected request reaches no backend, resumes nothing
    /// and extends nothing.
    async fn resolve(&self, headers: &HeaderMap, auth: Auth<'_>) -> Result<Arc<Served>, Response> {
        let state = self;
        let id = match headers
            .get(headers::SANDBOX_ID)
            .and_then(|v| v.to_str().ok())
        {
            Some(id) => id.to_string(),
            None => match &auth {
                Auth::File { query, op } if query.signature.is_some() => {
                    signed_sandbox(state, query, op).await?
                }
                _ => return Err(plain_error(
                    StatusCode::BAD_REQUEST,
                    "no E2b-Sandbox-Id header: this server serves many sandboxes and routes by that header",
                )),
            },
        };
        if id == DEBUG_SANDBOX_ID {
            if !state.config.debug {
                return Err(sandbox_not_found(&id));
            }
            // Debug mode: the SDK sends no token, and the sandbox is made on first use.
            let served = state.debug_sandbox().await.map_err(|e| {
                plain_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot make the debug sandbox: {e}"),
                )
            })?;
            return Ok(served);
        }
        if !state.config.insecure_no_auth {
            let token = state.access_token(&id);
            let token_given = secrets_equal(
                headers
                    .get(headers::ACCESS_TOKEN)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default(),
                &token,
            );
            match auth {
                Auth::Header => {
                    if !token_given {
                        return Err(unauthorized());
                    }
                }
                Auth::File { query, op } => check_file_auth(&token, headers, query, op)?,
                Auth::None => {
                    if !token_given {
                        // No credentials: answered from what the server holds, no backend call.
                        return match state.held_alive(&id).await {
                            Some(served) => Ok(served),
                            None => Err(sandbox_not_found(&id)),
                        };
                    }
                }
            }
        }
        let served = match state.live(&id).await {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(sandbox_not_found(&id)),
            Err(e) => return Err(plain_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        };
        Ok(served)
    }

    async fn envs(&self, served: &Served) -> Result<BTreeMap<String, String>, Response> {
        let info = served
            .sandbox()
            .info()
            .await
            .map_err(|e| plain_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(info
            .metadata
            .get(ENVS_KEY)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default())
    }
}

/// The sandbox of a signed `/files` URL that carries no sandbox header (the SDK's
/// `download_url`/`upload_url` with `E2B_SANDBOX_URL`): the one among those this server holds
/// whose token made the signature. No backend call: a forged signature costs hashing only.
async fn signed_sandbox(state: &State, q: &FileQuery, op: &str) -> Result<String, Response> {
    if state.config.insecure_no_auth {
        return Err(plain_error(
            StatusCode::BAD_REQUEST,
            "no E2b-Sandbox-Id header: without access tokens a signed URL names no sandbox",
        ));
    }
    let sig = q.signature.as_deref().unwrap_or_default();
    let path = q.path.as_deref().unwrap_or_default();
    let user = q.username.as_deref().unwrap_or("");
    for id in state.cached_ids().await {
        let token = state.access_token(&id);
        if secrets_equal(
            sig,
            &file_signature(path, op, user, &token, q.signature_expiration),
        ) {
            return Ok(id);
        }
    }
    Err(plain_error(StatusCode::UNAUTHORIZED, "invalid signature"))
}
