//! What a client reads of its sandboxes besides their state: their logs
//! (`GET /sandboxes/{id}/logs`, `GET /v2/sandboxes/{id}/logs`, from [`crate::logs`]) and the
//! latest metrics of many at once (`GET /sandboxes/metrics`, from [`crate::history`], which
//! [`sample_all`] fills).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandkit_core::Metrics;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::caller::Caller;
use crate::history::{json as metric_json, INTERVAL};
use crate::http::api_error;
use crate::logs::{rank, Entry, WINDOW};
use crate::state::State;

/// Longest v2 page, and longest `search`.
const MAX_LIMIT: usize = 1000;
const MAX_SEARCH: usize = 256;
/// Longest wait for one sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most sandboxes one batch request may name (E2B's limit).
const MAX_BATCH: usize = 100;

/// The sandbox id of a logs path: E2B's `id-suffix` form is cut to `id`; anything but lower
/// letters and digits is refused.
fn sandbox_id(raw: &str) -> Result<&str, Response> {
    let id = raw.split_once('-').map_or(raw, |(id, _)| id);
    let valid = raw.matches('-').nth(1).is_none()
        && !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(id)
    } else {
        Err(api_error(StatusCode::BAD_REQUEST, "Invalid sandbox ID"))
    }
}

fn millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct V1Query {
    start: Option<i64>,
    limit: Option<usize>,
}

