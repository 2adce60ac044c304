//! ext4 checkers for the `ext4` tests: `e2fsck -fn`, `debugfs` (`stat` of many paths in one run,
//! `rdump`, extent lists), `dumpe2fs -h`, and host-side helpers (nanosecond mtimes, a metadata
//! walk that never reads file contents, so a sparse 1 GiB file costs nothing).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{run, run_ok, Output, CMD_TIMEOUT};

/// ext4 block size as built by `disksynth ext4` (and as every extent list here counts).
pub const BLOCK: u64 = 4096;

/// `debugfs` with its pager off (its output is parsed).
pub fn debugfs() -> Command {
    let mut cmd = Command::new("debugfs");
    cmd.env("DEBUGFS_PAGER", "__none__")
        .env("PAGER", "__none__");
    cmd
}

/// `e2fsck -fn IMG` must exit 0 and report nothing but its five passes and the summary line.
/// Returns the summary line (`IMG: 19/1024 files (0.0% non-contiguous), 1102/4096 blocks`).
pub fn e2fsck_clean(img: &Path) -> String {
    let out = run(Command::new("e2fsck").arg("-fn").arg(img), CMD_TIMEOUT);
    let text = out.stdout_str();
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("Pass ") && !l.contains(" files (") && !l.starts_with("e2fsck "))
        .collect();
    assert!(
        out.status.success() && unexpected.is_empty(),
        "e2fsck -fn is not clean (unexpected lines {unexpected:?})\n{}",
        out.describe()
    );
    text.lines()
        .find(|l| l.contains(" files ("))
        .unwrap_or_else(|| panic!("no summary line from e2fsck\n{}", out.describe()))
        .to_string()
}

/// `dumpe2fs -h IMG` as `field -> value` (`"Filesystem UUID" -> "0b9f…"`), dates in UTC.
pub fn dumpe2fs_header(img: &Path) -> BTreeMap<String, String> {
    let out = run_ok(Command::new("dumpe2fs").env("TZ", "UTC").arg("-h").arg(img));
    let header: BTreeMap<String, String> = out
        .stdout_str()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    assert!(
        header.contains_key("Filesystem UUID"),
        "not a dumpe2fs header\n{}",
        out.describe()
    );
    header
}

/// One extent of a file as `debugfs stat` lists it: `len` blocks from logical block `logical` at
/// physical block `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    /// First logical block.
    pub logical: u64,
    /// First physical block.
    pub physical: u64,
    /// Number of blocks.
    pub len: u64,
}

/// What `debugfs stat PATH` says about one inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InodeStat {
    /// Inode number.
    pub inode: u64,
    /// `regular`, `directory`, `symlink`, `FIFO`, `socket`, `character special`, `block special`.
    pub kind: String,
    /// Permission bits with set-uid/set-gid/sticky (`Mode:` field, octal).
    pub mode: u32,
    /// Inode flags (0x80000 = extents, 0x1000 = hashed directory).
    pub flags: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `i_size`.
    pub size: u64,
    /// Link count.
    pub links: u64,
    /// 512-byte sectors allocated.
    pub blockcount: u64,
    /// Modification time: seconds (with the extra epoch bits applied) and nanoseconds.
    pub mtime: (i64, u32),
    /// The target of a fast symlink (`Fast link dest:`).
    pub fast_link: Option<String>,
    /// Device major/minor of a device node.
    pub device: Option<(u32, u32)>,
    /// Data extents (index blocks left out).
    pub extents: Vec<FileExtent>,
}

/// Decodes an ext4 time: the 32-bit field is signed, the low 2 bits of the extra field extend it
/// by multiples of 2^32 and the upper 30 hold nanoseconds.
pub fn decode_time(lo: u32, extra: u32) -> (i64, u32) {
    (lo as i32 as i64 + (((extra & 3) as i64) << 32), extra >> 2)
}

fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(key).nth(1)?.split_whitespace().next()
}

fn parse_extents(text: &str, out: &mut Vec<FileExtent>) {
    for item in text.split(',') {
        let item = item.trim();
        let Some((logical, physical)) = item.strip_prefix('(').and_then(|s| s.split_once("):"))
        else {
            continue;
        };
        if logical.starts_with("ETB") {
            continue; // an index block
        }
        let physical = physical.split_whitespace().next().unwrap_or("");
        let range = |s: &str| -> Option<(u64, u64)> {
            match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => {
                    let a = s.parse().ok()?;
                    Some((a, a))
                }
            }
        };
        let (Some((l0, l1)), Some((p0, p1))) = (range(logical), range(physical)) else {
            panic!("cannot parse the extent {item:?} in {text:?}");
        };
        assert_eq!(l1 - l0, p1 - p0, "extent {item:?}");
        out.push(FileExtent {
            logical: l0,
            physical: p0,
            len: l1 - l0 + 1,
        });
    }
}

