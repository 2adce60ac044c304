//! Volume descriptors (ECMA-119 §8): the primary volume descriptor (§8.4),
//! the Joliet supplementary volume descriptor (§8.5 with the Joliet
//! escape sequence) and the set terminator (§8.3).

use super::record::{both16, both32, date17, DirRecord, DATE17_UNSET, SECTOR};

/// What differs between the primary and the Joliet descriptor.
#[derive(Debug)]
pub(crate) struct Descriptor<'a> {
    /// Joliet (type 2, UCS-2 identifiers) or primary (type 1, a-/d-characters).
    pub joliet: bool,
    /// Volume identifier (§8.4.6), as given; encoded per `joliet`.
    pub volume_id: &'a str,
    /// Volume space size in logical blocks (§8.4.8).
    pub volume_blocks: u32,
    /// Path table size in bytes (§8.4.14).
    pub path_table_size: u32,
    /// Type L and type M path table locations (§8.4.15, §8.4.17).
    pub path_tables: (u32, u32),
    /// The root directory: (extent, size) (§8.4.18).
    pub root: (u32, u32),
    /// Creation and modification time (Unix seconds).
    pub time: i64,
}

/// An identifier field of `len` bytes: ASCII padded with spaces, or UCS-2
/// big-endian padded with UCS-2 spaces (Joliet).
fn text(out: &mut [u8], s: &str, joliet: bool) {
    if joliet {
        let units: Vec<u16> = s.encode_utf16().take(out.len() / 2).collect();
        for (i, pair) in out.chunks_exact_mut(2).enumerate() {
            pair.copy_from_slice(&units.get(i).copied().unwrap_or(0x20).to_be_bytes());
        }
        if out.len() % 2 == 1 {
            // 37-byte file identifier fields: the odd byte is padding.
            out[out.len() - 1] = 0;
        }
    } else {
        out.fill(b' ');
        let n = s.len().min(out.len());
        out[..n].copy_from_slice(&s.as_bytes()[..n]);
    }
}

impl Descriptor<'_> {
    /// The 2048-byte descriptor.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut d = vec![0u8; SECTOR as usize];
        d[0] = if self.joliet { 2 } else { 1 }; // §8.4.1 volume descriptor type
        d[1..6].copy_from_slice(b"CD001"); // §8.4.2 standard identifier
        d[6] = 1; // §8.4.3 version
        text(&mut d[8..40], "", self.joliet); // §8.4.5 system identifier
        text(&mut d[40..72], self.volume_id, self.joliet); // §8.4.6
        d[80..88].copy_from_slice(&both32(self.volume_blocks)); // §8.4.8
        if self.joliet {
            // §8.5.6 escape sequences: "%/E", UCS-2 level 3 (Joliet spec §2.2).
            d[88..91].copy_from_slice(b"%/E");
        }
        d[120..124].copy_from_slice(&both16(1)); // §8.4.10 volume set size
        d[124..128].copy_from_slice(&both16(1)); // §8.4.11 volume sequence number
        d[128..132].copy_from_slice(&both16(SECTOR as u16)); // §8.4.12 block size
        d[132..140].copy_from_slice(&both32(self.path_table_size)); // §8.4.13
        d[140..144].copy_from_slice(&self.path_tables.0.to_le_bytes()); // §8.4.14
        d[148..152].copy_from_slice(&self.path_tables.1.to_be_bytes()); // §8.4.16
        let mut root = Vec::with_capacity(34);
        DirRecord {
            extent: self.root.0,
            size: self.root.1,
            time: super::record::date7(self.time),
            flags: super::record::FLAG_DIR,
            ident: &[0],
            su: &[],
        }
        .encode(&mut root);
        d[156..190].copy_from_slice(&root); // §8.4.18
        text(&mut d[190..318], "", self.joliet); // §8.4.19 volume set identifier
        text(&mut d[318..446], "", self.joliet); // §8.4.20 publisher
        text(&mut d[446..574], "", self.joliet); // §8.4.21 data preparer
        text(&mut d[574..702], "DISKSYNTH", self.joliet); // §8.4.22 application
        text(&mut d[702..739], "", self.joliet); // §8.4.23 copyright file
        text(&mut d[739..776], "", self.joliet); // §8.4.24 abstract file
        text(&mut d[776..813], "", self.joliet); // §8.4.25 bibliographic file
        d[813..830].copy_from_slice(&date17(self.time)); // §8.4.26 creation
        d[830..847].copy_from_slice(&date17(self.time)); // §8.4.27 modification
        d[847..864].copy_from_slice(&DATE17_UNSET); // §8.4.28 expiration
        d[864..881].copy_from_slice(&date17(self.time)); // §8.4.29 effective
        d[881] = 1; // §8.4.31 file structure version
        d
    }
}

/// The volume descriptor set terminator (§8.3).
pub(crate) fn terminator() -> Vec<u8> {
    let mut d = vec![0u8; SECTOR as usize];
    d[0] = 255;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(joliet: bool) -> Vec<u8> {
        Descriptor {
            joliet,
            volume_id: "DATA",
            volume_blocks: 1000,
            path_table_size: 10,
            path_tables: (19, 20),
            root: (22, 2048),
            time: 0,
        }
        .encode()
    }

    #[test]
    fn primary_descriptor_fields() {
        let d = desc(false);
        assert_eq!(&d[..7], b"\x01CD001\x01");
        assert_eq!(&d[40..46], b"DATA  ");
        assert_eq!(&d[80..88], &both32(1000));
        assert_eq!(&d[140..144], &19u32.to_le_bytes());
        assert_eq!(&d[148..152], &20u32.to_be_bytes());
        assert_eq!(d[156], 34);
        assert_eq!(&d[158..166], &both32(22));
        assert_eq!(&d[813..830], b"1970010100000000\0");
    }

    #[test]
    fn joliet_descriptor_is_ucs2_with_the_level_3_escape() {
        let d = desc(true);
        assert_eq!(d[0], 2);
        assert_eq!(&d[88..91], b"%/E");
        assert_eq!(&d[40..50], &[0, b'D', 0, b'A', 0, b'T', 0, b'A', 0, b' ']);
    }
}
