//! API keys: who may call the control plane, under which name and limits, and what each owns.
//!
//! Keys come from `E2B_API_KEY` (the key named `default`) and from a keys file the server
//! re-reads when it changes or on `SIGHUP`. The file holds each key's SHA-256, never the key:
//!
//! ```toml
//! [[key]]
//! name = "ci"                 # shown in logs; never the key itself
//! sha256 = "9f86d081..."      # printf %s "$KEY" | sha256sum
//! max_sandboxes = 20          # optional: overrides --max-sandboxes for this key
//! creates_per_minute = 120    # optional: overrides --creates-per-minute
//! max_snapshots = 50          # optional: overrides --max-snapshots
//! max_volumes = 10            # optional: overrides --max-volumes
//! max_builds = 2              # optional: template builds at once, overrides --max-builds
//! max_disk_mib = 4096         # optional: disk held (snapshots, templates, uploads), overrides --max-disk-mib
//! operator = true             # optional: may read /metrics (the --api-key key always may)
//! ```
//!
//! What a key makes carries its owner digest (metadata `sandkit.e2b.owner`), derived from the
//! key's hash (from the key itself for `--api-key`'s, as before keys files came): the same key finds its sandboxes, snapshots, templates and volumes again after a
//! restart, and a key taken out of the file stops being served at the next read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The limits a key has when the keys file sets none for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyLimits {
    /// Sandboxes at once.
    pub(crate) max_sandboxes: usize,
    /// Creates a minute.
    pub(crate) creates_per_minute: u32,
    /// Snapshots kept (templates not counted).
    pub(crate) max_snapshots: usize,
    /// Volumes kept.
    pub(crate) max_volumes: usize,
    /// Template builds running at once.
    pub(crate) max_builds: usize,
    /// Disk held, in MiB (snapshots' and templates' own bytes, uploads).
    pub(crate) max_disk_mib: u64,
}

/// The owner of what is made without authentication (`--insecure-no-auth`).
pub(crate) const ANONYMOUS: &str = "anonymous";

/// One API key as the server knows it: by its hash.
#[derive(Debug)]
pub(crate) struct Key {
    /// The operator's name for it (logs and audit); never the key.
    pub(crate) name: String,
    /// The digest put on what this key makes.
    pub(crate) owner: String,
    /// What it may have and do.
    pub(crate) limits: KeyLimits,
    /// May read what the operator reads (`/metrics`).
    pub(crate) operator: bool,
}

/// The keys a server accepts, by the SHA-256 of each.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
}

/// One `[[key]]` of a keys file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    sha256: String,
    max_sandboxes: Option<usize>,
    creates_per_minute: Option<u32>,
    max_snapshots: Option<usize>,
    max_volumes: Option<usize>,
    max_builds: Option<usize>,
    max_disk_mib: Option<u64>,
    #[serde(default)]
    operator: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<FileKey>,
}

impl KeySet {
    /// The one key of a server without authentication: everything is the anonymous tenant's.
    pub(crate) fn anonymous(limits: &KeyLimits) -> Self {
        let mut set = KeySet::default();
        set.by_hash.insert(
            [0; 32],
            Arc::new(Key {
                name: ANONYMOUS.into(),
                owner: ANONYMOUS.into(),
                limits: *limits,
                operator: true,
            }),
        );
        set
    }

    /// The keys of `api_key` (named `default`) and of the keys file `file`, with `limits`
    /// where a key sets none.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, a bad hash, two keys with one name or one hash,
    /// or no key at all: the whole set is refused (a partial set would lock some callers out).
    pub(crate) fn load(
        api_key: Option<&str>,
        file: Option<&Path>,
        limits: &KeyLimits,
    ) -> Result<Self, String> {
        let mut set = KeySet::default();
        if let Some(key) = api_key {
            // The one key of a server for one person: its operator too.
            set.add(
                "default".into(),
                sha256(key),
                // As before keys files came: what it made before is still its own.
                sandkit_e2b_protocol::derive_token(key, "", "owner"),
                *limits,
                true,
            )?;
        }
        if let Some(path) = file {
            for one in key_files(path)? {
                set.add_file(&one, limits)?;
            }
        }
        if set.by_hash.is_empty() {
            return Err(match file {
                Some(path) => format!("{} holds no [[key]]", path.display()),
                None => "no API key".into(),
            });
        }
        Ok(set)
    }

