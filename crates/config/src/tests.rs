use super::*;
use sandkit_core::MountSource;

fn env(vars: &[(&str, &str)]) -> ConfigBuilder {
    Config::builder()
        .no_file()
        .env_vars(vars.iter().map(|(k, v)| (*k, *v)))
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

#[test]
fn defaults_match_openhands_and_e2b() {
    let c = env(&[]).load().unwrap();
    assert_eq!(c.core.runtime, RuntimeKind::Docker);
    assert_eq!(c.core.workspace_mount_path_in_sandbox, "/workspace");
    assert_eq!(c.sandbox.timeout, 120);
    assert_eq!(c.sandbox.time_to_live, 300);
    assert_eq!(c.sandbox.close_delay, 3600);
    assert!(c.sandbox.pause_closed_runtimes);
    assert_eq!(c.e2b.domain, "e2b.app");
    assert_eq!(c.e2b.template, "base");
    assert_eq!(c.e2b.request_timeout, 60);
    assert_eq!(
        c.docker.network, "sandkit-isolated",
        "sandboxes cannot reach each other by default"
    );
    assert_eq!(c.docker.label_prefix, "sandkit");
    assert!(
        c.explain().iter().all(|s| s.source == "default"),
        "{:?}",
        c.explain()
    );
}

#[test]
fn file_wins_over_defaults() {
    let f = toml_file("[sandbox]\ntimeout = 33\n[docker]\nimage = \"custom:1\"\n");
    let c = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap();
    assert_eq!(c.sandbox.timeout, 33);
    assert_eq!(c.docker.image.as_deref(), Some("custom:1"));
    assert_eq!(
        c.source_of("sandbox.timeout"),
        format!("{}, line 2", f.path().display())
    );
    assert_eq!(c.source_of("sandbox.time_to_live"), "default");
}

#[test]
fn env_wins_over_file() {
    let f = toml_file("[sandbox]\ntimeout = 33\n");
    let c = Config::builder()
        .file(f.path())
        .env_vars([("SANDBOX_TIMEOUT", "44")])
        .load()
        .unwrap();
    assert_eq!(c.sandbox.timeout, 44);
    assert_eq!(
        c.source_of("sandbox.timeout"),
        "environment variable SANDBOX_TIMEOUT"
    );
}

#[test]
fn code_wins_over_env() {
    let c = env(&[("SANDBOX_TIMEOUT", "44")])
        .set("sandbox.timeout", 55)
        .load()
        .unwrap();
    assert_eq!(c.sandbox.timeout, 55);
    assert_eq!(c.source_of("sandbox.timeout"), "set in code");
}

#[test]
fn sandkit_prefixed_wins_over_familiar_names() {
    let c = env(&[
        ("SANDBOX_TIMEOUT", "44"),
        ("SANDKIT_SANDBOX__TIMEOUT", "66"),
    ])
    .load()
    .unwrap();
    assert_eq!(c.sandbox.timeout, 66);
    assert_eq!(
        c.source_of("sandbox.timeout"),
        "environment variable SANDKIT_SANDBOX__TIMEOUT"
    );
    let c = env(&[("E2B_DOMAIN", "a.dev"), ("SANDKIT_E2B__DOMAIN", "b.dev")])
        .load()
        .unwrap();
    assert_eq!(c.e2b.domain, "b.dev");
}

#[test]
fn every_familiar_env_name() {
    let c = env(&[
        ("RUNTIME", "e2b"),
        ("WORKSPACE_BASE", "/srv/ws"),
        ("WORKSPACE_MOUNT_PATH_IN_SANDBOX", "/ws"),
        ("E2B_API_KEY", "e2b_abc"),
        ("E2B_DOMAIN", "example.dev"),
        ("E2B_API_URL", "http://127.0.0.1:3000"),
        ("E2B_SANDBOX_URL", "http://127.0.0.1:49983"),
        ("E2B_DEBUG", "true"),
        ("DOCKER_HOST", "unix:///tmp/docker.sock"),
        ("SANDBOX_VOLUMES", "/data:/data:ro"),
        ("SANDBOX_USE_HOST_NETWORK", "1"),
        ("SANDBOX_BASE_CONTAINER_IMAGE", "img:1"),
        ("SANDBOX_ENV_GREETING", "hi"),
        ("SANDBOX_RUNTIME_STARTUP_ENV_VARS", r#"{"A":"1"}"#),
        ("SANDBOX_ADDITIONAL_NETWORKS", r#"["n1","n2"]"#),
    ])
    .load()
    .unwrap();
    assert_eq!(c.core.runtime, RuntimeKind::E2b);
    assert_eq!(c.core.workspace_base.as_deref(), Some("/srv/ws"));
    assert_eq!(c.core.workspace_mount_path_in_sandbox, "/ws");
    assert_eq!(c.e2b.api_key.as_ref().map(Secret::expose), Some("e2b_abc"));
    assert_eq!(c.e2b.domain, "example.dev");
    assert_eq!(c.e2b.api_url.as_deref(), Some("http://127.0.0.1:3000"));
    assert_eq!(c.e2b.sandbox_url.as_deref(), Some("http://127.0.0.1:49983"));
    assert!(c.e2b.debug);
    assert_eq!(c.docker.host.as_deref(), Some("unix:///tmp/docker.sock"));
    assert!(c.sandbox.use_host_network);
    assert_eq!(c.sandbox.base_container_image.as_deref(), Some("img:1"));
    assert_eq!(
        c.sandbox
            .runtime_startup_env_vars
            .get("A")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(c.sandbox.additional_networks, ["n1", "n2"]);
    let mounts = c.mounts().unwrap();
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[0].source, MountSource::HostPath("/data".into()));
    assert!(mounts[0].read_only);
    assert_eq!(mounts[1].target, "/ws");
}

#[test]
fn sandbox_env_prefix_reaches_startup_env() {
    let c = env(&[("SANDBOX_ENV_GREETING", "hi")]).load().unwrap();
    assert_eq!(
        c.sandbox
            .runtime_startup_env_vars
            .get("GREETING")
            .map(String::as_str),
        Some("hi")
    );
}

#[test]
fn numbers_load_into_string_fields_and_bools_accept_digits() {
    let c = env(&[
        ("E2B_API_KEY", "123456"),
        ("E2B_DEBUG", "0"),
        ("SANDBOX_ENABLE_GPU", "1"),
    ])
    .load()
    .unwrap();
    assert_eq!(c.e2b.api_key.as_ref().unwrap().expose(), "123456");
    assert!(!c.e2b.debug);
    assert!(c.sandbox.enable_gpu);
    let f = toml_file("[e2b]\napi_key = 123456\ndomain = \"x.dev\"\n");
    let c = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap();
    assert_eq!(c.e2b.api_key.as_ref().unwrap().expose(), "123456");
}

#[test]
fn empty_env_values_are_skipped() {
    let c = env(&[("SANDBOX_TIMEOUT", ""), ("RUNTIME", "")])
        .load()
        .unwrap();
    assert_eq!(c.sandbox.timeout, 120);
    assert_eq!(c.core.runtime, RuntimeKind::Docker);
}

#[test]
fn openhands_config_toml_loads() {
    let f = toml_file(
        r#"
[core]
workspace_base = "./workspace"
runtime = "docker"
default_agent = "CodeActAgent"
max_iterations = 100

[llm]
model = "gpt-4o"
api_key = "sk-secret"

[agent]
enable_browsing = true

[sandbox]
timeout = 240
use_host_network = false
base_container_image = "nikolaik/python-nodejs:python3.12-nodejs22"
enable_auto_lint = true
volumes = "/tmp/data:/data:rw"
"#,
    );
    let c = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap();
    assert_eq!(c.sandbox.timeout, 240);
    assert_eq!(c.core.workspace_base.as_deref(), Some("./workspace"));
    assert!(c.sandbox.enable_auto_lint);
    assert_eq!(c.mounts().unwrap().len(), 2);
    assert!(c.explain().iter().all(|s| !s.key.starts_with("llm")));
    // What loads but does nothing here is named (and warned about once), with where it was set.
    let ignored = c.keys_without_effect();
    let names: Vec<&str> = ignored.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "sandbox.enable_auto_lint",
            "core.default_agent",
            "core.max_iterations"
        ]
    );
    assert_eq!(ignored[0].1, format!("{}, line 19", f.path().display()));
}

#[test]
fn bad_type_names_key_and_file_line() {
    let f = toml_file("[sandbox]\n\ntimeout = \"soon\"\n");
    let e = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(msg.contains("`sandbox.timeout`"), "{msg}");
    assert!(
        msg.contains(&format!("{}, line 3", f.path().display())),
        "{msg}"
    );
    assert!(msg.contains("soon"), "{msg}");
}

#[test]
fn bad_type_names_the_variable() {
    let e = env(&[("SANDBOX_TIMEOUT", "soon")]).load().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("`sandbox.timeout`"), "{msg}");
    assert!(
        msg.contains("environment variable SANDBOX_TIMEOUT"),
        "{msg}"
    );
    let e = env(&[("SANDKIT_DOCKER__MEMORY_MB", "lots")])
        .load()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("environment variable SANDKIT_DOCKER__MEMORY_MB"),
        "{e}"
    );
    let e = env(&[("E2B_DEBUG", "maybe")]).load().unwrap_err();
    assert!(e.to_string().contains("`e2b.debug`"), "{e}");
    let e = env(&[("RUNTIME", "kubernetes")]).load().unwrap_err();
    assert!(
        e.to_string().contains("`core.runtime`") && e.to_string().contains("RUNTIME"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_owned_section_is_an_error() {
    let f = toml_file("[sandbox]\ntimout = 5\n");
    let e = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("sandbox.timout"), "{msg}");
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    let f = toml_file("[core]\nruntme = \"docker\"\n");
    let e = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("core.runtme"), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = env(&[("SANDKIT_DOCKER__IMAGES", "x")]).load().unwrap_err();
    assert!(
        e.to_string().contains("docker.images") && e.to_string().contains("SANDKIT_DOCKER__IMAGES"),
        "{e}"
    );
}

#[test]
fn bad_volume_entry_names_entry_key_and_source() {
    let e = env(&[("SANDBOX_VOLUMES", "/a:/b,relative:path:zz")])
        .load()
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("'relative:path:zz'"), "{msg}");
    assert!(msg.contains("sandbox.volumes"), "{msg}");
    assert!(msg.contains("SANDBOX_VOLUMES"), "{msg}");
}

