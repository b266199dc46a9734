//! The FileStore part of the conformance suite on both stores here, and the escape tests of
//! `LocalFileStore`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use sandkit_conformance::{FsHarness, Suite};
use sandkit_core::{ErrorKind, FileStore, FileStoreExt};
use sandkit_filestore::{InMemoryFileStore, LocalFileStore};

#[derive(Debug)]
struct Local {
    store: LocalFileStore,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl FsHarness for Local {
    fn store(&self) -> &dyn FileStore {
        &self.store
    }
    fn scratch_root(&self) -> String {
        String::new()
    }
    async fn symlink(&self, target: &str, link: &str) -> sandkit_core::Result<()> {
        std::os::unix::fs::symlink(target, self.store.root().join(link))?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Memory(InMemoryFileStore);

#[async_trait]
impl FsHarness for Memory {
    fn store(&self) -> &dyn FileStore {
        &self.0
    }
    fn scratch_root(&self) -> String {
        "/scratch".into()
    }
    async fn symlink(&self, target: &str, link: &str) -> sandkit_core::Result<()> {
        self.0.symlink(target, link)
    }
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let local = Local {
        store: LocalFileStore::new(dir.path()).expect("store"),
        _dir: dir,
    };
    suite.add_filestore("local", Arc::new(local));
    suite.add_filestore("memory", Arc::new(Memory::default()));

    suite.add_trial(
        "local::escape::refused_and_nothing_outside_touched".into(),
        false,
        || async {
            escape_refused_and_nothing_outside_touched().await;
            Ok(())
        },
    );
    suite.add_trial(
        "local::escape::symlink_inside_is_followed".into(),
        false,
        || async {
            symlink_inside_is_followed().await;
            Ok(())
        },
    );
    suite.add_trial("memory::escape::dotdot_refused".into(), false, || async {
        let m = InMemoryFileStore::new();
        let e = m.write_str("../x", "x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        Ok(())
    });
    suite.run()
}

/// Snapshot of every file under a directory: path, length, modification time.
fn snapshot(dir: &std::path::Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

async fn escape_refused_and_nothing_outside_touched() {
    // outside/ holds a secret; root/ is the store, with links pointing out of it.
    let top = tempfile::tempdir().unwrap();
    let outside = top.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    let root = top.path().join("root");
    let store = LocalFileStore::new(&root).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out-dir")).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", root.join("out-file")).unwrap();
    std::os::unix::fs::symlink("../outside/new.txt", root.join("dangling-out")).unwrap();
    let before = snapshot(top.path());

    use ErrorKind::{InvalidInput, PermissionDenied};
    let reads = [
        ("../outside/secret.txt", PermissionDenied),
        ("a/../../outside/secret.txt", PermissionDenied),
        ("/etc/passwd", InvalidInput),
        ("etc-link/passwd", PermissionDenied),
        ("out-dir/secret.txt", PermissionDenied),
        ("out-file", PermissionDenied),
    ];
    for (path, kind) in reads {
        let e = store.read(path).await.unwrap_err();
        assert_eq!(e.kind(), kind, "read {path}: {e}");
        let e = store.write_str(path, "pwned").await.unwrap_err();
        assert_eq!(e.kind(), kind, "write {path}: {e}");
    }
    for path in [
        "dangling-out",
        "out-dir/new.txt",
        "etc-link/sandkit-test",
        "../new.txt",
    ] {
        let e = store.write_str(path, "pwned").await.unwrap_err();
        assert_eq!(e.kind(), PermissionDenied, "write {path}: {e}");
    }
    for path in ["etc-link", "out-dir", "/etc"] {
        assert!(store.list(path, 1).await.is_err(), "list {path}");
    }
    assert!(store.mkdir("out-dir/sub").await.is_err());
    assert!(store.remove("out-dir/secret.txt").await.is_err());
    assert!(store.rename("out-dir/secret.txt", "stolen").await.is_err());
    assert!(store.rename("etc-link", "../moved").await.is_err());
    assert!(store.stat("out-dir/secret.txt").await.is_err());
    // Links themselves can be looked at and removed: that touches nothing outside.
    assert_eq!(
        store
            .stat("etc-link")
            .await
            .unwrap()
            .symlink_target
            .as_deref(),
        Some("/etc")
    );
    store.remove("out-dir").await.unwrap();

    let mut after = snapshot(top.path());
    let mut expected = before;
    expected.retain(|(p, _, _)| p != &root.join("out-dir"));
    after.retain(|(p, _, _)| p.starts_with(&outside));
    expected.retain(|(p, _, _)| p.starts_with(&outside));
    assert_eq!(after, expected, "nothing outside the root changed");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "secret"
    );
    assert!(!outside.join("new.txt").exists());
    assert!(!top.path().join("new.txt").exists());
    assert!(!std::path::Path::new("/etc/sandkit-test").exists());
}

async fn symlink_inside_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalFileStore::new(dir.path()).unwrap();
    store.write_str("real/f.txt", "inside").await.unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("alias")).unwrap();
    assert_eq!(store.read_to_string("alias/f.txt").await.unwrap(), "inside");
    store.write_str("alias/g.txt", "via link").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("real/g.txt")).unwrap(),
        "via link"
    );
}
