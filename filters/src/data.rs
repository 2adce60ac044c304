//! Filters that change what the disk is or where its bytes come from:
//! windows (`offset`, `truncate`), `partition`, `cow`, `cache`, `readahead`.
//!
//! Where a filter keeps state (an overlay, a cache, read-ahead windows) the
//! state lives in its factory and is shared by every client's layer, so a
//! second client (or a reconnect) sees what the first one wrote or
//! fetched; the layers themselves read through the client's own device
//! beneath, so per-client layers under them still see their client.

mod cache;
mod copies;
mod cow;
mod partition;
mod readahead;
mod window;

#[cfg(test)]
mod testutil;

use crate::Entry;

pub use cache::{CacheFactory, CacheStats};
pub use cow::CowFactory;
pub use partition::PartitionFactory;
pub use readahead::{ReadAheadFactory, ReadAheadStats};
pub use window::{OffsetFactory, Truncate, TruncateFactory};

/// The data filters.
pub(crate) const FILTERS: &[Entry] = &[
    Entry {
        name: "offset",
        usage: "offset:OFF[,len=LEN]",
        about: "a window of the disk: LEN bytes (default: to the end) from OFF",
        build: window::build_offset,
    },
    Entry {
        name: "truncate",
        usage: "truncate:SIZE|round-up=N|round-down=N",
        about: "resize the disk: a shrunk disk hides its tail, a grown one reads zeros past the \
                old end",
        build: window::build_truncate,
    },
    Entry {
        name: "partition",
        usage: "partition:N",
        about: "partition N (1-based; MBR logical partitions from 5) of an MBR or GPT disk",
        build: partition::build,
    },
    Entry {
        name: "cow",
        usage: "cow[:dir=DIR,max-disk=SIZE,store=file|memory]",
        about: "copy-on-write: writes land in a sparse overlay (a temp file in DIR, default \
                $TMPDIR), the disk \
                beneath is never written",
        build: cow::build,
    },
    Entry {
        name: "cache",
        usage: "cache:dir=DIR,size=SIZE[,key=NAME,block=SIZE]",
        about: "a disk-backed read cache for slow sources, shared by all clients, kept across \
                reconnects and restarts",
        build: cache::build,
    },
    Entry {
        name: "readahead",
        usage: "readahead[:size=SIZE]",
        about: "prefetch ahead of sequential reads, windows growing up to SIZE (default 4M)",
        build: readahead::build,
    },
];
