//! [`DockerFiles`]: a container's files, through the archive (tar) API and small helpers.
//!
//! Reads stream through the engine's archive API (one request), or through `cat` run as the
//! store's user when it has one (so the kernel checks that user's permissions). Writes go
//! through `cat` as the store's user (root when none) into a temporary file beside the target,
//! renamed over it only once every byte arrived: a cut write leaves the old content, and a
//! symbolic link at the target is replaced, never written through. Metadata operations run
//! POSIX `sh`/`find`/`stat` helpers, which both GNU and busybox provide, as the store's user.

use async_trait::async_trait;
use bollard::container::DownloadFromContainerOptions;
use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sandkit_core::raw::sort_entries;
use sandkit_core::{ByteStream, EntryInfo, EntryKind, Error, ErrorKind, FileStore, Result};
use sandkit_filestore::{clean_absolute, join, parent};

use crate::error::{err, map};
use crate::exec::{exit_code, run_helper_as, script, start, Collected, ExecRequest};

/// Content up to this size is written from memory in one exec whose script checks the size
/// before the rename; more streams through a second exec, renamed after the host saw every
/// byte go out.
const SPOOL_AT: usize = 8 << 20;
/// How many symbolic links a read follows.
const MAX_LINKS: usize = 16;

const STAT: &str = r#"if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 2; fi
stat -c "$2" -- "$1" || exit 1
if [ -L "$1" ]; then readlink -- "$1"; fi"#;

const LIST: &str = r#"if [ ! -e "$1" ]; then exit 2; fi
if [ ! -d "$1" ]; then exit 20; fi
find "$1" -mindepth 1 -maxdepth "$2" -exec stat -c "$3" -- {} + || exit 1
printf '\002\n'
find "$1" -mindepth 1 -maxdepth "$2" -type l -exec sh -c 'for f; do printf "%s\001%s\001\n" "$f" "$(readlink -- "$f")"; done' sh {} +"#;

const MKDIR: &str = r#"if [ -e "$1" ] || [ -L "$1" ]; then exit 17; fi
mkdir -p -- "$1""#;

const RENAME: &str = r#"if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 2; fi
mkdir -p -- "$(dirname -- "$2")" || exit 1
if [ -d "$2" ] && [ ! -L "$2" ]; then rmdir -- "$2" 2>/dev/null || exit 39; fi
mv -f -- "$1" "$2""#;

/// The rename of a finished temporary file `$2` over `$1` (`$3` set: removes `$2` instead, the
/// write failed). An existing file's permission bits carry over only where nobody else can
/// swap the temporary file for a link in between (the directory is the writer's and not
/// writable by others, or sticky), since `chmod` follows links. `mv -T` replaces a link at
/// `$1`, even one to a directory, instead of moving into it.
macro_rules! finish_script {
    () => {
        r#"if [ -n "$3" ]; then rm -f -- "$2"; exit 0; fi
if [ -f "$1" ] && [ ! -L "$1" ]; then
  set -- "$1" "$2" "" $(stat -c '%u %a' -- "$(dirname -- "$1")" 2>/dev/null)
  if [ "$4" = "$(id -u)" ] && { [ $((0$5 & 022)) -eq 0 ] || [ $((0$5 & 01000)) -ne 0 ]; }; then
    m=$(stat -c %a -- "$1" 2>/dev/null) && chmod "$(printf '%o' $((0$m & 0777)))" -- "$2"
  fi
fi
mv -fT -- "$2" "$1" || { rm -f -- "$2"; exit 1; }"#
    };
}

/// See [`finish_script`].
const FINISH: &str = finish_script!();

/// Writes stdin to the temporary file `$2` beside `$1` (made exclusively; parents made). With
/// `$3`, the expected size, checks it all arrived and renames ([`FINISH`]) in the same exec; a
/// short write (the sender was cut off) leaves `$1` as it was.
const WRITE: &str = concat!(
    r#"if [ -d "$1" ] && [ ! -L "$1" ]; then exit 21; fi
mkdir -p -- "$(dirname -- "$1")" || exit 1
set -C
cat > "$2" || { rm -f -- "$2"; exit 1; }
[ -z "$3" ] && exit 0
if [ "$(($(wc -c < "$2")))" != "$3" ]; then rm -f -- "$2"; exit 5; fi
set -- "$1" "$2" ""
"#,
    finish_script!()
);

