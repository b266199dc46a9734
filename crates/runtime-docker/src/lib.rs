#![doc = include_str!("docs.md")]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod agent;
mod config;
mod error;
mod exec;
mod files;
mod inside;
mod keeper;
mod labels;
mod netguard;
mod pool;
mod process;
mod runtime;
mod sandbox;
mod snapshot;
mod template;
mod trust;
mod volume;

pub use agent::AGENT_BIN_ENV;
pub use config::DockerRuntimeBuilder;
pub use files::DockerFiles;
pub use pool::POOL_TTL;
pub use runtime::{
    DockerRuntime, DEFAULT_CAPABILITIES, DEFAULT_CPUS, DEFAULT_IMAGE, ISOLATED_NETWORK,
};
pub use sandbox::DockerSandbox;
pub use template::TemplateFile;
