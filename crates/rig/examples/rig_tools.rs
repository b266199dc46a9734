//! sandkit's tools as a rig agent sees them: their definitions, and one call by name with JSON
//! arguments, over a sandbox chosen by configuration alone (`sandkit.toml`, `SANDKIT_*` variables).
//! With a model provider, pass the same tools to rig's `AgentBuilder::tool`.
//!
//! `cargo run -p sandkit-rig --example rig_tools`

use std::sync::Arc;

use rig_core::tool::ToolContext;
use sandkit_actions::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let config = Config::load()?;
    let options = SessionOptions::from_config(&config).kill_on_drop(true);
    let session = Arc::new(Session::open(config.runtime().await?, "rig-example", options).await?);
    let tools = sandkit_rig::tools(session.clone());
    for tool in &tools {
        println!(
            "{}: {}\n  {}",
            tool.name(),
            tool.description(),
            tool.parameters()
        );
    }
    let run = tools
        .iter()
        .find(|t| t.name() == "run_command")
        .expect("run_command");
    let result = run
        .execute(
            r#"{"command": "uname -sm && pwd"}"#.into(),
            &mut ToolContext::new(),
        )
        .await;
    println!("run_command -> {}", result.output().render());
    drop(tools);
    session.close().await
}
