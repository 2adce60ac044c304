//! Sizes on the command line: `512`, `4K`, `1M`, `1.5G`, `1MiB`, `2T`.

use std::fmt;
use std::str::FromStr;

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
        let int: u128 = int.parse().map_err(|_| bad())?;
        let mut bytes = int << shift;
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| bad())?;
            let scale = 10u128.pow(frac.len().min(30) as u32);
            let part = (digits << shift) / scale;
            if !(digits << shift).is_multiple_of(scale) {
                return Err(format!("{s:?} is not a whole number of bytes"));
            }
            bytes += part;
        }
        if bytes > i64::MAX as u128 {
            return Err(format!("{s:?} is too large (the limit is 8 EiB - 1)"));
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
}
