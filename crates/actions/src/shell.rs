//! The agent's shell: cwd and exported variables persist between commands, long commands
//! return at a timeout and keep running, input and control keys reach a running command.
//!
//! Each command runs in a fresh shell process that first restores the state the previous
//! command saved (exported variables and cwd, in a file in the sandbox) and saves it again
//! when it finishes. So `set -e`, `set -u`, `exit` or a killed shell cannot wedge the session:
//! the next command starts a new shell from the last saved state, and says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandkit_core::{CommandSpec, ProcessEvent, ProcessHandle, Result, Sandbox, Signal};
use tokio::sync::Notify;

use crate::editor::truncate_middle;

/// Command output kept in memory: beyond this the middle is dropped (the agent sees at most
/// [`ShellOptions::max_output_chars`] anyway).
const KEEP_BYTES: usize = 4 << 20;
/// The marker the wrapper prints on stderr after saving the state.
const STATE_MARKER: &[u8] = b"\x1eSANDKIT_STATE ";

/// Timeouts and limits of the shell (OpenHands' defaults).
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// A command that prints nothing new for this long returns (unless blocking). Default 10 s.
    pub no_output_timeout: Duration,
    /// A command returns after this long even while printing. Default 120 s (`sandbox.timeout`).
    pub hard_timeout: Duration,
    /// Output longer than this many characters is cut in the middle. Default 30 000.
    pub max_output_chars: usize,
}

impl Default for ShellOptions {
    fn default() -> Self {
        ShellOptions {
            no_output_timeout: Duration::from_secs(10),
            hard_timeout: Duration::from_secs(120),
            max_output_chars: 30_000,
        }
    }
}

impl ShellOptions {
    /// OpenHands' defaults: 10 s without output, 120 s in all, 30 000 characters.
    pub fn new() -> Self {
        Self::default()
    }
    /// How long a command may print nothing new before the call returns.
    pub fn no_output_timeout(mut self, timeout: Duration) -> Self {
        self.no_output_timeout = timeout;
        self
    }
    /// How long a call may take in all.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = timeout;
        self
    }
    /// Output longer than this many characters is cut in the middle.
    pub fn max_output_chars(mut self, chars: usize) -> Self {
        self.max_output_chars = chars;
        self
    }
}

/// How a command is to be run.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The command; empty means "show more output of the running command".
    pub command: String,
    /// Send `command` as input (or `C-c`, `C-d`, `C-z`) to the running command.
    pub is_input: bool,
    /// No no-output timeout: wait for the command (up to the hard timeout).
    pub blocking: bool,
    /// Hard timeout for this command, instead of the session's.
    pub timeout: Option<Duration>,
}

/// What a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunResult {
    /// The new output (stdout and stderr as they came), cut in the middle when long.
    pub output: String,
    /// The new output on stdout alone, cut in the middle when long.
    pub stdout: String,
    /// The new output on stderr alone, cut in the middle when long.
    pub stderr: String,
    /// The exit code, or -1 when the command is still running.
    pub exit_code: i32,
    /// The shell's working directory after the command.
    pub cwd: String,
    /// Said before the output (a continuation, a restarted shell).
    pub prefix: String,
    /// Said after the output (how it ended, or how to go on).
    pub suffix: String,
}

const CONTINUE: &str = "You may wait longer to see additional output by sending empty command '', send other commands to interact with the current process, send keys (\"C-c\", \"C-z\", \"C-d\") to interrupt/kill the previous command before sending your new command, or use the timeout parameter in execute_bash for future commands.";

/// Output kept up to [`KEEP_BYTES`]: past it, the ends are kept and the middle dropped.
#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
}

impl Kept {
    fn push(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
        if self.bytes.len() > KEEP_BYTES {
            // Keep the ends; the middle is what truncation drops anyway.
            let cut = self.bytes.len() - KEEP_BYTES / 2;
            let tail = self.bytes.split_off(cut);
            self.bytes.truncate(KEEP_BYTES / 4);
            self.bytes
                .extend_from_slice(b"\n[... output dropped ...]\n");
            self.bytes.extend_from_slice(&tail);
        }
    }

