//! Volumes: engine volumes labelled as ours, their metadata in labels.

use std::collections::{BTreeMap, HashMap};

use bollard::volume::{CreateVolumeOptions, ListVolumesOptions, RemoveVolumeOptions};
use sandkit_core::{ErrorKind, Result, Volume};

use crate::error::{err, map};
use crate::runtime::DockerRuntime;

/// Whether the engine takes `name` as a volume name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl DockerRuntime {
    fn volume_label(&self) -> String {
        format!("{}.volume", self.settings.labels.prefix())
    }

    fn volume_of(
        &self,
        name: String,
        labels: &HashMap<String, String>,
        created: Option<&str>,
    ) -> Volume {
        let meta = self.settings.labels.meta_prefix();
        let mut volume = Volume::new(name);
        volume.metadata = labels
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&meta)?.to_string(), v.clone())))
            .collect();
        if let Some(t) = created.and_then(sandkit_core::raw::time::parse_rfc3339) {
            volume.created_at = t;
        }
        volume
    }

    pub(crate) async fn make_volume(
        &self,
        name: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Volume> {
        if !valid_name(name) {
            return Err(err(
                ErrorKind::InvalidInput,
                "create_volume",
                format!(
                    "'{name}' cannot name a volume: 2 to 128 letters, digits, '_', '.' or '-', \
                     starting with a letter or digit"
                ),
            ));
        }
        match self.docker.inspect_volume(name).await {
            Ok(_) => {
                return Err(err(
                    ErrorKind::Conflict,
                    "create_volume",
                    format!("a volume named '{name}' exists"),
                ))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(map(e, "create_volume", "volume")),
        }
        let mut labels: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| {
                (
                    format!("{}{k}", self.settings.labels.meta_prefix()),
                    v.clone(),
                )
            })
            .collect();
        labels.insert(self.volume_label(), "1".into());
        let made = self
            .docker
            .create_volume(CreateVolumeOptions {
                name: name.to_string(),
                labels,
                ..Default::default()
            })
            .await
            .map_err(|e| map(e, "create_volume", "volume"))?;
        Ok(self.volume_of(made.name, &made.labels, made.created_at.as_deref()))
    }

    pub(crate) async fn list_volumes(&self) -> Result<Vec<Volume>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=1", self.volume_label())],
        )]);
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions { filters }))
            .await
            .map_err(|e| map(e, "volumes", "volume"))?;
        let mut out: Vec<Volume> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| self.volume_of(v.name, &v.labels, v.created_at.as_deref()))
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    pub(crate) async fn drop_volume(&self, name: &str) -> Result<()> {
        let missing = || {
            err(
                ErrorKind::NotFound,
                "remove_volume",
                format!("volume '{name}' doesn't exist (removed, or not made here)"),
            )
        };
        let volume = match self.docker.inspect_volume(name).await {
            Ok(v) => v,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(missing()),
            Err(e) => return Err(map(e, "remove_volume", "volume")),
        };
        if !crate::labels::flag(&volume.labels, &self.volume_label()) {
            return Err(missing());
        }
        match self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: false }))
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(err(
                ErrorKind::Conflict,
                "remove_volume",
                format!("volume '{name}' is mounted by a sandbox; kill it first"),
            )),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(missing()),
            Err(e) => Err(map(e, "remove_volume", "volume")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn volume_names() {
        for good in ["ab", "a.b-c_d", "V1"] {
            assert!(super::valid_name(good), "{good}");
        }
        for bad in ["", "a", "-a", "a/b", "a b", "ü1"] {
            assert!(!super::valid_name(bad), "{bad}");
        }
    }
}
