//! Faults and hostile workloads on the Docker backend: a fork bomb, a memory hog and a disk
//! filler are contained by the defaults and reported as failed commands while other sandboxes
//! keep working; a container killed from outside mid-command ends the call quickly; 100
//! sandboxes alive at once. (The engine stopped under running calls is tests/engine_restart.rs,
//! a binary of its own so nothing else runs while the engine is down.)
//!
//! Needs Docker; without an engine the tests fail.

use std::process::Command;

use futures_util::StreamExt;
use std::time::{Duration, Instant};

use sandkit_core::{
    CommandSpec, ErrorKind, ListFilter, ProcessEvent, Resources, Runtime, SandboxExt, SandboxSpec,
};
use sandkit_docker::DockerRuntime;

const LABEL: &str = "sandkit-faults";

async fn docker(builder: sandkit_docker::DockerRuntimeBuilder) -> DockerRuntime {
    sandkit_conformance::needs_engine(builder.build().await)
}

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

#[tokio::test(flavor = "multi_thread")]
async fn hostile_workloads_are_contained() {
    let builder = DockerRuntime::builder()
        .resources(Resources::new().memory_mb(256).pids(128))
        .max_file_bytes(Some(16 << 20));
    let rt = docker(builder).await;
    let result = async {
        let victim = rt.create(spec("contain")).await?;
        let bystander = rt.create(spec("contain")).await?;

        // A memory hog is killed by the memory limit: a failed command, not a dead host.
        let out = victim
            .exec(CommandSpec::program(
                "python3",
                ["-c", "a = bytearray(1 << 30); print('allocated')"],
            ))
            .await?;
        assert_eq!(
            out.exit_code,
            Some(137),
            "killed by the memory limit: {out:?}"
        );
        assert!(!out.stdout_text().contains("allocated"));

        // A single-file disk filler stops at the file-size limit.
        let out = victim
            .exec_shell("head -c 100000000 /dev/zero > /tmp/filler")
            .await?;
        assert_eq!(out.exit_code, Some(128 + 25), "SIGXFSZ: {out:?}");
        assert_eq!(victim.files().stat("/tmp/filler").await?.size, 16 << 20);

        // A fork bomb hits the pids limit; the timeout kills what it made.
        let bomb = victim
            .exec(
                CommandSpec::shell("bomb() { bomb | bomb; }; bomb").timeout(Duration::from_secs(8)),
            )
            .await;
        match bomb {
            Ok(out) => {
                let tail: String = out
                    .stderr_text()
                    .chars()
                    .rev()
                    .take(200)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                assert_ne!(out.exit_code, Some(0), "the bomb failed: {tail}");
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Timeout, "{}", e.message()),
        }
        // Meanwhile others, and the engine, are fine.
        assert_eq!(
            bystander.exec_shell("echo fine").await?.stdout_text(),
            "fine\n"
        );
        assert!(Command::new("docker")
            .arg("info")
            .output()
            .unwrap()
            .status
            .success());
        // A sandbox whose process table is full may not even start the helper that kills the
        // bomb (it needs a process too), so the way out is to kill the sandbox: that always
        // works, from outside.
        victim.kill().await?;
        assert_eq!(
            rt.connect(victim.id()).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            bystander.exec_shell("echo still").await?.stdout_text(),
            "still\n"
        );
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    cleanup(&rt, "contain").await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn container_killed_from_outside_ends_the_call() {
    let rt = docker(DockerRuntime::builder()).await;
    let sb = rt.create(spec("outside")).await.unwrap();
    let mut p = sb
        .spawn(CommandSpec::shell("echo started; sleep 60"))
        .await
        .unwrap();
    assert!(matches!(
        p.next_event().await,
        Some(Ok(ProcessEvent::Stdout(_)))
    ));
    let started = Instant::now();
    let out = Command::new("docker")
        .args(["kill", &format!("sandkit-{}", sb.id())])
        .output()
        .unwrap();
    assert!(out.status.success());
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        let mut last = None;
        while let Some(ev) = p.next_event().await {
            last = Some(ev);
        }
        last
    })
    .await
    .expect("the call ended instead of hanging");
    match end {
        Some(Ok(ProcessEvent::Exited { code })) => assert_ne!(code, 0),
        Some(Err(e)) => assert!(
            matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Unexpected
            ),
            "{e}"
        ),
        other => panic!("unexpected end: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // The sandbox is gone, and says so.
    let e = sb.exec_shell("true").await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::NotFound), "{e}");
    assert_eq!(
        rt.connect(sb.id()).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    cleanup(&rt, "outside").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_sandboxes_at_once() {
    let rt =
        docker(DockerRuntime::builder().resources(Resources::new().memory_mb(128).pids(64))).await;
    let started = Instant::now();
    let rt = std::sync::Arc::new(rt);
    let made = futures_util::stream::iter(0..100)
        .map(|_| {
            let rt = rt.clone();
            async move {
                rt.create(spec("hundred").template("sandkit-mini:latest"))
                    .await
            }
        })
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    let mut errors = 0;
    let mut alive = Vec::new();
    for m in made {
        match m {
            Ok(s) => alive.push(s),
            Err(e) => {
                eprintln!("create: {e}");
                errors += 1;
            }
        }
    }
    let listed = rt
        .list(&ListFilter::all().metadata(LABEL, "hundred"))
        .await
        .unwrap()
        .len();
    let answers = futures_util::stream::iter(alive.iter())
        .map(|s| async move {
            s.exec_shell("echo up")
                .await
                .map(|o| o.stdout_text() == "up\n")
                .unwrap_or(false)
        })
        .buffer_unordered(20)
        .collect::<Vec<_>>()
        .await;
    let ok = answers.iter().filter(|a| **a).count();
    eprintln!(
        "100 sandboxes: created in {:.1}s, {errors} create errors, {listed} listed alive at once, {ok} answered",
        created.as_secs_f64()
    );
    cleanup(&rt, "hundred").await;
    assert_eq!(errors, 0);
    assert_eq!(listed, 100, "all alive at the same time");
    assert_eq!(ok, 100);
    assert!(rt
        .list(&ListFilter::all().metadata(LABEL, "hundred"))
        .await
        .unwrap()
        .is_empty());
}
