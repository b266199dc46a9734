//! The control plane: `/sandboxes`, `/v2/sandboxes`, as E2B's API answers them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandkit_core::{ErrorKind, SandboxInfo, SandboxState};
use sandkit_e2b_protocol::api::{
    ConnectSandbox, NewSandbox, SandboxCreated, SandboxDetail, SetTimeout,
};
use sandkit_e2b_protocol::envd::ENVD_VERSION;
use sandkit_e2b_protocol::json::rfc3339;
use sandkit_e2b_protocol::{decode_metadata_filter, headers, CLIENT_ID};
use serde::Deserialize;
use tracing::info;

use crate::caller::Caller;
use crate::http::{api_error, from_error, not_found, parse, too_many, Shared};
use crate::state::{hidden, reserved, State, TEMPLATE_KEY};

/// Whether a create asks for `autoResume` (resume on traffic).
fn auto_resume(req: &NewSandbox) -> bool {
    matches!(&req.auto_resume, Some(serde_json::Value::Object(o))
        if o.get("enabled") == Some(&serde_json::Value::Bool(true)))
}

/// The sandbox routes of the control plane, added to `routes`.
pub(crate) fn routes(routes: Router<Shared>) -> Router<Shared> {
    routes
        .route("/sandboxes", post(create_v1).get(list_v1))
        .route("/v2/sandboxes", post(create_v2).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/connect", post(connect_v1))
        .route("/v2/sandboxes/{id}/connect", post(connect_v2))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/metrics", get(crate::observe::batch))
        .route("/sandboxes/{id}/logs", get(crate::observe::v1))
        .route("/v2/sandboxes/{id}/logs", get(crate::observe::v2))
}

fn visible(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    metadata
        .iter()
        .filter(|(k, _)| !hidden(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(crate) fn created(state: &State, info: &SandboxInfo) -> SandboxCreated {
    SandboxCreated {
        template_id: info
            .metadata
            .get(TEMPLATE_KEY)
            .cloned()
            .unwrap_or_else(|| "base".into()),
        sandbox_id: info.id.clone(),
        alias: None,
        client_id: CLIENT_ID.into(),
        envd_version: ENVD_VERSION.into(),
        envd_access_token: (!state.config.insecure_no_auth).then(|| state.access_token(&info.id)),
        traffic_access_token: info
            .metadata
            .get(crate::ports::PRIVATE_KEY)
            .is_some_and(|v| v == "1")
            .then(|| state.traffic_token(&info.id)),
        domain: state.ports_domain(),
    }
}

fn detail_of(state: &State, info: &SandboxInfo, with_token: bool) -> SandboxDetail {
    let end = info
        .expires_at
        .unwrap_or_else(|| info.started_at + Duration::from_secs(300));
    SandboxDetail {
        template_id: info
            .metadata
            .get(TEMPLATE_KEY)
            .cloned()
            .unwrap_or_else(|| "base".into()),
        alias: None,
        sandbox_id: info.id.clone(),
        client_id: CLIENT_ID.into(),
        started_at: rfc3339(info.started_at),
        end_at: rfc3339(end),
        envd_version: ENVD_VERSION.into(),
        cpu_count: 2,
        memory_mb: 2048,
        disk_size_mb: 0,
        state: if info.state == SandboxState::Paused {
            "paused"
        } else {
            "running"
        }
        .into(),
        metadata: Some(visible(&info.metadata)),
        envd_access_token: (with_token && !state.config.insecure_no_auth)
            .then(|| state.access_token(&info.id)),
        domain: state.ports_domain(),
        allow_internet_access: Some(
            info.metadata
                .get(crate::network::INTERNET_KEY)
                .map(String::as_str)
                != Some("0"),
        ),
        network: state
            .network_of(&info.id)
            .or_else(|| {
                info.metadata
                    .get(crate::network::NETWORK_KEY)
                    .and_then(|j| serde_json::from_str(j).ok())
            })
            .map(crate::network::reported),
        volume_mounts: {
            let m = crate::volumes::mounts_of(&info.metadata);
            (!m.is_empty()).then(|| {
                m.into_iter()
                    .map(|(name, path)| sandkit_e2b_protocol::api::VolumeMount { name, path })
                    .collect()
            })
        },
    }
}

pub(crate) fn check_timeout(state: &State, timeout: i64) -> Result<Duration, Response> {
    if timeout <= 0 {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "Timeout must be positive",
        ));
    }
    let t = Duration::from_secs(timeout as u64);
    if t > state.config.max_timeout {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            format!(
                "Timeout cannot be greater than {} hours",
                state.config.max_timeout.as_secs() / 3600
            ),
        ));
    }
    Ok(t)
}

