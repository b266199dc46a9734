//! [`E2bRuntime`] and its builder: the control plane.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use sandkit_core::{
    Capabilities, ErrorKind, ListFilter, NetworkMode, Result, Runtime, Sandbox, SandboxInfo,
    SandboxSpec, SandboxState,
};
use sandkit_e2b_protocol::api::{ConnectSandbox, NewSandbox, SandboxCreated, SandboxDetail};
use tracing::debug;

use crate::api::Api;
use crate::config::{E2bConfig, DEBUG_SANDBOX_ID};
use crate::control::{network_config, Control, Defaults, CWD_KEY, USER_KEY};
use crate::envd_url::UrlTransport;
use crate::error::{err, BACKEND};
use crate::sandbox::E2bSandbox;

/// Sandboxes on E2B's cloud, or on any server that speaks its protocol (`e2b-local`).
///
/// See the [crate documentation](crate).
#[derive(Clone)]
pub struct E2bRuntime {
    control: Control,
}

impl std::fmt::Debug for E2bRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bRuntime")
            .field("config", &self.control.config)
            .finish()
    }
}

impl std::fmt::Display for E2bRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(BACKEND)
    }
}

/// Builds an [`E2bRuntime`]. Every setting has the meaning the official SDKs give it.
#[derive(Clone, Default)]
pub struct E2bRuntimeBuilder {
    api_key: Option<String>,
    domain: Option<String>,
    api_url: Option<String>,
    sandbox_url: Option<String>,
    debug: bool,
    template: Option<String>,
    request_timeout: Option<Duration>,
    time_to_live: Option<Duration>,
    network_policy: Option<sandkit_core::NetworkPolicy>,
}

impl std::fmt::Debug for E2bRuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bRuntimeBuilder")
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("domain", &self.domain)
            .field("api_url", &self.api_url)
            .field("sandbox_url", &self.sandbox_url)
            .field("debug", &self.debug)
            .finish()
    }
}

impl E2bRuntimeBuilder {
    /// Reads `E2B_API_KEY`, `E2B_DOMAIN`, `E2B_API_URL`, `E2B_SANDBOX_URL` and `E2B_DEBUG`.
    pub fn from_env(mut self) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        self.api_key = var("E2B_API_KEY").or(self.api_key);
        self.domain = var("E2B_DOMAIN").or(self.domain);
        self.api_url = var("E2B_API_URL").or(self.api_url);
        self.sandbox_url = var("E2B_SANDBOX_URL").or(self.sandbox_url);
        if let Some(d) = var("E2B_DEBUG") {
            self.debug = d.eq_ignore_ascii_case("true");
        }
        self
    }
    /// The API key, sent as `X-API-KEY`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// The base domain (default `e2b.app`).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
    /// The control-plane URL (default `https://api.<domain>`).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = Some(url.into());
        self
    }
    /// One envd URL for every sandbox, routed by header (local servers).
    pub fn sandbox_url(mut self, url: impl Into<String>) -> Self {
        self.sandbox_url = Some(url.into());
        self
    }
    /// Debug mode: `localhost:3000` and `localhost:49983`, as the SDKs do.
    pub fn debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }
    /// The template used when a sandbox names none (default `base`).
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }
    /// Deadline of each control-plane request and unary envd call (default 60 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The time to live of a sandbox whose spec sets none (default 300 s, E2B's).
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// The network policy of sandboxes whose spec sets none (`[sandbox.network]`).
    pub fn network_policy(mut self, policy: sandkit_core::NetworkPolicy) -> Self {
        self.network_policy = Some(policy);
        self
    }

    /// Checks the settings. Makes no request.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] when no API key is set, saying what to set.
    pub fn build(self) -> Result<E2bRuntime> {
        let config = E2bConfig {
            api_key: self.api_key.unwrap_or_default(),
            domain: self.domain.unwrap_or_else(|| "e2b.app".into()),
            api_url: self.api_url,
            sandbox_url: self.sandbox_url,
            debug: self.debug,
            template: self.template.unwrap_or_else(|| "base".into()),
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(60)),
            time_to_live: self
                .time_to_live
                .unwrap_or(sandkit_core::DEFAULT_SANDBOX_TIMEOUT),
            network_policy: self.network_policy,
        };
        config.validate()?;
        let api = Api::new(&config)?;
        Ok(E2bRuntime {
            control: Control {
                config: Arc::new(config),
                api,
                envd: Arc::new(UrlTransport::new()?),
            },
        })
    }
}

