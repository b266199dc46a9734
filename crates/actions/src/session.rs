//! [`Session`]: one agent's sandbox and everything it does in it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use sandkit_core::raw::shell_quote;
use sandkit_core::{
    CommandSpec, EntryKind, Error, ErrorKind, FileStoreExt, ListFilter, ProcessEvent, Result,
    Runtime, Sandbox, SandboxExt, SandboxSpec,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tracing::debug;

use crate::editor;
use crate::ipython::{CellResult, Kernel};
use crate::shell::{RunRequest, RunResult, Shell, ShellOptions};
use crate::wire::{Action, ActionEvent, CmdOutputMetadata, Observation};

/// The metadata key that marks a session's sandbox.
pub const SESSION_KEY: &str = "sandkit.session";

/// One call of the editor (OpenHands' `str_replace_editor`), as tools take it in JSON: see
/// [`Session::editor`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EditRequest {
    /// `view`, `create`, `str_replace`, `insert` or `undo_edit`.
    pub command: String,
    /// The file (or, for `view`, a directory); relative paths from the shell's directory.
    pub path: String,
    /// `create`: the content.
    #[serde(default)]
    pub file_text: Option<String>,
    /// `str_replace`: the text to replace (found exactly once).
    #[serde(default)]
    pub old_str: Option<String>,
    /// `str_replace`, `insert`: the new text.
    #[serde(default)]
    pub new_str: Option<String>,
    /// `insert`: the line after which to insert (0: the top).
    #[serde(default)]
    pub insert_line: Option<i64>,
    /// `view`: `[first, last]` lines, 1-based (`last` -1: the end).
    #[serde(default)]
    pub view_range: Option<[i64; 2]>,
}
/// Edits remembered per file for `undo_edit`.
const UNDO_DEPTH: usize = 10;

/// How a session gets and keeps its sandbox.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionOptions {
    /// The sandbox to create when there is none to attach to.
    pub spec: SandboxSpec,
    /// Attach to the session's live sandbox, and fail with `NotFound` if it is gone, rather
    /// than making a new one.
    pub attach_to_existing: bool,
    /// Leave the sandbox running on `close` (OpenHands' `keep_runtime_alive`).
    pub keep_alive: bool,
    /// The sandbox's time to live, refreshed while the session is used. Default 300 s.
    pub time_to_live: Duration,
    /// Shell timeouts.
    pub shell: ShellOptions,
    /// Kill the sandbox when the session is dropped without [`Session::close`] (a task that
    /// panicked, an executor that was dropped). Off by default: a session dropped on purpose
    /// leaves its sandbox to its time to live, for another process to attach to.
    pub kill_on_drop: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            spec: SandboxSpec::new(),
            attach_to_existing: false,
            keep_alive: false,
            time_to_live: Duration::from_secs(300),
            shell: ShellOptions::default(),
            kill_on_drop: false,
        }
    }
}

impl SessionOptions {
    /// Options as the configuration sets them: `sandbox.time_to_live` (the sandbox's time to
    /// live, refreshed while used), `sandbox.timeout` (the shell's hard timeout),
    /// `sandbox.keep_runtime_alive` (leave the sandbox running on close) and
    /// `core.workspace_mount_path_in_sandbox` (the directory commands start in, on every
    /// backend: made when the backend has not made it).
    ///
    /// ```
    /// let config = sandkit_config::Config::builder()
    ///     .no_file()
    ///     .env_vars([("SANDBOX_TIMEOUT", "30")])
    ///     .load()
    ///     .unwrap();
    /// let options = sandkit_actions::SessionOptions::from_config(&config);
    /// assert_eq!(options.shell.hard_timeout, std::time::Duration::from_secs(30));
    /// // The same default directory on every backend.
    /// assert_eq!(options.spec.cwd.as_deref(), Some("/workspace"));
    /// ```
    pub fn from_config(config: &sandkit_config::Config) -> Self {
        let s = &config.sandbox;
        SessionOptions {
            // The same directory on every backend (E2B's own default is the user's home).
            spec: SandboxSpec::new().cwd(config.core.workspace_mount_path_in_sandbox.clone()),
            attach_to_existing: false,
            keep_alive: s.keep_runtime_alive,
            time_to_live: Duration::from_secs(s.time_to_live.max(1)),
            shell: ShellOptions::default().hard_timeout(Duration::from_secs(s.timeout.max(1))),
            kill_on_drop: false,
        }
    }

    /// Options with a sandbox spec.
    pub fn new(spec: SandboxSpec) -> Self {
        SessionOptions {
            spec,
            ..Default::default()
        }
    }
    /// Attach to the existing sandbox only.
    pub fn attach_to_existing(mut self, attach: bool) -> Self {
        self.attach_to_existing = attach;
        self
    }
    /// Leave the sandbox running on close.
    pub fn keep_alive(mut self, keep: bool) -> Self {
        self.keep_alive = keep;
        self
    }
    /// Shell timeouts.
    pub fn shell(mut self, shell: ShellOptions) -> Self {
        self.shell = shell;
        self
    }
    /// The sandbox's time to live, refreshed while the session is used.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = ttl;
        self
    }
    /// Kill the sandbox when the session is dropped without `close` (see
    /// [`SessionOptions::kill_on_drop`]).
    pub fn kill_on_drop(mut self, on: bool) -> Self {
        self.kill_on_drop = on;
        self
    }
}

