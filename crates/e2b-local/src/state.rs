//! What the server knows: the backend, the sandboxes it serves, their processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandkit_core::{ErrorKind, ListFilter, Result, Runtime, Sandbox, SandboxSpec};
use tokio::sync::Mutex;
use tracing::{debug, info};

use sandkit_envd::Served;

/// Metadata keys the server keeps on each sandbox (hidden from the API, refused from clients).
pub(crate) const TEMPLATE_KEY: &str = "sandkit.e2b.template";
pub(crate) const ENVS_KEY: &str = "sandkit.e2b.envs";
pub(crate) const INSTANCE_KEY: &str = "sandkit.e2b.server";
/// Who may see and use a sandbox: a digest of the API key that made it.
pub(crate) const OWNER_KEY: &str = "sandkit.e2b.owner";
/// Set on a sandbox that resumes when an authenticated envd request finds it paused.
pub(crate) const AUTO_RESUME_KEY: &str = "sandkit.e2b.auto_resume";

/// Whether a metadata key is hidden from the API: the server's own. (The keys sandkit's E2B
/// client keeps its defaults in, `sandkit.cwd` and `sandkit.user`, are shown as E2B shows them:
/// the client reads them back to give a fork its source's defaults, and hides them itself.)
pub(crate) fn hidden(key: &str) -> bool {
    reserved(key)
}

/// Whether a metadata key belongs to the server: a client may not set it (it would claim
/// another tenant's sandbox, or escape clean-up).
pub(crate) fn reserved(key: &str) -> bool {
    key.starts_with("sandkit.e2b.")
}

/// What a server allows, per listener and per API key.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections per listener. Past it, a new connection closes the oldest one that
    /// never had an authenticated answer, or is refused when all have. Default 4096.
    pub max_connections: usize,
    /// Open connections per listener from one source address, with the same rule. Default
    /// 1024.
    pub max_connections_per_source: usize,
    /// How long a client may take to send a request's headers, and how long an idle HTTP/1
    /// connection is kept. Default 30 s.
    pub header_timeout: Duration,
    /// Sandboxes a key may have at once (running or paused); past it, create is `429`.
    /// Default 100.
    pub max_sandboxes: usize,
    /// Creates a key may make a minute; past it, create is `429` with `Retry-After`. Default
    /// 600: one person's test suite never meets it (a team tightens it per key).
    pub creates_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_source: 1024,
            header_timeout: Duration::from_secs(30),
            max_sandboxes: 100,
            creates_per_minute: 600,
        }
    }
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
    /// Serve the SDK's debug mode: envd requests for `debug_sandbox_id` need no token and
    /// make that sandbox on first use. Only for a server on loopback.
    pub debug: bool,
    /// Host names requests may carry besides IP addresses, `localhost` and `*.localhost`
    /// (a request naming any other host is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Engine images a create's `templateID` or a build's `fromImage` may name, besides
    /// `base` and the key's own templates and snapshots. An entry ending in `*` matches every
    /// name it begins. Any other image on the engine (the operator's own) is not found.
    /// Default: the images sandkit builds (`sandkit-base:*`, `sandkit-mini:*`).
    pub allowed_images: Vec<String>,
    /// Connection, timing and per-key limits.
    pub limits: Limits,
    /// Accept listeners on addresses beyond loopback. Off: [`Server::serve`](crate::Server::serve)
    /// refuses them, since anyone who reaches the port can try keys and tokens.
    pub allow_remote: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("keep_sandboxes", &self.keep_sandboxes)
            .field("default_user", &self.default_user)
            .field("max_timeout", &self.max_timeout)
            .field("debug", &self.debug)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allowed_images", &self.allowed_images)
            .field("allow_remote", &self.allow_remote)
            .field("limits", &self.limits)
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
            debug: false,
            allowed_hosts: Vec::new(),
            allowed_images: default_allowed_images(),
            allow_remote: false,
            limits: Limits::default(),
        }
    }
}

/// The images a server allows by default: the ones sandkit builds.
pub(crate) fn default_allowed_images() -> Vec<String> {
    vec!["sandkit-base:*".into(), "sandkit-mini:*".into()]
}

