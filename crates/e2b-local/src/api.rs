//! The control plane's router: every route file's routes, behind API-key authentication,
//! body limits and E2B's error shape; and the token-checked routes beside them (template
//! uploads, volume content).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::caller::{authenticate, Caller};
use crate::http::{api_error, not_found, Shared};
use crate::metrics::Counted;
use crate::state::OWNER_KEY;

/// The routes of the control plane.
pub(crate) fn router(state: Shared) -> Router {
    let routes = crate::control::routes(Router::new())
        .route("/sandboxes/{id}/network", put(crate::network::update))
        .route(
            "/secrets",
            post(crate::secrets::create).get(crate::secrets::list),
        )
        .route(
            "/secrets/{id}",
            get(crate::secrets::get_info)
                .post(crate::secrets::update)
                .delete(crate::secrets::destroy),
        )
        .route("/sandboxes/{id}/snapshots", post(crate::snapshots::create))
        .route("/sandboxes/{id}/fork", post(crate::snapshots::fork))
        .route("/snapshots", get(crate::snapshots::list))
        .route("/templates/{id}", delete(crate::snapshots::delete))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .route("/dashboard/link", post(crate::dashboard::link));
    crate::volumes::routes(crate::catalog::routes(crate::templates::routes(routes)))
        // A route of E2B's API not served here: never 404, which the SDK reads as "sandbox not
        // found" for a sandbox that is running.
        .fallback(not_served)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state.clone())
        .merge(crate::templates::upload_router(state.clone()))
        .merge(crate::volumes::content_router(state.clone()))
        .merge(crate::dashboard::router(state))
}

async fn not_served(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    // A path naming something that cannot be a sandbox is a missing sandbox, as before.
    let mut parts = uri.path().trim_start_matches('/').split('/');
    if let (Some("sandboxes"), Some(id)) = (parts.next(), parts.next()) {
        let id_like = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_like {
            return not_found(id);
        }
    }
    api_error(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{method} {} is not served by e2b-local (a feature of E2B's cloud it does not have yet)",
            uri.path()
        ),
    )
}

/// Largest control-plane request body.
const MAX_BODY: usize = 1 << 20;

/// Errors the framework answers itself (413, 405, ...) get the API's JSON body too: the SDK
/// parses every error as `{"code", "message"}`.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!("request body over {MAX_BODY} bytes"),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        };
        let mut answer = api_error(status, message);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot carry another request,
            // and the client must not try (it would see a connection closed under it).
            answer.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        return answer;
    }
    response
}

/// `GET /metrics`: Prometheus' text format, for an operator key (`operator = true` in the keys
/// file, or `--api-key`'s). Sandboxes are counted from the engine at each scrape, by the name
/// of the key that owns them (those of keys this server does not serve are not counted).
async fn metrics(state: Caller) -> Response {
    if !state.key.operator {
        return api_error(
            StatusCode::FORBIDDEN,
            "this key may not read /metrics: give it `operator = true` in the keys file",
        );
    }
    let keys = state.keys();
    let listed = match state.runtime.list(&sandkit_core::ListFilter::all()).await {
        Ok(l) => l,
        Err(e) => return crate::http::from_error(&e, ""),
    };
    let counted: Vec<Counted> = listed
        .iter()
        .filter_map(|info| {
            let key = keys.by_owner(info.metadata.get(OWNER_KEY)?)?;
            let state = match info.state {
                sandkit_core::SandboxState::Running => "running",
                sandkit_core::SandboxState::Paused => "paused",
                _ => "other",
            };
            Some(Counted {
                key: key.name.clone(),
                state,
            })
        })
        .collect();
    let gauges = state.runtime.gauges().await;
    let text = state.metrics.render(&counted, keys.len(), &gauges);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
