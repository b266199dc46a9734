//! The disk a key holds: its snapshots' and templates' own bytes (beyond the image each was
//! made from) and its template uploads waiting on disk; checked against its `max_disk_mib`
//! before anything that adds to it (a snapshot, a template build, an upload).

use axum::response::Response;

use crate::keys::Key;
use crate::state::{State, OWNER_KEY};

/// Bytes `owner` holds now.
pub(crate) async fn used(state: &State, owner: &str) -> sandkit_core::Result<u64> {
    let mut total = 0;
    if state.runtime.capabilities().snapshots {
        total += state
            .runtime
            .snapshots(None)
            .await?
            .iter()
            .filter(|s| s.metadata.get(OWNER_KEY).map(String::as_str) == Some(owner))
            .filter_map(|s| s.size)
            .sum::<u64>();
    }
    total += uploads(state, owner).await;
    Ok(total)
}

/// Bytes of `owner`'s template uploads (finished or being written).
pub(crate) async fn uploads(state: &State, owner: &str) -> u64 {
    let Ok(mut dir) = tokio::fs::read_dir(state.uploads_dir().join(owner)).await else {
        return 0;
    };
    let mut total = 0;
    while let Ok(Some(entry)) = dir.next_entry().await {
        if let Ok(meta) = entry.metadata().await {
            total += meta.len();
        }
    }
    total
}

/// The limit of `key`, in bytes.
pub(crate) fn limit(key: &Key) -> u64 {
    key.limits.max_disk_mib.saturating_mul(1 << 20)
}

/// `429` when `key` holds its limit already (or cannot be measured: the engine is asked, and a
/// failure refuses rather than lets a key past its limit).
pub(crate) async fn refuse_if_full(state: &State, key: &Key) -> Option<Response> {
    let max = limit(key);
    match used(state, &key.owner).await {
        Ok(used) if used < max => None,
        Ok(used) => Some(full(state, key, used)),
        Err(e) => Some(crate::http::from_error(&e, "")),
    }
}

/// The answer to a key at its disk limit.
pub(crate) fn full(state: &State, key: &Key, used: u64) -> Response {
    state.metrics.refused(&key.name, "disk");
    crate::http::too_many(
        format!(
            "this key holds {} MiB of snapshots, templates and uploads, and may hold {} MiB: \
             delete a snapshot or template first",
            used >> 20,
            key.limits.max_disk_mib
        ),
        60,
    )
}
