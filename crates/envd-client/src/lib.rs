//! A client of E2B's envd — the process and filesystem services inside a sandbox — as sandkit
//! types ([`sandkit_core::Process`], [`sandkit_core::FileStore`], events, metrics).
//!
//! Two backends use it: the Docker backend talks to `sandkit-agent` inside each container over
//! one HTTP/2 connection on the agent's stdio ([`EnvdClient::over`] with a [`Connect`]), and the
//! E2B backend talks to E2B's envd over URLs with its own HTTP client ([`EnvdClient::with_transport`]
//! with a [`Transport`]). This crate carries no TLS and no HTTP/1 client of its own.
//!
//! ```no_run
//! # async fn run() -> sandkit_core::Result<()> {
//! use std::sync::Arc;
//! use sandkit_core::{CommandSpec, FileStoreExt};
//! use sandkit_envd_client::{Connect, EnvdClient, EnvdIo};
//!
//! /// envd listening on a Unix socket (as `sandkit-agent serve --socket PATH` does).
//! #[derive(Debug)]
//! struct Socket(&'static str);
//! impl Connect for Socket {
//!     fn connect(&self) -> futures_util::future::BoxFuture<'static, std::io::Result<Box<dyn EnvdIo>>> {
//!         let path = self.0;
//!         Box::pin(async move {
//!             Ok(Box::new(tokio::net::UnixStream::connect(path).await?) as Box<dyn EnvdIo>)
//!         })
//!     }
//! }
//!
//! let envd = EnvdClient::over(Arc::new(Socket("/run/envd.sock")), "sandbox-1", None);
//! envd.files().write_str("/tmp/hello.txt", "hi").await?;
//! let mut process = envd.spawn(CommandSpec::shell("cat /tmp/hello.txt")).await?;
//! while let Some(event) = process.next_event().await {
//!     println!("{:?}", event?); // Stdout("hi"), then Exit(0)
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod client;
mod envd;
mod error;
mod files;
mod process;
mod transport;

pub use client::EnvdClient;
pub use files::EnvdFiles;
pub use transport::{Body, BoxError, Call, Connect, EnvdIo, Transport};
