//! Commands in a container: [`spawn`] and the [`ProcessControl`] behind its handle.
//!
//! Docker cannot signal an exec'd process itself, so every command runs under a tiny
//! `sh` wrapper that prints its pid first (the exec is a session and process-group leader),
//! records itself under `/.sandkit/procs`, then `exec`s the command. A second exec can then
//! signal the whole group with `kill -- -PID`.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use sandkit_core::raw::ProcessControl;
use sandkit_core::{
    Command, CommandSpec, ErrorKind, EventStream, Process, ProcessEvent, ProcessInfo, Result,
    Signal,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::error::err;
use crate::exec::{exit_code, run_helper, sandbox_error, script, start, ExecRequest};

/// Prints the pid, records the process, then runs the command.
/// Arguments: tag, display command, then `shell LINE` or `prog PROGRAM ARGS...`.
const WRAPPER: &str = r#"printf '%s\n' "$$"
{ printf '%s\n%s\n' "$1" "$2" > "/.sandkit/procs/$$"; } 2>/dev/null
shift 2
if [ "$1" = shell ]; then
  if command -v bash >/dev/null 2>&1; then exec bash -l -c "$2"; else exec sh -c "$2"; fi
fi
shift
exec "$@""#;

/// Signals a process group, falling back to the process alone; a process that is gone is fine.
const SIGNAL: &str =
    r#"kill -s "$1" -- "-$2" 2>/dev/null || kill -s "$1" "$2" 2>/dev/null; exit 0"#;

/// Lists recorded processes that still run: `pid NUL tag LF command LF NUL cwd NUL`. The
/// records are world-writable: at most 8 KiB of each is read, with no NUL to shift the fields.
const LIST: &str = r#"cd /.sandkit/procs 2>/dev/null || exit 0
for p in *; do
  [ -f "$p" ] || continue
  if [ -d "/proc/$p" ]; then
    printf '%s\0' "$p"; head -c 8192 "$p" | tr -d '\000'; printf '\0%s\0' "$(readlink "/proc/$p/cwd" 2>/dev/null)"
  else
    rm -f "$p"
  fi
done"#;

/// Refuses a user the engine would misread: `name`, `uid`, `name:group` or `uid:gid`, each
/// part letters, digits, `_`, `-` and `.`, not starting with `.` or `-`.
pub(crate) fn check_user(user: &str) -> Result<()> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && !p.starts_with(['.', '-'])
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let mut parts = user.splitn(2, ':');
    let ok = parts.next().is_some_and(part_ok) && parts.next().is_none_or(part_ok);
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorKind::InvalidInput,
            "spawn",
            format!("invalid user '{user}': use a user name or uid from the image, as NAME, UID, NAME:GROUP or UID:GID"),
        ))
    }
}

/// Starts `spec` in `container`.
pub(crate) async fn spawn(
    docker: &Docker,
    container: &str,
    default_user: Option<&str>,
    spec: CommandSpec,
) -> Result<Process> {
    let display = spec.to_string();
    let mut cmd = script(WRAPPER, &[spec.tag.as_deref().unwrap_or(""), &display]);
    match &spec.command {
        Command::Shell(line) => cmd.extend(["shell".to_string(), line.clone()]),
        Command::Program { program, args } => {
            cmd.extend(["prog".to_string(), program.clone()]);
            cmd.extend(args.iter().cloned());
        }
    }
    let user = spec.user.clone().or_else(|| default_user.map(String::from));
    if let Some(u) = &user {
        check_user(u)?;
    }
    let tty = spec.pty.is_some();
    let req = ExecRequest {
        cmd,
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        user,
        cwd: spec.cwd.clone(),
        stdin: spec.stdin || tty,
        tty,
    };
    let mut started = start(docker, container, req, "spawn").await?;
    if let Some(size) = spec.pty {
        // Best effort: the terminal works at the default size if this fails.
        let _ = docker
            .resize_exec(
                &started.exec_id,
                bollard::exec::ResizeExecOptions {
                    width: size.cols,
                    height: size.rows,
                },
            )
            .await;
    }

    // Read up to the pid line.
    let mut head = Vec::new();
    let mut early_stderr = Vec::new();
    let pid = loop {
        if let Some(nl) = head.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = head.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line);
            match text.trim().parse::<u32>() {
                Ok(pid) => break Some(pid),
                Err(_) => {
                    return Err(err(
                        ErrorKind::Unexpected,
                        "spawn",
                        format!("the command wrapper printed {text:?} instead of its pid"),
                    ))
                }
            }
        }
        match started.output.next().await {
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                head.extend_from_slice(&message)
            }
            Some(Ok(LogOutput::StdErr { message })) => early_stderr.extend_from_slice(&message),
            Some(Ok(LogOutput::StdIn { .. })) => {}
            Some(Err(e)) => return Err(sandbox_error(e, "spawn")),
            // The engine could not start it (a missing working directory, a missing user).
            None => break None,
        }
    };

    let control = Arc::new(DockerProcess {
        docker: docker.clone(),
        exec_id: started.exec_id.clone(),
        container: container.to_string(),
        pid: pid.unwrap_or(0),
        input: Mutex::new(Some(started.input)),
        stdin_open: spec.stdin || tty,
    });
    let mut first = Vec::new();
    if !early_stderr.is_empty() {
        first.push(Ok(ProcessEvent::Stderr(Bytes::from(early_stderr))));
    }
    if !head.is_empty() {
        first.push(Ok(ProcessEvent::Stdout(Bytes::from(head))));
    }
    let docker = docker.clone();
    let exec_id = started.exec_id.clone();
    let rest = started.output.map(|frame| match frame {
        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
            Some(Ok(ProcessEvent::Stdout(message)))
        }
        Ok(LogOutput::StdErr { message }) => Some(Ok(ProcessEvent::Stderr(message))),
        Ok(LogOutput::StdIn { .. }) => None,
        Err(e) => Some(Err(sandbox_error(e, "spawn"))),
    });
    let exited = futures_util::stream::once(async move {
        exit_code(&docker, &exec_id, "spawn")
            .await
            .map(|code| ProcessEvent::Exited { code })
    });
    let events: EventStream = futures_util::stream::iter(first)
        .chain(rest.filter_map(|e| async move { e }))
        .chain(exited)
        .boxed();
    Ok(sandkit_core::raw::process(
        pid.unwrap_or(0),
        events,
        control,
        spec.timeout,
    ))
}

