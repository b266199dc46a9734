//! The few Docker engine calls the keeper makes, as HTTP/1.0 over the engine's Unix socket
//! (HTTP/1.0: the engine answers without chunking and closes the connection, so a response is
//! simply everything read until the end).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response the keeper reads (a container list of thousands of sandboxes fits).
const MAX_RESPONSE: u64 = 64 << 20;

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
    fn encodes_a_filter() {
        assert_eq!(
            super::encode(r#"{"label":["sandkit.id"]}"#),
            "%7B%22label%22%3A%5B%22sandkit.id%22%5D%7D"
        );
    }
}
