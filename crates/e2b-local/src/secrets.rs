//! E2B's `Secret` API: values a key keeps on the server for its sandboxes' request rules to
//! name (`${e2b.secrets.NAME}` in a header of `network.rules`). A value is write-only: no
//! answer carries it, and it never enters a sandbox: the backend's network guard puts it in
//! the requests the rules apply to.
//!
//! Each key's secrets are files in `<data dir>/secrets/<tenant>/`, readable by the server's
//! user only. When a secret is created, updated or deleted, the running sandboxes of its key
//! whose rules name it get the change at once (their next request uses the new value, or
//! fails saying the secret is not set).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandkit_core::NetworkPolicy;
use sandkit_e2b_protocol::api::{NewSecret, SecretInfo, SecretUpdate};
use sandkit_e2b_protocol::json::rfc3339;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::caller::Caller;
use crate::http::{api_error, parse};

/// Secrets one key may keep.
const MAX_PER_KEY: usize = 1000;
/// The longest value kept.
const MAX_VALUE: usize = 64 << 10;

/// One secret as it is kept (no `Debug`: its value must not reach a log).
#[derive(Clone, Serialize, Deserialize)]
struct Kept {
    id: String,
    name: String,
    value: String,
    version: u64,
    metadata: BTreeMap<String, String>,
    created: SystemTime,
    updated: SystemTime,
}

impl Kept {
    fn info(&self) -> SecretInfo {
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
    writing: tokio::sync::Mutex<()>,
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
    fn all(&self, tenant: &str) -> Vec<Kept> {
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
    fn find(&self, tenant: &str, id_or_name: &str) -> Option<Kept> {
        let wanted = id_or_name.to_ascii_lowercase();
        self.all(tenant)
            .into_iter()
            .find(|k| k.id == id_or_name || k.name == wanted)
    }

    fn write(&self, tenant: &str, kept: &Kept) -> std::io::Result<()> {
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

    fn remove(&self, tenant: &str, id: &str) -> std::io::Result<()> {
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

/// A secret name as E2B takes it: not empty, no braces or control characters, not `sec_…`.
fn check_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c == '{' || c == '}' || c.is_control())
    {
        return Err(format!(
            "secret name {name:?} is not valid: 1 to 255 characters, no braces or control \
             characters"
        ));
    }
    if lower.starts_with("sec_") {
        return Err("secret names may not start with 'sec_' (reserved for secret ids)".into());
    }
    Ok(lower)
}

fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!("a secret's value is at most {MAX_VALUE} bytes"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("a secret's value goes into a header: it may not hold a line break".into());
    }
    Ok(())
}

fn io_error(e: std::io::Error) -> Response {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the server cannot keep the secret: {e}"),
    )
}

fn secret_not_found(id: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, format!("Secret {id} not found"))
}

/// `POST /secrets`.
pub(crate) async fn create(state: Caller, body: Bytes) -> Response {
    let req: NewSecret = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = match check_name(&req.name).and_then(|n| check_value(&req.value).map(|()| n)) {
        Ok(n) => n,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    let tenant = state.tenant();
    let kept = {
        let _writing = state.secrets.writing.lock().await;
        let all = state.secrets.all(&tenant);
        if all.iter().any(|k| k.name == name) {
            return api_error(
                StatusCode::CONFLICT,
                format!("a secret named {name:?} exists; update it instead"),
            );
        }
        if all.len() >= MAX_PER_KEY {
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("secret_limit_reached: this key keeps at most {MAX_PER_KEY} secrets"),
            );
        }
        let now = SystemTime::now();
        let kept = Kept {
            id: format!("sec_{:024x}", rand::random::<u128>() >> 32),
            name,
            value: req.value,
            version: 1,
            metadata: req.metadata.unwrap_or_default(),
            created: now,
            updated: now,
        };
        if let Err(e) = state.secrets.write(&tenant, &kept) {
            return io_error(e);
        }
        kept
    };
    reapply(&state, &kept.name).await;
    (StatusCode::CREATED, Json(kept.info())).into_response()
}

/// `GET /secrets`: oldest first, `limit` at a time, the next page's token in `x-next-token`.
pub(crate) async fn list(state: Caller, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(100)
        .min(1000);
    let from = q
        .get("nextToken")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let all = state.secrets.all(&state.tenant());
    let page: Vec<SecretInfo> = all.iter().skip(from).take(limit).map(Kept::info).collect();
    let mut response = Json(page).into_response();
    let next = from.saturating_add(limit);
    if next < all.len() {
        if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
            response.headers_mut().insert("x-next-token", v);
        }
    }
    response
}

/// `GET /secrets/{id}`.
pub(crate) async fn get_info(state: Caller, UrlPath(id): UrlPath<String>) -> Response {
    match state.secrets.find(&state.tenant(), &id) {
        Some(k) => Json(k.info()).into_response(),
        None => secret_not_found(&id),
    }
}

/// `POST /secrets/{id}`: a new version of the value (and the metadata, when sent).
pub(crate) async fn update(state: Caller, UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
    let req: SecretUpdate = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(m) = check_value(&req.value) {
        return api_error(StatusCode::BAD_REQUEST, m);
    }
    let tenant = state.tenant();
    let kept = {
        let _writing = state.secrets.writing.lock().await;
        let Some(mut kept) = state.secrets.find(&tenant, &id) else {
            return secret_not_found(&id);
        };
        kept.value = req.value;
        kept.version += 1;
        if let Some(m) = req.metadata {
            kept.metadata = m;
        }
        kept.updated = SystemTime::now();
        if let Err(e) = state.secrets.write(&tenant, &kept) {
            return io_error(e);
        }
        kept
    };
    reapply(&state, &kept.name).await;
    Json(kept.info()).into_response()
}

/// `DELETE /secrets/{id}`: requests that name it fail from now on.
pub(crate) async fn destroy(state: Caller, UrlPath(id): UrlPath<String>) -> Response {
    let tenant = state.tenant();
    let name = {
        let _writing = state.secrets.writing.lock().await;
        let Some(kept) = state.secrets.find(&tenant, &id) else {
            return secret_not_found(&id);
        };
        if let Err(e) = state.secrets.remove(&tenant, &kept.id) {
            return io_error(e);
        }
        kept.name
    };
    reapply(&state, &name).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Gives the running sandboxes of the caller's key whose rules name secret `name` its value
/// as it is now (or none, when it was deleted), in the policy each is held to. A paused
/// sandbox gets it when its policy is next set (see RELIABILITY.md).
async fn reapply(state: &Caller, name: &str) {
    let _applying = state.secrets.applying.lock().await;
    let Ok(list) = state.runtime.list(&state.owned_filter()).await else {
        return;
    };
    for info in list {
        if info.state != sandkit_core::SandboxState::Running {
            continue;
        }
        let Some(mut policy) = state.secrets.policy_in_force(&info.id) else {
            continue;
        };
        if !policy.secret_names().iter().any(|n| n == name) {
            continue;
        }
        state.secrets.fill(&state.tenant(), &mut policy);
        let applied = match state.served(&info.id).await {
            Ok(served) => served.sandbox().set_network_policy(policy).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            warn!(sandbox = %info.id, error = %e, "a sandbox's rules did not get a secret's change");
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
    fn names_and_values_are_checked() {
        assert_eq!(check_name("OpenAI-Key").unwrap(), "openai-key");
        for bad in ["", "a{b", "a}b", "a\nb", "sec_x", "SEC_x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_value("sk-1").is_ok());
        assert!(check_value("a\r\nInjected: 1").is_err());
    }

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
