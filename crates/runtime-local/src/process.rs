//! Processes: each in its own process group (a session of its own on a PTY), run as a named
//! user, owned by a task that enforces the deadline whether or not anyone reads the output.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sandkit_core::raw::ProcessControl;
use sandkit_core::{
    Command, CommandSpec, Error, ErrorKind, EventStream, Process, ProcessEvent, ProcessInfo,
    PtySize, Result, Signal,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::users::Ident;

/// Events buffered per process before its output pipes fill (and it waits on them).
const BUFFER: usize = 64;
/// Read chunk size.
const CHUNK: usize = 32 * 1024;
/// How long output is drained after the process ends, for what it wrote last; children it
/// left in the background may hold the pipes open forever.
const DRAIN: Duration = Duration::from_secs(1);

/// The processes of one sandbox that are still running.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    running: Mutex<HashMap<u32, ProcessInfo>>,
}

impl Registry {
    pub(crate) fn list(&self) -> Vec<ProcessInfo> {
        let mut v: Vec<_> = self.running.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// Kills every process group still running (the sandbox is going away).
    pub(crate) fn kill_all(&self) {
        for pid in self.running.lock().unwrap().keys() {
            kill_group(*pid, libc::SIGKILL);
        }
    }
}

/// The environment variable that ties a process to the sandbox whose command started it (or
/// started its ancestor): `SANDKIT_LOCAL_SANDBOX=<sandbox id>`. Killing the sandbox kills every
/// process that carries it, wherever it went (another process group, another session, adopted
/// by init). A process that clears its own environment is not found; the local backend is for
/// trusted code.
pub(crate) const MARK: &str = "SANDKIT_LOCAL_SANDBOX";

/// The most of a process's environment read while looking for [`MARK`].
const MAX_ENVIRON: u64 = 1 << 20;

/// The processes whose environment carries `MARK=id`.
pub(crate) fn marked(id: &str) -> Vec<u32> {
    use std::io::Read;
    let needle = format!("{MARK}={id}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let mut environ = Vec::new();
            std::fs::File::open(format!("/proc/{pid}/environ"))
                .and_then(|f| f.take(MAX_ENVIRON).read_to_end(&mut environ))
                .is_ok_and(|_| {
                    environ
                        .split(|b| *b == 0)
                        .any(|entry| entry == needle.as_bytes())
                })
        })
        .collect()
}

