//! What a sandbox may reach on the network: [`NetworkPolicy`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::request_rules::{EgressProxy, RequestRule, Secrets};
use crate::{Error, ErrorKind, Result};

/// Every IPv4 address, as a CIDR: in [`NetworkPolicy::deny_out`] it refuses all outbound
/// traffic that [`NetworkPolicy::allow_out`] does not allow (E2B's `ALL_TRAFFIC`).
pub const ALL_TRAFFIC: &str = "0.0.0.0/0";

/// What a sandbox may reach outside itself, enforced where code in the sandbox cannot undo it.
///
/// Each entry of [`allow_out`](Self::allow_out) and [`deny_out`](Self::deny_out) is an IP
/// address, a CIDR (`10.0.0.0/8`, [`ALL_TRAFFIC`]) or, in `allow_out`, a domain name
/// (`example.com`, `*.example.com` for its subdomains, `*` for any name). The rules, as on E2B:
///
/// - a destination `allow_out` names is allowed, whatever `deny_out` says;
/// - otherwise one `deny_out` names is refused;
/// - otherwise it is allowed.
///
/// A domain is matched against the name a connection carries: the TLS server name (SNI) of
/// an HTTPS connection on port 443, the `Host` header of plain HTTP on port 80. Allowing a
/// domain therefore only makes sense with a `deny_out` that covers its addresses (usually
/// [`ALL_TRAFFIC`], which E2B requires and so does [`validate`](Self::validate)); connections on
/// other ports, and connections that carry no name, are judged by address alone. A connection
/// allowed by its name goes to the name's own addresses, resolved outside the sandbox, not to
/// the address the sandbox asked for: a sandbox cannot send to any address by naming an
/// allowed domain. While a policy names domains, DNS (port 53) stays reachable so that names
/// resolve.
///
/// Beyond the two lists, a sandbox cannot reach the machine that runs it nor link-local
/// addresses (`169.254.0.0/16`, where clouds serve instance metadata) unless
/// [`allow_host`](Self::allow_host) or [`allow_link_local`](Self::allow_link_local) says so.
///
/// ```
/// use sandkit_core::{NetworkPolicy, ALL_TRAFFIC};
///
/// // Only GitHub, over HTTPS or HTTP.
/// let policy = NetworkPolicy::new()
///     .deny_out([ALL_TRAFFIC])
///     .allow_out(["github.com", "*.github.com"]);
/// policy.validate().unwrap();
/// assert!(policy.allows("140.82.112.3".parse().unwrap(), Some("api.github.com")));
/// assert!(!policy.allows("140.82.112.3".parse().unwrap(), Some("example.com")));
/// assert!(!policy.allows("1.1.1.1".parse().unwrap(), None));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NetworkPolicy {
    /// Destinations always allowed: addresses, CIDRs and domain names.
    pub allow_out: Vec<String>,
    /// Destinations refused unless `allow_out` allows them: addresses and CIDRs.
    pub deny_out: Vec<String>,
    /// Let the sandbox reach services of the machine that runs it (on Docker: the host,
    /// through the bridge's gateway or any of its addresses). Off by default.
    pub allow_host: bool,
    /// Let the sandbox reach link-local addresses (`169.254.0.0/16`, `fe80::/10`), where
    /// clouds serve instance metadata and credentials. Off by default.
    pub allow_link_local: bool,
    /// While `allow_out` names a domain: the DNS servers the sandbox may reach (all traffic to
    /// them is allowed). `None`: DNS (port 53) to any server, so the sandbox's own resolver
    /// works; an empty list: none (names then resolve only through the sandbox's hosts file).
    /// No effect without a domain in `allow_out`. E2B's `dns_servers`.
    pub dns_servers: Option<Vec<String>>,
    /// Request rules by domain (`api.example.com`, or `*.example.com` for its subdomains):
    /// headers set on the sandbox's HTTP and HTTPS requests to it, outside the sandbox. For
    /// a name, the rules of its exact key apply, or else those of the longest wildcard that
    /// matches it, in order (a later rule's header replaces an earlier one's). HTTPS to such
    /// a domain is decrypted and re-encrypted by the backend, which the sandbox trusts for
    /// it; other traffic is not touched. A rule does not allow the domain: `allow_out` still
    /// decides. E2B's `network.rules`.
    pub rules: BTreeMap<String, Vec<RequestRule>>,
    /// The values of the secrets the [`rules`](Self::rules) name (`${e2b.secrets.NAME}`).
    /// Never serialized with the policy, and never put in the sandbox.
    #[serde(skip)]
    pub secrets: Secrets,
    /// A SOCKS5 proxy the sandbox's outbound TCP goes through after this policy's filtering
    /// ([`EgressProxy`]); `None`: out directly. E2B's `egress_proxy`.
    pub egress_proxy: Option<EgressProxy>,
}

