//! What the SDK's API client reads about templates besides the list: the default templates,
//! a build's logs, and its tag routes (count, exists, groups, assignments); and `PATCH` of a
//! template, which can only keep a template private here.
//!
//! Each tag of a template is one snapshot (see [`crate::templates`]), so a tag has exactly one
//! assignment: the build that made it, at the time its snapshot was taken.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sandkit_e2b_protocol::json::rfc3339;
use serde::Deserialize;
use serde_json::json;

use crate::caller::Caller;
use crate::http::{api_error, from_error, parse, Shared};
use crate::templates::{all_templates, build_of, entry, mine, parse_name, Template, BUILD_KEY};

/// The routes of this module (under the API key).
pub(crate) fn routes(router: Router<Shared>) -> Router<Shared> {
    router
        .route("/default-templates", get(default_templates))
        .route("/templates/{id}/builds/{build}/logs", get(build_logs))
        .route("/templates/{id}/tags/count", get(tag_count))
        .route("/templates/{id}/tags/exists", get(tag_exists))
        .route("/templates/{id}/tags/groups", get(tag_groups))
        .route(
            "/templates/{id}/tags/{tag}/assignments",
            get(tag_assignments),
        )
        // Merged with `DELETE /templates/{id}` (a snapshot or template, `crate::snapshots`).
        .route("/templates/{id}", axum::routing::patch(update_v1))
        .route("/v2/templates/{id}", axum::routing::patch(update_v2))
}

