//! Parsing the response header fields a range reader depends on.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, DATE, ETAG, LAST_MODIFIED};

/// A parsed `Content-Range` field value (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/complete` (§14.4 `range-resp`): `first <= last`,
    /// and `last < complete` when the complete length is known (`complete`
    /// is `None` for `*`).
    Range {
        /// Position of the first byte sent.
        first: u64,
        /// Position of the last byte sent (inclusive).
        last: u64,
        /// The representation's complete length, if the server knows it.
        complete: Option<u64>,
    },
    /// `bytes */complete` (§14.4 `unsatisfied-range`), sent with 416
    /// (§15.5.17).
    Unsatisfied {
        /// The representation's complete length.
        complete: u64,
    },
}

impl ContentRange {
    /// How many bytes a `Range` carries; `None` for `Unsatisfied`, and for
    /// the one range whose length does not fit a `u64`
    /// (`bytes 0-18446744073709551615/*`).
    pub fn length(&self) -> Option<u64> {
        match *self {
            ContentRange::Range { first, last, .. } => (last - first).checked_add(1),
            ContentRange::Unsatisfied { .. } => None,
        }
    }

    /// The complete length, when the value gives it.
    pub fn complete(&self) -> Option<u64> {
        match *self {
            ContentRange::Range { complete, .. } => complete,
            ContentRange::Unsatisfied { complete } => Some(complete),
        }
    }
}

/// Why a `Content-Range` value is not one [`parse_content_range`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentRangeError {
    /// The range unit is not `bytes` (the only unit a byte reader can use).
    #[error("the range unit is not `bytes`")]
    NotBytes,
    /// The value does not follow the §14.4 grammar.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A position or length has more digits than a `u64` holds.
    #[error("a number past 2^64-1")]
    TooLarge,
    /// `last` is before `first` (§14.4: the whole field is invalid).
    #[error("the last byte {last} is before the first byte {first}")]
    Backwards {
        /// First position given.
        first: u64,
        /// Last position given.
        last: u64,
    },
    /// `last` is at or past a known complete length (§14.4: invalid).
    #[error("the last byte {last} is not within the complete length {complete}")]
    PastEnd {
        /// Last position given.
        last: u64,
        /// Complete length given.
        complete: u64,
    },
}

/// Parse a `Content-Range` field value (RFC 9110 §14.4):
/// `bytes first-last/complete`, `bytes first-last/*` or `bytes */complete`.
///
/// Total: any input (empty, huge numbers, signs, `bytes */*`, control
/// characters) gives `Ok` or `Err`, never a panic, and nothing is computed
/// from the numbers that could overflow. The unit is case-insensitive
/// (§14.1); surrounding whitespace is ignored; numbers are ASCII digits
/// only (no sign: `u64::from_str` would take `+1`).
pub fn parse_content_range(value: &str) -> Result<ContentRange, ContentRangeError> {
    use ContentRangeError::{Backwards, Malformed, NotBytes, PastEnd};
    let v = value.trim();
    let (unit, rest) = v
        .split_once(' ')
        .ok_or(Malformed("no space after the range unit"))?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(NotBytes);
    }
    let (range, complete) = rest
        .trim()
        .split_once('/')
        .ok_or(Malformed("no `/` before the complete length"))?;
    let complete = match complete {
        "*" => None,
        n => Some(parse_number(n)?),
    };
    if range == "*" {
        return match complete {
            Some(complete) => Ok(ContentRange::Unsatisfied { complete }),
            None => Err(Malformed(
                "`*/*`: an unsatisfied range needs its complete length",
            )),
        };
    }
    let (first, last) = range
        .split_once('-')
        .ok_or(Malformed("no `-` between the first and last positions"))?;
    let (first, last) = (parse_number(first)?, parse_number(last)?);
    // §14.4: a last position before the first, or at/after a known complete
    // length, makes the whole field invalid.
    if last < first {
        return Err(Backwards { first, last });
    }
    if let Some(complete) = complete.filter(|&c| last >= c) {
        return Err(PastEnd { last, complete });
    }
    Ok(ContentRange::Range {
        first,
        last,
        complete,
    })
}

/// A §14.4 number (`1*DIGIT`): ASCII digits only, past `u64` an error.
fn parse_number(s: &str) -> Result<u64, ContentRangeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ContentRangeError::Malformed(
            "a position or length that is not a decimal number",
        ));
    }
    // Only overflow is left for `parse` to refuse.
    s.parse().map_err(|_| ContentRangeError::TooLarge)
}

/// A `Content-Length` value (RFC 9110 §8.6: `1*DIGIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// A number that fits a `u64`.
    Bytes(u64),
    /// Digits only, but more than a `u64` holds: a size no disk can have.
    TooLarge,
    /// Not a number at all (ignored like an absent field).
    Invalid,
}