impl NetworkPolicy {
    /// No rules: everything but the host and link-local addresses is allowed.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds destinations to [`allow_out`](Self::allow_out).
    pub fn allow_out<I: IntoIterator<Item = S>, S: Into<String>>(mut self, entries: I) -> Self {
        self.allow_out.extend(entries.into_iter().map(Into::into));
        self
    }
    /// Adds destinations to [`deny_out`](Self::deny_out).
    pub fn deny_out<I: IntoIterator<Item = S>, S: Into<String>>(mut self, entries: I) -> Self {
        self.deny_out.extend(entries.into_iter().map(Into::into));
        self
    }
    /// Sets [`allow_host`](Self::allow_host).
    pub fn allow_host(mut self, on: bool) -> Self {
        self.allow_host = on;
        self
    }
    /// Sets [`dns_servers`](Self::dns_servers).
    pub fn dns_servers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, servers: I) -> Self {
        self.dns_servers = Some(servers.into_iter().map(Into::into).collect());
        self
    }
    /// Adds `rule` to the rules of `domain` (see [`rules`](Self::rules)).
    pub fn rule(mut self, domain: &str, rule: RequestRule) -> Self {
        self.rules
            .entry(domain.trim().to_ascii_lowercase())
            .or_default()
            .push(rule);
        self
    }
    /// Sets [`egress_proxy`](Self::egress_proxy).
    pub fn egress_proxy(mut self, proxy: EgressProxy) -> Self {
        self.egress_proxy = Some(proxy);
        self
    }
    /// Sets secret `name` for the [`rules`](Self::rules) to name.
    pub fn secret(mut self, name: &str, value: impl Into<String>) -> Self {
        self.secrets.insert(name, value);
        self
    }
    /// The headers the rules set on a request to `name`, secrets resolved; empty when no
    /// rule applies.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when a value names a secret the policy does not hold.
    pub fn headers_for(&self, name: &str) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = Vec::new();
        for rule in rules_for(&self.rules, name).unwrap_or_default() {
            for (header, value) in &rule.headers {
                let value = crate::request_rules::expand_secrets(value, &self.secrets)?;
                out.retain(|(h, _)| !h.eq_ignore_ascii_case(header));
                out.push((header.clone(), value));
            }
        }
        Ok(out)
    }
    /// Whether some rule applies to requests to `name`.
    pub fn has_rules_for(&self, name: &str) -> bool {
        rules_for(&self.rules, name).is_some()
    }
    /// The names of the secrets the rules refer to.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .values()
            .flatten()
            .flat_map(|r| r.headers.values())
            .filter_map(|v| crate::request_rules::secret_names(v).ok())
            .flatten()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Sets [`allow_link_local`](Self::allow_link_local).
    pub fn allow_link_local(mut self, on: bool) -> Self {
        self.allow_link_local = on;
        self
    }

    /// Whether the policy restricts nothing beyond the defaults (no list entries).
    pub fn is_open(&self) -> bool {
        self.allow_out.is_empty()
            && self.deny_out.is_empty()
            && self.rules.is_empty()
            && self.egress_proxy.is_none()
    }

    /// Checks every entry.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming the first entry that is neither an address, a CIDR
    /// nor (in `allow_out`) a domain name, a rule whose key is not a domain name or whose
    /// header cannot be set, or a rule that names a secret the policy does not hold.
    pub fn validate(&self) -> Result<()> {
        self.lists()?;
        if let Some(p) = &self.egress_proxy {
            p.validate()?;
        }
        for (domain, rules) in &self.rules {
            let d = domain.trim();
            if d == "*" || !is_domain_pattern(d) || d.parse::<IpAddr>().is_ok() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "request rules are keyed by a domain name (api.example.com) or a                          wildcard of subdomains (*.example.com); {domain:?} is neither"
                    ),
                )
                .with_operation("network policy"));
            }
            for rule in rules {
                crate::request_rules::validate_rule(domain, rule, &self.secrets)?;
            }
        }
        Ok(())
    }

    /// The lists, parsed, with E2B's checks: `deny_out` holds addresses and CIDRs only, and
    /// a domain in `allow_out` needs [`ALL_TRAFFIC`] in `deny_out`.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn lists(&self) -> Result<Lists> {
        let allow = self
            .allow_out
            .iter()
            .map(|e| Destination::parse(e, true))
            .collect::<Result<Vec<_>>>()?;
        let deny = self
            .deny_out
            .iter()
            .map(|e| Destination::parse(e, false))
            .collect::<Result<Vec<_>>>()?;
        for server in self.dns_servers.iter().flatten() {
            if server.trim().parse::<Ipv4Addr>().is_err() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("dns_servers entry {server:?} is not an IPv4 address"),
                )
                .with_operation("network policy"));
            }
        }
        let rules = Lists { allow, deny };
        if rules.has_domains() && !self.deny_out.iter().any(|d| d.trim() == ALL_TRAFFIC) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' \
                 in deny out to block all other traffic.",
            )
            .with_operation("network policy"));
        }
        Ok(rules)
    }

    /// Whether a connection to `ip`, carrying the name `domain` (TLS SNI or HTTP `Host`, if
    /// any), is allowed by the lists. Entries that do not parse are ignored here: call
    /// [`validate`](Self::validate) first. The host and link-local switches are not judged
    /// here: they depend on the backend's view of the network.
    pub fn allows(&self, ip: IpAddr, domain: Option<&str>) -> bool {
        let rules = Lists {
            allow: self
                .allow_out
                .iter()
                .filter_map(|e| Destination::parse(e, true).ok())
                .collect(),
            deny: self
                .deny_out
                .iter()
                .filter_map(|e| Destination::parse(e, false).ok())
                .collect(),
        };
        rules.allows(ip, domain)
    }
}

