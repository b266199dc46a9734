//! Templates, as E2B's API serves them to the SDK's template builder
//! (`Template().from_image(...)...build()`): the v3 build API, alias look-ups and the list.
//!
//! A build runs on the backend itself: a sandbox is made from the base (`fromImage` or
//! `fromTemplate`; E2B's `e2bdev/base` image is this server's `base`), each step runs in it
//! (RUN as the step's user in the current directory, COPY from the files the SDK uploaded,
//! ENV for the later steps, WORKDIR, USER), and the result is kept as one snapshot per tag,
//! named `<tenant>/template/<alias>/<tag>`. Nothing is pulled from a registry: a base image
//! must be on the engine, and a build without it fails naming it.
//!
//! A template belongs to the key that built it (its snapshots carry the owner), like a
//! snapshot. What a template asks of its sandboxes (start and ready commands, user and
//! directory) is kept in its snapshots' metadata; a create from it starts the start command
//! and waits for the ready command, as E2B's sandboxes are ready when they are handed out.
//!
//! The SDK uploads each COPY's files to the URL this server answers with: an unauthenticated
//! `PUT /_uploads/<tenant>/<hash>?token=...`, the token derived from the server's secret so
//! that only the key that asked can write there. Builds and their logs are kept in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use sandkit_core::raw::shell_quote;
use sandkit_core::{CommandSpec, ErrorKind, Sandbox, SandboxExt, SandboxSpec, Snapshot};
use sandkit_e2b_protocol::envd::ENVD_VERSION;
use sandkit_e2b_protocol::json::rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::builds::{Build, Progress};
use crate::caller::Caller;
use crate::http::{api_error, parse, Shared};
use crate::state::{State, INSTANCE_KEY, OWNER_KEY};

/// Metadata a template's snapshots carry (the build sandbox's, kept by the snapshot).
pub(crate) const ALIAS_KEY: &str = "sandkit.e2b.tpl.alias";
const ID_KEY: &str = "sandkit.e2b.tpl.id";
pub(crate) const BUILD_KEY: &str = "sandkit.e2b.tpl.build";
const START_KEY: &str = "sandkit.e2b.tpl.start";
const READY_KEY: &str = "sandkit.e2b.tpl.ready";
const USER_KEY: &str = "sandkit.e2b.tpl.user";
const CWD_KEY: &str = "sandkit.e2b.tpl.cwd";

/// The largest upload of one COPY step's files.
const MAX_UPLOAD: usize = 1 << 30;
/// How long a build's sandbox may live, and each of its steps take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a sandbox's ready command may take to succeed.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The most builds kept in memory; the oldest finished ones go first.
const MAX_BUILDS: usize = 200;
/// Where COPY files are unpacked inside a build's sandbox.
const UNPACK: &str = "/tmp/.sandkit-build";

/// The routes that need the API key.
pub(crate) fn routes(router: Router<Shared>) -> Router<Shared> {
    use axum::routing::{get, post};
    router
        .route("/templates", get(list))
        .route("/v2/templates", get(list))
        .route("/templates/aliases/{alias}", get(alias))
        .route("/v3/templates", post(register))
        .route("/templates/{id}/files/{hash}", get(upload_link))
        .route("/v2/templates/{id}/builds/{build}", post(start))
        .route("/templates/{id}/builds/{build}/status", get(status))
        .route("/templates/tags", post(assign_tags).delete(remove_tags))
        .route("/templates/{id}/tags", get(tags))
}

/// The upload route: no API key (the SDK sends none), a token in the URL instead, and a body
/// up to [`MAX_UPLOAD`].
pub(crate) fn upload_router(state: Shared) -> Router {
    Router::new()
        .route("/_uploads/{tenant}/{hash}", put(upload))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(state)
}

/// `alias[:tag]`, with an optional `namespace/` in front (dropped: names are per key here).
pub(crate) fn parse_name(name: &str) -> Result<(String, Option<String>), String> {
    let name = name.trim().to_lowercase();
    let bare = name.rsplit_once('/').map_or(name.as_str(), |(_, a)| a);
    let (alias, tag) = match bare.split_once(':') {
        Some((a, t)) => (a, Some(t)),
        None => (bare, None),
    };
    if !valid_part(alias, false) {
        return Err(format!(
            "invalid template name '{name}': use lowercase letters, digits, '-' and '_', \
             starting and ending with a letter or digit"
        ));
    }
    match tag {
        Some(t) if !valid_part(t, true) => Err(format!(
            "invalid tag '{t}': use lowercase letters, digits, '-', '_' and '.', starting and \
             ending with a letter or digit"
        )),
        Some("default") | None => Ok((alias.to_string(), None)),
        Some(t) => Ok((alias.to_string(), Some(t.to_string()))),
    }
}

/// E2B's alias and tag characters, within what an image name may hold (no separator at
/// either end, none doubled but `__`).
fn valid_part(s: &str, dots: bool) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let sep = |c: char| c == '-' || c == '_' || (dots && c == '.');
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || sep(c))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && !s.contains("..")
        && !s.contains("._")
        && !s.contains("_.")
        && !s.contains("-.")
        && !s.contains(".-")
        && !s.contains("___")
        && !s.contains("_-")
        && !s.contains("-_")
}

