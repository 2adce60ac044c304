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

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
}

const PIECE: u64 = 8 << 20;
const ZERO_BLOCK: usize = 64 * 1024;

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
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
/// one segment.
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

fn copy_file(
    src: &File,
    mut off: u64,
    len: u64,
    out: &File,
    mut at: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let end = off + len;
    while off < end {
        let want = (end - off).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off), out, Some(&mut at), want) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "host file shrank while copying",
                ))
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // Cross-device or unsupported: copy through memory.
                let n = (end - off).min(PIECE) as usize;
                buf.resize(n, 0);
                src.read_exact_at(buf, off)?;
                out.write_all_at(buf, at)?;
                off += n as u64;
                at += n as u64;
            }
        }
    }
    Ok(())
}

fn write_to_file(
    dev: &dyn BlockDev,
    out: &File,
    path: &Path,
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
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < size {
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
                let n = (off + e.len - p).min(PIECE);
                chunks.clear();
                if dev.read_chunks(p, n, &mut chunks)? {
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
                                    copy_file(file, o, l, out, at + (o - offset), &mut buf)
                                        .map_err(werr)?;
                                    stats.written += l;
                                    stats.skipped -= l;
                                }
                                // Copied whole, but a file that changed
                                // meanwhile may have given zeros or torn bytes.
                                if let Some(check) = check {
                                    check.verify(file).map_err(|e| e.at(at))?;
                                }
                            }
                        }
                        at += c.len();
                    }
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
/// written as zeros too).
fn write_stream(
    dev: &dyn BlockDev,
    out: &mut dyn Write,
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<RawStats, RawError> {
    let werr = |source| RawError::Write {
        path: path.to_owned(),
        source,
    };
    let size = dev.size();
    let mut buf = vec![0u8; PIECE as usize];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(PIECE) as usize;
        dev.read_at(&mut buf[..n], pos)?;
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
    let stats = write_stream(dev, &mut out, path, progress)?;
    if block_device {
        out.sync_all().map_err(|source| RawError::Write {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(stats)
}

/// Write all of `dev` to `output`. `progress` gets the offset reached.
pub fn write_raw(
    dev: &dyn BlockDev,
    output: RawOutput<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<RawStats, RawError> {
    let path = match output {
        RawOutput::Stdout => {
            let stdout = io::stdout();
            return write_stream(dev, &mut stdout.lock(), Path::new("-"), progress);
        }
        RawOutput::File(p) => p,
    };
    // An existing device or FIFO is written in place: renaming a temp file
    // over it would replace `/dev/sdX` (or `/dev/null`) with a regular file.
    if let Ok(meta) = std::fs::metadata(path) {
        let kind = meta.file_type();
        if kind.is_block_device() || kind.is_char_device() || kind.is_fifo() {
            return write_to_device(dev, path, kind.is_block_device(), progress);
        }
    }
    let cerr = |source| RawError::Create {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(cerr)?;
    // The temp file is private (0600) until complete; images are ordinary files.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(cerr)?;
    let stats = write_to_file(dev, tmp.as_file(), path, progress)?;
    tmp.as_file().sync_all().map_err(|source| RawError::Write {
        path: path.to_owned(),
        source,
    })?;
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
