//! [`DockerFiles`]: a container's files, through the archive (tar) API and small helpers.
//!
//! Reads and writes stream through the engine's archive API (one request each); metadata
//! operations run POSIX `sh`/`find`/`stat` helpers, which both GNU and busybox provide.

use async_trait::async_trait;
use bollard::container::{DownloadFromContainerOptions, UploadToContainerOptions};
use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use runtime_core::{
    sort_entries, ByteStream, EntryInfo, EntryKind, Error, ErrorKind, FileStore, Result,
};
use runtime_filestore::{clean_absolute, join, parent};

use crate::error::{err, map};
use crate::exec::{exit_code, run_helper, script, start, Collected, ExecRequest};

/// Content up to this size is written from memory in one archive request; more streams
/// through `cat` in the container.
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

const WRITE: &str = r#"if [ -d "$1" ]; then exit 21; fi
mkdir -p -- "$(dirname -- "$1")" && cat > "$1""#;

const REMOVE: &str = r#"if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 2; fi
rm -rf -- "$1""#;

/// `stat -c` format: raw mode (hex), size, mtime, owner, group, name, then a record end of `\x01`.
const STAT_FORMAT: &str = "%f %s %Y %U %G %n\u{1}";

/// The files of one container.
#[derive(Clone)]
pub struct DockerFiles {
    docker: Docker,
    container: String,
    workdir: String,
}

impl std::fmt::Debug for DockerFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerFiles")
            .field("container", &self.container)
            .finish()
    }
}

impl DockerFiles {
    pub(crate) fn new(docker: Docker, container: String, workdir: String) -> Self {
        DockerFiles {
            docker,
            container,
            workdir,
        }
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

    async fn helper(
        &self,
        body: &str,
        args: &[&str],
        op: &'static str,
        path: &str,
    ) -> Result<Collected> {
        let out = run_helper(&self.docker, &self.container, script(body, args), None, op).await?;
        match out.code {
            0 => Ok(out),
            code => Err(status_error(code, &out, op, path)),
        }
    }

    /// Streams content of unknown size into `cat` in the container (memory stays bounded).
    async fn write_by_exec(
        &self,
        full: &str,
        head: Bytes,
        mut rest: ByteStream,
        path: &str,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let req = ExecRequest {
            cmd: script(WRITE, &[full]),
            user: Some("root".into()),
            stdin: true,
            ..Default::default()
        };
        let mut started = start(&self.docker, &self.container, req, "write").await?;
        let fed: Result<()> = async {
            started.input.write_all(&head).await?;
            while let Some(chunk) = rest.next().await {
                started.input.write_all(&chunk?).await?;
            }
            started.input.shutdown().await?;
            Ok(())
        }
        .await;
        let mut stderr = Vec::new();
        while let Some(frame) = started.output.next().await {
            if let Ok(bollard::container::LogOutput::StdErr { message }) = frame {
                stderr.extend_from_slice(&message);
            }
        }
        let code = exit_code(&self.docker, &started.exec_id, "write").await?;
        fed.map_err(|e| e.with_context("path", path))?;
        match code {
            0 => Ok(()),
            code => Err(status_error(
                code,
                &Collected {
                    stdout: Vec::new(),
                    stderr,
                    code,
                },
                "write",
                path,
            )),
        }
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
            .map_err(move |e| e)
            .boxed();
        let mut reader = TarReader::new(stream);
        let entry = reader.next_entry().await.map_err(|e| match e {
            TarError::Engine(e) => {
                let e = map(e, "read", "file");
                e.with_context("path", path)
            }
            TarError::Format(m) => err(ErrorKind::Unexpected, "read", m).with_context("path", path),
        })?;
        Ok((entry, reader))
    }
}

fn status_error(code: i32, out: &Collected, op: &'static str, path: &str) -> Error {
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
        _ => {
            let text = out.stderr_text();
            let kind = if text.contains("Permission denied") {
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
    err(kind, op, msg).with_context("path", path)
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
        let mut target = self.absolute(path, "read")?;
        for _ in 0..MAX_LINKS {
            let (entry, reader) = self
                .open_entry(&target)
                .await
                .map_err(|e| e.with_context("path", path))?;
            match entry.kind {
                b'0' | 0 | b'7' => return Ok(reader.into_body(entry.size)),
                b'5' => {
                    return Err(err(
                        ErrorKind::InvalidInput,
                        "read",
                        "the path is a directory, not a file",
                    )
                    .with_context("path", path))
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
                    )
                    .with_context("path", path))
                }
            }
        }
        Err(err(
            ErrorKind::InvalidInput,
            "read",
            "too many levels of symbolic links",
        )
        .with_context("path", path))
    }

