//! `disksynth floppy DIR`: a FAT12/16/32 volume synthesized from a host directory.
//!
//! Every image is checked by independent readers: `fsck.fat -n`, mtools (`mdir`, `mcopy -s`), the
//! `fatfs` crate and [`fat::Volume`], a small reader of the on-disk structures written here from
//! the Microsoft FAT specification (cluster count and FAT type computed from the BPB, FAT chains,
//! directory entries, long names, FSInfo, backup boot sector). Served images are compared with
//! `-o` output (qemu-img compare), driven with qemu-io/nbdcopy/nbdinfo, and the 1.44 MB floppy is
//! booted in qemu.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use disksynth_tests::generator::{
    assert_reproducible, build_image, build_image_fails, generator_cmd, output_with, FUTURE_MTIME,
};
use disksynth_tests::trees::{
    build_awkward_tree, build_deep_dirs, build_wide_dir, chmod, diff_snapshots, make_dir, mtime_of,
    set_all_mtimes, set_mtime, snapshot, write_file, Node,
};
use disksynth_tests::{
    civil_from_days, days_from_civil, nbdcopy_to, nbdinfo_json, nbdinfo_map, nbdinfo_size, qemu_io,
    qemu_io_readonly, random_bytes, require_tool, run, run_ok, tempdir, Output, Server,
    CMD_TIMEOUT, MIB,
};

/// Where the FAT volume starts in the default (MBR) layout: LBA 2048.
const PART_OFFSET: u64 = MIB;

// ------------------------------------------------------------------------------------------------
// Running disksynth floppy

/// `disksynth floppy TREE ARGS...` with `SOURCE_DATE_EPOCH` removed from the environment.
fn floppy_cmd(tree: &Path, args: &[&str]) -> Command {
    generator_cmd("floppy", tree, args)
}

/// `disksynth floppy TREE ARGS... -o IMG`, which must succeed.
fn build(tree: &Path, img: &Path, args: &[&str]) -> Output {
    build_image("floppy", tree, img, args)
}

/// `disksynth floppy TREE ARGS... -o IMG`, which must fail cleanly, leaving no IMG.
fn build_fails(tree: &Path, img: &Path, args: &[&str]) -> Output {
    build_image_fails("floppy", tree, img, args)
}

// ------------------------------------------------------------------------------------------------
// External checkers

/// mtools with a UTF-8 locale (long unicode names) and UTC (timestamps).
fn mtools(prog: &str) -> Command {
    let mut cmd = Command::new(prog);
    cmd.env("LC_ALL", "C.UTF-8").env("TZ", "UTC");
    cmd
}

/// The mtools `-i` argument for a volume at `offset` in `img`.
fn mspec(img: &Path, offset: u64) -> String {
    if offset == 0 {
        img.display().to_string()
    } else {
        format!("{}@@{offset}", img.display())
    }
}

/// `mcopy -s -m -n -i SPEC ::/ OUT`: the whole volume extracted into `out`.
fn mcopy_out(img: &Path, offset: u64, out: &Path) {
    fs::create_dir_all(out).unwrap();
    run_ok(
        mtools("mcopy")
            .args(["-s", "-m", "-n", "-i", &mspec(img, offset), "::/"])
            .arg(out),
    );
}

/// `mdir -i SPEC ::DIR` output.
fn mdir(img: &Path, offset: u64, dir: &str) -> String {
    run_ok(mtools("mdir").args(["-i", &mspec(img, offset), &format!("::{dir}")])).stdout_str()
}

/// The "N bytes free" figure of `mdir`: mtools counts the free FAT entries with the entry width
/// it derived itself, so a FAT16 volume read as FAT12 shows a wrong number here.
fn mdir_bytes_free(listing: &str) -> u64 {
    let line = listing
        .lines()
        .find(|l| l.contains("bytes free"))
        .unwrap_or_else(|| panic!("no 'bytes free' line in mdir output:\n{listing}"));
    let digits: String = line
        .split("bytes free")
        .next()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().expect("bytes free figure")
}

/// A file holding only the volume (fsck.fat has no offset option).
fn volume_file(img: &Path, offset: u64, work: &Path) -> PathBuf {
    if offset == 0 {
        return img.to_path_buf();
    }
    let vol = work.join(format!(
        "{}.vol",
        img.file_name().unwrap().to_string_lossy()
    ));
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", vol.display()))
            .arg("bs=512")
            .arg(format!("skip={}", offset / 512))
            .args(["conv=sparse", "status=none"]),
    );
    vol
}

/// What fsck.fat says about a volume.
#[derive(Debug)]
struct Fsck {
    bits: u32,
    used: u64,
    total: u64,
}

/// `fsck.fat -n` must exit 0 and print nothing but its version and the summary line;
/// `fsck.fat -n -v` tells the FAT entry width and cluster counts it derived.
fn fsck_clean(vol: &Path) -> Fsck {
    fsck_clean_but(vol, &[])
}

/// [`fsck_clean`], except that the complaint lines in `known` (a known fsck.fat bug) may appear;
/// then fsck.fat exits 1 and says "Leaving filesystem unchanged."
fn fsck_clean_but(vol: &Path, known: &[&str]) -> Fsck {
    let out = run(Command::new("fsck.fat").arg("-n").arg(vol), CMD_TIMEOUT);
    let text = out.stdout_str();
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let before = lines.len();
    lines.retain(|l| !known.contains(l) && *l != "Leaving filesystem unchanged.");
    let only_known = before == lines.len() + known.len() + 1 && out.status.code() == Some(1);
    assert!(
        (out.status.success() || only_known) && lines.len() == 2 && lines[1].contains(" clusters"),
        "fsck.fat -n is not clean\n{}",
        out.describe()
    );
    let verbose = run(
        Command::new("fsck.fat").args(["-n", "-v"]).arg(vol),
        CMD_TIMEOUT,
    );
    assert!(
        verbose.status.success() || !known.is_empty(),
        "{}",
        verbose.describe()
    );
    let verbose = verbose.stdout_str();
    let bits = verbose
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.split("FATs, ").nth(1)?;
            rest.strip_suffix(" bit entries")?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no 'N bit entries' line in fsck.fat -v:\n{verbose}"));
    // "IMG: 4 files, 3/8095 clusters"
    let summary = lines[1].rsplit(": ").next().unwrap();
    let frac = summary
        .split_whitespace()
        .find(|w| w.contains('/'))
        .unwrap_or_else(|| panic!("bad fsck summary {summary:?}"));
    let (used, total) = frac.split_once('/').unwrap();
    Fsck {
        bits,
        used: used.parse().unwrap(),
        total: total.parse().unwrap(),
    }
}

// ------------------------------------------------------------------------------------------------
// fatfs (the crate) as a second, independent reader

/// A window `[base, base+len)` of an image file, read-only, for the fatfs crate.
struct Part {
    file: File,
    base: u64,
    len: u64,
    pos: u64,
}

