//! An agent-style loop: actions in OpenHands' JSON shape (as an LLM tool call would produce
//! them) run through `sandkit-actions` on whichever backend the configuration picks.
//!
//! `cargo run -p sandkit-examples --example agent_loop`

use sandkit::actions::{Action, Session, SessionOptions};

#[tokio::main]
async fn main() -> sandkit::Result<()> {
    let runtime = sandkit::Config::load()?.runtime().await?;
    let session = Session::open(runtime, "example-agent", SessionOptions::default()).await?;

    // What a model might ask for, one step at a time.
    let steps = [
        r#"{"action":"run","args":{"command":"mkdir -p /tmp/demo && cd /tmp/demo"}}"#,
        r#"{"action":"edit","args":{"command":"create","path":"/tmp/demo/fib.py","file_text":"def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"}}"#,
        r#"{"action":"run_ipython","args":{"code":"import sys; sys.path.insert(0, '.'); from fib import fib; [fib(i) for i in range(10)]"}}"#,
        r#"{"action":"edit","args":{"command":"str_replace","path":"/tmp/demo/fib.py","old_str":"n < 2","new_str":"n <= 1"}}"#,
        r#"{"action":"run","args":{"command":"python3 -c 'from fib import fib; print(fib(20))'"}}"#,
        r#"{"action":"read","args":{"path":"fib.py","impl_source":"oh_aci","view_range":[1,2]}}"#,
    ];
    for step in steps {
        let action: Action = serde_json::from_str(step).expect("a valid action");
        let observation = session.run_action(action).await;
        println!(
            "--- {} ---\n{}\n",
            observation.observation,
            observation.to_agent_text()
        );
    }
    session.close().await
}
