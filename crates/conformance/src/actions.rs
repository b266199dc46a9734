//! The agent-operation cases (`area = actions`): `sandkit-actions` over any backend whose image
//! has bash and python3.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sandkit_actions::{
    Action, Observation, RunRequest, RunResult, Session, SessionOptions, ShellOptions,
};
use sandkit_core::{ErrorKind, FileStoreExt};

use crate::suite::{Case, CaseResult, SandkitCtx};

type Ctx = Arc<SandkitCtx>;

fn needs_actions(_: &sandkit_core::Capabilities) -> bool {
    true
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every actions case.
        pub fn cases() -> Vec<Case<Ctx>> {
            vec![$(Case { area: "actions", name: stringify!($name), needs: needs_actions, run: |c| Box::pin($name(c)) }),*]
        }
    };
}

cases!(
    cd_persists,
    opens_in_its_directory_made_if_missing,
    export_persists,
    result_has_exit_code_and_cwd,
    stdout_and_stderr_apart_too,
    no_output_timeout_returns_and_keeps_running,
    hard_timeout_returns_partial_output,
    new_command_refused_while_running,
    input_reaches_running_command,
    ctrl_c_interrupts,
    ctrl_d_closes_input,
    empty_command_with_nothing_running_is_an_error,
    survives_set_e,
    survives_exit,
    survives_kill_9_of_its_shell,
    survives_set_u,
    long_output_cut_in_the_middle,
    static_command_has_its_own_cwd,
    ipython_state_persists,
    ipython_prints_and_returns_values,
    ipython_traceback,
    ipython_timeout_interrupts_the_cell,
    ipython_cwd_follows_the_shell,
    read_line_slices,
    view_numbers_lines_and_ranges,
    view_directory_tree,
    write_creates_parents_and_keeps_mode,
    write_line_range,
    create_refuses_existing_file,
    str_replace_must_match_once,
    insert_after_line,
    undo_edit_steps_back,
    binary_files_are_refused,
    relative_paths_follow_the_shell,
    browse_returns_markdown,
    browse_error_status,
    env_vars_reach_shell_and_ipython_and_survive_restart,
    copy_directory_both_ways_with_modes,
    copy_from_trusts_nothing_from_the_sandbox,
    list_files_directories_first,
    attach_to_gone_session_is_not_found,
    attach_reuses_the_sandbox,
    actions_as_openhands_json,
);

/// Opens a session on the target with short timeouts, its sandbox recorded for clean-up.
async fn open(c: &Ctx) -> sandkit_core::Result<Session> {
    let id = format!("conf-{:x}", rand::random::<u64>());
    open_id(c, &id, false).await
}

async fn open_id(c: &Ctx, id: &str, attach: bool) -> sandkit_core::Result<Session> {
    let shell = ShellOptions {
        no_output_timeout: Duration::from_secs(3),
        hard_timeout: Duration::from_secs(30),
        max_output_chars: 30_000,
    };
    let options = SessionOptions::new(c.spec())
        .shell(shell)
        .attach_to_existing(attach);
    let session = Session::open(c.runtime_arc(), id, options).await?;
    c.track(session.sandbox().id());
    Ok(session)
}

async fn run(s: &Session, command: &str) -> sandkit_core::Result<RunResult> {
    s.run(RunRequest {
        command: command.into(),
        ..Default::default()
    })
    .await
}

async fn input(s: &Session, text: &str) -> sandkit_core::Result<RunResult> {
    s.run(RunRequest {
        command: text.into(),
        is_input: true,
        ..Default::default()
    })
    .await
}

/// A session asked for a directory starts there on every backend, the directory made (and
/// writable by the default user) where the backend has not made it.
async fn opens_in_its_directory_made_if_missing(c: Ctx) -> CaseResult {
    let parent = format!("/tmp/sandkit-session-dir-{:x}", rand::random::<u32>());
    let dir = format!("{parent}/work");
    let options = SessionOptions::new(c.spec().cwd(dir.clone()));
    let id = format!("conf-{:x}", rand::random::<u64>());
    let s = Session::open(c.runtime_arc(), &id, options).await?;
    c.track(s.sandbox().id());
    assert_eq!(s.cwd().await, dir);
    let r = run(&s, "pwd && touch made-here && ls").await?;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(r.stdout.starts_with(&format!("{dir}\n")), "{r:?}");
    assert!(r.stdout.contains("made-here"), "{r:?}");
    // The local backend's sandbox is this machine: leave nothing in its /tmp.
    s.run_static(
        &format!("rm -rf {parent}"),
        Some("/"),
        Duration::from_secs(20),
    )
    .await?;
    s.close().await
}

