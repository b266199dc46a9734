//! A [swiftide](https://docs.rs/swiftide-core) [`ToolExecutor`] over any sandkit [`Sandbox`]: a
//! swiftide agent's shell commands, file reads and writes run in a sandbox on Docker, E2B or
//! any other backend, and its indexing pipelines read the sandbox's files.
//!
//! | swiftide | in the sandbox |
//! |---|---|
//! | `Command::Shell` | `bash -lc` (or `sh -c`), in `current_dir`, killed with its children at `timeout`; stdout and stderr merged as they came |
//! | `Command::ReadFile` | the file's text |
//! | `Command::WriteFile` | the file written whole, its directories made |
//! | `stream_files(path, extensions)` | a node per file below `path` (by extension), each read when the stream reaches it |
//!
//! A non-zero exit is `CommandError::NonZeroExit` with the output; a timeout is
//! `CommandError::TimedOut` with the output so far; anything else (the sandbox gone, the
//! backend unreachable) is `CommandError::ExecutorError`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use swiftide_core::{Command, ToolExecutor};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let config = sandkit_config::Config::load()?;
//! let runtime = config.runtime().await?;
//! let sandbox = runtime.create(sandkit_core::SandboxSpec::new()).await?;
//! let executor = sandkit_swiftide::SandboxExecutor::new(Arc::from(sandbox));
//! let out = executor.exec_cmd(&Command::shell("uname -a")).await?;
//! println!("{out}");
//! executor.sandbox().kill().await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use sandkit_core::{CommandSpec, ErrorKind, FileStoreExt, Sandbox, SandboxExt};
use swiftide_core::indexing::{IndexingStream, Node};
use swiftide_core::{Command, CommandError, CommandOutput, ToolExecutor};

/// The most bytes of output one command keeps (the rest is dropped, and said so).
const OUTPUT_LIMIT: usize = 4 << 20;

/// A [`ToolExecutor`] that runs everything in one sandbox. Cheap to clone (it holds the
/// sandbox in an [`Arc`]).
#[derive(Debug, Clone)]
pub struct SandboxExecutor {
    sandbox: Arc<dyn Sandbox>,
}

impl SandboxExecutor {
    /// An executor over `sandbox`.
    pub fn new(sandbox: Arc<dyn Sandbox>) -> Self {
        SandboxExecutor { sandbox }
    }

    /// The sandbox, to kill it when the agent is done.
    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.sandbox
    }

    /// `path` as the sandbox sees it: relative paths from `current_dir`, when given.
    fn resolve(path: &Path, current_dir: Option<&Path>) -> String {
        match current_dir {
            Some(dir) if path.is_relative() => dir.join(path).to_string_lossy().into_owned(),
            _ => path.to_string_lossy().into_owned(),
        }
    }

    async fn shell(
        &self,
        line: &str,
        current_dir: Option<&Path>,
        timeout: Option<&Duration>,
    ) -> Result<CommandOutput, CommandError> {
        // stderr joins stdout, in the order they came, as in swiftide's own executors (what the
        // shell itself says of a bad line goes to the stderr read below).
        let mut spec = CommandSpec::shell(format!("exec 2>&1\n{line}"));
        if let Some(dir) = current_dir {
            spec = spec.cwd(dir.to_string_lossy());
        }
        if let Some(t) = timeout {
            spec = spec.timeout(*t);
        }
        match self.sandbox.exec_with_limit(spec, OUTPUT_LIMIT).await {
            Ok(out) => {
                let mut text = out.stdout_text();
                text.push_str(&out.stderr_text());
                if out.truncated {
                    text.push_str("\n[output past 4 MiB dropped]");
                }
                match out.exit_code {
                    Some(0) => Ok(CommandOutput::new(text)),
                    _ => Err(CommandError::NonZeroExit(CommandOutput::new(text))),
                }
            }
            Err(mut e) if e.kind() == ErrorKind::Timeout => {
                let so_far = e.take_output().unwrap_or_default();
                Err(CommandError::TimedOut {
                    timeout: timeout.copied().unwrap_or_default(),
                    output: CommandOutput::new(format!(
                        "{}{}",
                        so_far.stdout_text(),
                        so_far.stderr_text()
                    )),
                })
            }
            Err(e) => Err(CommandError::ExecutorError(e.into())),
        }
    }
}