impl Read for Part {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.file
            .read_exact_at(&mut buf[..n], self.base + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Part {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Part {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::End(d) => self.len as i64 + d,
            SeekFrom::Current(d) => self.pos as i64 + d,
        };
        if new < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// What the fatfs crate sees.
struct FatfsView {
    tree: BTreeMap<String, Node>,
    bits: u32,
    free: u32,
    volume_id: u32,
    label: String,
}

fn fatfs_read(img: &Path, offset: u64) -> FatfsView {
    let file = File::open(img).unwrap();
    let len = file.metadata().unwrap().len() - offset;
    let part = Part {
        file,
        base: offset,
        len,
        pos: 0,
    };
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new())
        .unwrap_or_else(|e| panic!("the fatfs crate cannot mount {}: {e}", img.display()));
    fn walk<T: fatfs::ReadWriteSeek>(
        dir: fatfs::Dir<'_, T>,
        prefix: &str,
        out: &mut BTreeMap<String, Node>,
    ) {
        for e in dir.iter() {
            let e = e.unwrap_or_else(|err| panic!("fatfs: reading {prefix:?}: {err}"));
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.is_dir() {
                out.insert(path.clone(), Node::Dir);
                walk(e.to_dir(), &path, out);
            } else {
                let mut data = Vec::new();
                e.to_file()
                    .read_to_end(&mut data)
                    .unwrap_or_else(|err| panic!("fatfs: reading {path:?}: {err}"));
                assert_eq!(data.len() as u64, e.len(), "fatfs: short read of {path:?}");
                out.insert(path, Node::File(data));
            }
        }
    }
    let mut tree = BTreeMap::new();
    walk(fs.root_dir(), "", &mut tree);
    let bits = match fs.fat_type() {
        fatfs::FatType::Fat12 => 12,
        fatfs::FatType::Fat16 => 16,
        fatfs::FatType::Fat32 => 32,
    };
    let free = fs.stats().expect("fatfs stats").free_clusters();
    FatfsView {
        tree,
        bits,
        free,
        volume_id: fs.volume_id(),
        label: fs.volume_label(),
    }
}

// ------------------------------------------------------------------------------------------------
// Our own reader, straight from the Microsoft FAT specification

mod fat {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    use disksynth_tests::trees::Node;

    fn u16_at(b: &[u8], o: usize) -> u32 {
        u16::from_le_bytes([b[o], b[o + 1]]) as u32
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    /// The BIOS parameter block and the extended boot record.
    #[derive(Debug, Clone)]
    pub struct Bpb {
        pub bytes_per_sector: u64,
        pub sectors_per_cluster: u64,
        pub reserved: u64,
        pub num_fats: u64,
        pub root_entries: u64,
        pub tot_sec16: u32,
        pub tot_sec32: u32,
        pub media: u8,
        pub fat_sz16: u32,
        pub fat_sz32: u32,
        pub sectors_per_track: u32,
        pub heads: u32,
        pub hidden: u32,
        pub fs_version: u32,
        pub root_cluster: u32,
        pub fsinfo_sector: u32,
        pub backup_boot: u32,
        pub boot_sig: u8,
        pub serial: u32,
        pub label: [u8; 11],
        pub fs_type: [u8; 8],
        /// Byte offset of the serial number in the boot sector.
        pub serial_offset: usize,
    }

    impl Bpb {
        pub fn total_sectors(&self) -> u64 {
            if self.tot_sec16 != 0 {
                self.tot_sec16 as u64
            } else {
                self.tot_sec32 as u64
            }
        }

        pub fn fat_size(&self) -> u64 {
            if self.fat_sz16 != 0 {
                self.fat_sz16 as u64
            } else {
                self.fat_sz32 as u64
            }
        }

        pub fn root_dir_sectors(&self) -> u64 {
            (self.root_entries * 32).div_ceil(self.bytes_per_sector)
        }

        pub fn first_data_sector(&self) -> u64 {
            self.reserved + self.num_fats * self.fat_size() + self.root_dir_sectors()
        }

        /// CountofClusters = DataSec / BPB_SecPerClus.
        pub fn count_of_clusters(&self) -> u64 {
            self.total_sectors()
                .saturating_sub(self.first_data_sector())
                / self.sectors_per_cluster.max(1)
        }

        /// The FAT type per the specification: FAT12 < 4085 ≤ FAT16 < 65525 ≤ FAT32.
        pub fn fat_bits(&self) -> u32 {
            match self.count_of_clusters() {
                c if c < 4085 => 12,
                c if c < 65525 => 16,
                _ => 32,
            }
        }
    }

    pub fn parse_bpb(s: &[u8]) -> Bpb {
        let mut b = Bpb {
            bytes_per_sector: u16_at(s, 11) as u64,
            sectors_per_cluster: s[13] as u64,
            reserved: u16_at(s, 14) as u64,
            num_fats: s[16] as u64,
            root_entries: u16_at(s, 17) as u64,
            tot_sec16: u16_at(s, 19),
            media: s[21],
            fat_sz16: u16_at(s, 22),
            sectors_per_track: u16_at(s, 24),
            heads: u16_at(s, 26),
            hidden: u32_at(s, 28),
            tot_sec32: u32_at(s, 32),
            fat_sz32: 0,
            fs_version: 0,
            root_cluster: 0,
            fsinfo_sector: 0,
            backup_boot: 0,
            boot_sig: 0,
            serial: 0,
            label: [0; 11],
            fs_type: [0; 8],
            serial_offset: 0,
        };
        let ext = if b.fat_sz16 == 0 {
            b.fat_sz32 = u32_at(s, 36);
            b.fs_version = u16_at(s, 42);
            b.root_cluster = u32_at(s, 44);
            b.fsinfo_sector = u16_at(s, 48);
            b.backup_boot = u16_at(s, 50);
            64
        } else {
            36
        };
        b.boot_sig = s[ext + 2];
        b.serial_offset = ext + 3;
        b.serial = u32_at(s, ext + 3);
        b.label.copy_from_slice(&s[ext + 7..ext + 18]);
        b.fs_type.copy_from_slice(&s[ext + 18..ext + 26]);
        b
    }

    /// A directory entry (short entry plus its long name, if any).
    #[derive(Debug, Clone)]
    pub struct Entry {
        pub name: String,
        pub short: [u8; 11],
        pub has_lfn: bool,
        pub attr: u8,
        pub nt_res: u8,
        pub cluster: u32,
        pub size: u32,
        pub crt_tenth: u8,
        pub crt_time: u16,
        pub crt_date: u16,
        pub acc_date: u16,
        pub wrt_time: u16,
        pub wrt_date: u16,
    }

    impl Entry {
        pub fn is_dir(&self) -> bool {
            self.attr & 0x10 != 0
        }
        fn is_label(&self) -> bool {
            self.attr & 0x08 != 0
        }
    }

    fn short_checksum(short: &[u8; 11]) -> u8 {
        short
            .iter()
            .fold(0u8, |sum, &c| (sum >> 1 | (sum & 1) << 7).wrapping_add(c))
    }

    /// The name an entry without a long name shows: `BASE.EXT` with the NT lower-case flags.
    fn short_display(short: &[u8; 11], nt_res: u8) -> String {
        let conv = |bytes: &[u8], lower: bool| -> String {
            let mut s: String = bytes
                .iter()
                .enumerate()
                .map(|(i, &c)| if i == 0 && c == 0x05 { 0xE5 } else { c })
                .map(|c| c as char)
                .collect();
            s.truncate(s.trim_end_matches(' ').len());
            if lower {
                s.to_ascii_lowercase()
            } else {
                s
            }
        };
        let base = conv(&short[..8], nt_res & 0x08 != 0);
        let ext = conv(&short[8..], nt_res & 0x10 != 0);
        if ext.is_empty() {
            base
        } else {
            format!("{base}.{ext}")
        }
    }

    /// Problems with a short name: characters, case, padding.
    fn short_name_problem(short: &[u8; 11]) -> Option<String> {
        const SPECIAL: &[u8] = b"!#$%&'()-@^_`{}~";
        let ok = |c: u8| {
            c.is_ascii_uppercase() || c.is_ascii_digit() || SPECIAL.contains(&c) || c >= 0x80
        };
        if short[0] == b' ' {
            return Some("empty base name".into());
        }
        for part in [&short[..8], &short[8..]] {
            let used = part.len() - part.iter().rev().take_while(|&&c| c == b' ').count();
            for (i, &c) in part[..used].iter().enumerate() {
                let c = if i == 0 && c == 0x05 { 0xE5 } else { c };
                if !ok(c) {
                    return Some(format!("illegal character {:?}", c as char));
                }
            }
        }
        None
    }

    /// Parses the 32-byte entries of one directory.
    pub fn parse_dir(bytes: &[u8], where_: &str, problems: &mut Vec<String>) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, u8, Vec<u16>)> = Vec::new();
        for e in bytes.chunks_exact(32) {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xE5 {
                lfn.clear();
                continue;
            }
            let attr = e[11];
            if attr & 0x3F == 0x0F {
                let mut units = Vec::with_capacity(13);
                for (a, b) in [(1, 11), (14, 26), (28, 32)] {
                    units.extend(
                        e[a..b]
                            .chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]])),
                    );
                }
                if e[0] & 0x40 != 0 {
                    if !lfn.is_empty() {
                        problems.push(format!("{where_}: long-name run interrupted"));
                    }
                    lfn.clear();
                }
                lfn.push((e[0] & 0x3F, e[13], units));
                continue;
            }
            let mut short = [0u8; 11];
            short.copy_from_slice(&e[..11]);
            let sum = short_checksum(&short);
            let mut entry = Entry {
                name: short_display(&short, e[12]),
                short,
                has_lfn: false,
                attr,
                nt_res: e[12],
                cluster: u16_at(e, 20) << 16 | u16_at(e, 26),
                size: u32_at(e, 28),
                crt_tenth: e[13],
                crt_time: u16_at(e, 14) as u16,
                crt_date: u16_at(e, 16) as u16,
                acc_date: u16_at(e, 18) as u16,
                wrt_time: u16_at(e, 22) as u16,
                wrt_date: u16_at(e, 24) as u16,
            };
            if !lfn.is_empty() {
                let n = lfn.len() as u8;
                let ords_ok = lfn
                    .iter()
                    .enumerate()
                    .all(|(i, (ord, _, _))| *ord == n - i as u8);
                let sums_ok = lfn.iter().all(|(_, s, _)| *s == sum);
                if !ords_ok || !sums_ok {
                    problems.push(format!(
                        "{where_}: long name before {:?}: ordinals ok {ords_ok}, checksums ok {sums_ok}",
                        entry.name
                    ));
                } else {
                    let mut units: Vec<u16> =
                        lfn.iter().rev().flat_map(|(_, _, u)| u.clone()).collect();
                    if let Some(end) = units.iter().position(|&u| u == 0) {
                        if units[end + 1..].iter().any(|&u| u != 0xFFFF) {
                            problems.push(format!("{where_}: long name padding is not 0xFFFF"));
                        }
                        units.truncate(end);
                    }
                    match String::from_utf16(&units) {
                        Ok(s) => {
                            entry.name = s;
                            entry.has_lfn = true;
                        }
                        Err(_) => problems.push(format!("{where_}: long name is not valid UTF-16")),
                    }
                }
                lfn.clear();
            }
            out.push(entry);
        }
        out
    }

    pub struct Volume {
        file: File,
        base: u64,
        pub bpb: Bpb,
        pub bits: u32,
        pub count: u64,
        /// FAT #0, decoded, entries 0..count+2.
        pub fat: Vec<u32>,
    }

    /// The result of walking every directory.
    pub struct Walk {
        /// Every file and directory except `.`, `..` and the volume label, by path.
        pub entries: BTreeMap<String, Entry>,
        pub label: Option<Entry>,
        /// `.` and `..` entries (path of their directory, entry), for timestamp checks.
        pub dots: Vec<(String, Entry)>,
        pub problems: Vec<String>,
        /// Clusters referenced by the directory tree.
        pub used: usize,
    }

    impl Volume {
        /// Opens the volume starting at byte `base` of `img`.
        pub fn open(img: &Path, base: u64) -> Volume {
            let file = File::open(img).unwrap_or_else(|e| panic!("opening {}: {e}", img.display()));
            let mut boot = vec![0u8; 512];
            file.read_exact_at(&mut boot, base)
                .expect("reading the boot sector");
            let bpb = parse_bpb(&boot);
            assert!(
                bpb.bytes_per_sector >= 512 && bpb.sectors_per_cluster >= 1 && bpb.fat_size() > 0,
                "not a FAT boot sector at byte {base} of {}: {bpb:?}",
                img.display()
            );
            let mut v = Volume {
                file,
                base,
                bits: bpb.fat_bits(),
                count: bpb.count_of_clusters(),
                bpb,
                fat: Vec::new(),
            };
            v.fat = v.decode_fat(0);
            v
        }

        pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
            let mut buf = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut buf, self.base + offset)
                .unwrap_or_else(|e| panic!("reading {len} bytes at volume offset {offset}: {e}"));
            buf
        }

        pub fn sector(&self, n: u64) -> Vec<u8> {
            self.read(n * self.bpb.bytes_per_sector, self.bpb.bytes_per_sector)
        }

        pub fn cluster_bytes(&self) -> u64 {
            self.bpb.sectors_per_cluster * self.bpb.bytes_per_sector
        }

        /// Byte offset of cluster `n` in the volume.
        pub fn cluster_offset(&self, n: u32) -> u64 {
            (self.bpb.first_data_sector() + (n as u64 - 2) * self.bpb.sectors_per_cluster)
                * self.bpb.bytes_per_sector
        }

        fn fat_bytes(&self, copy: u64) -> Vec<u8> {
            let bps = self.bpb.bytes_per_sector;
            let size = self.bpb.fat_size() * bps;
            self.read((self.bpb.reserved * bps) + copy * size, size)
        }

        fn decode_fat(&self, copy: u64) -> Vec<u32> {
            let raw = self.fat_bytes(copy);
            let n = (self.count + 2) as usize;
            let need = match self.bits {
                12 => n + n.div_ceil(2),
                16 => 2 * n,
                _ => 4 * n,
            };
            assert!(
                raw.len() >= need,
                "the FAT ({} bytes) is too small for {} clusters of FAT{}",
                raw.len(),
                self.count,
                self.bits
            );
            (0..n)
                .map(|i| match self.bits {
                    12 => {
                        let v = u16_at(&raw, i + i / 2);
                        if i % 2 == 1 {
                            v >> 4
                        } else {
                            v & 0xFFF
                        }
                    }
                    16 => u16_at(&raw, 2 * i),
                    _ => u32_at(&raw, 4 * i) & 0x0FFF_FFFF,
                })
                .collect()
        }

        fn eoc(&self) -> u32 {
            match self.bits {
                12 => 0xFF8,
                16 => 0xFFF8,
                _ => 0x0FFF_FFF8,
            }
        }

        pub fn free_clusters(&self) -> u64 {
            self.fat[2..].iter().filter(|&&v| v == 0).count() as u64
        }

        /// The cluster chain starting at `first`.
        pub fn chain(&self, first: u32) -> Result<Vec<u32>, String> {
            let mut out = Vec::new();
            let mut c = first;
            loop {
                if c < 2 || c as u64 >= self.count + 2 {
                    return Err(format!("chain from {first} reaches invalid cluster {c}"));
                }
                out.push(c);
                if out.len() as u64 > self.count {
                    return Err(format!("chain from {first} loops"));
                }
                let next = self.fat[c as usize];
                if next >= self.eoc() {
                    return Ok(out);
                }
                c = next;
            }
        }

        /// The data of a file entry.
        pub fn read_file(&self, e: &Entry) -> Vec<u8> {
            if e.size == 0 {
                return Vec::new();
            }
            let cs = self.cluster_bytes();
            let mut data = Vec::with_capacity(e.size as usize);
            for c in self.chain(e.cluster).expect("file chain") {
                data.extend_from_slice(&self.read(self.cluster_offset(c), cs));
            }
            data.truncate(e.size as usize);
            data
        }

        /// Disk byte ranges `[start, end)` holding the file's bytes (not the padding after them).
        pub fn file_ranges(&self, e: &Entry) -> Vec<(u64, u64)> {
            let cs = self.cluster_bytes();
            let mut left = e.size as u64;
            let mut out: Vec<(u64, u64)> = Vec::new();
            if left == 0 {
                return out;
            }
            for c in self.chain(e.cluster).expect("file chain") {
                let start = self.base + self.cluster_offset(c);
                let len = left.min(cs);
                left -= len;
                match out.last_mut() {
                    Some(last) if last.1 == start => last.1 = start + len,
                    _ => out.push((start, start + len)),
                }
            }
            out
        }

        /// Disk byte ranges of the free clusters (merged).
        pub fn free_ranges(&self) -> Vec<(u64, u64)> {
            let cs = self.cluster_bytes();
            let mut out: Vec<(u64, u64)> = Vec::new();
            for c in 2..(self.count + 2) as u32 {
                if self.fat[c as usize] != 0 {
                    continue;
                }
                let start = self.base + self.cluster_offset(c);
                match out.last_mut() {
                    Some(last) if last.1 == start => last.1 = start + cs,
                    _ => out.push((start, start + cs)),
                }
            }
            out
        }

        fn dir_bytes(&self, cluster: u32) -> Result<Vec<u8>, String> {
            if cluster == 0 && self.bits != 32 {
                let bps = self.bpb.bytes_per_sector;
                let start = (self.bpb.reserved + self.bpb.num_fats * self.bpb.fat_size()) * bps;
                return Ok(self.read(start, self.bpb.root_dir_sectors() * bps));
            }
            let first = if cluster == 0 {
                self.bpb.root_cluster
            } else {
                cluster
            };
            let mut out = Vec::new();
            for c in self.chain(first)? {
                out.extend_from_slice(&self.read(self.cluster_offset(c), self.cluster_bytes()));
            }
            Ok(out)
        }

        /// Walks every directory, checking `.`/`..`, names, chains and cross-links.
        pub fn walk(&self) -> Walk {
            let mut w = Walk {
                entries: BTreeMap::new(),
                label: None,
                dots: Vec::new(),
                problems: Vec::new(),
                used: 0,
            };
            let mut owner: HashMap<u32, String> = HashMap::new();
            let cs = self.cluster_bytes();
            let mut claim = |w: &mut Walk, chain: &[u32], path: &str| {
                for &c in chain {
                    if let Some(prev) = owner.insert(c, path.to_string()) {
                        w.problems
                            .push(format!("cluster {c} is used by {prev:?} and {path:?}"));
                    }
                }
                w.used += chain.len();
            };
            if self.bits == 32 {
                match self.chain(self.bpb.root_cluster) {
                    Ok(ch) => claim(&mut w, &ch, "/"),
                    Err(e) => w.problems.push(format!("root directory: {e}")),
                }
            }
            // (directory cluster, path, cluster its `..` must hold)
            let mut stack: Vec<(u32, String, u32)> = vec![(0, String::new(), 0)];
            let mut seen_dirs = HashSet::new();
            while let Some((cluster, path, parent)) = stack.pop() {
                let shown = if path.is_empty() {
                    "/".to_string()
                } else {
                    path.clone()
                };
                if !seen_dirs.insert(cluster) {
                    w.problems.push(format!(
                        "directory cluster {cluster} reached twice ({shown})"
                    ));
                    continue;
                }
                let bytes = match self.dir_bytes(cluster) {
                    Ok(b) => b,
                    Err(e) => {
                        w.problems.push(format!("{shown}: {e}"));
                        continue;
                    }
                };
                let mut entries = parse_dir(&bytes, &shown, &mut w.problems).into_iter();
                if cluster != 0 {
                    let dot = entries.next();
                    let dotdot = entries.next();
                    match (&dot, &dotdot) {
                        (Some(d), Some(dd))
                            if &d.short == b".          " && &dd.short == b"..         " =>
                        {
                            if d.cluster != cluster || !d.is_dir() {
                                w.problems.push(format!(
                                    "{shown}: '.' points at cluster {} instead of {cluster}",
                                    d.cluster
                                ));
                            }
                            if dd.cluster != parent || !dd.is_dir() {
                                w.problems.push(format!(
                                    "{shown}: '..' points at cluster {} instead of {parent}",
                                    dd.cluster
                                ));
                            }
                            w.dots.push((shown.clone(), d.clone()));
                            w.dots.push((shown.clone(), dd.clone()));
                        }
                        _ => w
                            .problems
                            .push(format!("{shown}: does not start with '.' and '..'")),
                    }
                }
                let mut shorts = HashSet::new();
                let mut longs: HashMap<String, String> = HashMap::new();
                for e in entries {
                    if e.is_label() && !e.is_dir() {
                        if cluster != 0 || w.label.is_some() {
                            w.problems
                                .push(format!("{shown}: unexpected volume label entry"));
                        }
                        w.label = Some(e);
                        continue;
                    }
                    if e.short[0] == b'.' {
                        w.problems
                            .push(format!("{shown}: stray dot entry {:?}", e.name));
                        continue;
                    }
                    let child = if path.is_empty() {
                        e.name.clone()
                    } else {
                        format!("{path}/{}", e.name)
                    };
                    if let Some(p) = short_name_problem(&e.short) {
                        w.problems.push(format!(
                            "{child:?}: short name {:?}: {p}",
                            String::from_utf8_lossy(&e.short)
                        ));
                    }
                    if !shorts.insert(e.short) {
                        w.problems.push(format!(
                            "{shown}: duplicate short name {:?}",
                            String::from_utf8_lossy(&e.short)
                        ));
                    }
                    if let Some(prev) = longs.insert(e.name.to_lowercase(), e.name.clone()) {
                        w.problems
                            .push(format!("{shown}: names {prev:?} and {:?} collide", e.name));
                    }
                    if e.is_dir() {
                        if e.cluster == 0 {
                            w.problems
                                .push(format!("{child:?}: directory with cluster 0"));
                        } else {
                            match self.chain(e.cluster) {
                                Ok(ch) => claim(&mut w, &ch, &child),
                                Err(err) => w.problems.push(format!("{child:?}: {err}")),
                            }
                            // `..` of a child of the root holds 0 (also on FAT32).
                            stack.push((e.cluster, child.clone(), cluster));
                        }
                    } else if e.size == 0 {
                        if e.cluster != 0 {
                            w.problems.push(format!(
                                "{child:?}: empty file with first cluster {} (must be 0)",
                                e.cluster
                            ));
                        }
                    } else {
                        match self.chain(e.cluster) {
                            Ok(ch) => {
                                let want = (e.size as u64).div_ceil(cs);
                                if ch.len() as u64 != want {
                                    w.problems.push(format!(
                                        "{child:?}: {} bytes in {} clusters (want {want})",
                                        e.size,
                                        ch.len()
                                    ));
                                }
                                claim(&mut w, &ch, &child);
                            }
                            Err(err) => w.problems.push(format!("{child:?}: {err}")),
                        }
                    }
                    w.entries.insert(child, e);
                }
            }
            let allocated = self.count as usize - self.free_clusters() as usize;
            if allocated != w.used {
                w.problems.push(format!(
                    "{allocated} clusters allocated in the FAT but {} referenced by directories",
                    w.used
                ));
            }
            w
        }

        /// Files and directories as a snapshot (file data read through the FAT chains).
        pub fn snapshot(&self, w: &Walk) -> BTreeMap<String, Node> {
            w.entries
                .iter()
                .map(|(p, e)| {
                    (
                        p.clone(),
                        if e.is_dir() {
                            Node::Dir
                        } else {
                            Node::File(self.read_file(e))
                        },
                    )
                })
                .collect()
        }

        /// Structural checks of the boot sector, FATs, FSInfo and backup boot sector.
        pub fn check(&self) -> Vec<String> {
            let mut p = Vec::new();
            let b = &self.bpb;
            let boot = self.sector(0);
            if boot[510..512] != [0x55, 0xAA] {
                p.push("boot sector signature is not 55 AA".into());
            }
            if !(boot[0] == 0xEB && boot[2] == 0x90 || boot[0] == 0xE9) {
                p.push(format!("jump instruction {:02x?}", &boot[..3]));
            }
            if b.bytes_per_sector != 512 {
                p.push(format!("{} bytes per sector", b.bytes_per_sector));
            }
            if !b.sectors_per_cluster.is_power_of_two() || b.sectors_per_cluster > 128 {
                p.push(format!("{} sectors per cluster", b.sectors_per_cluster));
            }
            if !(1..=2).contains(&b.num_fats) {
                p.push(format!("{} FATs", b.num_fats));
            }
            if b.media != 0xF0 && b.media < 0xF8 {
                p.push(format!("media byte {:#x}", b.media));
            }
            let want_type = format!("FAT{:<5}", self.bits);
            if b.fs_type != want_type.as_bytes() {
                p.push(format!(
                    "{} clusters make this FAT{} but the type string is {:?}",
                    self.count,
                    self.bits,
                    String::from_utf8_lossy(&b.fs_type)
                ));
            }
            if b.boot_sig != 0x29 {
                p.push(format!("extended boot signature {:#x}", b.boot_sig));
            }
            if self.bits == 32 && (b.fat_sz16 != 0 || b.root_entries != 0 || b.tot_sec16 != 0) {
                p.push("FAT32 with FATSz16/RootEntCnt/TotSec16 not 0".into());
            }
            if self.bits != 32 && b.fat_sz16 == 0 {
                p.push(format!(
                    "FAT{} volume laid out as FAT32 (FATSz16 = 0)",
                    self.bits
                ));
            }
            if b.total_sectors() * b.bytes_per_sector
                > self.file.metadata().unwrap().len() - self.base
            {
                p.push("the volume is larger than the image".into());
            }
            for copy in 1..b.num_fats {
                if self.fat_bytes(copy) != self.fat_bytes(0) {
                    p.push(format!("FAT copy {copy} differs from FAT 0"));
                }
            }
            let ones = match self.bits {
                12 => 0xF00,
                16 => 0xFF00,
                _ => 0x0FFF_FF00,
            };
            if self.fat[0] != ones | b.media as u32 {
                p.push(format!("FAT[0] = {:#x}, media {:#x}", self.fat[0], b.media));
            }
            let clean = match self.bits {
                12 => 0xFF8,
                16 => 0xC000 | 0x3FF8,
                _ => 0x0C00_0000 | 0x03FF_FFF8,
            };
            if self.fat[1] & clean != clean {
                p.push(format!(
                    "FAT[1] = {:#x}: not an end-of-chain mark of a clean volume",
                    self.fat[1]
                ));
            }
            for (i, &v) in self.fat.iter().enumerate().skip(2) {
                if v != 0 && v < self.eoc() && (v < 2 || v as u64 >= self.count + 2) {
                    p.push(format!("FAT[{i}] = {v:#x} is out of range"));
                    break;
                }
            }
            if self.bits == 32 {
                if b.fs_version != 0 {
                    p.push(format!("FSVer {:#x}", b.fs_version));
                }
                if b.backup_boot != 6 {
                    p.push(format!("backup boot sector at {} (want 6)", b.backup_boot));
                } else if self.sector(6) != boot {
                    p.push("sector 6 is not a copy of the boot sector".into());
                }
                let fsinfo = self.sector(b.fsinfo_sector as u64);
                let free = self.free_clusters();
                if u32_at(&fsinfo, 0) != 0x4161_5252
                    || u32_at(&fsinfo, 484) != 0x6141_7272
                    || u32_at(&fsinfo, 508) != 0xAA55_0000
                {
                    p.push(format!(
                        "FSInfo sector {} has bad signatures",
                        b.fsinfo_sector
                    ));
                } else {
                    let stored = u32_at(&fsinfo, 488);
                    if stored as u64 != free {
                        p.push(format!("FSInfo free count {stored}, really {free}"));
                    }
                    let hint = u32_at(&fsinfo, 492);
                    if hint != 0xFFFF_FFFF {
                        if hint < 2 || hint as u64 >= self.count + 2 {
                            p.push(format!("FSInfo next-free {hint} out of range"));
                        } else if let Some(c) = (2..hint).find(|&c| self.fat[c as usize] == 0) {
                            p.push(format!(
                                "FSInfo next-free is {hint} but cluster {c} before it is free"
                            ));
                        }
                    }
                }
            }
            p
        }
    }
}

