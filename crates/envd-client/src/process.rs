//! Commands through envd's process service.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sandkit_core::raw::ProcessControl;
use sandkit_core::{
    Command, CommandSpec, ErrorKind, EventStream, Process, ProcessEvent, ProcessInfo, Result,
    Signal,
};
use sandkit_e2b_protocol::envd::{
    self, rpc, DataEvent, EndEvent, EventMessage, ListResponse, ProcessConfig, ProcessInput,
    ProcessRequest, ProcessSelector, Pty, PtySize, SendInputRequest, SendSignalRequest,
    StartRequest,
};

use crate::envd::Envd;
use crate::error::err;

/// The request envd gets for a command, as the SDK builds it: shell lines run with
/// `/bin/bash -l -c`.
pub(crate) fn start_request(spec: &CommandSpec, default_cwd: Option<&str>) -> StartRequest {
    let (cmd, args) = match &spec.command {
        Command::Shell(line) => (
            "/bin/bash".to_string(),
            vec!["-l".into(), "-c".into(), line.clone()],
        ),
        Command::Program { program, args } => (program.clone(), args.clone()),
    };
    StartRequest {
        process: ProcessConfig {
            cmd,
            args,
            envs: spec.env.clone(),
            cwd: spec.cwd.clone().or_else(|| default_cwd.map(String::from)),
        },
        pty: spec.pty.map(|p| Pty {
            size: PtySize {
                cols: p.cols.into(),
                rows: p.rows.into(),
            },
        }),
        tag: spec.tag.clone(),
        stdin: if spec.pty.is_some() {
            None
        } else {
            Some(spec.stdin)
        },
    }
}

/// An end event as a shell exit code: a signal `N` is `128 + N`.
pub(crate) fn exit_code(end: &EndEvent) -> i32 {
    if end.exited || end.exit_code >= 0 && !end.status.starts_with("signal") {
        return end.exit_code;
    }
    let name = end.status.trim_start_matches("signal: ");
    128 + match name {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "killed" => 9,
        "terminated" => 15,
        _ => 9,
    }
}

/// Starts a command and waits for its start event.
pub(crate) async fn spawn(
    envd: &Envd,
    spec: CommandSpec,
    user: Option<&str>,
    default_cwd: Option<&str>,
) -> Result<Process> {
    let request = start_request(&spec, default_cwd);
    let user = spec.user.as_deref().or(user);
    let mut stream = envd
        .server_stream::<_, EventMessage>(rpc::START, &request, user, spec.timeout, "spawn")
        .await?;
    let pid = match stream.next().await {
        Some(Ok(EventMessage {
            event: envd::ProcessEvent::Start { pid },
        })) => pid,
        Some(Ok(other)) => {
            return Err(err(
                ErrorKind::Unexpected,
                "spawn",
                format!("expected the start event first, got {other:?}"),
            ))
        }
        Some(Err(e)) => return Err(e),
        None => {
            return Err(err(
                ErrorKind::Unexpected,
                "spawn",
                "the stream ended before the start event",
            ))
        }
    };
    let control = Arc::new(E2bProcess {
        envd: envd.clone(),
        pid,
        pty: spec.pty.is_some(),
        user: user.map(String::from),
    });
    let events: EventStream = futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        loop {
            let event = match stream.next().await {
                Some(Ok(EventMessage { event })) => event,
                Some(Err(e)) if e.kind() == ErrorKind::Unavailable => {
                    let e = err(
                        ErrorKind::Unavailable,
                        "spawn",
                        format!("the command ended without an end event: {e}"),
                    );
                    return Some((Err(e), None));
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    let e = err(
                        ErrorKind::Unavailable,
                        "spawn",
                        "the command ended without an end event",
                    );
                    return Some((Err(e), None));
                }
            };
            let item = match event {
                envd::ProcessEvent::Data(DataEvent::Stdout(b) | DataEvent::Pty(b)) => {
                    ProcessEvent::Stdout(Bytes::from(b))
                }
                envd::ProcessEvent::Data(DataEvent::Stderr(b)) => {
                    ProcessEvent::Stderr(Bytes::from(b))
                }
                envd::ProcessEvent::End(end) => {
                    // Read the end-of-stream message too, so the connection can be reused.
                    while stream.next().await.is_some() {}
                    return Some((
                        Ok(ProcessEvent::Exited {
                            code: exit_code(&end),
                        }),
                        None,
                    ));
                }
                envd::ProcessEvent::Start { .. } | envd::ProcessEvent::Keepalive(_) => continue,
            };
            return Some((Ok(item), Some(stream)));
        }
    })
    .boxed();
    Ok(sandkit_core::raw::process(
        pid,
        events,
        control,
        spec.timeout,
    ))
}

