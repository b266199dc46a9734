//! The session guard: a session dropped in a panicking task takes its sandbox with it, a
//! session shared in an `Arc` closes once from any holder, and a session dropped without the
//! guard leaves its sandbox for another process. On the local backend (no engine needed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandkit_actions::{Session, SessionOptions};
use sandkit_core::{ListFilter, Runtime, SandboxSpec};
use sandkit_local::LocalRuntime;

async fn alive(rt: &dyn Runtime, id: &str) -> bool {
    rt.list(&ListFilter::all())
        .await
        .unwrap()
        .iter()
        .any(|i| i.id == id)
}

fn options() -> SessionOptions {
    SessionOptions::new(SandboxSpec::new().cwd("/tmp")).time_to_live(Duration::from_secs(120))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_leaves_no_sandbox() {
    let rt: Arc<dyn Runtime> = Arc::new(LocalRuntime::new());
    let session = Session::open(rt.clone(), "guarded", options().kill_on_drop(true))
        .await
        .unwrap();
    let id = session.sandbox().id().to_string();
    assert!(alive(rt.as_ref(), &id).await);
    let task = tokio::spawn(async move {
        let _held = session;
        panic!("the agent loop failed");
    });
    assert!(task.await.unwrap_err().is_panic());
    let start = Instant::now();
    while alive(rt.as_ref(), &id).await {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the sandbox outlived its session by a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_closes_once() {
    let rt: Arc<dyn Runtime> = Arc::new(LocalRuntime::new());
    let session = Arc::new(
        Session::open(rt.clone(), "shared", options())
            .await
            .unwrap(),
    );
    let id = session.sandbox().id().to_string();
    let sandbox = session.sandbox_arc();
    let other = session.clone();
    tokio::spawn(async move { other.close().await })
        .await
        .unwrap()
        .unwrap();
    assert!(!alive(rt.as_ref(), &id).await, "closed by another holder");
    session.close().await.expect("closing again is fine");
    assert!(sandbox.info().await.is_err(), "the shared sandbox is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_guard_a_dropped_session_leaves_its_sandbox() {
    let rt: Arc<dyn Runtime> = Arc::new(LocalRuntime::new());
    let session = Session::open(rt.clone(), "unguarded", options())
        .await
        .unwrap();
    let id = session.sandbox().id().to_string();
    drop(session);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(alive(rt.as_ref(), &id).await, "left to its time to live");
    rt.kill(&id).await.unwrap();
}

/// The configuration's session keys reach the session: the time to live, the shell's hard
/// timeout, and keep_runtime_alive (a closed session leaves its sandbox running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keys_of_the_configuration_take_effect() {
    // The local backend's sandbox is this machine: a directory of the test's own.
    let workspace = format!(
        "{}/sandkit-guard-{:x}/work",
        std::env::temp_dir().display(),
        std::process::id()
    );
    let config = sandkit_config::Config::builder()
        .no_file()
        .env_vars([
            ("SANDBOX_TIME_TO_LIVE", "77"),
            ("SANDBOX_TIMEOUT", "9"),
            ("SANDBOX_KEEP_RUNTIME_ALIVE", "true"),
            ("WORKSPACE_MOUNT_PATH_IN_SANDBOX", workspace.as_str()),
        ])
        .load()
        .unwrap();
    let options = SessionOptions::from_config(&config);
    assert_eq!(options.time_to_live, Duration::from_secs(77));
    assert_eq!(options.shell.hard_timeout, Duration::from_secs(9));
    assert!(options.keep_alive);
    let rt: Arc<dyn Runtime> = Arc::new(LocalRuntime::new());
    let session = Session::open(rt.clone(), "configured", options)
        .await
        .unwrap();
    assert_eq!(
        session.cwd().await,
        workspace,
        "the session starts in the workspace"
    );
    let info = session.sandbox().info().await.unwrap();
    let ttl = info
        .expires_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        ttl > Duration::from_secs(70) && ttl <= Duration::from_secs(77),
        "{ttl:?}"
    );
    let id = session.sandbox().id().to_string();
    session.close().await.unwrap();
    assert!(
        alive(rt.as_ref(), &id).await,
        "keep_runtime_alive leaves it running"
    );
    rt.kill(&id).await.unwrap();
    let _ = std::fs::remove_dir_all(std::path::Path::new(&workspace).parent().unwrap());
}

/// What a program's `#[tokio::main] async fn main() -> Result<()>` does when it returns early
/// with `?` while two guarded sessions are open. Run as a child process by
/// `main_returning_err_leaves_no_sandbox`, which then looks for what it left.
#[test]
#[ignore = "run as a child process by main_returning_err_leaves_no_sandbox"]
fn child_main_returns_err() {
    use sandkit_core::{Error, ErrorKind};
    let label = std::env::var("SANDKIT_GUARD_CHILD")
        .expect("run by main_returning_err_leaves_no_sandbox, which sets SANDKIT_GUARD_CHILD");
    let main = async {
        let rt: Arc<dyn Runtime> =
            Arc::new(sandkit_docker::DockerRuntime::builder().build().await?);
        let spec = SandboxSpec::new().metadata("sandkit-guard-test", &label);
        let _a = Session::open(rt.clone(), "a", options_for(&spec)).await?;
        let _b = Session::open(rt.clone(), "b", options_for(&spec)).await?;
        Err::<(), _>(Error::new(ErrorKind::Unexpected, "the agent loop failed"))?;
        Ok::<(), Error>(())
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(main);
    // Only the error after both sessions opened: one from the engine or a session would leave
    // the guard untried.
    assert!(
        matches!(&result, Err(e) if e.message() == "the agent loop failed"),
        "{result:?}"
    );
}

fn options_for(spec: &SandboxSpec) -> SessionOptions {
    SessionOptions::new(spec.clone())
        .time_to_live(Duration::from_secs(300))
        .kill_on_drop(true)
}

/// The crate-family issue's leak: `main` returned `Err` with two guarded sessions open, tokio
/// shut down and cancelled the kills, and the sandboxes lived on. Now the process waits for
/// them as it exits: nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_returning_err_leaves_no_sandbox() {
    let rt =
        sandkit_conformance::needs_engine(sandkit_docker::DockerRuntime::builder().build().await);
    let label = format!(
        "guard-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_main_returns_err",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("SANDKIT_GUARD_CHILD", &label)
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let left = rt
        .list(&ListFilter::all().metadata("sandkit-guard-test", &label))
        .await
        .unwrap();
    for s in &left {
        let _ = rt.kill(&s.id).await;
    }
    assert!(out.status.success() && said.contains("1 passed"), "{said}");
    assert!(
        left.is_empty(),
        "{} sandbox(es) outlived a main that returned Err",
        left.len()
    );
}