    /// Everything not read yet (what was read is gone, so truncation only ever drops output
    /// nobody has seen).
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// Like [`Kept::take`], but the shell's state line and what follows it stay for the
    /// command's last collection (a collection while the command ends must not swallow it).
    fn take_before_state(&mut self) -> Vec<u8> {
        match find_last(&self.bytes, STATE_MARKER) {
            Some(at) => {
                let rest = self.bytes.split_off(at);
                std::mem::replace(&mut self.bytes, rest)
            }
            None => self.take(),
        }
    }
}

#[derive(Default)]
struct Output {
    /// Both streams as they came.
    all: Kept,
    stdout: Kept,
    stderr: Kept,
    exited: Option<i32>,
    last_output: Option<Instant>,
}

struct Running {
    command: String,
    handle: ProcessHandle,
    output: Arc<Mutex<Output>>,
    notify: Arc<Notify>,
    interrupted: bool,
}

/// The persistent shell of one session.
pub(crate) struct Shell {
    state_file: String,
    cwd: String,
    running: Option<Running>,
    restarted: bool,
    pub(crate) options: ShellOptions,
}

enum Ended {
    Exited,
    NoOutput,
    Hard(Duration),
}

impl Shell {
    pub(crate) fn new(session_id: &str, options: ShellOptions) -> Self {
        let safe: String = session_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Shell {
            state_file: format!("/tmp/.sandkit-shell-{safe}.env"),
            cwd: String::new(),
            running: None,
            restarted: false,
            options,
        }
    }

    /// The state file in the sandbox (`export` lines and a `cd`).
    pub(crate) fn state_file(&self) -> &str {
        &self.state_file
    }

    /// The working directory after the last finished command.
    pub(crate) fn cwd(&self) -> &str {
        &self.cwd
    }