fn parse_stat(text: &str) -> Result<InodeStat, String> {
    let mut s = InodeStat::default();
    let mut seen_inode = false;
    let mut in_extents = false;
    for line in text.lines() {
        if in_extents {
            if line.trim().starts_with('(') || line.starts_with('\t') {
                parse_extents(line, &mut s.extents);
                continue;
            }
            in_extents = false;
        }
        let t = line.trim_start();
        let num = |key: &str| -> Result<u64, String> {
            word_after(t, key)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| format!("bad {key:?} in {line:?}"))
        };
        if t.starts_with("Inode:") {
            seen_inode = true;
            s.inode = num("Inode:")?;
            s.kind = t
                .split("Type:")
                .nth(1)
                .and_then(|r| r.split("Mode:").next())
                .map(|k| k.trim().to_string())
                .ok_or_else(|| format!("no type in {line:?}"))?;
            s.mode = word_after(t, "Mode:")
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .ok_or_else(|| format!("bad mode in {line:?}"))?;
            s.flags = word_after(t, "Flags:")
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .ok_or_else(|| format!("bad flags in {line:?}"))?;
        } else if t.starts_with("User:") {
            s.uid = num("User:")? as u32;
            s.gid = num("Group:")? as u32;
            s.size = num("Size:")?;
        } else if t.starts_with("Links:") {
            s.links = num("Links:")?;
            s.blockcount = num("Blockcount:")?;
        } else if let Some(rest) = t.strip_prefix("mtime: ") {
            let stamp = rest.split_whitespace().next().unwrap_or("");
            let hex = |h: &str| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok();
            s.mtime = match stamp.split_once(':') {
                Some((lo, extra)) => decode_time(
                    hex(lo).ok_or_else(|| format!("bad mtime {line:?}"))?,
                    hex(extra).ok_or_else(|| format!("bad mtime {line:?}"))?,
                ),
                None => (
                    hex(stamp).ok_or_else(|| format!("bad mtime {line:?}"))? as i32 as i64,
                    0,
                ),
            };
        } else if let Some(rest) = t.strip_prefix("Fast link dest: ") {
            let rest = rest.trim_end();
            s.fast_link = Some(
                rest.strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .unwrap_or(rest)
                    .to_string(),
            );
        } else if let Some(rest) = t.split("Device major/minor number: ").nth(1) {
            let dev = rest.split_whitespace().next().unwrap_or("");
            let (ma, mi) = dev
                .split_once(':')
                .ok_or_else(|| format!("bad device {line:?}"))?;
            s.device = Some((
                ma.parse().map_err(|_| format!("bad major {line:?}"))?,
                mi.parse().map_err(|_| format!("bad minor {line:?}"))?,
            ));
        } else if t.starts_with("EXTENTS:") {
            in_extents = true;
        }
    }
    if seen_inode {
        Ok(s)
    } else {
        Err(format!("no inode: {text:?}"))
    }
}

/// Quotes a path for debugfs' command parser (double quotes; names holding `"` are not
/// supported).
pub fn debugfs_quote(path: &str) -> String {
    assert!(
        !path.contains('"') && !path.contains('\n'),
        "debugfs cannot be given {path:?}"
    );
    format!("\"{path}\"")
}

/// Runs the debugfs commands `cmds` (one per line, through `-f`) on `img`, read-only.
pub fn debugfs_script(img: &Path, cmds: &[String]) -> Output {
    let dir = crate::tempdir();
    let script = dir.path().join("cmds");
    fs::write(&script, cmds.join("\n") + "\n").expect("writing the debugfs script");
    run_ok(debugfs().arg("-f").arg(&script).arg(img))
}

/// `debugfs stat` of every path in `paths` (absolute image paths) in one debugfs run; `Err`
/// for paths debugfs does not find.
pub fn debugfs_stat_many(img: &Path, paths: &[String]) -> Vec<Result<InodeStat, String>> {
    let cmds: Vec<String> = paths
        .iter()
        .map(|p| format!("stat {}", debugfs_quote(p)))
        .collect();
    let out = debugfs_script(img, &cmds);
    let text = out.stdout_str();
    // Each command's output follows its echo line `debugfs: stat "PATH"`.
    let mut chunks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("debugfs: stat ") {
            chunks.push(String::new());
        } else if let Some(c) = chunks.last_mut() {
            c.push_str(line);
            c.push('\n');
        }
    }
    assert_eq!(
        chunks.len(),
        paths.len(),
        "debugfs answered {} of {} stat commands\n{}",
        chunks.len(),
        paths.len(),
        out.describe()
    );
    chunks.iter().map(|c| parse_stat(c)).collect()
}

