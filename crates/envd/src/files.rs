//! `/files`: downloads and uploads, by access token or signed URL.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::BTreeMap;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sandkit_core::{ByteStream, EntryKind, ErrorKind};
use sandkit_e2b_protocol::envd::{validate_metadata, WriteInfo, METADATA_HEADER_PREFIX};
use tokio::sync::mpsc;

use crate::auth::{user_of, Auth, FileQuery};
use crate::filesystem::{files_for, resolve};
use crate::wire::plain_error;
use crate::{Served, Shared};

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

/// How much of a file is looked at to judge whether compressing it pays.
const SAMPLE: usize = 64 << 10;
/// Compressed to more than this share of its size, a sample says the file does not compress
/// (archives, images, random data): it goes as it is.
const WORTH: f64 = 0.85;

/// Whether `sample` shrinks enough under gzip's fastest level to be worth compressing.
fn compresses(sample: &[u8]) -> bool {
    use std::io::Write;
    if sample.len() < 512 {
        // Too small to matter either way: as asked.
        return true;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if gz.write_all(sample).is_err() {
        return false;
    }
    gz.finish()
        .is_ok_and(|out| (out.len() as f64) < sample.len() as f64 * WORTH)
}

/// Takes the first [`SAMPLE`] bytes (or all, if less) off `stream`.
async fn sample(stream: &mut ByteStream) -> sandkit_core::Result<Vec<u8>> {
    let mut head = Vec::new();
    while head.len() < SAMPLE {
        match stream.next().await {
            Some(chunk) => head.extend_from_slice(&chunk?),
            None => break,
        }
    }
    Ok(head)
}

/// `GET /files`. Compressed (gzip, fastest level) only where it pays: the client accepts it,
/// is not on this machine (over loopback, compressing costs more time than the bytes it
/// saves), and the file's first 64 KiB shrink under it.
pub(crate) async fn download(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Query(q): Query<FileQuery>,
) -> Response {
    let served = match state
        .resolve(
            &headers,
            Auth::File {
                query: &q,
                op: "read",
            },
        )
        .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    let raw = q.path.clone().unwrap_or_default();
    let user = match user_of(&served, q.username.clone()).await {
        Ok(u) => u,
        Err(e) => return plain_error(StatusCode::UNAUTHORIZED, e.message),
    };
    let path = resolve(&user, &raw);
    let files = match files_for(&served, &user) {
        Ok(f) => f,
        Err(e) => return plain_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let fs = files.get();
    let mut content = match fs.read_stream(&path).await {
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
                ErrorKind::PermissionDenied => plain_error(StatusCode::FORBIDDEN, e.to_string()),
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
    let remote = peer.is_none_or(|p| !p.0 .0.ip().is_loopback());
    let mut gzip = accepts_gzip(&headers) && remote;
    let mut head = Vec::new();
    if gzip {
        head = match sample(&mut content).await {
            Ok(h) => h,
            Err(e) => return plain_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        gzip = compresses(&head);
    }
    let io = futures_util::stream::iter((!head.is_empty()).then(|| Ok(Bytes::from(head))))
        .chain(content)
        .map_err(std::io::Error::other);
    if gzip {
        let reader = tokio_util::io::StreamReader::new(io);
        let gz = async_compression::tokio::bufread::GzipEncoder::with_quality(
            tokio::io::BufReader::new(reader),
            async_compression::Level::Fastest,
        );
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
            sandkit_core::Error::new(ErrorKind::InvalidInput, format!("reading the upload: {e}"))
        })
        .boxed()
}

fn upload_error(e: &sandkit_core::Error, path: &str) -> Response {
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::AlreadyExists => plain_error(
            StatusCode::BAD_REQUEST,
            format!("cannot write '{path}': {}", e.message()),
        ),
        ErrorKind::PermissionDenied => plain_error(StatusCode::FORBIDDEN, e.to_string()),
        _ => plain_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Writes a file as `user`, as envd does: parents made, the file the user's, and replaced
/// whole (a cut upload leaves the old content; a link at the path is replaced, not followed).
///
/// With `metadata`, the file then carries it (replacing any it had); the answer has what the
/// file carries after the write.
async fn write_one(
    served: &Served,
    user: &str,
    path: &str,
    content: ByteStream,
    metadata: &BTreeMap<String, String>,
) -> Result<WriteInfo, Response> {
    let files = files_for(served, user).map_err(|e| upload_error(&e, path))?;
    let fs = files.get();
    match fs.write_stream_with_metadata(path, content, metadata).await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Unsupported && !metadata.is_empty() => {
            return Err(plain_error(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "file metadata is not supported by this sandbox ({}); '{path}' was not \
                     written",
                    e.message()
                ),
            ))
        }
        Err(e) => return Err(upload_error(&e, path)),
    }
    let metadata = fs.stat(path).await.map(|e| e.metadata).unwrap_or_default();
    Ok(WriteInfo {
        path: path.to_string(),
        name: path.rsplit('/').next().unwrap_or_default().to_string(),
        kind: "file".into(),
        metadata,
    })
}

/// The metadata an upload carries in `X-Metadata-<key>` headers: keys lowercased, the first
/// value of each kept, checked as envd checks it.
fn upload_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, Response> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(METADATA_HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() || out.contains_key(key) {
            continue;
        }
        let value = value.to_str().map_err(|_| {
            plain_error(
                StatusCode::BAD_REQUEST,
                format!("invalid metadata: the value of '{key}' is not printable ASCII"),
            )
        })?;
        out.insert(key.to_ascii_lowercase(), value.to_string());
    }
    validate_metadata(&out)
        .map_err(|m| plain_error(StatusCode::BAD_REQUEST, format!("invalid metadata: {m}")))?;
    Ok(out)
}

pub(crate) async fn upload(
    AxState(state): AxState<Shared>,
    Query(q): Query<FileQuery>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let served = match state
        .resolve(
            &headers,
            Auth::File {
                query: &q,
                op: "write",
            },
        )
        .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    let user = match user_of(&served, q.username.clone()).await {
        Ok(u) => u,
        Err(e) => return plain_error(StatusCode::UNAUTHORIZED, e.message),
    };
    let metadata = match upload_metadata(&headers) {
        Ok(m) => m,
        Err(r) => return r,
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
        return match write_one(
            &served,
            &user,
            &path,
            body_stream(&headers, body),
            &metadata,
        )
        .await
        {
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
        let (tx, mut rx) = mpsc::channel::<sandkit_core::Result<Bytes>>(8);
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
                            .send(Err(sandkit_core::Error::new(
                                ErrorKind::InvalidInput,
                                format!("reading the upload: {e}"),
                            )))
                            .await;
                        break;
                    }
                }
            }
        };
        let (_, result) = tokio::join!(feed, write_one(&served, &user, &path, content, &metadata));
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
