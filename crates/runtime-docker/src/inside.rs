//! The agent inside a sandbox (the fast path): how the binary gets there, how it starts, and
//! how the backend reaches it.
//!
//! - **The binary** comes from a named volume, `<prefix>-agent-<digest>`, filled once per agent
//!   version (through the archive API, so a remote engine works too) and mounted read-only at
//!   `/.sandkit-agent` in every sandbox: nothing is copied per sandbox.
//! - **It starts** as the container's main process under the engine's init (PID 1), as
//!   `sandkit-agent supervise serve --socket /.sandkit-run/agent.sock ...`, which starts `serve`
//!   again if it dies (no shell of the image runs at start), with a fresh token read from
//!   `/.sandkit-run/token` (root only) and the socket root only.
//! - **The backend reaches it** through one attached exec of `sandkit-agent relay`, which joins the
//!   exec's stdio to the socket: envd's HTTP/2 over that one stream, multiplexed, reopened when
//!   it drops (`sandkit_envd_client::EnvdClient`). Every network mode works, `none` included.
//!
//! The token is not a secret boundary (the socket already admits only root, and root in the
//! sandbox owns the sandbox): it keeps a stray connection from being served. It is kept in a
//! label so that any process with the engine can reach the agent.

use std::sync::Arc;

use bollard::container::{Config, CreateContainerOptions, RemoveContainerOptions};
use bollard::models::{HostConfig, Mount as DockerMount, MountTypeEnum, MountVolumeOptions};
use bollard::volume::CreateVolumeOptions;
use bollard::Docker;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use sandkit_core::{ErrorKind, Result};
use sandkit_envd_client::{Connect, EnvdClient, EnvdIo};
use tokio::sync::OnceCell;
use tracing::{debug, info};

use crate::error::{err, map};
use crate::keeper::Keeper;

/// Where the agent's volume is mounted in a sandbox.
pub(crate) const MOUNT: &str = "/.sandkit-agent";
/// The agent binary in a sandbox.
pub(crate) const BIN: &str = "/.sandkit-agent/sandkit-agent";
/// The agent's socket, in a directory only root may enter.
pub(crate) const SOCKET: &str = "/.sandkit-run/agent.sock";
/// The token file, root only.
pub(crate) const TOKEN_FILE: &str = "/.sandkit-run/token";

/// The agent binary on the engine, as a volume.
pub(crate) struct Inside {
    docker: Docker,
    keeper: Arc<Keeper>,
    volume: String,
    filled: OnceCell<()>,
}

impl std::fmt::Debug for Inside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inside")
            .field("volume", &self.volume)
            .finish_non_exhaustive()
    }
}

impl Inside {
    pub(crate) fn new(docker: Docker, prefix: &str, keeper: Arc<Keeper>) -> Self {
        let volume = format!("{prefix}-agent-{}", keeper.tag());
        Inside {
            docker,
            keeper,
            volume,
            filled: OnceCell::new(),
        }
    }

    /// Makes sure the volume holds the binary (once per process; once per engine and version).
    pub(crate) async fn ensure(&self) -> Result<()> {
        self.filled
            .get_or_try_init(|| async {
                if self.docker.inspect_volume(&self.volume).await.is_ok() {
                    return Ok(());
                }
                let filled = self.fill().await;
                if filled.is_err() {
                    // Never leave a half-filled volume under the final name.
                    let _ = self.docker.remove_volume(&self.volume, None).await;
                }
                filled
            })
            .await
            .map(|_| ())
    }

