//! The control-plane REST API: request and response models, errors, the metadata filter.

use std::collections::BTreeMap;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// The `clientID` E2B reports for every sandbox.
pub const CLIENT_ID: &str = "6532622b";

/// `NewSandbox` (v1) and `NewSandboxV2`: what `POST /sandboxes` and `POST /v2/sandboxes` take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// Template id or alias.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Time to live in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Pause instead of kill at the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables of the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Internet access (snake_case on the wire, as the SDK sends it).
    #[serde(
        default,
        rename = "allow_internet_access",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    /// v1 only: ask for an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Network policy (`allowOut`, `denyOut`, `allowPublicTraffic`, `maskRequestHost`, ...):
    /// a server must honour it or refuse it, never drop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// `{"enabled": bool}`: resume on traffic to a paused sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<serde_json::Value>,
    /// An MCP gateway configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<serde_json::Value>,
    /// Volumes to mount (`[{"name","path"}]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<serde_json::Value>,
    /// Anything else the client sent (a server refuses what it cannot honour).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `network` on create (the SDK's `SandboxNetworkConfig`), and as `GET /sandboxes/{id}`
/// reports it: what the sandbox may reach, and who may reach its ports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// Addresses, CIDRs and domains always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// Addresses and CIDRs refused unless allowed (`0.0.0.0/0`: all traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
    /// Whether the sandbox's ports answer without the traffic access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_traffic: Option<bool>,
    /// The `Host` requests to the sandbox's ports carry (`${PORT}` is replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_request_host: Option<String>,
    /// DNS servers reachable while `allow_out` names a domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<String>>,
    /// A SOCKS5 proxy the sandbox's outbound TCP goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<EgressProxyConfig>,
    /// Per-host request transforms: domain (or `*.domain`) to its rules, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<BTreeMap<String, Vec<NetworkRule>>>,
    /// Anything else the client sent (a server refuses what it does not know).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// [`NetworkConfig::egress_proxy`] (the SDK's `SandboxEgressProxyConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressProxyConfig {
    /// `host:port`.
    pub address: String,
    /// RFC 1929 user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// RFC 1929 password (never reported back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// TLS to the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EgressProxyTlsConfig>,
}

/// [`EgressProxyConfig::tls`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressProxyTlsConfig {
    /// Whether TLS is used; when false no other field may be set.
    pub enabled: bool,
    /// The name verified and sent; default: the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM certificates replacing the system's roots (never reported back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

/// One rule of [`NetworkConfig::rules`] (the SDK's `SandboxNetworkRule`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRule {
    /// What is done to a matching request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<NetworkTransform>,
}

/// [`NetworkRule::transform`] (the SDK's `SandboxNetworkTransform`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkTransform {
    /// Headers set on the request, replacing any of the same name; values may hold
    /// `${e2b.secrets.NAME}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// A secret as the API reports it (`Secret`): never its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// `sec_…`.
    #[serde(rename = "secretID")]
    pub secret_id: String,
    /// Its name, lower case.
    pub name: String,
    /// The version requests are served from (1 at create, one more at each update).
    pub current_version: u64,
    /// The caller's metadata.
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// `POST /secrets` (`NewSecret`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSecret {
    /// Its name (kept lower case).
    pub name: String,
    /// Its value: write-only.
    pub value: String,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /secrets/{id}` (`SecretUpdate`): a new version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretUpdate {
    /// The new value.
    pub value: String,
    /// Replaces the metadata when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The body of `PUT /sandboxes/{id}/network` (the SDK's `SandboxNetworkUpdate`): replaces the
/// sandbox's egress rules whole (a field left out is cleared).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUpdate {
    /// As [`NetworkConfig::allow_out`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// As [`NetworkConfig::deny_out`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
    /// As [`NetworkConfig::dns_servers`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<String>>,
    /// As [`NetworkConfig::egress_proxy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<EgressProxyConfig>,
    /// As [`NetworkConfig::rules`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<BTreeMap<String, Vec<NetworkRule>>>,
    /// `false`: deny all traffic but `allow_out` (snake_case on the wire, as the SDK sends it).
    #[serde(
        default,
        rename = "allow_internet_access",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    /// Anything else the client sent.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `Sandbox`: the answer to create and connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCreated {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Template alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Always [`CLIENT_ID`].
    #[serde(rename = "clientID", default)]
    pub client_id: String,
    /// envd version.
    #[serde(default)]
    pub envd_version: String,
    /// Token for envd (`X-Access-Token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Token for user ports (always present, may be null).
    #[serde(default)]
    pub traffic_access_token: Option<String>,
    /// Domain of the sandbox (always present, may be null).
    #[serde(default)]
    pub domain: Option<String>,
}

