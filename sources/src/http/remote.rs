//! The origin server: opening (size, validator) and validated ranged GETs
//! with retries, under the per-device cap on requests in flight.
//!
//! Three clocks bound an attempt, each failure retried like any transient
//! one: `read_timeout` (reqwest's, per wait: total silence), the low-speed
//! limit (fewer than `speed_limit` bytes/s over `speed_time`, counted from
//! the response head, as curl's `--speed-limit`/`--speed-time`: an origin
//! dripping bytes never goes silent) and the request deadline
//! (`request_timeout` per started [`DEADLINE_UNIT`] of the range, from the
//! request on: an origin pacing itself just above the speed limit). The last
//! two are checked whenever a read returns, so they act within one
//! `read_timeout` of being due.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_LENGTH,
    CONTENT_RANGE, IF_RANGE, RANGE, RETRY_AFTER,
};
use reqwest::{Method, StatusCode, Url};

use super::error::chain;
use super::headers::{
    choose_validator, parse_content_length, parse_content_range, parse_retry_after, ContentRange,
    ContentRangeError, Length, Validator,
};
use super::limit::{Limit, Permit, StallRule};
use super::presigned::{is_presigned, redact_url};
use super::s3::{self, S3Context, Signer};
use super::s3_error;
use super::{HttpAuth, HttpError, HttpOptions, HttpStats, MAX_SIZE};

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 10;
/// The request deadline is `request_timeout` per started unit of this many
/// bytes: one fixed deadline would be too long for a 4 KiB read or too short
/// for a 32 MiB one on a slow but healthy link.
pub(crate) const DEADLINE_UNIT: u64 = 4 << 20;
/// A request that has received less than the speed limit over this span (or
/// nothing, its response head included) stops counting against the in-flight
/// cap, so stalled ranges cannot starve reads the origin serves fast.
const STALL_WINDOW: Duration = Duration::from_secs(2);
/// Stalled requests may bring the requests in flight to this many times the
/// cap, and no further (connections and threads stay bounded).
const STALLED_FACTOR: usize = 4;

/// Why one attempt failed.
enum Failure {
    /// Transient: connection trouble, timeouts, truncated bodies, 5xx, 429,
    /// 408. `after` is the server's `Retry-After`, when it sent one.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal(HttpError),
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    retries: u32,
    base: Duration,
    cap: Duration,
    retry_after_cap: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with "equal jitter": half the delay fixed, half
    /// random, so many clients retrying after one outage spread out.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cap);
        exp / 2 + exp.mul_f64(fastrand::f64() / 2.0)
    }
}

/// Counters behind [`HttpStats`].
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
}

/// An opened remote file.
#[derive(Debug)]
pub(crate) struct Remote {
    client: Client,
    url: Url,
    /// `url` as shown in messages.
    shown: String,
    auth: Option<HttpAuth>,
    /// Signs every request (`s3://` URLs with credentials).
    signer: Option<Signer>,
    /// Set for `s3://` URLs: refusals are explained from S3's error document.
    s3: Option<S3Context>,
    /// A presigned URL ([`is_presigned`]): sent exactly as given, GET only
    /// (the signature covers the method: a HEAD would be refused), refusals explained as
    /// S3's.
    presigned: bool,
    validator: Option<Validator>,
    size: u64,
    retry: RetryPolicy,
    limit: Limit,
    /// Bytes/s below which a transfer is abandoned (0: never).
    speed_limit: u64,
    speed_time: Duration,
    request_timeout: Option<Duration>,
    stats: Counters,
}

/// What HEAD said.
struct HeadInfo {
    size: Option<u64>,
    /// `Content-Length` as sent, for a size refused as too big.
    size_text: String,
    ranges: bool,
    validator: Option<Validator>,
}

