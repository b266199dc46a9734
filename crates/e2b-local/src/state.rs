//! What the server knows: the backend, the sandboxes it serves, their processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sandkit_core::{ErrorKind, ListFilter, Result, Runtime, Sandbox, SandboxSpec};
use tokio::sync::Mutex;
use tracing::{debug, info};

use sandkit_envd::Served;

use crate::keys::{Key, KeyLimits, KeySet, Revoked, ANONYMOUS};

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
    /// Snapshots a key may keep (templates not counted); past it, a snapshot is `429`.
    /// Default 500.
    pub max_snapshots: usize,
    /// Volumes a key may keep; past it, a new volume is `429`. Default 100.
    pub max_volumes: usize,
    /// Template builds a key may run at once; past it, starting one is `429`. Default 4.
    pub max_builds: usize,
    /// Disk a key may hold, in MiB: its snapshots' and templates' own bytes (beyond the image
    /// each was made from) and its template uploads waiting on disk; past it, a snapshot, a
    /// build or an upload is `429`. Default 20480 (20 GiB).
    pub max_disk_mib: u64,
}

impl Limits {
    /// The limits of a key that sets none of its own.
    pub(crate) fn per_key(&self) -> KeyLimits {
        KeyLimits {
            max_sandboxes: self.max_sandboxes,
            creates_per_minute: self.creates_per_minute,
            max_snapshots: self.max_snapshots,
            max_volumes: self.max_volumes,
            max_builds: self.max_builds,
            max_disk_mib: self.max_disk_mib,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_source: 1024,
            header_timeout: Duration::from_secs(30),
            max_sandboxes: 100,
            creates_per_minute: 600,
            max_snapshots: 500,
            max_volumes: 100,
            max_builds: 4,
            max_disk_mib: 20 * 1024,
        }
    }
}

/// Settings of a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// An API key clients may send (`X-API-KEY`), named `default`, with the limits of
    /// [`ServerConfig::limits`].
    pub api_key: Option<String>,
    /// A keys file, or a directory of `*.toml` keys files: more keys, each with a name and its
    /// own limits, stored as hashes. Re-read when it changes and on `SIGHUP`; a file that does
    /// not parse is refused whole and the keys before it stay.
    pub keys_file: Option<PathBuf>,
    /// What happens to what a key owns when it leaves the keys file. Default: kept.
    pub revoked: Revoked,
    /// Where the server keeps what outlives a run: the secret access tokens are signed with
    /// (`secret`, made on first start) and template uploads. `None`: the secret is made in
    /// memory (tokens do not survive a restart) and uploads go to a directory under the
    /// system's temporary directory, removed at shutdown.
    pub data_dir: Option<PathBuf>,
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
            .field("keys_file", &self.keys_file)
            .field("revoked", &self.revoked)
            .field("data_dir", &self.data_dir)
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
            keys_file: None,
            revoked: Revoked::Keep,
            data_dir: None,
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

/// The namespace of an owner's snapshot names and secrets: the owner digest's lower letters
/// and digits.
pub(crate) fn tenant_of(owner: &str) -> String {
    owner
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect()
}

/// The images a server allows by default: the ones sandkit builds.
pub(crate) fn default_allowed_images() -> Vec<String> {
    vec!["sandkit-base:*".into(), "sandkit-mini:*".into()]
}