use fat::Volume;

// ------------------------------------------------------------------------------------------------
// Timestamps

/// 1980-01-01 00:00:00 UTC.
const FAT_MIN_TIME: i64 = 315_532_800;

/// 2107-12-31 23:59:58 UTC, the last time FAT can store.
fn fat_max_time() -> i64 {
    days_from_civil(2107, 12, 31) * 86_400 + 86_398
}

/// What a host time becomes on FAT: clamped to 1980..2107 and rounded down to 2 seconds.
fn fat_time(unix: i64) -> i64 {
    let t = unix.clamp(FAT_MIN_TIME, fat_max_time());
    t - t.rem_euclid(2)
}

/// (date, time) fields for a Unix time (UTC), after [`fat_time`].
fn fat_stamp(unix: i64) -> (u16, u16) {
    let t = fat_time(unix);
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    let date = ((y - 1980) << 9 | m << 5 | d) as u16;
    let time = ((s / 3600) << 11 | (s / 60 % 60) << 5 | ((s % 60) / 2)) as u16;
    (date, time)
}

// ------------------------------------------------------------------------------------------------
// The full check of one image

/// Checks an image with every reader and returns the volume. `expected` is what the volume must
/// hold; `diff_with` a host tree that `diff -r` must find identical to mtools' extraction.
fn verify(
    img: &Path,
    offset: u64,
    expected: &BTreeMap<String, Node>,
    diff_with: Option<&Path>,
    work: &Path,
) -> Volume {
    verify_with(img, offset, expected, diff_with, work, true)
}

