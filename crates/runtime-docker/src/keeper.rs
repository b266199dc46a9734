//! The deadline keeper: where a sandbox's time to live lives, out of the sandbox's reach.
//!
//! A container of its own on the engine, `<prefix>-keeper`, runs `sandkit-agent keeper` with the
//! engine's socket and no network. It kills each running sandbox labelled `<prefix>.ttl=keeper`
//! whose deadline has passed, whether or not any process of ours runs. A deadline is the
//! sandbox's `<prefix>.deadline` label (set at create) until [`Keeper::set_deadline`] writes
//! `/state/<id>` into the keeper's container through the engine's archive API: one engine call,
//! no exec, nothing inside the sandbox. The keeper removes itself once no sandbox is left; the
//! next sandbox starts a new one ([`Keeper::ensure`]).
//!
//! State goes through one attached exec of `sandkit-agent deadlines` in the keeper's container, kept
//! open per process: a deadline read or write is a line each way. When that channel cannot be
//! had (a keeper made by another version of the binary is running), the engine's archive API
//! reads and writes the same files, at tens of milliseconds a call.
//!
//! Its image, `sandkit-keeper:<digest of the binary>`, is imported from the binary alone (no
//! registry, no builder), so it works on a remote engine as well.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::container::{Config, CreateContainerOptions, DownloadFromContainerOptions};
use bollard::image::CreateImageOptions;
use bollard::models::{HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sandkit_core::{ErrorKind, Result};
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::error::{err, map};

/// Largest keeper state the backend reads (a deadline file is a dozen bytes).
const MAX_STATE: usize = 16 << 20;

/// How long a keeper seen running is trusted to still run before looking again.
const SEEN_FOR: Duration = Duration::from_secs(2);

/// The keeper of one engine and label prefix.
pub(crate) struct Keeper {
    docker: Docker,
    /// The keeper's container name.
    name: String,
    prefix: String,
    image: String,
    binary: Arc<Vec<u8>>,
    /// The engine's socket, as a path on the engine's host.
    socket: String,
    /// When the keeper was last seen running.
    seen: Mutex<Option<Instant>>,
    /// The open `sandkit-agent deadlines` exec, if any.
    channel: Mutex<Option<Channel>>,
}

/// Makes sure the helper container `name` (the keeper, the network guard) runs: starts it, or
/// makes it with `make` when it is missing. A helper that removes itself when idle may be on
/// its way out: that is retried.
pub(crate) async fn keep_running<F, Fut>(
    docker: &Docker,
    name: &str,
    what: &str,
    make: F,
) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for attempt in 0..8u64 {
        if attempt > 0 {
            // One that is leaving (idle) may be half removed: give the engine a moment.
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        match docker.inspect_container(name, None).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => return Ok(()),
            Ok(_) => match docker.start_container::<String>(name, None).await {
                Ok(()) => debug!(container = %name, "started {what}"),
                // Gone in between (it removed itself): make a new one.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => {}
                Err(e) => return Err(map(e, "keeper", name)),
            },
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => make().await?,
            Err(e) => return Err(map(e, "keeper", name)),
        }
    }
    Err(err(
        ErrorKind::Unavailable,
        "keeper",
        format!("{what} (container {name}) does not stay up; see `docker logs {name}`"),
    ))
}

