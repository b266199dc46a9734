//! [`CapabilityLayer`]: what a backend cannot do is refused before it is asked, the same way
//! for every backend.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Layer, Next, Operation};
use crate::{Capabilities, Error, ErrorKind, NetworkMode, Result};

/// Checks each call against the backend's [`Capabilities`] before the backend sees it:
///
/// - a `create` whose [`SandboxSpec`](crate::SandboxSpec) asks for mounts, resource limits, a
///   network mode other than bridge or none, a network policy, fixed hosts entries or
///   auto-pause the backend does not have;
/// - a `spawn` on a pseudo-terminal where there are none;
/// - the calls of an optional capability (`pause`, `watch`, `metrics`, `set_network_policy`,
///   snapshots, volumes) where the backend lacks it.
///
/// Each is refused with [`ErrorKind::Unsupported`] naming the backend, the field or call, and
/// the capability; nothing is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapabilityLayer;

/// What `op` asks of the backend that `caps` lacks, as (what, capability).
fn missing(op: &Operation<'_>, caps: Capabilities) -> Option<(&'static str, &'static str)> {
    if let Some(spec) = op.spec() {
        let r = &spec.resources;
        let checks = [
            (!spec.mounts.is_empty() && !caps.mounts, "mounts", "mounts"),
            (
                (r.cpus.is_some() || r.memory_mb.is_some() || r.pids.is_some() || r.gpus.is_some())
                    && !caps.resource_limits,
                "resource limits (cpus, memory_mb, pids, gpus)",
                "resource_limits",
            ),
            (
                matches!(
                    &spec.network,
                    Some(NetworkMode::Host | NetworkMode::Named(_))
                ) && !caps.network_modes,
                "a network mode other than bridge or none",
                "network_modes",
            ),
            (
                spec.network_policy.is_some() && !caps.network_policy,
                "a network policy",
                "network_policy",
            ),
            (
                !spec.hosts.is_empty() && !caps.hosts,
                "fixed hosts entries",
                "hosts",
            ),
            (spec.auto_pause && !caps.pause, "auto-pause", "pause"),
        ];
        if let Some((_, what, cap)) = checks.into_iter().find(|(lacks, _, _)| *lacks) {
            return Some((what, cap));
        }
    }
    if op.command().is_some_and(|c| c.pty.is_some()) && !caps.pty {
        return Some(("commands on a pseudo-terminal", "pty"));
    }
    let (has, cap) = match op.name() {
        "pause" => (caps.pause, "pause"),
        "watch" => (caps.watch, "watch"),
        "metrics" => (caps.metrics, "metrics"),
        "set_network_policy" => (caps.network_policy, "network_policy"),
        "snapshot" | "fork" | "snapshots" | "delete_snapshot" => (caps.snapshots, "snapshots"),
        "create_volume" | "volumes" | "remove_volume" => (caps.volumes, "volumes"),
        _ => (true, ""),
    };
    (!has).then_some((op.name(), cap))
}

impl Layer for CapabilityLayer {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Operation<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        match missing(op, op.capabilities()) {
            None => next.run(),
            Some((what, capability)) => {
                let backend = op.backend();
                let mut error = Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the {backend} backend cannot do {what} (Capabilities::{capability} is \
                         false); leave it out, or choose a backend that can"
                    ),
                )
                .with_backend(backend)
                .with_operation(op.name());
                if let Some(id) = op.sandbox_id() {
                    error = error.with_context("sandbox_id", id);
                }
                futures_util::future::ready(Err(error)).boxed()
            }
        }
    }
}