/// [`verify`], optionally without mtools (which cannot represent names beyond the BMP).
fn verify_with(
    img: &Path,
    offset: u64,
    expected: &BTreeMap<String, Node>,
    diff_with: Option<&Path>,
    work: &Path,
    with_mtools: bool,
) -> Volume {
    let vol = Volume::open(img, offset);
    let problems = vol.check();
    assert!(problems.is_empty(), "{}: {problems:#?}", img.display());
    let walk = vol.walk();
    assert!(
        walk.problems.is_empty(),
        "{}: {:#?}",
        img.display(),
        walk.problems
    );
    let ours = vol.snapshot(&walk);
    let d = diff_snapshots(expected, &ours, 20);
    assert!(d.is_empty(), "our FAT reader vs the expected tree: {d:#?}");

    // fsck.fat: clean, same entry width and cluster counts.
    let fsck = fsck_clean(&volume_file(img, offset, work));
    assert_eq!(
        (fsck.bits, fsck.total),
        (vol.bits, vol.count),
        "fsck.fat vs the BPB (spec: FAT{} with {} clusters)",
        vol.bits,
        vol.count
    );
    assert_eq!(
        fsck.used,
        vol.count - vol.free_clusters(),
        "fsck.fat used clusters"
    );

    // mtools: free space (derived from its own idea of the FAT width) and a full extraction.
    if with_mtools {
        verify_mtools(img, offset, expected, diff_with, work, &vol);
    }

    // The fatfs crate.
    let view = fatfs_read(img, offset);
    assert_eq!(view.bits, vol.bits, "fatfs FAT type");
    assert_eq!(view.free as u64, vol.free_clusters(), "fatfs free clusters");
    assert_eq!(view.volume_id, vol.bpb.serial, "fatfs volume id");
    let d = diff_snapshots(expected, &view.tree, 20);
    assert!(d.is_empty(), "fatfs crate vs the expected tree: {d:#?}");
    vol
}

fn verify_mtools(
    img: &Path,
    offset: u64,
    expected: &BTreeMap<String, Node>,
    diff_with: Option<&Path>,
    work: &Path,
    vol: &Volume,
) {
    let listing = mdir(img, offset, "/");
    assert_eq!(
        mdir_bytes_free(&listing),
        vol.free_clusters() * vol.cluster_bytes(),
        "mtools reads FAT{} with {} clusters differently:\n{listing}",
        vol.bits,
        vol.count
    );
    let out = work.join(format!(
        "mcopy-{}",
        img.file_name().unwrap().to_string_lossy()
    ));
    mcopy_out(img, offset, &out);
    let d = diff_snapshots(expected, &snapshot(&out, false), 20);
    assert!(
        d.is_empty(),
        "mcopy -s extraction vs the expected tree: {d:#?}"
    );
    if let Some(tree) = diff_with {
        run_ok(Command::new("diff").arg("-r").arg(tree).arg(&out));
    }
    fs::remove_dir_all(&out).unwrap();
}

/// The MBR of the default layout: one partition at LBA 2048 to the end, typed by FAT width.
fn check_mbr(img: &Path, vol: &Volume) {
    let mut mbr = [0u8; 512];
    File::open(img).unwrap().read_exact_at(&mut mbr, 0).unwrap();
    assert_eq!(mbr[510..512], [0x55, 0xAA], "MBR signature");
    let e = &mbr[446..462];
    let sectors = fs::metadata(img).unwrap().len() / 512;
    let want_type = match vol.bits {
        12 => 0x01,
        16 => 0x0E,
        _ => 0x0C,
    };
    assert!(e[0] == 0 || e[0] == 0x80, "partition status {:#x}", e[0]);
    assert_eq!(
        e[4], want_type,
        "partition type for FAT{} ({} clusters)",
        vol.bits, vol.count
    );
    let lba = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64;
    let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64;
    assert_eq!((lba, len), (2048, sectors - 2048), "partition start/length");
    assert!(
        mbr[462..510].iter().all(|&b| b == 0),
        "partition entries 2-4 must be empty"
    );
    assert_eq!(vol.bpb.hidden, 2048, "BPB hidden sectors");
    assert_eq!(
        vol.bpb.total_sectors(),
        len,
        "BPB total sectors vs partition length"
    );
}

// ------------------------------------------------------------------------------------------------
// Trees and images

/// A small tree: a few files in two directories.
fn small_tree(root: &Path) {
    write_file(root, "hello.txt", b"hello, FAT\n");
    write_file(root, "data/random.bin", &random_bytes(7, 100_000));
    write_file(root, "data/Sub Dir/notes.md", b"# notes\n");
    write_file(root, "empty", b"");
}

fn tree_in(dir: &Path, build_tree: impl FnOnce(&Path)) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    build_tree(&tree);
    tree
}

fn part_offset(img: &Path) -> u64 {
    let mut sig = [0u8; 2];
    File::open(img)
        .unwrap()
        .read_exact_at(&mut sig, 510)
        .unwrap();
    assert_eq!(sig, [0x55, 0xAA]);
    PART_OFFSET
}

// ------------------------------------------------------------------------------------------------
// Tests: contents

#[test]
fn awkward_tree_round_trips_through_fsck_mtools_fatfs_and_our_reader() {
    require_tool!("fsck.fat", "mcopy", "mdir");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        build_awkward_tree(t);
    });
    // mtimes: odd seconds (rounded down), before 1980 and after 2107 (clamped).
    let times: &[(&str, i64)] = &[
        ("README.TXT", 1_000_000_001),
        ("lower.txt", 1_234_567_890),
        ("sizes/size-513.dat", 0),
        ("sizes/size-4097.dat", 200_000_000),
        ("sizes/size-65537.dat", 5_000_000_000),
        ("Sub Dir/Ελληνικά κείμενα", 1_700_000_003),
        ("case2/makefile", fat_max_time() + 1),
    ];
    for (rel, t) in times {
        set_mtime(&tree.join(rel), *t);
    }
    let img = dir.path().join("disk.img");
    build(&tree, &img, &[]);

    let expected = snapshot(&tree, false);
    let vol = verify(&img, part_offset(&img), &expected, Some(&tree), dir.path());
    check_mbr(&img, &vol);

    // Every file's write date/time is its host mtime in UTC, clamped, 2 s resolution.
    let walk = vol.walk();
    for (path, node) in &expected {
        if let Node::File(_) = node {
            let e = &walk.entries[path];
            let want = fat_stamp(mtime_of(&tree.join(path)));
            assert_eq!(
                (e.wrt_date, e.wrt_time),
                want,
                "{path:?}: write date/time for mtime {}",
                mtime_of(&tree.join(path))
            );
        }
    }
    // mtools agrees on the times (TZ=UTC, mcopy -m). mtools 4.0.32 treats 2100 as a leap year
    // (its times after 2100-02-28 are a day late), so the clamp to 2107 is checked raw only.
    let out = dir.path().join("times");
    mcopy_out(&img, PART_OFFSET, &out);
    let march_2100 = days_from_civil(2100, 3, 1) * 86_400;
    for (rel, t) in times.iter().filter(|(_, t)| fat_time(*t) < march_2100) {
        assert_eq!(
            mtime_of(&out.join(rel)),
            fat_time(*t),
            "{rel}: mtime after mcopy -m (host mtime {t})"
        );
    }
    // Names that need no long name (upper case 8.3) may be stored short; the others must have one.
    for (path, e) in &walk.entries {
        let name = path.rsplit('/').next().unwrap();
        let plain = name.len() <= 12
            && name
                .split_once('.')
                .map_or(name.len() <= 8, |(b, x)| b.len() <= 8 && x.len() <= 3)
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "._-".contains(c));
        assert!(
            plain || e.has_lfn || e.nt_res & 0x18 != 0,
            "{path:?} has neither a long name nor case flags"
        );
    }
}

