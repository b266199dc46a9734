//! The filesystem service: `Stat`, `MakeDir`, `Move`, `ListDir`, `Remove`, and how envd
//! reports entries and resolves paths.

use sandkit_core::{EntryKind, ErrorKind, FileStore};
use sandkit_e2b_protocol::envd::{
    self, permissions_string, rpc, EntryResponse, FileType, ListDirRequest, ListDirResponse,
    MoveRequest, PathRequest,
};
use sandkit_e2b_protocol::ConnectError;

use crate::wire::{connect_error_response, decode, from_core, reply};
use crate::Served;
use axum::response::Response;

/// A filesystem RPC, as `user`.
pub(crate) async fn unary(served: &Served, user: &str, path: &str, body: &[u8]) -> Response {
    let files = match files_for(served, user) {
        Ok(f) => f,
        Err(e) => return connect_error_response(&from_core(&e)),
    };
    let fs = files.get();
    let user = user.to_string();
    match path {
        rpc::STAT => reply(
            async {
                let req: PathRequest = decode(body)?;
                let p = resolve(&user, &req.path);
                Ok(EntryResponse {
                    entry: entry_info(fs, &p).await?,
                })
            }
            .await,
        ),
        rpc::MAKE_DIR => reply(
            async {
                let req: PathRequest = decode(body)?;
                let p = resolve(&user, &req.path);
                match fs.stat(&p).await {
                    Ok(e) if e.kind == EntryKind::Dir => {
                        return Err(ConnectError::new(
                            "already_exists",
                            format!("directory '{p}' already exists"),
                        ))
                    }
                    Ok(_) => {
                        return Err(ConnectError::new(
                            "invalid_argument",
                            format!("path '{p}' already exists and is not a directory"),
                        ))
                    }
                    Err(_) => {}
                }
                fs.mkdir(&p).await.map_err(|e| from_core(&e))?;
                Ok(EntryResponse {
                    entry: entry_info(fs, &p).await?,
                })
            }
            .await,
        ),
        rpc::MOVE => reply(
            async {
                let req: MoveRequest = decode(body)?;
                let (from, to) = (
                    resolve(&user, &req.source),
                    resolve(&user, &req.destination),
                );
                fs.rename(&from, &to).await.map_err(|e| from_core(&e))?;
                Ok(EntryResponse {
                    entry: entry_info(fs, &to).await?,
                })
            }
            .await,
        ),
        rpc::LIST_DIR => reply(
            async {
                let req: ListDirRequest = decode(body)?;
                let p = resolve(&user, &req.path);
                let st = fs.stat(&p).await.map_err(|e| not_found_path(&e, &p))?;
                let dir = if st.kind == EntryKind::Symlink {
                    follow(&p, st.symlink_target.as_deref())
                } else {
                    p.clone()
                };
                let entries =
                    fs.list(&dir, req.depth.max(1))
                        .await
                        .map_err(|e| match e.kind() {
                            ErrorKind::InvalidInput => ConnectError::new(
                                "invalid_argument",
                                format!("path '{p}' is not a directory"),
                            ),
                            _ => not_found_path(&e, &p),
                        })?;
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    let shown = format!("{}{}", p, e.path.strip_prefix(&dir).unwrap_or(&e.path));
                    out.push(to_wire(fs, e, shown).await);
                }
                Ok(ListDirResponse { entries: out })
            }
            .await,
        ),
        rpc::REMOVE => reply(
            async {
                let req: PathRequest = decode(body)?;
                let p = resolve(&user, &req.path);
                match fs.remove(&p).await {
                    Ok(()) => Ok(envd::Empty {}),
                    // Like `rm -rf`: a missing path is not an error.
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(envd::Empty {}),
                    Err(e) => Err(from_core(&e)),
                }
            }
            .await,
        ),
        p => connect_error_response(&ConnectError::new(
            "unimplemented",
            format!("{p} is not a known method"),
        )),
    }
}

pub(crate) fn home(user: &str) -> String {
    if user == "root" {
        "/root".into()
    } else {
        format!("/home/{user}")
    }
}

/// A path as envd resolves it: `~` and relative paths against the user's home.
pub(crate) fn resolve(user: &str, path: &str) -> String {
    let home = home(user);
    if path.is_empty() || path == "~" {
        home
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{home}/{path}")
    }
}