/// Streams a regular file as the store's user.
const CAT: &str = r#"if [ ! -e "$1" ]; then exit 2; fi
if [ -d "$1" ]; then exit 21; fi
if [ ! -f "$1" ]; then exit 22; fi
exec cat -- "$1""#;

const REMOVE: &str = r#"if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 2; fi
rm -rf -- "$1""#;

/// `stat -c` format: raw mode (hex), size, mtime, owner, group, name, then a record end of `\x01`.
const STAT_FORMAT: &str = "%f %s %Y %U %G %n\u{1}";

/// The files of one container, as root or as one user.
#[derive(Clone)]
pub struct DockerFiles {
    docker: Docker,
    container: String,
    workdir: String,
    /// Whose permissions apply and who owns what is made; root when `None`.
    user: Option<String>,
}

impl std::fmt::Debug for DockerFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerFiles")
            .field("container", &self.container)
            .field("user", &self.user)
            .finish()
    }
}

impl DockerFiles {
    pub(crate) fn new(docker: Docker, container: String, workdir: String) -> Self {
        DockerFiles {
            docker,
            container,
            workdir,
            user: None,
        }
    }

    /// The same files as `user` sees them.
    pub(crate) fn as_user(&self, user: &str) -> Self {
        DockerFiles {
            user: Some(user.to_string()),
            ..self.clone()
        }
    }

    fn runs_as(&self) -> &str {
        self.user.as_deref().unwrap_or("root")
    }

    /// An absolute, normalised path: relative paths are relative to the sandbox's working
    /// directory.
    fn absolute(&self, path: &str, op: &'static str) -> Result<String> {
        let full = if path.starts_with('/') {
            path.to_string()
        } else {
            join(&self.workdir, path)
        };
        if full.contains('\0') {
            return Err(err(
                ErrorKind::InvalidInput,
                op,
                "the path contains a NUL byte",
            ));
        }
        Ok(clean_absolute(&full))
    }

    async fn helper(&self, body: &str, args: &[&str], op: &'static str) -> Result<Collected> {
        let out = run_helper_as(
            &self.docker,
            &self.container,
            self.runs_as(),
            script(body, args),
            None,
            op,
        )
        .await?;
        match out.code {
            0 => Ok(out),
            code => Err(status_error(code, &out.stderr, op)),
        }
    }

    /// Streams content into a temporary file beside `full` through `cat` run as the store's
    /// user (memory stays bounded), then renames it over `full`: with `size` known, the same
    /// script checks it all arrived and renames; without, a second exec renames once every byte
    /// went out.
    async fn write_by_exec(
        &self,
        full: &str,
        head: Bytes,
        mut rest: ByteStream,
        size: Option<u64>,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let tmp = join(
            parent(full),
            &format!(".sandkit-write-{:016x}", rand::random::<u64>()),
        );
        let size_arg = size.map(|s| s.to_string()).unwrap_or_default();
        let req = ExecRequest {
            cmd: script(WRITE, &[full, &tmp, &size_arg]),
            user: Some(self.runs_as().to_string()),
            stdin: true,
            ..Default::default()
        };
        let mut started = start(&self.docker, &self.container, req, "write").await?;
        let fed: Result<()> = async {
            started.input.write_all(&head).await?;
            while let Some(chunk) = rest.next().await {
                started.input.write_all(&chunk?).await?;
            }
            Ok(())
        }
        .await;
        // End of input either way: `cat` finishes, and what it wrote is renamed only if every
        // byte went out.
        let closed = started.input.shutdown().await;
        let fed = fed.and(closed.map_err(sandkit_core::Error::from));
        let mut stderr = Vec::new();
        while let Some(frame) = started.output.next().await {
            if let Ok(bollard::container::LogOutput::StdErr { message }) = frame {
                stderr.extend_from_slice(&message);
            }
        }
        let code = exit_code(&self.docker, &started.exec_id, "write").await?;
        let staged = match code {
            0 => Ok(()),
            code => Err(status_error(code, &stderr, "write")),
        };
        let failed = fed.is_err() || staged.is_err();
        if size.is_some() && !failed {
            return Ok(()); // checked and renamed by the script
        }
        // Only now is it known whether every byte went out: rename, or throw the rest away.
        let finish = self
            .helper(
                FINISH,
                &[full, &tmp, if failed { "discard" } else { "" }],
                "write",
            )
            .await;
        fed?;
        staged?;
        finish.map(drop)
    }

