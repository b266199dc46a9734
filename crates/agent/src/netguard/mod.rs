//! `sandkit-agent netguard`: what each sandbox may reach, enforced from the engine's host.
//!
//! It runs in a container of its own (made by the Docker backend, `<prefix>-netguard`) on the
//! host's network with `NET_ADMIN` and nothing else, so code in a sandbox can neither see nor
//! change it. For every sandbox the backend registers (its bridge, address, MAC and
//! [`NetworkPolicy`]) it keeps, in one nftables table (`<prefix>_guard`, see [`rules`]):
//!
//! - frames from the sandbox's MAC must carry its address (no sending as another sandbox);
//! - traffic to the host itself is dropped unless the policy allows the host;
//! - forwarded traffic goes through the sandbox's chain: link-local dropped unless allowed,
//!   then `allow_out` addresses accepted, then `deny_out` addresses dropped;
//! - when the policy names domains, TCP to ports 80 and 443 is redirected to the proxy here
//!   ([`proxy`]), which reads the TLS SNI or HTTP `Host`, judges the connection by name and
//!   address, and joins it to the name's own addresses (never to the one the sandbox chose);
//!   and DNS goes to the policy's `dns_servers` only, or else is redirected to the guard
//!   ([`dns`]), which forwards only queries for names the policy allows.
//!
//! Rules are judged on every packet, not only on new connections, so a changed policy applies
//! to open connections too; the proxy closes the connections a new policy refuses.
//!
//! The backend talks to it over a Unix socket in this container (`sandkit-agent relay` through
//! one attached exec), a request per line: `probe`, `set <hex JSON entry>`, `clear <id>`,
//! `get <id>` (the entry, secrets too), `ca` (the certificate of the authority that
//! signs for domains with request rules, hex PEM) and `trust <hex PEM>` (roots to verify
//! those domains' servers with, besides the system's). Entries are kept in `/state` and reloaded on start; every second entries whose
//! sandbox is gone are dropped. With no entry left for `--idle-exit` seconds the guard removes
//! its rules and its own container.

mod dns;
mod intercept;
mod names;
mod proxy;
mod rules;
mod socks;
mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandkit_core::NetworkPolicy;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::docker::{encode, Engine};

/// Cloud metadata services outside link-local (Alibaba, Azure's wire server, Oracle): refused
/// like link-local addresses unless the policy allows link-local or names the address.
pub(crate) const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(192, 0, 0, 192),
];

/// Whether `addr` is link-local (IPv4 `169.254.0.0/16`, IPv6 `fe80::/10`), where clouds serve
/// instance metadata.
pub(crate) fn is_link_local(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Whether `addr` serves cloud metadata outside link-local: [`METADATA_V4`], and AWS's IPv6
/// endpoint `fd00:ec2::254`.
pub(crate) fn is_metadata(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(v4) => METADATA_V4.contains(&v4),
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    }
}

/// Whether `addr` is private (RFC 1918, CGNAT `100.64.0.0/10`, IPv6 unique local): a name
/// whose DNS someone else answers must not lead there unless the policy names the address.
pub(crate) fn is_private(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Where the guard listens for the backend, inside its own container.
pub(crate) const CONTROL: &str = "/run/sandkit-netguard.sock";

/// One guarded sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The sandbox id (its `<prefix>.id` label).
    pub(crate) id: String,
    /// The host-side bridge its network uses (`br-…`, `docker0`).
    pub(crate) bridge: String,
    /// Its address on that network.
    pub(crate) ip: Ipv4Addr,
    /// Its MAC address there, when known.
    #[serde(default)]
    pub(crate) mac: Option<String>,
    /// What it may reach.
    pub(crate) policy: NetworkPolicy,
    /// Names with fixed addresses for this sandbox (its `--add-host` entries).
    #[serde(default)]
    pub(crate) hosts: BTreeMap<String, IpAddr>,
    /// The values of the secrets the policy's request rules name (kept here, in the
    /// guard's state, readable by root only).
    #[serde(default)]
    pub(crate) secrets: BTreeMap<String, String>,
}

