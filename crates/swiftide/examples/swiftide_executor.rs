//! A swiftide `ToolExecutor` over a sandbox chosen by configuration alone (`sandkit.toml`, `SANDKIT_*`
//! variables): what an agent built with swiftide gets as its executor
//! (`Agent::builder().tool_executor(executor)`), used here directly.
//!
//! `cargo run -p sandkit-swiftide --example swiftide_executor`

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use swiftide_core::{Command, ToolExecutor};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = sandkit_config::Config::load()?;
    let runtime = config.runtime().await?;
    let sandbox = runtime.create(sandkit_core::SandboxSpec::new()).await?;
    let executor = sandkit_swiftide::SandboxExecutor::new(Arc::from(sandbox));

    executor
        .exec_cmd(&Command::write_file(
            "/tmp/project/src/lib.rs",
            "pub fn hi() {}\n",
        ))
        .await?;
    let out = executor
        .exec_cmd(&Command::shell("ls -R").with_current_dir("/tmp/project"))
        .await?;
    println!("{out}");
    let mut files = executor
        .stream_files(Path::new("/tmp/project"), Some(vec!["rs".into()]))
        .await?;
    while let Some(node) = files.next().await {
        let node = node?;
        println!("{}: {} bytes", node.path.display(), node.chunk.len());
    }
    executor.sandbox().kill().await?;
    Ok(())
}
