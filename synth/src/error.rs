//! The one error type of the block-device model.
//!
//! Exporters map [`ErrorKind`] to their own error codes (NBD errnos in
//! `nbd-export`), so the kind is what matters to a client; the context and
//! source are what matter to the person reading the log.
//!
//! `Display` prints the error's own context only and `source()` returns the
//! cause (any error: an `io::Error`, an HTTP client's error...), as the
//! standard library's convention asks: whoever prints a chain (anyhow, the
//! cli) then shows every cause exactly once. `{:#}` prints the whole chain
//! on one line, for log lines and NBD error strings that have no chain
//! printer of their own.

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
    /// The client may not have the device (an address policy, a client
    /// limit): NBD `ERR_POLICY`.
    Refused,
}

/// A block-device error: a kind, the offset it concerns (if any), some
/// context for humans, and the underlying cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    offset: Option<u64>,
    context: Cow<'static, str>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
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
        Error::with_source(kind, context, source)
    }

    /// An error of `kind` with what we were doing and its cause, which can
    /// be any error (kept whole: `source()` returns it, and it can be
    /// downcast to its own type).
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<Cow<'static, str>>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error {
            kind,
            offset: None,
            context: context.into(),
            source: Some(source.into()),
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

    /// The cause, when it is a host I/O error (e.g. to look at its errno).
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_deref()?.downcast_ref()
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
        if f.alternate() {
            // The whole chain, each cause once: a cause that (against the
            // convention) repeats its own source at the end of its message
            // makes that source redundant.
            let mut last = String::new();
            let mut cur = std::error::Error::source(self);
            while let Some(cause) = cur {
                let text = cause.to_string();
                let repeated = last == text || last.ends_with(&format!(": {text}"));
                if !text.is_empty() && !repeated {
                    write!(f, ": {text}")?;
                }
                last = text;
                cur = cause.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Check that `len` bytes at `offset` lie within a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::out_of_bounds(offset, len, size)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// A cause that is not an `io::Error`, as an HTTP client's would be.
    #[derive(Debug)]
    struct Refused;

    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the origin refused the range")
        }
    }

    impl std::error::Error for Refused {}

    #[test]
    fn display_is_the_context_and_the_cause_comes_from_source() {
        let io = io::Error::from_raw_os_error(rustix::io::Errno::NOENT.raw_os_error());
        let os_text = io.to_string();
        let e = Error::io("opening disk.img", io).at(4096);
        assert_eq!(e.to_string(), "opening disk.img (at offset 4096)");
        assert_eq!(e.source().unwrap().to_string(), os_text);
        assert_eq!(e.io_error().unwrap().kind(), io::ErrorKind::NotFound);
        // The one-line form shows the cause once.
        assert_eq!(
            format!("{e:#}"),
            format!("opening disk.img (at offset 4096): {os_text}")
        );
    }

    #[test]
    fn any_error_can_be_the_source() {
        let e = Error::with_source(ErrorKind::Io, "reading bytes 0-4095", Refused);
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.to_string(), "reading bytes 0-4095");
        let src = e.source().unwrap();
        assert!(src.downcast_ref::<Refused>().is_some());
        assert!(e.io_error().is_none());
        assert_eq!(
            format!("{e:#}"),
            "reading bytes 0-4095: the origin refused the range"
        );
        // A synth::Error as the cause of another: a chain of three.
        let outer = Error::with_source(ErrorKind::Io, "serving block 7", e);
        assert_eq!(outer.to_string(), "serving block 7");
        assert_eq!(
            format!("{outer:#}"),
            "serving block 7: reading bytes 0-4095: the origin refused the range"
        );
    }

    #[test]
    fn full_disks_are_nospace_whatever_the_context() {
        for errno in [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT] {
            let e = Error::io(
                "writing",
                io::Error::from_raw_os_error(errno.raw_os_error()),
            );
            assert_eq!(e.kind(), ErrorKind::NoSpace);
        }
        let e = Error::io("writing", io::Error::other("boom"));
        assert_eq!(e.kind(), ErrorKind::Io);
    }

    /// An error written against the convention: its message ends with its
    /// source's, which it also returns.
    #[derive(Debug)]
    struct Repeats(Refused);

    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "fetching: {}", self.0)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_repeating_its_own_source_is_shown_once() {
        let e = Error::with_source(ErrorKind::Io, "outer", Repeats(Refused));
        assert_eq!(
            format!("{e:#}"),
            "outer: fetching: the origin refused the range"
        );
    }
}
