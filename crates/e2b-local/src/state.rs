//! What the server knows: the backend, the sandboxes it serves, their processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime_core::{
    CommandSpec, ErrorKind, ListFilter, Result, Runtime, Sandbox, SandboxExt, SandboxSpec,
};
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::procs::Processes;

/// Metadata keys the server keeps on each sandbox (hidden from the API).
pub(crate) const TEMPLATE_KEY: &str = "sbx.e2b.template";
pub(crate) const ENVS_KEY: &str = "sbx.e2b.envs";
pub(crate) const INSTANCE_KEY: &str = "sbx.e2b.server";

/// Whether a metadata key is the server's own.
pub(crate) fn hidden(key: &str) -> bool {
    key.starts_with("sbx.e2b.") || key == "sbx.cwd" || key == "sbx.user"
}

/// Settings of a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// The API key clients must send (`X-API-KEY`); `None` with `insecure_no_auth`.
    pub api_key: Option<String>,
    /// Serve without checking API keys and access tokens.
    pub insecure_no_auth: bool,
    /// Leave the sandboxes this server made running when it stops.
    pub keep_sandboxes: bool,
    /// The user commands run as when a request names none (if the image has it, else root).
    pub default_user: String,
    /// Longest time to live a sandbox may be given.
    pub max_timeout: Duration,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("keep_sandboxes", &self.keep_sandboxes)
            .field("default_user", &self.default_user)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            insecure_no_auth: false,
            keep_sandboxes: false,
            default_user: "user".into(),
            max_timeout: Duration::from_secs(24 * 3600),
        }
    }
}

/// One sandbox the server has a handle to.
pub(crate) struct Served {
    pub(crate) sandbox: Box<dyn Sandbox>,
    pub(crate) processes: Arc<Processes>,
    /// The default user, once known to exist in the image.
    user: Mutex<Option<String>>,
}

impl Served {
    /// The user commands run as when the request names none: the configured default if the
    /// image has it, else root.
    pub(crate) async fn default_user(&self, wanted: &str) -> String {
        let mut cached = self.user.lock().await;
        if let Some(u) = cached.as_ref() {
            return u.clone();
        }
        let probe = CommandSpec::program("id", ["-u", wanted]).user("root");
        let exists = matches!(self.sandbox.exec(probe).await, Ok(o) if o.success());
        let user = if exists {
            wanted.to_string()
        } else {
            "root".to_string()
        };
        *cached = Some(user.clone());
        user
    }
}

/// The shared state of a server.
pub(crate) struct State {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) config: ServerConfig,
    /// Signs envd access tokens; the API key, so tokens survive a restart.
    secret: String,
    /// A random id of this server process, put on the sandboxes it makes.
    pub(crate) instance: String,
    served: Mutex<HashMap<String, Arc<Served>>>,
    made: Mutex<HashSet<String>>,
    debug_sandbox: Mutex<Option<String>>,
    /// When each sandbox was last confirmed alive.
    alive: Mutex<HashMap<String, Instant>>,
}

impl State {
    pub(crate) fn new(runtime: Arc<dyn Runtime>, config: ServerConfig) -> Self {
        let secret = config
            .api_key
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        State {
            runtime,
            config,
            secret,
            instance: format!("{:016x}", rand::random::<u64>()),
            served: Mutex::new(HashMap::new()),
            made: Mutex::new(HashSet::new()),
            debug_sandbox: Mutex::new(None),
            alive: Mutex::new(HashMap::new()),
        }
    }

    /// The envd access token of a sandbox.
    pub(crate) fn access_token(&self, sandbox_id: &str) -> String {
        e2b_protocol::derive_token(&self.secret, sandbox_id, "envd")
    }

    pub(crate) async fn remember_made(&self, id: &str) {
        self.made.lock().await.insert(id.to_string());
    }

    pub(crate) async fn insert(&self, sandbox: Box<dyn Sandbox>) -> Arc<Served> {
        let id = sandbox.id().to_string();
        let served = Arc::new(Served {
            sandbox,
            processes: Arc::new(Processes::default()),
            user: Mutex::new(None),
        });
        self.served.lock().await.insert(id.clone(), served.clone());
        self.alive.lock().await.insert(id, Instant::now());
        served
    }

