//! Raw image output (`-o FILE`): the whole device, sparse.
//!
//! The region map drives it: holes and zero extents are skipped (the file
//! is pre-sized, so they stay holes), all-zero blocks inside data are
//! skipped too, host-file ranges are copied in the kernel
//! (`copy_file_range`). The image is written under a temporary name in the
//! target directory and renamed into place only when complete and synced,
//! so a failed or interrupted run never leaves a partial image behind.
//! An existing block device, character device or FIFO (`-o /dev/sdX`,
//! `-o /dev/null`) is written in place, every byte, never replaced.
//!
//! Host-file bytes are checked, never trusted: a file that ends early or is
//! modified while a piece is copied fails the run naming it ([`watch`] and
//! [`confirm`]), instead of leaving zeros where its data belongs.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use synth::{BlockDev, ExtentList, ReadChunk};

/// Where the image goes.
#[derive(Debug, Clone, Copy)]
pub enum RawOutput<'a> {
    /// A file, created or replaced atomically; an existing block device,
    /// character device or FIFO is written in place instead.
    File(&'a Path),
    /// Standard output, every byte in order (zeros included).
    Stdout,
}

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RawStats {
    /// Bytes actually written.
    pub written: u64,
    /// Bytes left as holes.
    pub skipped: u64,
}

