//! Every `sandkit` subcommand against Docker, as a user runs them: exit codes, `--json` output,
//! a `cp` round trip of a directory, and the errors for an unknown id, a bad configuration and
//! bad arguments. Without a Docker engine the tests that need one fail,
//! saying how to start one.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn sandkit(args: &[&str]) -> Output {
    sandkit_env(args, &[])
}

fn sandkit_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandkit"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sandkit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fails the test, saying how to start one, when no Docker engine answers.
fn needs_docker() {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs a Docker engine and `docker info` does not answer: start one with \
         `cargo xtask docker && cargo xtask image && cargo xtask agent`"
    );
}

/// Kills the sandboxes a test made, pass or fail.
struct Made(String);

impl Drop for Made {
    fn drop(&mut self) {
        let out = sandkit(&["ls", "--json", "--meta", &format!("cli-test={}", self.0)]);
        if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
            for item in list {
                if let Some(id) = item["id"].as_str() {
                    let _ = sandkit(&["kill", id]);
                }
            }
        }
    }
}

fn tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn run_streams_output_and_exits_with_the_command_code() {
    needs_docker();
    let t = tag();
    let _made = Made(t.clone());
    let meta = format!("cli-test={t}");
    let ok = sandkit(&[
        "run",
        "--meta",
        &meta,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), "out\n");
    assert_eq!(text(&ok.stderr), "err\n");
    let three = sandkit(&["run", "--meta", &meta, "--", "sh", "-c", "exit 3"]);
    assert_eq!(three.status.code(), Some(3));
    // A single argument with spaces is a shell line.
    let line = sandkit(&["run", "--meta", &meta, "--", "echo a b | tr a-z A-Z"]);
    assert_eq!(text(&line.stdout), "A B\n");
    // `run` kills its sandbox.
    let left = sandkit(&["ls", "--json", "--meta", &meta]);
    assert_eq!(
        serde_json::from_slice::<Vec<serde_json::Value>>(&left.stdout)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn create_ls_exec_kill() {
    needs_docker();
    let t = tag();
    let _made = Made(t.clone());
    let meta = format!("cli-test={t}");
    let created = sandkit(&["create", "--meta", &meta, "--env", "GREETING=hi there"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let id = text(&created.stdout).trim().to_string();
    assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()));

    let ls = sandkit(&["ls", "--json", "--meta", &meta]);
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&ls.stdout).expect("ls --json is JSON");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "running");
    assert_eq!(list[0]["metadata"]["cli-test"], t.as_str());
    let table = sandkit(&["ls", "--meta", &meta]);
    assert!(
        text(&table.stdout).starts_with("ID "),
        "{}",
        text(&table.stdout)
    );
    assert!(text(&table.stdout).contains(&id));

    let exec = sandkit(&["exec", &id, "--", "sh", "-c", "echo $GREETING; pwd"]);
    assert_eq!(text(&exec.stdout), "hi there\n/workspace\n");
    let exec = sandkit(&[
        "exec",
        &id,
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        "pwd; exit 5",
    ]);
    assert_eq!(
        (text(&exec.stdout).as_str(), exec.status.code()),
        ("/tmp\n", Some(5))
    );
    let timed = sandkit(&["exec", &id, "--timeout", "1", "--", "sleep", "30"]);
    assert_eq!(
        timed.status.code(),
        Some(124),
        "a timeout exits 124, as timeout(1)"
    );

    // Input from a pipe reaches the command.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandkit"))
        .args(["exec", &id, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "piped in\n");

    // `shell` without a terminal reads commands from stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandkit"))
        .args(["shell", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-shell\nexit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        text(&out.stdout).contains("from-shell"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(4));

    let kill = sandkit(&["kill", &id]);
    assert!(kill.status.success());
    let again = sandkit(&["kill", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("doesn't exist"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn cp_round_trip_of_a_directory() {
    needs_docker();
    let t = tag();
    let _made = Made(t.clone());
    let id = text(&sandkit(&["create", "--meta", &format!("cli-test={t}")]).stdout)
        .trim()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("project");
    std::fs::create_dir_all(src.join("src/deep")).unwrap();
    std::fs::write(src.join("README"), "read me").unwrap();
    std::fs::write(
        src.join("src/deep/data.bin"),
        (0..=255u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let up = sandkit(&["cp", src.to_str().unwrap(), &format!("{id}:/tmp")]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    let check = sandkit(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "cat /tmp/project/README; wc -c < /tmp/project/src/deep/data.bin",
    ]);
    assert_eq!(text(&check.stdout), "read me256\n");
    let back = dir.path().join("back");
    let down = sandkit(&["cp", &format!("{id}:/tmp/project"), back.to_str().unwrap()]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_eq!(
        std::fs::read_to_string(back.join("README")).unwrap(),
        "read me"
    );
    assert_eq!(
        std::fs::read(back.join("src/deep/data.bin")).unwrap(),
        (0..=255u8).collect::<Vec<_>>()
    );
    let file = dir.path().join("one.txt");
    let single = sandkit(&[
        "cp",
        &format!("{id}:/tmp/project/README"),
        file.to_str().unwrap(),
    ]);
    assert!(single.status.success());
    assert_eq!(std::fs::read_to_string(file).unwrap(), "read me");
    let bad = sandkit(&["cp", "/tmp/a", "/tmp/b"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("ID:/path"));
}

/// Root in the sandbox plants a setuid-root file, links to host files, a FIFO and a device:
/// `sandkit cp` out of it brings none of them to the host (the security issue's finding 4).
#[test]
fn cp_from_a_hostile_sandbox_is_safe() {
    needs_docker();
    let t = tag();
    let _made = Made(t.clone());
    let id = text(&sandkit(&["create", "--meta", &format!("cli-test={t}")]).stdout)
        .trim()
        .to_string();
    let plant = sandkit(&[
        "exec",
        &id,
        "--user",
        "root",
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/h/sub && echo x > /tmp/h/suid && chmod 4755 /tmp/h/suid \
         && ln -s /etc/shadow /tmp/h/shadow && ln -s ../../../../etc /tmp/h/sub/up \
         && mkfifo /tmp/h/fifo && { mknod /tmp/h/null c 1 3 2>/dev/null || true; } && echo planted",
    ]);
    assert_eq!(text(&plant.stdout), "planted\n", "{}", text(&plant.stderr));
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back");
    let down = sandkit(&["cp", &format!("{id}:/tmp/h"), back.to_str().unwrap()]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    use std::os::unix::fs::MetadataExt;
    let suid = std::fs::symlink_metadata(back.join("suid")).unwrap();
    assert!(suid.is_file());
    assert_eq!(suid.mode() & 0o7000, 0, "setuid kept on the host");
    for gone in ["shadow", "sub/up", "fifo", "null"] {
        assert!(
            std::fs::symlink_metadata(back.join(gone)).is_err(),
            "{gone} reached the host"
        );
    }
}

#[test]
fn unknown_id_is_a_clear_error() {
    needs_docker();
    let out = sandkit(&["exec", "nosuchsandbox", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("sandkit: error: "), "{err}");
    assert!(err.contains("nosuchsandbox"), "{err}");
    assert!(err.contains("sandkit: hint: `sandkit ls`"), "{err}");
}

#[test]
fn bad_configuration_names_key_and_source() {
    let out = sandkit_env(&["ls"], &[("SANDKIT_SANDBOX__TIMEOUT", "soon")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("sandbox.timeout") && err.contains("SANDKIT_SANDBOX__TIMEOUT"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sandkit.toml");
    std::fs::write(&file, "[docker]\nimagee = \"x\"\n").unwrap();
    let out = sandkit(&["--config", file.to_str().unwrap(), "config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("docker.imagee"),
        "{}",
        text(&out.stderr)
    );
    let out = sandkit(&["--runtime", "kubernetes", "ls"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("core.runtime"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn config_prints_sources_and_redacts_secrets() {
    let out = sandkit_env(
        &["config"],
        &[("E2B_API_KEY", "e2b_topsecret"), ("SANDBOX_TIMEOUT", "77")],
    );
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains("timeout = 77  # environment variable SANDBOX_TIMEOUT"),
        "{s}"
    );
    assert!(
        s.contains("api_key = \"***\"  # environment variable E2B_API_KEY"),
        "{s}"
    );
    assert!(!s.contains("topsecret"));
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &["frobnicate"][..],
        &["run"][..],
        &["exec", "id"][..],
        &["create", "--meta", "novalue"][..],
    ] {
        let out = sandkit(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains("Usage") || text(&out.stderr).contains("error"),
            "{args:?}"
        );
    }
}

#[test]
fn template_build_streams_and_tags() {
    needs_docker();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sandkit-cli-tpl-{}", std::process::id());
    std::fs::write(
        dir.path().join("e2b.toml"),
        format!("template_id = \"{name}\"\ntemplate_name = \"{name}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("e2b.Dockerfile"),
        "FROM sandkit-mini:latest\nRUN echo built > /built\n",
    )
    .unwrap();
    let out = sandkit(&["template", "build", dir.path().to_str().unwrap()]);
    let _ = Command::new("docker").args(["rmi", "-f", &name]).output();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), name);
    assert!(
        text(&out.stderr).contains("Step"),
        "build output streamed: {}",
        text(&out.stderr)
    );
    let missing = sandkit(&["template", "build", "/no/such/dir"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn serve_e2b_answers_and_stops_on_ctrl_c() {
    needs_docker();
    let port = |_: u8| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (api, envd) = (port(0), port(1));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandkit"))
        .args([
            "serve-e2b",
            "--api-addr",
            &format!("127.0.0.1:{api}"),
            "--envd-addr",
            &format!("127.0.0.1:{envd}"),
            "--api-key",
            "k",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", api)) {
            use std::io::Read;
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            up = buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(up, "the API answered /health");
    assert!(status.success(), "stopped cleanly on SIGINT");
    let no_key = sandkit_env(&["serve-e2b"], &[("E2B_API_KEY", "")]);
    assert_eq!(no_key.status.code(), Some(2));
}

#[test]
fn network_policy_from_the_command_line_applies_live() {
    needs_docker();
    let t = tag();
    let _made = Made(t.clone());
    let meta = format!("cli-test={t}");
    // A service on the host: refused to sandboxes by default.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let _ = (&s).write_all(b"host\n");
        }
    });
    let bad = sandkit(&["create", "--meta", &meta, "--deny-out", "example.com"]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        text(&bad.stderr).contains("deny_out"),
        "{}",
        text(&bad.stderr)
    );
    let created = sandkit(&["create", "--meta", &meta, "--add-host", "svc.test=10.9.8.7"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let id = text(&created.stdout).trim().to_string();
    let hosts = sandkit(&["exec", &id, "--", "grep", "svc.test", "/etc/hosts"]);
    assert!(
        text(&hosts.stdout).contains("10.9.8.7"),
        "{}",
        text(&hosts.stdout)
    );
    let probe = format!(
        "import socket,struct\n\
         gw = [socket.inet_ntoa(struct.pack('<I', int(l.split()[2], 16))) for l in open('/proc/net/route').readlines()[1:] if l.split()[1] == '00000000'][0]\n\
         try:\n print(socket.create_connection((gw, {port}), timeout=3).recv(10).decode().strip())\n\
         except Exception as e:\n print('blocked')"
    );
    let reach = || text(&sandkit(&["exec", &id, "--", "python3", "-c", &probe]).stdout);
    assert_eq!(reach(), "blocked\n");
    let opened = sandkit(&["network", &id, "--allow-host"]);
    assert!(opened.status.success(), "{}", text(&opened.stderr));
    assert_eq!(reach(), "host\n");
    let closed = sandkit(&["network", &id]);
    assert!(closed.status.success(), "{}", text(&closed.stderr));
    assert_eq!(reach(), "blocked\n");
    assert!(sandkit(&["kill", &id]).status.success());
}

#[test]
fn request_rules_take_secrets_from_the_environment_not_the_command_line() {
    needs_docker();
    let t = tag();
    let _made = Made(t.clone());
    let meta = format!("cli-test={t}");
    let value = format!("sk-{t}");
    let args = |secret: &'static str| {
        vec![
            "create".to_string(),
            "--meta".into(),
            meta.clone(),
            "--deny-out".into(),
            "0.0.0.0/0".into(),
            "--allow-out".into(),
            "api.test".into(),
            "--rule".into(),
            "api.test:Authorization=Bearer ${e2b.secrets.tok}".into(),
            "--secret".into(),
            secret.into(),
        ]
    };
    let run = |a: &[String], env: &[(&str, &str)]| {
        sandkit_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };
    // The variable is not set: refused, naming it.
    let missing = run(&args("tok=SANDKIT_CLI_TEST_TOKEN"), &[]);
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        text(&missing.stderr).contains("SANDKIT_CLI_TEST_TOKEN"),
        "{}",
        text(&missing.stderr)
    );
    // A rule naming a secret that is not given: refused, naming the secret.
    let unnamed = run(
        &args("other=SANDKIT_CLI_TEST_TOKEN"),
        &[("SANDKIT_CLI_TEST_TOKEN", &value)],
    );
    assert_ne!(unnamed.status.code(), Some(0));
    assert!(
        text(&unnamed.stderr).contains("\"tok\""),
        "{}",
        text(&unnamed.stderr)
    );
    let created = run(
        &args("tok=SANDKIT_CLI_TEST_TOKEN"),
        &[("SANDKIT_CLI_TEST_TOKEN", &value)],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let id = text(&created.stdout).trim().to_string();
    // The sandbox trusts the guard for the rule's domain, and never holds the value.
    let env = sandkit(&["exec", &id, "--", "sh", "-c", "env; cat /proc/1/environ"]);
    let env = text(&env.stdout);
    assert!(env.contains("SSL_CERT_FILE="), "{env}");
    assert!(!env.contains(&value), "the secret is in the sandbox");
    let bundle = sandkit(&["exec", &id, "--", "cat", "/etc/sandkit/egress-ca.pem"]);
    assert!(text(&bundle.stdout).contains("BEGIN CERTIFICATE"));
}
