//! Unpacking an archive that came out of a sandbox onto the host, trusting nothing in it.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sandkit_core::{Error, Result};

use crate::local::LocalFileStore;

/// What [`LocalFileStore::unpack`] made, and what it refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unpacked {
    /// Regular files written.
    pub files: usize,
    /// Directories made.
    pub dirs: usize,
    /// Symbolic links made (each resolves inside the destination).
    pub links: usize,
    /// Entries left out, with why: devices, FIFOs, links that lead out, unsafe names.
    pub skipped: Vec<(String, &'static str)>,
}

/// Permission bits a copy may carry: never setuid, setgid or sticky, nor write for group and
/// others.
const MODE_BITS: u32 = 0o755;

impl LocalFileStore {
    /// Unpacks a tar archive of one file or directory named `top` into `into` (a path in this
    /// store, made if missing), for archives that come from a sandbox and so may be hostile.
    /// Blocking: call it from `spawn_blocking` in async code.
    ///
    /// # Contract
    /// - Nothing is written outside `into/top`: entries that are not `top` or under it (a
    ///   `.git/hooks/pre-commit` beside it), absolute names and `..` are skipped, and no write
    ///   goes through a symbolic link (one in the way is replaced, not followed).
    /// - Files and directories keep their permission bits without setuid, setgid, sticky and
    ///   write for group and others; ownership is never restored (everything belongs to the
    ///   user running this).
    /// - Device files, FIFOs and sockets are skipped.
    /// - A symbolic link is made only when it resolves inside `into` (relative, and still inside
    ///   once every link of the copy is resolved); others are skipped. A hard link becomes a
    ///   copy of the file it names, when that file is inside `into`.
    ///
    /// # Errors
    /// A malformed archive, or an I/O error writing, stops the unpacking with the error; what
    /// was already written stays.
    ///
    /// ```
    /// # fn demo() -> sandkit_core::Result<()> {
    /// use sandkit_filestore::LocalFileStore;
    /// let mut tar = tar::Builder::new(Vec::new());
    /// let mut h = tar::Header::new_gnu();
    /// h.set_size(2);
    /// h.set_mode(0o4755); // setuid: dropped on the host
    /// tar.append_data(&mut h, "bin/tool", &b"hi"[..])?;
    /// let archive = tar.into_inner()?;
    ///
    /// let store = LocalFileStore::new(std::env::temp_dir().join("sandkit-doc-unpack"))?;
    /// let done = store.unpack(archive.as_slice(), "copy", "bin")?;
    /// assert_eq!(done.files, 1);
    /// # Ok(()) }
    /// ```
    pub fn unpack(&self, archive: impl Read, into: &str, top: &str) -> Result<Unpacked> {
        let top = safe_relative(top)
            .filter(|t| t.components().count() == 1)
            .ok_or_else(|| {
                Error::new(
                    sandkit_core::ErrorKind::InvalidInput,
                    "the top of an archive is one plain name",
                )
                .with_backend("local")
                .with_operation("unpack")
                .with_context("top", top)
            })?;
        let dest = self.resolve(into, true, "unpack")?;
        std::fs::create_dir_all(&dest).map_err(|e| unpack_io(e, into))?;
        let dest = dest.canonicalize().map_err(|e| unpack_io(e, into))?;
        let mut done = Unpacked::default();
        let mut links = Vec::new();
        let mut archive = tar::Archive::new(archive);
        for entry in archive.entries().map_err(|e| unpack_io(e, into))? {
            let mut entry = entry.map_err(|e| unpack_io(e, into))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(rel) = safe_relative(&raw) else {
                done.skipped.push((raw, "absolute, or climbs out with .."));
                continue;
            };
            if rel.as_os_str().is_empty() {
                continue; // "./": the destination itself
            }
            if !rel.starts_with(&top) {
                done.skipped.push((raw, "outside the item being copied"));
                continue;
            }
            let target = dest.join(&rel);
            if !parents_are_real_dirs(&dest, &rel) {
                done.skipped.push((raw, "a symbolic link is in the way"));
                continue;
            }
            let mode = entry.header().mode().unwrap_or(0o644) & MODE_BITS;
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    replace_link(&target).map_err(|e| unpack_io(e, &raw))?;
                    if !target.is_dir() {
                        std::fs::create_dir_all(&target).map_err(|e| unpack_io(e, &raw))?;
                    }
                    std::fs::set_permissions(
                        &target,
                        std::fs::Permissions::from_mode(mode | 0o700),
                    )
                    .map_err(|e| unpack_io(e, &raw))?;
                    done.dirs += 1;
                }
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => {
                    make_parent(&dest, &rel).map_err(|e| unpack_io(e, &raw))?;
                    replace_link(&target).map_err(|e| unpack_io(e, &raw))?;
                    let mut file =
                        create_no_follow(&target, mode).map_err(|e| unpack_io(e, &raw))?;
                    std::io::copy(&mut entry, &mut file).map_err(|e| unpack_io(e, &raw))?;
                    // The mode again: an existing file kept its old one through the open.
                    file.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|e| unpack_io(e, &raw))?;
                    done.files += 1;
                }
                tar::EntryType::Symlink => {
                    let Some(link) = entry.link_name().ok().flatten() else {
                        done.skipped.push((raw, "a link with no target"));
                        continue;
                    };
                    let link = link.into_owned();
                    if !lexically_inside(&rel, &link) {
                        done.skipped
                            .push((raw, "a link that leads outside the copy"));
                        continue;
                    }
                    make_parent(&dest, &rel).map_err(|e| unpack_io(e, &raw))?;
                    remove_non_dir(&target).map_err(|e| unpack_io(e, &raw))?;
                    std::os::unix::fs::symlink(&link, &target).map_err(|e| unpack_io(e, &raw))?;
                    links.push((raw, target));
                }
                tar::EntryType::Link => {
                    let Some(name) = entry.link_name().ok().flatten() else {
                        done.skipped.push((raw, "a hard link with no target"));
                        continue;
                    };
                    let source = safe_relative(&name.to_string_lossy()).map(|r| dest.join(r));
                    let usable = source.as_ref().is_some_and(|s| {
                        std::fs::symlink_metadata(s).is_ok_and(|m| m.file_type().is_file())
                            && s.parent()
                                .and_then(|p| p.canonicalize().ok())
                                .is_some_and(|p| p.starts_with(&dest))
                    });
                    let Some(source) = source.filter(|_| usable) else {
                        done.skipped
                            .push((raw, "a hard link to a file outside the copy"));
                        continue;
                    };
                    make_parent(&dest, &rel).map_err(|e| unpack_io(e, &raw))?;
                    replace_link(&target).map_err(|e| unpack_io(e, &raw))?;
                    let mut from = std::fs::File::open(&source).map_err(|e| unpack_io(e, &raw))?;
                    let mut to = create_no_follow(&target, mode).map_err(|e| unpack_io(e, &raw))?;
                    std::io::copy(&mut from, &mut to).map_err(|e| unpack_io(e, &raw))?;
                    done.files += 1;
                }
                tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => {}
                _ => done.skipped.push((
                    raw,
                    "a device file, FIFO or socket is not copied to the host",
                )),
            }
        }
        // Every link once more, resolved as the kernel would: one that leads out through
        // other links of the copy goes.
        for (raw, link) in links {
            if resolves_inside(&link, &dest) {
                done.links += 1;
            } else {
                let _ = std::fs::remove_file(&link);
                done.skipped
                    .push((raw, "a link that leads outside the copy"));
            }
        }
        for (path, why) in &done.skipped {
            tracing::warn!(path, why, "left out of a copy to the host");
        }
        Ok(done)
    }
}

