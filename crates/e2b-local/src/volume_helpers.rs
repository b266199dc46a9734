//! The helper sandboxes that serve volumes' content (`volumes.rs`): one per volume in use,
//! held while requests come and killed when idle or at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sandkit_core::Sandbox;
use tokio::sync::Mutex;

/// The helper sandboxes, by volume id.
#[derive(Default)]
pub(crate) struct Helpers {
    pub(crate) held: Mutex<HashMap<String, Helper>>,
}

impl std::fmt::Debug for Helpers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helpers").finish_non_exhaustive()
    }
}

pub(crate) struct Helper {
    pub(crate) sandbox: Arc<dyn Sandbox>,
    pub(crate) used: Instant,
}

impl Helpers {
    /// Kills every helper sandbox (on shutdown).
    pub(crate) async fn shutdown(&self) {
        let held: Vec<Helper> = self.held.lock().await.drain().map(|(_, h)| h).collect();
        for h in held {
            let _ = h.sandbox.kill().await;
        }
    }
}
