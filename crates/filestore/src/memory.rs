//! [`InMemoryFileStore`]: a file tree in memory, for tests and scratch space.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sandkit_core::raw::{compare_paths, once_stream};
use sandkit_core::{ByteStream, EntryInfo, EntryKind, Error, ErrorKind, FileStore, Result};

use crate::path::{join, normalize, parent};

const BACKEND: &str = "memory";
const MAX_LINKS: usize = 32;

#[derive(Debug, Clone)]
enum Node {
    File(Bytes),
    Dir,
    Symlink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    node: Node,
    mode: u32,
    modified: SystemTime,
}

/// A file tree held in memory.
///
/// Paths may be written with or without a leading `/`; both name the same tree, and entries
/// come back in the form the request used. `..` cannot climb above the root.
#[derive(Debug, Default)]
pub struct InMemoryFileStore {
    // Keys are normalised paths without a leading '/'; "" is the root.
    tree: Mutex<BTreeMap<String, Entry>>,
}

fn err(kind: ErrorKind, msg: &'static str, op: &'static str, path: &str) -> Error {
    Error::new(kind, msg)
        .with_backend(BACKEND)
        .with_operation(op)
        .with_context("path", path)
}

fn key(path: &str, op: &'static str) -> Result<String> {
    normalize(path)
        .map(|p| p.join("/"))
        .map_err(|e| e.with_backend(BACKEND).with_operation(op))
}

/// How a key is shown for a request spelt like `request`.
fn shown(request: &str, key: &str) -> String {
    if request.starts_with('/') {
        format!("/{key}")
    } else {
        key.to_string()
    }
}

impl InMemoryFileStore {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a symbolic link at `link` pointing to `target` (stored as written).
    pub fn symlink(&self, target: &str, link: &str) -> Result<()> {
        let k = key(link, "symlink")?;
        let mut tree = self.tree.lock().unwrap();
        if k.is_empty() || tree.contains_key(&k) {
            return Err(err(
                ErrorKind::AlreadyExists,
                "the path already exists",
                "symlink",
                link,
            ));
        }
        ensure_parents(&mut tree, &k, "symlink", link)?;
        tree.insert(k, new_entry(Node::Symlink(target.to_string()), 0o777));
        Ok(())
    }

    /// Follows links until a non-link key; `None` when the path does not exist.
    fn follow(
        tree: &BTreeMap<String, Entry>,
        mut k: String,
        op: &'static str,
        path: &str,
    ) -> Result<String> {
        for _ in 0..MAX_LINKS {
            match tree.get(&k).map(|e| &e.node) {
                Some(Node::Symlink(target)) => {
                    let joined = if target.starts_with('/') {
                        target.clone()
                    } else {
                        join(parent(&k), target)
                    };
                    k = key(&joined, op)?;
                }
                _ => return Ok(k),
            }
        }
        Err(err(
            ErrorKind::InvalidInput,
            "too many levels of symbolic links",
            op,
            path,
        ))
    }
}

fn new_entry(node: Node, mode: u32) -> Entry {
    Entry {
        node,
        mode,
        modified: SystemTime::now(),
    }
}

fn is_dir(tree: &BTreeMap<String, Entry>, k: &str) -> bool {
    k.is_empty() || matches!(tree.get(k).map(|e| &e.node), Some(Node::Dir))
}

/// Creates the missing parents of `k`; a parent that is not a directory is an error.
fn ensure_parents(
    tree: &mut BTreeMap<String, Entry>,
    k: &str,
    op: &'static str,
    path: &str,
) -> Result<()> {
    let mut prefix = String::new();
    let parts: Vec<&str> = k.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        prefix = join(&prefix, part);
        match tree.get(&prefix).map(|e| &e.node) {
            None => {
                tree.insert(prefix.clone(), new_entry(Node::Dir, 0o755));
            }
            Some(Node::Dir) => {}
            Some(_) => {
                return Err(err(
                    ErrorKind::Conflict,
                    "a parent of the path is not a directory",
                    op,
                    path,
                ))
            }
        }
    }
    Ok(())
}

fn info(request: &str, k: &str, e: &Entry) -> EntryInfo {
    let kind = match e.node {
        Node::File(_) => EntryKind::File,
        Node::Dir => EntryKind::Dir,
        Node::Symlink(_) => EntryKind::Symlink,
    };
    let mut info = EntryInfo::new(shown(request, k), kind);
    info.size = match &e.node {
        Node::File(b) => b.len() as u64,
        Node::Symlink(t) => t.len() as u64,
        Node::Dir => 0,
    };
    info.mode = e.mode;
    info.modified = Some(e.modified);
    if let Node::Symlink(t) = &e.node {
        info.symlink_target = Some(t.clone());
    }
    info
}

/// Whether `k` is strictly below `dir` (the root "" contains everything else).
fn under<'a>(dir: &str, k: &'a str) -> Option<&'a str> {
    if dir.is_empty() {
        (!k.is_empty()).then_some(k)
    } else {
        k.strip_prefix(dir)?.strip_prefix('/')
    }
}

