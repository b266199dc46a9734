//! E2B volumes: the control routes (`/volumes`), the volume content API
//! (`/volumecontent/{id}/...`, authenticated by the volume's bearer token) and `volumeMounts`
//! on create.
//!
//! A volume is a backend volume ([`Runtime::create_volume`](sandkit_core::Runtime)) named
//! `sandkit-volume-<id>`, carrying its owner, E2B name and id as metadata: it belongs to the key
//! that made it, and names are unique per key. Its content is reached through a helper
//! sandbox that mounts it at [`ROOT`]: made on first use, kept while requests come, killed
//! after [`HELPER_IDLE`] without one (and before the volume is destroyed). Every path is
//! cleaned to stay under the mount; a link inside the volume leads at most into that helper
//! sandbox, which holds nothing else.
//!
//! The SDK reaches the content API at `E2B_VOLUME_API_URL` (it never uses `E2B_API_URL` for
//! it): set it to this server's API address.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sandkit_core::raw::shell_quote;
use sandkit_core::{
    CommandSpec, ErrorKind, Mount, MountSource, Sandbox, SandboxExt, SandboxSpec, Volume,
};
use sandkit_e2b_protocol::json::rfc3339;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, info};

use crate::caller::Caller;
use crate::http::{api_error, from_error, parse, Shared};
use crate::state::{State, INSTANCE_KEY, OWNER_KEY};
use crate::volume_helpers::Helper;

const NAME_KEY: &str = "sandkit.e2b.volume.name";
const ID_KEY: &str = "sandkit.e2b.volume.id";
/// Where a helper sandbox mounts the volume it serves.
const ROOT: &str = "/vol";
/// How long a helper sandbox is kept without a request.
const HELPER_IDLE: Duration = Duration::from_secs(60);
/// The deepest listing.
const MAX_DEPTH: u32 = 10;

/// The control routes (API key).
pub(crate) fn routes(router: Router<Shared>) -> Router<Shared> {
    use axum::routing::post;
    router
        .route("/volumes", post(create).get(list))
        .route("/volumes/{id}", get(info).delete(destroy))
}

/// The content routes: the volume's bearer token, not the API key.
pub(crate) fn content_router(state: Shared) -> Router {
    Router::new()
        .route("/volumecontent/{id}/dir", get(list_dir).post(make_dir))
        .route("/volumecontent/{id}/file", get(read_file).put(write_file))
        .route(
            "/volumecontent/{id}/path",
            get(stat).patch(update).delete(remove),
        )
        .with_state(state)
}

fn engine_name(id: &str) -> String {
    format!("sandkit-volume-{id}")
}

/// A volume's bearer token: bound to its owner as well as its id, so that it opens nothing
/// once the volume is not that key's.
fn token(state: &State, owner: &str, id: &str) -> String {
    state.derive(&format!("volume/{owner}/{id}"), "volume")
}

/// A volume of this key: `(id, name, engine name)`.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    id: String,
    name: String,
    engine: String,
}

async fn owned(state: &State, owner: &str) -> sandkit_core::Result<Vec<Owned>> {
    if !state.runtime.capabilities().volumes {
        return Ok(Vec::new());
    }
    Ok(state
        .runtime
        .volumes()
        .await?
        .into_iter()
        .filter(|v: &Volume| v.metadata.get(OWNER_KEY).map(String::as_str) == Some(owner))
        .filter_map(|v| {
            Some(Owned {
                id: v.metadata.get(ID_KEY)?.clone(),
                name: v.metadata.get(NAME_KEY)?.clone(),
                engine: v.name,
            })
        })
        .collect())
}

fn volume_missing(id: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, format!("Volume {id} not found"))
}

fn unsupported(state: &State) -> Option<Response> {
    let c = state.runtime.capabilities();
    (!(c.volumes && c.mounts)).then(|| {
        api_error(
            StatusCode::NOT_IMPLEMENTED,
            "volumes are not supported by this server's backend",
        )
    })
}

#[derive(Debug, Default, Deserialize)]
struct NewVolume {
    #[serde(default)]
    name: String,
}

