//! The sections of the configuration, with their defaults.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A local Docker engine.
    #[default]
    Docker,
    /// E2B's cloud, or an E2B-compatible server such as `e2b-local`.
    E2b,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::E2b => "e2b",
        })
    }
}

/// A secret (API key, token): shown as `***` in `Debug`, `Display` and dumps.
///
/// Accepts a string or a number in TOML (an API key `123456` works either way).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl Serialize for Secret {
    /// Serialises the real value: figment needs it to merge layers. Dumps redact through
    /// [`crate::Config::explain`].
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

/// Deserialises a string from a string or any number.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        U(u64),
        I(i64),
        F(f64),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::U(n) => n.to_string(),
        Scalar::I(n) => n.to_string(),
        Scalar::F(n) => n.to_string(),
    })
}

/// `[core]`: which backend, and the workspace.
///
/// OpenHands' other `[core]` keys (`default_agent`, `max_iterations`, ...) are accepted and
/// ignored, so an OpenHands `config.toml` loads; any other key is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CoreSection {
    /// `docker` or `e2b`. Env: `RUNTIME`.
    pub runtime: RuntimeKind,
    /// A host directory mounted at `workspace_mount_path_in_sandbox` (Docker). Env:
    /// `WORKSPACE_BASE`.
    pub workspace_base: Option<String>,
    /// Where the workspace is inside the sandbox, and the default working directory. Env:
    /// `WORKSPACE_MOUNT_PATH_IN_SANDBOX`.
    pub workspace_mount_path_in_sandbox: String,
    /// OpenHands keys we accept and ignore.
    #[serde(flatten, skip_serializing)]
    pub(crate) ignored: BTreeMap<String, serde::de::IgnoredAny>,
}

impl Default for CoreSection {
    fn default() -> Self {
        CoreSection {
            runtime: RuntimeKind::Docker,
            workspace_base: None,
            workspace_mount_path_in_sandbox: "/workspace".into(),
            ignored: BTreeMap::new(),
        }
    }
}

/// OpenHands `[core]` keys that are accepted and ignored.
pub(crate) const OPENHANDS_CORE_KEYS: &[&str] = &[
    "default_agent",
    "enable_browser",
    "file_store",
    "file_store_path",
    "file_store_web_hook_url",
    "file_store_web_hook_headers",
    "file_store_web_hook_batch",
    "save_trajectory_path",
    "save_screenshots_in_trajectory",
    "replay_trajectory_path",
    "search_api_key",
    "workspace_mount_path",
    "workspace_mount_rewrite",
    "cache_dir",
    "run_as_openhands",
    "max_iterations",
    "max_budget_per_task",
    "init_git_in_empty_workspace",
    "disable_color",
    "jwt_secret",
    "debug",
    "file_uploads_max_file_size_mb",
    "file_uploads_restrict_file_types",
    "file_uploads_allowed_extensions",
    "cli_multiline_input",
    "conversation_max_age_seconds",
    "enable_default_condenser",
    "max_concurrent_conversations",
    "client_wait_timeout",
    "mcp_host",
    "git_user_name",
    "git_user_email",
    "e2b_api_key",
    "modal_api_token_id",
    "modal_api_token_secret",
    "daytona_api_key",
    "runloop_api_key",
];