async fn cd_persists(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "mkdir -p /tmp/a\\ dir && cd /tmp/a\\ dir").await?;
    let r = run(&s, "pwd").await?;
    assert_eq!(r.output, "/tmp/a dir\n");
    assert_eq!(r.cwd, "/tmp/a dir");
    s.close().await
}

async fn export_persists(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "export A=1 B='two words'").await?;
    assert_eq!(run(&s, "echo \"$A|$B\"").await?.output, "1|two words\n");
    s.close().await
}

async fn result_has_exit_code_and_cwd(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = run(&s, "cd / && echo out && echo err >&2 && false").await?;
    assert_eq!(r.exit_code, 1);
    assert_eq!(r.cwd, "/");
    assert!(
        r.output.contains("out\n") && r.output.contains("err\n"),
        "{r:?}"
    );
    assert!(r.suffix.contains("exit code 1"), "{r:?}");
    s.close().await
}

/// The output as it came, and each stream apart (the state line of the shell in neither).
async fn stdout_and_stderr_apart_too(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = run(
        &s,
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2; (exit 3)",
    )
    .await?;
    assert_eq!(r.stdout, "out1\nout2\n", "{r:?}");
    assert_eq!(r.stderr, "err1\nerr2\n", "{r:?}");
    for line in ["out1", "err1", "out2", "err2"] {
        assert!(r.output.contains(line), "{r:?}");
    }
    assert_eq!(r.exit_code, 3, "{r:?}");
    let r = s
        .run_static("echo a; echo b >&2", None, Duration::from_secs(20))
        .await?;
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str()),
        ("a\n", "b\n"),
        "{r:?}"
    );
    s.close().await
}

async fn no_output_timeout_returns_and_keeps_running(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = run(&s, "echo start; sleep 6; echo end").await?;
    assert_eq!(r.exit_code, -1);
    assert_eq!(r.output, "start\n");
    assert!(r.suffix.contains("no new output after 3 seconds"), "{r:?}");
    let r = s
        .run(RunRequest {
            command: String::new(),
            blocking: true,
            ..Default::default()
        })
        .await?;
    assert_eq!(r.output, "end\n", "only the new output");
    assert_eq!(r.exit_code, 0);
    assert!(
        r.prefix
            .contains("Below is the output of the previous command"),
        "{r:?}"
    );
    s.close().await
}

async fn hard_timeout_returns_partial_output(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = s
        .run(RunRequest {
            command: "for i in $(seq 1 200); do echo line$i; sleep 0.1; done".into(),
            timeout: Some(Duration::from_secs(2)),
            blocking: true,
            ..Default::default()
        })
        .await?;
    assert_eq!(r.exit_code, -1);
    assert!(r.output.starts_with("line1\n"), "{r:?}");
    assert!(!r.output.contains("line200"), "returned before the end");
    assert!(r.suffix.contains("timed out after 2 seconds"), "{r:?}");
    input(&s, "C-c").await?;
    s.close().await
}

async fn new_command_refused_while_running(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "sleep 30").await?;
    let r = run(&s, "echo should-not-run").await?;
    assert!(r.suffix.contains("is NOT executed"), "{r:?}");
    assert!(!r.output.contains("should-not-run"));
    let r = input(&s, "C-c").await?;
    assert_eq!(r.exit_code, 130, "{r:?}");
    assert_eq!(run(&s, "echo now").await?.output, "now\n");
    s.close().await
}

async fn input_reaches_running_command(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = run(&s, "printf 'name? '; read name; echo \"hello $name\"").await?;
    assert_eq!(r.exit_code, -1);
    assert_eq!(r.output, "name? ");
    let r = input(&s, "world").await?;
    assert_eq!(r.output, "hello world\n");
    assert_eq!(r.exit_code, 0);
    s.close().await
}

async fn ctrl_c_interrupts(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "echo begun; sleep 100").await?;
    let r = input(&s, "C-c").await?;
    assert_eq!(r.exit_code, 130, "{r:?}");
    assert!(r.suffix.contains("CTRL+C was sent"), "{r:?}");
    s.close().await
}

