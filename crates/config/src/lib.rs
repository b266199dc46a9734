//! The layered configuration of sandkit, and the backend it picks.
//!
//! Layers, later wins:
//!
//! 1. built-in defaults;
//! 2. a TOML file: `--config` / [`ConfigBuilder::file`], else `SANDKIT_CONFIG`, else `./sandkit.toml`
//!    when present. An OpenHands `config.toml` loads too: `[core]` and `[sandbox]` are read,
//!    its other sections (`[llm]`, `[agent]`, ...) are ignored;
//! 3. the environment: the names users already have (`RUNTIME`, `SANDBOX_<KEY>`,
//!    `SANDBOX_ENV_<NAME>`, `SANDBOX_VOLUMES`, `WORKSPACE_BASE`,
//!    `WORKSPACE_MOUNT_PATH_IN_SANDBOX`, `E2B_API_KEY`, `E2B_DOMAIN`, `E2B_API_URL`,
//!    `E2B_SANDBOX_URL`, `E2B_DEBUG`, `DOCKER_HOST`), then `SANDKIT_<SECTION>__<KEY>` for every key
//!    (`SANDKIT_SANDBOX__TIMEOUT=60`), which wins when both name the same key. Empty values are
//!    skipped;
//! 4. values set in code or on the command line ([`ConfigBuilder::set`]).
//!
//! A bad value is an error naming the key, where the value came from (file and line, or the
//! variable) and what was expected. Secrets are redacted in `Debug` and in
//! [`Config::explain`].
//!
//! ```
//! use sandkit_config::{Config, RuntimeKind};
//!
//! let config = Config::builder()
//!     .no_file()
//!     .env_vars([("RUNTIME", "e2b"), ("E2B_API_KEY", "123456"), ("SANDBOX_TIMEOUT", "60")])
//!     .load()?;
//! assert_eq!(config.core.runtime, RuntimeKind::E2b);
//! assert_eq!(config.e2b.api_key.as_ref().unwrap().expose(), "123456");
//! assert_eq!(config.sandbox.timeout, 60);
//! assert!(!format!("{config:?}").contains("123456"));
//! # Ok::<(), sandkit_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod env;
#[doc(hidden)]
pub mod fuzzing;
mod sections;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use sandkit_core::{Error, ErrorKind, Mount, Result, Runtime};
use serde::{Deserialize, Serialize};

pub use sections::{
    AgentMode, CoreSection, DockerSection, E2bSection, RuntimeKind, SandboxSection, Secret,
};

use env::EnvLayer;

/// The merged configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// `[core]`
    pub core: CoreSection,
    /// `[sandbox]`
    pub sandbox: SandboxSection,
    /// `[e2b]`
    pub e2b: E2bSection,
    /// `[docker]`
    pub docker: DockerSection,
    #[serde(skip)]
    sources: Sources,
}

/// One setting of the merged configuration, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Setting {
    /// The key, `section.name`.
    pub key: String,
    /// The value as TOML; secrets are `"***"`.
    pub value: String,
    /// Where it came from: `default`, a file path and line, an environment variable, or
    /// `set in code`.
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Sources {
    settings: Vec<Setting>,
}

/// Where a value may come from, for tests and tools: see [`Config::builder`].
#[derive(Debug, Default)]
pub struct ConfigBuilder {
    file: FileChoice,
    env: Option<Vec<(String, String)>>,
    overrides: Vec<(String, toml::Value)>,
}

#[derive(Debug, Default)]
enum FileChoice {
    #[default]
    Default,
    Path(PathBuf),
    Text(String),
    None,
}

impl Config {
    /// Loads defaults, the TOML file (`SANDKIT_CONFIG` or `./sandkit.toml`) and the process
    /// environment.
    pub fn load() -> Result<Config> {
        Config::builder().load()
    }

