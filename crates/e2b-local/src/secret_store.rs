//! Where e2b-local keeps secrets ([`crate::secrets`] serves them): each key's in
//! `<data dir>/secrets/<tenant>/`, one file a secret, readable by the server's user only; and
//! the policies in force of sandboxes whose rules name secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sandkit_core::NetworkPolicy;
use sandkit_e2b_protocol::api::SecretInfo;
use sandkit_e2b_protocol::json::rfc3339;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// One secret as it is kept (no `Debug`: its value must not reach a log).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Kept {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) version: u64,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) created: SystemTime,
    pub(crate) updated: SystemTime,
}

impl Kept {
    pub(crate) fn info(&self) -> SecretInfo {
        SecretInfo {
            secret_id: self.id.clone(),
            name: self.name.clone(),
            current_version: self.version,
            metadata: self.metadata.clone(),
            created_at: rfc3339(self.created),
            updated_at: rfc3339(self.updated),
        }
    }
}

/// Every key's secrets, on disk, and the policies in force of sandboxes whose rules name
/// secrets (so that a secret's change is applied to the policy the sandbox really has).
pub(crate) struct Store {
    dir: PathBuf,
    /// Held by each change, so that two at once cannot both take a name.
    pub(crate) writing: tokio::sync::Mutex<()>,
    /// Held from filling a policy's secrets to keeping it, by creates and network updates
    /// that name secrets and by each secret's change: a change never lands between another's
    /// fill and apply, so the last value written is the one in force.
    pub(crate) applying: tokio::sync::Mutex<()>,
}

impl Store {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Store {
            dir,
            writing: tokio::sync::Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn policy_file(&self, sandbox: &str) -> Option<PathBuf> {
        let safe = !sandbox.is_empty()
            && sandbox
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        safe.then(|| self.dir.join("in-force").join(format!("{sandbox}.json")))
    }

    /// Keeps `policy` (its secrets left out) as the one sandbox `sandbox` is held to.
    pub(crate) fn keep_policy(&self, sandbox: &str, policy: &NetworkPolicy) {
        let Some(file) = self.policy_file(sandbox) else {
            return;
        };
        let written = (|| -> std::io::Result<()> {
            use std::os::unix::fs::DirBuilderExt;
            let dir = file.parent().expect("a directory");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let tmp = dir.join(format!(".{sandbox}.tmp"));
            std::fs::write(&tmp, serde_json::to_vec(policy)?)?;
            std::fs::rename(&tmp, &file)
        })();
        if let Err(e) = written {
            warn!(sandbox, error = %e, "the policy in force cannot be kept; a secret's change may not reach it");
        }
    }

    /// The policy kept for sandbox `sandbox` ([`keep_policy`](Self::keep_policy)).
    pub(crate) fn policy_in_force(&self, sandbox: &str) -> Option<NetworkPolicy> {
        let bytes = std::fs::read(self.policy_file(sandbox)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forgets sandbox `sandbox`'s policy (it is gone).
    pub(crate) fn forget_policy(&self, sandbox: &str) {
        if let Some(file) = self.policy_file(sandbox) {
            let _ = std::fs::remove_file(file);
        }
    }

    fn key_dir(&self, tenant: &str) -> PathBuf {
        self.dir.join(tenant)
    }

    /// The secrets of `tenant`, oldest first.
    pub(crate) fn all(&self, tenant: &str) -> Vec<Kept> {
        let Ok(dir) = std::fs::read_dir(self.key_dir(tenant)) else {
            return Vec::new();
        };
        let mut out: Vec<Kept> = dir
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                let bytes = std::fs::read(e.path()).ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(k) => Some(k),
                    Err(err) => {
                        warn!(file = %e.path().display(), error = %err, "a kept secret cannot be read");
                        None
                    }
                }
            })
            .collect();
        out.sort_by_key(|k| (k.created, k.id.clone()));
        out
    }

    /// The secret of `tenant` named by `id_or_name` (its `sec_` id, or its name in any case).
    pub(crate) fn find(&self, tenant: &str, id_or_name: &str) -> Option<Kept> {
        let wanted = id_or_name.to_ascii_lowercase();
        self.all(tenant)
            .into_iter()
            .find(|k| k.id == id_or_name || k.name == wanted)
    }

    pub(crate) fn write(&self, tenant: &str, kept: &Kept) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = self.key_dir(tenant);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", kept.id));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(kept)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{}.json", kept.id)))
    }

    pub(crate) fn remove(&self, tenant: &str, id: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.key_dir(tenant).join(format!("{id}.json")))
    }

    /// Gives `policy` the values of the secrets of `tenant` its rules name; a name with no
    /// secret is held unset (requests naming it fail, saying so, until it is created).
    pub(crate) fn fill(&self, tenant: &str, policy: &mut NetworkPolicy) {
        let names = policy.secret_names();
        if names.is_empty() {
            return;
        }
        let kept = self.all(tenant);
        for name in names {
            match kept.iter().find(|k| k.name == name) {
                Some(k) => policy.secrets.insert(&name, k.value.clone()),
                None => policy.secrets.unset(&name),
            }
        }
    }
}

/// Where a data directory keeps the secrets.
pub(crate) fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_secrets_are_readable_by_the_server_only_and_filled_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("secrets"));
        let now = SystemTime::now();
        let kept = Kept {
            id: "sec_1".into(),
            name: "token".into(),
            value: "v1".into(),
            version: 1,
            metadata: Default::default(),
            created: now,
            updated: now,
        };
        store.write("t", &kept).unwrap();
        let file = dir.path().join("secrets/t/sec_1.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o077,
            0
        );
        let d = dir.path().join("secrets/t");
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o077,
            0
        );
        assert_eq!(store.find("t", "TOKEN").unwrap().id, "sec_1");
        assert_eq!(store.find("t", "sec_1").unwrap().name, "token");
        assert!(store.find("other", "token").is_none(), "another key's");
        let mut p = NetworkPolicy::new().rule(
            "a.test",
            sandkit_core::RequestRule::new()
                .header("A", "${e2b.secrets.token}")
                .header("B", "${e2b.secrets.missing}"),
        );
        store.fill("t", &mut p);
        assert_eq!(p.secrets.get("token"), Some("v1"));
        assert!(p.secrets.holds("missing") && p.secrets.get("missing").is_none());
        p.validate().unwrap();
    }
}