#[test]
fn invalid_toml_names_file_and_line() {
    let f = toml_file("[sandbox]\ntimeout = = 3\n");
    let e = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn missing_config_file_is_not_found() {
    let e = Config::builder()
        .file("/no/such/sandkit.toml")
        .load()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = Config::builder()
        .env_vars([("SANDKIT_CONFIG", "/no/such.toml")])
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("SANDKIT_CONFIG"), "{e}");
}

#[test]
fn sandkit_config_variable_picks_the_file() {
    let f = toml_file("[docker]\nnetwork = \"none\"\n");
    let c = Config::builder()
        .env_vars([("SANDKIT_CONFIG", f.path().to_str().unwrap())])
        .load()
        .unwrap();
    assert_eq!(c.docker.network, "none");
}

#[test]
fn secrets_are_redacted() {
    let c = env(&[
        ("E2B_API_KEY", "e2b_supersecret"),
        ("SANDBOX_API_KEY", "sk-other"),
    ])
    .load()
    .unwrap();
    assert!(!format!("{c:?}").contains("supersecret"));
    assert!(!c.to_toml_with_sources().contains("supersecret"));
    assert!(!c.to_toml_with_sources().contains("sk-other"));
    let key = c.explain().iter().find(|s| s.key == "e2b.api_key").unwrap();
    assert_eq!(key.value, "\"***\"");
    assert_eq!(key.source, "environment variable E2B_API_KEY");
}

