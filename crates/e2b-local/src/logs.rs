//! Sandboxes' logs, as E2B's API serves them ([`crate::observe`]'s routes): what the server
//! did to a sandbox (created, paused, resumed, killed, its timeout set) and what envd did in it
//! (each process started and ended).
//!
//! Kept in this server's memory, by owner: a restart of the server forgets them. As on E2B,
//! a sandbox's logs outlive it, and a sandbox that is not the caller's (or not known) has
//! none (`200` with no entries, never `404`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

/// Entries kept per sandbox (the oldest go first), as many as one v2 page.
const PER_SANDBOX: usize = 1000;
/// Bytes kept per sandbox, and per key: past the key's, the log of its sandbox written to
/// longest ago is forgotten (one key's logs never push out another's).
const SANDBOX_BYTES: usize = 256 << 10;
const KEY_BYTES: usize = 32 << 20;
/// Longest text of one field or message; longer ones are cut (a command line can be long).
const MAX_TEXT: usize = 1024;
/// How far back E2B's API reads (7 days); older entries are dropped.
pub(crate) const WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// One entry of a sandbox's log.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) at: SystemTime,
    pub(crate) level: &'static str,
    pub(crate) message: String,
    fields: BTreeMap<String, String>,
}

impl Entry {
    /// Roughly what it holds in memory.
    fn size(&self) -> usize {
        64 + self.message.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| 32 + k.len() + v.len())
                .sum::<usize>()
    }
}

/// The logs of every sandbox this server has seen at work, by owner.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    owners: Mutex<HashMap<String, Owned>>,
}

/// One key's logs.
#[derive(Debug, Default)]
struct Owned {
    journals: HashMap<String, Journal>,
    bytes: usize,
    /// Counts writes, to find the journal written to longest ago.
    clock: u64,
}

#[derive(Debug, Default)]
struct Journal {
    entries: VecDeque<Entry>,
    bytes: usize,
    written: u64,
}

/// Level order for the `level` filter: an entry passes when its level is at least the asked one.
pub(crate) fn rank(level: &str) -> Option<u8> {
    match level {
        "debug" => Some(0),
        "info" => Some(1),
        "warn" => Some(2),
        "error" => Some(3),
        _ => None,
    }
}

/// `text`, cut to [`MAX_TEXT`] bytes at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl Journal {
    fn drop_front(&mut self) -> usize {
        let size = self.entries.pop_front().map_or(0, |e| e.size());
        self.bytes -= size;
        size
    }
}

