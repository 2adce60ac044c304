//! `http URL`: a read-only block device backed by an HTTP(S) file, read with
//! byte-range requests.
//!
//! Opening learns the size (HEAD `Content-Length` with `Accept-Ranges`, or
//! a `Range: bytes=0-0` probe) and a validator (a strong `ETag`, else a
//! strong `Last-Modified`). Every read is then a ranged GET sent with
//! `If-Range: <validator>` (RFC 9110 §13.1.5), and is accepted only as a
//! `206` whose `Content-Range` is exactly the range asked for, with the
//! complete length seen at open (§14.4, §15.3.7), and a body of exactly that
//! length. Anything else fails the read with an `Io` error and a log line:
//! a replaced file must never be served as a mix of old and new bytes.
//! Once the file is known to have changed, every later read fails.
//!
//! Around that: retries with exponential backoff and jitter for transient
//! failures (connection errors, timeouts, truncated bodies, 5xx, 408, 429
//! with `Retry-After`, transfers below the low-speed limit or past the
//! request deadline), a cap on requests in flight shared by all connections
//! (stalled requests stop counting against it, so they cannot starve reads
//! the origin serves fast), sequential read-ahead
//! ([`HttpOptions::readahead`]), and an optional on-disk chunk cache
//! ([`HttpOptions::cache_dir`]).
//!
//! A size past [`MAX_SIZE`] is refused at open. [`parse_content_range`] is
//! the `Content-Range` parser every response goes through (public for fuzz
//! targets: it never panics).
//!
//! Credentials come from [`HttpAuth`] (an environment variable or a file),
//! never from the URL or an extra header, and are never logged.
//!
//! `s3://BUCKET/KEY` URLs are objects in S3 or an S3-compatible store
//! ([`S3Options`]): every request (retries included) is signed with AWS
//! Signature V4 ([`sigv4`]) with credentials found where the AWS tools look,
//! and S3's refusals are explained from its error document. Presigned
//! `https://…?X-Amz-Signature=…` URLs are plain URLs: sent as given, never
//! re-signed.
//!
//! ```no_run
//! use synth::BlockDev;
//! use sources::http::{HttpDev, HttpOptions};
//! let dev = HttpDev::open("https://example.com/disk.img", &HttpOptions::default())?;
//! let mut sector = [0u8; 512];
//! dev.read_at(&mut sector, 0)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod auth;
mod cache;
mod error;
mod headers;
mod limit;
mod presigned;
mod readahead;
mod remote;
mod s3;
mod s3_config;
mod s3_error;
pub mod sigv4;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use synth::{check_range, BlockDev, Caps, Error, ErrorKind, Result};

pub use auth::{AuthSource, HttpAuth};
pub use error::HttpError;
pub use headers::{parse_content_range, ContentRange, ContentRangeError};
pub use presigned::redact_url;
pub use s3::{is_s3_url, S3Options, S3Url};

use cache::DiskCache;
use readahead::ReadAhead;
use remote::Remote;

/// The largest remote file served: NBD clients and qemu take a disk size as
/// a signed 64-bit number (2^63-1 bytes, 8 EiB), so anything larger would be
/// shown wrapped or as "(null)".
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// How to reach and read the remote file.
#[derive(Clone)]
pub struct HttpOptions {
    /// Extra request headers (`--header 'K: V'`). `Range`, `If-Range` and
    /// credentials (`Authorization`) are refused here.
    pub headers: Vec<(String, String)>,
    /// Credentials, from [`HttpAuth::from_env`] or [`HttpAuth::from_file`].
    pub auth: Option<HttpAuth>,
    /// Where credentials are, read at open for the URL's scheme (`--auth-env`,
    /// `--auth-file`); `auth`, when set, wins for `http(s)://` URLs.
    pub auth_source: Option<AuthSource>,
    /// Region, endpoint, profile and signing of `s3://` URLs.
    pub s3: S3Options,
    /// Time allowed to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time allowed for the response head, and for each read of the body
    /// (total silence).
    pub read_timeout: Duration,
    /// Low-speed limit in bytes/s (0 disables): a transfer slower than this
    /// over [`HttpOptions::speed_time`] is abandoned and retried, like curl's
    /// `--speed-limit`. Also what a request must keep up over 2 s to count
    /// against [`HttpOptions::max_in_flight`].
    pub speed_limit: u64,
    /// The span the low-speed limit is measured over (curl's `--speed-time`),
    /// counted from the response head.
    pub speed_time: Duration,
    /// The longest one attempt may take, from sending the request to the
    /// end of the body, per started 4 MiB of the range asked for (`None`: no
    /// deadline). Past it the attempt is abandoned and retried.
    pub request_timeout: Option<Duration>,
    /// Retries after the first attempt of a request.
    pub retries: u32,
    /// First backoff delay; doubled per retry, with jitter.
    pub retry_base: Duration,
    /// Longest backoff delay.
    pub retry_cap: Duration,
    /// Longest wait a server's `Retry-After` can impose.
    pub retry_after_cap: Duration,
    /// Requests in flight at once, for all connections together. Requests
    /// that stall (below the speed limit over 2 s, or no answer yet) stop
    /// counting, up to 4 times this many in all.
    pub max_in_flight: usize,
    /// Read-ahead window in bytes for sequential reads (0 disables).
    pub readahead: u64,
    /// Directory of the on-disk chunk cache (none by default).
    pub cache_dir: Option<PathBuf>,
    /// PEM files of certificate authorities to trust besides the built-in
    /// (Mozilla) roots, for servers with an internal CA.
    pub ca_certs: Vec<PathBuf>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            headers: Vec::new(),
            auth: None,
            auth_source: None,
            s3: S3Options::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            speed_limit: 1024,
            speed_time: Duration::from_secs(15),
            request_timeout: Some(Duration::from_secs(60)),
            retries: 5,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(5),
            retry_after_cap: Duration::from_secs(30),
            max_in_flight: 8,
            readahead: 4 << 20,
            cache_dir: None,
            ca_certs: Vec::new(),
        }
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be tokens: names only.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpOptions")
            .field("headers", &names)
            .field("auth", &self.auth)
            .field("auth_source", &self.auth_source)
            .field("s3", &self.s3)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("speed_limit", &self.speed_limit)
            .field("speed_time", &self.speed_time)
            .field("request_timeout", &self.request_timeout)
            .field("retries", &self.retries)
            .field("retry_base", &self.retry_base)
            .field("retry_cap", &self.retry_cap)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("max_in_flight", &self.max_in_flight)
            .field("readahead", &self.readahead)
            .field("cache_dir", &self.cache_dir)
            .field("ca_certs", &self.ca_certs)
            .finish()
    }
}

