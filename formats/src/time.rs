//! Time helpers shared by the generators: UTC calendar dates (FAT and
//! ISO 9660 store them broken down) and the default volume time.

use tree::{Node, Tree};

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The newest mtime in the tree, never later than now: the default time
/// of a volume (a superblock or descriptor dated in the future makes
/// checkers complain).
pub(crate) fn newest_mtime(tree: &Tree) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    fn newest(n: &Node) -> i64 {
        n.children()
            .iter()
            .map(newest)
            .fold(n.meta.mtime.secs, i64::max)
    }
    newest(&tree.root).min(now)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates_around_leap_days() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(super::civil_from_days(-1), (1969, 12, 31));
    }
}