    /// A builder to choose the file, the environment and overrides.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The mounts of `[sandbox] volumes`, plus the workspace when `[core] workspace_base` is set.
    pub fn mounts(&self) -> Result<Vec<Mount>> {
        let mut mounts = match &self.sandbox.volumes {
            Some(v) => Mount::parse_list(v).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{} (key sandbox.volumes from {})",
                        e.message(),
                        self.source_of("sandbox.volumes")
                    ),
                )
            })?,
            None => Vec::new(),
        };
        if let Some(base) = &self.core.workspace_base {
            mounts.push(Mount {
                source: sandkit_core::MountSource::HostPath(base.clone()),
                target: self.core.workspace_mount_path_in_sandbox.clone(),
                read_only: false,
            });
        }
        Ok(mounts)
    }

    /// Every setting with its value (secrets redacted) and where it came from, in key order.
    pub fn explain(&self) -> &[Setting] {
        &self.sources.settings
    }

    /// Where `key` (`section.name`) came from.
    pub fn source_of(&self, key: &str) -> String {
        self.sources
            .settings
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.source.clone())
            .unwrap_or_else(|| "default".into())
    }

    /// Keys that were set (in a file, the environment or code) but have no effect in sandkit:
    /// OpenHands settings of its other runtimes, accepted so that its `config.toml` loads. Each
    /// with where it was set. [`ConfigBuilder::load`] warns once per key.
    ///
    /// ```
    /// let config = sandkit_config::Config::builder()
    ///     .no_file()
    ///     .env_vars([("SANDBOX_CLOSE_DELAY", "5")])
    ///     .load()?;
    /// let ignored = config.keys_without_effect();
    /// assert_eq!(ignored[0].0, "sandbox.close_delay");
    /// assert_eq!(ignored[0].1, "environment variable SANDBOX_CLOSE_DELAY");
    /// # Ok::<(), sandkit_core::Error>(())
    /// ```
    pub fn keys_without_effect(&self) -> Vec<(String, String)> {
        let sandbox = NO_EFFECT_SANDBOX_KEYS
            .iter()
            .map(|k| format!("sandbox.{k}"))
            .filter_map(|key| {
                let source = self.source_of(&key);
                (source != "default").then_some((key, source))
            });
        let core = self
            .core
            .ignored
            .keys()
            .map(|k| (format!("core.{k}"), "a configuration file".to_string()));
        sandbox.chain(core).collect()
    }

    /// The merged configuration as TOML, secrets redacted, each key followed by its source.
    pub fn to_toml_with_sources(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        for s in &self.sources.settings {
            let (sec, name) = s.key.split_once('.').unwrap_or(("", &s.key));
            if sec != section {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("[{sec}]\n"));
                section = sec;
            }
            out.push_str(&format!("{name} = {}  # {}\n", s.value, s.source));
        }
        out
    }

    /// Builds the backend `[core] runtime` names, inside the standard stack of
    /// [layers](sandkit_core::layer::standard): error context, retries (unless
    /// `[sandbox] remote_runtime_enable_retries = false`), capability checks, tracing.
    ///
    /// Each backend is behind a cargo feature of this crate (`docker`, `e2b`); asking for one
    /// that is not compiled in is [`ErrorKind::Unsupported`].
    pub async fn runtime(&self) -> Result<Arc<dyn Runtime>> {
        let backend = match self.core.runtime {
            RuntimeKind::Docker => self.docker_runtime().await?,
            RuntimeKind::E2b => self.e2b_runtime()?,
        };
        let retry = self
            .sandbox
            .remote_runtime_enable_retries
            .then(sandkit_core::layer::RetryLayer::default);
        Ok(sandkit_core::layer::standard(backend, retry))
    }

    /// `[sandbox.network]`, with the values of the secrets its rules name read from where
    /// `[sandbox.secrets]` says.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming a secret
    /// whose environment variable is not set.
    pub fn network_policy(&self) -> Result<Option<sandkit_core::NetworkPolicy>> {
        let Some(mut policy) = self.sandbox.network.clone() else {
            return Ok(None);
        };
        for name in policy.secret_names() {
            let Some((_, source)) = self
                .sandbox
                .secrets
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            else {
                continue;
            };
            let value = std::env::var(&source.env).map_err(|_| {
                sandkit_core::Error::new(
                    sandkit_core::ErrorKind::InvalidInput,
                    format!(
                        "[sandbox.secrets] {name}: the environment variable {} is not set",
                        source.env
                    ),
                )
                .with_operation("configure")
            })?;
            policy.secrets.insert(&name, value);
        }
        Ok(Some(policy))
    }

    #[cfg(feature = "e2b")]
    fn e2b_runtime(&self) -> Result<Arc<dyn Runtime>> {
        let e = &self.e2b;
        let mut builder = sandkit_e2b::E2bRuntime::builder()
            .domain(e.domain.clone())
            .debug(e.debug)
            .template(e.template.clone())
            .request_timeout(std::time::Duration::from_secs(e.request_timeout.max(1)))
            .time_to_live(std::time::Duration::from_secs(self.sandbox.time_to_live));
        if let Some(policy) = self.network_policy()? {
            builder = builder.network_policy(policy);
        }
        if let Some(key) = &e.api_key {
            builder = builder.api_key(key.expose());
        }
        if let Some(url) = &e.api_url {
            builder = builder.api_url(url.clone());
        }
        if let Some(url) = &e.sandbox_url {
            builder = builder.sandbox_url(url.clone());
        }
        Ok(Arc::new(builder.build()?))
    }

    #[cfg(not(feature = "e2b"))]
    fn e2b_runtime(&self) -> Result<Arc<dyn Runtime>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "the e2b backend is not built into this program; rebuild with the `e2b` feature \
             of sandkit-config, or set runtime = \"docker\"",
        )
        .with_context("source", self.source_of("core.runtime")))
    }

    #[cfg(feature = "docker")]
    async fn docker_runtime(&self) -> Result<Arc<dyn Runtime>> {
        Ok(Arc::new(self.docker().await?))
    }

    /// The Docker backend as configured, for what only it offers (template builds).
    #[cfg(feature = "docker")]
    pub async fn docker(&self) -> Result<sandkit_docker::DockerRuntime> {
        let d = &self.docker;
        let s = &self.sandbox;
        let image = s
            .runtime_container_image
            .clone()
            .or_else(|| d.image.clone())
            .or_else(|| s.base_container_image.clone());
        let network = if s.use_host_network {
            "host".to_string()
        } else {
            d.network.clone()
        };
        let mut builder = sandkit_docker::DockerRuntime::builder()
            .network(sandkit_core::NetworkMode::parse(&network))
            .mounts(self.mounts()?)
            .workdir(self.core.workspace_mount_path_in_sandbox.clone())
            .env(s.runtime_startup_env_vars.clone())
            .time_to_live(std::time::Duration::from_secs(s.time_to_live))
            .label_prefix(d.label_prefix.clone())
            .binding_address(s.runtime_binding_address.clone())
            .additional_networks(s.additional_networks.clone());
        if let Some(image) = image {
            builder = builder.image(image);
        }
        if let Some(host) = &d.host {
            builder = builder.host(host.clone());
        }
        if let Some(caps) = &d.capabilities {
            builder = builder.capabilities(caps.clone());
        }
        if let Some(runtime) = &d.runtime {
            builder = builder.oci_runtime(runtime.clone());
        }
        if let Some(bin) = &d.agent_binary {
            builder = builder.agent_binary(bin.clone());
        }
        builder = builder
            .agent_inside(d.agent == sections::AgentMode::Auto)
            .no_new_privileges(d.no_new_privileges)
            .pool(d.pool)
            .network_guard(d.network_guard)
            .hosts(d.hosts.clone());
        if let Some(path) = &d.egress_trust {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                sandkit_core::Error::new(
                    sandkit_core::ErrorKind::InvalidInput,
                    format!("[docker] egress_trust: cannot read {}: {e}", path.display()),
                )
                .with_operation("configure")
            })?;
            builder = builder.egress_trust(pem);
        }
        if let Some(policy) = self.network_policy()? {
            builder = builder.network_policy(policy);
        }
        let mut resources = sandkit_core::Resources::new();
        resources.cpus = d.cpus;
        resources.memory_mb = d.memory_mb;
        resources.pids = d.pids_limit;
        if s.enable_gpu {
            resources.gpus = Some(
                s.cuda_visible_devices
                    .as_deref()
                    .map(|v| {
                        v.split(',')
                            .map(|x| x.trim().to_string())
                            .filter(|x| !x.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            );
        }
        builder = builder.resources(resources);
        builder.build().await
    }

    #[cfg(not(feature = "docker"))]
    async fn docker_runtime(&self) -> Result<Arc<dyn Runtime>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "the docker backend is not built into this program; rebuild with the `docker` \
             feature of sandkit-config",
        ))
    }
}