async fn create(state: Caller, body: Bytes, default_timeout: i64) -> Response {
    let req: NewSandbox = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.template_id.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "templateID is required");
    }
    if let Some(key) = req
        .metadata
        .iter()
        .flat_map(|m| m.keys())
        .find(|k| reserved(k))
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!(
                "metadata key '{key}' is reserved for the server (keys starting with 'sandkit.e2b.')"
            ),
        );
    }
    let timeout = match check_timeout(&state, req.timeout.unwrap_or(default_timeout)) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if req.template_id == MCP_TEMPLATE && req.mcp.as_ref().is_some_and(|m| !m.is_null()) {
        // What E2B's API answers when its MCP gateway template is not there (the SDK asks
        // for it whenever `mcp` is given without a template), so callers' handling works.
        return api_error(
            StatusCode::NOT_FOUND,
            format!(
                "template '{MCP_TEMPLATE}' not found (e2b-local has no MCP gateway: it pulls MCP \
                 servers from the internet)"
            ),
        );
    }
    if let Some(why) = unsupported_options(&req) {
        return api_error(StatusCode::BAD_REQUEST, why);
    }
    let asked = match crate::network::from_create(req.network.as_ref(), req.allow_internet_access) {
        Ok(a) => a,
        Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
    };
    let mut policy = asked.policy.clone();
    // Held until the sandbox's policy is kept, when its rules name secrets (see secrets.rs).
    let mut applying = None;
    if let Some(p) = policy.as_mut() {
        if let Some(why) = crate::network::unsupported(&state, p) {
            return api_error(StatusCode::BAD_REQUEST, why);
        }
        if !p.secret_names().is_empty() {
            applying = Some(state.secrets.applying.lock().await);
        }
        state.secrets.fill(&state.tenant(), p);
    }
    let kept_policy = policy.clone();
    if policy.is_some() && !state.runtime.capabilities().network_policy {
        return api_error(
            StatusCode::BAD_REQUEST,
            "network allowOut/denyOut cannot be enforced by this server's backend (on Docker: \
             it needs the network guard), so the sandbox is not made",
        );
    }
    if req.auto_pause == Some(true) && !state.runtime.capabilities().pause {
        return api_error(
            StatusCode::BAD_REQUEST,
            "autoPause (lifecycle on_timeout=pause) is not supported by this backend (it cannot pause); the sandbox would be killed at its timeout",
        );
    }
    let snapshot = match state.check_template(&req.template_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // A template this key built: made from its snapshot, started as it asks.
    let built = if snapshot || req.template_id == "base" {
        None
    } else {
        match crate::templates::resolve(&state, &req.template_id).await {
            Ok(t) => t,
            Err(e) => return from_error(&e, ""),
        }
    };
    // Anything else names an engine image: only those the operator allows, so a tenant
    // cannot boot the operator's own images.
    if !snapshot
        && built.is_none()
        && req.template_id != "base"
        && !state.image_allowed(&req.template_id)
    {
        return api_error(
            StatusCode::NOT_FOUND,
            format!(
                "template '{}' not found: it is neither a template or snapshot of this key nor an \
                 image this server allows (the operator adds images with --allow-image)",
                req.template_id
            ),
        );
    }
    let _admission = match state.admit_create().await {
        Ok(a) => a,
        Err((message, retry_after)) => return too_many(message, retry_after),
    };
    let mut spec = state.spec_for(
        &req.template_id,
        req.metadata.clone().unwrap_or_default(),
        req.env_vars.clone().unwrap_or_default(),
        Some(timeout),
    );
    if req.allow_internet_access == Some(false) {
        spec = spec.metadata(crate::network::INTERNET_KEY, "0");
    }
    if asked.private_ports {
        spec = spec.metadata(crate::ports::PRIVATE_KEY, "1");
    }
    if let Some(mask) = &asked.mask {
        spec = spec.metadata(crate::ports::MASK_KEY, mask);
    }
    match policy {
        Some(p) => {
            let sent = sandkit_e2b_protocol::api::NetworkConfig {
                allow_out: req.network.as_ref().and_then(|n| n.allow_out.clone()),
                deny_out: req.network.as_ref().and_then(|n| n.deny_out.clone()),
                dns_servers: req.network.as_ref().and_then(|n| n.dns_servers.clone()),
                rules: req.network.as_ref().and_then(|n| n.rules.clone()),
                egress_proxy: req.network.as_ref().and_then(|n| n.egress_proxy.clone()),
                ..Default::default()
            };
            spec = spec.network_policy(p).metadata(
                crate::network::NETWORK_KEY,
                serde_json::to_string(&sent).expect("json"),
            );
        }
        None if req.allow_internet_access == Some(false) => {
            spec = spec.network(sandkit_core::NetworkMode::None);
        }
        None => {}
    }
    spec = spec.auto_pause(req.auto_pause == Some(true));
    if let Some(asked) = req.volume_mounts.as_ref().filter(|v| !v.is_null()) {
        match crate::volumes::mounts_for(&state, asked).await {
            Ok((mounts, kept)) if !mounts.is_empty() => {
                spec.mounts.extend(mounts);
                spec = spec.metadata(
                    crate::volumes::MOUNTS_KEY,
                    serde_json::to_string(&kept).expect("json"),
                );
            }
            Ok(_) => {}
            Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
        }
    }
    if let Some(t) = &built {
        spec.template = Some(t.snapshot.id.clone());
    }
    if auto_resume(&req) {
        spec = spec.metadata(crate::state::AUTO_RESUME_KEY, "1");
    }
    let started = std::time::Instant::now();
    let sandbox = match state.runtime.create(spec).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("template '{}' not found: {}", req.template_id, e.message()),
            )
        }
        Err(e) => {
            state.metrics.create(&state.key.name, None);
            return from_error(&e, "");
        }
    };
    state
        .metrics
        .create(&state.key.name, Some(started.elapsed()));
    if let Some(t) = &built {
        if let Err(e) = crate::templates::start_in(sandbox.as_ref(), t).await {
            let _ = sandbox.kill().await;
            return from_error(&e, "");
        }
    }
    let info = match sandbox.info().await {
        Ok(i) => i,
        Err(e) => return from_error(&e, sandbox.id()),
    };
    info!(sandbox_id = %info.id, template = %req.template_id, "sandbox created");
    if let Some(p) = &kept_policy {
        state.secrets.keep_policy(&info.id, p);
    }
    drop(applying);
    state.remember_made(&info.id).await;
    state.insert(sandbox).await;
    if state.revoked_meanwhile(state.owner(), &info.id).await {
        return crate::http::revoked_meanwhile();
    }
    let mut fields = vec![("templateID", req.template_id.clone())];
    if let Some(end) = info.expires_at {
        fields.push(("end_time", sandkit_e2b_protocol::json::rfc3339(end)));
    }
    state
        .logs
        .event_with(state.owner(), &info.id, "info", "Sandbox created", fields);
    let mut response = (StatusCode::CREATED, Json(created(&state, &info))).into_response();
    response
        .extensions_mut()
        .insert(crate::caller::Made(info.id.clone()));
    response
}