impl Remote {
    /// Check the URL and headers, build the client, and learn the size and
    /// validator.
    pub(crate) fn open(url: &str, opts: &HttpOptions) -> Result<Remote, HttpError> {
        let (parsed, shown, auth, signer, s3) = if s3::is_s3_url(url) {
            let env = |k: &str| std::env::var(k).ok();
            let t = s3::resolve(url, &opts.s3, opts.auth_source.as_ref(), &env)?;
            (t.url, t.shown, None, t.signer, Some(t.context))
        } else {
            let parsed = parse_url(url)?;
            let s3 = &opts.s3;
            if s3.region.is_some()
                || s3.endpoint.is_some()
                || s3.profile.is_some()
                || s3.no_sign_request
            {
                log::warn!(
                    "--region, --endpoint, --profile and --no-sign-request apply to s3:// URLs; \
                     ignored for {}",
                    redact_url(parsed.as_str())
                );
            }
            let auth = match (&opts.auth, &opts.auth_source) {
                (Some(a), _) => Some(a.clone()),
                (None, Some(src)) => Some(src.load_http()?),
                (None, None) => None,
            };
            (
                parsed.clone(),
                redact_url(parsed.as_str()),
                auth,
                None,
                None,
            )
        };
        let presigned = s3.is_none() && is_presigned(&parsed);
        let headers = extra_headers(&opts.headers)?;
        let mut builder = Client::builder();
        for path in &opts.ca_certs {
            let err = |reason: String| HttpError::CaCert {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificate in the file".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .user_agent(concat!("disksynth/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            // S3 answers a request for another region with 301 (no Location) or 307: a
            // signed request cannot follow either (the host is signed), so they are
            // explained instead.
            .redirect(if s3.is_some() {
                reqwest::redirect::Policy::none()
            } else {
                reqwest::redirect::Policy::limited(MAX_REDIRECTS)
            })
            .connect_timeout(opts.connect_timeout)
            // The blocking client applies this to the wait for the response
            // head and to every body read: an idle-read timeout, not a
            // limit on the whole transfer.
            .timeout(opts.read_timeout)
            .pool_max_idle_per_host(opts.max_in_flight.max(1))
            .tcp_nodelay(true)
            .build()
            .map_err(HttpError::Client)?;
        let mut remote = Remote {
            client,
            shown,
            url: parsed,
            auth,
            signer,
            s3,
            presigned,
            validator: None,
            size: 0,
            retry: RetryPolicy {
                retries: opts.retries,
                base: opts.retry_base,
                cap: opts.retry_cap,
                retry_after_cap: opts.retry_after_cap,
            },
            limit: Limit::new(
                opts.max_in_flight,
                opts.max_in_flight.saturating_mul(STALLED_FACTOR),
                StallRule {
                    window: STALL_WINDOW,
                    min_bytes: opts.speed_limit.saturating_mul(STALL_WINDOW.as_secs()),
                },
                opts.speed_time,
            ),
            // Over no time at all, every transfer would be too slow.
            speed_limit: if opts.speed_time.is_zero() {
                0
            } else {
                opts.speed_limit
            },
            speed_time: opts.speed_time,
            request_timeout: opts.request_timeout.filter(|d| !d.is_zero()),
            stats: Counters::default(),
        };
        remote.probe()?;
        Ok(remote)
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn url(&self) -> &str {
        &self.shown
    }

    pub(crate) fn validator(&self) -> Option<&Validator> {
        self.validator.as_ref()
    }

    pub(crate) fn stats(&self) -> HttpStats {
        HttpStats {
            requests: self.stats.requests.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            retries: self.stats.retries.load(Ordering::Relaxed),
            ..HttpStats::default()
        }
    }

    /// Size from HEAD `Content-Length` when the server also says
    /// `Accept-Ranges: bytes` (RFC 9110 §14.3); otherwise a `bytes=0-0`
    /// probe, which both proves ranges work and gives the complete length
    /// in `Content-Range` (§14.4).
    fn probe(&mut self) -> Result<(), HttpError> {
        let head = self.head()?;
        let (size, validator, how) = match head {
            Some(HeadInfo {
                size: Some(size),
                size_text,
                ranges,
                validator,
            }) if ranges || size == 0 => {
                self.check_size(size, "Content-Length", &size_text)?;
                (size, validator, "HEAD")
            }
            other => {
                let (size, validator) = self.range_probe()?;
                if let Some(HeadInfo { size: Some(h), .. }) = other {
                    if h != size {
                        log::warn!(
                            "{}: HEAD says {h} bytes but a range probe says {size}; using {size}",
                            self.shown
                        );
                    }
                }
                let validator = validator.or(other.and_then(|h| h.validator));
                (size, validator, "a range probe")
            }
        };
        self.size = size;
        self.validator = validator;
        match &self.validator {
            Some(v) => log::info!(
                "{}: {size} bytes (from {how}), validator {}",
                self.shown,
                v.describe()
            ),
            None => log::warn!(
                "{}: {size} bytes (from {how}); the server sends no strong ETag or \
                 Last-Modified, so a replacement of the same size cannot be detected",
                self.shown
            ),
        }
        Ok(())
    }

    /// Refuse a size NBD clients and qemu cannot address (they take sizes
    /// as a signed 64-bit number: a 2^64-1 origin would be served as -1).
    fn check_size(&self, size: u64, field: &'static str, text: &str) -> Result<(), HttpError> {
        if size > MAX_SIZE {
            return Err(HttpError::TooBig {
                url: self.shown.clone(),
                field,
                size: text.trim().to_owned(),
            });
        }
        Ok(())
    }

    /// HEAD; `None` when the server will not answer it usefully (405, 501,
    /// other errors: the range probe decides).
    fn head(&self) -> Result<Option<HeadInfo>, HttpError> {
        if self.presigned {
            return Ok(None);
        }
        self.with_retries("HEAD", |_| {
            let mut resp = self.send(Method::HEAD, None)?;
            let status = resp.status();
            if status.is_success() {
                let h = resp.headers();
                // Not `Response::content_length()`: for HEAD that is the
                // (empty) body's length, not the field.
                let size_text = h
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let size = match parse_content_length(size_text) {
                    Length::Bytes(n) => Some(n),
                    Length::TooLarge => {
                        return Err(Failure::Fatal(HttpError::TooBig {
                            url: self.shown.clone(),
                            field: "Content-Length",
                            size: size_text.trim().to_owned(),
                        }))
                    }
                    Length::Invalid => None,
                };
                let size_text = size_text.to_owned();
                let ranges = h
                    .get_all(ACCEPT_RANGES)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|u| u.trim().eq_ignore_ascii_case("bytes"));
                return Ok(Some(HeadInfo {
                    size,
                    size_text,
                    ranges,
                    validator: choose_validator(h),
                }));
            }
            match status.as_u16() {
                // A HEAD answer has no body, so no S3 error document: the range probe's
                // GET gets the refusal again, with its explanation.
                301 | 307 | 400 | 403 | 404 if self.s3.is_some() => {
                    log::debug!("{}: HEAD answered {status}; asking with GET", self.shown);
                    Ok(None)
                }
                404 | 410 | 401 | 403 | 407 | 429 => Err(self.status_failure(&mut resp, "HEAD")),
                _ => {
                    log::debug!("{}: HEAD answered {status}; probing with GET", self.shown);
                    Ok(None)
                }
            }
        })
    }

    /// `GET` with `Range: bytes=0-0`.
    fn range_probe(&self) -> Result<(u64, Option<Validator>), HttpError> {
        let what = "probing the size with Range: bytes=0-0";
        self.with_retries(what, |permit| {
            let started = Instant::now();
            let mut resp = self.send(Method::GET, Some((0, 0, false)))?;
            let range = content_range(resp.headers());
            // The complete length is too large for a u64, or for NBD.
            let too_big = |size: String| {
                Failure::Fatal(HttpError::TooBig {
                    url: self.shown.clone(),
                    field: "Content-Range",
                    size,
                })
            };
            // A complete length past 2^64-1 (the parse fails): say so, not
            // "malformed".
            let complete = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .map(|(_, n)| n.trim());
            if let Some(n) = complete.filter(|n| parse_content_length(n) == Length::TooLarge) {
                return Err(too_big(n.to_owned()));
            }
            match resp.status() {
                StatusCode::PARTIAL_CONTENT => match range {
                    Ok(ContentRange::Range {
                        first: 0,
                        last: 0,
                        complete: Some(size),
                    }) => {
                        if size > MAX_SIZE {
                            return Err(too_big(size.to_string()));
                        }
                        let mut byte = [0u8; 1];
                        self.read_body(&mut resp, &mut byte, permit, started)?;
                        Ok((size, choose_validator(resp.headers())))
                    }
                    Ok(ContentRange::Range { complete: None, .. }) => {
                        Err(Failure::Fatal(HttpError::NoSize {
                            url: self.shown.clone(),
                        }))
                    }
                    _ => Err(self.misbehaved(format!(
                        "asked for bytes 0-0, got Content-Range {}",
                        shown_field(resp.headers(), &CONTENT_RANGE)
                    ))),
                },
                // An empty file has no byte 0 (RFC 9110 §14.1.2).
                StatusCode::RANGE_NOT_SATISFIABLE => match range {
                    Ok(ContentRange::Unsatisfied { complete: 0 }) => {
                        Ok((0, choose_validator(resp.headers())))
                    }
                    _ => Err(self.misbehaved(format!(
                        "416 to bytes=0-0 with Content-Range {}",
                        shown_field(resp.headers(), &CONTENT_RANGE)
                    ))),
                },
                // §14.2: a server may ignore Range; this device cannot work then.
                StatusCode::OK => Err(Failure::Fatal(HttpError::NoRanges {
                    url: self.shown.clone(),
                })),
                _ => Err(self.status_failure(&mut resp, what)),
            }
        })
    }

    /// Fill `buf` with the bytes at `start`, with one validated ranged GET
    /// (retried on transient failures). `buf` is bounded by the caller.
    pub(crate) fn read_range(&self, start: u64, buf: &mut [u8]) -> Result<(), HttpError> {
        if buf.is_empty() {
            return Ok(());
        }
        let last = start + buf.len() as u64 - 1;
        let what = format!("reading bytes {start}-{last}");
        self.with_retries(&what, |permit| self.try_range(start, last, buf, permit))
    }

    fn try_range(
        &self,
        start: u64,
        last: u64,
        buf: &mut [u8],
        permit: &Permit<'_>,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let mut resp = self.send(Method::GET, Some((start, last, true)))?;
        match resp.status() {
            // §15.3.7: the only answer that carries exactly the bytes asked for.
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => return Err(self.whole_file(resp.headers())),
            // §15.5.17: the range is past the end: the file shrank.
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let now = match content_range(resp.headers()) {
                    Ok(ContentRange::Unsatisfied { complete }) => format!("{complete} bytes"),
                    _ => "an unknown size".into(),
                };
                return Err(self.changed(format!(
                    "range not satisfiable (416): it is now {now}, it was {} bytes",
                    self.size
                )));
            }
            _ => {
                return Err(self.status_failure(&mut resp, &format!("reading bytes {start}-{last}")))
            }
        }
        let h = resp.headers();
        match content_range(h) {
            Ok(ContentRange::Range {
                first,
                last: l,
                complete,
            }) => {
                if complete != Some(self.size) {
                    return Err(match complete {
                        Some(c) => self.changed(format!(
                            "its size changed from {} to {c} bytes (Content-Range)",
                            self.size
                        )),
                        None => self.misbehaved("Content-Range without the complete length".into()),
                    });
                }
                if (first, l) != (start, last) {
                    return Err(self.misbehaved(format!(
                        "asked for bytes {start}-{last}, got Content-Range bytes {first}-{l}/{}",
                        self.size
                    )));
                }
            }
            // A 206 without a usable Content-Range (or a multipart answer,
            // which a single range never asks for) cannot be placed.
            _ => {
                return Err(self.misbehaved(format!(
                    "206 with Content-Range {} for bytes {start}-{last}",
                    shown_field(h, &CONTENT_RANGE)
                )))
            }
        }
        // A server that ignores If-Range still shows a new validator.
        if let Some(detail) = self.validator.as_ref().and_then(|v| v.contradicted_by(h)) {
            return Err(self.changed(detail));
        }
        let want = buf.len() as u64;
        let length = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(parse_content_length);
        match length {
            Some(Length::Bytes(n)) if n == want => {}
            Some(Length::Bytes(n)) => {
                return Err(self.misbehaved(format!(
                    "Content-Length {n} for a {want}-byte Content-Range"
                )))
            }
            Some(Length::TooLarge) => {
                return Err(self.misbehaved(format!(
                    "a Content-Length past 2^64-1 for a {want}-byte Content-Range"
                )))
            }
            Some(Length::Invalid) | None => {}
        }
        self.read_body(&mut resp, buf, permit, started)
    }

    /// The error for a `200` (the whole file) to a ranged GET.
    ///
    /// RFC 9110 §13.1.5: with `If-Range`, a 200 is the answer when the
    /// validator no longer matches, i.e. the file was replaced. But §14.2
    /// also lets a server (or a proxy, or a CDN) ignore `Range` altogether
    /// and answer 200 with the same file. Only a different validator (or
    /// size) on the 200 proves a replacement; the same or no validator means
    /// ranges were ignored, and later reads may well succeed.
    fn whole_file(&self, h: &HeaderMap) -> Failure {
        if let Some(detail) = self.validator.as_ref().and_then(|v| v.contradicted_by(h)) {
            return self.changed(format!(
                "the server sent the whole file (200) instead of the range asked with If-Range, \
                 and {detail}: the remote file was replaced"
            ));
        }
        let length = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(parse_content_length);
        if let Some(Length::Bytes(n)) = length {
            if n != self.size {
                return self.changed(format!(
                    "the server sent the whole file (200) instead of a range, and its size \
                     changed from {} to {n} bytes: the remote file was replaced",
                    self.size
                ));
            }
        }
        let detail = match &self.validator {
            Some(v) if v.present_in(h) => format!(", {} unchanged", v.describe()),
            Some(v) => format!(", without the {} sent as If-Range", v.name()),
            None => String::new(),
        };
        Failure::Fatal(HttpError::RangeIgnored {
            url: self.shown.clone(),
            detail,
        })
    }

    /// Read exactly `buf.len()` body bytes, then check the body ends there.
    /// The attempt started at `started` (before its request was sent);
    /// `permit` receives the progress.
    fn read_body(
        &self,
        resp: &mut Response,
        buf: &mut [u8],
        permit: &Permit<'_>,
        started: Instant,
    ) -> Result<(), Failure> {
        let want = buf.len();
        let deadline = self.deadline(want as u64);
        // The speed limit counts from the response head: the wait for it is
        // bounded by `read_timeout` already.
        let body_start = Instant::now();
        let mut got = 0;
        while got < want {
            self.check_pace(permit, started, deadline, body_start, got, want)?;
            match resp.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(Failure::Retry {
                        why: format!("body truncated after {got} of {want} bytes"),
                        after: None,
                    })
                }
                Ok(n) => {
                    got += n;
                    permit.progress().add(n as u64);
                    self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Failure::Retry {
                        why: format!(
                            "body read failed after {got} of {want} bytes: {}",
                            chain(&e)
                        ),
                        after: None,
                    })
                }
            }
        }
        // The body is exactly the range (§15.3.7); reading to its end also
        // lets the connection go back to the pool.
        let mut extra = [0u8; 1];
        match resp.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.misbehaved(format!(
                "the body is longer than the {want} bytes of its Content-Range"
            ))),
            Err(e) => Err(Failure::Retry {
                why: format!("body read failed at its end: {}", chain(&e)),
                after: None,
            }),
        }
    }

    /// How long a request for `len` bytes may take in all.
    fn deadline(&self, len: u64) -> Option<Duration> {
        let units = len.div_ceil(DEADLINE_UNIT).max(1);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        self.request_timeout.map(|t| t.saturating_mul(units))
    }

    /// Fail the attempt (to be retried) when it is past its deadline or
    /// slower than the speed limit over the last `speed_time`.
    fn check_pace(
        &self,
        permit: &Permit<'_>,
        started: Instant,
        deadline: Option<Duration>,
        body_start: Instant,
        got: usize,
        want: usize,
    ) -> Result<(), Failure> {
        let elapsed = started.elapsed();
        if let Some(d) = deadline.filter(|d| elapsed > *d) {
            return Err(Failure::Retry {
                why: format!(
                    "past the request deadline of {} s (per started {} MiB of the range): {got} \
                     of {want} bytes",
                    d.as_secs_f64(),
                    DEADLINE_UNIT >> 20
                ),
                after: None,
            });
        }
        if self.speed_limit > 0 {
            let min = self
                .speed_limit
                .saturating_mul(self.speed_time.as_millis() as u64)
                / 1000;
            if permit
                .progress()
                .slower_than(min.max(1), self.speed_time, body_start)
            {
                return Err(Failure::Retry {
                    why: format!(
                        "below the low-speed limit of {} bytes/s over {} s: {got} of {want} \
                         bytes in {:.1} s",
                        self.speed_limit,
                        self.speed_time.as_secs_f64(),
                        elapsed.as_secs_f64()
                    ),
                    after: None,
                });
            }
        }
        Ok(())
    }

    /// Send one request. `range` is `(first, last, with If-Range)`.
    /// Signed anew for every attempt: a retry carries a fresh `x-amz-date`.
    fn send(&self, method: Method, range: Option<(u64, u64, bool)>) -> Result<Response, Failure> {
        let range_value = range.map(|(first, last, _)| format!("bytes={first}-{last}"));
        let signed = match &self.signer {
            Some(s) => s
                .headers(
                    &method,
                    &self.url,
                    range_value.as_deref(),
                    SystemTime::now(),
                )
                .map_err(Failure::Fatal)?,
            None => Vec::new(),
        };
        let mut rb = self.client.request(method, self.url.clone());
        if let Some(value) = range_value {
            rb = rb.header(RANGE, value);
        }
        if let Some((_, _, true)) = range {
            if let Some(v) = &self.validator {
                rb = rb.header(IF_RANGE, v.value());
            }
        }
        for (name, value) in signed {
            rb = rb.header(name, value);
        }
        if let Some(auth) = &self.auth {
            rb = auth.apply(rb);
        }
        rb.send().map_err(|e| {
            if e.is_redirect() || e.is_builder() {
                Failure::Fatal(HttpError::Request {
                    url: self.shown.clone(),
                    what: "sending the request".into(),
                    detail: chain(&e),
                })
            } else {
                Failure::Retry {
                    why: chain(&e),
                    after: None,
                }
            }
        })
    }

    /// Classify an unwanted status. For S3 (and presigned URLs) the error document in the
    /// body (at most [`s3_error::MAX_ERROR_BODY`] bytes read) says why.
    fn status_failure(&self, resp: &mut Response, what: &str) -> Failure {
        let status = resp.status();
        let url = self.shown.clone();
        let code = status.as_u16();
        let document = if self.s3.is_some() || self.presigned {
            s3_error::parse_error(&read_error_body(resp))
        } else {
            None
        };
        if (self.s3.is_some() || self.presigned)
            && (matches!(code, 301 | 307 | 400 | 401 | 403 | 404 | 409) || document.is_some())
            && !matches!(code, 408 | 429 | 500..=599)
        {
            let region = resp
                .headers()
                .get("x-amz-bucket-region")
                .and_then(|v| v.to_str().ok());
            return Failure::Fatal(s3_error::explain(
                &self.shown,
                code,
                document.as_ref(),
                region,
                self.s3.as_ref(),
            ));
        }
        match code {
            // §15.5.9 (408), §15.6 (5xx) and RFC 6585 §4 (429) are transient;
            // Retry-After (§10.2.3) says for how long. S3's 503 SlowDown is one.
            408 | 429 | 500..=599 => Failure::Retry {
                why: match &document {
                    Some(e) => format!("HTTP {status} ({})", e.code),
                    None => format!("HTTP {status}"),
                },
                after: resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now())),
            },
            404 | 410 => Failure::Fatal(HttpError::NotFound { url, status: code }),
            401 | 403 | 407 => Failure::Fatal(HttpError::Denied {
                url,
                status: code,
                hint: if self.auth.is_some() {
                    "the server refused the credentials given; check them"
                } else {
                    "no credentials were given; pass them in an environment variable or a file"
                },
            }),
            _ => Failure::Fatal(HttpError::Status {
                url,
                what: what.to_owned(),
                status: code,
            }),
        }
    }

    fn changed(&self, detail: String) -> Failure {
        Failure::Fatal(HttpError::Changed {
            url: self.shown.clone(),
            detail,
        })
    }

    fn misbehaved(&self, detail: String) -> Failure {
        Failure::Fatal(HttpError::Misbehaved {
            url: self.shown.clone(),
            detail,
        })
    }

    /// Run `attempt` until it succeeds, fails for good, or the retries are
    /// spent. Each attempt holds a slot of the in-flight cap (and reports
    /// its progress there); the waits between attempts do not.
    fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut(&Permit<'_>) -> Result<T, Failure>,
    ) -> Result<T, HttpError> {
        let mut done = 0;
        loop {
            let result = {
                let slot = self.limit.acquire();
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                attempt(&slot)
            };
            let (why, after) = match result {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { why, after }) => (why, after),
            };
            if done >= self.retry.retries {
                return Err(HttpError::GaveUp {
                    url: self.shown.clone(),
                    what: what.to_owned(),
                    tries: done + 1,
                    last: why,
                });
            }
            let delay = match after {
                Some(a) => a.min(self.retry.retry_after_cap),
                None => self.retry.backoff(done),
            };
            done += 1;
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{}: {what}: {why}; retry {done}/{} in {} ms",
                self.shown,
                self.retry.retries,
                delay.as_millis()
            );
            std::thread::sleep(delay);
        }
    }
}