impl ConfigBuilder {
    /// Reads this TOML file (it must exist).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = FileChoice::Path(path.into());
        self
    }

    /// Reads this TOML text, as if it were the file.
    pub fn toml(mut self, text: impl Into<String>) -> Self {
        self.file = FileChoice::Text(text.into());
        self
    }

    /// Reads no TOML file at all.
    pub fn no_file(mut self) -> Self {
        self.file = FileChoice::None;
        self
    }

    /// Uses these variables instead of the process environment.
    pub fn env_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Sets `key` (`section.name`) to a value, above every other layer.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.overrides.push((key.to_string(), value.into()));
        self
    }

    /// Merges the layers and validates the result.
    pub fn load(self) -> Result<Config> {
        let env_vars = self.env.unwrap_or_else(|| std::env::vars().collect());
        let inline = match &self.file {
            FileChoice::Text(t) => Some(t.clone()),
            _ => None,
        };
        let file = match self.file {
            FileChoice::Path(p) => {
                if !p.is_file() {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("config file {} does not exist", p.display()),
                    )
                    .with_operation("load config"));
                }
                Some(p)
            }
            FileChoice::None | FileChoice::Text(_) => None,
            FileChoice::Default => {
                match env_vars
                    .iter()
                    .find(|(k, v)| k == "SANDKIT_CONFIG" && !v.is_empty())
                {
                    Some((_, p)) => {
                        let p = PathBuf::from(p);
                        if !p.is_file() {
                            return Err(Error::new(
                                ErrorKind::NotFound,
                                format!(
                                    "config file {} (from SANDKIT_CONFIG) does not exist",
                                    p.display()
                                ),
                            )
                            .with_operation("load config"));
                        }
                        Some(p)
                    }
                    None => Some(PathBuf::from("sandkit.toml")).filter(|p| p.is_file()),
                }
            }
        };
        let env = EnvLayer::from_vars(env_vars);

        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let mut file_text = None;
        let mut file_table = None;
        let file = file.or_else(|| inline.as_ref().map(|_| PathBuf::from("<inline TOML>")));
        if let Some(path) = &file {
            let text = match &inline {
                Some(t) => t.clone(),
                None => std::fs::read_to_string(path).map_err(|e| {
                    Error::from(e)
                        .with_operation("load config")
                        .with_context("file", path.display())
                })?,
            };
            // Only the sections we own; an OpenHands file's [llm], [agent], ... are skipped.
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                let line = e
                    .span()
                    .map(|s| text[..s.start].lines().count().max(1))
                    .unwrap_or(0);
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{} is not valid TOML (line {line}): {}",
                        path.display(),
                        e.message()
                    ),
                )
                .with_operation("load config")
            })?;
            // Sections OpenHands defines are left to it; anything else is a mistake to report.
            if let Some(section) = table.keys().find(|k| {
                !OWN_SECTIONS.contains(&k.as_str()) && !OPENHANDS_SECTIONS.contains(&k.as_str())
            }) {
                let line = text
                    .lines()
                    .position(|l| {
                        let t = l.trim();
                        t.strip_prefix('[')
                            .and_then(|t| t.split(']').next())
                            .is_some_and(|h| h.trim().split('.').next() == Some(section))
                    })
                    .map(|i| i + 1)
                    .unwrap_or(0);
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "unknown section [{section}] in {} (line {line}); sandkit reads [core], \
                         [sandbox], [docker] and [e2b], and leaves OpenHands' own sections \
                         ([llm], [agent], [security], ...) alone",
                        path.display()
                    ),
                )
                .with_operation("load config")
                .with_context("key", section)
                .with_context("source", format!("{}, line {line}", path.display())));
            }
            let owned: toml::Table = table
                .into_iter()
                .filter(|(k, _)| OWN_SECTIONS.contains(&k.as_str()))
                .collect();
            figment = figment.merge(Toml::string(&owned.to_string()));
            file_table = Some(owned);
            file_text = Some(text);
        }
        figment = figment.merge(env.clone());
        for (key, value) in &self.overrides {
            figment = figment.merge(Serialized::default(key, value));
        }

        let ctx = ErrorContext {
            file: file.as_deref(),
            file_text: file_text.as_deref(),
            file_table: file_table.as_ref(),
            env: &env,
            overrides: self.overrides.iter().map(|(k, _)| k.as_str()).collect(),
        };
        let mut config: Config = figment.extract_lossy().map_err(|e| ctx.map(e))?;
        for key in config.core.ignored.keys() {
            if !sections::OPENHANDS_CORE_KEYS.contains(&key.as_str()) {
                return Err(ctx.unknown("core", key));
            }
        }
        config.sources = Sources::collect(&config, &ctx);
        for (key, source) in config.keys_without_effect() {
            warn_once(&key, &source);
        }
        config.mounts()?;
        if config.sandbox.time_to_live == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "sandbox.time_to_live must be at least 1 second (from {})",
                    config.source_of("sandbox.time_to_live")
                ),
            ));
        }
        Ok(config)
    }
}

