//! Snapshots and forks, as E2B's API answers them: `POST /sandboxes/{id}/snapshots`,
//! `GET /snapshots`, `DELETE /templates/{id}` (a snapshot is a template there) and
//! `POST /sandboxes/{id}/fork`.
//!
//! A snapshot belongs to the key that made it: it carries the sandbox's metadata, owner
//! included, and another key neither lists, deletes nor makes sandboxes from it. Names are
//! kept apart per key (`<tenant>/<name>`), as E2B keeps them per team. Memory is not kept
//! (`memory: true` is refused): a sandbox made from a snapshot starts its processes afresh.

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandkit_core::{ErrorKind, Snapshot, MAX_FORKS};
use sandkit_e2b_protocol::api::{ApiError, ForkRequest, ForkResult, SnapshotInfo, SnapshotRequest};
use serde::Deserialize;
use tracing::info;

use crate::caller::Caller;
use crate::control::{check_timeout, created};
use crate::http::{api_error, from_error, parse, too_many};
use crate::state::{State, OWNER_KEY};

/// The most entries one page of `GET /snapshots` holds.
const MAX_PAGE: usize = 1000;

fn info_of(s: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: s.id.clone(),
        names: s.names.clone(),
    }
}

/// The snapshots of this key.
async fn owned(state: &Caller, sandbox_id: Option<&str>) -> sandkit_core::Result<Vec<Snapshot>> {
    Ok(state
        .runtime
        .snapshots(sandbox_id)
        .await?
        .into_iter()
        .filter(|s| s.metadata.get(OWNER_KEY).map(String::as_str) == Some(state.owner()))
        // A template's snapshots are the template's (see `crate::templates`).
        .filter(|s| !s.metadata.contains_key(crate::templates::ALIAS_KEY))
        .collect())
}

fn unsupported(state: &State) -> Option<Response> {
    (!state.runtime.capabilities().snapshots).then(|| {
        api_error(
            StatusCode::NOT_IMPLEMENTED,
            "snapshots and forks are not supported by this server's backend",
        )
    })
}

/// `POST /sandboxes/{id}/snapshots`.
pub(crate) async fn create(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    if let Some(r) = unsupported(&state) {
        return r;
    }
    let req: SnapshotRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.memory == Some(true) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "memory snapshots (mode=\"full\") need E2B's cloud: e2b-local keeps a sandbox's \
             file system only; take the snapshot with mode=\"filesystem\", or without a mode",
        );
    }
    let name = match req.name.as_deref() {
        Some("") | None => None,
        Some(n) if n.contains(['/', ':']) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("snapshot name '{n}' cannot hold '/' or ':' (the tag is always 'default')"),
            )
        }
        Some(n) => Some(format!("{}/{n}", state.tenant())),
    };
    let served = match state.served(&id).await {
        Ok(s) => s,
        Err(e) => return from_error(&e, &id),
    };
    // A snapshot holds disk: a key keeps at most its `max_snapshots`. (Two snapshots taken
    // at the same moment may both pass: the count is of what the engine holds.)
    let max = state.key.limits.max_snapshots;
    match owned(&state, None).await {
        Ok(kept) if kept.len() >= max => {
            state.metrics.refused(&state.key.name, "snapshots");
            return too_many(
                format!("this key may keep at most {max} snapshots; delete one first"),
                60,
            );
        }
        Ok(_) => {}
        Err(e) => return from_error(&e, &id),
    }
    if let Some(full) = crate::disk::refuse_if_full(&state, &state.key).await {
        return full;
    }
    match served.sandbox().snapshot(name.as_deref()).await {
        Ok(s) => {
            info!(sandbox_id = %id, snapshot = %s.id, "snapshot taken");
            (StatusCode::CREATED, Json(info_of(&s))).into_response()
        }
        Err(e) if e.kind() == ErrorKind::InvalidInput => api_error(
            StatusCode::BAD_REQUEST,
            e.message().replace(&state.tenant(), ""),
        ),
        Err(e) => from_error(&e, &id),
    }
}

/// `GET /snapshots` query.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
}

