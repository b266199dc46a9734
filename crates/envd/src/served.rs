//! [`Served`]: one sandbox as envd serves it.

use std::sync::Arc;

use sandkit_core::{CommandSpec, Sandbox, SandboxExt};
use tokio::sync::Mutex;

use crate::procs::Processes;
use crate::watch::Watchers;

/// One sandbox as envd serves it: the sandbox, the processes started through envd (kept for
/// `Connect` and `List`), and the user requests run as when they name none.
pub struct Served {
    pub(crate) sandbox: Box<dyn Sandbox>,
    pub(crate) processes: Arc<Processes>,
    pub(crate) watchers: Watchers,
    wanted_user: String,
    /// The default user, once known to exist in the sandbox.
    user: Mutex<Option<String>>,
    /// Cancelled when whoever serves the sandbox stops serving it to the clients it had
    /// (their access was taken back): every stream open on it ends.
    ended: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("sandbox", &self.sandbox.id())
            .field("default_user", &self.wanted_user)
            .finish_non_exhaustive()
    }
}

impl Served {
    /// Serves `sandbox`; requests that name no user run as `default_user` where the sandbox
    /// has that user, else as root (E2B's templates have `user`).
    pub fn new(sandbox: Box<dyn Sandbox>, default_user: impl Into<String>) -> Self {
        Served {
            sandbox,
            processes: Arc::new(Processes::default()),
            watchers: Watchers::default(),
            wanted_user: default_user.into(),
            user: Mutex::new(None),
            ended: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Tells `journal` of every process started and ended through envd (a sandbox's logs).
    pub fn journal(mut self, journal: crate::Journal) -> Self {
        self.processes = Arc::new(Processes::journaled(journal));
        self
    }

    /// Ends every stream open on this sandbox (command output, watches) and any a caller
    /// ties to [`Served::streams_ended`]: for a server that took the clients' access back.
    pub fn end_streams(&self) {
        self.ended.cancel();
    }

    /// Completes once [`Served::end_streams`] was called.
    pub fn streams_ended(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.ended.clone().cancelled_owned()
    }

    /// The sandbox's id.
    pub fn id(&self) -> &str {
        self.sandbox.id()
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &dyn Sandbox {
        self.sandbox.as_ref()
    }

    /// The user commands run as when the request names none: the configured default if the
    /// sandbox has it, else root.
    pub async fn default_user(&self) -> String {
        let mut cached = self.user.lock().await;
        if let Some(u) = cached.as_ref() {
            return u.clone();
        }
        let probe = CommandSpec::program("id", ["-u", self.wanted_user.as_str()]).user("root");
        let exists = matches!(self.sandbox.exec(probe).await, Ok(o) if o.success());
        let user = if exists {
            self.wanted_user.clone()
        } else {
            "root".to_string()
        };
        *cached = Some(user.clone());
        user
    }
}