#[test]
fn dump_lists_sections_with_sources() {
    let c = env(&[("RUNTIME", "e2b")]).load().unwrap();
    let dump = c.to_toml_with_sources();
    assert!(dump.contains("[core]\n"), "{dump}");
    assert!(
        dump.contains("runtime = \"e2b\"  # environment variable RUNTIME"),
        "{dump}"
    );
    assert!(dump.contains("timeout = 120  # default"), "{dump}");
}

#[test]
fn zero_time_to_live_is_refused() {
    let e = env(&[("SANDBOX_TIME_TO_LIVE", "0")]).load().unwrap_err();
    assert!(e.to_string().contains("SANDBOX_TIME_TO_LIVE"), "{e}");
}

#[cfg(feature = "e2b")]
#[tokio::test]
async fn runtime_e2b_is_chosen_by_config() {
    let c = env(&[
        ("RUNTIME", "e2b"),
        ("E2B_API_KEY", "e2b_x"),
        ("E2B_API_URL", "http://127.0.0.1:9"),
    ])
    .load()
    .unwrap();
    let rt = c.runtime().await.unwrap();
    assert_eq!(rt.name(), "e2b");
    let c = env(&[("RUNTIME", "e2b")]).load().unwrap();
    let e = c.runtime().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(e.to_string().contains("E2B_API_KEY"), "{e}");
}