pub(crate) use crate::keeper::Options;

/// The guard's state, shared by the control socket, the proxy and the sweep.
pub(crate) struct Guard {
    entries: Mutex<BTreeMap<String, Entry>>,
    state: PathBuf,
    /// The nftables table of this guard's label prefix.
    table: String,
    proxy_port: u16,
    /// Where the guard answers the DNS of sandboxes whose policy names domains ([`dns`]).
    dns_port: u16,
    /// Connections the proxy holds, to judge again when a policy changes.
    pub(crate) live: proxy::Live,
    /// Signs the certificates of domains with request rules ([`intercept`]).
    pub(crate) authority: Arc<intercept::Authority>,
    /// The address ranges of the engine's networks: the proxy never joins a connection to
    /// one (that would reach other containers around their isolation).
    pub(crate) engine_subnets: Mutex<Vec<sandkit_core::Cidr>>,
    /// When an entry was last present.
    busy: Mutex<Instant>,
    /// Held by each change from reading the entries to applying them, so that two changes
    /// at once cannot drop each other's entry.
    writing: Mutex<()>,
}

impl Guard {
    /// The entry of the sandbox at `ip`.
    pub(crate) fn by_ip(&self, ip: Ipv4Addr) -> Option<Entry> {
        self.entries
            .lock()
            .expect("entries")
            .values()
            .find(|e| e.ip == ip)
            .cloned()
    }

    /// Applies the rule set for `entries` and keeps it.
    fn commit(&self, entries: BTreeMap<String, Entry>) -> Result<(), String> {
        apply(&rules::script(
            &self.table,
            &entries,
            rules::Ports {
                proxy: self.proxy_port,
                dns: self.dns_port,
            },
        ))?;
        *self.entries.lock().expect("entries") = entries;
        if !self.entries.lock().expect("entries").is_empty() {
            *self.busy.lock().expect("busy") = Instant::now();
        }
        Ok(())
    }

    fn set(&self, mut entry: Entry) -> Result<(), String> {
        entry.policy.secrets = secrets_of(&entry);
        entry
            .policy
            .validate()
            .map_err(|e| e.message().to_string())?;
        let _writing = self.writing.lock().expect("writing");
        let mut next = self.entries.lock().expect("entries").clone();
        // An address belongs to one sandbox: a gone sandbox's entry must not judge a new one.
        next.retain(|id, e| id == &entry.id || !(e.ip == entry.ip && e.bridge == entry.bridge));
        next.insert(entry.id.clone(), entry.clone());
        self.commit(next)?;
        write_entry(&self.state, &entry).map_err(|e| format!("cannot keep the entry: {e}"))?;
        self.live.rejudge(self, entry.ip);
        Ok(())
    }

    fn clear(&self, id: &str) -> Result<(), String> {
        let _writing = self.writing.lock().expect("writing");
        let mut next = self.entries.lock().expect("entries").clone();
        let Some(gone) = next.remove(id) else {
            return Ok(());
        };
        self.commit(next)?;
        let _ = std::fs::remove_file(self.state.join(id));
        self.live.rejudge(self, gone.ip);
        Ok(())
    }
}

