//! `Action` and `Observation` in OpenHands' JSON shapes, so an agent framework can pass them
//! straight through: `{"action": "run", "args": {...}}` and
//! `{"observation": "run", "content": "...", "extras": {...}}`.

use serde::{Deserialize, Serialize};

/// An action, tagged by `action`, with its fields under `args`.
///
/// ```
/// use sandkit_actions::Action;
/// let a: Action = serde_json::from_str(r#"{"action":"run","args":{"command":"ls"}}"#).unwrap();
/// assert!(matches!(a, Action::Run(ref r) if r.command == "ls"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", content = "args", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// `CmdRunAction`.
    Run(CmdRunArgs),
    /// `IPythonRunCellAction`.
    RunIpython(IPythonArgs),
    /// `FileReadAction`.
    Read(FileReadArgs),
    /// `FileWriteAction`.
    Write(FileWriteArgs),
    /// `FileEditAction` (the `str_replace_editor` commands).
    Edit(FileEditArgs),
    /// `BrowseURLAction`.
    Browse(BrowseArgs),
}

/// An action as OpenHands' event stream carries it: the action plus a top-level `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionEvent {
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// Hard timeout in seconds (OpenHands' `set_hard_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// `run` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CmdRunArgs {
    /// The command; empty means "more output of the running command".
    pub command: String,
    /// Send `command` as input or keys to the running command.
    pub is_input: bool,
    /// The agent's reasoning (kept, not used).
    pub thought: String,
    /// Wait without the no-output timeout.
    pub blocking: bool,
    /// Run in a separate one-off shell with `cwd`.
    pub is_static: bool,
    /// Working directory of a static command.
    pub cwd: Option<String>,
    /// Not shown to the agent and not truncated.
    pub hidden: bool,
    /// Hard timeout in seconds (also accepted at the top level of an event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// `run_ipython` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IPythonArgs {
    /// The cell.
    pub code: String,
    /// The agent's reasoning.
    pub thought: String,
    /// Append the kernel's cwd and interpreter.
    pub include_extra: bool,
    /// Code run before the cell the first time.
    pub kernel_init_code: String,
    /// Timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

impl Default for IPythonArgs {
    fn default() -> Self {
        IPythonArgs {
            code: String::new(),
            thought: String::new(),
            include_extra: true,
            kernel_init_code: String::new(),
            timeout: None,
        }
    }
}

/// `read` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileReadArgs {
    /// The file (relative paths resolve against the shell's cwd).
    pub path: String,
    /// First line, 0-based.
    pub start: i64,
    /// End line, exclusive; -1 = to the end.
    pub end: i64,
    /// The agent's reasoning.
    pub thought: String,
    /// `default` (line slice) or `oh_aci` (`cat -n` view with `view_range`).
    pub impl_source: String,
    /// 1-based inclusive range for the `oh_aci` view; -1 = end of file.
    pub view_range: Option<Vec<i64>>,
}

impl Default for FileReadArgs {
    fn default() -> Self {
        FileReadArgs {
            path: String::new(),
            start: 0,
            end: -1,
            thought: String::new(),
            impl_source: "default".into(),
            view_range: None,
        }
    }
}

/// `write` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileWriteArgs {
    /// The file.
    pub path: String,
    /// The new text.
    pub content: String,
    /// First line replaced, 0-based.
    pub start: i64,
    /// End of the replaced lines, exclusive; -1 = to the end.
    pub end: i64,
    /// The agent's reasoning.
    pub thought: String,
}

impl Default for FileWriteArgs {
    fn default() -> Self {
        FileWriteArgs {
            path: String::new(),
            content: String::new(),
            start: 0,
            end: -1,
            thought: String::new(),
        }
    }
}

/// `edit` arguments (`str_replace_editor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileEditArgs {
    /// The file.
    pub path: String,
    /// `view`, `create`, `str_replace`, `insert` or `undo_edit`.
    pub command: String,
    /// Content for `create`.
    pub file_text: Option<String>,
    /// Text to replace.
    pub old_str: Option<String>,
    /// Replacement or inserted text.
    pub new_str: Option<String>,
    /// Insert after this line (0 = top).
    pub insert_line: Option<i64>,
    /// Range for `view` (OpenHands sends views as `read`; accepted here too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_range: Option<Vec<i64>>,
    /// The agent's reasoning.
    pub thought: String,
    /// Always `oh_aci` here.
    pub impl_source: String,
}

impl Default for FileEditArgs {
    fn default() -> Self {
        FileEditArgs {
            path: String::new(),
            command: String::new(),
            file_text: None,
            old_str: None,
            new_str: None,
            insert_line: None,
            view_range: None,
            thought: String::new(),
            impl_source: "oh_aci".into(),
        }
    }
}

/// `browse` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrowseArgs {
    /// The URL, fetched from inside the sandbox.
    pub url: String,
    /// The agent's reasoning.
    pub thought: String,
    /// Accepted; no accessibility tree is produced.
    pub return_axtree: bool,
}

/// An observation: `observation`, `content`, and the kind's `extras`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// `run`, `run_ipython`, `read`, `write`, `edit`, `browse` or `error`.
    pub observation: String,
    /// What the agent reads.
    pub content: String,
    /// Kind-specific fields.
    pub extras: serde_json::Value,
    /// Whether the action succeeded.
    #[serde(default = "yes")]
    pub success: bool,
}

fn yes() -> bool {
    true
}

/// `CmdOutputMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdOutputMetadata {
    /// Exit code, -1 while running.
    pub exit_code: i32,
    /// Process id, -1 when unknown.
    pub pid: i64,
    /// The user.
    pub username: Option<String>,
    /// The host.
    pub hostname: Option<String>,
    /// The shell's cwd.
    pub working_dir: Option<String>,
    /// The Python interpreter.
    pub py_interpreter_path: Option<String>,
    /// Said before the output.
    pub prefix: String,
    /// Said after the output.
    pub suffix: String,
}

impl Observation {
    /// An `error` observation.
    pub fn error(content: impl Into<String>) -> Self {
        Observation {
            observation: "error".into(),
            content: content.into(),
            extras: serde_json::json!({"error_id": ""}),
            success: false,
        }
    }

    /// A `run` observation.
    pub fn run(command: &str, content: String, metadata: CmdOutputMetadata, hidden: bool) -> Self {
        let success = metadata.exit_code == 0;
        Observation {
            observation: "run".into(),
            content,
            extras: serde_json::json!({"command": command, "metadata": metadata, "hidden": hidden}),
            success,
        }
    }

    /// The exit code of a `run` observation.
    pub fn exit_code(&self) -> Option<i32> {
        self.extras
            .get("metadata")?
            .get("exit_code")?
            .as_i64()
            .map(|c| c as i32)
    }

    /// The text an agent is shown, as OpenHands renders a command's observation: prefix,
    /// content, suffix, then the working directory.
    pub fn to_agent_text(&self) -> String {
        if self.observation != "run" {
            return self.content.clone();
        }
        let md = self.extras.get("metadata");
        let get = |k: &str| {
            md.and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let mut text = format!("{}{}{}", get("prefix"), self.content, get("suffix"));
        let cwd = get("working_dir");
        if !cwd.is_empty() {
            text.push_str(&format!("\n[Current working directory: {cwd}]"));
        }
        text
    }
}