/// `[sandbox]`: OpenHands' `SandboxConfig`, with the same names and defaults, plus the
/// sandbox time to live. Keys that only concern OpenHands' other runtimes are accepted and
/// have no effect here; unknown keys are an error. Env: `SANDBOX_<KEY>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SandboxSection {
    /// How long a sandbox lives (seconds) unless its timeout is changed. Default 300, as E2B.
    pub time_to_live: u64,
    /// Default hard timeout (seconds) of an agent command. Default 120.
    pub timeout: u64,
    /// Image when neither a template nor `[docker] image` names one. Default `None`, which
    /// means `sandkit-base:bookworm` (OpenHands' default image cannot be pulled without a registry).
    pub base_container_image: Option<String>,
    /// A prebuilt image to use as is (wins over `base_container_image`).
    pub runtime_container_image: Option<String>,
    /// Leave sandboxes running when a session closes.
    pub keep_runtime_alive: bool,
    /// Use the host's network (Docker).
    pub use_host_network: bool,
    /// Host address published ports bind to. Default `127.0.0.1` (OpenHands: `0.0.0.0`; we keep
    /// sandboxes off the network unless asked).
    pub runtime_binding_address: String,
    /// Environment variables every sandbox starts with.
    pub runtime_startup_env_vars: BTreeMap<String, String>,
    /// Ask Docker for GPUs.
    pub enable_gpu: bool,
    /// Comma-separated GPU ids for `enable_gpu` (all when unset).
    pub cuda_visible_devices: Option<String>,
    /// `host:container[:ro|rw]` entries, comma-separated; see [`sandkit_core::Mount::parse`].
    pub volumes: Option<String>,
    /// Docker networks to connect sandboxes to after start.
    pub additional_networks: Vec<String>,
    /// `[sandbox.network]`: what sandboxes may reach (`allow_out`, `deny_out`, `allow_host`,
    /// `allow_link_local`; see [`sandkit_core::NetworkPolicy`]), for sandboxes whose spec sets
    /// no policy. Unset: no lists, and the host and link-local addresses refused.
    pub network: Option<sandkit_core::NetworkPolicy>,
    /// `[sandbox.secrets]`: where the values of the secrets `[sandbox.network.rules]` name
    /// come from (`openai = { env = "OPENAI_API_KEY" }`): read when the runtime is made,
    /// never written in the file, never put in a sandbox.
    pub secrets: std::collections::BTreeMap<String, SecretSource>,
    /// Image platform (`linux/amd64`) for template builds.
    pub platform: Option<String>,
    /// Extra `docker build` arguments (accepted; not used).
    pub runtime_extra_build_args: Option<Vec<String>>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub remote_runtime_api_url: String,
    /// Accepted for OpenHands compatibility; no effect here.
    pub local_runtime_url: String,
    /// Accepted for OpenHands compatibility; no effect here.
    pub pause_closed_runtimes: bool,
    /// Accepted for OpenHands compatibility; no effect here.
    pub rm_all_containers: bool,
    /// Accepted for OpenHands compatibility (RemoteRuntime key); no effect here.
    pub api_key: Option<Secret>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub user_id: Option<u32>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub remote_runtime_init_timeout: u64,
    /// Accepted for OpenHands compatibility; no effect here.
    pub remote_runtime_api_timeout: u64,
    /// Try again calls that failed and may work later (an unreachable or busy backend, a
    /// 429): the [`RetryLayer`](sandkit_core::layer::RetryLayer) in the stack
    /// [`Config::runtime`](crate::Config::runtime) builds. A spawn is never run twice.
    pub remote_runtime_enable_retries: bool,
    /// Accepted for OpenHands compatibility; no effect here.
    pub remote_runtime_class: Option<String>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub enable_auto_lint: bool,
    /// Accepted for OpenHands compatibility; no effect here.
    pub initialize_plugins: bool,
    /// Accepted for OpenHands compatibility; no effect here.
    pub force_rebuild_runtime: bool,
    /// Accepted for OpenHands compatibility; no effect here.
    pub runtime_extra_deps: Option<String>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub browsergym_eval_env: Option<String>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub close_delay: u64,
    /// Accepted for OpenHands compatibility; no effect here.
    pub remote_runtime_resource_factor: u64,
    /// Accepted for OpenHands compatibility; no effect here.
    pub docker_runtime_kwargs: Option<BTreeMap<String, String>>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub selected_repo: Option<String>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub trusted_dirs: Vec<String>,
    /// Accepted for OpenHands compatibility; no effect here.
    pub vscode_port: Option<u16>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        SandboxSection {
            time_to_live: 300,
            timeout: 120,
            base_container_image: None,
            runtime_container_image: None,
            keep_runtime_alive: false,
            use_host_network: false,
            runtime_binding_address: "127.0.0.1".into(),
            runtime_startup_env_vars: BTreeMap::new(),
            enable_gpu: false,
            cuda_visible_devices: None,
            volumes: None,
            additional_networks: Vec::new(),
            network: None,
            secrets: Default::default(),
            platform: None,
            runtime_extra_build_args: None,
            remote_runtime_api_url: "http://localhost:8000".into(),
            local_runtime_url: "http://localhost".into(),
            pause_closed_runtimes: true,
            rm_all_containers: false,
            api_key: None,
            user_id: None,
            remote_runtime_init_timeout: 180,
            remote_runtime_api_timeout: 180,
            remote_runtime_enable_retries: true,
            remote_runtime_class: None,
            enable_auto_lint: false,
            initialize_plugins: true,
            force_rebuild_runtime: false,
            runtime_extra_deps: None,
            browsergym_eval_env: None,
            close_delay: 3600,
            remote_runtime_resource_factor: 1,
            docker_runtime_kwargs: None,
            selected_repo: None,
            trusted_dirs: Vec::new(),
            vscode_port: None,
        }
    }
}

/// Where a secret's value comes from (`[sandbox.secrets]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SecretSource {
    /// The environment variable that holds it.
    pub env: String,
}

/// The `[sandbox]` keys, as `SANDBOX_<KEY>` environment variables are matched against.
pub(crate) const SANDBOX_KEYS: &[&str] = &[
    "time_to_live",
    "timeout",
    "base_container_image",
    "runtime_container_image",
    "keep_runtime_alive",
    "use_host_network",
    "runtime_binding_address",
    "runtime_startup_env_vars",
    "enable_gpu",
    "cuda_visible_devices",
    "volumes",
    "additional_networks",
    "platform",
    "runtime_extra_build_args",
    "remote_runtime_api_url",
    "local_runtime_url",
    "pause_closed_runtimes",
    "rm_all_containers",
    "api_key",
    "user_id",
    "remote_runtime_init_timeout",
    "remote_runtime_api_timeout",
    "remote_runtime_enable_retries",
    "remote_runtime_class",
    "enable_auto_lint",
    "initialize_plugins",
    "force_rebuild_runtime",
    "runtime_extra_deps",
    "browsergym_eval_env",
    "close_delay",
    "remote_runtime_resource_factor",
    "docker_runtime_kwargs",
    "selected_repo",
    "trusted_dirs",
    "vscode_port",
];