    /// Adds the `[[key]]`s of one keys file.
    fn add_file(&mut self, path: &Path, limits: &KeyLimits) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the keys file {}: {e}", path.display()))?;
        // The error's own message and line only: toml quotes the source line, which may
        // hold a key pasted by mistake.
        let parsed: KeysFile = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            format!(
                "the keys file {} is not valid{}: {}",
                path.display(),
                line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                e.message()
            )
        })?;
        for k in parsed.key {
            let hash = parse_hash(&k.sha256).ok_or_else(|| {
                format!(
                    "key '{}' in {}: sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)",
                    k.name,
                    path.display()
                )
            })?;
            let owner = sandkit_e2b_protocol::derive_token(&hex(&hash), "", "owner");
            self.add(
                k.name,
                hash,
                owner,
                KeyLimits {
                    max_sandboxes: k.max_sandboxes.unwrap_or(limits.max_sandboxes),
                    creates_per_minute: k.creates_per_minute.unwrap_or(limits.creates_per_minute),
                    max_snapshots: k.max_snapshots.unwrap_or(limits.max_snapshots),
                    max_volumes: k.max_volumes.unwrap_or(limits.max_volumes),
                    max_builds: k.max_builds.unwrap_or(limits.max_builds),
                    max_disk_mib: k.max_disk_mib.unwrap_or(limits.max_disk_mib),
                },
                k.operator,
            )
            .map_err(|e| format!("{e} (in {})", path.display()))?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        name: String,
        hash: [u8; 32],
        owner: String,
        limits: KeyLimits,
        operator: bool,
    ) -> Result<(), String> {
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            return Err(format!("key name {name:?}: give each key a printable name"));
        }
        if self.by_hash.values().any(|k| k.name == name) {
            return Err(format!("two keys are named '{name}'"));
        }
        if self.by_hash.contains_key(&hash) {
            return Err(format!("key '{name}' has the same hash as another key"));
        }
        self.by_hash.insert(
            hash,
            Arc::new(Key {
                name,
                owner,
                limits,
                operator,
            }),
        );
        Ok(())
    }

    /// The key a caller sent, if it is one of these.
    pub(crate) fn find(&self, given: &str) -> Option<Arc<Key>> {
        self.by_hash.get(&sha256(given)).cloned()
    }

    /// The key that owns what carries `owner`, if it is one of these.
    pub(crate) fn by_owner(&self, owner: &str) -> Option<Arc<Key>> {
        self.by_hash.values().find(|k| k.owner == owner).cloned()
    }

    /// The owners of these keys.
    pub(crate) fn owners(&self) -> impl Iterator<Item = &str> {
        self.by_hash.values().map(|k| k.owner.as_str())
    }

    /// The keys of `self` that `newer` no longer holds.
    pub(crate) fn removed_in(&self, newer: &KeySet) -> Vec<Arc<Key>> {
        self.by_hash
            .iter()
            .filter(|(hash, _)| !newer.by_hash.contains_key(*hash))
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Every key.
    pub(crate) fn all(&self) -> Vec<Arc<Key>> {
        self.by_hash.values().cloned().collect()
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }
}

