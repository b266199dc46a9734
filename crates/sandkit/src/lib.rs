//! Sandboxes for AI agents: one API over a Docker engine, E2B (its cloud or any compatible server)
//! and the local machine.
//!
//! Choose the backends a program carries with features:
//!
//! ```toml
//! [dependencies]
//! sandkit = { version = "0.1", features = ["docker"] }   # or "e2b", "local"; "actions" for sessions
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! Then the configuration (defaults, `./sandkit.toml`, the environment) picks among them:
//!
//! ```no_run
//! use sandkit::{CommandSpec, FileStoreExt, SandboxExt, SandboxSpec};
//!
//! #[tokio::main]
//! async fn main() -> sandkit::Result<()> {
//!     let runtime = sandkit::Config::load()?.runtime().await?; // Docker or E2B, as configured
//!     let sandbox = runtime.create(SandboxSpec::new()).await?;
//!     sandbox.files().write_str("/tmp/hello.py", "print('hi')").await?;
//!     let out = sandbox.exec(CommandSpec::shell("python3 /tmp/hello.py")).await?;
//!     print!("{}", out.stdout_text()); // a non-zero exit is data: out.exit_code
//!     sandbox.kill().await
//! }
//! ```
//!
//! | feature | what it adds |
//! |---|---|
//! | `config` (default) | `sandkit::Config`: layered configuration and the backend it picks (`sandkit::config`) |
//! | `docker` | `sandkit::docker`: sandboxes as containers on a Docker engine, with the in-sandbox agent |
//! | `e2b` | `sandkit::e2b`: E2B's cloud or any E2B-compatible server (`e2b-local`) |
//! | `local` | `sandkit::local`: this machine as a sandbox, with no isolation (tests, trusted tools) |
//! | `actions` | `sandkit::actions`: an agent's session — persistent shell, IPython, editor, browsing |
//!
//! Everything else here is the contract every backend implements, re-exported from
//! `sandkit-core`: [`Runtime`], [`Sandbox`], [`FileStore`], [`Error`] and their extensions.
#![warn(missing_docs)]

#[cfg(all(feature = "config", not(any(feature = "docker", feature = "e2b"))))]
compile_error!(
    "sandkit: the `config` feature (on by default) picks a backend at run time, and no backend it \
     can pick is built in. Add one: sandkit = { version = \"0.1\", features = [\"docker\"] } (or \
     \"e2b\"). For the local backend alone, or the traits alone, use default-features = false."
);

pub use sandkit_core::*;

#[cfg(feature = "config")]
pub use sandkit_config as config;
#[cfg(feature = "config")]
pub use sandkit_config::Config;

#[cfg(feature = "docker")]
pub use sandkit_docker as docker;

#[cfg(feature = "e2b")]
pub use sandkit_e2b as e2b;

#[cfg(feature = "local")]
pub use sandkit_local as local;

#[cfg(feature = "actions")]
pub use sandkit_actions as actions;