    /// Whether a command is still running.
    pub(crate) fn busy(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.output.lock().unwrap().exited.is_none())
    }

    fn script(&self, command: &str) -> String {
        let state = sandkit_core::raw::shell_quote(&self.state_file);
        format!(
            "__sandkit_state={state}\n\
             if [ -f \"$__sandkit_state\" ]; then . \"$__sandkit_state\"; fi\n\
             {command}\n\
             __sandkit_rc=$?\n\
             {{ export -p; printf \"cd '%s'\\n\" \"$(pwd | sed \"s/'/'\\\\\\\\''/g\")\"; }} > \"$__sandkit_state.$$\" 2>/dev/null && mv -f \"$__sandkit_state.$$\" \"$__sandkit_state\"\n\
             printf '\\036SANDKIT_STATE %s %s\\n' \"$__sandkit_rc\" \"$(pwd)\" >&2\n\
             exit $__sandkit_rc\n"
        )
    }

    /// Runs a command, or talks to the running one.
    pub(crate) async fn run(
        &mut self,
        sandbox: &dyn Sandbox,
        req: RunRequest,
    ) -> Result<RunResult> {
        let command = req.command.trim().to_string();
        let hard = req.timeout.unwrap_or(self.options.hard_timeout);
        if self.running.is_some() {
            let finished = !self.busy();
            if finished && command.is_empty() && !req.is_input {
                return Ok(self.collect(
                    Ended::Exited,
                    "[Below is the output of the previous command.]\n".into(),
                ));
            }
            if finished {
                // Its end was already reported or is reported now, before the next command.
                let _ = self.collect(Ended::Exited, String::new());
            }
        }
        if self.busy() {
            let prefix = "[Below is the output of the previous command.]\n".to_string();
            if req.is_input {
                self.send_input(&command).await?;
            } else if !command.is_empty() {
                let mut r = self.collect_now(prefix);
                r.suffix = format!(
                    "\n[Your command \"{command}\" is NOT executed. The previous command is still running - You CANNOT send new commands until the previous command is completed. By setting `is_input` to `true`, you can interact with the current process: {CONTINUE}]"
                );
                return Ok(r);
            }
            let ended = self.wait(req.blocking, hard).await;
            return Ok(self.collect(ended, prefix));
        }
        if command.is_empty() {
            return Ok(self.message("ERROR: No previous running command to retrieve logs from."));
        }
        if req.is_input {
            return Ok(self.message("ERROR: No previous running command to interact with."));
        }
        self.start(sandbox, &command).await?;
        let ended = self.wait(req.blocking, hard).await;
        Ok(self.collect(ended, String::new()))
    }

    fn message(&self, text: &str) -> RunResult {
        RunResult {
            output: text.to_string(),
            exit_code: -1,
            cwd: self.cwd.clone(),
            ..Default::default()
        }
    }

    async fn start(&mut self, sandbox: &dyn Sandbox, command: &str) -> Result<()> {
        let spec = CommandSpec::shell(self.script(command))
            .stdin(true)
            .tag("sandkit-shell");
        let mut process = sandbox.spawn(spec).await?;
        let output = Arc::new(Mutex::new(Output::default()));
        let notify = Arc::new(Notify::new());
        let handle = process.handle();
        let (out, n) = (output.clone(), notify.clone());
        tokio::spawn(async move {
            while let Some(event) = process.next_event().await {
                let mut o = out.lock().unwrap();
                match event {
                    Ok(ProcessEvent::Stdout(b)) => {
                        o.all.push(&b);
                        o.stdout.push(&b);
                        o.last_output = Some(Instant::now());
                    }
                    Ok(ProcessEvent::Stderr(b)) => {
                        o.all.push(&b);
                        o.stderr.push(&b);
                        o.last_output = Some(Instant::now());
                    }
                    Ok(ProcessEvent::Exited { code }) => o.exited = Some(code),
                    Err(e) => {
                        let note = format!("\n[sandkit: {e}]\n");
                        o.all.push(note.as_bytes());
                        o.stderr.push(note.as_bytes());
                        o.exited = Some(-1);
                    }
                }
                drop(o);
                n.notify_waiters();
            }
            let mut o = out.lock().unwrap();
            if o.exited.is_none() {
                o.exited = Some(-1);
            }
            drop(o);
            n.notify_waiters();
        });
        self.running = Some(Running {
            command: command.to_string(),
            handle,
            output,
            notify,
            interrupted: false,
        });
        Ok(())
    }

    async fn send_input(&mut self, text: &str) -> Result<()> {
        let r = self.running.as_mut().expect("busy");
        match text {
            "C-c" => {
                r.interrupted = true;
                r.handle.signal(Signal::Interrupt).await
            }
            "C-d" => r.handle.close_stdin().await,
            "C-z" => r.handle.signal(Signal::Stop).await,
            _ => r.handle.write_stdin(format!("{text}\n")).await,
        }
    }

    async fn wait(&mut self, blocking: bool, hard: Duration) -> Ended {
        let r = self.running.as_ref().expect("running");
        let started = Instant::now();
        loop {
            let notified = r.notify.notified();
            {
                let o = r.output.lock().unwrap();
                if o.exited.is_some() {
                    return Ended::Exited;
                }
                let quiet_since = o.last_output.map_or(started, |t| t.max(started));
                if !blocking && quiet_since.elapsed() >= self.options.no_output_timeout {
                    return Ended::NoOutput;
                }
            }
            if started.elapsed() >= hard {
                return Ended::Hard(hard);
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// The new output so far, without waiting.
    fn collect_now(&mut self, prefix: String) -> RunResult {
        let limit = self.options.max_output_chars;
        let r = self.running.as_mut().expect("running");
        let mut o = r.output.lock().unwrap();
        let text = |b: Vec<u8>| truncate_middle(&String::from_utf8_lossy(&b), limit);
        let result = RunResult {
            output: text(o.all.take_before_state()),
            stdout: text(o.stdout.take_before_state()),
            stderr: text(o.stderr.take_before_state()),
            exit_code: -1,
            cwd: self.cwd.clone(),
            prefix,
            suffix: String::new(),
        };
        drop(o);
        result
    }

    fn collect(&mut self, ended: Ended, mut prefix: String) -> RunResult {
        let limit = self.options.max_output_chars;
        let Some(r) = self.running.as_mut() else {
            return self.message("ERROR: No previous running command to retrieve logs from.");
        };
        let mut o = r.output.lock().unwrap();
        let exited = o.exited;
        // Only the command's last collection takes its state line.
        let (mut new, mut stdout, mut stderr) = if matches!(ended, Ended::Exited) {
            (o.all.take(), o.stdout.take(), o.stderr.take())
        } else {
            (
                o.all.take_before_state(),
                o.stdout.take_before_state(),
                o.stderr.take_before_state(),
            )
        };
        drop(o);
        let text_of = |b: &[u8], limit: usize| truncate_middle(&String::from_utf8_lossy(b), limit);
        match ended {
            Ended::Exited => {
                let code = exited.unwrap_or(-1);
                // The wrapper's last words: its exit code and cwd, on a line of their own.
                let saved = match find_last(&new, STATE_MARKER) {
                    Some(at) => {
                        let line_end = new[at..]
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(new.len(), |p| at + p + 1);
                        let line = String::from_utf8_lossy(&new[at + STATE_MARKER.len()..line_end])
                            .trim_end()
                            .to_string();
                        new.drain(at..line_end);
                        line.split_once(' ').map(|(_, cwd)| cwd.to_string())
                    }
                    None => None,
                };
                // The same line, in the stream it came on.
                strip_state(&mut stdout);
                strip_state(&mut stderr);
                let interrupted = r.interrupted;
                let command = r.command.clone();
                self.running = None;
                if self.restarted {
                    prefix.insert_str(
                        0,
                        "[The shell was restarted: the previous command ended its shell (exit, a `set -e`/`set -u` failure, or a signal). The working directory and exported variables are those saved before it.]\n",
                    );
                    self.restarted = false;
                }
                match saved {
                    Some(cwd) => self.cwd = cwd,
                    None => self.restarted = true,
                }
                let text = String::from_utf8_lossy(&new).into_owned();
                let suffix = if interrupted {
                    format!("\n[The command completed with exit code {code}. CTRL+C was sent.]")
                } else if self.restarted {
                    format!(
                        "\n[The command completed with exit code {code}. It ended its shell (\"{}\"); the next command runs in a new shell.]",
                        command.lines().next().unwrap_or_default()
                    )
                } else {
                    format!("\n[The command completed with exit code {code}.]")
                };
                RunResult {
                    output: truncate_middle(&text, limit),
                    stdout: text_of(&stdout, limit),
                    stderr: text_of(&stderr, limit),
                    exit_code: code,
                    cwd: self.cwd.clone(),
                    prefix,
                    suffix,
                }
            }
            Ended::NoOutput | Ended::Hard(_) => {
                let suffix = match ended {
                    Ended::Hard(t) => format!(
                        "\n[The command timed out after {} seconds. {CONTINUE}]",
                        t.as_secs_f64()
                    ),
                    _ => format!(
                        "\n[The command has no new output after {} seconds. {CONTINUE}]",
                        self.options.no_output_timeout.as_secs()
                    ),
                };
                RunResult {
                    output: text_of(&new, limit),
                    stdout: text_of(&stdout, limit),
                    stderr: text_of(&stderr, limit),
                    exit_code: -1,
                    cwd: self.cwd.clone(),
                    prefix,
                    suffix,
                }
            }
        }
    }

    /// Kills a running command (when the session closes).
    pub(crate) async fn kill_running(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.handle.kill().await;
        }
    }

    /// Sets the cwd known before any command ran.
    pub(crate) fn set_initial_cwd(&mut self, cwd: String) {
        if self.cwd.is_empty() {
            self.cwd = cwd;
        }
    }
}

/// Takes the wrapper's last state line out of one stream's output.
fn strip_state(bytes: &mut Vec<u8>) {
    if let Some(at) = find_last(bytes, STATE_MARKER) {
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| at + p + 1);
        bytes.drain(at..end);
    }
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}
