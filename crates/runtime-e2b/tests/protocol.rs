//! Protocol edge cases the real peer cannot be made to produce on demand, against a small
//! in-test HTTP server: framing cut anywhere, stream errors, cut streams, Connect errors,
//! retries, status mapping, the metadata filter, pagination.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use futures_util::StreamExt;
use sandkit_core::layer::RetryLayer;
use sandkit_core::{
    CommandSpec, ErrorKind, FileStoreExt, ListFilter, Runtime, SandboxExt, SandboxSpec,
};
use sandkit_e2b::E2bRuntime;
use sandkit_e2b_protocol::{encode_end_stream, encode_message, ConnectError};
use serde_json::json;

#[derive(Default)]
struct Mock {
    calls: AtomicUsize,
    queries: Mutex<Vec<String>>,
    headers: Mutex<Vec<HeaderMap>>,
}

type Shared = Arc<Mock>;

fn created() -> Response {
    let body = json!({"templateID":"base","sandboxID":"sbx1","clientID":"6532622b","envdVersion":"0.6.13",
                      "envdAccessToken":"tok","trafficAccessToken":null,"domain":null});
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// The backend against `router`, in the standard stack of layers (as `Config::runtime` builds
/// it): retries and error context are the layers' work.
async fn serve(router: Router) -> Arc<dyn Runtime> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let backend = E2bRuntime::builder()
        .api_key("e2b_test")
        .api_url(format!("http://{addr}"))
        .sandbox_url(format!("http://{addr}"))
        .request_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    sandkit_core::layer::standard(Arc::new(backend), Some(RetryLayer::default()))
}

fn stream(frames: Vec<Bytes>, byte_by_byte: bool) -> Response {
    let chunks: Vec<Bytes> = if byte_by_byte {
        frames
            .concat()
            .into_iter()
            .map(|b| Bytes::from(vec![b]))
            .collect()
    } else {
        frames
    };
    let body =
        futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    Response::builder()
        .header("content-type", "application/connect+json")
        .body(Body::from_stream(body))
        .unwrap()
}

fn event(v: serde_json::Value) -> Bytes {
    encode_message(&v)
}

#[tokio::test]
async fn envelopes_cut_into_single_bytes_decode() {
    async fn start(State(m): State<Shared>, headers: HeaderMap) -> Response {
        m.headers.lock().unwrap().push(headers);
        stream(
            vec![
                event(json!({"event":{"start":{"pid":42}}})),
                event(json!({"event":{"keepalive":{}}})),
                event(json!({"event":{"data":{"stdout":"aGVsbG8K"}}})),
                event(json!({"event":{"data":{"stderr":"b29wcwo="}}})),
                event(
                    json!({"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3"}}}),
                ),
                encode_end_stream(None),
            ],
            true,
        )
    }
    let mock = Shared::default();
    let router = Router::new()
        .route("/v2/sandboxes", post(|| async { created() }))
        .route("/process.Process/Start", post(start))
        .with_state(mock.clone());
    let rt = serve(router).await;
    let sb = rt.create(SandboxSpec::new()).await.unwrap();
    let out = sb
        .exec(CommandSpec::shell("echo hello").timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        (
            out.stdout_text().as_str(),
            out.stderr_text().as_str(),
            out.exit_code
        ),
        ("hello\n", "oops\n", Some(3))
    );
    // What the SDK sends on a stream.
    let h = mock.headers.lock().unwrap()[0].clone();
    assert_eq!(h["content-type"], "application/connect+json");
    assert_eq!(h["keepalive-ping-interval"], "50");
    assert_eq!(h["connect-timeout-ms"], "5000");
    assert_eq!(h["x-access-token"], "tok");
    assert_eq!(h["e2b-sandbox-id"], "sbx1");
    assert_eq!(h["e2b-sandbox-port"], "49983");
}

