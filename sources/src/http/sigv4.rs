//! AWS Signature Version 4, header form ("Authorization: AWS4-HMAC-SHA256 …"), as S3 checks it.
//!
//! The four steps of the AWS reference ("Create a signed AWS API request", and the S3 API
//! reference "Signature Calculations for the Authorization Header"):
//!
//! 1. the canonical request: method, canonical URI, canonical query string, the signed headers
//!    as `name:value` lines (names lower-cased and sorted, values trimmed with inner runs of
//!    spaces folded to one), the list of their names, and the hex SHA-256 of the payload;
//! 2. the string to sign: `AWS4-HMAC-SHA256`, the request time, the credential scope
//!    `DATE/REGION/SERVICE/aws4_request`, and the hex SHA-256 of the canonical request;
//! 3. the signing key: HMAC-SHA256 chained over the date, region, service and `aws4_request`,
//!    starting from `"AWS4" + secret key`;
//! 4. the signature: hex HMAC-SHA256 of the string to sign under that key.
//!
//! S3 differs from the other services in one place: the canonical URI is the path as sent,
//! each segment URI-encoded once, never normalised (no `.`/`..` folding, no double encoding).
//! [`uri_encode`] is that encoding; the caller builds the request path with it, so what is
//! signed is byte for byte what is sent.

use std::fmt;
use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of the empty payload: every request here is a GET or HEAD without a body
/// (S3 also accepts `UNSIGNED-PAYLOAD`; hashing the empty body signs strictly more).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An access key pair, and a session token for temporary credentials. `Debug` shows neither
/// secret nor token, and no error message quotes them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id (`AKIA…`, `ASIA…` for temporary credentials).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials, sent as `x-amz-security-token`.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// The request time in the two forms SigV4 uses: `YYYYMMDDTHHMMSSZ` (`x-amz-date`) and its
/// first 8 characters (the credential scope's date).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmzDate(String);

impl AmzDate {
    /// `t` in UTC (times before 1970 are taken as 1970: a clock that far off fails anyway).
    pub fn from_system_time(t: SystemTime) -> AmzDate {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        AmzDate(format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        ))
    }

    /// `YYYYMMDDTHHMMSSZ`.
    pub fn timestamp(&self) -> &str {
        &self.0
    }

    /// `YYYYMMDD`.
    pub fn date(&self) -> &str {
        &self.0[..8]
    }
}

/// Proleptic Gregorian (year, month, day) of day `z` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, public-domain algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One request to sign.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `HEAD`…
    pub method: &'a str,
    /// The path exactly as sent, already URI-encoded (see the module documentation).
    pub path: &'a str,
    /// The query string as sent (without `?`; may be empty).
    pub query: &'a str,
    /// The headers to sign, `Host` and `x-amz-date` included, any case, repeats allowed.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the payload ([`EMPTY_SHA256`] for none).
    pub payload_sha256: &'a str,
}

/// Where and as whom a request is signed.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// The region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The service, `s3` here.
    pub service: &'a str,
    /// The request time (must equal the `x-amz-date` header signed).
    pub date: &'a AmzDate,
}

/// The intermediate and final products of signing one request (kept for tests and for
/// debugging a `SignatureDoesNotMatch`).
#[derive(Clone, PartialEq, Eq)]
pub struct Signed {
    /// Step 1.
    pub canonical_request: String,
    /// Step 2.
    pub string_to_sign: String,
    /// `host;range;x-amz-date…`.
    pub signed_headers: String,
    /// Step 4, hex.
    pub signature: String,
    /// The whole `Authorization` header value.
    pub authorization: String,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The canonical request carries the session token when there is one.
        f.debug_struct("Signed")
            .field("signed_headers", &self.signed_headers)
            .finish_non_exhaustive()
    }
}

/// Sign `req` with `creds` in `scope`.
pub fn sign(req: &Request<'_>, creds: &Credentials, scope: &Scope<'_>) -> Signed {
    let (canonical_headers, signed_headers) = canonical_headers(req.headers);
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        canonical_query(req.query),
        canonical_headers,
        signed_headers,
        req.payload_sha256
    );
    let credential_scope = format!(
        "{}/{}/{}/aws4_request",
        scope.date.date(),
        scope.region,
        scope.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{credential_scope}\n{}",
        scope.date.timestamp(),
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        scope.date.date().as_bytes(),
    );
    for part in [scope.region, scope.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        creds.access_key_id
    );
    Signed {
        canonical_request,
        string_to_sign,
        signed_headers,
        signature,
        authorization,
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length (RFC 2104 §2): `new_from_slice` cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The canonical header lines (each ending in `\n`) and the signed-headers list: names
/// lower-cased and sorted, the values of a repeated name joined with `,` in their order,
/// each value trimmed with inner runs of spaces folded to one.
fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut named: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.trim().to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match named.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => named.push((name, value)),
        }
    }
    // Stable: equal names were merged above, so the order is by name alone.
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut lines = String::new();
    for (n, v) in &named {
        lines.push_str(n);
        lines.push(':');
        lines.push_str(v);
        lines.push('\n');
    }
    let list = named
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (lines, list)
}

