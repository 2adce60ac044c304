//! `s3://BUCKET/KEY`: the object's HTTP URL, how requests to it are signed, and what S3's
//! refusals mean.
//!
//! Addressing (S3 User Guide, "Virtual hosting of buckets" and "Path-style requests"):
//! - AWS itself: virtual-hosted style `https://BUCKET.s3.REGION.amazonaws.com/KEY`, or path
//!   style `https://s3.REGION.amazonaws.com/BUCKET/KEY` for bucket names that are not one DNS
//!   label (dots break the `*.s3…` wildcard certificate; legacy upper-case names are no host
//!   names at all);
//! - `--endpoint URL` (or `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`) for S3-compatible stores
//!   (MinIO, Ceph RGW, Cloudflare R2, moto): always path style, `URL/BUCKET/KEY`, the style
//!   they all accept.
//!
//! The key is taken literally (no percent-decoding of the `s3://` URL: `s3://b/a%20b` is the
//! key `a%20b`, as the AWS CLI reads it) and sent URI-encoded once (spaces, `+`, non-ASCII
//! all as `%XX`, `/` kept), which is exactly what S3 signs: see [`super::sigv4`].

use std::time::SystemTime;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use reqwest::{Method, Url};

use super::s3_config::{self, Env};
use super::sigv4::{self, AmzDate, Credentials, EMPTY_SHA256};
use super::{AuthSource, HttpError};

/// Settings for `s3://` URLs (the command line's `--region`, `--endpoint`, `--profile`,
/// `--no-sign-request`); unset ones come from the environment and the AWS files
/// (`s3_config`'s documentation has the order).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// The bucket's region.
    pub region: Option<String>,
    /// An S3-compatible endpoint, `http(s)://host[:port][/prefix]` (path-style addressing).
    pub endpoint: Option<String>,
    /// The profile in the AWS credentials and config files.
    pub profile: Option<String>,
    /// Send requests unsigned (public objects), looking for no credentials.
    pub no_sign_request: bool,
}

/// Whether `url` is an `s3://` URL.
pub fn is_s3_url(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("s3://"))
}

/// `s3://BUCKET/KEY` taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket name.
    pub bucket: String,
    /// The object key, literally.
    pub key: String,
}

