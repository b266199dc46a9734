//! Project automation, with no dependencies beyond std.
//!
//! ```text
//! cargo xtask ci        everything CI checks: engine, images, fmt, clippy, docs, packaging,
//!                       unused dependencies, the feature matrix, a crate outside the
//!                       workspace, tests
//! cargo xtask docker [--gvisor]   make sure a Docker engine answers (installs and starts
//!                       docker.io if needed); --gvisor also installs gVisor (runsc) and
//!                       registers it with the engine as the OCI runtime `runsc`
//! cargo xtask image     build sandkit-base:bookworm and sandkit-mini:latest from Debian packages
//! cargo xtask packaging   the packaging part of ci: cargo package, unused dependencies,
//!                       the feature matrix, a crate outside the workspace
//! cargo xtask cycles    no source file of a crate imports a file that imports it back
//! cargo xtask agent     build sandkit-agent fully static (prints its path; SANDKIT_AGENT_BIN points there)
//! cargo xtask run [-- CMD...]   set up (engine, images) and run a command in a fresh sandbox
//! cargo xtask bench [--quick]   the benchmark against the Docker CLI and the E2B SDK
//! ```

mod cycles;
mod packaging;
mod shell;

use shell::{cargo, root, run, step, succeeds, Result};

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const BASE_IMAGE: &str = "sandkit-base:bookworm";
const MINI_IMAGE: &str = "sandkit-mini:latest";
const BASE_PACKAGES: &str =
    "bash,coreutils,procps,python3,ca-certificates,curl,findutils,grep,sed,tar,gzip,git,sudo,nftables";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let force = args.iter().any(|a| a == "--force");
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("docker") => docker().and_then(|_| {
            if args.iter().any(|a| a == "--gvisor") {
                gvisor()
            } else {
                Ok(())
            }
        }),
        Some("image") => docker().and_then(|_| images(force)),
        Some("packaging") => packaging::packaging(),
        Some("cycles") => file_cycles(),
        Some("agent") => agent().map(|path| println!("{}", path.display())),
        Some("run") => docker()
            .and_then(|_| images(false))
            .and_then(|_| agent())
            .and_then(|bin| run_in_sandbox(&args[1..], &bin)),
        Some("bench") => docker()
            .and_then(|_| gvisor())
            .and_then(|_| images(false))
            .and_then(|_| agent())
            .and_then(|bin| bench(&args[1..], &bin)),
        _ => {
            eprintln!("usage: cargo xtask <ci | docker [--gvisor] | image [--force] | agent | packaging | cycles | run [-- CMD...] | bench [--quick]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fails when a crate's file-level import graph has a cycle that is not a known one being taken
/// apart (see `cycles.rs`).
fn file_cycles() -> Result {
    step("file-level import cycles");
    let wrong = cycles::check(&root())?;
    if wrong.is_empty() {
        eprintln!("no new cycle between the files of a crate");
        return Ok(());
    }
    for line in &wrong {
        eprintln!("{line}");
    }
    Err("file-level import cycles: move what both files need into a module of its own".into())
}

/// The target `sandkit-agent` is built for: the host's gnu target, linked statically.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `sandkit-agent` fully static (`-C target-feature=+crt-static` on the gnu target: no musl
/// here) and returns its path. The flag applies to that target only, so build scripts and
/// proc macros of the host build are untouched.
fn agent() -> Result<PathBuf> {
    step("cargo build --release -p sandkit-agent (static)");
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "sandkit-agent",
            "--target",
            AGENT_TARGET,
        ])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        ))?;
    let bin = root()
        .join("target")
        .join(AGENT_TARGET)
        .join("release")
        .join("sandkit-agent");
    if !bin.exists() {
        return Err(format!("the build left no binary at {}", bin.display()));
    }
    Ok(bin)
}