    /// Streams a regular file through `cat` run as the store's user: the kernel checks that
    /// user's permissions, and files the archive API cannot read whole (`/proc`) stream too.
    async fn read_as_user(&self, full: &str) -> Result<ByteStream> {
        use bollard::container::LogOutput;
        let req = ExecRequest {
            cmd: script(CAT, &[full]),
            user: Some(self.runs_as().to_string()),
            ..Default::default()
        };
        let mut started = start(&self.docker, &self.container, req, "read").await?;
        // Errors are known before the first byte of content: wait for content or the end.
        let mut stderr = Vec::new();
        let first = loop {
            match started.output.next().await {
                Some(Ok(LogOutput::StdOut { message })) if !message.is_empty() => {
                    break Some(message)
                }
                Some(Ok(LogOutput::StdErr { message })) => stderr.extend_from_slice(&message),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(map(e, "read", "file")),
                None => break None,
            }
        };
        let Some(first) = first else {
            let code = exit_code(&self.docker, &started.exec_id, "read").await?;
            return match code {
                0 => Ok(futures_util::stream::empty().boxed()),
                22 => Err(err(
                    ErrorKind::InvalidInput,
                    "read",
                    "the path is not a regular file (a FIFO, device or socket)",
                )),
                code => Err(status_error(code, &stderr, "read")),
            };
        };
        let docker = self.docker.clone();
        let exec_id = started.exec_id.clone();
        let rest = started.output.filter_map(|frame| async move {
            match frame {
                Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
                Ok(_) => None,
                Err(e) => Some(Err(map(e, "read", "file"))),
            }
        });
        // A failure after the first byte (the file vanished) ends the stream with an error.
        let tail = futures_util::stream::once(async move {
            match exit_code(&docker, &exec_id, "read").await {
                Ok(0) => None,
                Ok(code) => Some(Err(err(
                    ErrorKind::Unexpected,
                    "read",
                    format!("cat exited with code {code} part way"),
                ))),
                Err(e) => Some(Err(e)),
            }
        })
        .filter_map(|x| async move { x });
        Ok(futures_util::stream::once(async move { Ok(first) })
            .chain(rest)
            .chain(tail)
            .boxed())
    }

    /// Opens the archive of `path` and returns the first entry's header and the rest.
    async fn open_entry(&self, path: &str) -> Result<(TarEntry, TarReader)> {
        let stream = self
            .docker
            .download_from_container(
                &self.container,
                Some(DownloadFromContainerOptions {
                    path: path.to_string(),
                }),
            )
            .boxed();
        let mut reader = TarReader::new(stream);
        let entry = reader.next_entry().await.map_err(|e| match e {
            TarError::Engine(e) => map(e, "read", "file"),
            TarError::Format(m) => err(ErrorKind::Unexpected, "read", m),
        })?;
        Ok((entry, reader))
    }
}

fn status_error(code: i32, stderr: &[u8], op: &'static str) -> Error {
    let (kind, msg) = match code {
        2 => (ErrorKind::NotFound, "no such file or directory".to_string()),
        17 => (
            ErrorKind::AlreadyExists,
            "the path already exists".to_string(),
        ),
        20 => (
            ErrorKind::InvalidInput,
            "the path is not a directory".to_string(),
        ),
        21 => (
            ErrorKind::InvalidInput,
            "the path is a directory, not a file".to_string(),
        ),
        39 => (
            ErrorKind::Conflict,
            "the destination is a directory that is not empty".to_string(),
        ),
        5 => (
            ErrorKind::Unavailable,
            "the content did not arrive whole; the file was left as it was".to_string(),
        ),
        _ => {
            let text = String::from_utf8_lossy(stderr).trim().to_string();
            let kind =
                if text.contains("Permission denied") || text.contains("Operation not permitted") {
                    ErrorKind::PermissionDenied
                } else if text.contains("Not a directory") || text.contains("File exists") {
                    ErrorKind::AlreadyExists
                } else if text.contains("Read-only file system") {
                    ErrorKind::PermissionDenied
                } else if text.contains("File name too long") {
                    ErrorKind::InvalidInput
                } else {
                    ErrorKind::Unexpected
                };
            (
                kind,
                format!("the helper failed with exit code {code}: {text}"),
            )
        }
    };
    err(kind, op, msg)
}