impl S3Url {
    /// Split and check an `s3://` URL.
    pub fn parse(url: &str) -> Result<S3Url, HttpError> {
        let bad = |reason: &str| HttpError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if !is_s3_url(url) {
            return Err(bad("not an s3:// URL"));
        }
        let rest = &url[5..];
        let Some((bucket, key)) = rest.split_once('/') else {
            return Err(bad("expected s3://BUCKET/KEY"));
        };
        // Bucket names: 3-63 of `a-z 0-9 . -` today; legacy us-east-1 buckets may have had
        // upper case and `_`, up to 255 (S3 User Guide, "Bucket naming rules").
        let bucket_ok = !bucket.is_empty()
            && bucket.len() <= 255
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !bucket_ok {
            return Err(bad(
                "the bucket name may hold only letters, digits, `.`, `-` and `_`",
            ));
        }
        if bucket.contains('@') || bucket.contains(':') {
            return Err(bad("credentials or ports do not belong in an s3:// URL"));
        }
        if key.is_empty() {
            return Err(bad("no object key after the bucket"));
        }
        // Keys are at most 1024 bytes of UTF-8 (S3 User Guide, "Naming objects").
        if key.len() > 1024 {
            return Err(bad("the key is over 1024 bytes"));
        }
        // A URL path cannot carry `.` and `..` segments: clients and servers fold them away.
        if key.split('/').any(|s| s == "." || s == "..") {
            return Err(bad(
                "keys with `.` or `..` path segments cannot be addressed over HTTP",
            ));
        }
        if key.chars().any(char::is_control) {
            return Err(bad("the key has control characters"));
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// A resolved `s3://` URL.
#[derive(Debug)]
pub(crate) struct S3Target {
    /// The HTTP(S) URL requests go to.
    pub(crate) url: Url,
    /// `s3://BUCKET/KEY`, for messages.
    pub(crate) shown: String,
    /// How requests are signed (`None` with `--no-sign-request`).
    pub(crate) signer: Option<Signer>,
    /// What error messages need to know.
    pub(crate) context: S3Context,
}

/// What explaining S3's refusals needs (never a secret).
#[derive(Debug, Clone)]
pub(crate) struct S3Context {
    pub(crate) object: S3Url,
    pub(crate) region: String,
    pub(crate) region_origin: String,
    /// Where the credentials came from; `None` for unsigned requests.
    pub(crate) credentials_origin: Option<String>,
    /// The endpoint host (port included), for messages.
    pub(crate) host: String,
}

/// Signs every request to one object (a fresh `x-amz-date` each time, so retries and
/// reads hours later are signed anew).
#[derive(Debug)]
pub(crate) struct Signer {
    creds: Credentials,
    region: String,
}

impl Signer {
    /// The headers to add to a request: `x-amz-date`, `x-amz-content-sha256` (of the empty
    /// body), `x-amz-security-token` with temporary credentials, and `Authorization`, signing
    /// those with `Host` and `Range` (when sent).
    pub(crate) fn headers(
        &self,
        method: &Method,
        url: &Url,
        range: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, HttpError> {
        let date = AmzDate::from_system_time(now);
        let host = host_header(url);
        let mut signed: Vec<(&str, &str)> = vec![
            ("host", &host),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", date.timestamp()),
        ];
        if let Some(r) = range {
            signed.push(("range", r));
        }
        if let Some(t) = &self.creds.session_token {
            signed.push(("x-amz-security-token", t));
        }
        let req = sigv4::Request {
            method: method.as_str(),
            path: url.path(),
            query: url.query().unwrap_or(""),
            headers: &signed,
            payload_sha256: EMPTY_SHA256,
        };
        let scope = sigv4::Scope {
            region: &self.region,
            service: "s3",
            date: &date,
        };
        let s = sigv4::sign(&req, &self.creds, &scope);
        let mut out = Vec::with_capacity(4);
        for (name, value) in signed {
            // reqwest sets Host from the URL (the same string); Range is set by the caller.
            if name == "host" || name == "range" {
                continue;
            }
            let mut v = HeaderValue::from_str(value).map_err(|_| HttpError::Credentials {
                from: "the S3 request signer".into(),
                reason: format!("the {name} value cannot go into a header"),
            })?;
            v.set_sensitive(name == "x-amz-security-token");
            out.push((HeaderName::from_static(static_name(name)), v));
        }
        let mut auth =
            HeaderValue::from_str(&s.authorization).map_err(|_| HttpError::Credentials {
                from: "the S3 request signer".into(),
                reason: "the access key id cannot go into a header".into(),
            })?;
        auth.set_sensitive(true);
        out.push((AUTHORIZATION, auth));
        debug_assert!(out.iter().all(|(n, _)| *n != HOST));
        Ok(out)
    }
}

fn static_name(name: &str) -> &'static str {
    match name {
        "x-amz-content-sha256" => "x-amz-content-sha256",
        "x-amz-date" => "x-amz-date",
        _ => "x-amz-security-token",
    }
}

/// `Host` as the client sends it: the host, and the port when it is not the scheme's default
/// (`Url::port` is `None` then).
fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// Resolve `url` (an `s3://` URL): region, endpoint, credentials, the HTTP URL.
pub(crate) fn resolve(
    url: &str,
    opts: &S3Options,
    auth: Option<&AuthSource>,
    env: Env<'_>,
) -> Result<S3Target, HttpError> {
    let object = S3Url::parse(url)?;
    let (region, region_origin) =
        s3_config::region(opts.region.as_deref(), opts.profile.as_deref(), env)?;
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3").filter(|v| !v.trim().is_empty()))
        .or_else(|| env("AWS_ENDPOINT_URL").filter(|v| !v.trim().is_empty()));
    let path_key = sigv4::uri_encode(object.key.as_bytes(), false);
    let (http_url, path) = match endpoint {
        Some(ep) => {
            let base = endpoint_base(ep.trim())?;
            let prefix = base.path().trim_end_matches('/').to_owned();
            let path = format!(
                "{prefix}/{}/{path_key}",
                sigv4::uri_encode(object.bucket.as_bytes(), true)
            );
            let mut u = base;
            u.set_path(&path);
            (u, path)
        }
        None => {
            let domain = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            let (text, path) = if dns_compatible(&object.bucket) {
                let path = format!("/{path_key}");
                (
                    format!("https://{}.s3.{region}.{domain}{path}", object.bucket),
                    path,
                )
            } else {
                let path = format!("/{}/{path_key}", object.bucket);
                (format!("https://s3.{region}.{domain}{path}"), path)
            };
            let u = Url::parse(&text).map_err(|e| HttpError::BadUrl {
                url: object.to_string(),
                reason: e.to_string(),
            })?;
            (u, path)
        }
    };
    // What is signed must be what is sent: refuse any key the URL parser would rewrite.
    if http_url.path() != path || http_url.query().is_some() {
        return Err(HttpError::BadUrl {
            url: object.to_string(),
            reason: "the key cannot be sent unchanged in a URL path".into(),
        });
    }
    let (signer, credentials_origin) = if opts.no_sign_request {
        (None, None)
    } else {
        let found = s3_config::credentials(auth, opts.profile.as_deref(), env)?;
        log::info!(
            "{object}: credentials from {}, region {region} (from {region_origin})",
            found.origin
        );
        (
            Some(Signer {
                creds: found.creds,
                region: region.clone(),
            }),
            Some(found.origin),
        )
    };
    log::debug!("{object}: requests go to {http_url}");
    Ok(S3Target {
        shown: object.to_string(),
        context: S3Context {
            host: host_header(&http_url),
            object,
            region,
            region_origin,
            credentials_origin,
        },
        url: http_url,
        signer,
    })
}

/// `--endpoint`: an http(s) URL without credentials, query or fragment.
fn endpoint_base(ep: &str) -> Result<Url, HttpError> {
    let bad = |reason: &str| HttpError::BadUrl {
        url: format!("endpoint {ep}"),
        reason: reason.to_owned(),
    };
    let u = Url::parse(ep).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("the endpoint must be an http:// or https:// URL"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(HttpError::BadUrl {
            url: "the endpoint".into(),
            reason: "credentials do not belong in the endpoint URL".into(),
        });
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad("the endpoint takes no query or fragment"));
    }
    Ok(u)
}

/// A bucket name that is one DNS label a wildcard certificate covers: 3-63 of `a-z 0-9 -`,
/// starting and ending with a letter or digit.
fn dns_compatible(bucket: &str) -> bool {
    let b = bucket.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn creds_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
        ]
    }

