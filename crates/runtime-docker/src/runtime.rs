//! [`DockerRuntime`] and its builder.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::container::{
    Config, CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::models::{
    ContainerStateStatusEnum, DeviceRequest, HostConfig, Mount as DockerMount, MountTypeEnum,
    PortBinding,
};
use bollard::Docker;
use sandkit_core::{
    Capabilities, ListFilter, Mount, MountSource, NetworkMode, Resources, Runtime, Sandbox,
    SandboxInfo, SandboxSpec, SandboxState, DEFAULT_SANDBOX_TIMEOUT,
};
use sandkit_core::{Error, ErrorKind, Result};
use tracing::debug;

use crate::error::{err, map, BACKEND};
use crate::inside::{self, Inside};
use crate::keeper::{Held, Keeper};
use crate::sandbox::{DockerSandbox, Ttl};
use crate::template::TemplateInfo;

/// The image used when neither the sandbox nor the configuration names one.
pub const DEFAULT_IMAGE: &str = "sandkit-base:bookworm";

/// The Linux capabilities a sandbox gets by default: what `apt-get`, `pip`, `sudo` and a
/// server on port 80 need as root in the sandbox. Left out of Docker's own default set:
/// `NET_RAW` (raw sockets: spoofing, sniffing the bridge), `MKNOD` (device files), `SETFCAP`,
/// `SETPCAP` and `SYS_CHROOT`.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
    "AUDIT_WRITE",
];

/// The most bytes a sandbox's labels (its metadata) may take.
pub(crate) const MAX_LABEL_BYTES: usize = 32 << 10;

/// The network sandboxes join by default: made by this backend on first use, with traffic
/// between its containers turned off, so that sandboxes cannot reach each other. Name
/// `bridge` (Docker's default network) for sandboxes that must talk to each other.
pub const ISOLATED_NETWORK: &str = "sandkit-isolated";

/// The CPU limit of a sandbox when neither it nor the configuration sets one.
pub const DEFAULT_CPUS: f64 = 1.0;

/// The container's main process when the deadline keeper holds its time to live: it only
/// waits (after clearing process records a snapshot carried). The keeper, outside the sandbox,
/// kills the container at its deadline.
const IDLE: &str = "rm -f /.sandkit/procs/* 2>/dev/null; while :; do sleep 3600; done";

/// The container's main process when no keeper is available (no `sandkit-agent` binary): keeps the
/// sandbox alive until the deadline in `/.sandkit/deadline` (epoch seconds, put there before start)
/// passes, then exits, and the engine removes the container. Root in the sandbox can change
/// that file or stop this loop: see [`crate::keeper`] for the time to live the sandbox cannot
/// change. A jump in the clock (the container was paused) grants a grace period so a resumed
/// sandbox is not killed before its new deadline is written.
const DEADLINE_FILE_INIT: &str = r#"rm -f /.sandkit/procs/* 2>/dev/null; last=$(date +%s); grace=0
while :; do
  now=$(date +%s)
  if [ $((now - last)) -gt 5 ]; then grace=$((now + 15)); fi
  last=$now
  dl=0; read -r dl < /.sandkit/deadline 2>/dev/null
  case $dl in ''|*[!0-9]*) dl=0;; esac
  if [ "$now" -ge "$dl" ] && [ "$now" -ge "$grace" ]; then exit 0; fi
  sleep 1
done"#;

/// Label names, under a configurable prefix (default `sandkit`).
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    prefix: String,
}

impl Labels {
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

#[derive(Debug)]
pub(crate) struct Settings {
    /// Names every sandbox resolves to fixed addresses (a spec's own entries win).
    pub(crate) hosts: BTreeMap<String, std::net::IpAddr>,
    pub(crate) image: String,
    pub(crate) network: NetworkMode,
    pub(crate) mounts: Vec<Mount>,
    pub(crate) workdir: String,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) ttl: Duration,
    pub(crate) labels: Labels,
    pub(crate) binding_address: String,
    pub(crate) additional_networks: Vec<String>,
    pub(crate) resources: Resources,
    pub(crate) max_file_bytes: Option<u64>,
    pub(crate) capabilities: Vec<String>,
    pub(crate) oci_runtime: Option<String>,
    /// Keeps deadlines outside the sandboxes; `None` without an agent binary.
    pub(crate) keeper: Option<Arc<Keeper>>,
    /// Whether a missing keeper is worth a warning (not when the agent was turned off).
    pub(crate) agent_wanted: bool,
    /// The agent inside sandboxes (the fast path); `None` without a binary or when turned off.
    pub(crate) inside: Option<Arc<Inside>>,
    pub(crate) no_new_privileges: bool,
    /// The warm pool, when asked for (and the agent runs inside sandboxes).
    pub(crate) pool: Option<Arc<crate::pool::Pool>>,
    /// Holds each sandbox to its network policy; `None` without an agent binary or when
    /// turned off (`[docker] network_guard = false`).
    pub(crate) netguard: Option<Arc<crate::netguard::NetGuard>>,
    /// The policy of sandboxes whose spec sets none.
    pub(crate) network_policy: Option<sandkit_core::NetworkPolicy>,
    /// Whether the engine runs on this machine (a Unix socket): its bridges are routable here.
    pub(crate) local_engine: bool,
}

/// Sandboxes as containers on a Docker engine.
///
/// See the [crate documentation](crate) for what it does and how to configure it.
#[derive(Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    pub(crate) settings: Arc<Settings>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(BACKEND)
    }
}

/// Builds a [`DockerRuntime`]: `DockerRuntime::builder().image("x").build().await?`.
#[derive(Debug)]
pub struct DockerRuntimeBuilder {
    host: Option<String>,
    image: String,
    network: NetworkMode,
    mounts: Vec<Mount>,
    workdir: String,
    env: BTreeMap<String, String>,
    ttl: Duration,
    label_prefix: String,
    binding_address: String,
    additional_networks: Vec<String>,
    resources: Resources,
    max_file_bytes: Option<u64>,
    agent_binary: Option<std::path::PathBuf>,
    use_agent: bool,
    agent_inside: bool,
    no_new_privileges: bool,
    pool: usize,
    network_guard: bool,
    network_policy: Option<sandkit_core::NetworkPolicy>,
    egress_trust: Option<String>,
    hosts: BTreeMap<String, std::net::IpAddr>,
    engine_socket: String,
    capabilities: Vec<String>,
    oci_runtime: Option<String>,
}