/// The shared state of a server.
pub(crate) struct State {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) config: ServerConfig,
    /// Signs access tokens (envd, traffic, volumes, uploads): kept in the data directory, so
    /// tokens survive a restart.
    secret: String,
    /// Where uploads are kept (and the secret, when the configuration names a data directory).
    data_dir: PathBuf,
    /// A random id of this server process, put on the sandboxes it makes.
    pub(crate) instance: String,
    /// The keys served now; replaced whole when the keys file is read again.
    keys: RwLock<Arc<KeySet>>,
    /// Held while the keys are read again (a signal and the file's watcher never interleave).
    reloading: Mutex<()>,
    /// What each key has used of its limits, by owner (kept across re-reads of the keys).
    usage: std::sync::Mutex<HashMap<String, Arc<Usage>>>,
    served: Mutex<HashMap<String, Held>>,
    made: Mutex<HashSet<String>>,
    debug_sandbox: Mutex<Option<String>>,
    /// When each sandbox was last confirmed alive.
    alive: Mutex<HashMap<String, Instant>>,
    /// Network configurations set by `PUT .../network`, by sandbox id (reported instead of
    /// the one kept at create).
    networks: std::sync::Mutex<HashMap<String, sandkit_e2b_protocol::api::NetworkConfig>>,
    /// The helper sandboxes of volumes' content.
    pub(crate) volume_helpers: crate::volume_helpers::Helpers,
    /// Template builds by build id (see [`crate::builds`]).
    pub(crate) builds: std::sync::Mutex<HashMap<String, Arc<crate::builds::Build>>>,
    /// The port proxy's domain, once it listens.
    ports_domain: std::sync::OnceLock<String>,
    /// What `/metrics` reports.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Every key's secrets (see [`crate::secret_store`]).
    pub(crate) secrets: crate::secret_store::Store,
    /// Sandboxes' logs (see [`crate::logs`]).
    pub(crate) logs: Arc<crate::logs::Logs>,
    /// Sandboxes' metrics over time (see [`crate::history`]).
    pub(crate) history: Arc<crate::history::History>,
    /// Dashboard links already opened, with when each expires and was first opened (see
    /// `crate::dashboard`).
    pub(crate) dashboard_links: std::sync::Mutex<HashMap<String, (u64, Instant)>>,
}

/// A sandbox this server holds a handle to, and the owner it was made for.
struct Held {
    owner: String,
    served: Arc<Served>,
}

/// What one key has used of its limits.
struct Usage {
    /// The create budget: tokens left, and when they were last counted.
    creates: Mutex<(f64, Instant)>,
    /// Held while one create of the key is admitted (the count and the list agree).
    admitting: Mutex<()>,
    /// Creates under way (counted against `max_sandboxes` until they are listed).
    creating: std::sync::atomic::AtomicUsize,
}