/// `GET /snapshots`: newest first, a page at a time (`x-next-token`).
pub(crate) async fn list(state: Caller, Query(q): Query<ListQuery>) -> Response {
    if let Some(r) = unsupported(&state) {
        return r;
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_PAGE}"),
        );
    }
    let start = match q.next_token.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return api_error(StatusCode::BAD_REQUEST, "nextToken is not one we gave"),
    };
    let mut all = match owned(&state, q.sandbox_id.as_deref()).await {
        Ok(a) => a,
        Err(e) => return from_error(&e, q.sandbox_id.as_deref().unwrap_or("")),
    };
    if let Some(name) = q.name.as_deref().filter(|n| !n.is_empty()) {
        let name = name.strip_suffix(":default").unwrap_or(name);
        let own = format!("/{}/{name}", state.tenant());
        all.retain(|s| {
            s.names.iter().any(|n| {
                let bare = n.rsplit_once(':').map_or(n.as_str(), |(b, _)| b);
                n == name || bare.ends_with(&own)
            })
        });
    }
    let page: Vec<SnapshotInfo> = all.iter().skip(start).take(limit).map(info_of).collect();
    let mut r = Json(page).into_response();
    if start + limit < all.len() {
        r.headers_mut().insert(
            "x-next-token",
            HeaderValue::from_str(&(start + limit).to_string()).expect("digits"),
        );
    }
    r
}

/// `DELETE /templates/{id}`: deletes a snapshot of this key (204); anything else is 404,
/// which the SDK's `delete_snapshot` reads as "nothing was deleted".
pub(crate) async fn delete(state: Caller, Path(id): Path<String>) -> Response {
    let gone = || {
        api_error(
            StatusCode::NOT_FOUND,
            format!("template '{id}' not found: e2b-local deletes only the snapshots and templates this key made"),
        )
    };
    if !state.runtime.capabilities().snapshots {
        return gone();
    }
    let mine = match owned(&state, None).await {
        Ok(m) => m,
        Err(e) => return from_error(&e, ""),
    };
    let Some(snapshot) = mine.iter().find(|s| s.id == id || s.names.contains(&id)) else {
        return match crate::templates::delete(&state, &id).await {
            Some(Ok(())) => {
                info!(template = %id, "template deleted");
                StatusCode::NO_CONTENT.into_response()
            }
            Some(Err(e)) => from_error(&e, ""),
            None => gone(),
        };
    };
    match state.runtime.delete_snapshot(&snapshot.id).await {
        Ok(()) => {
            info!(snapshot = %snapshot.id, "snapshot deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) if e.kind() == ErrorKind::NotFound => gone(),
        Err(e) => from_error(&e, ""),
    }
}

/// `POST /sandboxes/{id}/fork`: `count` copies, each a sandbox or the reason it is not.
pub(crate) async fn fork(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    if let Some(r) = unsupported(&state) {
        return r;
    }
    let req: ForkRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let count = req.count.unwrap_or(1);
    if !(1..=MAX_FORKS as i64).contains(&count) {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("count must be 1 to {MAX_FORKS}, not {count}"),
        );
    }
    let timeout = match check_timeout(&state, req.timeout.unwrap_or(300)) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let served = match state.served(&id).await {
        Ok(s) => s,
        Err(e) => return from_error(&e, &id),
    };
    // Each copy is a create: the key's limits hold for all of them before any is made.
    let mut admitted = Vec::new();
    for _ in 0..count {
        match state.admit_create().await {
            Ok(a) => admitted.push(a),
            Err((message, retry_after)) => return too_many(message, retry_after),
        }
    }
    let copies = match served.sandbox().fork(count as usize, Some(timeout)).await {
        Ok(c) => c,
        Err(e) => return from_error(&e, &id),
    };
    let mut out = Vec::new();
    for copy in copies {
        let result = match copy {
            Ok(sandbox) => match sandbox.info().await {
                Ok(info) => {
                    state.remember_made(&info.id).await;
                    state.insert(sandbox).await;
                    if state.revoked_meanwhile(state.owner(), &info.id).await {
                        return crate::http::revoked_meanwhile();
                    }
                    info!(sandbox_id = %info.id, source = %id, "sandbox forked");
                    let fields = vec![("forked_from", id.clone())];
                    state.logs.event_with(
                        state.owner(),
                        &info.id,
                        "info",
                        "Sandbox created",
                        fields,
                    );
                    ForkResult {
                        sandbox: Some(created(&state, &info)),
                        error: None,
                    }
                }
                Err(e) => failed(&e),
            },
            Err(e) => failed(&e),
        };
        out.push(result);
    }
    drop(admitted);
    (StatusCode::CREATED, Json(out)).into_response()
}

fn failed(e: &sandkit_core::Error) -> ForkResult {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unavailable | ErrorKind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ForkResult {
        sandbox: None,
        error: Some(ApiError {
            code: status.as_u16(),
            message: e.to_string(),
        }),
    }
}