async fn ctrl_d_closes_input(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "cat > /tmp/typed.txt").await?;
    input(&s, "typed line").await?;
    let r = input(&s, "C-d").await?;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(
        s.sandbox().files().read_to_string("/tmp/typed.txt").await?,
        "typed line\n"
    );
    s.close().await
}

async fn empty_command_with_nothing_running_is_an_error(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = run(&s, "").await?;
    assert_eq!(r.exit_code, -1);
    assert!(r.output.contains("No previous running command"), "{r:?}");
    let r = input(&s, "text").await?;
    assert!(
        r.output
            .contains("No previous running command to interact with"),
        "{r:?}"
    );
    s.close().await
}

async fn survives_set_e(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "cd /tmp").await?;
    let r = run(&s, "set -e; false; echo unreachable").await?;
    assert_eq!(r.exit_code, 1);
    assert!(!r.output.contains("unreachable"));
    let r = run(&s, "echo alive; pwd").await?;
    assert_eq!(r.output, "alive\n/tmp\n");
    assert_eq!(r.exit_code, 0);
    assert!(r.prefix.contains("shell was restarted"), "{r:?}");
    // And `set -e` did not stick.
    assert_eq!(run(&s, "false; echo still").await?.output, "still\n");
    s.close().await
}

async fn survives_exit(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    assert_eq!(run(&s, "exit 7").await?.exit_code, 7);
    let r = run(&s, "echo back").await?;
    assert_eq!((r.output.as_str(), r.exit_code), ("back\n", 0));
    assert!(r.prefix.contains("restarted"), "{r:?}");
    s.close().await
}

async fn survives_kill_9_of_its_shell(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "export KEEP=yes").await?;
    let r = run(&s, "kill -9 $$").await?;
    assert_eq!(r.exit_code, 137, "{r:?}");
    let r = run(&s, "echo $KEEP").await?;
    assert_eq!(r.output, "yes\n", "state from before the kill");
    assert!(r.prefix.contains("restarted"), "{r:?}");
    s.close().await
}

async fn survives_set_u(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = run(&s, "set -u; echo $SANDKIT_NOT_SET_ANYWHERE").await?;
    assert_ne!(r.exit_code, 0);
    assert_eq!(
        run(&s, "echo ${SANDKIT_NOT_SET_ANYWHERE:-fine}")
            .await?
            .output,
        "fine\n"
    );
    s.close().await
}

async fn long_output_cut_in_the_middle(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = run(&s, "seq 1 20000").await?;
    assert!(r.output.starts_with("1\n2\n3\n"), "head kept");
    assert!(r.output.trim_end().ends_with("19999\n20000"), "tail kept");
    assert!(r
        .output
        .contains("[... Observation truncated due to length ...]"));
    assert!(r.output.chars().count() < 30_100);
    s.close().await
}

async fn static_command_has_its_own_cwd(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "cd /tmp").await?;
    let r = s
        .run_static("pwd", Some("/"), Duration::from_secs(20))
        .await?;
    assert_eq!(r.output, "/\n");
    assert_eq!(
        run(&s, "pwd").await?.output,
        "/tmp\n",
        "the session's shell is untouched"
    );
    s.close().await
}

const CELL_TIMEOUT: Duration = Duration::from_secs(30);

async fn ipython_state_persists(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.run_ipython("x = 41\ndef inc(v):\n    return v + 1", CELL_TIMEOUT)
        .await?;
    let r = s.run_ipython("inc(x)", CELL_TIMEOUT).await?;
    assert_eq!(r.result.as_deref(), Some("42"));
    s.close().await
}

async fn ipython_prints_and_returns_values(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = s
        .run_ipython(
            "print('hi')\nimport sys; print('err', file=sys.stderr)\n6 * 7",
            CELL_TIMEOUT,
        )
        .await?;
    assert_eq!(r.output, "hi\nerr\n");
    assert_eq!(r.result.as_deref(), Some("42"));
    assert_eq!(r.text(), "hi\nerr\n42");
    let r = s.run_ipython("y = 1", CELL_TIMEOUT).await?;
    assert_eq!(r.result, None, "an assignment has no value");
    s.close().await
}