impl Default for DockerRuntimeBuilder {
    fn default() -> Self {
        DockerRuntimeBuilder {
            host: None,
            image: DEFAULT_IMAGE.into(),
            network: NetworkMode::Named(ISOLATED_NETWORK.into()),
            mounts: Vec::new(),
            workdir: "/workspace".into(),
            env: BTreeMap::new(),
            ttl: DEFAULT_SANDBOX_TIMEOUT,
            label_prefix: "sandkit".into(),
            binding_address: "127.0.0.1".into(),
            additional_networks: Vec::new(),
            resources: Resources::new()
                .memory_mb(2048)
                .pids(1024)
                .cpus(DEFAULT_CPUS),
            max_file_bytes: Some(4 << 30),
            agent_binary: None,
            use_agent: true,
            agent_inside: true,
            no_new_privileges: true,
            pool: 0,
            network_guard: true,
            network_policy: None,
            egress_trust: None,
            hosts: BTreeMap::new(),
            engine_socket: "/var/run/docker.sock".into(),
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            oci_runtime: None,
        }
    }
}

impl DockerRuntimeBuilder {
    /// Engine address (`unix:///path`, `tcp://host:port`); default: `DOCKER_HOST` or the local
    /// socket.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
    /// Image for sandboxes that name no template. Default [`DEFAULT_IMAGE`].
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = image.into();
        self
    }
    /// Network mode. Default [`ISOLATED_NETWORK`] (`sandkit-isolated`: a bridge of its own with
    /// inter-container traffic off, so sandboxes do not reach each other).
    pub fn network(mut self, network: NetworkMode) -> Self {
        self.network = network;
        self
    }
    /// Mounts every sandbox gets (on top of [`SandboxSpec::mounts`]).
    pub fn mounts(mut self, mounts: Vec<Mount>) -> Self {
        self.mounts = mounts;
        self
    }
    /// Default working directory, created if missing. Default `/workspace`.
    pub fn workdir(mut self, workdir: impl Into<String>) -> Self {
        self.workdir = workdir.into();
        self
    }
    /// Environment every sandbox starts with.
    pub fn env(mut self, env: BTreeMap<String, String>) -> Self {
        self.env = env;
        self
    }
    /// Default time to live. Default 300 s.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Prefix of our labels and container names. Default `sandkit`.
    pub fn label_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.label_prefix = prefix.into();
        self
    }
    /// Host address published ports bind to. Default `127.0.0.1`.
    pub fn binding_address(mut self, address: impl Into<String>) -> Self {
        self.binding_address = address.into();
        self
    }
    /// Networks to connect every sandbox to after start.
    pub fn additional_networks(mut self, networks: Vec<String>) -> Self {
        self.additional_networks = networks;
        self
    }
    /// Default limits (a sandbox's own [`SandboxSpec::resources`] wins field by field).
    /// Default: 1 CPU ([`DEFAULT_CPUS`]), 2048 MiB of memory, 1024 processes.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Largest file a process in a sandbox may write (`RLIMIT_FSIZE`; a process past it gets
    /// `SIGXFSZ`). Default 4 GiB; `None` for no limit.
    pub fn max_file_bytes(mut self, bytes: Option<u64>) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    /// The static `sandkit-agent` binary the backend runs on the engine (the deadline keeper).
    /// Default: `SANDKIT_AGENT_BIN`, else `sandkit-agent` beside the running program. Without one, a
    /// sandbox keeps its own deadline and root inside it can change it (a warning says so).
    pub fn agent_binary(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.agent_binary = Some(path.into());
        self
    }

    /// The Linux capabilities sandboxes get (names as in `capabilities(7)`, without `CAP_`);
    /// every other one is dropped. Default [`DEFAULT_CAPABILITIES`].
    pub fn capabilities(mut self, capabilities: Vec<String>) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// An OCI runtime registered with the engine to run sandboxes with, e.g. `runsc` (gVisor;
    /// `cargo xtask docker --gvisor` registers it). Default: the engine's (`runc`).
    pub fn oci_runtime(mut self, runtime: impl Into<String>) -> Self {
        self.oci_runtime = Some(runtime.into());
        self
    }

    /// Runs no `sandkit-agent`, whatever [`DockerRuntimeBuilder::agent_binary`] or `SANDKIT_AGENT_BIN`
    /// say: each sandbox keeps its own deadline (root inside it can change it), and commands
    /// and files go through the engine's exec API.
    pub fn without_agent(mut self) -> Self {
        self.use_agent = false;
        self
    }

    /// Keeps `n` sandboxes of the default image ready (`[docker] pool = n`; default 0): a
    /// `create` the pool can serve then takes one in about a millisecond, and a new one is
    /// made in the background. See [`DockerRuntime::drain_pool`] and the `pool` module docs
    /// in the README: which specs it serves, and what happens to it when the process ends.
    /// Needs the agent inside sandboxes.
    pub fn pool(mut self, n: usize) -> Self {
        self.pool = n;
        self
    }

    /// Whether the network guard holds sandboxes to their network policy (`[docker]
    /// network_guard`, default on; needs the agent binary and the base image, which has
    /// `nft`). Off, sandboxes on the isolated network still cannot reach each other, but they
    /// reach the host and link-local addresses, and a network policy is refused.
    pub fn network_guard(mut self, on: bool) -> Self {
        self.network_guard = on;
        self
    }

    /// The network policy of sandboxes whose spec sets none (`[sandbox.network]`).
    pub fn network_policy(mut self, policy: sandkit_core::NetworkPolicy) -> Self {
        self.network_policy = Some(policy);
        self
    }

    /// Names every sandbox resolves to fixed addresses (`[docker] hosts`), as
    /// [`SandboxSpec::add_host`](sandkit_core::SandboxSpec::add_host) for each: services of
    /// your network that sandboxes know by name. A spec's own entry for a name wins.
    pub fn hosts(mut self, hosts: BTreeMap<String, std::net::IpAddr>) -> Self {
        self.hosts = hosts;
        self
    }

    /// Certificates (PEM) the network guard trusts, besides the system's, when it sends a
    /// request that a policy's request rules changed on to its server (`[docker]
    /// egress_trust`): for servers of your own with a private CA.
    pub fn egress_trust(mut self, pem: impl Into<String>) -> Self {
        self.egress_trust = Some(pem.into());
        self
    }

    /// Whether sandboxes get Docker's `no-new-privileges` flag (default on): setuid programs
    /// then cannot raise privileges, so `sudo` fails. Off, `user` in the base image may
    /// `sudo` without a password, as in E2B's base template (root stays within the sandbox's
    /// reduced capabilities either way).
    pub fn no_new_privileges(mut self, on: bool) -> Self {
        self.no_new_privileges = on;
        self
    }

    /// Whether sandboxes run the agent inside them (`[docker] agent = "auto" | "off"`; default
    /// on): commands, files, watching and metrics then go to it over one attached exec, about
    /// a millisecond a command. Off, or where the agent cannot run (an image that is not Linux
    /// x86_64, no agent binary), they go through the engine's exec API (tens of milliseconds
    /// a command). The deadline keeper is not affected.
    pub fn agent_inside(mut self, on: bool) -> Self {
        self.agent_inside = on;
        self
    }

    /// The engine's socket as a path on the engine's host, mounted into the deadline keeper.
    /// Default `/var/run/docker.sock`.
    pub fn engine_socket(mut self, path: impl Into<String>) -> Self {
        self.engine_socket = path.into();
        self
    }

    /// Connects to the engine, negotiating the API version.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when no engine answers, naming the address tried.
    pub async fn build(self) -> Result<DockerRuntime> {
        let host = self
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let unavailable = |e: bollard::errors::Error| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "no Docker engine answers at {host}; start one (`cargo xtask docker` installs \
                     and starts Debian's docker.io) or set DOCKER_HOST"
                ),
            )
            .with_operation("connect to engine")
            .with_source(e)
        };
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(&host, 120, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(err(
                ErrorKind::InvalidInput,
                "connect to engine",
                format!("unsupported engine address {host:?}; use unix:///path or tcp://host:port"),
            ));
        }
        .map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        debug!(host, "connected to the Docker engine");
        let binary = if self.use_agent {
            crate::agent::find(self.agent_binary.as_deref())
                .map_err(|m| err(ErrorKind::InvalidInput, "connect to engine", m))?
        } else {
            None
        };
        let keeper = match binary {
            Some(path) => Some(Arc::new(Keeper::new(
                docker.clone(),
                &self.label_prefix,
                &path,
                &self.engine_socket,
            )?)),
            None => None,
        };
        let inside = match (&keeper, self.agent_inside) {
            (Some(k), true) => Some(Arc::new(Inside::new(
                docker.clone(),
                &self.label_prefix,
                k.clone(),
            ))),
            _ => None,
        };
        let netguard = match (&keeper, self.network_guard) {
            (Some(k), true) => Some(Arc::new(crate::netguard::NetGuard::new(
                docker.clone(),
                &self.label_prefix,
                DEFAULT_IMAGE,
                match &inside {
                    Some(i) => i.clone(),
                    None => Arc::new(Inside::new(docker.clone(), &self.label_prefix, k.clone())),
                },
                &self.engine_socket,
                self.egress_trust.clone(),
            ))),
            _ => None,
        };
        if let Some(p) = &self.network_policy {
            p.validate()
                .map_err(|e| e.with_context("config", "[sandbox.network]"))?;
        }
        let pool = match (self.pool, &inside) {
            (0, _) => None,
            (n, Some(_)) => Some(Arc::new(crate::pool::Pool::new(n))),
            (_, None) => {
                tracing::warn!(
                    "[docker] pool needs the agent inside sandboxes (an agent binary, and \
                     agent = \"auto\"); no pool is kept"
                );
                None
            }
        };
        Ok(DockerRuntime {
            docker,
            settings: Arc::new(Settings {
                image: self.image,
                network: self.network,
                mounts: self.mounts,
                workdir: self.workdir,
                env: self.env,
                ttl: self.ttl,
                labels: Labels {
                    prefix: self.label_prefix,
                },
                binding_address: self.binding_address,
                additional_networks: self.additional_networks,
                resources: self.resources,
                max_file_bytes: self.max_file_bytes,
                capabilities: self.capabilities,
                oci_runtime: self.oci_runtime,
                keeper,
                agent_wanted: self.use_agent,
                inside,
                no_new_privileges: self.no_new_privileges,
                pool,
                netguard,
                network_policy: self.network_policy,
                hosts: self.hosts,
                local_engine: host.starts_with("unix://"),
            }),
        })
    }
}