/// What a browse fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowseResult {
    /// The HTTP status.
    pub status: u16,
    /// Where the redirects ended.
    pub url: String,
    /// The page as Markdown (HTML converted; other text as is).
    pub markdown: String,
}

/// One agent's sandbox: a persistent shell, a Python kernel, a file editor with undo.
///
/// ```no_run
/// # async fn demo(runtime: std::sync::Arc<dyn sandkit_core::Runtime>) -> sandkit_core::Result<()> {
/// use sandkit_actions::{Action, Session, SessionOptions};
/// let session = Session::open(runtime, "conversation-42", SessionOptions::default()).await?;
/// let obs = session
///     .run_action(serde_json::from_str::<Action>(r#"{"action":"run","args":{"command":"cd /tmp && pwd"}}"#).unwrap())
///     .await;
/// assert_eq!(obs.content.trim(), "/tmp");
/// session.close().await?;
/// # Ok(()) }
/// ```
pub struct Session {
    runtime: Arc<dyn Runtime>,
    sandbox: Arc<dyn Sandbox>,
    id: String,
    options: SessionOptions,
    shell: Mutex<Shell>,
    kernel: Mutex<Option<Kernel>>,
    env: Mutex<BTreeMap<String, String>>,
    undo: Mutex<HashMap<String, Vec<String>>>,
    refreshed: Mutex<Instant>,
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("sandbox", &self.sandbox.id())
            .finish()
    }
}

/// Makes the session's directory where the backend has not (E2B makes none), owned by the
/// sandbox's default user so that commands there can write; one that is already there and
/// writable is left alone.
async fn ensure_dir(sandbox: &dyn Sandbox, dir: &str) -> Result<()> {
    let q = sandkit_core::raw::shell_quote(dir);
    // As the default user: is it there and writable, and who is that user?
    let probe = sandbox
        .exec(
            CommandSpec::shell(format!("[ -d {q} ] && [ -w {q} ] && echo ok; id -u; id -g"))
                .cwd("/"),
        )
        .await?;
    let out = probe.stdout_text();
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    if first == "ok" {
        return Ok(());
    }
    let ids: Vec<&str> = std::iter::once(first).chain(lines).collect();
    let owner = match ids.as_slice() {
        [uid, gid, ..] if !uid.is_empty() && !gid.is_empty() => format!("{uid}:{gid}"),
        _ => String::new(),
    };
    // As root: make it (or take over the one the backend made) for that user.
    let as_root = if owner.is_empty() {
        format!("mkdir -p -- {q}")
    } else {
        format!("mkdir -p -- {q} && chown -- {owner} {q}")
    };
    let made = sandbox
        .exec(CommandSpec::shell(as_root).user("root").cwd("/"))
        .await;
    if matches!(&made, Ok(o) if o.success()) {
        return Ok(());
    }
    // No root here (a local backend run by a user): as the user, then.
    let mine = sandbox
        .exec(CommandSpec::shell(format!("mkdir -p -- {q} && [ -w {q} ]")).cwd("/"))
        .await?;
    if mine.success() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "the session's directory {dir} could not be made writable: {} (set \
             core.workspace_mount_path_in_sandbox to a directory the sandbox's user may write)",
            mine.stderr_text().trim()
        ),
    )
    .with_operation("open session"))
}

