//! What a sandbox is asked to be ([`SandboxSpec`]) and what it reports ([`SandboxInfo`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, NetworkPolicy, Result};

/// The default time to live of a sandbox, as on E2B: five minutes.
pub const DEFAULT_SANDBOX_TIMEOUT: Duration = Duration::from_secs(300);

/// How to make a sandbox: passed to [`Runtime::create`](crate::Runtime::create).
///
/// Every field is optional; the backend's configuration fills in what is left out.
///
/// ```
/// use std::time::Duration;
/// use sandkit_core::SandboxSpec;
///
/// let spec = SandboxSpec::new()
///     .template("sandkit-base:bookworm")
///     .env("LANG", "C.UTF-8")
///     .metadata("session", "s-1")
///     .timeout(Duration::from_secs(600));
/// assert_eq!(spec.metadata["session"], "s-1");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxSpec {
    /// Template or image name. `None` means the backend's default.
    pub template: Option<String>,
    /// Environment variables every command in the sandbox sees.
    pub env: BTreeMap<String, String>,
    /// Free-form labels, returned by `info`/`list` and usable as a [`ListFilter`].
    pub metadata: BTreeMap<String, String>,
    /// Time to live. `None` means [`DEFAULT_SANDBOX_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Working directory for commands that do not name one.
    pub cwd: Option<String>,
    /// User commands run as when they do not name one.
    pub user: Option<String>,
    /// CPU, memory and process limits.
    pub resources: Resources,
    /// Network access.
    pub network: Option<NetworkMode>,
    /// What the sandbox may reach: see [`NetworkPolicy`]. `None` is the default policy (no
    /// lists; host and link-local addresses refused where the backend can refuse them).
    /// Needs [`Capabilities::network_policy`] when set.
    pub network_policy: Option<NetworkPolicy>,
    /// Names the sandbox resolves to fixed addresses (Docker: `--add-host`); the network
    /// guard resolves an allowed domain the same way.
    pub hosts: BTreeMap<String, std::net::IpAddr>,
    /// Ports inside the sandbox to make reachable through [`Sandbox::get_host`](crate::Sandbox::get_host).
    pub ports: Vec<u16>,
    /// Host directories or named volumes to mount.
    pub mounts: Vec<Mount>,
    /// At the end of its time to live, pause the sandbox instead of killing it;
    /// [`Runtime::connect`](crate::Runtime::connect) resumes it with its files and processes.
    /// Needs [`Capabilities::pause`].
    pub auto_pause: bool,
    /// When the template is a snapshot, the metadata it must have been taken with: one that
    /// lacks any of these pairs is treated as missing
    /// ([`ErrorKind::NotFound`](crate::ErrorKind::NotFound)), however it is named. A server
    /// making sandboxes for several tenants passes its tenant's mark. Backends whose snapshots
    /// belong to their own account (E2B) leave the check to it.
    pub snapshot_guard: BTreeMap<String, String>,
}

impl SandboxSpec {
    /// An empty spec: every choice left to the backend.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the template or image.
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    /// Adds a metadata label.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Sets the time to live.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets the default working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }
    /// Sets the default user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    /// Asks for a port inside the sandbox to be reachable from outside.
    pub fn port(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }
    /// Adds a mount.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self
    }
    /// Sets the network mode.
    pub fn network(mut self, network: NetworkMode) -> Self {
        self.network = Some(network);
        self
    }
    /// Resolves `name` to `ip` in the sandbox.
    pub fn add_host(mut self, name: impl Into<String>, ip: std::net::IpAddr) -> Self {
        self.hosts.insert(name.into(), ip);
        self
    }
    /// Sets the network policy.
    pub fn network_policy(mut self, policy: NetworkPolicy) -> Self {
        self.network_policy = Some(policy);
        self
    }
    /// Sets the resource limits.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }
    /// Pauses the sandbox at the end of its time to live instead of killing it.
    pub fn auto_pause(mut self, on: bool) -> Self {
        self.auto_pause = on;
        self
    }
    /// Adds a pair a snapshot named as the template must have been taken with (see
    /// [`SandboxSpec::snapshot_guard`]).
    pub fn snapshot_guard(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.snapshot_guard.insert(key.into(), value.into());
        self
    }
}

/// CPU, memory and process-count limits. `None` leaves the backend's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Resources {
    /// CPUs (fractions allowed).
    pub cpus: Option<f64>,
    /// Memory in MiB.
    pub memory_mb: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
    /// Ask for GPUs; `Some(ids)` with an empty list means all of them.
    pub gpus: Option<Vec<String>>,
}