/// `POST /volumes` (201).
async fn create(state: Caller, body: axum::body::Bytes) -> Response {
    if let Some(r) = unsupported(&state) {
        return r;
    }
    let req: NewVolume = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let valid = !req.name.is_empty()
        && req.name.len() <= 250
        && req
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return api_error(
            StatusCode::BAD_REQUEST,
            "Invalid volume name: use letters, digits, '_' and '-'",
        );
    }
    let mine = match owned(&state, state.owner()).await {
        Ok(m) => m,
        Err(e) => return from_error(&e, ""),
    };
    if mine.iter().any(|v| v.name == req.name) {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("Volume with name '{}' already exists", req.name),
        );
    }
    let max = state.key.limits.max_volumes;
    if mine.len() >= max {
        state.metrics.refused(&state.key.name, "volumes");
        return crate::http::too_many(
            format!("this key may keep at most {max} volumes; destroy one first"),
            60,
        );
    }
    let id: String = {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..20)
            .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
            .collect()
    };
    let metadata = BTreeMap::from([
        (OWNER_KEY.to_string(), state.owner().to_string()),
        (NAME_KEY.to_string(), req.name.clone()),
        (ID_KEY.to_string(), id.clone()),
    ]);
    if let Err(e) = state
        .runtime
        .create_volume(&engine_name(&id), metadata)
        .await
    {
        return from_error(&e, "");
    }
    info!(volume_id = %id, name = %req.name, "volume created");
    (
        StatusCode::CREATED,
        Json(json!({"volumeID": id, "name": req.name, "token": token(&state, state.owner(), &id)})),
    )
        .into_response()
}