impl E2bRuntime {
    /// A builder with no settings.
    pub fn builder() -> E2bRuntimeBuilder {
        E2bRuntimeBuilder::default()
    }

    /// Every page of a listing that pages with `nextToken` / `x-next-token`.
    async fn pages<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: Vec<(&str, String)>,
        op: &'static str,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        for _page in 0..1000 {
            let mut q = query.clone();
            if let Some(t) = &next {
                q.push(("nextToken", t.clone()));
            }
            let r = self
                .control
                .api
                .send(Method::GET, path, &q, None, op)
                .await?;
            if !r.status.is_success() {
                return Err(r.error(op));
            }
            let page: Vec<T> = r.json(op)?;
            let empty = page.is_empty();
            out.extend(page);
            match r.next_token {
                Some(t) if !empty => next = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Runtime for E2bRuntime {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.pause = true;
        c.pty = true;
        // Ports are reachable on E2B's own hosts; a server behind E2B_SANDBOX_URL has none.
        c.host_ports = self.control.config.sandbox_url.is_none();
        // envd watches and measures (e2b-local too, over a backend that can).
        c.watch = true;
        c.metrics = true;
        c.network_policy = true;
        c.request_rules = true;
        c.egress_proxy = true;
        c.snapshots = !self.control.config.debug;
        c
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>> {
        // Also refused by the capability layer; here for this backend used on its own.
        sandkit_core::layer::check_spec(BACKEND, self.capabilities(), &spec)?;
        let internet = match &spec.network {
            None | Some(NetworkMode::Bridge) => None,
            Some(NetworkMode::None) => Some(false),
            // The capability layer refuses other modes (Capabilities::network_modes).
            Some(other) => {
                return Err(err(
                    ErrorKind::Unsupported,
                    "create",
                    format!("network mode {:?} has no E2B equivalent", other.as_str()),
                ))
            }
        };
        let network = match spec.network_policy.as_ref().or(self
            .control
            .config
            .network_policy
            .as_ref())
        {
            Some(p) => {
                let config = network_config(p, "create")?;
                self.control.put_secrets(p, "create").await?;
                Some(config)
            }
            None => None,
        };
        if network.is_some() && internet == Some(false) {
            return Err(err(
                ErrorKind::InvalidInput,
                "create",
                "a sandbox with no network (network = none) takes no network policy",
            ));
        }
        if self.control.config.debug {
            // As the SDKs: debug mode makes no API call; the one sandbox is the local one.
            let created = SandboxCreated {
                sandbox_id: DEBUG_SANDBOX_ID.into(),
                ..Default::default()
            };
            return Ok(Box::new(E2bSandbox::from_created(
                self.control.clone(),
                &created,
                Defaults {
                    cwd: spec.cwd,
                    user: spec.user,
                    ..Default::default()
                },
            )?) as Box<dyn Sandbox>);
        }
        let mut metadata = spec.metadata.clone();
        if let Some(cwd) = &spec.cwd {
            metadata.insert(CWD_KEY.into(), cwd.clone());
        }
        if let Some(user) = &spec.user {
            metadata.insert(USER_KEY.into(), user.clone());
        }
        let body = NewSandbox {
            template_id: spec
                .template
                .clone()
                .unwrap_or_else(|| self.control.config.template.clone()),
            timeout: Some(
                spec.timeout
                    .unwrap_or(self.control.config.time_to_live)
                    .as_secs()
                    .max(1) as i64,
            ),
            metadata: Some(metadata.clone()),
            env_vars: Some(spec.env.clone()),
            allow_internet_access: internet,
            auto_pause: spec.auto_pause.then_some(true),
            network,
            ..Default::default()
        };
        let json = serde_json::to_value(&body).expect("json");
        let mut r = self
            .control
            .api
            .send(Method::POST, "/v2/sandboxes", &[], Some(json), "create")
            .await?;
        if r.status == StatusCode::NOT_FOUND && !r.is_api_error() {
            // An older server without the v2 route.
            let mut v1 = body.clone();
            v1.secure = Some(true);
            v1.timeout = Some(v1.timeout.unwrap_or(300));
            let json = serde_json::to_value(&v1).expect("json");
            r = self
                .control
                .api
                .send(Method::POST, "/sandboxes", &[], Some(json), "create")
                .await?;
        }
        if !r.status.is_success() {
            return Err(r.error("create"));
        }
        let created: SandboxCreated = r.json("create")?;
        debug!(sandbox_id = %created.sandbox_id, "sandbox created");
        let sandbox = E2bSandbox::from_created(
            self.control.clone(),
            &created,
            Control::defaults_from(Some(&metadata)),
        )?;
        Ok(Box::new(sandbox) as Box<dyn Sandbox>)
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn Sandbox>> {
        if self.control.config.debug {
            let created = SandboxCreated {
                sandbox_id: id.into(),
                ..Default::default()
            };
            return Ok(Box::new(E2bSandbox::from_created(
                self.control.clone(),
                &created,
                Defaults::default(),
            )?));
        }
        let body = serde_json::to_value(ConnectSandbox::default()).expect("json");
        let mut r = self
            .control
            .api
            .send(
                Method::POST,
                &format!("/v2/sandboxes/{id}/connect"),
                &[],
                Some(body),
                "connect",
            )
            .await?;
        if r.status == StatusCode::NOT_FOUND && !r.is_api_error() {
            let body = serde_json::to_value(ConnectSandbox { timeout: Some(300) }).expect("json");
            r = self
                .control
                .api
                .send(
                    Method::POST,
                    &format!("/sandboxes/{id}/connect"),
                    &[],
                    Some(body),
                    "connect",
                )
                .await?;
        }
        match r.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(Control::not_found(id, "connect")),
            _ => return Err(r.error("connect")),
        }
        let created: SandboxCreated = r.json("connect")?;
        let detail = self.control.detail(id, "connect").await.ok();
        let defaults = Control::defaults_from(detail.as_ref().and_then(|d| d.metadata.as_ref()));
        Ok(Box::new(E2bSandbox::from_created(
            self.control.clone(),
            &created,
            defaults,
        )?))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>> {
        let mut query: Vec<(&str, String)> = vec![("limit", "100".into())];
        if !filter.metadata.is_empty() {
            query.push((
                "metadata",
                sandkit_e2b_protocol::encode_metadata_filter(&filter.metadata),
            ));
        }
        let states: Vec<&str> = if filter.states.is_empty() {
            vec!["running", "paused"]
        } else {
            filter
                .states
                .iter()
                .filter_map(|s| match s {
                    SandboxState::Running => Some("running"),
                    SandboxState::Paused => Some("paused"),
                    _ => None,
                })
                .collect()
        };
        if states.is_empty() {
            return Ok(Vec::new());
        }
        query.push(("state", states.join(",")));
        let pages: Vec<SandboxDetail> = self.pages("/v2/sandboxes", query, "list").await?;
        Ok(pages
            .iter()
            .map(|d| self.control.info_from(d))
            .filter(|i| filter.matches(i))
            .collect())
    }

    async fn info(&self, id: &str) -> Result<SandboxInfo> {
        let detail = self.control.detail(id, "info").await?;
        Ok(self.control.info_from(&detail))
    }

    async fn snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<sandkit_core::Snapshot>> {
        let mut query: Vec<(&str, String)> = vec![("limit", "100".into())];
        if let Some(id) = sandbox_id {
            query.push(("sandboxID", id.to_string()));
        }
        let page: Vec<sandkit_e2b_protocol::api::SnapshotInfo> =
            self.pages("/snapshots", query, "snapshots").await?;
        Ok(page
            .iter()
            .map(|s| {
                let mut snapshot =
                    sandkit_core::Snapshot::new(&s.snapshot_id, sandbox_id.unwrap_or_default());
                snapshot.names = s.names.clone();
                snapshot
            })
            .collect())
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let path = format!("/templates/{}", sandkit_e2b_protocol::api::path_param(id));
        let r = self
            .control
            .api
            .send(Method::DELETE, &path, &[], None, "delete_snapshot")
            .await?;
        match r.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(err(
                ErrorKind::NotFound,
                "delete_snapshot",
                format!("snapshot {id} doesn't exist (deleted, or never made here)"),
            )
            .with_context("snapshot_id", id)),
            _ => Err(r.error("delete_snapshot")),
        }
    }

    async fn kill(&self, id: &str) -> Result<()> {
        self.control.kill(id).await
    }
}