/// `[sandbox]` keys of OpenHands' other runtimes: accepted so that its `config.toml` loads, with no
/// effect on any sandkit backend.
const NO_EFFECT_SANDBOX_KEYS: &[&str] = &[
    "runtime_extra_build_args",
    "remote_runtime_api_url",
    "local_runtime_url",
    "pause_closed_runtimes",
    "rm_all_containers",
    "api_key",
    "user_id",
    "remote_runtime_init_timeout",
    "remote_runtime_api_timeout",
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

/// Says once per process that `key` (set by `source`) does nothing here.
fn warn_once(key: &str, source: &str) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut w| w.insert(key.to_string()))
        .unwrap_or(false);
    if first {
        tracing::warn!(
            key,
            source,
            "{key} (from {source}) is an OpenHands setting that has no effect in sandkit; remove it \
             to silence this warning"
        );
    }
}

/// The sections sandkit reads.
const OWN_SECTIONS: &[&str] = &["core", "sandbox", "e2b", "docker"];

/// The other sections of an OpenHands `config.toml`, accepted and left alone.
const OPENHANDS_SECTIONS: &[&str] = &[
    "llm",
    "agent",
    "security",
    "condenser",
    "mcp",
    "kubernetes",
    "extended",
    "model_routing",
    "cli",
];