/// `debugfs stat PATH`, which must exist.
pub fn debugfs_stat(img: &Path, path: &str) -> InodeStat {
    debugfs_stat_many(img, &[path.to_string()])
        .pop()
        .unwrap()
        .unwrap_or_else(|e| panic!("debugfs stat {path:?} in {}: {e}", img.display()))
}

/// `debugfs rdump SRC OUT` for every image path in `sources` into the host directory `out`
/// (created). debugfs skips fifos, sockets and devices.
pub fn rdump(img: &Path, sources: &[String], out: &Path) {
    fs::create_dir_all(out).expect("creating the rdump directory");
    let dest = out.to_str().expect("UTF-8 temp path");
    let cmds: Vec<String> = sources
        .iter()
        .map(|s| format!("rdump {} {}", debugfs_quote(s), debugfs_quote(dest)))
        .collect();
    let res = debugfs_script(img, &cmds);
    let err = res.stderr_str();
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    assert!(
        complaints.is_empty(),
        "debugfs rdump complained\n{}",
        res.describe()
    );
}

/// The bytes of `img` at `[offset, offset + len)`.
pub fn read_image(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    fs::File::open(img)
        .unwrap_or_else(|e| panic!("opening {}: {e}", img.display()))
        .read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("reading {} at {offset}: {e}", img.display()));
    buf
}

/// Sets the mtime (and atime) of `path`, not following symlinks, to `secs` + `nsec` ns.
pub fn set_mtime_ns(path: &Path, secs: i64, nsec: u32) {
    use rustix::fs::{utimensat, AtFlags, Timestamps, CWD};
    let ts = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// Every entry below `root` (relative `/`-separated path → `lstat`), without reading contents;
/// `""` is `root` itself.
pub fn walk_meta(root: &Path) -> BTreeMap<String, fs::Metadata> {
    let mut out = BTreeMap::new();
    out.insert(
        String::new(),
        fs::symlink_metadata(root).unwrap_or_else(|e| panic!("stat {}: {e}", root.display())),
    );
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let entry = entry.expect("directory entry");
            let child = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(root.join(&child)).expect("lstat");
            if meta.is_dir() {
                stack.push(child.clone());
            }
            out.insert(child.to_string_lossy().into_owned(), meta);
        }
    }
    out
}

/// `debugfs ea_list PATH` for every image path in `paths` in one debugfs run: per path, the
/// attribute names with their stored value lengths (ACLs in ext4's own format), empty when the
/// inode has none.
pub fn debugfs_ea_lists(img: &Path, paths: &[String]) -> Vec<BTreeMap<String, usize>> {
    let cmds: Vec<String> = paths
        .iter()
        .map(|p| format!("ea_list {}", debugfs_quote(p)))
        .collect();
    let out = debugfs_script(img, &cmds);
    let text = out.stdout_str();
    let mut lists: Vec<BTreeMap<String, usize>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("debugfs: ea_list ") {
            lists.push(BTreeMap::new());
            continue;
        }
        // `  user.mime (10) = "text/plain"`; values may span lines, names never start a line
        // with two spaces and end with a parenthesized length.
        let Some(list) = lists.last_mut() else {
            continue;
        };
        let Some(rest) = line.strip_prefix("  ") else {
            continue;
        };
        let Some((name, after)) = rest.split_once(" (") else {
            continue;
        };
        let Some(len) = after.split_once(')').and_then(|(n, _)| n.parse().ok()) else {
            continue;
        };
        list.insert(name.to_string(), len);
    }
    assert_eq!(
        lists.len(),
        paths.len(),
        "debugfs answered {} of {} ea_list commands\n{}",
        lists.len(),
        paths.len(),
        out.describe()
    );
    assert!(
        !out.stderr_str().contains("rror"),
        "debugfs ea_list complained\n{}",
        out.describe()
    );
    lists
}

/// The extended attributes of `path` (not following a symlink), by name.
pub fn host_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut buf[..])
        .unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()));
    let names: Vec<Vec<u8>> = buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    names
        .into_iter()
        .map(|name| {
            let len = rustix::fs::lgetxattr(path, std::ffi::OsStr::from_bytes(&name), &mut buf[..])
                .unwrap_or_else(|e| panic!("lgetxattr {}: {e}", path.display()));
            (name, buf[..len].to_vec())
        })
        .collect()
}