#[test]
fn wide_and_deep_tree_round_trips() {
    require_tool!("fsck.fat", "mcopy", "mdir");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        build_wide_dir(t, "wide", 3000, 37);
        build_deep_dirs(t, 40);
        write_file(t, "top.txt", b"top\n");
    });
    let img = dir.path().join("disk.img");
    build(&tree, &img, &[]);
    let expected = snapshot(&tree, false);
    let vol = verify(&img, part_offset(&img), &expected, Some(&tree), dir.path());
    check_mbr(&img, &vol);
    let walk = vol.walk();
    let wide = walk
        .entries
        .keys()
        .filter(|p| p.starts_with("wide/"))
        .count();
    assert_eq!(wide, 3000, "entries in wide/");
    assert!(
        walk.entries.keys().any(|p| p.matches('/').count() == 40),
        "no 41-component path in the image"
    );
}

#[test]
fn label_and_serial_are_in_the_boot_sector_and_root_directory() {
    require_tool!("fsck.fat", "mdir", "mcopy");
    let dir = tempdir();
    let tree = tree_in(dir.path(), small_tree);
    for (fat, size) in [("12", "4M"), ("16", "40M"), ("32", "300M")] {
        let img = dir.path().join(format!("fat{fat}.img"));
        build(
            &tree,
            &img,
            &[
                "--fat", fat, "--size", size, "--label", "MYDISK", "--serial", "DEADBEEF",
            ],
        );
        let vol = verify(
            &img,
            PART_OFFSET,
            &snapshot(&tree, false),
            Some(&tree),
            dir.path(),
        );
        check_mbr(&img, &vol);
        assert_eq!(vol.bits.to_string(), fat, "--fat {fat}");
        assert_eq!(&vol.bpb.label, b"MYDISK     ", "BPB label (FAT{fat})");
        assert_eq!(vol.bpb.serial, 0xDEAD_BEEF, "BPB serial (FAT{fat})");
        let walk = vol.walk();
        let label = walk
            .label
            .unwrap_or_else(|| panic!("FAT{fat}: no volume label entry in the root directory"));
        assert_eq!(&label.short, b"MYDISK     ", "root label entry (FAT{fat})");
        let listing = mdir(&img, PART_OFFSET, "/");
        assert!(
            listing.contains("Volume in drive : is MYDISK")
                && listing.contains("Serial Number is DEAD-BEEF"),
            "mdir (FAT{fat}):\n{listing}"
        );
        assert_eq!(fatfs_read(&img, PART_OFFSET).label.trim_end(), "MYDISK");
    }
}

#[test]
fn names_beyond_the_bmp_are_stored_as_surrogate_pairs() {
    // mtools 4.0.32 cannot represent these (it stores and shows U+1F980 as U+F980), so they are
    // checked with our reader, fatfs and fsck.fat only.
    require_tool!("fsck.fat");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "crab 🦀 emoji.rs", b"fn main() {}\n");
        write_file(t, "𝄞 music/🎵.txt", b"notes\n");
        write_file(t, "plain.txt", b"plain\n");
    });
    let img = dir.path().join("disk.img");
    build(&tree, &img, &[]);
    let vol = verify_with(
        &img,
        PART_OFFSET,
        &snapshot(&tree, false),
        None,
        dir.path(),
        false,
    );
    let walk = vol.walk();
    assert!(walk.entries["crab 🦀 emoji.rs"].has_lfn);
}

#[test]
fn names_fat_sees_as_one_keep_the_first_and_rename_the_later_ones_with_a_warning() {
    require_tool!("mcopy", "mdir", "fsck.fat");
    let dir = tempdir();
    // (host name, contents, FAT long name): in the tree's bytewise order the first of each
    // group keeps its name, the later ones get the first free `~N` (Linux trees hold
    // Makefile/makefile pairs; `a:b` is stored as `a_b`, which a host `a_b` is too).
    let files = [
        ("Docs/a.txt", "in Docs\n", "Docs/a.txt"),
        ("Makefile", "upper\n", "Makefile"),
        ("README", "README\n", "README"),
        ("ReadMe", "ReadMe\n", "ReadMe~2"),
        ("a:b", "colon\n", "a_b"),
        ("a_b", "underscore\n", "a_b~2"),
        ("docs", "a file docs\n", "docs~2"),
        ("makefile", "lower\n", "makefile~2"),
        ("readme", "readme\n", "readme~3"),
        ("sub/CaseTwin.txt", "a\n", "sub/CaseTwin.txt"),
        ("sub/casetwin.TXT", "b\n", "sub/casetwin~2.TXT"),
    ];
    let tree = tree_in(dir.path(), |t| {
        for (host, data, _) in files {
            write_file(t, host, data.as_bytes());
        }
    });
    let img = dir.path().join("disk.img");
    let out = build(&tree, &img, &[]);
    let mut expected = BTreeMap::new();
    for d in ["Docs", "sub"] {
        expected.insert(d.to_string(), Node::Dir);
    }
    for (_, data, fat) in files {
        expected.insert(fat.to_string(), Node::File(data.as_bytes().to_vec()));
    }
    // fsck.fat -n clean; mcopy -s, fatfs and our reader see every file under its name.
    verify(&img, PART_OFFSET, &expected, None, dir.path());
    let listing = mdir(&img, PART_OFFSET, "/");
    // (README is its own 8.3 name: no long name column.)
    for name in [
        "Makefile",
        "makefile~2",
        "ReadMe~2",
        "readme~3",
        "a_b~2",
        "docs~2",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {name}"))),
            "mdir does not list {name}\n{listing}"
        );
    }
    // One warning per renamed file, naming both.
    let err = out.stderr_str();
    for (second, first, stored) in [
        ("makefile", "Makefile", "makefile~2"),
        ("ReadMe", "README", "ReadMe~2"),
        ("readme", "README", "readme~3"),
        ("a_b", "a:b", "a_b~2"),
        ("docs", "Docs", "docs~2"),
        ("casetwin.TXT", "CaseTwin.txt", "casetwin~2.TXT"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("/{second}: stored as \"{stored}\"")))
            .unwrap_or_else(|| panic!("no warning about {second}\n{}", out.describe()));
        assert!(line.contains(&format!("\"{first}\"")), "{line}");
    }

    // --strict-names: the first such pair (the root's, in order) is an error naming both.
    let out = build_fails(&tree, &dir.path().join("strict.img"), &["--strict-names"]);
    assert!(
        out.stderr_str().contains("\"README\" and \"ReadMe\""),
        "the error must name both colliding names\n{}",
        out.describe()
    );
    fs::create_dir(dir.path().join("only-sub")).unwrap();
    let sub = tree_in(&dir.path().join("only-sub"), |t| {
        write_file(t, "CaseTwin.txt", b"a");
        write_file(t, "casetwin.TXT", b"b");
    });
    let out = build_fails(&sub, &dir.path().join("strict2.img"), &["--strict-names"]);
    assert!(
        out.stderr_str()
            .contains("\"CaseTwin.txt\" and \"casetwin.TXT\""),
        "{}",
        out.describe()
    );
}

#[test]
fn files_without_write_permission_get_the_read_only_attribute() {
    require_tool!("mattrib", "mcopy", "mdir", "fsck.fat");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "ro.txt", b"read only\n");
        write_file(t, "rw.txt", b"writable\n");
        write_file(t, "owner-only.txt", b"owner may write\n");
        write_file(t, "rodir/inner.txt", b"inner\n");
        chmod(&t.join("ro.txt"), 0o444);
        chmod(&t.join("owner-only.txt"), 0o200);
        chmod(&t.join("rodir"), 0o555);
    });
    let img = dir.path().join("disk.img");
    build(&tree, &img, &[]);
    chmod(&tree.join("rodir"), 0o755);
    let expected: BTreeMap<String, Node> = [
        ("ro.txt", Some("read only\n")),
        ("rw.txt", Some("writable\n")),
        ("owner-only.txt", Some("owner may write\n")),
        ("rodir", None),
        ("rodir/inner.txt", Some("inner\n")),
    ]
    .into_iter()
    .map(|(p, d)| {
        let node = d.map_or(Node::Dir, |d| Node::File(d.as_bytes().to_vec()));
        (p.to_string(), node)
    })
    .collect();
    verify(&img, PART_OFFSET, &expected, None, dir.path());
    // `mattrib` lists each entry's attributes: A(rchive), R(ead-only), ... then the path.
    let out = run_ok(mtools("mattrib").args(["-i", &mspec(&img, PART_OFFSET), "-/", "::/"]));
    let attrs: BTreeMap<String, String> = out
        .stdout_str()
        .lines()
        .filter_map(|l| l.split_once("::/"))
        .map(|(a, p)| (p.to_string(), a.split_whitespace().collect()))
        .collect();
    let want = [
        ("ro.txt", "AR"),
        ("rw.txt", "A"),
        ("owner-only.txt", "A"),
        ("rodir", ""),
        ("rodir/inner.txt", "A"),
    ];
    for (path, a) in want {
        assert_eq!(
            attrs.get(path).map(String::as_str),
            Some(a),
            "{path}: {attrs:?}"
        );
    }
}

#[test]
fn characters_fat_cannot_store_become_underscores_with_a_warning() {
    require_tool!("mcopy", "mdir", "fsck.fat");
    let dir = tempdir();
    let names = [
        ("a:b.txt", "a_b.txt"),
        ("what?.txt", "what_.txt"),
        ("star*.txt", "star_.txt"),
        ("quote\".txt", "quote_.txt"),
        ("lt<gt>.txt", "lt_gt_.txt"),
        ("pipe|.txt", "pipe_.txt"),
        ("back\\slash.txt", "back_slash.txt"),
        ("ctl\u{1}char.txt", "ctl_char.txt"),
        ("tab\tchar.txt", "tab_char.txt"),
    ];
    let tree = tree_in(dir.path(), |t| {
        for (i, (host, _)) in names.iter().enumerate() {
            write_file(t, host, format!("file {i}\n").as_bytes());
        }
        write_file(t, "d:ir/inner.txt", b"inner\n");
    });
    let img = dir.path().join("disk.img");
    let out = build(&tree, &img, &[]);
    let mut expected = BTreeMap::new();
    for (i, (_, fat)) in names.iter().enumerate() {
        expected.insert(
            fat.to_string(),
            Node::File(format!("file {i}\n").into_bytes()),
        );
    }
    expected.insert("d_ir".into(), Node::Dir);
    expected.insert("d_ir/inner.txt".into(), Node::File(b"inner\n".to_vec()));
    verify(&img, PART_OFFSET, &expected, None, dir.path());
    let err = out.stderr_str();
    for host in ["a:b.txt", "what?.txt", "star*.txt", "pipe|.txt", "d:ir"] {
        assert!(
            err.contains(host),
            "no warning naming {host:?}\n{}",
            out.describe()
        );
    }
}

