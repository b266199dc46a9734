//! envd: the process and filesystem services and `/files`, routed by `E2b-Sandbox-Id`, served
//! over any [`runtime_core::Sandbox`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use e2b_protocol::connect::{code_for_kind, encode_end_stream, encode_envelope};
use e2b_protocol::envd::{
    self, permissions_string, rpc, EndEvent, EntryResponse, EventMessage, FileType, ListDirRequest,
    ListDirResponse, ListResponse, MoveRequest, PathRequest, ProcessRequest, ProcessSelector,
    SendInputRequest, SendSignalRequest, StartRequest, StreamInputRequest, UpdateRequest,
    WriteInfo,
};
use e2b_protocol::{
    encode_message, file_signature, headers, secrets_equal, ConnectError, EnvelopeDecoder,
    DEBUG_SANDBOX_ID, STREAM_CONTENT_TYPE,
};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use runtime_core::{ByteStream, CommandSpec, EntryKind, ErrorKind, FileStore, Signal};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use crate::procs::Item;
use crate::state::{Served, State, ENVS_KEY};

type Shared = Arc<State>;

/// Largest unary request body.
const MAX_UNARY: usize = 4 << 20;

/// The routes of envd.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/envs", get(envs))
        .route(
            "/files",
            get(download)
                .post(upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(rpc::START, post(start))
        .route(rpc::CONNECT, post(connect))
        .route(rpc::STREAM_INPUT, post(stream_input))
        .route(
            "/filesystem.Filesystem/WatchDir",
            post(unimplemented_stream),
        )
        .route("/{*rpc}", post(unary))
        // Never 404 for a route envd has and this server lacks: the SDK reads 404 as "the
        // sandbox is gone".
        .fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                plain_error(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("{method} {} is not served by e2b-local's envd", uri.path()),
                )
            },
        )
        .with_state(state)
}

fn plain_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    (status, Json(body)).into_response()
}

/// The edge proxy's answer for an unknown or expired sandbox.
fn sandbox_not_found(id: &str) -> Response {
    let body =
        serde_json::json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502});
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

fn connect_error_response(e: &ConnectError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e)).into_response()
}

fn from_core(e: &runtime_core::Error) -> ConnectError {
    ConnectError::new(code_for_kind(e.kind()), e.message().to_string())
}

/// The sandbox a request is for, and the checks of its access token.
struct Target {
    id: String,
    served: Arc<Served>,
}

/// How a request proves it may use the sandbox it names.
enum Auth<'a> {
    /// `X-Access-Token` required (RPCs).
    Header,
    /// The header token, or the URL's signature for `op` (`/files`).
    File {
        query: &'a FileQuery,
        op: &'static str,
    },
    /// None (`/health`).
    None,
}

/// Finds the sandbox a request is for, after checking its credentials.
///
/// The check comes first and uses only what the server holds (tokens are derived from the
/// server's secret and the sandbox id): a rejected request reaches no backend, resumes nothing
/// and extends nothing.
async fn target(state: &State, headers: &HeaderMap, auth: Auth<'_>) -> Result<Target, Response> {
    let id = match headers
        .get(headers::SANDBOX_ID)
        .and_then(|v| v.to_str().ok())
    {
        Some(id) => id.to_string(),
        None => match &auth {
            Auth::File { query, op } if query.signature.is_some() => {
                signed_sandbox(state, query, op).await?
            }
            _ => return Err(plain_error(
                StatusCode::BAD_REQUEST,
                "no E2b-Sandbox-Id header: this server serves many sandboxes and routes by that header",
            )),
        },
    };
    if id == DEBUG_SANDBOX_ID {
        if !state.config.debug {
            return Err(sandbox_not_found(&id));
        }
        // Debug mode: the SDK sends no token, and the sandbox is made on first use.
        let served = state.debug_sandbox().await.map_err(|e| {
            plain_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot make the debug sandbox: {e}"),
            )
        })?;
        return Ok(Target { id, served });
    }
    if !state.config.insecure_no_auth {
        let token = state.access_token(&id);
        let token_given = secrets_equal(
            headers
                .get(headers::ACCESS_TOKEN)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            &token,
        );
        match auth {
            Auth::Header => {
                if !token_given {
                    return Err(plain_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized access, please provide a valid access token or method signing if supported",
                    ));
                }
            }
            Auth::File { query, op } => check_file_auth(&token, headers, query, op)?,
            Auth::None => {
                if !token_given {
                    // No credentials: answered from what the server holds, no backend call.
                    return match state.held_alive(&id).await {
                        Some(served) => Ok(Target { id, served }),
                        None => Err(sandbox_not_found(&id)),
                    };
                }
            }
        }
    }
    let served = match state.live(&id).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(sandbox_not_found(&id)),
        Err(e) => return Err(plain_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    Ok(Target { id, served })
}

