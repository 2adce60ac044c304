//! The one error type of the block-device model.
//!
//! Exporters map [`ErrorKind`] to their own error codes (NBD errnos in
//! `nbd-export`), so the kind is what matters to a client; the context and
//! source are what matter to the person reading the log.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// What went wrong, in the terms an exporter needs to answer a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backing store failed (host I/O error, remote error...).
    Io,
    /// The request reaches past the end of the device.
    OutOfBounds,
    /// The device (or this view of it) does not accept writes.
    ReadOnly,
    /// The operation is not supported by this device.
    Unsupported,
    /// A fast zero was asked for and zeroing would not be fast
    /// (NBD `FAST_ZERO` semantics: the client falls back to writing).
    NotFast,
    /// No space left to store written data.
    NoSpace,
    /// The request itself is malformed (bad alignment, bad flags...).
    InvalidInput,
    /// The bytes behind the device do not parse (a corrupt image).
    Corrupt,
}

/// A block-device error: a kind, the offset it concerns (if any), some
/// context for humans, and the underlying cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    offset: Option<u64>,
    context: Cow<'static, str>,
    source: Option<io::Error>,
}

/// Result alias used throughout the model.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A new error of `kind` with a human-readable context.
    pub fn new(kind: ErrorKind, context: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            offset: None,
            context: context.into(),
            source: None,
        }
    }

    /// An I/O failure of the backing store, with what we were doing.
    pub fn io(context: impl Into<Cow<'static, str>>, source: io::Error) -> Self {
        let nospace = [
            rustix::io::Errno::NOSPC.raw_os_error(),
            rustix::io::Errno::DQUOT.raw_os_error(),
        ];
        let kind = match source.raw_os_error() {
            Some(code) if nospace.contains(&code) => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            offset: None,
            context: context.into(),
            source: Some(source),
        }
    }

    /// A request for `len` bytes at `offset` on a device of `size` bytes.
    pub fn out_of_bounds(offset: u64, len: u64, size: u64) -> Self {
        Error::new(
            ErrorKind::OutOfBounds,
            format!("request of {len} bytes at offset {offset} reaches past the end of the device ({size} bytes)"),
        )
        .at(offset)
    }

    /// A write-type request on a read-only device.
    pub fn read_only() -> Self {
        Error::new(ErrorKind::ReadOnly, "the device is read-only")
    }

    /// An operation this device does not implement.
    pub fn unsupported(what: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Unsupported, what)
    }

    /// Zeroing was requested as fast-only and would not be fast here.
    pub fn not_fast() -> Self {
        Error::new(
            ErrorKind::NotFast,
            "zeroing this range would not be faster than writing zeros",
        )
    }

    /// The image behind the device is corrupt.
    pub fn corrupt(what: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Corrupt, what)
    }

    /// Attach the offset the error concerns.
    #[must_use]
    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// The kind, for mapping to a wire error code.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The offset the error concerns, when known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(off) = self.offset {
            if !self.context.contains("offset") {
                write!(f, " (at offset {off})")?;
            }
        }
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Check that `len` bytes at `offset` lie within a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::out_of_bounds(offset, len, size)),
    }
}