/// Lists the processes started through this backend that still run.
pub(crate) async fn list(docker: &Docker, container: &str) -> Result<Vec<ProcessInfo>> {
    let out = run_helper(docker, container, script(LIST, &[]), None, "processes").await?;
    let mut fields = out.stdout.split(|&b| b == 0);
    let mut list = Vec::new();
    while let (Some(pid), Some(body), Some(cwd)) = (fields.next(), fields.next(), fields.next()) {
        let Ok(pid) = String::from_utf8_lossy(pid).parse::<u32>() else {
            continue;
        };
        let body = String::from_utf8_lossy(body);
        let (tag, command) = body.split_once('\n').unwrap_or(("", &body));
        let mut info = ProcessInfo::new(pid, command.trim_end_matches('\n'));
        info.tag = (!tag.is_empty()).then(|| tag.to_string());
        let cwd = String::from_utf8_lossy(cwd);
        info.cwd = (!cwd.is_empty()).then(|| cwd.into_owned());
        list.push(info);
    }
    list.sort_by_key(|p| p.pid);
    Ok(list)
}

/// Signals a process group by pid.
pub(crate) async fn signal(
    docker: &Docker,
    container: &str,
    pid: u32,
    signal: Signal,
) -> Result<()> {
    if pid == 0 {
        return Ok(());
    }
    let pid = pid.to_string();
    run_helper(
        docker,
        container,
        script(SIGNAL, &[signal.name(), &pid]),
        None,
        "signal",
    )
    .await?;
    Ok(())
}

struct DockerProcess {
    docker: Docker,
    exec_id: String,
    container: String,
    pid: u32,
    input: Mutex<Option<Pin<Box<dyn AsyncWrite + Send>>>>,
    stdin_open: bool,
}

impl std::fmt::Debug for DockerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerProcess")
            .field("container", &self.container)
            .field("pid", &self.pid)
            .finish()
    }
}

#[async_trait]
impl ProcessControl for DockerProcess {
    async fn write_stdin(&self, data: Bytes) -> Result<()> {
        if !self.stdin_open {
            return Err(err(
                ErrorKind::InvalidInput,
                "write_stdin",
                "the command was started without stdin; set CommandSpec::stdin(true)",
            ));
        }
        let mut input = self.input.lock().await;
        let Some(w) = input.as_mut() else {
            return Err(err(
                ErrorKind::InvalidInput,
                "write_stdin",
                "stdin is already closed",
            ));
        };
        w.write_all(&data).await?;
        w.flush().await?;
        Ok(())
    }

    async fn close_stdin(&self) -> Result<()> {
        if let Some(mut w) = self.input.lock().await.take() {
            w.shutdown().await?;
        }
        Ok(())
    }

    async fn signal(&self, sig: Signal) -> Result<()> {
        signal(&self.docker, &self.container, self.pid, sig).await
    }

    async fn resize(&self, size: sandkit_core::PtySize) -> Result<()> {
        self.docker
            .resize_exec(
                &self.exec_id,
                bollard::exec::ResizeExecOptions {
                    width: size.cols,
                    height: size.rows,
                },
            )
            .await
            .map_err(|e| sandbox_error(e, "resize"))
    }
}

#[cfg(test)]
mod user_tests {
    #[test]
    fn user_names() {
        for ok in [
            "root",
            "user",
            "1000",
            "1000:1000",
            "www-data",
            "a.b",
            "user:staff",
        ] {
            assert!(super::check_user(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "..", "../root", "-u", "a:b:c", "a b", "user:", ":g",
        ] {
            assert!(super::check_user(bad).is_err(), "{bad:?}");
        }
    }
}