/// The sandbox of a signed `/files` URL that carries no sandbox header (the SDK's
/// `download_url`/`upload_url` with `E2B_SANDBOX_URL`): the one among those this server holds
/// whose token made the signature. No backend call: a forged signature costs hashing only.
async fn signed_sandbox(state: &State, q: &FileQuery, op: &str) -> Result<String, Response> {
    if state.config.insecure_no_auth {
        return Err(plain_error(
            StatusCode::BAD_REQUEST,
            "no E2b-Sandbox-Id header: without access tokens a signed URL names no sandbox",
        ));
    }
    let sig = q.signature.as_deref().unwrap_or_default();
    let path = q.path.as_deref().unwrap_or_default();
    let user = q.username.as_deref().unwrap_or("");
    for id in state.cached_ids().await {
        let token = state.access_token(&id);
        if secrets_equal(
            sig,
            &file_signature(path, op, user, &token, q.signature_expiration),
        ) {
            return Ok(id);
        }
    }
    Err(plain_error(StatusCode::UNAUTHORIZED, "invalid signature"))
}

/// The user from `Authorization: Basic base64("user:")`, if any.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next()?.to_string();
    (!user.is_empty()).then_some(user)
}

/// A user name as envd accepts it.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !user.starts_with(['-', '.'])
}

async fn user_of(
    state: &State,
    served: &Served,
    asked: Option<String>,
) -> Result<String, ConnectError> {
    match asked {
        Some(u) if valid_user(&u) => Ok(u),
        Some(u) => Err(ConnectError::new(
            "unauthenticated",
            format!("invalid username: '{u}'"),
        )),
        None => Ok(served.default_user(&state.config.default_user).await),
    }
}

fn home(user: &str) -> String {
    if user == "root" {
        "/root".into()
    } else {
        format!("/home/{user}")
    }
}

