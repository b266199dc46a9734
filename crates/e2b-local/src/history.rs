//! Sandboxes' metrics over time: a sample of every sandbox this server holds, every
//! [`INTERVAL`] (as E2B samples), kept for an hour in memory; served by
//! `GET /sandboxes/{id}/metrics` (the samples in a range), `GET /sandboxes/metrics` (the
//! latest sample of each sandbox asked for) and the dashboard's plots.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandkit_core::Metrics;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::caller::Caller;
use crate::http::api_error;
use crate::state::State;

/// How often each held sandbox is measured.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per sandbox: an hour's.
const KEEP: usize = 720;
/// A sandbox not measured for this long is forgotten (it ended, or is no longer held).
const FORGET: Duration = Duration::from_secs(3600);
/// Longest wait for one sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most sandboxes one batch request may name (E2B's limit).
const MAX_BATCH: usize = 100;

/// The samples of every sandbox measured lately.
#[derive(Debug, Default)]
pub(crate) struct History {
    inner: Mutex<HashMap<String, Track>>,
}

#[derive(Debug)]
struct Track {
    owner: String,
    samples: VecDeque<Metrics>,
    seen: Instant,
}

impl History {
    /// Keeps a sample of sandbox `id`, owned by `owner`.
    pub(crate) fn add(&self, owner: &str, id: &str, sample: Metrics) {
        let mut inner = self.inner.lock().expect("history");
        let track = inner.entry(id.to_string()).or_insert_with(|| Track {
            owner: owner.to_string(),
            samples: VecDeque::new(),
            seen: Instant::now(),
        });
        if track.owner != owner {
            return;
        }
        track.seen = Instant::now();
        track.samples.push_back(sample);
        if track.samples.len() > KEEP {
            track.samples.pop_front();
        }
    }

    /// Forgets the sandboxes not measured for [`FORGET`].
    fn prune(&self) {
        self.inner
            .lock()
            .expect("history")
            .retain(|_, t| t.seen.elapsed() < FORGET);
    }

    /// The samples of `id` for `owner` taken inside `[start, end]` (Unix seconds, both
    /// optional), oldest first.
    pub(crate) fn range(
        &self,
        owner: &str,
        id: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Vec<Metrics> {
        let inner = self.inner.lock().expect("history");
        match inner.get(id) {
            Some(t) if t.owner == owner => t
                .samples
                .iter()
                .filter(|m| {
                    let at = unix(m.timestamp);
                    start.is_none_or(|s| at >= s) && end.is_none_or(|e| at <= e)
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The newest sample of `id` for `owner`.
    pub(crate) fn latest(&self, owner: &str, id: &str) -> Option<Metrics> {
        let inner = self.inner.lock().expect("history");
        inner
            .get(id)
            .filter(|t| t.owner == owner)
            .and_then(|t| t.samples.back().cloned())
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A sample as E2B's API gives it (`SandboxMetric`).
pub(crate) fn json(m: &Metrics) -> Value {
    json!({
        "timestamp": sandkit_e2b_protocol::json::rfc3339(m.timestamp),
        "timestampUnix": unix(m.timestamp),
        "cpuCount": m.cpu_count,
        "cpuUsedPct": m.cpu_used_pct,
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
    })
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
            sandboxes.insert(id.to_string(), json(&m));
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