#[tokio::test]
async fn end_of_stream_error_is_typed() {
    let router = Router::new()
        .route("/v2/sandboxes", post(|| async { created() }))
        .route(
            "/process.Process/Start",
            post(|| async {
                stream(
                    vec![
                        event(json!({"event":{"start":{"pid":1}}})),
                        event(json!({"event":{"data":{"stdout":"cGFydA=="}}})),
                        encode_end_stream(Some(&ConnectError::new(
                            "deadline_exceeded",
                            "context deadline exceeded",
                        ))),
                    ],
                    false,
                )
            }),
        );
    let rt = serve(router).await;
    let sb = rt.create(SandboxSpec::new()).await.unwrap();
    let err = sb.exec(CommandSpec::shell("sleep 100")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(err.output().unwrap().stdout_text(), "part");
}

#[tokio::test]
async fn stream_without_end_event_is_an_error() {
    let router = Router::new()
        .route("/v2/sandboxes", post(|| async { created() }))
        .route(
            "/process.Process/Start",
            post(|| async {
                let mut half = event(json!({"event":{"data":{"stdout":"aGk="}}})).to_vec();
                half.truncate(7);
                stream(
                    vec![
                        event(json!({"event":{"start":{"pid":1}}})),
                        Bytes::from(half),
                    ],
                    false,
                )
            }),
        );
    let rt = serve(router).await;
    let sb = rt.create(SandboxSpec::new()).await.unwrap();
    let err = sb.exec(CommandSpec::shell("true")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("end"), "{err}");
}

#[tokio::test]
async fn unary_connect_errors_map_by_code() {
    let router = Router::new()
        .route("/v2/sandboxes", post(|| async { created() }))
        .route(
            "/filesystem.Filesystem/Stat",
            post(|| async {
                (StatusCode::NOT_FOUND, axum::Json(json!({"code":"not_found","message":"path '/x' does not exist"})))
            }),
        )
        .route(
            "/filesystem.Filesystem/MakeDir",
            post(|| async {
                (StatusCode::CONFLICT, axum::Json(json!({"code":"already_exists","message":"exists"})))
            }),
        )
        .route(
            "/filesystem.Filesystem/ListDir",
            post(|| async {
                (StatusCode::BAD_GATEWAY, axum::Json(json!({"sandboxId":"sbx1","message":"The sandbox was not found","code":502})))
            }),
        );
    let rt = serve(router).await;
    let sb = rt.create(SandboxSpec::new()).await.unwrap();
    assert_eq!(
        sb.files().stat("/x").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!sb.files().exists("/x").await.unwrap());
    assert_eq!(
        sb.files().mkdir("/d").await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let gone = sb.files().list("/", 1).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::NotFound, "a dead sandbox: {gone}");
    assert!(gone.to_string().contains("not running"), "{gone}");
}

#[tokio::test]
async fn retries_429_honouring_retry_after() {
    async fn create(State(m): State<Shared>) -> Response {
        if m.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                axum::Json(json!({"code":429,"message":"slow down"})),
            )
                .into_response();
        }
        created()
    }
    let mock = Shared::default();
    let router = Router::new()
        .route("/v2/sandboxes", post(create))
        .with_state(mock.clone());
    let rt = serve(router).await;
    let started = Instant::now();
    let sb = rt.create(SandboxSpec::new()).await.unwrap();
    assert_eq!(sb.id(), "sbx1");
    assert_eq!(mock.calls.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After"
    );
}

#[tokio::test]
async fn should_retry_false_is_not_retried_and_statuses_map() {
    async fn busy(State(m): State<Shared>) -> Response {
        m.calls.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("should-retry", "false")],
            axum::Json(json!({"code":503,"message":"busy"})),
        )
            .into_response()
    }
    let mock = Shared::default();
    let router = Router::new()
        .route(
            "/v2/sandboxes",
            post(busy).get(|| async {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"code":401,"message":"Invalid API key"})),
                )
            }),
        )
        .route(
            "/sandboxes/{id}",
            delete(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"code":404,"message":"Sandbox \"x\" doesn't exist"})),
                )
            })
            .get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"code":500,"message":"boom"})),
                )
            }),
        )
        .with_state(mock.clone());
    let rt = serve(router).await;
    let e = rt.create(SandboxSpec::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(!e.is_retryable(), "Should-Retry: false is final");
    assert_eq!(
        mock.calls.load(Ordering::SeqCst),
        1,
        "Should-Retry: false is final"
    );
    let e = rt.list(&ListFilter::all()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(e.to_string().contains("E2B_API_KEY"), "{e}");
    assert_eq!(rt.kill("x").await.unwrap_err().kind(), ErrorKind::NotFound);
    let e = rt.connect("x").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unexpected),
        "{e}"
    );
}

