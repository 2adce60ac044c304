//! `file PATH`: a host file or block device, read-only unless asked.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::{fadvise, fallocate, Advice, FallocateFlags};
use synth::{
    check_range, BlockDev, Caps, Error, ExtentKind, ExtentList, ReadChunk, Result, ZeroFlags,
};

/// Errors opening a host file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileSourceError {
    /// The file could not be opened.
    #[error("cannot open {path}{hint}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// A suggestion for the user.
        hint: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{path} is not a regular file or block device")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
}

/// A host file served as a device. Reads use `pread`; zero-copy chunks let
/// the exporter `sendfile` straight from the page cache.
#[derive(Debug)]
pub struct FileDev {
    file: Arc<File>,
    size: u64,
    writable: bool,
    /// Whether the file may have holes: when false, reads skip the
    /// `SEEK_DATA` probe (correct either way; holes are only an optimisation).
    maybe_sparse: AtomicBool,
}

impl FileDev {
    /// Open `path`; `writable` opens it read-write.
    pub fn open(path: &Path, writable: bool) -> std::result::Result<Self, FileSourceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| {
                let hint = match source.kind() {
                    io::ErrorKind::NotFound => " (no such file; check the path)",
                    io::ErrorKind::PermissionDenied if writable => {
                        " (permission denied; drop --rw to serve it read-only)"
                    }
                    io::ErrorKind::PermissionDenied => " (permission denied)",
                    _ => "",
                };
                FileSourceError::Open {
                    path: path.to_owned(),
                    hint,
                    source,
                }
            })?;
        let meta = file.metadata().map_err(|source| FileSourceError::Open {
            path: path.to_owned(),
            hint: "",
            source,
        })?;
        let ft = meta.file_type();
        let (size, maybe_sparse) = if ft.is_file() {
            (meta.len(), meta.blocks() * 512 < meta.len())
        } else if ft.is_block_device() {
            let size = (&file)
                .seek(SeekFrom::End(0))
                .map_err(|source| FileSourceError::Open {
                    path: path.to_owned(),
                    hint: "",
                    source,
                })?;
            (size, false)
        } else {
            return Err(FileSourceError::NotAFile {
                path: path.to_owned(),
            });
        };
        Ok(FileDev {
            file: Arc::new(file),
            size,
            writable,
            maybe_sparse: AtomicBool::new(maybe_sparse),
        })
    }

    /// Wrap an already open file of `size` bytes.
    pub fn from_file(file: File, size: u64, writable: bool) -> Self {
        FileDev {
            file: Arc::new(file),
            size,
            writable,
            maybe_sparse: AtomicBool::new(true),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::read_only())
        }
    }

    /// Next data and hole offsets at or after `pos` (`SEEK_DATA` / `SEEK_HOLE`).
    /// Returns `None` when the filesystem cannot tell.
    fn data_run(&self, pos: u64) -> Option<(u64, u64)> {
        use rustix::fs::{seek, SeekFrom as RSeek};
        let data = match seek(&*self.file, RSeek::Data(pos)) {
            Ok(d) => d,
            // ENXIO: no data at or after pos: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => return Some((self.size, self.size)),
            Err(_) => return None,
        };
        let hole = seek(&*self.file, RSeek::Hole(data)).ok()?;
        Some((data.min(self.size), hole.min(self.size)))
    }
}