#[cfg(feature = "docker")]
#[tokio::test]
async fn runtime_docker_is_chosen_by_config() {
    // Without an engine this is Unavailable, which names the address; with one, a runtime.
    let c = env(&[("RUNTIME", "docker")]).load().unwrap();
    match c.runtime().await {
        Ok(rt) => assert_eq!(rt.name(), "docker"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
    }
    let c = env(&[("DOCKER_HOST", "unix:///nonexistent/docker.sock")])
        .load()
        .unwrap();
    let e = c.runtime().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
}

#[test]
fn inline_toml_is_a_file_layer() {
    let c = Config::builder()
        .toml("[sandbox]\ntimeout = 9\n")
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap();
    assert_eq!(c.sandbox.timeout, 9);
    assert_eq!(c.source_of("sandbox.timeout"), "<inline TOML>, line 2");
}

#[test]
fn docker_hardening_keys_load() {
    let c = env(&[]).load().unwrap();
    assert_eq!(c.docker.cpus, Some(1.0), "a CPU quota by default");
    assert_eq!(c.docker.capabilities, None);
    assert_eq!(c.docker.runtime, None);
    let f = toml_file(
        "[docker]\ncapabilities = [\"CHOWN\", \"NET_RAW\"]\nruntime = \"runsc\"\nagent_binary = \"/opt/sandkit-agent\"\ncpus = 0.5\nagent = \"off\"\n",
    );
    let c = Config::builder()
        .file(f.path())
        .env_vars([("SANDKIT_DOCKER__RUNTIME", "runc")])
        .load()
        .unwrap();
    assert_eq!(
        c.docker.capabilities,
        Some(vec!["CHOWN".to_string(), "NET_RAW".to_string()])
    );
    assert_eq!(c.docker.runtime.as_deref(), Some("runc"), "env wins");
    assert_eq!(
        c.docker.agent_binary.as_deref(),
        Some(std::path::Path::new("/opt/sandkit-agent"))
    );
    assert_eq!(c.docker.cpus, Some(0.5));
    assert_eq!(c.docker.agent, crate::AgentMode::Off);
    assert_eq!(
        env(&[]).load().unwrap().docker.agent,
        crate::AgentMode::Auto
    );
    let bad = toml_file("[docker]\nagent = \"sometimes\"\n");
    let e = Config::builder().file(bad.path()).load().unwrap_err();
    assert!(e.to_string().contains("agent"), "{e}");
}

#[test]
fn a_misspelt_section_is_an_error_and_openhands_sections_are_not() {
    let f = toml_file("[core]\nruntime = \"docker\"\n\n[sandboxx]\ntimeout = 5\n");
    let e = Config::builder().file(f.path()).load().unwrap_err();
    assert!(e.message().contains("[sandboxx]"), "{e}");
    assert!(e.message().contains("line 4"), "{e}");
    assert!(
        e.context()
            .iter()
            .any(|(k, v)| *k == "key" && v == "sandboxx"),
        "{:?}",
        e.context()
    );
    let f = toml_file("[llm]\nmodel = \"x\"\n[agent]\nname = \"y\"\n[llm.fast]\nmodel = \"z\"\n");
    Config::builder().file(f.path()).load().unwrap();
}

#[test]
fn config_errors_carry_key_and_source_as_context() {
    let f = toml_file("[sandbox]\ntimeout = \"soon\"\n");
    let e = Config::builder().file(f.path()).load().unwrap_err();
    let ctx = e.context();
    assert!(
        ctx.iter()
            .any(|(k, v)| *k == "key" && v == "sandbox.timeout"),
        "{ctx:?}"
    );
    assert!(
        ctx.iter()
            .any(|(k, v)| *k == "source" && v.ends_with("line 2")),
        "{ctx:?}"
    );
}

#[test]
fn sandbox_network_section_is_a_policy_and_typos_are_errors() {
    let f = toml_file(
        "[sandbox.network]\ndeny_out = [\"0.0.0.0/0\"]\nallow_out = [\"pypi.org\", \"10.1.0.0/16\"]\nallow_host = true\n\n[docker]\nnetwork_guard = false\n",
    );
    let c = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap();
    let p = c.sandbox.network.clone().expect("a policy");
    assert_eq!(p.deny_out, vec![sandkit_core::ALL_TRAFFIC]);
    assert_eq!(p.allow_out, vec!["pypi.org", "10.1.0.0/16"]);
    assert!(p.allow_host && !p.allow_link_local);
    assert!(!c.docker.network_guard);
    assert!(
        env(&[]).load().unwrap().docker.network_guard,
        "on by default"
    );
    let f = toml_file("[sandbox.network]\nallow_outt = [\"x.com\"]\n");
    let e = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("allow_outt"), "{e}");
}

