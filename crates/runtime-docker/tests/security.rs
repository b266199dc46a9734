//! Small findings of the security review (finding 10), each performed against the engine:
//! hostile user names, file names too long for the kernel, and kills that race each other.
//!
//! Needs Docker; without an engine (and without `SBX_REQUIRE_DOCKER=1`) the tests return early.

use runtime_core::{CommandSpec, ErrorKind, FileStoreExt, Runtime, SandboxExt, SandboxSpec};
use runtime_docker::DockerRuntime;

async fn docker() -> Option<DockerRuntime> {
    runtime_conformance::or_skip(DockerRuntime::builder().build().await)
}

#[tokio::test]
async fn hostile_user_names_never_reach_the_engine() {
    let Some(rt) = docker().await else { return };
    let sb = rt
        .create(SandboxSpec::new().metadata("sbx-security-test", "users"))
        .await
        .unwrap();
    for user in ["..", ".", "../root", "-u0", "a:b:c", "root\n"] {
        let e = sb
            .exec(CommandSpec::program("id", ["-u"]).user(user))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{user:?}: {e}");
        assert!(!e.to_string().contains("500"), "{user:?}: {e}");
    }
    let ok = sb
        .exec(CommandSpec::program("id", ["-u"]).user("1000:1000"))
        .await
        .unwrap();
    assert_eq!(ok.stdout_text(), "1000\n");
    sb.kill().await.unwrap();
}

#[tokio::test]
async fn long_file_names_are_invalid_input_without_host_paths() {
    let Some(rt) = docker().await else { return };
    let sb = rt
        .create(SandboxSpec::new().metadata("sbx-security-test", "names"))
        .await
        .unwrap();
    let long = format!("/tmp/{}", "a".repeat(300));
    let write = sb.files().write_str(&long, "x").await.unwrap_err();
    let read = sb.files().read(&long).await.unwrap_err();
    let deep = format!("/tmp/{}/f", "d".repeat(300));
    let mkdir = sb.files().create_dir_all(&deep).await.unwrap_err();
    for e in [write, read, mkdir] {
        assert!(
            matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound),
            "{e}"
        );
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("/var/lib/docker") && !text.contains("/merged"),
            "the engine's host path leaked: {text}"
        );
    }
    sb.kill().await.unwrap();
}

#[tokio::test]
async fn kills_that_race_each_other_all_end_well() {
    let Some(rt) = docker().await else { return };
    let sb = rt
        .create(SandboxSpec::new().metadata("sbx-security-test", "kills"))
        .await
        .unwrap();
    let id = sb.id().to_string();
    let kills = futures_util::future::join_all((0..6).map(|_| rt.kill(&id))).await;
    let mut succeeded = 0;
    for k in kills {
        match k {
            Ok(()) => succeeded += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
        }
    }
    assert!(succeeded >= 1);
    assert_eq!(rt.info(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
}