/// `GET /volumes`.
async fn list(state: Caller) -> Response {
    match owned(&state, state.owner()).await {
        Ok(m) => Json(
            m.iter()
                .map(|v| json!({"volumeID": v.id, "name": v.name}))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => from_error(&e, ""),
    }
}

/// `GET /volumes/{id}`.
async fn info(state: Caller, Path(id): Path<String>) -> Response {
    match owned(&state, state.owner()).await {
        Ok(m) => match m.iter().find(|v| v.id == id) {
            Some(v) => {
                Json(json!({"volumeID": v.id, "name": v.name, "token": token(&state, state.owner(), &v.id)}))
                    .into_response()
            }
            None => volume_missing(&id),
        },
        Err(e) => from_error(&e, ""),
    }
}

/// `DELETE /volumes/{id}` (204): its helper sandbox first, then the volume; a volume a
/// sandbox mounts is 409.
async fn destroy(state: Caller, Path(id): Path<String>) -> Response {
    let mine = match owned(&state, state.owner()).await {
        Ok(m) => m,
        Err(e) => return from_error(&e, ""),
    };
    let Some(v) = mine.into_iter().find(|v| v.id == id) else {
        return volume_missing(&id);
    };
    if let Some(h) = state.volume_helpers.held.lock().await.remove(&id) {
        let _ = h.sandbox.kill().await;
    }
    // The engine lets go of a killed helper's mount a moment later.
    let mut result = state.runtime.remove_volume(&v.engine).await;
    for _ in 0..20 {
        match &result {
            Err(e) if e.kind() == ErrorKind::Conflict => {
                let mounted = state
                    .runtime
                    .list(&state.owned_filter())
                    .await
                    .map(|l| {
                        l.iter()
                            .any(|i| mounts_of(&i.metadata).iter().any(|(n, _)| *n == v.name))
                    })
                    .unwrap_or(true);
                if mounted {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                result = state.runtime.remove_volume(&v.engine).await;
            }
            _ => break,
        }
    }
    match result {
        Ok(()) => {
            info!(volume_id = %id, "volume destroyed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) if e.kind() == ErrorKind::NotFound => volume_missing(&id),
        Err(e) if e.kind() == ErrorKind::Conflict => api_error(
            StatusCode::CONFLICT,
            format!("volume {id} is mounted by a sandbox; kill it first"),
        ),
        Err(e) => from_error(&e, ""),
    }
}

/// Metadata key of a sandbox's volume mounts (JSON `[{name, path}]`).
pub(crate) const MOUNTS_KEY: &str = "sandkit.e2b.volume_mounts";

/// The mounts a sandbox was made with, from its metadata.
pub(crate) fn mounts_of(metadata: &BTreeMap<String, String>) -> Vec<(String, String)> {
    metadata
        .get(MOUNTS_KEY)
        .and_then(|m| serde_json::from_str::<Vec<(String, String)>>(m).ok())
        .unwrap_or_default()
}

/// `volumeMounts` of a create, checked (E2B's rules, one 400 for all) and turned into mounts
/// of this key's volumes.
pub(crate) async fn mounts_for(
    state: &Caller,
    asked: &serde_json::Value,
) -> Result<(Vec<Mount>, Vec<(String, String)>), String> {
    #[derive(Deserialize)]
    struct Asked {
        name: String,
        path: String,
    }
    let asked: Vec<Asked> = serde_json::from_value(asked.clone())
        .map_err(|e| format!("volumeMounts must be a list of {{name, path}}: {e}"))?;
    if asked.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let c = state.runtime.capabilities();
    if !(c.volumes && c.mounts) {
        return Err("volumeMounts are not supported by this server's backend".into());
    }
    let mine = owned(state, state.owner())
        .await
        .map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let mut mounts = Vec::new();
    let mut kept = Vec::new();
    for (i, a) in asked.iter().enumerate() {
        let clean = clean(&a.path);
        let Some(v) = mine.iter().find(|v| v.name == a.name) else {
            problems.push(format!("volume mount #{i}: volume '{}' not found", a.name));
            continue;
        };
        if !a.path.starts_with('/') || clean != a.path || a.path == "/" {
            problems.push(format!(
                "volume mount #{i}: path '{}' must be absolute and clean",
                a.path
            ));
            continue;
        }
        if kept.iter().any(|(_, p)| *p == a.path) {
            problems.push(format!(
                "volume mount #{i}: path '{}' is already used",
                a.path
            ));
            continue;
        }
        mounts.push(Mount {
            source: MountSource::Volume(v.engine.clone()),
            target: a.path.clone(),
            read_only: false,
        });
        kept.push((a.name.clone(), a.path.clone()));
    }
    if !problems.is_empty() {
        return Err(format!("invalid mounts:\n\t- {}", problems.join("\n\t- ")));
    }
    Ok((mounts, kept))
}

/// `/` and `path` joined, `.` and `..` resolved: always under the volume's root.
fn clean(path: &str) -> String {
    sandkit_filestore::clean_absolute(&format!("/{path}"))
}

/// The helper sandbox of volume `id`, after checking the bearer token.
async fn helper(
    state: &Shared,
    id: &str,
    headers: &HeaderMap,
) -> Result<Arc<dyn Sandbox>, Response> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // The token names its owner among the keys served now (a revoked key's opens nothing).
    let keys = state.keys();
    let Some(owner) = keys
        .owners()
        .find(|owner| sandkit_e2b_protocol::secrets_equal(given, &token(state, owner, id)))
    else {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            "invalid or missing volume token",
        ));
    };
    let mut held = state.volume_helpers.held.lock().await;
    if let Some(h) = held.get_mut(id) {
        h.used = Instant::now();
        return Ok(h.sandbox.clone());
    }
    // The token proves this server minted it, not that the volume is this key's: another
    // server on the same engine mints tokens for any id. Only a volume this key owns is served.
    let engine = match owned(state, owner).await {
        Ok(mine) => match mine.into_iter().find(|v| v.id == id) {
            Some(v) => v.engine,
            None => return Err(volume_missing(id)),
        },
        Err(e) => return Err(from_error(&e, "")),
    };
    // A helper is a sandbox of the key's like any other: admitted under its limits.
    let key = keys.by_owner(owner).expect("the owner of a served key");
    let _admission = state
        .admit_create(&key)
        .await
        .map_err(|(message, retry_after)| crate::http::too_many(message, retry_after))?;
    let mut spec = SandboxSpec::new()
        .metadata(INSTANCE_KEY, &state.instance)
        .metadata(OWNER_KEY, owner)
        .timeout(Duration::from_secs(3600));
    spec.mounts.push(Mount {
        source: MountSource::Volume(engine),
        target: ROOT.into(),
        read_only: false,
    });
    let sandbox: Arc<dyn Sandbox> = Arc::from(
        state
            .runtime
            .create(spec)
            .await
            .map_err(|e| from_error(&e, ""))?,
    );
    debug!(
        volume_id = id,
        sandbox_id = sandbox.id(),
        "volume helper sandbox made"
    );
    held.insert(
        id.to_string(),
        Helper {
            sandbox: sandbox.clone(),
            used: Instant::now(),
        },
    );
    // Ended after a minute without a request.
    let (state, id) = (state.clone(), id.to_string());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HELPER_IDLE / 4).await;
            let mut held = state.volume_helpers.held.lock().await;
            match held.get(&id) {
                Some(h) if h.used.elapsed() > HELPER_IDLE => {
                    let h = held.remove(&id).expect("held");
                    drop(held);
                    let _ = h.sandbox.kill().await;
                    return;
                }
                Some(_) => {}
                None => return,
            }
        }
    });
    Ok(sandbox)
}