/// Raw output failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawError {
    /// The output could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The target.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The target (`-` for stdout).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading the device failed.
    #[error("reading the device: {0}")]
    Device(#[from] synth::Error),
    /// A host file the image maps could not be read.
    #[error("reading host file {path}: {source}")]
    HostRead {
        /// The host file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A host file the image maps ended early or was modified while it was
    /// copied: the image would hold wrong bytes, so none is written.
    #[error("host file {path} changed while it was copied ({what}); refusing to write mixed data")]
    HostChanged {
        /// The host file.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// The caller's stop flag was raised (a signal): a file target was not
    /// written (its temp file is removed), a device or stream is incomplete.
    #[error("interrupted")]
    Interrupted,
}

impl RawError {
    /// Whether the output was a pipe whose reader went away (`EPIPE`), as
    /// when `-o - | head -c 1M` has read what it wanted.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, RawError::Write { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

const PIECE: u64 = 8 << 20;
const ZERO_BLOCK: usize = 64 * 1024;

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// The name of an open host file, for messages: chunks carry descriptors,
/// not paths, and the kernel knows where each one points.
fn name_of(file: &File) -> PathBuf {
    let fd = file.as_raw_fd();
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap_or_else(|_| PathBuf::from(format!("(descriptor {fd})")))
}

/// What a host file looked like: any write or truncate changes the ctime
/// (which, unlike the mtime, cannot be set back), so equal stamps before
/// and after a copy mean the bytes copied are one state of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

fn stamp(file: &File) -> Result<Stamp, RawError> {
    let m = file.metadata().map_err(|source| RawError::HostRead {
        path: name_of(file),
        source,
    })?;
    Ok(Stamp {
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
    })
}

fn changed(file: &File, what: String) -> RawError {
    RawError::HostChanged {
        path: name_of(file),
        what,
    }
}

/// The host files a piece's chunks read, with their stamps before the
/// copy. A file that no longer holds the bytes a chunk needs is an error
/// now: past its end there is nothing to copy, and a hole is not data.
fn watch(chunks: &[ReadChunk]) -> Result<Vec<(Arc<File>, Stamp)>, RawError> {
    let mut files: Vec<(Arc<File>, Stamp)> = Vec::new();
    for c in chunks {
        let ReadChunk::File {
            file, offset, len, ..
        } = c
        else {
            continue;
        };
        let s = match files.last() {
            // Consecutive chunks of one file (overlay pages, extents).
            Some((f, s)) if Arc::ptr_eq(f, file) => *s,
            _ => {
                let s = stamp(file)?;
                files.push((file.clone(), s));
                s
            }
        };
        if s.len < offset + len {
            return Err(changed(
                file,
                format!(
                    "it holds {} bytes, the image needs bytes up to {}",
                    s.len,
                    offset + len
                ),
            ));
        }
    }
    Ok(files)
}

/// After a piece was copied: the device still vouches for its host files
/// (a region map checks size and mtime against the scan again), and none of
/// them changed since [`watch`] (so what was copied is what the device
/// vouches for, even if a writer put size and mtime back afterwards).
fn confirm(
    dev: &dyn BlockDev,
    offset: u64,
    len: u64,
    before: &[(Arc<File>, Stamp)],
    scratch: &mut Vec<ReadChunk>,
) -> Result<(), RawError> {
    if before.is_empty() {
        return Ok(());
    }
    scratch.clear();
    dev.read_chunks(offset, len, scratch)?;
    scratch.clear();
    for (file, s) in before {
        let now = stamp(file)?;
        if now != *s {
            let what = if now.len != s.len {
                format!("size {} -> {}", s.len, now.len)
            } else {
                "modified during the copy".to_string()
            };
            return Err(changed(file, what));
        }
    }
    Ok(())
}

fn check_stop(stop: &AtomicBool) -> Result<(), RawError> {
    if stop.load(Ordering::Relaxed) {
        Err(RawError::Interrupted)
    } else {
        Ok(())
    }
}

/// Write `b` at `at`, leaving all-zero 64 KiB blocks as holes.
fn write_sparse(out: &File, b: &[u8], at: u64, stats: &mut RawStats) -> io::Result<()> {
    for (i, blk) in b.chunks(ZERO_BLOCK).enumerate() {
        if is_zero(blk) {
            stats.skipped += blk.len() as u64;
        } else {
            out.write_all_at(blk, at + (i * ZERO_BLOCK) as u64)?;
            stats.written += blk.len() as u64;
        }
    }
    Ok(())
}

/// The data segments of `len` bytes at `off` in a host file. Holes, and
/// on most filesystems fallocated-but-unwritten extents, read as zeros
/// and are skipped so the output stays sparse. Only worth two `lseek`s
/// for big ranges; small ones (and filesystems without `SEEK_DATA`) are
/// one segment. The caller has checked that the file reaches `off + len`
/// ([`watch`]), so "no more data" (`ENXIO`) is a trailing hole; a file
/// that shrinks or is rewritten meanwhile is caught by [`confirm`].
fn data_segments(file: &File, off: u64, len: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    if len < 1 << 20 {
        return vec![(off, len)];
    }
    let end = off + len;
    let mut segs = Vec::new();
    let mut pos = off;
    while pos < end {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => {
                segs.push((pos, end - pos));
                break;
            }
        };
        if start >= end {
            break;
        }
        let stop = seek(file, SeekFrom::Hole(start)).map_or(end, |h| h.min(end));
        segs.push((start, stop - start));
        pos = stop;
    }
    segs
}

/// `pread` exactly `dst.len()` bytes; the file ending first is an error
/// naming it, never zeros.
fn read_file_exact(file: &File, dst: &mut [u8], at: u64) -> Result<(), RawError> {
    let mut done = 0;
    while done < dst.len() {
        match file.read_at(&mut dst[done..], at + done as u64) {
            Ok(0) => {
                return Err(changed(
                    file,
                    format!(
                        "it ended at byte {}, {} expected",
                        at + done as u64,
                        at + dst.len() as u64
                    ),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(RawError::HostRead {
                    path: name_of(file),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Copy `len` bytes at `off` of `src` to `at` in `out` (`path`, for
/// messages), in the kernel where it can.
fn copy_file(
    src: &File,
    mut off: u64,
    len: u64,
    out: &File,
    path: &Path,
    mut at: u64,
    buf: &mut Vec<u8>,
) -> Result<(), RawError> {
    use rustix::io::Errno;
    let end = off + len;
    let mut in_kernel = true;
    while off < end {
        if in_kernel {
            let want = (end - off).min(PIECE) as usize;
            match rustix::fs::copy_file_range(src, Some(&mut off), out, Some(&mut at), want) {
                Ok(0) => {
                    return Err(changed(
                        src,
                        format!("it ended at byte {off}, {end} expected"),
                    ))
                }
                Ok(_) => continue,
                Err(Errno::INTR) => continue,
                // Cross-device, or not offered for these files: through memory.
                Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) => {
                    in_kernel = false;
                }
                Err(e) => {
                    return Err(RawError::Write {
                        path: path.to_owned(),
                        source: io::Error::new(
                            io::Error::from(e).kind(),
                            format!("copying from {}: {e}", name_of(src).display()),
                        ),
                    })
                }
            }
        }
        let n = (end - off).min(PIECE) as usize;
        buf.resize(n, 0);
        read_file_exact(src, buf, off)?;
        out.write_all_at(buf, at)
            .map_err(|source| RawError::Write {
                path: path.to_owned(),
                source,
            })?;
        off += n as u64;
        at += n as u64;
    }
    Ok(())
}

fn write_to_file(
    dev: &dyn BlockDev,
    out: &File,
    path: &Path,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<RawStats, RawError> {
    let werr = |source| RawError::Write {
        path: path.to_owned(),
        source,
    };
    let size = dev.size();
    out.set_len(size).map_err(werr)?;
    let mut stats = RawStats::default();
    let mut chunks = Vec::new();
    let mut scratch = Vec::new();
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        check_stop(stop)?;
        let mut list = ExtentList::new(pos);
        dev.extents(pos, (size - pos).min(1 << 30), &mut list)?;
        if list.covered() == 0 {
            list.push((size - pos).min(PIECE), synth::ExtentKind::Data);
        }
        for (off, e) in list.iter_offsets() {
            if e.kind.reads_zero() {
                stats.skipped += e.len;
                continue;
            }
            let mut p = off;
            while p < off + e.len {
                check_stop(stop)?;
                let n = (off + e.len - p).min(PIECE);
                chunks.clear();
                if dev.read_chunks(p, n, &mut chunks)? {
                    let before = watch(&chunks)?;
                    let mut at = p;
                    for c in &chunks {
                        match c {
                            ReadChunk::Zero(z) => stats.skipped += z,
                            ReadChunk::Bytes(b) => {
                                write_sparse(out, b, at, &mut stats).map_err(werr)?
                            }
                            ReadChunk::File {
                                file,
                                offset,
                                len,
                                check,
                            } => {
                                // What is not copied is left sparse.
                                stats.skipped += len;
                                for (o, l) in data_segments(file, *offset, *len) {
                                    copy_file(file, o, l, out, path, at + (o - offset), &mut buf)?;
                                    stats.written += l;
                                    stats.skipped -= l;
                                }
                                // The host file's own check, stamped when
                                // the device handed it out (before `watch`).
                                if let Some(check) = check {
                                    check.verify(file).map_err(|e| e.at(at))?;
                                }
                            }
                        }
                        at += c.len();
                    }
                    chunks.clear();
                    confirm(dev, p, n, &before, &mut scratch)?;
                } else {
                    buf.resize(n as usize, 0);
                    dev.read_at(&mut buf, p)?;
                    write_sparse(out, &buf, p, &mut stats).map_err(werr)?;
                }
                p += n;
                progress(p);
            }
        }
        pos = list.end();
        progress(pos);
    }
    Ok(stats)
}

/// Every byte in order (zeros included) to a stream: stdout, a pipe, a
/// character device, or a block device opened at offset 0 (a block device
/// keeps its old contents where nothing is written, so holes must be
/// written as zeros too). Host-file bytes are checked like
/// [`write_to_file`]'s before they are written: a stream cannot take them
/// back.
fn write_stream(
    dev: &dyn BlockDev,
    out: &mut dyn Write,
    path: &Path,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<RawStats, RawError> {
    let werr = |source| RawError::Write {
        path: path.to_owned(),
        source,
    };
    let size = dev.size();
    let mut buf = vec![0u8; PIECE as usize];
    let mut chunks = Vec::new();
    let mut scratch = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        check_stop(stop)?;
        let n = (size - pos).min(PIECE) as usize;
        chunks.clear();
        if dev.read_chunks(pos, n as u64, &mut chunks)? {
            let before = watch(&chunks)?;
            let mut at = 0usize;
            for c in &chunks {
                let l = c.len() as usize;
                let dst = &mut buf[at..at + l];
                match c {
                    ReadChunk::Zero(_) => dst.fill(0),
                    ReadChunk::Bytes(b) => dst.copy_from_slice(b),
                    ReadChunk::File {
                        file,
                        offset,
                        check,
                        ..
                    } => {
                        read_file_exact(file, dst, *offset)?;
                        if let Some(check) = check {
                            check.verify(file).map_err(|e| e.at(pos + at as u64))?;
                        }
                    }
                }
                at += l;
            }
            chunks.clear();
            confirm(dev, pos, n as u64, &before, &mut scratch)?;
        } else {
            dev.read_at(&mut buf[..n], pos)?;
        }
        check_stop(stop)?;
        out.write_all(&buf[..n]).map_err(werr)?;
        pos += n as u64;
        progress(pos);
    }
    out.flush().map_err(werr)?;
    Ok(RawStats {
        written: size,
        skipped: 0,
    })
}

/// `-o` naming an existing device or FIFO (`/dev/sdX` for a USB stick,
/// `/dev/null`): written in place, never replaced by a regular file.
fn write_to_device(
    dev: &dyn BlockDev,
    path: &Path,
    block_device: bool,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<RawStats, RawError> {
    let cerr = |source| RawError::Create {
        path: path.to_owned(),
        source,
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(cerr)?;
    if block_device {
        // A block device's size is where seeking to its end lands.
        let capacity = out.seek(SeekFrom::End(0)).map_err(cerr)?;
        out.seek(SeekFrom::Start(0)).map_err(cerr)?;
        if capacity < dev.size() {
            return Err(cerr(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the device holds {capacity} bytes, the image is {} bytes",
                    dev.size()
                ),
            )));
        }
    }
    let stats = write_stream(dev, &mut out, path, stop, progress)?;
    if block_device {
        out.sync_all().map_err(|source| RawError::Write {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(stats)
}

/// Whether `-o path` is written in place (an existing block device,
/// character device or FIFO) rather than replaced by a complete file.
pub fn writes_in_place(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| {
        let kind = meta.file_type();
        kind.is_block_device() || kind.is_char_device() || kind.is_fifo()
    })
}

/// The prefix of the hidden temp file [`write_raw`] writes `path` under,
/// in `path`'s directory: `.NAME.PID.` (then random characters and
/// `.part`). The process id lets a caller that must exit at once (a second
/// signal) remove its own temp file and nobody else's.
pub fn temp_prefix(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    (dir, format!(".{name}.{}.", std::process::id()))
}

/// Write all of `dev` to `output`. `progress` gets the offset reached.
pub fn write_raw(
    dev: &dyn BlockDev,
    output: RawOutput<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<RawStats, RawError> {
    write_raw_until(dev, output, &AtomicBool::new(false), progress)
}

/// [`write_raw`], stopping with [`RawError::Interrupted`] soon after `stop`
/// is raised (it is checked before every piece of at most 8 MiB). A file
/// target is then not written (the temp file is removed); a device, FIFO
/// or stdout keeps what was written so far.
pub fn write_raw_until(
    dev: &dyn BlockDev,
    output: RawOutput<'_>,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<RawStats, RawError> {
    let path = match output {
        RawOutput::Stdout => {
            // The descriptor itself, not std's line-buffered handle.
            let fd = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| RawError::Write {
                    path: "-".into(),
                    source,
                })?;
            return write_stream(dev, &mut File::from(fd), Path::new("-"), stop, progress);
        }
        RawOutput::File(p) => p,
    };
    // An existing device or FIFO is written in place: renaming a temp file
    // over it would replace `/dev/sdX` (or `/dev/null`) with a regular file.
    if let Ok(meta) = std::fs::metadata(path) {
        let kind = meta.file_type();
        if kind.is_block_device() || kind.is_char_device() || kind.is_fifo() {
            return write_to_device(dev, path, kind.is_block_device(), stop, progress);
        }
    }
    let cerr = |source| RawError::Create {
        path: path.to_owned(),
        source,
    };
    let (dir, prefix) = temp_prefix(path);
    // Removed when dropped: on every error and interruption below.
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(cerr)?;
    // The temp file is private (0600) until complete; images are ordinary files.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(cerr)?;
    let stats = write_to_file(dev, tmp.as_file(), path, stop, progress)?;
    check_stop(stop)?;
    tmp.as_file().sync_all().map_err(|source| RawError::Write {
        path: path.to_owned(),
        source,
    })?;
    check_stop(stop)?;
    tmp.persist(path).map_err(|e| RawError::Write {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn fifo_is_written_in_place_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let dev = sources::memory(3 << 20).unwrap();
        dev.write_at(b"first", 0).unwrap();
        dev.write_at(b"last", (3 << 20) - 4).unwrap();
        let stats = write_raw(&dev, RawOutput::File(&fifo), &mut |_| {}).unwrap();
        assert_eq!(stats.written, 3 << 20);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 3 << 20);
        assert_eq!(&got[..5], b"first");
        assert_eq!(&got[(3 << 20) - 4..], b"last");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn memory_image_is_sparse_and_exact() {
        let dev = sources::memory(64 << 20).unwrap();
        dev.write_at(&[0xAB; 100_000], 10 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let stats = write_raw(&dev, RawOutput::File(&path), &mut |_| {}).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "image uses {} blocks",
            meta.blocks()
        );
        assert!(stats.written >= 100_000 && stats.written < 1 << 20);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[10 << 20..(10 << 20) + 100_000]
            .iter()
            .all(|&b| b == 0xAB));
        assert!(bytes[..10 << 20].iter().all(|&b| b == 0));
    }

    #[test]
    fn fallocated_host_ranges_stay_sparse_and_data_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src.bin");
        let src = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&src_path)
            .unwrap();
        rustix::fs::fallocate(&src, rustix::fs::FallocateFlags::empty(), 0, 8 << 20).unwrap();
        src.write_all_at(b"tail", 6 << 20).unwrap();
        let mut b = synth::RegionMapBuilder::new();
        b.push(
            "f",
            8 << 20,
            synth::Backing::file(std::sync::Arc::new(src), 0),
        )
        .unwrap();
        let map = b.finish();
        let path = dir.path().join("out.img");
        let stats = write_raw(&map, RawOutput::File(&path), &mut |_| {}).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[6 << 20..(6 << 20) + 4], b"tail");
        assert_eq!(stats.written + stats.skipped, 8 << 20);
        let meta = std::fs::metadata(&path).unwrap();
        // On filesystems that report unwritten extents as holes (ext4,
        // xfs, tmpfs) only the written block is allocated.
        assert!(
            meta.blocks() * 512 <= 1 << 20,
            "fallocated zeros were copied: {} blocks",
            meta.blocks()
        );
    }

    /// A host-file-backed map of `len` bytes over `file` (shorter, maybe).
    fn map_over(file: std::sync::Arc<File>, len: u64) -> synth::RegionMap {
        let mut b = synth::RegionMapBuilder::new();
        b.push("f", len, synth::Backing::file(file, 0)).unwrap();
        b.finish()
    }

    #[test]
    fn a_host_file_shorter_than_its_region_is_an_error_naming_it_not_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("shrunk.bin");
        std::fs::write(&src_path, vec![0x5A; 3 << 20]).unwrap();
        let src = std::sync::Arc::new(File::open(&src_path).unwrap());
        // The layout says 4 MiB; the file now holds 3 (and ends in a "hole").
        let map = map_over(src, 4 << 20);
        let path = dir.path().join("out.img");
        let err = write_raw(&map, RawOutput::File(&path), &mut |_| {}).unwrap_err();
        assert!(matches!(err, RawError::HostChanged { .. }), "{err:?}");
        assert!(err.to_string().contains("shrunk.bin"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["shrunk.bin"], "a failed -o left files behind");
        // The stream path (stdout, devices) checks before writing.
        let mut sink = Vec::new();
        let err = write_stream(
            &map,
            &mut sink,
            Path::new("-"),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("shrunk.bin"), "{err}");
        assert!(sink.is_empty(), "bytes of a short file reached the stream");
    }

    /// A device whose host file is rewritten (same bytes, mtime put back)
    /// between the copy and the check after it: only the ctime tells.
    #[derive(Debug)]
    struct Rewritten {
        map: synth::RegionMap,
        path: PathBuf,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl BlockDev for Rewritten {
        fn size(&self) -> u64 {
            self.map.size()
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> synth::Result<()> {
            self.map.read_at(buf, off)
        }
        fn read_chunks(&self, off: u64, len: u64, out: &mut Vec<ReadChunk>) -> synth::Result<bool> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 1 {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .unwrap();
                let mtime = f.metadata().unwrap().modified().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                f.write_all_at(&[0x5A; 4096], 0).unwrap();
                f.set_modified(mtime).unwrap();
            }
            self.map.read_chunks(off, len, out)
        }
    }

    #[test]
    fn a_host_file_modified_during_the_copy_fails_even_if_size_and_mtime_are_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("busy.bin");
        std::fs::write(&src_path, vec![0x5A; 2 << 20]).unwrap();
        let src = std::sync::Arc::new(File::open(&src_path).unwrap());
        let dev = Rewritten {
            map: map_over(src, 2 << 20),
            path: src_path.clone(),
            calls: Default::default(),
        };
        let path = dir.path().join("out.img");
        let err = write_raw(&dev, RawOutput::File(&path), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("busy.bin"), "{err}");
        assert!(
            err.to_string().contains("modified during the copy"),
            "{err}"
        );
        assert!(!path.exists());
        dev.calls.store(0, Ordering::SeqCst);
        let mut sink = Vec::new();
        let err = write_stream(
            &dev,
            &mut sink,
            Path::new("-"),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("busy.bin"), "{err}");
        assert!(sink.is_empty());
    }

    #[test]
    fn a_raised_stop_flag_interrupts_and_removes_the_temp_file() {
        let dev = sources::PatternDev::new(64 << 20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let stop = AtomicBool::new(false);
        let err = write_raw_until(&dev, RawOutput::File(&path), &stop, &mut |pos| {
            if pos >= 16 << 20 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
        assert!(matches!(err, RawError::Interrupted), "{err:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn failed_output_leaves_nothing_behind() {
        #[derive(Debug)]
        struct Broken;
        impl BlockDev for Broken {
            fn size(&self) -> u64 {
                1 << 20
            }
            fn read_at(&self, _: &mut [u8], off: u64) -> synth::Result<()> {
                Err(synth::Error::corrupt("broken on purpose").at(off))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let err = write_raw(&Broken, RawOutput::File(&path), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("broken on purpose"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