impl BlockDev for FileDev {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("reading the host file", e).at(offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("writing the host file", e).at(offset))
    }

    fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        rustix::fs::fdatasync(&*self.file)
            .map_err(|e| Error::io("flushing the host file", e.into()))
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size)?;
        self.maybe_sparse.store(true, Ordering::Relaxed);
        // Trim is advisory: a filesystem that cannot punch holes loses nothing.
        let _ = fallocate(
            &*self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let mode = if flags.may_trim {
            self.maybe_sparse.store(true, Ordering::Relaxed);
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
        } else {
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE
        };
        match fallocate(&*self.file, mode, offset, len) {
            Ok(()) => Ok(()),
            Err(_) if flags.fast => Err(Error::not_fast()),
            Err(_) => synth::write_zero_buffers(self, offset, len),
        }
    }

    fn cache(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size)?;
        let _ = fadvise(
            &*self.file,
            offset,
            std::num::NonZeroU64::new(len),
            Advice::WillNeed,
        );
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        check_range(offset, len, self.size)?;
        let end = offset + len;
        let mut pos = offset;
        while pos < end && !out.is_full() {
            let Some((data, hole)) = self.data_run(pos) else {
                out.push(end - pos, ExtentKind::Data);
                return Ok(());
            };
            if data > pos {
                let n = data.min(end) - pos;
                out.push(n, ExtentKind::Hole);
                pos += n;
            } else {
                let n = hole.max(pos + 1).min(end) - pos;
                out.push(n, ExtentKind::Data);
                pos += n;
            }
        }
        Ok(())
    }

    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        check_range(offset, len, self.size)?;
        if !self.maybe_sparse.load(Ordering::Relaxed) {
            out.push(ReadChunk::File {
                file: self.file.clone(),
                offset,
                len,
                check: None,
            });
            return Ok(true);
        }
        let mut list = ExtentList::new(offset);
        self.extents(offset, len, &mut list)?;
        for (at, e) in list.iter_offsets() {
            if e.kind.reads_zero() {
                out.push(ReadChunk::Zero(e.len));
            } else {
                out.push(ReadChunk::File {
                    file: self.file.clone(),
                    offset: at,
                    len: e.len,
                    check: None,
                });
            }
        }
        if list.covered() < len {
            // More extents than one list holds: the rest is read as data.
            out.push(ReadChunk::File {
                file: self.file.clone(),
                offset: list.end(),
                len: len - list.covered(),
                check: None,
            });
        }
        Ok(true)
    }

    fn caps(&self) -> Caps {
        let base = Caps::EXTENTS | Caps::CACHE | Caps::FLUSH;
        if self.writable {
            base | Caps::WRITE | Caps::TRIM | Caps::ZERO | Caps::FAST_ZERO
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use synth::testing::check_dev;
    use synth::ErrorKind;

    use super::*;

    fn sparse_file() -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut expected = vec![0u8; 3 << 20];
        let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 250) as u8 + 1).collect();
        f.as_file_mut().set_len(3 << 20).unwrap();
        f.as_file().write_all_at(&data, 1 << 20).unwrap();
        expected[1 << 20..2 << 20].copy_from_slice(&data);
        f.flush().unwrap();
        (f, expected)
    }

    #[test]
    fn sparse_file_passes_conformance() {
        let (f, expected) = sparse_file();
        let dev = FileDev::open(f.path(), false).unwrap();
        check_dev(&dev, &expected, &[1 << 20, 2 << 20]);
    }

    #[test]
    fn sparse_file_reports_its_holes() {
        let (f, _) = sparse_file();
        let dev = FileDev::open(f.path(), false).unwrap();
        let mut out = ExtentList::new(0);
        dev.extents(0, 3 << 20, &mut out).unwrap();
        let kinds: Vec<ExtentKind> = out.as_slice().iter().map(|e| e.kind).collect();
        // tmpfs and ext4 both report the holes; the data run may be rounded to pages.
        assert_eq!(
            kinds,
            vec![ExtentKind::Hole, ExtentKind::Data, ExtentKind::Hole]
        );
    }

    #[test]
    fn read_only_file_refuses_writes() {
        let (f, _) = sparse_file();
        let dev = FileDev::open(f.path(), false).unwrap();
        assert_eq!(
            dev.write_at(b"x", 0).unwrap_err().kind(),
            ErrorKind::ReadOnly
        );
        assert_eq!(dev.trim(0, 1).unwrap_err().kind(), ErrorKind::ReadOnly);
    }

    #[test]
    fn writable_file_writes_and_zeroes() {
        let (f, mut expected) = sparse_file();
        let dev = FileDev::open(f.path(), true).unwrap();
        dev.write_at(&[7u8; 5000], 100).unwrap();
        expected[100..5100].fill(7);
        dev.write_zeroes(
            1 << 20,
            4096,
            ZeroFlags {
                may_trim: true,
                fast: false,
            },
        )
        .unwrap();
        expected[1 << 20..(1 << 20) + 4096].fill(0);
        dev.flush().unwrap();
        check_dev(&dev, &expected, &[100, 5100, 1 << 20]);
        let mut f2 = File::open(f.path()).unwrap();
        let mut on_disk = Vec::new();
        std::io::Read::read_to_end(&mut f2, &mut on_disk).unwrap();
        assert!(on_disk == expected);
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let err = FileDev::open(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    }
}
