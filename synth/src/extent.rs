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
///
/// The list describes one contiguous run from `start`: once a push has been
/// refused, the list is *closed* and every later push is ignored too, even
/// one of the same kind as the last entry. Merging it would stretch the last
/// extent over the refused bytes (a data extent followed by a refused hole
/// and then more data would claim the hole as data — harmless; a zero extent
/// followed by refused data and then zeros would claim that data reads as
/// zeros, and `qemu-img convert` would drop it).
#[derive(Debug, Clone)]
pub struct ExtentList {
    start: u64,
    covered: u64,
    limit: usize,
    /// A push was refused: nothing may be appended any more.
    closed: bool,
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
            closed: false,
            items: Vec::new(),
        }
    }

    /// Empty the list and restart it at `start` with a new entry cap,
    /// keeping the allocation.
    pub fn reset(&mut self, start: u64, limit: usize) {
        self.start = start;
        self.covered = 0;
        self.limit = limit.max(1);
        self.closed = false;
        self.items.clear();
    }

    /// Append `len` bytes of `kind`, which must start where the list ends.
    /// Zero-length pushes are ignored. A push that would need a new entry
    /// in a full list is refused and closes the list (see the type's doc).
    pub fn push(&mut self, len: u64, kind: ExtentKind) {
        if len == 0 || self.closed {
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
            self.closed = true;
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

    /// Accept nothing more: the caller could not tell what comes next (an
    /// inner device answered only part of a range), so nothing may be
    /// appended after the gap.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// True when no further distinct extent will be accepted.
    pub fn is_full(&self) -> bool {
        self.closed || self.items.len() >= self.limit
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
    fn a_full_list_still_merges_until_a_push_is_refused() {
        let mut l = ExtentList::with_limit(0, 1);
        l.push(4, ExtentKind::Data);
        assert!(l.is_full());
        // Contiguous and of the same kind: still a true answer.
        l.push(4, ExtentKind::Data);
        assert_eq!(l.covered(), 8);
    }

    #[test]
    fn nothing_merges_after_a_refused_push() {
        // The bug behind qemu-img convert losing data: Zero, then refused
        // Data, then Zero merged into the first extent, so the data range
        // was reported as zeros.
        for limit in [1, 2, 3] {
            let mut l = ExtentList::with_limit(0, limit);
            let kinds = [
                ExtentKind::Zero,
                ExtentKind::Hole,
                ExtentKind::Data,
                ExtentKind::Zero,
                ExtentKind::Data,
                ExtentKind::Zero,
            ];
            for k in kinds {
                l.push(4, k);
            }
            assert_eq!(l.as_slice().len(), limit.min(kinds.len()));
            // Every extent kept says what the pushes said at its offsets.
            for (off, e) in l.iter_offsets() {
                for b in (off..off + e.len).step_by(4) {
                    assert_eq!(kinds[(b / 4) as usize], e.kind, "limit {limit} at {b}");
                }
            }
            assert!(l.is_full());
        }
    }

    #[test]
    fn reset_reopens_a_closed_list() {
        let mut l = ExtentList::with_limit(0, 1);
        l.push(4, ExtentKind::Data);
        l.push(4, ExtentKind::Zero);
        l.reset(100, 2);
        l.push(4, ExtentKind::Zero);
        l.push(4, ExtentKind::Data);
        assert_eq!(l.covered(), 8);
        assert_eq!(l.start(), 100);
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
