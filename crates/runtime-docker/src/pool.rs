//! The warm pool (`[docker] pool = N`): N sandboxes of the default image made ahead, each with
//! its agent connection open, so that `create` takes one in about a millisecond.
//!
//! - **What a pooled sandbox was asked to be** (metadata, env, user, directory) cannot go in
//!   its labels, which are fixed when the container is made, and must not be kept inside it
//!   (the sandbox would control its own metadata): the deadline keeper holds it, as a *claim*
//!   beside the sandbox's deadline. `list`, `info` and `connect` read it from there; a pooled
//!   sandbox not yet claimed is seen by none of them.
//! - **Which specs it serves**: the default template, with no mounts, ports, network or
//!   resources of their own (those are fixed when the container is made). Anything else is
//!   made fresh. The pool needs the agent inside sandboxes and the keeper.
//! - **Time to live**: a ready sandbox lives [`POOL_TTL`], extended every
//!   [`POOL_TTL`]` / 4` by the process that keeps the pool; once claimed, it has the time to
//!   live of its spec, held by the keeper like any other.
//! - **When the process goes away**: [`DockerRuntime::drain_pool`] kills the ready ones at
//!   once; after a crash the keeper kills them when their [`POOL_TTL`] runs out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use sandkit_core::{Sandbox, SandboxSpec, SandboxState};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::labels::epoch;
use crate::runtime::{DockerRuntime, Settings};
use crate::sandbox::DockerSandbox;

/// How long a ready, unclaimed sandbox lives without its pool.
pub const POOL_TTL: Duration = Duration::from_secs(120);

/// What a pooled sandbox was claimed as.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) user: Option<String>,
    pub(crate) cwd: Option<String>,
}

impl Claim {
    pub(crate) fn to_hex(&self) -> String {
        serde_json::to_vec(self)
            .expect("json")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) fn from_hex(hex: &str) -> Option<Claim> {
        serde_json::from_slice(&unhex(hex)?).ok()
    }
}

/// Bytes from hexadecimal, as the keeper and the network guard speak them.
pub(crate) fn unhex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The ready sandboxes.
#[derive(Debug)]
pub(crate) struct Pool {
    size: usize,
    ready: Mutex<VecDeque<DockerSandbox>>,
    /// Sandboxes being made for the pool.
    making: Mutex<usize>,
    keepalive: std::sync::Once,
    /// Set by `drain_pool`: nothing more is made, and what is being made is killed.
    drained: std::sync::atomic::AtomicBool,
    /// Held while a sandbox is taken and claimed, and while the ready ones are kept alive, so
    /// that the keepalive never writes the pool's deadline over a claimed sandbox's.
    upkeep: tokio::sync::Mutex<()>,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Self {
        Pool {
            size,
            ready: Mutex::new(VecDeque::new()),
            making: Mutex::new(0),
            keepalive: std::sync::Once::new(),
            drained: std::sync::atomic::AtomicBool::new(false),
            upkeep: tokio::sync::Mutex::new(()),
        }
    }
}

/// One sandbox being made for the pool: counted in `Pool::making` until dropped.
struct Making(Arc<Pool>);

impl Drop for Making {
    fn drop(&mut self) {
        let mut making = self.0.making.lock().unwrap_or_else(|p| p.into_inner());
        *making = making.saturating_sub(1);
    }
}

/// Whether the pool can serve `spec`: nothing that is fixed when a container is made.
pub(crate) fn serves(spec: &SandboxSpec, default_image: &str) -> bool {
    let r = &spec.resources;
    spec.template
        .as_deref()
        .is_none_or(|t| t.is_empty() || t == "base" || t == default_image)
        && spec.mounts.is_empty()
        && spec.ports.is_empty()
        && spec.network.is_none()
        && spec.network_policy.is_none()
        && spec.hosts.is_empty()
        && !spec.auto_pause
        && r.cpus.is_none()
        && r.memory_mb.is_none()
        && r.pids.is_none()
        && r.gpus.is_none()
}

impl DockerRuntime {
    fn pool(&self) -> Option<&Arc<Pool>> {
        self.settings.pool.as_ref()
    }

    /// Takes a ready sandbox for `spec`, claims it, and starts a refill. `None`: make one.
    pub(crate) async fn take_pooled(&self, spec: &SandboxSpec) -> Option<DockerSandbox> {
        let pool = self.pool()?;
        self.start_pool();
        if !serves(spec, &self.settings.image) {
            return None;
        }
        let keeper = self.settings.keeper.clone()?;
        let claim = Claim {
            metadata: spec.metadata.clone(),
            env: spec.env.clone(),
            user: spec.user.clone(),
            cwd: spec.cwd.clone(),
        };
        // Held as labels would be: a claim no larger than a fresh sandbox's labels may be.
        let bytes: usize = claim.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > crate::runtime::MAX_LABEL_BYTES {
            return None;
        }
        let _upkeep = pool.upkeep.lock().await;
        let taken = pool.ready.lock().unwrap().pop_front();
        self.refill();
        let sandbox = taken?;
        let ttl = spec.timeout.unwrap_or(self.settings.ttl);
        let claimed = async {
            keeper.claim(sandbox.id(), &claim.to_hex()).await?;
            keeper
                .set_deadline(
                    sandbox.id(),
                    epoch(SystemTime::now() + ttl).max(epoch(SystemTime::now()) + 1),
                )
                .await
        }
        .await;
        match claimed {
            Ok(()) => Some(sandbox.claimed(&claim)),
            Err(e) => {
                warn!(error = %e, "could not claim a pooled sandbox; making one");
                let _ = self
                    .remove_sandbox(sandbox.id(), SandboxState::Running)
                    .await;
                None
            }
        }
    }

