//! `sbx-agent`: the program sbx runs on a Docker engine beside its sandboxes.
//!
//! ```text
//! sbx-agent keeper [--socket PATH] [--prefix sbx] [--state DIR] [--name NAME] [--idle-exit SECS]
//! ```
//!
//! `keeper` ends each sandbox at its deadline, from outside it: see [`keeper`]. It is built fully
//! static (`cargo xtask agent`) so it runs in an image that holds nothing else.

mod docker;
mod keeper;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("keeper") => match keeper::Options::parse(&args[1..]) {
            Ok(options) => keeper::run(&options),
            Err(e) => {
                eprintln!("sbx-agent keeper: {e}");
                ExitCode::from(2)
            }
        },
        Some("--version") => {
            println!("sbx-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: sbx-agent keeper [--socket PATH] [--prefix sbx] [--state DIR] [--name NAME] [--idle-exit SECS]"
            );
            ExitCode::from(2)
        }
    }
}
