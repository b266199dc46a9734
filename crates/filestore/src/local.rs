//! [`LocalFileStore`]: a directory on the host that nothing can escape.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use sandkit_core::raw::sort_entries;
use sandkit_core::{ByteStream, EntryInfo, EntryKind, Error, ErrorKind, FileStore, Result};
use tokio::io::AsyncWriteExt;

use crate::path::{join, normalize};

const BACKEND: &str = "local";
/// Chunk size of streamed reads.
const CHUNK: usize = 256 * 1024;
/// How many links in a row are followed before giving up.
const MAX_LINKS: usize = 32;

/// Files under one directory on the host.
///
/// Paths are relative to the root. Absolute paths are refused with
/// [`ErrorKind::InvalidInput`]; `..` that climbs out, and symbolic links that lead out of the
/// root, are refused with [`ErrorKind::PermissionDenied`]. Nothing outside the root is ever
/// read or written. (The checks look at the tree as it is when a call starts; a process that
/// swaps a directory for a link while a call runs is outside this guarantee.)
///
/// ```
/// # async fn demo() -> sandkit_core::Result<()> {
/// use sandkit_core::{ErrorKind, FileStoreExt};
/// use sandkit_filestore::LocalFileStore;
///
/// let dir = std::env::temp_dir().join("sandkit-doc-local");
/// let store = LocalFileStore::new(&dir)?;
/// store.write_str("notes/today.txt", "hello").await?;
/// assert_eq!(store.read_to_string("notes/today.txt").await?, "hello");
/// assert_eq!(store.read("../escape").await.unwrap_err().kind(), ErrorKind::PermissionDenied);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LocalFileStore {
    root: PathBuf,
}

impl LocalFileStore {
    /// A store rooted at `root`, which is created if missing.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|e| io(e, "new", &root.display().to_string()))?;
        let root = root
            .canonicalize()
            .map_err(|e| io(e, "new", &root.display().to_string()))?;
        Ok(LocalFileStore { root })
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a store path to a host path inside the root, refusing anything that leaves it.
    ///
    /// With `follow_final`, a final symbolic link is followed (and must stay inside);
    /// without, only the directories leading to it are checked.
    pub(crate) fn resolve(
        &self,
        path: &str,
        follow_final: bool,
        op: &'static str,
    ) -> Result<PathBuf> {
        if path.starts_with('/') {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "absolute paths are not allowed; paths are relative to the store's root",
            )
            .with_backend(BACKEND)
            .with_operation(op)
            .with_context("path", path));
        }
        let parts = normalize(path).map_err(|e| e.with_backend(BACKEND).with_operation(op))?;
        let mut full = self.root.clone();
        full.extend(&parts);
        let mut checked = full.clone();
        if !follow_final {
            if parts.is_empty() {
                return Ok(full);
            }
            checked.pop();
        }
        self.check_inside(&checked, path, op)?;
        Ok(full)
    }

    /// Checks that `full`, with every link along it resolved, stays under the root.
    fn check_inside(&self, full: &Path, path: &str, op: &'static str) -> Result<()> {
        let mut target = full.to_path_buf();
        for _ in 0..MAX_LINKS {
            // The deepest part of the path that exists, resolved through any links.
            let mut existing = target.as_path();
            let canonical = loop {
                match existing.canonicalize() {
                    Ok(c) => break c,
                    Err(_) => match existing.parent() {
                        Some(p) => existing = p,
                        None => break PathBuf::from("/"),
                    },
                }
            };
            if !canonical.starts_with(&self.root) {
                return Err(self.escape(path, op));
            }
            // A dangling link at the end of the existing part could still point out.
            let rest = target.strip_prefix(existing).unwrap_or(Path::new(""));
            let Some(first) = rest.components().next() else {
                return Ok(());
            };
            let next = canonical.join(first.as_os_str());
            match std::fs::symlink_metadata(&next) {
                Ok(m) if m.file_type().is_symlink() => {
                    let link = std::fs::read_link(&next).map_err(|e| io(e, op, path))?;
                    let joined = canonical.join(link);
                    let mut resolved = lexical(&joined);
                    resolved.extend(rest.components().skip(1));
                    if !resolved.starts_with(&self.root) {
                        return Err(self.escape(path, op));
                    }
                    target = resolved;
                }
                _ => return Ok(()),
            }
        }
        Err(
            Error::new(ErrorKind::InvalidInput, "too many levels of symbolic links")
                .with_backend(BACKEND)
                .with_operation(op)
                .with_context("path", path),
        )
    }

    fn escape(&self, path: &str, op: &'static str) -> Error {
        Error::new(
            ErrorKind::PermissionDenied,
            "the path leads outside the store's root through a symbolic link",
        )
        .with_backend(BACKEND)
        .with_operation(op)
        .with_context("path", path)
    }
}

/// Resolves `.` and `..` without touching the disk.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A file being written beside its target: removed when dropped, unless renamed over it.
struct Staged {
    path: PathBuf,
    committed: bool,
}