fn unpack_io(e: std::io::Error, path: &str) -> Error {
    Error::from(e)
        .with_backend("local")
        .with_operation("unpack")
        .with_context("path", path)
}

/// `raw` as a relative path with no `..`, or `None`.
fn safe_relative(raw: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether every directory between `dest` and `rel`'s last part that exists is a real
/// directory (no symbolic link to write through).
fn parents_are_real_dirs(dest: &Path, rel: &Path) -> bool {
    let mut at = dest.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part.as_os_str());
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return false,
            Err(_) => return true, // made below, by us, as directories
        }
    }
    true
}

fn make_parent(dest: &Path, rel: &Path) -> std::io::Result<()> {
    match dest.join(rel).parent() {
        Some(p) => std::fs::create_dir_all(p),
        None => Ok(()),
    }
}

/// Removes a symbolic link at `path` (so nothing is written through it).
fn replace_link(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

/// Removes whatever non-directory is at `path`.
fn remove_non_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_dir() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a directory is in the way",
        )),
        Err(_) => Ok(()),
    }
}

/// Opens `path` for writing, refusing to follow a symbolic link at it.
fn create_no_follow(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    const O_NOFOLLOW: i32 = 0o400000;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(O_NOFOLLOW)
        .open(path)
}

/// Whether the link at `link` leads inside `dest` as the kernel would follow it: through every
/// link of the copy, and for a dangling link through as much of its path as exists (the rest,
/// not yet there, must not climb with `..`).
fn resolves_inside(link: &Path, dest: &Path) -> bool {
    if let Ok(real) = link.canonicalize() {
        return real.starts_with(dest);
    }
    let Ok(target) = std::fs::read_link(link) else {
        return false;
    };
    let joined = link.parent().unwrap_or(dest).join(target);
    let parts: Vec<Component> = joined.components().collect();
    for keep in (0..=parts.len()).rev() {
        let prefix: PathBuf = parts[..keep].iter().collect();
        let Ok(real) = prefix.canonicalize() else {
            continue;
        };
        let rest = &parts[keep..];
        if rest.iter().any(|c| !matches!(c, Component::Normal(_))) {
            return false;
        }
        let mut end = real;
        end.extend(rest.iter().map(|c| c.as_os_str()));
        return end.starts_with(dest);
    }
    false
}