/// A policy's lists, parsed: see [`NetworkPolicy::rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lists {
    /// Parsed [`NetworkPolicy::allow_out`].
    pub allow: Vec<Destination>,
    /// Parsed [`NetworkPolicy::deny_out`].
    pub deny: Vec<Destination>,
}

impl Lists {
    /// As [`NetworkPolicy::allows`].
    pub fn allows(&self, ip: IpAddr, domain: Option<&str>) -> bool {
        if self.allow.iter().any(|d| d.matches(ip, domain)) {
            return true;
        }
        !self.deny.iter().any(|d| d.matches(ip, domain))
    }
    /// Whether any entry is a domain name (connections must then be judged by name).
    pub fn has_domains(&self) -> bool {
        self.allow
            .iter()
            .chain(&self.deny)
            .any(|d| matches!(d, Destination::Domain(_)))
    }
}

/// One entry of a policy list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// Addresses: an IP is a CIDR of full length.
    Cidr(Cidr),
    /// A domain name, lower case; `*.` in front matches its subdomains (not the name itself),
    /// and `*` alone matches every name.
    Domain(String),
}

impl Destination {
    /// Parses an entry; domains only where `domains` is true.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming the entry.
    pub fn parse(entry: &str, domains: bool) -> Result<Self> {
        let e = entry.trim();
        if let Some(cidr) = Cidr::parse(e) {
            // An unspecified address alone (`0.0.0.0`) is a mistake; `0.0.0.0/0` is all traffic.
            if !(cidr.addr.is_unspecified() && cidr.prefix != 0) {
                return Ok(Destination::Cidr(cidr));
            }
        }
        let looks_numeric = e.contains('/') || e.contains(':') || e.parse::<Ipv4Addr>().is_ok();
        if !looks_numeric && (e == "*" || is_domain_pattern(e)) {
            if domains {
                return Ok(Destination::Domain(e.to_ascii_lowercase()));
            }
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "deny_out entry {entry:?} is a domain name; deny_out takes addresses and \
                     CIDRs only (deny everything with {ALL_TRAFFIC:?} and allow the domains you \
                     want in allow_out)"
                ),
            )
            .with_operation("network policy"));
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{entry:?} is not an IP address, a CIDR (such as 10.0.0.0/8){}",
                if domains {
                    " or a domain name (such as example.com or *.example.com)"
                } else {
                    ""
                }
            ),
        )
        .with_operation("network policy"))
    }

    /// Whether a connection to `ip` named `domain` matches.
    pub fn matches(&self, ip: IpAddr, domain: Option<&str>) -> bool {
        match self {
            Destination::Cidr(c) => c.contains(ip),
            Destination::Domain(pattern) => domain.is_some_and(|d| domain_matches(pattern, d)),
        }
    }
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address (host bits cleared).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `addr/n`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }
    /// Whether `ip` lies in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