impl Resources {
    /// No limits beyond the backend's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the CPU limit.
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.cpus = Some(cpus);
        self
    }
    /// Sets the memory limit in MiB.
    pub fn memory_mb(mut self, mb: u64) -> Self {
        self.memory_mb = Some(mb);
        self
    }
    /// Sets the process-count limit.
    pub fn pids(mut self, pids: u64) -> Self {
        self.pids = Some(pids);
        self
    }
}

/// Network access of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NetworkMode {
    /// The backend's default network with outbound access (Docker's `bridge`, shared with
    /// other containers: sandboxes on it can reach each other).
    Bridge,
    /// No network at all.
    None,
    /// The host's network (Docker only).
    Host,
    /// A named network of the backend.
    Named(String),
}

impl NetworkMode {
    /// Parses `bridge` (or the empty string), `none`, `host`, or anything else as a named
    /// network.
    pub fn parse(s: &str) -> Self {
        match s {
            "bridge" | "" => NetworkMode::Bridge,
            "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            other => NetworkMode::Named(other.to_string()),
        }
    }

    /// The name as the backend spells it.
    pub fn as_str(&self) -> &str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Named(n) => n,
        }
    }
}

/// Where a mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountSource {
    /// A directory or file on the host (absolute path).
    HostPath(String),
    /// A named volume of the backend.
    Volume(String),
}

/// A host directory or named volume mounted into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// What is mounted.
    pub source: MountSource,
    /// Absolute path inside the sandbox.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Mount {
    /// Parses one OpenHands `SANDBOX_VOLUMES` entry: `host:container[:ro|rw]`.
    ///
    /// A source that is not an absolute path (`cache:/c`) or is written `volume:name`
    /// names a volume.
    ///
    /// ```
    /// use sandkit_core::{Mount, MountSource};
    /// let m = Mount::parse("/data:/workspace:ro").unwrap();
    /// assert_eq!(m.source, MountSource::HostPath("/data".into()));
    /// assert!(m.read_only);
    /// let v = Mount::parse("volume:cache:/cache").unwrap();
    /// assert_eq!(v.source, MountSource::Volume("cache".into()));
    /// ```
    pub fn parse(entry: &str) -> Result<Mount> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "bad volume entry '{entry}': {why}; expected host:container[:ro|rw] \
                     (host an absolute path, or a volume name)"
                ),
            )
        };
        let entry = entry.trim();
        let rest = entry.strip_prefix("volume:");
        let parts: Vec<&str> = rest.unwrap_or(entry).split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [s, t] => (*s, *t, None),
            [s, t, m] => (*s, *t, Some(*m)),
            _ => return Err(bad("wrong number of ':'-separated parts")),
        };
        if source.is_empty() {
            return Err(bad("the source is empty"));
        }
        if !target.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) if m.contains("overlay") => {
                return Err(bad("overlay mounts are not supported"));
            }
            Some(_) => return Err(bad("the mode must be 'ro' or 'rw'")),
        };
        let source = if rest.is_none() && source.starts_with('/') {
            MountSource::HostPath(source.to_string())
        } else if source.contains('/') {
            return Err(bad("a volume name cannot contain '/'"));
        } else {
            MountSource::Volume(source.to_string())
        };
        Ok(Mount {
            source,
            target: target.to_string(),
            read_only,
        })
    }

    /// Parses a comma-separated `SANDBOX_VOLUMES` list; empty entries are skipped.
    pub fn parse_list(list: &str) -> Result<Vec<Mount>> {
        list.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(Mount::parse)
            .collect()
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            MountSource::HostPath(p) => write!(f, "{p}")?,
            MountSource::Volume(v) => write!(f, "volume:{v}")?,
        }
        write!(
            f,
            ":{}:{}",
            self.target,
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

/// The state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SandboxState {
    /// Running and accepting commands.
    Running,
    /// Paused; `connect` resumes it.
    Paused,
    /// Stopped or expired, not yet removed.
    Stopped,
}

impl SandboxState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopped => "stopped",
        }
    }
}

/// What a sandbox reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxInfo {
    /// The id, usable with [`Runtime::connect`](crate::Runtime::connect).
    pub id: String,
    /// Template or image it was made from.
    pub template: String,
    /// The metadata it was created with.
    pub metadata: BTreeMap<String, String>,
    /// Current state.
    pub state: SandboxState,
    /// When it started.
    pub started_at: SystemTime,
    /// When it will be removed unless its time to live is changed.
    pub expires_at: Option<SystemTime>,
    /// The backend it lives on.
    pub backend: String,
    /// Facts of the backend beyond these fields, for people and tools (Docker: `agent` is
    /// `inside` when commands and files go to the agent in the sandbox, `exec` when they go
    /// through the engine's exec API).
    pub details: BTreeMap<String, String>,
}

