use std::sync::Arc;

use fuser::Errno;
use synth::{Backing, BlockDev, BlockSize, Error, ErrorKind, RegionMapBuilder};

use crate::fs::DiskFs;
use crate::{check_name, errno_of};

/// 4 KiB data, 8 KiB hole, 4 KiB data, 4 KiB hole (20 KiB).
fn holey() -> Arc<dyn BlockDev> {
    let mut b = RegionMapBuilder::new();
    b.push_bytes("a", vec![1u8; 4096]).unwrap();
    b.push("h1", 8192, Backing::Zero).unwrap();
    b.push_bytes("b", vec![2u8; 4096]).unwrap();
    b.push("h2", 4096, Backing::Zero).unwrap();
    Arc::new(b.finish())
}

#[rustfmt::skip]
#[test]
fn seek_data_and_hole_follow_the_extents() {
    let fs = DiskFs::new(holey(), "disk".into(), false, false);
    // (offset, SEEK_DATA answer, SEEK_HOLE answer)
    type Answer = Result<u64, Errno>;
    let cases: &[(u64, Answer, Answer)] = &[
        (0,      Ok(0),                Ok(4096)),
        (4095,   Ok(4095),             Ok(4096)),
        (4096,   Ok(12288),            Ok(4096)),
        (12287,  Ok(12288),            Ok(12287)),
        (12288,  Ok(12288),            Ok(16384)),
        (16384,  Err(Errno::ENXIO),    Ok(16384)),
        (20479,  Err(Errno::ENXIO),    Ok(20479)),
        // At and past the end: ENXIO for both (lseek(2)).
        (20480,  Err(Errno::ENXIO),    Err(Errno::ENXIO)),
        (u64::MAX, Err(Errno::ENXIO),  Err(Errno::ENXIO)),
    ];
    for &(off, data, hole) in cases {
        assert_eq!(fs.seek(off, false), data, "SEEK_DATA {off}");
        assert_eq!(fs.seek(off, true), hole, "SEEK_HOLE {off}");
    }
}

#[test]
fn a_disk_without_holes_has_its_hole_at_the_end() {
    let mut b = RegionMapBuilder::new();
    b.push_bytes("a", vec![7u8; 1000]).unwrap();
    let fs = DiskFs::new(Arc::new(b.finish()), "disk".into(), false, false);
    assert_eq!(fs.seek(10, true), Ok(1000));
    assert_eq!(fs.seek(999, false), Ok(999));
}

#[test]
fn device_errors_become_errnos() {
    let e = |k| errno_of(&Error::new(k, "x"));
    assert_eq!(e(ErrorKind::Io), Errno::EIO);
    assert_eq!(e(ErrorKind::Corrupt), Errno::EIO);
    assert_eq!(e(ErrorKind::NoSpace), Errno::ENOSPC);
    assert_eq!(e(ErrorKind::ReadOnly), Errno::EROFS);
    assert_eq!(e(ErrorKind::InvalidInput), Errno::EINVAL);
    assert_eq!(e(ErrorKind::OutOfBounds), Errno::EINVAL);
    assert_eq!(e(ErrorKind::Unsupported), Errno::EOPNOTSUPP);
    assert_eq!(e(ErrorKind::Refused), Errno::EPERM);
}

#[test]
fn file_names_are_one_component() {
    for bad in ["", ".", "..", "a/b", "/", "a\0b", &"x".repeat(256)] {
        assert!(check_name(bad.as_ref()).is_err(), "{bad:?}");
    }
    for good in ["disk", "a b", "..x", &"x".repeat(255)] {
        assert!(check_name(good.as_ref()).is_ok(), "{good:?}");
    }
}

/// A device that takes only whole 512-byte units and at most 4 KiB at a
/// time (like an NBD server's block-size constraints), and checks it.
#[derive(Debug)]
struct Strict(Arc<dyn BlockDev>);

impl Strict {
    fn check(&self, len: usize, offset: u64) -> synth::Result<()> {
        if !offset.is_multiple_of(512)
            || (!len.is_multiple_of(512) && offset + len as u64 != self.0.size())
            || len > 4096
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{len} at {offset}"),
            ));
        }
        Ok(())
    }
}

impl BlockDev for Strict {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        self.check(buf.len(), offset)?;
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> synth::Result<()> {
        self.check(buf.len(), offset)?;
        self.0.write_at(buf, offset)
    }
    fn caps(&self) -> synth::Caps {
        self.0.caps()
    }
    fn block_size(&self) -> BlockSize {
        BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 4096,
        }
    }
}

#[test]
fn unaligned_and_large_requests_reach_the_device_in_its_units() {
    let bytes: Vec<u8> = (0..20000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut b = RegionMapBuilder::new();
    b.push_bytes("a", bytes.clone()).unwrap();
    let fs = DiskFs::new(
        Arc::new(Strict(Arc::new(b.finish()))),
        "disk".into(),
        false,
        false,
    );
    // (offset, length): unaligned both ways, one byte, across the 4 KiB
    // maximum, up to the (unaligned) end.
    for (off, len) in [
        (0, 1),
        (1, 1),
        (511, 2),
        (100, 9000),
        (0, 20000),
        (19999, 1),
        (19000, 1000),
    ] {
        let mut buf = vec![0u8; len];
        fs.read_exact(&mut buf, off as u64).unwrap();
        assert_eq!(buf, bytes[off..off + len], "{len} at {off}");
    }
}
