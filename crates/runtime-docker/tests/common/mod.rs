//! What the Docker test binaries share.

use std::path::PathBuf;

/// The static agent binary: `SANDKIT_AGENT_BIN`, else what `cargo xtask agent` built in this
/// workspace.
pub fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SANDKIT_AGENT_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release/sandkit-agent");
    built.exists().then_some(built)
}

/// A runtime whose sandboxes' deadlines the keeper holds; the test fails without an engine or
/// the agent binary.
pub async fn kept() -> sandkit_docker::DockerRuntime {
    let bin = sandkit_conformance::needs_engine(
        agent_binary().ok_or("no agent binary: run `cargo xtask agent` or set SANDKIT_AGENT_BIN"),
    );
    sandkit_conformance::needs_engine(
        sandkit_docker::DockerRuntime::builder()
            .agent_binary(bin)
            .build()
            .await,
    )
}