/// `[e2b]`: E2B's cloud or an E2B-compatible server. The usual `E2B_*` variables apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct E2bSection {
    /// API key, sent as `X-API-KEY`. Env: `E2B_API_KEY`.
    pub api_key: Option<Secret>,
    /// Base domain. Default `e2b.app`. Env: `E2B_DOMAIN`.
    pub domain: String,
    /// Control-plane URL; default `https://api.<domain>`. Env: `E2B_API_URL`.
    pub api_url: Option<String>,
    /// envd URL for every sandbox (local servers). Env: `E2B_SANDBOX_URL`.
    pub sandbox_url: Option<String>,
    /// Debug mode, as the official SDKs. Env: `E2B_DEBUG`.
    pub debug: bool,
    /// Template when a sandbox does not name one. Default `base`.
    pub template: String,
    /// Per-request timeout in seconds. Default 60.
    pub request_timeout: u64,
}

impl Default for E2bSection {
    fn default() -> Self {
        E2bSection {
            api_key: None,
            domain: "e2b.app".into(),
            api_url: None,
            sandbox_url: None,
            debug: false,
            template: "base".into(),
            request_timeout: 60,
        }
    }
}

/// `[docker]`: the local Docker engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DockerSection {
    /// Engine address; the engine's default socket when unset. Env: `DOCKER_HOST`.
    pub host: Option<String>,
    /// Image when a sandbox names no template (wins over `[sandbox] base_container_image`).
    pub image: Option<String>,
    /// `sandkit-isolated` (default: a network the backend makes, where sandboxes cannot reach each
    /// other), `bridge` (Docker's default: they can), `none`, `host`, or a network name.
    pub network: String,
    /// CPU limit per sandbox (fractions allowed). Default 1.
    pub cpus: Option<f64>,
    /// Memory limit per sandbox in MiB. Default 2048.
    pub memory_mb: Option<u64>,
    /// Process limit per sandbox. Default 1024.
    pub pids_limit: Option<u64>,
    /// Prefix of the labels that mark containers as ours. Default `sandkit`.
    pub label_prefix: String,
    /// Linux capabilities sandboxes get; every other one is dropped. Default: the backend's
    /// set (`sandkit_docker::DEFAULT_CAPABILITIES`, without `NET_RAW` and `MKNOD`).
    pub capabilities: Option<Vec<String>>,
    /// An OCI runtime registered with the engine, e.g. `runsc` for gVisor. Default: the
    /// engine's own.
    pub runtime: Option<String>,
    /// The static `sandkit-agent` binary (the deadline keeper, and the agent inside sandboxes).
    /// Default: `SANDKIT_AGENT_BIN`, else beside the running program.
    pub agent_binary: Option<std::path::PathBuf>,
    /// The agent inside sandboxes: `auto` (default) runs it wherever it can run, so commands
    /// and files take about a millisecond; `off` sends them through the engine's exec API.
    pub agent: AgentMode,
    /// Docker's `no-new-privileges` flag on sandboxes. Default true; false lets `user` in the
    /// base image `sudo` without a password, as in E2B's base template.
    pub no_new_privileges: bool,
    /// Sandboxes of the default image kept ready, so that `create` takes one in about a
    /// millisecond. Default 0 (none).
    pub pool: usize,
    /// Hold sandboxes to their network policy with the network guard (a container on the
    /// host's network with `NET_ADMIN`, run from the base image). Default true; false leaves
    /// the host and link-local addresses reachable and refuses network policies.
    pub network_guard: bool,
    /// A PEM file of certificates the network guard trusts, besides the system's, when it
    /// sends a request that a policy's request rules changed on to its server: for servers of
    /// your own with a private CA.
    pub egress_trust: Option<std::path::PathBuf>,
    /// Names every sandbox resolves to fixed addresses (`name = "address"`): services of
    /// your network that sandboxes know by name. Empty by default.
    pub hosts: std::collections::BTreeMap<String, std::net::IpAddr>,
}

/// `[docker] agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AgentMode {
    /// Wherever it can run (a Linux x86_64 image, an agent binary at hand).
    #[default]
    Auto,
    /// Never: the engine's exec API.
    Off,
}

impl Default for DockerSection {
    fn default() -> Self {
        DockerSection {
            host: None,
            image: None,
            network: "sandkit-isolated".into(),
            cpus: Some(1.0),
            memory_mb: Some(2048),
            pids_limit: Some(1024),
            label_prefix: "sandkit".into(),
            capabilities: None,
            runtime: None,
            agent_binary: None,
            agent: AgentMode::Auto,
            no_new_privileges: true,
            pool: 0,
            network_guard: true,
            egress_trust: None,
            hosts: Default::default(),
        }
    }
}