/// Whether a link at `rel` pointing at `target` stays inside the copy, by its words alone.
fn lexically_inside(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = rel
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str()).collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(p) => depth.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    }

    /// An archive a hostile sandbox could send.
    fn hostile() -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        let mut add = |kind, mode, name: &str, link: Option<&str>, data: &[u8]| {
            let mut h = header(kind, mode, data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // set_path refuses `..` and absolute names: write the raw name bytes.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            t.append(&h, data).unwrap();
        };
        use tar::EntryType as T;
        add(T::Directory, 0o2755, "dir/", None, b"");
        add(T::Regular, 0o4755, "dir/suid", None, b"#!/bin/sh\n");
        add(T::Symlink, 0o777, "dir/shadow", Some("/etc/shadow"), b"");
        add(T::Symlink, 0o777, "dir/up", Some("../../outside"), b"");
        add(T::Symlink, 0o777, "dir/here", Some("."), b"");
        add(T::Symlink, 0o777, "dir/sneaky", Some("here/../.."), b"");
        add(T::Symlink, 0o777, "dir/fine", Some("suid"), b"");
        add(T::Regular, 0o644, "dir/up/planted", None, b"x");
        add(T::Regular, 0o644, "../escaped", None, b"x");
        add(T::Regular, 0o644, "/abs", None, b"x");
        add(T::Char, 0o666, "dir/null", None, b"");
        add(T::Fifo, 0o666, "dir/fifo", None, b"");
        add(T::Link, 0o644, "dir/hard", Some("/etc/passwd"), b"");
        add(T::Link, 0o644, "dir/hard2", Some("dir/suid"), b"");
        add(
            T::Regular,
            0o755,
            ".git/hooks/pre-commit",
            None,
            b"#!/bin/sh\n",
        );
        add(
            T::Symlink,
            0o777,
            "dir/dangling",
            Some("here/../../nowhere"),
            b"",
        );
        t.into_inner().unwrap()
    }

    #[test]
    fn a_hostile_archive_does_no_harm() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let store = LocalFileStore::new(&root).unwrap();
        // Something in the way already: a link out, where the archive writes a file.
        std::fs::create_dir_all(root.join("copy/dir")).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("copy/dir/suid")).unwrap();

        let done = store.unpack(hostile().as_slice(), "copy", "dir").unwrap();
        let dir = root.join("copy/dir");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let suid = std::fs::symlink_metadata(dir.join("suid")).unwrap();
        assert!(
            suid.file_type().is_file(),
            "the link in the way was replaced"
        );
        assert_eq!(suid.mode() & 0o7777, 0o755, "setuid dropped");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().mode() & 0o7000,
            0,
            "setgid dropped on the directory"
        );
        assert!(
            !std::fs::symlink_metadata(dir.join("up"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "a link out was made"
        );
        assert!(
            !root.join("copy/.git").exists(),
            "an entry beside the copy was made"
        );
        for gone in ["shadow", "sneaky", "null", "fifo", "hard", "dangling"] {
            assert!(
                std::fs::symlink_metadata(dir.join(gone)).is_err(),
                "{gone} was made"
            );
        }
        assert!(!tmp.path().join("outside").exists());
        assert!(!tmp.path().join("escaped").exists() && !root.join("escaped").exists());
        assert!(!Path::new("/abs").exists());
        assert_eq!(
            std::fs::read_link(dir.join("fine")).unwrap(),
            Path::new("suid")
        );
        assert_eq!(std::fs::read(dir.join("hard2")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(done.files, 3, "{done:?}"); // suid, up/planted (a real directory), hard2
        assert_eq!(done.links, 2, "{done:?}"); // fine, here
        assert_eq!(done.skipped.len(), 10, "{:?}", done.skipped);
    }

    #[test]
    fn links_are_judged_by_where_they_lead() {
        let inside = |rel: &str, target: &str| lexically_inside(Path::new(rel), Path::new(target));
        assert!(inside("a/b", "c"));
        assert!(inside("a/b", "../c"));
        assert!(!inside("a/b", "../../c"));
        assert!(!inside("a", "/etc/passwd"));
        assert!(inside("a/b/c", "./../x/../y"));
    }
}