/// A path as envd resolves it: `~` and relative paths against the user's home.
fn resolve(user: &str, path: &str) -> String {
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

async fn health(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    match target(&state, &headers, Auth::None).await {
        Ok(_) => (
            StatusCode::NO_CONTENT,
            [(header::CACHE_CONTROL, "no-store")],
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn envs(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    let t = match target(&state, &headers, Auth::Header).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let info = match t.served.sandbox.info().await {
        Ok(i) => i,
        Err(e) => return plain_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let envs: BTreeMap<String, String> = info
        .metadata
        .get(ENVS_KEY)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    Json(envs).into_response()
}

// ---- unary RPCs -------------------------------------------------------------------------

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConnectError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ConnectError::new("invalid_argument", format!("invalid request: {e}")))
}

fn reply<T: Serialize>(result: Result<T, ConnectError>) -> Response {
    match result {
        Ok(v) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&v).expect("json"),
        )
            .into_response(),
        Err(e) => connect_error_response(&e),
    }
}

async fn unary(AxState(state): AxState<Shared>, headers: HeaderMap, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let t = match target(&state, &headers, Auth::Header).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let body = match axum::body::to_bytes(request.into_body(), MAX_UNARY).await {
        Ok(b) => b,
        Err(_) => {
            return connect_error_response(&ConnectError::new(
                "resource_exhausted",
                format!("request body over {MAX_UNARY} bytes"),
            ))
        }
    };
    let user = match user_of(&state, &t.served, basic_user(&headers)).await {
        Ok(u) => u,
        Err(e) => return connect_error_response(&e),
    };
    let files = match files_for(&t.served, &user) {
        Ok(f) => f,
        Err(e) => return connect_error_response(&from_core(&e)),
    };
    let fs = files.get();
    match path.as_str() {
        rpc::STAT => reply(
            async {
                let req: PathRequest = decode(&body)?;
                let p = resolve(&user, &req.path);
                Ok(EntryResponse {
                    entry: entry_info(fs, &p).await?,
                })
            }
            .await,
        ),
        rpc::MAKE_DIR => reply(
            async {
                let req: PathRequest = decode(&body)?;
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
                let req: MoveRequest = decode(&body)?;
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
                let req: ListDirRequest = decode(&body)?;
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
                let req: PathRequest = decode(&body)?;
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
        rpc::LIST => reply(Ok::<_, ConnectError>(ListResponse {
            processes: t
                .served
                .processes
                .running()
                .into_iter()
                .map(|e| envd::ProcessInfo {
                    config: e.config.clone(),
                    pid: e.pid,
                    tag: e.tag.clone(),
                })
                .collect(),
        })),
        rpc::SEND_INPUT => reply(
            async {
                let req: SendInputRequest = decode(&body)?;
                let entry = find(&t.served, &req.process)?;
                entry
                    .handle
                    .write_stdin(Bytes::copy_from_slice(req.input.bytes()))
                    .await
                    .map_err(|e| {
                        ConnectError::new(
                            "internal",
                            format!("stdin not enabled or closed: {}", e.message()),
                        )
                    })?;
                Ok(envd::Empty {})
            }
            .await,
        ),
        rpc::SEND_SIGNAL => reply(
            async {
                let req: SendSignalRequest = decode(&body)?;
                let entry = find(&t.served, &req.process)?;
                let signal = match req.signal {
                    envd::Signal::Kill => Signal::Kill,
                    envd::Signal::Term => Signal::Term,
                    envd::Signal::Unspecified => {
                        return Err(ConnectError::new(
                            "unimplemented",
                            "only SIGKILL and SIGTERM are supported",
                        ))
                    }
                };
                entry
                    .handle
                    .signal(signal)
                    .await
                    .map_err(|e| from_core(&e))?;
                Ok(envd::Empty {})
            }
            .await,
        ),
        rpc::CLOSE_STDIN => reply(
            async {
                let req: ProcessRequest = decode(&body)?;
                let entry = find(&t.served, &req.process)?;
                if entry.pty {
                    return Err(ConnectError::new(
                        "failed_precondition",
                        "cannot close stdin of a PTY process",
                    ));
                }
                entry
                    .handle
                    .close_stdin()
                    .await
                    .map_err(|e| from_core(&e))?;
                Ok(envd::Empty {})
            }
            .await,
        ),
        rpc::UPDATE => reply(
            async {
                let req: UpdateRequest = decode(&body)?;
                let entry = find(&t.served, &req.process)?;
                if let Some(pty) = req.pty {
                    let (cols, rows) = (
                        pty.size.cols.min(u16::MAX as u32) as u16,
                        pty.size.rows.min(u16::MAX as u32) as u16,
                    );
                    entry
                        .handle
                        .resize(cols, rows)
                        .await
                        .map_err(|e| from_core(&e))?;
                }
                Ok(envd::Empty {})
            }
            .await,
        ),
        p if p.starts_with("/filesystem.Filesystem/") => {
            connect_error_response(&ConnectError::new(
                "unimplemented",
                format!("{p} is not available: this backend cannot watch directories"),
            ))
        }
        p => connect_error_response(&ConnectError::new(
            "unimplemented",
            format!("{p} is not a known method"),
        )),
    }
}

fn find(
    served: &Served,
    selector: &ProcessSelector,
) -> Result<Arc<crate::procs::Entry>, ConnectError> {
    let entry = served.processes.find(selector.pid, selector.tag.as_deref());
    match entry {
        Some(e) if e.ended().is_none() => Ok(e),
        _ => Err(ConnectError::new(
            "not_found",
            match (selector.pid, &selector.tag) {
                (Some(pid), _) => format!("process with pid {pid} not found"),
                (None, Some(tag)) => format!("process with tag {tag} not found"),
                _ => "no process selected".into(),
            },
        )),
    }
}

fn not_found_path(e: &runtime_core::Error, path: &str) -> ConnectError {
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
    let mut at = runtime_filestore::clean_absolute(&follow(link, target));
    for _ in 0..40 {
        match fs.stat(&at).await {
            Ok(e) if e.kind == EntryKind::Symlink => {
                at = runtime_filestore::clean_absolute(&follow(&at, e.symlink_target.as_deref()))
            }
            Ok(e) => return (at, Some(e.kind)),
            Err(_) => break,
        }
    }
    (link.to_string(), None)
}

/// A core entry as envd's `EntryInfo`: a link carries its target's type and, as
/// `symlinkTarget`, the resolved absolute path, as envd reports them.
async fn to_wire(fs: &dyn FileStore, e: runtime_core::EntryInfo, shown: String) -> envd::EntryInfo {
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
        _ => (FileType::File, '-'),
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
        modified_time: e.modified.map(e2b_protocol::json::rfc3339),
        is_symlink: e.kind == EntryKind::Symlink,
        symlink_target,
        metadata: BTreeMap::new(),
    }
}

/// A sandbox's files as `user` sees them (permissions checked, new files theirs), or the
/// sandbox's own files on a backend that acts as one user.
enum Files<'a> {
    AsUser(Box<dyn FileStore>),
    Shared(&'a dyn FileStore),
}

impl Files<'_> {
    fn get(&self) -> &dyn FileStore {
        match self {
            Files::AsUser(f) => f.as_ref(),
            Files::Shared(f) => *f,
        }
    }
}

fn files_for<'a>(served: &'a Served, user: &str) -> Result<Files<'a>, runtime_core::Error> {
    match served.sandbox.files_as(user) {
        Ok(f) => Ok(Files::AsUser(f)),
        // A backend whose files act as one user: the request runs as that one.
        Err(e) if e.kind() == ErrorKind::Unsupported => Ok(Files::Shared(served.sandbox.files())),
        Err(e) => Err(e),
    }
}