/// The files a keys path names: the file itself, or a directory's `*.toml` files in name
/// order (one file per person or service, say).
pub(crate) fn key_files(path: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read the keys directory {}: {e}", path.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("cannot read the keys directory {}: {e}", path.display()))?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// The SHA-256 of a key as it is sent.
fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What happens to what a key owns when it is taken out of the keys file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Revoked {
    /// Kept on the engine, out of reach; served again if the key comes back.
    #[default]
    Keep,
    /// Removed: its sandboxes killed, its snapshots, templates and volumes deleted.
    Remove,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> KeyLimits {
        KeyLimits {
            max_sandboxes: 100,
            creates_per_minute: 600,
            max_snapshots: 500,
            max_volumes: 100,
            max_builds: 4,
            max_disk_mib: 20 * 1024,
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    fn hash_of(key: &str) -> String {
        hex(&sha256(key))
    }

    #[test]
    fn file_keys_are_found_by_the_key_sent_and_carry_their_limits() {
        let file = write(&format!(
            "[[key]]\nname = \"ci\"\nsha256 = \"{}\"\nmax_sandboxes = 3\nmax_builds = 1\n\n[[key]]\nname = \"alice\"\nsha256 = \"{}\"\n",
            hash_of("ci-key"),
            hash_of("alice-key").to_uppercase()
        ));
        let set = KeySet::load(Some("env-key"), Some(file.path()), &limits()).unwrap();
        assert_eq!(set.len(), 3);
        let ci = set.find("ci-key").unwrap();
        assert_eq!((ci.name.as_str(), ci.limits.max_sandboxes), ("ci", 3));
        assert_eq!(ci.limits.max_builds, 1);
        assert_eq!(ci.limits.creates_per_minute, limits().creates_per_minute);
        let alice = set.find("alice-key").unwrap();
        assert_eq!(alice.limits.max_sandboxes, limits().max_sandboxes);
        assert_eq!(set.find("env-key").unwrap().name, "default");
        assert!(set.find("ci-key ").is_none() && set.find("").is_none());
        assert_ne!(ci.owner, alice.owner);
        assert_eq!(set.by_owner(&alice.owner).unwrap().name, "alice");
        // The owner is the hash's: the same key owns the same things in another load.
        let again = KeySet::load(None, Some(file.path()), &limits()).unwrap();
        assert_eq!(again.find("alice-key").unwrap().owner, alice.owner);
        let removed = set.removed_in(&again);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].name, "default");
    }

    #[test]
    fn a_bad_file_is_refused_whole() {
        let cases = [
            ("[[key]]\nname = \"a\"\nsha256 = \"abc\"\n", "64 hex digits"),
            (
                &*format!(
                    "[[key]]\nname = \"a\"\nsha256 = \"{0}\"\n[[key]]\nname = \"b\"\nsha256 = \"{0}\"\n",
                    hash_of("k")
                ),
                "same hash",
            ),
            (
                &*format!(
                    "[[key]]\nname = \"a\"\nsha256 = \"{}\"\n[[key]]\nname = \"a\"\nsha256 = \"{}\"\n",
                    hash_of("k"),
                    hash_of("j")
                ),
                "two keys are named 'a'",
            ),
            (
                &*format!("[[key]]\nname = \"a\"\nkey = \"{}\"\n", hash_of("k")),
                "not valid",
            ),
            ("", "holds no [[key]]"),
        ];
        for (text, expected) in cases {
            let file = write(text);
            let err = KeySet::load(None, Some(file.path()), &limits()).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        // A key pasted into the file by mistake is not repeated in the error.
        for text in [
            "[[key]]\nname = \"a\"\nkey = \"e2b_pasted_secret\"\n",
            "[[key]]\nname = \"a\"\nsha256 = e2b_pasted_secret\n",
        ] {
            let file = write(text);
            let err = KeySet::load(None, Some(file.path()), &limits()).unwrap_err();
            assert!(err.contains("line "), "{err}");
            assert!(
                !err.contains("e2b_pasted_secret"),
                "the error repeats the key: {err}"
            );
        }
        let missing = std::path::Path::new("/nonexistent/keys.toml");
        let err = KeySet::load(Some("k"), Some(missing), &limits()).unwrap_err();
        assert!(err.contains("cannot read the keys file"), "{err}");
    }

    #[test]
    fn a_directory_holds_one_keys_file_per_person() {
        let dir = tempfile::tempdir().unwrap();
        let key = |name: &str, key: &str| {
            format!(
                "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"\n",
                hash_of(key)
            )
        };
        std::fs::write(dir.path().join("alice.toml"), key("alice", "a-key")).unwrap();
        std::fs::write(dir.path().join("bob.toml"), key("bob", "b-key")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a keys file").unwrap();
        let set = KeySet::load(None, Some(dir.path()), &limits()).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.find("b-key").unwrap().name, "bob");
        // One bad file refuses the whole directory, and says which file.
        std::fs::write(dir.path().join("carol.toml"), key("alice", "c-key")).unwrap();
        let err = KeySet::load(None, Some(dir.path()), &limits()).unwrap_err();
        assert!(
            err.contains("two keys are named 'alice'") && err.contains("carol.toml"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = KeySet::load(None, Some(empty.path()), &limits()).unwrap_err();
        assert!(err.contains("holds no [[key]]"), "{err}");
    }
}