/// `SandboxDetail` (`GET /sandboxes/{id}`) and `ListedSandbox` (list).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Template alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Always [`CLIENT_ID`].
    #[serde(rename = "clientID", default)]
    pub client_id: String,
    /// RFC 3339.
    #[serde(default)]
    pub started_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub end_at: String,
    /// envd version.
    #[serde(default)]
    pub envd_version: String,
    /// CPUs.
    #[serde(default)]
    pub cpu_count: u32,
    /// Memory.
    #[serde(rename = "memoryMB", default)]
    pub memory_mb: u64,
    /// Disk.
    #[serde(rename = "diskSizeMB", default)]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    #[serde(default)]
    pub state: String,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Token for envd (detail only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Domain (detail only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Internet access as asked at create (detail only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
    /// The network configuration as sent, at create or by the last `PUT .../network`
    /// (detail only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// The volumes mounted, `[{name, path}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// One of `volumeMounts`: a volume by name, and where it is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name.
    pub name: String,
    /// The absolute mount path.
    pub path: String,
}

/// `POST /v2/sandboxes/{id}/connect` and `POST /sandboxes/{id}/resume` bodies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectSandbox {
    /// Seconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// `POST /sandboxes/{id}/timeout` body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTimeout {
    /// Seconds from now.
    pub timeout: i64,
}

/// `POST /sandboxes/{id}/snapshots` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// A name to find the snapshot by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Keep memory too (`mode="full"`); unset, the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// `SnapshotInfo`: the answer to a snapshot, and each entry of `GET /snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// What to create sandboxes from (as a template id) and to delete
    /// (`DELETE /templates/{id}`).
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// Full names with their tag.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `POST /sandboxes/{id}/fork` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRequest {
    /// Time to live of each copy, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// How many copies (1 to 20; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// One entry of the answer to a fork: a sandbox, or why that copy failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkResult {
    /// The copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxCreated>,
    /// Why it was not made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// Every error body: `{"code": <status>, "message": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The HTTP status.
    #[serde(default)]
    pub code: u16,
    /// What happened.
    #[serde(default)]
    pub message: String,
}

/// A path parameter as the SDK's `encode_path_param` writes it: every character but
/// letters, digits and `_.-~` percent-encoded (a snapshot id's `/` and `:` included).
pub fn path_param(value: &str) -> String {
    const PARAM: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'_')
        .remove(b'.')
        .remove(b'-')
        .remove(b'~');
    utf8_percent_encode(value, PARAM).to_string()
}

/// Characters Python's `quote(s, safe="/")` leaves alone, inverted.
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'/');
/// `quote_plus(s, safe="")`.
const QUOTE_PLUS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// The value of the `metadata` list parameter, encoded as the Python SDK does (before the
/// HTTP client encodes it once more as a query value).
///
/// ```
/// use std::collections::BTreeMap;
/// let m = BTreeMap::from([("k".to_string(), "v w".to_string())]);
/// assert_eq!(sandkit_e2b_protocol::encode_metadata_filter(&m), "k=v%2520w");
/// ```
pub fn encode_metadata_filter(metadata: &BTreeMap<String, String>) -> String {
    metadata
        .iter()
        .map(|(k, v)| {
            let k = utf8_percent_encode(k, QUOTE).to_string();
            let v = utf8_percent_encode(v, QUOTE).to_string();
            format!(
                "{}={}",
                utf8_percent_encode(&k, QUOTE_PLUS),
                utf8_percent_encode(&v, QUOTE_PLUS)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn unescape(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Decodes the `metadata` parameter (already query-decoded once) as E2B's API does: unescape
/// the whole, split on `&` and `=`, unescape each key and value.
///
/// ```
/// let m = sandkit_e2b_protocol::decode_metadata_filter("k=v%2520w&a=b");
/// assert_eq!(m["k"], "v w");
/// assert_eq!(m["a"], "b");
/// ```
pub fn decode_metadata_filter(param: &str) -> BTreeMap<String, String> {
    unescape(param)
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((unescape(k), unescape(v)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filter_round_trip() {
        let m = BTreeMap::from([
            ("k".to_string(), "v w".to_string()),
            ("odd key&=".to_string(), "100% ü/x".to_string()),
        ]);
        let encoded = encode_metadata_filter(&m);
        // The HTTP layer's query encoding is undone by the server framework before this.
        assert_eq!(decode_metadata_filter(&encoded), m);
    }

    #[test]
    fn create_body_matches_the_sdk() {
        let body: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","timeout":120,"metadata":{"k":"v"},"envVars":{"E":"1"},"allow_internet_access":false,"autoPause":true,"autoResume":{"enabled":true}}"#,
        )
        .unwrap();
        assert_eq!(body.template_id, "base");
        assert_eq!(body.timeout, Some(120));
        assert_eq!(body.env_vars.unwrap()["E"], "1");
        assert_eq!(body.allow_internet_access, Some(false));
    }

    #[test]
    fn created_has_null_fields() {
        let c = SandboxCreated {
            template_id: "base".into(),
            sandbox_id: "i1".into(),
            client_id: CLIENT_ID.into(),
            envd_version: "0.6.13".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""trafficAccessToken":null"#), "{json}");
        assert!(json.contains(r#""domain":null"#), "{json}");
        assert!(json.contains(r#""sandboxID":"i1""#), "{json}");
    }
}
