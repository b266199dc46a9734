//! Commands: what to run ([`CommandSpec`]), what comes back ([`ProcessEvent`], [`ExecOutput`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What to run: a program with arguments, or a shell line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Run `program` with `args`, no shell involved.
    Program {
        /// The program, found on `PATH` when not a path.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// Run a line with the sandbox's shell: `bash -l -c LINE`, falling back to `sh -c LINE`
    /// where bash is missing.
    Shell(String),
}

/// A pseudo-terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// How to run a command: passed to [`Sandbox::spawn`](crate::Sandbox::spawn).
///
/// ```
/// use std::time::Duration;
/// use sandkit_core::CommandSpec;
///
/// let ls = CommandSpec::program("ls", ["-la", "/tmp"]);
/// let line = CommandSpec::shell("echo $HOME | tr a-z A-Z")
///     .cwd("/tmp")
///     .env("A", "1")
///     .timeout(Duration::from_secs(5));
/// assert_eq!(line.cwd.as_deref(), Some("/tmp"));
/// # let _ = ls;
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandSpec {
    /// What to run.
    pub command: Command,
    /// Working directory; the sandbox's default when `None`.
    pub cwd: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// User to run as; the sandbox's default when `None`.
    pub user: Option<String>,
    /// Deadline. When it passes the process and its children are killed and the call fails
    /// with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout). `None`: no deadline.
    pub timeout: Option<Duration>,
    /// Keep stdin open for [`Process::write_stdin`](crate::Process::write_stdin). When false,
    /// stdin is empty (reads see end of file).
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (stdout and stderr then arrive merged as stdout).
    pub pty: Option<PtySize>,
    /// A free-form tag shown in process lists.
    pub tag: Option<String>,
}

impl CommandSpec {
    /// A program with arguments, run without a shell.
    pub fn program<I, S>(program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::from_command(Command::Program {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        })
    }

    /// A line for the sandbox's shell.
    pub fn shell(line: impl Into<String>) -> Self {
        Self::from_command(Command::Shell(line.into()))
    }

    fn from_command(command: Command) -> Self {
        CommandSpec {
            command,
            cwd: None,
            env: BTreeMap::new(),
            user: None,
            timeout: None,
            stdin: false,
            pty: None,
            tag: None,
        }
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    /// Sets the user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Keeps stdin open for writing.
    pub fn stdin(mut self, open: bool) -> Self {
        self.stdin = open;
        self
    }
    /// Runs on a pseudo-terminal.
    pub fn pty(mut self, cols: u16, rows: u16) -> Self {
        self.pty = Some(PtySize { cols, rows });
        self
    }
    /// Sets the tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// The command as argv: `[program, args..]`, or `["bash", "-l", "-c", line]`.
    ///
    /// Backends that cannot probe for bash use [`CommandSpec::argv_with_fallback`] instead.
    pub fn argv(&self) -> Vec<String> {
        match &self.command {
            Command::Program { program, args } => {
                let mut v = Vec::with_capacity(args.len() + 1);
                v.push(program.clone());
                v.extend(args.iter().cloned());
                v
            }
            Command::Shell(line) => vec!["bash".into(), "-l".into(), "-c".into(), line.clone()],
        }
    }

    /// The command as one POSIX `sh` line that runs the shell line with `bash -l -c` when bash
    /// exists and with `sh -c` otherwise, or the program with its arguments quoted.
    pub fn argv_with_fallback(&self) -> String {
        match &self.command {
            Command::Program { .. } => self
                .argv()
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            Command::Shell(line) => {
                let q = shell_quote(line);
                format!(
                    "if command -v bash >/dev/null 2>&1; then exec bash -l -c {q}; else exec sh -c {q}; fi"
                )
            }
        }
    }
}

impl fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command {
            Command::Shell(line) => f.write_str(line),
            Command::Program { .. } => f.write_str(&self.argv().join(" ")),
        }
    }
}