/// Kills every process marked as the sandbox `id`'s, looking again while some are found (one
/// may fork while we look).
pub(crate) fn kill_marked(id: &str) {
    for _ in 0..10 {
        let found = marked(id);
        if found.is_empty() {
            return;
        }
        for pid in found {
            // SAFETY: kill(2) on one process id.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// Default dispositions for every signal, and none blocked. Called between fork and exec
/// (only async-signal-safe calls).
fn reset_signals() {
    // SAFETY: signal(2) and sigprocmask(2) are async-signal-safe; SIGKILL and SIGSTOP cannot
    // be changed, and the call fails harmlessly for them and for numbers past the last.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

fn kill_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) on a negative pid signals that process group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}

/// What a sandbox fixes for every command.
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<String>,
    pub(crate) user: Ident,
}

/// The program and arguments: a shell line runs with `bash -l -c` where bash exists. A program
/// that cannot be run is handed to `sh`, which says why and exits 127 (missing) or 126 (not
/// executable), as on every other backend: exit codes are data.
fn argv(spec: &CommandSpec, path: &str, cwd: &str) -> Vec<String> {
    match &spec.command {
        Command::Program { program, args } if !runnable(program, path, cwd) => {
            let mut v = vec!["sh".into(), "-c".into(), r#"exec "$0" "$@""#.into()];
            v.push(program.clone());
            v.extend(args.iter().cloned());
            v
        }
        Command::Program { .. } => spec.argv(),
        Command::Shell(line) => {
            if has_bash() {
                spec.argv()
            } else {
                vec!["sh".into(), "-c".into(), line.clone()]
            }
        }
    }
}

/// Whether `program` names an executable file, directly or on `path`.
fn runnable(program: &str, path: &str, cwd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return ok(&std::path::Path::new(cwd).join(program));
    }
    !program.is_empty()
        && path
            .split(':')
            .any(|d| ok(&std::path::Path::new(d).join(program)))
}

fn has_bash() -> bool {
    static BASH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BASH.get_or_init(|| {
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
        path.split(':')
            .any(|d| std::path::Path::new(d).join("bash").is_file())
    })
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts `spec` as `user` with the sandbox's defaults.
pub(crate) fn spawn(
    spec: &CommandSpec,
    defaults: &Defaults,
    user: Ident,
    registry: &Arc<Registry>,
) -> Result<Process> {
    let path = spec
        .env
        .get("PATH")
        .cloned()
        .or_else(|| {
            defaults
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
        })
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let cwd = spec
        .cwd
        .clone()
        .or_else(|| defaults.cwd.clone())
        .unwrap_or_else(|| user.home.clone());
    let argv = argv(spec, &path, &cwd);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let switch = !user.is_current();
    if switch {
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    for (k, v) in defaults.env.iter() {
        cmd.env(k, v);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.current_dir(&cwd);

    let pty = match spec.pty {
        Some(size) => Some(open_pty(size)?),
        None => None,
    };
    let (groups, gid, uid) = (user.groups.clone(), user.gid, user.uid);
    let slave_fd = pty.as_ref().map(|(_, s)| s.as_raw_fd());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // What started us may have ignored or blocked signals (a background job of a
            // non-interactive shell ignores SIGINT and SIGQUIT; `nohup` SIGHUP), and both pass
            // through exec: every command starts with default dispositions and an empty mask,
            // so an interrupt stops it.
            reset_signals();
            match slave_fd {
                Some(fd) => {
                    if libc::setsid() == -1 || libc::ioctl(fd, libc::TIOCSCTTY as _, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                None => {
                    if libc::setpgid(0, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            if switch
                && (libc::setgroups(groups.len(), groups.as_ptr()) == -1
                    || libc::setgid(gid) == -1
                    || libc::setuid(uid) == -1)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel(BUFFER);
    let spawned = match pty {
        Some((master, slave)) => {
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
            cmd.stdin(dup(&slave)?)
                .stdout(dup(&slave)?)
                .stderr(dup(&slave)?);
            cmd.env("TERM", "xterm-256color");
            let child = tokio::process::Command::from(cmd).spawn();
            drop(slave);
            let child = child.map_err(|e| spawn_error(e, &argv[0], &cwd))?;
            let reader = std::fs::File::from(master.try_clone()?);
            let out = read_pty(reader, tx.clone());
            // A terminal always takes input: what is typed goes to it.
            let stdin = Some(Stdin::Pty(std::fs::File::from(master.try_clone()?)));
            (child, vec![out], stdin, Some(master))
        }
        None => {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = tokio::process::Command::from(cmd)
                .spawn()
                .map_err(|e| spawn_error(e, &argv[0], &cwd))?;
            let out = read_pipe(child.stdout.take(), tx.clone(), true);
            let err = read_pipe(child.stderr.take(), tx.clone(), false);
            let stdin = child.stdin.take().map(Stdin::Pipe);
            (child, vec![out, err], stdin, None)
        }
    };
    let (child, readers, stdin, master) = spawned;
    let pid = child.id().unwrap_or_default();
    let mut info = ProcessInfo::new(pid, spec.to_string());
    info.tag = spec.tag.clone();
    info.cwd = Some(cwd);
    registry.running.lock().unwrap().insert(pid, info);
    let exited = Arc::new(AtomicBool::new(false));
    tokio::spawn(own(
        child,
        readers,
        tx,
        spec.timeout,
        registry.clone(),
        exited.clone(),
    ));
    let control = Arc::new(Control {
        pgid: pid,
        stdin: tokio::sync::Mutex::new(stdin),
        master,
        exited,
    });
    let events: EventStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (e, rx))
    }));
    Ok(sandkit_core::raw::process(
        pid,
        events,
        control,
        spec.timeout,
    ))
}

fn spawn_error(e: io::Error, program: &str, cwd: &str) -> Error {
    Error::from(e)
        .with_backend("local")
        .with_operation("spawn")
        .with_context("program", program)
        .with_context("cwd", cwd)
}

fn open_pty(size: PtySize) -> Result<(OwnedFd, OwnedFd)> {
    let fail = || {
        Error::from(io::Error::last_os_error())
            .with_backend("local")
            .with_operation("openpty")
    };
    // Both ends are made close-on-exec from the start: a command another thread starts at the
    // same moment must never inherit this terminal.
    // SAFETY: plain system calls; the fds are owned from here.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master == -1 {
            return Err(fail());
        }
        let master = OwnedFd::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) == -1 || libc::unlockpt(master.as_raw_fd()) == -1 {
            return Err(fail());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
            return Err(fail());
        }
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave == -1 {
            return Err(fail());
        }
        let slave = OwnedFd::from_raw_fd(slave);
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) == -1 {
            return Err(fail());
        }
        Ok((master, slave))
    }
}

type Tx = mpsc::Sender<Result<ProcessEvent>>;

/// Reads a pipe to its end. When the reader of the events is gone, output is read and dropped,
/// so the process never blocks on a full pipe.
fn read_pipe(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    tx: Tx,
    stdout: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut pipe) = pipe else { return };
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let b = Bytes::copy_from_slice(&buf[..n]);
                    let ev = if stdout {
                        ProcessEvent::Stdout(b)
                    } else {
                        ProcessEvent::Stderr(b)
                    };
                    let _ = tx.send(Ok(ev)).await;
                }
            }
        }
    })
}