#[test]
fn symlinks_are_followed_and_loops_dangling_links_fifos_sockets_skipped_with_warnings() {
    require_tool!("mcopy", "mdir", "fsck.fat", "mkfifo");
    use std::os::unix::fs::symlink;
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "real/target.txt", b"target\n");
        write_file(t, "real/dir/inner.txt", b"inner\n");
        symlink("real/target.txt", t.join("link-to-file")).unwrap();
        symlink("real/dir", t.join("link-to-dir")).unwrap();
        symlink("does-not-exist", t.join("dangling-link")).unwrap();
        symlink("self-loop", t.join("self-loop")).unwrap();
        write_file(t, "loopdir/file.txt", b"loop\n");
        symlink("..", t.join("loopdir/loop-back")).unwrap();
        run_ok(Command::new("mkfifo").arg(t.join("a-fifo")));
    });
    let _socket = std::os::unix::net::UnixListener::bind(tree.join("a-socket")).unwrap();
    let img = dir.path().join("disk.img");
    let out = build(&tree, &img, &[]);

    let expected: BTreeMap<String, Node> = [
        ("real", Node::Dir),
        ("real/target.txt", Node::File(b"target\n".to_vec())),
        ("real/dir", Node::Dir),
        ("real/dir/inner.txt", Node::File(b"inner\n".to_vec())),
        ("link-to-file", Node::File(b"target\n".to_vec())),
        ("link-to-dir", Node::Dir),
        ("link-to-dir/inner.txt", Node::File(b"inner\n".to_vec())),
        ("loopdir", Node::Dir),
        ("loopdir/file.txt", Node::File(b"loop\n".to_vec())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    verify(&img, PART_OFFSET, &expected, None, dir.path());
    let err = out.stderr_str();
    for name in [
        "dangling-link",
        "self-loop",
        "loop-back",
        "a-fifo",
        "a-socket",
    ] {
        assert!(
            err.contains(name),
            "no warning naming {name:?}\n{}",
            out.describe()
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Tests: FAT type at the cluster-count boundaries

/// One `--partition none --size S [--fat N]` build: its volume, or None when disksynth refused.
fn probe(tree: &Path, work: &Path, size: u64, fat: Option<u32>) -> Option<(PathBuf, Volume)> {
    let tag = fat.map_or("auto".to_string(), |f| f.to_string());
    let img = work.join(format!("probe-{tag}-{size}.img"));
    let _ = fs::remove_file(&img);
    let size_arg = size.to_string();
    let fat_arg = fat.map(|f| f.to_string());
    let mut args = vec!["--partition", "none", "--size", &size_arg];
    if let Some(f) = &fat_arg {
        args.extend(["--fat", f]);
    }
    let out = run(
        floppy_cmd(tree, &args).arg("-o").arg(&img),
        Duration::from_secs(60),
    );
    if !out.status.success() {
        assert!(!img.exists(), "failed build left {} behind", img.display());
        assert!(
            !out.stderr_str().trim().is_empty(),
            "refusal without a message\n{}",
            out.describe()
        );
        return None;
    }
    let vol = Volume::open(&img, 0);
    assert_eq!(
        fs::metadata(&img).unwrap().len(),
        size,
        "--size {size} --partition none: image size"
    );
    if let Some(f) = fat {
        assert_eq!(
            vol.bits, f,
            "--fat {f} --size {size} produced a volume whose {} clusters make it FAT{}",
            vol.count, vol.bits
        );
    }
    // Cheap consistency on every probe; the full check runs at the edges.
    let problems = vol.check();
    assert!(
        problems.is_empty(),
        "--size {size} --fat {tag}: {problems:#?}"
    );
    Some((img, vol))
}

/// Smallest size (multiple of 512 in `(lo, hi]`) at which `ok` holds, by bisection; `ok(lo)` must
/// be false and `ok(hi)` true.
fn bisect(lo: u64, hi: u64, mut ok: impl FnMut(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (lo, hi);
    assert!(!ok(lo), "bisect: predicate already true at {lo}");
    assert!(ok(hi), "bisect: predicate false at {hi}");
    while hi - lo > 512 {
        let mid = (lo + (hi - lo) / 2) / 512 * 512;
        let mid = mid.clamp(lo + 512, hi - 512);
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Full check of a probe image with every reader (type, counts, files).
fn verify_probe(img: &Path, tree: &Path, work: &Path) -> Volume {
    verify(img, 0, &snapshot(tree, false), Some(tree), work)
}

fn fat_boundary(low_bits: u32, threshold: u64, lo: u64, hi: u64) {
    require_tool!("fsck.fat", "mcopy", "mdir");
    let high_bits = if low_bits == 12 { 16 } else { 32 };
    let dir = tempdir();
    let work = dir.path();
    let tree = tree_in(work, small_tree);
    let mut seen = Vec::new();

    // 1. The smallest size at which --fat HIGH works: its cluster count must sit just above the
    //    threshold (one size step below it, --fat HIGH would have too few clusters).
    let min_high = bisect(lo, hi, |s| probe(&tree, work, s, Some(high_bits)).is_some());
    let (img_hi, vol_hi) = probe(&tree, work, min_high, Some(high_bits)).unwrap();
    let step_clusters = 512 / vol_hi.cluster_bytes() + 2;
    assert!(
        vol_hi.count >= threshold && vol_hi.count <= threshold + step_clusters,
        "smallest --fat {high_bits} volume ({min_high} bytes) has {} clusters; expected \
         {threshold}..={}",
        vol_hi.count,
        threshold + step_clusters
    );
    verify_probe(&img_hi, &tree, work);
    seen.push((
        min_high,
        format!("--fat {high_bits}"),
        vol_hi.count,
        vol_hi.bits,
    ));

    // 2. One step below, --fat LOW and automatic must give LOW with fewer than `threshold`
    //    clusters, readable by every tool.
    for fat in [Some(low_bits), None] {
        if let Some((img, _)) = probe(&tree, work, min_high - 512, fat) {
            let v = verify_probe(&img, &tree, work);
            seen.push((min_high - 512, format!("{fat:?}"), v.count, v.bits));
        }
    }

    // 3. Where the automatic choice switches from LOW to HIGH: both sides are checked by every
    //    tool (the type must follow the cluster count, which `probe`/`verify` assert).
    let auto_bits = |s: u64| probe(&tree, work, s, None).map(|(_, v)| v.bits);
    let mut below = lo;
    let mut above = None;
    let mut s = lo;
    while s <= hi * 8 {
        match auto_bits(s) {
            Some(b) if b > low_bits => {
                above = Some(s);
                break;
            }
            Some(_) => below = s,
            None => {}
        }
        s *= 2;
    }
    let above = above.unwrap_or_else(|| {
        panic!(
            "automatic FAT type never went above FAT{low_bits} up to {} bytes",
            hi * 8
        )
    });
    let switch = bisect(below, above, |s| auto_bits(s).is_some_and(|b| b > low_bits));
    for s in [switch - 512, switch] {
        let (img, _) = probe(&tree, work, s, None).unwrap();
        let v = verify_probe(&img, &tree, work);
        seen.push((s, "auto".into(), v.count, v.bits));
    }
    eprintln!("FAT{low_bits}/FAT{high_bits} boundary (size, mode, clusters, type): {seen:?}");
    // The sweep really reached both sides of the threshold (it is a test of the boundary).
    assert!(
        seen.iter()
            .any(|s| s.3 == low_bits && s.2 + 16 >= threshold),
        "no FAT{low_bits} volume within 16 clusters below {threshold} was produced: {seen:?}"
    );
}

#[test]
fn fat_type_follows_the_cluster_count_at_the_fat12_fat16_boundary() {
    fat_boundary(12, 4085, MIB, 64 * MIB);
}

#[test]
fn fat_type_follows_the_cluster_count_at_the_fat16_fat32_boundary() {
    fat_boundary(16, 65525, 16 * MIB, 1024 * MIB);
}

#[test]
fn mbr_partition_type_follows_the_fat_type() {
    require_tool!("fsck.fat", "mcopy", "mdir");
    let dir = tempdir();
    let tree = tree_in(dir.path(), small_tree);
    // Automatic size: a small tree is FAT12.
    let img = dir.path().join("auto.img");
    build(&tree, &img, &[]);
    let vol = verify(
        &img,
        PART_OFFSET,
        &snapshot(&tree, false),
        Some(&tree),
        dir.path(),
    );
    check_mbr(&img, &vol);
    assert_eq!(
        fs::metadata(&img).unwrap().len() % MIB,
        0,
        "automatic size is whole MiB"
    );
    for (fat, size) in [("16", "64M"), ("32", "600M")] {
        let img = dir.path().join(format!("fat{fat}.img"));
        build(&tree, &img, &["--fat", fat, "--size", size]);
        let vol = verify(
            &img,
            PART_OFFSET,
            &snapshot(&tree, false),
            Some(&tree),
            dir.path(),
        );
        check_mbr(&img, &vol);
        assert_eq!(vol.bits.to_string(), fat);
    }
}

#[test]
fn impossible_sizes_and_types_are_clear_errors() {
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "big.bin", &random_bytes(9, 3 * MIB as usize));
    });
    let img = dir.path().join("x.img");

    let out = build_fails(&tree, &img, &["--size", "1M"]);
    let err = out.stderr_str();
    assert!(err.contains("needs at least"), "{}", out.describe());
    // The size it names must be enough.
    let needed = parse_needed(&err).unwrap_or_else(|| {
        panic!(
            "cannot read a size after 'needs at least'\n{}",
            out.describe()
        )
    });
    assert!(
        needed > MIB,
        "needs at least {needed} bytes, but 1M was refused"
    );
    let needed_arg = needed.div_ceil(512) * 512;
    build(&tree, &img, &["--size", &needed_arg.to_string()]);
    fs::remove_file(&img).unwrap();

    // FAT32 needs 65525 clusters: impossible in 8 MiB; FAT16 needs 4085: impossible in 1.5 MiB.
    build_fails(&tree, &img, &["--fat", "32", "--size", "8M"]);
    build_fails(
        &tree,
        &img,
        &["--fat", "16", "--size", "1.5M", "--partition", "none"],
    );
    // Too much data for a 1.44 MB floppy.
    build_fails(&tree, &img, &["--floppy", "1.44M"]);
}

/// Bytes named after "needs at least" ("5242880", "5 MiB", "5M", "4.5MiB", "5242880 bytes").
fn parse_needed(text: &str) -> Option<u64> {
    let rest = text.split("needs at least").nth(1)?.trim_start();
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let value: f64 = num.parse().ok()?;
    let unit: String = rest[num.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    Some((value * mult as f64).ceil() as u64)
}

// ------------------------------------------------------------------------------------------------
// Tests: floppies

fn check_floppy(kind: &str, size: u64, spc: u64, root_entries: u64, spt: u32) {
    require_tool!("fsck.fat", "mcopy", "mdir");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "AUTOEXEC.BAT", b"@echo off\r\n");
        write_file(t, "docs/Read Me.txt", &random_bytes(3, 200_000));
        write_file(t, "empty.txt", b"");
    });
    let img = dir.path().join("a.img");
    build(&tree, &img, &["--floppy", kind]);
    assert_eq!(fs::metadata(&img).unwrap().len(), size, "{kind} image size");
    let vol = verify(&img, 0, &snapshot(&tree, false), Some(&tree), dir.path());
    let b = &vol.bpb;
    assert_eq!(vol.bits, 12, "{kind}: FAT type");
    assert_eq!(b.total_sectors() * 512, size, "{kind}: total sectors");
    assert_eq!(b.bytes_per_sector, 512, "{kind}: bytes per sector");
    assert_eq!(b.sectors_per_cluster, spc, "{kind}: sectors per cluster");
    assert_eq!(b.root_entries, root_entries, "{kind}: root entries");
    assert_eq!(b.media, 0xF0, "{kind}: media byte");
    assert_eq!(b.sectors_per_track, spt, "{kind}: sectors per track");
    assert_eq!(b.heads, 2, "{kind}: heads");
    assert_eq!(b.hidden, 0, "{kind}: hidden sectors");
    assert_eq!(b.tot_sec16 as u64 * 512, size, "{kind}: TotSec16");
    let mut boot = [0u8; 512];
    File::open(&img)
        .unwrap()
        .read_exact_at(&mut boot, 0)
        .unwrap();
    assert!(
        boot[62..510].iter().any(|&b| b != 0),
        "{kind}: no boot code after the BPB"
    );
}

#[test]
fn floppy_1_44m_has_the_standard_geometry() {
    check_floppy("1.44M", 1_474_560, 1, 224, 18);
}

#[test]
fn floppy_2_88m_has_the_standard_geometry() {
    check_floppy("2.88M", 2_949_120, 2, 240, 36);
}

/// SeaBIOS boots the 1.44M floppy and runs our boot stub, which says on the 0xE9 debug port
/// that the disk holds no operating system.
#[test]
fn floppy_boots_in_qemu_and_says_it_is_not_bootable() {
    use disksynth_tests::qemu_boot::{boot_until, Firmware};
    require_tool!("qemu-system-x86_64");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "hello.txt", b"hi\n");
    });
    let img = dir.path().join("a.img");
    build(&tree, &img, &["--floppy", "1.44M"]);
    let drive = [
        "-drive".to_string(),
        format!("file={},if=floppy,format=raw", img.display()),
    ];
    let text = boot_until(dir.path(), Firmware::Bios, &drive, &["disksynth"], true);
    assert!(
        text.contains("disksynth"),
        "no message containing 'disksynth' on the 0xE9 debug port; log: {text:?}"
    );
}

