//! E2B's network options — `network` and `allow_internet_access` on create, `PUT
//! /sandboxes/{id}/network` — as the backend's [`NetworkPolicy`]. What cannot be honoured is
//! refused with `400` naming it, never dropped: a dropped rule leaves a sandbox more open than
//! asked.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use sandkit_core::{EgressProxy, NetworkPolicy, RequestRule, ALL_TRAFFIC};
use sandkit_e2b_protocol::api::{EgressProxyConfig, NetworkConfig, NetworkRule, NetworkUpdate};

use crate::caller::Caller;
use crate::http::{api_error, from_error, parse};

/// Hidden metadata: the network configuration a sandbox was made with (JSON), reported by
/// `GET /sandboxes/{id}` until a `PUT .../network` replaces it.
pub(crate) const NETWORK_KEY: &str = "sandkit.e2b.network";
/// Hidden metadata: `0` when the sandbox was made with `allow_internet_access=false`.
pub(crate) const INTERNET_KEY: &str = "sandkit.e2b.internet";

/// Why the backend cannot hold `policy`'s rules or egress proxy, if it cannot: refused, never
/// ignored.
pub(crate) fn unsupported(state: &Caller, policy: &NetworkPolicy) -> Option<&'static str> {
    let caps = state.runtime.capabilities();
    if !policy.rules.is_empty() && !caps.request_rules {
        return Some(
            "network.rules cannot be applied by this server's backend (on Docker: it needs the \
             network guard), so they are refused rather than ignored",
        );
    }
    if policy.egress_proxy.is_some() && !caps.egress_proxy {
        return Some(
            "network.egressProxy cannot be applied by this server's backend (on Docker: it \
             needs the network guard), so it is refused rather than ignored",
        );
    }
    None
}

/// What a create's `network` asks for.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Asked {
    /// The egress policy; `None` when it asks nothing beyond the defaults.
    pub(crate) policy: Option<NetworkPolicy>,
    /// `allowPublicTraffic=false`: the ports need the traffic access token.
    pub(crate) private_ports: bool,
    /// `maskRequestHost`.
    pub(crate) mask: Option<String>,
}

/// What a create asks for. `Err` is the `400` message.
pub(crate) fn from_create(
    network: Option<&NetworkConfig>,
    internet: Option<bool>,
) -> Result<Asked, String> {
    let Some(n) = network else {
        return Ok(Asked::default());
    };
    refuse_unsupported(&n.other)?;
    let mask = n.mask_request_host.clone().filter(|m| !m.is_empty());
    if let Some(m) = &mask {
        let bad = |c: char| matches!(c, '/' | ' ' | '\r' | '\n' | '@' | '?' | '#');
        if !m.is_ascii() || m.contains(bad) {
            return Err(format!("mask request host is not valid: {m}"));
        }
    }
    let asked = Asked {
        policy: None,
        private_ports: n.allow_public_traffic == Some(false),
        mask,
    };
    let allow = n.allow_out.clone().unwrap_or_default();
    let mut deny = n.deny_out.clone().unwrap_or_default();
    let rules = request_rules(n.rules.as_ref())?;
    let proxy = egress_proxy(n.egress_proxy.as_ref())?;
    if allow.is_empty() && deny.is_empty() && rules.is_empty() && proxy.is_none() {
        return Ok(asked);
    }
    // As E2B: no internet keeps the allow list and denies everything else.
    if internet == Some(false) {
        deny = vec![ALL_TRAFFIC.to_string()];
    }
    let mut policy = NetworkPolicy::new().allow_out(allow).deny_out(deny);
    policy.dns_servers = n.dns_servers.clone();
    policy.rules = rules;
    policy.egress_proxy = proxy;
    Ok(Asked {
        policy: Some(checked(policy)?),
        ..asked
    })
}

