//! The port proxy: what the SDK's `get_host(port)` names, `<port>-<sandbox id>.<domain>`,
//! served on a listener of its own. The `Host` of each connection's first request picks the
//! sandbox and the port; the connection is then joined to that port inside the sandbox
//! (through the backend's `Sandbox::get_host`), WebSocket upgrades included.
//!
//! - Only sandboxes of this server's key are served; any other name answers `502`, as for a
//!   sandbox that does not exist.
//! - A sandbox made with `allowPublicTraffic=false` is served only to requests carrying its
//!   traffic access token in `e2b-traffic-access-token` (else `403`), as on E2B.
//! - `maskRequestHost` replaces the `Host` the sandbox sees (`${PORT}` becomes the port; the
//!   original goes in `X-Forwarded-Host`). Such a connection carries one request
//!   (`Connection: close`), so that every request is rewritten.
//!
//! The domain is `localhost:<port of this listener>`: names under `.localhost` reach loopback
//! in browsers and curl without any DNS; other clients connect to the listener and send the
//! name as `Host`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::state::{State, Whose};

/// Hidden metadata: set on sandboxes whose ports need the traffic access token.
pub(crate) const PRIVATE_KEY: &str = "sandkit.e2b.private_ports";
/// Hidden metadata: the `maskRequestHost` of a sandbox.
pub(crate) const MASK_KEY: &str = "sandkit.e2b.mask_host";
/// The header E2B's proxy reads the traffic access token from.
pub(crate) const TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// How long a client may take to send its first request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request head read.
const MAX_HEAD: usize = 64 << 10;

/// Serves the listener until `stop` says so.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy(stream, &state).await {
                debug!(%peer, error = %e, "port proxy connection ended");
            }
        });
    }
}

/// A refusal, as a small HTTP response.
async fn refuse(mut client: TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!(
        "{{\"code\":{},\"message\":{}}}",
        &status[..3],
        serde_json::json!(message)
    );
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}

async fn proxy(mut client: TcpStream, state: &State) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let end = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(Some(end + 4));
            }
            if buf.len() > MAX_HEAD {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or(Ok(None))?;
    let Some(end) = end else {
        return refuse(client, "400 Bad Request", "no request head").await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let host = header("host").unwrap_or_default();
    let Some((port, id)) = route(&host) else {
        return refuse(
            client,
            "400 Bad Request",
            "the Host must name <port>-<sandbox id>.<domain>",
        )
        .await;
    };
    let info = match state.info_for(&id, Whose::AnyKey).await {
        Ok(i) => i,
        Err(_) => {
            return refuse(
                client,
                "502 Bad Gateway",
                &format!("The sandbox {id} was not found"),
            )
            .await
        }
    };
    if info.metadata.get(PRIVATE_KEY).is_some_and(|v| v == "1") {
        let sent = header(TOKEN_HEADER).unwrap_or_default();
        if !sandkit_e2b_protocol::secrets_equal(&sent, &state.traffic_token(&id)) {
            return refuse(
                client,
                "403 Forbidden",
                &format!("the sandbox's ports need its traffic access token in {TOKEN_HEADER}"),
            )
            .await;
        }
    }
    let served = match state.served_for(&id, Whose::AnyKey).await {
        Ok(s) => s,
        Err(e) => return refuse(client, "502 Bad Gateway", e.message()).await,
    };
    let addr = match served.sandbox().get_host(port).await {
        Ok(a) => a,
        Err(e) => return refuse(client, "502 Bad Gateway", e.message()).await,
    };
    let mut upstream = match TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(_) => {
            return refuse(
                client,
                "502 Bad Gateway",
                &format!("nothing listens on port {port} in sandbox {id}"),
            )
            .await
        }
    };
    let first = match info.metadata.get(MASK_KEY) {
        Some(mask) => masked(&head, &host, &mask.replace("${PORT}", &port.to_string())),
        None => head,
    };
    upstream.write_all(first.as_bytes()).await?;
    upstream.write_all(&buf[end..]).await?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Until either side hangs up, or the sandbox's key is revoked.
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            copied?;
        }
        _ = served.streams_ended() => {}
    }
    Ok(())
}

/// `<port>-<id>.<rest>` (a port and the sandbox id), from a `Host` value.
fn route(host: &str) -> Option<(u16, String)> {
    let first = host.split('.').next()?;
    let (port, id) = first.split_once('-')?;
    let port = port.parse().ok()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| (port, id.to_string()))
}

/// The head with `Host` replaced by `mask`, the original in `X-Forwarded-Host`, and, unless
/// the request upgrades the connection, `Connection: close` so that the next request comes on
/// a new connection and is rewritten too.
fn masked(head: &str, original: &str, mask: &str) -> String {
    let upgrade = head
        .split("\r\n")
        .any(|l| l.to_ascii_lowercase().starts_with("upgrade:"));
    let mut out = String::with_capacity(head.len() + 64);
    for (i, line) in head.trim_end_matches("\r\n").split("\r\n").enumerate() {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0 && (name == "host" || name == "x-forwarded-host") {
            continue;
        }
        if i > 0 && name == "connection" && !upgrade {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if i == 0 {
            out.push_str(&format!("Host: {mask}\r\nX-Forwarded-Host: {original}\r\n"));
            if !upgrade {
                out.push_str("Connection: close\r\n");
            }
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_host() {
        assert_eq!(
            route("8000-abc123.localhost:3001"),
            Some((8000, "abc123".into()))
        );
        assert_eq!(route("8000-abc.e2b.app"), Some((8000, "abc".into())));
        assert_eq!(route("localhost:3001"), None);
        assert_eq!(route("x-abc.localhost"), None);
        assert_eq!(route("80-a/b.localhost"), None);
    }

    #[test]
    fn masking_rewrites_host_and_closes() {
        let head = "GET / HTTP/1.1\r\nHost: 80-a.localhost:1\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n";
        let m = masked(head, "80-a.localhost:1", "app.test:80");
        assert_eq!(
            m,
            "GET / HTTP/1.1\r\nHost: app.test:80\r\nX-Forwarded-Host: 80-a.localhost:1\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        let ws = "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(masked(ws, "h", "m").contains("Connection: Upgrade"));
    }
}