impl SandboxInfo {
    /// A new info record; for backends.
    pub fn new(id: impl Into<String>, template: impl Into<String>, backend: &str) -> Self {
        SandboxInfo {
            id: id.into(),
            template: template.into(),
            metadata: BTreeMap::new(),
            state: SandboxState::Running,
            started_at: SystemTime::now(),
            expires_at: None,
            backend: backend.to_string(),
            details: BTreeMap::new(),
        }
    }
}

/// A sandbox's files saved to make new sandboxes from: what
/// [`Sandbox::snapshot`](crate::Sandbox::snapshot) returns and
/// [`Runtime::snapshots`](crate::Runtime::snapshots) lists.
///
/// A sandbox made with [`SandboxSpec::template`] set to [`Snapshot::id`] starts with the
/// files the sandbox had. Whether running processes and memory are kept is the backend's:
/// E2B keeps them; Docker keeps the files only (its processes start afresh).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// What to pass as [`SandboxSpec::template`], and to
    /// [`Runtime::delete_snapshot`](crate::Runtime::delete_snapshot).
    pub id: String,
    /// The names it can be found by, with their tag (`name:default`).
    pub names: Vec<String>,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// When it was taken.
    pub created_at: SystemTime,
    /// The sandbox's metadata when it was taken (empty where the backend does not say).
    pub metadata: BTreeMap<String, String>,
    /// Bytes it holds on disk beyond what it was made from, where the backend says (Docker:
    /// its image's size less the size of the image its sandbox ran).
    pub size: Option<u64>,
}

impl Snapshot {
    /// A new record; for backends.
    pub fn new(id: impl Into<String>, sandbox_id: impl Into<String>) -> Self {
        Snapshot {
            id: id.into(),
            names: Vec::new(),
            sandbox_id: sandbox_id.into(),
            created_at: SystemTime::now(),
            metadata: BTreeMap::new(),
            size: None,
        }
    }
}

/// A named volume of the runtime: storage that outlives sandboxes, mounted into them with
/// [`MountSource::Volume`]. From [`Runtime::create_volume`](crate::Runtime::create_volume).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Volume {
    /// Its name: what [`MountSource::Volume`] and
    /// [`Runtime::remove_volume`](crate::Runtime::remove_volume) take.
    pub name: String,
    /// What it was made with.
    pub metadata: BTreeMap<String, String>,
    /// When it was made.
    pub created_at: SystemTime,
}

impl Volume {
    /// A new record; for backends.
    pub fn new(name: impl Into<String>) -> Self {
        Volume {
            name: name.into(),
            metadata: BTreeMap::new(),
            created_at: SystemTime::now(),
        }
    }
}

/// One number an operator watches about a runtime, now: from
/// [`Runtime::gauges`](crate::Runtime::gauges) (Docker: the warm pool's depth, the network
/// guard's state).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Gauge {
    /// A `snake_case` name, the same for every runtime of a backend (`pool_ready`).
    pub name: &'static str,
    /// What it counts, in words.
    pub help: &'static str,
    /// Its value now.
    pub value: f64,
}

impl Gauge {
    /// A gauge; for backends.
    pub fn new(name: &'static str, help: &'static str, value: f64) -> Self {
        Gauge { name, help, value }
    }
}

/// What a sandbox uses, at one moment: from [`Sandbox::metrics`](crate::Sandbox::metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metrics {
    /// When it was measured.
    pub timestamp: SystemTime,
    /// CPUs the sandbox may use.
    pub cpu_count: u32,
    /// CPU used, in percent of `cpu_count` CPUs (0 to 100).
    pub cpu_used_pct: f64,
    /// Memory used, in bytes.
    pub mem_used: u64,
    /// Memory the sandbox may use, in bytes.
    pub mem_total: u64,
    /// Page cache the kernel can reclaim, in bytes (not in `mem_used`).
    pub mem_cache: u64,
    /// Disk used, in bytes.
    pub disk_used: u64,
    /// Disk size, in bytes.
    pub disk_total: u64,
}

