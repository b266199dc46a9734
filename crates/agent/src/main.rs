//! `sandkit-agent`: the program sandkit runs on a Docker engine beside its sandboxes.
//!
//! ```text
//! sandkit-agent serve [--listen HOST:PORT]... [--socket PATH]... [--stdio] [--token-file PATH] [--user NAME] [--cwd DIR]
//! sandkit-agent relay SOCKET
//! sandkit-agent keeper [--socket PATH] [--prefix sandkit] [--state DIR] [--name NAME] [--idle-exit SECS]
//! sandkit-agent deadlines [--state DIR]
//! sandkit-agent netguard [--socket PATH] [--prefix sandkit] [--state DIR] [--name NAME] [--idle-exit SECS]
//! ```
//!
//! `serve` is envd inside a sandbox: see [`serve`]; `relay` joins stdio to its socket for a
//! host that reaches it through one attached exec. `keeper` ends each sandbox at its deadline, from outside it: see [`keeper`]; `deadlines` is
//! the backend's channel to the keeper's state: see [`deadlines`]; `netguard` enforces what each
//! sandbox may reach on the network, from the host: see [`netguard`]. It is built fully static
//! (`cargo xtask agent`) so it runs in an image that holds nothing else.

mod deadlines;
mod docker;
mod keeper;
mod netguard;
mod relay;
mod serve;
mod supervise;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => match serve::Options::parse(&args[1..]) {
            Ok(options) => serve::run(options),
            Err(e) => {
                eprintln!("sandkit-agent serve: {e}\nusage: {}", serve::USAGE);
                ExitCode::from(2)
            }
        },
        Some("relay") => match args.get(1..) {
            Some([socket]) => relay::run(socket),
            _ => {
                eprintln!("usage: sandkit-agent relay SOCKET");
                ExitCode::from(2)
            }
        },
        Some("keeper") => match keeper::Options::parse(&args[1..], "keeper") {
            Ok(options) => keeper::run(&options),
            Err(e) => {
                eprintln!("sandkit-agent keeper: {e}");
                ExitCode::from(2)
            }
        },
        Some("netguard") => match netguard::Options::parse(&args[1..], "netguard") {
            Ok(options) => netguard::run(&options),
            Err(e) => {
                eprintln!("sandkit-agent netguard: {e}");
                ExitCode::from(2)
            }
        },
        Some("deadlines") => match args.get(1..) {
            Some([]) | None => deadlines::run(std::path::Path::new("/state")),
            Some([flag, dir]) if flag == "--state" => deadlines::run(std::path::Path::new(dir)),
            Some(other) => {
                eprintln!("sandkit-agent deadlines: unexpected arguments {other:?}");
                ExitCode::from(2)
            }
        },
        Some("supervise") => supervise::run(&args[1..]),
        Some("--version") => {
            println!("sandkit-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: {}\n       sandkit-agent supervise SUBCOMMAND [ARGS...]\n       sandkit-agent relay SOCKET\n       sandkit-agent keeper [--socket PATH] [--prefix sandkit] [--state DIR] [--name NAME] [--idle-exit SECS]\n       sandkit-agent deadlines [--state DIR]\n       sandkit-agent netguard [--socket PATH] [--prefix sandkit] [--state DIR] [--name NAME] [--idle-exit SECS]",
                serve::USAGE
            );
            ExitCode::from(2)
        }
    }
}
