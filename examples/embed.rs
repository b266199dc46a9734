//! Embedding sandkit: the backend comes from the configuration (defaults, ./sandkit.toml, environment).
//!
//! `cargo run -p sandkit-examples --example embed`

use runtime_core::{CommandSpec, FileStoreExt, SandboxExt, SandboxSpec};

#[tokio::main]
async fn main() -> runtime_core::Result<()> {
    let config = runtime_config::Config::load()?;
    let runtime = config.runtime().await?; // Arc<dyn Runtime>: Docker or E2B, as configured

    let sandbox = runtime
        .create(SandboxSpec::new().metadata("example", "embed"))
        .await?;
    sandbox
        .files()
        .write_str("/tmp/hello.py", "print('hi from the sandbox')")
        .await?;
    let out = sandbox
        .exec(CommandSpec::shell("python3 /tmp/hello.py"))
        .await?;
    assert_eq!(out.exit_code, Some(0)); // a non-zero exit is data, not an error
    print!("{}", out.stdout_text());
    sandbox.kill().await
}
