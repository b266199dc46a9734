//! [`E2bSandbox`]: one sandbox, through the control plane and its envd.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use sandkit_core::{
    CommandSpec, ErrorKind, FileStore, FsEventStream, Metrics, Process, ProcessInfo, Result,
    Sandbox, SandboxInfo,
};
use sandkit_e2b_protocol::api::{SandboxCreated, SetTimeout};

use sandkit_envd_client::EnvdClient;

use crate::control::{network_config, Control, Defaults};
use crate::error::err;

/// A sandbox on E2B (or an E2B-compatible server).
pub struct E2bSandbox {
    control: Control,
    id: String,
    domain: Option<String>,
    client: EnvdClient,
}

impl E2bSandbox {
    /// `POST /sandboxes/{id}/{route}` with `body`, answered with JSON; a 404 is this sandbox
    /// gone.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        body: serde_json::Value,
        op: &'static str,
    ) -> Result<T> {
        let path = format!("/sandboxes/{}/{route}", self.id);
        let r = self
            .control
            .api
            .send(Method::POST, &path, &[], Some(body), op)
            .await?;
        match r.status {
            s if s.is_success() => r.json(op),
            StatusCode::NOT_FOUND => Err(Control::not_found(&self.id, op)),
            _ => Err(r.error(op)),
        }
    }
}

impl std::fmt::Debug for E2bSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bSandbox")
            .field("id", &self.id)
            .field("envd", &self.client)
            .finish()
    }
}

impl E2bSandbox {
    fn new(
        control: Control,
        id: String,
        domain: Option<String>,
        envd: EnvdClient,
        defaults: Defaults,
    ) -> Self {
        E2bSandbox {
            control,
            id,
            domain,
            client: envd
                .with_defaults(defaults.user, defaults.cwd)
                .with_env(defaults.env),
        }
    }

    /// The sandbox the API answered with, reached through `control`.
    pub(crate) fn from_created(
        control: Control,
        created: &SandboxCreated,
        defaults: Defaults,
    ) -> Result<E2bSandbox> {
        let envd = EnvdClient::with_transport(
            control.envd.clone(),
            control
                .config
                .envd_url(&created.sandbox_id, created.domain.as_deref()),
            created.sandbox_id.clone(),
            created.envd_access_token.clone(),
            control.config.request_timeout,
        );
        Ok(E2bSandbox::new(
            control,
            created.sandbox_id.clone(),
            created.domain.clone(),
            envd,
            defaults,
        ))
    }

    /// Whether the sandbox's envd answers (`GET /health`).
    pub async fn is_running(&self) -> Result<bool> {
        self.client.is_running().await
    }
}