/// The policy a `PUT .../network` sets: the whole policy, fields left out cleared.
pub(crate) fn from_update(u: &NetworkUpdate) -> Result<NetworkPolicy, String> {
    refuse_unsupported(&u.other)?;
    let mut deny = u.deny_out.clone().unwrap_or_default();
    if u.allow_internet_access == Some(false) {
        deny = vec![ALL_TRAFFIC.to_string()];
    }
    let mut policy = NetworkPolicy::new()
        .allow_out(u.allow_out.clone().unwrap_or_default())
        .deny_out(deny);
    policy.dns_servers = u.dns_servers.clone();
    policy.rules = request_rules(u.rules.as_ref())?;
    policy.egress_proxy = egress_proxy(u.egress_proxy.as_ref())?;
    checked(policy)
}

/// `network.rules` as request rules: each rule's `transform.headers`, in order.
fn request_rules(
    rules: Option<&BTreeMap<String, Vec<NetworkRule>>>,
) -> Result<BTreeMap<String, Vec<RequestRule>>, String> {
    let mut out = BTreeMap::new();
    for (domain, list) in rules.into_iter().flatten() {
        let mapped: Vec<RequestRule> = list
            .iter()
            .map(|r| {
                let headers = r.transform.as_ref().and_then(|t| t.headers.clone());
                headers
                    .into_iter()
                    .flatten()
                    .fold(RequestRule::new(), |rule, (k, v)| rule.header(k, v))
            })
            .collect();
        if out
            .insert(domain.trim().to_ascii_lowercase(), mapped)
            .is_some()
        {
            return Err(format!("network.rules names {domain:?} twice"));
        }
    }
    Ok(out)
}

/// Whether the policy is structurally valid. Secrets are checked once filled: a name with no
/// secret is held unset (the request fails, as on E2B, where a placeholder is resolved at
/// egress).
fn checked(policy: NetworkPolicy) -> Result<NetworkPolicy, String> {
    let mut probe = policy.clone();
    for name in probe.secret_names() {
        probe.secrets.unset(&name);
    }
    probe.validate().map_err(|e| e.message().to_string())?;
    Ok(policy)
}

/// `network.egressProxy` as the policy's egress proxy.
fn egress_proxy(p: Option<&EgressProxyConfig>) -> Result<Option<EgressProxy>, String> {
    let Some(p) = p else {
        return Ok(None);
    };
    let mut proxy = EgressProxy::new(p.address.clone());
    proxy.username = p.username.clone();
    proxy.password = p.password.clone();
    match &p.tls {
        Some(t) if t.enabled => {
            proxy = proxy.tls(t.server_name.clone(), t.ca_cert.clone());
        }
        Some(t) if t.server_name.is_some() || t.ca_cert.is_some() => {
            return Err(
                "network.egressProxy.tls: when enabled is false, no other field may be set".into(),
            )
        }
        _ => {}
    }
    Ok(Some(proxy))
}

/// What is reported of a network configuration: never the proxy's password or CA.
pub(crate) fn reported(mut config: NetworkConfig) -> NetworkConfig {
    if let Some(p) = config.egress_proxy.as_mut() {
        p.password = None;
        if let Some(t) = p.tls.as_mut() {
            t.ca_cert = None;
        }
    }
    config
}

fn refuse_unsupported(other: &BTreeMap<String, serde_json::Value>) -> Result<(), String> {
    if let Some(k) = other.keys().next() {
        return Err(format!("network.{k} is not known to e2b-local"));
    }
    Ok(())
}

