//! Connect protocol framing: envelopes, the end-of-stream message, error codes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sandkit_core::ErrorKind;
use serde::{Deserialize, Serialize};

/// Envelope flag: the payload is compressed (never used by the SDKs).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: this is the end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Content type of Connect streams with the JSON codec (exactly this, no parameters).
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";
/// Content type of unary Connect calls with the JSON codec.
pub const UNARY_CONTENT_TYPE: &str = "application/json";
/// Largest envelope accepted (envd's default read limit is similar).
pub const MAX_ENVELOPE: usize = 64 << 20;

/// One enveloped message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Flags: [`FLAG_COMPRESSED`], [`FLAG_END_STREAM`].
    pub flags: u8,
    /// The JSON payload.
    pub payload: Bytes,
}

impl Envelope {
    /// Whether this is the end-of-stream message.
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Frames a payload: `flags:u8 | length:u32 BE | payload`.
pub fn encode_envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Frames a message as JSON.
pub fn encode_message<T: Serialize>(message: &T) -> Bytes {
    let json = serde_json::to_vec(message).expect("messages serialize");
    encode_envelope(0, &json)
}

/// Frames the end-of-stream message: `{}` or `{"error": ...}`.
pub fn encode_end_stream(error: Option<&ConnectError>) -> Bytes {
    let end = EndStream {
        error: error.cloned(),
        metadata: None,
    };
    encode_envelope(
        FLAG_END_STREAM,
        &serde_json::to_vec(&end).expect("end serializes"),
    )
}

/// A framing error: the bytes are not a Connect stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub String);

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FramingError {}

/// Splits a byte stream into envelopes, however the bytes are cut across reads.
///
/// ```
/// use sandkit_e2b_protocol::{encode_envelope, EnvelopeDecoder};
/// let framed = encode_envelope(0, b"{\"a\":1}");
/// let mut d = EnvelopeDecoder::default();
/// d.push(&framed[..3]);
/// assert!(d.next_envelope().unwrap().is_none());
/// d.push(&framed[3..]);
/// assert_eq!(&d.next_envelope().unwrap().unwrap().payload[..], b"{\"a\":1}");
/// ```
#[derive(Debug, Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
}

impl EnvelopeDecoder {
    /// Adds bytes read from the wire.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole envelope, if one has arrived.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, FramingError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_ENVELOPE {
            return Err(FramingError(format!(
                "envelope of {len} bytes is over the {MAX_ENVELOPE} byte limit"
            )));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FramingError(
                "compressed envelopes are not supported".into(),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Bytes received that do not yet make an envelope (non-zero at the end of a stream means
    /// it was cut).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// A Connect error: `{"code": "not_found", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectError {
    /// The Connect code (`not_found`, `invalid_argument`, ...).
    pub code: String,
    /// What happened.
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    /// A new error.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ConnectError {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The HTTP status a unary response with this error carries.
    pub fn http_status(&self) -> u16 {
        status_for_code(&self.code)
    }

    /// The error kind this code means.
    pub fn kind(&self) -> ErrorKind {
        kind_for_code(&self.code)
    }
}

/// The end-of-stream message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndStream {
    /// Set when the stream failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
    /// Trailers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// Connect code → HTTP status (the Connect spec's table).
pub fn status_for_code(code: &str) -> u16 {
    match code {
        "canceled" => 499,
        "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
        "deadline_exceeded" => 504,
        "not_found" => 404,
        "already_exists" | "aborted" => 409,
        "permission_denied" => 403,
        "resource_exhausted" => 429,
        "unimplemented" => 501,
        "unavailable" => 503,
        "unauthenticated" => 401,
        _ => 500,
    }
}

/// HTTP status of a non-Connect answer → Connect code (as the SDK maps plain HTTP errors).
pub fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        409 => "already_exists",
        413 | 429 => "resource_exhausted",
        499 => "canceled",
        501 | 505 => "unimplemented",
        502 | 503 => "unavailable",
        504 => "deadline_exceeded",
        _ => "internal",
    }
}

/// Connect code → [`ErrorKind`].
pub fn kind_for_code(code: &str) -> ErrorKind {
    match code {
        "not_found" => ErrorKind::NotFound,
        "already_exists" => ErrorKind::AlreadyExists,
        "invalid_argument" | "out_of_range" | "failed_precondition" => ErrorKind::InvalidInput,
        "unauthenticated" => ErrorKind::Unauthenticated,
        "permission_denied" => ErrorKind::PermissionDenied,
        "deadline_exceeded" | "canceled" => ErrorKind::Timeout,
        "unavailable" => ErrorKind::Unavailable,
        "resource_exhausted" => ErrorKind::RateLimited,
        "unimplemented" => ErrorKind::Unsupported,
        "aborted" => ErrorKind::Conflict,
        _ => ErrorKind::Unexpected,
    }
}

/// [`ErrorKind`] → the Connect code a server answers with.
pub fn code_for_kind(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::InvalidInput => "invalid_argument",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::Timeout => "deadline_exceeded",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::RateLimited => "resource_exhausted",
        ErrorKind::Unsupported => "unimplemented",
        ErrorKind::Conflict => "failed_precondition",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_envelopes_split_anywhere() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode_envelope(0, b"first"));
        wire.extend_from_slice(&encode_envelope(0, b""));
        wire.extend_from_slice(&encode_end_stream(None));
        for cut in 0..wire.len() {
            let mut d = EnvelopeDecoder::default();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                for byte in part.chunks(1) {
                    d.push(byte);
                    while let Some(e) = d.next_envelope().unwrap() {
                        got.push(e);
                    }
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(&got[0].payload[..], b"first");
            assert!(got[1].payload.is_empty());
            assert!(got[2].is_end_stream());
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversized_and_compressed_are_refused() {
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_envelope().is_err());
        let mut d = EnvelopeDecoder::default();
        d.push(&encode_envelope(FLAG_COMPRESSED, b"x"));
        assert!(d.next_envelope().is_err());
    }

    #[test]
    fn end_stream_json() {
        let e = encode_end_stream(Some(&ConnectError::new("not_found", "gone")));
        assert_eq!(e[0], FLAG_END_STREAM);
        assert_eq!(
            &e[5..],
            br#"{"error":{"code":"not_found","message":"gone"}}"#
        );
        assert_eq!(&encode_end_stream(None)[5..], b"{}");
    }

    #[test]
    fn codes_round_trip() {
        for code in [
            "not_found",
            "already_exists",
            "invalid_argument",
            "unauthenticated",
            "unimplemented",
        ] {
            assert_eq!(code_for_kind(kind_for_code(code)), code);
        }
        assert_eq!(status_for_code("not_found"), 404);
        assert_eq!(code_for_status(502), "unavailable");
    }
}