async fn ipython_traceback(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let r = s
        .run_ipython("def f():\n    return 1 / 0\nf()", CELL_TIMEOUT)
        .await?;
    let e = r.error.expect("a traceback");
    assert!(e.contains("ZeroDivisionError"), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(
        s.run_ipython("1 + 1", CELL_TIMEOUT)
            .await?
            .result
            .as_deref()
            == Some("2")
    );
    s.close().await
}

async fn ipython_timeout_interrupts_the_cell(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.run_ipython("kept = 'still here'", CELL_TIMEOUT).await?;
    let r = s
        .run_ipython(
            "import time\nprint('before')\ntime.sleep(60)",
            Duration::from_secs(2),
        )
        .await?;
    assert!(r.timed_out);
    assert!(r.text().contains("interrupted"), "{r:?}");
    let r = s.run_ipython("kept", CELL_TIMEOUT).await?;
    assert_eq!(
        r.result.as_deref(),
        Some("'still here'"),
        "the kernel survived"
    );
    s.close().await
}

async fn ipython_cwd_follows_the_shell(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "mkdir -p /tmp/kcwd && cd /tmp/kcwd").await?;
    let r = s
        .run_ipython("import os; os.getcwd()", CELL_TIMEOUT)
        .await?;
    assert_eq!(r.result.as_deref(), Some("'/tmp/kcwd'"));
    s.close().await
}