    /// Makes and fills the volume through a container that never runs. Another process may be
    /// filling it at the same moment: the same bytes, written the same way. A sandbox started
    /// before the binary is whole retries it a second later.
    async fn fill(&self) -> Result<()> {
        let image = self.keeper.ensure_image().await?.to_string();
        self.docker
            .create_volume(CreateVolumeOptions {
                name: self.volume.as_str(),
                ..Default::default()
            })
            .await
            .map_err(|e| map(e, "create", "agent volume"))?;
        let filler = format!("{}-fill-{:08x}", self.volume, rand::random::<u32>());
        let config = Config {
            image: Some(image),
            entrypoint: Some(vec!["/sandkit-agent".into(), "--version".into()]),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(vec![DockerMount {
                    target: Some("/fill".into()),
                    source: Some(self.volume.clone()),
                    typ: Some(MountTypeEnum::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: filler.clone(),
                    platform: None,
                }),
                config,
            )
            .await
            .map_err(|e| map(e, "create", "agent volume"))?;
        let upload = async {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_size(self.keeper.binary().len() as u64);
            tar.append_data(&mut h, "sandkit-agent", self.keeper.binary())
                .map_err(|e| err(ErrorKind::Unexpected, "create", e.to_string()))?;
            let body = tar
                .into_inner()
                .map_err(|e| err(ErrorKind::Unexpected, "create", e.to_string()))?;
            self.docker
                .upload_to_container(
                    &filler,
                    Some(bollard::container::UploadToContainerOptions {
                        path: "/fill".to_string(),
                        ..Default::default()
                    }),
                    Bytes::from(body),
                )
                .await
                .map_err(|e| map(e, "create", "agent volume"))
        }
        .await;
        let _ = self
            .docker
            .remove_container(
                &filler,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        upload?;
        info!(volume = %self.volume, "filled the agent volume");
        Ok(())
    }

    /// The volume's name (`<prefix>-agent-<digest of the binary>`).
    pub(crate) fn volume(&self) -> &str {
        &self.volume
    }

    /// The read-only mount of the binary's volume.
    pub(crate) fn mount(&self) -> DockerMount {
        DockerMount {
            target: Some(MOUNT.into()),
            source: Some(self.volume.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(true),
            volume_options: Some(MountVolumeOptions {
                no_copy: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The container's main process on the fast path: the agent, started again if it ever ends,
/// by the agent itself (`supervise`): nothing of the image (its `/bin/sh` included) runs before
/// the sandbox's first command, which comes after the network guard holds it.
pub(crate) fn entrypoint(user: &str, workdir: &str) -> Vec<String> {
    [
        BIN,
        "supervise",
        "serve",
        "--socket",
        SOCKET,
        "--token-file",
        TOKEN_FILE,
        "--user",
        user,
        "--cwd",
        workdir,
    ]
    .map(String::from)
    .to_vec()
}

/// A fresh token.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Reaches the agent of one container through an attached exec of `sandkit-agent relay`.
#[derive(Debug)]
struct ExecRelay {
    docker: Docker,
    container: String,
}

impl Connect for ExecRelay {
    fn connect(&self) -> BoxFuture<'static, std::io::Result<Box<dyn EnvdIo>>> {
        let (docker, container) = (self.docker.clone(), self.container.clone());
        Box::pin(async move {
            let request = crate::exec::ExecRequest {
                cmd: vec![BIN.into(), "relay".into(), SOCKET.into()],
                user: Some("root".into()),
                stdin: true,
                ..Default::default()
            };
            let started = crate::exec::start(&docker, &container, request, "agent")
                .await
                .map_err(std::io::Error::other)?;
            let output = started.output.filter_map(|item| async move {
                use bollard::container::LogOutput;
                match item {
                    Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
                    Ok(LogOutput::StdErr { message }) => {
                        debug!(relay = %String::from_utf8_lossy(&message).trim(), "agent relay");
                        None
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(std::io::Error::other(e))),
                }
            });
            let reader = tokio_util::io::StreamReader::new(Box::pin(output));
            Ok(Box::new(tokio::io::join(reader, started.input)) as Box<dyn EnvdIo>)
        })
    }
}

/// The envd client of the agent in `container`, acting as `user` in `workdir` by default.
pub(crate) fn client(
    docker: &Docker,
    container: &str,
    id: &str,
    token: &str,
    user: &str,
    workdir: &str,
) -> Result<EnvdClient> {
    let connect = Arc::new(ExecRelay {
        docker: docker.clone(),
        container: container.to_string(),
    });
    Ok(EnvdClient::over(connect, id, Some(token.to_string()))
        .with_defaults(Some(user.to_string()), Some(workdir.to_string())))
}