fn ci() -> Result {
    docker()?;
    gvisor()?;
    images(false)?;
    let agent = agent()?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy (warnings are errors)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("cargo doc (warnings are errors)");
    run(cargo()
        .args(["doc", "--no-deps", "--workspace"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    packaging::packaging()?;
    file_cycles()?;
    step("cargo test (SANDKIT_REQUIRE_DOCKER=1: a missing engine fails the run)");
    let mut test = cargo();
    test.args(["test", "--workspace", "--no-fail-fast"])
        .env("SANDKIT_REQUIRE_DOCKER", "1")
        .env("SANDKIT_REQUIRE_GVISOR", "1")
        .env("SANDKIT_AGENT_BIN", &agent);
    // The official SDK runs alongside the load test of e2b-local.
    test.env("E2B_SDK_PYTHON", sdk_python()?);
    run(&mut test)?;
    engine_restart(&agent)?;
    e2b_sdk_tests(&agent)?;
    mcp_tests(&agent)
}

/// The engine stopped and started under running calls (crates/runtime-docker/tests/engine_restart.rs):
/// ignored in the plain run, where it would take the engine from every other test, and run here
/// on its own. It needs root, as CI has; elsewhere the run fails, saying so.
fn engine_restart(agent: &Path) -> Result<()> {
    step("engine restart test (stops and starts dockerd)");
    if !is_root() {
        return Err("the engine restart test stops and starts dockerd: run `cargo xtask ci` as root (CI does)".into());
    }
    run(cargo()
        .args([
            "test",
            "-p",
            "sandkit-docker",
            "--test",
            "engine_restart",
            "--",
            "--ignored",
        ])
        .env("SANDKIT_REQUIRE_DOCKER", "1")
        .env("SANDKIT_AGENT_BIN", agent))
}

/// A virtualenv with the pinned official E2B and MCP SDKs (tests/e2b-sdk and tests/mcp
/// requirements).
fn sdk_python() -> Result<PathBuf> {
    let venv = root().join("target").join("e2b-sdk-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(root().join("tests/e2b-sdk/requirements.txt"))
        .arg("-r")
        .arg(root().join("tests/mcp/requirements.txt")))?;
    Ok(python)
}

/// The official E2B Python SDK (tests/e2b-sdk, pinned versions) against e2b-local.
fn e2b_sdk_tests(agent: &Path) -> Result {
    step("the official E2B Python SDK against e2b-local (tests/e2b-sdk)");
    run(cargo().args(["build", "-p", "sandkit-e2b-local"]))?;
    let python = sdk_python()?;
    run(Command::new(&python)
        // Two workers, each with a server of its own: an SDK user's test run at the default
        // limits, and half the time.
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2"])
        .arg(root().join("tests/e2b-sdk"))
        .env("E2B_LOCAL_BIN", root().join("target/debug/e2b-local"))
        .env("SANDKIT_AGENT_BIN", agent)
        .current_dir(root()))
}

/// The official MCP Python SDK (tests/mcp) against `sandkit mcp`, over stdio and HTTP.
fn mcp_tests(agent: &Path) -> Result {
    step("the official MCP Python SDK against sandkit mcp (tests/mcp)");
    run(cargo().args(["build", "-p", "sandkit-cli"]))?;
    let python = sdk_python()?;
    run(Command::new(&python)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q"])
        .arg(root().join("tests/mcp"))
        .env("SANDKIT_BIN", root().join("target/debug/sandkit"))
        .env("SANDKIT_AGENT_BIN", agent)
        .current_dir(root()))
}

/// Runs a command in a fresh sandbox with the `sandkit` CLI.
fn run_in_sandbox(args: &[String], agent: &Path) -> Result {
    let words: Vec<String> = match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].to_vec(),
        None => args.to_vec(),
    };
    let words = if words.is_empty() {
        vec!["echo \"hello from sandbox $(hostname), $(uname -sr)\"".to_string()]
    } else {
        words
    };
    step("sandkit run");
    run(cargo()
        .args(["run", "--quiet", "-p", "sandkit-cli", "--", "run", "--"])
        .args(&words)
        .env("SANDKIT_AGENT_BIN", agent))
}

/// The benchmark, built with optimisations.
fn bench(args: &[String], agent: &Path) -> Result {
    let python = sdk_python()?;
    step("cargo run --release -p sandkit-bench (builds with optimisations first; a few minutes)");
    run(cargo()
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "sandkit-bench",
            "--",
            "--python",
        ])
        .arg(&python)
        .args(args)
        .env("SANDKIT_AGENT_BIN", agent))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn apt_install(packages: &[&str]) -> Result {
    if !is_root() {
        return Err(format!(
            "these Debian packages are needed: {}; install them (as root: apt-get install {})",
            packages.join(" "),
            packages.join(" ")
        ));
    }
    step(&format!("apt-get install {}", packages.join(" ")));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn engine_answers() -> bool {
    succeeds(Command::new("docker").arg("info"))
}

/// Makes sure a Docker engine answers: installs Debian's docker.io and starts dockerd if needed.
fn docker() -> Result {
    if engine_answers() {
        return Ok(());
    }
    step("no Docker engine answers; starting one");
    if !succeeds(Command::new("sh").args(["-c", "command -v dockerd"])) {
        apt_install(&["docker.io"])?;
    }
    if !is_root() {
        return Err(
            "the Docker engine is not running and starting it needs root: sudo dockerd &".into(),
        );
    }
    let log = std::fs::File::create("/var/log/sandkit-dockerd.log").map_err(|e| e.to_string())?;
    Command::new("dockerd")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start dockerd: {e}"))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        if engine_answers() {
            eprintln!(
                "Docker engine is up after {:.1}s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err("dockerd did not answer within 90s; see /var/log/sandkit-dockerd.log".into())
}

/// Whether the engine has an OCI runtime named `runsc`.
fn engine_has_runsc() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"runsc\""))
        .unwrap_or(false)
}

