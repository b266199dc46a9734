//! [`LocalFiles`]: the machine's files by system calls, as one user.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sandkit_core::{ByteStream, EntryInfo, EntryKind, Error, ErrorKind, FileStore, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::users::{as_user, Ident, Names};

/// Read chunk size.
const CHUNK: usize = 256 * 1024;
/// Prefix of the temporary files writes go through.
pub(crate) const TEMP_PREFIX: &str = ".sandkit-write-";

/// The files of a local sandbox, seen as one user.
///
/// - Relative paths are relative to the sandbox's working directory.
/// - Writes are atomic: content goes to a temporary file in the same directory, renamed over
///   the target when complete. A write cut short (an error in the stream, a dropped future)
///   leaves the old content and no temporary file. A write onto a symbolic link replaces the
///   link; it never writes through it.
/// - Acting as another user (see [`Sandbox::files_as`](sandkit_core::Sandbox::files_as)),
///   every system call runs on a thread with that user's uid, gid and groups: the kernel checks
///   their permissions, and what is made belongs to them.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    base: Arc<PathBuf>,
    who: Option<Arc<Ident>>,
}

impl LocalFiles {
    /// The atomic write: a temporary file beside the target, filled, given its metadata, then
    /// renamed over the target.
    async fn write(
        &self,
        path: &str,
        mut content: ByteStream,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<()> {
        let real = self.path(path)?;
        let target = real.clone();
        let temp = temp_beside(&real);
        let mut guard = TempGuard::new(temp.clone());
        let (made, dropped) = (temp.clone(), guard.dropped.clone());
        let file = self
            .run("write", path, move || open_temp(&target, &made, &dropped))
            .await?;
        let mut file = tokio::fs::File::from_std(file);
        while let Some(chunk) = content.next().await {
            let chunk = chunk.map_err(|e| e.with_operation("write").with_context("path", path))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| io_error(e, "write", path))?;
        }
        file.flush().await.map_err(|e| io_error(e, "write", path))?;
        drop(file);
        self.run("write", path, move || {
            if let Some(m) = &metadata {
                crate::xattr::replace(&temp, m).map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOTSUP) => io::Error::new(
                        io::ErrorKind::Unsupported,
                        "this file system keeps no extended attributes",
                    ),
                    _ => e,
                })?;
            }
            fs::rename(&temp, &real)
        })
        .await?;
        guard.path = None;
        Ok(())
    }

    pub(crate) fn new(base: PathBuf, who: Option<Ident>) -> Self {
        LocalFiles {
            base: Arc::new(base),
            who: who.map(Arc::new),
        }
    }

    fn path(&self, path: &str) -> Result<PathBuf> {
        if path.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "the path is empty"));
        }
        if path.as_bytes().contains(&0) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a path cannot contain a NUL byte",
            ));
        }
        Ok(self.base.join(path))
    }

    async fn run<T, F>(&self, op: &'static str, path: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        as_user(self.who.as_deref(), f)
            .await
            .map_err(|e| io_error(e, op, path))
    }
}

/// An I/O error as sandkit classifies it, naming the operation and path.
pub(crate) fn io_error(e: io::Error, op: &'static str, path: &str) -> Error {
    let err = match e.raw_os_error() {
        // A read-only file system is not going away: retrying cannot help.
        Some(libc::EROFS) => {
            Error::new(ErrorKind::PermissionDenied, format!("{e}")).with_retryable(false)
        }
        Some(libc::EISDIR) | Some(libc::ENAMETOOLONG) => {
            Error::new(ErrorKind::InvalidInput, format!("{e}"))
        }
        Some(libc::ENOTDIR) if op == "read" || op == "list" => {
            Error::new(ErrorKind::NotFound, format!("{e}"))
        }
        _ => Error::from(e),
    };
    err.with_backend("local")
        .with_operation(op)
        .with_context("path", path)
}

