//! Multibyte integers (§1.2): little-endian groups of seven bits, the high
//! bit of each byte saying another byte follows.
//!
//! Two decoders of the same rules: [`decode`] over a slice, and [`Vli`],
//! fed one byte at a time, for the Index, which is parsed as it is read
//! (a multibyte integer may straddle two reads).

/// Largest value a multibyte integer may hold (§1.2: 63 bits).
pub(super) const VLI_MAX: u64 = u64::MAX / 2;

/// At most nine bytes encode 63 bits (§1.2).
const VLI_BYTES_MAX: usize = 9;

/// A multibyte integer being decoded byte by byte.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Vli {
    value: u64,
    len: usize,
}

impl Vli {
    /// Add the next byte: `Ok(Some(value))` once the integer ends,
    /// `Ok(None)` while more bytes follow, `Err` (what is wrong) for an
    /// encoding §1.2 forbids. Starts over after `Some` or `Err`.
    pub fn push(&mut self, byte: u8) -> Result<Option<u64>, &'static str> {
        // `len` < 9 here, so the shift is at most 56 and the nine groups of
        // seven bits fit in 63: no overflow whatever the bytes.
        self.value |= u64::from(byte & 0x7F) << (7 * self.len);
        self.len += 1;
        if byte & 0x80 == 0 {
            let (value, len) = (self.value, self.len);
            *self = Vli::default();
            // §1.2: "the encoding MUST be the shortest one", so a multibyte
            // integer never ends with a 0x00 byte.
            if byte == 0 && len > 1 {
                return Err("multibyte integer is not in its shortest form");
            }
            return Ok(Some(value));
        }
        if self.len == VLI_BYTES_MAX {
            *self = Vli::default();
            return Err("multibyte integer is longer than nine bytes");
        }
        Ok(None)
    }

    /// Whether a started integer is waiting for more bytes.
    pub fn is_partial(&self) -> bool {
        self.len > 0
    }
}

/// Decode the integer at the start of `buf`: its value and its length.
/// `Err` names what is wrong; the caller knows where it is. Total: any
/// `buf` gives a value or an error.
pub fn decode(buf: &[u8]) -> Result<(u64, usize), &'static str> {
    let mut vli = Vli::default();
    for (i, &byte) in buf.iter().enumerate() {
        if let Some(value) = vli.push(byte)? {
            return Ok((value, i + 1));
        }
    }
    Err("multibyte integer runs past the end of its field")
}

#[cfg(test)]
pub(super) fn encode(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_encodings() {
        for v in [0, 1, 127, 128, 300, 1 << 32, VLI_MAX] {
            let mut buf = Vec::new();
            encode(v, &mut buf);
            assert_eq!(decode(&buf), Ok((v, buf.len())), "{v}");
        }
        assert!(decode(&[0x80, 0x00]).is_err(), "not shortest");
        assert!(decode(&[0x80]).is_err(), "truncated");
        assert!(decode(&[]).is_err(), "empty");
        assert_eq!(
            decode(&[0xFF; 10]),
            Err("multibyte integer is longer than nine bytes")
        );
        assert_eq!(
            decode(&[0xFF; 8]),
            Err("multibyte integer runs past the end of its field")
        );
        // Nine bytes whose last has no continuation bit: the largest value.
        let mut max = [0xFF; 9];
        max[8] = 0x7F;
        assert_eq!(decode(&max), Ok((VLI_MAX, 9)));
        assert_eq!(decode(&[0x00, 0x55]), Ok((0, 1)));
    }

    #[test]
    fn byte_by_byte_equals_slice_decoding() {
        let mut vli = Vli::default();
        let mut buf = Vec::new();
        encode(1 << 40, &mut buf);
        for &b in &buf[..buf.len() - 1] {
            assert_eq!(vli.push(b), Ok(None));
            assert!(vli.is_partial());
        }
        assert_eq!(vli.push(buf[buf.len() - 1]), Ok(Some(1 << 40)));
        assert!(!vli.is_partial());
    }
}
