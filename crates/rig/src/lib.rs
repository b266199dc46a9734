//! [rig](https://docs.rs/rig-core) tools over an sandkit [`Session`]: an agent built with rig runs
//! commands and edits files in a sandbox on any backend sandkit has.
//!
//! | tool | arguments | answer |
//! |---|---|---|
//! | [`RunCommand`] `run_command` | `command`, `timeout_secs?`, `is_input?` | exit code, stdout, stderr, the output as OpenHands shows it, the directory after |
//! | [`ReadFile`] `read_file` | `path`, `start_line?`, `end_line?` (0-based, end exclusive) | the text |
//! | [`WriteFile`] `write_file` | `path`, `content` | what was written |
//! | [`Edit`] `edit` | `command` (`view`, `create`, `str_replace`, `insert`, `undo_edit`), `path`, and what the command takes | the editor's answer |
//!
//! Every tool holds the session in an [`Arc`]: clone them into as many agents or tasks as
//! needed. The session keeps the shell (its directory and variables) between calls.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rig_core::tool::ErasedTool;
//! use sandkit_actions::prelude::*;
//!
//! # async fn demo() -> Result<()> {
//! let config = Config::load()?;
//! let options = SessionOptions::from_config(&config).kill_on_drop(true);
//! let session = Arc::new(Session::open(config.runtime().await?, "episode-1", options).await?);
//! // Register them with an agent (`AgentBuilder::tool`), or call them as rig does:
//! for tool in sandkit_rig::tools(session.clone()) {
//!     println!("{}: {}", tool.name(), tool.description());
//! }
//! session.close().await
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use rig_core::tool::{ErasedTool, PortableTool};
use sandkit_actions::{EditRequest, RunRequest, Session};
use sandkit_core::Error;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// All four tools over `session`, for registering with an agent by name.
pub fn tools(session: Arc<Session>) -> Vec<Box<dyn ErasedTool>> {
    vec![
        Box::new(RunCommand::new(session.clone())),
        Box::new(ReadFile::new(session.clone())),
        Box::new(WriteFile::new(session.clone())),
        Box::new(Edit::new(session)),
    ]
}

macro_rules! session_tool {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            session: Arc<Session>,
        }

        impl $name {
            /// The tool over `session`.
            pub fn new(session: Arc<Session>) -> Self {
                Self { session }
            }
        }
    };
}

session_tool!(
    /// `run_command`: a shell line in the session's shell (its directory and variables kept
    /// between calls). A command still running after the session's no-output timeout comes
    /// back with exit code -1; send `""` to wait for more, or `is_input` to type into it.
    RunCommand
);
session_tool!(
    /// `read_file`: a text file, whole or a range of lines.
    ReadFile
);
session_tool!(
    /// `write_file`: a file written whole (parents made, an existing file's mode kept).
    WriteFile
);
session_tool!(
    /// `edit`: OpenHands' `str_replace_editor` (`view`, `create`, `str_replace`, `insert`,
    /// `undo_edit`).
    Edit
);

/// What `run_command` takes.
#[derive(Debug, Clone, Deserialize)]
pub struct RunArgs {
    /// The shell line (or, with `is_input`, what to type: text, `C-c`, `C-d`, `C-z`).
    pub command: String,
    /// Hard timeout for this command, seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Send `command` to the running command instead.
    #[serde(default)]
    pub is_input: bool,
}

/// What `run_command` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOutput {
    /// The exit code; -1 while the command still runs.
    pub exit_code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Both streams as they came, with the notes OpenHands adds (how it ended, how to go on).
    pub output: String,
    /// The shell's directory after it.
    pub cwd: String,
}

impl PortableTool for RunCommand {
    const NAME: &'static str = "run_command";
    type Args = RunArgs;
    type Output = RunOutput;
    type Error = Error;

    fn description(&self) -> String {
        "Run a shell command in the sandbox. The shell keeps its working directory and \
         exported variables between calls."
            .into()
    }

    fn parameters(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The shell line to run (or, with is_input, what to type)."},
                "timeout_secs": {"type": "integer", "minimum": 1, "description": "Hard timeout in seconds."},
                "is_input": {"type": "boolean", "description": "Send the command as input to the running command."}
            },
            "required": ["command"]
        })
    }

    async fn call(&self, args: RunArgs) -> Result<RunOutput, Error> {
        let r = self
            .session
            .run(RunRequest {
                command: args.command,
                is_input: args.is_input,
                timeout: args.timeout_secs.map(Duration::from_secs),
                ..Default::default()
            })
            .await?;
        Ok(RunOutput {
            exit_code: r.exit_code,
            output: format!("{}{}{}", r.prefix, r.output, r.suffix),
            stdout: r.stdout,
            stderr: r.stderr,
            cwd: r.cwd,
        })
    }
}

/// What `read_file` takes.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadArgs {
    /// The file (relative paths from the shell's directory).
    pub path: String,
    /// The first line, 0-based.
    #[serde(default)]
    pub start_line: Option<i64>,
    /// The line to stop before; -1 or none: the end.
    #[serde(default)]
    pub end_line: Option<i64>,
}

impl PortableTool for ReadFile {
    const NAME: &'static str = "read_file";
    type Args = ReadArgs;
    type Output = String;
    type Error = Error;

    fn description(&self) -> String {
        "Read a text file in the sandbox, whole or a range of lines.".into()
    }

    fn parameters(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "start_line": {"type": "integer", "minimum": 0, "description": "First line, 0-based."},
                "end_line": {"type": "integer", "description": "Line to stop before; -1 for the end."}
            },
            "required": ["path"]
        })
    }

    async fn call(&self, args: ReadArgs) -> Result<String, Error> {
        self.session
            .read(
                &args.path,
                args.start_line.unwrap_or(0),
                args.end_line.unwrap_or(-1),
            )
            .await
    }
}

/// What `write_file` takes.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteArgs {
    /// The file (relative paths from the shell's directory).
    pub path: String,
    /// Its whole new content.
    pub content: String,
}

impl PortableTool for WriteFile {
    const NAME: &'static str = "write_file";
    type Args = WriteArgs;
    type Output = String;
    type Error = Error;

    fn description(&self) -> String {
        "Write a text file in the sandbox whole, making its directories.".into()
    }

    fn parameters(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"]
        })
    }

    async fn call(&self, args: WriteArgs) -> Result<String, Error> {
        self.session.write(&args.path, &args.content, 0, -1).await?;
        Ok(format!(
            "wrote {} bytes to {}",
            args.content.len(),
            args.path
        ))
    }
}

impl PortableTool for Edit {
    const NAME: &'static str = "edit";
    type Args = EditRequest;
    type Output = String;
    type Error = Error;

    fn description(&self) -> String {
        "View, create and edit files in the sandbox: view (a file with line numbers, or a \
         directory), create, str_replace (old_str must occur exactly once), insert (after \
         insert_line), undo_edit."
            .into()
    }

    fn parameters(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {
                "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"]},
                "path": {"type": "string"},
                "file_text": {"type": "string"},
                "old_str": {"type": "string"},
                "new_str": {"type": "string"},
                "insert_line": {"type": "integer", "minimum": 0},
                "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
            },
            "required": ["command", "path"]
        })
    }

    async fn call(&self, a: EditRequest) -> Result<String, Error> {
        self.session.editor(&a).await
    }
}