fn is_domain_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `name` (a connection's server name) matches `pattern` (lower case; `*.x` matches
/// the subdomains of `x`). A trailing dot and case do not matter.
pub fn domain_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if pattern == "*" {
        return !name.is_empty();
    }
    match pattern.strip_prefix("*.") {
        Some(parent) => name.len() > parent.len() + 1 && name.ends_with(&format!(".{parent}")),
        None => name == pattern,
    }
}

/// The rules of the key in `rules` that decides for `name`: the exact name first, then the
/// longest wildcard (`*.example.com`) that matches it. Rule sets are not merged.
pub(crate) fn rules_for<'a>(
    rules: &'a BTreeMap<String, Vec<RequestRule>>,
    name: &str,
) -> Option<&'a [RequestRule]> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some((_, r)) = rules.iter().find(|(k, _)| k.eq_ignore_ascii_case(&name)) {
        return Some(r);
    }
    rules
        .iter()
        .filter(|(k, _)| k.starts_with("*.") && domain_matches(&k.to_ascii_lowercase(), &name))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, r)| r.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.200.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        assert!(Cidr::parse(ALL_TRAFFIC).unwrap().contains(ip("8.8.8.8")));
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix, 32);
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
    }

    #[test]
    fn allow_wins_over_deny() {
        let p = NetworkPolicy::new().deny_out([ALL_TRAFFIC]).allow_out([
            "10.0.0.5",
            "example.com",
            "*.github.com",
        ]);
        p.validate().unwrap();
        assert!(p.allows(ip("10.0.0.5"), None));
        assert!(!p.allows(ip("10.0.0.6"), None));
        assert!(p.allows(ip("93.184.216.34"), Some("EXAMPLE.com.")));
        assert!(!p.allows(ip("93.184.216.34"), Some("www.example.com")));
        assert!(p.allows(ip("1.1.1.1"), Some("api.github.com")));
        assert!(!p.allows(ip("1.1.1.1"), Some("github.com")));
        assert!(!p.allows(ip("1.1.1.1"), Some("evilgithub.com")));
        assert!(NetworkPolicy::new()
            .deny_out([ALL_TRAFFIC])
            .allow_out(["*"])
            .allows(ip("1.1.1.1"), Some("any.thing")));
        let e = NetworkPolicy::new()
            .allow_out(["example.com"])
            .validate()
            .unwrap_err();
        assert!(e.message().contains("ALL_TRAFFIC"), "{e}");
        let open = NetworkPolicy::new().deny_out(["192.168.0.0/16"]);
        assert!(open.allows(ip("8.8.8.8"), None));
        assert!(!open.allows(ip("192.168.1.1"), None));
    }

    #[test]
    fn bad_entries_are_named() {
        for (p, bad) in [
            (
                NetworkPolicy::new().allow_out(["10.0.0.0/40"]),
                "10.0.0.0/40",
            ),
            (
                NetworkPolicy::new().allow_out(["exa mple.com"]),
                "exa mple.com",
            ),
            (
                NetworkPolicy::new().deny_out(["example.com"]),
                "example.com",
            ),
            (NetworkPolicy::new().deny_out(["0.0.0.0"]), "0.0.0.0"),
            (NetworkPolicy::new().allow_out(["1.2.3.4/99"]), "1.2.3.4/99"),
        ] {
            let e = p.validate().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.message().contains(bad), "{e}");
        }
    }
    #[test]
    fn exact_names_win_then_the_longest_wildcard() {
        let one = |h: &str| vec![RequestRule::new().header("X-Which", h)];
        let rules: BTreeMap<String, Vec<RequestRule>> = [
            ("api.example.com".to_string(), one("exact")),
            ("*.example.com".to_string(), one("short")),
            ("*.eu.example.com".to_string(), one("long")),
        ]
        .into_iter()
        .collect();
        let which = |n: &str| rules_for(&rules, n).map(|r| r[0].headers["X-Which"].clone());
        assert_eq!(which("API.example.com.").as_deref(), Some("exact"));
        assert_eq!(which("a.example.com").as_deref(), Some("short"));
        assert_eq!(which("a.b.eu.example.com").as_deref(), Some("long"));
        assert_eq!(which("example.com"), None, "a wildcard is not its apex");
        assert_eq!(which("example.org"), None);
    }
}