impl Session {
    /// Attaches to the live sandbox of `session_id`, or creates one.
    ///
    /// # Errors
    /// With `attach_to_existing`, a session whose sandbox is gone is `NotFound`.
    pub async fn open(
        runtime: Arc<dyn Runtime>,
        session_id: &str,
        options: SessionOptions,
    ) -> Result<Session> {
        let existing = runtime
            .list(&ListFilter::all().metadata(SESSION_KEY, session_id))
            .await?;
        let made_here = existing.is_empty();
        let sandbox: Box<dyn Sandbox> = match existing.first() {
            Some(info) => runtime.connect(&info.id).await?,
            None if options.attach_to_existing => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "session {session_id} has no live sandbox to attach to (expired or killed)"
                    ),
                )
                .with_operation("open session"))
            }
            None => {
                let mut spec = options.spec.clone().metadata(SESSION_KEY, session_id);
                spec.timeout = Some(options.time_to_live);
                runtime.create(spec).await?
            }
        };
        let sandbox: Arc<dyn Sandbox> = Arc::from(sandbox);
        let ready = async {
            sandbox.set_timeout(options.time_to_live).await?;
            if let Some(dir) = &options.spec.cwd {
                ensure_dir(sandbox.as_ref(), dir).await?;
            }
            sandbox.exec(CommandSpec::shell("pwd")).await
        }
        .await;
        let pwd = match ready {
            Ok(pwd) => pwd,
            Err(e) => {
                // A sandbox made for this session is not left behind by a failed open.
                if made_here {
                    let _ = sandbox.kill().await;
                }
                return Err(e);
            }
        };
        let mut shell = Shell::new(session_id, options.shell.clone());
        shell.set_initial_cwd(pwd.stdout_text().trim().to_string());
        Ok(Session {
            runtime,
            sandbox,
            id: session_id.to_string(),
            options,
            shell: Mutex::new(shell),
            kernel: Mutex::new(None),
            env: Mutex::new(BTreeMap::new()),
            undo: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(Instant::now()),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The session's sandbox.
    pub fn sandbox(&self) -> &dyn Sandbox {
        self.sandbox.as_ref()
    }

    /// The session's sandbox, shared: to move into a task.
    pub fn sandbox_arc(&self) -> Arc<dyn Sandbox> {
        self.sandbox.clone()
    }

    /// Keeps the sandbox alive while the session is used.
    async fn touch(&self) {
        let mut last = self.refreshed.lock().await;
        if last.elapsed() >= self.options.time_to_live / 4 {
            if let Err(e) = self.sandbox.set_timeout(self.options.time_to_live).await {
                debug!(error = %e, "could not refresh the sandbox's time to live");
            }
            *last = Instant::now();
        }
    }

    /// The shell's working directory.
    pub async fn cwd(&self) -> String {
        self.shell.lock().await.cwd().to_string()
    }

    /// Resolves a path against the shell's cwd.
    async fn resolve(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            let cwd = self.cwd().await;
            format!("{}/{}", cwd.trim_end_matches('/'), path)
        }
    }

    /// Runs a shell command (or talks to the running one). See [`RunRequest`].
    pub async fn run(&self, req: RunRequest) -> Result<RunResult> {
        self.touch().await;
        self.shell
            .lock()
            .await
            .run(self.sandbox.as_ref(), req)
            .await
    }

    /// Runs a one-off command in its own shell with its own cwd, not touching the session's.
    pub async fn run_static(
        &self,
        command: &str,
        cwd: Option<&str>,
        timeout: Duration,
    ) -> Result<RunResult> {
        self.touch().await;
        let mut spec = CommandSpec::shell(command).timeout(timeout);
        if let Some(c) = cwd {
            spec = spec.cwd(c);
        }
        for (k, v) in self.env.lock().await.iter() {
            spec = spec.env(k, v);
        }
        let (o, code, note) = match self.sandbox.exec(spec).await {
            Ok(o) => {
                let code = o.exit_code.unwrap_or(-1);
                (o, code, "")
            }
            Err(mut e) if e.kind() == ErrorKind::Timeout => (
                e.take_output().unwrap_or_default(),
                -1,
                "\n[The command timed out and was killed.]",
            ),
            Err(e) => return Err(e),
        };
        let limit = self.options.shell.max_output_chars;
        let (stdout, stderr) = (o.stdout_text(), o.stderr_text());
        Ok(RunResult {
            output: editor::truncate_middle(&format!("{stdout}{stderr}{note}"), limit),
            stdout: editor::truncate_middle(&stdout, limit),
            stderr: editor::truncate_middle(&stderr, limit),
            exit_code: code,
            cwd: cwd.unwrap_or_default().to_string(),
            prefix: String::new(),
            suffix: format!("\n[The command completed with exit code {code}.]"),
        })
    }

    /// Runs a Python cell in the session's kernel (started on first use).
    pub async fn run_ipython(&self, code: &str, timeout: Duration) -> Result<CellResult> {
        self.touch().await;
        let mut kernel = self.kernel.lock().await;
        if kernel.as_ref().is_none_or(|k| k.ended()) {
            *kernel = Some(Kernel::start(self.sandbox.as_ref()).await?);
        }
        let cwd = self.cwd().await;
        let env = self.env.lock().await.clone();
        kernel
            .as_mut()
            .expect("started")
            .run(code, &cwd, &env, timeout)
            .await
    }

    /// Reads lines `start..end` (0-based, `end = -1`: to the end) of a text file.
    pub async fn read(&self, path: &str, start: i64, end: i64) -> Result<String> {
        let path = self.resolve(path).await;
        let text = self.read_text(&path).await?;
        Ok(editor::read_lines(&text, start, end))
    }

    async fn read_text(&self, path: &str) -> Result<String> {
        let st = self.sandbox.files().stat(path).await?;
        if st.kind == EntryKind::Dir {
            return Err(
                Error::new(ErrorKind::InvalidInput, format!("{path} is a directory"))
                    .with_operation("read"),
            );
        }
        if st.size > editor::MAX_FILE_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{path} is {} bytes, over the {} byte limit of the editor",
                    st.size,
                    editor::MAX_FILE_BYTES
                ),
            ));
        }
        let bytes = self.sandbox.files().read(path).await?;
        if editor::is_binary(&bytes) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("ERROR_BINARY_FILE: {path} is a binary file"),
            ));
        }
        Ok(String::from_utf8(bytes.to_vec()).expect("checked"))
    }

    /// The editor's `view`: a file `cat -n` style (with a 1-based `[start, end]` range), or a
    /// directory as a two-level tree.
    pub async fn view(&self, path: &str, range: Option<[i64; 2]>) -> Result<String> {
        let path = self.resolve(path).await;
        let st = self.sandbox.files().stat(&path).await?;
        if st.kind == EntryKind::Dir {
            let entries = self.sandbox.files().list(&path, 2).await?;
            let base = path.trim_end_matches('/');
            let mut hidden = 0;
            let mut lines = vec![format!("{base}/")];
            for e in entries {
                let rel = e
                    .path
                    .strip_prefix(base)
                    .unwrap_or(&e.path)
                    .trim_start_matches('/');
                if rel.split('/').any(|p| p.starts_with('.')) {
                    hidden += 1;
                    continue;
                }
                lines.push(format!("{base}/{rel}{}", if e.is_dir() { "/" } else { "" }));
            }
            let mut text = format!(
                "Here's the files and directories up to 2 levels deep in {base}, excluding hidden items:\n{}\n",
                lines.join("\n")
            );
            if hidden > 0 {
                text.push_str(&format!("\n{hidden} hidden files/directories in this directory are excluded. You can use 'ls -la {base}' to see them.\n"));
            }
            return Ok(editor::clip(text));
        }
        let text = self.read_text(&path).await?;
        editor::view(&path, &text, range).map_err(|m| Error::new(ErrorKind::InvalidInput, m))
    }

    /// Writes a file whole (`start = 0, end = -1`) or replaces lines `start..end`; parents are
    /// created and an existing file's mode is kept.
    pub async fn write(&self, path: &str, content: &str, start: i64, end: i64) -> Result<()> {
        let path = self.resolve(path).await;
        let files = self.sandbox.files();
        let existing = match files.stat(&path).await {
            Ok(st) => Some(st),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let new = match &existing {
            Some(_) if !(start == 0 && end == -1) => {
                let old = self.read_text(&path).await?;
                editor::replace_lines(&old, content, start, end)
            }
            _ => content.to_string(),
        };
        self.remember(&path).await;
        files.write(&path, Bytes::from(new)).await?;
        self.restore_mode(&path, existing.map(|e| e.mode)).await
    }

    /// Writes back the mode a file had (a write through the archive API resets it).
    async fn restore_mode(&self, path: &str, mode: Option<u32>) -> Result<()> {
        let Some(mode) = mode else { return Ok(()) };
        let now = self.sandbox.files().stat(path).await?;
        if now.mode != mode {
            let out = self
                .sandbox
                .exec(CommandSpec::program(
                    "chmod",
                    [format!("{mode:o}"), path.to_string()],
                ))
                .await?;
            if !out.success() {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "written, but the mode could not be restored: {}",
                        out.stderr_text()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Remembers a file's current text for `undo_edit`.
    async fn remember(&self, path: &str) {
        if let Ok(old) = self.read_text(path).await {
            self.push_undo(path, old).await;
        }
    }

    async fn push_undo(&self, path: &str, old: String) {
        let mut undo = self.undo.lock().await;
        let history = undo.entry(path.to_string()).or_default();
        history.push(old);
        if history.len() > UNDO_DEPTH {
            history.remove(0);
        }
    }

    /// The editor's commands: `create`, `str_replace`, `insert`, `undo_edit` (and `view`).
    /// Returns what the editor says; an editor error is `InvalidInput` with its message.
    /// The editor's `create`: a new file with `text` (an existing file is refused).
    pub async fn create_file(&self, path: &str, text: &str) -> Result<String> {
        self.edit("create", path, Some(text), None, None, None)
            .await
    }

    /// The editor's `str_replace`: `old` must occur exactly once; the answer shows the lines
    /// around the change.
    pub async fn str_replace(&self, path: &str, old: &str, new: &str) -> Result<String> {
        self.edit("str_replace", path, None, Some(old), Some(new), None)
            .await
    }

    /// The editor's `insert`: `text` after line `after` (0: at the top).
    pub async fn insert(&self, path: &str, after: i64, text: &str) -> Result<String> {
        self.edit("insert", path, None, None, Some(text), Some(after))
            .await
    }

    /// The editor's `undo_edit`: the file as it was before its last edit.
    pub async fn undo_edit(&self, path: &str) -> Result<String> {
        self.edit("undo_edit", path, None, None, None, None).await
    }

    /// One call of the editor as a tool takes it: `view` (a file with line numbers, or a
    /// directory), or what [`Session::edit`] does.
    pub async fn editor(&self, r: &EditRequest) -> Result<String> {
        if r.command == "view" {
            return self.view(&r.path, r.view_range).await;
        }
        self.edit(
            &r.command,
            &r.path,
            r.file_text.as_deref(),
            r.old_str.as_deref(),
            r.new_str.as_deref(),
            r.insert_line,
        )
        .await
    }

    /// The editor as OpenHands' `str_replace_editor` tool calls it (its JSON arguments):
    /// [`Session::create_file`], [`Session::str_replace`], [`Session::insert`] and
    /// [`Session::undo_edit`] say the same with types.
    pub async fn edit(
        &self,
        command: &str,
        path: &str,
        file_text: Option<&str>,
        old_str: Option<&str>,
        new_str: Option<&str>,
        insert_line: Option<i64>,
    ) -> Result<String> {
        self.touch().await;
        let path = self.resolve(path).await;
        let files = self.sandbox.files();
        let bad = |m: String| Error::new(ErrorKind::InvalidInput, m).with_operation("edit");
        match command {
            "create" => {
                if files.exists(&path).await? {
                    return Err(bad(format!("File already exists at: {path}. Cannot overwrite files using command `create`.")));
                }
                let text = file_text.ok_or_else(|| bad("Parameter `file_text` is required for command: create.".into()))?;
                files.write(&path, Bytes::copy_from_slice(text.as_bytes())).await?;
                Ok(format!("File created successfully at: {path}"))
            }
            "str_replace" => {
                let old = old_str.ok_or_else(|| bad("Parameter `old_str` is required for command: str_replace.".into()))?;
                let content = self.read_text(&path).await?;
                let (new, shown) = editor::str_replace(&path, &content, old, new_str.unwrap_or("")).map_err(bad)?;
                self.save_edit(&path, &content, new).await?;
                Ok(shown)
            }
            "insert" => {
                let line = insert_line.ok_or_else(|| bad("Parameter `insert_line` is required for command: insert.".into()))?;
                let text = new_str.ok_or_else(|| bad("Parameter `new_str` is required for command: insert.".into()))?;
                let content = self.read_text(&path).await?;
                let (new, shown) = editor::insert(&path, &content, line, text).map_err(bad)?;
                self.save_edit(&path, &content, new).await?;
                Ok(shown)
            }
            "undo_edit" => {
                let previous = self.undo.lock().await.get_mut(&path).and_then(|h| h.pop());
                let previous = previous.ok_or_else(|| bad(format!("No edit history found for {path}.")))?;
                let mode = files.stat(&path).await.ok().map(|e| e.mode);
                files.write(&path, Bytes::from(previous.clone())).await?;
                self.restore_mode(&path, mode).await?;
                Ok(format!("Last edit to {path} undone successfully. {}", editor::view(&path, &previous, None).unwrap_or_default()))
            }
            "view" => self.view(&path, None).await,
            other => Err(bad(format!(
                "Unrecognized command {other}. The allowed commands are: view, create, str_replace, insert, undo_edit"
            ))),
        }
    }

    async fn save_edit(&self, path: &str, old: &str, new: String) -> Result<()> {
        let mode = self.sandbox.files().stat(path).await.ok().map(|e| e.mode);
        self.push_undo(path, old.to_string()).await;
        self.sandbox.files().write(path, Bytes::from(new)).await?;
        self.restore_mode(path, mode).await
    }

    /// Fetches a URL from inside the sandbox (the URL is an argument, never part of a shell
    /// line) and returns it as Markdown. A 4xx/5xx answer is an error naming the status.
    pub async fn browse(&self, url: &str) -> Result<BrowseResult> {
        self.touch().await;
        const FETCH: &str = r#"
import base64, json, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"User-Agent": "sandkit-browse/0.1"})
try:
    r = urllib.request.urlopen(req, timeout=60)
    status, final, ctype, body = r.status, r.geturl(), r.headers.get("content-type", ""), r.read(10_000_000)
except urllib.error.HTTPError as e:
    status, final, ctype, body = e.code, e.geturl(), e.headers.get("content-type", ""), e.read(1_000_000)
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
print(json.dumps({"status": status, "url": final, "content_type": ctype, "body": base64.b64encode(body).decode()}))
"#;
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("only http and https URLs can be browsed, not {url:?}"),
            ));
        }
        let out = self
            .sandbox
            .exec(
                CommandSpec::program("python3", ["-c", FETCH, url])
                    .timeout(Duration::from_secs(90)),
            )
            .await?;
        if out.exit_code == Some(127) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "browsing needs python3 in the sandbox image",
            ));
        }
        #[derive(serde::Deserialize)]
        struct Fetched {
            error: Option<String>,
            status: Option<u16>,
            url: Option<String>,
            content_type: Option<String>,
            body: Option<String>,
        }
        let f: Fetched = serde_json::from_str(out.stdout_text().trim()).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("the fetch helper said {:?}: {e}", out.stderr_text()),
            )
        })?;
        if let Some(e) = f.error {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("could not fetch {url}: {e}"),
            )
            .with_operation("browse"));
        }
        let status = f.status.unwrap_or(0);
        let body = base64::engine::general_purpose::STANDARD
            .decode(f.body.unwrap_or_default())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        let is_html = f
            .content_type
            .as_deref()
            .unwrap_or_default()
            .contains("html")
            || text.trim_start().starts_with('<');
        let markdown = if is_html {
            htmd::convert(&text).unwrap_or(text)
        } else {
            text
        };
        if status >= 400 {
            return Err(Error::new(
                if status == 404 {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Unavailable
                },
                format!(
                    "{url} answered HTTP {status}: {}",
                    editor::truncate_middle(&markdown, 2000)
                ),
            )
            .with_operation("browse"));
        }
        Ok(BrowseResult {
            status,
            url: f.url.unwrap_or_else(|| url.to_string()),
            markdown,
        })
    }

    /// Sets environment variables for the shell (now and after a restart, through
    /// `~/.bashrc`) and the Python kernel. Keys are upper-cased; an existing key is updated.
    pub async fn add_env_vars(&self, vars: &BTreeMap<String, String>) -> Result<()> {
        self.touch().await;
        let mut upper = BTreeMap::new();
        for (k, v) in vars {
            let k = k.to_uppercase();
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{k:?} is not a valid environment variable name"),
                ));
            }
            upper.insert(k, v.clone());
        }
        let state = self.shell.lock().await.state_file().to_string();
        let mut script = String::from("f=\"$HOME/.bashrc\"; touch \"$f\" || exit 1\n");
        for (k, v) in &upper {
            let line = format!("export {k}={}", shell_quote(v));
            script.push_str(&format!(
                "grep -v '^export {k}=' \"$f\" > \"$f.sandkit\"; cat \"$f.sandkit\" > \"$f\"; rm -f \"$f.sandkit\"; printf '%s\\n' {q} >> \"$f\"\nprintf '%s\\n' {q} >> {s}\n",
                q = shell_quote(&line),
                s = shell_quote(&state)
            ));
        }
        let out = self.sandbox.exec(CommandSpec::shell(script)).await?;
        if !out.success() {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("could not set the variables: {}", out.stderr_text()),
            ));
        }
        self.env.lock().await.extend(upper);
        Ok(())
    }

    /// Copies a host file or directory into `sandbox_dir` (created if missing), modes kept.
    pub async fn copy_to(
        &self,
        host_path: &Path,
        sandbox_dir: &str,
        recursive: bool,
    ) -> Result<()> {
        self.touch().await;
        let meta = tokio::fs::metadata(host_path).await?;
        if meta.is_dir() && !recursive {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a directory: copy it with recursive",
                    host_path.display()
                ),
            ));
        }
        let name = host_path
            .file_name()
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the host path has no file name"))?
            .to_owned();
        let src = host_path.to_path_buf();
        let archive =
            tokio::task::spawn_blocking(move || -> std::io::Result<tempfile::NamedTempFile> {
                let file = tempfile::NamedTempFile::new()?;
                let mut tar = tar::Builder::new(file.reopen()?);
                tar.follow_symlinks(false);
                if src.is_dir() {
                    tar.append_dir_all(&name, &src)?;
                } else {
                    tar.append_path_with_name(&src, &name)?;
                }
                tar.finish()?;
                Ok(file)
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))??;
        let dir = self.resolve(sandbox_dir).await;
        self.sandbox.files().create_dir_all(&dir).await?;
        let spec = CommandSpec::program("tar", ["-xf", "-", "-C", &dir]).stdin(true);
        let mut process = self.sandbox.spawn(spec).await?;
        let mut file = tokio::fs::File::open(archive.path()).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            use tokio::io::AsyncReadExt;
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            process
                .write_stdin(Bytes::copy_from_slice(&buf[..n]))
                .await?;
        }
        process.close_stdin().await?;
        let (_, stderr, code) = drain(&mut process, None).await?;
        if code != 0 {
            return Err(tar_failed(&stderr));
        }
        Ok(())
    }

    /// Copies a sandbox file or directory to the host, into `host_dir` (a new temporary
    /// directory when `None`), permission bits kept. Returns the host path of the copy.
    ///
    /// What the sandbox sends is not trusted: setuid, setgid and sticky bits are dropped,
    /// device files and FIFOs are left out, and so are symbolic links that would lead outside
    /// the copy (each left-out entry is logged as a warning).
    pub async fn copy_from(&self, sandbox_path: &str, host_dir: Option<&Path>) -> Result<PathBuf> {
        self.touch().await;
        let path = self.resolve(sandbox_path).await;
        self.sandbox.files().stat(&path).await?;
        let (parent, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some(("", n)) => ("/".to_string(), n.to_string()),
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => return Err(Error::new(ErrorKind::InvalidInput, "cannot copy /")),
        };
        let spec = CommandSpec::program("tar", ["-cf", "-", "-C", &parent, &name]);
        let mut process = self.sandbox.spawn(spec).await?;
        let archive = tempfile::NamedTempFile::new()?;
        let mut file = tokio::fs::File::create(archive.path()).await?;
        let (_, stderr, code) = drain(&mut process, Some(&mut file)).await?;
        file.flush().await?;
        if code != 0 {
            return Err(tar_failed(&stderr));
        }
        let dest = match host_dir {
            Some(d) => d.to_path_buf(),
            None => tempfile::Builder::new()
                .prefix("sandkit-copy-")
                .tempdir()?
                .keep(),
        };
        // The archive comes from the sandbox: unpacked with no setuid bits, devices or links
        // that lead out of `dest` (see `LocalFileStore::unpack`).
        let store = sandkit_filestore::LocalFileStore::new(&dest)?;
        let src = archive.path().to_path_buf();
        let top = name.clone();
        tokio::task::spawn_blocking(move || store.unpack(std::fs::File::open(src)?, "", &top))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))??;
        Ok(dest.join(name))
    }

    /// Names in a directory: directories first with a trailing `/`, each group sorted without
    /// regard to case; a missing path gives an empty list.
    pub async fn list_files(&self, path: Option<&str>) -> Result<Vec<String>> {
        let path = match path {
            Some(p) => self.resolve(p).await,
            None => self.cwd().await,
        };
        let entries = match self.sandbox.files().list(&path, 1).await {
            Ok(e) => e,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidInput) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let (mut dirs, mut files): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for e in entries {
            if e.is_dir() {
                dirs.push(format!("{}/", e.name));
            } else {
                files.push(e.name);
            }
        }
        dirs.sort_by_key(|a| a.to_lowercase());
        files.sort_by_key(|a| a.to_lowercase());
        dirs.extend(files);
        Ok(dirs)
    }

    /// Runs an action and returns its observation; failures become `error` observations (an
    /// editor error is an `edit` observation with `ERROR:` content, as in OpenHands). Never
    /// panics.
    pub async fn run_action(&self, action: Action) -> Observation {
        self.run_event(ActionEvent {
            action,
            timeout: None,
        })
        .await
    }

    /// Like [`Session::run_action`], honouring an event's top-level `timeout`.
    pub async fn run_event(&self, event: ActionEvent) -> Observation {
        let timeout = event.timeout;
        match self.dispatch(event.action, timeout).await {
            Ok(obs) => obs,
            Err(e) => Observation::error(e.to_string()),
        }
    }

    async fn dispatch(&self, action: Action, event_timeout: Option<f64>) -> Result<Observation> {
        let secs = |t: Option<f64>| {
            t.filter(|t| *t > 0.0 && t.is_finite())
                .map(Duration::from_secs_f64)
        };
        match action {
            Action::Run(a) => {
                let timeout = secs(a.timeout.or(event_timeout));
                let r = if a.is_static {
                    self.run_static(
                        &a.command,
                        a.cwd.as_deref(),
                        timeout.unwrap_or(self.options.shell.hard_timeout),
                    )
                    .await?
                } else {
                    self.run(RunRequest {
                        command: a.command.clone(),
                        is_input: a.is_input,
                        // An explicit timeout means: wait for it (OpenHands' set_hard_timeout).
                        blocking: a.blocking || timeout.is_some(),
                        timeout,
                    })
                    .await?
                };
                let metadata = CmdOutputMetadata {
                    exit_code: r.exit_code,
                    pid: -1,
                    username: None,
                    hostname: None,
                    working_dir: Some(r.cwd.clone()),
                    py_interpreter_path: None,
                    prefix: r.prefix,
                    suffix: r.suffix,
                };
                let content = if a.hidden {
                    r.output
                } else {
                    editor::truncate_middle(&r.output, self.options.shell.max_output_chars)
                };
                Ok(Observation::run(&a.command, content, metadata, a.hidden))
            }
            Action::RunIpython(a) => {
                let timeout =
                    secs(a.timeout.or(event_timeout)).unwrap_or(self.options.shell.hard_timeout);
                let first = self.kernel.lock().await.is_none();
                if first && !a.kernel_init_code.is_empty() {
                    self.run_ipython(&a.kernel_init_code, timeout).await?;
                }
                let cell = self.run_ipython(&a.code, timeout).await?;
                let mut content = cell.text();
                if a.include_extra {
                    let python = self
                        .kernel
                        .lock()
                        .await
                        .as_ref()
                        .map(|k| k.python.clone())
                        .unwrap_or_default();
                    content.push_str(&format!(
                        "\n[Jupyter current working directory: {}]\n[Jupyter Python interpreter: {python}]",
                        self.cwd().await
                    ));
                }
                Ok(Observation {
                    observation: "run_ipython".into(),
                    content,
                    extras: serde_json::json!({"code": a.code, "image_urls": null}),
                    success: cell.error.is_none() && !cell.timed_out,
                })
            }
            Action::Read(a) => {
                let content = if a.impl_source == "oh_aci" || a.view_range.is_some() {
                    let range = match a.view_range.as_deref() {
                        Some([s, e]) => Some([*s, *e]),
                        Some(_) => {
                            return Ok(Observation::error("`view_range` must have two elements"))
                        }
                        None => None,
                    };
                    self.view(&a.path, range).await?
                } else {
                    self.read(&a.path, a.start, a.end).await.map_err(|e| {
                        if e.kind() == ErrorKind::NotFound {
                            Error::new(ErrorKind::NotFound, format!("File not found: {}.", a.path))
                        } else {
                            e
                        }
                    })?
                };
                Ok(Observation {
                    observation: "read".into(),
                    content,
                    extras: serde_json::json!({"path": a.path, "impl_source": a.impl_source}),
                    success: true,
                })
            }
            Action::Write(a) => {
                self.write(&a.path, &a.content, a.start, a.end).await?;
                Ok(Observation {
                    observation: "write".into(),
                    content: String::new(),
                    extras: serde_json::json!({"path": a.path}),
                    success: true,
                })
            }
            Action::Edit(a) => {
                let path = self.resolve(&a.path).await;
                let before = self.read_text(&path).await.ok();
                let result = self
                    .editor(&EditRequest {
                        command: a.command.clone(),
                        path: a.path.clone(),
                        file_text: a.file_text.clone(),
                        old_str: a.old_str.clone(),
                        new_str: a.new_str.clone(),
                        insert_line: a.insert_line,
                        view_range: a.view_range.as_deref().and_then(|r| match r {
                            [s, e] => Some([*s, *e]),
                            _ => None,
                        }),
                    })
                    .await;
                let (content, success) = match result {
                    Ok(text) => (text, true),
                    Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound) => {
                        (format!("ERROR:\n{}", e.message()), false)
                    }
                    Err(e) => return Err(e),
                };
                let after = self.read_text(&path).await.ok();
                Ok(Observation {
                    observation: "edit".into(),
                    content,
                    extras: serde_json::json!({
                        "path": a.path,
                        "prev_exist": before.is_some(),
                        "old_content": a.old_str,
                        "new_content": a.new_str,
                        "impl_source": "oh_aci",
                        "diff": if before != after { unified_diff(before.as_deref().unwrap_or(""), after.as_deref().unwrap_or("")) } else { String::new() },
                    }),
                    success,
                })
            }
            Action::Browse(a) => match self.browse(&a.url).await {
                Ok(b) => Ok(Observation {
                    observation: "browse".into(),
                    content: b.markdown,
                    extras: serde_json::json!({"url": b.url, "trigger_by_action": "browse", "screenshot": "", "error": false, "status_code": b.status}),
                    success: true,
                }),
                Err(e) => Ok(Observation {
                    observation: "browse".into(),
                    content: e.message().to_string(),
                    extras: serde_json::json!({"url": a.url, "trigger_by_action": "browse", "screenshot": "", "error": true}),
                    success: false,
                }),
            },
        }
    }

    /// Ends the session: kills the sandbox unless `keep_alive`. Closing again does nothing;
    /// a session shared in an `Arc` can be closed by any holder.
    pub async fn close(&self) -> Result<()> {
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.shell.lock().await.kill_running().await;
        if let Some(k) = self.kernel.lock().await.take() {
            k.kill().await;
        }
        if self.options.keep_alive {
            return Ok(());
        }
        match self.runtime.kill(self.sandbox.id()).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Session {
    /// With [`SessionOptions::kill_on_drop`], a session dropped without `close` kills its
    /// sandbox, on a thread of its own that the process waits for at exit, so that the kill
    /// holds when its tokio runtime ends (`main` returned early).
    fn drop(&mut self) {
        if !self.options.kill_on_drop
            || self.options.keep_alive
            || self.closed.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let (runtime, id) = (self.runtime.clone(), self.sandbox.id().to_string());
        let kill = async move {
            match runtime.kill(&id).await {
                Ok(()) => debug!(sandbox_id = %id, "killed on drop"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(sandbox_id = %id, error = %e, "killing on drop failed"),
            }
        };
        kill_in_background(kill);
    }
}

/// Kills started by dropped sessions that have not finished, and the signal of each end.
static PENDING_KILLS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// The longest the process waits at exit for the kills of dropped sessions.
const KILLS_AT_EXIT: Duration = Duration::from_secs(15);

/// Runs `kill` on a thread of its own, with a runtime of its own: a session is often dropped
/// as its tokio runtime ends (`main` returned early with `?`), which cancels anything spawned
/// on that runtime. The process waits for such kills when it exits (an `atexit` handler, for
/// up to [`KILLS_AT_EXIT`]), so returning from `main` leaves no sandbox behind.
fn kill_in_background(kill: impl std::future::Future<Output = ()> + Send + 'static) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        extern "C" fn wait_for_kills() {
            let (count, done) = &PENDING_KILLS;
            let until = std::time::Instant::now() + KILLS_AT_EXIT;
            let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
            while *n > 0 {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                n = done
                    .wait_timeout(n, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        // SAFETY: registers a plain function with no arguments to run at exit.
        unsafe {
            libc::atexit(wait_for_kills);
        }
    });
    /// One kill under way; over when dropped (done, failed, or never started).
    struct Pending;
    impl Drop for Pending {
        fn drop(&mut self) {
            let (count, done) = &PENDING_KILLS;
            *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            done.notify_all();
        }
    }
    *PENDING_KILLS.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let pending = Pending;
    let spawned = std::thread::Builder::new()
        .name("sandkit-kill-on-drop".into())
        .spawn(move || {
            let _pending = pending;
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(kill);
            }
        });
    if spawned.is_err() {
        tracing::warn!("cannot start a thread to kill a dropped session's sandbox");
    }
}

fn tar_failed(stderr: &[u8]) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!(
            "tar in the sandbox failed: {}",
            String::from_utf8_lossy(stderr).trim()
        ),
    )
}

