//! The active L1 table (qcow2.txt "Cluster mapping", "L1 table entry").

use synth::BlockDev;

use super::error::QcowError;
use super::header::Header;

/// L1 entry bits 9-55: the L2 table's offset.
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// The L1 entries that cover the virtual disk, as read from the file.
#[derive(Debug, Clone)]
pub struct L1Table {
    entries: Vec<u64>,
    /// Where the table is in the file (for overlap checks).
    pub offset: u64,
    /// Its length in bytes (the entries read).
    pub bytes: u64,
}

impl L1Table {
    /// Read the entries covering `h.size` from `file` (of `file_size`
    /// bytes). `l2_entries` is the number of entries per L2 table; at most
    /// `max_bytes` of entries are read: a bigger table is refused before
    /// anything is allocated for it.
    pub fn read(
        file: &dyn BlockDev,
        h: &Header,
        file_size: u64,
        l2_entries: u64,
        max_bytes: u64,
    ) -> Result<L1Table, QcowError> {
        let cluster = h.cluster_size();
        // Guest bytes one L1 entry maps.
        let span = l2_entries * cluster;
        let needed = h.size.div_ceil(span);
        if needed > u64::from(h.l1_size) {
            return Err(QcowError::corrupt(
                36,
                format!(
                    "l1_size {} is too small for a {}-byte disk ({needed} entries needed)",
                    h.l1_size, h.size
                ),
            ));
        }
        let bytes = needed * 8;
        if bytes > max_bytes {
            return Err(QcowError::TooBig {
                what: "L1 table",
                needed: bytes,
                budget: max_bytes,
            });
        }
        let offset = h.l1_table_offset;
        if needed > 0 {
            // "Must be aligned to a cluster boundary"; cluster 0 is the header.
            if !offset.is_multiple_of(cluster) || offset == 0 {
                return Err(QcowError::corrupt(
                    40,
                    format!("l1_table_offset {offset} is not a cluster boundary past the header"),
                ));
            }
            if offset.checked_add(bytes).is_none_or(|e| e > file_size) {
                return Err(QcowError::corrupt(
                    40,
                    format!(
                        "the L1 table ({bytes} bytes at {offset}) reaches past the end of the \
                         file ({file_size} bytes)"
                    ),
                ));
            }
        }
        let mut raw = vec![0u8; bytes as usize];
        file.read_at(&mut raw, offset)
            .map_err(|source| QcowError::Read {
                offset,
                len: bytes,
                source,
            })?;
        let entries = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(L1Table {
            entries,
            offset,
            bytes,
        })
    }

    /// The L2 table offset of entry `i` (0: unallocated), or `None` past
    /// the table.
    pub fn l2_offset(&self, i: u64) -> Option<u64> {
        let i = usize::try_from(i).ok()?;
        self.entries.get(i).map(|e| e & L1E_OFFSET_MASK)
    }

    /// Entries read.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the disk is empty (no entries).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