/// The length ext4 stores for an attribute whose value the kernel's xattr API gives as
/// `value`: POSIX ACLs shrink to ext4's format (fs/ext4/acl.h: 4-byte header, 4-byte entries
/// for the owner, owning group, mask and others, 8-byte ones for named users and groups).
pub fn ext4_xattr_len(name: &[u8], value: &[u8]) -> usize {
    if !name.starts_with(b"system.posix_acl_") {
        return value.len();
    }
    4 + value[4..]
        .chunks_exact(8)
        .map(|e| match u16::from_le_bytes([e[0], e[1]]) {
            0x02 | 0x08 => 8,
            _ => 4,
        })
        .sum::<usize>()
}

/// A loop mount of an image (read-only unless made with [`LoopMount::new_rw`]), unmounted on
/// drop.
pub struct LoopMount {
    /// Where the image is mounted.
    pub dir: PathBuf,
    /// Still to be unmounted on drop.
    mounted: bool,
    _tmp: tempfile::TempDir,
}

impl LoopMount {
    /// `mount -o loop,ro IMG DIR`, or `None` (with a SKIPPED line) where this machine cannot:
    /// not root, or no loop devices. Under CI=true, where the tests run as root on a kernel with
    /// ext4 and loop devices, a failure to mount is a test failure.
    pub fn new(img: &Path) -> Option<LoopMount> {
        Self::mount(img, "loop,ro")
    }

    /// `mount -o loop IMG DIR`: read-write, as [`LoopMount::new`] otherwise.
    pub fn new_rw(img: &Path) -> Option<LoopMount> {
        Self::mount(img, "loop")
    }

    fn mount(img: &Path, options: &str) -> Option<LoopMount> {
        if !crate::trees::is_root() {
            eprintln!("SKIPPED: loop-mounting an image needs root");
            return None;
        }
        let tmp = crate::tempdir();
        let dir = tmp.path().join("mnt");
        fs::create_dir(&dir).expect("creating the mount point");
        let out = run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", options])
                .arg(img)
                .arg(&dir),
            CMD_TIMEOUT,
        );
        if !out.status.success() {
            assert!(
                !crate::in_ci(),
                "mounting the image failed\n{}",
                out.describe()
            );
            eprintln!("SKIPPED: cannot loop-mount here\n{}", out.describe());
            return None;
        }
        Some(LoopMount {
            dir,
            mounted: true,
            _tmp: tmp,
        })
    }

    /// Unmount now (flushing a read-write mount's writes to the image); panics if umount
    /// fails.
    pub fn unmount(mut self) {
        crate::run_ok(Command::new("umount").arg(&self.dir));
        self.mounted = false;
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // A lazy unmount if something still holds it, so the temp directory never goes away
        // with an image still mounted on it (the loop device is freed with the last user).
        if !self.mounted {
            return;
        }
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_and_after_2038_decode() {
        assert_eq!(
            decode_time(0x6b04_2d75, 0xbcd4_3acc),
            (0x6b04_2d75, 792_006_323)
        );
        assert_eq!(
            decode_time(0xfff0_bdbf, 0xd0fb_f3ac),
            (-1_000_001, 876_543_211)
        );
        assert_eq!(
            decode_time(0xee6b_2800, 0x7735_9401),
            (4_000_000_000, 500_000_000)
        );
    }

    #[test]
    fn stat_output_parses() {
        let text = "Inode: 12   Type: character special    Mode:  04755   Flags: 0x81000\n\
            Generation: 0    Version: 0x00000000:00000000\n\
            User:  1000   Group:  2000   Project:     0   Size: 5368709120\n\
            File ACL: 0\n\
            Links: 3   Blockcount: 16\n\
            \x20mtime: 0xee6b2800:77359401 -- Tue Oct  2 07:06:40 2096\n\
            Fast link dest: \"a b\"\n\
            Device major/minor number: 08:01 (hex 08:01)\n\
            EXTENTS:\n\
            (ETB0):1097, (0):1098, (1310719):1099, (5-7):2000-2002\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.inode, 12);
        assert_eq!(s.kind, "character special");
        assert_eq!(s.mode, 0o4755);
        assert_eq!(s.flags, 0x81000);
        assert_eq!(
            (s.uid, s.gid, s.size, s.links, s.blockcount),
            (1000, 2000, 5 << 30, 3, 16)
        );
        assert_eq!(s.mtime, (4_000_000_000, 500_000_000));
        assert_eq!(s.fast_link.as_deref(), Some("a b"));
        assert_eq!(s.device, Some((8, 1)));
        assert_eq!(
            s.extents,
            vec![
                FileExtent {
                    logical: 0,
                    physical: 1098,
                    len: 1
                },
                FileExtent {
                    logical: 1_310_719,
                    physical: 1099,
                    len: 1
                },
                FileExtent {
                    logical: 5,
                    physical: 2000,
                    len: 3
                },
            ]
        );
        assert!(parse_stat("/x: File not found by ext2_lookup\n").is_err());
    }
}
