//! The executor driven through swiftide's own trait (`&dyn ToolExecutor`) over a sandbox on
//! Docker: shell, read and write, errors and timeouts as swiftide's executors give them, and
//! files streamed for indexing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sandkit_core::{Runtime, SandboxSpec};
use sandkit_docker::DockerRuntime;
use sandkit_swiftide::SandboxExecutor;
use swiftide_core::{Command, CommandError, ToolExecutor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swiftide_runs_its_commands_in_a_docker_sandbox() {
    let docker = sandkit_conformance::needs_engine(DockerRuntime::builder().build().await);
    let sandbox = docker
        .create(SandboxSpec::new().metadata(sandkit_conformance::SUITE_LABEL, "swiftide"))
        .await
        .expect("a sandbox");
    let executor = SandboxExecutor::new(Arc::from(sandbox));
    let exec: &dyn ToolExecutor = &executor;

    let out = exec
        .exec_cmd(&Command::shell("echo out; echo err >&2; echo again"))
        .await
        .expect("runs");
    assert_eq!(out.output, "out\nerr\nagain\n");

    match exec.exec_cmd(&Command::shell("echo partial; exit 3")).await {
        Err(CommandError::NonZeroExit(o)) => assert_eq!(o.output, "partial\n"),
        other => panic!("a non-zero exit is NonZeroExit: {other:?}"),
    }

    // What the shell itself says of a bad line reaches the agent too.
    match exec.exec_cmd(&Command::shell("echo 'unterminated")).await {
        Err(CommandError::NonZeroExit(o)) => assert!(!o.output.is_empty(), "{o}"),
        other => panic!("a bad line is a failed command: {other:?}"),
    }
    let out = exec
        .exec_cmd(&Command::shell("echo a; }; echo b"))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(out.is_some(), "a stray brace fails as the shell says");

    let started = Instant::now();
    match exec
        .exec_cmd(&Command::shell("echo before; sleep 30").with_timeout(Duration::from_secs(2)))
        .await
    {
        Err(CommandError::TimedOut { timeout, output }) => {
            assert_eq!(timeout, Duration::from_secs(2));
            assert!(output.output.contains("before"), "{output}");
        }
        other => panic!("a timeout is TimedOut: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));

    exec.exec_cmd(&Command::write_file("/tmp/sw/a/b.rs", "fn main() {}\n"))
        .await
        .expect("written, directories made");
    exec.exec_cmd(&Command::write_file("c.md", "# c\n").with_current_dir("/tmp/sw"))
        .await
        .expect("written relative to current_dir");
    let read = exec
        .exec_cmd(&Command::read_file("a/b.rs").with_current_dir("/tmp/sw"))
        .await
        .expect("read");
    assert_eq!(read.output, "fn main() {}\n");
    let pwd = exec
        .exec_cmd(&Command::shell("pwd").with_current_dir("/tmp/sw/a"))
        .await
        .expect("pwd");
    assert_eq!(pwd.output, "/tmp/sw/a\n");
    match exec.exec_cmd(&Command::read_file("/tmp/sw/missing")).await {
        Err(CommandError::NonZeroExit(o)) => assert!(!o.output.is_empty()),
        other => panic!("a missing file is a failed command: {other:?}"),
    }

    let nodes: Vec<_> = exec
        .stream_files(Path::new("/tmp/sw"), None)
        .await
        .expect("a stream")
        .collect()
        .await;
    let mut got: Vec<(String, String)> = nodes
        .into_iter()
        .map(|n| {
            let n = n.expect("a node");
            (n.path.to_string_lossy().into_owned(), n.chunk)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("/tmp/sw/a/b.rs".to_string(), "fn main() {}\n".to_string()),
            ("/tmp/sw/c.md".to_string(), "# c\n".to_string())
        ]
    );
    let rust: Vec<_> = exec
        .stream_files(Path::new("/tmp/sw"), Some(vec!["rs".into()]))
        .await
        .expect("a stream")
        .collect()
        .await;
    assert_eq!(rust.len(), 1);
    assert!(exec
        .stream_files(Path::new("/no/such/dir"), None)
        .await
        .is_err());

    executor.sandbox().kill().await.expect("killed");
}
