//! Connection settings, as the official SDKs read them.

use std::fmt;
use std::time::Duration;

use sandkit_core::{Error, ErrorKind, Result};

/// Domains whose envd traffic goes through the shared `sandbox.<domain>` host (SDK 2.63).
const SHARED_HOST_DOMAINS: &[&str] = &[
    "e2b.app",
    "e2b.dev",
    "e2b.pro",
    "e2b-staging.dev",
    "e2b-tango.dev",
    "e2b-juliett.dev",
    "foxtrot-2.e2b.dev",
];

pub use sandkit_e2b_protocol::DEBUG_SANDBOX_ID;

/// Where and how to reach E2B. Built by [`E2bRuntimeBuilder`](crate::E2bRuntimeBuilder).
#[derive(Clone)]
pub(crate) struct E2bConfig {
    pub(crate) api_key: String,
    pub(crate) domain: String,
    pub(crate) api_url: Option<String>,
    pub(crate) sandbox_url: Option<String>,
    pub(crate) debug: bool,
    pub(crate) template: String,
    pub(crate) request_timeout: Duration,
    /// The time to live of a sandbox whose spec sets none.
    pub(crate) time_to_live: Duration,
    /// The network policy of a sandbox whose spec sets none.
    pub(crate) network_policy: Option<sandkit_core::NetworkPolicy>,
}

impl fmt::Debug for E2bConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2bConfig")
            .field("api_key", &if self.api_key.is_empty() { "" } else { "***" })
            .field("domain", &self.domain)
            .field("api_url", &self.api_url)
            .field("sandbox_url", &self.sandbox_url)
            .field("debug", &self.debug)
            .field("template", &self.template)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl E2bConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.api_key.is_empty() {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                "no E2B API key: set E2B_API_KEY (or [e2b] api_key in sandkit.toml); get one at \
                 https://e2b.dev/dashboard, or run a local server with `e2b-local`",
            )
            .with_operation("connect"));
        }
        Ok(())
    }

    /// The control-plane base URL.
    pub(crate) fn api_url(&self) -> String {
        match &self.api_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if self.debug => "http://localhost:3000".into(),
            None => format!("https://api.{}", self.domain),
        }
    }

    /// The envd base URL of a sandbox (SDK `get_sandbox_url`).
    pub(crate) fn envd_url(&self, sandbox_id: &str, domain: Option<&str>) -> String {
        if let Some(u) = &self.sandbox_url {
            return u.trim_end_matches('/').to_string();
        }
        if self.debug {
            return "http://localhost:49983".into();
        }
        let domain = domain.unwrap_or(&self.domain);
        if SHARED_HOST_DOMAINS.contains(&domain) {
            format!("https://sandbox.{domain}")
        } else {
            format!("https://49983-{sandbox_id}.{domain}")
        }
    }

    /// `host:port` for a port inside a sandbox (SDK `get_host`).
    pub(crate) fn host(&self, sandbox_id: &str, domain: Option<&str>, port: u16) -> String {
        if self.debug {
            return format!("localhost:{port}");
        }
        format!("{port}-{sandbox_id}.{}", domain.unwrap_or(&self.domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> E2bConfig {
        E2bConfig {
            api_key: "k".into(),
            domain: "e2b.app".into(),
            api_url: None,
            sandbox_url: None,
            debug: false,
            template: "base".into(),
            request_timeout: Duration::from_secs(60),
            time_to_live: Duration::from_secs(300),
            network_policy: None,
        }
    }

    #[test]
    fn urls_follow_the_sdk() {
        let c = config();
        assert_eq!(c.api_url(), "https://api.e2b.app");
        assert_eq!(c.envd_url("abc", None), "https://sandbox.e2b.app");
        assert_eq!(
            c.envd_url("abc", Some("custom.dev")),
            "https://49983-abc.custom.dev"
        );
        assert_eq!(c.host("abc", None, 8080), "8080-abc.e2b.app");
        let d = E2bConfig {
            debug: true,
            ..config()
        };
        assert_eq!(d.api_url(), "http://localhost:3000");
        assert_eq!(d.envd_url("x", None), "http://localhost:49983");
        assert_eq!(d.host("x", None, 8080), "localhost:8080");
        let l = E2bConfig {
            api_url: Some("http://127.0.0.1:3000/".into()),
            sandbox_url: Some("http://127.0.0.1:49983".into()),
            ..config()
        };
        assert_eq!(l.api_url(), "http://127.0.0.1:3000");
        assert_eq!(l.envd_url("x", Some("e2b.app")), "http://127.0.0.1:49983");
    }

    #[test]
    fn missing_key_is_unauthenticated_and_debug_hides_it() {
        let c = E2bConfig {
            api_key: String::new(),
            ..config()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(e.to_string().contains("E2B_API_KEY"));
        let c = E2bConfig {
            api_key: "e2b_secret".into(),
            ..config()
        };
        assert!(!format!("{c:?}").contains("e2b_secret"));
    }
}
