//! The deadline keeper: ends each sandbox at its deadline, from outside it.
//!
//! It runs in a container of its own on the engine (made by the Docker backend, named
//! `<prefix>-keeper`), with the engine's socket and no network. Once a second it lists the
//! running sandboxes whose time to live it keeps (label `<prefix>.ttl=keeper`) and kills each
//! one whose deadline has passed; the engine then removes it (sandboxes are auto-removed).
//!
//! A sandbox's deadline is the file `<state>/<id>` (epoch seconds) when there is one — the
//! backend writes it there through the engine's archive API on every `set_timeout` — else its
//! `<prefix>.deadline` label, set at create. Nothing here is readable or writable from inside a
//! sandbox, and nothing in a sandbox is read. Paused sandboxes are left alone: their clock is
//! stopped, and resuming one writes its new deadline before it runs again.
//!
//! With no sandbox left for `--idle-exit` seconds, the keeper removes its own container; the
//! backend makes a new one with the next sandbox.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::docker::{encode, Engine};

/// The settings of a helper beside sandboxes (the keeper, the network guard), from its
/// command line.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) socket: PathBuf,
    pub(crate) prefix: String,
    pub(crate) state: PathBuf,
    pub(crate) name: String,
    pub(crate) idle_exit: Duration,
}

impl Options {
    /// Parses the flags; the container name defaults to `<prefix>-<role>`.
    pub(crate) fn parse(args: &[String], role: &str) -> Result<Self, String> {
        let mut o = Options {
            socket: "/var/run/docker.sock".into(),
            prefix: "sandkit".into(),
            state: "/state".into(),
            name: String::new(),
            idle_exit: Duration::from_secs(30),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--socket" => o.socket = value()?.into(),
                "--prefix" => o.prefix = value()?,
                "--state" => o.state = value()?.into(),
                "--name" => o.name = value()?,
                "--idle-exit" => {
                    let v = value()?;
                    o.idle_exit = Duration::from_secs(
                        v.parse()
                            .map_err(|_| format!("--idle-exit: not a number of seconds: {v}"))?,
                    );
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        if o.name.is_empty() {
            o.name = format!("{}-{role}", o.prefix);
        }
        Ok(o)
    }
}

/// Runs until no sandbox is left for `idle_exit`, then removes its own container.
pub(crate) fn run(o: &Options) -> ExitCode {
    let engine = Engine::new(&o.socket);
    eprintln!(
        "sandkit-agent keeper: keeping deadlines of '{}.ttl=keeper' sandboxes",
        o.prefix
    );
    let mut idle_since = Instant::now();
    let mut last_count = usize::MAX;
    loop {
        let result = round(&engine, o, now());
        if let Ok(n) = result {
            if n != last_count {
                eprintln!("sandkit-agent keeper: {n} sandbox(es)");
                last_count = n;
            }
        }
        match result {
            Ok(0) => {
                // Idle: no sandbox for a while, no deadline written lately (a backend about to
                // make or update a sandbox), and still none on a last look.
                if idle_since.elapsed() >= o.idle_exit
                    && !written_within(&o.state, o.idle_exit)
                    && matches!(round(&engine, o, now()), Ok(0))
                {
                    eprintln!("sandkit-agent keeper: no sandbox left; removing myself");
                    // Removing our own container kills this process.
                    let path = format!("/containers/{}?force=1", encode(&o.name));
                    if let Err(e) = engine.call("DELETE", &path) {
                        eprintln!("sandkit-agent keeper: cannot remove {}: {e}", o.name);
                        return ExitCode::SUCCESS;
                    }
                }
            }
            Ok(_) => idle_since = Instant::now(),
            Err(e) => {
                eprintln!("sandkit-agent keeper: {e}");
                idle_since = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One pass: kills what expired; returns how many sandboxes of ours exist.
fn round(engine: &Engine, o: &Options, now: u64) -> std::io::Result<usize> {
    let containers = engine.sandboxes(&[
        format!("{}.id", o.prefix),
        format!("{}.ttl=keeper", o.prefix),
    ])?;
    let id_label = format!("{}.id", o.prefix);
    let mut alive = HashSet::new();
    for c in &containers {
        let labels = &c.labels;
        let Some(id) = labels.get(&id_label) else {
            continue;
        };
        alive.insert(id.to_string());
        if c.state != "running" {
            continue;
        }
        // A file that cannot be read now is no reason to fall back to the deadline set at
        // create: the sandbox waits for the next round.
        let deadline = match read_deadline(&o.state, id) {
            Ok(Some(secs)) => Some(secs),
            Ok(None) => labels
                .get(&format!("{}.deadline", o.prefix))
                .and_then(|d| d.parse().ok()),
            Err(()) => None,
        };
        let Some(deadline) = deadline else { continue };
        if now >= deadline {
            let container = &c.id;
            // Auto-pause: paused, not killed; resuming it writes a new deadline first.
            if labels
                .get(&format!("{}.on_deadline", o.prefix))
                .map(String::as_str)
                == Some("pause")
            {
                match engine.call("POST", &format!("/containers/{container}/pause")) {
                    Ok((s, _)) if s < 300 || s == 404 || s == 409 => {
                        eprintln!("sandkit-agent keeper: sandbox {id} reached its deadline; paused")
                    }
                    Ok((s, body)) => eprintln!(
                        "sandkit-agent keeper: pause {id}: {s} {}",
                        String::from_utf8_lossy(&body)
                    ),
                    Err(e) => eprintln!("sandkit-agent keeper: pause {id}: {e}"),
                }
                continue;
            }
            match engine.call("POST", &format!("/containers/{container}/kill?signal=KILL")) {
                Ok((s, _)) if s < 300 || s == 404 || s == 409 => {
                    eprintln!("sandkit-agent keeper: sandbox {id} reached its deadline; killed")
                }
                Ok((s, body)) => eprintln!(
                    "sandkit-agent keeper: kill {id}: {s} {}",
                    String::from_utf8_lossy(&body)
                ),
                Err(e) => eprintln!("sandkit-agent keeper: kill {id}: {e}"),
            }
        }
    }
    forget_gone(&o.state, &alive);
    Ok(alive.len())
}

/// Whether a deadline file was written in the last `window`.
fn written_within(state: &Path, window: Duration) -> bool {
    let Ok(entries) = std::fs::read_dir(state) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < window)
    })
}

/// The deadline in `<state>/<id>`: epoch seconds, read from at most 32 bytes. `Ok(None)`: no
/// file; `Err`: a file that cannot be read or parsed (or an id that names no file).
pub(crate) fn read_deadline(state: &Path, id: &str) -> Result<Option<u64>, ()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(());
    }
    let file = match std::fs::File::open(state.join(id)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).map_err(|_| ())?;
    text.trim().parse().map(Some).map_err(|_| ())
}

/// Removes the deadline files of sandboxes that are gone (a minute after their last write, so
/// a file written just before its container is listed is kept).
fn forget_gone(state: &Path, alive: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(state) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // A pooled sandbox's claim goes with its deadline.
        let id = name.strip_suffix(".claim").unwrap_or(&name);
        if alive.contains(id) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let args: Vec<String> = ["--prefix", "t", "--idle-exit", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Options::parse(&args, "keeper").unwrap();
        assert_eq!(o.name, "t-keeper");
        assert_eq!(o.idle_exit, Duration::from_secs(5));
        assert!(Options::parse(&["--bogus".to_string()], "keeper").is_err());
        assert!(Options::parse(&["--idle-exit".to_string(), "x".to_string()], "keeper").is_err());
    }

    #[test]
    fn deadline_files_are_read_bounded() {
        let dir = std::env::temp_dir().join(format!("sandkit-keeper-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("abc"), "1700000000\n").unwrap();
        assert_eq!(read_deadline(&dir, "abc"), Ok(Some(1_700_000_000)));
        std::fs::write(dir.join("big"), "9".repeat(10_000)).unwrap();
        assert_eq!(
            read_deadline(&dir, "big"),
            Err(()),
            "only 32 bytes are read"
        );
        std::fs::write(dir.join("empty"), "").unwrap();
        assert_eq!(
            read_deadline(&dir, "empty"),
            Err(()),
            "half-written: not a deadline"
        );
        assert_eq!(read_deadline(&dir, "../etc"), Err(()));
        assert_eq!(read_deadline(&dir, "missing"), Ok(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
