//! The process service: `Start` and `Connect` streams, `StreamInput`, and the unary calls
//! on a running process.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sandkit_core::{CommandSpec, Signal};
use sandkit_e2b_protocol::connect::{encode_end_stream, encode_envelope};
use sandkit_e2b_protocol::envd::{
    self, rpc, EndEvent, EventMessage, ListResponse, ProcessRequest, ProcessSelector,
    SendInputRequest, SendSignalRequest, StartRequest, StreamInputRequest, UpdateRequest,
};
use sandkit_e2b_protocol::{encode_message, ConnectError, EnvelopeDecoder};
use tokio::sync::mpsc;
use tracing::debug;

use crate::auth::Auth;
use crate::filesystem::{home, resolve};
use crate::procs::{Entry, Item};
use crate::wire::{
    connect_error_response, deadline, decode, from_core, keepalive_interval, open_stream, reply,
    stream_error, stream_response,
};
use crate::{Served, Shared};

/// A process RPC.
pub(crate) async fn unary(served: &Served, path: &str, body: &[u8]) -> Response {
    match path {
        rpc::LIST => reply(Ok::<_, ConnectError>(ListResponse {
            processes: served
                .processes
                .running()
                .into_iter()
                .map(|e| envd::ProcessInfo {
                    config: e.config.clone(),
                    pid: e.pid,
                    tag: e.tag.clone(),
                })
                .collect(),
        })),
        rpc::SEND_INPUT => reply(
            async {
                let req: SendInputRequest = decode(body)?;
                let entry = find(served, &req.process)?;
                entry
                    .handle
                    .write_stdin(Bytes::copy_from_slice(req.input.bytes()))
                    .await
                    .map_err(|e| {
                        ConnectError::new(
                            "internal",
                            format!("stdin not enabled or closed: {}", e.message()),
                        )
                    })?;
                Ok(envd::Empty {})
            }
            .await,
        ),
        rpc::SEND_SIGNAL => reply(
            async {
                let req: SendSignalRequest = decode(body)?;
                let entry = find(served, &req.process)?;
                let signal = match req.signal {
                    envd::Signal::Kill => Signal::Kill,
                    envd::Signal::Term => Signal::Term,
                    envd::Signal::Unspecified => {
                        return Err(ConnectError::new(
                            "unimplemented",
                            "only SIGKILL and SIGTERM are supported",
                        ))
                    }
                };
                entry
                    .handle
                    .signal(signal)
                    .await
                    .map_err(|e| from_core(&e))?;
                Ok(envd::Empty {})
            }
            .await,
        ),
        rpc::CLOSE_STDIN => reply(
            async {
                let req: ProcessRequest = decode(body)?;
                let entry = find(served, &req.process)?;
                if entry.pty {
                    return Err(ConnectError::new(
                        "failed_precondition",
                        "cannot close stdin of a PTY process",
                    ));
                }
                entry
                    .handle
                    .close_stdin()
                    .await
                    .map_err(|e| from_core(&e))?;
                Ok(envd::Empty {})
            }
            .await,
        ),
        rpc::UPDATE => reply(
            async {
                let req: UpdateRequest = decode(body)?;
                let entry = find(served, &req.process)?;
                if let Some(pty) = req.pty {
                    let (cols, rows) = (
                        pty.size.cols.min(u16::MAX as u32) as u16,
                        pty.size.rows.min(u16::MAX as u32) as u16,
                    );
                    entry
                        .handle
                        .resize(cols, rows)
                        .await
                        .map_err(|e| from_core(&e))?;
                }
                Ok(envd::Empty {})
            }
            .await,
        ),
        p => connect_error_response(&ConnectError::new(
            "unimplemented",
            format!("{p} is not a known method"),
        )),
    }
}