/// The shared state of a server.
pub(crate) struct State {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) config: ServerConfig,
    /// Signs envd access tokens; the API key, so tokens survive a restart.
    secret: String,
    /// A random id of this server process, put on the sandboxes it makes.
    pub(crate) instance: String,
    /// The tenant of this server's key: only sandboxes labelled with it are visible.
    owner: String,
    served: Mutex<HashMap<String, Arc<Served>>>,
    made: Mutex<HashSet<String>>,
    debug_sandbox: Mutex<Option<String>>,
    /// When each sandbox was last confirmed alive.
    alive: Mutex<HashMap<String, Instant>>,
    /// The key's create budget: tokens left, and when they were last counted.
    creates: Mutex<(f64, Instant)>,
    /// Creates under way (counted against `max_sandboxes` until they are listed).
    creating: Mutex<usize>,
    /// Network configurations set by `PUT .../network`, by sandbox id (reported instead of
    /// the one kept at create).
    networks: std::sync::Mutex<HashMap<String, sandkit_e2b_protocol::api::NetworkConfig>>,
    /// The helper sandboxes of volumes' content (see [`crate::volumes`]).
    pub(crate) volume_helpers: crate::volumes::Helpers,
    /// Template builds by build id (see [`crate::templates`]).
    pub(crate) builds: std::sync::Mutex<HashMap<String, Arc<crate::templates::Build>>>,
    /// The port proxy's domain, once it listens.
    ports_domain: std::sync::OnceLock<String>,
}

impl State {
    pub(crate) fn new(runtime: Arc<dyn Runtime>, config: ServerConfig) -> Self {
        let secret = config
            .api_key
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let owner = match &config.api_key {
            Some(key) if !config.insecure_no_auth => {
                sandkit_e2b_protocol::derive_token(key, "", "owner")
            }
            _ => "anonymous".to_string(),
        };
        State {
            runtime,
            owner,
            secret,
            instance: format!("{:016x}", rand::random::<u64>()),
            served: Mutex::new(HashMap::new()),
            made: Mutex::new(HashSet::new()),
            builds: std::sync::Mutex::new(HashMap::new()),
            volume_helpers: Default::default(),
            debug_sandbox: Mutex::new(None),
            alive: Mutex::new(HashMap::new()),
            creates: Mutex::new((config.limits.creates_per_minute as f64, Instant::now())),
            creating: Mutex::new(0),
            networks: std::sync::Mutex::new(HashMap::new()),
            ports_domain: std::sync::OnceLock::new(),
            config,
        }
    }

    /// Keeps the network configuration set on `id` by `PUT .../network`.
    pub(crate) async fn set_network(
        &self,
        id: &str,
        network: sandkit_e2b_protocol::api::NetworkConfig,
    ) {
        self.networks
            .lock()
            .expect("networks")
            .insert(id.to_string(), network);
    }

    /// The network configuration last set on `id` by `PUT .../network`.
    pub(crate) fn network_of(&self, id: &str) -> Option<sandkit_e2b_protocol::api::NetworkConfig> {
        self.networks.lock().expect("networks").get(id).cloned()
    }

    /// Admits one create under the key's limits, or says how long to wait. The admission is
    /// held until the returned guard is dropped (when the sandbox is made or the create fails).
    pub(crate) async fn admit_create(
        self: &Arc<Self>,
    ) -> std::result::Result<CreateAdmission, (String, u64)> {
        let limits = &self.config.limits;
        {
            let mut bucket = self.creates.lock().await;
            let per_sec = limits.creates_per_minute as f64 / 60.0;
            let (tokens, at) = *bucket;
            let now = Instant::now();
            let tokens = (tokens + now.duration_since(at).as_secs_f64() * per_sec)
                .min(limits.creates_per_minute as f64);
            if tokens < 1.0 {
                let wait = if per_sec > 0.0 {
                    ((1.0 - tokens) / per_sec).ceil() as u64
                } else {
                    60
                };
                *bucket = (tokens, now);
                return Err((
                    format!(
                        "Rate limit exceeded: at most {} sandbox creates a minute for this key",
                        limits.creates_per_minute
                    ),
                    wait.max(1),
                ));
            }
            *bucket = (tokens - 1.0, now);
        }
        let mut creating = self.creating.lock().await;
        // A count that cannot be had admits nothing: the limit must hold.
        let existing = match self.runtime.list(&self.owned_filter()).await {
            Ok(l) => l.len(),
            Err(e) => {
                return Err((
                    format!("cannot count this key's sandboxes now ({e}); try again"),
                    5,
                ))
            }
        };
        if existing + *creating >= limits.max_sandboxes {
            return Err((
                format!(
                    "You have reached the maximum number of concurrent sandboxes ({}); kill one first",
                    limits.max_sandboxes
                ),
                5,
            ));
        }
        *creating += 1;
        Ok(CreateAdmission {
            state: self.clone(),
        })
    }

