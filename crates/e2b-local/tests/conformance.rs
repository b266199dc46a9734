//! The conformance suite against the E2B backend, end to end: `sandkit-e2b` talking to an
//! `e2b-local` server (in this process, on loopback) over Docker.
//!
//! With `SANDKIT_REQUIRE_DOCKER=1` (CI) a missing engine or image fails the run; otherwise the
//! cases show as ignored.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sandkit_conformance::{SandboxTarget, Suite, SUITE_LABEL};
use sandkit_core::{CommandSpec, ErrorKind, Runtime, SandboxExt, SandboxSpec};
use sandkit_docker::DockerRuntime;
use sandkit_e2b::E2bRuntime;
use sandkit_e2b_local::{Server, ServerConfig};

const KEY: &str = "e2b_conformance_key";

fn main() -> ExitCode {
    let require = std::env::var("SANDKIT_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let mut suite = Suite::new();
    let started = suite.tokio().block_on(async {
        let docker = DockerRuntime::builder().build().await?;
        if docker
            .docker()
            .inspect_image(sandkit_docker::DEFAULT_IMAGE)
            .await
            .is_err()
        {
            return Err(sandkit_core::Error::new(
                ErrorKind::NotFound,
                "image sandkit-base:bookworm is missing; build it with `cargo xtask image`",
            ));
        }
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (api_addr, envd_addr) = (api.local_addr()?, envd.local_addr()?);
        let config = ServerConfig {
            api_key: Some(KEY.into()),
            ..Default::default()
        };
        let server = Server::new(Arc::new(docker), config).expect("the server starts");
        tokio::spawn(server.serve(api, envd, std::future::pending()));
        let e2b = E2bRuntime::builder()
            .api_key(KEY)
            .api_url(format!("http://{api_addr}"))
            .sandbox_url(format!("http://{envd_addr}"))
            .request_timeout(Duration::from_secs(60))
            .build()?;
        Ok::<_, sandkit_core::Error>((e2b, api_addr))
    });
    let (e2b, api_addr) = match started {
        Ok(v) => v,
        Err(e) if require => {
            eprintln!("error: SANDKIT_REQUIRE_DOCKER=1 but Docker is not usable: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            suite.add_ignored("e2b_local", &e.to_string());
            return suite.run();
        }
    };
    let e2b = Arc::new(e2b);
    suite.add_sandbox(
        SandboxTarget::new("e2b_local", e2b.clone(), SandboxSpec::new()).with_python(true),
    );
    suite.add_sandbox(SandboxTarget::new(
        "e2b_local_mini",
        e2b.clone(),
        SandboxSpec::new().template("sandkit-mini:latest"),
    ));

    let run_id = suite.run_id().to_string();
    suite.add_trial(
        "e2b_local::auth::wrong_api_key_is_unauthenticated".into(),
        false,
        move || async move {
            let wrong = E2bRuntime::builder()
                .api_key("e2b_wrong")
                .api_url(format!("http://{api_addr}"))
                .build()?;
            let e = wrong.create(SandboxSpec::new()).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
            Ok(())
        },
    );
    suite.add_trial(
        "e2b::config::missing_api_key_is_unauthenticated".into(),
        false,
        || async {
            let e = E2bRuntime::builder().build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthenticated);
            Ok(())
        },
    );
    let rt = e2b.clone();
    suite.add_trial("e2b_local::process::timeout_reported_by_envd".into(), false, move || async move {
        let sb = rt.create(SandboxSpec::new().metadata(SUITE_LABEL, &run_id)).await?;
        let result = async {
            let err = sb
                .exec(CommandSpec::shell("echo begun; sleep 3030").timeout(Duration::from_secs(2)))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert_eq!(err.output().map(|o| o.stdout_text()), Some("begun\n".into()));
            // The server killed it: nothing of it runs.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ps = sb.exec_shell("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done | grep -c 'slee[p] 3030'").await?;
            assert_eq!(ps.stdout_text().trim(), "0");
            Ok::<_, sandkit_core::Error>(())
        }
        .await;
        sb.kill().await?;
        result
    });
    suite.run()
}
