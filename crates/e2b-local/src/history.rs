//! Sandboxes' metrics over time: a sample of every running sandbox this server holds, every
//! [`INTERVAL`] (as E2B samples; [`crate::observe`] takes them), kept for an hour in memory;
//! served by `GET /sandboxes/{id}/metrics` (the samples in a range), `GET /sandboxes/metrics`
//! (the latest sample of each sandbox asked for) and the dashboard's plots.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sandkit_core::Metrics;
use serde_json::{json, Value};

/// How often each held sandbox is measured.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per sandbox: an hour's.
const KEEP: usize = 720;
/// A sandbox not measured for this long is forgotten (it ended, or is no longer held).
const FORGET: Duration = Duration::from_secs(3600);

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
    pub(crate) fn prune(&self) {
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
