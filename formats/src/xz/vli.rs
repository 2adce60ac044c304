//! Multibyte integers (§1.2): little-endian groups of seven bits, the high
//! bit of each byte saying another byte follows.

/// Largest value a multibyte integer may hold (§1.2: 63 bits).
pub(super) const VLI_MAX: u64 = u64::MAX / 2;

/// At most nine bytes encode 63 bits (§1.2).
const VLI_BYTES_MAX: usize = 9;

/// Decode the integer at the start of `buf`: its value and its length.
/// `Err` names what is wrong; the caller knows where it is.
pub(super) fn decode(buf: &[u8]) -> Result<(u64, usize), &'static str> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(VLI_BYTES_MAX) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // §1.2: "the encoding MUST be the shortest one", so a multibyte
            // integer never ends with a 0x00 byte.
            if byte == 0 && i > 0 {
                return Err("multibyte integer is not in its shortest form");
            }
            return Ok((value, i + 1));
        }
    }
    if buf.len() < VLI_BYTES_MAX {
        Err("multibyte integer runs past the end of its field")
    } else {
        Err("multibyte integer is longer than nine bytes")
    }
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
        assert!(decode(&[0xFF; 10]).is_err(), "too long");
        assert_eq!(decode(&[0x00, 0x55]), Ok((0, 1)));
    }
}
