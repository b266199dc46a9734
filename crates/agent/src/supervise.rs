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