/// `GET /sandboxes/{id}/logs`: from `start` (ms; default 7 days ago) to now, oldest first, at
/// most `limit` (default 1000).
pub(crate) async fn v1(
    state: Caller,
    Path(id): Path<String>,
    Query(q): Query<V1Query>,
) -> Response {
    let id = match sandbox_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let now = SystemTime::now();
    let from = q.start.map_or(now - WINDOW, millis).max(now - WINDOW);
    let entries: Vec<Entry> = state
        .logs
        .read(state.owner(), id, from, now)
        .into_iter()
        .take(q.limit.unwrap_or(MAX_LIMIT))
        .collect();
    let logs: Vec<Value> = entries
        .iter()
        .map(|e| json!({"timestamp": sandkit_e2b_protocol::json::rfc3339(e.at), "line": e.line()}))
        .collect();
    let log_entries: Vec<Value> = entries.iter().map(Entry::json).collect();
    Json(json!({"logs": logs, "logEntries": log_entries})).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct V2Query {
    cursor: Option<i64>,
    limit: Option<usize>,
    direction: Option<String>,
    level: Option<String>,
    search: Option<String>,
}

/// `GET /v2/sandboxes/{id}/logs`: a page of at most `limit` entries (default and most 1000)
/// from `cursor` (ms) `backward` (the default: newest first, up to the cursor) or `forward`
/// (oldest first, from it), of at least `level`, whose message holds `search`.
pub(crate) async fn v2(
    state: Caller,
    Path(id): Path<String>,
    Query(q): Query<V2Query>,
) -> Response {
    let id = match sandbox_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let bad = |m: String| api_error(StatusCode::BAD_REQUEST, m);
    let limit = q.limit.unwrap_or(MAX_LIMIT);
    if limit > MAX_LIMIT {
        return bad(format!("limit must be at most {MAX_LIMIT}"));
    }
    let forward = match q.direction.as_deref() {
        None | Some("backward") => false,
        Some("forward") => true,
        Some(other) => {
            return bad(format!(
                "direction must be forward or backward, not {other:?}"
            ))
        }
    };
    let least = match q.level.as_deref().map(|l| (l, rank(l))) {
        None => 0,
        Some((_, Some(r))) => r,
        Some((l, None)) => {
            return bad(format!(
                "level must be debug, info, warn or error, not {l:?}"
            ))
        }
    };
    let search = q.search.unwrap_or_default();
    if search.chars().count() > MAX_SEARCH {
        return bad(format!("search must be at most {MAX_SEARCH} characters"));
    }
    let now = SystemTime::now();
    let (from, to) = match (q.cursor.map(millis), forward) {
        (None, _) => (now - WINDOW, now),
        (Some(c), false) => (c.checked_sub(WINDOW).unwrap_or(SystemTime::UNIX_EPOCH), c),
        (Some(c), true) => (c, c + WINDOW),
    };
    let from = from.max(now - WINDOW);
    let mut entries: Vec<Entry> = state
        .logs
        .read(state.owner(), id, from, to)
        .into_iter()
        .filter(|e| rank(e.level).unwrap_or(1) >= least && e.message.contains(&search))
        .collect();
    if !forward {
        entries.reverse();
    }
    let logs: Vec<Value> = entries.iter().take(limit).map(Entry::json).collect();
    Json(json!({ "logs": logs })).into_response()
}

/// Most sandboxes measured at once.
const AT_ONCE: usize = 16;

/// Measures every running sandbox the server holds, every [`INTERVAL`], until `stop` turns
/// true (at most [`AT_ONCE`] at a time; paused ones are not asked).
pub(crate) async fn sample_all(state: Arc<State>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use futures_util::StreamExt;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        state.history.prune();
        let held = state.all_held().await;
        if held.is_empty() {
            continue;
        }
        let running: HashSet<String> = match state
            .runtime
            .list(&sandkit_core::ListFilter::all().state(sandkit_core::SandboxState::Running))
            .await
        {
            Ok(list) => list.into_iter().map(|i| i.id).collect(),
            Err(_) => continue,
        };
        futures_util::stream::iter(held.into_iter().filter(|(id, _, _)| running.contains(id)))
            .for_each_concurrent(AT_ONCE, |(id, owner, served)| {
                let history = state.history.clone();
                async move {
                    let sample = tokio::time::timeout(SAMPLE_TIMEOUT, served.sandbox().metrics());
                    if let Ok(Ok(m)) = sample.await {
                        history.add(&owner, &id, m);
                    }
                }
            })
            .await;
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct BatchQuery {
    sandbox_ids: Option<String>,
}

/// `GET /sandboxes/metrics?sandbox_ids=a,b`: the newest sample the sampler kept of each named
/// sandbox of the caller's, by id; ids that are not the caller's, or have no sample yet (made
/// in the last few seconds), are left out, as on E2B.
pub(crate) async fn batch(state: Caller, Query(q): Query<BatchQuery>) -> Response {
    let bad = |m: &str| api_error(StatusCode::BAD_REQUEST, m);
    let Some(ids) = q.sandbox_ids.filter(|s| !s.is_empty()) else {
        return bad("sandbox_ids is required: a comma-separated list of sandbox ids");
    };
    let ids: Vec<&str> = ids.split(',').map(str::trim).collect();
    if ids.len() > MAX_BATCH {
        return bad("Too many sandboxes requested, maximum is 100");
    }
    let mut seen = HashSet::new();
    if !ids.iter().all(|id| seen.insert(*id)) {
        return bad("sandbox_ids must not repeat an id");
    }
    if ids.iter().any(|id| {
        id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    }) {
        return bad("Invalid sandbox ID");
    }
    let mut sandboxes = Map::new();
    for id in ids {
        if let Some(m) = state.history.latest(state.owner(), id) {
            sandboxes.insert(id.to_string(), metric_json(&m));
        }
    }
    Json(json!({ "sandboxes": sandboxes })).into_response()
}

/// A sample of the caller's sandbox `id` taken now, if it can be measured (not kept: a client
/// that polls does not push the sampler's hour out).
pub(crate) async fn live(state: &Caller, id: &str) -> Option<Metrics> {
    let served = state.served(id).await.ok()?;
    let m = tokio::time::timeout(SAMPLE_TIMEOUT, served.sandbox().metrics())
        .await
        .ok()?
        .ok()?;
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_as_e2b_checks_them() {
        assert_eq!(sandbox_id("abc123").ok(), Some("abc123"));
        assert_eq!(sandbox_id("abc123-client").ok(), Some("abc123"));
        for bad in ["ABC", "a-b-c", "", "a.b", "-x"] {
            assert!(sandbox_id(bad).is_err(), "{bad}");
        }
    }
}