async fn read_line_slices(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.write("/tmp/r.txt", "l0\nl1\nl2\nl3\n", 0, -1).await?;
    assert_eq!(s.read("/tmp/r.txt", 1, 3).await?, "l1\nl2\n");
    assert_eq!(s.read("/tmp/r.txt", 0, -1).await?, "l0\nl1\nl2\nl3\n");
    assert_eq!(
        s.read("/tmp/missing.txt", 0, -1).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    s.close().await
}

async fn view_numbers_lines_and_ranges(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.write("/tmp/v.py", "a = 1\nb = 2\nc = 3\n", 0, -1).await?;
    let v = s.view("/tmp/v.py", None).await?;
    assert!(
        v.contains("     1\ta = 1\n     2\tb = 2\n     3\tc = 3\n"),
        "{v}"
    );
    let v = s.view("/tmp/v.py", Some([2, -1])).await?;
    assert!(
        v.contains("     2\tb = 2\n     3\tc = 3\n") && !v.contains("a = 1"),
        "{v}"
    );
    assert_eq!(
        s.view("/tmp/v.py", Some([5, 6])).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    s.close().await
}

async fn view_directory_tree(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    for p in [
        "/tmp/tree/a.txt",
        "/tmp/tree/sub/b.txt",
        "/tmp/tree/sub/deep/c.txt",
        "/tmp/tree/.hidden",
    ] {
        s.write(p, "x", 0, -1).await?;
    }
    let v = s.view("/tmp/tree", None).await?;
    assert!(v.contains("/tmp/tree/a.txt\n"), "{v}");
    assert!(v.contains("/tmp/tree/sub/\n"), "{v}");
    assert!(v.contains("/tmp/tree/sub/b.txt\n"), "{v}");
    assert!(!v.contains("c.txt"), "two levels only: {v}");
    assert!(!v.contains(".hidden\n") && v.contains("1 hidden"), "{v}");
    s.close().await
}

async fn write_creates_parents_and_keeps_mode(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.write("/tmp/w/deep/run.sh", "#!/bin/sh\necho one\n", 0, -1)
        .await?;
    run(&s, "chmod 755 /tmp/w/deep/run.sh").await?;
    s.write("/tmp/w/deep/run.sh", "#!/bin/sh\necho two\n", 0, -1)
        .await?;
    assert_eq!(
        s.sandbox().files().stat("/tmp/w/deep/run.sh").await?.mode,
        0o755
    );
    assert_eq!(run(&s, "/tmp/w/deep/run.sh").await?.output, "two\n");
    s.close().await
}

async fn write_line_range(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.write("/tmp/lr.txt", "a\nb\nc\n", 0, -1).await?;
    s.write("/tmp/lr.txt", "B1\nB2\n", 1, 2).await?;
    assert_eq!(s.read("/tmp/lr.txt", 0, -1).await?, "a\nB1\nB2\nc\n");
    s.close().await
}

async fn create_refuses_existing_file(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.create_file("/tmp/new.txt", "first").await?;
    let e = s.create_file("/tmp/new.txt", "second").await.unwrap_err();
    assert!(e.message().contains("already exists"), "{e}");
    assert_eq!(s.read("/tmp/new.txt", 0, -1).await?, "first");
    s.close().await
}

async fn str_replace_must_match_once(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.write("/tmp/sr.txt", "x = 1\ny = 2\nx = 1\n", 0, -1)
        .await?;
    let e = s
        .str_replace("/tmp/sr.txt", "x = 1", "x = 9")
        .await
        .unwrap_err();
    assert!(e.message().contains("[1, 3]"), "says which lines: {e}");
    let e = s
        .str_replace("/tmp/sr.txt", "z = 0", "q")
        .await
        .unwrap_err();
    assert!(e.message().contains("did not appear verbatim"), "{e}");
    let shown = s.str_replace("/tmp/sr.txt", "y = 2", "y = 20").await?;
    assert!(shown.contains("     2\ty = 20"), "{shown}");
    assert_eq!(
        s.read("/tmp/sr.txt", 0, -1).await?,
        "x = 1\ny = 20\nx = 1\n"
    );
    s.close().await
}

async fn insert_after_line(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.write("/tmp/in.txt", "one\nthree\n", 0, -1).await?;
    s.insert("/tmp/in.txt", 1, "two").await?;
    assert_eq!(s.read("/tmp/in.txt", 0, -1).await?, "one\ntwo\nthree\n");
    s.close().await
}

async fn undo_edit_steps_back(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.write("/tmp/u.txt", "v1\n", 0, -1).await?;
    s.str_replace("/tmp/u.txt", "v1", "v2").await?;
    s.str_replace("/tmp/u.txt", "v2", "v3").await?;
    s.undo_edit("/tmp/u.txt").await?;
    assert_eq!(s.read("/tmp/u.txt", 0, -1).await?, "v2\n");
    s.undo_edit("/tmp/u.txt").await?;
    assert_eq!(s.read("/tmp/u.txt", 0, -1).await?, "v1\n");
    s.close().await
}

async fn binary_files_are_refused(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.sandbox()
        .files()
        .write("/tmp/b.bin", bytes::Bytes::from_static(b"\x00\x01\xff"))
        .await?;
    let e = s.read("/tmp/b.bin", 0, -1).await.unwrap_err();
    assert!(e.message().contains("binary"), "{e}");
    s.close().await
}

async fn relative_paths_follow_the_shell(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    run(&s, "mkdir -p /tmp/rel && cd /tmp/rel").await?;
    s.write("note.txt", "relative", 0, -1).await?;
    assert_eq!(
        s.sandbox()
            .files()
            .read_to_string("/tmp/rel/note.txt")
            .await?,
        "relative"
    );
    assert_eq!(s.read("note.txt", 0, -1).await?, "relative");
    s.close().await
}

/// Serves a small page from inside the sandbox and returns its base URL. The port is one that is
/// free on this machine: on the local backend the sandbox shares the host's network, and two
/// cases serving on one fixed port at once would meet each other's server (or none).
async fn serve_page(s: &Session) -> sandkit_core::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            sandkit_core::Error::new(
                sandkit_core::ErrorKind::Unexpected,
                format!("no free port: {e}"),
            )
        })?;
    let dir = format!("/tmp/site-{port}");
    s.write(&format!("{dir}/index.html"), "<html><head><title>T</title></head><body><h1>Hello page</h1><p>Some <b>bold</b> text.</p><a href=\"/x\">link</a></body></html>", 0, -1).await?;
    s.run_static(&format!("cd {dir} && (python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &) ; sleep 1"), None, Duration::from_secs(20)).await?;
    Ok(format!("http://127.0.0.1:{port}"))
}

async fn browse_returns_markdown(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let base = serve_page(&s).await?;
    let mut page = s.browse(&format!("{base}/")).await;
    for _ in 0..20 {
        if page.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        page = s.browse(&format!("{base}/")).await;
    }
    let page = page?;
    assert_eq!(page.status, 200);
    assert!(page.markdown.contains("# Hello page"), "{}", page.markdown);
    assert!(page.markdown.contains("**bold**"), "{}", page.markdown);
    assert!(page.url.starts_with(&format!("{base}/")));
    s.close().await
}

