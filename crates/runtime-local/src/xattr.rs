//! File metadata as E2B's envd keeps it: extended attributes `user.e2b.<key>`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The attribute name prefix.
const PREFIX: &str = "user.e2b.";
/// Longest key (an attribute name is at most 255 bytes).
pub(crate) const MAX_KEY: usize = 255 - PREFIX.len();
/// Largest total of prefixed keys and values.
pub(crate) const MAX_TOTAL: usize = 4096;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Checks metadata as envd does: keys non-empty and at most [`MAX_KEY`] bytes, keys and
/// values printable ASCII, everything together at most [`MAX_TOTAL`] bytes.
pub(crate) fn validate(metadata: &BTreeMap<String, String>) -> Result<(), String> {
    let printable = |s: &str| s.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let mut total = 0;
    for (k, v) in metadata {
        if k.is_empty() || k.len() > MAX_KEY {
            return Err(format!("metadata key '{k}' must be 1 to {MAX_KEY} bytes"));
        }
        if !printable(k) || !printable(v) {
            return Err(format!("metadata '{k}' must be printable ASCII"));
        }
        total += PREFIX.len() + k.len() + v.len();
    }
    if total > MAX_TOTAL {
        return Err(format!(
            "metadata is {total} bytes; at most {MAX_TOTAL} fit"
        ));
    }
    Ok(())
}

fn names(path: &CString) -> io::Result<Vec<String>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: a buffer of the given size.
        let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(e);
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| n.starts_with(PREFIX))
        .map(String::from)
        .collect())
}

/// The metadata of `path` (not following a final link); empty where there is none or the file
/// system keeps no attributes.
pub(crate) fn read(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(c) = cpath(path) else { return out };
    for name in names(&c).unwrap_or_default() {
        let Ok(cname) = CString::new(name.as_str()) else {
            continue;
        };
        let mut buf = vec![0u8; MAX_TOTAL];
        // SAFETY: a buffer of the given size.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            continue;
        }
        buf.truncate(n as usize);
        if let Ok(v) = String::from_utf8(buf) {
            out.insert(name[PREFIX.len()..].to_string(), v);
        }
    }
    out
}

/// Replaces the metadata of `path`.
pub(crate) fn replace(path: &Path, metadata: &BTreeMap<String, String>) -> io::Result<()> {
    let c = cpath(path)?;
    let check = |r: libc::c_int| {
        if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    for name in names(&c)? {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C strings.
        check(unsafe { libc::lremovexattr(c.as_ptr(), cname.as_ptr()) })?;
    }
    for (k, v) in metadata {
        let cname = CString::new(format!("{PREFIX}{}", k.to_ascii_lowercase()))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C strings and a value buffer of the given length.
        check(unsafe {
            libc::lsetxattr(c.as_ptr(), cname.as_ptr(), v.as_ptr().cast(), v.len(), 0)
        })?;
    }
    Ok(())
}
