//! What a crate user meets before any test runs: the packages are publishable, no dependency is
//! unused, every feature of the facade and of the config crate builds alone, and the README's
//! first example builds in a crate outside the workspace with a lean tree.

use std::path::Path;
use std::process::Command;

use crate::shell::{cargo, root, run, step, Result};

/// Crates that must never be in the tree of a program that asks for the Docker backend alone.
const NOT_FOR_DOCKER: &[&str] = &[
    "reqwest",
    "rustls",
    "axum",
    "rmcp",
    "rig-core",
    "swiftide-core",
];

/// The facade's features, each alone, and with the configuration.
const FACADE_FEATURES: &[&str] = &[
    "docker",
    "e2b",
    "local",
    "actions",
    "config,docker",
    "config,e2b",
    "config,docker,e2b,local,actions",
];

/// The config crate's features, each alone.
const CONFIG_FEATURES: &[&str] = &["", "docker", "e2b"];

pub(crate) fn packaging() -> Result {
    step("cargo package --workspace --no-verify (every published crate can be packaged)");
    // Without lockfiles: cargo orders the packages to resolve each one's lock against those
    // packaged before it, and the suite's dev-dependency cycle (sandkit-actions is tested with
    // sandkit-conformance, which runs actions) has no order. The crate outside the workspace
    // below resolves and builds the facade for real.
    run(cargo().args([
        "package",
        "--workspace",
        "--no-verify",
        "--allow-dirty",
        "--exclude-lockfile",
        "--quiet",
    ]))?;

    step("cargo machete (no unused dependency)");
    let machete = tool("cargo-machete", "0.9.2")?;
    run(Command::new(machete).arg(root()))?;

    step("feature matrix: the facade's and the config crate's features, each alone");
    for features in FACADE_FEATURES {
        check("sandkit", features)?;
    }
    for features in CONFIG_FEATURES {
        check("sandkit-config", features)?;
    }
    refused_without_backend()?;

    scratch_crate()
}

/// `cargo check -p PACKAGE --no-default-features --features FEATURES`.
fn check(package: &str, features: &str) -> Result {
    eprintln!("    {package} [{features}]");
    run(cargo().args([
        "check",
        "--quiet",
        "-p",
        package,
        "--no-default-features",
        "--features",
        features,
    ]))
}

/// The default features (configuration, no backend) do not compile, and say why.
fn refused_without_backend() -> Result {
    eprintln!("    sandkit [default]: must not compile");
    let out = cargo()
        .args([
            "check",
            "--quiet",
            "-p",
            "sandkit",
            "--message-format",
            "short",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !text.contains("no backend it can pick is built in") {
        return Err(format!(
            "`sandkit` with default features and no backend must fail to compile with the \
             facade's message; it {}:\n{text}",
            if out.status.success() {
                "compiled"
            } else {
                "failed otherwise"
            }
        ));
    }
    Ok(())
}

/// A crate outside the workspace, as a framework author makes one: `sandkit` with the Docker
/// backend, the README's first example as `main.rs`. Its tree must be lean, and it must build.
fn scratch_crate() -> Result {
    step("a crate outside the workspace: sandkit with features = [\"docker\"]");
    let dir = root().join("target/scratch-facade");
    std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
    let facade = root().join("crates/sandkit");
    write(
        &dir.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"scratch-facade\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [workspace]\n\n[dependencies]\nsandkit = {{ path = {:?}, features = [\"docker\"] }}\n\
             tokio = {{ version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }}\n",
            facade.display().to_string()
        ),
    )?;
    write(&dir.join("src/main.rs"), &readme_first_example()?)?;
    // The workspace's lock pins the versions CI already has.
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).map_err(|e| e.to_string())?;
    let manifest = dir.join("Cargo.toml");
    let tree = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree",
            "--quiet",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("cannot run cargo tree: {e}"))?;
    if !tree.status.success() {
        return Err(format!(
            "cargo tree failed:\n{}",
            String::from_utf8_lossy(&tree.stderr)
        ));
    }
    let tree = String::from_utf8_lossy(&tree.stdout);
    let found: Vec<&str> = NOT_FOR_DOCKER
        .iter()
        .copied()
        .filter(|name| tree.lines().any(|l| l.split(' ').next() == Some(*name)))
        .collect();
    if !found.is_empty() {
        return Err(format!(
            "sandkit with the Docker backend alone pulls in {}: see `cargo tree -i <crate> --manifest-path {}`",
            found.join(", "),
            manifest.display()
        ));
    }
    eprintln!(
        "    {} crates in the tree, none of {}",
        tree.lines()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        NOT_FOR_DOCKER.join(", ")
    );
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .env(
                "CARGO_TARGET_DIR",
                root().join("target/scratch-facade/target"),
            ),
    )
}

/// The first ```rust block of the README's embedding section: what a newcomer copies.
fn readme_first_example() -> Result<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).map_err(|e| e.to_string())?;
    let section = readme
        .split("## Embed it in Rust")
        .nth(1)
        .ok_or("README.md has no \"## Embed it in Rust\" section")?;
    let code = section
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .ok_or("the README's embedding section has no ```rust block")?;
    Ok(code.to_string())
}

fn write(path: &Path, text: &str) -> Result {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A cargo subcommand from crates.io, installed once under target/tools.
fn tool(name: &str, version: &str) -> Result<std::path::PathBuf> {
    let dir = root().join("target/tools");
    let bin = dir.join("bin").join(name);
    if bin.exists() {
        return Ok(bin);
    }
    run(cargo()
        .args([
            "install",
            "--locked",
            "--quiet",
            name,
            "--version",
            version,
            "--root",
        ])
        .arg(&dir))?;
    Ok(bin)
}
