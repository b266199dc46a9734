#![doc = include_str!("docs.md")]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod client;
mod config;
mod conn;
mod core;
mod error;
mod files;
mod process;
mod runtime;
mod sandbox;

pub use client::EnvdClient;
pub use config::DEBUG_SANDBOX_ID;
pub use conn::{Connect, EnvdIo};
pub use files::E2bFiles;
pub use runtime::{E2bRuntime, E2bRuntimeBuilder};
pub use sandbox::E2bSandbox;
