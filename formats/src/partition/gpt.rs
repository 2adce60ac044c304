//! The GUID partition table (UEFI specification 2.10, §5.3): a header at
//! LBA 1 and a 128-entry partition array after it, mirrored at the end of
//! the disk (array, then the backup header in the last sector). Sectors are
//! 512 or 4096 bytes: the array is 16 KiB either way (32 or 4 sectors).
//!
//! ```text
//! header (92 bytes, rest of the sector zero; integers little-endian)
//!   0 "EFI PART"  8 revision 1.0  12 header size  16 header CRC32  20 0
//!  24 this LBA   32 other header's LBA   40 first usable LBA   48 last usable LBA
//!  56 disk GUID  72 array LBA   80 entries   84 entry size   88 array CRC32
//! entry (128 bytes)
//!   0 type GUID  16 unique GUID  32 first LBA  40 last LBA (inclusive)
//!  48 attributes  56 name (36 UTF-16LE code units)
//! ```

/// Entries in the partition array (the minimum the spec allows: 16 KiB,
/// UEFI 2.10 §5.3.2 "SizeOfPartitionEntry * NumberOfPartitionEntries").
pub const ENTRIES: usize = 128;
/// Bytes per entry (§5.3.3, Table 5.6).
pub const ENTRY_SIZE: usize = 128;
/// Bytes of the header proper (§5.3.2, Table 5.5); the rest of its sector is zero.
pub const HEADER_SIZE: usize = 92;
/// Bytes of the partition array.
pub const ARRAY_BYTES: u64 = (ENTRIES * ENTRY_SIZE) as u64;

/// Sectors of the partition array: 32 of 512 bytes, 4 of 4096.
pub const fn array_sectors(sector_size: u64) -> u64 {
    ARRAY_BYTES.div_ceil(sector_size)
}

/// Sectors a table takes at each end of the disk besides LBA 0 (the
/// protective MBR): header + array (33 of 512 bytes, 5 of 4096).
pub const fn table_sectors(sector_size: u64) -> u64 {
    1 + array_sectors(sector_size)
}

/// The first LBA a partition may use: after the protective MBR, the
/// primary header and the array (34 with 512-byte sectors, 6 with 4096).
pub const fn first_usable(sector_size: u64) -> u64 {
    2 + array_sectors(sector_size)
}

/// A GUID as it is stored on disk (the first three fields little-endian,
/// §Appendix A "GUID and Time Formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parse the text form `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` (for
    /// constants: malformed text panics, at compile time in a `const`).
    pub const fn parse(s: &str) -> Guid {
        const fn hex(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => panic!("not a hex digit in a GUID"),
            }
        }
        let s = s.as_bytes();
        assert!(s.len() == 36, "a GUID has 36 characters");
        // Text order of the 16 bytes, then the on-disk order of each.
        let mut text = [0u8; 16];
        let (mut i, mut n) = (0, 0);
        while i < 36 {
            if s[i] == b'-' {
                i += 1;
                continue;
            }
            text[n] = hex(s[i]) << 4 | hex(s[i + 1]);
            n += 1;
            i += 2;
        }
        let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
        let mut out = [0u8; 16];
        let mut k = 0;
        while k < 16 {
            out[k] = text[order[k]];
            k += 1;
        }
        Guid(out)
    }

    /// Parse the text form of user input: `None` unless it is 36
    /// characters of 8-4-4-4-12 hex digits.
    pub fn try_parse(s: &str) -> Option<Guid> {
        let b = s.as_bytes();
        let ok = b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        ok.then(|| Guid::parse(s))
    }

    /// A version-4 (random-format) GUID from 16 bytes of a hash: a
    /// reproducible image gets the same GUIDs every build.
    pub fn from_hash(mut bytes: [u8; 16]) -> Guid {
        // On disk, byte 7 is the high byte of time_hi_and_version.
        bytes[7] = (bytes[7] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Guid(bytes)
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02X}"))
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// Partition type.
    pub kind: Guid,
    /// This partition's own GUID.
    pub guid: Guid,
    /// First sector.
    pub first: u64,
    /// Last sector (inclusive).
    pub last: u64,
    /// Attribute bits (bit 0: required by the platform; 60: read-only...).
    pub attributes: u64,
    /// Name, at most 36 UTF-16 code units.
    pub name: String,
}

/// Why a table cannot be laid out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GptError {
    /// More partitions than array entries.
    #[error("{0} partitions; the table holds {ENTRIES}")]
    TooMany(usize),
    /// A partition outside the usable area, empty, or overlapping another.
    #[error("partition {index} ({first}..={last}) {reason}")]
    Placement {
        /// 1-based partition number.
        index: usize,
        /// Its first sector.
        first: u64,
        /// Its last sector.
        last: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The disk has no room for two tables.
    #[error("a disk of {0} sectors is too small for a GUID partition table")]
    DiskTooSmall(u64),
}

/// A complete table for a disk of `disk_sectors` sectors.
#[derive(Debug, Clone)]
pub struct Gpt {
    /// Bytes per logical block (512 or 4096).
    pub sector_size: u64,
    /// The disk's GUID.
    pub disk_guid: Guid,
    /// Sectors on the disk.
    pub disk_sectors: u64,
    /// Partitions in entry order.
    pub partitions: Vec<GptPartition>,
}

impl Gpt {
    /// First sector partitions may use: after the primary header and array.
    pub fn first_usable(&self) -> u64 {
        first_usable(self.sector_size)
    }

    /// Last sector partitions may use: before the backup array.
    pub fn last_usable(&self) -> u64 {
        self.disk_sectors - 1 - table_sectors(self.sector_size)
    }