/// A file the executor cannot read or write is a failed command (the agent sees why), not an
/// executor failure.
fn file_error(e: sandkit_core::Error) -> CommandError {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::InvalidInput | ErrorKind::PermissionDenied => {
            CommandError::NonZeroExit(CommandOutput::new(e.to_string()))
        }
        _ => CommandError::ExecutorError(e.into()),
    }
}

#[async_trait]
impl ToolExecutor for SandboxExecutor {
    async fn exec_cmd(&self, cmd: &Command) -> Result<CommandOutput, CommandError> {
        let dir = cmd.current_dir_path();
        let timeout = cmd.timeout_duration();
        match cmd {
            Command::Shell { command, .. } => self.shell(command, dir, timeout).await,
            Command::ReadFile { path, .. } => {
                let path = Self::resolve(path, dir);
                let read = self.sandbox.files().read_to_string(&path);
                let text = match timeout {
                    Some(t) => tokio_timeout(*t, read).await?,
                    None => read.await,
                };
                text.map(CommandOutput::new).map_err(file_error)
            }
            Command::WriteFile { path, content, .. } => {
                let path = Self::resolve(path, dir);
                if let Some(parent) = Path::new(&path).parent() {
                    let parent = parent.to_string_lossy();
                    if !parent.is_empty() && parent != "/" {
                        match self.sandbox.files().mkdir(&parent).await {
                            Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                                return Err(file_error(e))
                            }
                            _ => {}
                        }
                    }
                }
                let write = self.sandbox.files().write_str(&path, content);
                match timeout {
                    Some(t) => tokio_timeout(*t, write).await?,
                    None => write.await,
                }
                .map_err(file_error)?;
                Ok(CommandOutput::empty())
            }
            other => Err(CommandError::ExecutorError(anyhow::anyhow!(
                "sandkit-swiftide does not know the command {other:?}"
            ))),
        }
    }

    async fn stream_files(
        &self,
        path: &Path,
        extensions: Option<Vec<String>>,
    ) -> anyhow::Result<IndexingStream<String>> {
        let mut root = path.to_string_lossy().into_owned();
        if root.starts_with('-') {
            root.insert_str(0, "./");
        }
        let listed = self
            .sandbox
            .exec(
                CommandSpec::program("find", [root.as_str(), "-type", "f", "-print0"])
                    .timeout(Duration::from_secs(120)),
            )
            .await?;
        // Unreadable corners do not spoil the rest of the listing.
        if !listed.success() && listed.stdout.is_empty() {
            anyhow::bail!("cannot list {root}: {}", listed.stderr_text().trim());
        }
        let wanted = |p: &str| match &extensions {
            None => true,
            Some(exts) => Path::new(p)
                .extension()
                .is_some_and(|e| exts.iter().any(|x| x.trim_start_matches('.') == e)),
        };
        let mut paths: Vec<String> = listed
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| wanted(p))
            .collect();
        paths.sort();
        tracing::debug!(
            root,
            files = paths.len(),
            "streaming files from the sandbox"
        );
        let sandbox = self.sandbox.clone();
        // Each file is read when the stream reaches it, never all at once; a file that is not
        // text (or cannot be read) is skipped, as indexing would fail on it.
        let stream = futures_util::stream::iter(paths)
            .then(move |p| {
                let sandbox = sandbox.clone();
                async move {
                    match sandbox.files().read_to_string(&p).await {
                        Ok(text) => {
                            let mut node = Node::<String>::new(text);
                            node.path = p.into();
                            Some(Ok(node))
                        }
                        Err(e) => {
                            tracing::debug!(path = p, error = %e, "skipped a file that is not text");
                            None
                        }
                    }
                }
            })
            .filter_map(std::future::ready);
        let boxed: std::pin::Pin<
            Box<dyn futures_util::Stream<Item = anyhow::Result<Node<String>>> + Send>,
        > = Box::pin(stream);
        Ok(boxed.into())
    }
}

/// `future` within `t`, else a timed-out command.
async fn tokio_timeout<T>(
    t: Duration,
    future: impl std::future::Future<Output = T>,
) -> Result<T, CommandError> {
    tokio::time::timeout(t, future)
        .await
        .map_err(|_| CommandError::TimedOut {
            timeout: t,
            output: CommandOutput::empty(),
        })
}
