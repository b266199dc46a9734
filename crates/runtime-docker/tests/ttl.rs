//! The time to live against a hostile sandbox (the security issue's finding 2): root inside a
//! sandbox cannot extend its life, the host never reads more than a few bytes the sandbox
//! wrote, and thousands of deadline updates in a row leave a sandbox alive.
//!
//! Needs Docker and the static agent binary (`cargo xtask agent`, found through
//! `SANDKIT_AGENT_BIN` or the workspace's target directory).

use std::time::{Duration, Instant, SystemTime};

use sandkit_core::{ListFilter, Runtime, SandboxExt, SandboxSpec, SandboxState};
use sandkit_docker::DockerRuntime;

const LABEL: &str = "sandkit-ttl-test";

mod common;
use common::kept;

async fn gone_within(rt: &DockerRuntime, id: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        let containers = rt
            .docker()
            .list_containers(Some(bollard::container::ListContainersOptions::<String> {
                all: true,
                filters: [("label".to_string(), vec![format!("sandkit.id={id}")])].into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        if containers.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Root in the sandbox rewrites every deadline it can find, looks for the engine, and stops
/// every process it can: the sandbox still ends at its deadline.
#[tokio::test]
async fn root_inside_cannot_extend_its_life() {
    let agent_path = kept().await;
    let exec_path = kept_exec().await;
    for (rt, path) in [(exec_path, "exec"), (agent_path, "agent")] {
        let spec = SandboxSpec::new()
            .metadata(LABEL, "extend")
            .timeout(Duration::from_secs(5))
            .user("root");
        let sb = rt.create(spec).await.unwrap();
        let created = Instant::now();
        let attack = r#"
            far=4102444800
            mkdir -p /.sandkit && printf '%s\n' $far > /.sandkit/deadline
            ls /var/run/docker.sock /run/docker.sock 2>/dev/null && echo ENGINE-REACHABLE
            for p in $(ls /proc | grep -E '^[0-9]+$'); do
              [ "$p" != "$$" ] && [ "$p" != 1 ] && kill -STOP "$p" 2>/dev/null
            done
            echo done
        "#;
        if path == "exec" {
            let out = sb.exec_shell(attack).await.unwrap();
            assert!(!out.stdout_text().contains("ENGINE-REACHABLE"), "{out:?}");
            assert!(out.stdout_text().contains("done"), "{out:?}");
        } else {
            // The attack freezes the agent too, so its output cannot come back: it is started
            // and left to run.
            let _attack = sb
                .spawn(sandkit_core::CommandSpec::shell(attack))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let info = rt.info(sb.id()).await.unwrap();
        let deadline = info.expires_at.expect("a deadline");
        assert!(
            deadline < SystemTime::now() + Duration::from_secs(10),
            "{path}: the deadline moved: {deadline:?}"
        );
        assert!(
            gone_within(&rt, sb.id(), Duration::from_secs(20)).await,
            "{path}: the sandbox outlived its deadline (created {:?} ago)",
            created.elapsed()
        );
    }
}

/// [`kept`] on the exec path (no agent inside the sandboxes).
async fn kept_exec() -> DockerRuntime {
    let bin = common::agent_binary().expect("kept() found the agent a moment ago");
    DockerRuntime::builder()
        .agent_binary(bin)
        .agent_inside(false)
        .build()
        .await
        .expect("the engine answered a moment ago")
}

/// A 1 GiB (sparse) deadline file written by root in the sandbox: listing and info read a few
/// bytes of it at most, with the keeper and without it.
#[tokio::test]
async fn a_huge_deadline_file_is_not_read() {
    let with_keeper = kept().await;
    let without = DockerRuntime::builder()
        .without_agent()
        .build()
        .await
        .unwrap();
    for (rt, mode) in [(&with_keeper, "keeper"), (&without, "file")] {
        let sb = rt
            .create(
                SandboxSpec::new()
                    .metadata(LABEL, "huge")
                    .timeout(Duration::from_secs(120))
                    .user("root"),
            )
            .await
            .unwrap();
        let out = sb
            .exec_shell("mkdir -p /.sandkit && truncate -s 1G /.sandkit/deadline && echo ok")
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), "ok\n", "{mode}: {out:?}");
        let listed = rt
            .list(&ListFilter::all().metadata(LABEL, "huge"))
            .await
            .unwrap();
        let _ = sb.info().await;
        let peak = sandkit_conformance::peak_rss_kib();
        assert!(
            peak < 200 * 1024,
            "{mode}: peak RSS {peak} KiB: the deadline file was read whole"
        );
        if mode == "keeper" {
            // The keeper's deadline stands; the file inside means nothing.
            assert!(listed.iter().any(|i| i.id == sb.id()), "{mode}: {listed:?}");
            let info = sb.info().await.unwrap();
            assert!(info.expires_at.is_some(), "{mode}: {info:?}");
        }
        let _ = rt.kill(sb.id()).await;
    }
}

/// The exact `set_timeout` the finding repeated until sandboxes died: 3,000 in a row.
#[tokio::test]
async fn three_thousand_deadline_updates_leave_it_alive() {
    let rt = kept().await;
    let sb = rt
        .create(
            SandboxSpec::new()
                .metadata(LABEL, "updates")
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..3000 {
        sb.set_timeout(Duration::from_secs(60 + (i % 7)))
            .await
            .unwrap_or_else(|e| panic!("update {i}: {e}"));
    }
    eprintln!("3000 deadline updates in {:?}", started.elapsed());
    let info = sb.info().await.unwrap();
    assert_eq!(info.state, SandboxState::Running);
    let out = sb.exec_shell("echo alive").await.unwrap();
    assert_eq!(out.stdout_text(), "alive\n");
    sb.kill().await.unwrap();
}

/// Paused, a sandbox is not killed at its deadline; resumed, it gets a fresh one.
#[tokio::test]
async fn a_paused_sandbox_outlives_its_deadline_and_resumes() {
    let rt = kept().await;
    let sb = rt
        .create(
            SandboxSpec::new()
                .metadata(LABEL, "pause")
                .timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    sb.pause().await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resumed = rt.connect(sb.id()).await.unwrap();
    let out = resumed.exec_shell("echo back").await.unwrap();
    assert_eq!(out.stdout_text(), "back\n");
    let end = resumed.info().await.unwrap().expires_at.unwrap();
    assert!(end > SystemTime::now() + Duration::from_secs(60), "{end:?}");
    resumed.kill().await.unwrap();
}

/// The team issue's fourth finding: sandboxes whose metadata fills the keeper's container
/// listing past the 64 MiB it used to read whole (after which no round parsed, and nothing was
/// killed). A short sandbox made beside them still dies on time, by the keeper alone (the test
/// never lists or looks it up through the runtime, which would reap it too).
///
/// sandkit caps one sandbox's labels at 32 KiB, so a listing that large takes thousands of
/// sandboxes; the fillers here are six containers made on the engine directly with the
/// labels of sandboxes and 12 MiB of metadata each (made, never started: they cost no process).
#[tokio::test]
async fn a_listing_past_64_mib_still_kills_on_time() {
    use bollard::container::{Config, CreateContainerOptions, RemoveContainerOptions};
    let rt = kept().await;
    let filler = "m".repeat(12 << 20);
    let mut fillers = Vec::new();
    for i in 0..6 {
        let name = format!("sandkit-ttl-filler-{}-{i}", std::process::id());
        let labels = std::collections::HashMap::from([
            (LABEL.to_string(), "filler".to_string()),
            (
                "sandkit.id".to_string(),
                format!("filler{}x{i}", std::process::id()),
            ),
            ("sandkit.ttl".to_string(), "keeper".to_string()),
            ("sandkit.deadline".to_string(), "9999999999".to_string()),
            ("sandkit.meta.filler".to_string(), filler.clone()),
        ]);
        rt.docker()
            .create_container(
                Some(CreateContainerOptions {
                    name: name.clone(),
                    platform: None,
                }),
                Config {
                    image: Some("sandkit-mini:latest".to_string()),
                    cmd: Some(vec!["true".to_string()]),
                    labels: Some(labels),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        fillers.push(name);
    }
    let remove_fillers = || async {
        for name in &fillers {
            let _ = rt
                .docker()
                .remove_container(
                    name,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    };
    let short = rt
        .create(
            SandboxSpec::new()
                .metadata(LABEL, "short")
                .timeout(Duration::from_secs(3)),
        )
        .await;
    let short = match short {
        Ok(s) => s,
        Err(e) => {
            remove_fillers().await;
            panic!("create beside the fillers: {e}");
        }
    };
    let id = short.id().to_string();
    drop(short);
    let listing = rt
        .docker()
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            all: true,
            filters: [("label".to_string(), vec!["sandkit.ttl=keeper".to_string()])].into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let size = serde_json::to_vec(&listing).unwrap().len();
    // Due in 3 s; the keeper looks once a second and lists over 72 MiB each time.
    let died = gone_within(&rt, &id, Duration::from_secs(20)).await;
    remove_fillers().await;
    assert!(size > 64 << 20, "the keeper's listing is only {size} bytes");
    assert!(
        died,
        "the short sandbox (3 s to live) was still there 20 s after it was made"
    );
}