#[cfg(feature = "docker")]
#[tokio::test]
async fn a_bad_network_policy_in_config_names_the_section() {
    let f = toml_file("[sandbox.network]\ndeny_out = [\"example.com\"]\n");
    let c = Config::builder()
        .file(f.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap();
    match c.docker().await {
        // No engine here: nothing to check past connecting.
        Err(e) if e.kind() == sandkit_core::ErrorKind::Unavailable => {}
        Err(e) => {
            assert_eq!(e.kind(), sandkit_core::ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("[sandbox.network]"), "{e}");
        }
        Ok(_) => panic!("a domain in deny_out was accepted"),
    }
}

/// `[sandbox] remote_runtime_enable_retries` decides whether the stack retries: against an
/// API that answers every request with a retryable 503, four requests by default, one when off.
#[cfg(feature = "e2b")]
#[tokio::test]
async fn remote_runtime_enable_retries_turns_the_retry_layer_on_and_off() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                // One request per connection: read its head, answer, close.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"code":503,"message":"busy"}"#;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    let url = format!("http://{addr}");
    for (setting, expected) in [(None, 4), (Some("false"), 1)] {
        requests.store(0, Ordering::SeqCst);
        let mut vars = vec![
            ("RUNTIME", "e2b"),
            ("E2B_API_KEY", "e2b_x"),
            ("E2B_API_URL", url.as_str()),
        ];
        if let Some(v) = setting {
            vars.push(("SANDBOX_REMOTE_RUNTIME_ENABLE_RETRIES", v));
        }
        let runtime = env(&vars).load().unwrap().runtime().await.unwrap();
        let e = runtime
            .list(&sandkit_core::ListFilter::all())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        // Final once the retry layer gave up; still retryable where no layer tried again.
        assert_eq!(e.is_retryable(), setting.is_some(), "{e:?}");
        assert_eq!(
            requests.load(Ordering::SeqCst),
            expected,
            "retries {setting:?}"
        );
    }
}

#[test]
fn request_rules_take_secrets_from_the_environment_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sandkit.toml");
    std::fs::write(
        &file,
        "[sandbox.network]\ndeny_out = [\"0.0.0.0/0\"]\nallow_out = [\"api.test\"]\n\n\
         [[sandbox.network.rules.\"api.test\"]]\nheaders = { Authorization = \"Bearer ${e2b.secrets.tok}\" }\n\n\
         [sandbox.secrets]\ntok = { env = \"SANDKIT_TEST_RULES_TOKEN\" }\n",
    )
    .unwrap();
    let c = Config::builder().file(&file).load().unwrap();
    // The variable unset: the runtime is not made, and the error names it.
    std::env::remove_var("SANDKIT_TEST_RULES_TOKEN");
    let e = c.network_policy().unwrap_err();
    assert!(e.message().contains("SANDKIT_TEST_RULES_TOKEN"), "{e}");
    std::env::set_var("SANDKIT_TEST_RULES_TOKEN", "v1");
    let p = c.network_policy().unwrap().unwrap();
    std::env::remove_var("SANDKIT_TEST_RULES_TOKEN");
    p.validate().unwrap();
    assert_eq!(
        p.headers_for("api.test").unwrap(),
        [("Authorization".to_string(), "Bearer v1".to_string())]
    );
    // The value is not in what the configuration shows.
    assert!(!format!("{c:?}").contains("v1\""));
}