/// Says once per process, at the first sandbox made without the network guard, what that
/// leaves open.
fn warn_no_guard() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            "no network guard (it needs an sandkit-agent binary and [docker] network_guard = true): \
             sandboxes can reach the host's services and link-local addresses"
        )
    });
}

/// Says once per process, at the first sandbox made without a keeper, that sandboxes keep their
/// own deadline.
fn warn_no_agent() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            "no sandkit-agent binary (set SANDKIT_AGENT_BIN or [docker] agent_binary, or build it with \
             `cargo xtask agent`): commands and files go through the engine's exec API (tens of \
             milliseconds each, no watching or metrics), and each sandbox keeps its own \
             deadline, which root inside it can change"
        )
    });
}

/// A container's fixed names (its `--add-host` entries).
pub(crate) fn fixed_hosts(
    host: &bollard::models::HostConfig,
) -> BTreeMap<String, std::net::IpAddr> {
    host.extra_hosts
        .iter()
        .flatten()
        .filter_map(|h| {
            let (name, ip) = h.split_once(':')?;
            Some((name.to_string(), ip.parse().ok()?))
        })
        .collect()
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

/// `/.sandkit`: the world-writable process registry, and the deadline file when the sandbox keeps
/// its own deadline, unpacked before start. Under gVisor, also `/tmp/.sandkit-keep`: gVisor mounts
/// a tmpfs of its own over an empty `/tmp`, where files written through the engine would never
/// be seen; a `/tmp` that is not empty stays on the container's file system.
fn sandkit_dir(deadline: Option<u64>, gvisor: bool, token: Option<&str>) -> Result<bytes::Bytes> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = |path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, path, std::io::empty())
    };
    dir(".sandkit/", 0o755)?;
    dir(".sandkit/procs/", 0o1777)?;
    if let Some(deadline) = deadline {
        let content = format!("{deadline}\n");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, ".sandkit/deadline", content.as_bytes())?;
    }
    if let Some(token) = token {
        // The agent's directory and token: root only (uid 0 in the header).
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        b.append_data(&mut h, ".sandkit-run/", std::io::empty())?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o400);
        h.set_size(token.len() as u64);
        b.append_data(&mut h, ".sandkit-run/token", token.as_bytes())?;
    }
    if gvisor {
        let note = b"keeps /tmp on the container's file system under gVisor (see sandkit)\n";
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o444);
        h.set_size(note.len() as u64);
        b.append_data(&mut h, "tmp/.sandkit-keep", &note[..])?;
    }
    Ok(bytes::Bytes::from(b.into_inner()?))
}

pub(crate) fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

/// Whether an ended container was left behind: marked dead, or ended over 10 s ago.
fn stuck(state: Option<&bollard::models::ContainerState>) -> bool {
    let Some(state) = state else { return false };
    if state.dead == Some(true) {
        return true;
    }
    state
        .finished_at
        .as_deref()
        .and_then(sandkit_core::raw::time::parse_rfc3339)
        .is_some_and(|t| t.elapsed().is_ok_and(|d| d > Duration::from_secs(10)))
}

