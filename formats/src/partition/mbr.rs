//! The DOS master boot record: one sector at LBA 0 holding boot code, a
//! disk signature and four primary partition entries.
//!
//! ```text
//!  0        440        444   446            510   512
//!  | code   | disk sig | 0 0 | 4 × 16-byte  | 55 AA |
//!  |        | (LE u32) |     | entries      |       |
//! ```
//! Entry layout (16 bytes): status (0x80 = active), CHS of the first
//! sector, type, CHS of the last sector, LBA start (LE u32), sector count
//! (LE u32). CHS is computed for the conventional 255 heads × 63 sectors
//! translation and saturates at cylinder 1023, as every tool since LBA does.
//! (UEFI 2.10 §5.2.1 "Legacy Master Boot Record", Tables 5.1 and 5.2.)
//! LBAs and counts are in logical blocks of the disk (512 or 4096 bytes);
//! on a 4096-byte-sector disk these 512 bytes start LBA 0 and the rest of
//! the sector is zero.

use crate::bootstub;

/// The partition type of a protective MBR's one entry (§5.2.3).
pub const PROTECTIVE_TYPE: u8 = 0xEE;

/// Sectors per track used for CHS fields.
pub const SECTORS_PER_TRACK: u32 = 63;
/// Heads used for CHS fields.
pub const HEADS: u32 = 255;

/// One primary partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    /// Partition type byte (0x01 FAT12, 0x0E FAT16 LBA, 0x0C FAT32 LBA...).
    pub kind: u8,
    /// First sector (LBA).
    pub start: u32,
    /// Length in sectors.
    pub sectors: u32,
    /// Marked active (bootable).
    pub active: bool,
}

/// The entry of a protective MBR (UEFI 2.10 §5.2.3, Table 5.4): type 0xEE
/// from LBA 1 over the rest of the disk, the count capped at 0xFFFFFFFF.
pub fn protective(disk_sectors: u64) -> MbrPartition {
    MbrPartition {
        kind: PROTECTIVE_TYPE,
        start: 1,
        sectors: u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX),
        active: false,
    }
}

/// The default boot code: our "not bootable" stub (`bootstub`), zero-padded.
pub fn stub_code() -> [u8; 440] {
    let stub = bootstub::code(0);
    let mut code = [0u8; 440];
    code[..stub.len()].copy_from_slice(&stub);
    code
}

/// CHS address of `lba` as the three packed bytes of a partition entry.
fn chs(lba: u32) -> [u8; 3] {
    let cyl = lba / (HEADS * SECTORS_PER_TRACK);
    if cyl > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS_PER_TRACK) % HEADS;
    let sector = lba % SECTORS_PER_TRACK + 1;
    [
        head as u8,
        (sector as u8) | (((cyl >> 2) & 0xC0) as u8),
        cyl as u8,
    ]
}

/// Encode an MBR with up to four partitions and the given disk signature;
/// the boot code is our "not bootable" stub.
pub fn encode(parts: &[MbrPartition], signature: u32) -> [u8; 512] {
    encode_with_code(parts, signature, &stub_code())
}

/// Encode an MBR with the given 440 bytes of boot code.
pub fn encode_with_code(parts: &[MbrPartition], signature: u32, code: &[u8; 440]) -> [u8; 512] {
    assert!(parts.len() <= 4, "an MBR holds four primary partitions");
    let mut s = [0u8; 512];
    s[..440].copy_from_slice(code);
    s[440..444].copy_from_slice(&signature.to_le_bytes());
    for (i, p) in parts.iter().enumerate() {
        let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
        e[0] = if p.active { 0x80 } else { 0 };
        e[1..4].copy_from_slice(&chs(p.start));
        e[4] = p.kind;
        // Saturating: an entry reaching past 2^32 sectors (a disk past 2 TiB) ends at the last
        // CHS address either way.
        e[5..8].copy_from_slice(&chs(p.start.saturating_add(p.sectors.max(1) - 1)));
        e[8..12].copy_from_slice(&p.start.to_le_bytes());
        e[12..16].copy_from_slice(&p.sectors.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_reaching_past_2_tib_end_at_the_last_chs_address() {
        // Found by fuzz/ (iso_plan, a hybrid ISO with a 4 TiB EFI image): start + count
        // overflowed.
        let p = MbrPartition {
            kind: 0xEF,
            start: 4096,
            sectors: u32::MAX,
            active: false,
        };
        let s = encode(&[p], 0);
        assert_eq!(&s[446 + 5..446 + 8], &[0xFE, 0xFF, 0xFF]);
        assert_eq!(&s[446 + 12..446 + 16], &u32::MAX.to_le_bytes());
    }

    #[test]
    fn chs_of_first_track_and_saturation() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(u32::MAX), [0xFE, 0xFF, 0xFF]);
    }

    #[test]
    fn encode_places_entry_and_signature() {
        let m = encode(
            &[MbrPartition {
                kind: 0x0C,
                start: 2048,
                sectors: 4096,
                active: false,
            }],
            0xDEADBEEF,
        );
        assert_eq!(&m[510..], &[0x55, 0xAA]);
        assert_eq!(m[446 + 4], 0x0C);
        assert_eq!(u32::from_le_bytes(m[454..458].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(m[458..462].try_into().unwrap()), 4096);
        assert_eq!(
            u32::from_le_bytes(m[440..444].try_into().unwrap()),
            0xDEADBEEF
        );
        assert!(m[462..510].iter().all(|&b| b == 0));
    }

    #[test]
    fn protective_entry_caps_at_32_bits() {
        let p = protective(1 << 40);
        assert_eq!((p.kind, p.start, p.sectors), (0xEE, 1, u32::MAX));
        assert_eq!(protective(2048).sectors, 2047);
        let m = encode(&[protective(2048)], 0);
        // §5.2.3: StartingCHS 0x000200.
        assert_eq!(&m[446..450], &[0, 0, 2, 0]);
    }
}
