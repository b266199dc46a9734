//! The sandkit behaviour suite, written once and run by every backend.
//!
//! Cases are plain async functions over [`sandkit_core`] traits, registered through
//! libtest-mimic as `backend::area::case` and gated by [`sandkit_core::Capabilities`]: a case
//! a backend cannot run shows as *ignored*, never as passed. Each case gets its own directory
//! or sandboxes and cleans them up even when it fails; after the run, [`Suite::run`] fails if
//! any sandbox labelled with the run is left.
//!
//! A backend's test target (with `harness = false`) is a `main` that registers itself:
//!
//! ```no_run
//! use std::sync::Arc;
//! use sandkit_conformance::{Suite, SandboxTarget};
//! use sandkit_core::SandboxSpec;
//!
//! fn main() -> std::process::ExitCode {
//!     let mut suite = Suite::new();
//!     let runtime: Arc<dyn sandkit_core::Runtime> = todo!("build your backend");
//!     suite.add_sandbox(SandboxTarget::new("mybackend", runtime, SandboxSpec::new()));
//!     suite.run()
//! }
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod actions;
pub mod filestore;
pub mod sandbox;
mod suite;

/// Peak resident set size of this process in KiB, from the kernel's own accounting
/// (`VmHWM` in `/proc/self/status`), for tests that bound memory.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Moves this process into a mount namespace of its own with fresh, empty tmpfs mounts on
/// `/tmp` and on root's home `/root`, for targets whose sandboxes share the machine
/// (`sandkit-local`, an agent on the host): the cases assume each sandbox starts with a `/tmp`
/// of its own and a home with no profile in it, as a container does, and some write there
/// (`~/.bashrc`). Call it first thing in `main` (before any thread exists) or in a child
/// about to `exec`. False where that is not allowed (not root); such a target should then
/// leave out the cases that write fixed paths (`actions`).
pub fn private_scratch() -> bool {
    let tmpfs = |at: &std::ffi::CStr, mode: &std::ffi::CStr| {
        // SAFETY: a mount in this process's own namespace, valid C strings.
        unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                at.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                mode.as_ptr().cast(),
            ) == 0
        }
    };
    // SAFETY: plain system calls, single-threaded as documented.
    let own = unsafe {
        libc::geteuid() == 0
            && libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
    };
    own && tmpfs(c"/tmp", c"mode=1777") && tmpfs(c"/root", c"mode=0700")
}

/// Whether a suite's cases must fail on a missing engine instead of being reported as ignored
/// (`SANDKIT_REQUIRE_DOCKER=1`, as CI sets it).
pub fn engine_required() -> bool {
    std::env::var("SANDKIT_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// For a plain `#[test]` that needs the engine: the value, or a failed test that says what is
/// missing and how to get it. A test that needs an engine never passes without one (suites on
/// [`Suite`] report such cases as *ignored* instead, unless [`engine_required`]).
///
/// ```should_panic
/// let made: Result<(), &str> = Err("no engine at unix:///var/run/docker.sock");
/// sandkit_conformance::needs_engine(made);
/// ```
#[track_caller]
pub fn needs_engine<T, E: std::fmt::Display>(made: Result<T, E>) -> T {
    match made {
        Ok(v) => v,
        Err(e) => panic!(
            "this test needs a Docker engine, the sandbox images and the agent: {e}\n\
             start them with `cargo xtask docker && cargo xtask image && cargo xtask agent`, \
             or run only the tests that need none: `cargo test --workspace --lib`"
        ),
    }
}

pub use suite::{
    always, Case, CaseFuture, CaseResult, FsCtx, FsHarness, SandboxTarget, SandkitCtx, Suite,
    SUITE_LABEL,
};
