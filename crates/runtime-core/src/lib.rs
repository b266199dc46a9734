//! The contract every sandkit backend implements.
//!
//! - [`Runtime`]: a place where sandboxes live (a Docker engine, an E2B account).
//! - [`Sandbox`]: one live sandbox; [`Sandbox::spawn`] starts a [`Process`].
//! - [`FileStore`]: files in a sandbox, on the host, or in memory.
//!
//! The traits are deliberately small. Everything built on them lives once in
//! [`SandboxExt`] and [`FileStoreExt`], which every implementor gets for free.
//!
//! Every crate of sandkit returns one [`Error`], classified by a `Copy` [`ErrorKind`]:
//!
//! ```
//! use sandkit_core::{CommandSpec, ErrorKind, Sandbox, SandboxExt};
//!
//! async fn show(sandbox: &dyn Sandbox) -> sandkit_core::Result<()> {
//!     let out = sandbox.exec(CommandSpec::shell("echo hi; exit 3")).await?;
//!     assert_eq!(out.exit_code, Some(3)); // exit codes are data, not errors
//!     assert_eq!(out.stdout_text(), "hi\n");
//!     match sandbox.exec(CommandSpec::shell("sleep 60").timeout(std::time::Duration::from_secs(1))).await {
//!         Err(e) if e.kind() == ErrorKind::Timeout => { /* killed, output in e.output() */ }
//!         other => panic!("{other:?}"),
//!     }
//!     Ok(())
//! }
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod command;
mod error;
mod ext;
mod files;
pub mod layer;
mod network;
mod operation;
mod process;
pub mod raw;
mod request_rules;
mod runtime;
mod sandbox_types;

pub use command::{Command, CommandSpec, ExecOutput, ProcessEvent, ProcessInfo, PtySize, Signal};
pub use error::{Error, ErrorKind, Result};
pub use ext::{copy_tree, FileStoreExt, SandboxExt, DEFAULT_EXEC_LIMIT};
pub use files::{ByteStream, EntryInfo, EntryKind, FileStore, FsEvent, FsEventKind, FsEventStream};
pub use network::{domain_matches, Cidr, Destination, Lists, NetworkPolicy, ALL_TRAFFIC};
pub use operation::Operation;
pub use process::{EventStream, Process, ProcessHandle};
pub use request_rules::{
    expand_secrets, secret_names, EgressProxy, EgressProxyTls, RequestRule, Secrets,
    SECRET_PLACEHOLDER,
};
pub use runtime::{Runtime, Sandbox, MAX_FORKS};
pub use sandbox_types::{
    Capabilities, Gauge, ListFilter, Metrics, Mount, MountSource, NetworkMode, Resources,
    SandboxInfo, SandboxSpec, SandboxState, Snapshot, Volume, DEFAULT_SANDBOX_TIMEOUT,
};
