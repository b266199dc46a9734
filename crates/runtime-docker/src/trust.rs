//! The network guard's certificate authority in a sandbox's trust, for request rules: HTTPS
//! to a domain with rules is answered by the guard with a certificate it signs (see the
//! agent's `netguard::intercept`), so the sandbox must trust the guard's authority.
//!
//! The authority's certificate is appended to the sandbox's system bundle (Debian's path,
//! which OpenSSL, curl, Python's `ssl` and git read by default) and written on its own to
//! [`CA_FILE`]; a sandbox made with rules also gets the usual variables naming them, so
//! tools with bundles of their own (`requests`, Node) trust it too. Only the certificate goes
//! in: the key stays in the guard.

use bollard::container::{DownloadFromContainerOptions, UploadToContainerOptions};
use bollard::Docker;
use futures_util::StreamExt;
use sandkit_core::{ErrorKind, Result};

use crate::error::{err, map};

/// The system bundle the certificate is appended to.
pub(crate) const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The certificate alone.
pub(crate) const CA_FILE: &str = "/etc/sandkit/egress-ca.pem";
/// The largest bundle read (Debian's is about 220 KiB): code in a sandbox can grow the file,
/// and it is read into the backend's memory.
const MAX_BUNDLE: usize = 8 << 20;

/// The variables a sandbox made with request rules gets, unless `set` already names them.
pub(crate) fn env(set: &dyn Fn(&str) -> bool) -> Vec<String> {
    [
        ("SSL_CERT_FILE", BUNDLE),
        ("REQUESTS_CA_BUNDLE", BUNDLE),
        ("CURL_CA_BUNDLE", BUNDLE),
        ("NODE_EXTRA_CA_CERTS", CA_FILE),
    ]
    .into_iter()
    .filter(|(k, _)| !set(k))
    .map(|(k, v)| format!("{k}={v}"))
    .collect()
}

/// Adds `ca` (PEM) to the trust of container `container` (made or running): once, whatever
/// the number of calls.
pub(crate) async fn install(docker: &Docker, container: &str, ca: &str) -> Result<()> {
    let ca = ca.trim();
    let bundle = read_file(docker, container, BUNDLE).await?;
    if bundle
        .as_deref()
        .is_some_and(|b| String::from_utf8_lossy(b).contains(ca))
    {
        return Ok(());
    }
    let mut combined = bundle.unwrap_or_default();
    if !combined.is_empty() && !combined.ends_with(b"\n") {
        combined.push(b'\n');
    }
    combined.extend_from_slice(ca.as_bytes());
    combined.push(b'\n');
    let tar = (|| -> std::io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        b.append_data(&mut dir, "etc/sandkit/", std::io::empty())?;
        for (path, content) in [
            (&BUNDLE[1..], combined.as_slice()),
            (&CA_FILE[1..], format!("{ca}\n").as_bytes()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, path, content)?;
        }
        b.into_inner()
    })()
    .map_err(|e| err(ErrorKind::Unexpected, "network policy", e.to_string()))?;
    docker
        .upload_to_container(
            container,
            Some(UploadToContainerOptions {
                path: "/".to_string(),
                ..Default::default()
            }),
            tar.into(),
        )
        .await
        .map_err(|e| {
            map(e, "network policy", "sandbox").with_context(
                "detail",
                "cannot add the network guard's certificate authority",
            )
        })
}

/// The content of regular file `path` in `container`, `None` when there is none.
async fn read_file(docker: &Docker, container: &str, path: &str) -> Result<Option<Vec<u8>>> {
    let mut stream =
        docker.download_from_container(container, Some(DownloadFromContainerOptions { path }));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if tar.len() + c.len() > MAX_BUNDLE => {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "network policy",
                    format!(
                        "the sandbox's {path} is over {} MiB; the network guard's certificate \
                         authority is not added to it",
                        MAX_BUNDLE >> 20
                    ),
                ))
            }
            Ok(c) => tar.extend_from_slice(&c),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(map(e, "network policy", "sandbox")),
        }
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries = archive
        .entries()
        .map_err(|e| err(ErrorKind::Unexpected, "network policy", e.to_string()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| err(ErrorKind::Unexpected, "network policy", e.to_string()))?;
        if entry.header().entry_type().is_file() {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut out)
                .map_err(|e| err(ErrorKind::Unexpected, "network policy", e.to_string()))?;
            return Ok(Some(out));
        }
    }
    Ok(None)
}