    /// Check that every partition lies in the usable area, is not empty and
    /// overlaps no other (§5.3.3).
    pub fn validate(&self) -> Result<(), GptError> {
        if self.disk_sectors < self.first_usable() + table_sectors(self.sector_size) + 1 {
            return Err(GptError::DiskTooSmall(self.disk_sectors));
        }
        if self.partitions.len() > ENTRIES {
            return Err(GptError::TooMany(self.partitions.len()));
        }
        for (i, p) in self.partitions.iter().enumerate() {
            let err = |reason| GptError::Placement {
                index: i + 1,
                first: p.first,
                last: p.last,
                reason,
            };
            if p.last < p.first {
                return Err(err("ends before it starts"));
            }
            if p.first < self.first_usable() || p.last > self.last_usable() {
                return Err(err("is outside the usable sectors"));
            }
            if self.partitions[..i]
                .iter()
                .any(|q| q.first <= p.last && p.first <= q.last)
            {
                return Err(err("overlaps another partition"));
            }
        }
        Ok(())
    }

    /// The partition array (§5.3.3): one 128-byte entry per partition,
    /// unused entries zero.
    fn array(&self) -> Vec<u8> {
        let mut a = vec![0u8; ENTRIES * ENTRY_SIZE];
        for (p, e) in self.partitions.iter().zip(a.chunks_mut(ENTRY_SIZE)) {
            e[0..16].copy_from_slice(&p.kind.0);
            e[16..32].copy_from_slice(&p.guid.0);
            e[32..40].copy_from_slice(&p.first.to_le_bytes());
            e[40..48].copy_from_slice(&p.last.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (i, u) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        a
    }

    /// A header (§5.3.2, Table 5.5) in a sector of its own.
    fn header(&self, this: u64, other: u64, array_lba: u64, array_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; self.sector_size as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[24..32].copy_from_slice(&this.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        // The header CRC covers the header with its own CRC field zero.
        let crc = crc32fast::hash(&h[..HEADER_SIZE]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The array padded to whole sectors (the padding is not in its CRC).
    fn padded_array(&self) -> (Vec<u8>, u32) {
        let mut a = self.array();
        let crc = crc32fast::hash(&a);
        a.resize(
            (array_sectors(self.sector_size) * self.sector_size) as usize,
            0,
        );
        (a, crc)
    }

    /// The primary table (§5.3.1): header at LBA 1, array from LBA 2; to be
    /// placed at byte `sector_size`.
    pub fn primary(&self) -> Result<Vec<u8>, GptError> {
        self.validate()?;
        let (array, crc) = self.padded_array();
        let last = self.disk_sectors - 1;
        let mut out = self.header(1, last, 2, crc);
        out.extend_from_slice(&array);
        Ok(out)
    }

    /// The backup table (§5.3.1): array, then the header in the last LBA;
    /// to be placed at byte `(disk_sectors - table_sectors) * sector_size`.
    pub fn backup(&self) -> Result<Vec<u8>, GptError> {
        self.validate()?;
        let (mut out, crc) = self.padded_array();
        let last = self.disk_sectors - 1;
        let array_lba = last - array_sectors(self.sector_size);
        out.extend_from_slice(&self.header(last, 1, array_lba, crc));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::{BASIC_DATA, ESP};
    use super::*;

    #[test]
    fn guid_text_round_trips_in_mixed_endian_order() {
        assert_eq!(
            ESP.0,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(ESP.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        let g = Guid::from_hash([0xFF; 16]);
        assert_eq!(&g.to_string()[14..15], "4");
        assert_eq!(&g.to_string()[19..20], "B");
    }

    fn table(parts: &[(u64, u64)]) -> Gpt {
        Gpt {
            sector_size: 512,
            disk_guid: Guid::from_hash([7; 16]),
            disk_sectors: 4096,
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, &(first, last))| GptPartition {
                    kind: BASIC_DATA,
                    guid: Guid::from_hash([i as u8; 16]),
                    first,
                    last,
                    attributes: 0,
                    name: format!("p{i}"),
                })
                .collect(),
        }
    }

    #[test]
    fn placement_is_checked() {
        assert!(table(&[(34, 4062)]).validate().is_ok());
        assert!(table(&[(33, 100)]).validate().is_err());
        assert!(table(&[(34, 4063)]).validate().is_err());
        assert!(table(&[(100, 200), (200, 300)]).validate().is_err());
        assert!(table(&[(100, 99)]).validate().is_err());
    }

    #[test]
    fn headers_point_at_each_other_and_carry_crcs() {
        let t = table(&[(64, 1000)]);
        let p = t.primary().unwrap();
        let b = t.backup().unwrap();
        assert_eq!(p.len() as u64, table_sectors(512) * 512);
        assert_eq!(b.len() as u64, table_sectors(512) * 512);
        let u64_at = |h: &[u8], o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        let (ph, bh) = (&p[..512], &b[b.len() - 512..]);
        assert_eq!(
            (u64_at(ph, 24), u64_at(ph, 32), u64_at(ph, 72)),
            (1, 4095, 2)
        );
        assert_eq!(
            (u64_at(bh, 24), u64_at(bh, 32), u64_at(bh, 72)),
            (4095, 1, 4063)
        );
        for h in [ph, bh] {
            let mut z = h[..HEADER_SIZE].to_vec();
            z[16..20].fill(0);
            assert_eq!(h[16..20], crc32fast::hash(&z).to_le_bytes());
        }
        assert_eq!(p[512..], b[..b.len() - 512]);
        assert_eq!(&p[512 + 56..512 + 60], &[b'p', 0, b'0', 0]);
    }
}
