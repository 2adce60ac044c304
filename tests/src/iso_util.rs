//! ISO 9660 checkers for the `iso` tests: `isoinfo -d` and `isoinfo -l` (plain, `-R`, `-J`)
//! parsed, extraction with `xorriso -osirrox` and `7z x`, the primary volume descriptor's raw
//! dates, and a host metadata walk that never reads file contents.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::process::{run, run_ok, Output, CMD_TIMEOUT};

/// ISO 9660 logical block size.
pub const SECTOR: u64 = 2048;

/// `isoinfo -d -i IMG` as `field -> value` (`"Volume id" -> "DATA"`), plus the whole text under
/// the key `""` (for the Rock Ridge / Joliet lines, which are not `key: value`).
pub fn isoinfo_d(img: &Path) -> BTreeMap<String, String> {
    let out = run_ok(Command::new("isoinfo").arg("-d").arg("-i").arg(img));
    let text = out.stdout_str();
    let mut map: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    map.insert(String::new(), text.clone());
    assert!(
        text.contains("ISO 9660"),
        "isoinfo -d does not see ISO 9660\n{}",
        out.describe()
    );
    map
}

/// One entry of an `isoinfo -l` listing (one line; multi-extent files have several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The mode column (`-rw-r--r--`, `drwxr-xr-x`, `lrwxrwxrwx`, `frw-r--r--` (fifo),
    /// `crw-…`; without Rock Ridge `----------`).
    pub mode: String,
    /// Bytes (per extent).
    pub size: u64,
    /// First logical block of the extent.
    pub lba: u64,
    /// The symlink target (`-R` listings: ` -> TARGET`).
    pub target: Option<String>,
}

/// `isoinfo -l [FLAG] -i IMG` (FLAG: `""`, `"-R"` or `"-J"`), as path (`/dir/name`, no `.` and
/// `..`) → the extents listed for it, in order.
pub fn isoinfo_list(img: &Path, flag: &str) -> BTreeMap<String, Vec<ListEntry>> {
    let mut cmd = Command::new("isoinfo");
    cmd.arg("-l");
    if !flag.is_empty() {
        cmd.arg(flag);
    }
    let out = run_ok(cmd.arg("-i").arg(img));
    parse_listing(&out.stdout_str())
}

/// Parses `isoinfo -l` output (see [`isoinfo_list`]).
///
/// isoinfo prints `[    LBA FLAGS]  NAME` but a multi-extent record's flags (0x80, sign
/// extended) overflow the column (`[     29 FFFF big.bin`); the name starts 14 characters after
/// the `[` either way.
pub fn parse_listing(text: &str) -> BTreeMap<String, Vec<ListEntry>> {
    let mut out: BTreeMap<String, Vec<ListEntry>> = BTreeMap::new();
    let mut dir = String::from("/");
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("Directory listing of ") {
            dir = d.trim_end().to_string();
            continue;
        }
        let Some(open) = line.find('[') else { continue };
        let fields: Vec<&str> = line[..open].split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        let rest = &line[open..];
        let lba: u64 = rest
            .get(1..8)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no LBA in isoinfo line {line:?}"));
        let mut name = rest.get(14..).unwrap_or("").to_string();
        if name.ends_with(' ') {
            name.pop();
        }
        if name == "." || name == ".." || name == "\u{0}" || name == "\u{1}" {
            continue;
        }
        let mode = fields[0].to_string();
        let (name, target) = match name.split_once(" -> ") {
            Some((n, t)) if mode.starts_with('l') => (n.to_string(), Some(t.to_string())),
            _ => (name, None),
        };
        let size = fields[4]
            .parse()
            .unwrap_or_else(|_| panic!("no size in isoinfo line {line:?}"));
        out.entry(format!("{dir}{name}"))
            .or_default()
            .push(ListEntry {
                mode,
                size,
                lba,
                target,
            });
    }
    out
}

/// `xorriso -osirrox on -indev IMG [PRE...] -extract / OUT`; PRE can remove paths from the
/// loaded (never written) tree first, e.g. `["-rm_r", "/big", "--"]`.
pub fn xorriso_extract(img: &Path, out: &Path, pre: &[&str]) -> Output {
    let mut cmd = Command::new("xorriso");
    cmd.args(["-osirrox", "on", "-indev"])
        .arg(img)
        .args(pre)
        .args(["-extract", "/"])
        .arg(out);
    run_ok(&mut cmd)
}