    #[test]
    fn s3_urls_parse_literally() {
        let u = S3Url::parse("s3://my-bucket/dir/my file+1 ü%20.img").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.key, "dir/my file+1 ü%20.img");
        assert!(S3Url::parse("S3://b/k").is_ok());
        for bad in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3://user:pw@bucket/k",
            "s3://buck et/k",
            "s3://b/a/../k",
            "s3://b/./k",
            "s3://b/a\nb",
            "http://b/k",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad:?}");
        }
        let e = S3Url::parse("s3://user:hunter2@b/k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bucket name"), "{e}");
    }

    #[test]
    fn aws_addressing_virtual_hosted_or_path_style() {
        let env = env_of(&creds_env());
        let opts = S3Options {
            region: Some("eu-west-1".into()),
            ..S3Options::default()
        };
        let t = resolve("s3://my-bucket/a b/ü+.img", &opts, None, &env).unwrap();
        assert_eq!(
            t.url.as_str(),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/a%20b/%C3%BC%2B.img"
        );
        assert_eq!(t.shown, "s3://my-bucket/a b/ü+.img");
        let t = resolve("s3://my.dotted.bucket/k", &opts, None, &env).unwrap();
        assert_eq!(
            t.url.as_str(),
            "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/k"
        );
        let cn = S3Options {
            region: Some("cn-north-1".into()),
            ..S3Options::default()
        };
        let t = resolve("s3://b-cn/k", &cn, None, &env).unwrap();
        assert_eq!(
            t.url.host_str(),
            Some("b-cn.s3.cn-north-1.amazonaws.com.cn")
        );
    }

    #[test]
    fn endpoints_use_path_style() {
        let mut vars = creds_env();
        vars.push(("AWS_ENDPOINT_URL", "http://ignored:1"));
        vars.push(("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000/"));
        let env = env_of(&vars);
        let t = resolve("s3://bkt/x/y z", &S3Options::default(), None, &env).unwrap();
        assert_eq!(t.url.as_str(), "http://127.0.0.1:9000/bkt/x/y%20z");
        assert_eq!(t.context.host, "127.0.0.1:9000");
        let opts = S3Options {
            endpoint: Some("https://store.example/prefix/".into()),
            ..S3Options::default()
        };
        let t = resolve("s3://bkt/k", &opts, None, &env).unwrap();
        assert_eq!(t.url.as_str(), "https://store.example/prefix/bkt/k");
        for bad in ["ftp://x", "http://u:p@x", "http://x/?q", "not a url"] {
            let opts = S3Options {
                endpoint: Some(bad.into()),
                ..S3Options::default()
            };
            let e = resolve("s3://bkt/k", &opts, None, &env)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("u:p"), "{e}");
        }
    }

    #[test]
    fn no_sign_request_needs_no_credentials() {
        let env = env_of(&[("HOME", "/nonexistent-home")]);
        let opts = S3Options {
            no_sign_request: true,
            ..S3Options::default()
        };
        let t = resolve("s3://public-bucket/k", &opts, None, &env).unwrap();
        assert!(t.signer.is_none());
        assert!(resolve("s3://public-bucket/k", &S3Options::default(), None, &env).is_err());
    }

    #[test]
    fn signer_signs_host_range_and_amz_headers() {
        let mut vars = creds_env();
        vars.push(("AWS_SESSION_TOKEN", "tok-secret"));
        let env = env_of(&vars);
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..S3Options::default()
        };
        let t = resolve("s3://bkt/a b", &opts, None, &env).unwrap();
        let signer = t.signer.unwrap();
        let h = signer
            .headers(
                &Method::GET,
                &t.url,
                Some("bytes=0-9"),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("x-amz-date").unwrap(), "19700101T000000Z");
        assert_eq!(get("x-amz-content-sha256").unwrap(), EMPTY_SHA256);
        assert_eq!(get("x-amz-security-token").unwrap(), "tok-secret");
        let auth = get("authorization").unwrap();
        assert!(auth.is_sensitive());
        let auth = auth.to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/19700101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;range;x-amz-content-sha256;x-amz-date;x-amz-security-token, \
                 Signature="
            ),
            "{auth}"
        );
        assert!(!format!("{signer:?}").contains("EXAMPLEKEY"));
        assert!(!format!("{signer:?}").contains("tok-secret"));
    }
}
