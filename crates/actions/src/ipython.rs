//! IPython-style cells: a persistent Python process in the sandbox (standard library only).
//! Variables persist between cells; printed output, the last expression's value and
//! tracebacks come back; a timeout interrupts the cell.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandkit_core::{
    CommandSpec, Error, ErrorKind, ProcessEvent, ProcessHandle, Result, Sandbox, SandboxExt, Signal,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The kernel: reads one JSON request per line, answers one marked JSON line per cell.
const KERNEL: &str = r#"
import ast, contextlib, io, json, os, sys, traceback
ns = {"__name__": "__main__"}
out = sys.__stdout__
def run(code):
    tree = ast.parse(code, "<cell>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<cell>", "exec"), ns)
    if last is not None:
        value = eval(compile(last, "<cell>", "eval"), ns)
        if value is not None:
            ns["_"] = value
            return repr(value)
    return None
while True:
    try:
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        continue
    if not line:
        break
    req = json.loads(line)
    try:
        os.chdir(req.get("cwd") or os.getcwd())
    except OSError:
        pass
    os.environ.update(req.get("env") or {})
    buf = io.StringIO()
    result = error = None
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            result = run(req["code"])
    except KeyboardInterrupt:
        error = "KeyboardInterrupt: the cell was interrupted"
    except BaseException:
        etype, value, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
            tb = tb.tb_next
        error = "".join(traceback.format_exception(etype, value, tb))
    resp = {"id": req["id"], "output": buf.getvalue(), "result": result, "error": error}
    out.write("\x1eSANDKIT_CELL " + json.dumps(resp) + "\n")
    out.flush()
"#;

const MARKER: &str = "\u{1e}SANDKIT_CELL ";

#[derive(Serialize)]
struct Request<'a> {
    id: u64,
    code: &'a str,
    cwd: &'a str,
    env: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Response {
    id: u64,
    output: String,
    result: Option<String>,
    error: Option<String>,
}

/// What a cell produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellResult {
    /// Everything the cell printed (stdout and stderr).
    pub output: String,
    /// `repr` of the last expression, when it was not `None`.
    pub result: Option<String>,
    /// The traceback, when the cell raised.
    pub error: Option<String>,
    /// Whether the timeout interrupted the cell.
    pub timed_out: bool,
}

impl CellResult {
    /// The cell as an agent reads it: output, then the value or the traceback.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if !self.output.is_empty() {
            parts.push(self.output.trim_end().to_string());
        }
        if let Some(r) = &self.result {
            parts.push(r.clone());
        }
        if let Some(e) = &self.error {
            parts.push(e.trim_end().to_string());
        }
        if self.timed_out {
            parts.push("[The cell timed out and was interrupted.]".into());
        }
        parts.join("\n")
    }
}

#[derive(Default)]
struct Lines {
    buf: String,
    responses: Vec<Response>,
    ended: bool,
}

/// A running kernel.
pub(crate) struct Kernel {
    handle: ProcessHandle,
    lines: Arc<Mutex<Lines>>,
    notify: Arc<Notify>,
    next_id: u64,
    pub(crate) python: String,
}

impl Kernel {
    /// Starts a kernel as the shell's user, or fails with `Unsupported` when there is no python3.
    pub(crate) async fn start(sandbox: &dyn Sandbox) -> Result<Kernel> {
        let probe = sandbox
            .exec(CommandSpec::shell("command -v python3"))
            .await?;
        if !probe.success() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "IPython cells need python3 in the sandbox image, and it has none; use an image \
                 with Python (sandkit-base:bookworm has it)",
            )
            .with_operation("run_ipython"));
        }
        let python = probe.stdout_text().trim().to_string();
        let spec = CommandSpec::program(python.clone(), ["-u", "-c", KERNEL])
            .stdin(true)
            .tag("sandkit-ipython");
        let mut process = sandbox.spawn(spec).await?;
        let handle = process.handle();
        let lines = Arc::new(Mutex::new(Lines::default()));
        let notify = Arc::new(Notify::new());
        let (l, n) = (lines.clone(), notify.clone());
        tokio::spawn(async move {
            while let Some(ev) = process.next_event().await {
                let mut g = l.lock().unwrap();
                match ev {
                    Ok(ProcessEvent::Stdout(b)) => {
                        g.buf.push_str(&String::from_utf8_lossy(&b));
                        while let Some(nl) = g.buf.find('\n') {
                            let line: String = g.buf.drain(..=nl).collect();
                            if let Some(json) = line.strip_prefix(MARKER) {
                                if let Ok(r) = serde_json::from_str::<Response>(json.trim_end()) {
                                    g.responses.push(r);
                                }
                            }
                        }
                    }
                    Ok(ProcessEvent::Stderr(_)) => {}
                    Ok(ProcessEvent::Exited { .. }) | Err(_) => g.ended = true,
                }
                drop(g);
                n.notify_waiters();
            }
            l.lock().unwrap().ended = true;
            n.notify_waiters();
        });
        Ok(Kernel {
            handle,
            lines,
            notify,
            next_id: 1,
            python,
        })
    }

    /// Whether the kernel process is gone.
    pub(crate) fn ended(&self) -> bool {
        self.lines.lock().unwrap().ended
    }

    async fn wait_for(&self, id: u64, limit: Duration) -> Option<Response> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.lines.lock().unwrap();
                if let Some(i) = g.responses.iter().position(|r| r.id == id) {
                    return Some(g.responses.remove(i));
                }
                if g.ended {
                    return None;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Runs a cell.
    pub(crate) async fn run(
        &mut self,
        code: &str,
        cwd: &str,
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<CellResult> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_string(&Request { id, code, cwd, env }).expect("json");
        line.push('\n');
        self.handle.write_stdin(line).await?;
        if let Some(r) = self.wait_for(id, timeout).await {
            return Ok(CellResult {
                output: r.output,
                result: r.result,
                error: r.error,
                timed_out: false,
            });
        }
        if self.ended() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "the Python kernel died; the next cell starts a new one",
            )
            .with_operation("run_ipython"));
        }
        // Interrupt the cell, as Jupyter does at a timeout.
        self.handle.signal(Signal::Interrupt).await?;
        match self.wait_for(id, Duration::from_secs(10)).await {
            Some(r) => Ok(CellResult {
                output: r.output,
                result: r.result,
                error: r.error,
                timed_out: true,
            }),
            None => {
                let _ = self.handle.kill().await;
                Ok(CellResult {
                    output: String::new(),
                    result: None,
                    error: Some(
                        "the cell did not stop when interrupted; the kernel was restarted".into(),
                    ),
                    timed_out: true,
                })
            }
        }
    }

    pub(crate) async fn kill(&self) {
        let _ = self.handle.kill().await;
    }
}
