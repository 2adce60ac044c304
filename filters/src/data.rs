//! Filters that change what the disk is or where its bytes come from:
//! windows (`offset`, `truncate`), `partition`, `cow`, `cache`, `readahead`.

use crate::Entry;

/// The data filters.
pub(crate) const FILTERS: &[Entry] = &[];
