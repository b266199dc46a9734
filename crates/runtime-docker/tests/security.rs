//! Small findings of the security review (finding 10), each performed against the engine:
//! hostile user names, file names too long for the kernel, and kills that race each other.
//!
//! Needs Docker; without an engine the tests fail.

use sandkit_core::{CommandSpec, ErrorKind, FileStoreExt, Runtime, SandboxExt, SandboxSpec};
use sandkit_docker::DockerRuntime;

async fn docker() -> DockerRuntime {
    sandkit_conformance::needs_engine(DockerRuntime::builder().build().await)
}

/// Both paths: the agent inside the sandbox (the default) and the engine's exec API.
async fn both() -> Vec<DockerRuntime> {
    let agent = docker().await;
    let exec = DockerRuntime::builder()
        .agent_inside(false)
        .build()
        .await
        .expect("the engine answered a moment ago");
    vec![agent, exec]
}

#[tokio::test]
async fn hostile_user_names_never_reach_the_engine() {
    for rt in both().await {
        hostile_user_names(rt).await;
    }
}

async fn hostile_user_names(rt: DockerRuntime) {
    let sb = rt
        .create(SandboxSpec::new().metadata("sandkit-security-test", "users"))
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
    for rt in both().await {
        long_file_names(rt).await;
    }
}

async fn long_file_names(rt: DockerRuntime) {
    let sb = rt
        .create(SandboxSpec::new().metadata("sandkit-security-test", "names"))
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
    let rt = docker().await;
    let sb = rt
        .create(SandboxSpec::new().metadata("sandkit-security-test", "kills"))
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

/// Finding 7 on the Docker backend: writes are atomic (a cut write leaves the old content and
/// no stray file), a link at the target is replaced rather than written through, and a user's
/// store is held to that user's permissions for reads and writes.
#[tokio::test]
async fn writes_are_atomic_and_held_to_the_user() {
    for rt in both().await {
        writes_atomic(rt).await;
    }
}

async fn writes_atomic(rt: DockerRuntime) {
    use bytes::Bytes;
    use futures_util::StreamExt;
    let sb = rt
        .create(SandboxSpec::new().metadata("sandkit-security-test", "writes"))
        .await
        .unwrap();
    let shadow_before = sb
        .exec(CommandSpec::shell("md5sum /etc/shadow").user("root"))
        .await
        .unwrap()
        .stdout_text();
    // A cut write, large (streamed) and small (in memory): the old content stays.
    for (size, name) in [(200usize << 20, "big"), (1 << 20, "small")] {
        let path = format!("/tmp/{name}.txt");
        sb.files().write_str(&path, "old content").await.unwrap();
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let chunks = size / (1 << 20);
        let cut = futures_util::stream::iter((0..chunks).map(move |i| {
            if i == chunks / 2 {
                Err(sandkit_core::Error::new(
                    ErrorKind::Unavailable,
                    "the client went away",
                ))
            } else {
                Ok(chunk.clone())
            }
        }))
        .boxed();
        assert!(sb.files().write_stream(&path, cut).await.is_err(), "{name}");
        assert_eq!(
            sb.files().read_to_string(&path).await.unwrap(),
            "old content",
            "{name}: a cut write destroyed the old content"
        );
        // On the agent path the write is cut mid-request: the agent removes its temporary
        // file as it sees the request end, a moment after the client gave up.
        let mut left = String::new();
        for _ in 0..20 {
            left = sb
                .exec_shell("ls -A /tmp | grep -c sandkit-write || true")
                .await
                .unwrap()
                .stdout_text();
            if left == "0\n" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(left, "0\n", "{name}: a temporary file was left");
    }
    // A link to /etc/shadow at the target: replaced by the file, shadow untouched; as root
    // (the big, streamed path) and as a user.
    let user = sb.files_as("user").unwrap();
    sb.exec(
        CommandSpec::shell("ln -s /etc/shadow /tmp/as-root && ln -s /etc/shadow /tmp/roots")
            .user("root"),
    )
    .await
    .unwrap();
    sb.exec(CommandSpec::shell("ln -s /etc/shadow /tmp/as-user").user("user"))
        .await
        .unwrap();
    // Root's link in the sticky /tmp is not the user's to replace: refused, not followed.
    let e = user
        .write("/tmp/roots", Bytes::from_static(b"mine"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let big = futures_util::stream::iter(
        (0..12).map(|_| Ok::<_, sandkit_core::Error>(Bytes::from(vec![b'y'; 1 << 20]))),
    )
    .boxed();
    sb.files().write_stream("/tmp/as-root", big).await.unwrap();
    user.write("/tmp/as-user", Bytes::from_static(b"mine"))
        .await
        .unwrap();
    let shadow_after = sb
        .exec(CommandSpec::shell("md5sum /etc/shadow").user("root"))
        .await
        .unwrap()
        .stdout_text();
    assert_eq!(shadow_before, shadow_after, "/etc/shadow was written");
    let owned = sb
        .exec_shell("stat -c '%U %F' /tmp/as-user /tmp/as-root")
        .await
        .unwrap();
    assert_eq!(
        owned.stdout_text(),
        "user regular file\nroot regular file\n",
        "{owned:?}"
    );
    // The user's permissions hold: no writing /etc/passwd, no reading /etc/shadow.
    let e = user
        .write("/etc/passwd", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = user.read("/etc/shadow").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        sb.files().read("/etc/shadow").await.is_ok(),
        "root reads it"
    );
    // Files the archive API reads as empty stream in full as a user (/proc).
    let status = user.read_to_string("/proc/self/status").await.unwrap();
    assert!(status.contains("Name:"), "{status}");
    sb.kill().await.unwrap();
}

/// The process registry is world-writable: a 1 GiB record planted there is read 8 KiB at most
/// when the host lists processes.
#[tokio::test]
async fn a_huge_process_record_is_not_read() {
    // The registry is the exec path's: the agent lists the processes it started itself.
    let rt = docker().await;
    let rt = DockerRuntime::builder()
        .agent_inside(false)
        .build()
        .await
        .unwrap_or(rt);
    let sb = rt
        .create(SandboxSpec::new().metadata("sandkit-security-test", "procs"))
        .await
        .unwrap();
    let out = sb
        .exec(CommandSpec::shell("truncate -s 1G /.sandkit/procs/1 && echo ok").user("root"))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "ok\n", "{out:?}");
    let listed = sb.processes().await.unwrap();
    assert!(listed.iter().any(|p| p.pid == 1), "{listed:?}");
    let peak = sandkit_conformance::peak_rss_kib();
    assert!(
        peak < 300 * 1024,
        "peak RSS {peak} KiB: the record was read whole"
    );
    sb.kill().await.unwrap();
}