#[tokio::test]
async fn metadata_filter_and_pagination() {
    async fn list(State(m): State<Shared>, RawQuery(q): RawQuery) -> Response {
        let q = q.unwrap_or_default();
        m.queries.lock().unwrap().push(q.clone());
        let item = |id: &str| {
            json!({"templateID":"base","sandboxID":id,"clientID":"6532622b","startedAt":"2025-01-01T00:00:00Z",
                                     "endAt":"2025-01-01T00:05:00Z","envdVersion":"0.6.13","cpuCount":2,"memoryMB":512,
                                     "diskSizeMB":0,"state":"running","metadata":{"k":"v w"}})
        };
        if q.contains("nextToken=p2") {
            axum::Json(json!([item("b")])).into_response()
        } else {
            ([("x-next-token", "p2")], axum::Json(json!([item("a")]))).into_response()
        }
    }
    let mock = Shared::default();
    let router = Router::new()
        .route("/v2/sandboxes", get(list))
        .with_state(mock.clone());
    let rt = serve(router).await;
    let found = rt
        .list(&ListFilter::all().metadata("k", "v w"))
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let queries = mock.queries.lock().unwrap().clone();
    assert_eq!(queries.len(), 2);
    // Exactly the SDK's encoding (see the protocol notes: k%3Dv%252520w).
    assert!(
        queries[0].contains("metadata=k%3Dv%252520w"),
        "{}",
        queries[0]
    );
    assert!(
        queries[0].contains("state=running%2Cpaused"),
        "{}",
        queries[0]
    );
    assert!(queries[1].contains("nextToken=p2"), "{}", queries[1]);
}

#[tokio::test]
async fn files_stream_over_http() {
    async fn upload(
        State(m): State<Shared>,
        RawQuery(q): RawQuery,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        m.queries.lock().unwrap().push(q.unwrap_or_default());
        m.headers.lock().unwrap().push(headers);
        assert_eq!(&body[..], b"payload bytes");
        axum::Json(json!([{"path":"/home/user/f","name":"f","type":"file"}])).into_response()
    }
    let mock = Shared::default();
    let router = Router::new()
        .route("/v2/sandboxes", post(|| async { created() }))
        .route(
            "/files",
            post(upload).get(|RawQuery(q): RawQuery| async move {
                if q.unwrap_or_default().contains("missing") {
                    (
                        StatusCode::NOT_FOUND,
                        axum::Json(json!({"code":404,"message":"path does not exist"})),
                    )
                        .into_response()
                } else {
                    Body::from_stream(futures_util::stream::iter(
                        ["ab", "cd"].map(Ok::<_, std::convert::Infallible>),
                    ))
                    .into_response()
                }
            }),
        )
        .with_state(mock.clone());
    let rt = serve(router).await;
    let sb = rt.create(SandboxSpec::new()).await.unwrap();
    sb.files()
        .write_str("/home/user/f", "payload bytes")
        .await
        .unwrap();
    let h = mock.headers.lock().unwrap()[0].clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["x-access-token"], "tok");
    assert!(mock.queries.lock().unwrap()[0].contains("path=%2Fhome%2Fuser%2Ff"));
    let mut s = sb.files().read_stream("/home/user/f").await.unwrap();
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    assert_eq!(all, b"abcd");
    assert_eq!(
        sb.files().read("/missing").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

/// Used on its own, without the layers, the backend still refuses what it cannot hold, before
/// any request: a sandbox is never made more open than its spec asked.
#[tokio::test]
async fn the_backend_alone_refuses_what_it_cannot_hold() {
    let rt = E2bRuntime::builder()
        .api_key("e2b_test")
        .api_url("http://127.0.0.1:9")
        .build()
        .unwrap();
    for spec in [
        SandboxSpec::new().mount(sandkit_core::Mount::parse("/etc:/host-etc").unwrap()),
        SandboxSpec::new().add_host("db", "10.0.0.9".parse().unwrap()),
        SandboxSpec::new().resources(sandkit_core::Resources::new().memory_mb(64)),
    ] {
        let e = rt.create(spec.clone()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{spec:?}: {e}");
        assert!(e.message().contains("Capabilities::"), "{e}");
    }
}
