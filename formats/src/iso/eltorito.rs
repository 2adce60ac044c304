//! El Torito bootable CD-ROM format (El Torito specification 1.0,
//! Phoenix/IBM 1995): the boot record volume descriptor, the boot catalog
//! and the boot-info table that isolinux-style loaders expect patched into
//! their image.
//!
//! ```text
//!  sector 16: PVD   17: boot record (points at the catalog)   18…: SVD, terminator
//!  catalog:   validation entry | initial entry (BIOS)  [| section header 0x91, EFI | section entry (EFI)]
//! ```
//! Both boot images are files in the tree; the catalog itself is not listed
//! in any directory (it is found through the boot record).

use super::record::SECTOR;

/// A boot image in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootImage {
    /// First logical block (2048 bytes) of the image.
    pub lba: u32,
    /// Virtual 512-byte sectors the BIOS loads (El Torito §2.2, "Sector
    /// Count"); 4 (2 KiB) is what isolinux and GRUB expect.
    pub sectors: u16,
}

/// The boot record volume descriptor (El Torito §2.0): type 0, "CD001",
/// the boot system identifier, and the catalog's block at byte 0x47.
pub fn boot_record(catalog_lba: u32) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR as usize];
    s[0] = 0;
    s[1..6].copy_from_slice(b"CD001");
    s[6] = 1;
    let id = b"EL TORITO SPECIFICATION";
    s[7..7 + id.len()].copy_from_slice(id);
    s[0x47..0x4B].copy_from_slice(&catalog_lba.to_le_bytes());
    s
}

/// The boot catalog (El Torito §2.1–2.4): a validation entry and the
/// initial/default entry for BIOS (no emulation), then, with `efi`, a
/// final section header for platform 0xEF (UEFI) with one entry.
pub fn catalog(bios: Option<BootImage>, efi: Option<BootImage>) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR as usize];
    // Validation entry: header 1, platform 0 (80x86), ID string, checksum
    // making the 16 words sum to 0, key 55 AA.
    s[0] = 1;
    s[1] = 0;
    let id = b"DISKSYNTH";
    s[4..4 + id.len()].copy_from_slice(id);
    s[30] = 0x55;
    s[31] = 0xAA;
    let sum = s[..32].chunks(2).fold(0u16, |a, w| {
        a.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    s[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    // Initial/default entry at 32: bootable (0x88) or not (0x00) when
    // only an EFI image is given.
    let entry = |e: &mut [u8], img: BootImage| {
        e[0] = 0x88; //                                        bootable
        e[1] = 0; //                                           no emulation
        e[2..4].copy_from_slice(&0u16.to_le_bytes()); //      load segment 0 = 07C0
        e[4] = 0; //                                           system type
        e[6..8].copy_from_slice(&img.sectors.to_le_bytes()); // sector count
        e[8..12].copy_from_slice(&img.lba.to_le_bytes()); //  load RBA
    };
    if let Some(img) = bios {
        entry(&mut s[32..64], img);
    }
    if let Some(img) = efi {
        // Section header (§2.3): 0x91 = final header, platform 0xEF, one
        // entry.
        s[64] = 0x91;
        s[65] = 0xEF;
        s[66..68].copy_from_slice(&1u16.to_le_bytes());
        entry(&mut s[96..128], img);
    }
    s
}

/// Patch the 56-byte boot-info table at byte 8 of a boot image (the
/// `-boot-info-table` of mkisofs): the PVD's block, the image's block and
/// length, and the 32-bit sum of the image's words from byte 64 on.
pub fn patch_boot_info(image: &mut [u8], pvd_lba: u32, image_lba: u32) {
    if image.len() < 64 {
        return;
    }
    let sum = image[64..].chunks(4).fold(0u32, |a, w| {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        a.wrapping_add(u32::from_le_bytes(b))
    });
    let len = image.len() as u32;
    image[8..12].copy_from_slice(&pvd_lba.to_le_bytes());
    image[12..16].copy_from_slice(&image_lba.to_le_bytes());
    image[16..20].copy_from_slice(&len.to_le_bytes());
    image[20..24].copy_from_slice(&sum.to_le_bytes());
    image[24..64].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_entry_words_sum_to_zero() {
        let c = catalog(
            Some(BootImage {
                lba: 40,
                sectors: 4,
            }),
            None,
        );
        let sum = c[..32].chunks(2).fold(0u16, |a, w| {
            a.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(&c[30..32], &[0x55, 0xAA]);
        assert_eq!(c[32], 0x88);
        assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 40);
    }

    #[test]
    fn efi_image_gets_a_final_section() {
        let c = catalog(
            None,
            Some(BootImage {
                lba: 99,
                sectors: 1,
            }),
        );
        assert_eq!(c[32], 0, "no BIOS image: initial entry not bootable");
        assert_eq!((c[64], c[65]), (0x91, 0xEF));
        assert_eq!(u32::from_le_bytes(c[104..108].try_into().unwrap()), 99);
    }

    #[test]
    fn boot_record_points_at_the_catalog() {
        let r = boot_record(20);
        assert_eq!(&r[1..6], b"CD001");
        assert_eq!(&r[7..30], b"EL TORITO SPECIFICATION");
        assert_eq!(u32::from_le_bytes(r[0x47..0x4B].try_into().unwrap()), 20);
    }

    #[test]
    fn boot_info_table_holds_the_checksum_of_the_rest() {
        let mut img = vec![0u8; 2048];
        img[64..68].copy_from_slice(&5u32.to_le_bytes());
        img[100..104].copy_from_slice(&7u32.to_le_bytes());
        patch_boot_info(&mut img, 16, 30);
        let word = |i: usize| u32::from_le_bytes(img[i..i + 4].try_into().unwrap());
        assert_eq!((word(8), word(12), word(16), word(20)), (16, 30, 2048, 12));
    }
}