fn find(served: &Served, selector: &ProcessSelector) -> Result<Arc<Entry>, ConnectError> {
    let entry = served.processes.find(selector.pid, selector.tag.as_deref());
    match entry {
        Some(e) if e.ended().is_none() => Ok(e),
        _ => Err(ConnectError::new(
            "not_found",
            match (selector.pid, &selector.tag) {
                (Some(pid), _) => format!("process with pid {pid} not found"),
                (None, Some(tag)) => format!("process with tag {tag} not found"),
                _ => "no process selected".into(),
            },
        )),
    }
}

/// The events a watcher receives, framed: start, data and keepalives, end, end-of-stream.
fn event_stream(
    pid: u32,
    rx: mpsc::Receiver<Item>,
    keepalive: Duration,
    prelude: Option<Item>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let start = encode_message(&EventMessage {
        event: envd::ProcessEvent::Start { pid },
    });
    struct S {
        rx: mpsc::Receiver<Item>,
        prelude: Option<Item>,
        done: bool,
    }
    let body = futures_util::stream::unfold(
        S {
            rx,
            prelude,
            done: false,
        },
        move |mut s| async move {
            if s.done {
                return None;
            }
            let item = match s.prelude.take() {
                Some(i) => Some(i),
                None => match tokio::time::timeout(keepalive, s.rx.recv()).await {
                    Ok(i) => i,
                    Err(_) => {
                        let ka = encode_message(&EventMessage {
                            event: envd::ProcessEvent::Keepalive(envd::Empty {}),
                        });
                        return Some((Ok(ka), s));
                    }
                },
            };
            match item {
                Some(Item::Event(ev)) => {
                    let is_end = matches!(ev, envd::ProcessEvent::End(_));
                    let mut frame = encode_message(&EventMessage { event: ev }).to_vec();
                    if is_end {
                        s.done = true;
                        frame.extend_from_slice(&encode_end_stream(None));
                    }
                    Some((Ok(Bytes::from(frame)), s))
                }
                Some(Item::Fail(e)) => {
                    s.done = true;
                    Some((Ok(encode_end_stream(Some(&e))), s))
                }
                Some(Item::Gone) => {
                    s.done = true;
                    Some((Err(std::io::Error::other("the sandbox is gone")), s))
                }
                None => {
                    s.done = true;
                    Some((
                        Ok(encode_end_stream(Some(&ConnectError::new(
                            "unavailable",
                            "the process stream ended",
                        )))),
                        s,
                    ))
                }
            }
        },
    );
    futures_util::stream::once(async move { Ok(start) })
        .chain(body)
        .boxed()
}

pub(crate) async fn start(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (served, req, user) = match open_stream::<StartRequest>(&state, &headers, body).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let p = &req.process;
    // The SDK's shell lines run through the sandbox's shell (bash, or sh where there is none).
    let mut spec = match p.args.as_slice() {
        [l, c, line] if p.cmd == "/bin/bash" && l == "-l" && c == "-c" => {
            CommandSpec::shell(line.clone())
        }
        args => CommandSpec::program(p.cmd.clone(), args.to_vec()),
    };
    for (k, v) in &p.envs {
        spec = spec.env(k, v);
    }
    spec = spec
        .env("HOME", home(&user))
        .env("USER", &user)
        .env("LOGNAME", &user)
        .user(&user)
        .cwd(resolve(&user, p.cwd.as_deref().unwrap_or("")));
    let pty = req.pty.is_some();
    if let Some(pty) = req.pty {
        spec = spec.pty(
            pty.size.cols.clamp(1, 1000) as u16,
            pty.size.rows.clamp(1, 1000) as u16,
        );
    } else {
        spec = spec.stdin(req.stdin.unwrap_or(true));
    }
    if let Some(tag) = &req.tag {
        spec = spec.tag(tag);
    }
    if let Some(d) = deadline(&headers) {
        spec = spec.timeout(d);
    }
    let mut config = p.clone();
    config.cwd = Some(resolve(&user, p.cwd.as_deref().unwrap_or("")));
    let process = match served.sandbox.spawn(spec).await {
        Ok(p) => p,
        Err(e) => return stream_error(from_core(&e)),
    };
    if process.pid() == 0 {
        // The backend could not start it at all (a missing cwd or user).
        let cwd = config.cwd.clone().unwrap_or_default();
        return stream_error(ConnectError::new(
            "invalid_argument",
            format!("cannot start the process (does cwd '{cwd}' exist, and user '{user}'?)"),
        ));
    }
    debug!(sandbox_id = %served.id(), pid = process.pid(), "process started");
    let pid = process.pid();
    let weak = Arc::downgrade(&served);
    let alive: crate::procs::AliveProbe = Arc::new(move || {
        let weak = weak.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(s) => matches!(
                    s.sandbox.info().await,
                    Ok(i) if i.state == sandkit_core::SandboxState::Running
                ),
                None => false,
            }
        })
    });
    let (_entry, rx) = served
        .processes
        .start(process, config, req.tag.clone(), pty, &user, alive);
    stream_response(
        event_stream(pid, rx, keepalive_interval(&headers), None)
            .take_until(served.streams_ended())
            .boxed(),
    )
}

