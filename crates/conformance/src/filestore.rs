//! The FileStore cases (`area = files`): every store, local, in memory or in a sandbox.

use bytes::Bytes;
use futures_util::StreamExt;
use sandkit_core::{EntryKind, ErrorKind, FileStoreExt};

use crate::suite::{always, Case, CaseResult, FsCtx};

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every FileStore case.
        pub fn cases() -> Vec<Case<FsCtx>> {
            vec![$(Case { area: "files", name: stringify!($name), needs: always, run: |c| Box::pin($name(c)) }),*]
        }
    };
}

cases!(
    text_round_trip,
    every_byte_value_round_trips,
    empty_file,
    large_file_20mib_streams,
    many_small_chunks_stream,
    overwrite_replaces_whole_file,
    writes_are_whole_or_not_at_all,
    write_creates_parents,
    read_missing_is_not_found,
    read_directory_is_invalid_input,
    read_to_string_rejects_invalid_utf8,
    unicode_and_spaces_in_names,
    list_depth_one,
    list_depth_two,
    list_order_is_preorder_lexical,
    list_reports_kinds_and_sizes,
    list_missing_is_not_found,
    stat_file,
    stat_directory,
    stat_symlink_not_followed,
    stat_missing_is_not_found,
    exists_reports_presence,
    mkdir_creates_parents,
    mkdir_existing_dir_already_exists,
    mkdir_over_file_already_exists,
    rename_file,
    rename_directory_with_contents,
    rename_replaces_existing_file,
    rename_missing_is_not_found,
    remove_file,
    remove_directory_recursively,
    remove_missing_is_not_found,
    copy_tree_between_paths,
);

async fn text_round_trip(c: FsCtx) -> CaseResult {
    let p = c.path("hello.txt");
    c.store()
        .write_str(&p, "hello, world\nsecond line\n")
        .await?;
    assert_eq!(
        c.store().read_to_string(&p).await?,
        "hello, world\nsecond line\n"
    );
    Ok(())
}

async fn every_byte_value_round_trips(c: FsCtx) -> CaseResult {
    let p = c.path("bytes.bin");
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    c.store().write(&p, Bytes::from(all.clone())).await?;
    assert_eq!(c.store().read(&p).await?.as_ref(), all.as_slice());
    assert_eq!(c.store().stat(&p).await?.size, 512);
    Ok(())
}

async fn empty_file(c: FsCtx) -> CaseResult {
    let p = c.path("empty");
    c.store().write(&p, Bytes::new()).await?;
    assert!(c.store().read(&p).await?.is_empty());
    let st = c.store().stat(&p).await?;
    assert_eq!((st.kind, st.size), (EntryKind::File, 0));
    Ok(())
}

/// 20 MiB of a pattern that catches reordered or dropped chunks.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 4093) % 251) as u8)
        .collect()
}

async fn large_file_20mib_streams(c: FsCtx) -> CaseResult {
    let p = c.path("big.bin");
    let data = Bytes::from(pattern(20 << 20));
    let chunks: Vec<_> = data
        .chunks(1 << 20)
        .map(|ch| Ok(Bytes::copy_from_slice(ch)))
        .collect();
    c.store()
        .write_stream(&p, futures_util::stream::iter(chunks).boxed())
        .await?;
    assert_eq!(c.store().stat(&p).await?.size, 20 << 20);
    let mut stream = c.store().read_stream(&p).await?;
    let mut offset = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        assert_eq!(
            chunk.as_ref(),
            &data[offset..offset + chunk.len()],
            "content differs at byte {offset}"
        );
        offset += chunk.len();
    }
    assert_eq!(offset, data.len());
    Ok(())
}

async fn many_small_chunks_stream(c: FsCtx) -> CaseResult {
    let p = c.path("chunks.txt");
    let chunks: Vec<_> = (0..2000)
        .map(|i| Ok(Bytes::from(format!("{i},"))))
        .collect();
    c.store()
        .write_stream(&p, futures_util::stream::iter(chunks).boxed())
        .await?;
    let expected: String = (0..2000).map(|i| format!("{i},")).collect();
    assert_eq!(c.store().read_to_string(&p).await?, expected);
    Ok(())
}

async fn overwrite_replaces_whole_file(c: FsCtx) -> CaseResult {
    let p = c.path("f.txt");
    c.store()
        .write_str(&p, "a much longer first version")
        .await?;
    c.store().write_str(&p, "short").await?;
    assert_eq!(c.store().read_to_string(&p).await?, "short");
    Ok(())
}

