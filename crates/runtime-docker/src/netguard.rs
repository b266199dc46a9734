//! The network guard: what each sandbox may reach, enforced on the engine's host.
//!
//! A container of its own, `<prefix>-netguard`, runs `sandkit-agent netguard` on the host's network
//! with `NET_ADMIN` (and no other capability), from the base image (which has `nft`) with the
//! agent's volume mounted. For each sandbox this backend registers — its bridge, address, MAC
//! and [`NetworkPolicy`] — it keeps nftables rules keyed by that address and MAC, and a
//! transparent proxy that judges HTTP and TLS connections by name when a policy names
//! domains. See the agent's `netguard` module for the rules, and ARCHITECTURE.md § "Network
//! policy" for why it is built this way.
//!
//! The backend registers every sandbox on a bridge network (even with the default policy,
//! which refuses the host and link-local addresses) right after it starts and before the
//! sandbox is handed out; a registration that fails fails the create. It talks to the guard
//! over one attached exec of `sandkit-agent relay` to the guard's control socket, a line each way.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bollard::container::Config;
use bollard::models::{HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::Docker;
use sandkit_core::{ErrorKind, Gauge, NetworkPolicy, Result};
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::error::{err, map};
use crate::inside::{Inside, BIN};
use crate::keeper::{create_helper, keep_running, Channel};

/// The guard's control socket, inside its container.
const CONTROL: &str = "/run/sandkit-netguard.sock";

/// What the guard is told about one sandbox (the agent's `netguard::Entry`).
#[derive(Debug, Serialize)]
struct Entry<'a> {
    id: &'a str,
    bridge: &'a str,
    ip: Ipv4Addr,
    mac: Option<&'a str>,
    policy: &'a NetworkPolicy,
    hosts: &'a BTreeMap<String, IpAddr>,
    /// The values of the secrets the policy's rules name (the policy never serializes them).
    secrets: BTreeMap<&'a str, &'a str>,
}

/// Where a sandbox sits on a bridge network.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub(crate) bridge: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) mac: Option<String>,
}

/// The guard of one engine and label prefix.
pub(crate) struct NetGuard {
    docker: Docker,
    name: String,
    prefix: String,
    image: String,
    inside: Arc<Inside>,
    socket: String,
    channel: Mutex<Option<Channel>>,
    /// Upstream roots (PEM) the guard trusts besides the system's, for request rules.
    trust: Option<String>,
    /// The guard's certificate authority (PEM), once asked for.
    certificate: tokio::sync::OnceCell<String>,
    /// Host-side bridge names of networks, by network name.
    bridges: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for NetGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetGuard")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NetGuard {
    /// A guard run from `image` (which must have `nft`) with the agent of `inside`.
    pub(crate) fn new(
        docker: Docker,
        prefix: &str,
        image: &str,
        inside: Arc<Inside>,
        socket: &str,
        trust: Option<String>,
    ) -> Self {
        NetGuard {
            trust,
            certificate: tokio::sync::OnceCell::new(),
            docker,
            name: format!("{prefix}-netguard"),
            prefix: prefix.to_string(),
            image: image.to_string(),
            inside,
            socket: socket.to_string(),
            channel: Mutex::new(None),
            bridges: Mutex::new(HashMap::new()),
        }
    }

