//! Template builds as the status route reports them: each build's status and bounded log.
//! Kept apart from the build engine (`templates.rs`) so the server's state can hold them.

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use sandkit_e2b_protocol::json::rfc3339;
use serde_json::json;

/// The most log entries a build keeps.
pub(crate) const MAX_LOG_ENTRIES: usize = 10_000;

/// One build: its status and log, as the status route answers them.
#[derive(Debug)]
pub(crate) struct Build {
    pub(crate) id: String,
    pub(crate) template_id: String,
    pub(crate) alias: String,
    pub(crate) tags: Vec<String>,
    pub(crate) owner: String,
    pub(crate) registered: Instant,
    pub(crate) progress: Mutex<Progress>,
}

#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// `waiting` (registered), `building`, `ready` or `error`.
    pub(crate) status: &'static str,
    pub(crate) entries: Vec<serde_json::Value>,
    pub(crate) reason: Option<serde_json::Value>,
}

impl Build {
    pub(crate) fn log(&self, level: &str, step: &str, message: impl Into<String>) {
        let message = message.into();
        let mut p = self.progress.lock().expect("build");
        if p.entries.len() >= MAX_LOG_ENTRIES {
            return;
        }
        if p.entries.len() + 1 == MAX_LOG_ENTRIES {
            p.entries.push(json!({
                "timestamp": rfc3339(SystemTime::now()),
                "level": "warn",
                "message": format!("the log is cut at {MAX_LOG_ENTRIES} entries"),
                "step": step,
            }));
            return;
        }
        p.entries.push(json!({
            "timestamp": rfc3339(SystemTime::now()),
            "level": level,
            "message": message,
            "step": step,
        }));
    }

    pub(crate) fn finish(&self, outcome: Result<(), (String, String)>) {
        let mut p = self.progress.lock().expect("build");
        match outcome {
            Ok(()) => p.status = "ready",
            Err((step, message)) => {
                p.entries.push(json!({
                    "timestamp": rfc3339(SystemTime::now()),
                    "level": "error",
                    "message": message,
                    "step": step,
                }));
                p.status = "error";
                p.reason = Some(json!({"message": message, "step": step}));
            }
        }
    }
}
