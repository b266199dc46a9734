//! The Host check: a browser page cannot reach the server through a domain it controls
//! (DNS rebinding).
//!
//! A request is served only when the host it names (the `Host` header, or the authority of an
//! HTTP/2 request) is an IP address, `localhost` or a name under `.localhost`, or a name the
//! operator allowed. A rebinding attack needs a domain name of the attacker's that resolves to
//! this machine; such a name is never on that list.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use crate::state::State;

/// Whether `host` (as sent, maybe with a port) may be served.
pub(crate) fn allowed(host: &str, extra: &[String]) -> bool {
    let name = hostname(host).to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return false;
    }
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || extra
            .iter()
            .any(|e| e.trim_end_matches('.').eq_ignore_ascii_case(name))
}

/// The name part of `host[:port]`, `[v6]:port` or a bare IPv6 address.
fn hostname(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    if host.matches(':').count() > 1 {
        return host; // a bare IPv6 address
    }
    host.split(':').next().unwrap_or("")
}

/// Middleware: refuses a request whose host is not [`allowed`] (a request naming no host at
/// all, as HTTP/1.0 allows, passes: browsers always name one).
pub(crate) async fn check(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    match host {
        Some(h) if allowed(&h, &state.config.allowed_hosts) => next.run(request).await,
        Some(h) => {
            tracing::warn!(host = %h, "refused a request for a host name that is not allowed");
            crate::http::api_error(
                StatusCode::FORBIDDEN,
                format!(
                    "host '{h}' is not served here: use an IP address or localhost, or start \
                     the server with --allowed-host {}",
                    hostname(&h)
                ),
            )
        }
        // HTTP/1.0 without a Host header: no browser sends that, so it is no rebinding.
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn ip_addresses_and_localhost_pass() {
        for h in [
            "127.0.0.1:49983",
            "127.0.0.1",
            "localhost:3000",
            "LOCALHOST",
            "localhost.",
            "49983-abc.localhost:8080",
            "[::1]:3000",
            "::1",
            "10.1.2.3:3000",
        ] {
            assert!(allowed(h, &[]), "{h}");
        }
    }

    #[test]
    fn other_names_are_refused_unless_allowed() {
        for h in [
            "evil.example:49983",
            "localhost.evil.example",
            "127.0.0.1.nip.io:3000",
            "",
            ":3000",
        ] {
            assert!(!allowed(h, &[]), "{h}");
        }
        assert!(allowed(
            "sandbox.internal:3000",
            &["sandbox.internal".to_string()]
        ));
        assert!(!allowed(
            "other.internal:3000",
            &["sandbox.internal".to_string()]
        ));
    }
}