fn kind_of(mode: u32) -> EntryKind {
    match mode & 0o170000 {
        0o100000 => EntryKind::File,
        0o040000 => EntryKind::Dir,
        0o120000 => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

/// Parses one `STAT_FORMAT` record (without the trailing `\x01`).
fn parse_record(record: &str) -> Option<EntryInfo> {
    let mut it = record.splitn(6, ' ');
    let mode = u32::from_str_radix(it.next()?, 16).ok()?;
    let size: u64 = it.next()?.parse().ok()?;
    let mtime: u64 = it.next()?.parse().ok()?;
    let owner = it.next()?.to_string();
    let group = it.next()?.to_string();
    let name = it.next()?;
    let mut e = EntryInfo::new(name, kind_of(mode));
    e.owner = Some(owner);
    e.group = Some(group);
    e.size = size;
    e.mode = mode & 0o7777;
    e.modified = Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
    Some(e)
}

#[async_trait]
impl FileStore for DockerFiles {
    async fn read_stream(&self, path: &str) -> Result<ByteStream> {
        if self.user.is_some() {
            let full = self.absolute(path, "read")?;
            return self.read_as_user(&full).await;
        }
        let mut target = self.absolute(path, "read")?;
        for _ in 0..MAX_LINKS {
            let (entry, reader) = self.open_entry(&target).await?;
            match entry.kind {
                b'0' | 0 | b'7' => return Ok(reader.into_body(entry.size)),
                b'5' => {
                    return Err(err(
                        ErrorKind::InvalidInput,
                        "read",
                        "the path is a directory, not a file",
                    ))
                }
                b'2' => {
                    let link = entry.link.unwrap_or_default();
                    let joined = if link.starts_with('/') {
                        link
                    } else {
                        join(parent(&target), &link)
                    };
                    target = self.absolute(&joined, "read")?;
                }
                other => {
                    return Err(err(
                        ErrorKind::InvalidInput,
                        "read",
                        format!(
                            "the path is not a regular file (tar type {:?})",
                            other as char
                        ),
                    ))
                }
            }
        }
        Err(err(
            ErrorKind::InvalidInput,
            "read",
            "too many levels of symbolic links",
        ))
    }

    async fn write_stream(&self, path: &str, mut content: ByteStream) -> Result<()> {
        let full = self.absolute(path, "write")?;
        if full == "/" {
            return Err(err(ErrorKind::InvalidInput, "write", "cannot write to /"));
        }
        // Up to SPOOL_AT the whole content is in memory and its size known, so one exec checks
        // it arrived whole and renames; past it, the rename waits for the end of the stream.
        let mut memory = BytesMut::new();
        while let Some(chunk) = content.next().await {
            let chunk = chunk?;
            memory.extend_from_slice(&chunk);
            if memory.len() > SPOOL_AT {
                return self
                    .write_by_exec(&full, memory.freeze(), content, None)
                    .await;
            }
        }
        let size = memory.len() as u64;
        let empty = futures_util::stream::empty().boxed();
        self.write_by_exec(&full, memory.freeze(), empty, Some(size))
            .await
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let full = self.absolute(path, "list")?;
        let depth = depth.clamp(1, 4096).to_string();
        let out = self
            .helper(LIST, &[&full, &depth, STAT_FORMAT], "list")
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (records, links) = text.split_once("\u{2}\n").unwrap_or((&text, ""));
        let mut entries = Vec::new();
        for record in records.split("\u{1}\n").filter(|r| !r.is_empty()) {
            let e = parse_record(record).ok_or_else(|| {
                err(
                    ErrorKind::Unexpected,
                    "list",
                    format!("cannot parse {record:?}"),
                )
            })?;
            entries.push(e);
        }
        for pair in links.split("\u{1}\n").filter(|r| !r.is_empty()) {
            if let Some((link, target)) = pair.split_once('\u{1}') {
                if let Some(e) = entries.iter_mut().find(|e| e.path == link) {
                    e.symlink_target = Some(target.to_string());
                }
            }
        }
        sort_entries(&mut entries);
        Ok(entries)
    }

    async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let full = self.absolute(path, "stat")?;
        let out = self.helper(STAT, &[&full, STAT_FORMAT], "stat").await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (record, rest) = text.split_once("\u{1}\n").unwrap_or((&text, ""));
        let mut e = parse_record(record).ok_or_else(|| {
            err(
                ErrorKind::Unexpected,
                "stat",
                format!("cannot parse {record:?}"),
            )
        })?;
        if e.kind == EntryKind::Symlink {
            e.symlink_target = Some(rest.trim_end_matches('\n').to_string());
        }
        Ok(e)
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let full = self.absolute(path, "mkdir")?;
        self.helper(MKDIR, &[&full], "mkdir").await.map(drop)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let src = self.absolute(from, "rename")?;
        let dst = self.absolute(to, "rename")?;
        self.helper(RENAME, &[&src, &dst], "rename").await.map(drop)
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let full = self.absolute(path, "remove")?;
        if full == "/" {
            return Err(err(
                ErrorKind::InvalidInput,
                "remove",
                "refusing to remove /",
            ));
        }
        self.helper(REMOVE, &[&full], "remove").await.map(drop)
    }
}

struct TarEntry {
    kind: u8,
    size: u64,
    link: Option<String>,
}

enum TarError {
    Engine(bollard::errors::Error),
    Format(String),
}

/// Reads the first entry of a tar stream without holding more than a chunk in memory.
struct TarReader {
    stream: BoxStream<'static, std::result::Result<Bytes, bollard::errors::Error>>,
    buf: BytesMut,
}

impl TarReader {
    fn new(stream: BoxStream<'static, std::result::Result<Bytes, bollard::errors::Error>>) -> Self {
        TarReader {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn fill(&mut self, n: usize) -> std::result::Result<(), TarError> {
        while self.buf.len() < n {
            match self.stream.next().await {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(TarError::Engine(e)),
                None => return Err(TarError::Format("the archive ended early".into())),
            }
        }
        Ok(())
    }

    async fn next_entry(&mut self) -> std::result::Result<TarEntry, TarError> {
        let mut long_link: Option<String> = None;
        loop {
            self.fill(512).await?;
            let block = self.buf.split_to(512);
            let size =
                octal(&block[124..136]).ok_or_else(|| TarError::Format("bad size field".into()))?;
            let kind = block[156];
            let padded = size.div_ceil(512) * 512;
            match kind {
                // PAX headers and GNU long names: read or skip their content, then go on.
                b'x' | b'g' | b'L' | b'K' => {
                    self.fill(padded as usize).await?;
                    let data = self.buf.split_to(padded as usize);
                    let data = &data[..size as usize];
                    if kind == b'K' {
                        long_link = Some(
                            String::from_utf8_lossy(data)
                                .trim_end_matches('\0')
                                .to_string(),
                        );
                    } else if kind == b'x' {
                        for record in String::from_utf8_lossy(data).lines() {
                            if let Some(v) = record.split_once("linkpath=").map(|(_, v)| v) {
                                long_link = Some(v.to_string());
                            }
                        }
                    }
                }
                _ => {
                    let link = long_link.or_else(|| {
                        let raw = &block[157..257];
                        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                        (end > 0).then(|| String::from_utf8_lossy(&raw[..end]).into_owned())
                    });
                    return Ok(TarEntry { kind, size, link });
                }
            }
        }
    }

    /// The content of the current entry, as a stream of exactly `size` bytes.
    fn into_body(self, size: u64) -> ByteStream {
        let state = (self, size);
        futures_util::stream::unfold(state, |(mut r, left)| async move {
            if left == 0 {
                return None;
            }
            if r.buf.is_empty() {
                match r.stream.next().await {
                    Some(Ok(b)) => r.buf.extend_from_slice(&b),
                    Some(Err(e)) => return Some((Err(map(e, "read", "file")), (r, 0))),
                    None => {
                        return Some((
                            Err(err(
                                ErrorKind::Unavailable,
                                "read",
                                "the archive ended early",
                            )),
                            (r, 0),
                        ))
                    }
                }
            }
            let take = (left as usize).min(r.buf.len());
            let chunk = r.buf.split_to(take).freeze();
            Some((Ok(chunk), (r, left - take as u64)))
        })
        .boxed()
    }
}

/// Parses a tar numeric field: octal text, or GNU base-256.
fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(n);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_records() {
        let e = parse_record("81a4 12 1700000000 user users /tmp/a b.txt").unwrap();
        assert_eq!(
            (e.kind, e.size, e.mode, e.name.as_str()),
            (EntryKind::File, 12, 0o644, "a b.txt")
        );
        assert_eq!(
            (e.owner.as_deref(), e.group.as_deref()),
            (Some("user"), Some("users"))
        );
        assert_eq!(
            parse_record("41ed 4096 1 root root /d").unwrap().kind,
            EntryKind::Dir
        );
        assert_eq!(
            parse_record("a1ff 3 1 root root /l").unwrap().kind,
            EntryKind::Symlink
        );
        assert!(parse_record("81a4 12 1700000000 /missing-owner").is_none());
    }

    #[test]
    fn tar_numbers() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"\x80\0\0\0\0\0\0\x01\0\0\0\0"), Some(1 << 32));
    }
}