/// The canonical query string: each name and value URI-encoded (after undoing the encoding
/// they were sent with), sorted by name then value, joined with `&`; a name without `=` gets
/// an empty value.
fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(n), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `%XX` sequences decoded to bytes (malformed ones kept as they are).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex_at = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex_at(i + 1), hex_at(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// SigV4's URI encoding: every byte but the unreserved `A-Z a-z 0-9 - . _ ~` as `%XX` with
/// upper-case hex digits; `/` too when `encode_slash` (query names and values), not in paths.
pub fn uri_encode(bytes: &[u8], encode_slash: bool) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The credentials and time of the AWS SigV4 test suite (aws-sig-v4-test-suite, as
    /// awslabs/aws-c-auth carries it under tests/aws-signing-test-suite/v4).
    fn suite_creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
        }
    }

    /// Sign a suite case: host `example.amazonaws.com`, service `service`, us-east-1,
    /// 2015-08-30 12:36:00 UTC, plus `extra` headers.
    fn suite(path: &str, query: &str, extra: &[(&str, &str)], token: Option<&str>) -> Signed {
        let date = AmzDate("20150830T123600Z".into());
        let mut headers = vec![
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", date.timestamp()),
        ];
        headers.extend_from_slice(extra);
        if let Some(t) = token {
            headers.push(("X-Amz-Security-Token", t));
        }
        let req = Request {
            method: "GET",
            path,
            query,
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        let scope = Scope {
            region: "us-east-1",
            service: "service",
            date: &date,
        };
        sign(&req, &suite_creds(token), &scope)
    }

    #[test]
    fn get_vanilla() {
        let s = suite("/", "", &[], None);
        assert_eq!(
            s.canonical_request,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            s.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[rustfmt::skip]
    #[test]
    fn get_vanilla_family() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("get-vanilla-query", "/", "",
             "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
            ("get-vanilla-query-order-key-case", "/", "Param2=value2&Param1=value1",
             "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            ("get-vanilla-query-unreserved", "/",
             "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=\
              -._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
             "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
            ("get-vanilla-utf8-query", "/", "%E1%88%B4=bar",
             "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
            ("get-vanilla-query-order-encoded", "/", "Param-3=Value3&Param=Value2&%E1%88%B4=Value1",
             "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac"),
            // Paths as S3 signs them: encoded once, never normalised (the suite's
            // `-unnormalized` halves).
            ("get-utf8", "/%E1%88%B4", "",
             "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
            ("get-space-unnormalized", "/example%20space/", "",
             "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
            ("get-unreserved", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "",
             "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
            ("get-slashes-unnormalized", "//example//", "",
             "87cca117541a147f6df867677d98a7d80dff226d2bfca9e4ffa899665623c7e5"),
        ];
        for (name, path, query, want) in cases {
            assert_eq!(suite(path, query, &[], None).signature, *want, "{name}");
        }
    }

    #[test]
    fn get_vanilla_with_session_token() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let s = suite("/", "", &[], Some(token));
        assert_eq!(s.signed_headers, "host;x-amz-date;x-amz-security-token");
        assert_eq!(
            s.signature,
            "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_repeats_joined() {
        // Suite cases get-header-value-trim and get-header-key-duplicate.
        let s = suite(
            "/",
            "",
            &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            None,
        );
        assert_eq!(
            s.signature,
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"
        );
        let s = suite(
            "/",
            "",
            &[
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
            ],
            None,
        );
        assert!(s
            .canonical_request
            .contains("my-header1:value2,value2,value1\n"));
        assert_eq!(
            s.signature,
            "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"
        );
    }

    /// The S3 API reference's example "GET Object" (the first 10 bytes of
    /// examplebucket/test.txt), in "Signature Calculations for the Authorization Header:
    /// Transferring Payload in a Single Chunk".
    #[test]
    fn s3_documented_get_object_with_range() {
        let date = AmzDate("20130524T000000Z".into());
        let headers = [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", date.timestamp()),
        ];
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        let creds = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let scope = Scope {
            region: "us-east-1",
            service: "s3",
            date: &date,
        };
        let s = sign(&req, &creds, &scope);
        assert_eq!(
            s.string_to_sign,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn uri_encoding_as_s3_wants_it() {
        assert_eq!(
            uri_encode("dir/my file+1 ü.img".as_bytes(), false),
            "dir/my%20file%2B1%20%C3%BC.img"
        );
        assert_eq!(uri_encode(b"a/b=c&d", true), "a%2Fb%3Dc%26d");
        assert_eq!(uri_encode(b"-._~Az09", true), "-._~Az09");
    }

    #[test]
    fn amz_date_formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let d = AmzDate::from_system_time(t);
        assert_eq!(d.timestamp(), "20150830T123600Z");
        assert_eq!(d.date(), "20150830");
        // A leap day, and the last second of a year.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(AmzDate::from_system_time(t).timestamp(), "20000229T000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_199);
        assert_eq!(AmzDate::from_system_time(t).timestamp(), "20231231T235959Z");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = suite_creds(Some("tok-secret"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("EXAMPLEKEY") && !shown.contains("tok-secret"));
        let s = suite("/", "", &[], Some("tok-secret"));
        assert!(!format!("{s:?}").contains("tok-secret"));
    }
}