/// Runs until no entry is left for `idle_exit`, then removes its rules and its own container.
pub(crate) fn run(o: &Options) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandkit-agent netguard: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandkit-agent netguard: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(o: &Options) -> Result<(), String> {
    // nft must work here before anything is promised. Declaring the table changes nothing
    // in one that exists: the rules a previous guard left hold until the saved entries are
    // applied whole below (never an empty or partial rule set in between).
    apply(&format!("table inet {} {{}}\n", rules::table(&o.prefix))).map_err(|e| {
        format!("cannot manage nftables ({e}); the guard needs the nft program and NET_ADMIN")
    })?;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .map_err(|e| format!("cannot open the proxy's port: {e}"))?;
    let proxy_port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (dns_udp, dns_tcp) = dns_listeners().await?;
    let dns_port = dns_tcp.local_addr().map_err(|e| e.to_string())?.port();
    std::fs::create_dir_all(&o.state).map_err(|e| e.to_string())?;
    let authority = intercept::Authority::open(&o.state.join("ca"))
        .map_err(|e| format!("cannot set up the certificate authority for request rules: {e}"))?;
    let guard = Arc::new(Guard {
        entries: Mutex::new(BTreeMap::new()),
        state: o.state.clone(),
        table: rules::table(&o.prefix),
        proxy_port,
        dns_port,
        live: proxy::Live::default(),
        authority: Arc::new(authority),
        engine_subnets: Mutex::new(Vec::new()),
        busy: Mutex::new(Instant::now()),
        writing: Mutex::new(()),
    });
    guard.commit(read_entries(&o.state)?)?;
    eprintln!(
        "sandkit-agent netguard: guarding {} sandbox(es); proxy on port {proxy_port}",
        guard.entries.lock().expect("entries").len()
    );
    tokio::spawn(proxy::run(listener, guard.clone()));
    tokio::spawn(dns::run(dns_udp, dns_tcp, guard.clone()));

    let _ = std::fs::remove_file(CONTROL);
    let control = tokio::net::UnixListener::bind(CONTROL)
        .map_err(|e| format!("cannot listen on {CONTROL}: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(CONTROL, std::fs::Permissions::from_mode(0o600));
    }
    let g = guard.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = control.accept().await {
            tokio::spawn(answer(stream, g.clone()));
        }
    });

    let engine = Engine::new(&o.socket);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (g, prefix) = (guard.clone(), o.prefix.clone());
        let engine2 = engine.clone();
        let swept = tokio::task::spawn_blocking(move || sweep(&engine2, &prefix, &g)).await;
        if let Ok(Err(e)) = swept {
            eprintln!("sandkit-agent netguard: {e}");
            *guard.busy.lock().expect("busy") = Instant::now();
        }
        let idle = guard.entries.lock().expect("entries").is_empty()
            && guard.busy.lock().expect("busy").elapsed() >= o.idle_exit;
        if idle {
            // Under the write lock, and looked at again: a change may have just landed.
            let _writing = guard.writing.lock().expect("writing");
            if !guard.entries.lock().expect("entries").is_empty() {
                continue;
            }
            eprintln!("sandkit-agent netguard: no sandbox left; removing my rules and myself");
            let _ = guard.commit(BTreeMap::new());
            let path = format!("/containers/{}?force=1", encode(&o.name));
            if let Err(e) = engine.call("DELETE", &path) {
                eprintln!("sandkit-agent netguard: cannot remove {}: {e}", o.name);
                return Ok(());
            }
        }
    }
}

