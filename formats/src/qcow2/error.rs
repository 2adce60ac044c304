//! Errors of opening a qcow2 image.

/// Why a qcow2 image cannot be served. Offsets are byte offsets in the
/// image file unless said otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QcowError {
    /// Reading the image file failed.
    #[error("reading {len} bytes at offset {offset} of the qcow2 image: {source}")]
    Read {
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: u64,
        /// The source's error.
        #[source]
        source: synth::Error,
    },

    /// The file does not start with the qcow2 magic.
    #[error("not a qcow2 image: the file does not start with \"QFI\\xfb\"")]
    NotQcow2,

    /// A structure does not make sense (offsets past the end of the file,
    /// unaligned tables, overlapping metadata, impossible sizes...).
    #[error("corrupt qcow2 image at offset {offset}: {what}")]
    Corrupt {
        /// Offset of the bad structure (or field).
        offset: u64,
        /// What is wrong.
        what: String,
    },

    /// The image uses a feature disksynth does not serve (named).
    #[error("the qcow2 image uses {feature}, which disksynth does not serve: {why}")]
    Refused {
        /// The feature, as the spec (or the image's feature name table)
        /// names it.
        feature: String,
        /// Why it is refused, and what to do about it.
        why: String,
    },

    /// The image has a backing file and none was given.
    #[error(
        "the qcow2 image has a backing file {name:?}{}: its unallocated clusters read \
         from it, so give it (--backing FILE|URL)",
        format.as_deref().map(|f| format!(" (format {f})")).unwrap_or_default()
    )]
    BackingNeeded {
        /// The backing file name stored in the image.
        name: String,
        /// The backing file format name extension, if present.
        format: Option<String>,
    },

    /// A table bigger than its memory budget (refused before anything is
    /// allocated for it).
    #[error("the qcow2 {what} takes {needed} bytes of memory, more than the {budget}-byte budget")]
    TooBig {
        /// Which table.
        what: &'static str,
        /// Bytes it would take.
        needed: u64,
        /// The budget.
        budget: u64,
    },

    /// Bad options for [`super::QcowDev::open`].
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl QcowError {
    pub(crate) fn corrupt(offset: u64, what: impl Into<String>) -> Self {
        QcowError::Corrupt {
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn refused(feature: impl Into<String>, why: impl Into<String>) -> Self {
        QcowError::Refused {
            feature: feature.into(),
            why: why.into(),
        }
    }
}