/// How long reading an error document may take (plus one `read_timeout` for the read under
/// way): it is only an explanation, and a server dripping it must not hold the open up.
const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(5);

/// The start of an error response's body: at most [`s3_error::MAX_ERROR_BODY`] bytes, read
/// for at most [`ERROR_BODY_DEADLINE`]; a failing read ends it.
fn read_error_body(resp: &mut Response) -> Vec<u8> {
    let started = Instant::now();
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    while (body.len() as u64) < s3_error::MAX_ERROR_BODY && started.elapsed() < ERROR_BODY_DEADLINE
    {
        let room = (s3_error::MAX_ERROR_BODY as usize - body.len()).min(chunk.len());
        match resp.read(&mut chunk[..room]) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    body
}

/// The response's `Content-Range`: `Err(None)` when absent or not text.
fn content_range(h: &HeaderMap) -> Result<ContentRange, Option<ContentRangeError>> {
    let v = h
        .get(CONTENT_RANGE)
        .ok_or(None)?
        .to_str()
        .map_err(|_| None)?;
    parse_content_range(v).map_err(Some)
}

/// A response field for an error message (server-chosen, never a secret of ours).
fn shown_field(h: &HeaderMap, name: &HeaderName) -> String {
    match h.get(name).map(|v| v.to_str()) {
        None => "(none)".into(),
        Some(Ok(v)) => format!("{v:?}"),
        Some(Err(_)) => "(not text)".into(),
    }
}

/// Parse and vet the URL.
fn parse_url(url: &str) -> Result<Url, HttpError> {
    let mut parsed = Url::parse(url).map_err(|e| HttpError::BadUrl {
        url: redact_url(&strip_userinfo(url)),
        reason: e.to_string(),
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        return Err(HttpError::CredentialsInUrl {
            url: redact_url(parsed.as_str()),
        });
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HttpError::BadUrl {
            url: redact_url(parsed.as_str()),
            reason: "only http://, https:// and s3:// are supported".into(),
        });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(HttpError::BadUrl {
            url: redact_url(parsed.as_str()),
            reason: "no host".into(),
        });
    }
    Ok(parsed)
}

/// `scheme://user:pass@host/...` without `user:pass@`, for a URL that did
/// not even parse.
fn strip_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The extra headers plus `Accept-Encoding: identity`: ranges must be of
/// the stored bytes, not of an encoding the server may pick per request
/// (RFC 9110 §12.5.3, §14.1).
fn extra_headers(extra: &[(String, String)]) -> Result<HeaderMap, HttpError> {
    let mut map = HeaderMap::new();
    map.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    for (name, value) in extra {
        let bad = |reason| HttpError::BadHeader {
            name: name.clone(),
            reason,
        };
        let n = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad("not a valid header name"))?;
        match n.as_str() {
            "range" | "if-range" => return Err(bad("it is set by disksynth for every read")),
            "authorization" | "proxy-authorization" => {
                return Err(bad(
                    "credentials are never taken from the command line; pass them in an \
                     environment variable or a file",
                ))
            }
            _ => {}
        }
        let mut v = HeaderValue::from_str(value.trim())
            .map_err(|_| bad("the value has characters a header cannot carry"))?;
        // Keep cookie-like values out of reqwest's Debug output.
        if matches!(n.as_str(), "cookie" | "x-api-key" | "x-auth-token") {
            v.set_sensitive(true);
        }
        if n == ACCEPT_ENCODING {
            map.insert(n, v);
        } else {
            map.append(n, v);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        let e = parse_url("https://bob:hunter2@example.com/disk.img")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && !e.contains("bob"), "{e}");
        assert!(e.contains("example.com/disk.img"), "{e}");
        let e = parse_url("https://bob:hunter2@exa mple.com/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse_url("ftp://example.com/x").is_err());
        assert!(parse_url("http://example.com/x").is_ok());
    }

    #[test]
    fn presigned_urls_are_kept_byte_for_byte() {
        // As boto3's generate_presigned_url writes them: the signature covers the query as
        // sent, so the parser must not re-encode, reorder or decode any of it.
        let url = "https://bkt.s3.eu-west-1.amazonaws.com/dir/a%20b%2Bc.img?\
                   X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261203%2F\
                   eu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20261203T011740Z&X-Amz-Expires=3600\
                   &X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQo%2Bb3%3D&\
                   X-Amz-Signature=3349d531fb9db18bb8b0d87ed18ccc6c5d6a1cf69dbcc4d8ff060b2618e6ac52";
        assert_eq!(parse_url(url).unwrap().as_str(), url);
    }

    #[test]
    fn unparsable_urls_do_not_show_presigned_credentials() {
        let e = parse_url("ftp://h/k?Signature=s3cr3t")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn extra_headers_are_vetted() {
        let ok = extra_headers(&[("X-Thing".into(), " 1 ".into())]).unwrap();
        assert_eq!(ok.get("x-thing").unwrap(), "1");
        for name in ["Range", "authorization", "bad name"] {
            let e = extra_headers(&[(name.into(), "secret-value".into())])
                .unwrap_err()
                .to_string();
            assert!(!e.contains("secret-value"), "{e}");
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let p = RetryPolicy {
            retries: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            retry_after_cap: Duration::from_secs(30),
        };
        for attempt in 0..30 {
            let exp = (Duration::from_millis(100) * (1u32 << attempt.min(20)))
                .min(Duration::from_secs(5));
            let d = p.backoff(attempt);
            assert!(d >= exp / 2 && d <= exp, "{attempt}: {d:?}");
        }
    }
}