/// Makes helper container `name` from `config`; another process making it at the same time
/// is fine (a name conflict).
pub(crate) async fn create_helper(
    docker: &Docker,
    name: &str,
    config: Config<String>,
    what: &str,
) -> Result<()> {
    let options = CreateContainerOptions {
        name: name.to_string(),
        platform: None,
    };
    match docker.create_container(Some(options), config).await {
        Ok(_) => {
            info!(container = %name, "made {what}");
            Ok(())
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(map(e, "keeper", name)),
    }
}

/// One attached exec of a helper's line protocol: a request line in, an answer line out.
pub(crate) struct Channel {
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    output: futures_util::stream::BoxStream<
        'static,
        std::result::Result<bollard::container::LogOutput, bollard::errors::Error>,
    >,
    buf: Vec<u8>,
}

impl Channel {
    /// Starts `cmd` in container `name` with stdin attached.
    pub(crate) async fn open(docker: &Docker, name: &str, cmd: Vec<String>) -> Result<Channel> {
        let request = crate::exec::ExecRequest {
            cmd,
            stdin: true,
            ..Default::default()
        };
        let started = crate::exec::start(docker, name, request, "keeper").await?;
        Ok(Channel {
            input: started.input,
            output: started.output,
            buf: Vec::new(),
        })
    }

    /// Sends one request line and reads one answer line.
    pub(crate) async fn ask(&mut self, request: &str) -> std::result::Result<String, String> {
        use tokio::io::AsyncWriteExt;
        self.input
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.input.flush().await.map_err(|e| e.to_string())?;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            match self.output.next().await {
                Some(Ok(bollard::container::LogOutput::StdOut { message })) => {
                    self.buf.extend_from_slice(&message)
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the channel closed".into()),
            }
        }
    }
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("name", &self.name)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl Keeper {
    /// A keeper that runs `binary` (a static `sandkit-agent`).
    pub(crate) fn new(docker: Docker, prefix: &str, binary: &Path, socket: &str) -> Result<Self> {
        let bytes = std::fs::read(binary).map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                "connect to engine",
                format!("cannot read the agent binary {}: {e}", binary.display()),
            )
        })?;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&bytes);
        let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Keeper {
            docker,
            name: format!("{prefix}-keeper"),
            prefix: prefix.to_string(),
            image: format!("{prefix}-keeper:{tag}"),
            binary: Arc::new(bytes),
            socket: socket.to_string(),
            seen: Mutex::new(None),
            channel: Mutex::new(None),
        })
    }

    /// Makes sure the keeper runs: imports its image and makes or starts its container when
    /// needed. Cheap when it was seen running a moment ago.
    pub(crate) async fn ensure(&self) -> Result<()> {
        let mut seen = self.seen.lock().await;
        if seen.is_some_and(|t| t.elapsed() < SEEN_FOR) {
            return Ok(());
        }
        keep_running(&self.docker, &self.name, "the deadline keeper", || {
            self.make()
        })
        .await?;
        *seen = Some(Instant::now());
        Ok(())
    }

    /// The agent binary this keeper runs.
    pub(crate) fn binary(&self) -> &[u8] {
        &self.binary
    }

    /// The keeper's image (`prefix-keeper:tag`), imported when missing: it holds the binary.
    pub(crate) async fn ensure_image(&self) -> Result<&str> {
        if self.docker.inspect_image(&self.image).await.is_err() {
            self.import().await?;
        }
        Ok(&self.image)
    }

    /// A short digest of the binary, naming what is made from it.
    pub(crate) fn tag(&self) -> &str {
        self.image.rsplit(':').next().unwrap_or_default()
    }

    /// Imports the image if missing and makes the container (another process may make it at
    /// the same time: a name conflict is fine).
    async fn make(&self) -> Result<()> {
        self.ensure_image().await?;
        let mut labels = HashMap::new();
        labels.insert(format!("{}.keeper", self.prefix), "1".to_string());
        let config = Config {
            image: Some(self.image.clone()),
            entrypoint: Some(vec![
                "/sandkit-agent".into(),
                "keeper".into(),
                "--prefix".into(),
                self.prefix.clone(),
                "--name".into(),
                self.name.clone(),
            ]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                // The state outlives a keeper container removed by hand: the next one keeps
                // the extended deadlines instead of falling back to those set at create.
                binds: Some(vec![
                    format!("{}:/var/run/docker.sock", self.socket),
                    format!("{}-keeper-state:/state", self.prefix),
                ]),
                network_mode: Some("none".into()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: None,
                }),
                memory: Some(256 << 20),
                pids_limit: Some(32),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        create_helper(&self.docker, &self.name, config, "the deadline keeper").await
    }

    /// `docker import` of a root file system holding the binary and an empty `/state`.
    async fn import(&self) -> Result<()> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o700);
        dir.set_size(0);
        tar.append_data(&mut dir, "state/", std::io::empty())
            .and_then(|_| {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o755);
                h.set_size(self.binary.len() as u64);
                tar.append_data(&mut h, "sandkit-agent", self.binary.as_slice())
            })
            .map_err(|e| err(ErrorKind::Unexpected, "keeper", e.to_string()))?;
        let body = tar
            .into_inner()
            .map_err(|e| err(ErrorKind::Unexpected, "keeper", e.to_string()))?;
        let (repo, tag) = self.image.split_once(':').expect("name:tag");
        self.docker
            .create_image(
                Some(CreateImageOptions {
                    from_src: "-",
                    repo,
                    tag,
                    ..Default::default()
                }),
                Some(Bytes::from(body)),
                None,
            )
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| map(e, "keeper", "image"))?;
        info!(image = %self.image, "imported the deadline keeper's image");
        Ok(())
    }

    /// Whether the keeper's container is running now (nothing is made).
    async fn running(&self) -> bool {
        if self
            .seen
            .lock()
            .await
            .is_some_and(|t| t.elapsed() < SEEN_FOR)
        {
            return true;
        }
        matches!(
            self.docker.inspect_container(&self.name, None).await,
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true)
        )
    }

    /// Asks the keeper's state one request over the channel, opening it when needed (and
    /// starting the keeper first when `start`; reads do not start one). `None` when no channel
    /// can be had: the caller uses the archive API instead.
    async fn ask(&self, request: &str, start: bool) -> Option<String> {
        let mut channel = self.channel.lock().await;
        for _ in 0..2 {
            if channel.is_none() {
                if start {
                    self.ensure().await.ok()?;
                } else if !self.running().await {
                    return None;
                }
                *channel = self.open().await;
                channel.as_ref()?;
            }
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                channel.as_mut().expect("open").ask(request),
            )
            .await;
            match answer {
                Ok(Ok(line)) if !line.starts_with("error ") => return Some(line),
                Ok(Ok(line)) => {
                    debug!(request, answer = %line, "the keeper refused a request");
                    return None;
                }
                Ok(Err(e)) => debug!(error = %e, "the keeper channel failed; reopening"),
                Err(_) => debug!("the keeper channel did not answer; reopening"),
            }
            *channel = None;
        }
        None
    }

    async fn open(&self) -> Option<Channel> {
        let cmd = vec!["/sandkit-agent".into(), "deadlines".into()];
        match Channel::open(&self.docker, &self.name, cmd).await {
            Ok(mut channel) => {
                // A keeper of another version may not have the command: check once.
                match channel.ask("get probe").await {
                    Ok(a) if a == "none" || a.parse::<u64>().is_ok() => Some(channel),
                    other => {
                        debug!(answer = ?other, "no deadline channel in this keeper; using the archive API");
                        None
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "cannot open the keeper channel; using the archive API");
                None
            }
        }
    }

    /// Sets the deadline of sandbox `id` (epoch seconds).
    pub(crate) async fn set_deadline(&self, id: &str, deadline: u64) -> Result<()> {
        if self
            .ask(&format!("set {id} {deadline}"), true)
            .await
            .as_deref()
            == Some("ok")
        {
            return Ok(());
        }
        self.ensure().await?;
        let content = format!("{deadline}\n");
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_size(content.len() as u64);
        tar.append_data(&mut h, id, content.as_bytes())
            .map_err(|e| err(ErrorKind::Unexpected, "set_timeout", e.to_string()))?;
        let body = tar
            .into_inner()
            .map_err(|e| err(ErrorKind::Unexpected, "set_timeout", e.to_string()))?;
        self.docker
            .upload_to_container(
                &self.name,
                Some(bollard::container::UploadToContainerOptions {
                    path: "/state".to_string(),
                    ..Default::default()
                }),
                Bytes::from(body),
            )
            .await
            .map_err(|e| map(e, "set_timeout", "keeper"))
    }

    /// The deadlines the keeper holds, by sandbox id; `None` when they cannot be read now
    /// (then nobody may act on a deadline it does not know).
    /// Keeps what pooled sandbox `id` was claimed as (hex-encoded JSON, see `crate::pool`).
    pub(crate) async fn claim(&self, id: &str, hex: &str) -> Result<()> {
        match self
            .ask(&format!("claim {id} {hex}"), true)
            .await
            .as_deref()
        {
            Some("ok") => Ok(()),
            _ => Err(err(
                ErrorKind::Unavailable,
                "create",
                "the deadline keeper cannot hold the claim of a pooled sandbox (a keeper of an \
                 older version?)",
            )),
        }
    }

    /// The claims of pooled sandboxes, id → hex; `None` when the keeper cannot say.
    pub(crate) async fn claims(&self) -> Option<BTreeMap<String, String>> {
        let all = self.ask("claims", false).await?;
        Some(
            all.split_whitespace()
                .filter_map(|pair| {
                    let (id, hex) = pair.split_once('=')?;
                    Some((id.to_string(), hex.to_string()))
                })
                .collect(),
        )
    }

    pub(crate) async fn deadlines(&self) -> Option<BTreeMap<String, u64>> {
        if let Some(all) = self.ask("all", false).await {
            return Some(
                all.split_whitespace()
                    .filter_map(|pair| {
                        let (id, secs) = pair.split_once('=')?;
                        Some((id.to_string(), secs.parse().ok()?))
                    })
                    .collect(),
            );
        }
        self.read_state("/state").await.ok()
    }

    /// The deadline the keeper holds for `id`.
    pub(crate) async fn deadline(&self, id: &str) -> Held {
        if let Some(answer) = self.ask(&format!("get {id}"), false).await {
            return match answer.parse() {
                Ok(secs) => Held::Set(secs),
                Err(_) if answer == "none" => Held::Unset,
                Err(_) => Held::Unknown,
            };
        }
        match self.read_state(&format!("/state/{id}")).await {
            Ok(mut m) => m.remove(id).map(Held::Set).unwrap_or(Held::Unknown),
            Err(StateError::NoFile) => Held::Unset,
            Err(StateError::Unreadable) => Held::Unknown,
        }
    }

    /// Reads deadline files from the keeper's container (its own data, never a sandbox's).
    async fn read_state(&self, path: &str) -> Result<BTreeMap<String, u64>, StateError> {
        let mut stream = self.docker.download_from_container(
            &self.name,
            Some(DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        let mut raw = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The keeper is there and has no file for it; a missing keeper knows nothing.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message,
                }) if message.contains("Could not find the file") => {
                    return Err(StateError::NoFile)
                }
                Err(_) => return Err(StateError::Unreadable),
            };
            if raw.len() + chunk.len() > MAX_STATE {
                return Err(StateError::Unreadable);
            }
            raw.extend_from_slice(&chunk);
        }
        let mut out = BTreeMap::new();
        let mut archive = tar::Archive::new(raw.as_slice());
        let entries = archive.entries().map_err(|_| StateError::Unreadable)?;
        for entry in entries {
            let mut entry = entry.map_err(|_| StateError::Unreadable)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let Some(name) = entry
                .path()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            else {
                continue;
            };
            let mut text = String::new();
            use std::io::Read;
            let _ = (&mut entry).take(32).read_to_string(&mut text);
            if let Ok(d) = text.trim().parse() {
                out.insert(name, d);
            }
        }
        Ok(out)
    }
}

/// What the keeper holds for one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// A deadline set after create (epoch seconds).
    Set(u64),
    /// Nothing: the deadline set at create stands.
    Unset,
    /// It cannot be read now: no deadline may be acted on.
    Unknown,
}

/// Why the keeper's state could not be read.
enum StateError {
    /// The keeper runs and has no such file.
    NoFile,
    /// The keeper is missing, or the engine failed.
    Unreadable,
}