    /// The envd access token of a sandbox.
    /// The token a sandbox's ports need when it was made with `allowPublicTraffic=false`.
    pub(crate) fn traffic_token(&self, sandbox_id: &str) -> String {
        sandkit_e2b_protocol::derive_token(&self.secret, sandbox_id, "traffic")
    }

    /// The domain sandboxes' ports are served under (`localhost:<port>`), when the port
    /// proxy listens.
    pub(crate) fn ports_domain(&self) -> Option<String> {
        self.ports_domain.get().cloned()
    }

    /// Sets the port proxy's domain (once, when it starts listening).
    pub(crate) fn set_ports_domain(&self, domain: String) {
        let _ = self.ports_domain.set(domain);
    }

    pub(crate) fn access_token(&self, sandbox_id: &str) -> String {
        sandkit_e2b_protocol::derive_token(&self.secret, sandbox_id, "envd")
    }

    pub(crate) async fn remember_made(&self, id: &str) {
        self.made.lock().await.insert(id.to_string());
    }

    pub(crate) async fn insert(&self, sandbox: Box<dyn Sandbox>) -> Arc<Served> {
        let id = sandbox.id().to_string();
        let served = Arc::new(Served::new(sandbox, self.config.default_user.clone()));
        self.served.lock().await.insert(id.clone(), served.clone());
        self.alive.lock().await.insert(id, Instant::now());
        served
    }

    /// Makes the next [`State::live`] ask the backend whether the sandbox still runs.
    pub(crate) async fn mark_stale(&self, id: &str) {
        self.alive.lock().await.remove(id);
    }

    pub(crate) async fn forget(&self, id: &str) {
        self.served.lock().await.remove(id);
        self.alive.lock().await.remove(id);
    }

    /// What the backend says of a sandbox this tenant owns, without attaching to it or
    /// resuming it. Another tenant's sandbox, or one not made through this API, is `NotFound`.
    /// A token for `subject` and `purpose`, from the server's secret.
    pub(crate) fn derive(&self, subject: &str, purpose: &str) -> String {
        sandkit_e2b_protocol::derive_token(&self.secret, subject, purpose)
    }

