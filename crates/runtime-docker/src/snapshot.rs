//! Snapshots and forks: a sandbox's files committed to an image.
//!
//! A snapshot is the container's file system committed to the image
//! `<prefix>-snapshot/<name>:default` (`name` defaults to a fresh id); its id is that image
//! reference, so a sandbox is made from it by naming it as the template. Memory and running
//! processes are not kept: sandboxes made from a snapshot start their processes afresh.
//!
//! Mounts are not part of a commit, so the agent's volume and the user's mounts stay out of
//! it. An image inherits every label of the container it was committed from and a label
//! cannot be removed, so the commit sets each of our container labels to the empty string
//! (read as absent: [`crate::labels::flag`]) and adds its own `snapshot.*` labels: of which
//! sandbox, when, and that sandbox's metadata.
//!
//! A fork is a snapshot made for the copies only: its image is untagged as soon as they are
//! made, and the engine keeps it while they use it. Untagged snapshot images no container
//! uses (replaced by a newer snapshot of the same name, deleted, or left by forks that ended)
//! are pruned after each snapshot, fork, delete and kill.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use bollard::container::Config;
use bollard::image::{
    CommitContainerOptions, ListImagesOptions, PruneImagesOptions, RemoveImageOptions,
};
use sandkit_core::{
    ErrorKind, MountSource, NetworkMode, Result, Sandbox, SandboxSpec, Snapshot, MAX_FORKS,
};
use tracing::{debug, info};

use crate::error::{err, map};
use crate::labels::flag;
use crate::runtime::DockerRuntime;

/// The tag of every snapshot image (E2B's snapshot names carry one too).
const TAG: &str = "default";

/// Whether `name` can name a snapshot image: `/`-separated parts of lowercase letters and
/// digits, joined inside a part by `.`, `_`, `__` or dashes (the engine's own rule).
pub(crate) fn valid_name(name: &str) -> bool {
    fn part(p: &str) -> bool {
        let b = p.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &p[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
                return false;
            }
        }
        true
    }
    !name.is_empty() && name.len() <= 128 && name.split('/').all(part)
}

impl DockerRuntime {
    fn snapshot_repo(&self) -> String {
        format!("{}-snapshot", self.settings.labels.prefix())
    }