pub(crate) async fn connect(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (served, req, _) = match open_stream::<ProcessRequest>(&state, &headers, body).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let Some(entry) = served
        .processes
        .find(req.process.pid, req.process.tag.as_deref())
    else {
        let what = match (req.process.pid, &req.process.tag) {
            (Some(pid), _) => format!("process with pid {pid} not found"),
            (_, Some(tag)) => format!("process with tag {tag} not found"),
            _ => "no process selected".into(),
        };
        return stream_error(ConnectError::new("not_found", what));
    };
    // Subscribe first, then look at the end, so an exit in between is not missed.
    let rx = entry.watch();
    let prelude = entry.ended();
    let prelude = match prelude {
        Some(Item::Fail(_) | Item::Gone) => Some(Item::Event(envd::ProcessEvent::End(
            EndEvent::signaled("killed"),
        ))),
        other => other,
    };
    stream_response(
        event_stream(entry.pid, rx, keepalive_interval(&headers), prelude)
            .take_until(served.streams_ended())
            .boxed(),
    )
}

pub(crate) async fn stream_input(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let served = match state.resolve(&headers, Auth::Header).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut decoder = EnvelopeDecoder::default();
    let mut stream = body.into_data_stream();
    let mut entry = None;
    let result: Result<(), ConnectError> = async {
        loop {
            while let Some(env) = decoder
                .next_envelope()
                .map_err(|e| ConnectError::new("invalid_argument", e.0))?
            {
                if env.is_end_stream() {
                    return Ok(());
                }
                match decode::<StreamInputRequest>(&env.payload)? {
                    StreamInputRequest::Start(r) => entry = Some(find(&served, &r.process)?),
                    StreamInputRequest::Data { input } => {
                        let e = entry.as_ref().ok_or_else(|| {
                            ConnectError::new("failed_precondition", "input before start")
                        })?;
                        e.handle
                            .write_stdin(Bytes::copy_from_slice(input.bytes()))
                            .await
                            .map_err(|e| {
                                ConnectError::new(
                                    "internal",
                                    format!("stdin not enabled or closed: {}", e.message()),
                                )
                            })?;
                    }
                    StreamInputRequest::Keepalive(_) => {}
                }
            }
            match stream.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk),
                Some(Err(e)) => return Err(ConnectError::new("canceled", e.to_string())),
                None => return Ok(()),
            }
        }
    }
    .await;
    match result {
        Ok(()) => stream_response(
            futures_util::stream::iter(vec![
                Ok(encode_envelope(0, b"{}")),
                Ok(encode_end_stream(None)),
            ])
            .boxed(),
        ),
        Err(e) => stream_error(e),
    }
}
