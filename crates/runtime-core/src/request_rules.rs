//! Request rules: headers set on a sandbox's HTTP and HTTPS requests to a domain, outside the
//! sandbox, with values that may name [`Secrets`] the sandbox never holds.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// How a header value names a secret: `${e2b.secrets.NAME}` (E2B's `Secret.fill(NAME)`).
pub const SECRET_PLACEHOLDER: &str = "${e2b.secrets.";

/// How E2B names a workload identity token in a header value; not served here.
const IDENTITY_PLACEHOLDER: &str = "${e2b.identity.";

/// What is done to each request that matches a rule's domain: E2B's `transform`.
///
/// ```
/// use sandkit_core::{NetworkPolicy, RequestRule, ALL_TRAFFIC};
///
/// let policy = NetworkPolicy::new()
///     .deny_out([ALL_TRAFFIC])
///     .allow_out(["api.example.com"])
///     .rule(
///         "api.example.com",
///         RequestRule::new().header("Authorization", "Bearer ${e2b.secrets.example-token}"),
///     )
///     .secret("example-token", "sk-123");
/// policy.validate().unwrap();
/// let headers = policy.headers_for("API.example.com").unwrap();
/// assert_eq!(headers, [("Authorization".to_string(), "Bearer sk-123".to_string())]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RequestRule {
    /// Headers set on the request, replacing any of the same name the sandbox sent. A value
    /// may hold `${e2b.secrets.NAME}`, replaced by that secret's value outside the sandbox
    /// when the request is sent.
    pub headers: BTreeMap<String, String>,
}

