//! What an image file is, from its first bytes: the formats disksynth
//! serves (raw, block-indexed xz, qcow2), and the ones it recognises only to
//! refuse with a useful message instead of serving their container bytes as
//! if they were the disk.
//!
//! Detection looks at magic numbers only, never at a file name: a disk
//! image called `x.img` may be qcow2 (Ubuntu publishes them so), and a raw
//! disk may start with any bytes at all. "Raw" is therefore what is left
//! when no magic matches, and callers say so in their log.

use std::fmt;

/// Bytes [`detect`] wants to look at (more are ignored, fewer are fine).
pub const PROBE_BYTES: usize = 512;

/// The format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// No known magic: the bytes are the disk.
    Raw,
    /// An `.xz` file (xz-file-format §2.1.1.1 Header Magic Bytes); served
    /// when its Blocks are indexed (every `.xz` file is).
    Xz,
    /// qcow2 (QEMU docs/interop/qcow2.txt "Header": magic `QFI\xfb`,
    /// version 2 or 3).
    Qcow2,
    /// A format that has no random access or that disksynth does not read:
    /// refused, with what to do instead.
    Unsupported(Unsupported),
}

/// Formats recognised only to be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// qcow version 1 (magic `QFI\xfb`, version 1).
    Qcow1,
    /// VMware VMDK sparse extent (magic `KDMV`).
    Vmdk,
    /// Hyper-V VHDX (file type identifier `vhdxfile`).
    Vhdx,
    /// VirtualBox VDI (image signature 0xbeda107f at offset 64).
    Vdi,
    /// A dynamic VHD (footer copy `conectix` at offset 0).
    Vhd,
    /// gzip (RFC 1952 ID1 ID2): a stream without random access.
    Gzip,
    /// zstd (RFC 8878 §3.1.1 magic number): no index to seek with.
    Zstd,
    /// bzip2 (`BZh` and a block size digit).
    Bzip2,
}

impl Unsupported {
    /// What the format is and what to do instead.
    pub fn advice(self) -> &'static str {
        match self {
            Unsupported::Qcow1 => {
                "qcow version 1 (not qcow2): convert it with `qemu-img convert -O qcow2`"
            }
            Unsupported::Vmdk => "a VMware VMDK image: convert it with `qemu-img convert -O qcow2`",
            Unsupported::Vhdx => {
                "a Hyper-V VHDX image: convert it with `qemu-img convert -O qcow2`"
            }
            Unsupported::Vdi => {
                "a VirtualBox VDI image: convert it with `qemu-img convert -O qcow2`"
            }
            Unsupported::Vhd => "a dynamic VHD image: convert it with `qemu-img convert -O qcow2`",
            Unsupported::Gzip => {
                "gzip-compressed (no random access): recompress it with `disksynth pack` \
                 (block-indexed xz) or `qemu-img convert -c -O qcow2`"
            }
            Unsupported::Zstd => {
                "zstd-compressed (no index to seek with): recompress it with `disksynth pack` \
                 (block-indexed xz) or `qemu-img convert -c -O qcow2`"
            }
            Unsupported::Bzip2 => {
                "bzip2-compressed (no random access): recompress it with `disksynth pack` \
                 (block-indexed xz) or `qemu-img convert -c -O qcow2`"
            }
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageFormat::Raw => f.write_str("raw"),
            ImageFormat::Xz => f.write_str("xz"),
            ImageFormat::Qcow2 => f.write_str("qcow2"),
            ImageFormat::Unsupported(u) => f.write_str(u.advice()),
        }
    }
}

/// The format of an image whose first bytes are `head` (up to
/// [`PROBE_BYTES`]; a shorter file gives a shorter slice).
pub fn detect(head: &[u8]) -> ImageFormat {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        // Header "version": a big-endian u32 at offset 4. qcow2 is 2 or 3;
        // later versions are left to the qcow2 reader to refuse by number.
        return match head
            .get(4..8)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        {
            Some(1) => ImageFormat::Unsupported(Unsupported::Qcow1),
            _ => ImageFormat::Qcow2,
        };
    }
    if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return ImageFormat::Xz;
    }
    if at(0, b"KDMV") {
        return ImageFormat::Unsupported(Unsupported::Vmdk);
    }
    if at(0, b"vhdxfile") {
        return ImageFormat::Unsupported(Unsupported::Vhdx);
    }
    // VDI: the pre-header's signature, little-endian, at offset 64.
    if at(64, &0xbeda_107f_u32.to_le_bytes()) {
        return ImageFormat::Unsupported(Unsupported::Vdi);
    }
    // A dynamic (or differencing) VHD starts with a copy of its footer; a
    // fixed VHD is a raw disk with the footer at the end, and serving it
    // raw is right (the footer is one sector past the guest's disk).
    if at(0, b"conectix") {
        return ImageFormat::Unsupported(Unsupported::Vhd);
    }
    if at(0, &[0x1f, 0x8b]) {
        return ImageFormat::Unsupported(Unsupported::Gzip);
    }
    if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        return ImageFormat::Unsupported(Unsupported::Zstd);
    }
    if at(0, b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        return ImageFormat::Unsupported(Unsupported::Bzip2);
    }
    ImageFormat::Raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_recognised() {
        let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
        q.resize(512, 0);
        assert_eq!(detect(&q), ImageFormat::Qcow2);
        q[7] = 2;
        assert_eq!(detect(&q), ImageFormat::Qcow2);
        q[7] = 1;
        assert_eq!(detect(&q), ImageFormat::Unsupported(Unsupported::Qcow1));
        assert_eq!(detect(b"\xfd7zXZ\0\0\x04"), ImageFormat::Xz);
        assert_eq!(
            detect(b"KDMV\x01\0\0\0"),
            ImageFormat::Unsupported(Unsupported::Vmdk)
        );
        assert_eq!(
            detect(b"vhdxfile"),
            ImageFormat::Unsupported(Unsupported::Vhdx)
        );
        assert_eq!(
            detect(b"conectix\0\0"),
            ImageFormat::Unsupported(Unsupported::Vhd)
        );
        assert_eq!(
            detect(b"\x1f\x8b\x08\0"),
            ImageFormat::Unsupported(Unsupported::Gzip)
        );
        assert_eq!(
            detect(b"\x28\xb5\x2f\xfd"),
            ImageFormat::Unsupported(Unsupported::Zstd)
        );
        assert_eq!(
            detect(b"BZh9"),
            ImageFormat::Unsupported(Unsupported::Bzip2)
        );
        let mut vdi = vec![0u8; 512];
        vdi[64..68].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(detect(&vdi), ImageFormat::Unsupported(Unsupported::Vdi));
    }

    #[test]
    fn anything_else_is_raw_even_when_short_or_nearly_magic() {
        assert_eq!(detect(b""), ImageFormat::Raw);
        assert_eq!(detect(b"QFI"), ImageFormat::Raw);
        assert_eq!(detect(b"\xfd7zXZ"), ImageFormat::Raw);
        assert_eq!(detect(b"BZhx"), ImageFormat::Raw);
        assert_eq!(detect(&[0u8; 512]), ImageFormat::Raw);
        // An MBR disk is raw.
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(detect(&mbr), ImageFormat::Raw);
    }

    #[test]
    fn a_qcow2_with_a_truncated_header_is_still_qcow2_for_the_reader_to_refuse() {
        assert_eq!(detect(b"QFI\xfb"), ImageFormat::Qcow2);
    }
}
