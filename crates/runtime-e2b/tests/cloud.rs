//! The conformance suite against E2B's real cloud: runs when `E2B_API_KEY` and
//! `SANDKIT_TEST_E2B_CLOUD=1` are set, and shows as ignored otherwise.

use std::process::ExitCode;
use std::sync::Arc;

use sandkit_conformance::{SandboxTarget, Suite};
use sandkit_core::SandboxSpec;
use sandkit_e2b::E2bRuntime;

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let wanted = std::env::var("SANDKIT_TEST_E2B_CLOUD").is_ok_and(|v| v == "1");
    let key = std::env::var("E2B_API_KEY").ok().filter(|k| !k.is_empty());
    match (wanted, key) {
        (true, Some(_)) => match E2bRuntime::builder().from_env().build() {
            Ok(rt) => suite.add_sandbox(
                SandboxTarget::new("e2b_cloud", Arc::new(rt), SandboxSpec::new()).with_python(true),
            ),
            Err(e) => {
                eprintln!("error: cannot use E2B: {e}");
                return ExitCode::from(2);
            }
        },
        _ => suite.add_ignored(
            "e2b_cloud",
            "set E2B_API_KEY and SANDKIT_TEST_E2B_CLOUD=1 to run against E2B's cloud",
        ),
    }
    suite.run()
}