    pub(crate) async fn forget(&self, id: &str) {
        self.served.lock().await.remove(id);
        self.alive.lock().await.remove(id);
    }

    /// The handle of a live sandbox this server serves (made by it, or by an earlier run of it).
    pub(crate) async fn served(&self, id: &str) -> Result<Arc<Served>> {
        if let Some(s) = self.served.lock().await.get(id).cloned() {
            return Ok(s);
        }
        let sandbox = self.runtime.connect(id).await?;
        let info = sandbox.info().await?;
        if !info.metadata.contains_key(TEMPLATE_KEY) {
            // Not one of ours: the E2B API does not show it.
            return Err(runtime_core::Error::new(
                ErrorKind::NotFound,
                "not an e2b-local sandbox",
            ));
        }
        Ok(self.insert(sandbox).await)
    }

    /// Like [`State::served`], but confirms the sandbox is still alive when it was not seen
    /// for a second (it may have expired).
    pub(crate) async fn live(&self, id: &str) -> Result<Arc<Served>> {
        let served = self.served(id).await?;
        let fresh = self
            .alive
            .lock()
            .await
            .get(id)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if !fresh {
            match served.sandbox.info().await {
                Ok(info) if info.state == runtime_core::SandboxState::Running => {
                    self.alive
                        .lock()
                        .await
                        .insert(id.to_string(), Instant::now());
                }
                Ok(_) => {
                    return Err(runtime_core::Error::new(
                        ErrorKind::NotFound,
                        "the sandbox is not running",
                    ))
                }
                Err(e) => {
                    if e.kind() == ErrorKind::NotFound {
                        self.forget(id).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(served)
    }

    /// The ids of the sandboxes this server serves (cached, and any of ours on the backend).
    pub(crate) async fn known_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.served.lock().await.keys().cloned().collect();
        if let Ok(list) = self.runtime.list(&ListFilter::all()).await {
            for info in list {
                if info.metadata.contains_key(TEMPLATE_KEY) && !ids.contains(&info.id) {
                    ids.push(info.id);
                }
            }
        }
        ids
    }

    /// The sandbox behind `debug_sandbox_id`, made on first use.
    pub(crate) async fn debug_sandbox(&self) -> Result<Arc<Served>> {
        let mut slot = self.debug_sandbox.lock().await;
        if let Some(id) = slot.as_ref() {
            if let Ok(s) = self.live(id).await {
                return Ok(s);
            }
        }
        let spec = self.spec_for("base", BTreeMap::new(), BTreeMap::new(), None);
        let sandbox = self.runtime.create(spec).await?;
        let id = sandbox.id().to_string();
        info!(sandbox_id = %id, "made the debug-mode sandbox");
        self.remember_made(&id).await;
        *slot = Some(id);
        Ok(self.insert(sandbox).await)
    }

    /// The spec of a sandbox made through the API.
    pub(crate) fn spec_for(
        &self,
        template: &str,
        metadata: BTreeMap<String, String>,
        envs: BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> SandboxSpec {
        let mut spec = SandboxSpec::new()
            .metadata(TEMPLATE_KEY, template)
            .metadata(INSTANCE_KEY, &self.instance)
            .metadata(ENVS_KEY, serde_json::to_string(&envs).expect("json"))
            .env("E2B_SANDBOX", "true");
        if template != "base" {
            spec = spec.template(template);
        }
        for (k, v) in metadata {
            spec = spec.metadata(k, v);
        }
        for (k, v) in envs {
            spec = spec.env(k, v);
        }
        if let Some(t) = timeout {
            spec = spec.timeout(t);
        }
        spec
    }

    /// Kills what this server made (on shutdown).
    pub(crate) async fn shutdown(&self) {
        if self.config.keep_sandboxes {
            info!("leaving the sandboxes running (--keep-sandboxes)");
            return;
        }
        let mut ids: HashSet<String> = self.made.lock().await.drain().collect();
        if let Ok(list) = self
            .runtime
            .list(&ListFilter::all().metadata(INSTANCE_KEY, self.instance.clone()))
            .await
        {
            ids.extend(list.into_iter().map(|i| i.id));
        }
        for id in ids {
            match self.runtime.kill(&id).await {
                Ok(()) => debug!(sandbox_id = %id, "killed on shutdown"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(sandbox_id = %id, error = %e, "could not kill on shutdown")
                }
            }
        }
    }
}
