//! `sandkit-agent deadlines`: the backend's channel to the keeper's state.
//!
//! The Docker backend runs this in the keeper's container through one attached exec and keeps
//! it open: a deadline update is then one line each way (well under a millisecond), where the
//! engine's archive API costs tens of milliseconds a call. One request a line on stdin, one
//! answer a line on stdout:
//!
//! ```text
//! set <id> <epoch-secs>   →  ok
//! get <id>                →  <epoch-secs> | none
//! all                     →  <id>=<epoch-secs> ... (space-separated, maybe empty)
//! claim <id> <hex>        →  ok      (a pooled sandbox's settings, hex-encoded JSON)
//! claims                  →  <id>=<hex> ... (space-separated, maybe empty)
//! ```
//!
//! Claims hold what a sandbox taken from a warm pool was asked to be (its metadata, env,
//! user, directory): labels cannot change after a container is made, and the sandbox itself
//! must not hold them.
//!
//! Anything else is answered `error <why>`. Files are replaced whole (written beside, then
//! renamed), so the keeper never reads a half-written deadline.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::keeper::read_deadline;

/// Serves requests from stdin until it closes.
pub(crate) fn run(state: &Path) -> ExitCode {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = answer(state, &line);
        if writeln!(stdout, "{answer}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The answer to one request line.
pub(crate) fn answer(state: &Path, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["set", id, secs] if valid_id(id) => match secs.parse::<u64>() {
            Ok(secs) => match write(state, id, secs) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error cannot write the deadline of {id}: {e}"),
            },
            Err(_) => format!("error not a number of seconds: {secs}"),
        },
        ["get", id] if valid_id(id) => match read_deadline(state, id) {
            Ok(Some(secs)) => secs.to_string(),
            Ok(None) => "none".into(),
            Err(()) => format!("error the deadline of {id} cannot be read"),
        },
        ["all"] => {
            let mut pairs = Vec::new();
            if let Ok(entries) = std::fs::read_dir(state) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if !valid_id(&name) {
                        continue;
                    }
                    match read_deadline(state, &name) {
                        Ok(Some(secs)) => pairs.push(format!("{name}={secs}")),
                        Ok(None) => {}
                        // One unreadable file makes the whole answer unknown.
                        Err(()) => return format!("error the deadline of {name} cannot be read"),
                    }
                }
            }
            pairs.join(" ")
        }
        ["claim", id, hex] if valid_id(id) && valid_hex(hex) => {
            match replace(state, &format!("{id}.claim"), hex) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error cannot write the claim of {id}: {e}"),
            }
        }
        ["claims"] => {
            let mut pairs = Vec::new();
            if let Ok(entries) = std::fs::read_dir(state) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    let Some(id) = name.strip_suffix(".claim").filter(|i| valid_id(i)) else {
                        continue;
                    };
                    match std::fs::read_to_string(entry.path()) {
                        Ok(hex) if valid_hex(hex.trim()) => {
                            pairs.push(format!("{id}={}", hex.trim()))
                        }
                        _ => return format!("error the claim of {id} cannot be read"),
                    }
                }
            }
            pairs.join(" ")
        }
        _ => format!("error unknown request: {line}"),
    }
}

/// Claims are at most 64 KiB of JSON, hex-encoded.
fn valid_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 * 1024 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Replaces `<state>/<name>` whole: written beside, then renamed.
fn replace(state: &Path, name: &str, content: &str) -> std::io::Result<()> {
    let tmp = state.join(format!(".{name}.new"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, state.join(name))
}

fn write(state: &Path, id: &str, secs: u64) -> std::io::Result<()> {
    replace(state, id, &format!("{secs}\n"))
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn requests_and_answers() {
        let dir =
            std::env::temp_dir().join(format!("sandkit-deadlines-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(answer(&dir, "get abc"), "none");
        assert_eq!(answer(&dir, "set abc 1700000000"), "ok");
        assert_eq!(answer(&dir, "set def 1800000000"), "ok");
        assert_eq!(answer(&dir, "get abc"), "1700000000");
        let mut all: Vec<String> = answer(&dir, "all").split(' ').map(str::to_string).collect();
        all.sort();
        assert_eq!(all, ["abc=1700000000", "def=1800000000"]);
        assert!(answer(&dir, "set ../etc 1").starts_with("error"));
        assert!(answer(&dir, "set abc soon").starts_with("error"));
        assert!(answer(&dir, "rm abc").starts_with("error"));
        assert_eq!(answer(&dir, "claims"), "");
        assert_eq!(answer(&dir, "claim abc 7b7d"), "ok");
        assert_eq!(answer(&dir, "claims"), "abc=7b7d");
        assert!(answer(&dir, "claim abc zz").starts_with("error"));
        assert!(answer(&dir, "claim ../x 7b7d").starts_with("error"));
        let mut all: Vec<String> = answer(&dir, "all").split(' ').map(str::to_string).collect();
        all.sort();
        assert_eq!(
            all,
            ["abc=1700000000", "def=1800000000"],
            "claims are not deadlines"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
