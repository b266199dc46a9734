//! [`FileStore`]: files somewhere (in a sandbox, on the host, in memory).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::Result;

/// A stream of file content chunks.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else: device, socket, fifo.
    Other,
}

/// One file, directory or link, as [`FileStore::stat`] and [`FileStore::list`] report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The last path component.
    pub name: String,
    /// The path as the store spells it (normalised, same form as the request).
    pub path: String,
    /// What it is. Links are reported as links, not followed.
    pub kind: EntryKind,
    /// Size in bytes (of the link itself for links).
    pub size: u64,
    /// Permission bits (`0o644`), without the file-type bits.
    pub mode: u32,
    /// Last modification time, when the store knows it.
    pub modified: Option<SystemTime>,
    /// Where a symbolic link points: as written in the link where the store can read that,
    /// else (E2B's envd) the absolute path the whole chain of links resolves to.
    pub symlink_target: Option<String>,
    /// Owner (a user name, or a numeric id where names are unknown), when the store knows it.
    pub owner: Option<String>,
    /// Group (a name, or a numeric id), when the store knows it.
    pub group: Option<String>,
    /// Key-value metadata kept with the file (see [`FileStore::write_stream_with_metadata`]); empty where
    /// the store keeps none.
    pub metadata: BTreeMap<String, String>,
}

impl EntryInfo {
    /// A new entry; for stores.
    pub fn new(path: impl Into<String>, kind: EntryKind) -> Self {
        let path = path.into();
        let name = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        EntryInfo {
            name,
            path,
            kind,
            size: 0,
            mode: 0,
            modified: None,
            symlink_target: None,
            owner: None,
            group: None,
            metadata: BTreeMap::new(),
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// Orders paths in pre-order, component by component (`a`, `a/x`, `a.txt`, `b`): the order
/// [`FileStore::list`] returns.
pub fn compare_paths(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Sorts entries into the order [`FileStore::list`] promises.
pub fn sort_entries(entries: &mut [EntryInfo]) {
    entries.sort_by(|a, b| compare_paths(&a.path, &b.path));
}

/// Files somewhere: in a sandbox, on the host, in memory.
///
/// The contract is small; [`FileStoreExt`](crate::FileStoreExt) adds whole-file reads and
/// writes, `exists`, and directory copies on top of it, once, for every store.
///
/// # Contract
/// - Paths are `/`-separated. What a relative path is relative to is the store's to say
///   (a sandbox: its working directory; a local store: its root).
/// - Content is bytes: every byte value round-trips.
/// - `write_stream` creates missing parent directories and replaces an existing file whole or
///   not at all: a reader during the write sees the old content, and a write that fails (its
///   content errs part-way, or it is dropped) leaves the old file, or none, and nothing else.
/// - `list(path, depth)` returns the entries below `path` down to `depth` levels (1 = the
///   directory's own entries), not `path` itself, in [`compare_paths`] order. Links are
///   listed, not followed.
/// - `stat` does not follow a final symbolic link.
/// - `mkdir` creates missing parents; an existing directory is
///   [`ErrorKind::AlreadyExists`](crate::ErrorKind::AlreadyExists).
/// - `remove` removes files, links, and directories with everything in them.
/// - `rename` replaces an existing file at the destination.
///
/// # Errors
/// A missing path is [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) and an existing one
/// where none may be is [`ErrorKind::AlreadyExists`](crate::ErrorKind::AlreadyExists), never a
/// message to match. A path a store refuses (escaping its root) is
/// [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied) or
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput).
#[async_trait]
pub trait FileStore: Send + Sync + fmt::Debug {
    /// Opens a file for streaming reads. Reading a directory is an error.
    async fn read_stream(&self, path: &str) -> Result<ByteStream>;
    /// Writes a file from a stream of chunks.
    async fn write_stream(&self, path: &str, content: ByteStream) -> Result<()>;
    /// Lists entries below a directory.
    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>>;
    /// Describes one entry.
    async fn stat(&self, path: &str) -> Result<EntryInfo>;
    /// Creates a directory and its parents.
    async fn mkdir(&self, path: &str) -> Result<()>;
    /// Moves an entry.
    async fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Removes an entry, recursively.
    async fn remove(&self, path: &str) -> Result<()>;
    /// Writes a file as [`FileStore::write_stream`] does, with key-value metadata kept with
    /// it (replacing any it had), as E2B's envd keeps it in extended attributes. Keys are
    /// lowercase printable ASCII. With no metadata it is `write_stream`.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), before anything is written,
    /// where the store keeps no metadata (the default);
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for keys or values it cannot
    /// keep.
    async fn write_stream_with_metadata(
        &self,
        path: &str,
        content: ByteStream,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        if metadata.is_empty() {
            return self.write_stream(path, content).await;
        }
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            "this store keeps no file metadata",
        )
        .with_operation("write")
        .with_context("path", path))
    }
}

/// What happened to an entry under a watched directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FsEventKind {
    /// Made, or moved in.
    Create,
    /// Written to.
    Write,
    /// Removed.
    Remove,
    /// Moved away (its new name, if still watched, comes as a `Create`).
    Rename,
    /// Its permissions or other attributes changed.
    Chmod,
}

/// One change under a watched directory, from [`Sandbox::watch`](crate::Sandbox::watch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FsEvent {
    /// The entry's path relative to the watched directory (`a.txt`, `sub/b.txt`).
    pub name: String,
    /// What happened.
    pub kind: FsEventKind,
}

impl FsEvent {
    /// A new event; for backends.
    pub fn new(name: impl Into<String>, kind: FsEventKind) -> Self {
        FsEvent {
            name: name.into(),
            kind,
        }
    }
}

/// The events of a watch, in the order they happened; dropping it stops watching.
pub type FsEventStream = BoxStream<'static, Result<FsEvent>>;

/// Builds a [`ByteStream`] from one buffer.
pub fn once_stream(content: impl Into<Bytes>) -> ByteStream {
    let content: Bytes = content.into();
    Box::pin(futures_util::stream::once(async move { Ok(content) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preorder() {
        let mut v = vec!["b", "a.txt", "a/x", "a", "a/x/y", "A"];
        v.sort_by(|a, b| compare_paths(a, b));
        assert_eq!(v, ["A", "a", "a/x", "a/x/y", "a.txt", "b"]);
    }

    #[test]
    fn entry_name() {
        assert_eq!(EntryInfo::new("/x/y.txt", EntryKind::File).name, "y.txt");
        assert_eq!(EntryInfo::new("y", EntryKind::File).name, "y");
    }
}