    /// Starts the pool's upkeep once: fills it and keeps the ready sandboxes alive.
    pub(crate) fn start_pool(&self) {
        let Some(pool) = self.pool() else { return };
        pool.keepalive.call_once(|| {
            let (docker, settings) = (self.docker.clone(), Arc::downgrade(&self.settings));
            tokio::spawn(keep_ready_alive(docker, settings));
        });
        self.refill();
    }

    /// Makes sandboxes until the pool (with those being made) is full.
    fn refill(&self) {
        let Some(pool) = self.pool() else { return };
        if pool.drained.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let missing = {
            let ready = pool.ready.lock().unwrap().len();
            let mut making = pool.making.lock().unwrap();
            let missing = pool.size.saturating_sub(ready + *making);
            *making += missing;
            missing
        };
        for _ in 0..missing {
            let (docker, settings) = (self.docker.clone(), Arc::downgrade(&self.settings));
            let counted = Making(pool.clone());
            tokio::spawn(async move {
                // However this task ends (made, failed, cancelled), it is no longer making.
                let _counted = counted;
                let Some(rt) = upgrade(&docker, &settings) else {
                    return;
                };
                let pool = rt.pool().expect("a pool").clone();
                let made = rt.make_pooled().await;
                match made {
                    Ok(sb) if pool.drained.load(std::sync::atomic::Ordering::SeqCst) => {
                        let _ = rt.remove_sandbox(sb.id(), SandboxState::Running).await;
                    }
                    Ok(sb) => {
                        debug!(sandbox_id = %sb.id(), "a sandbox is ready in the pool");
                        pool.ready.lock().unwrap().push_back(sb);
                    }
                    Err(e) => warn!(error = %e, "could not make a sandbox for the pool"),
                }
            });
        }
    }

    /// The warm pool's depth, for an operator (none without a pool).
    pub(crate) fn pool_gauges(&self) -> Vec<sandkit_core::Gauge> {
        let Some(pool) = self.pool() else {
            return Vec::new();
        };
        let ready = pool.ready.lock().unwrap_or_else(|e| e.into_inner()).len();
        let making = *pool.making.lock().unwrap_or_else(|e| e.into_inner());
        vec![
            sandkit_core::Gauge::new(
                "pool_size",
                "Sandboxes the warm pool keeps ready.",
                pool.size as f64,
            ),
            sandkit_core::Gauge::new(
                "pool_ready",
                "Sandboxes ready in the warm pool now.",
                ready as f64,
            ),
            sandkit_core::Gauge::new(
                "pool_making",
                "Sandboxes being made for the warm pool now.",
                making as f64,
            ),
        ]
    }

    /// How many sandboxes are ready in the warm pool now (0 without a pool).
    pub fn pool_ready(&self) -> usize {
        self.pool()
            .map(|p| p.ready.lock().unwrap_or_else(|e| e.into_inner()).len())
            .unwrap_or(0)
    }

    /// Ends the pool: kills its ready sandboxes, and those being made as they are done (a
    /// process that ends should call it, or `Runtime::shutdown`, which does; otherwise they end
    /// with their [`POOL_TTL`]). Claimed
    /// sandboxes are not touched; later creates make fresh sandboxes.
    pub async fn drain_pool(&self) {
        let Some(pool) = self.pool() else { return };
        pool.drained
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let ready: Vec<DockerSandbox> = pool.ready.lock().unwrap().drain(..).collect();
            for sb in ready {
                let _ = self.remove_sandbox(sb.id(), SandboxState::Running).await;
            }
            if *pool.making.lock().unwrap() == 0 || std::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn upgrade(docker: &bollard::Docker, settings: &Weak<Settings>) -> Option<DockerRuntime> {
    Some(DockerRuntime {
        docker: docker.clone(),
        settings: settings.upgrade()?,
    })
}

/// Extends the ready sandboxes' time to live while the runtime that keeps them is alive.
async fn keep_ready_alive(docker: bollard::Docker, settings: Weak<Settings>) {
    loop {
        tokio::time::sleep(POOL_TTL / 4).await;
        let Some(rt) = upgrade(&docker, &settings) else {
            return;
        };
        let (Some(pool), Some(keeper)) = (rt.pool(), rt.settings.keeper.as_ref()) else {
            return;
        };
        let _upkeep = pool.upkeep.lock().await;
        let ids: Vec<String> = pool
            .ready
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.id().to_string())
            .collect();
        let until = epoch(SystemTime::now() + POOL_TTL);
        for id in ids {
            if let Err(e) = keeper.set_deadline(&id, until).await {
                debug!(sandbox_id = %id, error = %e, "could not extend a pooled sandbox");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_through_hex() {
        let c = Claim {
            metadata: BTreeMap::from([("k".into(), "v é".into())]),
            env: BTreeMap::from([("A".into(), "1".into())]),
            user: Some("user".into()),
            cwd: None,
        };
        assert_eq!(Claim::from_hex(&c.to_hex()), Some(c));
        assert_eq!(Claim::from_hex("zz"), None);
    }

    #[test]
    fn only_specs_without_container_settings_are_served() {
        let d = "sandkit-base:bookworm";
        assert!(serves(
            &SandboxSpec::new().metadata("a", "b").env("X", "1"),
            d
        ));
        assert!(serves(&SandboxSpec::new().template(d), d));
        assert!(!serves(&SandboxSpec::new().template("other"), d));
        assert!(!serves(&SandboxSpec::new().port(80), d));
    }
}