/// What a content request works on: the helper sandbox, the cleaned path in the volume, and
/// that path in the helper, quoted for a shell.
struct Target {
    sandbox: Arc<dyn Sandbox>,
    path: String,
    full: String,
}

async fn target(
    state: &Shared,
    id: &str,
    headers: &HeaderMap,
    path: &str,
) -> Result<Target, Response> {
    let sandbox = helper(state, id, headers).await?;
    let path = clean(path);
    let full = shell_quote(&format!("{ROOT}{path}"));
    Ok(Target {
        sandbox,
        path,
        full,
    })
}

/// `find -printf` of one entry: name, type, size, mode, uid, gid, times, link target.
const STAT_FORMAT: &str = r"%P\0%y\0%s\0%m\0%U\0%G\0%A@\0%T@\0%C@\0%l\0";

fn entries(output: &[u8], base: &str) -> Vec<serde_json::Value> {
    let fields: Vec<String> = output
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).to_string())
        .collect();
    fields
        .chunks(10)
        .filter(|c| c.len() == 10)
        .map(|c| {
            let path = if c[0].is_empty() {
                base.to_string()
            } else if base == "/" {
                format!("/{}", c[0])
            } else {
                format!("{base}/{}", c[0])
            };
            let name = path.rsplit('/').next().unwrap_or_default().to_string();
            let time = |s: &str| {
                let secs: f64 = s.parse().unwrap_or(0.0);
                rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
            };
            let kind = match c[1].as_str() {
                "f" => "file",
                "d" => "directory",
                "l" => "symlink",
                _ => "unknown",
            };
            let mut e = json!({
                "name": if path == "/" { "/".to_string() } else { name },
                "type": kind,
                "path": path,
                "size": c[2].parse::<u64>().unwrap_or(0),
                "mode": u32::from_str_radix(&c[3], 8).unwrap_or(0) & 0o777,
                "uid": c[4].parse::<u32>().unwrap_or(0),
                "gid": c[5].parse::<u32>().unwrap_or(0),
                "atime": time(&c[6]),
                "mtime": time(&c[7]),
                "ctime": time(&c[8]),
            });
            if kind == "symlink" {
                e["target"] = json!(c[9]);
            }
            e
        })
        .collect()
}

/// Runs a script as root in the helper; `Err` carries the status the script's exit code
/// stands for (10: 404, 11: 409, 12: 400).
async fn run(sandbox: &dyn Sandbox, script: &str) -> Result<Vec<u8>, Response> {
    let out = sandbox
        .exec(
            CommandSpec::program("/bin/sh", ["-c", script])
                .user("root")
                .timeout(Duration::from_secs(600)),
        )
        .await
        .map_err(|e| from_error(&e, ""))?;
    let why = || out.stderr_text().trim().to_string();
    match out.exit_code {
        Some(0) => Ok(out.stdout),
        Some(10) => Err(api_error(
            StatusCode::NOT_FOUND,
            format!("Path not found: {}", why()),
        )),
        Some(11) => Err(api_error(
            StatusCode::CONFLICT,
            format!("Path already exists: {}", why()),
        )),
        Some(12) => Err(api_error(StatusCode::BAD_REQUEST, why())),
        _ => Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, why())),
    }
}