/// Reads a PTY's master on a thread of its own until every copy of the terminal is closed.
fn read_pty(mut master: std::fs::File, tx: Tx) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match master.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let b = Bytes::copy_from_slice(&buf[..n]);
                    let _ = tx.blocking_send(Ok(ProcessEvent::Stdout(b)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: the terminal's last user is gone.
                Err(_) => return,
            }
        }
    })
}

/// Owns a process to its end: enforces its deadline (killing its whole group), drains its
/// output, reports its exit, and takes it off the list.
async fn own(
    mut child: tokio::process::Child,
    readers: Vec<tokio::task::JoinHandle<()>>,
    tx: Tx,
    timeout: Option<Duration>,
    registry: Arc<Registry>,
    exited: Arc<AtomicBool>,
) {
    let pid = child.id().unwrap_or_default();
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (status, timed_out) = tokio::select! {
        status = child.wait() => (status, false),
        () = deadline => {
            kill_group(pid, libc::SIGKILL);
            (child.wait().await, true)
        }
    };
    exited.store(true, Ordering::SeqCst);
    registry.running.lock().unwrap().remove(&pid);
    if timed_out {
        // Whatever it left behind in its group goes too.
        kill_group(pid, libc::SIGKILL);
    }
    let drain = futures_util::future::join_all(readers);
    let _ = tokio::time::timeout(DRAIN, drain).await;
    let end = if timed_out {
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "command did not finish within {:?}; it was killed with its children",
                timeout.unwrap_or_default()
            ),
        )
        .with_backend("local")
        .with_operation("exec")
        .with_context("pid", pid)
        .with_retryable(false))
    } else {
        match status {
            Ok(s) => Ok(ProcessEvent::Exited {
                code: s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1),
            }),
            Err(e) => Err(Error::from(e)
                .with_backend("local")
                .with_operation("wait")
                .with_context("pid", pid)),
        }
    };
    let _ = tx.send(end).await;
}

#[derive(Debug)]
enum Stdin {
    Pipe(tokio::process::ChildStdin),
    Pty(std::fs::File),
}

#[derive(Debug)]
struct Control {
    pgid: u32,
    stdin: tokio::sync::Mutex<Option<Stdin>>,
    master: Option<OwnedFd>,
    exited: Arc<AtomicBool>,
}

fn no_stdin() -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "this process was started without stdin (CommandSpec::stdin(true)), or it was closed",
    )
    .with_backend("local")
    .with_operation("write_stdin")
}

#[async_trait]
impl ProcessControl for Control {
    async fn write_stdin(&self, data: Bytes) -> Result<()> {
        let mut stdin = self.stdin.lock().await;
        let io = match stdin.as_mut() {
            None => return Err(no_stdin()),
            Some(Stdin::Pipe(p)) => p.write_all(&data).await,
            Some(Stdin::Pty(f)) => {
                let mut f = f.try_clone().map_err(Error::from)?;
                tokio::task::spawn_blocking(move || f.write_all(&data))
                    .await
                    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?
            }
        };
        io.map_err(|e| {
            Error::from(e)
                .with_backend("local")
                .with_operation("write_stdin")
        })
    }

    async fn close_stdin(&self) -> Result<()> {
        let mut stdin = self.stdin.lock().await;
        match stdin.take() {
            // On a terminal, end of file is Ctrl-D.
            Some(Stdin::Pty(mut f)) => {
                let _ = f.write_all(&[4]);
            }
            Some(Stdin::Pipe(mut p)) => {
                let _ = p.shutdown().await;
            }
            None => {}
        }
        Ok(())
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        // After the exit the group id may belong to someone else: nothing to signal.
        if !self.exited.load(Ordering::SeqCst) {
            kill_group(self.pgid, signal.number());
        }
        Ok(())
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        let Some(master) = &self.master else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "this process has no terminal (start it with CommandSpec::pty)",
            )
            .with_backend("local")
            .with_operation("resize"));
        };
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on a terminal fd we own.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } == -1 {
            return Err(Error::from(io::Error::last_os_error())
                .with_backend("local")
                .with_operation("resize"));
        }
        Ok(())
    }
}
