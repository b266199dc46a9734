//! The E2B wire protocol, as the official SDKs speak it: control-plane models
//! ([`api`]), envd messages in proto3 JSON ([`envd`]), and Connect framing ([`connect`]).
//!
//! Shared by the E2B client (`sandkit-e2b`) and the E2B-compatible server (`e2b-local`) so the
//! two cannot drift apart. Nothing here does I/O.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod api;
pub mod connect;
pub mod envd;
#[doc(hidden)]
pub mod fuzzing;
pub mod json;

pub use api::{decode_metadata_filter, encode_metadata_filter, CLIENT_ID};
pub use connect::{
    encode_end_stream, encode_envelope, encode_message, ConnectError, EndStream, Envelope,
    EnvelopeDecoder, FramingError, FLAG_END_STREAM, STREAM_CONTENT_TYPE, UNARY_CONTENT_TYPE,
};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Header names.
pub mod headers {
    /// Control-plane API key.
    pub const API_KEY: &str = "x-api-key";
    /// envd access token.
    pub const ACCESS_TOKEN: &str = "x-access-token";
    /// Routes envd traffic on a shared host.
    pub const SANDBOX_ID: &str = "e2b-sandbox-id";
    /// Routes envd traffic on a shared host.
    pub const SANDBOX_PORT: &str = "e2b-sandbox-port";
    /// Connect deadline in milliseconds.
    pub const CONNECT_TIMEOUT: &str = "connect-timeout-ms";
    /// Keepalive interval the client asks for, in seconds.
    pub const KEEPALIVE: &str = "keepalive-ping-interval";
    /// Next page of a list.
    pub const NEXT_TOKEN: &str = "x-next-token";
    /// Retry hint.
    pub const SHOULD_RETRY: &str = "should-retry";
}

/// The signature of a file URL (`download_url`/`upload_url`):
/// `v1_` + base64(sha256(`"path:operation:user:token[:expiration]"`)), unpadded.
pub fn file_signature(
    path: &str,
    operation: &str,
    user: &str,
    token: &str,
    expiration: Option<u64>,
) -> String {
    let mut raw = format!("{path}:{operation}:{user}:{token}");
    if let Some(e) = expiration {
        raw.push_str(&format!(":{e}"));
    }
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The id the SDKs use for the one sandbox of debug mode (`E2B_DEBUG=true`).
pub const DEBUG_SANDBOX_ID: &str = "debug_sandbox_id";

/// Compares two secrets in constant time.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A per-sandbox token derived from a server secret: stable across restarts of the server,
/// nothing to store. Hex of sha256("secret:sandbox_id:purpose"), 32 characters.
pub fn derive_token(secret: &str, sandbox_id: &str, purpose: &str) -> String {
    let digest = Sha256::digest(format!("{secret}:{sandbox_id}:{purpose}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_shape() {
        let s = file_signature("/home/user/f.txt", "read", "user", "tok", None);
        assert!(s.starts_with("v1_") && !s.ends_with('='));
        assert_ne!(
            s,
            file_signature("/home/user/f.txt", "write", "user", "tok", None)
        );
        assert_ne!(
            s,
            file_signature("/home/user/f.txt", "read", "user", "tok", Some(1))
        );
    }

    #[test]
    fn tokens() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "ab"));
        let t = derive_token("k", "sbx1", "envd");
        assert_eq!(t.len(), 32);
        assert_eq!(t, derive_token("k", "sbx1", "envd"));
        assert_ne!(t, derive_token("k", "sbx2", "envd"));
    }
}