async fn browse_error_status(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let base = serve_page(&s).await?;
    let missing = format!("{base}/missing");
    let mut e = s.browse(&missing).await.unwrap_err();
    for _ in 0..20 {
        if e.kind() == ErrorKind::NotFound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        e = s.browse(&missing).await.unwrap_err();
    }
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("404"), "{e}");
    let e = s.browse("file:///etc/passwd").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // A URL is an argument, never shell text.
    let e = s
        .browse("http://127.0.0.1:1/$(touch /tmp/pwned)")
        .await
        .unwrap_err();
    assert_ne!(e.kind(), ErrorKind::InvalidInput);
    assert!(!s.sandbox().files().exists("/tmp/pwned").await?);
    s.close().await
}

async fn env_vars_reach_shell_and_ipython_and_survive_restart(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    s.add_env_vars(&BTreeMap::from([(
        "my_token".to_string(),
        "v1 'q'".to_string(),
    )]))
    .await?;
    assert_eq!(run(&s, "echo \"$MY_TOKEN\"").await?.output, "v1 'q'\n");
    s.add_env_vars(&BTreeMap::from([(
        "MY_TOKEN".to_string(),
        "v2".to_string(),
    )]))
    .await?;
    assert_eq!(
        run(&s, "echo $MY_TOKEN").await?.output,
        "v2\n",
        "updated, not stale"
    );
    let r = s
        .run_ipython("import os; os.environ['MY_TOKEN']", CELL_TIMEOUT)
        .await?;
    assert_eq!(r.result.as_deref(), Some("'v2'"));
    let bashrc = run(&s, "grep -c '^export MY_TOKEN=' ~/.bashrc").await?;
    assert_eq!(bashrc.output, "1\n", "one line in ~/.bashrc");
    run(&s, "exit 3").await?;
    assert_eq!(
        run(&s, "echo $MY_TOKEN").await?.output,
        "v2\n",
        "after a restart"
    );
    s.close().await
}

