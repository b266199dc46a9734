//! [`DockerRuntimeBuilder`]: what a [`DockerRuntime`] is made with, and `build()`, which
//! reaches the engine and readies what the runtime needs (keeper, guard, pool).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use sandkit_core::{
    Error, ErrorKind, Mount, NetworkMode, Resources, Result, DEFAULT_SANDBOX_TIMEOUT,
};
use tracing::debug;

use crate::error::err;
use crate::inside::Inside;
use crate::keeper::Keeper;
use crate::labels::Labels;
use crate::runtime::{
    DockerRuntime, Settings, DEFAULT_CAPABILITIES, DEFAULT_CPUS, DEFAULT_IMAGE, ISOLATED_NETWORK,
};

impl DockerRuntime {
    /// A builder with the defaults.
    pub fn builder() -> DockerRuntimeBuilder {
        DockerRuntimeBuilder::default()
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
    /// Mounts every sandbox gets (on top of [`SandboxSpec::mounts`](sandkit_core::SandboxSpec::mounts)).
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
    /// Default limits (a sandbox's own [`SandboxSpec::resources`](sandkit_core::SandboxSpec::resources) wins field by field).
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
                labels: Labels::new(self.label_prefix),
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
