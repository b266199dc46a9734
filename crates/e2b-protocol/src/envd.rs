//! envd messages (`process.Process`, `filesystem.Filesystem`) in proto3 JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::json::{b64, i32_lenient, is_false, is_zero_i32, u32_lenient, u64_string};

/// envd's default port.
pub const ENVD_PORT: u16 = 49983;
/// The envd version a local server reports (unlocks every feature of the 2.63 SDK).
pub const ENVD_VERSION: &str = "0.6.13";

/// Paths of the RPCs.
pub mod rpc {
    /// `process.Process/Start` (server stream).
    pub const START: &str = "/process.Process/Start";
    /// `process.Process/Connect` (server stream).
    pub const CONNECT: &str = "/process.Process/Connect";
    /// `process.Process/List`.
    pub const LIST: &str = "/process.Process/List";
    /// `process.Process/SendInput`.
    pub const SEND_INPUT: &str = "/process.Process/SendInput";
    /// `process.Process/StreamInput` (client stream).
    pub const STREAM_INPUT: &str = "/process.Process/StreamInput";
    /// `process.Process/SendSignal`.
    pub const SEND_SIGNAL: &str = "/process.Process/SendSignal";
    /// `process.Process/CloseStdin`.
    pub const CLOSE_STDIN: &str = "/process.Process/CloseStdin";
    /// `process.Process/Update`.
    pub const UPDATE: &str = "/process.Process/Update";
    /// `filesystem.Filesystem/Stat`.
    pub const STAT: &str = "/filesystem.Filesystem/Stat";
    /// `filesystem.Filesystem/MakeDir`.
    pub const MAKE_DIR: &str = "/filesystem.Filesystem/MakeDir";
    /// `filesystem.Filesystem/Move`.
    pub const MOVE: &str = "/filesystem.Filesystem/Move";
    /// `filesystem.Filesystem/ListDir`.
    pub const LIST_DIR: &str = "/filesystem.Filesystem/ListDir";
    /// `filesystem.Filesystem/Remove`.
    pub const REMOVE: &str = "/filesystem.Filesystem/Remove";
    /// `filesystem.Filesystem/WatchDir` (server stream).
    pub const WATCH_DIR: &str = "/filesystem.Filesystem/WatchDir";
    /// `filesystem.Filesystem/CreateWatcher`.
    pub const CREATE_WATCHER: &str = "/filesystem.Filesystem/CreateWatcher";
    /// `filesystem.Filesystem/GetWatcherEvents`.
    pub const GET_WATCHER_EVENTS: &str = "/filesystem.Filesystem/GetWatcherEvents";
    /// `filesystem.Filesystem/RemoveWatcher`.
    pub const REMOVE_WATCHER: &str = "/filesystem.Filesystem/RemoveWatcher";
}

/// `ProcessConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// The program.
    pub cmd: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `PTY.Size`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Columns.
    #[serde(deserialize_with = "u32_lenient::deserialize", default)]
    pub cols: u32,
    /// Rows.
    #[serde(deserialize_with = "u32_lenient::deserialize", default)]
    pub rows: u32,
}

/// `PTY`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    /// Its size.
    #[serde(default)]
    pub size: PtySize,
}

/// `StartRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// What to run.
    pub process: ProcessConfig,
    /// Run on a PTY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    /// A tag to find it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Keep stdin open; absent means true (old clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// `ProcessSelector` (oneof pid | tag).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSelector {
    /// By pid.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_u32"
    )]
    pub pid: Option<u32>,
    /// By tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl ProcessSelector {
    /// Selects by pid.
    pub fn pid(pid: u32) -> Self {
        ProcessSelector {
            pid: Some(pid),
            tag: None,
        }
    }
}

fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    u32_lenient::deserialize(d).map(Some)
}

/// `ConnectRequest`, `CloseStdinRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRequest {
    /// Which process.
    #[serde(default)]
    pub process: ProcessSelector,
}

/// `DataEvent` (oneof stdout | stderr | pty), bytes as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataEvent {
    /// Standard output.
    Stdout(#[serde(with = "b64")] Vec<u8>),
    /// Standard error.
    Stderr(#[serde(with = "b64")] Vec<u8>),
    /// Terminal output.
    Pty(#[serde(with = "b64")] Vec<u8>),
}

/// `EndEvent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// Exit code; -1 when killed by a signal.
    #[serde(
        default,
        skip_serializing_if = "is_zero_i32",
        deserialize_with = "i32_lenient::deserialize"
    )]
    pub exit_code: i32,
    /// Whether it exited (false when killed by a signal).
    #[serde(default, skip_serializing_if = "is_false")]
    pub exited: bool,
    /// `exit status N` or `signal: killed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Set when the exit code is not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl EndEvent {
    /// The end event of a normal exit with `code`.
    pub fn exited(code: i32) -> Self {
        let status = format!("exit status {code}");
        EndEvent {
            exit_code: code,
            exited: true,
            error: (code != 0).then(|| status.clone()),
            status,
        }
    }
    /// The end event of a process killed by a signal name (`killed`, `terminated`).
    pub fn signaled(name: &str) -> Self {
        let status = format!("signal: {name}");
        EndEvent {
            exit_code: -1,
            exited: false,
            error: Some(status.clone()),
            status,
        }
    }
}