/// Adds the tags a client sent to `tags`, each once, lower-cased; 400 for one E2B refuses.
fn add_tags(tags: &mut Vec<String>, asked: &[String]) -> Result<(), Response> {
    for t in asked {
        let t = t.trim().to_lowercase();
        if !valid_part(&t, true) {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                format!("invalid tag '{t}'"),
            ));
        }
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    Ok(())
}

fn template_id(state: &Caller, alias: &str) -> String {
    sandkit_e2b_protocol::derive_token(state.owner(), alias, "template")[..20].to_string()
}

fn snapshot_name(state: &Caller, alias: &str, tag: &str) -> String {
    format!("{}/template/{alias}/{tag}", state.tenant())
}

/// What a template is: its snapshots (one per tag).
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub(crate) snapshot: Snapshot,
    pub(crate) alias: String,
    pub(crate) id: String,
}

impl Template {
    fn of(snapshot: Snapshot) -> Option<Template> {
        let m = &snapshot.metadata;
        Some(Template {
            alias: m.get(ALIAS_KEY)?.clone(),
            id: m.get(ID_KEY)?.clone(),
            snapshot,
        })
    }

    /// The tag this snapshot holds (its name's last part).
    pub(crate) fn tag(&self) -> String {
        self.snapshot
            .names
            .first()
            .and_then(|n| n.rsplit_once(':').map(|(b, _)| b))
            .and_then(|b| b.rsplit_once('/').map(|(_, t)| t.to_string()))
            .unwrap_or_else(|| "default".into())
    }
}

/// Every template snapshot on the backend, of every key.
pub(crate) async fn all_templates(state: &State) -> sandkit_core::Result<Vec<Template>> {
    if !state.runtime.capabilities().snapshots {
        return Ok(Vec::new());
    }
    Ok(state
        .runtime
        .snapshots(None)
        .await?
        .into_iter()
        .filter_map(Template::of)
        .collect())
}

pub(crate) fn mine(state: &Caller, t: &Template) -> bool {
    t.snapshot.metadata.get(OWNER_KEY).map(String::as_str) == Some(state.owner())
}

/// The template a create names, by alias (`alias[:tag]`) or id (`id[:tag]`), among this
/// key's; `None` for a name that is not one (an image, a snapshot, `base`).
pub(crate) async fn resolve(state: &Caller, name: &str) -> sandkit_core::Result<Option<Template>> {
    let Ok((alias, tag)) = parse_name(name) else {
        return Ok(None);
    };
    let tag = tag.unwrap_or_else(|| "default".into());
    Ok(all_templates(state)
        .await?
        .into_iter()
        .find(|t| mine(state, t) && (t.alias == alias || t.id == alias) && t.tag() == tag))
}

