//! Time helpers shared by the generators: UTC calendar dates (FAT and
//! ISO 9660 store them broken down) and the default volume time, which
//! never depends on the clock.

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

/// The latest default volume time: 2026-12-01T00:00:00Z, the date of this
/// release, baked in. A volume time must be a pure function of the tree
/// (the same tree gives the same bytes, whenever and wherever it is built)
/// and must not lie in the future of whoever checks the image (e2fsck wants
/// to "fix" a superblock written in the future). The clock gives the
/// second but not the first; a constant in the past of every run of this
/// version gives both. Raise it with each release.
pub(crate) const LATEST_VOLUME_TIME: i64 = 1_796_083_200;

/// The default time of a volume (ext4 superblock and `lost+found`, ISO 9660
/// volume descriptors) when `SOURCE_DATE_EPOCH` is not set: the newest
/// mtime in the tree, clamped to [0, [`LATEST_VOLUME_TIME`]]. Never the
/// clock: a tree holding a file dated 2038 gives the same image today and
/// tomorrow. (File times are stored as they are, in every format.)
pub(crate) fn default_volume_time(tree: &Tree) -> i64 {
    fn newest(n: &Node) -> i64 {
        n.children()
            .iter()
            .map(newest)
            .fold(n.meta.mtime.secs, i64::max)
    }
    newest(&tree.root).clamp(0, LATEST_VOLUME_TIME)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates_around_leap_days() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(super::civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn latest_volume_time_is_the_release_date() {
        let days = super::LATEST_VOLUME_TIME.div_euclid(86_400);
        assert_eq!(super::LATEST_VOLUME_TIME % 86_400, 0);
        assert_eq!(super::civil_from_days(days), (2026, 12, 1));
    }
}
