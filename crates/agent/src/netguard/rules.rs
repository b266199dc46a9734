//! The nftables rule set the guard keeps: one table per label prefix, `<prefix>_guard`, rebuilt whole from the
//! entries and replaced in one transaction (`nft -f -`), so no packet ever sees half of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use sandkit_core::Destination;

use super::Entry;

/// The table of label prefix `prefix`, in the `inet` family (routed traffic) and the `bridge`
/// family (frames on the sandbox bridges): `<prefix>_guard`, with anything but letters, digits
/// and `_` spelled `_`, so that backends of two prefixes on one engine keep apart.
pub(crate) fn table(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{clean}_guard")
}

/// Link-local IPv4 addresses: where clouds serve instance metadata.
const LINK_LOCAL: &str = "169.254.0.0/16";

/// Where the rules send what the guard itself judges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    /// HTTP and TLS connections that must be judged by name ([`super::proxy`]).
    pub(crate) proxy: u16,
    /// DNS of sandboxes whose policy names domains ([`super::dns`]).
    pub(crate) dns: u16,
}

/// The nft script that replaces table `table` with rules for `entries`.
pub(crate) fn script(table: &str, entries: &BTreeMap<String, Entry>, ports: Ports) -> String {
    let (proxy_port, dns_port) = (ports.proxy, ports.dns);
    let mut s = String::new();
    // Declaring then deleting makes the delete succeed whether or not the table exists.
    for family in ["inet", "bridge"] {
        let _ = writeln!(
            s,
            "table {family} {table} {{}}\ndelete table {family} {table}"
        );
    }
    if entries.is_empty() {
        return s;
    }
    let mut input = String::new();
    let mut forward = String::new();
    let mut nat = String::new();
    let mut bridge = String::new();
    let mut chains = String::new();
    for (n, e) in entries.values().enumerate() {
        let chain = format!("s{n}");
        let from = format!("iifname \"{}\" ip saddr {}", e.bridge, e.ip);
        let rules = e.policy.lists().unwrap_or_else(|_| sandkit_core::Lists {
            allow: Vec::new(),
            // A policy that does not parse (it was checked before it was kept) refuses all.
            deny: vec![Destination::Cidr(
                sandkit_core::Cidr::parse(sandkit_core::ALL_TRAFFIC).expect("valid"),
            )],
        });
        // The sandbox cannot send as another: a frame from its MAC carries its address.
        if let Some(mac) = &e.mac {
            let _ = writeln!(
                bridge,
                "    ether saddr {mac} ether type ip ip saddr != {} drop\n    ether saddr {mac} ether type ip6 drop",
                e.ip
            );
        }
        // Only replies to what the host opened: a connection the sandbox opened to the host
        // (before its rules existed, or while a policy allowed it) carries nothing on.
        let _ = writeln!(
            input,
            "    {from} ct direction reply ct state established accept\n    {from} ct state related accept"
        );
        if e.policy.allow_host {
            let _ = writeln!(input, "    {from} jump {chain}");
        } else {
            let _ = writeln!(input, "    {from} drop");
        }
        let _ = writeln!(forward, "    {from} jump {chain}");
        let mut body = String::new();
        if !e.policy.allow_link_local {
            let _ = writeln!(body, "    ip daddr {LINK_LOCAL} drop");
            // The metadata services outside link-local, before any allow: only their own
            // address written out opens one (a range that covers it does not).
            let metadata: Vec<String> = super::METADATA_V4
                .iter()
                .filter(|a| !rules.allow.iter().any(|d| exact_v4(d, **a)))
                .map(|a| a.to_string())
                .collect();
            if !metadata.is_empty() {
                let _ = writeln!(body, "    ip daddr {{ {} }} drop", metadata.join(", "));
            }
        }
        if rules.has_domains() {
            // Names resolve while a policy names domains, and DNS goes only where the policy
            // says: to its `dns_servers` (port 53 only), or else to the guard, which forwards
            // only queries for allowed names (no tunnel through a resolver of the sandbox's
            // choosing).
            match &e.policy.dns_servers {
                None => {
                    let _ = writeln!(
                        nat,
                        "    {from} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns_port}"
                    );
                }
                Some(servers) => {
                    for server in servers {
                        if let Ok(ip) = server.trim().parse::<std::net::Ipv4Addr>() {
                            let _ = writeln!(
                                body,
                                "    ip daddr {ip} meta l4proto {{ tcp, udp }} th dport 53 accept"
                            );
                        }
                    }
                    let _ = writeln!(body, "    meta l4proto {{ tcp, udp }} th dport 53 drop");
                }
            }
        }
        if e.policy.egress_proxy.is_some() {
            // Every TCP connection that would leave the host goes through the proxy, which
            // judges it and joins it through the egress proxy.
            let _ = writeln!(
                nat,
                "    {from} meta l4proto tcp fib daddr type != local fib daddr oifname != \"br-*\" fib daddr oifname != \"docker0\" redirect to :{proxy_port}"
            );
        } else if rules.has_domains() || !e.policy.rules.is_empty() {
            // HTTP and TLS go through the proxy, which judges them by name and applies the
            // policy's request rules; connections to the host and to other containers keep
            // their own rules.
            let _ = writeln!(
                nat,
                "    {from} tcp dport {{ 80, 443 }} fib daddr type != local fib daddr oifname != \"br-*\" fib daddr oifname != \"docker0\" redirect to :{proxy_port}"
            );
        }
        for d in &rules.allow {
            if let Some(c) = v4(d) {
                let _ = writeln!(body, "    ip daddr {c} accept");
            }
        }
        for d in &rules.deny {
            if let Some(c) = v4(d) {
                let _ = writeln!(body, "    ip daddr {c} drop");
            }
        }
        let _ = writeln!(chains, "  chain {chain} {{\n{body}  }}");
    }
    let _ = writeln!(
        s,
        "table inet {table} {{
  chain input {{
    type filter hook input priority -5; policy accept;
    tcp dport {proxy_port} ct status dnat accept
    tcp dport {proxy_port} drop
    meta l4proto {{ tcp, udp }} th dport {dns_port} ct status dnat accept
    meta l4proto {{ tcp, udp }} th dport {dns_port} drop
{input}  }}
  chain forward {{
    type filter hook forward priority -5; policy accept;
{forward}  }}
  chain prerouting {{
    type nat hook prerouting priority -105; policy accept;
{nat}  }}
{chains}}}"
    );
    if !bridge.is_empty() {
        let _ = writeln!(
            s,
            "table bridge {table} {{
  chain prerouting {{
    type filter hook prerouting priority -5; policy accept;
{bridge}  }}
}}"
        );
    }
    s
}