/// The template E2B's SDK starts an MCP gateway from (`mcp` without a template).
const MCP_TEMPLATE: &str = "mcp-gateway";

/// What a create asks for that this server cannot honour: refused with a reason, never
/// silently dropped (a dropped network policy would leave a sandbox more open than asked).
fn unsupported_options(req: &NewSandbox) -> Option<String> {
    let set = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    };
    if auto_resume(req) && req.auto_pause != Some(true) {
        return Some("autoResume needs autoPause (lifecycle on_timeout=pause)".into());
    }
    if let Some(key) = req.other.keys().find(|k| *k != "autoPauseMemory") {
        return Some(match key.as_str() {
            "iam" => "iam (workload identity tokens) needs E2B's egress proxy, which e2b-local \
                      does not run"
                .into(),
            other => format!("create option '{other}' is not known to e2b-local"),
        });
    }
    if set(&req.mcp) {
        return Some("mcp (the MCP gateway) is not available in e2b-local".into());
    }
    None
}

async fn create_v2(state: Caller, body: Bytes) -> Response {
    create(state, body, 300).await
}

async fn create_v1(state: Caller, body: Bytes) -> Response {
    create(state, body, 15).await
}

async fn connect(state: Caller, id: String, body: Bytes) -> Response {
    let req: ConnectSandbox = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let timeout = match check_timeout(&state, req.timeout.unwrap_or(300)) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let before = match state.owned_info(&id).await {
        Ok(i) => i,
        Err(e) => return from_error(&e, &id),
    };
    let was_paused = before.state == SandboxState::Paused;
    // `connect` resumes a paused sandbox; a fresh handle replaces the cached one.
    let sandbox = match state.runtime.connect(&id).await {
        Ok(s) => s,
        Err(e) => return from_error(&e, &id),
    };
    if was_paused {
        state
            .refill_secrets(&id, state.owner(), sandbox.as_ref())
            .await;
    }
    let new_end = SystemTime::now() + timeout;
    let extend = was_paused || before.expires_at.is_none_or(|end| new_end > end);
    if extend {
        if let Err(e) = sandbox.set_timeout(timeout).await {
            return from_error(&e, &id);
        }
    }
    let info = match sandbox.info().await {
        Ok(i) => i,
        Err(e) => return from_error(&e, &id),
    };
    state.forget(&id).await;
    state.insert(sandbox).await;
    if !state.serves(state.owner()) {
        // Revoked while this ran: what it owned stays as the revocation left it.
        return crate::http::revoked_meanwhile();
    }
    if was_paused {
        state
            .logs
            .event(state.owner(), &id, "info", "Sandbox resumed");
    }
    let status = if was_paused {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(created(&state, &info))).into_response()
}

