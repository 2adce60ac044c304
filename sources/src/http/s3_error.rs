//! S3's refusals explained: the XML error document (S3 API reference, "Error responses":
//! `<Error><Code>…</Code><Message>…</Message>…</Error>`) read within bounds from a stranger,
//! and what each code means for the user.

use super::s3::S3Context;
use super::HttpError;

/// The fields of an S3 error document (`<Error><Code>…</Code><Message>…</Message>…`, S3 API
/// reference "Error responses") that the explanations use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub(crate) code: String,
    pub(crate) message: String,
    /// `<Region>` (AuthorizationHeaderMalformed) or nothing.
    pub(crate) region: Option<String>,
    /// `<Endpoint>` (PermanentRedirect) or nothing.
    pub(crate) endpoint: Option<String>,
}

/// Most of an error body looked at; S3's are a few hundred bytes.
pub(crate) const MAX_ERROR_BODY: u64 = 16 << 10;

/// Parse an S3 error document; `None` if `body` is not one. Only the first element of each
/// name counts; text is unescaped (the five XML entities and numeric references), control
/// characters dropped, and cut to 300 characters: the server is a stranger.
pub(crate) fn parse_error(body: &[u8]) -> Option<ErrorBody> {
    let text = String::from_utf8_lossy(body);
    if !text.contains("<Error>") {
        return None;
    }
    let field = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&close)?;
        let v = unescape(&text[start..start + len]);
        Some(v.chars().filter(|c| !c.is_control()).take(300).collect())
    };
    let code = field("Code")?;
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
        return None;
    }
    Some(ErrorBody {
        code,
        message: field("Message").unwrap_or_default(),
        region: field("Region").filter(|r| !r.is_empty()),
        endpoint: field("Endpoint").filter(|r| !r.is_empty()),
    })
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..end];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a refusal means for the user, for an `s3://` URL (`ctx`) or a presigned URL (`None`).
/// `header_region` is `x-amz-bucket-region` of the response.
pub(crate) fn explain(
    shown: &str,
    status: u16,
    body: Option<&ErrorBody>,
    header_region: Option<&str>,
    ctx: Option<&S3Context>,
) -> HttpError {
    let code = body.map(|b| b.code.as_str()).unwrap_or("");
    let creds = ctx
        .and_then(|c| c.credentials_origin.as_deref())
        .map(|o| format!(" (credentials from {o})"))
        .unwrap_or_default();
    let right_region = header_region
        .map(str::to_owned)
        .or_else(|| body.and_then(|b| b.region.clone()))
        .filter(|r| {
            !r.is_empty()
                && r.len() <= 64
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let unsigned = ctx.is_some_and(|c| c.credentials_origin.is_none());
    // Some stores answer without an error document (moto refuses anonymous reads with an
    // empty 403): the status alone then says as much as it can.
    let meaning = match (code, status) {
        ("", 403) => "AccessDenied",
        ("", 404) => "NotFound",
        (c, _) => c,
    };
    let explanation = match (meaning, ctx) {
        ("SignatureDoesNotMatch", Some(_)) => format!(
            "the secret access key does not match the access key id{creds}; check the secret \
             (and that no proxy rewrites the request)"
        ),
        ("SignatureDoesNotMatch", None) => {
            "the presigned URL's signature does not match this request (was it cut or changed?)"
                .into()
        }
        ("InvalidAccessKeyId", Some(c)) => {
            format!("the access key id{creds} is not known to {}", c.host)
        }
        ("AccessDenied", Some(c)) if unsigned => format!(
            "{} is not public: give credentials instead of --no-sign-request",
            c.object
        ),
        ("AccessDenied", Some(c)) => {
            format!("the credentials{creds} may not read {}", c.object)
        }
        ("AccessDenied", None) => {
            "the presigned URL was refused (expired, or made for other credentials)".into()
        }
        ("NoSuchKey", Some(c)) => format!(
            "there is no object {:?} in bucket {}",
            c.object.key, c.object.bucket
        ),
        ("NoSuchBucket", Some(c)) => {
            format!("there is no bucket {} at {}", c.object.bucket, c.host)
        }
        ("NotFound", Some(c)) => format!(
            "there is no object {:?} in bucket {} (or no such bucket) at {}",
            c.object.key, c.object.bucket, c.host
        ),
        ("RequestTimeTooSkewed", _) => "this machine's clock is more than 15 minutes off the \
                                         server's; fix the clock (NTP)"
            .into(),
        ("ExpiredToken", _) | ("TokenRefreshRequired", _) => {
            format!("the session token{creds} has expired; get fresh credentials")
        }
        ("InvalidToken", _) => format!("the session token{creds} is not valid"),
        (_, Some(c)) if right_region.as_deref().is_some_and(|r| r != c.region) => {
            let r = right_region.as_deref().unwrap_or_default();
            format!(
                "the bucket is in region {r}, not {} (from {}): pass --region {r}",
                c.region, c.region_origin
            )
        }
        (_, _) if status == 301 || code == "PermanentRedirect" => {
            match body.and_then(|b| b.endpoint.as_deref()) {
                Some(ep) => format!(
                    "the bucket must be addressed through {ep}; pass --region or --endpoint"
                ),
                None => "the bucket is in another region; pass --region".into(),
            }
        }
        _ => String::new(),
    };
    let said = match body {
        Some(b) if !b.message.is_empty() => format!(" (the server says: {:?})", b.message),
        _ => String::new(),
    };
    HttpError::S3 {
        url: shown.to_owned(),
        status,
        code: if code.is_empty() {
            "(no error document)".into()
        } else {
            code.to_owned()
        },
        explanation: if explanation.is_empty() {
            "see the server's message".into()
        } else {
            explanation
        },
        said,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::s3::S3Url;

    #[test]
    fn error_documents_are_parsed_and_bounded() {
        let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
            <Message>The specified key does not exist &amp; never did &#x263A;</Message>\
            <Key>k</Key></Error>";
        let e = parse_error(body).unwrap();
        assert_eq!(e.code, "NoSuchKey");
        assert_eq!(
            e.message,
            "The specified key does not exist & never did \u{263A}"
        );
        assert!(parse_error(b"<html>nope</html>").is_none());
        assert!(parse_error(b"<Error><Code>a b</Code></Error>").is_none());
        let long = format!(
            "<Error><Code>X</Code><Message>{}\u{7}</Message></Error>",
            "m".repeat(5000)
        );
        assert_eq!(parse_error(long.as_bytes()).unwrap().message.len(), 300);
        assert_eq!(
            unescape("a &bogus; &#xZZ; &lt;b&gt; &"),
            "a &bogus; &#xZZ; <b> &"
        );
    }

    #[test]
    fn mangled_error_documents_never_panic() {
        let doc = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>a &amp; b \
                   &#x1F600; &#1114112; &#xD800; &lt;</Message><Region>eu-west-1</Region>\
                   <Endpoint>e</Endpoint></Error>ü"
            .as_bytes()
            .to_vec();
        fastrand::seed(7);
        for _ in 0..5000 {
            let mut d = doc.clone();
            for _ in 0..fastrand::usize(1..4) {
                match fastrand::u8(0..3) {
                    0 => d.truncate(fastrand::usize(0..=d.len())),
                    1 if !d.is_empty() => {
                        let i = fastrand::usize(0..d.len());
                        d[i] = fastrand::u8(..);
                    }
                    _ => {
                        let i = fastrand::usize(0..=d.len());
                        d.insert(i, *fastrand::choice(b"<>&;#x/".iter()).unwrap_or(&b'&'));
                    }
                }
            }
            if let Some(e) = parse_error(&d) {
                assert!(e.message.chars().count() <= 300);
                assert!(!e.code.is_empty());
            }
        }
    }

    #[test]
    fn refusals_are_explained() {
        let ctx = S3Context {
            object: S3Url::parse("s3://b/k").unwrap(),
            region: "us-east-1".into(),
            region_origin: "the default".into(),
            credentials_origin: Some("environment variables AWS_ACCESS_KEY_ID".into()),
            host: "b.s3.us-east-1.amazonaws.com".into(),
        };
        let body = |code: &str| ErrorBody {
            code: code.into(),
            message: "msg".into(),
            ..ErrorBody::default()
        };
        let e = explain(
            "s3://b/k",
            403,
            Some(&body("SignatureDoesNotMatch")),
            None,
            Some(&ctx),
        );
        let s = e.to_string();
        assert!(
            s.starts_with("s3://b/k: S3 refused the request (403 SignatureDoesNotMatch): the secret access key does not match the access key id (credentials from environment"),
            "{s}"
        );
        let s = explain("s3://b/k", 404, Some(&body("NoSuchKey")), None, Some(&ctx)).to_string();
        assert!(
            s.contains("(404 NoSuchKey): there is no object \"k\" in bucket b"),
            "{s}"
        );
        let s = explain(
            "s3://b/k",
            403,
            Some(&body("AccessDenied")),
            None,
            Some(&ctx),
        )
        .to_string();
        assert!(s.contains("may not read s3://b/k"), "{s}");
        let s = explain("s3://b/k", 301, None, Some("eu-central-1"), Some(&ctx)).to_string();
        assert!(s.contains("pass --region eu-central-1"), "{s}");
        let mut b = body("AuthorizationHeaderMalformed");
        b.region = Some("ap-east-1".into());
        let s = explain("s3://b/k", 400, Some(&b), None, Some(&ctx)).to_string();
        assert!(s.contains("pass --region ap-east-1"), "{s}");
        // A hostile region header cannot inject text.
        let s = explain("s3://b/k", 301, None, Some("x\"; rm -rf /"), Some(&ctx)).to_string();
        assert!(!s.contains("rm -rf"), "{s}");
        let unsigned = S3Context {
            credentials_origin: None,
            ..ctx.clone()
        };
        let s = explain("s3://b/k", 403, None, None, Some(&unsigned)).to_string();
        assert!(
            s.contains("(403 (no error document)): s3://b/k is not public"),
            "{s}"
        );
        let s = explain(
            "https://h/k?X-Amz-Signature=1",
            403,
            Some(&body("AccessDenied")),
            None,
            None,
        )
        .to_string();
        assert!(s.contains("presigned"), "{s}");
    }
}