#[async_trait]
impl Sandbox for E2bSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn spawn(&self, spec: CommandSpec) -> Result<Process> {
        self.client.spawn(spec).await
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        self.client.processes().await
    }

    fn files(&self) -> &dyn FileStore {
        self.client.files()
    }

    fn files_as(&self, user: &str) -> Result<Box<dyn FileStore>> {
        Ok(Box::new(self.client.files_as(user)))
    }

    async fn info(&self) -> Result<SandboxInfo> {
        let detail = self.control.detail(&self.id, "info").await?;
        Ok(self.control.info_from(&detail))
    }

    async fn set_network_policy(&self, policy: sandkit_core::NetworkPolicy) -> Result<()> {
        let config = network_config(&policy, "set_network_policy")?;
        if self.control.config.debug {
            return Err(sandkit_core::Error::new(
                ErrorKind::Unsupported,
                "debug mode has no API to set a network policy through",
            )
            .with_operation("set_network_policy"));
        }
        self.control
            .put_secrets(&policy, "set_network_policy")
            .await?;
        let body = serde_json::to_value(sandkit_e2b_protocol::api::NetworkUpdate {
            allow_out: config.allow_out,
            deny_out: config.deny_out,
            dns_servers: config.dns_servers,
            rules: config.rules,
            ..Default::default()
        })
        .expect("json");
        let r = self
            .control
            .api
            .send(
                Method::PUT,
                &format!("/sandboxes/{}/network", self.id),
                &[],
                Some(body),
                "set_network_policy",
            )
            .await?;
        match r.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Control::not_found(&self.id, "set_network_policy")),
            _ => Err(r.error("set_network_policy")),
        }
    }

    async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        if self.control.config.debug {
            return Ok(());
        }
        let body = serde_json::to_value(SetTimeout {
            timeout: timeout.as_secs().max(1) as i64,
        })
        .expect("json");
        let r = self
            .control
            .api
            .send(
                Method::POST,
                &format!("/sandboxes/{}/timeout", self.id),
                &[],
                Some(body),
                "set_timeout",
            )
            .await?;
        match r.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Control::not_found(&self.id, "set_timeout")),
            _ => Err(r.error("set_timeout")),
        }
    }

    async fn kill(&self) -> Result<()> {
        self.control.kill(&self.id).await
    }

    async fn snapshot(&self, name: Option<&str>) -> Result<sandkit_core::Snapshot> {
        let body = serde_json::to_value(sandkit_e2b_protocol::api::SnapshotRequest {
            name: name.map(String::from),
            memory: None,
        })
        .expect("json");
        let info: sandkit_e2b_protocol::api::SnapshotInfo =
            self.post("snapshots", body, "snapshot").await?;
        let mut snapshot = sandkit_core::Snapshot::new(info.snapshot_id, &self.id);
        snapshot.names = info.names;
        Ok(snapshot)
    }

    async fn fork(
        &self,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Box<dyn Sandbox>>>> {
        if !(1..=sandkit_core::MAX_FORKS).contains(&count) {
            return Err(err(
                ErrorKind::InvalidInput,
                "fork",
                format!(
                    "a fork makes 1 to {} sandboxes, not {count}",
                    sandkit_core::MAX_FORKS
                ),
            ));
        }
        let body = serde_json::to_value(sandkit_e2b_protocol::api::ForkRequest {
            timeout: timeout.map(|t| t.as_secs().max(1) as i64),
            count: Some(count as i64),
        })
        .expect("json");
        let results: Vec<sandkit_e2b_protocol::api::ForkResult> =
            self.post("fork", body, "fork").await?;
        // The copies have this sandbox's metadata, its default user and directory with it.
        let metadata = self
            .control
            .detail(&self.id, "fork")
            .await
            .ok()
            .and_then(|d| d.metadata);
        Ok(results
            .into_iter()
            .map(|result| match (result.sandbox, result.error) {
                (Some(created), None) => E2bSandbox::from_created(
                    self.control.clone(),
                    &created,
                    Control::defaults_from(metadata.as_ref()),
                )
                .map(|s| Box::new(s) as Box<dyn Sandbox>),
                (_, Some(e)) => Err(err(
                    crate::error::kind_of_status(e.code),
                    "fork",
                    format!("a copy was not made: {}", e.message),
                )),
                (None, None) => Err(err(
                    ErrorKind::Unexpected,
                    "fork",
                    "the API answered a fork with an entry holding neither a sandbox nor an error",
                )),
            })
            .collect())
    }

    async fn pause(&self) -> Result<()> {
        let r = self
            .control
            .api
            .send(
                Method::POST,
                &format!("/sandboxes/{}/pause", self.id),
                &[],
                Some(serde_json::json!({})),
                "pause",
            )
            .await?;
        match r.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Control::not_found(&self.id, "pause")),
            StatusCode::CONFLICT => Err(err(
                ErrorKind::Conflict,
                "pause",
                "the sandbox is already paused",
            )),
            _ => Err(r.error("pause")),
        }
    }

    async fn watch(&self, path: &str, recursive: bool) -> Result<FsEventStream> {
        self.client.watch(path, recursive).await
    }

    async fn metrics(&self) -> Result<Metrics> {
        self.client.metrics().await
    }

    async fn get_host(&self, port: u16) -> Result<String> {
        Ok(self
            .control
            .config
            .host(&self.id, self.domain.as_deref(), port))
    }
}