/// Reads a process to its end: stdout (into `sink` when given), stderr, exit code.
/// Most bytes a helper's output may take (what the sandbox sends is not trusted to be small):
/// a copy out of a sandbox, and the text collected from a helper.
const MAX_DRAIN: u64 = 8 << 30;
const MAX_COLLECTED: usize = 16 << 20;

async fn drain(
    process: &mut sandkit_core::Process,
    mut sink: Option<&mut tokio::fs::File>,
) -> Result<(Vec<u8>, Vec<u8>, i32)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut written: u64 = 0;
    let too_much = |what: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("the sandbox sent more {what} than a copy or a helper may take; stopped"),
        )
    };
    while let Some(ev) = process.next_event().await {
        match ev? {
            ProcessEvent::Stdout(b) => match sink.as_mut() {
                Some(f) => {
                    written += b.len() as u64;
                    if written > MAX_DRAIN {
                        let _ = process.kill().await;
                        return Err(too_much("than 8 GiB"));
                    }
                    f.write_all(&b).await?
                }
                None if out.len() + b.len() > MAX_COLLECTED => {
                    let _ = process.kill().await;
                    return Err(too_much("output"));
                }
                None => out.extend_from_slice(&b),
            },
            ProcessEvent::Stderr(b) if err.len() + b.len() > MAX_COLLECTED => {
                let _ = process.kill().await;
                return Err(too_much("errors"));
            }
            ProcessEvent::Stderr(b) => err.extend_from_slice(&b),
            ProcessEvent::Exited { code } => return Ok((out, err, code)),
        }
    }
    Err(Error::new(
        ErrorKind::Unexpected,
        "the process ended without an exit code",
    ))
}

/// A minimal unified diff (whole-file hunk) of two texts.
fn unified_diff(old: &str, new: &str) -> String {
    let mut out = String::from("--- before\n+++ after\n");
    for l in old.lines() {
        if !new.lines().any(|n| n == l) {
            out.push_str(&format!("-{l}\n"));
        }
    }
    for l in new.lines() {
        if !old.lines().any(|o| o == l) {
            out.push_str(&format!("+{l}\n"));
        }
    }
    out
}