// ------------------------------------------------------------------------------------------------
// Tests: limits

#[test]
fn files_of_4gib_are_refused_and_4gib_minus_1_works() {
    require_tool!("fsck.fat", "mdir");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "small.txt", b"small\n");
    });
    let big = tree.join("huge-file.bin");
    let f = File::create(&big).unwrap();
    f.set_len(4 << 30).unwrap();
    let img = dir.path().join("big.img");
    let out = build_fails(&tree, &img, &["--partition", "none"]);
    assert!(
        out.stderr_str().contains("huge-file.bin"),
        "the error must name the file\n{}",
        out.describe()
    );

    f.set_len((4 << 30) - 1).unwrap();
    drop(f);
    let t0 = Instant::now();
    build(&tree, &img, &["--partition", "none"]);
    let took = t0.elapsed();
    let vol = Volume::open(&img, 0);
    assert!(vol.check().is_empty(), "{:#?}", vol.check());
    let walk = vol.walk();
    assert!(walk.problems.is_empty(), "{:#?}", walk.problems);
    let e = &walk.entries["huge-file.bin"];
    assert_eq!(e.size, u32::MAX, "size field of the 4 GiB - 1 file");
    assert_eq!(vol.read_file(&walk.entries["small.txt"]), b"small\n");
    // fsck.fat 4.2 (Debian 12) computes the chain length of a 4 GiB - 1 file in 32 bits and
    // gets 0 (dosfstools issue #208, fixed upstream after 4.2); exactly that complaint is
    // tolerated, the chain length is checked by our reader (`walk`) instead.
    let fsck = fsck_clean_but(
        &img,
        &[
            "/huge-file.bin",
            "  File size is 4294967295 bytes, cluster chain length is 0 bytes.",
            "  Truncating file to 0 bytes.",
        ],
    );
    assert_eq!((fsck.bits, fsck.total), (vol.bits, vol.count));
    let listing = mdir(&img, 0, "/");
    let line = listing
        .lines()
        .find(|l| l.contains("huge-file.bin"))
        .unwrap_or_else(|| panic!("mdir does not list huge-file.bin:\n{listing}"));
    assert!(
        line.replace(' ', "").contains("4294967295"),
        "mdir size: {line}"
    );
    eprintln!("-o of a tree holding a sparse 4 GiB - 1 file took {took:?}");
}

// ------------------------------------------------------------------------------------------------
// Tests: determinism

#[test]
fn builds_are_byte_identical_and_serial_changes_only_the_serial() {
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        build_awkward_tree(t);
    });
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    build(&tree, &a, &[]);
    build(&tree, &b, &[]);
    let (da, db) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert!(da == db, "two builds of the same tree differ");
    let vol = Volume::open(&a, PART_OFFSET);
    assert_ne!(vol.bpb.serial, 0, "volume serial is 0");

    let c = dir.path().join("c.img");
    build(&tree, &c, &["--serial", "0badcafe"]);
    let vc = Volume::open(&c, PART_OFFSET);
    assert_eq!(vc.bpb.serial, 0x0BAD_CAFE, "--serial 0badcafe");
    let mut dc = fs::read(&c).unwrap();
    assert!(dc != da, "--serial did not change the image");
    // Put the default serial back wherever the new one is: then the images must be equal.
    let (old, new) = (vol.bpb.serial.to_le_bytes(), 0x0BAD_CAFE_u32.to_le_bytes());
    let mut patched = 0;
    for i in 0..dc.len() - 3 {
        if dc[i..i + 4] == new && da[i..i + 4] == old {
            dc[i..i + 4].copy_from_slice(&old);
            patched += 1;
        }
    }
    assert!(patched >= 1);
    assert!(dc == da, "--serial changed more than the serial number");
}

#[test]
fn reproducible_without_source_date_epoch_with_a_file_from_2038_and_over_nbd() {
    require_tool!("fsck.fat", "nbdcopy", "mcopy", "mdir");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "today.txt", b"today\n");
        write_file(t, "sub/from-2038.txt", b"later\n");
        write_file(t, "Makefile", b"M\n");
        write_file(t, "makefile", b"m\n");
    });
    set_mtime(&tree.join("sub/from-2038.txt"), FUTURE_MTIME);
    set_mtime(&tree.join("sub"), FUTURE_MTIME);
    for args in [&[][..], &["--floppy", "1.44M"][..]] {
        let out = dir
            .path()
            .join(if args.is_empty() { "disk" } else { "floppy" });
        fs::create_dir(&out).unwrap();
        let img = assert_reproducible("floppy", &tree, &out, args);
        let offset = if args.is_empty() { PART_OFFSET } else { 0 };
        fsck_clean(&volume_file(&img, offset, &out));
        // The file keeps its date (FAT holds years up to 2107).
        let listing = mdir(&img, offset, "/sub");
        assert!(listing.contains("2038-01-20"), "{listing}");
    }
}

#[test]
fn same_tree_created_in_another_order_gives_an_identical_image() {
    let dir = tempdir();
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("d{}/file-{i:02}.txt", i % 3),
                random_bytes(i, 100 + i as usize * 50),
            )
        })
        .collect();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    for (rel, data) in &files {
        write_file(&a, rel, data);
    }
    for (rel, data) in files.iter().rev() {
        write_file(&b, rel, data);
    }
    make_dir(&a, "empty");
    make_dir(&b, "empty");
    set_all_mtimes(&a, 1_500_000_000);
    set_all_mtimes(&b, 1_500_000_000);
    set_mtime(&a, 1_500_000_000);
    set_mtime(&b, 1_500_000_000);
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    build(&a, &ia, &[]);
    build(&b, &ib, &[]);
    assert!(
        fs::read(&ia).unwrap() == fs::read(&ib).unwrap(),
        "identical trees (names, contents, mtimes) created in another order give other images"
    );
}

#[test]
fn source_date_epoch_replaces_every_timestamp() {
    let dir = tempdir();
    let epoch: i64 = 1_234_567_890; // 2009-02-13 23:31:30 UTC
    let a = tree_in(dir.path(), small_tree);
    make_dir(&a, "emptydir");
    let b = dir.path().join("copy");
    run_ok(Command::new("cp").arg("-a").arg(&a).arg(&b));
    set_all_mtimes(&a, 1_000_000_000);
    set_all_mtimes(&b, 1_600_000_000);
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for (tree, img) in [(&a, &ia), (&b, &ib)] {
        let mut cmd = floppy_cmd(tree, &["--label", "STAMPED"]);
        cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
        output_with(cmd, img);
    }
    let (date, time) = fat_stamp(epoch);
    let vol = Volume::open(&ia, PART_OFFSET);
    let walk = vol.walk();
    assert!(walk.problems.is_empty(), "{:#?}", walk.problems);
    let mut all: Vec<(String, &fat::Entry)> =
        walk.entries.iter().map(|(p, e)| (p.clone(), e)).collect();
    all.extend(
        walk.dots
            .iter()
            .map(|(p, e)| (format!("{p} [{}]", e.name), e)),
    );
    if let Some(l) = &walk.label {
        all.push(("volume label".into(), l));
    }
    assert!(all.len() >= 8, "too few entries: {}", all.len());
    for (path, e) in all {
        assert_eq!(
            (e.wrt_date, e.wrt_time),
            (date, time),
            "{path:?}: write time"
        );
        assert!(
            e.crt_date == 0 && e.crt_time == 0 || (e.crt_date, e.crt_time) == (date, time),
            "{path:?}: creation time {:#x} {:#x}",
            e.crt_date,
            e.crt_time
        );
        assert_eq!(
            e.crt_tenth, 0,
            "{path:?}: creation time tenths (epoch has even seconds)"
        );
        assert!(
            e.acc_date == 0 || e.acc_date == date,
            "{path:?}: access date {:#x}",
            e.acc_date
        );
    }
    assert!(
        fs::read(&ia).unwrap() == fs::read(&ib).unwrap(),
        "with SOURCE_DATE_EPOCH, two trees differing only in mtimes give different images"
    );
}

// ------------------------------------------------------------------------------------------------
// Tests: serving

#[test]
fn served_image_equals_the_output_image() {
    require_tool!("qemu-img", "nbdinfo");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        build_awkward_tree(t);
    });
    let img = dir.path().join("out.img");
    build(&tree, &img, &[]);
    let server = Server::disksynth_unix(dir.path(), &["floppy", tree.to_str().unwrap()]);
    assert_eq!(
        nbdinfo_size(server.uri()),
        fs::metadata(&img).unwrap().len()
    );
    let out = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", server.uri()])
            .arg(&img),
    );
    assert!(
        out.stdout_str().contains("Images are identical"),
        "{}",
        out.describe()
    );
}