fn kind_of(ft: fs::FileType) -> EntryKind {
    if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

fn entry(shown: String, real: &Path, meta: &fs::Metadata, names: &Names) -> EntryInfo {
    let mut e = EntryInfo::new(shown, kind_of(meta.file_type()));
    e.size = meta.len();
    e.mode = meta.mode() & 0o7777;
    e.modified = meta.modified().ok();
    if meta.file_type().is_symlink() {
        e.symlink_target = fs::read_link(real)
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
    }
    e.owner = Some(names.user(meta.uid()));
    e.group = Some(names.group(meta.gid()));
    e.metadata = crate::xattr::read(real);
    e
}

fn walk(
    real: &Path,
    shown: &str,
    depth: u32,
    names: &Names,
    out: &mut Vec<EntryInfo>,
) -> io::Result<()> {
    for item in fs::read_dir(real)? {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        let child_shown = if shown.is_empty() || shown == "/" {
            format!("{}{name}", shown)
        } else {
            format!("{shown}/{name}")
        };
        let child = item.path();
        let meta = match fs::symlink_metadata(&child) {
            Ok(m) => m,
            // Gone between the listing and the look: not an error of the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let is_dir = meta.file_type().is_dir();
        out.push(entry(child_shown.clone(), &child, &meta, names));
        if is_dir && depth > 1 {
            match walk(&child, &child_shown, depth - 1, names, out) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Removes a temporary file unless disarmed: a write that does not finish leaves nothing.
///
/// The guard exists before the file does: a write cancelled while the file is being made on a
/// worker thread sets `dropped`, and the worker, which looks at it once the file exists,
/// removes the file itself.
struct TempGuard {
    path: Option<PathBuf>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

impl TempGuard {
    fn new(path: PathBuf) -> Self {
        TempGuard {
            path: Some(path),
            dropped: Arc::default(),
        }
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = fs::remove_file(p);
        }
    }
}

/// A temporary name beside `target`; its first letter says whether the write replaces a file
/// (`r`) or makes a new one (`n`), so that watchers report it as E2B's envd does.
fn temp_beside(target: &Path) -> PathBuf {
    let replaces = fs::symlink_metadata(target).is_ok_and(|m| m.is_file());
    let kind = if replaces { 'r' } else { 'n' };
    let name = format!("{TEMP_PREFIX}{kind}{:016x}", rand::random::<u64>());
    target.with_file_name(name)
}

/// Opens the temporary file for a write onto `target`: parents made, the mode of a file it
/// replaces kept (permission bits only), never following a link.
fn open_temp(
    target: &Path,
    temp: &Path,
    dropped: &std::sync::atomic::AtomicBool,
) -> io::Result<fs::File> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    let mode = match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        Ok(m) if m.is_file() => m.mode() & 0o777,
        _ => 0o644,
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(temp)?;
    if dropped.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = fs::remove_file(temp);
        return Err(io::Error::from(io::ErrorKind::Interrupted));
    }
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(file)
}

#[async_trait]
impl FileStore for LocalFiles {
    async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        let real = self.path(path)?;
        let file = self
            .run("read", path, move || {
                // Non-blocking, so that opening a FIFO does not wait for a writer.
                let f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                    .open(&real)?;
                let meta = f.metadata()?;
                if meta.is_dir() {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
                if !meta.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file (a FIFO, device or socket)",
                    ));
                }
                Ok(f)
            })
            .await?;
        let shown = path.to_string();
        let file = tokio::fs::File::from_std(file);
        let stream = futures_util::stream::unfold(Some(file), move |file| {
            let shown = shown.clone();
            async move {
                let mut file = file?;
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), Some(file)))
                    }
                    Err(e) => Some((Err(io_error(e, "read", &shown)), None)),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn write_stream(&self, path: &str, content: ByteStream) -> Result<()> {
        self.write(path, content, None).await
    }

    async fn write_stream_with_metadata(
        &self,
        path: &str,
        content: ByteStream,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        if metadata.is_empty() {
            return self.write(path, content, None).await;
        }
        crate::xattr::validate(metadata).map_err(|m| {
            Error::new(ErrorKind::InvalidInput, m)
                .with_backend("local")
                .with_operation("write")
                .with_context("path", path)
        })?;
        self.write(path, content, Some(metadata.clone())).await
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let real = self.path(path)?;
        let shown = path.trim_end_matches('/').to_string();
        let shown = if shown.is_empty() && path.starts_with('/') {
            "/".to_string()
        } else {
            shown
        };
        let mut entries = self
            .run("list", path, move || {
                if !fs::metadata(&real)?.is_dir() {
                    return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                }
                let names = Names::load();
                let mut out = Vec::new();
                walk(&real, &shown, depth.max(1), &names, &mut out)?;
                Ok(out)
            })
            .await?;
        sandkit_core::raw::sort_entries(&mut entries);
        Ok(entries)
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let real = self.path(path)?;
        let shown = path.to_string();
        self.run("stat", path, move || {
            let meta = fs::symlink_metadata(&real)?;
            Ok(entry(shown, &real, &meta, &Names::load()))
        })
        .await
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let real = self.path(path)?;
        self.run("mkdir", path, move || {
            if fs::symlink_metadata(&real).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::create_dir_all(&real)
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.path(from)?, self.path(to)?);
        self.run("rename", from, move || fs::rename(&a, &b))
            .await
            .map_err(|e| e.with_context("to", to))
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let real = self.path(path)?;
        self.run("remove", path, move || {
            if fs::symlink_metadata(&real)?.is_dir() {
                fs::remove_dir_all(&real)
            } else {
                fs::remove_file(&real)
            }
        })
        .await
    }
}
