//! The 32-byte short directory entry and FAT's date/time encoding
//! (Microsoft FAT specification §6 "Directory Structure" and §6.3
//! "Date and Time Formats").

/// ATTR_READ_ONLY.
pub const ATTR_READ_ONLY: u8 = 0x01;
/// ATTR_VOLUME_ID: the volume label entry in the root directory.
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// ATTR_DIRECTORY.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// ATTR_ARCHIVE: set on files, as every writer does after creating one.
pub const ATTR_ARCHIVE: u8 = 0x20;

/// First second FAT can represent: 1980-01-01 00:00:00.
pub const MIN_TIME: i64 = 315_532_800;
/// Last second FAT can represent: 2107-12-31 23:59:58.
pub const MAX_TIME: i64 = 4_354_819_198;

/// A FAT timestamp: date, time (2-second units) and the 10-ms remainder
/// used by creation times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FatTime {
    /// Bits 15–9 year−1980, 8–5 month, 4–0 day.
    pub date: u16,
    /// Bits 15–11 hours, 10–5 minutes, 4–0 seconds/2.
    pub time: u16,
    /// Hundredths of a second past `time`, 0..=199 (DIR_CrtTimeTenth).
    pub hundredths: u8,
}

impl FatTime {
    /// The FAT form of a Unix time in UTC, clamped to what FAT can hold.
    pub fn from_unix(secs: i64, nanos: u32) -> FatTime {
        let (secs, nanos) = if secs < MIN_TIME {
            (MIN_TIME, 0)
        } else if secs > MAX_TIME {
            (MAX_TIME, 0)
        } else {
            (secs, nanos)
        };
        let (y, m, d) = crate::time::civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let (h, mi, s) = (sod / 3600, sod / 60 % 60, sod % 60);
        FatTime {
            date: (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16,
            time: ((h as u16) << 11) | ((mi as u16) << 5) | (s / 2) as u16,
            hundredths: ((s % 2) * 100) as u8 + (nanos / 10_000_000) as u8,
        }
    }
}

/// Encode a short directory entry (DIR_Name ... DIR_FileSize).
pub fn encode(name: &[u8; 11], attr: u8, cluster: u32, size: u32, t: FatTime) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0..11].copy_from_slice(name); //                             DIR_Name
    e[11] = attr; //                                               DIR_Attr
    e[13] = t.hundredths; //                                       DIR_CrtTimeTenth
    e[14..16].copy_from_slice(&t.time.to_le_bytes()); //           DIR_CrtTime
    e[16..18].copy_from_slice(&t.date.to_le_bytes()); //           DIR_CrtDate
    e[18..20].copy_from_slice(&t.date.to_le_bytes()); //           DIR_LstAccDate
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes()); // DIR_FstClusHI
    e[22..24].copy_from_slice(&t.time.to_le_bytes()); //           DIR_WrtTime
    e[24..26].copy_from_slice(&t.date.to_le_bytes()); //           DIR_WrtDate
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes()); // DIR_FstClusLO
    e[28..32].copy_from_slice(&size.to_le_bytes()); //             DIR_FileSize
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_of_fat_is_1980_01_01() {
        let t = FatTime::from_unix(MIN_TIME, 0);
        assert_eq!((t.date, t.time), ((1 << 5) | 1, 0));
    }

    #[test]
    fn times_before_1980_clamp_and_after_2107_clamp() {
        assert_eq!(FatTime::from_unix(0, 0), FatTime::from_unix(MIN_TIME, 0));
        let last = FatTime::from_unix(MAX_TIME + 1000, 0);
        assert_eq!(last.date, (127 << 9) | (12 << 5) | 31);
        assert_eq!(last.time, (23 << 11) | (59 << 5) | 29);
    }

    #[test]
    fn a_known_date_encodes_with_two_second_resolution() {
        // 2024-02-29 13:45:31.5 UTC = 1709214331.5
        let t = FatTime::from_unix(1_709_214_331, 500_000_000);
        assert_eq!(t.date, (44 << 9) | (2 << 5) | 29);
        assert_eq!(t.time, (13 << 11) | (45 << 5) | 15);
        assert_eq!(t.hundredths, 150);
    }
}
