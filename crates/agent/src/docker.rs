//! The few Docker engine calls the keeper makes, as HTTP/1.0 over the engine's Unix socket
//! (HTTP/1.0: the engine answers without chunking and closes the connection, so a response is
//! simply everything read until the end).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response read whole (a container list is streamed instead: see
/// [`Engine::sandboxes`]).
const MAX_RESPONSE: u64 = 64 << 20;
/// Longest label key or value [`Engine::sandboxes`] keeps: ours are short, and a sandbox's
/// metadata can be made as long as its owner likes.
const MAX_LABEL: usize = 256;

/// A container as [`Engine::sandboxes`] lists it: only what the keeper and the guard use.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Listed {
    /// The engine's container id.
    #[serde(rename = "Id")]
    pub(crate) id: String,
    /// `running`, `paused`, `exited`, ...
    #[serde(rename = "State", default)]
    pub(crate) state: String,
    /// The container's short labels outside its metadata (`<prefix>.meta.*` are skipped).
    #[serde(rename = "Labels", default, deserialize_with = "short_labels")]
    pub(crate) labels: BTreeMap<String, String>,
}

/// Keeps the labels a sandbox's own metadata cannot fake or inflate: none under `.meta.`, and
/// none longer than [`MAX_LABEL`]; the rest of the map is skipped without being held.
fn short_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Short(Option<String>);
    impl<'de> serde::Deserialize<'de> for Short {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Short;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a string")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Short, E> {
                    Ok(Short((v.len() <= MAX_LABEL).then(|| v.to_string())))
                }
            }
            d.deserialize_str(V)
        }
    }
    struct Map;
    impl<'de> serde::de::Visitor<'de> for Map {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of labels")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(Short(key)) = map.next_key::<Short>()? {
                match key.filter(|k| !k.contains(".meta.")) {
                    Some(k) => {
                        if let Short(Some(v)) = map.next_value::<Short>()? {
                            kept.insert(k, v);
                        }
                    }
                    None => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            Ok(kept)
        }
    }
    d.deserialize_any(Map)
}

/// A client of one engine socket.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    socket: PathBuf,
}

impl Engine {
    pub(crate) fn new(socket: &Path) -> Self {
        Engine {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends a request with no body; returns the status and the body.
    pub(crate) fn call(&self, method: &str, path: &str) -> io::Result<(u16, Vec<u8>)> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of headers"))?;
        let status = std::str::from_utf8(&raw[..split])
            .ok()
            .and_then(|head| head.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))?;
        Ok((status, raw[split + 4..].to_vec()))
    }

    /// The containers carrying every label in `labels` (`key` or `key=value`), read as the
    /// engine sends them: however large the listing (sandboxes' metadata is theirs to fill),
    /// only [`Listed`]'s fields are held, so a round never fails for size.
    pub(crate) fn sandboxes(&self, labels: &[String]) -> io::Result<Vec<Listed>> {
        let filter = serde_json::json!({ "label": labels }).to_string();
        let path = format!("/containers/json?all=1&filters={}", encode(&filter));
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut reader = BufReader::with_capacity(256 << 10, stream);
        let mut status = None;
        let mut head = 0usize;
        loop {
            let mut line = String::new();
            let n = (&mut reader).take(16 << 10).read_line(&mut line)?;
            head += n;
            if n == 0 || head > 64 << 10 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no end of headers",
                ));
            }
            if status.is_none() {
                status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let status =
            status.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))?;
        if !(200..300).contains(&status) {
            let mut body = Vec::new();
            reader.take(4096).read_to_end(&mut body)?;
            return Err(io::Error::other(format!(
                "GET /containers/json: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_reader(reader).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `GET path` as JSON, failing on a non-2xx status.
    pub(crate) fn get_json(&self, path: &str) -> io::Result<serde_json::Value> {
        let (status, body) = self.call("GET", path)?;
        if !(200..300).contains(&status) {
            return Err(io::Error::other(format!(
                "GET {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn listings_keep_only_short_labels_of_our_own() {
        let big = "x".repeat(10_000);
        let raw = serde_json::json!([
            {"Id": "c1", "State": "running", "Names": ["/a"], "Labels": {
                "sandkit.id": "s1", "sandkit.deadline": "5",
                "sandkit.meta.sandkit.id": "forged", "sandkit.meta.big": big,
                big.clone(): "v",
            }},
            {"Id": "c2", "State": "exited", "Labels": null},
        ])
        .to_string();
        let listed: Vec<super::Listed> = serde_json::from_str(&raw).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, "c1");
        assert_eq!(
            listed[0].labels.keys().collect::<Vec<_>>(),
            ["sandkit.deadline", "sandkit.id"]
        );
        assert_eq!(listed[0].labels["sandkit.id"], "s1");
        assert!(listed[1].labels.is_empty());
        assert_eq!(listed[1].state, "exited");
    }

    #[test]
    fn encodes_a_filter() {
        assert_eq!(
            super::encode(r#"{"label":["sandkit.id"]}"#),
            "%7B%22label%22%3A%5B%22sandkit.id%22%5D%7D"
        );
    }
}
