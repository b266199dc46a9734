//! Where the `sandkit-agent` binary comes from.
//!
//! The backend runs `sandkit-agent` on the engine (the deadline keeper; see [`crate::keeper`]). The
//! binary must be fully static: it runs in an image that holds nothing else. In order:
//! [`DockerRuntimeBuilder::agent_binary`](crate::DockerRuntimeBuilder::agent_binary), the
//! `SANDKIT_AGENT_BIN` environment variable, then `sandkit-agent` beside the running program.
//! `cargo xtask agent` builds it (`target/x86_64-unknown-linux-gnu/release/sandkit-agent`).

use std::path::{Path, PathBuf};

/// The environment variable naming the agent binary.
pub const AGENT_BIN_ENV: &str = "SANDKIT_AGENT_BIN";

/// The agent binary to use: the explicit path, else `SANDKIT_AGENT_BIN`, else `sandkit-agent` beside
/// the current executable when that one is static. An explicit or environment path that is not
/// a static Linux binary is an error, so a typo is not silently ignored.
pub(crate) fn find(explicit: Option<&Path>) -> Result<Option<PathBuf>, String> {
    let named = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(AGENT_BIN_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = named {
        check(&path)?;
        return Ok(Some(path));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("sandkit-agent")));
    Ok(beside.filter(|p| check(p).is_ok()))
}

/// Whether `path` is a static x86_64 Linux executable.
fn check(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the agent binary {}: {e}; build it with `cargo xtask agent`",
            path.display()
        )
    })?;
    if is_static_elf(&bytes) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a static x86_64 Linux executable; build one with `cargo xtask agent`",
            path.display()
        ))
    }
}

/// An x86_64 ELF executable with no program interpreter (so no dynamic loader, no libc needed).
pub(crate) fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    // 64-bit, little endian, executable or PIE, x86_64.
    if b.get(..6) != Some(b"\x7fELF\x02\x01")
        || !matches!(u16_at(16), Some(2 | 3))
        || u16_at(18) != Some(62)
    {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        u32_at(at).is_some_and(|kind| kind != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_not_static() {
        // This test binary itself is dynamically linked (it has a program interpreter).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(b""));
    }

    #[test]
    fn a_named_binary_must_exist_and_be_static() {
        let e = find(Some(Path::new("/nonexistent/sandkit-agent"))).unwrap_err();
        assert!(e.contains("cargo xtask agent"), "{e}");
        let e = find(Some(&std::env::current_exe().unwrap())).unwrap_err();
        assert!(e.contains("not a static"), "{e}");
    }
}