/// Whether `d` is exactly the address `a` (a /32).
fn exact_v4(d: &Destination, a: std::net::Ipv4Addr) -> bool {
    matches!(d, Destination::Cidr(c) if c.prefix == 32 && c.addr == IpAddr::V4(a))
}

/// An IPv4 CIDR destination, as nft spells it.
fn v4(d: &Destination) -> Option<String> {
    match d {
        Destination::Cidr(c) if matches!(c.addr, IpAddr::V4(_)) => Some(c.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandkit_core::{NetworkPolicy, ALL_TRAFFIC};

    const PORTS: Ports = Ports {
        proxy: 1234,
        dns: 5353,
    };

    fn entry(policy: NetworkPolicy) -> Entry {
        Entry {
            id: "abc".into(),
            bridge: "br-123".into(),
            ip: "172.20.0.5".parse().unwrap(),
            mac: Some("02:42:ac:14:00:05".into()),
            policy,
            hosts: BTreeMap::new(),
            secrets: Default::default(),
        }
    }

    #[test]
    fn each_prefix_has_its_table() {
        assert_eq!(table("sandkit"), "sandkit_guard");
        assert_eq!(table("my-test.1"), "my_test_1_guard");
    }

    #[test]
    fn no_entries_removes_the_table() {
        let s = script("sandkit_guard", &BTreeMap::new(), PORTS);
        assert!(s.contains("delete table inet sandkit_guard"));
        assert!(!s.contains("chain"));
    }

    #[test]
    fn default_policy_blocks_host_and_link_local() {
        let mut m = BTreeMap::new();
        m.insert("abc".into(), entry(NetworkPolicy::new()));
        let s = script("sandkit_guard", &m, PORTS);
        assert!(
            s.contains("iifname \"br-123\" ip saddr 172.20.0.5 drop"),
            "{s}"
        );
        assert!(s.contains("ip daddr 169.254.0.0/16 drop"), "{s}");
        assert!(
            s.contains("ip daddr { 100.100.100.200, 168.63.129.16, 192.0.0.192 } drop"),
            "{s}"
        );
        // The host: replies to what it opened, never what the sandbox opened.
        assert!(
            s.contains("ct direction reply ct state established accept"),
            "{s}"
        );
        assert!(!s.contains("established,related accept"), "{s}");
        assert!(!s.contains("redirect"), "{s}");
        assert!(
            s.contains("ether saddr 02:42:ac:14:00:05 ether type ip ip saddr != 172.20.0.5 drop")
        );
    }

    #[test]
    fn a_metadata_address_is_opened_by_naming_it() {
        let mut m = BTreeMap::new();
        m.insert(
            "abc".into(),
            entry(NetworkPolicy::new().allow_out(["168.63.129.16"])),
        );
        let s = script("sandkit_guard", &m, PORTS);
        // The named one is left out of the drop; the others are dropped before any allow.
        let drop = s
            .find("ip daddr { 100.100.100.200, 192.0.0.192 } drop")
            .expect("metadata drop");
        let allow = s
            .find("ip daddr 168.63.129.16/32 accept")
            .expect("allow rule");
        assert!(drop < allow, "{s}");
        // A range that covers a metadata address does not open it.
        let mut m = BTreeMap::new();
        m.insert(
            "abc".into(),
            entry(NetworkPolicy::new().allow_out(["100.64.0.0/10"])),
        );
        let s = script("sandkit_guard", &m, PORTS);
        let drop = s
            .find("ip daddr { 100.100.100.200, 168.63.129.16, 192.0.0.192 } drop")
            .expect("metadata drop");
        let allow = s.find("ip daddr 100.64.0.0/10 accept").expect("allow");
        assert!(drop < allow, "{s}");
    }

    #[test]
    fn dns_servers_get_dns_only() {
        let mut m = BTreeMap::new();
        m.insert(
            "abc".into(),
            entry(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out(["example.com"])
                    .dns_servers(["10.9.9.9"]),
            ),
        );
        let s = script("sandkit_guard", &m, PORTS);
        let accept = s
            .find("ip daddr 10.9.9.9 meta l4proto { tcp, udp } th dport 53 accept")
            .expect("the server's DNS");
        let drop = s
            .find("meta l4proto { tcp, udp } th dport 53 drop")
            .expect("other DNS");
        assert!(accept < drop, "{s}");
        assert!(!s.contains("ip daddr 10.9.9.9 accept"), "{s}");
        assert!(!s.contains("redirect to :5353"), "{s}");
    }

    #[test]
    fn allow_comes_before_deny_and_domains_redirect() {
        let mut m = BTreeMap::new();
        m.insert(
            "abc".into(),
            entry(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out(["10.1.0.0/16", "example.com"])
                    .allow_host(true)
                    .allow_link_local(true),
            ),
        );
        let s = script("sandkit_guard", &m, PORTS);
        let allow = s.find("ip daddr 10.1.0.0/16 accept").expect("allow rule");
        let deny = s.find("ip daddr 0.0.0.0/0 drop").expect("deny rule");
        assert!(allow < deny, "{s}");
        assert!(s.contains("redirect to :1234"), "{s}");
        // DNS goes to the guard, nowhere else.
        assert!(
            s.contains(
                "ip saddr 172.20.0.5 meta l4proto { tcp, udp } th dport 53 redirect to :5353"
            ),
            "{s}"
        );
        assert!(!s.contains("dport 53 accept"), "{s}");
        assert!(s.contains("ip saddr 172.20.0.5 jump s0"), "{s}");
        assert!(!s.contains("169.254"), "{s}");
    }
}
