//! The labels a sandbox's container carries (under a configurable prefix), and the ids and
//! label values they hold.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Label names, under a configurable prefix (default `sandkit`).
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    prefix: String,
}

impl Labels {
    /// The labels under `prefix`.
    pub(crate) fn new(prefix: String) -> Self {
        Labels { prefix }
    }

    pub(crate) fn id(&self) -> String {
        format!("{}.id", self.prefix)
    }
    pub(crate) fn template(&self) -> String {
        format!("{}.template", self.prefix)
    }
    pub(crate) fn created(&self) -> String {
        format!("{}.created", self.prefix)
    }
    pub(crate) fn user(&self) -> String {
        format!("{}.user", self.prefix)
    }
    pub(crate) fn workdir(&self) -> String {
        format!("{}.workdir", self.prefix)
    }
    /// Who keeps the time to live: `keeper` (outside the sandbox) or `file` (inside it).
    pub(crate) fn ttl(&self) -> String {
        format!("{}.ttl", self.prefix)
    }
    /// The token of the agent inside the sandbox; absent on the exec path.
    pub(crate) fn agent(&self) -> String {
        format!("{}.agent", self.prefix)
    }
    /// `pause` when the sandbox pauses at its deadline instead of ending.
    pub(crate) fn on_deadline(&self) -> String {
        format!("{}.on_deadline", self.prefix)
    }
    /// Marks a sandbox made for the warm pool: its settings are in the keeper's claim.
    pub(crate) fn pool(&self) -> String {
        format!("{}.pool", self.prefix)
    }
    /// The deadline set at create (epoch seconds); the keeper's state overrides it.
    pub(crate) fn deadline(&self) -> String {
        format!("{}.deadline", self.prefix)
    }
    pub(crate) fn meta_prefix(&self) -> String {
        format!("{}.meta.", self.prefix)
    }
    /// The metadata keys whose value is empty, as a JSON list: an empty label is otherwise
    /// one blanked when its sandbox was snapshotted (see [`crate::snapshot`]).
    pub(crate) fn meta_empty(&self) -> String {
        format!("{}.meta_empty", self.prefix)
    }
    /// Lists the keys of `metadata` whose value is empty in [`Labels::meta_empty`].
    pub(crate) fn keep_empty(
        &self,
        labels: &mut HashMap<String, String>,
        metadata: &BTreeMap<String, String>,
    ) {
        let empty: Vec<&String> = metadata
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(k, _)| k)
            .collect();
        if !empty.is_empty() {
            labels.insert(
                self.meta_empty(),
                serde_json::to_string(&empty).expect("json"),
            );
        }
    }
    /// `1` on a snapshot's image; `snapshot.<what>` labels say of what.
    pub(crate) fn snapshot(&self) -> String {
        format!("{}.snapshot", self.prefix)
    }
    pub(crate) fn snapshot_of(&self, what: &str) -> String {
        format!("{}.snapshot.{what}", self.prefix)
    }
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The container name of a sandbox id.
    pub(crate) fn container(&self, id: &str) -> String {
        format!("{}-{id}", self.prefix)
    }
}

/// Whether a label is set to something: a container made from a snapshot inherits the
/// snapshotted container's labels blanked (an image's labels cannot be removed).
pub(crate) fn flag(labels: &HashMap<String, String>, key: &str) -> bool {
    labels.get(key).is_some_and(|v| !v.is_empty())
}

/// When a sandbox was made, as its label holds it: epoch seconds and nanoseconds, so sandboxes
/// made in the same second still list in the order they were made.
pub(crate) fn created_label(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Reads a `created` label: `SECS.NANOS`, or whole seconds (older sandboxes).
pub(crate) fn parse_created(label: &str) -> Option<SystemTime> {
    let (secs, nanos) = label.split_once('.').unwrap_or((label, "0"));
    let nanos: u32 = format!("{:0<9}", &nanos[..nanos.len().min(9)])
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos))
}

pub(crate) fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

/// Whether `id` has the form of a sandbox id (so it can name a container safely).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
