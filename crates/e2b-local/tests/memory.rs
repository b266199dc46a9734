//! Memory stays bounded when the E2B backend streams through `e2b-local`: 500 MiB of stdout
//! through `spawn` and a 200 MiB file up and down. Client and server run in this one process
//! (a test binary of its own, so nothing else runs here), so the bound holds for both together.
//!
//! Needs Docker; without an engine the test fails.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sandkit_core::{CommandSpec, ProcessEvent, Runtime, SandboxSpec};
use sandkit_docker::DockerRuntime;
use sandkit_e2b::E2bRuntime;
use sandkit_e2b_local::{Server, ServerConfig};

#[tokio::test(flavor = "multi_thread")]
async fn streaming_through_e2b_stays_bounded() {
    let docker = sandkit_conformance::needs_engine(DockerRuntime::builder().build().await);
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, e) = (api.local_addr().unwrap(), envd.local_addr().unwrap());
    let key = "e2b_memory_key";
    let server = Server::new(
        Arc::new(docker),
        ServerConfig {
            api_key: Some(key.into()),
            ..Default::default()
        },
    )
    .expect("the server starts");
    tokio::spawn(server.serve(api, envd, std::future::pending()));
    let rt = E2bRuntime::builder()
        .api_key(key)
        .api_url(format!("http://{a}"))
        .sandbox_url(format!("http://{e}"))
        .request_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let sb = rt
        .create(SandboxSpec::new().template("sandkit-mini:latest"))
        .await
        .unwrap();
    let result = async {
        // 500 MiB of stdout, counted as it streams.
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
        assert_eq!(n, 500 << 20);
        let after_stdout = sandkit_conformance::peak_rss_kib();
        // 200 MiB up from a generated stream, then down, counted.
        let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
        let up = futures_util::stream::iter((0..200).map(move |_| Ok(chunk.clone()))).boxed();
        sb.files().write_stream("/tmp/big.bin", up).await?;
        let mut down = sb.files().read_stream("/tmp/big.bin").await?;
        let mut m = 0u64;
        while let Some(c) = down.next().await {
            let c = c?;
            assert!(c.iter().all(|&b| b == 7));
            m += c.len() as u64;
        }
        assert_eq!(m, 200 << 20);
        Ok::<_, sandkit_core::Error>(after_stdout)
    }
    .await;
    let _ = sb.kill().await;
    let after_stdout = result.unwrap();
    let peak = sandkit_conformance::peak_rss_kib();
    eprintln!(
        "E2B via e2b-local, client and server together: 500 MiB stdout peak RSS {} MiB, then a 200 MiB file: {} MiB",
        after_stdout / 1024,
        peak / 1024
    );
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB is under 100 MiB");
}