struct ErrorContext<'a> {
    file: Option<&'a Path>,
    file_text: Option<&'a str>,
    file_table: Option<&'a toml::Table>,
    env: &'a EnvLayer,
    overrides: Vec<&'a str>,
}

impl ErrorContext<'_> {
    /// Where the value at `key` came from: the last layer that set it.
    fn source(&self, key: &[&str]) -> String {
        let dotted = key.join(".");
        if self
            .overrides
            .iter()
            .any(|o| dotted == *o || dotted.starts_with(&format!("{o}.")))
        {
            return "set in code".into();
        }
        if let Some(var) = self.env.var_for(key) {
            return format!("environment variable {var}");
        }
        if let (Some(path), Some(text), Some(table)) = (self.file, self.file_text, self.file_table)
        {
            let present = key
                .iter()
                .try_fold(table, |t, k| match t.get(*k) {
                    Some(toml::Value::Table(inner)) => Some(inner),
                    Some(_) => Some(t),
                    None => None,
                })
                .is_some();
            if present {
                return match find_line(text, key) {
                    Some(line) => format!("{}, line {line}", path.display()),
                    None => path.display().to_string(),
                };
            }
        }
        "default".into()
    }

    fn map(&self, e: figment::Error) -> Error {
        let mut key: Vec<String> = e.path.clone();
        if key.first().map(String::as_str) == Some("default") {
            key.remove(0);
        }
        if let figment::error::Kind::UnknownField(field, _) = &e.kind {
            if key.last() != Some(field) {
                key.push(field.clone());
            }
            if let [section, name] = key.as_slice() {
                return self.unknown(section, name);
            }
        }
        let kind = e.kind.to_string();
        let key_ref: Vec<&str> = key.iter().map(String::as_str).collect();
        let source = self.source(&key_ref);
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "bad configuration value for `{}` from {source}: {kind}",
                key.join(".")
            ),
        )
        .with_operation("load config")
        .with_context("key", key.join("."))
        .with_context("source", source)
    }

    fn unknown(&self, section: &str, key: &str) -> Error {
        let source = self.source(&[section, key]);
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "unknown configuration key `{section}.{key}` from {source}; check the spelling \
                 (see `sandkit config` for every key)"
            ),
        )
        .with_operation("load config")
        .with_context("key", format!("{section}.{key}"))
        .with_context("source", source)
    }
}

/// The 1-based line of `key` (`[section, name]`) in a TOML text, when written plainly.
fn find_line(text: &str, key: &[&str]) -> Option<usize> {
    let (section, name) = match key {
        [s, n, ..] => (*s, *n),
        _ => return None,
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            current = h.trim().to_string();
            continue;
        }
        if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == name {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

const SECRET_KEYS: &[&str] = &["e2b.api_key", "sandbox.api_key"];

impl Sources {
    fn collect(config: &Config, ctx: &ErrorContext<'_>) -> Sources {
        let value = toml::Value::try_from(config).unwrap_or(toml::Value::Table(Default::default()));
        let mut settings = Vec::new();
        if let toml::Value::Table(sections) = value {
            for (section, fields) in sections {
                let toml::Value::Table(fields) = fields else {
                    continue;
                };
                for (name, v) in fields {
                    let key = format!("{section}.{name}");
                    let value = if SECRET_KEYS.contains(&key.as_str()) {
                        "\"***\"".to_string()
                    } else {
                        v.to_string()
                    };
                    let source = ctx.source(&[section.as_str(), name.as_str()]);
                    settings.push(Setting { key, value, source });
                }
            }
        }
        Sources { settings }
    }
}

#[cfg(test)]
mod tests;