/// Starts a template's start command in a new sandbox and waits for its ready command.
pub(crate) async fn start_in(sandbox: &dyn Sandbox, t: &Template) -> sandkit_core::Result<()> {
    let m = &t.snapshot.metadata;
    let with_defaults = |spec: CommandSpec| {
        let spec = match m.get(USER_KEY) {
            Some(u) => spec.user(u.clone()),
            None => spec,
        };
        match m.get(CWD_KEY) {
            Some(c) => spec.cwd(c.clone()),
            None => spec,
        }
    };
    if let Some(start) = m.get(START_KEY) {
        // Left running in the background.
        let _process = sandbox
            .spawn(with_defaults(CommandSpec::shell(start.clone())).tag("start_cmd"))
            .await?;
    }
    if let Some(ready) = m.get(READY_KEY) {
        let begun = Instant::now();
        loop {
            let spec =
                with_defaults(CommandSpec::shell(ready.clone())).timeout(Duration::from_secs(30));
            if matches!(sandbox.exec(spec).await, Ok(o) if o.success()) {
                return Ok(());
            }
            if begun.elapsed() > READY_TIMEOUT {
                return Err(sandkit_core::Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the template's ready command `{ready}` did not succeed within {}s",
                        READY_TIMEOUT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// An entry of `GET /templates`: every field the SDK's model requires.
pub(crate) fn entry(
    id: &str,
    alias: &str,
    build: &str,
    created: SystemTime,
    public: bool,
) -> serde_json::Value {
    json!({
        "templateID": id,
        "buildID": build,
        "cpuCount": 2,
        "memoryMB": 1024,
        "diskSizeMB": 0,
        "public": public,
        "aliases": [alias],
        "names": [alias],
        "createdAt": rfc3339(created),
        "updatedAt": rfc3339(created),
        "createdBy": null,
        "lastSpawnedAt": null,
        "spawnCount": 0,
        "buildCount": 1,
        "envdVersion": ENVD_VERSION,
        "buildStatus": "ready",
    })
}

/// `GET /templates`: `base`, and this key's templates.
async fn list(state: Caller) -> Response {
    let all = match all_templates(&state).await {
        Ok(a) => a,
        Err(e) => return crate::http::from_error(&e, ""),
    };
    let mut out = vec![entry("base", "base", "base", SystemTime::UNIX_EPOCH, true)];
    let mut seen = std::collections::HashSet::new();
    for t in all.iter().filter(|t| mine(&state, t)) {
        if seen.insert(t.id.clone()) {
            let build = t
                .snapshot
                .metadata
                .get(BUILD_KEY)
                .cloned()
                .unwrap_or_default();
            out.push(entry(&t.id, &t.alias, &build, t.snapshot.created_at, false));
        }
    }
    Json(out).into_response()
}

/// `GET /templates/aliases/{alias}`: 200 for `base` and this key's templates, 403 for
/// another key's, 404 for none.
async fn alias(state: Caller, Path(name): Path<String>) -> Response {
    let (alias, tag) = match parse_name(&name) {
        Ok(p) => p,
        Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
    };
    if alias == "base" && tag.is_none() {
        return Json(json!({"templateID": "base", "public": true})).into_response();
    }
    let all = match all_templates(&state).await {
        Ok(a) => a,
        Err(e) => return crate::http::from_error(&e, ""),
    };
    let tag = tag.unwrap_or_else(|| "default".into());
    let named: Vec<&Template> = all
        .iter()
        .filter(|t| t.alias == alias && t.tag() == tag)
        .collect();
    match named.iter().find(|t| mine(&state, t)) {
        Some(t) => Json(json!({"templateID": t.id, "public": false})).into_response(),
        None if !named.is_empty() => api_error(
            StatusCode::FORBIDDEN,
            "You don't have access to this template alias",
        ),
        None => api_error(
            StatusCode::NOT_FOUND,
            format!("template alias '{name}' not found"),
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Register {
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Vec<String>,
    cpu_count: Option<u32>,
    #[serde(rename = "memoryMB")]
    memory_mb: Option<u64>,
}

/// `POST /v3/templates`: registers a build (202).
async fn register(state: Caller, body: Bytes) -> Response {
    if !state.runtime.capabilities().snapshots {
        return api_error(
            StatusCode::NOT_IMPLEMENTED,
            "building templates needs a backend that can snapshot sandboxes",
        );
    }
    let req: Register = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.cpu_count.is_some_and(|c| c == 0 || c > 32) || req.memory_mb.is_some_and(|m| m < 128) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "cpuCount must be 1 to 32 and memoryMB at least 128",
        );
    }
    let (alias, tag) = match parse_name(&req.name) {
        Ok(p) => p,
        Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
    };
    if alias == "base" {
        return api_error(StatusCode::CONFLICT, "the template name 'base' is taken");
    }
    let mut tags: Vec<String> = tag.into_iter().collect();
    if let Err(r) = add_tags(&mut tags, &req.tags) {
        return r;
    }
    if tags.is_empty() {
        tags.push("default".into());
    }
    let id = template_id(&state, &alias);
    let b: u128 = rand::random();
    let build_id = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        (b >> 96) as u32,
        (b >> 80) as u16,
        (b >> 68) as u16 & 0xfff,
        (b >> 56) as u16 & 0xfff,
        b as u64 & 0xffff_ffff_ffff
    );
    let build = Arc::new(Build {
        id: build_id.clone(),
        template_id: id.clone(),
        alias: alias.clone(),
        tags: tags.clone(),
        owner: state.owner().to_string(),
        registered: Instant::now(),
        progress: Mutex::new(Progress {
            status: "waiting",
            ..Default::default()
        }),
    });
    {
        let mut builds = state.builds.lock().expect("builds");
        while builds.len() >= MAX_BUILDS {
            let oldest = builds
                .iter()
                .filter(|(_, b)| {
                    matches!(b.progress.lock().expect("build").status, "ready" | "error")
                })
                .min_by_key(|(_, b)| b.registered)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => builds.remove(&id),
                None => {
                    return crate::http::too_many(
                        format!("{MAX_BUILDS} template builds are under way; wait for one"),
                        10,
                    )
                }
            };
        }
        builds.insert(build_id.clone(), build);
    }
    info!(template = %alias, build_id = %build_id, "template build registered");
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "templateID": id,
            "buildID": build_id,
            "public": false,
            "names": [alias],
            "tags": tags,
            "aliases": [alias],
        })),
    )
        .into_response()
}