/// `xorriso -indev IMG -find PATH -exec lsdl` lines for PATH (`'/PATH'` at the end of each).
pub fn xorriso_lsdl(img: &Path, path: &str) -> Vec<String> {
    let out = run_ok(
        Command::new("xorriso")
            .arg("-indev")
            .arg(img)
            .args(["-find", path, "-exec", "lsdl"]),
    );
    out.stdout_str()
        .lines()
        .filter(|l| l.ends_with('\''))
        .map(str::to_string)
        .collect()
}

/// `xorriso -osirrox on -indev IMG -extract_cut PATH OFFSET LEN TO`: LEN bytes of PATH at OFFSET.
pub fn xorriso_cut(img: &Path, path: &str, offset: u64, len: u64, to: &Path) -> Vec<u8> {
    let _ = fs::remove_file(to);
    run_ok(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(img)
            .args(["-extract_cut", path, &offset.to_string(), &len.to_string()])
            .arg(to),
    );
    fs::read(to).unwrap_or_else(|e| panic!("reading {}: {e}", to.display()))
}

/// `7z x -y -oOUT IMG` (7-Zip reads Joliet names when there is a Joliet tree).
pub fn sevenz_extract(img: &Path, out: &Path) -> Output {
    let mut o = std::ffi::OsString::from("-o");
    o.push(out);
    let res = run(
        Command::new("7z").args(["x", "-y"]).arg(o).arg(img),
        CMD_TIMEOUT,
    );
    assert!(res.status.success(), "7z x failed\n{}", res.describe());
    res
}

/// `len` bytes of `img` at `offset`.
pub fn read_at(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(img).unwrap_or_else(|e| panic!("opening {}: {e}", img.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("reading {}: {e}", img.display()));
    buf
}

/// The primary volume descriptor's creation, modification and effective dates (ECMA-119
/// §8.4.26-29: 16 digits `YYYYMMDDHHMMSScc` and a 15-minute GMT offset), as
/// `("2001090901464000", 0)`.
pub fn pvd_dates(img: &Path) -> [(String, i8); 3] {
    let pvd = read_at(img, 16 * SECTOR, SECTOR as usize);
    assert_eq!(&pvd[..6], b"\x01CD001", "no primary volume descriptor");
    let at = |o: usize| {
        (
            String::from_utf8_lossy(&pvd[o..o + 16]).into_owned(),
            pvd[o + 16] as i8,
        )
    };
    [at(813), at(830), at(864)]
}

/// The `YYYYMMDDHHMMSS` (UTC) form of seconds since the epoch.
pub fn utc_digits(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Every entry below `root` (relative `/`-separated path → lstat), without reading contents.
pub fn walk_lstat(root: &Path) -> BTreeMap<String, fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let e = e.expect("directory entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = fs::symlink_metadata(root.join(&child)).expect("lstat");
            if m.is_dir() {
                stack.push(child.clone());
            }
            out.insert(child, m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parser_handles_symlinks_and_multi_extent_lines() {
        let text = "\nDirectory listing of /\n\
drwxr-xr-x   3    0    0            2048 Nov 23 2026 [     24 02]  . \n\
drwxr-xr-x   3    0    0            2048 Nov 23 2026 [     24 02]  .. \n\
-rw-r--r--   1    0    0               6 Sep 13 2020 [     28 00]  a b.txt \n\
-rw-r--r--   1    0    0      4294965248 Nov 23 2026 [     29 FFFF big.bin \n\
-rw-r--r--   1    0    0      1073743872 Nov 23 2026 [2097180 00]  big.bin \n\
lrwxrwxrwx   1    0    0               0 Nov 23 2026 [      0 00]  link -> a b.txt\n\
\nDirectory listing of /sub/\n\
-rw-r--r--   1    0    0             100 Nov 23 2026 [2621469 00]  x \n";
        let l = parse_listing(text);
        assert_eq!(l.len(), 4, "{l:?}");
        assert_eq!(l["/a b.txt"][0].lba, 28);
        assert_eq!(
            l["/big.bin"].iter().map(|e| e.size).sum::<u64>(),
            5_368_709_120
        );
        assert_eq!(l["/big.bin"][1].lba, 2_097_180);
        assert_eq!(l["/link"][0].target.as_deref(), Some("a b.txt"));
        assert_eq!(l["/sub/x"][0].size, 100);
    }

    #[test]
    fn utc_digits_formats_dates() {
        assert_eq!(utc_digits(0), "19700101000000");
        assert_eq!(utc_digits(1_000_000_000), "20010909014640");
        assert_eq!(utc_digits(-1), "19691231235959");
        assert_eq!(utc_digits(4_000_000_000), "20961002070640");
    }
}