/// Parse a `Content-Length` value.
pub(crate) fn parse_content_length(v: &str) -> Length {
    match parse_number(v.trim()) {
        Ok(n) => Length::Bytes(n),
        Err(ContentRangeError::TooLarge) => Length::TooLarge,
        Err(_) => Length::Invalid,
    }
}

/// What the device sends as `If-Range` (RFC 9110 §13.1.5) and checks every
/// answer against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Validator {
    /// A strong entity tag, quotes included.
    ETag(String),
    /// A `Last-Modified` date that is a strong validator.
    LastModified(String),
}

impl Validator {
    /// The `If-Range` value.
    pub(crate) fn value(&self) -> &str {
        match self {
            Validator::ETag(v) | Validator::LastModified(v) => v,
        }
    }

    /// For logs and error messages (validators are not secrets).
    pub(crate) fn describe(&self) -> String {
        match self {
            Validator::ETag(v) => format!("ETag {v}"),
            Validator::LastModified(v) => format!("Last-Modified {v}"),
        }
    }

    /// The field's name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Validator::ETag(_) => "ETag",
            Validator::LastModified(_) => "Last-Modified",
        }
    }

    /// Whether `headers` carry this very validator.
    pub(crate) fn present_in(&self, headers: &HeaderMap) -> bool {
        let field = match self {
            Validator::ETag(_) => ETAG,
            Validator::LastModified(_) => LAST_MODIFIED,
        };
        headers
            .get(field)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == self.value())
    }

    /// Whether `headers` (of a later response) carry a different value of
    /// this validator: the representation was replaced. Absent fields prove
    /// nothing.
    pub(crate) fn contradicted_by(&self, headers: &HeaderMap) -> Option<String> {
        let (field, name, ours) = match self {
            Validator::ETag(v) => (ETAG, "ETag", v),
            Validator::LastModified(v) => (LAST_MODIFIED, "Last-Modified", v),
        };
        let theirs = headers.get(&field)?.to_str().ok()?.trim();
        // §8.8.3.2 strong comparison: both strong and identical. A weak tag
        // where we had a strong one is a different representation too.
        (theirs != ours).then(|| format!("{name} changed from {ours} to {theirs}"))
    }
}

/// The validator to send as `If-Range`, from a response's fields.
///
/// RFC 9110 §13.1.5: If-Range must not carry a weak entity tag, and carries
/// a date only when there is no entity tag and the date is strong in the
/// sense of §8.8.2.2 (the response's `Date` is at least a second after
/// `Last-Modified`, so a second change within that second cannot hide). A
/// response without `Date` is given the benefit of the doubt: the size and
/// `Content-Range` checks still run on every read.
pub(crate) fn choose_validator(headers: &HeaderMap) -> Option<Validator> {
    let field = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    if let Some(tag) = field(ETAG) {
        // A strong tag is a quoted string; weak ones start with `W/` (§8.8.3).
        if tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"') {
            return Some(Validator::ETag(tag));
        }
    }
    let lm = field(LAST_MODIFIED)?;
    let modified = httpdate::parse_http_date(&lm).ok()?;
    let strong = match field(DATE).and_then(|d| httpdate::parse_http_date(&d).ok()) {
        // checked_add: no overflow panic, whatever date the server sends.
        Some(date) => modified
            .checked_add(Duration::from_secs(1))
            .is_some_and(|m| date >= m),
        None => true,
    };
    strong.then_some(Validator::LastModified(lm))
}