#[test]
fn host_file_that_changes_size_gives_eio_naming_it_and_the_server_keeps_serving() {
    require_tool!("qemu-io", "nbdcopy");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "victim.bin", &random_bytes(1, 256 * 1024));
        write_file(t, "bystander.bin", &random_bytes(2, 128 * 1024));
        write_file(t, "untouched.bin", &random_bytes(3, 64 * 1024));
    });
    let server = Server::disksynth_unix(dir.path(), &["floppy", tree.to_str().unwrap()]);
    let img = dir.path().join("served.img");
    nbdcopy_to(server.uri(), &img);
    let vol = Volume::open(&img, PART_OFFSET);
    let walk = vol.walk();
    let victim = vol.file_ranges(&walk.entries["victim.bin"]);
    let bystander = vol.file_ranges(&walk.entries["bystander.bin"]);
    let (us, ue) = vol.file_ranges(&walk.entries["untouched.bin"])[0];

    // Grow it: reads must fail rather than serve a mix of old layout and new bytes.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(tree.join("victim.bin"))
        .unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    let (start, end) = victim[0];
    let out = qemu_io_readonly(
        server.uri(),
        &[&format!("read {start} {}", (end - start).min(65536))],
    );
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        all.contains("Input/output error"),
        "read of a grown host file did not fail with EIO\n{}",
        out.describe()
    );
    assert!(
        server.wait_stderr_contains("victim.bin", Duration::from_secs(5)),
        "server log does not name the file:\n{}",
        server.stderr_text()
    );

    // Shrink another file: the same.
    fs::write(tree.join("bystander.bin"), b"short").unwrap();
    let (bs, be) = bystander[0];
    let out = qemu_io_readonly(
        server.uri(),
        &[&format!("read {bs} {}", (be - bs).min(65536))],
    );
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        all.contains("Input/output error"),
        "read of a shrunk host file did not fail with EIO\n{}",
        out.describe()
    );

    // Metadata and the other files are still served.
    let mut server = server;
    assert!(
        server.is_running(),
        "server died:\n{}",
        server.stderr_text()
    );
    let out = qemu_io_readonly(
        server.uri(),
        &[
            "read 0 512",
            "read 1M 4096",
            &format!("read {us} {}", ue - us),
        ],
    );
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        out.status.success() && !all.contains("failed") && !all.contains("error"),
        "reads of unchanged data failed after the EIO\n{}",
        out.describe()
    );
}

#[test]
fn rw_writes_go_to_an_overlay_and_never_to_the_host_tree() {
    require_tool!("qemu-io", "qemu-img", "nbdcopy", "mcopy", "mdel", "fsck.fat");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "keep.txt", &random_bytes(5, 10_000));
        write_file(t, "gone.txt", b"to be deleted\n");
        write_file(t, "sub/inner.bin", &random_bytes(6, 70_000));
    });
    let before = snapshot(&tree, false);
    let mtimes_before: Vec<i64> = before.keys().map(|p| mtime_of(&tree.join(p))).collect();

    // Without --rw the export is read-only.
    let ro_dir = tempdir();
    let ro = Server::disksynth_unix(ro_dir.path(), &["floppy", tree.to_str().unwrap()]);
    assert_eq!(
        nbdinfo_json(ro.uri())["is_read_only"],
        serde_json::Value::Bool(true),
        "floppy without --rw"
    );
    drop(ro);

    let server = Server::disksynth_unix(dir.path(), &["floppy", tree.to_str().unwrap(), "--rw"]);
    assert_eq!(
        nbdinfo_json(server.uri())["is_read_only"],
        serde_json::Value::Bool(false),
        "floppy --rw"
    );
    let img0 = dir.path().join("img0");
    nbdcopy_to(server.uri(), &img0);
    let vol = Volume::open(&img0, PART_OFFSET);
    let walk = vol.walk();
    let (ks, ke) = vol.file_ranges(&walk.entries["keep.txt"])[0];
    assert!(
        ke - ks >= 4096,
        "keep.txt starts with a run of {} bytes",
        ke - ks
    );
    let free = vol.free_ranges()[0].0;

    // Overwrite file data and free space; read back on the same connection.
    qemu_io(
        server.uri(),
        &[
            &format!("write -P 0xab {ks} 4096"),
            &format!("write -P 0xcd {free} 8192"),
            &format!("read -P 0xab {ks} 4096"),
            &format!("read -P 0xcd {free} 8192"),
        ],
    );

    // A file-system level change made with mtools, written through NBD, read back anew.
    let img1 = dir.path().join("img1");
    nbdcopy_to(server.uri(), &img1);
    let newfile = dir.path().join("new.txt");
    fs::write(&newfile, b"written through the overlay\n").unwrap();
    run_ok(
        mtools("mcopy")
            .args(["-i", &mspec(&img1, PART_OFFSET)])
            .arg(&newfile)
            .arg("::/new.txt"),
    );
    run_ok(mtools("mdel").args(["-i", &mspec(&img1, PART_OFFSET), "::/gone.txt"]));
    run_ok(Command::new("nbdcopy").arg(&img1).arg(server.uri()));
    let same = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", server.uri()])
            .arg(&img1),
    );
    assert!(
        same.stdout_str().contains("Images are identical"),
        "{}",
        same.describe()
    );
    let img2 = dir.path().join("img2");
    nbdcopy_to(server.uri(), &img2);
    let mut expected = before.clone();
    expected.remove("gone.txt");
    expected.insert(
        "new.txt".into(),
        Node::File(b"written through the overlay\n".to_vec()),
    );
    if let Some(Node::File(keep)) = expected.get_mut("keep.txt") {
        keep[..4096].fill(0xab);
    }
    verify(&img2, PART_OFFSET, &expected, None, dir.path());

    // The host tree is untouched: contents, names and mtimes.
    drop(server);
    let after = snapshot(&tree, false);
    let d = diff_snapshots(&before, &after, 20);
    assert!(d.is_empty(), "the host tree changed: {d:#?}");
    let mtimes_after: Vec<i64> = after.keys().map(|p| mtime_of(&tree.join(p))).collect();
    assert_eq!(mtimes_before, mtimes_after, "host mtimes changed");
}

#[test]
fn free_space_is_reported_as_holes_and_output_is_sparse() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let tree = tree_in(dir.path(), |t| {
        write_file(t, "a.bin", &random_bytes(1, 100_000));
        write_file(t, "b/b.bin", &random_bytes(2, 300_000));
        write_file(t, "c.bin", &random_bytes(3, MIB as usize + 7));
    });
    let img = dir.path().join("out.img");
    build(&tree, &img, &["--size", "64M"]);
    let server = Server::disksynth_unix(
        dir.path(),
        &["floppy", tree.to_str().unwrap(), "--size", "64M"],
    );
    let map = nbdinfo_map(server.uri());
    let vol = Volume::open(&img, PART_OFFSET);
    let walk = vol.walk();

    // File bytes are never reported as zero.
    for (path, e) in &walk.entries {
        for (s, end) in vol.file_ranges(e) {
            if let Some(x) = map
                .iter()
                .find(|x| x.kind & 2 != 0 && x.offset < end && x.end() > s)
            {
                panic!("{path:?} bytes {s}..{end} reported as zero by {x:?}; map {map:?}");
            }
        }
    }
    // Free clusters are holes (allowing 4 KiB of alignment slack at each end of a run).
    let free = vol.free_ranges();
    let free_bytes: u64 = free.iter().map(|(s, e)| e - s).sum();
    let hole_bytes: u64 = free
        .iter()
        .map(|&(s, e)| {
            map.iter()
                .filter(|x| x.kind == 3)
                .map(|x| x.end().min(e).saturating_sub(x.offset.max(s)))
                .sum::<u64>()
        })
        .sum();
    assert!(free_bytes > 50 * MIB, "free space {free_bytes}");
    assert!(
        hole_bytes + 8192 * free.len() as u64 >= free_bytes,
        "only {hole_bytes} of {free_bytes} free bytes reported as holes; map {map:?}"
    );
    // The gap between the MBR and the partition is a hole too.
    let gap: u64 = map
        .iter()
        .filter(|x| x.kind == 3)
        .map(|x| x.end().min(PART_OFFSET).saturating_sub(x.offset.max(4096)))
        .sum();
    assert_eq!(gap, PART_OFFSET - 4096, "MBR gap not a hole: {map:?}");

    // -o leaves the free space unallocated.
    let allocated = fs::metadata(&img).unwrap().blocks() * 512;
    let data: u64 = walk.entries.values().map(|e| e.size as u64).sum();
    let meta = vol.bpb.first_data_sector() * 512;
    assert!(
        allocated <= data + meta + 2 * MIB,
        "-o allocated {allocated} bytes for {data} bytes of data and {meta} of metadata"
    );
}

// ------------------------------------------------------------------------------------------------
// The checker checked: our reader accepts what mkfs.fat + mcopy make, and sees corruption.

#[test]
fn our_reader_accepts_mkfs_fat_images_and_catches_corruption() {
    require_tool!("mkfs.fat", "mcopy");
    let dir = tempdir();
    let tree = tree_in(dir.path(), small_tree);
    for (fat, kib) in [("12", 1536), ("16", 16384), ("32", 65536)] {
        let img = dir.path().join(format!("mkfs{fat}.img"));
        run_ok(
            Command::new("mkfs.fat")
                .args(["-C", "-F", fat, "-s", "1", "-n", "REFERENCE"])
                .arg(&img)
                .arg(kib.to_string()),
        );
        let mut entries: Vec<PathBuf> = fs::read_dir(&tree)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        run_ok(
            mtools("mcopy")
                .args(["-s", "-m", "-i"])
                .arg(&img)
                .args(&entries)
                .arg("::/"),
        );
        let vol = Volume::open(&img, 0);
        assert_eq!(vol.bits.to_string(), fat, "mkfs.fat -F {fat}");
        assert!(
            vol.check().is_empty(),
            "mkfs.fat -F {fat}: {:#?}",
            vol.check()
        );
        let walk = vol.walk();
        assert!(
            walk.problems.is_empty(),
            "mkfs.fat -F {fat}: {:#?}",
            walk.problems
        );
        let d = diff_snapshots(&snapshot(&tree, false), &vol.snapshot(&walk), 10);
        assert!(d.is_empty(), "mkfs.fat -F {fat}: {d:#?}");

        // Corruptions our reader must notice.
        let corrupt = |what: &str, offset: u64, bytes: &[u8], expect: &str| {
            let bad = dir.path().join("bad.img");
            fs::copy(&img, &bad).unwrap();
            let f = fs::OpenOptions::new().write(true).open(&bad).unwrap();
            f.write_all_at(bytes, offset).unwrap();
            let v = Volume::open(&bad, 0);
            let mut all = v.check();
            all.extend(v.walk().problems);
            assert!(
                all.iter().any(|p| p.contains(expect)),
                "FAT{fat}: {what} not detected (want {expect:?}): {all:#?}"
            );
        };
        let b = &vol.bpb;
        let fat1 = b.reserved * 512 + b.fat_size() * 512;
        corrupt(
            "second FAT differs",
            fat1 + 7,
            &[0x5A],
            "FAT copy 1 differs",
        );
        corrupt(
            "type string",
            if fat == "32" { 82 } else { 54 },
            b"FAT99",
            "type string",
        );
        let walk = vol.walk();
        let empty = &walk.entries["empty"];
        assert_eq!(empty.cluster, 0);
        let sub = walk.entries["data"].cluster;
        // `..` of data/ (a child of the root) is the second entry of its first cluster.
        corrupt(
            "'..' of a child of the root not 0",
            vol.cluster_offset(sub) + 32 + 26,
            &[9, 0],
            "'..' points at cluster 9",
        );
        if fat == "32" {
            corrupt(
                "FSInfo free count",
                512 + 488,
                &[1, 0, 0, 0],
                "FSInfo free count 1",
            );
            corrupt("backup boot sector", 6 * 512 + 20, &[0x55], "sector 6");
        }
    }
}
