//! The exec primitive: start a command in a container and stream what it prints.

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sandkit_core::{ErrorKind, Result};
use tokio::io::AsyncWrite;

use crate::error::{err, map};

/// A started exec: its id, its output frames, and its stdin.
pub(crate) struct Started {
    pub(crate) exec_id: String,
    pub(crate) output: BoxStream<'static, std::result::Result<LogOutput, bollard::errors::Error>>,
    pub(crate) input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// What to run with [`start`].
#[derive(Debug, Default)]
pub(crate) struct ExecRequest {
    pub(crate) cmd: Vec<String>,
    pub(crate) env: Vec<String>,
    pub(crate) user: Option<String>,
    pub(crate) cwd: Option<String>,
    pub(crate) stdin: bool,
    pub(crate) tty: bool,
}

pub(crate) async fn start(
    docker: &Docker,
    container: &str,
    req: ExecRequest,
    op: &'static str,
) -> Result<Started> {
    let options = CreateExecOptions {
        cmd: Some(req.cmd),
        env: (!req.env.is_empty()).then_some(req.env),
        user: req.user,
        working_dir: req.cwd,
        attach_stdin: Some(req.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(req.tty),
        ..Default::default()
    };
    let created = docker
        .create_exec(container, options)
        .await
        .map_err(|e| sandbox_error(e, op))?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: req.tty,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| sandbox_error(e, op))?;
    match started {
        StartExecResults::Attached { output, input } => Ok(Started {
            exec_id: created.id,
            output: output.boxed(),
            input,
        }),
        StartExecResults::Detached => {
            Err(err(ErrorKind::Unexpected, op, "the exec started detached"))
        }
    }
}

/// Maps an engine error on a container call: a 404 or 409 about the container means the
/// sandbox is gone (or paused).
pub(crate) fn sandbox_error(e: bollard::errors::Error, op: &'static str) -> sandkit_core::Error {
    if let bollard::errors::Error::DockerResponseServerError {
        status_code: 409,
        message,
    } = &e
    {
        if message.contains("is paused") {
            return map(e, op, "sandbox").with_retryable(false);
        }
        if message.contains("is not running") {
            return err(
                ErrorKind::NotFound,
                op,
                "the sandbox is not running any more (expired or killed)",
            )
            .with_source(e);
        }
    }
    map(e, op, "sandbox")
}

/// The exit code of a finished exec. The output can end a moment before the engine has the
/// code, so a missing code is asked for again briefly.
pub(crate) async fn exit_code(docker: &Docker, exec_id: &str, op: &'static str) -> Result<i32> {
    for attempt in 0..50 {
        let inspect = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| sandbox_error(e, op))?;
        if inspect.running != Some(true) {
            if let Some(code) = inspect.exit_code {
                return Ok(code as i32);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(if attempt < 10 {
            5
        } else {
            40
        }))
        .await;
    }
    Err(err(
        ErrorKind::Unexpected,
        op,
        "the engine did not report an exit code",
    ))
}

/// Most bytes of a helper's stdout and stderr the host collects.
const MAX_HELPER_STDOUT: usize = 64 << 20;
const MAX_HELPER_STDERR: usize = 64 << 10;

/// Output of a helper command, collected.
#[derive(Debug)]
pub(crate) struct Collected {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) code: i32,
}

impl Collected {
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Runs a helper as root, feeding `stdin` if given, and collects everything it prints.
pub(crate) async fn run_helper(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
    stdin: Option<Bytes>,
    op: &'static str,
) -> Result<Collected> {
    run_helper_as(docker, container, "root", cmd, stdin, op).await
}

/// Runs a helper as `user`, feeding `stdin` if given, and collects everything it prints.
pub(crate) async fn run_helper_as(
    docker: &Docker,
    container: &str,
    user: &str,
    cmd: Vec<String>,
    stdin: Option<Bytes>,
    op: &'static str,
) -> Result<Collected> {
    let mut started = start(
        docker,
        container,
        ExecRequest {
            cmd,
            user: Some(user.into()),
            stdin: stdin.is_some(),
            ..Default::default()
        },
        op,
    )
    .await?;
    if let Some(data) = stdin {
        use tokio::io::AsyncWriteExt;
        started
            .input
            .write_all(&data)
            .await
            .map_err(|e| sandkit_core::Error::from(e).with_operation(op))?;
        started
            .input
            .shutdown()
            .await
            .map_err(|e| sandkit_core::Error::from(e).with_operation(op))?;
    }
    let mut out = Collected {
        stdout: Vec::new(),
        stderr: Vec::new(),
        code: 0,
    };
    while let Some(frame) = started.output.next().await {
        match frame.map_err(|e| sandbox_error(e, op))? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                out.stdout.extend_from_slice(&message)
            }
            LogOutput::StdErr { message } => out.stderr.extend_from_slice(&message),
            LogOutput::StdIn { .. } => {}
        }
        // The helper runs the sandbox's own programs, which root in it can replace: what it
        // prints is bounded before it is trusted.
        if out.stdout.len() > MAX_HELPER_STDOUT || out.stderr.len() > MAX_HELPER_STDERR {
            return Err(err(
                ErrorKind::Unexpected,
                op,
                "a helper in the sandbox printed more than a helper may; stopped reading it",
            ));
        }
    }
    out.code = exit_code(docker, &started.exec_id, op).await?;
    Ok(out)
}

/// A helper shell script with positional arguments: `sh -c SCRIPT sandkit ARGS...`.
pub(crate) fn script(script: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        script.into(),
        "sandkit".into(),
    ];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}
