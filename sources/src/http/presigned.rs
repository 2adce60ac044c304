//! Presigned URLs (query-string authentication): recognised, so that only GET is sent
//! (their signature covers the method), and shown with their credentials redacted (a
//! presigned URL reads the object until it expires; one made from temporary credentials
//! carries the session token).

use reqwest::Url;

/// Whether `url` carries query-string authentication whose signature covers the method
/// (so only GET may be sent): AWS SigV4 (`X-Amz-Signature`), SigV2 (`AWSAccessKeyId` with
/// `Signature`), Google Cloud Storage V4 (`X-Goog-Signature`).
pub(crate) fn is_presigned(url: &Url) -> bool {
    let has = |name: &str| url.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case(name));
    has("X-Amz-Signature") || (has("AWSAccessKeyId") && has("Signature")) || has("X-Goog-Signature")
}

/// Query parameters that are credentials: a presigned URL is a bearer token until it
/// expires (AWS SigV4 and SigV2 query authentication, with the session token of temporary
/// credentials; Google Cloud Storage's V4 signing; Azure SAS `sig`).
const SECRET_QUERY_NAMES: &[&str] = &[
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
    "signature",
    "awsaccesskeyid",
    "x-goog-signature",
    "x-goog-credential",
    "sig",
];

/// `url` for logs and messages: the values of the parameters that are credentials replaced by
/// `REDACTED` (the URL is sent as given; only what is shown changes). Works on text, so
/// also on URLs that do not parse.
pub fn redact_url(url: &str) -> String {
    let (before, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let Some((base, query)) = before.split_once('?') else {
        return url.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            if SECRET_QUERY_NAMES
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s))
            {
                format!("{name}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_are_recognised() {
        let yes = |u: &str| is_presigned(&Url::parse(u).unwrap());
        assert!(yes(
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=A&X-Amz-Signature=s"
        ));
        assert!(yes(
            "https://b.s3.amazonaws.com/k?AWSAccessKeyId=A&Expires=1&Signature=s"
        ));
        assert!(yes("https://storage.googleapis.com/b/k?X-Goog-Signature=s"));
        assert!(!yes("https://h/k?Signature=s"));
        assert!(!yes("https://h/disk.img"));
    }

    #[test]
    fn presigned_credentials_are_not_shown() {
        let url = "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&\
                   X-Amz-Credential=AKIDEXAMPLE%2F20261203&X-Amz-Security-Token=tok3n&\
                   x-amz-signature=abc123&versionId=7";
        let shown = redact_url(url);
        for secret in ["AKIDEXAMPLE", "tok3n", "abc123"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"),
            "{shown}"
        );
        assert!(shown.ends_with("&versionId=7"), "{shown}");
        assert_eq!(redact_url("http://h/p?a=1#f"), "http://h/p?a=1#f");
        assert_eq!(
            redact_url("http://h/p?sig=x#f"),
            "http://h/p?sig=REDACTED#f"
        );
    }
}