// ---- streams -----------------------------------------------------------------------------

/// An HTTP 200 stream of envelopes; an `Err` item breaks the response off (no end).
fn stream_response(body: BoxStream<'static, std::io::Result<Bytes>>) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, STREAM_CONTENT_TYPE)
        .body(Body::from_stream(body))
        .expect("response")
}

/// An HTTP 200 stream that holds only an end-of-stream error.
fn stream_error(e: ConnectError) -> Response {
    stream_response(
        futures_util::stream::once(async move { Ok(encode_end_stream(Some(&e))) }).boxed(),
    )
}

async fn unimplemented_stream(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = target(&state, &headers, Auth::Header).await {
        return r;
    }
    stream_error(ConnectError::new(
        "unimplemented",
        "this backend cannot watch directories",
    ))
}

/// Reads the first envelope of a streaming request.
async fn first_message<T: DeserializeOwned>(body: Body) -> Result<T, ConnectError> {
    let mut decoder = EnvelopeDecoder::default();
    let mut stream = body.into_data_stream();
    loop {
        if let Some(env) = decoder
            .next_envelope()
            .map_err(|e| ConnectError::new("invalid_argument", e.0))?
        {
            return decode(&env.payload);
        }
        match stream.next().await {
            Some(Ok(chunk)) => decoder.push(&chunk),
            Some(Err(e)) => return Err(ConnectError::new("canceled", e.to_string())),
            None => {
                return Err(ConnectError::new(
                    "invalid_argument",
                    "the request has no message",
                ))
            }
        }
    }
}

