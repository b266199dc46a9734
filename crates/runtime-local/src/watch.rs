//! Directory watching with inotify: one event per change, recursive on request (directories
//! made later are watched as they appear).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sandkit_core::{Error, ErrorKind, FsEvent, FsEventKind, FsEventStream, Result};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::files::io_error;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DONT_FOLLOW
    | libc::IN_EXCL_UNLINK;

/// Events buffered before the watcher waits for its reader.
const BUFFER: usize = 256;

struct Watcher {
    fd: AsyncFd<OwnedFd>,
    /// Watch descriptor → the directory's path relative to the watched root ("" for the root).
    dirs: HashMap<i32, String>,
    root: PathBuf,
    recursive: bool,
    /// Cookies of moves away from a temporary file of an atomic write, and whether that write
    /// replaces a file.
    temp_moves: HashMap<u32, bool>,
}

/// Whether `name` is a temporary file of [`LocalFiles`](crate::LocalFiles)' atomic writes,
/// which watchers never see: a new file shows as `Create`, `Chmod` and `Write` of the file
/// itself, a replaced one as `Write`, as E2B's envd reports the files it writes in place.
fn is_temp(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with(crate::files::TEMP_PREFIX))
}

impl Watcher {
    /// Watches `rel` (and, recursively, what is below it). With `found`, entries already there
    /// are reported as made: a directory made under a recursive watch may fill before its own
    /// watch is in place.
    fn add(&mut self, rel: &str, mut found: Option<&mut Vec<FsEvent>>) -> io::Result<()> {
        let full = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let c = CString::new(full.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid fd and C string.
        let wd = unsafe {
            libc::inotify_add_watch(
                self.fd.get_ref().as_raw_fd(),
                c.as_ptr(),
                MASK | libc::IN_ONLYDIR,
            )
        };
        if wd == -1 {
            return Err(io::Error::last_os_error());
        }
        self.dirs.insert(wd, rel.to_string());
        if self.recursive {
            for entry in std::fs::read_dir(&full)?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if let Some(found) = found.as_deref_mut() {
                    if !is_temp(&child) {
                        found.push(FsEvent::new(child.clone(), FsEventKind::Create));
                    }
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    // A directory gone in between is not an error of the watch.
                    let _ = self.add(&child, found.as_deref_mut());
                }
            }
        }
        Ok(())
    }

    /// Reads what inotify has; the events, in order.
    fn drain(&mut self, buf: &mut [u8], out: &mut Vec<FsEvent>) -> io::Result<()> {
        loop {
            // SAFETY: reading into a buffer we own.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Ok(());
                }
                return Err(e);
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event here; read unaligned.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name_bytes = &buf[at + header..at + header + ev.len as usize];
                let name = name_bytes.split(|b| *b == 0).next().unwrap_or_default();
                let name = String::from_utf8_lossy(name).into_owned();
                at += header + ev.len as usize;
                if ev.mask & libc::IN_IGNORED != 0 {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                if name.is_empty() {
                    continue;
                }
                let rel = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let m = ev.mask;
                if is_temp(&rel) {
                    if m & libc::IN_MOVED_FROM != 0 {
                        let replaces = rel
                            .rsplit('/')
                            .next()
                            .and_then(|n| n.strip_prefix(crate::files::TEMP_PREFIX))
                            .is_some_and(|kind| kind.starts_with('r'));
                        self.temp_moves.insert(ev.cookie, replaces);
                    }
                    continue;
                }
                let kind = if m & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                    let from_temp = if m & libc::IN_MOVED_TO != 0 {
                        self.temp_moves.remove(&ev.cookie)
                    } else {
                        None
                    };
                    if from_temp == Some(true) {
                        // A file replaced whole: E2B's envd writes it in place, a write.
                        out.push(FsEvent::new(rel, FsEventKind::Write));
                        continue;
                    }
                    out.push(FsEvent::new(rel.clone(), FsEventKind::Create));
                    if from_temp.is_some() {
                        // A file written whole (staged beside it, then renamed in): reported
                        // as E2B's envd reports the file it writes in place, create, mode,
                        // content; the staged name is never shown.
                        out.push(FsEvent::new(rel.clone(), FsEventKind::Chmod));
                        out.push(FsEvent::new(rel, FsEventKind::Write));
                        continue;
                    }
                    if self.recursive && m & libc::IN_ISDIR != 0 {
                        let _ = self.add(&rel, Some(out));
                    }
                    continue;
                } else if m & libc::IN_MODIFY != 0 {
                    FsEventKind::Write
                } else if m & libc::IN_DELETE != 0 {
                    FsEventKind::Remove
                } else if m & libc::IN_MOVED_FROM != 0 {
                    FsEventKind::Rename
                } else if m & libc::IN_ATTRIB != 0 {
                    FsEventKind::Chmod
                } else {
                    continue;
                };
                out.push(FsEvent::new(rel, kind));
            }
        }
    }
}

/// Starts watching `root`.
pub(crate) fn watch(root: &Path, shown: &str, recursive: bool) -> Result<FsEventStream> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("'{shown}' is not a directory"),
            )
            .with_backend("local")
            .with_operation("watch"))
        }
        Err(e) => return Err(io_error(e, "watch", shown)),
    }
    // SAFETY: plain system call.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd == -1 {
        return Err(io_error(io::Error::last_os_error(), "watch", shown));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the OwnedFd is the inotify fd for the whole life of the AsyncFd.
    let fd = unsafe { AsyncFd::register(fd) }
        .map_err(|e| io_error(io::Error::from(e), "watch", shown))?;
    let mut w = Watcher {
        fd,
        dirs: HashMap::new(),
        root: root.to_path_buf(),
        recursive,
        temp_moves: HashMap::new(),
    };
    w.add("", None).map_err(|e| io_error(e, "watch", shown))?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut events = Vec::new();
        loop {
            tokio::select! {
                ready = w.fd.readable() => {
                    let mut guard = match ready {
                        Ok(g) => g,
                        Err(e) => {
                            let _ = tx.send(Err(io_error(e, "watch", ""))).await;
                            return;
                        }
                    };
                    guard.clear_ready();
                    drop(guard);
                    if let Err(e) = w.drain(&mut buf, &mut events) {
                        let _ = tx.send(Err(io_error(e, "watch", ""))).await;
                        return;
                    }
                    for ev in events.drain(..) {
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    if w.dirs.is_empty() {
                        // The watched directory itself is gone.
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    Ok(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
    )))
}
