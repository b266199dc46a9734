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

/// `GET /files` with `Accept-Encoding: gzip` (httpx, and so the SDK, always sends it): gzip
/// only for a client beyond this machine and a file whose start compresses; the bytes are the
/// file's either way.
#[tokio::test]
async fn downloads_are_compressed_only_where_it_pays() {
    use std::io::Read;
    let (app, served, dir) = envd("gzip").await;
    std::fs::create_dir_all(&dir).unwrap();
    let text: Vec<u8> = "a line of a log that repeats itself\n"
        .repeat(8000)
        .into_bytes();
    // Bytes that do not compress (xorshift).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(format!("{dir}/text.log"), &text).unwrap();
    std::fs::write(format!("{dir}/noise.bin"), &noise).unwrap();
    let get = |name: &str, peer: Option<&str>| {
        let mut r = Request::get(format!("/files?path={dir}/{name}"))
            .header("x-access-token", TOKEN)
            .header("accept-encoding", "gzip, deflate")
            .body(Body::empty())
            .unwrap();
        if let Some(p) = peer {
            let addr: std::net::SocketAddr = p.parse().unwrap();
            r.extensions_mut().insert(axum::extract::ConnectInfo(addr));
        }
        r
    };
    let fetch = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let gzip = response.headers().get("content-encoding").is_some();
            let body = axum::body::to_bytes(response.into_body(), 1 << 24)
                .await
                .unwrap();
            let bytes = if gzip {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            } else {
                body.to_vec()
            };
            (gzip, bytes)
        }
    };
    // From another machine: text is compressed, noise is not.
    let (gzip, bytes) = fetch(get("text.log", Some("10.1.2.3:5555"))).await;
    assert!(gzip, "compressible text to a remote client goes gzipped");
    assert_eq!(bytes, text);
    let (gzip, bytes) = fetch(get("noise.bin", Some("10.1.2.3:5555"))).await;
    assert!(!gzip, "incompressible bytes go as they are");
    assert_eq!(bytes, noise);
    // From this machine: never compressed.
    let (gzip, bytes) = fetch(get("text.log", Some("127.0.0.1:5555"))).await;
    assert!(!gzip, "a client on loopback gets the bytes as they are");
    assert_eq!(bytes, text);
    // Served without a peer address (another embedding): judged as remote.
    let (gzip, bytes) = fetch(get("text.log", None)).await;
    assert!(gzip);
    assert_eq!(bytes, text);
    done(&served, &dir).await;
}