impl Staged {
    fn beside(target: &Path) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = format!(".{name}.sandkit-{}-{n}.tmp", std::process::id());
        Staged {
            path: target.with_file_name(temp),
            committed: false,
        }
    }

    fn commit(mut self, target: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io(e: std::io::Error, op: &'static str, path: &str) -> Error {
    Error::from(e)
        .with_backend(BACKEND)
        .with_operation(op)
        .with_context("path", path)
}

fn entry_from_meta(path: String, meta: &std::fs::Metadata, host: &Path) -> EntryInfo {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    let mut e = EntryInfo::new(path, kind);
    e.size = meta.size();
    e.mode = meta.permissions().mode() & 0o7777;
    e.modified = meta.modified().ok();
    e.owner = Some(meta.uid().to_string());
    e.group = Some(meta.gid().to_string());
    if kind == EntryKind::Symlink {
        e.symlink_target = std::fs::read_link(host)
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
    }
    e
}

/// The request path as entries should spell it: normalised, without a trailing `/`.
fn display_path(path: &str) -> String {
    normalize(path).map(|p| p.join("/")).unwrap_or_default()
}

#[async_trait]
impl FileStore for LocalFileStore {
    async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        let full = self.resolve(path, true, "read")?;
        let file = tokio::fs::File::open(&full)
            .await
            .map_err(|e| io(e, "read", path))?;
        let meta = file.metadata().await.map_err(|e| io(e, "read", path))?;
        if meta.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the path is a directory, not a file",
            )
            .with_backend(BACKEND)
            .with_operation("read")
            .with_context("path", path));
        }
        let owned = path.to_string();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
            .map_err(move |e| io(e, "read", &owned));
        Ok(stream.boxed())
    }

    async fn write_stream(&self, path: &str, mut content: ByteStream) -> Result<()> {
        let full = self.resolve(path, true, "write")?;
        if full == self.root {
            return Err(
                Error::new(ErrorKind::InvalidInput, "cannot write to the root")
                    .with_backend(BACKEND)
                    .with_operation("write"),
            );
        }
        if let Some(parent) = full.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io(e, "write", path))?;
        }
        // Whole or not at all: the content goes to a file beside the target, renamed over it
        // once every byte arrived; until then (an error, or the write dropped) the temporary
        // file is removed and the target is as it was.
        let staged = Staged::beside(&full);
        let mut file = tokio::fs::File::create(&staged.path)
            .await
            .map_err(|e| io(e, "write", path))?;
        while let Some(chunk) = content.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| io(e, "write", path))?;
        }
        file.flush().await.map_err(|e| io(e, "write", path))?;
        if let Ok(old) = tokio::fs::metadata(&full).await {
            // A replaced file keeps its permissions, as a file written in place would.
            let _ = tokio::fs::set_permissions(&staged.path, old.permissions()).await;
        }
        drop(file);
        staged.commit(&full).map_err(|e| io(e, "write", path))
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let full = self.resolve(path, true, "list")?;
        let meta = tokio::fs::metadata(&full)
            .await
            .map_err(|e| io(e, "list", path))?;
        if !meta.is_dir() {
            return Err(
                Error::new(ErrorKind::InvalidInput, "the path is not a directory")
                    .with_backend(BACKEND)
                    .with_operation("list")
                    .with_context("path", path),
            );
        }
        let base = display_path(path);
        let owned = path.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut todo = vec![(full, base, 1u32)];
            while let Some((dir, shown, level)) = todo.pop() {
                for item in std::fs::read_dir(&dir).map_err(|e| io(e, "list", &owned))? {
                    let item = item.map_err(|e| io(e, "list", &owned))?;
                    let name = item.file_name().to_string_lossy().into_owned();
                    let host = item.path();
                    let meta =
                        std::fs::symlink_metadata(&host).map_err(|e| io(e, "list", &owned))?;
                    let entry = entry_from_meta(join(&shown, &name), &meta, &host);
                    if entry.kind == EntryKind::Dir && level < depth {
                        todo.push((host, entry.path.clone(), level + 1));
                    }
                    out.push(entry);
                }
            }
            sort_entries(&mut out);
            Ok(out)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, "list task failed").with_source(e))?
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let full = self.resolve(path, false, "stat")?;
        let meta = tokio::fs::symlink_metadata(&full)
            .await
            .map_err(|e| io(e, "stat", path))?;
        Ok(entry_from_meta(display_path(path), &meta, &full))
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let full = self.resolve(path, true, "mkdir")?;
        if tokio::fs::symlink_metadata(&full).await.is_ok() {
            return Err(
                Error::new(ErrorKind::AlreadyExists, "the path already exists")
                    .with_backend(BACKEND)
                    .with_operation("mkdir")
                    .with_context("path", path),
            );
        }
        tokio::fs::create_dir_all(&full)
            .await
            .map_err(|e| io(e, "mkdir", path))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let src = self.resolve(from, false, "rename")?;
        let dst = self.resolve(to, false, "rename")?;
        if src == self.root || dst == self.root {
            return Err(
                Error::new(ErrorKind::InvalidInput, "cannot rename the root")
                    .with_backend(BACKEND)
                    .with_operation("rename"),
            );
        }
        tokio::fs::symlink_metadata(&src)
            .await
            .map_err(|e| io(e, "rename", from))?;
        if let Some(parent) = dst.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io(e, "rename", to))?;
        }
        tokio::fs::rename(&src, &dst)
            .await
            .map_err(|e| io(e, "rename", from).with_context("to", to))
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let full = self.resolve(path, false, "remove")?;
        if full == self.root {
            return Err(
                Error::new(ErrorKind::InvalidInput, "cannot remove the root")
                    .with_backend(BACKEND)
                    .with_operation("remove"),
            );
        }
        let meta = tokio::fs::symlink_metadata(&full)
            .await
            .map_err(|e| io(e, "remove", path))?;
        if meta.is_dir() {
            tokio::fs::remove_dir_all(&full).await
        } else {
            tokio::fs::remove_file(&full).await
        }
        .map_err(|e| io(e, "remove", path))
    }
}
