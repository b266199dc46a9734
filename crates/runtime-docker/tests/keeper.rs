//! The deadline keeper removed by hand (in a test binary of its own: other tests rely on the
//! keeper running). Until a new one runs, no sandkit process kills a sandbox on a deadline it
//! cannot read; the new keeper keeps the extended deadlines, which outlive it on a volume.

use std::time::Duration;

use sandkit_core::{Runtime, SandboxExt, SandboxSpec, SandboxState};

mod common;

#[tokio::test]
async fn a_keeper_removed_by_hand_loses_no_extended_deadline() {
    let rt = common::kept().await;
    let spec = |t: u64| {
        SandboxSpec::new()
            .metadata("sandkit-keeper-test", "removed")
            .timeout(Duration::from_secs(t))
    };
    let sb = rt.create(spec(3)).await.unwrap();
    sb.set_timeout(Duration::from_secs(120)).await.unwrap();
    let removed = tokio::process::Command::new("docker")
        .args(["rm", "-f", "sandkit-keeper"])
        .output()
        .await
        .unwrap();
    assert!(removed.status.success(), "{removed:?}");
    // Past the deadline set at create: the host cannot read the keeper's state and must not
    // take the label's deadline for the truth.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let info = rt.info(sb.id()).await.unwrap();
    assert_eq!(info.state, SandboxState::Running);
    assert!(
        rt.list(&sandkit_core::ListFilter::all().metadata("sandkit-keeper-test", "removed"))
            .await
            .unwrap()
            .iter()
            .any(|i| i.id == sb.id()),
        "listing killed it"
    );
    // A new sandbox brings a new keeper, which reads the extended deadline from the volume.
    let other = rt.create(spec(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = sb.exec_shell("echo alive").await.unwrap();
    assert_eq!(out.stdout_text(), "alive\n");
    let end = rt.info(sb.id()).await.unwrap().expires_at.unwrap();
    assert!(
        end > std::time::SystemTime::now() + Duration::from_secs(60),
        "{end:?}"
    );
    other.kill().await.unwrap();
    sb.kill().await.unwrap();
}