fn keepalive_interval(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get(headers::KEEPALIVE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(90);
    Duration::from_secs(secs)
}

fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let ms = headers
        .get(headers::CONNECT_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)?;
    Some(Duration::from_millis(ms))
}

/// The events a watcher receives, framed: start, data and keepalives, end, end-of-stream.
fn event_stream(
    pid: u32,
    rx: mpsc::Receiver<Item>,
    keepalive: Duration,
    prelude: Option<Item>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let start = encode_message(&EventMessage {
        event: envd::ProcessEvent::Start { pid },
    });
    struct S {
        rx: mpsc::Receiver<Item>,
        prelude: Option<Item>,
        done: bool,
    }
    let body = futures_util::stream::unfold(
        S {
            rx,
            prelude,
            done: false,
        },
        move |mut s| async move {
            if s.done {
                return None;
            }
            let item = match s.prelude.take() {
                Some(i) => Some(i),
                None => match tokio::time::timeout(keepalive, s.rx.recv()).await {
                    Ok(i) => i,
                    Err(_) => {
                        let ka = encode_message(&EventMessage {
                            event: envd::ProcessEvent::Keepalive(envd::Empty {}),
                        });
                        return Some((Ok(ka), s));
                    }
                },
            };
            match item {
                Some(Item::Event(ev)) => {
                    let is_end = matches!(ev, envd::ProcessEvent::End(_));
                    let mut frame = encode_message(&EventMessage { event: ev }).to_vec();
                    if is_end {
                        s.done = true;
                        frame.extend_from_slice(&encode_end_stream(None));
                    }
                    Some((Ok(Bytes::from(frame)), s))
                }
                Some(Item::Fail(e)) => {
                    s.done = true;
                    Some((Ok(encode_end_stream(Some(&e))), s))
                }
                Some(Item::Gone) => {
                    s.done = true;
                    Some((Err(std::io::Error::other("the sandbox is gone")), s))
                }
                None => {
                    s.done = true;
                    Some((
                        Ok(encode_end_stream(Some(&ConnectError::new(
                            "unavailable",
                            "the process stream ended",
                        )))),
                        s,
                    ))
                }
            }
        },
    );
    futures_util::stream::once(async move { Ok(start) })
        .chain(body)
        .boxed()
}

async fn start(AxState(state): AxState<Shared>, headers: HeaderMap, body: Body) -> Response {
    let t = match target(&state, &headers, Auth::Header).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let req: StartRequest = match first_message(body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let user = match user_of(&state, &t.served, basic_user(&headers)).await {
        Ok(u) => u,
        Err(e) => return stream_error(e),
    };
    let p = &req.process;
    // The SDK's shell lines run through the sandbox's shell (bash, or sh where there is none).
    let mut spec = match p.args.as_slice() {
        [l, c, line] if p.cmd == "/bin/bash" && l == "-l" && c == "-c" => {
            CommandSpec::shell(line.clone())
        }
        args => CommandSpec::program(p.cmd.clone(), args.to_vec()),
    };
    for (k, v) in &p.envs {
        spec = spec.env(k, v);
    }
    spec = spec
        .env("HOME", home(&user))
        .env("USER", &user)
        .env("LOGNAME", &user)
        .user(&user)
        .cwd(resolve(&user, p.cwd.as_deref().unwrap_or("")));
    let pty = req.pty.is_some();
    if let Some(pty) = req.pty {
        spec = spec.pty(
            pty.size.cols.clamp(1, 1000) as u16,
            pty.size.rows.clamp(1, 1000) as u16,
        );
    } else {
        spec = spec.stdin(req.stdin.unwrap_or(true));
    }
    if let Some(tag) = &req.tag {
        spec = spec.tag(tag);
    }
    if let Some(d) = deadline(&headers) {
        spec = spec.timeout(d);
    }
    let mut config = p.clone();
    config.cwd = Some(resolve(&user, p.cwd.as_deref().unwrap_or("")));
    let process = match t.served.sandbox.spawn(spec).await {
        Ok(p) => p,
        Err(e) => return stream_error(from_core(&e)),
    };
    if process.pid() == 0 {
        // The backend could not start it at all (a missing cwd or user).
        let cwd = config.cwd.clone().unwrap_or_default();
        return stream_error(ConnectError::new(
            "invalid_argument",
            format!("cannot start the process (does cwd '{cwd}' exist, and user '{user}'?)"),
        ));
    }
    debug!(sandbox_id = %t.id, pid = process.pid(), "process started");
    let pid = process.pid();
    let weak = Arc::downgrade(&t.served);
    let alive: crate::procs::AliveProbe = Arc::new(move || {
        let weak = weak.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(s) => matches!(
                    s.sandbox.info().await,
                    Ok(i) if i.state == runtime_core::SandboxState::Running
                ),
                None => false,
            }
        })
    });
    let (_entry, rx) = t
        .served
        .processes
        .start(process, config, req.tag.clone(), pty, alive);
    stream_response(event_stream(pid, rx, keepalive_interval(&headers), None))
}

