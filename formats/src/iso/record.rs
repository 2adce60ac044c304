//! ECMA-119 field encodings: both-endian numbers (§7.2.3, §7.3.3), dates
//! (§8.4.26.1, §9.1.5), directory records (§9.1), path table records
//! (§9.4) and the order of records in a directory (§9.3).

use std::cmp::Ordering;

/// Logical sector and block size (§6.1.2, §8.4.12: 2048 everywhere here).
pub(crate) const SECTOR: u64 = 2048;

/// Directory record flag: a directory (§9.1.6, bit 1).
pub(crate) const FLAG_DIR: u8 = 0x02;
/// Directory record flag: not the final record of a file (§9.1.6, bit 7).
pub(crate) const FLAG_MULTI_EXTENT: u8 = 0x80;

/// Bytes in one extent of a multi-extent file: the largest multiple of
/// the sector size that the 32-bit Data Length field (§9.1.4) holds.
pub(crate) const MAX_EXTENT: u64 = (1 << 32) - SECTOR;

/// A 16-bit number in both byte orders (§7.2.3).
pub(crate) fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

/// A 32-bit number in both byte orders (§7.3.3).
pub(crate) fn both32(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

/// Calendar date and time (UTC) of a Unix time:
/// (year, month, day, hour, minute, second).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let (y, m, d) = crate::time::civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400) as u32;
    (y, m, d, tod / 3600, tod / 60 % 60, tod % 60)
}

/// Unix times of 1900-01-01 and 2156-01-01, the range of a 7-byte date.
const DATE7_MIN: i64 = -2_208_988_800;
const DATE7_MAX: i64 = 5_869_584_000 - 1;

/// A directory record's 7-byte date, UTC (§9.1.5), clamped to 1900–2155.
pub(crate) fn date7(secs: i64) -> [u8; 7] {
    let (y, m, d, hh, mm, ss) = civil(secs.clamp(DATE7_MIN, DATE7_MAX));
    [
        (y - 1900) as u8,
        m as u8,
        d as u8,
        hh as u8,
        mm as u8,
        ss as u8,
        0,
    ]
}

/// A volume descriptor's 17-byte date, UTC (§8.4.26.1): 16 digits
/// `YYYYMMDDHHMMSScc` and the offset from GMT (0).
pub(crate) fn date17(secs: i64) -> [u8; 17] {
    // Years 1..9999 (the four digits).
    let secs = secs.clamp(-62_135_596_800, 253_402_300_799);
    let (y, m, d, hh, mm, ss) = civil(secs);
    let s = format!("{y:04}{m:02}{d:02}{hh:02}{mm:02}{ss:02}00");
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(s.as_bytes());
    out
}

/// "Not specified" for a 17-byte date (§8.4.26.1): sixteen `0` digits.
pub(crate) const DATE17_UNSET: [u8; 17] = *b"0000000000000000\0";

/// The length of a directory record (§9.1) with an identifier of
/// `ident` bytes and `su` bytes of System Use: the padding byte after an
/// even-length identifier (§9.1.12), and an even total (a trailing zero).
pub(crate) fn record_len(ident: usize, su: usize) -> usize {
    let base = 33 + ident + usize::from(ident.is_multiple_of(2));
    (base + su + 1) & !1
}

/// The largest System Use field a record with an identifier of `ident`
/// bytes may have (the length field is one byte; even totals).
pub(crate) fn su_room(ident: usize) -> usize {
    254 - (33 + ident + usize::from(ident.is_multiple_of(2)))
}

/// One directory record (§9.1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirRecord<'a> {
    /// First logical block of the extent.
    pub extent: u32,
    /// Data length in bytes.
    pub size: u32,
    /// Recording date and time (§9.1.5).
    pub time: [u8; 7],
    /// File flags (§9.1.6).
    pub flags: u8,
    /// File identifier (§9.1.11): `[0]` for `.`, `[1]` for `..`.
    pub ident: &'a [u8],
    /// System Use field (§9.1.13): SUSP entries.
    pub su: &'a [u8],
}

impl DirRecord<'_> {
    /// Append the encoded record to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let len = record_len(self.ident.len(), self.su.len());
        debug_assert!(len <= 255, "record of {len} bytes");
        let start = out.len();
        out.push(len as u8); // BP 1: length of directory record
        out.push(0); // BP 2: extended attribute record length
        out.extend_from_slice(&both32(self.extent)); // BP 3-10
        out.extend_from_slice(&both32(self.size)); // BP 11-18
        out.extend_from_slice(&self.time); // BP 19-25
        out.push(self.flags); // BP 26
        out.extend_from_slice(&[0, 0]); // BP 27-28: unit size, interleave gap
        out.extend_from_slice(&both16(1)); // BP 29-32: volume sequence number
        out.push(self.ident.len() as u8); // BP 33
        out.extend_from_slice(self.ident);
        if self.ident.len().is_multiple_of(2) {
            out.push(0); // §9.1.12 padding field
        }
        out.extend_from_slice(self.su);
        out.resize(start + len, 0);
    }
}

/// The length of a path table record (§9.4) for an identifier of
/// `ident` bytes.
pub(crate) fn path_record_len(ident: usize) -> usize {
    8 + ident + ident % 2
}