/// An empty message (`KeepAlive`, `{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `ProcessEvent` (oneof start | data | end | keepalive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEvent {
    /// Always first.
    Start {
        /// The process id.
        #[serde(deserialize_with = "u32_lenient::deserialize")]
        pid: u32,
    },
    /// Output.
    Data(DataEvent),
    /// The end.
    End(EndEvent),
    /// Nothing happened for a while.
    Keepalive(Empty),
}

/// `StartResponse` / `ConnectResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMessage {
    /// The event.
    pub event: ProcessEvent,
}

/// `ProcessInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// How it was started.
    #[serde(default)]
    pub config: ProcessConfig,
    /// Its pid.
    #[serde(default, deserialize_with = "u32_lenient::deserialize")]
    pub pid: u32,
    /// Its tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `ListResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// The processes.
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// `ProcessInput` (oneof stdin | pty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessInput {
    /// To stdin.
    Stdin(#[serde(with = "b64")] Vec<u8>),
    /// To the terminal.
    Pty(#[serde(with = "b64")] Vec<u8>),
}

impl ProcessInput {
    /// The bytes, wherever they go.
    pub fn bytes(&self) -> &[u8] {
        match self {
            ProcessInput::Stdin(b) | ProcessInput::Pty(b) => b,
        }
    }
}

/// `SendInputRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendInputRequest {
    /// Which process.
    #[serde(default)]
    pub process: ProcessSelector,
    /// What to send.
    pub input: ProcessInput,
}

/// `StreamInputRequest` (oneof start | data | keepalive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamInputRequest {
    /// First: which process.
    Start(ProcessRequest),
    /// Input.
    Data {
        /// What to send.
        input: ProcessInput,
    },
    /// Nothing.
    Keepalive(Empty),
}

/// `Signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGNAL_UNSPECIFIED`.
    Unspecified,
    /// `SIGNAL_SIGTERM`.
    Term,
    /// `SIGNAL_SIGKILL`.
    Kill,
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Signal::Unspecified => "SIGNAL_UNSPECIFIED",
            Signal::Term => "SIGNAL_SIGTERM",
            Signal::Kill => "SIGNAL_SIGKILL",
        })
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match enum_value(d)? {
            EnumValue::Name(n) if n == "SIGNAL_SIGTERM" => Signal::Term,
            EnumValue::Name(n) if n == "SIGNAL_SIGKILL" => Signal::Kill,
            EnumValue::Number(15) => Signal::Term,
            EnumValue::Number(9) => Signal::Kill,
            _ => Signal::Unspecified,
        })
    }
}

/// `SendSignalRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    /// Which process.
    #[serde(default)]
    pub process: ProcessSelector,
    /// Which signal.
    pub signal: Signal,
}

/// `UpdateRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// Which process.
    #[serde(default)]
    pub process: ProcessSelector,
    /// New terminal size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

enum EnumValue {
    Name(String),
    Number(i64),
}

fn enum_value<'de, D: Deserializer<'de>>(d: D) -> Result<EnumValue, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(i64),
        S(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::N(n) => EnumValue::Number(n),
        Raw::S(s) => EnumValue::Name(s),
    })
}

/// `FileType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileType {
    /// `FILE_TYPE_UNSPECIFIED`.
    #[default]
    Unspecified,
    /// `FILE_TYPE_FILE`.
    File,
    /// `FILE_TYPE_DIRECTORY`.
    Directory,
    /// `FILE_TYPE_SYMLINK` (older envd).
    Symlink,
}

impl Serialize for FileType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            FileType::Unspecified => "FILE_TYPE_UNSPECIFIED",
            FileType::File => "FILE_TYPE_FILE",
            FileType::Directory => "FILE_TYPE_DIRECTORY",
            FileType::Symlink => "FILE_TYPE_SYMLINK",
        })
    }
}

