//! What envd tells its server about the work it does in a sandbox: one [`Record`] per
//! process started and ended, handed to the [`Journal`] a server gave [`crate::Served`]
//! (E2B's envd writes the same events to the sandbox's logs).

use std::sync::Arc;

/// One event of a sandbox's log, as E2B's envd logs it: a level, a message and flat fields
/// (`event_type`, `pid`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// What happened, in words (`Process with pid 42 started`).
    pub message: String,
    /// The event's fields, each a string.
    pub fields: Vec<(&'static str, String)>,
}

/// Where a served sandbox's [`Record`]s go. Called inline, so it must not block.
pub type Journal = Arc<dyn Fn(Record) + Send + Sync>;

pub(crate) fn started(pid: u32, command: &str, user: &str, tag: Option<&str>) -> Record {
    let mut fields = vec![
        ("event_type", "process_start".to_string()),
        ("pid", pid.to_string()),
        ("command", command.to_string()),
        ("user", user.to_string()),
    ];
    if let Some(tag) = tag {
        fields.push(("tag", tag.to_string()));
    }
    Record {
        level: "info",
        message: format!("Process with pid {pid} started"),
        fields,
    }
}

/// The end of a process: `exit_code` when it exited, else how it ended (`killed`, `deadline`,
/// `sandbox ended`, or an error's text).
pub(crate) fn ended(pid: u32, exit_code: Option<i32>, how: &str, bytes: [u64; 3]) -> Record {
    let mut fields = vec![
        ("event_type", "process_end".to_string()),
        ("pid", pid.to_string()),
        ("stdout_bytes", bytes[0].to_string()),
        ("stderr_bytes", bytes[1].to_string()),
        ("pty_bytes", bytes[2].to_string()),
    ];
    match exit_code {
        Some(code) => fields.push(("exit_code", code.to_string())),
        None => fields.push(("status", how.to_string())),
    }
    Record {
        level: if exit_code.is_some() { "info" } else { "warn" },
        message: format!("Process with pid {pid} ended"),
        fields,
    }
}
