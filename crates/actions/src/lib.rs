//! What an agent does in a sandbox, the same on every backend: the operations of OpenHands'
//! runtimes, done right.
//!
//! A [`Session`] holds one sandbox (attached to by session id, or created) and offers:
//!
//! - a shell whose working directory and exported variables persist between commands, with a
//!   no-output timeout (10 s) and a hard timeout (120 s) that return the output so far while
//!   the command keeps running; an empty command shows its new output, `is_input` sends text,
//!   `C-c`/`C-d`/`C-z` send keys; a new command is refused while one runs; `set -e`, `exit` or
//!   a killed shell never wedge it; output over 30 000 characters is cut in the middle;
//! - IPython-style cells in a persistent Python process (standard library only);
//! - file `read` (line slices), `view` (`cat -n`, directory trees), `write` (whole or line
//!   ranges, mode kept), and the editor's `create`, `str_replace`, `insert`, `undo_edit`;
//! - `browse` (fetched from inside the sandbox, returned as Markdown);
//! - `add_env_vars`, `copy_to`/`copy_from`, `list_files`.
//!
//! [`Action`] and [`Observation`] carry OpenHands' JSON shapes, so an agent framework can
//! pass them straight through [`Session::run_action`].
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod editor;
mod ipython;
mod session;
mod shell;
mod wire;

pub use editor::truncate_middle;
pub use ipython::CellResult;
pub use session::{BrowseResult, EditRequest, Session, SessionOptions, SESSION_KEY};
pub use shell::{RunRequest, RunResult, ShellOptions};
pub use wire::{
    Action, ActionEvent, BrowseArgs, CmdOutputMetadata, CmdRunArgs, FileEditArgs, FileReadArgs,
    FileWriteArgs, IPythonArgs, Observation,
};

/// What an agent tool executor needs, in one import line.
///
/// ```no_run
/// use sandkit_actions::prelude::*;
///
/// # async fn demo() -> Result<()> {
/// let config = Config::load()?;
/// let runtime = config.runtime().await?;
/// let session = Session::open(runtime, "episode-1", SessionOptions::from_config(&config).kill_on_drop(true)).await?;
/// let out = session.run(RunRequest { command: "ls".into(), ..Default::default() }).await?;
/// println!("{}", out.output);
/// session.close().await?;
/// # Ok(()) }
/// ```
///
/// The backends come from `sandkit-config`'s features: depend on it with
/// `features = ["docker", "e2b"]` (or the ones you use) beside this crate.
pub mod prelude {
    pub use crate::{
        Action, Observation, RunRequest, RunResult, Session, SessionOptions, ShellOptions,
    };
    pub use sandkit_config::Config;
    pub use sandkit_core::{
        CommandSpec, Error, ErrorKind, FileStore, FileStoreExt, Result, Runtime, Sandbox,
        SandboxExt, SandboxSpec,
    };
}