impl<'de> Deserialize<'de> for FileType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match enum_value(d)? {
            EnumValue::Name(n) if n == "FILE_TYPE_FILE" => FileType::File,
            EnumValue::Name(n) if n == "FILE_TYPE_DIRECTORY" => FileType::Directory,
            EnumValue::Name(n) if n == "FILE_TYPE_SYMLINK" => FileType::Symlink,
            EnumValue::Number(1) => FileType::File,
            EnumValue::Number(2) => FileType::Directory,
            EnumValue::Number(3) => FileType::Symlink,
            _ => FileType::Unspecified,
        })
    }
}

/// `EntryInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    /// Last path component.
    #[serde(default)]
    pub name: String,
    /// File, directory (the target's type for links, with `symlink_target` set).
    #[serde(rename = "type", default)]
    pub file_type: FileType,
    /// Full path.
    #[serde(default)]
    pub path: String,
    /// Size in bytes (an int64: a JSON string).
    #[serde(default, with = "u64_string")]
    pub size: u64,
    /// Permission bits.
    #[serde(default, deserialize_with = "u32_lenient::deserialize")]
    pub mode: u32,
    /// `-rw-r--r--` (Go's `FileMode.String()`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub permissions: String,
    /// Owner name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Group name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    /// Where a link points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// Extended-attribute metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Whether the entry is a link (newer SDKs).
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_symlink: bool,
}

/// `StatRequest`, `MakeDirRequest`, `RemoveRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    /// The path.
    #[serde(default)]
    pub path: String,
}

/// `ListDirRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirRequest {
    /// The directory.
    #[serde(default)]
    pub path: String,
    /// Levels; 0 means 1.
    #[serde(default, deserialize_with = "u32_lenient::deserialize")]
    pub depth: u32,
}

/// `MoveRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// From.
    #[serde(default)]
    pub source: String,
    /// To.
    #[serde(default)]
    pub destination: String,
}

/// `StatResponse`, `MakeDirResponse`, `MoveResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryResponse {
    /// The entry.
    #[serde(default)]
    pub entry: EntryInfo,
}

/// `ListDirResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirResponse {
    /// The entries, pre-order lexical.
    #[serde(default)]
    pub entries: Vec<EntryInfo>,
}

/// One item of the `POST /files` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteInfo {
    /// Full path.
    pub path: String,
    /// Last component.
    pub name: String,
    /// `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The file's metadata as read back after the write; left out when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The prefix of the upload headers that carry file metadata (`X-Metadata-<key>: <value>`).
pub const METADATA_HEADER_PREFIX: &str = "x-metadata-";

/// Checks file metadata as envd does before keeping it in `user.e2b.<key>` attributes: keys
/// of 1 to 246 bytes, keys and values printable ASCII, at most 4096 bytes in all (each key
/// counted with its 9-byte prefix).
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), String> {
    const PREFIX_LEN: usize = "user.e2b.".len();
    let printable = |s: &str| s.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let mut total = 0;
    for (k, v) in metadata {
        if k.is_empty() || k.len() > 255 - PREFIX_LEN {
            return Err(format!("key '{k}' must be 1 to {} bytes", 255 - PREFIX_LEN));
        }
        if !printable(k) || !printable(v) {
            return Err(format!(
                "key '{k}': keys and values must be printable ASCII"
            ));
        }
        total += PREFIX_LEN + k.len() + v.len();
    }
    if total > 4096 {
        return Err(format!("{total} bytes in all; at most 4096"));
    }
    Ok(())
}

/// `WatchDirRequest` and `CreateWatcherRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchRequest {
    /// The directory.
    #[serde(default)]
    pub path: String,
    /// Also below it.
    #[serde(default)]
    pub recursive: bool,
    /// Attach the entry to create, write and chmod events.
    #[serde(default)]
    pub include_entry: bool,
    /// Allow watching a network mount.
    #[serde(default)]
    pub allow_network_mounts: bool,
}

/// What happened to an entry (`EventType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Not set.
    #[default]
    #[serde(rename = "EVENT_TYPE_UNSPECIFIED")]
    Unspecified,
    /// Made.
    #[serde(rename = "EVENT_TYPE_CREATE")]
    Create,
    /// Written.
    #[serde(rename = "EVENT_TYPE_WRITE")]
    Write,
    /// Removed.
    #[serde(rename = "EVENT_TYPE_REMOVE")]
    Remove,
    /// Moved away.
    #[serde(rename = "EVENT_TYPE_RENAME")]
    Rename,
    /// Attributes changed.
    #[serde(rename = "EVENT_TYPE_CHMOD")]
    Chmod,
}