impl RequestRule {
    /// A rule that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a header to set.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// The values of secrets, by name (lower case), that request rules name.
///
/// A policy carries them to the backend that applies the rules; they are never serialized
/// with the policy, never shown by `Debug` (only their names are), and never put in the
/// sandbox.
///
/// A name can also be held without a value ([`unset`](Self::unset)): a rule naming it is
/// accepted, and each request it applies to fails, saying so, until the secret is set (a
/// server that keeps secrets apart from sandboxes marks a deleted, or not yet created, secret
/// this way).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, Option<String>>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Secrets")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets secret `name` (compared without case) to `value`.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_ascii_lowercase(), Some(value.into()));
    }
    /// Holds `name` without a value: requests whose rules name it fail until it is set.
    pub fn unset(&mut self, name: &str) {
        self.0.insert(name.to_ascii_lowercase(), None);
    }
    /// The value of secret `name`, if it is set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.as_deref())
    }
    /// Whether `name` is held, set or not.
    pub fn holds(&self, name: &str) -> bool {
        self.0.contains_key(&name.to_ascii_lowercase())
    }
    /// The secrets that are set: name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?)))
    }
    /// The names held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Only the secrets whose names `keep` accepts.
    pub fn only(&self, keep: impl Fn(&str) -> bool) -> Secrets {
        Secrets(
            self.0
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Secrets {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut s = Secrets::new();
        for (k, v) in iter {
            s.insert(k.as_ref(), v);
        }
        s
    }
}

/// The names of the secrets `value` refers to (lower case), in order.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for a placeholder that is not closed, or one for a workload
/// identity token (not served).
pub fn secret_names(value: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = value;
    if value.contains(IDENTITY_PLACEHOLDER) {
        return Err(invalid(
            "workload identity tokens (`${e2b.identity.tokens.*}`, the `iam` option) are not \
             served here; keep the credential in a secret and name it with \
             `${e2b.secrets.NAME}`",
        ));
    }
    while let Some(at) = rest.find(SECRET_PLACEHOLDER) {
        let after = &rest[at + SECRET_PLACEHOLDER.len()..];
        let Some(end) = after.find('}') else {
            return Err(invalid(format!(
                "a header value has an unclosed secret placeholder: `{SECRET_PLACEHOLDER}NAME}}` \
                 expected"
            )));
        };
        let name = &after[..end];
        if name.is_empty() {
            return Err(invalid("a secret placeholder names no secret"));
        }
        out.push(name.to_ascii_lowercase());
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// `value` with each secret placeholder replaced by the secret's value.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] naming a secret `secrets` does not hold (never an empty value
/// in its place), and as [`secret_names`].
pub fn expand_secrets(value: &str, secrets: &Secrets) -> Result<String> {
    secret_names(value)?;
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(SECRET_PLACEHOLDER) {
        out.push_str(&rest[..at]);
        let after = &rest[at + SECRET_PLACEHOLDER.len()..];
        let end = after.find('}').expect("checked by secret_names");
        let name = &after[..end];
        let secret = secrets.get(name).ok_or_else(|| {
            invalid(format!(
                "a request rule names the secret {name:?}, which is not set (not created yet, \
                 or deleted); create it (or fix the name)"
            ))
        })?;
        out.push_str(secret);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A SOCKS5 proxy of yours that a sandbox's outbound TCP goes through, after the policy's
/// filtering (E2B's `egress_proxy`): connections the policy refuses never reach it, request
/// rules still apply, names a policy allowed are sent to it as names (the proxy resolves
/// them). UDP (DNS, QUIC) is not tunnelled.
///
/// ```
/// use sandkit_core::{EgressProxy, NetworkPolicy};
///
/// let policy = NetworkPolicy::new().egress_proxy(
///     EgressProxy::new("proxy.example.com:1080").credentials("me", "pass"),
/// );
/// policy.validate().unwrap();
/// assert!(!format!("{policy:?}").contains("pass\""), "the password is not shown");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EgressProxy {
    /// `host:port`.
    pub address: String,
    /// RFC 1929 user name, when the proxy asks for one.
    pub username: Option<String>,
    /// RFC 1929 password (with a user name only). Never shown by `Debug`.
    pub password: Option<String>,
    /// TLS to the proxy; `None`: plain TCP.
    pub tls: Option<EgressProxyTls>,
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// [`EgressProxy::tls`]: the proxy's certificate is always verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EgressProxyTls {
    /// The name verified and sent (SNI); default: the host of the address.
    pub server_name: Option<String>,
    /// PEM certificates that replace the system's roots for the proxy.
    pub ca_cert: Option<String>,
}

impl EgressProxy {
    /// A proxy at `address` (`host:port`), plain TCP, no credentials.
    pub fn new(address: impl Into<String>) -> Self {
        EgressProxy {
            address: address.into(),
            ..Default::default()
        }
    }
    /// With RFC 1929 credentials.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }
    /// Over TLS, verified against `ca_cert` (PEM) or else the system's roots.
    pub fn tls(mut self, server_name: Option<String>, ca_cert: Option<String>) -> Self {
        self.tls = Some(EgressProxyTls {
            server_name,
            ca_cert,
        });
        self
    }
    /// The host and port of [`address`](Self::address).
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        (!host.is_empty()).then_some((host, port))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.host_port().is_none() {
            return Err(invalid(format!(
                "egress proxy address {:?} is not host:port (e.g. proxy.example.com:1080)",
                self.address
            )));
        }
        let long = |v: &Option<String>| v.as_ref().is_some_and(|v| v.len() > 255);
        if long(&self.username) || long(&self.password) {
            return Err(invalid(
                "egress proxy credentials are at most 255 bytes each",
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(invalid("an egress proxy password needs a user name"));
        }
        if let Some(tls) = &self.tls {
            if tls
                .server_name
                .as_ref()
                .is_some_and(|n| n.is_empty() || n.len() > 253)
            {
                return Err(invalid(
                    "the egress proxy's TLS server name is 1 to 253 bytes",
                ));
            }
            if tls
                .ca_cert
                .as_ref()
                .is_some_and(|c| c.len() > 8192 || !c.contains("BEGIN CERTIFICATE"))
            {
                return Err(invalid(
                    "the egress proxy's ca_cert is PEM certificates, at most 8192 bytes",
                ));
            }
        }
        Ok(())
    }
}

/// Headers a rule may not set: they decide how the request is framed or where it goes.
const FRAMING: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
];

/// Checks one rule of domain `domain`.
pub(crate) fn validate_rule(domain: &str, rule: &RequestRule, secrets: &Secrets) -> Result<()> {
    for (name, value) in &rule.headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(invalid(format!(
                "the rule for {domain:?} sets the header {name:?}, which is not a header name"
            )));
        }
        if FRAMING.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "the rule for {domain:?} sets the header {name:?}, which decides how the \
                 request is framed or routed; rules cannot set it"
            )));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(invalid(format!(
                "the rule for {domain:?} gives the header {name:?} a value with a line break"
            )));
        }
        for secret in secret_names(value)? {
            if !secrets.holds(&secret) {
                return Err(invalid(format!(
                    "the rule for {domain:?} names the secret {secret:?} in the header \
                     {name:?}, and no secret of that name is set; create it first (or fix \
                     the name)"
                )));
            }
        }
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message.into()).with_operation("network policy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_replaced() {
        let s: Secrets = [("Token", "abc"), ("other", "x}y")].into_iter().collect();
        assert_eq!(
            expand_secrets("Bearer ${e2b.secrets.TOKEN} and ${e2b.secrets.other}!", &s).unwrap(),
            "Bearer abc and x}y!"
        );
        assert_eq!(expand_secrets("plain", &s).unwrap(), "plain");
        let e = expand_secrets("${e2b.secrets.missing}", &s).unwrap_err();
        assert!(e.message().contains("\"missing\""), "{e}");
        assert!(secret_names("${e2b.secrets.open").is_err());
        assert!(secret_names("${e2b.secrets.}").is_err());
        assert!(secret_names("Bearer ${e2b.identity.tokens.aws}").is_err());
        assert!(!format!("{s:?}").contains("abc"), "Debug shows names only");
        let mut s = s;
        s.unset("token");
        assert!(s.holds("TOKEN") && s.get("token").is_none());
        let e = expand_secrets("${e2b.secrets.token}", &s).unwrap_err();
        assert!(e.message().contains("not set"), "{e}");
        assert_eq!(s.iter().count(), 1);
    }
}