async fn connect(AxState(state): AxState<Shared>, headers: HeaderMap, body: Body) -> Response {
    let t = match target(&state, &headers, Auth::Header).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let req: ProcessRequest = match first_message(body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let Some(entry) = t
        .served
        .processes
        .find(req.process.pid, req.process.tag.as_deref())
    else {
        let what = match (req.process.pid, &req.process.tag) {
            (Some(pid), _) => format!("process with pid {pid} not found"),
            (_, Some(tag)) => format!("process with tag {tag} not found"),
            _ => "no process selected".into(),
        };
        return stream_error(ConnectError::new("not_found", what));
    };
    // Subscribe first, then look at the end, so an exit in between is not missed.
    let rx = entry.watch();
    let prelude = entry.ended();
    let prelude = match prelude {
        Some(Item::Fail(_) | Item::Gone) => Some(Item::Event(envd::ProcessEvent::End(
            EndEvent::signaled("killed"),
        ))),
        other => other,
    };
    stream_response(event_stream(
        entry.pid,
        rx,
        keepalive_interval(&headers),
        prelude,
    ))
}

async fn stream_input(AxState(state): AxState<Shared>, headers: HeaderMap, body: Body) -> Response {
    let t = match target(&state, &headers, Auth::Header).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut decoder = EnvelopeDecoder::default();
    let mut stream = body.into_data_stream();
    let mut entry = None;
    let result: Result<(), ConnectError> = async {
        loop {
            while let Some(env) = decoder
                .next_envelope()
                .map_err(|e| ConnectError::new("invalid_argument", e.0))?
            {
                if env.is_end_stream() {
                    return Ok(());
                }
                match decode::<StreamInputRequest>(&env.payload)? {
                    StreamInputRequest::Start(r) => entry = Some(find(&t.served, &r.process)?),
                    StreamInputRequest::Data { input } => {
                        let e = entry.as_ref().ok_or_else(|| {
                            ConnectError::new("failed_precondition", "input before start")
                        })?;
                        e.handle
                            .write_stdin(Bytes::copy_from_slice(input.bytes()))
                            .await
                            .map_err(|e| {
                                ConnectError::new(
                                    "internal",
                                    format!("stdin not enabled or closed: {}", e.message()),
                                )
                            })?;
                    }
                    StreamInputRequest::Keepalive(_) => {}
                }
            }
            match stream.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk),
                Some(Err(e)) => return Err(ConnectError::new("canceled", e.to_string())),
                None => return Ok(()),
            }
        }
    }
    .await;
    match result {
        Ok(()) => stream_response(
            futures_util::stream::iter(vec![
                Ok(encode_envelope(0, b"{}")),
                Ok(encode_end_stream(None)),
            ])
            .boxed(),
        ),
        Err(e) => stream_error(e),
    }
}

// ---- /files --------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct FileQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<u64>,
}

