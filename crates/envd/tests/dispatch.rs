//! The envd router's own dispatch, over the local backend (no engine needed): credentials are
//! checked before anything else, each route reaches its service, errors come in Connect's
//! shape, `/files` round-trips, and a route envd lacks is 501 (never 404, which the SDK reads
//! as "the sandbox is gone").

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sandkit_core::{Runtime, SandboxSpec};
use sandkit_e2b_protocol::envd::rpc;
use sandkit_envd::{router, OneSandbox, Served};
use tower::ServiceExt;

const TOKEN: &str = "dispatch-token";

/// A router over a fresh local sandbox, the sandbox (kill it when done) and a scratch
/// directory of this test.
async fn envd(test: &str) -> (axum::Router, Arc<Served>, String) {
    let runtime = sandkit_local::LocalRuntime::new();
    let sandbox = runtime
        .create(SandboxSpec::new())
        .await
        .expect("a local sandbox");
    let dir = format!("/tmp/envd-dispatch-{test}-{}", std::process::id());
    let served = Arc::new(Served::new(sandbox, "root"));
    let app = router(Arc::new(OneSandbox::new(
        served.clone(),
        Some(TOKEN.into()),
    )));
    (app, served, dir)
}

/// Removes the scratch directory and kills the sandbox.
async fn done(served: &Served, dir: &str) {
    let _ = std::fs::remove_dir_all(dir);
    served
        .sandbox()
        .kill()
        .await
        .expect("the sandbox is killed");
}

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn unary(path: &str, body: serde_json::Value, token: Option<&str>) -> Request<Body> {
    let mut r = Request::post(path).header("content-type", "application/json");
    if let Some(t) = token {
        r = r.header("x-access-token", t);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

#[tokio::test]
async fn credentials_come_first_and_health_needs_none() {
    let (app, served, dir) = envd("auth").await;
    let (status, _) = call(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // No token, or a wrong one: refused, and nothing is made.
    for token in [None, Some("wrong")] {
        let (status, body) = call(
            &app,
            unary(rpc::MAKE_DIR, serde_json::json!({"path": dir}), token),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
    }
    let (status, body) = call(
        &app,
        unary(rpc::STAT, serde_json::json!({"path": dir}), Some(TOKEN)),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused MakeDir made {dir}: {body}"
    );
    done(&served, &dir).await;
}

#[tokio::test]
async fn each_service_is_reached_and_errors_are_connect_errors() {
    let (app, served, dir) = envd("services").await;
    let (status, body) = call(
        &app,
        unary(rpc::MAKE_DIR, serde_json::json!({"path": dir}), Some(TOKEN)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &app,
        unary(rpc::STAT, serde_json::json!({"path": dir}), Some(TOKEN)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stat: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stat["entry"]["path"], serde_json::json!(dir), "{body}");
    // A missing path: Connect's not_found, in its JSON shape.
    let (status, body) = call(
        &app,
        unary(
            rpc::STAT,
            serde_json::json!({"path": format!("{dir}/missing")}),
            Some(TOKEN),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "not_found", "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    // The process service answers on the same dispatch.
    let (status, body) = call(&app, unary(rpc::LIST, serde_json::json!({}), Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A call envd has not got here: Connect's unimplemented (501), never 404; another
    // method on an envd path: 405, never 404.
    let (status, body) = call(
        &app,
        unary(
            "/filesystem.Filesystem/NoSuchCall",
            serde_json::json!({}),
            Some(TOKEN),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "unimplemented", "{body}");
    let (status, body) = call(
        &app,
        Request::get("/no/such/route").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    done(&served, &dir).await;
}

#[tokio::test]
async fn files_round_trip_behind_the_token() {
    let (app, served, dir) = envd("files").await;
    let path = format!("{dir}/a b.txt");
    let url = format!("/files?path={}", path.replace(' ', "%20"));
    let upload = |token: Option<&str>| {
        let mut r = Request::post(&url).header("content-type", "application/octet-stream");
        if let Some(t) = token {
            r = r.header("x-access-token", t);
        }
        r.body(Body::from("every byte\0\u{ff}")).unwrap()
    };
    let (status, _) = call(&app, upload(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !std::path::Path::new(&path).exists(),
        "a refused upload wrote"
    );
    let (status, body) = call(&app, upload(Some(TOKEN))).await;
    assert!(status.is_success(), "{status}: {body}");
    let (status, body) = call(
        &app,
        Request::get(&url)
            .header("x-access-token", TOKEN)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "every byte\0\u{ff}");
    done(&served, &dir).await;
}