/// A write replaces a file whole or not at all (the `FileStore` contract): a reader while a
/// write is under way sees the old content, whole; a write whose content fails part-way is an
/// error and leaves the old file and nothing beside it.
async fn writes_are_whole_or_not_at_all(c: FsCtx) -> CaseResult {
    const MIB: usize = 1 << 20;
    let p = c.path("atomic/f.bin");
    c.store().write(&p, Bytes::from(vec![b'o'; MIB])).await?;

    // A write held after its first MiB until the reader has read.
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let content = futures_util::stream::iter([Ok(Bytes::from(vec![b'n'; MIB]))])
        .chain(futures_util::stream::once(async move {
            let _ = held.await;
            Ok(Bytes::from(vec![b'n'; MIB]))
        }))
        .boxed();
    let reader = async {
        // Time for the write to start (it cannot end before the release).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let seen = c.store().read(&p).await;
        let _ = release.send(());
        seen
    };
    let (written, seen) = tokio::join!(c.store().write_stream(&p, content), reader);
    written?;
    let seen = seen?;
    assert!(
        seen.len() == MIB && seen.iter().all(|b| *b == b'o'),
        "a reader during the write saw {} bytes, not the old file whole",
        seen.len()
    );
    let now = c.store().read(&p).await?;
    assert!(now.len() == 2 * MIB && now.iter().all(|b| *b == b'n'));

    // A write whose content fails after a MiB.
    let failing = futures_util::stream::iter([
        Ok(Bytes::from(vec![b'x'; MIB])),
        Err(sandkit_core::Error::new(
            ErrorKind::Unavailable,
            "the content's source failed",
        )),
    ])
    .boxed();
    assert!(
        c.store().write_stream(&p, failing).await.is_err(),
        "a write whose content failed succeeded"
    );
    let after = c.store().read(&p).await?;
    assert!(
        after.len() == 2 * MIB && after.iter().all(|b| *b == b'n'),
        "a failed write changed the file ({} bytes)",
        after.len()
    );
    let names: Vec<String> = c
        .store()
        .list(&c.path("atomic"), 1)
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["f.bin"],
        "a failed write left something beside the file"
    );
    Ok(())
}

async fn write_creates_parents(c: FsCtx) -> CaseResult {
    let p = c.path("a/b/c/d.txt");
    c.store().write_str(&p, "deep").await?;
    assert_eq!(c.store().read_to_string(&p).await?, "deep");
    assert_eq!(c.store().stat(&c.path("a/b/c")).await?.kind, EntryKind::Dir);
    Ok(())
}