impl Metrics {
    /// A record measured now with everything zero; for backends.
    pub fn new() -> Self {
        Metrics {
            timestamp: SystemTime::now(),
            cpu_count: 0,
            cpu_used_pct: 0.0,
            mem_used: 0,
            mem_total: 0,
            mem_cache: 0,
            disk_used: 0,
            disk_total: 0,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Which sandboxes [`Runtime::list`](crate::Runtime::list) returns.
///
/// Every metadata pair must match, and the state must be one of `states` (any state when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListFilter {
    /// Metadata pairs that must all match exactly.
    pub metadata: BTreeMap<String, String>,
    /// States to include; empty means all.
    pub states: Vec<SandboxState>,
}

impl ListFilter {
    /// Matches every sandbox.
    pub fn all() -> Self {
        Self::default()
    }
    /// Requires a metadata pair.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Adds a state to include.
    pub fn state(mut self, state: SandboxState) -> Self {
        self.states.push(state);
        self
    }
    /// Whether `info` passes this filter.
    pub fn matches(&self, info: &SandboxInfo) -> bool {
        self.metadata
            .iter()
            .all(|(k, v)| info.metadata.get(k) == Some(v))
            && (self.states.is_empty() || self.states.contains(&info.state))
    }
}

/// What a backend can do. Conformance cases run only where the capability is there;
/// elsewhere they show as ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// `Sandbox::pause` and resume through `connect`.
    pub pause: bool,
    /// Commands on a pseudo-terminal.
    pub pty: bool,
    /// `Sandbox::get_host` for ports inside the sandbox.
    pub host_ports: bool,
    /// Host directories and volumes in [`SandboxSpec::mounts`].
    pub mounts: bool,
    /// Resource limits in [`SandboxSpec::resources`].
    pub resource_limits: bool,
    /// Network modes in [`SandboxSpec::network`].
    pub network_modes: bool,
    /// Building templates locally.
    pub templates: bool,
    /// [`Sandbox::watch`](crate::Sandbox::watch): directory change events.
    pub watch: bool,
    /// [`Sandbox::metrics`](crate::Sandbox::metrics): CPU, memory and disk use.
    pub metrics: bool,
    /// [`SandboxSpec::network_policy`] and
    /// [`Sandbox::set_network_policy`](crate::Sandbox::set_network_policy).
    pub network_policy: bool,
    /// Request rules of a [`NetworkPolicy`](crate::NetworkPolicy) are applied: headers set on
    /// the sandbox's HTTP and HTTPS requests outside it, secrets resolved there.
    pub request_rules: bool,
    /// A [`NetworkPolicy`](crate::NetworkPolicy)'s `egress_proxy` is honoured: outbound TCP
    /// goes through the SOCKS5 proxy it names.
    pub egress_proxy: bool,
    /// [`Sandbox::snapshot`](crate::Sandbox::snapshot), [`Sandbox::fork`](crate::Sandbox::fork),
    /// [`Runtime::snapshots`](crate::Runtime::snapshots) and
    /// [`Runtime::delete_snapshot`](crate::Runtime::delete_snapshot).
    pub snapshots: bool,
    /// [`Runtime::create_volume`](crate::Runtime::create_volume),
    /// [`Runtime::volumes`](crate::Runtime::volumes) and
    /// [`Runtime::remove_volume`](crate::Runtime::remove_volume).
    pub volumes: bool,
    /// Fixed hosts entries in [`SandboxSpec::hosts`].
    pub hosts: bool,
}

impl Capabilities {
    /// Nothing optional.
    pub fn none() -> Self {
        Self::default()
    }
    /// Everything optional.
    pub fn all() -> Self {
        Capabilities {
            pause: true,
            pty: true,
            host_ports: true,
            mounts: true,
            resource_limits: true,
            network_modes: true,
            templates: true,
            watch: true,
            metrics: true,
            network_policy: true,
            request_rules: true,
            egress_proxy: true,
            snapshots: true,
            volumes: true,
            hosts: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_parse_forms() {
        let m = Mount::parse("/a:/b").unwrap();
        assert_eq!(m.source, MountSource::HostPath("/a".into()));
        assert_eq!(m.target, "/b");
        assert!(!m.read_only);
        assert!(!Mount::parse("/a:/b:rw").unwrap().read_only);
        assert_eq!(
            Mount::parse("cache:/c").unwrap().source,
            MountSource::Volume("cache".into())
        );
        for bad in [
            "/a",
            "/a:b",
            "/a:/b:rx",
            ":/b",
            "/a:/b:ro:x",
            "a/b:/c",
            "/a:/b:overlay",
        ] {
            let e = Mount::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(e.message().contains(bad), "{e}");
        }
    }

    #[test]
    fn mount_list_skips_empty_and_names_bad_entry() {
        let v = Mount::parse_list("/a:/b, ,/c:/d:ro").unwrap();
        assert_eq!(v.len(), 2);
        let e = Mount::parse_list("/a:/b,oops").unwrap_err();
        assert!(e.message().contains("'oops'"), "{e}");
    }

    #[test]
    fn list_filter_matches_metadata_and_state() {
        let mut info = SandboxInfo::new("x", "t", "test");
        info.metadata.insert("a".into(), "1".into());
        assert!(ListFilter::all().matches(&info));
        assert!(ListFilter::all().metadata("a", "1").matches(&info));
        assert!(!ListFilter::all().metadata("a", "2").matches(&info));
        assert!(!ListFilter::all().state(SandboxState::Paused).matches(&info));
    }
}