/// A TCP listener and a UDP socket on one free port of the host, for [`dns`].
async fn dns_listeners() -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), String> {
    let mut last = String::new();
    for _ in 0..20 {
        let tcp = tokio::net::TcpListener::bind("0.0.0.0:0")
            .await
            .map_err(|e| format!("cannot open the DNS port: {e}"))?;
        let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        match tokio::net::UdpSocket::bind(("0.0.0.0", port)).await {
            Ok(udp) => return Ok((udp, tcp)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "cannot open one port for DNS over UDP and TCP: {last}"
    ))
}

/// Drops the entries of sandboxes that are gone, and refreshes the engine's subnets.
fn sweep(engine: &Engine, prefix: &str, guard: &Guard) -> Result<(), String> {
    let label = format!("{prefix}.id");
    let list = engine
        .sandboxes(std::slice::from_ref(&label))
        .map_err(|e| format!("cannot list sandboxes: {e}"))?;
    let alive: std::collections::HashSet<String> = list
        .into_iter()
        .filter(|c| !matches!(c.state.as_str(), "exited" | "dead"))
        .filter_map(|c| c.labels.get(&label).cloned())
        .collect();
    let gone: Vec<String> = guard
        .entries
        .lock()
        .expect("entries")
        .keys()
        .filter(|id| !alive.contains(*id))
        .cloned()
        .collect();
    for id in gone {
        guard.clear(&id)?;
    }
    if let Ok(networks) = engine.get_json("/networks") {
        let subnets = networks
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|n| n["IPAM"]["Config"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| sandkit_core::Cidr::parse(c["Subnet"].as_str()?))
            .collect();
        *guard.engine_subnets.lock().expect("subnets") = subnets;
    }
    Ok(())
}

/// Answers one control connection, a request per line.
async fn answer(stream: tokio::net::UnixStream, guard: Arc<Guard>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let g = guard.clone();
        let arg = arg.to_string();
        let reply = match verb {
            "probe" => format!("ok {}", env!("CARGO_PKG_VERSION")),
            "set" => {
                let parsed = unhex(&arg)
                    .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()));
                match parsed {
                    Ok(entry) => tokio::task::spawn_blocking(move || g.set(entry))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                        .map_or_else(|e| format!("error {e}"), |()| "ok".into()),
                    Err(e) => format!("error bad entry: {e}"),
                }
            }
            "clear" => tokio::task::spawn_blocking(move || g.clear(&arg))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
                .map_or_else(|e| format!("error {e}"), |()| "ok".into()),
            // Whole, secrets too: the backend (which alone reaches this socket, inside the
            // guard's container) makes forks with the same policy.
            "get" => match guard.entries.lock().expect("entries").get(&arg) {
                Some(e) => hex(&serde_json::to_vec(e).unwrap_or_default()),
                None => "none".into(),
            },
            "status" => {
                let (connections, failed) = guard.live.counts();
                let sandboxes = guard.entries.lock().expect("entries").len();
                serde_json::json!({
                    "sandboxes": sandboxes,
                    "connections": connections,
                    "failed": failed,
                })
                .to_string()
            }
            "ca" => hex(guard.authority.certificate().as_bytes()),
            "trust" => match unhex(&arg).and_then(|pem| guard.authority.trust(&pem)) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error the roots to trust: {e}"),
            },
            other => format!("error unknown request {other:?}"),
        };
        let reply = reply.replace('\n', " ");
        if write
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Runs `nft -f -` with `script`.
fn apply(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("cannot write to nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Keeps `entry` (with its secrets: readable by the guard only).
fn write_entry(state: &Path, entry: &Entry) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = state.join(format!(".{}.tmp", entry.id));
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(&serde_json::to_vec(entry)?)?;
    std::fs::rename(&tmp, state.join(&entry.id))
}

/// The entries kept in `state`. Any that cannot be read is an error, not a sandbox left
/// unguarded: the guard does not start (the rules of the one before hold in the kernel) and
/// says which file to look at.
fn read_entries(state: &Path) -> Result<BTreeMap<String, Entry>, String> {
    let mut out = BTreeMap::new();
    let dir = std::fs::read_dir(state)
        .map_err(|e| format!("cannot read the saved entries in {}: {e}", state.display()))?;
    for dirent in dir {
        let path = dirent.map_err(|e| e.to_string())?.path();
        // The certificate authority's directory.
        if path.is_dir() {
            continue;
        }
        // A write cut short (its temporary file) never replaced the entry it was for.
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let entry = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
            .map_err(|e| {
                format!(
                    "the saved entry {} cannot be read ({e}); remove it if its sandbox is gone",
                    path.display()
                )
            })?;
        let mut entry = entry;
        entry.policy.secrets = secrets_of(&entry);
        out.insert(entry.id.clone(), entry);
    }
    Ok(out)
}

/// The secrets of `entry`'s rules: those the backend sent, and the names it did not send
/// held unset (their requests fail, saying so; the backend checked the names it knows).
fn secrets_of(entry: &Entry) -> sandkit_core::Secrets {
    let mut secrets: sandkit_core::Secrets = entry.secrets.iter().collect();
    for name in entry.policy.secret_names() {
        if !secrets.holds(&name) {
            secrets.unset(&name);
        }
    }
    secrets
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("odd length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}
