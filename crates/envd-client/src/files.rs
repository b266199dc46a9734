//! [`EnvdFiles`]: a sandbox's files through envd (`/files` and the filesystem service).

use std::collections::BTreeMap;

use async_trait::async_trait;
use sandkit_core::raw::sort_entries;
use sandkit_core::{ByteStream, EntryInfo, EntryKind, ErrorKind, FileStore, Result};
use sandkit_e2b_protocol::envd::{
    self, rpc, EntryResponse, FileType, ListDirRequest, ListDirResponse, MoveRequest, PathRequest,
};
use sandkit_e2b_protocol::json::parse_rfc3339;

use crate::envd::Envd;
use crate::error::err;

/// The files of one sandbox through its envd. Relative paths resolve against the user's home, as
/// in envd.
#[derive(Debug, Clone)]
pub struct EnvdFiles {
    envd: Envd,
    user: Option<String>,
}

impl EnvdFiles {
    pub(crate) fn new(envd: Envd, user: Option<String>) -> Self {
        EnvdFiles { envd, user }
    }

    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The same files as `user` sees them (envd runs each request as its user).
    pub fn as_user(&self, user: &str) -> Self {
        EnvdFiles {
            envd: self.envd.clone(),
            user: Some(user.to_string()),
        }
    }
}

fn entry(e: envd::EntryInfo) -> EntryInfo {
    let kind = if e.is_symlink || e.symlink_target.is_some() || e.file_type == FileType::Symlink {
        EntryKind::Symlink
    } else {
        match e.file_type {
            FileType::File => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            _ => EntryKind::Other,
        }
    };
    let mut out = EntryInfo::new(e.path, kind);
    if !e.name.is_empty() {
        out.name = e.name;
    }
    out.size = e.size;
    out.mode = e.mode & 0o7777;
    out.modified = e.modified_time.as_deref().and_then(parse_rfc3339);
    out.symlink_target = e.symlink_target;
    out.owner = (!e.owner.is_empty()).then_some(e.owner);
    out.group = (!e.group.is_empty()).then_some(e.group);
    out.metadata = e.metadata;
    out
}

#[async_trait]
impl FileStore for EnvdFiles {
    async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        self.envd.download(path, self.user()).await
    }

    async fn write_stream(&self, path: &str, content: ByteStream) -> Result<()> {
        self.write_stream_with_metadata(path, content, &BTreeMap::new())
            .await
    }

    /// The metadata travels as `X-Metadata-<key>` headers of the upload, as the SDK sends it.
    async fn write_stream_with_metadata(
        &self,
        path: &str,
        content: ByteStream,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.envd.upload(path, self.user(), content, metadata).await
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let req = ListDirRequest {
            path: path.to_string(),
            depth: depth.max(1),
        };
        let resp: ListDirResponse = self
            .envd
            .unary(rpc::LIST_DIR, &req, self.user(), "list")
            .await?;
        let mut entries: Vec<EntryInfo> = resp
            .entries
            .into_iter()
            .filter(|e| {
                e.file_type != FileType::Unspecified || e.is_symlink || e.symlink_target.is_some()
            })
            .map(entry)
            .collect();
        sort_entries(&mut entries);
        Ok(entries)
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let req = PathRequest {
            path: path.to_string(),
        };
        let resp: EntryResponse = self
            .envd
            .unary(rpc::STAT, &req, self.user(), "stat")
            .await?;
        Ok(entry(resp.entry))
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let req = PathRequest {
            path: path.to_string(),
        };
        let result: Result<EntryResponse> = self
            .envd
            .unary(rpc::MAKE_DIR, &req, self.user(), "mkdir")
            .await;
        match result {
            Ok(_) => Ok(()),
            // envd answers invalid_argument when a file is in the way; that is "already exists".
            Err(e) if e.kind() == ErrorKind::InvalidInput && self.stat(path).await.is_ok() => Err(
                err(ErrorKind::AlreadyExists, "mkdir", "a file is in the way"),
            ),
            Err(e) => Err(e),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let req = MoveRequest {
            source: from.to_string(),
            destination: to.to_string(),
        };
        let _: EntryResponse = self
            .envd
            .unary(rpc::MOVE, &req, self.user(), "rename")
            .await?;
        Ok(())
    }

    async fn remove(&self, path: &str) -> Result<()> {
        // envd removes like `rm -rf` (a missing path is fine); the contract says NotFound.
        self.stat(path).await?;
        let req = PathRequest {
            path: path.to_string(),
        };
        let _: envd::Empty = self
            .envd
            .unary(rpc::REMOVE, &req, self.user(), "remove")
            .await?;
        Ok(())
    }
}