impl Logs {
    /// Adds an entry to the log of sandbox `id`, owned by `owner`.
    pub(crate) fn record(&self, owner: &str, id: &str, logger: &str, record: sandkit_envd::Record) {
        let mut fields: BTreeMap<String, String> = record
            .fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), cut(v)))
            .collect();
        fields.insert("sandboxID".into(), id.to_string());
        fields.insert("logger".into(), logger.to_string());
        let mut owners = self.owners.lock().expect("logs");
        let owned = owners.entry(owner.to_string()).or_default();
        owned.clock += 1;
        let clock = owned.clock;
        let journal = owned.journals.entry(id.to_string()).or_default();
        // Stamped under the lock, never before the last entry: the log is in time order, so
        // a reader paging by time neither skips nor repeats.
        let now = SystemTime::now();
        let at = journal.entries.back().map_or(now, |last| now.max(last.at));
        let entry = Entry {
            at,
            level: record.level,
            message: cut(record.message),
            fields,
        };
        let size = entry.size();
        journal.written = clock;
        journal.bytes += size;
        journal.entries.push_back(entry);
        let mut freed = 0;
        while journal.entries.len() > PER_SANDBOX
            || journal.bytes > SANDBOX_BYTES
            || journal.entries.front().is_some_and(|e| e.at + WINDOW < now)
        {
            freed += journal.drop_front();
        }
        owned.bytes = owned.bytes + size - freed;
        while owned.bytes > KEY_BYTES {
            let Some(oldest) = owned
                .journals
                .iter()
                .filter(|(other, _)| other.as_str() != id)
                .min_by_key(|(_, j)| j.written)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some(j) = owned.journals.remove(&oldest) {
                owned.bytes -= j.bytes;
            }
        }
    }

    /// An event of the server's own (`logger` `e2b-local`).
    pub(crate) fn event(&self, owner: &str, id: &str, level: &'static str, message: &str) {
        self.event_with(owner, id, level, message, Vec::new());
    }

    /// As [`Logs::event`], with fields.
    pub(crate) fn event_with(
        &self,
        owner: &str,
        id: &str,
        level: &'static str,
        message: &str,
        fields: Vec<(&'static str, String)>,
    ) {
        let record = sandkit_envd::Record {
            level,
            message: message.to_string(),
            fields,
        };
        self.record(owner, id, "e2b-local", record);
    }

    /// The entries of `id` for `owner` inside `[from, to]`, oldest first.
    pub(crate) fn read(
        &self,
        owner: &str,
        id: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<Entry> {
        let owners = self.owners.lock().expect("logs");
        owners
            .get(owner)
            .and_then(|o| o.journals.get(id))
            .map(|j| {
                j.entries
                    .iter()
                    .filter(|e| e.at >= from && e.at <= to)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Entry {
    /// `logEntries[]` and v2's `logs[]`: `{timestamp, level, message, fields}`.
    pub(crate) fn json(&self) -> Value {
        json!({
            "timestamp": sandkit_e2b_protocol::json::rfc3339(self.at),
            "level": self.level,
            "message": self.message,
            "fields": self.fields,
        })
    }

    /// v1's `logs[].line`: the entry as one flat JSON line, as the log store holds it.
    pub(crate) fn line(&self) -> String {
        let mut flat = Map::new();
        for (k, v) in &self.fields {
            flat.insert(k.clone(), Value::String(v.clone()));
        }
        flat.insert(
            "timestamp".into(),
            sandkit_e2b_protocol::json::rfc3339(self.at).into(),
        );
        flat.insert("level".into(), self.level.into());
        flat.insert("message".into(), self.message.clone().into());
        Value::Object(flat).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> sandkit_envd::Record {
        sandkit_envd::Record {
            level: "info",
            message: message.into(),
            fields: vec![("event_type", "x".into())],
        }
    }

    #[test]
    fn a_journal_is_its_owners_and_bounded() {
        let logs = Logs::default();
        for i in 0..PER_SANDBOX + 5 {
            logs.record("alice", "a1", "envd", record(&format!("n{i}")));
        }
        logs.record("bob", "a1", "envd", record("not hers"));
        let far = SystemTime::now() + Duration::from_secs(1);
        let got = logs.read("alice", "a1", SystemTime::UNIX_EPOCH, far);
        assert_eq!(got.len(), PER_SANDBOX);
        assert_eq!(got[0].message, "n5");
        assert!(got.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(got.iter().all(|e| e.message != "not hers"));
        // Logs are kept by owner: another key's entries under the same id never mix in.
        let bobs = logs.read("bob", "a1", SystemTime::UNIX_EPOCH, far);
        assert_eq!(bobs.len(), 1);
        assert_eq!(bobs[0].message, "not hers");
        assert_eq!(got[0].fields["sandboxID"], "a1");
        let line: Value = serde_json::from_str(&got[0].line()).unwrap();
        assert_eq!(line["message"], "n5");
        assert_eq!(line["event_type"], "x");
        assert_eq!(line["logger"], "envd");
    }

    #[test]
    fn a_key_that_logs_much_pushes_out_only_its_own_logs() {
        let logs = Logs::default();
        logs.record("bob", "b1", "envd", record("bob's"));
        let long = "x".repeat(2 * MAX_TEXT);
        // 140 sandboxes of 256 KiB each are more than a key's 32 MiB.
        for i in 0..140 {
            for _ in 0..130 {
                let mut r = record(&long);
                r.fields.push(("command", long.clone()));
                logs.record("alice", &format!("a{i}"), "envd", r);
            }
        }
        let far = SystemTime::now() + Duration::from_secs(1);
        let kept = logs.read("alice", "a139", SystemTime::UNIX_EPOCH, far);
        assert!(!kept.is_empty());
        assert!(logs
            .read("alice", "a0", SystemTime::UNIX_EPOCH, far)
            .is_empty());
        // Texts are cut; the key stays under its bytes; the other key's log is untouched.
        assert!(
            kept[0].message.len() <= MAX_TEXT + 3
                && kept[0].fields["command"].len() <= MAX_TEXT + 3
        );
        assert!(logs.owners.lock().unwrap()["alice"].bytes <= KEY_BYTES);
        assert_eq!(logs.read("bob", "b1", SystemTime::UNIX_EPOCH, far).len(), 1);
    }
}
