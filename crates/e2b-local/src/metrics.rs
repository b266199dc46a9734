//! What an operator scrapes: counters and histograms the server keeps, and `GET /metrics` in
//! Prometheus' text format (an operator key needed).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram with [`BUCKETS`].
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, n) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if secs <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The server's counters, by label values.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Creates by key and outcome (`made`, `failed`).
    creates: BTreeMap<(String, &'static str), u64>,
    create_seconds: Histogram,
    /// Refusals by key and limit (`rate`, `concurrent`).
    refusals: BTreeMap<(String, &'static str), u64>,
    /// Requests by listener and status code.
    requests: BTreeMap<(&'static str, u16), u64>,
    request_seconds: BTreeMap<&'static str, Histogram>,
}

/// A sandbox as a scrape counts it: its key's name and its state.
pub(crate) struct Counted {
    pub(crate) key: String,
    pub(crate) state: &'static str,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("metrics"))
    }

    /// A create by `key` ended: made (with how long it took) or failed.
    pub(crate) fn create(&self, key: &str, took: Option<Duration>) {
        self.with(|m| {
            let outcome = if took.is_some() { "made" } else { "failed" };
            *m.creates.entry((key.to_string(), outcome)).or_default() += 1;
            if let Some(took) = took {
                m.create_seconds.observe(took);
            }
        });
    }

    /// A create by `key` was refused by a limit (`rate` or `concurrent`).
    pub(crate) fn refused(&self, key: &str, limit: &'static str) {
        self.with(|m| *m.refusals.entry((key.to_string(), limit)).or_default() += 1);
    }

    /// A request on `listener` (`api`, `envd`) was answered with `status` after `took`.
    pub(crate) fn request(&self, listener: &'static str, status: u16, took: Duration) {
        self.with(|m| {
            *m.requests.entry((listener, status)).or_default() += 1;
            m.request_seconds.entry(listener).or_default().observe(took);
        });
    }

    /// The text of a scrape: these counters, and the sandboxes and keys as they are now.
    pub(crate) fn render(
        &self,
        sandboxes: &[Counted],
        keys: usize,
        runtime: &[sandkit_core::Gauge],
    ) -> String {
        let mut out = String::new();
        let mut gauge: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for s in sandboxes {
            *gauge.entry((&s.key, s.state)).or_default() += 1;
        }
        out.push_str("# HELP e2b_local_sandboxes Sandboxes on the engine, by key and state.\n");
        out.push_str("# TYPE e2b_local_sandboxes gauge\n");
        for ((key, state), n) in gauge {
            let _ = writeln!(
                out,
                "e2b_local_sandboxes{{key=\"{}\",state=\"{state}\"}} {n}",
                escape(key)
            );
        }
        out.push_str("# HELP e2b_local_keys API keys served.\n# TYPE e2b_local_keys gauge\n");
        let _ = writeln!(out, "e2b_local_keys {keys}");
        // The backend's own: a warm pool's depth, the network guard's state.
        for g in runtime {
            let name = format!("e2b_local_runtime_{}", g.name);
            let _ = writeln!(out, "# HELP {name} {}", g.help);
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", g.value);
        }
        self.with(|m| {
            out.push_str("# HELP e2b_local_creates_total Sandbox creates, by key and outcome.\n");
            out.push_str("# TYPE e2b_local_creates_total counter\n");
            for ((key, outcome), n) in &m.creates {
                let _ = writeln!(
                    out,
                    "e2b_local_creates_total{{key=\"{}\",outcome=\"{outcome}\"}} {n}",
                    escape(key)
                );
            }
            out.push_str("# HELP e2b_local_create_seconds Time to make a sandbox.\n");
            out.push_str("# TYPE e2b_local_create_seconds histogram\n");
            m.create_seconds
                .render(&mut out, "e2b_local_create_seconds", "");
            out.push_str(
                "# HELP e2b_local_quota_refusals_total Creates refused by a key's limits.\n",
            );
            out.push_str("# TYPE e2b_local_quota_refusals_total counter\n");
            for ((key, limit), n) in &m.refusals {
                let _ = writeln!(
                    out,
                    "e2b_local_quota_refusals_total{{key=\"{}\",limit=\"{limit}\"}} {n}",
                    escape(key)
                );
            }
            out.push_str(
                "# HELP e2b_local_requests_total Requests answered, by listener and status \
                 (5xx: the engine or the server failed).\n",
            );
            out.push_str("# TYPE e2b_local_requests_total counter\n");
            for ((listener, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "e2b_local_requests_total{{listener=\"{listener}\",status=\"{status}\"}} {n}"
                );
            }
            out.push_str("# HELP e2b_local_request_seconds Time to answer a request's head.\n");
            out.push_str("# TYPE e2b_local_request_seconds histogram\n");
            for (listener, h) in &m.request_seconds {
                h.render(
                    &mut out,
                    "e2b_local_request_seconds",
                    &format!("listener=\"{listener}\""),
                );
            }
        });
        out
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_holds_what_was_counted() {
        let m = Metrics::default();
        m.create("ci", Some(Duration::from_millis(300)));
        m.create("ci", None);
        m.refused("al\"ice", "rate");
        m.request("api", 201, Duration::from_millis(2));
        m.request("envd", 200, Duration::from_millis(20));
        let sandboxes = [
            Counted {
                key: "ci".into(),
                state: "running",
            },
            Counted {
                key: "ci".into(),
                state: "running",
            },
            Counted {
                key: "ci".into(),
                state: "paused",
            },
        ];
        let gauges = [sandkit_core::Gauge::new("pool_ready", "Ready.", 3.0)];
        let text = m.render(&sandboxes, 2, &gauges);
        for line in [
            "e2b_local_sandboxes{key=\"ci\",state=\"running\"} 2",
            "e2b_local_sandboxes{key=\"ci\",state=\"paused\"} 1",
            "e2b_local_keys 2",
            "# TYPE e2b_local_runtime_pool_ready gauge",
            "e2b_local_runtime_pool_ready 3",
            "e2b_local_creates_total{key=\"ci\",outcome=\"made\"} 1",
            "e2b_local_creates_total{key=\"ci\",outcome=\"failed\"} 1",
            "e2b_local_create_seconds_bucket{le=\"0.25\"} 0",
            "e2b_local_create_seconds_bucket{le=\"0.5\"} 1",
            "e2b_local_create_seconds_count 1",
            "e2b_local_quota_refusals_total{key=\"al\\\"ice\",limit=\"rate\"} 1",
            "e2b_local_requests_total{listener=\"api\",status=\"201\"} 1",
            "e2b_local_request_seconds_bucket{listener=\"envd\",le=\"0.025\"} 1",
            "e2b_local_request_seconds_bucket{listener=\"envd\",le=\"0.01\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
