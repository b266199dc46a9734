//! The Sandbox cases: lifecycle, exec, stdin, timeouts, processes, files through commands,
//! host ports. They are the definition of done for a backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sandkit_core::{
    Capabilities, CommandSpec, ErrorKind, FileStoreExt, ListFilter, ProcessEvent, Sandbox,
    SandboxExt, SandboxState, Signal,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::suite::{always, Case, CaseResult, SandkitCtx};

type Ctx = Arc<SandkitCtx>;

fn pause(c: &Capabilities) -> bool {
    c.pause
}
fn host_ports(c: &Capabilities) -> bool {
    c.host_ports
}

macro_rules! cases {
    ($($area:literal: $name:ident $(if $needs:path)?),* $(,)?) => {
        /// Every Sandbox case.
        pub fn cases() -> Vec<Case<Ctx>> {
            vec![$(Case {
                area: $area,
                name: stringify!($name),
                needs: cases!(@needs $($needs)?),
                run: |c| Box::pin($name(c)),
            }),*]
        }
    };
    (@needs) => { always };
    (@needs $needs:path) => { $needs };
}

cases!(
    "errors": errors_name_backend_operation_sandbox_and_path,
    "errors": specs_beyond_the_capabilities_are_refused if lacks_a_spec_capability,
    "lifecycle": create_reports_info,
    "lifecycle": list_filters_by_metadata,
    "lifecycle": connect_by_id_runs_commands,
    "lifecycle": connect_unknown_is_not_found,
    "lifecycle": kill_twice_is_not_found,
    "lifecycle": spec_env_reaches_commands,
    "lifecycle": spec_cwd_is_the_default_cwd,
    "lifecycle": set_timeout_extends_then_expires,
    "lifecycle": pause_then_connect_resumes if pause,
    "lifecycle": auto_pause_at_the_deadline_then_connect_resumes if pause,
    "exec": stdout_and_exit_zero,
    "exec": stderr_is_separate,
    "exec": nonzero_exit_is_data,
    "exec": program_args_are_not_shell_parsed,
    "exec": shell_line_pipes_and_quotes,
    "exec": multiline_script,
    "exec": missing_program_exits_127,
    "exec": cwd_option,
    "exec": env_option,
    "exec": user_root_option,
    "exec": binary_stdout_round_trips,
    "exec": large_output_5mb,
    "exec": output_limit_truncates,
    "exec": fifty_concurrent_commands,
    "exec": output_streams_before_exit,
    "stdin": stdin_round_trip,
    "stdin": stdin_closed_when_not_requested,
    "timeouts": timeout_returns_partial_output_and_kills,
    "timeouts": timeout_kills_children,
    "timeouts": finishing_before_the_timeout_is_ok,
    "process": kill_running_process,
    "process": background_process_is_listed_until_killed,
    "process": interrupt_stops_process,
    "files": files_and_commands_see_the_same_tree,
    "host": host_port_serves_http if host_ports,
    "watch": watch_reports_each_change_in_order if watch,
    "watch": watch_recursive_sees_new_directories if watch,
    "watch": watch_refuses_missing_and_file_paths if watch,
    "watch": watch_sees_api_writes_as_the_file if watch,
    "metrics": metrics_are_plausible if metrics,
    "network": network_policy_is_checked_then_set_live if network_policy,
    "network": request_rules_are_checked_and_keep_secrets_out if request_rules,
    "snapshots": snapshot_then_create_fork_and_delete if snapshots,
    "volumes": volume_is_shared_kept_and_removed if volumes,
);

fn lacks_a_spec_capability(c: &Capabilities) -> bool {
    !(c.mounts && c.resource_limits && c.network_modes && c.hosts)
}

fn volumes(c: &Capabilities) -> bool {
    c.volumes && c.mounts
}

fn snapshots(c: &Capabilities) -> bool {
    c.snapshots
}

fn network_policy(c: &Capabilities) -> bool {
    c.network_policy
}

fn request_rules(c: &Capabilities) -> bool {
    c.network_policy && c.request_rules
}

fn watch(c: &Capabilities) -> bool {
    c.watch
}

fn metrics(c: &Capabilities) -> bool {
    c.metrics
}