    /// Where uploads of template files are kept while this server runs.
    pub(crate) fn uploads_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("e2b-local-{}", self.instance))
    }

    /// Whether a create or a build may start from the engine image `image`.
    pub(crate) fn image_allowed(&self, image: &str) -> bool {
        self.config
            .allowed_images
            .iter()
            .any(|a| match a.strip_suffix('*') {
                Some(prefix) => image.starts_with(prefix),
                None => image == a,
            })
    }

    /// This key's tenant, as it is put on what it makes (metadata `sandkit.e2b.owner`).
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// The namespace of this key's snapshot names: two keys' names never meet.
    pub(crate) fn tenant(&self) -> String {
        self.owner
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .collect()
    }

    pub(crate) async fn owned_info(&self, id: &str) -> Result<sandkit_core::SandboxInfo> {
        let info = self.runtime.info(id).await?;
        if info.metadata.get(OWNER_KEY) != Some(&self.owner) {
            return Err(sandkit_core::Error::new(
                ErrorKind::NotFound,
                format!("sandbox {id} doesn't exist or you don't have access to it"),
            ));
        }
        Ok(info)
    }

    /// The handle of a running sandbox this tenant owns: cached, or attached. Never resumes a
    /// paused sandbox (that is `connect`'s job): a paused one is [`ErrorKind::Conflict`].
    pub(crate) async fn served(&self, id: &str) -> Result<Arc<Served>> {
        if let Some(s) = self.cached(id).await {
            return Ok(s);
        }
        let info = self.owned_info(id).await?;
        if info.state != sandkit_core::SandboxState::Running {
            return Err(sandkit_core::Error::new(
                ErrorKind::Conflict,
                format!("sandbox {id} is paused; resume it (connect) first"),
            ));
        }
        let sandbox = self.runtime.connect(id).await?;
        Ok(self.insert(sandbox).await)
    }

    /// A sandbox's handle if this server holds one and has not seen it stop or pause (no
    /// backend call): what a request without credentials may learn.
    pub(crate) async fn held_alive(&self, id: &str) -> Option<Arc<Served>> {
        let served = self.cached(id).await?;
        self.alive.lock().await.contains_key(id).then_some(served)
    }

    /// A sandbox's handle if this server holds one (no backend call).
    pub(crate) async fn cached(&self, id: &str) -> Option<Arc<Served>> {
        self.served.lock().await.get(id).cloned()
    }

    /// Like [`State::served`], for envd: confirms the sandbox is still running when it was not
    /// seen for a second (it may have expired or been paused). A paused sandbox is `NotFound`:
    /// envd is gone until it is resumed.
    ///
    /// A paused sandbox made with `autoResume` is resumed here, as E2B resumes one on traffic:
    /// this is called for requests whose credentials were checked.
    pub(crate) async fn live(&self, id: &str) -> Result<Arc<Served>> {
        let served = match self.served(id).await {
            Err(e) if e.kind() == ErrorKind::Conflict => return self.resume_on_traffic(id).await,
            other => other?,
        };
        let fresh = self
            .alive
            .lock()
            .await
            .get(id)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if !fresh {
            match served.sandbox().info().await {
                Ok(info) if info.state == sandkit_core::SandboxState::Running => {
                    self.alive
                        .lock()
                        .await
                        .insert(id.to_string(), Instant::now());
                }
                Ok(info) if info.state == sandkit_core::SandboxState::Paused => {
                    return self.resume_on_traffic(id).await;
                }
                Ok(_) => {
                    return Err(sandkit_core::Error::new(
                        ErrorKind::NotFound,
                        "the sandbox is not running",
                    ));
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

    /// The ids of the sandboxes this server holds a handle to (no backend call).
    pub(crate) async fn cached_ids(&self) -> Vec<String> {
        self.served.lock().await.keys().cloned().collect()
    }

    /// The list filter of this tenant's sandboxes.
    pub(crate) fn owned_filter(&self) -> ListFilter {
        ListFilter::all().metadata(OWNER_KEY, self.owner.clone())
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
            .metadata(OWNER_KEY, &self.owner)
            .snapshot_guard(OWNER_KEY, &self.owner)
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

    /// A paused sandbox found by an authenticated envd request: resumed if it was made with
    /// `autoResume`, else gone for envd (as on E2B).
    async fn resume_on_traffic(&self, id: &str) -> Result<Arc<Served>> {
        let info = self.owned_info(id).await?;
        if info.metadata.get(AUTO_RESUME_KEY).map(String::as_str) != Some("1") {
            return Err(sandkit_core::Error::new(
                ErrorKind::NotFound,
                "the sandbox is paused",
            ));
        }
        tracing::debug!(
            sandbox_id = id,
            "resuming a paused sandbox on traffic (autoResume)"
        );
        self.forget(id).await;
        let sandbox = self.runtime.connect(id).await?;
        let served = self.insert(sandbox).await;
        Ok(served)
    }

    /// Kills what this server made (on shutdown).
    pub(crate) async fn shutdown(&self) {
        // What the backend keeps ready (a warm pool) goes in any case, and template uploads.
        self.runtime.shutdown().await;
        let _ = tokio::fs::remove_dir_all(self.uploads_dir()).await;
        crate::volumes::shutdown(self).await;
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

/// One admitted create; counted until dropped.
pub(crate) struct CreateAdmission {
    state: Arc<State>,
}

impl Drop for CreateAdmission {
    fn drop(&mut self) {
        let state = self.state.clone();
        // Drop cannot wait: decrement on the runtime.
        tokio::spawn(async move {
            let mut creating = state.creating.lock().await;
            *creating = creating.saturating_sub(1);
        });
    }
}
