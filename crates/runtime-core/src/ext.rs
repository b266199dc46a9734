//! Conveniences written once over the small traits: [`SandboxExt`] and [`FileStoreExt`].
//!
//! Both are implemented for every type that implements the base trait (including `dyn`
//! objects). Do not implement them yourself.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::raw::once_stream;
use crate::{
    CommandSpec, EntryKind, Error, ErrorKind, ExecOutput, FileStore, ProcessEvent, Result, Sandbox,
};

/// How many bytes of stdout plus stderr [`SandboxExt::exec`] keeps: 64 MiB.
pub const DEFAULT_EXEC_LIMIT: usize = 64 << 20;

/// Run-to-completion helpers on every [`Sandbox`].
#[async_trait]
pub trait SandboxExt: Sandbox {
    /// Runs a command and collects its output (up to [`DEFAULT_EXEC_LIMIT`] bytes).
    ///
    /// A non-zero exit is `Ok` with that exit code. A timeout is an
    /// [`ErrorKind::Timeout`] error whose [`Error::output`] holds what was printed before.
    async fn exec(&self, spec: CommandSpec) -> Result<ExecOutput> {
        self.exec_with_limit(spec, DEFAULT_EXEC_LIMIT).await
    }

    /// Runs a shell line (`bash -l -c`, or `sh -c` where there is no bash) and collects its
    /// output.
    async fn exec_shell(&self, line: &str) -> Result<ExecOutput> {
        self.exec(CommandSpec::shell(line)).await
    }

    /// Like [`SandboxExt::exec`], keeping at most `limit` bytes of output; the rest is read and
    /// dropped, and [`ExecOutput::truncated`] says so.
    async fn exec_with_limit(&self, spec: CommandSpec, limit: usize) -> Result<ExecOutput> {
        let mut process = self.spawn(spec).await?;
        let mut out = ExecOutput::default();
        while let Some(event) = process.next_event().await {
            match event {
                Ok(ProcessEvent::Stdout(b)) => keep(&mut out, true, &b, limit),
                Ok(ProcessEvent::Stderr(b)) => keep(&mut out, false, &b, limit),
                Ok(ProcessEvent::Exited { code }) => {
                    out.exit_code = Some(code);
                    return Ok(out);
                }
                // A command that timed out is never worth running again blindly, whatever
                // the backend said: it may have had effects before it hung.
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    return Err(e.with_output(out).with_retryable(false))
                }
                Err(e) => return Err(e.with_output(out)),
            }
        }
        Err(Error::new(
            ErrorKind::Unexpected,
            "the output ended without an exit code",
        )
        .with_operation("exec")
        .with_output(out))
    }
}

fn keep(out: &mut ExecOutput, stdout: bool, bytes: &[u8], limit: usize) {
    let room = limit.saturating_sub(out.stdout.len() + out.stderr.len());
    if bytes.len() > room {
        out.truncated = true;
    }
    let take = &bytes[..bytes.len().min(room)];
    if stdout {
        out.stdout.extend_from_slice(take)
    } else {
        out.stderr.extend_from_slice(take)
    }
}

impl<T: Sandbox + ?Sized> SandboxExt for T {}

/// Whole-file and tree helpers on every [`FileStore`].
#[async_trait]
pub trait FileStoreExt: FileStore {
    /// Reads a whole file.
    async fn read(&self, path: &str) -> Result<Bytes> {
        let mut stream = self.read_stream(path).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }

    /// Reads a whole file as UTF-8 text.
    async fn read_to_string(&self, path: &str) -> Result<String> {
        let bytes = self.read(path).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "the file is not valid UTF-8 text")
                .with_operation("read_to_string")
                .with_context("path", path)
                .with_source(e)
        })
    }

    /// Writes a whole file, creating parents and replacing what was there.
    async fn write(&self, path: &str, content: Bytes) -> Result<()> {
        self.write_stream(path, once_stream(content)).await
    }

    /// Writes text to a file.
    async fn write_str(&self, path: &str, content: &str) -> Result<()> {
        self.write(path, Bytes::copy_from_slice(content.as_bytes()))
            .await
    }

    /// Whether the path exists (a dangling link exists).
    async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a directory and its parents; an existing directory is fine.
    async fn create_dir_all(&self, path: &str) -> Result<()> {
        match self.mkdir(path).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => match self.stat(path).await?.kind {
                EntryKind::Dir => Ok(()),
                _ => Err(e),
            },
            other => other,
        }
    }
}

impl<T: FileStore + ?Sized> FileStoreExt for T {}

/// Copies a file or a directory tree from one store to another, streaming each file.
///
/// Directories are created at `to`; symbolic links and special files are skipped, and no
/// permission bits are carried over (files get the destination's defaults). A listing entry
/// that is not under `from_path` (or climbs with `..`) stops the copy with
/// [`ErrorKind::InvalidInput`]: a hostile source cannot place files beside the destination.
///
/// ```
/// # async fn demo(a: &dyn sandkit_core::FileStore, b: &dyn sandkit_core::FileStore)
/// # -> sandkit_core::Result<()> {
/// sandkit_core::copy_tree(a, "project", b, "/workspace/project").await?;
/// # Ok(()) }
/// ```
pub async fn copy_tree(
    from: &dyn FileStore,
    from_path: &str,
    to: &dyn FileStore,
    to_path: &str,
) -> Result<()> {
    let root = from.stat(from_path).await?;
    match root.kind {
        EntryKind::File => {
            let content = from.read_stream(from_path).await?;
            to.write_stream(to_path, content).await
        }
        EntryKind::Dir => {
            to.create_dir_all(to_path).await?;
            let entries = from.list(from_path, u32::MAX).await?;
            let prefix = root.path.trim_end_matches('/');
            for entry in entries {
                // The listing may come from a hostile sandbox: every entry must lie under the
                // copied directory, with no `.`/`..` to climb out of the destination.
                let under = if prefix.is_empty() {
                    Some(entry.path.trim_start_matches('/'))
                } else {
                    entry
                        .path
                        .strip_prefix(prefix)
                        .and_then(|r| r.strip_prefix('/'))
                };
                let rel = under
                    .filter(|r| {
                        !r.is_empty() && r.split('/').all(|p| !matches!(p, "" | "." | ".."))
                    })
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidInput,
                            "the source listed an entry outside the directory being copied; \
                             the copy stopped there",
                        )
                        .with_operation("copy_tree")
                        .with_context("path", &entry.path)
                    })?;
                let dest = format!("{}/{}", to_path.trim_end_matches('/'), rel);
                match entry.kind {
                    EntryKind::Dir => to.create_dir_all(&dest).await?,
                    EntryKind::File => {
                        let content = from.read_stream(&entry.path).await?;
                        to.write_stream(&dest, content).await?;
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            "only files and directories can be copied",
        )
        .with_operation("copy_tree")
        .with_context("path", from_path)),
    }
}