/// Whether `id` has the form of a sandbox id (so it can name a container safely).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl DockerRuntime {
    /// A builder with the defaults.
    pub fn builder() -> DockerRuntimeBuilder {
        DockerRuntimeBuilder::default()
    }

    /// The engine client, for tools and tests.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn not_found(id: &str, op: &'static str) -> Error {
        err(
            ErrorKind::NotFound,
            op,
            format!("sandbox {id} doesn't exist (killed, expired, or never made by this backend)"),
        )
    }

    /// Resolves the image for a template name: `None` or `base` is the default image.
    fn image_for(&self, template: Option<&str>) -> String {
        match template {
            None | Some("") | Some("base") => self.settings.image.clone(),
            Some(t) => t.to_string(),
        }
    }

    async fn ensure_image(&self, image: &str) -> Result<TemplateInfo> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => {
                let linux_x86_64 = inspect.os.as_deref().is_none_or(|o| o == "linux")
                    && inspect
                        .architecture
                        .as_deref()
                        .is_none_or(|a| a == "amd64" || a == "x86_64");
                let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
                let l = &self.settings.labels;
                let snapshot_metadata = flag(&labels, &l.snapshot()).then(|| {
                    labels
                        .get(&l.snapshot_of("metadata"))
                        .and_then(|m| serde_json::from_str(m).ok())
                        .unwrap_or_default()
                });
                let mut info = TemplateInfo::from_labels(labels);
                info.agent_can_run = linux_x86_64;
                info.snapshot_metadata = snapshot_metadata;
                Ok(info)
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(err(
                ErrorKind::NotFound,
                "create",
                format!(
                    "image '{image}' is not on this engine and no registry is used; build the \
                         default image with `cargo xtask image`, build a template with `sandkit \
                         template build DIR`, or set [docker] image / sandbox.base_container_image"
                ),
            )
            .with_context("image", image)),
            Err(e) => Err(map(e, "create", "image")),
        }
    }

    pub(crate) async fn sandbox_from_container(
        &self,
        id: &str,
        op: &'static str,
    ) -> Result<(DockerSandbox, SandboxState, HashMap<String, String>)> {
        if !valid_id(id) {
            return Err(Self::not_found(id, op));
        }
        let name = self.settings.labels.container(id);
        let inspect = match self.docker.inspect_container(&name, None).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(Self::not_found(id, op)),
            Err(e) => return Err(map(e, op, "sandbox")),
        };
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(&self.settings.labels.id()).map(String::as_str) != Some(id) {
            return Err(Self::not_found(id, op));
        }
        let state = match inspect.state.as_ref().and_then(|s| s.status) {
            Some(ContainerStateStatusEnum::RUNNING) => SandboxState::Running,
            Some(ContainerStateStatusEnum::PAUSED) => SandboxState::Paused,
            // The engine removes an ended container itself; only one whose removal failed (dead,
            // or ended a while ago) is removed here, so the two never race.
            Some(ContainerStateStatusEnum::DEAD) => {
                self.reap(&name).await;
                return Err(Self::not_found(id, op));
            }
            Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::EXITED)
                if stuck(inspect.state.as_ref()) =>
            {
                self.reap(&name).await;
                return Err(Self::not_found(id, op));
            }
            _ => return Err(Self::not_found(id, op)),
        };
        let workdir = labels
            .get(&self.settings.labels.workdir())
            .cloned()
            .unwrap_or_else(|| self.settings.workdir.clone());
        let user = labels
            .get(&self.settings.labels.user())
            .cloned()
            .filter(|u| !u.is_empty());
        let ttl = Ttl::from_labels(&labels, &self.settings.labels);
        let token = labels
            .get(&self.settings.labels.agent())
            .cloned()
            .filter(|t| !t.is_empty());
        // A pooled sandbox: what it was claimed as is the keeper's; unclaimed, it is no one's.
        let mut labels = labels;
        let claim = if flag(&labels, &self.settings.labels.pool()) {
            let Some(mut claims) = self.claims().await else {
                return Err(err(
                    ErrorKind::Unavailable,
                    op,
                    "the deadline keeper does not answer, and it holds what this pooled \
                     sandbox is; try again",
                ));
            };
            match claims.remove(id) {
                Some(claim) => {
                    self.claim_labels(&mut labels, &claim);
                    Some(claim)
                }
                // Ready in a pool: no one's yet.
                None => return Err(Self::not_found(id, op)),
            }
        } else {
            None
        };
        let sandbox = DockerSandbox::new(
            self.clone(),
            id.to_string(),
            name,
            workdir,
            user,
            ttl,
            token.as_deref(),
        )?;
        let sandbox = match &claim {
            Some(c) => sandbox.claimed(c),
            None => sandbox,
        };
        Ok((sandbox, state, labels))
    }

    /// When sandbox `id` expires; `None` when that cannot be known now (nothing may then be
    /// done on its account). `kept`: the keeper's deadlines when already read (`Some(None)`:
    /// the read failed); `None` to ask the keeper.
    pub(crate) async fn deadline(
        &self,
        id: &str,
        ttl: &Ttl,
        kept: Option<Option<&std::collections::BTreeMap<String, u64>>>,
    ) -> Option<SystemTime> {
        let secs = match ttl {
            Ttl::Keeper { initial } => {
                let held = match (kept, &self.settings.keeper) {
                    (Some(Some(map)), _) => map.get(id).copied().map_or(Held::Unset, Held::Set),
                    (Some(None), _) => Held::Unknown,
                    (None, Some(keeper)) => keeper.deadline(id).await,
                    (None, None) => Held::Unknown,
                };
                match held {
                    Held::Set(secs) => Some(secs),
                    Held::Unset => *initial,
                    Held::Unknown => None,
                }
            }
            Ttl::File => {
                let files = crate::files::DockerFiles::new(
                    self.docker.clone(),
                    self.settings.labels.container(id),
                    "/".into(),
                );
                crate::sandbox::own_deadline(&files).await
            }
        };
        secs.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    /// Kills a sandbox found running past its deadline (the keeper was not running, or the
    /// sandbox keeps its own deadline and changed it).
    /// Ends a sandbox found running past its deadline as it asked: paused (auto-pause; true)
    /// or killed.
    pub(crate) async fn reap_expired(&self, info: &SandboxInfo) -> bool {
        let id = info.id.as_str();
        if info.details.get("on_timeout").map(String::as_str) == Some("pause") {
            debug!(sandbox_id = id, "sandbox past its deadline; pausing it");
            match self
                .docker
                .pause_container(&self.settings.labels.container(id))
                .await
            {
                Ok(()) => return true,
                Err(e) => debug!(sandbox_id = id, error = %e, "could not pause an expired sandbox"),
            }
            return false;
        }
        debug!(sandbox_id = id, "sandbox past its deadline; killing it");
        if let Err(e) = Runtime::kill(self, id).await {
            debug!(sandbox_id = id, error = %e, "could not kill an expired sandbox");
        }
        false
    }

    /// Removes a container of ours that ended but was not removed (the engine's auto-remove
    /// can fail when it races another operation on the container's files).
    pub(crate) async fn reap(&self, name: &str) {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => debug!(container = name, "removed a container that had ended"),
            Err(e) => debug!(container = name, error = %e, "could not remove an ended container"),
        }
    }

    pub(crate) fn info_from_labels(
        &self,
        id: &str,
        labels: &HashMap<String, String>,
        state: SandboxState,
    ) -> SandboxInfo {
        let l = &self.settings.labels;
        let mut info = SandboxInfo::new(
            id,
            labels.get(&l.template()).cloned().unwrap_or_default(),
            BACKEND,
        );
        let meta = l.meta_prefix();
        let kept_empty: Vec<String> = labels
            .get(&l.meta_empty())
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        info.metadata = labels
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&meta).map(|k| (k.to_string(), v.clone())))
            .filter(|(k, v)| !v.is_empty() || kept_empty.contains(k))
            .collect();
        info.state = state;
        if let Some(created) = labels.get(&l.created()).and_then(|c| parse_created(c)) {
            info.started_at = created;
        }
        let path = if flag(labels, &l.agent()) {
            "inside"
        } else {
            "exec"
        };
        info.details.insert("agent".into(), path.into());
        if labels.get(&l.on_deadline()).map(String::as_str) == Some("pause") {
            info.details.insert("on_timeout".into(), "pause".into());
        }
        info
    }
}