async fn read_missing_is_not_found(c: FsCtx) -> CaseResult {
    let err = c.store().read(&c.path("nope.txt")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = c.store().read(&c.path("no/such/dir/x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Ok(())
}

async fn read_directory_is_invalid_input(c: FsCtx) -> CaseResult {
    c.store().mkdir(&c.path("d")).await?;
    let err = c.store().read(&c.path("d")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    Ok(())
}

async fn read_to_string_rejects_invalid_utf8(c: FsCtx) -> CaseResult {
    let p = c.path("latin1.txt");
    c.store().write(&p, Bytes::from_static(b"caf\xe9")).await?;
    let err = c.store().read_to_string(&p).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    Ok(())
}

async fn unicode_and_spaces_in_names(c: FsCtx) -> CaseResult {
    let p = c.path("dir with space/naïve ü 東京 'q' \"d\" $x.txt");
    c.store().write_str(&p, "ok").await?;
    assert_eq!(c.store().read_to_string(&p).await?, "ok");
    let names: Vec<String> = c
        .store()
        .list(&c.path("dir with space"), 1)
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["naïve ü 東京 'q' \"d\" $x.txt"]);
    Ok(())
}

/// a.txt, b/ (b/c.txt, b/d/ (b/d/e.txt)), z.txt
async fn tree(c: &FsCtx) -> CaseResult {
    c.store().write_str(&c.path("t/a.txt"), "a").await?;
    c.store().write_str(&c.path("t/b/c.txt"), "cc").await?;
    c.store().write_str(&c.path("t/b/d/e.txt"), "eee").await?;
    c.store().write_str(&c.path("t/z.txt"), "z").await?;
    Ok(())
}

fn rel_paths(c: &FsCtx, entries: &[sandkit_core::EntryInfo]) -> Vec<String> {
    let prefix = format!("{}/", c.path("t"));
    entries
        .iter()
        .map(|e| {
            e.path
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{} is not under {prefix}", e.path))
                .to_string()
        })
        .collect()
}

async fn list_depth_one(c: FsCtx) -> CaseResult {
    tree(&c).await?;
    let entries = c.store().list(&c.path("t"), 1).await?;
    assert_eq!(rel_paths(&c, &entries), ["a.txt", "b", "z.txt"]);
    Ok(())
}

async fn list_depth_two(c: FsCtx) -> CaseResult {
    tree(&c).await?;
    let entries = c.store().list(&c.path("t"), 2).await?;
    assert_eq!(
        rel_paths(&c, &entries),
        ["a.txt", "b", "b/c.txt", "b/d", "z.txt"]
    );
    Ok(())
}

async fn list_order_is_preorder_lexical(c: FsCtx) -> CaseResult {
    for name in ["t/b.txt", "t/b/x", "t/B", "t/a-b", "t/a/c"] {
        c.store().write_str(&c.path(name), "").await?;
    }
    let entries = c.store().list(&c.path("t"), 10).await?;
    assert_eq!(
        rel_paths(&c, &entries),
        ["B", "a", "a/c", "a-b", "b", "b/x", "b.txt"]
    );
    // Same answer twice: the order is stable.
    let again = c.store().list(&c.path("t"), 10).await?;
    assert_eq!(rel_paths(&c, &entries), rel_paths(&c, &again));
    Ok(())
}

async fn list_reports_kinds_and_sizes(c: FsCtx) -> CaseResult {
    tree(&c).await?;
    let entries = c.store().list(&c.path("t"), 3).await?;
    let find = |rel: &str| {
        entries
            .iter()
            .find(|e| e.path.ends_with(&format!("/t/{rel}")) || e.path == format!("t/{rel}"))
            .unwrap_or_else(|| panic!("{rel} not listed: {entries:?}"))
    };
    assert_eq!(
        (find("b").kind, find("b").name.as_str()),
        (EntryKind::Dir, "b")
    );
    let e = find("b/d/e.txt");
    assert_eq!(
        (e.kind, e.size, e.name.as_str()),
        (EntryKind::File, 3, "e.txt")
    );
    Ok(())
}

async fn list_missing_is_not_found(c: FsCtx) -> CaseResult {
    let err = c.store().list(&c.path("missing"), 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Ok(())
}

async fn stat_file(c: FsCtx) -> CaseResult {
    let p = c.path("s.txt");
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    c.store().write_str(&p, "12345").await?;
    let st = c.store().stat(&p).await?;
    assert_eq!(
        (st.kind, st.size, st.name.as_str()),
        (EntryKind::File, 5, "s.txt")
    );
    assert!(st.mode & 0o400 != 0, "owner can read: mode {:o}", st.mode);
    assert!(st.mode <= 0o7777, "mode has no type bits: {:o}", st.mode);
    let modified = st.modified.expect("a modification time");
    assert!(modified > before, "mtime {modified:?} is recent");
    assert!(st.symlink_target.is_none());
    Ok(())
}

async fn stat_directory(c: FsCtx) -> CaseResult {
    c.store().mkdir(&c.path("d")).await?;
    let st = c.store().stat(&c.path("d")).await?;
    assert_eq!((st.kind, st.name.as_str()), (EntryKind::Dir, "d"));
    assert!(st.is_dir());
    Ok(())
}

async fn stat_symlink_not_followed(c: FsCtx) -> CaseResult {
    c.store().write_str(&c.path("target.txt"), "x").await?;
    c.symlink("target.txt", "link").await?;
    let st = c.store().stat(&c.path("link")).await?;
    assert_eq!(st.kind, EntryKind::Symlink);
    // The link's own text, or (as E2B's envd reports it) the absolute path it resolves to.
    let target = st.symlink_target.as_deref();
    assert!(
        target == Some("target.txt") || target == Some(c.path("target.txt").as_str()),
        "{target:?}"
    );
    // Reading follows the link.
    assert_eq!(c.store().read_to_string(&c.path("link")).await?, "x");
    Ok(())
}

async fn stat_missing_is_not_found(c: FsCtx) -> CaseResult {
    let err = c.store().stat(&c.path("ghost")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Ok(())
}

async fn exists_reports_presence(c: FsCtx) -> CaseResult {
    assert!(!c.store().exists(&c.path("x")).await?);
    c.store().write_str(&c.path("x"), "").await?;
    assert!(c.store().exists(&c.path("x")).await?);
    assert!(c.store().exists(c.dir()).await?);
    Ok(())
}

async fn mkdir_creates_parents(c: FsCtx) -> CaseResult {
    c.store().mkdir(&c.path("p/q/r")).await?;
    for d in ["p", "p/q", "p/q/r"] {
        assert_eq!(
            c.store().stat(&c.path(d)).await?.kind,
            EntryKind::Dir,
            "{d}"
        );
    }
    assert!(c.store().list(&c.path("p/q/r"), 1).await?.is_empty());
    Ok(())
}

async fn mkdir_existing_dir_already_exists(c: FsCtx) -> CaseResult {
    c.store().mkdir(&c.path("d")).await?;
    c.store().write_str(&c.path("d/keep.txt"), "kept").await?;
    let err = c.store().mkdir(&c.path("d")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    // Nothing in it was lost, and the tolerant helper accepts it.
    c.store().create_dir_all(&c.path("d")).await?;
    assert_eq!(
        c.store().read_to_string(&c.path("d/keep.txt")).await?,
        "kept"
    );
    Ok(())
}

async fn mkdir_over_file_already_exists(c: FsCtx) -> CaseResult {
    c.store().write_str(&c.path("f"), "file").await?;
    let err = c.store().mkdir(&c.path("f")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(c.store().create_dir_all(&c.path("f")).await.is_err());
    assert_eq!(c.store().read_to_string(&c.path("f")).await?, "file");
    Ok(())
}

async fn rename_file(c: FsCtx) -> CaseResult {
    c.store().write_str(&c.path("old.txt"), "moved").await?;
    c.store()
        .rename(&c.path("old.txt"), &c.path("new.txt"))
        .await?;
    assert!(!c.store().exists(&c.path("old.txt")).await?);
    assert_eq!(c.store().read_to_string(&c.path("new.txt")).await?, "moved");
    Ok(())
}

async fn rename_directory_with_contents(c: FsCtx) -> CaseResult {
    tree(&c).await?;
    c.store().rename(&c.path("t"), &c.path("u")).await?;
    assert!(!c.store().exists(&c.path("t")).await?);
    assert_eq!(
        c.store().read_to_string(&c.path("u/b/d/e.txt")).await?,
        "eee"
    );
    Ok(())
}

async fn rename_replaces_existing_file(c: FsCtx) -> CaseResult {
    c.store().write_str(&c.path("a"), "from a").await?;
    c.store().write_str(&c.path("b"), "old b").await?;
    c.store().rename(&c.path("a"), &c.path("b")).await?;
    assert_eq!(c.store().read_to_string(&c.path("b")).await?, "from a");
    assert!(!c.store().exists(&c.path("a")).await?);
    Ok(())
}

async fn rename_missing_is_not_found(c: FsCtx) -> CaseResult {
    let err = c
        .store()
        .rename(&c.path("ghost"), &c.path("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Ok(())
}

async fn remove_file(c: FsCtx) -> CaseResult {
    c.store().write_str(&c.path("f"), "x").await?;
    c.store().remove(&c.path("f")).await?;
    assert!(!c.store().exists(&c.path("f")).await?);
    Ok(())
}

async fn remove_directory_recursively(c: FsCtx) -> CaseResult {
    tree(&c).await?;
    c.store().write_str(&c.path("keep.txt"), "k").await?;
    c.store().remove(&c.path("t")).await?;
    assert!(!c.store().exists(&c.path("t")).await?);
    assert!(!c.store().exists(&c.path("t/b/d/e.txt")).await?);
    assert!(c.store().exists(&c.path("keep.txt")).await?);
    Ok(())
}

async fn remove_missing_is_not_found(c: FsCtx) -> CaseResult {
    let err = c.store().remove(&c.path("ghost")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    Ok(())
}

async fn copy_tree_between_paths(c: FsCtx) -> CaseResult {
    tree(&c).await?;
    let (from, to) = (c.path("t"), c.path("copy"));
    sandkit_core::copy_tree(c.store(), &from, c.store(), &to).await?;
    assert_eq!(
        c.store().read_to_string(&c.path("copy/b/d/e.txt")).await?,
        "eee"
    );
    assert_eq!(c.store().read_to_string(&c.path("copy/a.txt")).await?, "a");
    assert_eq!(c.store().list(&to, 10).await?.len(), 6);
    Ok(())
}