/// Lists the running processes.
pub(crate) async fn list(envd: &Envd) -> Result<Vec<ProcessInfo>> {
    let list: ListResponse = envd
        .unary(rpc::LIST, &serde_json::json!({}), None, "processes")
        .await?;
    Ok(list
        .processes
        .into_iter()
        .map(|p| {
            let mut command = vec![p.config.cmd.clone()];
            command.extend(p.config.args.iter().cloned());
            let mut info = ProcessInfo::new(p.pid, command.join(" "));
            info.tag = p.tag;
            info.cwd = p.config.cwd;
            info
        })
        .collect())
}

#[derive(Debug)]
struct E2bProcess {
    envd: Envd,
    pid: u32,
    pty: bool,
    user: Option<String>,
}

#[async_trait]
impl ProcessControl for E2bProcess {
    async fn write_stdin(&self, data: Bytes) -> Result<()> {
        let input = if self.pty {
            ProcessInput::Pty(data.to_vec())
        } else {
            ProcessInput::Stdin(data.to_vec())
        };
        let req = SendInputRequest {
            process: ProcessSelector::pid(self.pid),
            input,
        };
        let _: envd::Empty = self
            .envd
            .unary(rpc::SEND_INPUT, &req, None, "write_stdin")
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::Unexpected {
                    err(
                        ErrorKind::InvalidInput,
                        "write_stdin",
                        format!("stdin is not open: {e}"),
                    )
                } else {
                    e
                }
            })?;
        Ok(())
    }

    async fn close_stdin(&self) -> Result<()> {
        let req = ProcessRequest {
            process: ProcessSelector::pid(self.pid),
        };
        let _: envd::Empty = self
            .envd
            .unary(rpc::CLOSE_STDIN, &req, None, "close_stdin")
            .await?;
        Ok(())
    }

    async fn resize(&self, size: sandkit_core::PtySize) -> Result<()> {
        let req = sandkit_e2b_protocol::envd::UpdateRequest {
            process: ProcessSelector::pid(self.pid),
            pty: Some(Pty {
                size: PtySize {
                    cols: size.cols.into(),
                    rows: size.rows.into(),
                },
            }),
        };
        let _: envd::Empty = self.envd.unary(rpc::UPDATE, &req, None, "resize").await?;
        Ok(())
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        let wire = match signal {
            Signal::Kill => Some(envd::Signal::Kill),
            Signal::Term => Some(envd::Signal::Term),
            _ => None,
        };
        match wire {
            Some(s) => {
                let req = SendSignalRequest {
                    process: ProcessSelector::pid(self.pid),
                    signal: s,
                };
                match self
                    .envd
                    .unary::<_, envd::Empty>(rpc::SEND_SIGNAL, &req, None, "signal")
                    .await
                {
                    Ok(_) => Ok(()),
                    // Already gone is fine.
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            }
            None => {
                // envd sends only KILL and TERM; other signals go through `kill`.
                let line = format!(
                    "kill -s {sig} -- -{pid} 2>/dev/null || kill -s {sig} {pid} 2>/dev/null; true",
                    sig = signal.name(),
                    pid = self.pid
                );
                let spec = CommandSpec::shell(line).timeout(std::time::Duration::from_secs(30));
                let mut p = spawn(&self.envd, spec, self.user.as_deref(), None).await?;
                while let Some(ev) = p.next_event().await {
                    ev?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_run_like_the_sdk() {
        let r = start_request(
            &CommandSpec::shell("echo hi").cwd("/tmp").env("X", "y"),
            None,
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"X":"y"},"cwd":"/tmp"},"stdin":false}"#
        );
    }

    #[test]
    fn signals_become_shell_codes() {
        assert_eq!(exit_code(&EndEvent::exited(3)), 3);
        assert_eq!(exit_code(&EndEvent::signaled("killed")), 137);
        assert_eq!(exit_code(&EndEvent::signaled("terminated")), 143);
    }
}
