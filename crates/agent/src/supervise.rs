//! `sandkit-agent supervise SUBCOMMAND ARGS...`: a sandbox's main process on Docker's fast path.
//! Runs `sandkit-agent SUBCOMMAND ARGS...` and runs it again a second after it ends, for as long
//! as the container lives.
//!
//! It replaces a `/bin/sh` loop, so that nothing of the sandbox's image runs when the container
//! starts: a template whose `/bin/sh` was replaced would otherwise run its own code before the
//! network guard holds the sandbox. The first code of the image runs with the first command,
//! which comes after the sandbox was registered.

use std::process::{Command, ExitCode};
use std::time::Duration;

/// The name the supervisor goes by (its `argv[0]` and its process name), so that killing the
/// agent by name (`pkill sandkit-agent`) restarts the agent instead of ending the sandbox.
const NAME: &str = "sandkit-init";

pub(crate) fn run(args: &[String]) -> ExitCode {
    let Some((sub, rest)) = args.split_first() else {
        eprintln!("usage: sandkit-agent supervise SUBCOMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sandkit-agent supervise: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    if std::env::args_os().next().as_deref() != Some(std::ffi::OsStr::new(NAME)) {
        use std::os::unix::process::CommandExt;
        let e = Command::new(&exe)
            .arg0(NAME)
            .arg("supervise")
            .args(args)
            .exec();
        eprintln!("sandkit-agent supervise: cannot start as {NAME}: {e}");
    }
    let name = std::ffi::CString::new(NAME).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    loop {
        match Command::new(&exe).arg(sub).args(rest).status() {
            Ok(status) => {
                eprintln!("sandkit-agent supervise: {sub} ended ({status}); starting it again")
            }
            Err(e) => eprintln!("sandkit-agent supervise: cannot start {sub}: {e}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