/// `PUT /sandboxes/{id}/network`: replaces the sandbox's egress rules, on open connections too.
pub(crate) async fn update(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    let req: NetworkUpdate = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let policy = match from_update(&req) {
        Ok(p) => p,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    if let Some(why) = unsupported(&state, &policy) {
        return api_error(StatusCode::BAD_REQUEST, why);
    }
    let mut policy = policy;
    let _applying = state.secrets.applying.lock().await;
    state.secrets.fill(&state.tenant(), &mut policy);
    let served = match state.served(&id).await {
        Ok(s) => s,
        Err(e) if e.kind() == sandkit_core::ErrorKind::Conflict => {
            return api_error(StatusCode::CONFLICT, format!("Sandbox {id} is not running"))
        }
        Err(e) => return from_error(&e, &id),
    };
    if let Err(e) = served.sandbox().set_network_policy(policy.clone()).await {
        return match e.kind() {
            sandkit_core::ErrorKind::Unsupported | sandkit_core::ErrorKind::InvalidInput => {
                api_error(StatusCode::BAD_REQUEST, e.message())
            }
            _ => from_error(&e, &id),
        };
    }
    let reported = NetworkConfig {
        allow_out: req.allow_out.clone(),
        deny_out: req.deny_out.clone(),
        dns_servers: req.dns_servers.clone(),
        rules: req.rules.clone(),
        egress_proxy: req.egress_proxy.clone(),
        ..Default::default()
    };
    state.set_network(&id, reported).await;
    state.secrets.keep_policy(&id, &policy);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> NetworkConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn create_maps_lists_and_internet() {
        assert_eq!(from_create(None, None), Ok(Asked::default()));
        assert_eq!(
            from_create(Some(&config(r#"{"allowPublicTraffic":true}"#)), None),
            Ok(Asked::default())
        );
        let private = from_create(
            Some(&config(
                r#"{"allowPublicTraffic":false,"maskRequestHost":"app.test:${PORT}"}"#,
            )),
            None,
        )
        .unwrap();
        assert!(private.private_ports);
        assert_eq!(private.mask.as_deref(), Some("app.test:${PORT}"));
        let p = from_create(
            Some(&config(
                r#"{"allowOut":["1.2.3.4"],"denyOut":["10.0.0.0/8"]}"#,
            )),
            Some(false),
        )
        .unwrap()
        .policy
        .unwrap();
        assert_eq!(p.allow_out, vec!["1.2.3.4"]);
        assert_eq!(p.deny_out, vec![ALL_TRAFFIC]);
        let e = from_create(Some(&config(r#"{"allowOut":["example.com"]}"#)), None).unwrap_err();
        assert!(e.contains("ALL_TRAFFIC"), "{e}");
        for refused in [
            r#"{"egressProxy":{"address":"no-port"}}"#,
            r#"{"egressProxy":{"address":"p:1","tls":{"enabled":false,"caCert":"x"}}}"#,
            r#"{"egressProxy":{"address":"p:1","password":"only"}}"#,
            r#"{"rules":{"*":[]}}"#,
            r#"{"rules":{"a.com":[{"transform":{"headers":{"Host":"x"}}}]}}"#,
            r#"{"maskRequestHost":"a b"}"#,
            r#"{"somethingNew":1}"#,
            r#"{"httpsPorts":[3000]}"#,
        ] {
            assert!(
                from_create(Some(&config(refused)), None).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn rules_map_to_request_rules_in_order() {
        let p = from_create(
            Some(&config(
                r#"{"rules":{"API.test":[{"transform":{"headers":{"A":"1"}}},{},{"transform":{"headers":{"A":"2","B":"${e2b.secrets.k}"}}}]}}"#,
            )),
            None,
        )
        .unwrap()
        .policy
        .expect("rules alone make a policy");
        let mut p = p.secret("k", "v");
        assert_eq!(
            p.headers_for("api.test").unwrap(),
            [
                ("A".to_string(), "2".to_string()),
                ("B".to_string(), "v".to_string())
            ]
        );
        // A secret not created (yet) is accepted, and fails at the request.
        p.secrets = Default::default();
        assert!(checked(p).is_ok());
        // A shape the SDK does not send is refused when the body is read.
        assert!(serde_json::from_str::<NetworkConfig>(
            r#"{"rules":{"a.com":[{"transform":{"set":{}}}]}}"#
        )
        .is_err());
    }

    #[test]
    fn update_replaces_the_whole_policy() {
        let u: NetworkUpdate = serde_json::from_str(r#"{}"#).unwrap();
        assert!(from_update(&u).unwrap().is_open());
        let u: NetworkUpdate =
            serde_json::from_str(r#"{"allowOut":["a.com"],"allow_internet_access":false}"#)
                .unwrap();
        let p = from_update(&u).unwrap();
        assert_eq!(p.deny_out, vec![ALL_TRAFFIC]);
    }
}