/// Reads events until `want` have come (or 10 s pass); returns what came.
async fn events_until(
    events: &mut sandkit_core::FsEventStream,
    want: usize,
) -> Vec<(String, sandkit_core::FsEventKind)> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want {
        match tokio::time::timeout_at(deadline.into(), events.next()).await {
            Ok(Some(Ok(e))) => got.push((e.name, e.kind)),
            Ok(Some(Err(e))) => panic!("the watch failed: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// Whether a process whose command line matches `pattern` (an extended regex; write one
/// letter as `[x]` so the search does not find itself) runs in the sandbox.
async fn running(sb: &dyn Sandbox, pattern: &str) -> sandkit_core::Result<bool> {
    let script = format!(
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done 2>/dev/null | grep -E -c -- {}",
        sandkit_core::raw::shell_quote(pattern)
    );
    let out = sb.exec(CommandSpec::shell(script)).await?;
    Ok(out.stdout_text().trim().parse::<u32>().unwrap_or(0) > 0)
}

/// Waits up to `limit` for `check` to hold.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// The error-context layer: whatever the backend, an error says where it came from.
async fn errors_name_backend_operation_sandbox_and_path(c: Ctx) -> CaseResult {
    let sb = c.fresh().await?;
    let missing = "/tmp/sandkit-no-such-dir/file.txt";
    let e = sb.files().stat(missing).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(e.backend(), Some(c.runtime().name()), "{e}");
    assert!(e.operation().is_some(), "{e}");
    let context = |e: &sandkit_core::Error, key: &str| {
        e.context()
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(context(&e, "path"), [missing], "{e}");
    assert_eq!(context(&e, "sandbox_id"), [sb.id()], "{e}");
    let e = sb.files().read(missing).await.unwrap_err();
    assert_eq!(context(&e, "path"), [missing], "{e}");
    let e = c.runtime().connect("nosuchsandbox0000").await.unwrap_err();
    assert_eq!(e.backend(), Some(c.runtime().name()), "{e}");
    assert_eq!(context(&e, "sandbox_id"), ["nosuchsandbox0000"], "{e}");
    Ok(())
}

/// The capability layer: a spec asking for what the backend lacks is refused, and nothing
/// is made.
async fn specs_beyond_the_capabilities_are_refused(c: Ctx) -> CaseResult {
    let caps = c.runtime().capabilities();
    let tag = format!("{:x}", rand::random::<u32>());
    let spec = || c.spec().metadata("refused", &tag);
    let mut asked = Vec::new();
    if !caps.mounts {
        asked.push(spec().mount(sandkit_core::Mount::parse("/tmp:/mnt/tmp")?));
    }
    if !caps.resource_limits {
        asked.push(spec().resources(sandkit_core::Resources::new().memory_mb(256)));
    }
    if !caps.network_modes {
        asked.push(spec().network(sandkit_core::NetworkMode::Host));
    }
    if !caps.hosts {
        asked.push(spec().add_host("db.internal", std::net::Ipv4Addr::new(10, 0, 0, 9).into()));
    }
    for spec in asked {
        let e = c.runtime().create(spec.clone()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{spec:?}: {e}");
        assert_eq!(e.backend(), Some(c.runtime().name()), "{e}");
        assert!(e.message().contains("Capabilities::"), "{e}");
    }
    let made = c
        .runtime()
        .list(&ListFilter::all().metadata("refused", &tag))
        .await?;
    assert!(made.is_empty(), "refused specs made sandboxes: {made:?}");
    Ok(())
}

async fn create_reports_info(c: Ctx) -> CaseResult {
    let sb = c.create(c.spec().metadata("purpose", "info")).await?;
    let info = sb.info().await?;
    assert_eq!(info.id, sb.id());
    assert_eq!(
        info.metadata.get("purpose").map(String::as_str),
        Some("info")
    );
    assert_eq!(info.state, SandboxState::Running);
    let expires = info.expires_at.expect("an expiry time");
    assert!(
        expires > std::time::SystemTime::now(),
        "expiry is in the future"
    );
    assert!(!sb.id().is_empty() && sb.id().bytes().all(|b| b.is_ascii_alphanumeric()));
    Ok(())
}

async fn list_filters_by_metadata(c: Ctx) -> CaseResult {
    let tag = format!("{:x}", rand::random::<u32>());
    let a = c.create(c.spec().metadata("pick", &tag)).await?;
    let b = c.create(c.spec().metadata("pick", "other")).await?;
    let found = c
        .runtime()
        .list(&ListFilter::all().metadata("pick", &tag))
        .await?;
    let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, [a.id()], "only the matching sandbox");
    assert_eq!(found[0].metadata.get("pick"), Some(&tag));
    let running = c
        .runtime()
        .list(
            &ListFilter::all()
                .metadata("pick", &tag)
                .state(SandboxState::Paused),
        )
        .await?;
    assert!(running.is_empty(), "the sandbox is not paused");
    drop(b);
    Ok(())
}

async fn connect_by_id_runs_commands(c: Ctx) -> CaseResult {
    let sb = c.fresh().await?;
    sb.files()
        .write_str("/tmp/marker", "from the first handle")
        .await?;
    let again = c.runtime().connect(sb.id()).await?;
    assert_eq!(again.id(), sb.id());
    let out = again.exec_shell("cat /tmp/marker").await?;
    assert_eq!(out.stdout_text(), "from the first handle");
    Ok(())
}

async fn connect_unknown_is_not_found(c: Ctx) -> CaseResult {
    let err = c.runtime().connect("nosuchsandbox0000").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Ok(())
}

async fn kill_twice_is_not_found(c: Ctx) -> CaseResult {
    let sb = c.fresh().await?;
    let id = sb.id().to_string();
    sb.kill().await?;
    let err = c.runtime().kill(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = c.runtime().connect(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let listed = c.runtime().list(&ListFilter::all()).await?;
    assert!(
        listed.iter().all(|i| i.id != id),
        "a killed sandbox is not listed"
    );
    Ok(())
}

async fn spec_env_reaches_commands(c: Ctx) -> CaseResult {
    let sb = c
        .create(c.spec().env("SANDKIT_SPEC_VAR", "from spec"))
        .await?;
    let out = sb.exec_shell("echo \"$SANDKIT_SPEC_VAR\"").await?;
    assert_eq!(out.stdout_text(), "from spec\n");
    Ok(())
}

async fn spec_cwd_is_the_default_cwd(c: Ctx) -> CaseResult {
    let sb = c.create(c.spec().cwd("/tmp")).await?;
    let out = sb
        .exec(CommandSpec::program("pwd", Vec::<String>::new()))
        .await?;
    assert_eq!(out.stdout_text(), "/tmp\n");
    Ok(())
}

async fn set_timeout_extends_then_expires(c: Ctx) -> CaseResult {
    // The short deadline is set once the sandbox is made: under load, making it can take
    // longer than 4 s, and a sandbox gone before create returns tests nothing.
    let sb = c.create(c.spec()).await?;
    sb.set_timeout(Duration::from_secs(4)).await?;
    sb.set_timeout(Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        sb.exec_shell("true").await?.success(),
        "extended past the first deadline"
    );
    sb.set_timeout(Duration::from_secs(2)).await?;
    let id = sb.id().to_string();
    // Watched through `list`: `connect` would extend the time to live on some backends.
    let gone = eventually(Duration::from_secs(60), || async {
        matches!(c.runtime().list(&ListFilter::all()).await, Ok(l) if l.iter().all(|i| i.id != id))
    })
    .await;
    assert!(gone, "the sandbox expired after its shortened time to live");
    let err = sb.info().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Ok(())
}

async fn pause_then_connect_resumes(c: Ctx) -> CaseResult {
    let sb = c.fresh().await?;
    sb.files().write_str("/tmp/state", "kept").await?;
    sb.pause().await?;
    assert_eq!(sb.info().await?.state, SandboxState::Paused);
    let paused = c
        .runtime()
        .list(
            &ListFilter::all()
                .metadata(
                    crate::SUITE_LABEL,
                    c.spec().metadata[crate::SUITE_LABEL].clone(),
                )
                .state(SandboxState::Paused),
        )
        .await?;
    assert!(paused.iter().any(|i| i.id == sb.id()), "listed as paused");
    let again = c.runtime().connect(sb.id()).await?;
    assert_eq!(again.info().await?.state, SandboxState::Running);
    assert_eq!(
        again.exec_shell("cat /tmp/state").await?.stdout_text(),
        "kept"
    );
    Ok(())
}

async fn stdout_and_exit_zero(c: Ctx) -> CaseResult {
    let out = c.shared().await?.exec_shell("echo hello").await?;
    assert_eq!(
        (out.stdout_text().as_str(), out.exit_code),
        ("hello\n", Some(0))
    );
    assert!(out.stderr.is_empty());
    Ok(())
}

async fn stderr_is_separate(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec_shell("echo out; echo err >&2")
        .await?;
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(out.stderr_text(), "err\n");
    Ok(())
}

async fn nonzero_exit_is_data(c: Ctx) -> CaseResult {
    let out = c.shared().await?.exec_shell("echo partial; exit 7").await?;
    assert_eq!(out.exit_code, Some(7));
    assert_eq!(out.stdout_text(), "partial\n");
    assert!(!out.success());
    Ok(())
}

async fn program_args_are_not_shell_parsed(c: Ctx) -> CaseResult {
    let args = ["[%s]\n", "two words", "$HOME", "it's", "a;b", "*"];
    let out = c
        .shared()
        .await?
        .exec(CommandSpec::program("printf", args))
        .await?;
    assert_eq!(
        out.stdout_text(),
        "[two words]\n[$HOME]\n[it's]\n[a;b]\n[*]\n"
    );
    Ok(())
}

async fn shell_line_pipes_and_quotes(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec_shell(r#"printf 'b\na\nc\n' | sort | tr -d '\n'; echo " it's \"quoted\" $((6*7))""#)
        .await?;
    assert_eq!(out.stdout_text(), "abc it's \"quoted\" 42\n");
    Ok(())
}

async fn multiline_script(c: Ctx) -> CaseResult {
    let script = "x=1\nfor i in 1 2 3; do\n  x=$((x*2))\ndone\necho $x\n";
    let out = c.shared().await?.exec_shell(script).await?;
    assert_eq!(out.stdout_text(), "8\n");
    Ok(())
}

async fn missing_program_exits_127(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec(CommandSpec::program("sandkit-no-such-program", ["x"]))
        .await?;
    assert_eq!(out.exit_code, Some(127), "{out:?}");
    Ok(())
}

async fn cwd_option(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    sb.files().mkdir("/tmp/cwd-case dir").await.or_else(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    let out = sb
        .exec(CommandSpec::shell("pwd").cwd("/tmp/cwd-case dir"))
        .await?;
    assert_eq!(out.stdout_text(), "/tmp/cwd-case dir\n");
    let err = sb
        .exec(CommandSpec::shell("pwd").cwd("/no/such/dir"))
        .await
        .map(|o| o.exit_code);
    assert!(
        matches!(err, Ok(Some(code)) if code != 0) || err.is_err(),
        "a missing cwd fails: {err:?}"
    );
    Ok(())
}

async fn env_option(c: Ctx) -> CaseResult {
    let spec = CommandSpec::shell("echo \"$A|$B\"")
        .env("A", "1")
        .env("B", "with space 'and' quotes");
    let out = c.shared().await?.exec(spec).await?;
    assert_eq!(out.stdout_text(), "1|with space 'and' quotes\n");
    Ok(())
}

async fn user_root_option(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec(CommandSpec::program("id", ["-u"]).user("root"))
        .await?;
    assert_eq!(out.stdout_text(), "0\n");
    Ok(())
}

async fn binary_stdout_round_trips(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let all: Vec<u8> = (0..=255u8).collect();
    let path = format!("/tmp/bin-{:x}", rand::random::<u32>());
    sb.files().write(&path, Bytes::from(all.clone())).await?;
    let out = sb
        .exec(CommandSpec::program("cat", [path.as_str()]))
        .await?;
    assert_eq!(out.stdout, all);
    Ok(())
}

async fn large_output_5mb(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec_shell("head -c 5000000 /dev/zero | tr '\\0' 'x'")
        .await?;
    assert_eq!(out.stdout.len(), 5_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));
    assert!(!out.truncated);
    Ok(())
}

async fn output_limit_truncates(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec_with_limit(CommandSpec::shell("head -c 100000 /dev/zero"), 1000)
        .await?;
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.truncated);
    assert_eq!(out.exit_code, Some(0));
    Ok(())
}

async fn fifty_concurrent_commands(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let runs = (0..50).map(|i| async move {
        let out = sb.exec_shell(&format!("echo {i}; echo e{i} >&2")).await?;
        Ok::<_, sandkit_core::Error>((i, out))
    });
    for result in futures_util::future::join_all(runs).await {
        let (i, out) = result?;
        assert_eq!(out.stdout_text(), format!("{i}\n"));
        assert_eq!(out.stderr_text(), format!("e{i}\n"));
    }
    Ok(())
}

async fn output_streams_before_exit(c: Ctx) -> CaseResult {
    // The command waits for input after its first line, so the first line must arrive on
    // its own, while the process still runs.
    let sb = c.shared().await?;
    let mut p = sb
        .spawn(CommandSpec::shell("echo first; read line; echo \"got $line\"").stdin(true))
        .await?;
    let mut seen = Vec::new();
    while !seen.ends_with(b"first\n") {
        match p.next_event().await {
            Some(Ok(ProcessEvent::Stdout(b))) => seen.extend_from_slice(&b),
            other => panic!("expected the first line before anything else, got {other:?}"),
        }
    }
    p.write_stdin("go\n").await?;
    let mut rest = Vec::new();
    loop {
        match p.next_event().await {
            Some(Ok(ProcessEvent::Stdout(b))) => rest.extend_from_slice(&b),
            Some(Ok(ProcessEvent::Exited { code })) => {
                assert_eq!(code, 0);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&rest), "got go\n");
    Ok(())
}

async fn collect(p: &mut sandkit_core::Process) -> sandkit_core::Result<(Vec<u8>, i32)> {
    let mut out = Vec::new();
    while let Some(ev) = p.next_event().await {
        match ev? {
            ProcessEvent::Stdout(b) | ProcessEvent::Stderr(b) => out.extend_from_slice(&b),
            ProcessEvent::Exited { code } => return Ok((out, code)),
        }
    }
    panic!("no exit event");
}

async fn stdin_round_trip(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let mut p = sb
        .spawn(CommandSpec::program("cat", Vec::<String>::new()).stdin(true))
        .await?;
    p.write_stdin("line one\n").await?;
    p.write_stdin(Bytes::from(vec![0u8, 1, 2, 255])).await?;
    p.close_stdin().await?;
    let (out, code) = collect(&mut p).await?;
    assert_eq!(code, 0);
    assert_eq!(out, b"line one\n\x00\x01\x02\xff");
    Ok(())
}

async fn stdin_closed_when_not_requested(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec(CommandSpec::shell("cat; echo done").timeout(Duration::from_secs(20)))
        .await?;
    assert_eq!(out.stdout_text(), "done\n");
    Ok(())
}

async fn timeout_returns_partial_output_and_kills(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let start = Instant::now();
    let err = sb
        .exec(CommandSpec::shell("echo started; sleep 3017").timeout(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "returned at the deadline"
    );
    let out = err.output().expect("the output so far");
    assert_eq!(out.stdout_text(), "started\n");
    assert!(out.exit_code.is_none());
    let gone = eventually(Duration::from_secs(10), || async {
        !running(sb, "slee[p] 3017").await.unwrap_or(true)
    })
    .await;
    assert!(gone, "the timed-out command is no longer running");
    Ok(())
}

async fn timeout_kills_children(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let err = sb
        .exec(CommandSpec::shell("sleep 3018 & sleep 3019 & wait").timeout(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let gone = eventually(Duration::from_secs(10), || async {
        !running(sb, "slee[p] 301[89]").await.unwrap_or(true)
    })
    .await;
    assert!(gone, "children of the timed-out command are gone too");
    Ok(())
}

async fn finishing_before_the_timeout_is_ok(c: Ctx) -> CaseResult {
    let out = c
        .shared()
        .await?
        .exec(CommandSpec::shell("echo quick; exit 3").timeout(Duration::from_secs(30)))
        .await?;
    assert_eq!(
        (out.stdout_text().as_str(), out.exit_code),
        ("quick\n", Some(3))
    );
    Ok(())
}

async fn kill_running_process(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let mut p = sb
        .spawn(CommandSpec::shell("sleep 3020 & sleep 3021"))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.kill().await?;
    let (_, code) = collect(&mut p).await?;
    assert_ne!(code, 0, "a killed process does not exit 0");
    let gone = eventually(Duration::from_secs(10), || async {
        !running(sb, "slee[p] 302[01]").await.unwrap_or(true)
    })
    .await;
    assert!(gone, "the process and its child are gone");
    Ok(())
}

async fn background_process_is_listed_until_killed(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let tag = format!("bg-{:x}", rand::random::<u32>());
    let p = sb.spawn(CommandSpec::shell("sleep 3022").tag(&tag)).await?;
    let pid = p.pid();
    let listed = sb.processes().await?;
    let me = listed
        .iter()
        .find(|i| i.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in {listed:?}"));
    assert_eq!(me.tag.as_deref(), Some(tag.as_str()));
    assert!(me.command.contains("sleep 3022"), "{me:?}");
    p.kill().await?;
    let gone = eventually(Duration::from_secs(10), || async {
        sb.processes()
            .await
            .map(|l| l.iter().all(|i| i.pid != pid))
            .unwrap_or(false)
    })
    .await;
    assert!(gone, "a killed process leaves the list");
    Ok(())
}

async fn interrupt_stops_process(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let mut p = sb.spawn(CommandSpec::program("sleep", ["3023"])).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.signal(Signal::Interrupt).await?;
    let (_, code) = collect(&mut p).await?;
    assert_eq!(code, 128 + 2, "killed by SIGINT");
    Ok(())
}

async fn files_and_commands_see_the_same_tree(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let dir = format!("/tmp/same-{:x}", rand::random::<u32>());
    sb.files()
        .write_str(&format!("{dir}/from-api.txt"), "api")
        .await?;
    let out = sb
        .exec_shell(&format!(
            "cat {dir}/from-api.txt && printf cmd > {dir}/from-cmd.txt"
        ))
        .await?;
    assert_eq!(out.stdout_text(), "api");
    assert_eq!(
        sb.files()
            .read_to_string(&format!("{dir}/from-cmd.txt"))
            .await?,
        "cmd"
    );
    sb.files().remove(&dir).await?;
    assert_eq!(
        sb.exec_shell(&format!("test -e {dir}")).await?.exit_code,
        Some(1)
    );
    Ok(())
}

async fn host_port_serves_http(c: Ctx) -> CaseResult {
    let sb = c.create(c.spec().port(8000)).await?;
    sb.files()
        .write_str("/tmp/www/index.html", "served from the sandbox")
        .await?;
    let server = if c.target().has_python {
        "cd /tmp/www && exec python3 -m http.server 8000"
    } else {
        "exec httpd -f -p 8000 -h /tmp/www"
    };
    let _server = sb.spawn(CommandSpec::shell(server)).await?;
    let addr = sb.get_host(8000).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = String::new();
    while Instant::now() < deadline && !body.contains("served from the sandbox") {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await else {
            continue;
        };
        let req = "GET /index.html HTTP/1.0\r\nHost: sandbox\r\n\r\n";
        if conn.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf).await;
        body = String::from_utf8_lossy(&buf).into_owned();
    }
    assert!(
        body.contains("served from the sandbox"),
        "GET http://{addr}/index.html answered: {body:?}"
    );
    assert!(body.starts_with("HTTP/1."), "{body}");
    Ok(())
}

async fn watch_reports_each_change_in_order(c: Ctx) -> CaseResult {
    use sandkit_core::FsEventKind::*;
    let sb = c.shared().await?;
    let dir = format!("/tmp/watch-{:x}", rand::random::<u32>());
    sb.files().mkdir(&dir).await?;
    let mut events = sb.watch(&dir, false).await?;
    let out = sb
        .exec_shell(&format!(
            "cd {dir} && printf x > a.txt && mv a.txt b.txt && chmod 600 b.txt && rm b.txt"
        ))
        .await?;
    assert!(out.success(), "{out:?}");
    let got = events_until(&mut events, 6).await;
    let want = [
        ("a.txt", Create),
        ("a.txt", Write),
        ("a.txt", Rename),
        ("b.txt", Create),
        ("b.txt", Chmod),
        ("b.txt", Remove),
    ];
    let want: Vec<(String, _)> = want.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    assert_eq!(got, want);
    drop(events);
    sb.files().remove(&dir).await?;
    Ok(())
}

async fn watch_recursive_sees_new_directories(c: Ctx) -> CaseResult {
    use sandkit_core::FsEventKind::*;
    let sb = c.shared().await?;
    let dir = format!("/tmp/watch-r-{:x}", rand::random::<u32>());
    sb.files().mkdir(&format!("{dir}/old")).await?;
    let mut flat = sb.watch(&dir, false).await?;
    let mut deep = sb.watch(&dir, true).await?;
    // A directory made and filled at once: its file is seen even if it came before the
    // directory's own watch.
    let out = sb
        .exec_shell(&format!(
            "mkdir -p {dir}/new/deeper && printf y > {dir}/new/deeper/f.txt && printf z > {dir}/old/g.txt"
        ))
        .await?;
    assert!(out.success(), "{out:?}");
    let wanted = ["new", "new/deeper", "new/deeper/f.txt", "old/g.txt"];
    let mut got = Vec::new();
    // Entries found when a new directory is watched may also come as their own events.
    while !wanted
        .iter()
        .all(|w| got.iter().any(|(n, k)| n == w && *k == Create))
    {
        let more = events_until(&mut deep, 1).await;
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    for want in wanted {
        assert!(
            got.iter().any(|(n, k)| n == want && *k == Create),
            "no create of {want} in {got:?}"
        );
    }
    // Not recursive: only the directory's own entries.
    let got = events_until(&mut flat, 1).await;
    assert_eq!(got, [("new".to_string(), Create)]);
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        use futures_util::StreamExt;
        flat.next().await
    })
    .await;
    assert!(more.is_err(), "nothing from below: {more:?}");
    sb.files().remove(&dir).await?;
    Ok(())
}

async fn watch_refuses_missing_and_file_paths(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let err = sb
        .watch("/tmp/sandkit-no-such-dir-here", false)
        .await
        .err()
        .expect("a missing directory is refused");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let file = format!("/tmp/watch-file-{:x}", rand::random::<u32>());
    sb.files().write_str(&file, "x").await?;
    let err = sb
        .watch(&file, false)
        .await
        .err()
        .expect("a file is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    sb.files().remove(&file).await?;
    Ok(())
}

/// A write through the sandbox's file API shows as the file being made, its mode set and
/// written (as E2B's envd reports a new file it writes), and a file written again as a write,
/// never as a temporary file of the backend.
async fn watch_sees_api_writes_as_the_file(c: Ctx) -> CaseResult {
    use sandkit_core::FsEventKind::*;
    let sb = c.shared().await?;
    let dir = format!("/tmp/watch-api-{:x}", rand::random::<u32>());
    sb.files().mkdir(&dir).await?;
    let mut events = sb.watch(&dir, false).await?;
    sb.files()
        .write_str(&format!("{dir}/doc.txt"), "v1")
        .await?;
    let got = events_until(&mut events, 3).await;
    assert_eq!(
        got,
        [
            ("doc.txt".to_string(), Create),
            ("doc.txt".to_string(), Chmod),
            ("doc.txt".to_string(), Write)
        ]
    );
    // Written again: one write, and nothing else before the next file's events.
    sb.files()
        .write_str(&format!("{dir}/doc.txt"), "v2")
        .await?;
    sb.files()
        .write_str(&format!("{dir}/end.txt"), "end")
        .await?;
    let got = events_until(&mut events, 4).await;
    assert_eq!(
        got,
        [
            ("doc.txt".to_string(), Write),
            ("end.txt".to_string(), Create),
            ("end.txt".to_string(), Chmod),
            ("end.txt".to_string(), Write)
        ]
    );
    sb.files().remove(&dir).await?;
    Ok(())
}

async fn metrics_are_plausible(c: Ctx) -> CaseResult {
    let sb = c.shared().await?;
    let m = sb.metrics().await?;
    assert!(m.cpu_count >= 1, "{m:?}");
    assert!((0.0..=100.0).contains(&m.cpu_used_pct), "{m:?}");
    assert!(
        m.mem_total > 0 && m.mem_used > 0 && m.mem_used <= m.mem_total,
        "{m:?}"
    );
    assert!(m.disk_total > 0 && m.disk_used <= m.disk_total, "{m:?}");
    let age = std::time::SystemTime::now()
        .duration_since(m.timestamp)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "measured now: {m:?}");
    Ok(())
}

/// With `auto_pause`, the end of the time to live pauses the sandbox (files and processes kept)
/// instead of killing it; `connect` resumes it.
async fn auto_pause_at_the_deadline_then_connect_resumes(c: Ctx) -> CaseResult {
    let sb = c
        .create(c.spec().auto_pause(true).timeout(Duration::from_secs(60)))
        .await?;
    sb.files()
        .write_str("/tmp/kept", "across the pause")
        .await?;
    let _bg = sb.spawn(CommandSpec::shell("sleep 3031")).await?;
    // The deadline comes once the sandbox is set up (a loaded machine may take seconds to).
    sb.set_timeout(Duration::from_secs(2)).await?;
    let id = sb.id().to_string();
    let paused = eventually(Duration::from_secs(60), || async {
        matches!(
            c.runtime().list(&ListFilter::all().state(SandboxState::Paused)).await,
            Ok(l) if l.iter().any(|i| i.id == id)
        )
    })
    .await;
    assert!(paused, "paused at its deadline, not killed");
    let resumed = c.runtime().connect(&id).await?;
    assert_eq!(resumed.info().await?.state, SandboxState::Running);
    assert_eq!(
        resumed.files().read_to_string("/tmp/kept").await?,
        "across the pause"
    );
    assert!(
        running(resumed.as_ref(), "slee[p] 3031").await?,
        "processes kept"
    );
    Ok(())
}

/// A policy is checked before anything is made, and a running sandbox takes a new one (and
/// an open one back) while it keeps serving. What a policy lets through is shown per backend
/// against destinations the tests make (see the Docker backend's `network` tests and the SDK
/// tests of e2b-local).
async fn network_policy_is_checked_then_set_live(c: Ctx) -> CaseResult {
    use sandkit_core::{NetworkPolicy, ALL_TRAFFIC};
    let bad = NetworkPolicy::new().deny_out(["example.com"]);
    let e = c
        .create(c.spec().network_policy(bad.clone()))
        .await
        .expect_err("a domain in deny_out is refused");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = c
        .create(
            c.spec()
                .network_policy(NetworkPolicy::new().allow_out(["example.com"])),
        )
        .await
        .expect_err("a domain needs ALL_TRAFFIC denied");
    assert!(e.message().contains("ALL_TRAFFIC"), "{e}");
    let sb = c
        .create(
            c.spec().network_policy(
                NetworkPolicy::new()
                    .deny_out([ALL_TRAFFIC])
                    .allow_out(["example.com", "10.0.0.0/8"]),
            ),
        )
        .await?;
    assert_eq!(sb.exec_shell("echo up").await?.stdout_text(), "up\n");
    let e = sb
        .set_network_policy(bad)
        .await
        .expect_err("checked live too");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    sb.set_network_policy(NetworkPolicy::new().deny_out(["192.0.2.0/24"]))
        .await?;
    sb.set_network_policy(NetworkPolicy::new()).await?;
    assert_eq!(sb.exec_shell("echo still").await?.stdout_text(), "still\n");
    sb.kill().await?;
    Ok(())
}

/// Request rules are checked before anything is made, a sandbox made with a rule that names
/// a secret runs without the secret anywhere in its environment, and it takes new rules live.
/// That the header reaches the server is shown per backend against a server the tests make
/// (the Docker backend's `request_rules` test, the SDK tests of e2b-local).
async fn request_rules_are_checked_and_keep_secrets_out(c: Ctx) -> CaseResult {
    use sandkit_core::{NetworkPolicy, RequestRule, ALL_TRAFFIC};
    let value = format!("conformance-{:016x}", std::process::id() as u64 * 7919);
    let base = || {
        NetworkPolicy::new()
            .deny_out([ALL_TRAFFIC])
            .allow_out(["api.conformance.test"])
    };
    for (bad, why) in [
        (
            base().rule("*", RequestRule::new().header("A", "1")),
            "a bare * is no domain",
        ),
        (
            base().rule(
                "api.conformance.test",
                RequestRule::new().header("Host", "x"),
            ),
            "Host routes the request",
        ),
        (
            base().rule(
                "api.conformance.test",
                RequestRule::new().header("A", "x\r\nB: y"),
            ),
            "a line break",
        ),
    ] {
        let e = c.create(c.spec().network_policy(bad)).await.expect_err(why);
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{why}: {e}");
    }
    let rule =
        RequestRule::new().header("Authorization", "Bearer ${e2b.secrets.conformance-token}");
    let sb = c
        .create(
            c.spec().network_policy(
                base()
                    .rule("api.conformance.test", rule.clone())
                    .secret("conformance-token", &value),
            ),
        )
        .await?;
    let env = sb
        .exec_shell("env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")
        .await?
        .stdout_text();
    assert!(env.contains("PATH="), "the environment was read: {env}");
    assert!(
        !env.contains(&value),
        "the secret is in the sandbox's environment"
    );
    sb.set_network_policy(base().rule(
        "*.conformance.test",
        RequestRule::new().header("X-Other", "1"),
    ))
    .await?;
    let e = sb
        .set_network_policy(base().rule("*", rule))
        .await
        .expect_err("checked live too");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(sb.exec_shell("echo still").await?.stdout_text(), "still\n");
    sb.kill().await?;
    Ok(())
}

/// A snapshot keeps the files as they were when it was taken and sandboxes are made from its
/// id; a fork copies the files as they are now, the metadata and the default directory; deleting a snapshot leaves
/// the sandboxes made from it running and takes it out of the list.
async fn snapshot_then_create_fork_and_delete(c: Ctx) -> CaseResult {
    let sb = c
        .create(c.spec().metadata("snapshot-case", "source").cwd("/tmp"))
        .await?;
    sb.files().write_str("/tmp/snap.txt", "when taken").await?;
    let e = sb.fork(0, None).await.expect_err("0 copies is refused");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let snap = sb.snapshot(None).await?;
    assert_eq!(snap.sandbox_id, sb.id());
    assert!(!snap.names.is_empty(), "{snap:?}");
    let listed = c.runtime().snapshots(Some(sb.id())).await?;
    assert!(listed.iter().any(|s| s.id == snap.id), "{listed:?}");
    sb.files().write_str("/tmp/snap.txt", "after").await?;

    let from = c.create(c.spec().template(&snap.id)).await?;
    assert_eq!(
        from.files().read_to_string("/tmp/snap.txt").await?,
        "when taken"
    );
    assert_eq!(from.exec_shell("echo runs").await?.stdout_text(), "runs\n");

    let forks = sb.fork(2, Some(Duration::from_secs(120))).await?;
    assert_eq!(forks.len(), 2);
    let mut ids = Vec::new();
    for fork in forks {
        let fork = fork?;
        c.track(fork.id());
        ids.push(fork.id().to_string());
        assert_ne!(fork.id(), sb.id());
        assert_eq!(fork.files().read_to_string("/tmp/snap.txt").await?, "after");
        // The source's default directory comes with the copy (E2B keeps it in metadata).
        assert_eq!(fork.exec_shell("pwd").await?.stdout_text(), "/tmp\n");
        let info = fork.info().await?;
        assert_eq!(
            info.metadata.get("snapshot-case").map(String::as_str),
            Some("source"),
            "{info:?}"
        );
        fork.files()
            .write_str("/tmp/snap.txt", "fork's own")
            .await?;
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(sb.files().read_to_string("/tmp/snap.txt").await?, "after");
    // A fork is not a snapshot anyone asked for.
    let listed = c.runtime().snapshots(Some(sb.id())).await?;
    assert_eq!(listed.len(), 1, "{listed:?}");

    c.runtime().delete_snapshot(&snap.id).await?;
    let listed = c.runtime().snapshots(Some(sb.id())).await?;
    assert!(listed.iter().all(|s| s.id != snap.id), "{listed:?}");
    let e = c.runtime().delete_snapshot(&snap.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(c.create(c.spec().template(&snap.id)).await.is_err());
    assert_eq!(
        from.exec_shell("echo still").await?.stdout_text(),
        "still\n"
    );
    for id in ids {
        c.runtime().kill(&id).await?;
    }
    from.kill().await?;
    sb.kill().await?;
    Ok(())
}

/// A volume is shared by the sandboxes that mount it and outlives them; it cannot be removed
/// while mounted, nor made twice, and is gone once removed.
async fn volume_is_shared_kept_and_removed(c: Ctx) -> CaseResult {
    use sandkit_core::{Mount, MountSource};
    let name = format!("sandkit-conformance-{:08x}", rand::random::<u32>());
    let rt = c.runtime();
    let volume = rt
        .create_volume(&name, [("case".to_string(), "volumes".to_string())].into())
        .await?;
    assert_eq!(volume.name, name);
    let result = async {
        let e = rt
            .create_volume(&name, Default::default())
            .await
            .expect_err("a second volume of the same name");
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let listed = rt.volumes().await?;
        let found = listed.iter().find(|v| v.name == name).expect("listed");
        assert_eq!(
            found.metadata.get("case").map(String::as_str),
            Some("volumes")
        );

        let mount = |ro: bool| Mount {
            source: MountSource::Volume(name.clone()),
            target: "/data".into(),
            read_only: ro,
        };
        let mut spec = c.spec();
        spec.mounts.push(mount(false));
        let a = c.create(spec.clone()).await?;
        a.exec_shell("echo kept > /data/f").await?;
        let e = rt.remove_volume(&name).await.expect_err("mounted");
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let b = c.create(spec).await?;
        assert_eq!(b.files().read_to_string("/data/f").await?, "kept\n");
        a.kill().await?;
        b.kill().await?;
        let mut spec = c.spec();
        spec.mounts.push(mount(true));
        let later = c.create(spec).await?;
        assert_eq!(
            later.exec_shell("cat /data/f").await?.stdout_text(),
            "kept\n"
        );
        later.kill().await?;
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    // Removal right after a kill may race the engine's own clean-up: try a few times.
    let mut removed = rt.remove_volume(&name).await;
    for _ in 0..20 {
        match &removed {
            Err(e) if e.kind() == ErrorKind::Conflict => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                removed = rt.remove_volume(&name).await;
            }
            _ => break,
        }
    }
    result?;
    removed?;
    assert!(rt.volumes().await?.iter().all(|v| v.name != name));
    let e = rt.remove_volume(&name).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    Ok(())
}
