//! Directory watching: the `WatchDir` stream, and the polled watchers of the synchronous SDK
//! (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`), over [`Sandbox::watch`].
//!
//! [`Sandbox::watch`]: sandkit_core::Sandbox::watch

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::StreamExt;
use sandkit_core::{ErrorKind, FsEvent, FsEventKind, FsEventStream};
use sandkit_e2b_protocol::connect::encode_end_stream;
use sandkit_e2b_protocol::envd::{
    self, rpc, EventType, FilesystemEvent, WatchDirResponse, WatchRequest, WatcherEvents, WatcherId,
};
use sandkit_e2b_protocol::{encode_message, ConnectError};

use crate::filesystem::{files_for, resolve, to_wire};
use crate::wire::{
    connect_error_response, decode, from_core, keepalive_interval, open_stream, reply,
    stream_error, stream_response,
};
use crate::{Served, Shared};

/// The polled watchers of one sandbox.
#[derive(Default)]
pub(crate) struct Watchers {
    by_id: Mutex<HashMap<String, Arc<Polled>>>,
}

struct Polled {
    events: Mutex<Vec<FilesystemEvent>>,
    error: Mutex<Option<ConnectError>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Polled {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Events a polled watcher keeps until they are read; past it, the watcher fails (its reader
/// is gone or too slow) rather than grow without bound.
const MAX_UNREAD: usize = 100_000;

fn watch_error(e: &sandkit_core::Error, path: &str) -> ConnectError {
    match e.kind() {
        ErrorKind::NotFound => ConnectError::new("not_found", format!("path {path} not found")),
        ErrorKind::InvalidInput => {
            ConnectError::new("invalid_argument", format!("path {path} not a directory"))
        }
        ErrorKind::Unsupported => ConnectError::new(
            "unimplemented",
            format!("this sandbox cannot watch directories: {}", e.message()),
        ),
        _ => from_core(e),
    }
}

/// Starts watching for a request: the resolved path and the events.
async fn open(
    served: &Served,
    user: &str,
    req: &WatchRequest,
) -> Result<(String, FsEventStream), ConnectError> {
    let path = resolve(user, &req.path);
    let events = served
        .sandbox
        .watch(&path, req.recursive)
        .await
        .map_err(|e| watch_error(&e, &path))?;
    Ok((path, events))
}

/// An event as envd sends it, with the entry where asked for and envd has one.
async fn to_event(
    served: &Served,
    user: &str,
    dir: &str,
    ev: FsEvent,
    include_entry: bool,
) -> FilesystemEvent {
    let kind = match ev.kind {
        FsEventKind::Create => EventType::Create,
        FsEventKind::Write => EventType::Write,
        FsEventKind::Remove => EventType::Remove,
        FsEventKind::Rename => EventType::Rename,
        FsEventKind::Chmod => EventType::Chmod,
        _ => EventType::Unspecified,
    };
    let mut entry = None;
    if include_entry
        && matches!(
            kind,
            EventType::Create | EventType::Write | EventType::Chmod
        )
    {
        let full = format!("{}/{}", dir.trim_end_matches('/'), ev.name);
        if let Ok(files) = files_for(served, user) {
            if let Ok(e) = files.get().stat(&full).await {
                entry = Some(to_wire(files.get(), e, full).await);
            }
        }
    }
    FilesystemEvent {
        name: ev.name,
        kind,
        entry,
    }
}

/// `WatchDir`: `start`, then one message per change, keepalives while nothing happens.
pub(crate) async fn watch_dir(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (served, req, user) = match open_stream::<WatchRequest>(&state, &headers, body).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (dir, events) = match open(&served, &user, &req).await {
        Ok(w) => w,
        Err(e) => return stream_error(e),
    };
    let keepalive = keepalive_interval(&headers);
    let start = encode_message(&WatchDirResponse::Start(envd::Empty {}));
    let include = req.include_entry;
    let ended = served.streams_ended();
    let body = futures_util::stream::unfold(Some(events), move |events| {
        let (served, user, dir) = (served.clone(), user.clone(), dir.clone());
        async move {
            let mut events = events?;
            let frame = match tokio::time::timeout(keepalive, events.next()).await {
                Err(_) => encode_message(&WatchDirResponse::Keepalive(envd::Empty {})),
                Ok(Some(Ok(ev))) => {
                    let ev = to_event(&served, &user, &dir, ev, include).await;
                    encode_message(&WatchDirResponse::Filesystem(Box::new(ev)))
                }
                Ok(Some(Err(e))) => {
                    let e = ConnectError::new("internal", format!("watching failed: {e}"));
                    return Some((Ok(encode_end_stream(Some(&e))), None));
                }
                Ok(None) => return Some((Ok(encode_end_stream(None)), None)),
            };
            Some((Ok::<Bytes, std::io::Error>(frame), Some(events)))
        }
    });
    stream_response(
        futures_util::stream::once(async move { Ok(start) })
            .chain(body)
            .take_until(ended)
            .boxed(),
    )
}

/// The polled-watcher RPCs.
pub(crate) async fn unary(served: &Arc<Served>, user: &str, path: &str, body: &[u8]) -> Response {
    match path {
        rpc::CREATE_WATCHER => reply(
            async {
                let req: WatchRequest = decode(body)?;
                let (dir, mut events) = open(served, user, &req).await?;
                let id = format!("w{:016x}", rand_id());
                // Registered before its task runs, so no early event finds it missing.
                let polled = Arc::new(Polled {
                    events: Mutex::new(Vec::new()),
                    error: Mutex::new(None),
                    task: Mutex::new(None),
                });
                served
                    .watchers
                    .by_id
                    .lock()
                    .unwrap()
                    .insert(id.clone(), polled.clone());
                let weak = Arc::downgrade(served);
                let (user, include) = (user.to_string(), req.include_entry);
                let watched = Arc::downgrade(&polled);
                let task = tokio::spawn(async move {
                    while let Some(ev) = events.next().await {
                        let Some(served) = weak.upgrade() else { return };
                        let Some(polled) = watched.upgrade() else {
                            return;
                        };
                        match ev {
                            Ok(ev) => {
                                let ev = to_event(&served, &user, &dir, ev, include).await;
                                let mut events = polled.events.lock().unwrap();
                                if events.len() >= MAX_UNREAD {
                                    *polled.error.lock().unwrap() = Some(ConnectError::new(
                                        "resource_exhausted",
                                        format!("over {MAX_UNREAD} events were left unread"),
                                    ));
                                    return;
                                }
                                events.push(ev);
                            }
                            Err(e) => {
                                *polled.error.lock().unwrap() = Some(ConnectError::new(
                                    "internal",
                                    format!("watching failed: {e}"),
                                ));
                                return;
                            }
                        }
                    }
                });
                *polled.task.lock().unwrap() = Some(task.abort_handle());
                Ok(WatcherId { watcher_id: id })
            }
            .await,
        ),
        rpc::GET_WATCHER_EVENTS => reply(
            async {
                let req: WatcherId = decode(body)?;
                let polled = served
                    .watchers
                    .get(&req.watcher_id)
                    .ok_or_else(|| unknown(&req.watcher_id))?;
                if let Some(e) = polled.error.lock().unwrap().clone() {
                    return Err(e);
                }
                let events = std::mem::take(&mut *polled.events.lock().unwrap());
                Ok(WatcherEvents { events })
            }
            .await,
        ),
        rpc::REMOVE_WATCHER => reply(
            async {
                let req: WatcherId = decode(body)?;
                served
                    .watchers
                    .by_id
                    .lock()
                    .unwrap()
                    .remove(&req.watcher_id)
                    .ok_or_else(|| unknown(&req.watcher_id))?;
                Ok(envd::Empty {})
            }
            .await,
        ),
        p => connect_error_response(&ConnectError::new(
            "unimplemented",
            format!("{p} is not a known method"),
        )),
    }
}

impl Watchers {
    fn get(&self, id: &str) -> Option<Arc<Polled>> {
        self.by_id.lock().unwrap().get(id).cloned()
    }
}

fn unknown(id: &str) -> ConnectError {
    ConnectError::new("not_found", format!("watcher with id {id} not found"))
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}