#[async_trait]
impl FileStore for InMemoryFileStore {
    async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        let k = key(path, "read")?;
        let tree = self.tree.lock().unwrap();
        let k = Self::follow(&tree, k, "read", path)?;
        match tree.get(&k).map(|e| &e.node) {
            Some(Node::File(b)) => Ok(once_stream(b.clone())),
            Some(_) => Err(err(
                ErrorKind::InvalidInput,
                "the path is a directory, not a file",
                "read",
                path,
            )),
            None if k.is_empty() => Err(err(
                ErrorKind::InvalidInput,
                "the path is a directory, not a file",
                "read",
                path,
            )),
            None => Err(err(ErrorKind::NotFound, "no such file", "read", path)),
        }
    }

    async fn write_stream(&self, path: &str, mut content: ByteStream) -> Result<()> {
        let k = key(path, "write")?;
        if k.is_empty() {
            return Err(err(
                ErrorKind::InvalidInput,
                "cannot write to the root",
                "write",
                path,
            ));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = content.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let mut tree = self.tree.lock().unwrap();
        let k = Self::follow(&tree, k, "write", path)?;
        ensure_parents(&mut tree, &k, "write", path)?;
        let mode = match tree.get(&k) {
            Some(Entry {
                node: Node::Dir, ..
            }) => {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "the path is a directory, not a file",
                    "write",
                    path,
                ))
            }
            Some(e) => e.mode,
            None => 0o644,
        };
        tree.insert(k, new_entry(Node::File(buf.freeze()), mode));
        Ok(())
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let k = key(path, "list")?;
        let tree = self.tree.lock().unwrap();
        let k = Self::follow(&tree, k, "list", path)?;
        if !is_dir(&tree, &k) {
            return Err(match tree.get(&k) {
                None => err(ErrorKind::NotFound, "no such directory", "list", path),
                Some(_) => err(
                    ErrorKind::InvalidInput,
                    "the path is not a directory",
                    "list",
                    path,
                ),
            });
        }
        let shown_dir = normalize(path).map(|p| p.join("/")).unwrap_or_default();
        let prefix = if path.starts_with('/') {
            format!("/{shown_dir}")
        } else {
            shown_dir
        };
        let mut out: Vec<EntryInfo> = tree
            .iter()
            .filter_map(|(key, e)| {
                let rel = under(&k, key)?;
                if rel.split('/').count() as u64 > u64::from(depth) {
                    return None;
                }
                let mut i = info("", key, e);
                i.path = join(&prefix, rel);
                Some(i)
            })
            .collect();
        out.sort_by(|a, b| compare_paths(&a.path, &b.path));
        Ok(out)
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let k = key(path, "stat")?;
        let tree = self.tree.lock().unwrap();
        if k.is_empty() {
            return Ok(info(path, &k, &new_entry(Node::Dir, 0o755)));
        }
        tree.get(&k).map(|e| info(path, &k, e)).ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                "no such file or directory",
                "stat",
                path,
            )
        })
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let k = key(path, "mkdir")?;
        let mut tree = self.tree.lock().unwrap();
        if k.is_empty() || tree.contains_key(&k) {
            return Err(err(
                ErrorKind::AlreadyExists,
                "the path already exists",
                "mkdir",
                path,
            ));
        }
        ensure_parents(&mut tree, &k, "mkdir", path)?;
        tree.insert(k, new_entry(Node::Dir, 0o755));
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let src = key(from, "rename")?;
        let dst = key(to, "rename")?;
        let mut tree = self.tree.lock().unwrap();
        if src.is_empty() || dst.is_empty() {
            return Err(err(
                ErrorKind::InvalidInput,
                "cannot rename the root",
                "rename",
                from,
            ));
        }
        if !tree.contains_key(&src) {
            return Err(err(
                ErrorKind::NotFound,
                "no such file or directory",
                "rename",
                from,
            ));
        }
        if under(&src, &dst).is_some() {
            return Err(err(
                ErrorKind::InvalidInput,
                "cannot move a directory into itself",
                "rename",
                to,
            ));
        }
        if is_dir(&tree, &dst) && tree.keys().any(|key| under(&dst, key).is_some()) {
            return Err(err(
                ErrorKind::Conflict,
                "the destination is a directory that is not empty",
                "rename",
                to,
            ));
        }
        ensure_parents(&mut tree, &dst, "rename", to)?;
        let moved: Vec<String> = tree
            .keys()
            .filter(|key| **key == src || under(&src, key).is_some())
            .cloned()
            .collect();
        for old in moved {
            let e = tree.remove(&old).expect("listed above");
            let new = format!("{dst}{}", &old[src.len()..]);
            tree.insert(new, e);
        }
        Ok(())
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let k = key(path, "remove")?;
        let mut tree = self.tree.lock().unwrap();
        if k.is_empty() {
            return Err(err(
                ErrorKind::InvalidInput,
                "cannot remove the root",
                "remove",
                path,
            ));
        }
        if tree.remove(&k).is_none() {
            return Err(err(
                ErrorKind::NotFound,
                "no such file or directory",
                "remove",
                path,
            ));
        }
        tree.retain(|key, _| under(&k, key).is_none());
        Ok(())
    }
}
