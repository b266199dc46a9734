#![doc = include_str!("docs.md")]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod api;
mod config;
mod control;
mod envd_url;
mod error;
mod runtime;
mod sandbox;

pub use config::DEBUG_SANDBOX_ID;
pub use runtime::{E2bRuntime, E2bRuntimeBuilder};
pub use sandbox::E2bSandbox;
