//! Parsing the response header fields a range reader depends on.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, DATE, ETAG, LAST_MODIFIED};

/// A `Content-Range` value (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentRange {
    /// `bytes first-last/complete`; `complete` is `None` for `*` (unknown length).
    Range {
        first: u64,
        last: u64,
        complete: Option<u64>,
    },
    /// `bytes */complete`, sent with 416 (RFC 9110 §15.5.17).
    Unsatisfied { complete: u64 },
}

/// Parse a `Content-Range` value; `None` when it is not a valid `bytes` range.
pub(crate) fn parse_content_range(v: &str) -> Option<ContentRange> {
    let v = v.trim();
    let (unit, rest) = v.split_once(' ')?;
    // Range units are case-insensitive (RFC 9110 §14.1).
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, complete) = rest.trim().split_once('/')?;
    let complete = match complete {
        "*" => None,
        n => Some(parse_u64(n)?),
    };
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            complete: complete?,
        });
    }
    let (first, last) = range.split_once('-')?;
    let (first, last) = (parse_u64(first)?, parse_u64(last)?);
    // §14.4: a last position before the first, or at/after a known complete
    // length, makes the whole field invalid.
    if last < first || complete.is_some_and(|c| last >= c) {
        return None;
    }
    Some(ContentRange::Range {
        first,
        last,
        complete,
    })
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
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
        Some(date) => date >= modified + Duration::from_secs(1),
        None => true,
    };
    strong.then_some(Validator::LastModified(lm))
}

/// How long `Retry-After` (RFC 9110 §10.2.3) asks to wait: delay-seconds or
/// an HTTP-date (§5.6.7) relative to `now`. Dates in the past mean "now".
pub(crate) fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Some(secs) = parse_u64(v) {
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
            Some(ContentRange::Range {
                first: 0,
                last: 499,
                complete: Some(1234)
            })
        );
        assert_eq!(
            parse_content_range("BYTES 5-5/*"),
            Some(ContentRange::Range {
                first: 5,
                last: 5,
                complete: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */77"),
            Some(ContentRange::Unsatisfied { complete: 77 })
        );
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes +0-1/2",
            "bytes -1-1/2",
            "bytes */*",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
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
