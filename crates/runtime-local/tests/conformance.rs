//! The whole conformance suite against the local backend (`local::*`), plus what only this
//! backend promises: atomic writes, writes onto links, binary-safe names, and deadlines kept
//! with nobody reading the output.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sandkit_conformance::{SandboxTarget, Suite};
use sandkit_core::{
    CommandSpec, ErrorKind, FileStore, FileStoreExt, Runtime, Sandbox, SandboxExt, SandboxSpec,
};
use sandkit_local::LocalRuntime;

/// A case of this backend's own, over the runtime.
type OwnCase = fn(Arc<dyn Runtime>) -> sandkit_conformance::CaseFuture;

fn main() -> ExitCode {
    // Before any thread: the cases assume each sandbox starts with a /tmp and a home of its
    // own, as a container does. Local sandboxes share the machine, so this run gets its own.
    let private_tmp = sandkit_conformance::private_scratch();
    let mut suite = Suite::new();
    let runtime: Arc<dyn Runtime> = Arc::new(LocalRuntime::new());
    let has_python = which("python3") && which("bash");
    if !private_tmp {
        eprintln!("note: not root, so no private /tmp and home: the actions cases are not run");
    }
    // An empty home: `bash -l` reads no profile of the user running the tests.
    let home = tempfile::tempdir().expect("a home directory");
    let spec = SandboxSpec::new().env("HOME", home.path().to_string_lossy());
    suite.add_sandbox(
        SandboxTarget::new("local", runtime.clone(), spec).with_python(has_python && private_tmp),
    );
    let trials: [(&str, OwnCase); 6] = [
        (
            "local::own::names_with_control_characters_round_trip",
            |r| Box::pin(names_with_control_characters(r)),
        ),
        ("local::own::a_cut_write_keeps_the_old_content", |r| {
            Box::pin(cut_write_keeps_old(r))
        }),
        ("local::own::write_onto_a_link_to_shadow_is_refused", |r| {
            Box::pin(write_onto_shadow_link(r))
        }),
        ("local::own::timed_out_command_nobody_reads_is_gone", |r| {
            Box::pin(timed_out_unread(r))
        }),
        ("local::own::files_as_a_user_belong_to_them", |r| {
            Box::pin(files_as_user(r))
        }),
        ("local::own::kill_ends_what_the_sandbox_started", |r| {
            Box::pin(kill_ends_everything(r))
        }),
    ];
    for (name, case) in trials {
        let r = runtime.clone();
        suite.add_trial(name.into(), false, move || case(r));
    }
    let code = suite.run();
    // Whatever a case's commands started ends with its sandbox: nothing of this run's
    // sandboxes is left on the machine.
    let left = survivors("SANDKIT_LOCAL_SANDBOX=");
    if !left.is_empty() {
        eprintln!("processes of this run's sandboxes outlived them: {left:?}");
        return ExitCode::FAILURE;
    }
    code
}

/// The processes (pid and command line) whose environment has an entry starting with
/// `prefix`, other than this one.
fn survivors(prefix: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|e| e.starts_with(prefix.as_bytes()))
                .then(|| {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    (pid, String::from_utf8_lossy(&cmd).replace('\0', " "))
                })
        })
        .collect()
}

/// A command's background child, a double-forked daemon in a session of its own and a
/// `nohup` child all end with the sandbox.
async fn kill_ends_everything(rt: Arc<dyn Runtime>) -> sandkit_conformance::CaseResult {
    let sb = rt.create(SandboxSpec::new()).await?;
    let token = format!("{}", 3_000_000 + rand::random::<u32>() % 1_000_000);
    let line = format!(
        "sleep {token}1 & setsid sh -c 'sleep {token}2 & exit 0' & nohup sleep {token}3 >/dev/null 2>&1 & \
         sh -c '(sleep {token}4 &) ; exit 0'; sleep 0.5; echo started"
    );
    let out = sb.exec(CommandSpec::shell(line)).await?;
    assert_eq!(out.stdout_text(), "started\n", "{out:?}");
    let running = |n: usize| {
        let token = token.clone();
        move || {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("{token}{n}")))
                })
                .count()
        }
    };
    for n in 1..=4 {
        assert_eq!(
            running(n)(),
            1,
            "sleep {token}{n} is not running before the kill"
        );
    }
    sb.kill().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=4 {
        assert_eq!(running(n)(), 0, "sleep {token}{n} outlived its sandbox");
    }
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| std::path::Path::new(d).join(program).is_file())
}

async fn scratch(sb: &dyn Sandbox) -> sandkit_core::Result<String> {
    let dir = format!("/tmp/sandkit-local-{:016x}", rand::random::<u64>());
    sb.files().mkdir(&dir).await?;
    Ok(dir)
}

/// Names with newlines, tabs, escapes and non-ASCII: listed and copied back whole.
async fn names_with_control_characters(rt: Arc<dyn Runtime>) -> sandkit_conformance::CaseResult {
    let sb = rt.create(SandboxSpec::new()).await?;
    let dir = scratch(sb.as_ref()).await?;
    let names = [
        "plain.txt",
        "new\nline",
        "tab\there",
        "esc\u{1b}[31mred",
        "bell\u{7}",
        "caf\u{e9} \u{1f980}",
        " lead and trail ",
    ];
    for (i, n) in names.iter().enumerate() {
        sb.files()
            .write_str(&format!("{dir}/{n}"), &format!("content {i}"))
            .await?;
    }
    let listed = sb.files().list(&dir, 1).await?;
    let mut got: Vec<String> = listed.iter().map(|e| e.name.clone()).collect();
    got.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            sb.files().read_to_string(&format!("{dir}/{n}")).await?,
            format!("content {i}")
        );
    }
    // A directory copy out of the sandbox takes every one of them.
    let back = tempfile::tempdir().unwrap();
    let host = copy_out(sb.files(), &dir, back.path()).await?;
    assert_eq!(host, names.len());
    sb.files().remove(&dir).await?;
    sb.kill().await
}