/// How long `Retry-After` (RFC 9110 §10.2.3) asks to wait: delay-seconds or
/// an HTTP-date (§5.6.7) relative to `now`. Dates in the past mean "now".
pub(crate) fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = parse_number(v) {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-499/1234"),
            Ok(ContentRange::Range {
                first: 0,
                last: 499,
                complete: Some(1234)
            })
        );
        assert_eq!(
            parse_content_range(" BYTES 5-5/* "),
            Ok(ContentRange::Range {
                first: 5,
                last: 5,
                complete: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */77"),
            Ok(ContentRange::Unsatisfied { complete: 77 })
        );
        assert_eq!(
            parse_content_range("bytes */0"),
            Ok(ContentRange::Unsatisfied { complete: 0 })
        );
    }

    #[test]
    fn content_range_edge_cases_are_errors_not_panics() {
        use ContentRangeError::*;
        let max = u64::MAX;
        for (bad, want) in [
            ("bytes 5-4/10", Backwards { first: 5, last: 4 }),
            (
                "bytes 0-10/10",
                PastEnd {
                    last: 10,
                    complete: 10,
                },
            ),
            (
                "bytes 0-0/0",
                PastEnd {
                    last: 0,
                    complete: 0,
                },
            ),
            ("items 0-1/2", NotBytes),
            ("bytes=0-1/2", Malformed("no space after the range unit")),
            ("bytes 0-1", Malformed("no `/` before the complete length")),
            (
                "bytes 7/9",
                Malformed("no `-` between the first and last positions"),
            ),
            (
                "bytes */*",
                Malformed("`*/*`: an unsatisfied range needs its complete length"),
            ),
            ("bytes 18446744073709551616-1/*", TooLarge),
            ("bytes 0-18446744073709551616/*", TooLarge),
            ("bytes 0-1/18446744073709551616", TooLarge),
            ("bytes */99999999999999999999999999999999999999", TooLarge),
            (
                "bytes 18446744073709551615-18446744073709551615/18446744073709551615",
                PastEnd {
                    last: max,
                    complete: max,
                },
            ),
        ] {
            assert_eq!(parse_content_range(bad), Err(want), "{bad:?}");
        }
        for bad in [
            "",
            " ",
            "bytes",
            "bytes ",
            "bytes +0-1/2",
            "bytes -1-1/2",
            "bytes 0--1/2",
            "bytes 1-/2",
            "bytes -/2",
            "bytes 0-1/-2",
            "bytes 0-1/+2",
            "bytes 0-1/2/3",
            "bytes 0x1-2/3",
            "bytes 1 -2/3",
            "bytes 0-1/ 2",
            "bytes \u{0}0-1/2",
            "bytes ０-1/2",
            "bytes 0-1/*/",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
        // The longest range there is: its length does not fit a u64.
        let all = parse_content_range("bytes 0-18446744073709551615/*").unwrap();
        assert_eq!(all.length(), None);
        let last = parse_content_range(
            "bytes 18446744073709551614-18446744073709551614/18446744073709551615",
        )
        .unwrap();
        assert_eq!(last.length(), Some(1));
        assert_eq!(last.complete(), Some(max));
    }

    #[test]
    fn content_range_never_panics_on_mangled_values() {
        // Every prefix, and every one-byte change, of a few valid values.
        let seeds = [
            "bytes 0-499/1234",
            "bytes */18446744073709551615",
            "bytes 18446744073709551614-18446744073709551614/18446744073709551615",
        ];
        let alphabet = b" -/*0123456789bB+\t\xff";
        for seed in seeds {
            for i in 0..=seed.len() {
                let _ = parse_content_range(&seed[..i]);
                for &c in alphabet {
                    let mut v = seed.as_bytes().to_vec();
                    if i < v.len() {
                        v[i] = c;
                    } else {
                        v.push(c);
                    }
                    let _ = parse_content_range(&String::from_utf8_lossy(&v));
                }
            }
        }
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(" 42 "), Length::Bytes(42));
        assert_eq!(
            parse_content_length("18446744073709551615"),
            Length::Bytes(u64::MAX)
        );
        assert_eq!(
            parse_content_length("18446744073709551616"),
            Length::TooLarge
        );
        for bad in ["", "+1", "-1", "1 2", "0x10", "1,1"] {
            assert_eq!(parse_content_length(bad), Length::Invalid, "{bad:?}");
        }
    }

    fn headers(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn validator_prefers_strong_etag() {
        let h = headers(&[
            ("etag", "\"abc\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        assert_eq!(
            choose_validator(&h),
            Some(Validator::ETag("\"abc\"".into()))
        );
    }

    #[test]
    fn weak_etag_falls_back_to_a_strong_date() {
        let lm = "Mon, 01 Jan 2024 00:00:00 GMT";
        let h = headers(&[
            ("etag", "W/\"abc\""),
            ("last-modified", lm),
            ("date", "Tue, 02 Jan 2024 00:00:00 GMT"),
        ]);
        assert_eq!(
            choose_validator(&h),
            Some(Validator::LastModified(lm.into()))
        );
        // Modified in the same second as the response: not strong (§8.8.2.2).
        let h = headers(&[("last-modified", lm), ("date", lm)]);
        assert_eq!(choose_validator(&h), None);
        assert_eq!(choose_validator(&headers(&[("etag", "W/\"x\"")])), None);
    }

    #[test]
    fn contradiction_needs_a_different_value() {
        let v = Validator::ETag("\"a\"".into());
        assert!(v.contradicted_by(&headers(&[])).is_none());
        assert!(v.contradicted_by(&headers(&[("etag", "\"a\"")])).is_none());
        let msg = v.contradicted_by(&headers(&[("etag", "\"b\"")])).unwrap();
        assert!(msg.contains("\"a\"") && msg.contains("\"b\""), "{msg}");
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Mon, 01 Jan 2024 00:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Mon, 01 Jan 2024 00:00:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 31 Dec 2023 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