    async fn write_stream(&self, path: &str, mut content: ByteStream) -> Result<()> {
        let full = self.absolute(path, "write")?;
        if full == "/" {
            return Err(err(ErrorKind::InvalidInput, "write", "cannot write to /"));
        }
        let dir = parent(&full).to_string();
        let name = full.rsplit('/').next().unwrap_or_default().to_string();

        // Small content goes in one archive request; past SPOOL_AT the size is not known up
        // front (a tar header needs it), so the rest streams into `cat` in the container.
        let mut memory = BytesMut::new();
        let mut size: u64 = 0;
        while let Some(chunk) = content.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if memory.len() + chunk.len() > SPOOL_AT {
                memory.extend_from_slice(&chunk);
                return self
                    .write_by_exec(&full, memory.freeze(), content, path)
                    .await;
            }
            memory.extend_from_slice(&chunk);
        }
        let memory = memory.freeze();
        let header = tar_header(&name, size)?;

        let mut made_parent = false;
        let result = loop {
            let body = tar_body(header.clone(), memory.clone(), size);
            let upload = self
                .docker
                .upload_to_container_streaming(
                    &self.container,
                    Some(UploadToContainerOptions {
                        path: dir.clone(),
                        no_overwrite_dir_non_dir: "true".to_string(),
                    }),
                    body,
                )
                .await;
            match upload {
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) if !made_parent => {
                    made_parent = true;
                    self.helper(MKDIR, &[&dir], "write", path)
                        .await
                        .or_else(|e| {
                            if e.kind() == ErrorKind::AlreadyExists {
                                Ok(Collected {
                                    stdout: vec![],
                                    stderr: vec![],
                                    code: 0,
                                })
                            } else {
                                Err(e)
                            }
                        })?;
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 400 | 500,
                    message,
                }) if message.contains("directory") => {
                    break Err(err(
                        ErrorKind::InvalidInput,
                        "write",
                        format!("cannot write a file there: {message}"),
                    )
                    .with_context("path", path));
                }
                Err(e) => break Err(map(e, "write", "directory").with_context("path", path)),
                Ok(()) => break Ok(()),
            }
        };
        result
    }

    async fn list(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let full = self.absolute(path, "list")?;
        let depth = depth.clamp(1, 4096).to_string();
        let out = self
            .helper(LIST, &[&full, &depth, STAT_FORMAT], "list", path)
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
                .with_context("path", path)
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
        let out = self
            .helper(STAT, &[&full, STAT_FORMAT], "stat", path)
            .await?;
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
        self.helper(MKDIR, &[&full], "mkdir", path).await.map(drop)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let src = self.absolute(from, "rename")?;
        let dst = self.absolute(to, "rename")?;
        self.helper(RENAME, &[&src, &dst], "rename", from)
            .await
            .map(drop)
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
        self.helper(REMOVE, &[&full], "remove", path)
            .await
            .map(drop)
    }
}

/// The tar header block(s) for one regular file (long names get a GNU long-name entry).
fn tar_header(name: &str, size: u64) -> Result<Bytes> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let mut builder = tar::Builder::new(Vec::new());
    // The content follows separately: append nothing, which writes exactly the header(s).
    builder
        .append_data(&mut header, name, std::io::empty())
        .map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                "write",
                format!("bad file name: {e}"),
            )
        })?;
    // Not `into_inner`: that would end the archive with its two zero blocks.
    Ok(Bytes::from(builder.get_ref().clone()))
}

/// header, content, padding to 512, and the two zero blocks that end an archive.
fn tar_body(header: Bytes, content: Bytes, size: u64) -> BoxStream<'static, Bytes> {
    let pad = ((512 - size % 512) % 512) as usize;
    let trailer = Bytes::from(vec![0u8; pad + 1024]);
    futures_util::stream::iter([header, content, trailer]).boxed()
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

    #[test]
    fn header_for_long_names() {
        let name = "x".repeat(200);
        let h = tar_header(&name, 5).unwrap();
        assert_eq!(h.len() % 512, 0);
        assert!(h.len() > 512, "a long-name entry precedes the header");
        assert!(h.len() < 2048, "no end-of-archive blocks: {}", h.len());
    }
}