/// Traffic counters of one device (for benchmarks and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Requests sent, open probes and retries included.
    pub requests: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Client reads served entirely from memory (read-ahead windows and
    /// small reads kept), without a request.
    pub readahead_hits: u64,
    /// Bytes fetched by read-ahead and dropped before any client read them.
    pub readahead_wasted: u64,
}

/// A remote file served as a read-only device.
pub struct HttpDev {
    remote: Remote,
    readahead: ReadAhead,
    cache: Option<DiskCache>,
    /// The remote was seen to change: every read fails from then on.
    changed: AtomicBool,
}

impl fmt::Debug for HttpDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpDev")
            .field("url", &self.remote.url())
            .field("size", &self.remote.size())
            .field("cache", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpDev {
    /// Open `url`: check it, learn the size and validator, and set up the
    /// read-ahead and the cache. Fails with a message fit for the user
    /// (404 names the URL, 401/403 mention credentials).
    pub fn open(url: &str, opts: &HttpOptions) -> std::result::Result<HttpDev, HttpError> {
        let remote = Remote::open(url, opts)?;
        let cache = match (&opts.cache_dir, remote.validator()) {
            (None, _) => None,
            (Some(_), None) => {
                log::warn!(
                    "{}: no validator to tell versions apart; not using the on-disk cache",
                    remote.url()
                );
                None
            }
            (Some(dir), Some(v)) => {
                match DiskCache::open(dir, remote.url(), v.value(), remote.size()) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::warn!("{e}; continuing without the on-disk cache");
                        None
                    }
                }
            }
        };
        Ok(HttpDev {
            readahead: ReadAhead::new(opts.readahead, remote.size()),
            remote,
            cache,
            changed: AtomicBool::new(false),
        })
    }

    /// The URL (as given, normalised).
    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// Traffic so far.
    pub fn stats(&self) -> HttpStats {
        let ra = self.readahead.stats();
        HttpStats {
            readahead_hits: ra.hits,
            readahead_wasted: ra.wasted,
            ..self.remote.stats()
        }
    }

    /// Bytes from the disk cache if present, else from the origin.
    fn fill(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), HttpError> {
        let origin = |o: u64, b: &mut [u8]| self.remote.read_range(o, b);
        match &self.cache {
            Some(c) => c.read(buf, offset, &origin),
            None => origin(offset, buf),
        }
    }

    /// The read error, logged once per cause.
    fn fail(&self, e: HttpError, offset: u64) -> Error {
        match &e {
            HttpError::Changed { .. } => {
                if !self.changed.swap(true, Ordering::SeqCst) {
                    log::error!("{e}; failing this and every later read (reopen to serve it)");
                }
            }
            HttpError::Misbehaved { .. } | HttpError::RangeIgnored { .. } => {
                log::error!("{e}; failing the read rather than returning wrong bytes")
            }
            _ => log::error!("{e}"),
        }
        Error::new(ErrorKind::Io, e.to_string()).at(offset)
    }

    fn check_unchanged(&self) -> Result<()> {
        if self.changed.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{}: the remote file changed since it was opened; reads fail until it is reopened",
                    self.remote.url()
                ),
            ));
        }
        Ok(())
    }
}

impl BlockDev for HttpDev {
    fn size(&self) -> u64 {
        self.remote.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.check_unchanged()?;
        self.readahead
            .read(buf, offset, &|o, b| self.fill(o, b))
            .map_err(|e| self.fail(e, offset))
    }

    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size())?;
        self.check_unchanged()?;
        match &self.cache {
            Some(c) => c
                .prefetch(offset, len, &|o, b| self.remote.read_range(o, b))
                .map_err(|e| self.fail(e, offset)),
            None => Ok(()),
        }
    }

    fn caps(&self) -> Caps {
        if self.cache.is_some() {
            Caps::CACHE
        } else {
            Caps::empty()
        }
    }
}
