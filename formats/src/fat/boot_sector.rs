//! The boot sector with its BIOS parameter block, and the FAT32 FSInfo
//! sector (Microsoft FAT specification §3 "Boot Sector and BPB" and §5
//! "FAT32 FSInfo Sector Structure").

use super::layout::{Geometry, NUM_FATS, SECTOR};
use super::FatType;
use crate::bootstub;

/// What the boot sector says beyond the geometry.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Volume serial number (BS_VolID).
    pub serial: u32,
    /// Volume label, 11 bytes space-padded (BS_VolLab).
    pub label: [u8; 11],
    /// First cluster of the FAT32 root directory (BPB_RootClus).
    pub root_cluster: u32,
    /// BIOS drive number (0x00 floppy, 0x80 hard disk).
    pub drive: u8,
}

fn put16(s: &mut [u8], at: usize, v: u16) {
    s[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(s: &mut [u8], at: usize, v: u32) {
    s[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Encode the boot sector.
pub fn encode(g: &Geometry, info: &BootInfo) -> [u8; 512] {
    let mut s = [0u8; 512];
    let fat32 = g.fat_type == FatType::Fat32;
    // BS_jmpBoot: a short jump over the BPB to the boot code, then NOP.
    let code_at: u16 = if fat32 { 90 } else { 62 };
    s[0] = 0xEB;
    s[1] = (code_at - 2) as u8;
    s[2] = 0x90;
    // BS_OEMName: "MSWIN4.1" is what the spec recommends for compatibility.
    s[3..11].copy_from_slice(b"MSWIN4.1");
    put16(&mut s, 11, SECTOR as u16); //                  BPB_BytsPerSec
    s[13] = g.sectors_per_cluster as u8; //               BPB_SecPerClus
    put16(&mut s, 14, g.reserved_sectors as u16); //      BPB_RsvdSecCnt
    s[16] = NUM_FATS as u8; //                            BPB_NumFATs
    put16(&mut s, 17, g.root_entries as u16); //          BPB_RootEntCnt (0 on FAT32)
    if !fat32 && g.total_sectors < 0x10000 {
        put16(&mut s, 19, g.total_sectors as u16); //     BPB_TotSec16
    } else {
        put32(&mut s, 32, g.total_sectors); //            BPB_TotSec32
    }
    s[21] = g.media; //                                   BPB_Media
    if !fat32 {
        put16(&mut s, 22, g.fat_sectors as u16); //       BPB_FATSz16
    }
    put16(&mut s, 24, g.sectors_per_track); //            BPB_SecPerTrk
    put16(&mut s, 26, g.heads); //                        BPB_NumHeads
    put32(&mut s, 28, g.hidden_sectors); //               BPB_HiddSec
                                         // The extended BPB sits at 36 (FAT12/16) or 64 (FAT32, after the
                                         // FAT32-only fields at 36..64).
    let ext = if fat32 {
        put32(&mut s, 36, g.fat_sectors); //              BPB_FATSz32
        put16(&mut s, 40, 0); //                          BPB_ExtFlags: FATs mirrored
        put16(&mut s, 42, 0); //                          BPB_FSVer 0.0
        put32(&mut s, 44, info.root_cluster); //          BPB_RootClus
        put16(&mut s, 48, 1); //                          BPB_FSInfo
        put16(&mut s, 50, 6); //                          BPB_BkBootSec
        64
    } else {
        36
    };
    s[ext] = info.drive; //                               BS_DrvNum
    s[ext + 2] = 0x29; //                                 BS_BootSig: the next 3 fields exist
    put32(&mut s, ext + 3, info.serial); //               BS_VolID
    s[ext + 7..ext + 18].copy_from_slice(&info.label); // BS_VolLab
    let fs_type: &[u8; 8] = match g.fat_type {
        FatType::Fat12 => b"FAT12   ",
        FatType::Fat16 => b"FAT16   ",
        FatType::Fat32 => b"FAT32   ",
    };
    s[ext + 18..ext + 26].copy_from_slice(fs_type); //    BS_FilSysType (informational only)
    let code = bootstub::code(code_at);
    s[code_at as usize..code_at as usize + code.len()].copy_from_slice(&code);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Encode the FAT32 FSInfo sector (MS FAT spec §5): free cluster count and
/// the hint where to look for a free cluster, both exact here.
pub fn fsinfo(free_count: u32, next_free: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    put32(&mut s, 0, 0x4161_5252); //   FSI_LeadSig
    put32(&mut s, 484, 0x6141_7272); // FSI_StrucSig
    put32(&mut s, 488, free_count); //  FSI_Free_Count
    put32(&mut s, 492, next_free); //   FSI_Nxt_Free
    put32(&mut s, 508, 0xAA55_0000); // FSI_TrailSig
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fat::layout::{compute, GeometryInput};

    #[test]
    fn fat16_bpb_fields_sit_where_the_spec_says() {
        let g = compute(GeometryInput {
            fat_type: FatType::Fat16,
            sectors_per_cluster: 4,
            root_entries: 512,
            total_sectors: 100_000,
            align_sectors: 8,
        })
        .unwrap();
        let s = encode(
            &g,
            &BootInfo {
                serial: 0x1234_5678,
                label: *b"HELLO      ",
                root_cluster: 0,
                drive: 0x80,
            },
        );
        assert_eq!(&s[0..3], &[0xEB, 0x3C, 0x90]);
        assert_eq!(u16::from_le_bytes([s[11], s[12]]), 512);
        assert_eq!(s[13], 4);
        assert_eq!(
            u16::from_le_bytes([s[19], s[20]]),
            0,
            "100000 sectors go in TotSec32"
        );
        assert_eq!(u32::from_le_bytes(s[32..36].try_into().unwrap()), 100_000);
        assert_eq!(s[38], 0x29);
        assert_eq!(
            u32::from_le_bytes(s[39..43].try_into().unwrap()),
            0x1234_5678
        );
        assert_eq!(&s[43..54], b"HELLO      ");
        assert_eq!(&s[54..62], b"FAT16   ");
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }

    #[test]
    fn fsinfo_signatures() {
        let s = fsinfo(10, 20);
        assert_eq!(&s[0..4], b"RRaA");
        assert_eq!(&s[484..488], b"rrAa");
        assert_eq!(&s[508..512], &[0, 0, 0x55, 0xAA]);
    }
}
