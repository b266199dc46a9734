//! The sandkit local backend: a [`Runtime`](sandkit_core::Runtime) whose sandboxes are this
//! machine. **No isolation**: commands are processes of the current one and files are the
//! machine's own. It is the fastest conformance target, a backend for trusted code, and what
//! `sandkit-agent` serves from inside a container.
//!
//! - Commands run in a process group of their own (a session, on a PTY), as a named user
//!   (uid, gid, groups and home read from `/etc/passwd` and `/etc/group`: no NSS, so a static
//!   binary works). A timeout kills the whole group, enforced by the task that owns the process
//!   whether or not anyone reads its output.
//! - Files are system calls: atomic writes (temporary file + rename; a cut write keeps the old
//!   content), a write onto a link replaces the link, listings with no text parsing, links
//!   reported and not followed. As another user, every call runs with that user's credentials.
//!
//! ```no_run
//! # async fn run() -> sandkit_core::Result<()> {
//! use sandkit_core::{CommandSpec, Runtime, SandboxExt, SandboxSpec};
//! let runtime = sandkit_local::LocalRuntime::new();
//! let sb = runtime.create(SandboxSpec::new()).await?;
//! let out = sb.exec(CommandSpec::shell("echo hi")).await?;
//! assert_eq!(out.stdout_text(), "hi\n");
//! sb.kill().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod files;
mod metrics;
mod process;
mod runtime;
mod users;
mod watch;
mod xattr;

pub use files::LocalFiles;
pub use runtime::{LocalRuntime, LocalSandbox};