impl DockerRuntime {
    /// Makes a container for `spec`; `pooled`: for the warm pool (see [`crate::pool`]).
    async fn make(&self, spec: SandboxSpec, pooled: bool) -> Result<DockerSandbox> {
        self.make_from(spec, None, pooled).await
    }

    /// Makes a container for `spec` from `image` (a fork's capture) or, without one, from
    /// the image of the spec's template.
    pub(crate) async fn make_from(
        &self,
        spec: SandboxSpec,
        image: Option<String>,
        pooled: bool,
    ) -> Result<DockerSandbox> {
        let id = new_id();
        debug!(sandbox_id = %id, "making a sandbox");
        async move {
            let s = &self.settings;
            let mut spec = spec;
            for (name, ip) in &s.hosts {
                spec.hosts.entry(name.clone()).or_insert(*ip);
            }
            let image = image.unwrap_or_else(|| self.image_for(spec.template.as_deref()));
            let template = self.ensure_image(&image).await?;
            if let Some(taken_with) = &template.snapshot_metadata {
                if spec
                    .snapshot_guard
                    .iter()
                    .any(|(k, v)| taken_with.get(k) != Some(v))
                {
                    return Err(err(
                        ErrorKind::NotFound,
                        "create",
                        format!("image '{image}' is not on this engine (or not yours to use)"),
                    )
                    .with_context("image", &image));
                }
            }
            let ttl = spec.timeout.unwrap_or(s.ttl);
            let now = SystemTime::now();
            let deadline = epoch(now + ttl).max(epoch(now) + 1);
            let workdir = spec.cwd.clone().unwrap_or_else(|| s.workdir.clone());

            let l = &s.labels;
            let mut labels: HashMap<String, String> = HashMap::new();
            labels.insert(l.id(), id.clone());
            labels.insert(
                l.template(),
                spec.template.clone().unwrap_or_else(|| image.clone()),
            );
            labels.insert(l.created(), created_label(now));
            labels.insert(l.workdir(), workdir.clone());
            labels.insert(l.user(), spec.user.clone().unwrap_or_default());
            let keeper = s.keeper.clone();
            if keeper.is_none() && s.agent_wanted {
                warn_no_agent();
            }
            labels.insert(
                l.ttl(),
                if keeper.is_some() { "keeper" } else { "file" }.to_string(),
            );
            labels.insert(l.deadline(), deadline.to_string());
            if pooled {
                labels.insert(l.pool(), "1".into());
            }
            if spec.auto_pause {
                labels.insert(l.on_deadline(), "pause".into());
            }
            // The fast path where the agent can run here.
            let inside = match &s.inside {
                Some(i) if template.agent_can_run => {
                    i.ensure().await?;
                    Some(i.clone())
                }
                _ => None,
            };
            let token = inside.as_ref().map(|_| inside::new_token());
            if let Some(t) = &token {
                labels.insert(l.agent(), t.clone());
            }
            for (k, v) in &spec.metadata {
                labels.insert(format!("{}{k}", l.meta_prefix()), v.clone());
            }
            l.keep_empty(&mut labels, &spec.metadata);
            // Labels travel in every listing of the engine (the keeper's too): keep them small.
            let label_bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
            if label_bytes > MAX_LABEL_BYTES {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "create",
                    format!(
                        "the sandbox's metadata takes {label_bytes} bytes; at most {MAX_LABEL_BYTES} \
                         fit (keep large values in files inside the sandbox)"
                    ),
                ));
            }

            let policy = spec
                .network_policy
                .clone()
                .or_else(|| s.network_policy.clone());
            if let Some(p) = &spec.network_policy {
                p.validate()?;
            }

            let mut env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
            // Request rules: the sandbox trusts the guard's authority for their domains.
            let guard_ca = match (&policy, &s.netguard) {
                (Some(p), Some(guard)) if !p.rules.is_empty() => {
                    let ca = guard.certificate().await?;
                    env.extend(crate::trust::env(&|k| {
                        spec.env.contains_key(k) || s.env.contains_key(k)
                    }));
                    Some(ca)
                }
                _ => None,
            };

