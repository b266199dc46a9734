//! Proto3 JSON helpers: tolerant numbers, base64 bytes, RFC 3339 timestamps.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    N(i64),
    U(u64),
    F(f64),
    S(String),
}

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
    use serde::de::Error;
    match NumOrString::deserialize(d)? {
        NumOrString::N(n) => Ok(n as i128),
        NumOrString::U(n) => Ok(n as i128),
        NumOrString::F(f) if f.fract() == 0.0 => Ok(f as i128),
        NumOrString::F(f) => Err(D::Error::custom(format!("{f} is not an integer"))),
        NumOrString::S(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| D::Error::custom(format!("{s:?} is not an integer"))),
    }
}

/// `u32` from a number or a string.
pub mod u32_lenient {
    use super::*;
    /// Deserialises.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        use serde::de::Error;
        u32::try_from(number(d)?).map_err(|_| D::Error::custom("out of range for u32"))
    }
}

/// `i32` from a number or a string.
pub mod i32_lenient {
    use super::*;
    /// Deserialises.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        use serde::de::Error;
        i32::try_from(number(d)?).map_err(|_| D::Error::custom("out of range for i32"))
    }
}

/// `int64`/`uint64` fields: written as a JSON string, read from a string or a number.
pub mod u64_string {
    use super::*;
    /// Serialises as a string.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    /// Deserialises.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        use serde::de::Error;
        u64::try_from(number(d)?).map_err(|_| D::Error::custom("out of range for u64"))
    }
}

/// `bytes` fields: standard base64 with padding; decoding also takes URL-safe and unpadded.
pub mod b64 {
    use super::*;
    /// Serialises.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    /// Deserialises.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        use serde::de::Error;
        let s = String::deserialize(d)?;
        decode(&s).ok_or_else(|| D::Error::custom("invalid base64"))
    }

    /// Decodes standard or URL-safe base64, padded or not.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        STANDARD
            .decode(s)
            .or_else(|_| STANDARD_NO_PAD.decode(s))
            .or_else(|_| URL_SAFE.decode(s))
            .or_else(|_| URL_SAFE_NO_PAD.decode(s))
            .ok()
    }
}

/// Skips zero integers when serialising (proto3 omits defaults).
pub fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
/// Skips zero integers when serialising.
pub fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
/// Skips `false` when serialising.
pub fn is_false(v: &bool) -> bool {
    !*v
}

pub use sandkit_core::raw::time::{parse_rfc3339, rfc3339};

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn time_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_735_689_600, 123_456_789);
        assert_eq!(rfc3339(t), "2025-01-01T00:00:00.123456789Z");
        assert_eq!(parse_rfc3339("2025-01-01T00:00:00.123456789Z"), Some(t));
        assert_eq!(
            parse_rfc3339("2025-01-01T01:00:00+01:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_735_689_600))
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn base64_variants() {
        assert_eq!(b64::decode("aGk=").unwrap(), b"hi");
        assert_eq!(b64::decode("aGk").unwrap(), b"hi");
        assert_eq!(b64::decode("-_8").unwrap(), vec![0xfb, 0xff]);
    }
}
