//! Proto3 JSON helpers: tolerant numbers, base64 bytes, RFC 3339 timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats a time as RFC 3339 UTC: `2025-01-01T00:00:00.123456789Z` (fraction only when non-zero).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, da) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        format!("{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}.{nanos:09}Z")
    }
}

/// Parses RFC 3339 (`Z` or a numeric offset, optional fraction).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        rest = &frac[digits.len()..];
        let padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        nanos = padded.parse().ok()?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

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
