//! The Docker engine stopped and started under running calls (ignored by default: as root,
//! `cargo test -p sandkit-docker --test engine_restart -- --ignored`; `cargo xtask ci` runs it): calls fail fast with `Unavailable`, streams and transfers end instead of hanging,
//! and the same client works again once the engine is back. A test binary of its own, so no
//! other test runs while the engine is down.

use std::process::Command;
use std::time::{Duration, Instant};

use sandkit_core::{
    CommandSpec, ErrorKind, ListFilter, ProcessEvent, Runtime, SandboxExt, SandboxSpec,
};
use sandkit_docker::DockerRuntime;

const LABEL: &str = "sandkit-engine-restart";

fn spec(test: &str) -> SandboxSpec {
    SandboxSpec::new().metadata(LABEL, test)
}

async fn cleanup(rt: &DockerRuntime, test: &str) {
    if let Ok(list) = rt.list(&ListFilter::all().metadata(LABEL, test)).await {
        for i in list {
            let _ = rt.kill(&i.id).await;
        }
    }
}

use futures_util::StreamExt;

/// Starts dockerd again if the test stopped it, whatever happens.
struct EngineGuard;

impl Drop for EngineGuard {
    fn drop(&mut self) {
        if !engine_answers() {
            start_engine();
        }
    }
}

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start_engine() {
    // The old daemon must be fully gone (its pid file too) before a new one can start.
    for _ in 0..120 {
        let running = Command::new("pidof")
            .arg("dockerd")
            .output()
            .is_ok_and(|o| o.status.success());
        if !running && !std::path::Path::new("/var/run/docker.pid").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = std::fs::File::create("/var/log/sandkit-dockerd.log").unwrap();
    // `setsid -f` detaches dockerd and returns at once.
    let started = Command::new("setsid")
        .args(["-f", "dockerd"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("start dockerd");
    assert!(started.success());
    for _ in 0..180 {
        if engine_answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("dockerd did not come back");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "stops and starts the Docker engine (as root): `cargo xtask ci` runs it on its own"]
async fn engine_stopped_and_started_under_running_calls() {
    let rt = DockerRuntime::builder()
        .build()
        .await
        .expect("a Docker engine");
    let _guard = EngineGuard;
    let sb = rt.create(spec("restart")).await.unwrap();
    let long = {
        let mut p = sb
            .spawn(CommandSpec::shell("echo running; sleep 120"))
            .await
            .unwrap();
        assert!(matches!(
            p.next_event().await,
            Some(Ok(ProcessEvent::Stdout(_)))
        ));
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = None;
            while let Some(ev) = p.next_event().await {
                last = Some(ev);
            }
            (started.elapsed(), last)
        })
    };
    let transfer = {
        let files = rt.connect(sb.id()).await.unwrap();
        tokio::spawn(async move {
            let started = Instant::now();
            let chunks = futures_util::stream::iter(
                (0..400).map(|_| Ok(bytes::Bytes::from(vec![0u8; 1 << 20]))),
            )
            .then(|c| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                c
            });
            let r = files
                .files()
                .write_stream("/tmp/during.bin", chunks.boxed())
                .await;
            (started.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = String::from_utf8(
        Command::new("pidof")
            .arg("dockerd")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap()
        .success());
    for _ in 0..120 {
        if !engine_answers() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Calls now fail fast and typed.
    let started = Instant::now();
    let e = rt.list(&ListFilter::all()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(30));
    let (took, end) = tokio::time::timeout(Duration::from_secs(60), long)
        .await
        .expect("the stream ended")
        .unwrap();
    assert!(took < Duration::from_secs(60), "no hang: {took:?}");
    assert!(
        !matches!(end, Some(Ok(ProcessEvent::Exited { code: 0 }))),
        "{end:?}"
    );
    let (took, wrote) = tokio::time::timeout(Duration::from_secs(90), transfer)
        .await
        .expect("the transfer ended")
        .unwrap();
    assert!(
        wrote.is_err(),
        "a transfer cut by the engine's stop is an error"
    );
    assert!(took < Duration::from_secs(90));

    start_engine();
    // The same client works again once the engine is back.
    let after = DockerRuntime::builder().build().await.unwrap();
    let e = after.connect(sb.id()).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::NotFound,
        "containers do not survive an engine stop: {e}"
    );
    let fresh = rt
        .create(spec("restart"))
        .await
        .expect("the old client works again");
    assert_eq!(
        fresh.exec_shell("echo again").await.unwrap().stdout_text(),
        "again\n"
    );
    cleanup(&rt, "restart").await;
}