/// Installs gVisor from Debian's packages and registers it with the engine as `runsc`, with
/// the ptrace platform (no KVM here) and the container's own network namespace
/// (`--network=host` to runsc: without it, runsc refuses a namespace it did not make).
fn gvisor() -> Result {
    if engine_has_runsc() {
        return Ok(());
    }
    step("registering gVisor (runsc) with the Docker engine");
    if !succeeds(Command::new("sh").args(["-c", "command -v runsc"])) {
        apt_install(&["runsc"])?;
    }
    if !is_root() {
        return Err("registering runsc in /etc/docker/daemon.json needs root".into());
    }
    // Merge into daemon.json with python3 (xtask has no JSON parser of its own).
    let merge = r#"
import json, os, sys
p = "/etc/docker/daemon.json"
c = json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) > 0 else {}
c.setdefault("runtimes", {})["runsc"] = {
    "path": "/usr/bin/runsc",
    "runtimeArgs": ["--platform=ptrace", "--network=host", "--file-access=shared"],
}
os.makedirs("/etc/docker", exist_ok=True)
json.dump(c, open(p, "w"), indent=2)
"#;
    run(Command::new("python3").arg("-c").arg(merge))?;
    // dockerd reloads its runtimes on SIGHUP.
    run(Command::new("sh").args(["-c", "kill -HUP $(pidof dockerd)"]))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if engine_has_runsc() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err("the engine did not pick up runsc after a reload; see /etc/docker/daemon.json".into())
}

fn image_exists(name: &str) -> bool {
    succeeds(Command::new("docker").args(["image", "inspect", name]))
}

/// Builds the two sandbox images from Debian packages, with no registry.
fn images(force: bool) -> Result {
    let need_base = force || !image_exists(BASE_IMAGE);
    let need_mini = force || !image_exists(MINI_IMAGE);
    if !need_base && !need_mini {
        return Ok(());
    }
    let mut missing = Vec::new();
    if need_base && !succeeds(Command::new("sh").args(["-c", "command -v debootstrap"])) {
        missing.push("debootstrap");
    }
    if need_mini && !Path::new("/bin/busybox").exists() {
        missing.push("busybox-static");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    let work = std::env::temp_dir().join(format!("sandkit-image-{}", std::process::id()));
    let result = (|| {
        if need_mini {
            build_mini(&work.join("mini"))?;
        }
        if need_base {
            build_base(&work.join("base"))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn build_mini(rootfs: &Path) -> Result {
    step(&format!(
        "building {MINI_IMAGE} from Debian's busybox-static"
    ));
    for dir in [
        "bin",
        "tmp",
        "etc",
        "root",
        "home/user",
        "proc",
        "sys",
        "dev",
        "workspace",
    ] {
        std::fs::create_dir_all(rootfs.join(dir)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    run(Command::new("chroot")
        .arg(rootfs)
        .args(["/bin/busybox", "--install", "-s", "/bin"]))?;
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n")
        .map_err(|e| e.to_string())?;
    run(Command::new("chmod").arg("1777").arg(rootfs.join("tmp")))?;
    run(Command::new("chown")
        .arg("1000:1000")
        .arg(rootfs.join("home/user")))?;
    import(rootfs, MINI_IMAGE, "/bin/sh", "PATH=/bin")
}

fn build_base(rootfs: &Path) -> Result {
    step(&format!(
        "building {BASE_IMAGE}: debootstrap --variant=minbase bookworm ({BASE_PACKAGES}); about a minute"
    ));
    let mirror = std::env::var("SANDKIT_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={BASE_PACKAGES}"),
            "bookworm",
        ])
        .arg(rootfs)
        .arg(&mirror))?;
    run(Command::new("chroot").arg(rootfs).args([
        "useradd",
        "--create-home",
        "--uid",
        "1000",
        "--shell",
        "/bin/bash",
        "user",
    ]))?;
    // As in E2B's base template: `user` may sudo without a password (sandboxes made with
    // `[docker] no_new_privileges = false`; the default flag stops setuid programs).
    std::fs::write(
        rootfs.join("etc/sudoers.d/user"),
        "user ALL=(ALL:ALL) NOPASSWD: ALL\n",
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("chmod")
        .arg("0440")
        .arg(rootfs.join("etc/sudoers.d/user")))?;
    run(Command::new("sh").arg("-c").arg(format!(
        "rm -rf {r}/var/cache/apt/archives/*.deb {r}/var/lib/apt/lists/* && mkdir -p {r}/workspace",
        r = rootfs.display()
    )))?;
    import(
        rootfs,
        BASE_IMAGE,
        "/bin/bash",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8",
    )
}

/// `tar -C rootfs -c . | docker import`.
fn import(rootfs: &Path, tag: &str, shell: &str, env: &str) -> Result {
    step(&format!("docker import {tag}"));
    let script = format!(
        "tar -C '{}' -c . | docker import -c 'CMD [\"{shell}\"]' -c 'ENV {env}' - {tag}",
        rootfs.display()
    );
    run(Command::new("sh").arg("-c").arg(script))
}