/// The stat of one path (already cleaned), as the SDK's `VolumeEntryStat`.
async fn stat_of(sandbox: &dyn Sandbox, path: &str) -> Result<serde_json::Value, Response> {
    let full = shell_quote(&format!("{ROOT}{path}"));
    let out = run(
        sandbox,
        &format!(
            "[ -e {full} ] || [ -L {full} ] || {{ echo {p} >&2; exit 10; }}; find {full} -maxdepth 0 -printf '{STAT_FORMAT}'",
            p = shell_quote(path)
        ),
    )
    .await?;
    entries(&out, path)
        .into_iter()
        .next()
        .ok_or_else(|| api_error(StatusCode::INTERNAL_SERVER_ERROR, "no stat"))
}

#[derive(Debug, Default, Deserialize)]
struct PathQuery {
    #[serde(default)]
    path: String,
    depth: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    force: Option<bool>,
}

/// `chown`/`chmod` lines for what a request asks (nothing for what it leaves out).
fn ownership(full: &str, uid: Option<u32>, gid: Option<u32>, mode: Option<u32>) -> String {
    let mut s = String::new();
    match (uid, gid) {
        (Some(u), Some(g)) => s.push_str(&format!("chown -h {u}:{g} {full}; ")),
        (Some(u), None) => s.push_str(&format!("chown -h {u} {full}; ")),
        (None, Some(g)) => s.push_str(&format!("chgrp -h {g} {full}; ")),
        (None, None) => {}
    }
    if let Some(m) = mode {
        s.push_str(&format!("chmod {:o} {full}; ", m & 0o7777));
    }
    s
}