    /// Commits sandbox `id`'s files to `<repo>/<name>:default`; `fork`: for forks only.
    pub(crate) async fn commit_snapshot(
        &self,
        id: &str,
        name: Option<&str>,
        fork: bool,
    ) -> Result<Snapshot> {
        let op = if fork { "fork" } else { "snapshot" };
        let name = match name {
            Some(n) if !valid_name(n) => {
                return Err(err(
                    ErrorKind::InvalidInput,
                    op,
                    format!(
                        "'{n}' cannot name a snapshot: use lowercase letters and digits, joined \
                         by '.', '_' or '-', and '/' between parts (at most 128 characters)"
                    ),
                ))
            }
            Some(n) => n.to_string(),
            None if fork => format!("fork-{}", crate::labels::new_id()),
            None => crate::labels::new_id(),
        };
        // The sandbox as its owner sees it (a pooled one's metadata is in its claim).
        let (_, _, labels) = self.sandbox_from_container(id, op).await?;
        let info = self.info_from_labels(id, &labels, sandkit_core::SandboxState::Running);
        let l = &self.settings.labels;
        let container = l.container(id);
        let inspect = self
            .docker
            .inspect_container(&container, None)
            .await
            .map_err(|e| map(e, op, "sandbox"))?;
        let own = format!("{}.", l.prefix());
        let keep = format!("{}.template.", l.prefix());
        let mut image_labels: HashMap<String, String> = inspect
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_keys()
            .filter(|k| k.starts_with(&own) && !k.starts_with(&keep))
            .map(|k| (k, String::new()))
            .collect();
        let now = SystemTime::now();
        image_labels.insert(l.snapshot(), "1".into());
        image_labels.insert(l.snapshot_of("sandbox"), id.to_string());
        image_labels.insert(l.snapshot_of("created"), crate::labels::created_label(now));
        image_labels.insert(
            l.snapshot_of("metadata"),
            serde_json::to_string(&info.metadata).expect("json"),
        );
        image_labels.insert(l.snapshot_of("template"), info.template.clone());
        image_labels.insert(
            l.snapshot_of("fork"),
            if fork { "1" } else { "" }.to_string(),
        );
        let repo = format!("{}/{name}", self.snapshot_repo());
        let gvisor = self
            .settings
            .oci_runtime
            .as_deref()
            .is_some_and(|r| r.contains("runsc"));
        let started = std::time::Instant::now();
        self.docker
            .commit_container(
                CommitContainerOptions {
                    container: container.clone(),
                    repo: repo.clone(),
                    tag: TAG.to_string(),
                    comment: format!("snapshot of sandbox {id}"),
                    author: "sandkit".to_string(),
                    // Paused for a consistent copy; not under gVisor, where pausing breaks
                    // the connections to the agent inside (the next call fails).
                    pause: !gvisor,
                    changes: None,
                },
                Config {
                    labels: Some(image_labels),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map(e, op, "sandbox"))?;
        let reference = format!("{repo}:{TAG}");
        info!(sandbox_id = id, snapshot = %reference, took_ms = started.elapsed().as_millis() as u64, "snapshot taken");
        // The image a same-named snapshot had is untagged now.
        self.prune_snapshots().await;
        let mut snapshot = Snapshot::new(reference.clone(), id);
        snapshot.names = vec![reference];
        snapshot.created_at = now;
        snapshot.metadata = info.metadata;
        Ok(snapshot)
    }

    /// Removes the untagged snapshot images no container uses any more.
    pub(crate) async fn prune_snapshots(&self) {
        let filters = HashMap::from([
            ("dangling".to_string(), vec!["true".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}=1", self.settings.labels.snapshot())],
            ),
        ]);
        match self
            .docker
            .prune_images(Some(PruneImagesOptions { filters }))
            .await
        {
            Ok(r) => {
                let gone = r.images_deleted.map_or(0, |d| d.len());
                if gone > 0 {
                    debug!(layers = gone, "pruned unused snapshot images");
                }
            }
            Err(e) => debug!(error = %e, "could not prune unused snapshot images"),
        }
    }

    /// The snapshots on this engine, newest first.
    pub(crate) async fn list_snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<Snapshot>> {
        let l = &self.settings.labels;
        let mut label = vec![format!("{}=1", l.snapshot())];
        if let Some(id) = sandbox_id {
            label.push(format!("{}={id}", l.snapshot_of("sandbox")));
        }
        let filters = HashMap::from([
            ("label".to_string(), label),
            ("dangling".to_string(), vec!["false".to_string()]),
        ]);
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                filters,
                ..Default::default()
            }))
            .await
            .map_err(|e| map(e, "snapshots", "image"))?;
        // A snapshot's own bytes are its image's beyond the image it was made from.
        let sizes: HashMap<String, i64> = self
            .docker
            .list_images(None::<ListImagesOptions<String>>)
            .await
            .map_err(|e| map(e, "snapshots", "image"))?
            .into_iter()
            .map(|i| (i.id, i.size))
            .collect();
        let repo = format!("{}/", self.snapshot_repo());
        let mut out: Vec<Snapshot> = images
            .into_iter()
            .filter_map(|image| {
                let names: Vec<String> = image
                    .repo_tags
                    .into_iter()
                    .filter(|t| t.starts_with(&repo))
                    .collect();
                let mut snapshot = self.snapshot_from_labels(names, &image.labels)?;
                let base = sizes.get(&image.parent_id).copied().unwrap_or(0);
                snapshot.size = u64::try_from(image.size - base).ok();
                Some(snapshot)
            })
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A snapshot record from an image's names and labels; `None` for a fork's image or one
    /// with no name of ours.
    fn snapshot_from_labels(
        &self,
        mut names: Vec<String>,
        labels: &HashMap<String, String>,
    ) -> Option<Snapshot> {
        let l = &self.settings.labels;
        if !flag(labels, &l.snapshot()) || flag(labels, &l.snapshot_of("fork")) {
            return None;
        }
        names.sort();
        let id = names.first()?.clone();
        let mut snapshot = Snapshot::new(
            id,
            labels
                .get(&l.snapshot_of("sandbox"))
                .cloned()
                .unwrap_or_default(),
        );
        snapshot.names = names;
        if let Some(t) = labels
            .get(&l.snapshot_of("created"))
            .and_then(|c| crate::labels::parse_created(c))
        {
            snapshot.created_at = t;
        }
        snapshot.metadata = labels
            .get(&l.snapshot_of("metadata"))
            .and_then(|m| serde_json::from_str::<BTreeMap<String, String>>(m).ok())
            .unwrap_or_default();
        Some(snapshot)
    }

    /// Deletes snapshot `id` (an image reference of ours).
    pub(crate) async fn remove_snapshot(&self, id: &str) -> Result<()> {
        let missing = || {
            err(
                ErrorKind::NotFound,
                "delete_snapshot",
                format!("snapshot {id} doesn't exist (deleted, or never made here)"),
            )
            .with_context("snapshot_id", id)
        };
        if !id.starts_with(&format!("{}/", self.snapshot_repo())) {
            return Err(missing());
        }
        let image = match self.docker.inspect_image(id).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(missing()),
            Err(e) => return Err(map(e, "delete_snapshot", "image")),
        };
        let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
        if self
            .snapshot_from_labels(vec![id.to_string()], &labels)
            .is_none()
        {
            return Err(missing());
        }
        self.untag(id).await.map_err(|e| match e.kind() {
            ErrorKind::NotFound => missing(),
            _ => e,
        })?;
        self.prune_snapshots().await;
        Ok(())
    }

    /// Removes an image's name; the engine keeps the image while containers use it.
    async fn untag(&self, reference: &str) -> Result<()> {
        self.docker
            .remove_image(
                reference,
                Some(RemoveImageOptions {
                    force: true,
                    noprune: false,
                }),
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| map(e, "delete_snapshot", "image"))
    }

    /// What sandbox `id` was made as, for its copies: template, metadata, environment, user,
    /// directory, network and its policy, names, ports, mounts and limits.
    async fn spec_of(&self, id: &str) -> Result<SandboxSpec> {
        let (_, state, labels) = self.sandbox_from_container(id, "fork").await?;
        let info = self.info_from_labels(id, &labels, state);
        let l = &self.settings.labels;
        let inspect = self
            .docker
            .inspect_container(&l.container(id), None)
            .await
            .map_err(|e| map(e, "fork", "sandbox"))?;
        let host = inspect.host_config.unwrap_or_default();
        let mut spec = SandboxSpec::new();
        spec.template = Some(info.template.clone()).filter(|t| !t.is_empty());
        spec.metadata = info.metadata;
        // A pooled sandbox's environment is in its claim; another's is in the image now.
        if flag(&labels, &l.pool()) {
            spec.env = self
                .claims()
                .await
                .and_then(|mut c| c.remove(id))
                .map(|c| c.env)
                .unwrap_or_default();
        }
        spec.cwd = labels.get(&l.workdir()).cloned().filter(|w| !w.is_empty());
        spec.user = labels.get(&l.user()).cloned().filter(|u| !u.is_empty());
        spec.auto_pause = labels.get(&l.on_deadline()).map(String::as_str) == Some("pause");
        let network = host
            .network_mode
            .clone()
            .filter(|n| n != "default")
            .unwrap_or_else(|| "bridge".into());
        spec.network = Some(NetworkMode::parse(&network));
        if let Some(guard) = &self.settings.netguard {
            if !matches!(network.as_str(), "none" | "host") {
                spec.network_policy = guard.policy(id).await?;
            }
        }
        spec.hosts = crate::runtime::fixed_hosts(&host);
        spec.ports = inspect
            .config
            .and_then(|c| c.exposed_ports)
            .unwrap_or_default()
            .keys()
            .filter_map(|p| p.strip_suffix("/tcp")?.parse().ok())
            .collect();
        spec.ports.sort_unstable();
        let agent_volume = self
            .settings
            .inside
            .as_ref()
            .map(|i| i.volume().to_string());
        spec.mounts = host
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let source = m.source?;
                if Some(&source) == agent_volume.as_ref() {
                    return None;
                }
                Some(sandkit_core::Mount {
                    source: match m.typ {
                        Some(bollard::models::MountTypeEnum::VOLUME) => MountSource::Volume(source),
                        _ => MountSource::HostPath(source),
                    },
                    target: m.target?,
                    read_only: m.read_only.unwrap_or(false),
                })
            })
            .collect();
        // The settings' own mounts are added again by create.
        spec.mounts
            .retain(|m| !self.settings.mounts.iter().any(|s| s.target == m.target));
        spec.resources.memory_mb = host
            .memory
            .filter(|m| *m > 0)
            .map(|m| m as u64 / (1024 * 1024));
        spec.resources.cpus = host.nano_cpus.filter(|c| *c > 0).map(|c| c as f64 / 1e9);
        spec.resources.pids = host.pids_limit.filter(|p| *p > 0).map(|p| p as u64);
        Ok(spec)
    }

    /// Makes `count` copies of sandbox `id` from one capture of its files.
    pub(crate) async fn fork_sandbox(
        &self,
        id: &str,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Box<dyn Sandbox>>>> {
        if !(1..=MAX_FORKS).contains(&count) {
            return Err(err(
                ErrorKind::InvalidInput,
                "fork",
                format!("a fork makes 1 to {MAX_FORKS} sandboxes, not {count}"),
            ));
        }
        let mut spec = self.spec_of(id).await?;
        spec.timeout = timeout;
        let capture = self.commit_snapshot(id, None, true).await?;
        let made = futures_util::future::join_all((0..count).map(|_| {
            let spec = spec.clone();
            let image = capture.id.clone();
            async move {
                self.make_from(spec, Some(image), false)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Sandbox>)
            }
        }))
        .await;
        // The copies hold the image; its name goes now, the image with the last of them.
        if let Err(e) = self.untag(&capture.id).await {
            debug!(error = %e, image = %capture.id, "could not untag a fork's image");
        }
        self.prune_snapshots().await;
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn snapshot_names_follow_the_engine() {
        for good in ["a", "my-snap", "t1/my.snap", "a__b", "a---b", "x/y/z"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "", "A", "-a", "a-", "a..b", "a._b", "a/", "/a", "a//b", "a b", "a:b", "ü",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(!valid_name(&"a".repeat(129)));
    }
}
