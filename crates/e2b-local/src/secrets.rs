//! E2B's `Secret` API: values a key keeps on the server for its sandboxes' request rules to
//! name (`${e2b.secrets.NAME}` in a header of `network.rules`). A value is write-only: no
//! answer carries it, and it never enters a sandbox: the backend's network guard puts it in
//! the requests the rules apply to.
//!
//! Each key's secrets are files in `<data dir>/secrets/<tenant>/`, readable by the server's
//! user only. When a secret is created, updated or deleted, the running sandboxes of its key
//! whose rules name it get the change at once (their next request uses the new value, or
//! fails saying the secret is not set).

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandkit_e2b_protocol::api::{NewSecret, SecretInfo, SecretUpdate};
use tracing::warn;

use crate::caller::Caller;
use crate::http::{api_error, parse};
use crate::secret_store::Kept;

/// Secrets one key may keep.
const MAX_PER_KEY: usize = 1000;
/// The longest value kept.
const MAX_VALUE: usize = 64 << 10;

/// A secret name as E2B takes it: not empty, no braces or control characters, not `sec_…`.
fn check_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c == '{' || c == '}' || c.is_control())
    {
        return Err(format!(
            "secret name {name:?} is not valid: 1 to 255 characters, no braces or control \
             characters"
        ));
    }
    if lower.starts_with("sec_") {
        return Err("secret names may not start with 'sec_' (reserved for secret ids)".into());
    }
    Ok(lower)
}

fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!("a secret's value is at most {MAX_VALUE} bytes"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("a secret's value goes into a header: it may not hold a line break".into());
    }
    Ok(())
}

fn io_error(e: std::io::Error) -> Response {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the server cannot keep the secret: {e}"),
    )
}

fn secret_not_found(id: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, format!("Secret {id} not found"))
}

/// `POST /secrets`.
pub(crate) async fn create(state: Caller, body: Bytes) -> Response {
    let req: NewSecret = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = match check_name(&req.name).and_then(|n| check_value(&req.value).map(|()| n)) {
        Ok(n) => n,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    let tenant = state.tenant();
    let kept = {
        let _writing = state.secrets.writing.lock().await;
        let all = state.secrets.all(&tenant);
        if all.iter().any(|k| k.name == name) {
            return api_error(
                StatusCode::CONFLICT,
                format!("a secret named {name:?} exists; update it instead"),
            );
        }
        if all.len() >= MAX_PER_KEY {
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("secret_limit_reached: this key keeps at most {MAX_PER_KEY} secrets"),
            );
        }
        let now = SystemTime::now();
        let kept = Kept {
            id: format!("sec_{:024x}", rand::random::<u128>() >> 32),
            name,
            value: req.value,
            version: 1,
            metadata: req.metadata.unwrap_or_default(),
            created: now,
            updated: now,
        };
        if let Err(e) = state.secrets.write(&tenant, &kept) {
            return io_error(e);
        }
        kept
    };
    reapply(&state, &kept.name).await;
    (StatusCode::CREATED, Json(kept.info())).into_response()
}

/// `GET /secrets`: oldest first, `limit` at a time, the next page's token in `x-next-token`.
pub(crate) async fn list(state: Caller, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(100)
        .min(1000);
    let from = q
        .get("nextToken")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let all = state.secrets.all(&state.tenant());
    let page: Vec<SecretInfo> = all.iter().skip(from).take(limit).map(Kept::info).collect();
    let mut response = Json(page).into_response();
    let next = from.saturating_add(limit);
    if next < all.len() {
        if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
            response.headers_mut().insert("x-next-token", v);
        }
    }
    response
}

/// `GET /secrets/{id}`.
pub(crate) async fn get_info(state: Caller, UrlPath(id): UrlPath<String>) -> Response {
    match state.secrets.find(&state.tenant(), &id) {
        Some(k) => Json(k.info()).into_response(),
        None => secret_not_found(&id),
    }
}

/// `POST /secrets/{id}`: a new version of the value (and the metadata, when sent).
pub(crate) async fn update(state: Caller, UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
    let req: SecretUpdate = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(m) = check_value(&req.value) {
        return api_error(StatusCode::BAD_REQUEST, m);
    }
    let tenant = state.tenant();
    let kept = {
        let _writing = state.secrets.writing.lock().await;
        let Some(mut kept) = state.secrets.find(&tenant, &id) else {
            return secret_not_found(&id);
        };
        kept.value = req.value;
        kept.version += 1;
        if let Some(m) = req.metadata {
            kept.metadata = m;
        }
        kept.updated = SystemTime::now();
        if let Err(e) = state.secrets.write(&tenant, &kept) {
            return io_error(e);
        }
        kept
    };
    reapply(&state, &kept.name).await;
    Json(kept.info()).into_response()
}

/// `DELETE /secrets/{id}`: requests that name it fail from now on.
pub(crate) async fn destroy(state: Caller, UrlPath(id): UrlPath<String>) -> Response {
    let tenant = state.tenant();
    let name = {
        let _writing = state.secrets.writing.lock().await;
        let Some(kept) = state.secrets.find(&tenant, &id) else {
            return secret_not_found(&id);
        };
        if let Err(e) = state.secrets.remove(&tenant, &kept.id) {
            return io_error(e);
        }
        kept.name
    };
    reapply(&state, &name).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Gives the running sandboxes of the caller's key whose rules name secret `name` its value
/// as it is now (or none, when it was deleted), in the policy each is held to. A paused
/// sandbox gets it when it is resumed ([`State::refill_secrets`](crate::state::State)).
async fn reapply(state: &Caller, name: &str) {
    let _applying = state.secrets.applying.lock().await;
    let Ok(list) = state.runtime.list(&state.owned_filter()).await else {
        return;
    };
    for info in list {
        if info.state != sandkit_core::SandboxState::Running {
            continue;
        }
        let Some(mut policy) = state.secrets.policy_in_force(&info.id) else {
            continue;
        };
        if !policy.secret_names().iter().any(|n| n == name) {
            continue;
        }
        state.secrets.fill(&state.tenant(), &mut policy);
        let applied = match state.served(&info.id).await {
            Ok(served) => served.sandbox().set_network_policy(policy).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            warn!(sandbox = %info.id, error = %e, "a sandbox's rules did not get a secret's change");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked() {
        assert_eq!(check_name("OpenAI-Key").unwrap(), "openai-key");
        for bad in ["", "a{b", "a}b", "a\nb", "sec_x", "SEC_x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_value("sk-1").is_ok());
        assert!(check_value("a\r\nInjected: 1").is_err());
    }
}