/// The build `build` of template `id`, when this key registered it.
pub(crate) fn build_of(state: &Caller, id: &str, build: &str) -> Result<Arc<Build>, Response> {
    match state.builds.lock().expect("builds").get(build) {
        Some(b) if b.template_id == id && b.owner == state.owner() => Ok(b.clone()),
        _ => Err(api_error(
            StatusCode::NOT_FOUND,
            format!("Build '{build}' of template '{id}' not found"),
        )),
    }
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn upload_path(state: &State, tenant: &str, hash: &str) -> PathBuf {
    state.uploads_dir().join(tenant).join(hash)
}

fn upload_token(state: &State, tenant: &str, hash: &str) -> String {
    state.derive(&format!("{tenant}/{hash}"), "upload")
}

/// `GET /templates/{id}/files/{hash}`: whether the files are here, and where to put them
/// (201).
async fn upload_link(
    state: Caller,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !valid_hash(&hash) {
        return api_error(StatusCode::BAD_REQUEST, "Invalid files hash");
    }
    let registered = state
        .builds
        .lock()
        .expect("builds")
        .values()
        .any(|b| b.template_id == id && b.owner == state.owner());
    if !registered {
        return api_error(StatusCode::NOT_FOUND, format!("template '{id}' not found"));
    }
    let tenant = state.tenant();
    let present = upload_path(&state, &tenant, &hash).exists();
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let url = format!(
        "http://{host}/_uploads/{tenant}/{hash}?token={}",
        upload_token(&state, &tenant, &hash)
    );
    (
        StatusCode::CREATED,
        Json(json!({"present": present, "url": url})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    token: String,
}

/// `PUT /_uploads/{tenant}/{hash}?token=`: keeps a COPY step's files. The token is checked
/// before any of the body is read; the body is streamed to a file (at most [`MAX_UPLOAD`])
/// and renamed into place; files already kept are never replaced.
async fn upload(
    AxState(state): AxState<Shared>,
    Path((tenant, hash)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    if !valid_hash(&hash)
        || !tenant.bytes().all(|b| b.is_ascii_alphanumeric())
        || !sandkit_e2b_protocol::secrets_equal(&q.token, &upload_token(&state, &tenant, &hash))
        // A key revoked since the URL was given uploads nothing.
        || !state.keys().owners().any(|owner| owner == tenant)
    {
        return api_error(StatusCode::FORBIDDEN, "this upload URL is not valid");
    }
    let path = upload_path(&state, &tenant, &hash);
    if path.exists() {
        return StatusCode::OK.into_response();
    }
    // What the key holds counts against its disk limit, and so does this upload as it comes.
    let Some(key) = state.keys().by_owner(&tenant) else {
        return api_error(StatusCode::FORBIDDEN, "this upload URL is not valid");
    };
    let held = match crate::disk::used(&state, &tenant).await {
        Ok(n) => n,
        Err(e) => return crate::http::from_error(&e, ""),
    };
    if held >= crate::disk::limit(&key) {
        return crate::disk::full(&state, &key, held);
    }
    let room = crate::disk::limit(&key) - held;
    let partial = path.with_extension(format!("part-{:x}", rand::random::<u64>()));
    let written: Result<(), String> = async {
        let dir = path.parent().expect("a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| e.to_string())?;
        private(&state.uploads_dir()).await;
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = body.into_data_stream();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            total += chunk.len();
            if total > MAX_UPLOAD {
                return Err(format!("the upload is over {MAX_UPLOAD} bytes"));
            }
            if total as u64 > room {
                return Err(DISK_FULL.to_string());
            }
            file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match written {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) if e == DISK_FULL => {
            let _ = tokio::fs::remove_file(&partial).await;
            crate::disk::full(&state, &key, held)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            api_error(
                StatusCode::BAD_REQUEST,
                format!("could not keep the upload: {e}"),
            )
        }
    }
}

/// What an upload that would pass its key's disk limit stops with.
const DISK_FULL: &str = "the key's disk limit";

/// Makes the uploads directory readable by this user only.
async fn private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await;
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    args: Vec<String>,
    files_hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBuild {
    from_image: Option<String>,
    from_template: Option<String>,
    from_image_registry: Option<serde_json::Value>,
    #[serde(default)]
    steps: Vec<Step>,
    start_cmd: Option<String>,
    ready_cmd: Option<String>,
}

/// `POST /v2/templates/{id}/builds/{build}`: starts the build in the background (202).
async fn start(
    state: Caller,
    Path((id, build_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let build = match build_of(&state, &id, &build_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: StartBuild = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req
        .from_image_registry
        .as_ref()
        .is_some_and(|r| !r.is_null())
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            "e2b-local pulls from no registry: build or load the image on the engine, then use \
             from_image without credentials",
        );
    }
    let from = match (req.from_image.as_deref(), req.from_template.as_deref()) {
        (Some(i), None) if !i.is_empty() => From::Image(i.to_string()),
        (None, Some(t)) if !t.is_empty() => From::Template(t.to_string()),
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "exactly one of fromImage or fromTemplate must be given",
            )
        }
    };
    for (i, step) in req.steps.iter().enumerate() {
        let known = ["RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER"];
        if !known.contains(&step.kind.to_uppercase().as_str()) {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("step {}: unknown type '{}'", i + 1, step.kind),
            );
        }
    }
    // At most `max_builds` of the key's builds run at once: counted and marked under the
    // builds' lock, so two starts cannot both take the last place.
    {
        let builds = state.builds.lock().expect("builds");
        let running = builds
            .values()
            .filter(|b| b.owner == state.owner() && b.id != build.id)
            .filter(|b| b.progress.lock().expect("build").status == "building")
            .count();
        let mut p = build.progress.lock().expect("build");
        if p.status != "waiting" {
            return api_error(
                StatusCode::CONFLICT,
                format!("build '{build_id}' was already started"),
            );
        }
        let max = state.key.limits.max_builds;
        if running >= max {
            state.metrics.refused(&state.key.name, "builds");
            return crate::http::too_many(
                format!("this key may run at most {max} template builds at once; wait for one"),
                30,
            );
        }
        p.status = "building";
    }
    if let Some(full) = crate::disk::refuse_if_full(&state, &state.key).await {
        build.progress.lock().expect("build").status = "waiting";
        return full;
    }
    // The build's sandbox counts against the key's limits like any other.
    let admission = match state.admit_create().await {
        Ok(a) => a,
        Err((message, retry_after)) => {
            build.progress.lock().expect("build").status = "waiting";
            return crate::http::too_many(message, retry_after);
        }
    };
    let task_state = state.clone();
    tokio::spawn(async move {
        let outcome = run_build(&task_state, &build, from, req).await;
        if let Err((step, why)) = &outcome {
            warn!(template = %build.alias, step, error = %why, "template build failed");
        } else {
            info!(template = %build.alias, "template built");
        }
        build.finish(outcome);
        drop(admission);
    });
    StatusCode::ACCEPTED.into_response()
}

#[derive(Debug, Default, Deserialize)]
struct StatusQuery {
    #[serde(rename = "logsOffset")]
    logs_offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /templates/{id}/builds/{build}/status`.
async fn status(
    state: Caller,
    Path((id, build_id)): Path<(String, String)>,
    Query(q): Query<StatusQuery>,
) -> Response {
    let build = match build_of(&state, &id, &build_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let p = build.progress.lock().expect("build");
    let entries: Vec<&serde_json::Value> = p
        .entries
        .iter()
        .skip(q.logs_offset.unwrap_or(0))
        .take(q.limit.unwrap_or(100))
        .collect();
    let mut body = json!({
        "templateID": id,
        "buildID": build_id,
        "status": p.status,
        "logs": [],
        "logEntries": entries,
    });
    if let Some(r) = &p.reason {
        body["reason"] = r.clone();
    }
    Json(body).into_response()
}

/// What a build starts from.
#[derive(Debug)]
enum From {
    Image(String),
    Template(String),
}

/// Where a build is: the step's user and directory, and the environment set so far.
struct Cursor {
    user: String,
    cwd: String,
    env: BTreeMap<String, String>,
}

type StepError = (String, String);

/// Runs a build to its snapshots; the error names the step (`base`, `1`.., `finalize`).
async fn run_build(
    state: &Caller,
    build: &Build,
    from: From,
    req: StartBuild,
) -> Result<(), StepError> {
    let base = |m: String| ("base".to_string(), m);
    // The base, and the user and directory its steps start with.
    let (template, mut cursor) = match &from {
        From::Image(i) if i == "e2bdev/base" || i.starts_with("e2bdev/base:") => {
            (None, Cursor::new("user", "/home/user"))
        }
        // This key's own snapshot is a base it may build on; another key's is refused, and so
        // is an image the operator did not allow (and a look-up that failed: fail closed).
        From::Image(i) if !state.image_allowed(i) => match state.check_template(i).await {
            Ok(true) => (Some(i.clone()), Cursor::new("root", "/")),
            Ok(false) => {
                return Err(base(format!(
                    "image '{i}' is not one this server allows: e2b-local pulls from no \
                         registry and builds only from the images its operator allows \
                         (--allow-image)"
                )))
            }
            Err(r) if r.status() == StatusCode::NOT_FOUND => {
                return Err(base(format!(
                    "image '{i}' is not yours: it is a snapshot or template of another key"
                )))
            }
            Err(r) => {
                return Err(base(format!(
                    "cannot tell whether image '{i}' may be used ({}); try again",
                    r.status()
                )))
            }
        },
        From::Image(i) => (Some(i.clone()), Cursor::new("root", "/")),
        From::Template(t) if t == "base" => (None, Cursor::new("user", "/home/user")),
        From::Template(t) => match resolve(state, t).await {
            Ok(Some(t)) => {
                let m = &t.snapshot.metadata;
                let c = Cursor::new(
                    m.get(USER_KEY).map_or("user", String::as_str),
                    m.get(CWD_KEY).map_or("/home/user", String::as_str),
                );
                (Some(t.snapshot.id.clone()), c)
            }
            Ok(None) => return Err(base(format!("template '{t}' not found"))),
            Err(e) => return Err(base(e.to_string())),
        },
    };
    build.log(
        "info",
        "base",
        match &from {
            From::Image(i) => format!("FROM {i}"),
            From::Template(t) => format!("FROM TEMPLATE {t}"),
        },
    );
    // What the template's sandboxes start with: the last USER and WORKDIR.
    let (mut user, mut cwd) = (cursor.user.clone(), cursor.cwd.clone());
    for s in &req.steps {
        match (s.kind.to_uppercase().as_str(), s.args.first()) {
            ("USER", Some(u)) => user = u.clone(),
            ("WORKDIR", Some(d)) => cwd = join(&cwd, d),
            _ => {}
        }
    }
    let mut spec = SandboxSpec::new()
        .metadata(OWNER_KEY, &build.owner)
        .snapshot_guard(OWNER_KEY, &build.owner)
        .metadata(INSTANCE_KEY, &state.instance)
        .metadata(ALIAS_KEY, &build.alias)
        .metadata(ID_KEY, &build.template_id)
        .metadata(USER_KEY, user)
        .metadata(CWD_KEY, cwd)
        .metadata(BUILD_KEY, &build.id)
        .timeout(BUILD_TIMEOUT);
    if let Some(s) = &req.start_cmd {
        spec = spec.metadata(START_KEY, s);
    }
    if let Some(r) = &req.ready_cmd {
        spec = spec.metadata(READY_KEY, r);
    }
    if let Some(t) = template {
        spec = spec.template(t);
    }
    let sandbox = state.runtime.create(spec).await.map_err(|e| {
        base(match e.kind() {
            ErrorKind::NotFound => format!("the base is not on this engine: {}", e.message()),
            _ => e.to_string(),
        })
    })?;
    let outcome = async {
        let revoked = || {
            (!state.serves(state.owner())).then(|| {
                (
                    "finalize".to_string(),
                    "the key that started this build was revoked".to_string(),
                )
            })
        };
        for (i, step) in req.steps.iter().enumerate() {
            if let Some(e) = revoked() {
                return Err(e);
            }
            let name = (i + 1).to_string();
            build.log(
                "info",
                &name,
                format!("{} {}", step.kind.to_uppercase(), step.args.join(" ")),
            );
            run_step(state, build, sandbox.as_ref(), &mut cursor, step)
                .await
                .map_err(|m| (name.clone(), m))?;
        }
        if let Some(e) = revoked() {
            return Err(e);
        }
        let mut made = Vec::new();
        for tag in &build.tags {
            let name = snapshot_name(state, &build.alias, tag);
            let snapshot = sandbox
                .snapshot(Some(&name))
                .await
                .map_err(|e| ("finalize".to_string(), e.to_string()))?;
            made.push(snapshot.id);
        }
        if let Some(e) = revoked() {
            // Revoked while the template was saved: it goes as the key's other things went.
            if state.config.revoked == crate::keys::Revoked::Remove {
                for id in made {
                    if let Err(e) = state.runtime.delete_snapshot(&id).await {
                        warn!(error = %e, "could not delete a revoked key's new template");
                    }
                }
            }
            return Err(e);
        }
        build.log("info", "finalize", "Template is ready");
        Ok(())
    }
    .await;
    if let Err(e) = sandbox.kill().await {
        warn!(error = %e, "could not remove a build's sandbox");
    }
    outcome
}

impl Cursor {
    fn new(user: &str, cwd: &str) -> Self {
        Cursor {
            user: user.into(),
            cwd: cwd.into(),
            env: BTreeMap::new(),
        }
    }

    fn command(&self, line: &str, user: &str) -> CommandSpec {
        let mut spec = CommandSpec::shell(line)
            .user(user)
            .cwd(self.cwd.clone())
            .timeout(BUILD_TIMEOUT);
        for (k, v) in &self.env {
            spec = spec.env(k.clone(), v.clone());
        }
        spec
    }
}

/// `value` with `$NAME` and `${NAME}` replaced by what earlier ENV steps set (empty when
/// unset), as E2B expands them; nothing is run.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        out.push_str(env.get(name).map(String::as_str).unwrap_or_default());
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// `base` joined with `path` (kept when absolute), `.` and `..` resolved.
fn join(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        sandkit_filestore::clean_absolute(path)
    } else {
        sandkit_filestore::clean_absolute(&format!("{base}/{path}"))
    }
}

/// Runs a shell line as root; the error is its output.
async fn as_root(sandbox: &dyn Sandbox, cursor: &Cursor, line: &str) -> Result<String, String> {
    let out = sandbox
        .exec(cursor.command(line, "root").cwd("/"))
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(out.stdout_text())
    } else {
        Err(format!("{}{}", out.stdout_text(), out.stderr_text())
            .trim()
            .to_string())
    }
}

async fn run_step(
    state: &Caller,
    build: &Build,
    sandbox: &dyn Sandbox,
    cursor: &mut Cursor,
    step: &Step,
) -> Result<(), String> {
    let arg = |i: usize| step.args.get(i).map(String::as_str).unwrap_or_default();
    match step.kind.to_uppercase().as_str() {
        "RUN" => {
            let line = arg(0);
            let user = match arg(1) {
                "" => cursor.user.clone(),
                u => u.to_string(),
            };
            if as_root(sandbox, cursor, &format!("id -u {}", shell_quote(&user)))
                .await
                .is_err()
            {
                return Err(format!(
                    "failed to run command '{line}': command failed: unauthenticated: invalid \
                     username: '{user}'"
                ));
            }
            let out = sandbox
                .exec(cursor.command(line, &user))
                .await
                .map_err(|e| format!("failed to run command '{line}': {e}"))?;
            for l in out.stdout_text().lines() {
                build.log("info", "", l);
            }
            for l in out.stderr_text().lines() {
                build.log("info", "", l);
            }
            match out.exit_code {
                Some(0) => Ok(()),
                Some(code) => Err(format!(
                    "failed to run command '{line}': command failed: exit status {code}"
                )),
                None => Err(format!("failed to run command '{line}': it did not finish")),
            }
        }
        "COPY" | "ADD" => {
            let hash = step
                .files_hash
                .as_deref()
                .filter(|h| valid_hash(h))
                .ok_or("COPY requires files hash to be set")?;
            let local = upload_path(state, &state.tenant(), hash);
            let tar = tokio::fs::File::open(&local)
                .await
                .map_err(|_| format!("the files of COPY {} were not uploaded", arg(0)))?;
            let archive = format!("{UNPACK}/{hash}.tar");
            let stream =
                futures_util::StreamExt::map(tokio_util::io::ReaderStream::new(tar), |c| {
                    c.map_err(sandkit_core::Error::from)
                });
            sandbox
                .files()
                .write_stream(&archive, Box::pin(stream))
                .await
                .map_err(|e| e.to_string())?;
            // The static part of the source pattern; the tar holds paths from the context.
            let source: Vec<&str> = arg(0)
                .split('/')
                .take_while(|p| !p.contains(['*', '?', '[', '{']))
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            if source.contains(&"..") {
                return Err(format!("COPY source '{}' leaves the context", arg(0)));
            }
            let dest = match arg(1) {
                d if d.starts_with('/') => d.to_string(),
                d => format!(
                    "{}{}",
                    join(&cursor.cwd, d),
                    if d.ends_with('/') { "/" } else { "" }
                ),
            };
            let owner = match arg(2) {
                "" => format!("{0}:{0}", cursor.user),
                o if o.contains(':') => o.to_string(),
                o => format!("{o}:{o}"),
            };
            let script = format!(
                r#"set -e
u={unpack}/{hash}; rm -rf "$u"; mkdir -p "$u"; tar -xf {archive} -C "$u"; rm -f {archive}
src="$u/"{source}; dest={dest}; [ -e "$src" ] || [ -L "$src" ] || {{ echo nothing to copy at {shown} >&2; exit 1; }}
chown -R -h -- {owner} "$src"; if [ -n {mode} ]; then chmod -R -- {mode} "$src"; fi
if [ -d "$src" ] && [ ! -L "$src" ]; then mkdir -p -- "$dest"; cp -a -- "$src"/. "$dest"/
else case "$dest" in */) mkdir -p -- "$dest"; dest="$dest$(basename -- "$src")";; *) mkdir -p -- "$(dirname -- "$dest")";; esac; rm -rf -- "$dest"; cp -a -- "$src" "$dest"; fi
rm -rf "$u""#,
                unpack = UNPACK,
                source = shell_quote(&source.join("/")),
                dest = shell_quote(&dest),
                shown = shell_quote(arg(0)),
                owner = shell_quote(&owner),
                mode = shell_quote(arg(3)),
            );
            as_root(sandbox, cursor, &script).await.map(|_| ())
        }
        "ENV" | "ARG" => {
            if step.args.len() % 2 != 0 {
                return Err("ENV takes pairs of a name and a value".into());
            }
            for pair in step.args.chunks(2) {
                let name = &pair[0];
                let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!("'{name}' cannot name an environment variable"));
                }
                let value = expand(&pair[1], &cursor.env);
                cursor.env.insert(name.clone(), value);
            }
            Ok(())
        }
        "WORKDIR" => {
            let dir = join(&cursor.cwd, arg(0));
            let q = shell_quote(&dir);
            as_root(
                sandbox,
                cursor,
                &format!(
                    "if [ ! -d {q} ]; then mkdir -p -- {q} && chown -- {u}: {q}; fi",
                    u = shell_quote(&cursor.user)
                ),
            )
            .await?;
            cursor.cwd = dir;
            Ok(())
        }
        "USER" => {
            let user = arg(0);
            if user.is_empty() || user.starts_with('-') {
                return Err(format!("'{user}' cannot name a user"));
            }
            let q = shell_quote(user);
            as_root(
                sandbox,
                cursor,
                &format!(
                    "id -u {q} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {q}"
                ),
            )
            .await?;
            cursor.user = user.to_string();
            Ok(())
        }
        other => Err(format!("unknown step type '{other}'")),
    }
}

#[derive(Debug, Default, Deserialize)]
struct AssignTags {
    #[serde(default)]
    target: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// This key's template snapshot `name` (`alias[:tag]` or `id[:tag]`), else the answer.
async fn named(state: &Caller, name: &str) -> Result<Template, Response> {
    if let Err(why) = parse_name(name) {
        return Err(api_error(StatusCode::BAD_REQUEST, why));
    }
    match resolve(state, name).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(api_error(
            StatusCode::NOT_FOUND,
            format!("template '{name}' not found"),
        )),
        Err(e) => Err(crate::http::from_error(&e, "")),
    }
}

/// `POST /templates/tags`: gives the build `target` names more tags (201). Each tag is a
/// snapshot of its own, made from a sandbox of the target's.
async fn assign_tags(state: Caller, body: Bytes) -> Response {
    let req: AssignTags = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let target = match named(&state, &req.target).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut tags = Vec::new();
    if let Err(r) = add_tags(&mut tags, &req.tags) {
        return r;
    }
    if tags.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "no tags to assign");
    }
    let mut spec = SandboxSpec::new()
        .template(target.snapshot.id.clone())
        .metadata(INSTANCE_KEY, &state.instance)
        .snapshot_guard(OWNER_KEY, state.owner())
        .timeout(Duration::from_secs(600));
    for (k, v) in &target.snapshot.metadata {
        if k.starts_with("sandkit.e2b.tpl.") || k == OWNER_KEY {
            spec = spec.metadata(k.clone(), v.clone());
        }
    }
    // The sandbox the tags are made from counts against the key's limits like any other.
    let _admission = match state.admit_create().await {
        Ok(a) => a,
        Err((message, retry_after)) => return crate::http::too_many(message, retry_after),
    };
    let sandbox = match state.runtime.create(spec).await {
        Ok(s) => s,
        Err(e) => return crate::http::from_error(&e, ""),
    };
    let mut made = Ok(());
    for tag in &tags {
        if let Err(e) = sandbox
            .snapshot(Some(&snapshot_name(&state, &target.alias, tag)))
            .await
        {
            made = Err(e);
            break;
        }
    }
    let _ = sandbox.kill().await;
    if let Err(e) = made {
        return crate::http::from_error(&e, "");
    }
    info!(template = %target.alias, ?tags, "tags assigned");
    let build = target
        .snapshot
        .metadata
        .get(BUILD_KEY)
        .cloned()
        .unwrap_or_default();
    (
        StatusCode::CREATED,
        Json(json!({"tags": tags, "buildID": build})),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
struct RemoveTags {
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// `DELETE /templates/tags`: takes tags off a template (204).
async fn remove_tags(state: Caller, body: Bytes) -> Response {
    let req: RemoveTags = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let alias = match parse_name(&req.name) {
        Ok((a, _)) => a,
        Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
    };
    let all = match all_templates(&state).await {
        Ok(a) => a,
        Err(e) => return crate::http::from_error(&e, ""),
    };
    let mine: Vec<&Template> = all
        .iter()
        .filter(|t| mine(&state, t) && (t.alias == alias || t.id == alias))
        .collect();
    if mine.is_empty() {
        return api_error(
            StatusCode::NOT_FOUND,
            format!("template '{}' not found", req.name),
        );
    }
    for tag in &req.tags {
        let tag = tag.trim().to_lowercase();
        let Some(t) = mine.iter().find(|t| t.tag() == tag) else {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("tag '{tag}' does not exist for template '{}'", req.name),
            );
        };
        if let Err(e) = state.runtime.delete_snapshot(&t.snapshot.id).await {
            return crate::http::from_error(&e, "");
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /templates/{id}/tags`: the tags of this key's template, newest first.
async fn tags(state: Caller, Path(id): Path<String>) -> Response {
    let alias = match parse_name(&id) {
        Ok((a, _)) => a,
        Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
    };
    let all = match all_templates(&state).await {
        Ok(a) => a,
        Err(e) => return crate::http::from_error(&e, ""),
    };
    let out: Vec<serde_json::Value> = all
        .iter()
        .filter(|t| mine(&state, t) && (t.alias == alias || t.id == alias))
        .map(|t| {
            json!({
                "tag": t.tag(),
                "buildID": t.snapshot.metadata.get(BUILD_KEY).cloned().unwrap_or_default(),
                "createdAt": rfc3339(t.snapshot.created_at),
            })
        })
        .collect();
    if out.is_empty() {
        return api_error(StatusCode::NOT_FOUND, format!("template '{id}' not found"));
    }
    Json(out).into_response()
}

/// Deletes this key's template `id` (its id or alias): every tag's snapshot. `None` when
/// there is no such template.
pub(crate) async fn delete(state: &Caller, id: &str) -> Option<Result<(), sandkit_core::Error>> {
    let all = match all_templates(state).await {
        Ok(a) => a,
        Err(e) => return Some(Err(e)),
    };
    let (alias, tag) = parse_name(id).unwrap_or_default();
    let doomed: Vec<Template> = all
        .into_iter()
        .filter(|t| mine(state, t) && (t.id == id || t.alias == alias || t.id == alias))
        .filter(|t| tag.as_ref().is_none_or(|tag| t.tag() == *tag))
        .collect();
    if doomed.is_empty() {
        return None;
    }
    for t in doomed {
        if let Err(e) = state.runtime.delete_snapshot(&t.snapshot.id).await {
            if e.kind() != ErrorKind::NotFound {
                return Some(Err(e));
            }
        }
    }
    Some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_paths() {
        assert_eq!(parse_name("My-Tpl").unwrap(), ("my-tpl".into(), None));
        assert_eq!(
            parse_name("ns/tpl:v1.2").unwrap(),
            ("tpl".into(), Some("v1.2".into()))
        );
        assert_eq!(parse_name("tpl:default").unwrap(), ("tpl".into(), None));
        for bad in ["", "-a", "a b", "a:", ":v", "a:.v", "a__-b"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert_eq!(join("/home/user", "app"), "/home/user/app");
        assert_eq!(join("/home/user", "../x/./y"), "/home/x/y");
        assert_eq!(join("/home/user", "/app"), "/app");
        assert_eq!(join("/", ".."), "/");
        let env = BTreeMap::from([("A".to_string(), "one".to_string())]);
        assert_eq!(
            expand("$A two ${A}s $B$ $(x) ${", &env),
            "one two ones $ $(x) ${"
        );
    }
}
