//! Extents: which parts of a range hold data, read as zeros, or are holes.
//!
//! This is the information behind NBD `base:allocation` block status
//! (proto.md, "Metadata querying"), the sparse `-o` output, and sparse
//! structured reads.

/// What an extent of a device holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Bytes that may be non-zero.
    Data,
    /// Allocated, but reads as zeros (NBD `STATE_ZERO`).
    Zero,
    /// Not allocated, reads as zeros (NBD `STATE_HOLE | STATE_ZERO`).
    Hole,
}

impl ExtentKind {
    /// Whether the extent reads as zeros.
    pub fn reads_zero(self) -> bool {
        !matches!(self, ExtentKind::Data)
    }
}

/// One extent: a length and what it holds. Its offset is implied by the
/// extents before it in an [`ExtentList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (never zero inside a list).
    pub len: u64,
    /// What the bytes hold.
    pub kind: ExtentKind,
}

/// A run of extents starting at `start`, built by a device's `extents()`.
///
/// Adjacent extents of the same kind merge. The list has a cap on its
/// number of entries so that a client asking about a huge fragmented range
/// cannot make the server build a huge list: once full, pushes are ignored
/// and [`ExtentList::is_full`] tells producers to stop. A partial answer is
/// allowed (NBD block status only has to make progress).
#[derive(Debug, Clone)]
pub struct ExtentList {
    start: u64,
    covered: u64,
    limit: usize,
    items: Vec<Extent>,
}

impl ExtentList {
    /// Default cap on entries: plenty for one NBD reply.
    pub const DEFAULT_LIMIT: usize = 1 << 16;

    /// An empty list starting at `start`.
    pub fn new(start: u64) -> Self {
        Self::with_limit(start, Self::DEFAULT_LIMIT)
    }

    /// An empty list starting at `start` holding at most `limit` entries.
    pub fn with_limit(start: u64, limit: usize) -> Self {
        ExtentList {
            start,
            covered: 0,
            limit: limit.max(1),
            items: Vec::new(),
        }
    }

    /// Empty the list and restart it at `start` with a new entry cap,
    /// keeping the allocation.
    pub fn reset(&mut self, start: u64, limit: usize) {
        self.start = start;
        self.covered = 0;
        self.limit = limit.max(1);
        self.items.clear();
    }

    /// Append `len` bytes of `kind`. Zero-length pushes are ignored.
    pub fn push(&mut self, len: u64, kind: ExtentKind) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.items.last_mut() {
            if last.kind == kind {
                last.len += len;
                self.covered += len;
                return;
            }
        }
        if self.items.len() >= self.limit {
            return;
        }
        self.items.push(Extent { len, kind });
        self.covered += len;
    }

    /// Append every extent of `other` (which must start where this ends).
    pub fn extend_from(&mut self, other: &ExtentList) {
        debug_assert_eq!(other.start, self.end());
        for e in &other.items {
            self.push(e.len, e.kind);
        }
    }

    /// True when no further distinct extent will be accepted.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.limit
    }

    /// Offset of the first extent.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Offset just past the last extent.
    pub fn end(&self) -> u64 {
        self.start + self.covered
    }

    /// Bytes covered.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// The extents in order.
    pub fn as_slice(&self) -> &[Extent] {
        &self.items
    }

    /// Whether the list holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Extents with their absolute offsets.
    pub fn iter_offsets(&self) -> impl Iterator<Item = (u64, Extent)> + '_ {
        let mut off = self.start;
        self.items.iter().map(move |e| {
            let here = off;
            off += e.len;
            (here, *e)
        })
    }

    /// Drop everything past `end` (used to clip an answer to a request).
    pub fn truncate_to(&mut self, end: u64) {
        while self.end() > end {
            let Some(last) = self.items.last_mut() else {
                return;
            };
            let excess = self.start + self.covered - end;
            if last.len > excess {
                last.len -= excess;
                self.covered -= excess;
            } else {
                self.covered -= last.len;
                self.items.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_merges_adjacent_same_kind() {
        let mut l = ExtentList::new(10);
        l.push(5, ExtentKind::Data);
        l.push(5, ExtentKind::Data);
        l.push(0, ExtentKind::Hole);
        l.push(3, ExtentKind::Hole);
        assert_eq!(
            l.as_slice(),
            &[
                Extent {
                    len: 10,
                    kind: ExtentKind::Data
                },
                Extent {
                    len: 3,
                    kind: ExtentKind::Hole
                }
            ]
        );
        assert_eq!(l.end(), 23);
    }

    #[test]
    fn limit_stops_new_entries_but_merges_continue() {
        let mut l = ExtentList::with_limit(0, 1);
        l.push(4, ExtentKind::Data);
        l.push(4, ExtentKind::Zero);
        l.push(4, ExtentKind::Data);
        assert!(l.is_full());
        assert_eq!(l.covered(), 8);
    }

    #[test]
    fn truncate_clips_last_extent() {
        let mut l = ExtentList::new(0);
        l.push(10, ExtentKind::Data);
        l.push(10, ExtentKind::Hole);
        l.truncate_to(15);
        assert_eq!(
            l.as_slice(),
            &[
                Extent {
                    len: 10,
                    kind: ExtentKind::Data
                },
                Extent {
                    len: 5,
                    kind: ExtentKind::Hole
                }
            ]
        );
        l.truncate_to(4);
        assert_eq!(
            l.as_slice(),
            &[Extent {
                len: 4,
                kind: ExtentKind::Data
            }]
        );
    }
}