/// Checks the header token or the URL signature of a `/files` request against `token`.
fn check_file_auth(
    token: &str,
    headers: &HeaderMap,
    q: &FileQuery,
    op: &str,
) -> Result<(), Response> {
    if let Some(given) = headers
        .get(headers::ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok())
    {
        if secrets_equal(given, token) {
            return Ok(());
        }
        return Err(plain_error(
            StatusCode::UNAUTHORIZED,
            "invalid access token",
        ));
    }
    let Some(sig) = &q.signature else {
        return Err(plain_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized access, please provide a valid access token or method signing if supported",
        ));
    };
    if let Some(exp) = q.signature_expiration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if exp < now {
            return Err(plain_error(
                StatusCode::UNAUTHORIZED,
                "signature is already expired",
            ));
        }
    }
    let expected = file_signature(
        q.path.as_deref().unwrap_or(""),
        op,
        q.username.as_deref().unwrap_or(""),
        token,
        q.signature_expiration,
    );
    if secrets_equal(sig, &expected) {
        Ok(())
    } else {
        Err(plain_error(StatusCode::UNAUTHORIZED, "invalid signature"))
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',').any(|part| {
                let mut it = part.split(';');
                let name = it.next().unwrap_or("").trim();
                let q0 = it.any(|p| p.trim().replace(' ', "") == "q=0");
                (name == "gzip" || name == "*") && !q0
            })
        })
        .unwrap_or(false)
}

async fn download(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> Response {
    let t = match target(
        &state,
        &headers,
        Auth::File {
            query: &q,
            op: "read",
        },
    )
    .await
    {
        Ok(t) => t,
        Err(r) => return r,
    };
    let raw = q.path.clone().unwrap_or_default();
    let user = match user_of(&state, &t.served, q.username.clone()).await {
        Ok(u) => u,
        Err(e) => return plain_error(StatusCode::UNAUTHORIZED, e.message),
    };
    let path = resolve(&user, &raw);
    let files = match files_for(&t.served, &user) {
        Ok(f) => f,
        Err(e) => return plain_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let fs = files.get();
    let content = match fs.read_stream(&path).await {
        Ok(s) => s,
        Err(e) => {
            return match e.kind() {
                ErrorKind::NotFound => plain_error(
                    StatusCode::NOT_FOUND,
                    format!("path '{path}' does not exist"),
                ),
                ErrorKind::InvalidInput => {
                    let what = match fs.stat(&path).await {
                        Ok(e) if e.kind == EntryKind::Dir => "is a directory",
                        _ => "is not a regular file (a FIFO, device or socket)",
                    };
                    plain_error(StatusCode::BAD_REQUEST, format!("path '{path}' {what}"))
                }
                ErrorKind::PermissionDenied => plain_error(StatusCode::UNAUTHORIZED, e.to_string()),
                _ => plain_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
    };
    let name = path.rsplit('/').next().unwrap_or_default().replace('"', "");
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{name}\""),
        );
    let io = content.map_err(std::io::Error::other);
    if accepts_gzip(&headers) {
        let reader = tokio_util::io::StreamReader::new(io);
        let gz =
            async_compression::tokio::bufread::GzipEncoder::new(tokio::io::BufReader::new(reader));
        builder
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from_stream(tokio_util::io::ReaderStream::new(gz)))
            .expect("response")
    } else {
        builder.body(Body::from_stream(io)).expect("response")
    }
}

/// A request body, decompressed when it says `Content-Encoding: gzip`.
fn body_stream(headers: &HeaderMap, body: Body) -> ByteStream {
    let gz = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let raw = body.into_data_stream().map_err(std::io::Error::other);
    let stream: BoxStream<'static, std::io::Result<Bytes>> = if gz {
        let reader = tokio_util::io::StreamReader::new(raw);
        let dec =
            async_compression::tokio::bufread::GzipDecoder::new(tokio::io::BufReader::new(reader));
        tokio_util::io::ReaderStream::new(dec).boxed()
    } else {
        raw.boxed()
    };
    stream
        .map_err(|e| {
            runtime_core::Error::new(ErrorKind::InvalidInput, format!("reading the upload: {e}"))
        })
        .boxed()
}