async fn connect_v2(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    connect(state, id, body).await
}

async fn connect_v1(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    connect(state, id, body).await
}

async fn resume(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    match state.owned_info(&id).await {
        Ok(i) if i.state == SandboxState::Running => {
            return api_error(
                StatusCode::CONFLICT,
                format!("Sandbox {id} is already running"),
            )
        }
        Ok(_) => {}
        Err(e) => return from_error(&e, &id),
    }
    let resp = connect(state, id, body).await;
    if resp.status().is_success() {
        let (mut parts, body) = resp.into_parts();
        parts.status = StatusCode::CREATED;
        return Response::from_parts(parts, body);
    }
    resp
}

async fn detail(state: Caller, Path(id): Path<String>) -> Response {
    match state.owned_info(&id).await {
        Ok(info) if info.state != SandboxState::Stopped => {
            Json(detail_of(&state, &info, true)).into_response()
        }
        Ok(_) => not_found(&id),
        Err(e) => {
            if e.kind() == ErrorKind::NotFound {
                state.forget(&id).await;
            }
            from_error(&e, &id)
        }
    }
}

async fn kill(state: Caller, Path(id): Path<String>) -> Response {
    if let Err(e) = state.owned_info(&id).await {
        return from_error(&e, &id);
    }
    state.forget(&id).await;
    // Logged before, as E2B does: the processes' ends come after it.
    let reason = vec![("kill_reason", "request".to_string())];
    state
        .logs
        .event_with(state.owner(), &id, "info", "Killing sandbox", reason);
    match state.runtime.kill(&id).await {
        Ok(()) => {
            info!(sandbox_id = %id, "sandbox killed");
            state.secrets.forget_policy(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => from_error(&e, &id),
    }
}

async fn set_timeout(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    let req: SetTimeout = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // As E2B: 0 (or less) ends the time to live now, so the sandbox is killed, or paused with
    // auto-pause, at once (E2B's own tests force an auto-pause this way).
    let timeout = match req.timeout {
        ..=0 => Duration::ZERO,
        t => match check_timeout(&state, t) {
            Ok(t) => t,
            Err(r) => return r,
        },
    };
    keep_for(&state, &id, timeout).await
}

/// Sets the time to live of sandbox `id` to `timeout` from now (204).
async fn keep_for(state: &Caller, id: &str, timeout: Duration) -> Response {
    let served = match state.served(id).await {
        Ok(s) => s,
        Err(e) => return from_error(&e, id),
    };
    match served.sandbox().set_timeout(timeout).await {
        Ok(()) => {
            let end = SystemTime::now() + timeout;
            let fields = vec![("end_time", sandkit_e2b_protocol::json::rfc3339(end))];
            state
                .logs
                .event_with(state.owner(), id, "info", "Sandbox timeout set", fields);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => from_error(&e, id),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Refresh {
    duration: Option<u64>,
}

/// The least a refresh keeps a sandbox alive for, as on E2B.
const MIN_REFRESH: u64 = 15;
/// The most, as E2B's API allows.
const MAX_REFRESH: u64 = 3600;

/// `POST /sandboxes/{id}/refreshes` (204): keeps the sandbox alive for at least `duration`
/// seconds from now (15 when absent or less, as on E2B); never shortens its time to live.
async fn refresh(state: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    let req: Refresh = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let secs = req.duration.unwrap_or(MIN_REFRESH).max(MIN_REFRESH);
    if secs > MAX_REFRESH {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("duration must be at most {MAX_REFRESH} seconds"),
        );
    }
    let info = match state.owned_info(&id).await {
        Ok(i) => i,
        Err(e) => return from_error(&e, &id),
    };
    let wanted = SystemTime::now() + Duration::from_secs(secs);
    if info.expires_at.is_some_and(|end| end >= wanted) {
        return StatusCode::NO_CONTENT.into_response();
    }
    keep_for(&state, &id, Duration::from_secs(secs)).await
}

async fn pause(state: Caller, Path(id): Path<String>) -> Response {
    let served = match state.served(&id).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::Conflict => {
            return api_error(
                StatusCode::CONFLICT,
                format!("Sandbox {id} is already paused"),
            )
        }
        Err(e) => return from_error(&e, &id),
    };
    state
        .logs
        .event(state.owner(), &id, "info", "Pausing sandbox");
    match served.sandbox().pause().await {
        Ok(()) => {
            // envd is gone until the sandbox is resumed: the next envd call must look again.
            state.mark_stale(&id).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) if e.kind() == ErrorKind::Conflict => api_error(
            StatusCode::CONFLICT,
            format!("Sandbox {id} is already paused"),
        ),
        Err(e) => from_error(&e, &id),
    }
}

/// `start` and `end` of `GET /sandboxes/{id}/metrics`, in Unix seconds (both optional).
#[derive(Debug, Default, Deserialize)]
struct MetricsRange {
    start: Option<i64>,
    end: Option<i64>,
}

/// `GET /sandboxes/{id}/metrics`: the samples taken inside the asked range (every 5 s while
/// this server holds the sandbox, kept an hour; see [`crate::history`]), and one taken now
/// when now is inside it and the sandbox runs. None where the backend cannot measure
/// (Docker's exec path).
async fn metrics(
    state: Caller,
    Path(id): Path<String>,
    Query(range): Query<MetricsRange>,
) -> Response {
    let info = match state.owned_info(&id).await {
        Ok(i) => i,
        Err(e) => return from_error(&e, &id),
    };
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut samples = state
        .history
        .range(state.owner(), &id, range.start, range.end);
    // The sample is taken a moment from now: a range ending just before it still holds now.
    let now_inside = range.start.is_none_or(|s| now >= s) && range.end.is_none_or(|e| now <= e);
    if info.state == SandboxState::Running && now_inside {
        if let Some(m) = crate::observe::live(&state, &id).await {
            samples.push(m);
        }
    }
    Json(samples.iter().map(crate::history::json).collect::<Vec<_>>()).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    order: Option<String>,
    started_after: Option<String>,
    started_before: Option<String>,
    template: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
}

async fn list_all(
    state: &Caller,
    q: &ListQuery,
    default_states: &[SandboxState],
) -> Result<Vec<SandboxInfo>, Response> {
    let mut filter = sandkit_core::ListFilter::all();
    if let Some(m) = &q.metadata {
        for (k, v) in decode_metadata_filter(m) {
            filter = filter.metadata(k, v);
        }
    }
    // The owner last: a client's `sandkit.e2b.owner=...` cannot replace it.
    filter = filter.metadata(crate::state::OWNER_KEY, state.owner());
    let states: Vec<SandboxState> = match &q.state {
        Some(s) => s
            .split(',')
            .filter_map(|s| match s.trim() {
                "running" => Some(SandboxState::Running),
                "paused" => Some(SandboxState::Paused),
                _ => None,
            })
            .collect(),
        None => default_states.to_vec(),
    };
    for s in states {
        filter = filter.state(s);
    }
    let mut list = state
        .runtime
        .list(&filter)
        .await
        .map_err(|e| from_error(&e, ""))?
        .into_iter()
        .filter(|i| i.metadata.contains_key(TEMPLATE_KEY))
        .collect::<Vec<_>>();
    if let Some(t) = &q.template {
        list.retain(|i| i.metadata.get(TEMPLATE_KEY) == Some(t));
    }
    // Both bounds include the boundary, as E2B's API does.
    if let Some(after) = q
        .started_after
        .as_deref()
        .and_then(sandkit_e2b_protocol::json::parse_rfc3339)
    {
        list.retain(|i| i.started_at >= after);
    }
    if let Some(before) = q
        .started_before
        .as_deref()
        .and_then(sandkit_e2b_protocol::json::parse_rfc3339)
    {
        list.retain(|i| i.started_at <= before);
    }
    list.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    if q.order.as_deref() != Some("asc") {
        list.reverse();
    }
    Ok(list)
}

async fn list_v2(state: Caller, Query(q): Query<ListQuery>) -> Response {
    let list = match list_all(&state, &q, &[SandboxState::Running, SandboxState::Paused]).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 100);
    let start = q
        .next_token
        .as_deref()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let page: Vec<SandboxDetail> = list
        .iter()
        .skip(start)
        .take(limit)
        .map(|i| detail_of(&state, i, false))
        .collect();
    let mut headers = HeaderMap::new();
    if start + limit < list.len() {
        headers.insert(
            headers::NEXT_TOKEN,
            HeaderValue::from_str(&(start + limit).to_string()).expect("digits"),
        );
    }
    let running = list
        .iter()
        .filter(|i| i.state == SandboxState::Running)
        .count();
    headers.insert(
        "x-total-running",
        HeaderValue::from_str(&running.to_string()).expect("digits"),
    );
    (headers, Json(page)).into_response()
}

async fn list_v1(state: Caller, Query(q): Query<ListQuery>) -> Response {
    match list_all(&state, &q, &[SandboxState::Running]).await {
        Ok(list) => Json(
            list.iter()
                .map(|i| detail_of(&state, i, false))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(r) => r,
    }
}
