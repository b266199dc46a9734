//! [`CapabilityLayer`]: what a backend cannot do is refused before it is asked, the same way
//! for every backend.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Call, Layer, Next};
use crate::{Capabilities, Error, ErrorKind, NetworkMode, Operation, Result, SandboxSpec};

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

/// What `spec` asks of a backend that `caps` lacks, as (what, capability).
fn spec_lacks(spec: &SandboxSpec, caps: Capabilities) -> Option<(&'static str, &'static str)> {
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
            spec.network_policy
                .as_ref()
                .is_some_and(|p| !p.rules.is_empty())
                && !caps.request_rules,
            "request rules in a network policy",
            "request_rules",
        ),
        (
            spec.network_policy
                .as_ref()
                .is_some_and(|p| p.egress_proxy.is_some())
                && !caps.egress_proxy,
            "an egress proxy in a network policy",
            "egress_proxy",
        ),
        (
            !spec.hosts.is_empty() && !caps.hosts,
            "fixed hosts entries",
            "hosts",
        ),
        (spec.auto_pause && !caps.pause, "auto-pause", "pause"),
    ];
    checks
        .into_iter()
        .find(|(lacks, _, _)| *lacks)
        .map(|(_, what, cap)| (what, cap))
}

/// What `op` asks of the backend that `caps` lacks, as (what, capability).
fn missing(op: &Call<'_>, caps: Capabilities) -> Option<(&'static str, &'static str)> {
    if let Some(lacks) = op.spec().and_then(|spec| spec_lacks(spec, caps)) {
        return Some(lacks);
    }
    if op.command().is_some_and(|c| c.pty.is_some()) && !caps.pty {
        return Some(("commands on a pseudo-terminal", "pty"));
    }
    let (has, cap) = match op.operation() {
        Operation::Pause => (caps.pause, "pause"),
        Operation::Watch => (caps.watch, "watch"),
        Operation::Metrics => (caps.metrics, "metrics"),
        Operation::SetNetworkPolicy => (caps.network_policy, "network_policy"),
        Operation::Snapshot
        | Operation::Fork
        | Operation::Snapshots
        | Operation::DeleteSnapshot => (caps.snapshots, "snapshots"),
        Operation::CreateVolume | Operation::Volumes | Operation::RemoveVolume => {
            (caps.volumes, "volumes")
        }
        _ => (true, ""),
    };
    (!has).then_some((op.operation().as_str(), cap))
}

/// The refusal of `what`, which needs `capability`.
fn refusal(backend: &'static str, operation: &'static str, what: &str, capability: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "the {backend} backend, as configured, cannot do {what} (Capabilities::{capability} \
             is false); leave it out, or configure or choose a backend that can"
        ),
    )
    .with_backend(backend)
    .with_operation(operation)
}

/// Refuses a spec that asks for what `capabilities` lack, as [`CapabilityLayer`] does. Backends
/// call it too at the start of `create`, so that one used without the layers never makes a
/// sandbox more open than its spec asked (a network policy or mounts silently dropped).
///
/// ```
/// use sandkit_core::{layer::check_spec, Capabilities, ErrorKind, SandboxSpec};
///
/// let spec = SandboxSpec::new().add_host("db", "10.0.0.9".parse().unwrap());
/// let e = check_spec("mine", Capabilities::none(), &spec).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Unsupported);
/// assert!(check_spec("mine", Capabilities::all(), &spec).is_ok());
/// ```
pub fn check_spec(
    backend: &'static str,
    capabilities: Capabilities,
    spec: &SandboxSpec,
) -> Result<()> {
    match spec_lacks(spec, capabilities) {
        None => Ok(()),
        Some((what, capability)) => Err(refusal(backend, "create", what, capability)),
    }
}

impl Layer for CapabilityLayer {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Call<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        match missing(op, op.capabilities()) {
            None => next.run(),
            Some((what, capability)) => {
                let mut error = refusal(op.backend(), op.operation().as_str(), what, capability);
                if let Some(id) = op.sandbox_id() {
                    error = error.with_context("sandbox_id", id);
                }
                futures_util::future::ready(Err(error)).boxed()
            }
        }
    }
}