fn not_found_path(e: &sandkit_core::Error, path: &str) -> ConnectError {
    match e.kind() {
        ErrorKind::NotFound => {
            ConnectError::new("not_found", format!("path '{path}' does not exist"))
        }
        _ => from_core(e),
    }
}

/// Where a link at `path` points, as an absolute path.
fn follow(path: &str, target: Option<&str>) -> String {
    match target {
        Some(t) if t.starts_with('/') => t.to_string(),
        Some(t) => format!("{}/{t}", parent_of(path)),
        None => path.to_string(),
    }
}

fn parent_of(path: &str) -> &str {
    match path.trim_end_matches('/').rfind('/') {
        Some(0) | None => "",
        Some(i) => &path[..i],
    }
}

async fn entry_info(fs: &dyn FileStore, path: &str) -> Result<envd::EntryInfo, ConnectError> {
    let e = fs.stat(path).await.map_err(|e| not_found_path(&e, path))?;
    Ok(to_wire(fs, e, path.to_string()).await)
}

/// Where a link leads, as envd reports it: the absolute path at the end of the whole chain
/// and what is there; a broken or looping link is its own path, of no type.
async fn resolve_link(
    fs: &dyn FileStore,
    link: &str,
    target: Option<&str>,
) -> (String, Option<EntryKind>) {
    let mut at = sandkit_filestore::clean_absolute(&follow(link, target));
    for _ in 0..40 {
        match fs.stat(&at).await {
            Ok(e) if e.kind == EntryKind::Symlink => {
                at = sandkit_filestore::clean_absolute(&follow(&at, e.symlink_target.as_deref()))
            }
            Ok(e) => return (at, Some(e.kind)),
            Err(_) => break,
        }
    }
    (link.to_string(), None)
}

/// A core entry as envd's `EntryInfo`: a link carries its target's type and, as
/// `symlinkTarget`, the resolved absolute path, as envd reports them.
pub(crate) async fn to_wire(
    fs: &dyn FileStore,
    e: sandkit_core::EntryInfo,
    shown: String,
) -> envd::EntryInfo {
    let mut symlink_target = None;
    let (file_type, kind_char) = match e.kind {
        EntryKind::Dir => (FileType::Directory, 'd'),
        EntryKind::Symlink => {
            let (target, kind) = resolve_link(fs, &shown, e.symlink_target.as_deref()).await;
            symlink_target = Some(target);
            let t = match kind {
                Some(EntryKind::Dir) => FileType::Directory,
                Some(_) => FileType::File,
                None => FileType::Unspecified,
            };
            (t, 'L')
        }
        EntryKind::File => (FileType::File, '-'),
        // A FIFO, socket or device is none of envd's types (and cannot be downloaded).
        _ => (FileType::Unspecified, '-'),
    };
    let name = shown.rsplit('/').next().unwrap_or_default().to_string();
    envd::EntryInfo {
        name,
        file_type,
        path: shown,
        size: e.size,
        mode: e.mode,
        permissions: permissions_string(kind_char, e.mode),
        owner: e.owner.unwrap_or_default(),
        group: e.group.unwrap_or_default(),
        modified_time: e.modified.map(sandkit_e2b_protocol::json::rfc3339),
        is_symlink: e.kind == EntryKind::Symlink,
        symlink_target,
        metadata: e.metadata,
    }
}

/// A sandbox's files as `user` sees them (permissions checked, new files theirs), or the
/// sandbox's own files on a backend that acts as one user.
pub(crate) enum Files<'a> {
    AsUser(Box<dyn FileStore>),
    Shared(&'a dyn FileStore),
}

impl Files<'_> {
    pub(crate) fn get(&self) -> &dyn FileStore {
        match self {
            Files::AsUser(f) => f.as_ref(),
            Files::Shared(f) => *f,
        }
    }
}

pub(crate) fn files_for<'a>(
    served: &'a Served,
    user: &str,
) -> Result<Files<'a>, sandkit_core::Error> {
    match served.sandbox.files_as(user) {
        Ok(f) => Ok(Files::AsUser(f)),
        // A backend whose files act as one user: the request runs as that one.
        Err(e) if e.kind() == ErrorKind::Unsupported => Ok(Files::Shared(served.sandbox.files())),
        Err(e) => Err(e),
    }
}