/// Copies every file of `dir` to a host directory by the store's own calls.
async fn copy_out(
    store: &dyn FileStore,
    dir: &str,
    to: &std::path::Path,
) -> sandkit_core::Result<usize> {
    let mut n = 0;
    for e in store.list(dir, 1).await? {
        let bytes = store.read(&e.path).await?;
        std::fs::write(to.join(&e.name), bytes)?;
        n += 1;
    }
    Ok(n)
}

/// A 200 MiB write whose stream fails half-way, and one whose future is dropped half-way:
/// the old content is intact and no temporary file is left.
async fn cut_write_keeps_old(rt: Arc<dyn Runtime>) -> sandkit_conformance::CaseResult {
    let sb = rt.create(SandboxSpec::new()).await?;
    let dir = scratch(sb.as_ref()).await?;
    let path = format!("{dir}/precious");
    sb.files().write_str(&path, "old content").await?;
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    let failing = futures_util::stream::iter((0..200).map(move |i| {
        if i == 100 {
            Err(sandkit_core::Error::new(
                ErrorKind::Unavailable,
                "connection cut",
            ))
        } else {
            Ok(chunk.clone())
        }
    }));
    let err = sb
        .files()
        .write_stream(&path, Box::pin(failing))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(sb.files().read_to_string(&path).await?, "old content");

    // Dropped mid-way: the future is cancelled while the stream still has data to come.
    let chunk = Bytes::from(vec![b'y'; 1 << 20]);
    let (tx, rx) = tokio::sync::mpsc::channel::<sandkit_core::Result<Bytes>>(4);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let files = sb.files();
    let write = files.write_stream(&path, Box::pin(stream));
    let feed = async {
        for _ in 0..100 {
            tx.send(Ok(chunk.clone())).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::select! {
        r = write => panic!("the write ended with the stream still open: {r:?}"),
        () = feed => {}
    }
    assert_eq!(sb.files().read_to_string(&path).await?, "old content");
    let left: Vec<String> = sb
        .files()
        .list(&dir, 1)
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(left, ["precious"], "no temporary file is left");
    sb.files().remove(&dir).await?;
    sb.kill().await
}

/// As a non-root user, a write onto a link to `/etc/shadow` replaces the link in the user's
/// own directory and never touches the shadow file; a root write replaces the link too.
async fn write_onto_shadow_link(rt: Arc<dyn Runtime>) -> sandkit_conformance::CaseResult {
    let sb = rt.create(SandboxSpec::new()).await?;
    let before = std::fs::read("/etc/shadow").ok();
    let dir = scratch(sb.as_ref()).await?;
    let link = format!("{dir}/innocent");
    std::os::unix::fs::symlink("/etc/shadow", &link)?;
    if euid() == 0 {
        // As nobody: the directory is root's, so the user may not even replace the link.
        let nobody = sb.files_as("nobody")?;
        let err = nobody.write_str(&link, "pwned").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        // In a directory the user owns, the link is replaced, the shadow file untouched.
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
        nobody.write_str(&link, "mine").await?;
        assert_eq!(std::fs::read_to_string(&link)?, "mine");
        assert!(!std::fs::symlink_metadata(&link)?.file_type().is_symlink());
    }
    // As the backend's own identity: the link is replaced, not written through.
    std::fs::remove_file(&link)?;
    std::os::unix::fs::symlink("/etc/shadow", &link)?;
    sb.files().write_str(&link, "replaced").await?;
    assert!(!std::fs::symlink_metadata(&link)?.file_type().is_symlink());
    assert_eq!(
        std::fs::read("/etc/shadow").ok(),
        before,
        "shadow untouched"
    );
    sb.files().remove(&dir).await?;
    sb.kill().await
}

fn euid() -> u32 {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() }
}

/// A command with a deadline whose output nobody reads: gone from `ps` within a second of it,
/// children included.
async fn timed_out_unread(rt: Arc<dyn Runtime>) -> sandkit_conformance::CaseResult {
    let sb = rt.create(SandboxSpec::new()).await?;
    let marker = format!("{}", 3_000_000 + rand::random::<u32>() % 1_000_000);
    let p = sb
        .spawn(
            CommandSpec::shell(format!("yes; sleep {marker} & sleep {marker}"))
                .timeout(Duration::from_secs(1)),
        )
        .await?;
    drop(p); // nobody reads
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()?;
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains(&marker) || l == "yes"),
        "left running:\n{ps}"
    );
    sb.kill().await
}

/// What a user writes through `files_as` belongs to them, and what they may not read stays
/// unread.
async fn files_as_user(rt: Arc<dyn Runtime>) -> sandkit_conformance::CaseResult {
    use std::os::unix::fs::MetadataExt;
    if euid() != 0 {
        eprintln!("not root: the credential switch is not exercised");
        return Ok(());
    }
    let sb = rt.create(SandboxSpec::new()).await?;
    let dir = scratch(sb.as_ref()).await?;
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
    let nobody = sb.files_as("nobody")?;
    nobody.write_str(&format!("{dir}/theirs.txt"), "x").await?;
    let meta = std::fs::metadata(format!("{dir}/theirs.txt"))?;
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    let err = nobody.read("/etc/shadow").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let e = nobody.stat(&format!("{dir}/theirs.txt")).await?;
    assert_eq!(e.owner.as_deref(), Some("nobody"));
    sb.files().remove(&dir).await?;
    sb.kill().await
}