            let network = spec.network.clone().unwrap_or_else(|| s.network.clone());
            if network.as_str() == ISOLATED_NETWORK {
                self.ensure_isolated_network().await?;
            }
            let publish = matches!(network, NetworkMode::Bridge | NetworkMode::Named(_));
            let mut exposed = HashMap::new();
            let mut bindings = HashMap::new();
            for port in &spec.ports {
                exposed.insert(format!("{port}/tcp"), HashMap::new());
                if publish {
                    bindings.insert(
                        format!("{port}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some(s.binding_address.clone()),
                            host_port: Some(String::new()),
                        }]),
                    );
                }
            }

            let mut mounts: Vec<DockerMount> = s
                .mounts
                .iter()
                .chain(spec.mounts.iter())
                .map(|m| DockerMount {
                    target: Some(m.target.clone()),
                    source: Some(match &m.source {
                        MountSource::HostPath(p) | MountSource::Volume(p) => p.clone(),
                    }),
                    typ: Some(match m.source {
                        MountSource::HostPath(_) => MountTypeEnum::BIND,
                        MountSource::Volume(_) => MountTypeEnum::VOLUME,
                    }),
                    read_only: Some(m.read_only),
                    ..Default::default()
                })
                .collect();
            if let Some(i) = &inside {
                mounts.push(i.mount());
            }

            let r = &spec.resources;
            let d = &s.resources;
            let memory = r
                .memory_mb
                .or(template.memory_mb.map(u64::from))
                .or(d.memory_mb)
                .map(|mb| (mb * 1024 * 1024) as i64);
            let gpus = r.gpus.clone().or_else(|| d.gpus.clone());
            let host_config = HostConfig {
                auto_remove: Some(true),
                init: Some(true),
                privileged: Some(false),
                security_opt: s
                    .no_new_privileges
                    .then(|| vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(s.capabilities.clone()),
                cgroupns_mode: Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE),
                runtime: s.oci_runtime.clone(),
                network_mode: Some(network.as_str().to_string()),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                mounts: (!mounts.is_empty()).then_some(mounts),
                memory,
                memory_swap: memory,
                nano_cpus: r
                    .cpus
                    .or(template.cpu_count.map(f64::from))
                    .or(d.cpus)
                    .map(|c| (c * 1e9) as i64),
                pids_limit: r.pids.or(d.pids).map(|p| p as i64),
                extra_hosts: (!spec.hosts.is_empty()).then(|| {
                    spec.hosts
                        .iter()
                        .map(|(name, ip)| format!("{name}:{ip}"))
                        .collect()
                }),
                ulimits: s.max_file_bytes.map(|b| {
                    vec![bollard::models::ResourcesUlimits {
                        name: Some("fsize".into()),
                        soft: Some(b as i64),
                        hard: Some(b as i64),
                    }]
                }),
                device_requests: gpus.map(|ids| {
                    vec![DeviceRequest {
                        driver: Some(String::new()),
                        count: ids.is_empty().then_some(-1),
                        device_ids: (!ids.is_empty()).then_some(ids),
                        capabilities: Some(vec![vec!["gpu".into()]]),
                        options: None,
                    }]
                }),
                ..Default::default()
            };
            let config = Config {
                image: Some(image.clone()),
                entrypoint: Some(match &inside {
                    Some(_) => inside::entrypoint(
                        spec.user.as_deref().unwrap_or("root"),
                        &workdir,
                    ),
                    None => vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        if keeper.is_some() {
                            IDLE
                        } else {
                            DEADLINE_FILE_INIT
                        }
                        .into(),
                        "sandkit-init".into(),
                    ],
                }),
                cmd: Some(vec![]),
                env: Some(env),
                labels: Some(labels.clone()),
                working_dir: Some(workdir.clone()),
                exposed_ports: (!exposed.is_empty()).then_some(exposed),
                host_config: Some(host_config),
                ..Default::default()
            };
            let name = l.container(&id);
            let made = self
                .docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: name.clone(),
                        platform: None,
                    }),
                    config,
                )
                .await;
            if let Err(e) = made {
                // The engine may have made it before its answer was lost: nothing is left
                // behind for a retried create to leak.
                self.remove_half_made(&name).await;
                return Err(map(e, "create", "image").with_context("image", &image));
            }
            let started = async {
                self.docker
                    .upload_to_container(
                        &name,
                        Some(bollard::container::UploadToContainerOptions {
                            path: "/".to_string(),
                            ..Default::default()
                        }),
                        sandkit_dir(
                            keeper.is_none().then_some(deadline),
                            s.oci_runtime
                                .as_deref()
                                .is_some_and(|r| r.contains("runsc")),
                            token.as_deref(),
                        )?,
                    )
                    .await
                    .map_err(|e| map(e, "create", "sandbox"))?;
                if let Some(ca) = &guard_ca {
                    crate::trust::install(&self.docker, &name, ca).await?;
                }
                self.docker
                    .start_container::<String>(&name, None)
                    .await
                    .map_err(|e| map(e, "create", "sandbox"))?;
                // The container exists before the keeper is looked for, so a keeper about to
                // leave for lack of sandboxes sees it; a sandbox is never left without one.
                if let Some(keeper) = &keeper {
                    keeper.ensure().await?;
                }
                // Held to its network policy before anyone can run code in it.
                self.hold(&id, network.as_str(), policy.as_ref(), &spec.hosts)
                    .await?;
                for net in &s.additional_networks {
                    self.docker
                        .connect_network(
                            net,
                            bollard::network::ConnectNetworkOptions {
                                container: name.clone(),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(|e| map(e, "create", "network").with_context("network", net))?;
                }
                let sandbox = DockerSandbox::new(
                    self.clone(),
                    id.clone(),
                    name.clone(),
                    workdir,
                    spec.user.clone(),
                    Ttl::from_labels(&labels, l),
                    token.as_deref(),
                )?;
                sandbox.wait_ready(&template).await?;
                Ok::<_, Error>(sandbox)
            }
            .await;
            match started {
                Ok(sandbox) => {
                    debug!(image, pooled, "sandbox created");
                    Ok(sandbox)
                }
                Err(e) => {
                    self.remove_half_made(&name).await;
                    Err(e)
                }
            }
        }
        .await
    }

    /// Registers sandbox `id`, on `network`, with the network guard: `policy`, or the default
    /// one (host and link-local addresses refused). A policy asked for is never dropped: where
    /// it cannot be held, this fails.
    pub(crate) async fn hold(
        &self,
        id: &str,
        network: &str,
        policy: Option<&sandkit_core::NetworkPolicy>,
        hosts: &BTreeMap<String, std::net::IpAddr>,
    ) -> Result<()> {
        let explicit = policy.is_some();
        let policy = policy.cloned().unwrap_or_default();
        let refuse = |kind, why: String| Err(err(kind, "network policy", why));
        match network {
            "none" => return Ok(()),
            "host" if explicit => {
                return refuse(
                    ErrorKind::InvalidInput,
                    "a sandbox on the host's network (network = \"host\") cannot be held to a \
                     network policy; use a network of its own"
                        .into(),
                )
            }
            "host" => return Ok(()),
            _ => {}
        }
        if policy.is_open() && policy.allow_host && policy.allow_link_local {
            return Ok(());
        }
        let Some(guard) = &self.settings.netguard else {
            if explicit {
                return refuse(
                    ErrorKind::Unsupported,
                    "network policies need the network guard: an sandkit-agent binary \
                     (SANDKIT_AGENT_BIN) and [docker] network_guard = true"
                        .into(),
                );
            }
            warn_no_guard();
            return Ok(());
        };
        let container = self.settings.labels.container(id);
        match guard.place(&container, network).await? {
            Some(place) => guard.set(id, &place, &policy, hosts).await,
            None if explicit => refuse(
                ErrorKind::Unsupported,
                format!(
                    "network {network:?} is not a bridge network; network policies are held on \
                     bridge networks only"
                ),
            ),
            None => Ok(()),
        }
    }

    /// Replaces the network policy of running sandbox `id`.
    pub(crate) async fn set_network_policy(
        &self,
        id: &str,
        policy: &sandkit_core::NetworkPolicy,
    ) -> Result<()> {
        policy.validate()?;
        let name = self.settings.labels.container(id);
        let c = match self.docker.inspect_container(&name, None).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(Self::not_found(id, "set_network_policy")),
            Err(e) => return Err(map(e, "set_network_policy", "sandbox")),
        };
        let host = c.host_config.unwrap_or_default();
        let network = host.network_mode.clone().unwrap_or_else(|| "bridge".into());
        let network = if network == "default" {
            "bridge".to_string()
        } else {
            network
        };
        let hosts = fixed_hosts(&host);
        self.hold(id, &network, Some(policy), &hosts).await?;
        // Rules added to a running sandbox: its system bundle trusts the guard from now on
        // (variables set at create, such as REQUESTS_CA_BUNDLE, cannot change in a running
        // process; a sandbox made with rules has them).
        if let (false, Some(guard)) = (policy.rules.is_empty(), &self.settings.netguard) {
            let ca = guard.certificate().await?;
            crate::trust::install(&self.docker, &name, &ca).await?;
        }
        Ok(())
    }

    /// Kills sandbox `id` (its container known to be ours, in `state`) and waits for the
    /// engine to remove it.
    pub(crate) async fn remove_sandbox(&self, id: &str, state: SandboxState) -> Result<()> {
        let removed = self.remove_container_of(id, state).await;
        if let Some(guard) = &self.settings.netguard {
            guard.clear(id).await;
        }
        removed
    }

    async fn remove_container_of(&self, id: &str, state: SandboxState) -> Result<()> {
        let name = self.settings.labels.container(id);
        if state == SandboxState::Paused {
            let _ = self.docker.unpause_container(&name).await;
        }
        // Kill the main process and let the engine's auto-remove take the container away; a
        // forced remove racing auto-remove can leave a dead container behind on some storage
        // drivers.
        match self
            .docker
            .kill_container(
                &name,
                Some(bollard::container::KillContainerOptions { signal: "SIGKILL" }),
            )
            .await
        {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(Self::not_found(id, "kill")),
            // Not running any more: it is on its way out already.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            // The engine could not deliver the kill (seen under load: "did not receive an exit
            // event"): remove the container by force instead; it is not being auto-removed.
            Err(e) => {
                debug!(error = %e, container = %name, "kill failed; removing by force");
                let options = RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                };
                return match self.docker.remove_container(&name, Some(options)).await {
                    Ok(()) => Ok(()),
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404 | 409,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(map(e, "kill", "sandbox")),
                };
            }
        }
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) = self.docker.inspect_container(&name, None).await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Auto-remove did not happen: remove it ourselves, nothing races us now.
        match self
            .docker
            .remove_container(
                &name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // Gone, or "removal already in progress": either way the sandbox is ended.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(map(e, "kill", "sandbox")),
        }
    }

    /// Removes a container a failed create may have left, with its anonymous volumes; best
    /// effort (the failure being reported is the create's).
    async fn remove_half_made(&self, name: &str) {
        let _ = self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await;
    }

    /// Makes [`ISOLATED_NETWORK`] if it is missing: a bridge network with traffic between its
    /// containers off (another process may make it at the same moment: that is fine).
    async fn ensure_isolated_network(&self) -> Result<()> {
        if self
            .docker
            .inspect_network::<String>(ISOLATED_NETWORK, None)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let options = bollard::network::CreateNetworkOptions {
            name: ISOLATED_NETWORK,
            check_duplicate: true,
            driver: "bridge",
            options: HashMap::from([("com.docker.network.bridge.enable_icc", "false")]),
            labels: HashMap::from([("sandkit.network", "isolated")]),
            ..Default::default()
        };
        match self.docker.create_network(options).await {
            Ok(_) => tracing::info!(
                network = ISOLATED_NETWORK,
                "made the isolated sandbox network"
            ),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => {
                return Err(map(e, "create", "network").with_context("network", ISOLATED_NETWORK))
            }
        }
        // The engine's duplicate check races: processes that made it at the same moment may
        // have made two, and a name that matches two networks cannot be used. Every process
        // keeps the same one (the lowest id) and removes the others.
        let same_name = self
            .docker
            .list_networks(Some(bollard::network::ListNetworksOptions {
                filters: HashMap::from([("name", vec![ISOLATED_NETWORK])]),
            }))
            .await
            .map_err(|e| map(e, "create", "network"))?;
        let mut ids: Vec<String> = same_name
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(ISOLATED_NETWORK))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        for extra in ids.iter().skip(1) {
            debug!(network = %extra, "removing a duplicate isolated network");
            let _ = self.docker.remove_network(extra).await;
        }
        Ok(())
    }

    /// The containers (any state) carrying every one of `labels` (`key` or `key=value`).
    async fn containers_labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let filters = HashMap::from([("label".to_string(), labels)]);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(|e| map(e, "list", "sandbox"))
    }

    /// The claims of pooled sandboxes (see [`crate::pool`]), decoded.
    pub(crate) async fn claims(&self) -> Option<HashMap<String, crate::pool::Claim>> {
        let keeper = self.settings.keeper.as_ref()?;
        Some(
            keeper
                .claims()
                .await?
                .into_iter()
                .filter_map(|(id, hex)| Some((id, crate::pool::Claim::from_hex(&hex)?)))
                .collect(),
        )
    }

    /// Puts a claim's metadata where a sandbox made for its spec keeps it: in (these copies
    /// of) its labels.
    pub(crate) fn claim_labels(
        &self,
        labels: &mut HashMap<String, String>,
        claim: &crate::pool::Claim,
    ) {
        let l = &self.settings.labels;
        for (k, v) in &claim.metadata {
            labels.insert(format!("{}{k}", l.meta_prefix()), v.clone());
        }
        l.keep_empty(labels, &claim.metadata);
        if let Some(cwd) = &claim.cwd {
            labels.insert(l.workdir(), cwd.clone());
        }
        if let Some(user) = &claim.user {
            labels.insert(l.user(), user.clone());
        }
    }

    /// A sandbox for the warm pool, its agent connection open.
    pub(crate) async fn make_pooled(&self) -> Result<DockerSandbox> {
        let sandbox = self
            .make(SandboxSpec::new().timeout(crate::pool::POOL_TTL), true)
            .await?;
        if let Err(e) = sandbox.warm().await {
            let _ = self
                .remove_sandbox(sandbox.id(), SandboxState::Running)
                .await;
            return Err(e);
        }
        Ok(sandbox)
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::all();
        // Only the agent inside a sandbox watches and measures it.
        c.watch = self.settings.inside.is_some();
        c.metrics = self.settings.inside.is_some();
        c.network_policy = self.settings.netguard.is_some();
        c.request_rules = self.settings.netguard.is_some();
        c.egress_proxy = self.settings.netguard.is_some();
        c
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>> {
        // This backend lacks a capability only without its network guard, and `make` refuses
        // a policy then with the reason (used with the layers, the capability layer refuses
        // it first).
        if let Some(sandbox) = self.take_pooled(&spec).await {
            debug!(sandbox_id = %sandbox.id(), "sandbox taken from the pool");
            return Ok(Box::new(sandbox));
        }
        Ok(Box::new(self.make(spec, false).await?))
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>> {
        let (sandbox, state, labels) = self.sandbox_from_container(id, "connect").await?;
        match state {
            SandboxState::Paused => {
                // The new deadline first: a keeper must not find it running past the old one.
                if sandbox.ttl_kept_outside() {
                    sandbox.write_deadline(self.settings.ttl, "connect").await?;
                }
                self.docker
                    .unpause_container(&self.settings.labels.container(id))
                    .await
                    .map_err(|e| map(e, "connect", "sandbox"))?;
                if !sandbox.ttl_kept_outside() {
                    sandbox.write_deadline(self.settings.ttl, "connect").await?;
                }
            }
            _ => {
                if sandbox.expired().await {
                    if labels
                        .get(&self.settings.labels.on_deadline())
                        .map(String::as_str)
                        == Some("pause")
                    {
                        // Due to pause: connect would resume it, so it just lives on.
                        sandbox.write_deadline(self.settings.ttl, "connect").await?;
                    } else {
                        let info = self.info_from_labels(id, &labels, state);
                        self.reap_expired(&info).await;
                        return Err(Self::not_found(id, "connect"));
                    }
                }
            }
        }
        Ok(Box::new(sandbox))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        let l = &self.settings.labels;
        let mut label_filters = vec![l.id()];
        for (k, v) in &filter.metadata {
            label_filters.push(format!("{}{k}={v}", l.meta_prefix()));
        }
        let mut containers = self.containers_labelled(label_filters).await?;
        // Claimed pooled sandboxes keep their metadata with the keeper, not in labels: with a
        // metadata filter they are listed apart and filtered here.
        if !filter.metadata.is_empty() && self.settings.keeper.is_some() {
            containers.extend(
                self.containers_labelled(vec![l.id(), format!("{}=1", l.pool())])
                    .await?,
            );
        }
        let claims = if containers
            .iter()
            .any(|c| c.labels.as_ref().is_some_and(|l2| flag(l2, &l.pool())))
        {
            self.claims().await.ok_or_else(|| {
                err(
                    ErrorKind::Unavailable,
                    "list",
                    "the deadline keeper does not answer, and it holds what pooled sandboxes \
                     are; try again",
                )
            })?
        } else {
            HashMap::new()
        };
        let mut out = Vec::new();
        for c in containers {
            let mut labels = c.labels.unwrap_or_default();
            let Some(id) = labels.get(&l.id()).cloned() else {
                continue;
            };
            if flag(&labels, &l.pool()) {
                match claims.get(&id) {
                    Some(claim) => self.claim_labels(&mut labels, claim),
                    // Ready in a pool: no one's yet.
                    None => continue,
                }
            }
            let state = match c.state.as_deref() {
                Some("running") => SandboxState::Running,
                Some("paused") => SandboxState::Paused,
                Some("dead") | Some("exited") | Some("removing") => {
                    // Let a removal under way finish; clean up one that failed.
                    if let Some(id) = labels.get(&l.id()) {
                        let _ = self.sandbox_from_container(id, "list").await;
                    }
                    continue;
                }
                _ => continue,
            };
            let info = self.info_from_labels(&id, &labels, state);
            if filter.matches(&info) {
                out.push((info, Ttl::from_labels(&labels, l)));
            }
        }
        // Deadlines: the keeper's, read at once, else each sandbox's own.
        let any_kept = out.iter().any(|(_, ttl)| matches!(ttl, Ttl::Keeper { .. }));
        let kept = match &self.settings.keeper {
            Some(k) if any_kept => k.deadlines().await,
            _ => None,
        };
        let deadlines = futures_util::future::join_all(
            out.iter()
                .map(|(info, ttl)| self.deadline(&info.id, ttl, Some(kept.as_ref()))),
        )
        .await;
        let now = SystemTime::now();
        let mut live = Vec::with_capacity(out.len());
        for ((mut info, _), deadline) in out.into_iter().zip(deadlines) {
            info.expires_at = deadline;
            // Past its deadline and still running (no keeper ran): end it now, or pause it.
            if info.state == SandboxState::Running && deadline.is_some_and(|d| d <= now) {
                if self.reap_expired(&info).await {
                    info.state = SandboxState::Paused;
                    live.push(info);
                }
                continue;
            }
            live.push(info);
        }
        Ok(live)
    }

    async fn info(&self, id: &str) -> Result<SandboxInfo> {
        use sandkit_core::Sandbox as _;
        let (sandbox, _, _) = self.sandbox_from_container(id, "info").await?;
        sandbox.info().await
    }

    async fn shutdown(&self) {
        self.drain_pool().await;
    }

    async fn gauges(&self) -> Vec<sandkit_core::Gauge> {
        let mut gauges = self.pool_gauges();
        if let Some(guard) = &self.settings.netguard {
            gauges.extend(guard.gauges().await);
        }
        gauges
    }

    async fn kill(&self, id: &str) -> Result<()> {
        if !valid_id(id) {
            return Err(Self::not_found(id, "kill"));
        }
        // Only containers carrying our id label are ever removed.
        let (_, state, labels) = self.sandbox_from_container(id, "kill").await?;
        self.remove_sandbox(id, state).await?;
        // Made from a snapshot: its image may be one no one names or uses any more.
        if flag(&labels, &self.settings.labels.snapshot()) {
            self.prune_snapshots().await;
        }
        Ok(())
    }

    async fn snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<sandkit_core::Snapshot>> {
        self.list_snapshots(sandbox_id).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.remove_snapshot(id).await
    }

    async fn create_volume(
        &self,
        name: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<sandkit_core::Volume> {
        self.make_volume(name, metadata).await
    }

    async fn volumes(&self) -> Result<Vec<sandkit_core::Volume>> {
        self.list_volumes().await
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        self.drop_volume(name).await
    }
}

#[cfg(test)]
mod created_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn created_keeps_sub_second_precision() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(super::created_label(t), "1700000000.123456789");
        assert_eq!(super::parse_created("1700000000.123456789"), Some(t));
        assert_eq!(
            super::parse_created("1700000000"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(super::parse_created("x"), None);
    }
}
