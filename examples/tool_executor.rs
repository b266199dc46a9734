//! An agent tool executor as a framework author writes one: one import line, the backend
//! chosen by configuration alone (`sandkit.toml`, `SANDKIT_*`/`SANDBOX_*` variables), a guard that
//! kills the sandbox if the executor is dropped without `close` (a panicking task, a cancelled
//! episode), and an executor that is `Clone` to hand to concurrent tool calls.
//!
//! `cargo run -p sandkit-examples --example tool_executor`

use std::sync::Arc;

use sandkit::actions::prelude::*;

/// The tools an LLM may call, over one sandbox.
#[derive(Clone)]
struct ToolExecutor {
    session: Arc<Session>,
}

impl ToolExecutor {
    async fn start(episode: &str) -> Result<Self> {
        let config = Config::load()?;
        let runtime = config.runtime().await?;
        let options = SessionOptions::from_config(&config).kill_on_drop(true);
        let session = Session::open(runtime, episode, options).await?;
        Ok(ToolExecutor {
            session: Arc::new(session),
        })
    }

    /// `run_command`: a shell line in the episode's persistent shell.
    async fn run_command(&self, command: &str) -> Result<String> {
        let r = self
            .session
            .run(RunRequest {
                command: command.into(),
                ..Default::default()
            })
            .await?;
        Ok(format!("{}\n[exit code {}]", r.output, r.exit_code))
    }

    /// `write_file` and `read_file`, straight to the sandbox's files.
    async fn write_file(&self, path: &str, content: &str) -> Result<()> {
        self.session
            .sandbox()
            .files()
            .write_str(path, content)
            .await
    }
    async fn read_file(&self, path: &str) -> Result<String> {
        self.session.sandbox().files().read_to_string(path).await
    }

    async fn finish(&self) -> Result<()> {
        self.session.close().await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let tools = ToolExecutor::start("tool-executor-example").await?;
    tools
        .write_file("/tmp/task.py", "print(sum(range(10)))")
        .await?;
    // Two tool calls at once, each with its own clone of the executor.
    let (a, b) = (tools.clone(), tools.clone());
    let (ran, read) = tokio::join!(
        tokio::spawn(async move { a.run_command("python3 /tmp/task.py").await }),
        tokio::spawn(async move { b.read_file("/tmp/task.py").await }),
    );
    println!("{}", ran.expect("the task")?);
    println!("source: {}", read.expect("the task")?);
    tools.finish().await
}
