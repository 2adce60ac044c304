//! Sizes on the command line: `512`, `4K`, `1M`, `1.5G`, `1MiB`, `2T`.

use std::fmt;
use std::str::FromStr;

/// The largest size: what the NBD protocol's clients (a signed 64-bit
/// offset in libnbd and the kernel) and qemu can address.
pub const MAX: u64 = i64::MAX as u64;

/// `0.DIGITS × 2^shift` as a whole number of bytes, or `None` if it is not
/// one. Computed exactly on the decimal digits: doubling the fraction
/// `shift` times carries whole bytes out of it, and the bytes are whole
/// only if no digit is left. (Its value is below `2^shift` ≤ 2^60, and the
/// work is `shift` passes over the digits, so any length is fine.)
fn fraction_bytes(digits: &str, shift: u32) -> Option<u128> {
    let mut frac: Vec<u8> = digits.bytes().map(|d| d - b'0').collect();
    let mut carried: u128 = 0;
    for _ in 0..shift {
        let mut carry = 0;
        for d in frac.iter_mut().rev() {
            let twice = *d * 2 + carry;
            *d = twice % 10;
            carry = twice / 10;
        }
        carried = carried * 2 + u128::from(carry);
    }
    frac.iter().all(|&d| d == 0).then_some(carried)
}

/// A byte count parsed from a human size (binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || {
            format!("{s:?} is not a size: use bytes or a unit, e.g. 512, 4K, 1M, 1.5G, 1MiB, 2T")
        };
        if num.is_empty()
            || num.matches('.').count() > 1
            || num.starts_with('.')
            || num.ends_with('.')
        {
            return Err(bad());
        }
        let unit = unit.trim();
        let upper = unit.to_ascii_uppercase();
        let prefix = upper
            .strip_suffix("IB")
            .or_else(|| upper.strip_suffix('B'))
            .unwrap_or(&upper);
        let shift = match prefix {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            "P" => 50,
            "E" => 60,
            _ => return Err(bad()),
        };
        if upper == "IB" {
            return Err(bad());
        }
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let too_large = || {
            format!(
                "{s:?} is too large: sizes go up to 8 EiB - 1 byte (2^63 - 1 bytes, \
                 the largest size NBD clients and qemu accept)"
            )
        };
        // Exact integer arithmetic throughout: a float would round, and
        // unchecked shifts would wrap a huge number around to a small one.
        let mut whole: u128 = 0;
        for d in int.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(d - b'0')))
                .ok_or_else(too_large)?;
        }
        let mut bytes = whole
            .checked_mul(1 << shift)
            .filter(|&b| b <= MAX as u128)
            .ok_or_else(too_large)?;
        if !frac.is_empty() {
            bytes += fraction_bytes(frac, shift)
                .ok_or_else(|| format!("{s:?} is not a whole number of bytes"))?;
            if bytes > MAX as u128 {
                return Err(too_large());
            }
        }
        Ok(Size(bytes as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if b >= 1 << shift {
                return write!(f, "{:.1} {unit}", b as f64 / (1u64 << shift) as f64);
            }
        }
        write!(f, "{b} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rustfmt::skip]
    #[test]
    fn parses_the_documented_forms() {
        for (s, want) in [
            ("512", 512), ("4K", 4096), ("4k", 4096), ("1M", 1 << 20), ("1.5G", 3 << 29),
            ("1MiB", 1 << 20), ("2T", 2 << 40), ("64KB", 64 << 10), (" 8 M", 8 << 20), ("0", 0),
        ] {
            assert_eq!(s.parse::<Size>().unwrap(), Size(want), "{s}");
        }
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        for s in ["", "12Q", "1.2.3", "M", ".5M", "1iB", "-1"] {
            let e = s.parse::<Size>().unwrap_err();
            assert!(e.contains("not a size") || e.contains("whole"), "{s}: {e}");
        }
        assert!("1.1".parse::<Size>().unwrap_err().contains("whole number"));
        assert!("9E".parse::<Size>().unwrap_err().contains("too large"));
    }

    fn bytes(s: &str) -> Result<u64, String> {
        s.parse::<Size>().map(|z| z.0)
    }

    #[rustfmt::skip]
    #[test]
    fn fractions_are_exact_or_refused() {
        // Trailing zeros change nothing (this was 6144: the scale was cut
        // at 30 digits while the digits were not).
        assert_eq!(bytes("1.5000000000000000000000000000000K"), Ok(1536));
        assert_eq!(bytes(&format!("1.5{}K", "0".repeat(10_000))), Ok(1536));
        assert_eq!(bytes("1.0"), Ok(1));
        assert_eq!(bytes("0.5K"), Ok(512));
        // 2^-10 of a KiB is one byte; half of that is not a byte.
        assert_eq!(bytes("1.0009765625K"), Ok(1025));
        assert_eq!(bytes("0.0009765625K"), Ok(1));
        assert_eq!(bytes("0.000000000000000000867361737988403547205962240695953369140625E"), Ok(1));
        for s in ["1.00048828125K", "0.5", "1.1K", "0.1E", "0.0000000000000000000000000000000000001E",
                  &format!("1.{}1K", "0".repeat(1000))] {
            let e = bytes(s).unwrap_err();
            assert!(e.contains("not a whole number of bytes"), "{s}: {e}");
        }
    }

    #[test]
    fn sizes_past_2_pow_63_are_refused_not_wrapped() {
        let max = (1u64 << 63) - 1;
        assert_eq!(bytes("9223372036854775807"), Ok(max));
        assert_eq!(
            bytes("7.999999999999999999132638262011596452794037759304046630859375E"),
            Ok(max)
        );
        for s in [
            "9223372036854775808",
            "8E",
            "8192P",
            "8388608T",
            "8.0E",
            // Wrapped to 1024 by an unchecked shift before.
            "332306998946228968225951765070086145K",
            // More than u128 holds.
            "340282366920938463463374607431768211456",
            &"9".repeat(100),
            &format!("{}.5K", "9".repeat(50)),
        ] {
            let e = bytes(s).unwrap_err();
            assert!(
                e.contains("too large") && e.contains("2^63 - 1"),
                "{s}: {e}"
            );
        }
    }
}
