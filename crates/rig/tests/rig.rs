//! The tools driven as rig drives them — by name, with JSON arguments, through
//! `rig_core::tool::ErasedTool` — over a session on Docker.

use std::sync::Arc;

use rig_core::tool::{tool_definition, ErasedTool, ToolContext};
use sandkit_actions::{Session, SessionOptions};
use sandkit_core::{Runtime, SandboxSpec};
use sandkit_docker::DockerRuntime;

async fn call(
    tools: &[Box<dyn ErasedTool>],
    name: &str,
    args: serde_json::Value,
) -> (bool, String) {
    let tool = tools
        .iter()
        .find(|t| t.name() == name)
        .expect("a tool of that name");
    let mut context = ToolContext::new();
    let result = tool.execute(args.to_string(), &mut context).await;
    (result.is_success(), result.output().render())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rig_drives_the_tools_by_name_on_docker() {
    let docker = sandkit_conformance::needs_engine(DockerRuntime::builder().build().await);
    let runtime: Arc<dyn Runtime> = Arc::new(docker);
    let spec = SandboxSpec::new().metadata(sandkit_conformance::SUITE_LABEL, "rig");
    let session = Session::open(
        runtime,
        &format!("rig-{:x}", rand_id()),
        SessionOptions::new(spec).kill_on_drop(true),
    )
    .await
    .expect("a session");
    let session = Arc::new(session);
    let tools = sandkit_rig::tools(session.clone());

    let names: Vec<String> = tools.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["run_command", "read_file", "write_file", "edit"]);
    for t in &tools {
        let p = t.parameters();
        assert_eq!(p["type"], "object", "{}", t.name());
        assert!(
            p["required"].as_array().is_some_and(|r| !r.is_empty()),
            "{}",
            t.name()
        );
    }
    assert_eq!(
        tool_definition(&sandkit_rig::RunCommand::new(session.clone()))
            .name
            .as_str(),
        "run_command"
    );

    let (ok, out) = call(&tools, "run_command", serde_json::json!({"command": "mkdir -p /tmp/rig && cd /tmp/rig && echo out; echo err >&2; (exit 4)"})).await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["exit_code"], 4, "{v}");
    assert_eq!(v["stdout"], "out\n", "{v}");
    assert_eq!(v["stderr"], "err\n", "{v}");
    assert_eq!(v["cwd"], "/tmp/rig", "{v}");

    let (ok, out) = call(
        &tools,
        "write_file",
        serde_json::json!({"path": "notes/a.txt", "content": "one\ntwo\nthree\n"}),
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = call(
        &tools,
        "read_file",
        serde_json::json!({"path": "/tmp/rig/notes/a.txt", "start_line": 1, "end_line": 2}),
    )
    .await;
    assert!(ok && out.contains("two") && !out.contains("one"), "{out}");

    let (ok, out) = call(&tools, "edit", serde_json::json!({"command": "str_replace", "path": "notes/a.txt", "old_str": "two", "new_str": "TWO"})).await;
    assert!(ok, "{out}");
    let (_, out) = call(
        &tools,
        "edit",
        serde_json::json!({"command": "view", "path": "notes/a.txt"}),
    )
    .await;
    assert!(out.contains("TWO"), "{out}");
    let (ok, out) = call(
        &tools,
        "edit",
        serde_json::json!({"command": "undo_edit", "path": "notes/a.txt"}),
    )
    .await;
    assert!(ok, "{out}");
    let (_, out) = call(
        &tools,
        "run_command",
        serde_json::json!({"command": "cat notes/a.txt"}),
    )
    .await;
    assert!(out.contains("two") && !out.contains("TWO"), "{out}");

    // Failures come back to the model as failed results, not panics.
    let (ok, out) = call(
        &tools,
        "read_file",
        serde_json::json!({"path": "/no/such/file"}),
    )
    .await;
    assert!(!ok, "{out}");
    let (ok, out) = call(&tools, "edit", serde_json::json!({"command": "str_replace", "path": "notes/a.txt", "old_str": "absent", "new_str": "x"})).await;
    assert!(!ok, "{out}");
    let (ok, out) = call(&tools, "run_command", serde_json::json!({"wrong": 1})).await;
    assert!(!ok, "{out}");

    drop(tools);
    Arc::try_unwrap(session)
        .expect("the last handle")
        .close()
        .await
        .expect("closed");
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
