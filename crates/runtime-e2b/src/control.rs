//! [`Control`]: the control plane as runtime and sandboxes share it: the API, the settings,
//! how envd is reached, and what a sandbox's answers mean.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use reqwest::{Method, StatusCode};
use sandkit_core::{ErrorKind, Result, SandboxInfo, SandboxState};
use sandkit_e2b_protocol::api::SandboxDetail;
use sandkit_e2b_protocol::json::parse_rfc3339;

use crate::api::Api;
use crate::config::E2bConfig;
use crate::envd_url::UrlTransport;
use crate::error::{err, BACKEND};

/// Metadata keys this backend keeps for itself (defaults E2B has no field for); hidden from
/// `info`/`list`.
pub(crate) const CWD_KEY: &str = "sandkit.cwd";
pub(crate) const USER_KEY: &str = "sandkit.user";

/// Defaults for commands that do not name their own (kept in the sandbox's metadata: E2B has no
/// field for them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Defaults {
    pub(crate) cwd: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) env: BTreeMap<String, String>,
}

/// What the runtime and each of its sandboxes hold: one API client, one envd transport.
#[derive(Clone)]
pub(crate) struct Control {
    pub(crate) config: Arc<E2bConfig>,
    pub(crate) api: Api,
    /// How every sandbox's envd is reached.
    pub(crate) envd: Arc<UrlTransport>,
}

/// A policy as E2B's `network` lists; E2B always refuses the host and link-local addresses,
/// so a policy that allows them cannot be held there.
pub(crate) fn network_config(
    policy: &sandkit_core::NetworkPolicy,
    op: &'static str,
) -> Result<sandkit_e2b_protocol::api::NetworkConfig> {
    // A secret a rule names and the policy does not hold is the server's own (made with its
    // Secret API): resolved there.
    let mut checked = policy.clone();
    for name in checked.secret_names() {
        if !checked.secrets.holds(&name) {
            checked.secrets.unset(&name);
        }
    }
    checked.validate()?;
    if policy.allow_host || policy.allow_link_local {
        return Err(err(
            ErrorKind::Unsupported,
            op,
            "E2B sandboxes cannot be allowed to reach the host or link-local addresses \
             (allow_host, allow_link_local)",
        ));
    }
    Ok(sandkit_e2b_protocol::api::NetworkConfig {
        allow_out: Some(policy.allow_out.clone()),
        deny_out: Some(policy.deny_out.clone()),
        dns_servers: policy.dns_servers.clone(),
        rules: (!policy.rules.is_empty()).then(|| {
            policy
                .rules
                .iter()
                .map(|(domain, rules)| {
                    let rules = rules
                        .iter()
                        .map(|r| sandkit_e2b_protocol::api::NetworkRule {
                            transform: Some(sandkit_e2b_protocol::api::NetworkTransform {
                                headers: Some(r.headers.clone()),
                            }),
                        })
                        .collect();
                    (domain.clone(), rules)
                })
                .collect()
        }),
        ..Default::default()
    })
}

/// `s` as one path segment (every byte but unreserved ones percent-encoded).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hidden(key: &str) -> bool {
    key == CWD_KEY || key == USER_KEY
}

impl Control {
    /// Keeps the secrets `policy` holds values for on the server (its Secret API: created, or
    /// a new version when one of that name exists), where its rules name them.
    pub(crate) async fn put_secrets(
        &self,
        policy: &sandkit_core::NetworkPolicy,
        op: &'static str,
    ) -> Result<()> {
        let named = policy.secret_names();
        for (name, value) in policy
            .secrets
            .iter()
            .filter(|(n, _)| named.iter().any(|x| x == n))
        {
            let body = serde_json::json!({ "name": name, "value": value });
            let r = self
                .api
                .send(Method::POST, "/secrets", &[], Some(body), op)
                .await?;
            if r.status.is_success() {
                continue;
            }
            if r.status != StatusCode::CONFLICT {
                return Err(r.error(op));
            }
            let body = serde_json::json!({ "value": value });
            let r = self
                .api
                .send(
                    Method::POST,
                    &format!("/secrets/{}", encode(name)),
                    &[],
                    Some(body),
                    op,
                )
                .await?;
            if !r.status.is_success() {
                return Err(r.error(op));
            }
        }
        Ok(())
    }

    pub(crate) fn not_found(id: &str, op: &'static str) -> sandkit_core::Error {
        err(
            ErrorKind::NotFound,
            op,
            format!(
                "sandbox {id} doesn't exist (killed, expired, or not visible with this API key)"
            ),
        )
    }

    pub(crate) async fn detail(&self, id: &str, op: &'static str) -> Result<SandboxDetail> {
        let r = self
            .api
            .send(Method::GET, &format!("/sandboxes/{id}"), &[], None, op)
            .await?;
        match r.status {
            s if s.is_success() => r.json(op),
            StatusCode::NOT_FOUND => Err(Self::not_found(id, op)),
            _ => Err(r.error(op)),
        }
    }

    pub(crate) fn info_from(&self, d: &SandboxDetail) -> SandboxInfo {
        let mut info = SandboxInfo::new(
            &d.sandbox_id,
            d.alias.clone().unwrap_or_else(|| d.template_id.clone()),
            BACKEND,
        );
        info.metadata = d
            .metadata
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !hidden(k))
            .collect();
        info.state = if d.state == "paused" {
            SandboxState::Paused
        } else {
            SandboxState::Running
        };
        info.started_at = parse_rfc3339(&d.started_at).unwrap_or(SystemTime::UNIX_EPOCH);
        info.expires_at = parse_rfc3339(&d.end_at);
        info
    }

    pub(crate) fn defaults_from(metadata: Option<&BTreeMap<String, String>>) -> Defaults {
        Defaults {
            cwd: metadata.and_then(|m| m.get(CWD_KEY)).cloned(),
            user: metadata.and_then(|m| m.get(USER_KEY)).cloned(),
            ..Default::default()
        }
    }

    pub(crate) async fn kill(&self, id: &str) -> Result<()> {
        if self.config.debug {
            return Ok(());
        }
        let r = self
            .api
            .send(
                Method::DELETE,
                &format!("/sandboxes/{id}"),
                &[],
                None,
                "kill",
            )
            .await?;
        match r.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Control::not_found(id, "kill")),
            _ => Err(r.error("kill")),
        }
    }
}
