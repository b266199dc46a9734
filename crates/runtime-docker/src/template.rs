//! E2B-style templates (`e2b.toml` + Dockerfile) built into local images.

use std::collections::HashMap;
use std::path::Path;

use bollard::image::BuildImageOptions;
use futures_util::StreamExt;
use sandkit_core::{ErrorKind, Result};
use serde::Deserialize;
use tracing::info;

use crate::error::{err, map};
use crate::runtime::DockerRuntime;

const START_LABEL: &str = "sandkit.template.start_cmd";
const READY_LABEL: &str = "sandkit.template.ready_cmd";
const CPU_LABEL: &str = "sandkit.template.cpu_count";
const MEMORY_LABEL: &str = "sandkit.template.memory_mb";
const ID_LABEL: &str = "sandkit.template.id";

/// `e2b.toml`, as the E2B CLI writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    /// The template id.
    pub template_id: String,
    /// A readable name; the image is tagged with it (else with the id).
    pub template_name: Option<String>,
    /// The Dockerfile, relative to the directory. Default `e2b.Dockerfile`, else `Dockerfile`.
    pub dockerfile: Option<String>,
    /// Run in the background when a sandbox starts.
    pub start_cmd: Option<String>,
    /// Run until it succeeds before `create` returns.
    pub ready_cmd: Option<String>,
    /// CPUs for sandboxes of this template.
    pub cpu_count: Option<u32>,
    /// Memory (MiB) for sandboxes of this template.
    pub memory_mb: Option<u32>,
    /// Old CLI key, accepted and ignored.
    pub team_id: Option<String>,
}

impl TemplateFile {
    /// Reads `DIR/e2b.toml`.
    pub fn load(dir: &Path) -> Result<TemplateFile> {
        let path = dir.join("e2b.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            sandkit_core::Error::from(e)
                .with_operation("template build")
                .with_context("file", path.display())
        })?;
        toml::from_str(&text).map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                "template build",
                format!("{} is not a valid e2b.toml: {e}", path.display()),
            )
        })
    }

    /// The image tag: the template name, else its id.
    pub fn image_name(&self) -> String {
        self.template_name
            .clone()
            .unwrap_or_else(|| self.template_id.clone())
            .to_lowercase()
    }
}

/// What a built template asks of the sandboxes made from it (read from image labels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TemplateInfo {
    pub(crate) start_cmd: Option<String>,
    pub(crate) ready_cmd: Option<String>,
    pub(crate) cpu_count: Option<u32>,
    pub(crate) memory_mb: Option<u32>,
    /// Whether the image is Linux on x86_64, where the agent runs.
    pub(crate) agent_can_run: bool,
    /// The metadata of the sandbox it was taken from, when the image is a snapshot.
    pub(crate) snapshot_metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl TemplateInfo {
    pub(crate) fn from_labels(labels: HashMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        TemplateInfo {
            start_cmd: get(START_LABEL),
            ready_cmd: get(READY_LABEL),
            cpu_count: get(CPU_LABEL).and_then(|v| v.parse().ok()),
            memory_mb: get(MEMORY_LABEL).and_then(|v| v.parse().ok()),
            agent_can_run: true,
            snapshot_metadata: None,
        }
    }
}

impl DockerRuntime {
    /// Builds the template in `dir` (`e2b.toml` and its Dockerfile) into a local image tagged
    /// with the template's name, passing each line of build output to `on_output`.
    ///
    /// Sandboxes made with that name as their template run its `start_cmd` in the background
    /// and wait for its `ready_cmd` to succeed. No registry is contacted: a `FROM` must name
    /// an image already on the engine.
    pub async fn build_template(
        &self,
        dir: &Path,
        mut on_output: impl FnMut(&str) + Send,
    ) -> Result<String> {
        let file = TemplateFile::load(dir)?;
        let dockerfile = match &file.dockerfile {
            Some(d) => d.clone(),
            None if dir.join("e2b.Dockerfile").is_file() => "e2b.Dockerfile".into(),
            None => "Dockerfile".into(),
        };
        if !dir.join(&dockerfile).is_file() {
            return Err(err(
                ErrorKind::NotFound,
                "template build",
                format!(
                    "the Dockerfile {} does not exist",
                    dir.join(&dockerfile).display()
                ),
            ));
        }
        let tag = file.image_name();
        let context = tokio::task::spawn_blocking({
            let dir = dir.to_path_buf();
            move || -> std::io::Result<Vec<u8>> {
                let mut tar = tar::Builder::new(Vec::new());
                tar.follow_symlinks(false);
                tar.append_dir_all(".", &dir)?;
                tar.into_inner()
            }
        })
        .await
        .map_err(|e| err(ErrorKind::Unexpected, "template build", e.to_string()))??;

        let mut labels = HashMap::new();
        labels.insert(ID_LABEL.to_string(), file.template_id.clone());
        labels.insert(
            START_LABEL.to_string(),
            file.start_cmd.clone().unwrap_or_default(),
        );
        labels.insert(
            READY_LABEL.to_string(),
            file.ready_cmd.clone().unwrap_or_default(),
        );
        if let Some(c) = file.cpu_count {
            labels.insert(CPU_LABEL.to_string(), c.to_string());
        }
        if let Some(m) = file.memory_mb {
            labels.insert(MEMORY_LABEL.to_string(), m.to_string());
        }
        let options = BuildImageOptions {
            dockerfile: dockerfile.clone(),
            t: tag.clone(),
            labels,
            rm: true,
            forcerm: true,
            pull: false,
            ..Default::default()
        };
        info!(tag, dir = %dir.display(), "building template");
        let mut stream = self.docker.build_image(options, None, Some(context.into()));
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| map(e, "template build", "base image"))?;
            if let Some(text) = item.stream.as_deref() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    on_output(line);
                }
            }
            if let Some(e) = item.error {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "template build",
                    format!("the build of {tag} failed: {e} (no registry is reachable: a FROM must name a local image such as sandkit-base:bookworm)"),
                ));
            }
        }
        Ok(tag)
    }
}