/// Quotes `s` for a POSIX shell: safe words stay as they are, anything else goes in single
/// quotes.
///
/// ```
/// assert_eq!(sandkit_core::raw::shell_quote("a b'c"), r#"'a b'\''c'"#);
/// assert_eq!(sandkit_core::raw::shell_quote("plain/path-1.txt"), "plain/path-1.txt");
/// assert_eq!(sandkit_core::raw::shell_quote(""), "''");
/// ```
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A signal to send to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Signal {
    /// SIGKILL (9): cannot be caught.
    Kill,
    /// SIGTERM (15): asks politely.
    Term,
    /// SIGINT (2): Ctrl-C.
    Interrupt,
    /// SIGHUP (1).
    Hangup,
    /// SIGTSTP (20): Ctrl-Z, stops the process until it is continued.
    Stop,
}

impl Signal {
    /// The POSIX signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Kill => 9,
            Signal::Term => 15,
            Signal::Interrupt => 2,
            Signal::Hangup => 1,
            Signal::Stop => 20,
        }
    }
    /// The name without `SIG`, as `kill -s` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
            Signal::Interrupt => "INT",
            Signal::Hangup => "HUP",
            Signal::Stop => "TSTP",
        }
    }
}

/// One thing a running process did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Bytes written to stdout (or to the terminal, for PTY commands).
    Stdout(Bytes),
    /// Bytes written to stderr.
    Stderr(Bytes),
    /// The process ended. Always the last event.
    Exited {
        /// The exit code; a process killed by signal N reports `128 + N`, as shells do.
        code: i32,
    },
}

/// A process the sandbox knows about, from [`Sandbox::processes`](crate::Sandbox::processes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// Process id, as [`Process::pid`](crate::Process::pid) gave it.
    pub pid: u32,
    /// The command line.
    pub command: String,
    /// The tag it was started with.
    pub tag: Option<String>,
    /// Its working directory, if known.
    pub cwd: Option<String>,
}

impl ProcessInfo {
    /// A new record; for backends.
    pub fn new(pid: u32, command: impl Into<String>) -> Self {
        ProcessInfo {
            pid,
            command: command.into(),
            tag: None,
            cwd: None,
        }
    }
}

/// Everything a finished command produced: from [`SandboxExt::exec`](crate::SandboxExt::exec).
///
/// A non-zero exit code is data, never an error.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ExecOutput {
    /// Raw stdout bytes (up to the byte limit).
    pub stdout: Vec<u8>,
    /// Raw stderr bytes (up to the byte limit).
    pub stderr: Vec<u8>,
    /// The exit code; `None` when the command did not finish (a timeout).
    pub exit_code: Option<i32>,
    /// Whether output past the byte limit was dropped.
    pub truncated: bool,
}

impl ExecOutput {
    /// Stdout as text; invalid UTF-8 becomes U+FFFD.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as text; invalid UTF-8 becomes U+FFFD.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// Whether the command finished with exit code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

impl fmt::Debug for ExecOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecOutput")
            .field("exit_code", &self.exit_code)
            .field("stdout", &String::from_utf8_lossy(&self.stdout))
            .field("stderr", &String::from_utf8_lossy(&self.stderr))
            .field("truncated", &self.truncated)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_forms() {
        assert_eq!(CommandSpec::program("ls", ["-l"]).argv(), ["ls", "-l"]);
        assert_eq!(
            CommandSpec::shell("echo hi").argv(),
            ["bash", "-l", "-c", "echo hi"]
        );
        let fallback = CommandSpec::shell("echo 'x'").argv_with_fallback();
        assert!(
            fallback.contains(r#"exec bash -l -c 'echo '\''x'\'''"#),
            "{fallback}"
        );
        assert_eq!(
            CommandSpec::program("printf", ["%s\n", "a b"]).argv_with_fallback(),
            "printf '%s\n' 'a b'"
        );
    }

    #[test]
    fn lossy_text() {
        let out = ExecOutput {
            stdout: vec![b'a', 0xff, b'b'],
            ..Default::default()
        };
        assert_eq!(out.stdout_text(), "a\u{fffd}b");
    }
}
