//! Users and groups, read from `/etc/passwd` and `/etc/group` directly: the agent is a static
//! binary and cannot use NSS.

use std::io;

/// Who a process or a file operation runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ident {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups, the primary one included.
    pub(crate) groups: Vec<u32>,
    pub(crate) home: String,
    pub(crate) shell: String,
}

impl Ident {
    /// Whether this is who the current process already is (no switch needed).
    pub(crate) fn is_current(&self) -> bool {
        // SAFETY: plain getters.
        unsafe { libc::geteuid() == self.uid && libc::getegid() == self.gid }
    }
}

/// The fields of one `name:x:...` line, if it is well formed.
fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    Some(line.split(':').collect())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Looks a user up by name, or by number (`"1000"`), with their supplementary groups.
pub(crate) fn lookup(name: &str) -> io::Result<Ident> {
    let passwd = read("/etc/passwd");
    let by_number = name.parse::<u32>().ok();
    let found = passwd.lines().filter_map(fields).find(|f| {
        f.len() >= 7 && (f[0] == name || by_number.is_some_and(|n| f[2].parse() == Ok(n)))
    });
    let f = match found {
        Some(f) => f,
        None => {
            return match by_number {
                // A bare number with no passwd entry: that uid and gid, no home.
                Some(n) => Ok(Ident {
                    name: name.to_string(),
                    uid: n,
                    gid: n,
                    groups: vec![n],
                    home: "/".into(),
                    shell: "/bin/sh".into(),
                }),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no user '{name}' in /etc/passwd"),
                )),
            };
        }
    };
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad /etc/passwd line for '{name}'"),
        )
    };
    let uid: u32 = f[2].parse().map_err(|_| bad())?;
    let gid: u32 = f[3].parse().map_err(|_| bad())?;
    let user = f[0].to_string();
    let mut groups = vec![gid];
    for g in read("/etc/group").lines().filter_map(fields) {
        if g.len() >= 4 && g[3].split(',').any(|m| m == user) {
            if let Ok(id) = g[2].parse::<u32>() {
                if !groups.contains(&id) {
                    groups.push(id);
                }
            }
        }
    }
    Ok(Ident {
        name: user,
        uid,
        gid,
        groups,
        home: if f[5].is_empty() {
            "/".into()
        } else {
            f[5].to_string()
        },
        shell: f[6].to_string(),
    })
}

/// The user the current process runs as.
pub(crate) fn current() -> Ident {
    // SAFETY: plain getter.
    let uid = unsafe { libc::geteuid() };
    lookup(&uid.to_string()).unwrap_or_else(|_| Ident {
        name: uid.to_string(),
        uid,
        gid: uid,
        groups: vec![uid],
        home: "/".into(),
        shell: "/bin/sh".into(),
    })
}

/// Names of uids and gids, read once for a listing.
#[derive(Debug, Default)]
pub(crate) struct Names {
    users: Vec<(u32, String)>,
    groups: Vec<(u32, String)>,
}

impl Names {
    pub(crate) fn load() -> Names {
        let pairs = |text: String| {
            text.lines()
                .filter_map(fields)
                .filter(|f| f.len() >= 3)
                .filter_map(|f| Some((f[2].parse().ok()?, f[0].to_string())))
                .collect()
        };
        Names {
            users: pairs(read("/etc/passwd")),
            groups: pairs(read("/etc/group")),
        }
    }
    fn find(list: &[(u32, String)], id: u32) -> String {
        list.iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| id.to_string())
    }
    pub(crate) fn user(&self, uid: u32) -> String {
        Self::find(&self.users, uid)
    }
    pub(crate) fn group(&self, gid: u32) -> String {
        Self::find(&self.groups, gid)
    }
}

/// Runs `f` on a fresh thread that has `who`'s credentials, or on the blocking pool as the
/// current process when `who` is `None`.
///
/// The switch is made with raw `setgroups`/`setresgid`/`setresuid` system calls, which change
/// the calling thread only (the C library's wrappers would change every thread); the thread
/// ends with `f`, so no credential is ever restored or leaked to other work.
pub(crate) async fn as_user<T, F>(who: Option<&Ident>, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let who = match who {
        Some(w) if !w.is_current() => w.clone(),
        _ => {
            return tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| io::Error::other(format!("file worker failed: {e}")))?
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sandkit-as-user".into())
        .spawn(move || {
            let _ = tx.send(switch_thread(&who).and_then(|()| f()));
        })?;
    rx.await
        .map_err(|_| io::Error::other("the file worker thread ended without an answer"))?
}

fn check(r: libc::c_long) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn switch_thread(who: &Ident) -> io::Result<()> {
    // SAFETY: raw system calls with valid arguments; they affect this thread only.
    let r = unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            who.groups.len(),
            who.groups.as_ptr(),
        ))
        .and_then(|()| {
            check(libc::syscall(
                libc::SYS_setresgid,
                who.gid,
                who.gid,
                who.gid,
            ))
        })
        .and_then(|()| {
            check(libc::syscall(
                libc::SYS_setresuid,
                who.uid,
                who.uid,
                who.uid,
            ))
        })
    };
    r.map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("cannot act as user '{}': {e}", who.name),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("0").unwrap().name, "root");
        let n = lookup("54321").unwrap();
        assert_eq!((n.uid, n.gid), (54321, 54321));
        assert_eq!(
            lookup("no-such-user-here").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn names_fall_back_to_numbers() {
        let names = Names::load();
        assert_eq!(names.user(0), "root");
        assert_eq!(names.user(4_000_000), "4000000");
    }
}