    /// Where container `container` sits on `network`; `None` when that network is not a
    /// bridge (nothing there for the guard to hold).
    pub(crate) async fn place(&self, container: &str, network: &str) -> Result<Option<Place>> {
        let c = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|e| map(e, "network policy", "sandbox"))?;
        let Some(ep) = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
        else {
            return Ok(None);
        };
        let Some(ip) = ep.ip_address.as_deref().and_then(|a| a.parse().ok()) else {
            return Ok(None);
        };
        let Some(bridge) = self.bridge(network).await? else {
            return Ok(None);
        };
        Ok(Some(Place {
            bridge,
            ip,
            mac: ep.mac_address.filter(|m| !m.is_empty()),
        }))
    }

    /// The host-side interface of bridge network `network`, `None` for another driver.
    async fn bridge(&self, network: &str) -> Result<Option<String>> {
        if let Some(b) = self.bridges.lock().await.get(network) {
            return Ok(Some(b.clone()));
        }
        let n = self
            .docker
            .inspect_network::<String>(network, None)
            .await
            .map_err(|e| map(e, "network policy", "network").with_context("network", network))?;
        if n.driver.as_deref() != Some("bridge") {
            return Ok(None);
        }
        let id = n.id.unwrap_or_default();
        let bridge = n
            .options
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
            .unwrap_or_else(|| format!("br-{}", &id[..id.len().min(12)]));
        self.bridges
            .lock()
            .await
            .insert(network.to_string(), bridge.clone());
        Ok(Some(bridge))
    }

    /// Holds sandbox `id` at `place` to `policy`, replacing what was held for it.
    pub(crate) async fn set(
        &self,
        id: &str,
        place: &Place,
        policy: &NetworkPolicy,
        hosts: &BTreeMap<String, IpAddr>,
    ) -> Result<()> {
        let entry = Entry {
            id,
            bridge: &place.bridge,
            ip: place.ip,
            mac: place.mac.as_deref(),
            policy,
            hosts,
            secrets: {
                let named = policy.secret_names();
                policy
                    .secrets
                    .iter()
                    .filter(|(n, _)| named.iter().any(|x| x == n))
                    .collect()
            },
        };
        let json = serde_json::to_vec(&entry)
            .map_err(|e| err(ErrorKind::Unexpected, "network policy", e.to_string()))?;
        let hex: String = json.iter().map(|b| format!("{b:02x}")).collect();
        match self.ask(&format!("set {hex}")).await?.as_str() {
            "ok" => Ok(()),
            other => Err(err(
                ErrorKind::Unavailable,
                "network policy",
                format!(
                    "the network guard did not apply the policy: {}",
                    other.strip_prefix("error ").unwrap_or(other)
                ),
            )),
        }
    }

    /// The policy sandbox `id` is held to, with the values of its rules' secrets; `None` when
    /// it is not held (the default policy).
    pub(crate) async fn policy(&self, id: &str) -> Result<Option<NetworkPolicy>> {
        #[derive(serde::Deserialize)]
        struct Held {
            policy: NetworkPolicy,
            #[serde(default)]
            secrets: BTreeMap<String, String>,
        }
        let reply = self.ask(&format!("get {id}")).await?;
        if reply == "none" {
            return Ok(None);
        }
        let held = crate::pool::unhex(&reply)
            .and_then(|b| serde_json::from_slice::<Held>(&b).ok())
            .ok_or_else(|| {
                err(
                    ErrorKind::Unavailable,
                    "network policy",
                    format!("the network guard answered what it holds with {reply:?}"),
                )
            })?;
        let mut policy = held.policy;
        policy.secrets = held.secrets.iter().collect();
        Ok(Some(policy))
    }

    /// The certificate (PEM) of the authority the guard signs the certificates of domains
    /// with request rules with; sandboxes with rules trust it ([`crate::trust`]).
    pub(crate) async fn certificate(&self) -> Result<String> {
        self.certificate
            .get_or_try_init(|| async {
                let reply = self.ask("ca").await?;
                crate::pool::unhex(&reply)
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|pem| pem.contains("BEGIN CERTIFICATE"))
                    .ok_or_else(|| {
                        err(
                            ErrorKind::Unavailable,
                            "network policy",
                            format!(
                                "the network guard did not give its certificate authority                                  ({reply:?}); request rules need a guard of this build"
                            ),
                        )
                    })
            })
            .await
            .cloned()
    }

    /// What the guard holds now, for an operator: `None` when it is not running here (it is
    /// never started to answer this).
    pub(crate) async fn gauges(&self) -> Vec<Gauge> {
        if self.channel.lock().await.is_none() {
            return vec![Gauge::new(
                "guard_up",
                "Whether this runtime's network guard answers (it starts with the first policy).",
                0.0,
            )];
        }
        #[derive(serde::Deserialize)]
        struct Status {
            sandboxes: u64,
            connections: u64,
            failed: u64,
        }
        let status = self
            .ask("status")
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<Status>(&r).ok());
        let mut gauges = vec![Gauge::new(
            "guard_up",
            "Whether this runtime's network guard answers (it starts with the first policy).",
            if status.is_some() { 1.0 } else { 0.0 },
        )];
        if let Some(s) = status {
            gauges.extend([
                Gauge::new(
                    "guard_sandboxes",
                    "Sandboxes the network guard holds to a policy.",
                    s.sandboxes as f64,
                ),
                Gauge::new(
                    "guard_connections",
                    "Connections open through the network guard's proxy.",
                    s.connections as f64,
                ),
                Gauge::new(
                    "guard_failed_connections",
                    "Connections through the guard's proxy that ended in an error, since it started.",
                    s.failed as f64,
                ),
            ]);
        }
        gauges
    }

    /// Stops holding sandbox `id` (it is gone). Nothing to do when the guard is not running.
    pub(crate) async fn clear(&self, id: &str) {
        if self.channel.lock().await.is_none() {
            return;
        }
        if let Err(e) = self.ask(&format!("clear {id}")).await {
            debug!(error = %e, sandbox = id, "the network guard did not forget a sandbox");
        }
    }

    /// One request, starting the guard and opening the channel when needed.
    async fn ask(&self, request: &str) -> Result<String> {
        let mut channel = self.channel.lock().await;
        let mut last = String::new();
        for _ in 0..3 {
            if channel.is_none() {
                self.ensure().await?;
                let cmd = vec![BIN.into(), "relay".into(), CONTROL.into()];
                let mut c = Channel::open(&self.docker, &self.name, cmd).await?;
                match c.ask("probe").await {
                    Ok(a) if a.starts_with("ok") => {
                        // The roots this backend adds, told to every guard it talks to.
                        if let Some(pem) = &self.trust {
                            let hex: String =
                                pem.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
                            match c.ask(&format!("trust {hex}")).await {
                                Ok(a) if a == "ok" => {}
                                Ok(a) => {
                                    return Err(err(
                                        ErrorKind::InvalidInput,
                                        "network policy",
                                        format!(
                                            "the network guard refused the egress trust roots: {}",
                                            a.strip_prefix("error ").unwrap_or(&a)
                                        ),
                                    ))
                                }
                                Err(e) => {
                                    last = e;
                                    continue;
                                }
                            }
                        }
                        *channel = Some(c)
                    }
                    Ok(a) => last = a,
                    Err(e) => last = e,
                }
            }
            if let Some(c) = channel.as_mut() {
                match tokio::time::timeout(std::time::Duration::from_secs(20), c.ask(request)).await
                {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = "no answer in 20 s".into(),
                }
                *channel = None;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        Err(err(
            ErrorKind::Unavailable,
            "network policy",
            format!(
                "the network guard ({}) does not answer ({last}); see `docker logs {}`",
                self.name, self.name
            ),
        ))
    }

    async fn ensure(&self) -> Result<()> {
        self.inside.ensure().await?;
        // A guard running another build of the agent is replaced: it reloads the same state.
        if let Ok(c) = self.docker.inspect_container(&self.name, None).await {
            let runs = c
                .config
                .and_then(|c| c.labels)
                .and_then(|mut l| l.remove(&format!("{}.netguard", self.prefix)));
            if runs.as_deref() != Some(self.inside.volume()) {
                info!(guard = %self.name, "replacing a network guard of another agent build");
                let _ = self
                    .docker
                    .remove_container(
                        &self.name,
                        Some(bollard::container::RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
        keep_running(&self.docker, &self.name, "the network guard", || {
            self.make()
        })
        .await
    }

    async fn make(&self) -> Result<()> {
        if self.docker.inspect_image(&self.image).await.is_err() {
            return Err(err(
                ErrorKind::NotFound,
                "network policy",
                format!(
                    "the network guard runs from the image {} (it needs `nft`), which the engine \
                     does not have; build it with `cargo xtask image`, or set [docker] \
                     network_guard = false to run sandboxes without network rules",
                    self.image
                ),
            ));
        }
        let mut labels = HashMap::new();
        labels.insert(
            format!("{}.netguard", self.prefix),
            self.inside.volume().to_string(),
        );
        let config = Config {
            image: Some(self.image.clone()),
            entrypoint: Some(vec![
                BIN.into(),
                "netguard".into(),
                "--prefix".into(),
                self.prefix.clone(),
                "--name".into(),
                self.name.clone(),
            ]),
            cmd: Some(vec![]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    format!("{}:/var/run/docker.sock", self.socket),
                    format!("{}-netguard-state:/state", self.prefix),
                ]),
                mounts: Some(vec![self.inside.mount()]),
                network_mode: Some("host".into()),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(vec!["NET_ADMIN".into()]),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: None,
                }),
                memory: Some(256 << 20),
                pids_limit: Some(64),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        create_helper(&self.docker, &self.name, config, "the network guard").await
    }
}