async fn copy_directory_both_ways_with_modes(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let host = std::env::temp_dir().join(format!("sandkit-copy-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(host.join("proj/bin")).unwrap();
    std::fs::write(host.join("proj/readme.md"), "hello").unwrap();
    std::fs::write(host.join("proj/bin/run"), "#!/bin/sh\necho ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        host.join("proj/bin/run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let result = async {
        s.copy_to(&host.join("proj"), "/tmp/in", true).await?;
        assert_eq!(run(&s, "/tmp/in/proj/bin/run").await?.output, "ran\n");
        assert_eq!(
            s.sandbox()
                .files()
                .read_to_string("/tmp/in/proj/readme.md")
                .await?,
            "hello"
        );
        s.copy_to(&host.join("proj/readme.md"), "/tmp/single", false)
            .await?;
        assert_eq!(
            s.sandbox()
                .files()
                .read_to_string("/tmp/single/readme.md")
                .await?,
            "hello"
        );
        let back = s
            .copy_from("/tmp/in/proj", Some(&host.join("back")))
            .await?;
        assert_eq!(back, host.join("back/proj"));
        assert_eq!(
            std::fs::read_to_string(back.join("readme.md")).unwrap(),
            "hello"
        );
        let mode = std::fs::metadata(back.join("bin/run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755);
        let file = s.copy_from("/tmp/in/proj/readme.md", None).await?;
        let content = std::fs::read_to_string(&file);
        // The directory made for it is the caller's: this case removes it.
        if let Some(made) = file.parent() {
            let _ = std::fs::remove_dir_all(made);
        }
        assert_eq!(content.unwrap(), "hello");
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&host);
    result?;
    s.close().await
}

/// A sandbox that plants a setuid file, links to host files and a FIFO: the copy on the host
/// has none of them (the security issue's finding 4).
async fn copy_from_trusts_nothing_from_the_sandbox(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let plant =
        "mkdir -p /tmp/h/sub && printf '#!/bin/sh\\n' > /tmp/h/suid && chmod 4755 /tmp/h/suid \
        && ln -s /etc/shadow /tmp/h/shadow && ln -s ../../../../../../etc /tmp/h/sub/up \
        && ln -s suid /tmp/h/ok && mkfifo /tmp/h/fifo && echo planted";
    assert_eq!(run(&s, plant).await?.output, "planted\n");
    let host = std::env::temp_dir().join(format!("sandkit-copy-{:x}", rand::random::<u64>()));
    let result = async {
        let back = s.copy_from("/tmp/h", Some(&host)).await?;
        use std::os::unix::fs::MetadataExt;
        let suid = std::fs::symlink_metadata(back.join("suid")).unwrap();
        assert!(suid.is_file());
        assert_eq!(suid.mode() & 0o7000, 0, "setuid bit kept on the host");
        for gone in ["shadow", "sub/up", "fifo"] {
            assert!(
                std::fs::symlink_metadata(back.join(gone)).is_err(),
                "{gone} was copied to the host"
            );
        }
        assert_eq!(
            std::fs::read_link(back.join("ok")).unwrap(),
            std::path::Path::new("suid"),
            "a link inside the copy is kept"
        );
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&host);
    result?;
    s.close().await
}

async fn list_files_directories_first(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    for p in [
        "/tmp/lf/b.txt",
        "/tmp/lf/A.txt",
        "/tmp/lf/zdir/x",
        "/tmp/lf/Adir/y",
        "/tmp/lf/.hid",
    ] {
        s.write(p, "", 0, -1).await?;
    }
    assert_eq!(
        s.list_files(Some("/tmp/lf")).await?,
        ["Adir/", "zdir/", ".hid", "A.txt", "b.txt"]
    );
    assert!(s.list_files(Some("/tmp/no-such-dir")).await?.is_empty());
    s.close().await
}

async fn attach_to_gone_session_is_not_found(c: Ctx) -> CaseResult {
    let id = format!("gone-{:x}", rand::random::<u64>());
    let e = open_id(&c, &id, true).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    Ok(())
}

async fn attach_reuses_the_sandbox(c: Ctx) -> CaseResult {
    let id = format!("again-{:x}", rand::random::<u64>());
    let first = open_id(&c, &id, false).await?;
    run(&first, "echo kept > /tmp/attach.txt").await?;
    let second = open_id(&c, &id, true).await?;
    assert_eq!(second.sandbox().id(), first.sandbox().id());
    assert_eq!(run(&second, "cat /tmp/attach.txt").await?.output, "kept\n");
    first.close().await?;
    let e = open_id(&c, &id, true).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "closed sessions are gone");
    Ok(())
}

async fn actions_as_openhands_json(c: Ctx) -> CaseResult {
    let s = open(&c).await?;
    let act = |j: &str| serde_json::from_str::<Action>(j).unwrap();
    let obs = s
        .run_action(act(
            r#"{"action":"run","args":{"command":"cd /tmp && echo hi","is_input":false}}"#,
        ))
        .await;
    assert_eq!(obs.observation, "run");
    assert_eq!(obs.content, "hi\n");
    assert_eq!(obs.exit_code(), Some(0));
    assert_eq!(obs.extras["metadata"]["working_dir"], "/tmp");
    assert!(obs
        .to_agent_text()
        .ends_with("[Current working directory: /tmp]"));
    let obs = s
        .run_action(act(
            r#"{"action":"write","args":{"path":"j.txt","content":"x\n"}}"#,
        ))
        .await;
    assert_eq!(
        (obs.observation.as_str(), obs.extras["path"].as_str()),
        ("write", Some("j.txt"))
    );
    let obs = s
        .run_action(act(r#"{"action":"read","args":{"path":"/tmp/j.txt"}}"#))
        .await;
    assert_eq!(
        (obs.observation.as_str(), obs.content.as_str()),
        ("read", "x\n")
    );
    let obs = s.run_action(act(r#"{"action":"edit","args":{"path":"/tmp/j.txt","command":"str_replace","old_str":"nope","new_str":"y"}}"#)).await;
    assert_eq!(obs.observation, "edit");
    assert!(obs.content.starts_with("ERROR:\n"), "{obs:?}");
    let obs = s
        .run_action(act(
            r#"{"action":"run_ipython","args":{"code":"print(1+1)"}}"#,
        ))
        .await;
    assert_eq!(obs.observation, "run_ipython");
    assert!(
        obs.content
            .starts_with("2\n[Jupyter current working directory: /tmp]"),
        "{obs:?}"
    );
    let obs: Observation = s
        .run_action(act(r#"{"action":"read","args":{"path":"/tmp/none.txt"}}"#))
        .await;
    assert_eq!(obs.observation, "error");
    assert!(!obs.success);
    s.close().await
}