/// `FilesystemEvent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemEvent {
    /// The entry's path relative to the watched directory.
    #[serde(default)]
    pub name: String,
    /// What happened.
    #[serde(rename = "type", default)]
    pub kind: EventType,
    /// The entry, when asked for (create, write, chmod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `WatchDirResponse`: one message of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchDirResponse {
    /// The watch is in place.
    Start(Empty),
    /// A change.
    Filesystem(Box<FilesystemEvent>),
    /// Nothing happened for a while.
    Keepalive(Empty),
}

/// `CreateWatcherResponse`, `GetWatcherEventsRequest`, `RemoveWatcherRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatcherId {
    /// The watcher.
    #[serde(default)]
    pub watcher_id: String,
}

/// `GetWatcherEventsResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherEvents {
    /// What happened since the last call.
    #[serde(default)]
    pub events: Vec<FilesystemEvent>,
}

/// envd's `GET /metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvdMetrics {
    /// Unix seconds.
    pub ts: i64,
    /// CPUs.
    pub cpu_count: u32,
    /// CPU used, percent.
    pub cpu_used_pct: f32,
    /// Memory, MiB (deprecated by envd, still sent).
    pub mem_total_mib: u64,
    /// Memory used, MiB (deprecated by envd, still sent).
    pub mem_used_mib: u64,
    /// Memory, bytes.
    pub mem_total: u64,
    /// Memory used, bytes.
    pub mem_used: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Disk used, bytes.
    pub disk_used: u64,
    /// Disk size, bytes.
    pub disk_total: u64,
}

/// Go's `FileMode.String()` for a kind and permission bits: `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`.
pub fn permissions_string(kind: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_match_envd_json() {
        let start = EventMessage {
            event: ProcessEvent::Start { pid: 4242 },
        };
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"event":{"start":{"pid":4242}}}"#
        );
        let data = EventMessage {
            event: ProcessEvent::Data(DataEvent::Stdout(b"hello\n".to_vec())),
        };
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            r#"{"event":{"data":{"stdout":"aGVsbG8K"}}}"#
        );
        let end = EventMessage {
            event: ProcessEvent::End(EndEvent::exited(3)),
        };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}}}"#
        );
        let ok = EventMessage {
            event: ProcessEvent::End(EndEvent::exited(0)),
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#
        );
        let ka = EventMessage {
            event: ProcessEvent::Keepalive(Empty {}),
        };
        assert_eq!(
            serde_json::to_string(&ka).unwrap(),
            r#"{"event":{"keepalive":{}}}"#
        );
    }

    #[test]
    fn tolerant_decoding() {
        let m: EventMessage =
            serde_json::from_str(r#"{"event":{"start":{"pid":"7"}},"extra":1}"#).unwrap();
        assert_eq!(m.event, ProcessEvent::Start { pid: 7 });
        let e: EntryResponse = serde_json::from_str(
            r#"{"entry":{"name":"f","type":"FILE_TYPE_FILE","path":"/f","size":"12","mode":420,"unknown":true}}"#,
        )
        .unwrap();
        assert_eq!(
            (e.entry.size, e.entry.file_type, e.entry.mode),
            (12, FileType::File, 420)
        );
        let e: EntryResponse = serde_json::from_str(r#"{"entry":{"type":2,"size":5}}"#).unwrap();
        assert_eq!((e.entry.size, e.entry.file_type), (5, FileType::Directory));
        let s: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":99},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!((s.process.pid, s.signal), (Some(99), Signal::Kill));
        let s: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":99},"signal":15}"#).unwrap();
        assert_eq!(s.signal, Signal::Term);
    }

    #[test]
    fn requests_match_the_sdk() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"X":"y"},"cwd":"/tmp"},"stdin":false}"#,
        )
        .unwrap();
        assert_eq!(r.process.args[2], "echo hi");
        assert_eq!(r.stdin, Some(false));
        let i: StreamInputRequest =
            serde_json::from_str(r#"{"start":{"process":{"pid":7}}}"#).unwrap();
        assert_eq!(
            i,
            StreamInputRequest::Start(ProcessRequest {
                process: ProcessSelector::pid(7)
            })
        );
        let i: StreamInputRequest =
            serde_json::from_str(r#"{"data":{"input":{"stdin":"YQ=="}}}"#).unwrap();
        assert_eq!(
            i,
            StreamInputRequest::Data {
                input: ProcessInput::Stdin(b"a".to_vec())
            }
        );
        let e = EntryInfo {
            size: 12,
            ..Default::default()
        };
        assert!(serde_json::to_string(&e)
            .unwrap()
            .contains(r#""size":"12""#));
    }

    #[test]
    fn go_permissions() {
        assert_eq!(permissions_string('-', 0o644), "-rw-r--r--");
        assert_eq!(permissions_string('d', 0o755), "drwxr-xr-x");
    }
}
