//! Stream Header (§2.1.1), Stream Footer (§2.1.2) and the Stream Flags
//! both carry (§2.1.1.2).

use super::error::XzError;
use super::Check;

/// Size of a Stream Header and of a Stream Footer (§2.1.1, §2.1.2).
pub(super) const HEADER_SIZE: u64 = 12;
/// Header Magic Bytes (§2.1.1.1).
const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
/// Footer Magic Bytes (§2.1.2.4).
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];

/// Decode the two Stream Flags bytes (§2.1.1.2): the first is reserved
/// (zero), the second holds the Check type in its low four bits and
/// reserved zero bits above. A set reserved bit means a newer format
/// version, which the spec says a decoder MUST refuse.
fn decode_flags(flags: [u8; 2], offset: u64) -> Result<Check, XzError> {
    if flags[0] != 0 || flags[1] & 0xF0 != 0 {
        return Err(XzError::Unsupported {
            offset,
            what: format!(
                "Stream Flags {:02x} {:02x} set reserved bits (a newer .xz format version?)",
                flags[0], flags[1]
            ),
        });
    }
    Check::from_id(flags[1]).ok_or_else(|| XzError::Unsupported {
        offset,
        what: format!(
            "Check type {:#04x} is reserved: its Blocks could not be verified",
            flags[1]
        ),
    })
}

/// A decoded Stream Footer (§2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Size of the Index just before the footer (§2.1.2.2, decoded).
    pub index_size: u64,
    /// The raw Stream Flags, compared byte for byte with the header's.
    pub flags: [u8; 2],
    /// The Check type they carry.
    pub check: Check,
}

/// Parse the 12-byte Stream Footer found at `offset`.
pub fn parse_footer(buf: &[u8; 12], offset: u64) -> Result<Footer, XzError> {
    // §2.1.2.4: the magic comes last, so check it first: anything else is
    // not the end of an .xz Stream at all.
    if buf[10..12] != FOOTER_MAGIC {
        return Err(XzError::corrupt(
            offset.saturating_add(10),
            "no Stream Footer magic \"YZ\" (not an .xz file, or truncated)",
        ));
    }
    // §2.1.2.1: the CRC32 covers Backward Size and Stream Flags.
    let stored = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let actual = crc32fast::hash(&buf[4..10]);
    if stored != actual {
        return Err(XzError::corrupt(
            offset,
            format!("Stream Footer CRC32 is {stored:#010x}, its fields hash to {actual:#010x}"),
        ));
    }
    let flags = [buf[8], buf[9]];
    let check = decode_flags(flags, offset.saturating_add(8))?;
    // §2.1.2.2: the Index size is stored as (size / 4) - 1.
    let stored_size = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Ok(Footer {
        index_size: (u64::from(stored_size) + 1) * 4,
        flags,
        check,
    })
}

/// Check the 12-byte Stream Header at `offset` against the flags of its
/// Stream's footer (§2.1.2.3: "MUST be identical").
pub fn check_header(buf: &[u8; 12], offset: u64, footer: &Footer) -> Result<(), XzError> {
    if buf[..6] != HEADER_MAGIC {
        return Err(XzError::corrupt(
            offset,
            "no Stream Header magic where the Index says the Stream starts \
             (the Index or the Block sizes in it are wrong)",
        ));
    }
    // §2.1.1.3: the CRC32 covers the Stream Flags.
    let stored = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let actual = crc32fast::hash(&buf[6..8]);
    if stored != actual {
        return Err(XzError::corrupt(
            offset.saturating_add(8),
            format!("Stream Header CRC32 is {stored:#010x}, its flags hash to {actual:#010x}"),
        ));
    }
    let flags = [buf[6], buf[7]];
    decode_flags(flags, offset.saturating_add(6))?;
    if flags != footer.flags {
        return Err(XzError::corrupt(
            offset.saturating_add(6),
            format!(
                "Stream Header flags {:02x} {:02x} differ from the Stream Footer's {:02x} {:02x}",
                flags[0], flags[1], footer.flags[0], footer.flags[1]
            ),
        ));
    }
    Ok(())
}

/// Encode a Stream Header (tests build images by hand).
#[cfg(test)]
pub(super) fn encode_header(check: Check) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..6].copy_from_slice(&HEADER_MAGIC);
    h[7] = check.id();
    let crc = crc32fast::hash(&h[6..8]);
    h[8..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Encode a Stream Footer for an Index of `index_size` bytes.
#[cfg(test)]
pub(super) fn encode_footer(check: Check, index_size: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[4..8].copy_from_slice(&((index_size / 4 - 1) as u32).to_le_bytes());
    f[9] = check.id();
    let crc = crc32fast::hash(&f[4..10]);
    f[..4].copy_from_slice(&crc.to_le_bytes());
    f[10..].copy_from_slice(&FOOTER_MAGIC);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trip_and_damage() {
        let f = encode_footer(Check::Crc64, 16);
        let footer = parse_footer(&f, 100).unwrap();
        assert_eq!(footer.index_size, 16);
        assert_eq!(footer.check, Check::Crc64);
        check_header(&encode_header(Check::Crc64), 0, &footer).unwrap();
        let err = check_header(&encode_header(Check::Crc32), 0, &footer).unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");

        let mut bad = f;
        bad[5] ^= 1;
        assert!(parse_footer(&bad, 100)
            .unwrap_err()
            .to_string()
            .contains("CRC32"));
        let mut bad = f;
        bad[11] = b'X';
        assert!(parse_footer(&bad, 100)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }
}
