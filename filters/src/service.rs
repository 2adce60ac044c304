//! Filters that watch, slow, fail, limit or admit requests and clients
//! without changing a byte: `delay`, `error`, `log`, `stats`, `rate`, `ip`,
//! `limit`, `exitlast`.

use crate::Entry;

/// The service filters.
pub(crate) const FILTERS: &[Entry] = &[];