/// `GET /volumecontent/{id}/dir?path=&depth=`.
async fn list_dir(
    AxState(state): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Response {
    let Target {
        sandbox,
        path,
        full,
    } = match target(&state, &id, &headers, &q.path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let depth = q.depth.unwrap_or(1).max(1);
    if depth > MAX_DEPTH {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("depth must be 1 to {MAX_DEPTH}"),
        );
    }
    match run(
        sandbox.as_ref(),
        &format!(
            "[ -d {full} ] || {{ echo not a directory >&2; exit 10; }}; cd {full} && find . -mindepth 1 -maxdepth {depth} -printf '{STAT_FORMAT}'"
        ),
    )
    .await
    {
        Ok(out) => {
            // `find .` names entries `./x`; %P drops the start point.
            Json(entries(&out, &path)).into_response()
        }
        Err(r) => r,
    }
}

/// `POST /volumecontent/{id}/dir?path=&uid=&gid=&mode=&force=` (201).
async fn make_dir(
    AxState(state): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Response {
    let Target {
        sandbox,
        path,
        full,
    } = match target(&state, &id, &headers, &q.path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let parent = shell_quote(&format!("{ROOT}{}", clean(&format!("{path}/.."))));
    let force = q.force == Some(true);
    let script = format!(
        "if [ -e {full} ] || [ -L {full} ]; then if [ -d {full} ] && {force}; then exit 0; fi; exit 11; fi; \
         if [ ! -d {parent} ] && ! {force}; then exit 10; fi; mkdir -p {full} || exit 12; chmod 777 {full}; {own}",
        own = ownership(&full, q.uid, q.gid, q.mode)
    );
    if let Err(r) = run(sandbox.as_ref(), &script).await {
        return r;
    }
    match stat_of(sandbox.as_ref(), &path).await {
        Ok(s) => (StatusCode::CREATED, Json(s)).into_response(),
        Err(r) => r,
    }
}

/// `GET /volumecontent/{id}/path?path=`.
async fn stat(
    AxState(state): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Response {
    let Target { sandbox, path, .. } = match target(&state, &id, &headers, &q.path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match stat_of(sandbox.as_ref(), &path).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
struct Update {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
}

/// `PATCH /volumecontent/{id}/path?path=` with `{uid?, gid?, mode?}`.
async fn update(
    AxState(state): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Target {
        sandbox,
        path,
        full,
    } = match target(&state, &id, &headers, &q.path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let req: Update = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let script = format!(
        "[ -e {full} ] || [ -L {full} ] || exit 10; {}",
        ownership(&full, req.uid, req.gid, req.mode)
    );
    if let Err(r) = run(sandbox.as_ref(), &script).await {
        return r;
    }
    match stat_of(sandbox.as_ref(), &path).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

/// `DELETE /volumecontent/{id}/path?path=` (204): recursive; never the root.
async fn remove(
    AxState(state): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Response {
    let Target {
        sandbox,
        path,
        full,
    } = match target(&state, &id, &headers, &q.path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if path == "/" {
        return api_error(
            StatusCode::BAD_REQUEST,
            "the volume's root cannot be deleted",
        );
    }
    match run(
        sandbox.as_ref(),
        &format!("[ -e {full} ] || [ -L {full} ] || exit 10; rm -rf -- {full}"),
    )
    .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

/// `GET /volumecontent/{id}/file?path=`: the bytes, streamed.
async fn read_file(
    AxState(state): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Response {
    let Target {
        sandbox,
        path,
        full,
    } = match target(&state, &id, &headers, &q.path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Err(r) = run(sandbox.as_ref(), &format!("[ -f {full} ] || exit 10")).await {
        return r;
    }
    match sandbox.files().read_stream(&format!("{ROOT}{path}")).await {
        Ok(stream) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            Body::from_stream(stream),
        )
            .into_response(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            api_error(StatusCode::NOT_FOUND, format!("Path not found: {path}"))
        }
        Err(e) => from_error(&e, ""),
    }
}

/// `PUT /volumecontent/{id}/file?path=&uid=&gid=&mode=&force=` (201): an existing file is
/// replaced only with `force`, which also makes missing parents.
async fn write_file(
    AxState(state): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use futures_util::StreamExt;
    let Target {
        sandbox,
        path,
        full,
    } = match target(&state, &id, &headers, &q.path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if path == "/" {
        return api_error(StatusCode::CONFLICT, "the volume's root is a directory");
    }
    let quoted = full;
    let parent = shell_quote(&format!("{ROOT}{}", clean(&format!("{path}/.."))));
    let force = q.force == Some(true);
    let check = format!(
        "if [ -d {quoted} ]; then exit 11; fi; if [ -e {quoted} ] && ! {force}; then exit 11; fi; \
         if [ ! -d {parent} ]; then if {force}; then mkdir -p {parent} || exit 12; else exit 10; fi; fi"
    );
    if let Err(r) = run(sandbox.as_ref(), &check).await {
        return r;
    }
    let stream = body
        .into_data_stream()
        .map(|c| c.map_err(|e| sandkit_core::Error::new(ErrorKind::Unavailable, e.to_string())));
    let raw = format!("{ROOT}{path}");
    if let Err(e) = sandbox.files().write_stream(&raw, Box::pin(stream)).await {
        return from_error(&e, "");
    }
    let own = ownership(&quoted, q.uid, q.gid, Some(q.mode.unwrap_or(0o666)));
    if let Err(r) = run(sandbox.as_ref(), &own).await {
        return r;
    }
    match stat_of(sandbox.as_ref(), &path).await {
        Ok(s) => (StatusCode::CREATED, Json(s)).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        assert_eq!(clean("a/b"), "/a/b");
        assert_eq!(clean("/../../etc"), "/etc");
        assert_eq!(clean("/a/./b/../c/"), "/a/c");
        assert_eq!(clean(""), "/");
    }

    #[test]
    fn stat_lines_become_entries() {
        let fields = [
            "x.txt", "f", "3", "644", "1000", "1000", "1.5", "2", "3", "", //
            "sub", "d", "0", "755", "0", "0", "1", "1", "1", "", //
            "l", "l", "4", "777", "0", "0", "1", "1", "1", "x.txt",
        ];
        let out: Vec<u8> = fields
            .iter()
            .flat_map(|f| [f.as_bytes(), b"\0"].concat())
            .collect();
        let e = entries(&out, "/dir");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0]["path"], "/dir/x.txt");
        assert_eq!(e[0]["mode"], 0o644);
        assert_eq!(e[1]["type"], "directory");
        assert_eq!(e[2]["target"], "x.txt");
    }
}
