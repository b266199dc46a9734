//! The conformance suite against Docker, on the busybox image (`sandkit-mini`), the Debian image
//! (`sandkit-base`) and the busybox image under gVisor (`docker_gvisor`, when `runsc` is
//! registered), all with the agent inside the sandboxes, and on the Debian image through the
//! engine's exec API (`docker_exec`, the fallback path), plus what only this backend has: templates, sandboxes shared between
//! processes, expiry with no process of ours running, and bounded memory.
//!
//! With `SANDKIT_REQUIRE_DOCKER=1` (CI) a missing engine or image fails the run; otherwise the
//! cases show as ignored.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sandkit_conformance::{SandboxTarget, Suite, SUITE_LABEL};
use sandkit_core::{
    CommandSpec, ErrorKind, FileStoreExt, ListFilter, ProcessEvent, Runtime, SandboxExt,
    SandboxSpec,
};
use sandkit_docker::DockerRuntime;

const MINI: &str = "sandkit-mini:latest";
const BASE: &str = "sandkit-base:bookworm";

fn main() -> ExitCode {
    if let Ok(mode) = std::env::var("SANDKIT_TEST_CHILD") {
        return child(&mode);
    }
    let require = std::env::var("SANDKIT_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let mut suite = Suite::new();
    let run_id_for_pool = suite.run_id().to_string();
    let runtime = suite.tokio().block_on(async {
        let rt = DockerRuntime::builder().build().await?;
        for image in [MINI, BASE] {
            if rt.docker().inspect_image(image).await.is_err() {
                return Err(sandkit_core::Error::new(
                    ErrorKind::NotFound,
                    format!("image {image} is missing; build it with `cargo xtask image`"),
                ));
            }
        }
        Ok::<_, sandkit_core::Error>(rt)
    });
    let runtime = match runtime {
        Ok(rt) => Arc::new(rt),
        Err(e) if require => {
            eprintln!("error: SANDKIT_REQUIRE_DOCKER=1 but Docker is not usable: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            for label in ["docker_mini", "docker_base"] {
                suite.add_ignored(label, &e.to_string());
            }
            return suite.run();
        }
    };
    let dynrt: Arc<dyn Runtime> = runtime.clone();
    suite.add_sandbox(SandboxTarget::new(
        "docker_mini",
        dynrt.clone(),
        SandboxSpec::new().template(MINI),
    ));
    suite.add_sandbox(
        SandboxTarget::new(
            "docker_base",
            dynrt.clone(),
            SandboxSpec::new().template(BASE),
        )
        .with_python(true),
    );

    // The exec path (no agent inside the sandboxes) stays a target of its own, so neither
    // path rots: the Debian image, with the agent turned off.
    let exec_path = suite
        .tokio()
        .block_on(DockerRuntime::builder().agent_inside(false).build());
    match exec_path {
        Ok(rt) => suite.add_sandbox(
            SandboxTarget::new(
                "docker_exec",
                Arc::new(rt),
                SandboxSpec::new().template(BASE),
            )
            .with_python(true),
        ),
        Err(e) => {
            eprintln!("error: the exec-path runtime: {e}");
            return ExitCode::from(2);
        }
    }

    // The warm pool: sandboxes of the default (Debian) image made ahead and claimed by create.
    let pooled = suite
        .tokio()
        .block_on(DockerRuntime::builder().pool(2).build());
    let pooled = match pooled {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("error: the pooled runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Pooled sandboxes of earlier runs (ended by their time to live) are not this run's.
    let before = suite.tokio().block_on(pooled_ids(&pooled));
    // The pool's ready sandboxes are no case's: drained at the end, and checked gone.
    let rt = pooled.clone();
    suite.add_finish(move || async move {
        rt.drain_pool().await;
        // Killed containers take a moment to be removed by the engine.
        let mut left = Vec::new();
        for _ in 0..100 {
            left = pooled_ids(&rt).await;
            left.retain(|id| !before.contains(id));
            if left.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(sandkit_core::Error::new(
            ErrorKind::Unexpected,
            format!("pooled sandboxes left after drain_pool: {left:?}"),
        ))
    });
    suite.add_sandbox(
        SandboxTarget::new("docker_pool", pooled.clone(), SandboxSpec::new()).with_python(true),
    );
    let (rt, id) = (pooled.clone(), run_id_for_pool.clone());
    suite.add_trial(
        "docker_pool::pool::a_claimed_sandbox_is_what_its_spec_asked".into(),
        false,
        move || pool_claims(rt, id),
    );

    // Once more on the busybox image under gVisor (`runsc`), when the engine has it
    // (`cargo xtask docker --gvisor`; CI requires it with SANDKIT_REQUIRE_GVISOR=1).
    let gvisor = suite.tokio().block_on(async {
        let info = runtime.docker().info().await.ok()?;
        info.runtimes?.contains_key("runsc").then_some(())?;
        DockerRuntime::builder()
            .oci_runtime("runsc")
            .build()
            .await
            .ok()
    });
    match gvisor {
        // On the busybox image: Debian's gVisor (2022-12) answers EINVAL to the `statx` calls
        // of bookworm's coreutils 9.1 (`ls -l`, `stat` fail), which busybox does not make.
        Some(rt) => suite.add_sandbox(SandboxTarget::new(
            "docker_gvisor",
            Arc::new(rt),
            SandboxSpec::new().template(MINI),
        )),
        None if std::env::var("SANDKIT_REQUIRE_GVISOR").is_ok_and(|v| v == "1") => {
            eprintln!(
                "error: SANDKIT_REQUIRE_GVISOR=1 but the engine has no `runsc` runtime; \
                 register it with `cargo xtask docker --gvisor`"
            );
            return ExitCode::from(2);
        }
        None => suite.add_ignored(
            "docker_gvisor",
            "the engine has no `runsc` runtime (cargo xtask docker --gvisor registers gVisor)",
        ),
    }

    let run_id = suite.run_id().to_string();
    let rt = runtime.clone();
    let id = run_id.clone();
    suite.add_trial(
        "docker::templates::build_and_start".into(),
        false,
        move || templates(rt, id),
    );
    let id = run_id.clone();
    suite.add_trial(
        "docker::lifecycle::shared_between_processes".into(),
        false,
        move || shared_between_processes(id),
    );
    let id = run_id.clone();
    suite.add_trial(
        "docker::lifecycle::expires_with_no_process_of_ours".into(),
        false,
        move || expires_without_us(id),
    );
    let id = run_id.clone();
    suite.add_trial(
        "docker::memory::stdout_500mib_bounded".into(),
        false,
        move || memory_bounded(id, "stdout"),
    );
    let id = run_id.clone();
    suite.add_trial(
        "docker::memory::file_200mib_bounded".into(),
        false,
        move || memory_bounded(id, "file"),
    );
    let rt = runtime.clone();
    let id = run_id.clone();
    suite.add_trial(
        "docker::options::mounts_networks_user_and_limits".into(),
        false,
        move || options(rt, id),
    );
    let rt = runtime.clone();
    suite.add_trial(
        "docker::lifecycle::missing_image_is_not_found_with_hint".into(),
        false,
        move || async move {
            let e = rt
                .create(SandboxSpec::new().template("sandkit-no-such-image:1"))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains("cargo xtask image"), "{e}");
            Ok(())
        },
    );
    let rt = runtime.clone();
    let id = run_id.clone();
    suite.add_trial(
        "docker::safety::defaults_are_contained".into(),
        false,
        move || async move {
            let sb = rt
                .create(SandboxSpec::new().metadata(SUITE_LABEL, &id))
                .await?;
            let inspect = rt
                .docker()
                .inspect_container(&format!("sandkit-{}", sb.id()), None)
                .await
                .unwrap();
            let hc = inspect.host_config.unwrap();
            assert_eq!(hc.privileged, Some(false));
            assert_eq!(hc.init, Some(true));
            assert!(hc
                .security_opt
                .unwrap_or_default()
                .iter()
                .any(|o| o == "no-new-privileges"));
            assert_eq!(hc.pids_limit, Some(1024));
            assert_eq!(hc.memory, Some(2048 * 1024 * 1024));
            assert_eq!(hc.nano_cpus, Some(1_000_000_000), "a CPU quota by default");
            assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
            let caps = hc.cap_add.unwrap_or_default();
            for dropped in ["NET_RAW", "MKNOD", "SYS_ADMIN", "NET_ADMIN"] {
                assert!(!caps.iter().any(|c| c == dropped), "{dropped} granted");
            }
            assert_eq!(
                hc.cgroupns_mode,
                Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE)
            );
            // PID 1 is the init that reaps zombies.
            let out = sb.exec_shell("cat /proc/1/cmdline | tr '\\0' ' '").await?;
            assert!(out.stdout_text().contains("docker-init"), "{out:?}");
            // Even root in the sandbox opens no raw socket and makes no device file.
            let raw = sb
                .exec(
                    CommandSpec::program(
                        "python3",
                        [
                            "-c",
                            "import socket\ntry:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw socket')\nexcept PermissionError: print('refused')",
                        ],
                    )
                    .user("root"),
                )
                .await?;
            assert_eq!(raw.stdout_text(), "refused\n", "{raw:?}");
            let mknod = sb
                .exec(CommandSpec::shell("mknod /tmp/null c 1 3 && echo made").user("root"))
                .await?;
            assert_ne!(mknod.stdout_text(), "made\n", "{mknod:?}");
            // apt-get's privilege drop and chown still work as root.
            let chown = sb
                .exec(
                    CommandSpec::shell("touch /tmp/f && chown 1000:1000 /tmp/f && setpriv --help >/dev/null 2>&1; su -s /bin/sh -c 'id -u' user")
                        .user("root"),
                )
                .await?;
            assert_eq!(chown.stdout_text(), "1000\n", "{chown:?}");
            sb.kill().await
        },
    );
    let id = run_id.clone();
    suite.add_trial(
        "docker::pool::refills_after_every_take_and_drains_at_once".into(),
        false,
        move || pool_refills(id),
    );
    let id = run_id.clone();
    suite.add_trial(
        "docker::network::sandboxes_cannot_reach_each_other_by_default".into(),
        false,
        move || isolation(id),
    );
    let id = run_id.clone();
    suite.add_trial(
        "docker::base_image::git_and_sudo_as_on_e2b".into(),
        false,
        move || git_and_sudo(id),
    );
    let rt = runtime.clone();
    let id = run_id.clone();
    suite.add_trial(
        "docker::agent::info_says_which_path_and_only_root_reaches_it".into(),
        false,
        move || agent_path(rt, id),
    );
    suite.run()
}

/// A template `FROM sandkit-base:bookworm` with a start command serving a file and a ready command
/// waiting for it.
async fn templates(rt: Arc<DockerRuntime>, run_id: String) -> sandkit_core::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sandkit-test-tpl-{run_id}");
    std::fs::write(
        dir.path().join("e2b.toml"),
        format!(
            "template_id = \"tpl{run_id}\"\ntemplate_name = \"{name}\"\ndockerfile = \"e2b.Dockerfile\"\n\
             start_cmd = \"echo started > /tmp/started; sleep 1; echo ready > /tmp/ready\"\n\
             ready_cmd = \"test -f /tmp/ready\"\ncpu_count = 1\nmemory_mb = 512\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("e2b.Dockerfile"),
        format!("FROM {BASE}\nRUN echo baked > /etc/sandkit-template-marker\n"),
    )
    .unwrap();
    let mut lines = Vec::new();
    let tag = rt
        .build_template(dir.path(), |l| lines.push(l.to_string()))
        .await?;
    assert_eq!(tag, name);
    assert!(
        lines.iter().any(|l| l.contains("Step")),
        "build output was streamed: {lines:?}"
    );
    let result = async {
        let sb = rt
            .create(
                SandboxSpec::new()
                    .template(&name)
                    .metadata(SUITE_LABEL, &run_id),
            )
            .await?;
        // create returned only once ready_cmd succeeded.
        assert_eq!(sb.files().read_to_string("/tmp/ready").await?, "ready\n");
        assert_eq!(
            sb.files()
                .read_to_string("/etc/sandkit-template-marker")
                .await?,
            "baked\n"
        );
        let inspect = rt
            .docker()
            .inspect_container(&format!("sandkit-{}", sb.id()), None)
            .await
            .unwrap();
        assert_eq!(inspect.host_config.unwrap().memory, Some(512 * 1024 * 1024));
        sb.kill().await
    }
    .await;
    let _ = rt
        .docker()
        .remove_image(
            &name,
            Some(bollard::image::RemoveImageOptions {
                force: true,
                noprune: false,
            }),
            None,
        )
        .await;
    result
}

/// What a sandbox spec asks of the container: mounts (read-only honoured), network modes, the
/// user, and resource limits.
async fn options(rt: Arc<DockerRuntime>, run_id: String) -> sandkit_core::Result<()> {
    use sandkit_core::{Mount, MountSource, NetworkMode, Resources};
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("hello"), "from the host").unwrap();
    let path = host.path().to_str().unwrap().to_string();
    let spec = || {
        SandboxSpec::new()
            .template(BASE)
            .metadata(SUITE_LABEL, &run_id)
    };
    let ro = rt
        .create(spec().mount(Mount {
            source: MountSource::HostPath(path.clone()),
            target: "/data".into(),
            read_only: true,
        }))
        .await?;
    let result = async {
        assert_eq!(
            ro.exec_shell("cat /data/hello").await?.stdout_text(),
            "from the host"
        );
        assert_ne!(
            ro.exec_shell("touch /data/x").await?.exit_code,
            Some(0),
            "read-only is honoured"
        );
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    ro.kill().await?;
    result?;
    let rw = rt
        .create(spec().mount(Mount {
            source: MountSource::HostPath(path.clone()),
            target: "/data".into(),
            read_only: false,
        }))
        .await?;
    let wrote = rw.exec_shell("echo back > /data/from-sandbox").await;
    rw.kill().await?;
    assert_eq!(wrote?.exit_code, Some(0));
    assert_eq!(
        std::fs::read_to_string(host.path().join("from-sandbox")).unwrap(),
        "back\n"
    );

    let none = rt.create(spec().network(NetworkMode::None)).await?;
    let ifaces = none.exec_shell("grep -c : /proc/net/dev").await;
    none.kill().await?;
    assert_eq!(
        ifaces?.stdout_text().trim(),
        "1",
        "only loopback without a network"
    );

    let limited = rt
        .create(
            spec()
                .user("user")
                .resources(Resources::new().cpus(0.5).memory_mb(300).pids(50)),
        )
        .await?;
    let whoami = limited.exec_shell("id -un").await;
    let inspect = rt
        .docker()
        .inspect_container(&format!("sandkit-{}", limited.id()), None)
        .await
        .unwrap();
    limited.kill().await?;
    assert_eq!(
        whoami?.stdout_text(),
        "user\n",
        "commands run as the spec's user"
    );
    let hc = inspect.host_config.unwrap();
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.memory, Some(300 << 20));
    assert_eq!(hc.pids_limit, Some(50));
    Ok(())
}

/// Runs this test binary as a child in `mode` and returns its stdout.
async fn run_child(mode: &str, run_id: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new(exe)
        .env("SANDKIT_TEST_CHILD", mode)
        .env("SANDKIT_TEST_RUN_ID", run_id)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "child {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn shared_between_processes(run_id: String) -> sandkit_core::Result<()> {
    let tag = format!("xproc-{:x}", rand_u32());
    let id = run_child(&format!("create:600:{tag}"), &run_id).await;
    let rt = DockerRuntime::builder().build().await?;
    let listed = rt.list(&ListFilter::all().metadata("xproc", &tag)).await?;
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    let sb = rt.connect(&id).await?;
    assert_eq!(
        sb.files().read_to_string("/tmp/from-child").await?,
        "written by the child"
    );
    let killed = run_child(&format!("kill:{id}"), &run_id).await;
    assert_eq!(killed, "killed");
    assert_eq!(
        rt.connect(&id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    Ok(())
}

async fn expires_without_us(run_id: String) -> sandkit_core::Result<()> {
    let tag = format!("expire-{:x}", rand_u32());
    // The child makes the sandbox, says its id, then is killed with SIGKILL: no clean-up of
    // ours runs, and nothing of ours runs for this sandbox afterwards.
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .env("SANDKIT_TEST_CHILD", format!("create-hang:3:{tag}"))
        .env("SANDKIT_TEST_RUN_ID", &run_id)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .await
    .unwrap();
    let id = line.trim().to_string();
    assert!(!id.is_empty(), "the child made a sandbox");
    child.kill().await.unwrap();
    let rt = DockerRuntime::builder().build().await?;
    let mut gone = false;
    for _ in 0..120 {
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
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gone, "the expired sandbox's container was removed");
    assert_eq!(
        rt.connect(&id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    Ok(())
}

async fn memory_bounded(run_id: String, what: &str) -> sandkit_core::Result<()> {
    let report = run_child(&format!("memory:{what}"), &run_id).await;
    let (bytes, peak_kib) = report.split_once(' ').unwrap();
    let bytes: u64 = bytes.parse().unwrap();
    let peak_kib: u64 = peak_kib.parse().unwrap();
    let expected = if what == "stdout" {
        500 << 20
    } else {
        200 << 20
    };
    assert_eq!(bytes, expected, "every byte arrived");
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB is under 100 MiB"
    );
    eprintln!(
        "{what}: moved {bytes} bytes with a peak RSS of {} MiB",
        peak_kib / 1024
    );
    Ok(())
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

/// The child side of the cross-process and memory trials.
fn child(mode: &str) -> ExitCode {
    let run_id = std::env::var("SANDKIT_TEST_RUN_ID").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result: sandkit_core::Result<String> = rt.block_on(async {
        let docker = DockerRuntime::builder().build().await?;
        let parts: Vec<&str> = mode.split(':').collect();
        match parts.as_slice() {
            ["create", ttl, tag] => {
                let spec = SandboxSpec::new()
                    .template(MINI)
                    .metadata(SUITE_LABEL, &run_id)
                    .metadata("xproc", *tag)
                    .timeout(Duration::from_secs(ttl.parse().unwrap()));
                let sb = docker.create(spec).await?;
                sb.files()
                    .write_str("/tmp/from-child", "written by the child")
                    .await?;
                Ok(sb.id().to_string())
            }
            ["create-hang", ttl, tag] => {
                let spec = SandboxSpec::new()
                    .template(MINI)
                    .metadata(SUITE_LABEL, &run_id)
                    .metadata("xproc", *tag)
                    .timeout(Duration::from_secs(ttl.parse().unwrap()));
                let sb = docker.create(spec).await?;
                println!("{}", sb.id());
                use std::io::Write;
                std::io::stdout().flush().unwrap();
                // Waits to be killed with SIGKILL by the parent.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(String::new())
            }
            ["kill", id] => {
                docker.kill(id).await?;
                Ok("killed".into())
            }
            ["memory", what] => {
                let sb = docker
                    .create(
                        SandboxSpec::new()
                            .template(MINI)
                            .metadata(SUITE_LABEL, &run_id),
                    )
                    .await?;
                let moved = async {
                    if *what == "stdout" {
                        let mut p = sb
                            .spawn(CommandSpec::shell("head -c 524288000 /dev/zero"))
                            .await?;
                        let mut n = 0u64;
                        while let Some(ev) = p.next_event().await {
                            match ev? {
                                ProcessEvent::Stdout(b) => n += b.len() as u64,
                                ProcessEvent::Stderr(_) => {}
                                ProcessEvent::Exited { code } => assert_eq!(code, 0),
                            }
                        }
                        Ok::<u64, sandkit_core::Error>(n)
                    } else {
                        // 200 MiB up from a generated stream, then down, counted.
                        let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
                        let up =
                            futures_util::stream::iter((0..200).map(move |_| Ok(chunk.clone())))
                                .boxed();
                        sb.files().write_stream("/tmp/big.bin", up).await?;
                        let mut down = sb.files().read_stream("/tmp/big.bin").await?;
                        let mut n = 0u64;
                        while let Some(c) = down.next().await {
                            let c = c?;
                            assert!(c.iter().all(|&b| b == 7));
                            n += c.len() as u64;
                        }
                        Ok(n)
                    }
                }
                .await;
                sb.kill().await?;
                Ok(format!(
                    "{} {}",
                    moved?,
                    sandkit_conformance::peak_rss_kib()
                ))
            }
            _ => panic!("unknown child mode {mode}"),
        }
    });
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("child {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The agent inside a sandbox: `info` says which path a sandbox takes; the sandbox's user can
/// neither read the agent's token nor reach its socket; root killing the agent costs a
/// reconnect, not the sandbox.
async fn agent_path(rt: Arc<DockerRuntime>, run_id: String) -> sandkit_core::Result<()> {
    let sb = rt
        .create(
            SandboxSpec::new()
                .template(BASE)
                .metadata(SUITE_LABEL, &run_id),
        )
        .await?;
    let result = async {
        let info = sb.info().await?;
        assert_eq!(
            info.details.get("agent").map(String::as_str),
            Some("inside")
        );
        let as_user = |line: &str| CommandSpec::shell(line).user("user");
        let out = sb.exec(as_user("cat /.sandkit-run/token")).await?;
        assert_ne!(out.exit_code, Some(0), "the token is root's: {out:?}");
        let out = sb
            .exec(as_user(
                "python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); \
                 s.connect(\"/.sandkit-run/agent.sock\")'",
            ))
            .await?;
        assert_ne!(out.exit_code, Some(0), "the socket is root's: {out:?}");
        assert!(out.stderr_text().contains("Permission"), "{out:?}");
        // Root kills the agent: it is started again and the next command finds it.
        let _ = sb
            .exec(
                CommandSpec::shell(
                    "kill -9 $(pidof sandkit-agent | tr ' ' '\\n' | grep -v $$) 2>/dev/null; true",
                )
                .user("root"),
            )
            .await;
        let mut ok = false;
        for _ in 0..50 {
            if let Ok(o) = sb.exec_shell("echo back").await {
                if o.stdout_text() == "back\n" {
                    ok = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(ok, "commands work again after the agent was killed");
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    sb.kill().await?;
    result?;
    let exec_rt = DockerRuntime::builder().agent_inside(false).build().await?;
    let sb = exec_rt
        .create(
            SandboxSpec::new()
                .template(MINI)
                .metadata(SUITE_LABEL, &run_id),
        )
        .await?;
    let info = sb.info().await;
    sb.kill().await?;
    assert_eq!(info?.details.get("agent").map(String::as_str), Some("exec"));
    Ok(())
}

/// The base image has git, and passwordless sudo for `user` as E2B's base template does: it
/// works where `no-new-privileges` is off, and the default flag stops it.
async fn git_and_sudo(run_id: String) -> sandkit_core::Result<()> {
    let spec = || {
        SandboxSpec::new()
            .template(BASE)
            .user("user")
            .metadata(SUITE_LABEL, &run_id)
    };
    let open = DockerRuntime::builder()
        .no_new_privileges(false)
        .build()
        .await?;
    let sb = open.create(spec()).await?;
    let result = async {
        let git = sb
            .exec_shell("cd /tmp && git init -q r && cd r && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m x && git log --format=%s")
            .await?;
        assert_eq!(git.stdout_text(), "x\n", "{git:?}");
        let sudo = sb.exec_shell("sudo -n id -u").await?;
        assert_eq!(sudo.stdout_text(), "0\n", "{sudo:?}");
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    sb.kill().await?;
    result?;
    let closed = DockerRuntime::builder().build().await?;
    let sb = closed.create(spec()).await?;
    let sudo = sb.exec_shell("sudo -n id -u").await;
    sb.kill().await?;
    let sudo = sudo?;
    assert_ne!(
        sudo.exit_code,
        Some(0),
        "no-new-privileges stops sudo: {sudo:?}"
    );
    Ok(())
}

/// A sandbox taken from the pool is what its spec asked for: its metadata in `list` and
/// `info` (and usable as a filter), its env, user, directory and time to live; the pool's
/// ready sandboxes are seen by no one.
async fn pool_claims(rt: Arc<DockerRuntime>, run_id: String) -> sandkit_core::Result<()> {
    // Let the pool fill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tag = format!("{:x}", rand::random::<u32>());
    let spec = SandboxSpec::new()
        .metadata(SUITE_LABEL, &run_id)
        .metadata("pool-case", &tag)
        .env("FROM_SPEC", "yes")
        .user("user")
        .cwd("/tmp")
        .timeout(Duration::from_secs(6));
    let started = std::time::Instant::now();
    let sb = rt.create(spec).await?;
    let took = started.elapsed();
    let out = sb.exec_shell("echo $FROM_SPEC; id -un; pwd").await?;
    assert_eq!(out.stdout_text(), "yes\nuser\n/tmp\n", "{out:?}");
    let listed = rt
        .list(&ListFilter::all().metadata("pool-case", &tag))
        .await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, sb.id());
    let info = rt.connect(sb.id()).await?.info().await?;
    assert_eq!(info.metadata.get("pool-case"), Some(&tag));
    let expires = info.expires_at.expect("a deadline");
    assert!(
        expires < std::time::SystemTime::now() + Duration::from_secs(10),
        "the spec's time to live, not the pool's: {expires:?}"
    );
    // Ready sandboxes: not in any listing.
    let all = rt.list(&ListFilter::all()).await?;
    let ready = rt
        .docker()
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            filters: HashMap::from([("label".to_string(), vec!["sandkit.pool".to_string()])]),
            ..Default::default()
        }))
        .await
        .map_err(|e| sandkit_core::Error::new(ErrorKind::Unavailable, e.to_string()))?;
    for c in ready {
        let id = c
            .labels
            .unwrap_or_default()
            .get("sandkit.id")
            .cloned()
            .unwrap_or_default();
        if id != sb.id() && all.iter().all(|i| i.id != id) {
            let err = rt.connect(&id).await.unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::NotFound,
                "a ready sandbox is no one's: {err}"
            );
        }
    }
    // Expires with the spec's time to live.
    let id = sb.id().to_string();
    let mut gone = false;
    for _ in 0..60 {
        if rt
            .list(&ListFilter::all())
            .await?
            .iter()
            .all(|i| i.id != id)
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gone, "the claimed sandbox outlived its time to live");
    eprintln!("pool: create took {took:?}");
    Ok(())
}

/// The containers on the engine made for a warm pool.
async fn pooled_ids(rt: &DockerRuntime) -> Vec<String> {
    rt.docker()
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            all: true,
            filters: HashMap::from([("label".to_string(), vec!["sandkit.pool".to_string()])]),
            ..Default::default()
        }))
        .await
        .map(|l| l.into_iter().filter_map(|c| c.id).collect())
        .unwrap_or_default()
}

/// A pool refills after every sandbox taken from it (a refill that never counted itself done
/// once left the pool empty after its first two), and draining it does not wait for refills
/// that are over.
async fn pool_refills(run_id: String) -> sandkit_core::Result<()> {
    let rt = DockerRuntime::builder().image(MINI).pool(1).build().await?;
    let spec = || SandboxSpec::new().metadata(SUITE_LABEL, &run_id);
    let rounds = async {
        // The first create starts the pool.
        rt.create(spec()).await?.kill().await?;
        for round in 0..3 {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while rt.pool_ready() == 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                rt.pool_ready(),
                1,
                "round {round}: the pool was not refilled"
            );
            let asked = std::time::SystemTime::now();
            let sb = rt.create(spec()).await?;
            // Made before it was asked for: it came from the pool.
            let info = sb.info().await?;
            assert!(
                info.started_at < asked,
                "round {round}: {} was made for this create, not taken from the pool",
                sb.id()
            );
            sb.kill().await?;
        }
        Ok::<_, sandkit_core::Error>(())
    }
    .await;
    let began = std::time::Instant::now();
    rt.drain_pool().await;
    let drained = began.elapsed();
    rounds?;
    assert!(
        drained < Duration::from_secs(30),
        "draining took {drained:?}"
    );
    Ok(())
}

/// On the default network (`sandkit-isolated`) a sandbox cannot reach another's port; on Docker's
/// `bridge`, asked for on purpose, it can. Traffic goes only between this test's containers.
async fn isolation(run_id: String) -> sandkit_core::Result<()> {
    use sandkit_core::NetworkMode;
    let rt = DockerRuntime::builder().build().await?;
    for (network, reachable) in [(None, false), (Some(NetworkMode::Bridge), true)] {
        let mut spec = SandboxSpec::new()
            .template(MINI)
            .metadata(SUITE_LABEL, &run_id);
        if let Some(n) = network.clone() {
            spec = spec.network(n);
        }
        let server = rt.create(spec.clone()).await?;
        let client = rt.create(spec).await;
        let result = async {
            let client = client?;
            let _serving = server
                .spawn(CommandSpec::shell(
                    "while :; do echo reached | nc -l -p 8080; done",
                ))
                .await?;
            let ip = server
                .exec_shell("hostname -i | cut -d' ' -f1")
                .await?
                .stdout_text()
                .trim()
                .to_string();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let out = client
                .exec_shell(&format!(
                    "timeout 3 nc {ip} 8080 </dev/null || echo blocked"
                ))
                .await?;
            let got = out.stdout_text();
            assert_eq!(
                got.contains("reached"),
                reachable,
                "network {network:?}: {got:?} from {ip}"
            );
            client.kill().await
        }
        .await;
        server.kill().await?;
        result?;
    }
    Ok(())
}