/// `GET /default-templates`: `base`, the one template every key has.
async fn default_templates() -> Response {
    let mut base = entry(
        "base",
        "base",
        "base",
        std::time::SystemTime::UNIX_EPOCH,
        true,
    );
    base["isDefault"] = json!(true);
    Json(vec![base]).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct LogsQuery {
    /// Unix milliseconds: entries from it on (forward) or up to it (backward).
    cursor: Option<i64>,
    limit: Option<usize>,
    direction: Option<String>,
    /// The lowest level shown.
    level: Option<String>,
}

fn level_rank(level: &str) -> u8 {
    match level {
        "debug" => 0,
        "info" => 1,
        "warn" => 2,
        _ => 3,
    }
}

/// `GET /templates/{id}/builds/{build}/logs`: the build's log, oldest first (or newest first
/// with `direction=backward`), from `cursor`, at or above `level`, at most `limit` (100).
async fn build_logs(
    state: Caller,
    Path((id, build_id)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let build = match build_of(&state, &id, &build_id) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let backward = q.direction.as_deref() == Some("backward");
    // Entries carry RFC 3339 times of one format, which sort as the times do.
    let cursor = q.cursor.map(|ms| {
        rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
    });
    let min = q.level.as_deref().map_or(0, level_rank);
    let p = build.progress.lock().expect("build");
    let kept = |e: &&serde_json::Value| {
        let at = e["timestamp"].as_str().unwrap_or_default();
        let in_range = match &cursor {
            None => true,
            Some(c) if backward => at <= c.as_str(),
            Some(c) => at >= c.as_str(),
        };
        in_range && level_rank(e["level"].as_str().unwrap_or("info")) >= min
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let logs: Vec<&serde_json::Value> = if backward {
        p.entries.iter().rev().filter(kept).take(limit).collect()
    } else {
        p.entries.iter().filter(kept).take(limit).collect()
    };
    Json(json!({ "logs": logs })).into_response()
}

/// This key's tags of template `id` (its id or alias), or 404.
async fn tags_of(state: &Caller, id: &str) -> Result<Vec<Template>, Response> {
    let alias = parse_name(id)
        .map(|(a, _)| a)
        .map_err(|why| api_error(StatusCode::BAD_REQUEST, why))?;
    let all = all_templates(state).await.map_err(|e| from_error(&e, ""))?;
    let mine: Vec<Template> = all
        .into_iter()
        .filter(|t| mine(state, t) && (t.alias == alias || t.id == alias))
        .collect();
    if mine.is_empty() {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            format!("template '{id}' not found"),
        ));
    }
    Ok(mine)
}

/// A UUID-shaped id made from `seed` (the API's ids are UUIDs; ours are derived).
fn uuid_of(seed: &str) -> String {
    let d = sandkit_e2b_protocol::derive_token(seed, "", "uuid");
    format!(
        "{}-{}-4{}-a{}-{}",
        &d[0..8],
        &d[8..12],
        &d[13..16],
        &d[17..20],
        &d[20..32]
    )
}

/// The one assignment of a tag: the build that made its snapshot.
fn assignment(t: &Template) -> serde_json::Value {
    let build = t
        .snapshot
        .metadata
        .get(BUILD_KEY)
        .cloned()
        .unwrap_or_else(|| uuid_of(&t.snapshot.id));
    let at = rfc3339(t.snapshot.created_at);
    json!({
        "assignmentId": uuid_of(&format!("{}/{}", t.snapshot.id, t.tag())),
        "buildId": build,
        "assignedAt": at,
        "buildCreatedAt": at,
        "buildFinishedAt": at,
    })
}

/// `GET /templates/{id}/tags/count`.
async fn tag_count(state: Caller, Path(id): Path<String>) -> Response {
    match tags_of(&state, &id).await {
        Ok(tags) => Json(json!({ "total": tags.len() })).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
struct ExistsQuery {
    #[serde(default)]
    tag: String,
}

/// `GET /templates/{id}/tags/exists?tag=`: whether the tag, normalised as builds name tags,
/// is one of the template's.
async fn tag_exists(
    state: Caller,
    Path(id): Path<String>,
    Query(q): Query<ExistsQuery>,
) -> Response {
    let normalized = match parse_name(&format!("x:{}", q.tag.trim())) {
        Ok((_, tag)) if !q.tag.trim().is_empty() => tag.unwrap_or_else(|| "default".into()),
        Ok(_) => return api_error(StatusCode::BAD_REQUEST, "tag is required"),
        Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
    };
    match tags_of(&state, &id).await {
        Ok(tags) => Json(json!({
            "exists": tags.iter().any(|t| t.tag() == normalized),
            "normalizedTag": normalized,
        }))
        .into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupsQuery {
    tags_limit: Option<usize>,
    /// Where the previous page ended (an offset, as this server hands it out).
    tags_cursor: Option<String>,
    search: Option<String>,
    sort: Option<String>,
}

/// `GET /templates/{id}/tags/groups`: each tag with its assignment, searched and sorted as
/// asked, a page at a time.
async fn tag_groups(
    state: Caller,
    Path(id): Path<String>,
    Query(q): Query<GroupsQuery>,
) -> Response {
    let mut tags = match tags_of(&state, &id).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Some(s) = q.search.as_deref().map(str::to_lowercase) {
        tags.retain(|t| t.tag().contains(&s));
    }
    match q.sort.as_deref().unwrap_or("latest_desc") {
        "name_asc" => tags.sort_by_key(|t| t.tag()),
        "name_desc" => tags.sort_by_key(|t| std::cmp::Reverse(t.tag())),
        "latest_asc" => tags.sort_by_key(|t| t.snapshot.created_at),
        _ => tags.sort_by_key(|t| std::cmp::Reverse(t.snapshot.created_at)),
    }
    let from: usize = match q.tags_cursor.as_deref().map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return api_error(StatusCode::BAD_REQUEST, "invalid tagsCursor"),
    };
    let limit = q.tags_limit.unwrap_or(25).max(1);
    let groups: Vec<serde_json::Value> = tags
        .iter()
        .skip(from)
        .take(limit)
        .map(|t| json!({ "tag": t.tag(), "assignments": [assignment(t)], "hasMore": false }))
        .collect();
    let end = from.saturating_add(limit);
    let next = (end < tags.len()).then(|| end.to_string());
    Json(json!({ "tags": groups, "nextCursor": next })).into_response()
}

/// `GET /templates/{id}/tags/{tag}/assignments`: the tag's one assignment.
async fn tag_assignments(state: Caller, Path((id, tag)): Path<(String, String)>) -> Response {
    let tags = match tags_of(&state, &id).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let wanted = tag.trim().to_lowercase();
    match tags.iter().find(|t| t.tag() == wanted) {
        Some(t) => Json(json!({ "data": [assignment(t)], "nextCursor": null })).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            format!("tag '{tag}' of template '{id}' not found"),
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
struct TemplateUpdate {
    public: Option<bool>,
}

/// Checks a `PATCH` of template `id`: it must be this key's, and it stays private (templates
/// belong to the key that built them on this server; none is shared with other keys).
async fn update(state: &Caller, id: &str, body: &axum::body::Bytes) -> Result<String, Response> {
    let req: TemplateUpdate = parse(body)?;
    let tags = tags_of(state, id).await?;
    if req.public == Some(true) {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "templates cannot be made public on this server: each belongs to the API key that \
             built it",
        ));
    }
    Ok(tags[0].alias.clone())
}

/// `PATCH /templates/{id}` (200, no body).
async fn update_v1(state: Caller, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    match update(&state, &id, &body).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(r) => r,
    }
}

/// `PATCH /v2/templates/{id}` (200, the template's names).
async fn update_v2(state: Caller, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    match update(&state, &id, &body).await {
        Ok(alias) => Json(json!({ "names": [alias] })).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_uuid_shaped_and_stable() {
        let a = uuid_of("snap/x");
        assert_eq!(a, uuid_of("snap/x"));
        assert_ne!(a, uuid_of("snap/y"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn levels_rank_from_debug_to_error() {
        assert!(level_rank("debug") < level_rank("info"));
        assert!(level_rank("info") < level_rank("warn"));
        assert!(level_rank("warn") < level_rank("error"));
    }
}
