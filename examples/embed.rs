//! Embedding sandkit: the backend comes from the configuration (defaults, ./sandkit.toml, environment).
//!
//! `cargo run -p sandkit-examples --example embed`

use sandkit::{CommandSpec, FileStoreExt, SandboxExt, SandboxSpec};

#[tokio::main]
async fn main() -> sandkit::Result<()> {
    let config = sandkit::Config::load()?;
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