/// Append a path table record (§9.4) to `out`, numbers in little-endian
/// (type L, §9.4.3) or big-endian (type M).
pub(crate) fn encode_path_record(
    out: &mut Vec<u8>,
    ident: &[u8],
    extent: u32,
    parent: u16,
    big_endian: bool,
) {
    out.push(ident.len() as u8); // BP 1: length of directory identifier
    out.push(0); // BP 2: extended attribute record length
    if big_endian {
        out.extend_from_slice(&extent.to_be_bytes());
        out.extend_from_slice(&parent.to_be_bytes());
    } else {
        out.extend_from_slice(&extent.to_le_bytes());
        out.extend_from_slice(&parent.to_le_bytes());
    }
    out.extend_from_slice(ident);
    if ident.len() % 2 == 1 {
        out.push(0);
    }
}

/// Order of two file identifiers made of units `T` (bytes, or UCS-2 for
/// Joliet), as §9.3 says: by File Name, then by File Name Extension, each
/// compared as if the shorter were padded with spaces, then by version
/// number, descending. Directory identifiers have no separators and
/// compare as names.
pub(crate) fn cmp_ident<T: Copy + Ord + From<u8>>(a: &[T], b: &[T]) -> Ordering {
    let (an, ae, av) = split_ident(a);
    let (bn, be, bv) = split_ident(b);
    cmp_padded(an, bn)
        .then_with(|| cmp_padded(ae, be))
        .then_with(|| cmp_padded(bv, av))
}

/// (name, extension, version) of an identifier: split at the first `.`
/// and the `;` (§7.5.1).
fn split_ident<T: Copy + PartialEq + From<u8>>(id: &[T]) -> (&[T], &[T], &[T]) {
    let (rest, version) = match id.iter().rposition(|&c| c == T::from(b';')) {
        Some(i) => (&id[..i], &id[i + 1..]),
        None => (id, &id[id.len()..]),
    };
    match rest.iter().position(|&c| c == T::from(b'.')) {
        Some(i) => (&rest[..i], &rest[i + 1..], version),
        None => (rest, &rest[rest.len()..], version),
    }
}

fn cmp_padded<T: Copy + Ord + From<u8>>(a: &[T], b: &[T]) -> Ordering {
    let space = T::from(b' ');
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = a.get(i).copied().unwrap_or(space);
            let y = b.get(i).copied().unwrap_or(space);
            x.cmp(&y)
        })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_endian_fields_hold_le_then_be() {
        assert_eq!(both16(0x1234), [0x34, 0x12, 0x12, 0x34]);
        assert_eq!(
            both32(0x0102_0304),
            [0x04, 0x03, 0x02, 0x01, 0x01, 0x02, 0x03, 0x04]
        );
    }

    #[test]
    fn dates_are_utc_and_clamped() {
        #[rustfmt::skip]
        let cases: &[(i64, [u8; 7])] = &[
            (0, [70, 1, 1, 0, 0, 0, 0]),
            (951_782_400, [100, 2, 29, 0, 0, 0, 0]),   // 2000-02-29
            (1_700_000_000, [123, 11, 14, 22, 13, 20, 0]),
            (-3_000_000_000, [0, 1, 1, 0, 0, 0, 0]),   // before 1900
            (i64::MAX, [255, 12, 31, 23, 59, 59, 0]),  // after 2155
        ];
        for &(secs, want) in cases {
            assert_eq!(date7(secs), want, "{secs}");
        }
        assert_eq!(&date17(1_700_000_000), b"2023111422132000\0");
    }

    #[test]
    fn records_have_even_length_and_pad_even_identifiers() {
        let r = DirRecord {
            extent: 20,
            size: 2048,
            time: [0; 7],
            flags: FLAG_DIR,
            ident: b"AB",
            su: b"XYZ",
        };
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(out.len(), record_len(2, 3));
        assert_eq!(out.len(), 33 + 2 + 1 + 3 + 1);
        assert_eq!(out[0] as usize, out.len());
        assert_eq!(&out[2..10], &both32(20));
        assert_eq!(&out[33..35], b"AB");
        assert_eq!(out[35], 0, "padding after an even identifier");
        assert_eq!(&out[36..39], b"XYZ");
        assert_eq!(record_len(1, 0), 34);
        assert_eq!(su_room(1), 220);
    }

    #[test]
    fn path_records_in_both_byte_orders() {
        let mut l = Vec::new();
        let mut m = Vec::new();
        encode_path_record(&mut l, b"DIR", 0x0102_0304, 1, false);
        encode_path_record(&mut m, b"DIR", 0x0102_0304, 1, true);
        assert_eq!(l, [3, 0, 4, 3, 2, 1, 1, 0, b'D', b'I', b'R', 0]);
        assert_eq!(m, [3, 0, 1, 2, 3, 4, 0, 1, b'D', b'I', b'R', 0]);
        assert_eq!(path_record_len(3), 12);
        assert_eq!(path_record_len(1), 10);
    }

    #[test]
    fn identifiers_sort_by_name_then_extension_padded_with_spaces() {
        let mut ids: Vec<&[u8]> = vec![
            b"A_B.TXT;1",
            b"AB.TXT;1",
            b"A.Z;1",
            b"A.TXT;1",
            b"A",
            b"A0.;1",
        ];
        ids.sort_by(|a, b| cmp_ident(a, b));
        // "A" padded with spaces sorts before "A0" and "A_B"; "A.TXT" < "A.Z"
        // by extension; the directory "A" (no extension) ties with files
        // named "A" on the name and sorts first by its empty extension.
        let want: Vec<&[u8]> = vec![
            b"A",
            b"A.TXT;1",
            b"A.Z;1",
            b"A0.;1",
            b"AB.TXT;1",
            b"A_B.TXT;1",
        ];
        assert_eq!(ids, want);
    }
}
