//! envd, E2B's in-sandbox daemon, served over any [`sandkit_core::Sandbox`]: the process and
//! filesystem services (Connect RPC with the JSON codec), `/files`, `/health` and `/envs`, as
//! the official SDKs speak them (see `sandkit-e2b-protocol`).
//!
//! [`router`] builds the routes over a [`Resolve`], which finds the sandbox a request is for
//! after checking its credentials: `e2b-local` resolves by the `E2b-Sandbox-Id` header among
//! many sandboxes; `sandkit-agent` serves one sandbox with one token ([`OneSandbox`]).
//!
//! ```no_run
//! # async fn serve(sandbox: Box<dyn sandkit_core::Sandbox>) -> std::io::Result<()> {
//! use std::sync::Arc;
//! let served = Arc::new(sandkit_envd::Served::new(sandbox, "user"));
//! let app = sandkit_envd::router(Arc::new(sandkit_envd::OneSandbox::new(served, Some("token".into()))));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:49983").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// An `Err` here is a whole HTTP answer, made once per rejected request.
#![allow(clippy::result_large_err)]

mod auth;
mod files;
mod filesystem;
mod journal;
mod process;
mod procs;
mod served;
mod watch;
mod wire;

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandkit_e2b_protocol::envd::rpc;
use sandkit_e2b_protocol::ConnectError;

pub use auth::{check_file_auth, unauthorized, Auth, FileQuery, OneSandbox, Resolve};
pub use journal::{Journal, Record};
pub use served::Served;
pub use wire::{plain_error, sandbox_not_found};

use crate::auth::{basic_user, user_of};
use crate::wire::{connect_error_response, MAX_UNARY};

type Shared = Arc<dyn Resolve>;

/// The routes of envd over `resolver`.
pub fn router(resolver: Arc<dyn Resolve>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/envs", get(envs))
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(rpc::START, post(process::start))
        .route(rpc::CONNECT, post(process::connect))
        .route(rpc::STREAM_INPUT, post(process::stream_input))
        .route(rpc::WATCH_DIR, post(watch::watch_dir))
        .route("/metrics", get(metrics))
        .route("/{*rpc}", post(unary))
        // Never 404 for a route envd has and this server lacks: the SDK reads 404 as "the
        // sandbox is gone".
        .fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                plain_error(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("{method} {} is not served by this envd", uri.path()),
                )
            },
        )
        .with_state(resolver)
}

async fn health(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    match state.resolve(&headers, Auth::None).await {
        Ok(_) => (
            StatusCode::NO_CONTENT,
            [(header::CACHE_CONTROL, "no-store")],
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn envs(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    let served = match state.resolve(&headers, Auth::Header).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match state.envs(&served).await {
        Ok(envs) => Json(envs).into_response(),
        Err(r) => r,
    }
}

/// The unary RPCs of both services.
async fn unary(AxState(state): AxState<Shared>, headers: HeaderMap, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let served = match state.resolve(&headers, Auth::Header).await {
        Ok(s) => s,
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
    // A user that cannot be is refused for every call, as envd does.
    let user = match user_of(&served, basic_user(&headers)).await {
        Ok(u) => u,
        Err(e) => return connect_error_response(&e),
    };
    if path.starts_with("/filesystem.Filesystem/") {
        match path.as_str() {
            rpc::CREATE_WATCHER | rpc::GET_WATCHER_EVENTS | rpc::REMOVE_WATCHER => {
                watch::unary(&served, &user, &path, &body).await
            }
            _ => filesystem::unary(&served, &user, &path, &body).await,
        }
    } else {
        process::unary(&served, &path, &body).await
    }
}

/// `GET /metrics`: what the sandbox uses now, as envd reports it.
async fn metrics(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    let served = match state.resolve(&headers, Auth::Header).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match served.sandbox.metrics().await {
        Ok(m) => {
            const MIB: u64 = 1 << 20;
            let ts = m
                .timestamp
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            let body = sandkit_e2b_protocol::envd::EnvdMetrics {
                ts,
                cpu_count: m.cpu_count,
                cpu_used_pct: m.cpu_used_pct as f32,
                mem_total_mib: m.mem_total / MIB,
                mem_used_mib: m.mem_used / MIB,
                mem_total: m.mem_total,
                mem_used: m.mem_used,
                mem_cache: m.mem_cache,
                disk_used: m.disk_used,
                disk_total: m.disk_total,
            };
            ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
        }
        Err(e) if e.kind() == sandkit_core::ErrorKind::Unsupported => plain_error(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "metrics are not available for this sandbox: {}",
                e.message()
            ),
        ),
        Err(e) => plain_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
