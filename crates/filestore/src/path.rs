//! Path normalisation shared by the stores and the backends.

use sandkit_core::{Error, ErrorKind, Result};

/// A path split into clean components: no empty parts, no `.`, and `..` resolved.
///
/// `..` that would climb above the start is refused with [`ErrorKind::PermissionDenied`]:
/// a path given to a store never names something outside the store's root.
///
/// ```
/// use sandkit_filestore::normalize;
/// assert_eq!(normalize("a//b/./c/../d/").unwrap(), ["a", "b", "d"]);
/// assert_eq!(normalize("/x/y").unwrap(), ["x", "y"]);
/// assert!(normalize("a/../../etc").is_err());
/// ```
pub fn normalize(path: &str) -> Result<Vec<&str>> {
    if path.contains('\0') {
        return Err(
            Error::new(ErrorKind::InvalidInput, "the path contains a NUL byte")
                .with_context("path", path.escape_debug()),
        );
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(Error::new(
                        ErrorKind::PermissionDenied,
                        "the path climbs above the root with '..'",
                    )
                    .with_context("path", path));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts)
}

/// An absolute path in a sandbox, cleaned as POSIX does: `..` at `/` stays at `/`
/// (`/a/../../b` is `/b`), no empty parts, no `.`.
///
/// ```
/// assert_eq!(sandkit_filestore::clean_absolute("/home/user/../../../etc//x/."), "/etc/x");
/// assert_eq!(sandkit_filestore::clean_absolute("/"), "/");
/// ```
pub fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Joins a directory and a name with exactly one `/` (an empty directory gives the name).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent of a `/`-separated path (`""` for a bare name, `/` for a top-level absolute one).
pub fn parent(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => "/",
        Some(i) => &trimmed[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_escape() {
        let e = normalize("../x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(normalize("a/..").unwrap().is_empty());
        assert_eq!(
            normalize("a\0b").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn join_and_parent() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/x", "a"), "/x/a");
        assert_eq!(parent("/x/a"), "/x");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("a"), "");
    }
}
