//! Errors of the HTTP source. None of them ever carries a credential: URLs
//! with user information are refused, and header values are never quoted.

use std::path::PathBuf;

/// Why opening or reading an HTTP(S) source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL does not parse or is not `http`/`https`.
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given (without any user information).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL carries `user:password@`: credentials on a command line leak
    /// into `ps`, shell history and logs.
    #[error(
        "refusing credentials in the URL {url}: give them in an environment variable or a file \
         (`user:password` or a bearer token) instead"
    )]
    CredentialsInUrl {
        /// The URL with its user information removed.
        url: String,
    },
    /// An extra header that is malformed or not allowed.
    #[error("invalid header {name:?}: {reason}")]
    BadHeader {
        /// The header name as given.
        name: String,
        /// What is wrong (never the value).
        reason: &'static str,
    },
    /// Credentials could not be read from their environment variable or file.
    #[error("cannot read credentials from {from}: {reason}")]
    Credentials {
        /// `environment variable X` or `file P`.
        from: String,
        /// What went wrong (never the content).
        reason: String,
    },
    /// The HTTP client could not be built (TLS set-up...).
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A CA certificate file given to trust cannot be read or parsed.
    #[error("CA certificate {path}: {reason}")]
    CaCert {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// 404 or 410.
    #[error("{url}: not found (HTTP {status}); check the URL")]
    NotFound {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// 401, 403 or 407.
    #[error("{url}: access denied (HTTP {status}): {hint}")]
    Denied {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// Whether credentials were sent, for the user.
        hint: &'static str,
    },
    /// Another status that retrying will not fix.
    #[error("{url}: {what}: unexpected HTTP status {status}")]
    Status {
        /// The URL.
        url: String,
        /// What was being done.
        what: String,
        /// The status code.
        status: u16,
    },
    /// The server answers ranged requests with the whole file.
    #[error(
        "{url}: the server does not support byte ranges (a Range request got the whole file); \
         a block device needs random access"
    )]
    NoRanges {
        /// The URL.
        url: String,
    },
    /// A read's ranged GET got `200` and the whole file, with the validator
    /// seen at open (or none): the origin, or something on the way, ignores
    /// `Range` (RFC 9110 §14.2 allows it). Not a replacement: that shows as
    /// a different validator ([`HttpError::Changed`]).
    #[error(
        "{url}: the origin ignored the Range header and answered 200 with the whole file{detail}: \
         it does not support range requests (or a proxy or CDN on the way strips them); a block \
         device needs random access"
    )]
    RangeIgnored {
        /// The URL.
        url: String,
        /// What the 200 showed, e.g. ` (ETag "x" unchanged)`; may be empty.
        detail: String,
    },
    /// The size announced is past what NBD clients and qemu can address.
    #[error(
        "{url}: {field} announces a size of {size} bytes, past the largest disk NBD clients and \
         qemu accept (2^63-1 = 9223372036854775807 bytes); refusing to serve it"
    )]
    TooBig {
        /// The URL.
        url: String,
        /// `Content-Length` or `Content-Range`.
        field: &'static str,
        /// The size as announced (it may not even fit a `u64`).
        size: String,
    },
    /// Neither HEAD nor a range probe told the size.
    #[error(
        "{url}: the server does not tell the file size (no Content-Length on HEAD, no complete \
         length in Content-Range)"
    )]
    NoSize {
        /// The URL.
        url: String,
    },
    /// The remote file is not the one opened any more.
    #[error("{url}: the remote file changed since it was opened: {detail}")]
    Changed {
        /// The URL.
        url: String,
        /// What proves it.
        detail: String,
    },
    /// The server answered something a correct server never would.
    #[error("{url}: the server misbehaved: {detail}")]
    Misbehaved {
        /// The URL.
        url: String,
        /// What it did.
        detail: String,
    },
    /// Transient failures persisted through every retry.
    #[error("{url}: {what} failed after {tries} attempts; last error: {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// What was being done.
        what: String,
        /// Attempts made.
        tries: u32,
        /// The last failure.
        last: String,
    },
    /// A request failed in a way retrying will not fix (too many redirects...).
    #[error("{url}: {what}: {detail}")]
    Request {
        /// The URL.
        url: String,
        /// What was being done.
        what: String,
        /// The failure.
        detail: String,
    },
    /// S3 (or an S3-compatible store) refused the request: its error document explained.
    #[error("{url}: S3 refused the request ({status} {code}): {explanation}{said}")]
    S3 {
        /// `s3://BUCKET/KEY`, or the (presigned) URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// S3's error code (`SignatureDoesNotMatch`, `NoSuchKey`…).
        code: String,
        /// What it means and what to do.
        explanation: String,
        /// The server's own message, quoted, or empty.
        said: String,
    },
    /// The on-disk cache could not be set up.
    #[error("cache {}: {reason}", path.display())]
    Cache {
        /// The cache file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// An error and its causes on one line (reqwest's own message is terse:
/// the cause, e.g. "connection refused", is in the source chain).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