impl State {
    /// The state of a server with `config`: its keys read, its data directory ready.
    ///
    /// # Errors
    /// No key without `insecure_no_auth`, a keys file that does not load, or a data directory
    /// that cannot be made or read.
    pub(crate) fn new(runtime: Arc<dyn Runtime>, config: ServerConfig) -> std::io::Result<Self> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let keys = if config.insecure_no_auth {
            KeySet::anonymous(&config.limits.per_key())
        } else {
            KeySet::load(
                config.api_key.as_deref().filter(|k| !k.is_empty()),
                config.keys_file.as_deref(),
                &config.limits.per_key(),
            )
            .map_err(|e| {
                invalid(if e == "no API key" {
                    "no API key: set ServerConfig::api_key or keys_file (or insecure_no_auth)"
                        .into()
                } else {
                    e
                })
            })?
        };
        let instance = format!("{:016x}", rand::random::<u64>());
        let data_dir = match &config.data_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("e2b-local-{instance}")),
        };
        // Without a data directory nothing is written at start (a server that is never shut
        // down leaves nothing behind): the secret lives in memory, for this run only.
        let secret = match &config.data_dir {
            Some(dir) => load_secret(dir)?,
            None => format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            ),
        };
        info!(keys = keys.len(), data_dir = %data_dir.display(), "e2b-local keys loaded");
        let secrets = crate::secret_store::Store::new(crate::secret_store::dir_in(&data_dir));
        Ok(State {
            runtime,
            secret,
            data_dir,
            instance,
            keys: RwLock::new(Arc::new(keys)),
            reloading: Mutex::new(()),
            usage: std::sync::Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            made: Mutex::new(HashSet::new()),
            builds: std::sync::Mutex::new(HashMap::new()),
            volume_helpers: Default::default(),
            debug_sandbox: Mutex::new(None),
            alive: Mutex::new(HashMap::new()),
            networks: std::sync::Mutex::new(HashMap::new()),
            ports_domain: std::sync::OnceLock::new(),
            metrics: Default::default(),
            secrets,
            logs: Default::default(),
            history: Default::default(),
            dashboard_links: Default::default(),
            config,
        })
    }

    /// The keys served now.
    pub(crate) fn keys(&self) -> Arc<KeySet> {
        self.keys.read().expect("keys").clone()
    }

    /// Reads the keys file again. A file that does not load leaves the keys as they were.
    /// What a key that left the file owns is removed when [`ServerConfig::revoked`] says so.
    pub(crate) async fn reload_keys(&self) -> std::result::Result<(), String> {
        if self.config.insecure_no_auth {
            return Ok(());
        }
        let _one_at_a_time = self.reloading.lock().await;
        let newer = Arc::new(KeySet::load(
            self.config.api_key.as_deref().filter(|k| !k.is_empty()),
            self.config.keys_file.as_deref(),
            &self.config.limits.per_key(),
        )?);
        let older = std::mem::replace(&mut *self.keys.write().expect("keys"), newer.clone());
        let removed = older.removed_in(&newer);
        info!(
            keys = newer.len(),
            revoked = removed.len(),
            "e2b-local keys read again"
        );
        for key in removed {
            info!(key = %key.name, "key revoked: no longer served");
            // Its held sandboxes are let go, and the streams open on them (command output,
            // watches, port connections) end now, not when their clients hang up.
            self.served.lock().await.retain(|_, h| {
                let theirs = h.owner == key.owner;
                if theirs {
                    h.served.end_streams();
                }
                !theirs
            });
            if self.config.revoked == Revoked::Remove {
                self.remove_owned(&key).await;
            }
        }
        Ok(())
    }

    /// Removes what a revoked key owns: sandboxes, snapshots (and templates), volumes.
    async fn remove_owned(&self, key: &Key) {
        let filter = ListFilter::all().metadata(OWNER_KEY, key.owner.clone());
        let mut failed = 0usize;
        match self.runtime.list(&filter).await {
            Ok(list) => {
                for sandbox in list {
                    if let Err(e) = self.runtime.kill(&sandbox.id).await {
                        if e.kind() != ErrorKind::NotFound {
                            failed += 1;
                            tracing::warn!(key = %key.name, sandbox_id = %sandbox.id, error = %e, "cannot kill a revoked key's sandbox");
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(key = %key.name, error = %e, "cannot list a revoked key's sandboxes")
            }
        }
        if self.runtime.capabilities().snapshots {
            for snapshot in self.runtime.snapshots(None).await.unwrap_or_default() {
                if snapshot.metadata.get(OWNER_KEY) == Some(&key.owner) {
                    if let Err(e) = self.runtime.delete_snapshot(&snapshot.id).await {
                        failed += 1;
                        tracing::warn!(key = %key.name, snapshot = %snapshot.id, error = %e, "cannot delete a revoked key's snapshot");
                    }
                }
            }
        }
        if self.runtime.capabilities().volumes {
            for volume in self.runtime.volumes().await.unwrap_or_default() {
                if volume.metadata.get(OWNER_KEY) == Some(&key.owner) {
                    if let Err(e) = self.runtime.remove_volume(&volume.name).await {
                        failed += 1;
                        tracing::warn!(key = %key.name, volume = %volume.name, error = %e, "cannot remove a revoked key's volume");
                    }
                }
            }
        }
        info!(key = %key.name, failed, "removed what a revoked key owned");
    }

    fn usage(&self, key: &Key) -> Arc<Usage> {
        self.usage
            .lock()
            .expect("usage")
            .entry(key.owner.clone())
            .or_insert_with(|| {
                Arc::new(Usage {
                    creates: Mutex::new((key.limits.creates_per_minute as f64, Instant::now())),
                    admitting: Mutex::new(()),
                    creating: Default::default(),
                })
            })
            .clone()
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

    /// Admits one create under `key`'s limits, or says how long to wait. The admission is
    /// held until the returned guard is dropped (when the sandbox is made or the create fails).
    pub(crate) async fn admit_create(
        &self,
        key: &Key,
    ) -> std::result::Result<CreateAdmission, (String, u64)> {
        let usage = self.usage(key);
        {
            let mut bucket = usage.creates.lock().await;
            let per_sec = key.limits.creates_per_minute as f64 / 60.0;
            let (tokens, at) = *bucket;
            let now = Instant::now();
            let tokens = (tokens + now.duration_since(at).as_secs_f64() * per_sec)
                .min(key.limits.creates_per_minute as f64);
            if tokens < 1.0 {
                let wait = if per_sec > 0.0 {
                    ((1.0 - tokens) / per_sec).ceil() as u64
                } else {
                    60
                };
                *bucket = (tokens, now);
                self.metrics.refused(&key.name, "rate");
                return Err((
                    format!(
                        "Rate limit exceeded: at most {} sandbox creates a minute for this key",
                        key.limits.creates_per_minute
                    ),
                    wait.max(1),
                ));
            }
            *bucket = (tokens - 1.0, now);
        }
        let admitting = usage.admitting.lock().await;
        let creating = usage.creating.load(std::sync::atomic::Ordering::SeqCst);
        // A count that cannot be had admits nothing: the limit must hold.
        let existing = match self.runtime.list(&owned_filter(&key.owner)).await {
            Ok(l) => l.len(),
            Err(e) => {
                return Err((
                    format!("cannot count this key's sandboxes now ({e}); try again"),
                    5,
                ))
            }
        };
        if existing + creating >= key.limits.max_sandboxes {
            self.metrics.refused(&key.name, "concurrent");
            return Err((
                format!(
                    "You have reached the maximum number of concurrent sandboxes ({}); kill one first",
                    key.limits.max_sandboxes
                ),
                5,
            ));
        }
        usage
            .creating
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        drop(admitting);
        Ok(CreateAdmission { usage })
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

    /// A signature of `what` for `purpose`, with the server's secret.
    pub(crate) fn sign(&self, what: &str, purpose: &str) -> String {
        sandkit_e2b_protocol::derive_token(&self.secret, what, purpose)
    }

    pub(crate) fn access_token(&self, sandbox_id: &str) -> String {
        sandkit_e2b_protocol::derive_token(&self.secret, sandbox_id, "envd")
    }

    pub(crate) async fn remember_made(&self, id: &str) {
        self.made.lock().await.insert(id.to_string());
    }

    /// Holds a handle to `sandbox`, made for `owner`.
    pub(crate) async fn insert(&self, sandbox: Box<dyn Sandbox>, owner: &str) -> Arc<Served> {
        let id = sandbox.id().to_string();
        let logs = self.logs.clone();
        let (journal_owner, journal_id) = (owner.to_string(), id.clone());
        let served = Arc::new(
            Served::new(sandbox, self.config.default_user.clone()).journal(Arc::new(
                move |record| logs.record(&journal_owner, &journal_id, "envd", record),
            )),
        );
        let held = Held {
            owner: owner.to_string(),
            served: served.clone(),
        };
        {
            let mut all = self.served.lock().await;
            all.insert(id.clone(), held);
            // A key revoked while this request was under way: `reload_keys` swaps the keys
            // before it lets the revoked key's handles go (under this lock), so a handle put
            // here after that is caught here, and one put before, there.
            if !self.serves(owner) {
                all.remove(&id);
                served.end_streams();
                return served;
            }
        }
        self.alive.lock().await.insert(id, Instant::now());
        served
    }

    /// Whether `owner`'s key is served now (the anonymous owner of debug and no-auth mode
    /// always is).
    pub(crate) fn serves(&self, owner: &str) -> bool {
        owner == ANONYMOUS || self.keys().by_owner(owner).is_some()
    }

    /// For a request that made sandbox `id` for `owner` and finished after `owner`'s key was
    /// revoked: the sandbox goes as the revoked key's things went (killed with
    /// `--revoked remove`), and `true` (the request is to be refused). `false` while the key
    /// is served.
    pub(crate) async fn revoked_meanwhile(&self, owner: &str, id: &str) -> bool {
        if self.serves(owner) {
            return false;
        }
        if self.config.revoked == Revoked::Remove {
            if let Err(e) = self.runtime.kill(id).await {
                tracing::warn!(sandbox_id = id, error = %e, "cannot kill a revoked key's new sandbox");
            }
        }
        true
    }

    /// Every sandbox held now: its id, its owner and its handle.
    pub(crate) async fn all_held(&self) -> Vec<(String, String, Arc<Served>)> {
        self.served
            .lock()
            .await
            .iter()
            .map(|(id, h)| (id.clone(), h.owner.clone(), h.served.clone()))
            .collect()
    }

    /// Makes the next [`State::live`] ask the backend whether the sandbox still runs.
    pub(crate) async fn mark_stale(&self, id: &str) {
        self.alive.lock().await.remove(id);
    }

    /// Drops the handle of `id` if it is held for `owner` (another key's request never drops
    /// a handle: "not yours" is also `NotFound`).
    pub(crate) async fn forget_for(&self, id: &str, owner: &str) {
        let mut served = self.served.lock().await;
        if served.get(id).is_some_and(|h| h.owner == owner) {
            served.remove(id);
            drop(served);
            self.alive.lock().await.remove(id);
        }
    }

    pub(crate) async fn forget(&self, id: &str) {
        self.served.lock().await.remove(id);
        self.alive.lock().await.remove(id);
    }

    /// A token for `subject` and `purpose`, from the server's secret.
    pub(crate) fn derive(&self, subject: &str, purpose: &str) -> String {
        sandkit_e2b_protocol::derive_token(&self.secret, subject, purpose)
    }

    /// Where uploads of template files are kept while this server runs (on disk, in the
    /// data directory: a RAM-backed temporary directory would hold them in memory).
    pub(crate) fn uploads_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("uploads").join(&self.instance)
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

    /// What the backend says of a sandbox `whose` may use, without attaching to it or
    /// resuming it. Another tenant's sandbox, or one not made through this API, is `NotFound`.
    pub(crate) async fn info_for(
        &self,
        id: &str,
        whose: Whose<'_>,
    ) -> Result<sandkit_core::SandboxInfo> {
        let info = self.runtime.info(id).await?;
        if !self.may_use(info.metadata.get(OWNER_KEY).map(String::as_str), whose) {
            return Err(sandkit_core::Error::new(
                ErrorKind::NotFound,
                format!("sandbox {id} doesn't exist or you don't have access to it"),
            ));
        }
        Ok(info)
    }

    /// Whether `whose` may use what carries the owner `owner`.
    fn may_use(&self, owner: Option<&str>, whose: Whose<'_>) -> bool {
        match (owner, whose) {
            (Some(owner), Whose::Key(key)) => owner == key,
            (Some(owner), Whose::AnyKey) => self.keys().by_owner(owner).is_some(),
            (None, _) => false,
        }
    }

    /// The handle of a running sandbox `whose` may use: cached, or attached. Never resumes a
    /// paused sandbox (that is `connect`'s job): a paused one is [`ErrorKind::Conflict`].
    pub(crate) async fn served_for(&self, id: &str, whose: Whose<'_>) -> Result<Arc<Served>> {
        if let Some(held) = self.held(id).await {
            if self.may_use(Some(&held.0), whose) {
                return Ok(held.1);
            }
            return Err(sandkit_core::Error::new(
                ErrorKind::NotFound,
                format!("sandbox {id} doesn't exist or you don't have access to it"),
            ));
        }
        let info = self.info_for(id, whose).await?;
        if info.state != sandkit_core::SandboxState::Running {
            return Err(sandkit_core::Error::new(
                ErrorKind::Conflict,
                format!("sandbox {id} is paused; resume it (connect) first"),
            ));
        }
        let sandbox = self.runtime.connect(id).await?;
        let owner = info.metadata.get(OWNER_KEY).cloned().unwrap_or_default();
        Ok(self.insert(sandbox, &owner).await)
    }

    /// The owner and handle of a sandbox this server holds (no backend call).
    async fn held(&self, id: &str) -> Option<(String, Arc<Served>)> {
        let served = self.served.lock().await;
        let held = served.get(id)?;
        Some((held.owner.clone(), held.served.clone()))
    }

    /// A sandbox's handle if this server holds one and has not seen it stop or pause (no
    /// backend call): what a request without credentials may learn.
    pub(crate) async fn held_alive(&self, id: &str) -> Option<Arc<Served>> {
        let served = self.cached(id).await?;
        self.alive.lock().await.contains_key(id).then_some(served)
    }

    /// A sandbox's handle if this server holds one (no backend call).
    pub(crate) async fn cached(&self, id: &str) -> Option<Arc<Served>> {
        self.held(id).await.map(|(_, served)| served)
    }

    /// Like [`State::served_for`], for envd (whose token was checked: any served key's
    /// sandbox): confirms the sandbox is still running when it was not
    /// seen for a second (it may have expired or been paused). A paused sandbox is `NotFound`:
    /// envd is gone until it is resumed.
    ///
    /// A paused sandbox made with `autoResume` is resumed here, as E2B resumes one on traffic:
    /// this is called for requests whose credentials were checked.
    pub(crate) async fn live(&self, id: &str) -> Result<Arc<Served>> {
        let served = match self.served_for(id, Whose::AnyKey).await {
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

    /// The sandbox behind `debug_sandbox_id`, made on first use.
    pub(crate) async fn debug_sandbox(&self) -> Result<Arc<Served>> {
        let mut slot = self.debug_sandbox.lock().await;
        if let Some(id) = slot.as_ref() {
            if let Ok(s) = self.served_for(id, Whose::Key(ANONYMOUS)).await {
                return Ok(s);
            }
        }
        let spec = self.spec_for(ANONYMOUS, "base", BTreeMap::new(), BTreeMap::new(), None);
        let sandbox = self.runtime.create(spec).await?;
        let id = sandbox.id().to_string();
        info!(sandbox_id = %id, "made the debug-mode sandbox");
        self.remember_made(&id).await;
        *slot = Some(id);
        Ok(self.insert(sandbox, ANONYMOUS).await)
    }

    /// The spec of a sandbox made through the API for `owner`.
    pub(crate) fn spec_for(
        &self,
        owner: &str,
        template: &str,
        metadata: BTreeMap<String, String>,
        envs: BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> SandboxSpec {
        let mut spec = SandboxSpec::new()
            .metadata(TEMPLATE_KEY, template)
            .metadata(INSTANCE_KEY, &self.instance)
            .metadata(OWNER_KEY, owner)
            .snapshot_guard(OWNER_KEY, owner)
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

    /// A sandbox `id` of `owner` back from a pause gets its rules' secrets as they are now: a
    /// change made while it was paused reached no guard (`crate::secrets` gives changes to the
    /// running ones only).
    pub(crate) async fn refill_secrets(&self, id: &str, owner: &str, sandbox: &dyn Sandbox) {
        let _applying = self.secrets.applying.lock().await;
        let Some(mut policy) = self.secrets.policy_in_force(id) else {
            return;
        };
        if policy.secret_names().is_empty() {
            return;
        }
        self.secrets.fill(&tenant_of(owner), &mut policy);
        if let Err(e) = sandbox.set_network_policy(policy).await {
            tracing::warn!(sandbox = id, error = %e, "a resumed sandbox's rules did not get its secrets as they are now");
        }
    }

    /// A paused sandbox found by an authenticated envd request: resumed if it was made with
    /// `autoResume`, else gone for envd (as on E2B).
    async fn resume_on_traffic(&self, id: &str) -> Result<Arc<Served>> {
        let info = self.info_for(id, Whose::AnyKey).await?;
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
        let owner = info.metadata.get(OWNER_KEY).cloned().unwrap_or_default();
        self.refill_secrets(id, &owner, sandbox.as_ref()).await;
        Ok(self.insert(sandbox, &owner).await)
    }

    /// Kills what this server made (on shutdown).
    pub(crate) async fn shutdown(&self) {
        // What the backend keeps ready (a warm pool) goes in any case, and template uploads.
        self.runtime.shutdown().await;
        let _ = tokio::fs::remove_dir_all(self.uploads_dir()).await;
        if self.config.data_dir.is_none() {
            // A directory of this run only.
            let _ = tokio::fs::remove_dir_all(&self.data_dir).await;
        }
        self.volume_helpers.shutdown().await;
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
    usage: Arc<Usage>,
}

impl Drop for CreateAdmission {
    fn drop(&mut self) {
        self.usage
            .creating
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whose sandboxes a lookup may find.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Whose<'a> {
    /// Those carrying this owner (a control-plane request's key).
    Key(&'a str),
    /// Those of any key served now (an envd request, whose access token was checked).
    AnyKey,
}

/// The list filter of `owner`'s sandboxes.
pub(crate) fn owned_filter(owner: &str) -> ListFilter {
    ListFilter::all().metadata(OWNER_KEY, owner.to_string())
}

/// The server's secret in `dir` (`secret`), made on first use. Two servers starting at once
/// with one directory agree: the file is written whole under another name and linked in,
/// never over one that is there.
fn load_secret(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("secret");
    let context = |e: std::io::Error, what: &str| {
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is too short to be this server's secret; remove it to make a new one",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(e, "cannot read")),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| context(e, "cannot make the directory of"))?;
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let staged = dir.join(format!(".secret-{:x}", rand::random::<u64>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(|e| context(e, "cannot write"))?;
    std::io::Write::write_all(&mut file, secret.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| context(e, "cannot write"))?;
    let linked = std::fs::hard_link(&staged, &path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => Ok(secret),
        // Another server made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_secret(dir),
        Err(e) => Err(context(e, "cannot write")),
    }
}