fn upload_error(e: &runtime_core::Error, path: &str) -> Response {
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::AlreadyExists => plain_error(
            StatusCode::BAD_REQUEST,
            format!("cannot write '{path}': {}", e.message()),
        ),
        ErrorKind::PermissionDenied => plain_error(StatusCode::UNAUTHORIZED, e.to_string()),
        _ => plain_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Writes a file as `user`, as envd does: parents made, the file the user's, and replaced
/// whole (a cut upload leaves the old content; a link at the path is replaced, not followed).
async fn write_one(
    served: &Served,
    user: &str,
    path: &str,
    content: ByteStream,
) -> Result<WriteInfo, Response> {
    let files = files_for(served, user).map_err(|e| upload_error(&e, path))?;
    files
        .get()
        .write_stream(path, content)
        .await
        .map_err(|e| upload_error(&e, path))?;
    Ok(WriteInfo {
        path: path.to_string(),
        name: path.rsplit('/').next().unwrap_or_default().to_string(),
        kind: "file".into(),
    })
}

async fn upload(
    AxState(state): AxState<Shared>,
    Query(q): Query<FileQuery>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let t = match target(
        &state,
        &headers,
        Auth::File {
            query: &q,
            op: "write",
        },
    )
    .await
    {
        Ok(t) => t,
        Err(r) => return r,
    };
    let user = match user_of(&state, &t.served, q.username.clone()).await {
        Ok(u) => u,
        Err(e) => return plain_error(StatusCode::UNAUTHORIZED, e.message),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (parts, body) = request.into_parts();
    if !content_type.starts_with("multipart/form-data") {
        let Some(raw) = q.path.as_deref() else {
            return plain_error(
                StatusCode::BAD_REQUEST,
                "the path parameter is required for octet-stream uploads",
            );
        };
        let path = resolve(&user, raw);
        return match write_one(&t.served, &user, &path, body_stream(&headers, body)).await {
            Ok(info) => Json(vec![info]).into_response(),
            Err(r) => r,
        };
    }
    let decoded = Body::from_stream(body_stream(&headers, body));
    let request = Request::from_parts(parts, decoded);
    let mut multipart = match axum::extract::Multipart::from_request(request, &()).await {
        Ok(m) => m,
        Err(e) => {
            return plain_error(
                StatusCode::BAD_REQUEST,
                format!("invalid multipart body: {e}"),
            )
        }
    };
    let mut written: Vec<WriteInfo> = Vec::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid multipart body: {e}"),
                )
            }
        };
        if field.name() != Some("file") {
            continue;
        }
        let raw = match q
            .path
            .clone()
            .or_else(|| field.file_name().map(String::from))
        {
            Some(p) => p,
            None => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    "a file part has no destination path",
                )
            }
        };
        let path = resolve(&user, &raw);
        if written.iter().any(|w| w.path == path) {
            return plain_error(
                StatusCode::BAD_REQUEST,
                format!("path '{path}' is written twice in one request"),
            );
        }
        // Stream the part into the sandbox: a channel joins the part reader to the writer.
        let (tx, mut rx) = mpsc::channel::<runtime_core::Result<Bytes>>(8);
        let content: ByteStream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        let feed = async move {
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx
                            .send(Err(runtime_core::Error::new(
                                ErrorKind::InvalidInput,
                                format!("reading the upload: {e}"),
                            )))
                            .await;
                        break;
                    }
                }
            }
        };
        let (_, result) = tokio::join!(feed, write_one(&t.served, &user, &path, content));
        match result {
            Ok(info) => written.push(info),
            Err(r) => return r,
        }
    }
    if written.is_empty() {
        return plain_error(
            StatusCode::BAD_REQUEST,
            "no file part named 'file' in the upload",
        );
    }
    Json(written).into_response()
}
