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
    SandboxInfo, SandboxSpec, SandboxState,
};
use sandkit_core::{Error, ErrorKind, Result};
use tracing::debug;

use crate::error::{err, map, BACKEND};
use crate::inside::{self, Inside};
use crate::keeper::{Held, Keeper};
use crate::labels::{created_label, epoch, flag, new_id, parse_created, valid_id, Labels};
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

impl DockerRuntime {
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
