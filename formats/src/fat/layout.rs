//! Volume geometry: FAT type, cluster size, FAT size and where every area
//! starts. Pure arithmetic, no I/O and no bytes.
//!
//! ```text
//!  volume sector 0
//!  | reserved (boot sector, FSInfo, backup boot) | FAT 1 | FAT 2 | root dir (FAT12/16) | data: cluster 2, 3, ... |
//! ```
//! The FAT type is not a free choice: per the Microsoft FAT specification
//! (§3.5, "FAT Type Determination") it follows from the count of data
//! clusters alone — fewer than 4085 is FAT12, fewer than 65525 FAT16,
//! otherwise FAT32 — and every reader decides it that way. So a geometry is
//! only valid when its cluster count lands in the range of the type it
//! claims (nbdkit's floppy writes FAT32 metadata on volumes whose cluster
//! count makes readers treat them as FAT12/16, and they then see no files).

use super::FatType;

/// Bytes per sector; the only size every FAT reader supports.
pub const SECTOR: u64 = 512;

/// A volume's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// FAT12, FAT16 or FAT32, consistent with `clusters`.
    pub fat_type: FatType,
    /// Sectors per cluster (a power of two, 1..=128).
    pub sectors_per_cluster: u32,
    /// Sectors before the first FAT.
    pub reserved_sectors: u32,
    /// Sectors per FAT (two FATs are written).
    pub fat_sectors: u32,
    /// Root directory entries for FAT12/16 (0 for FAT32).
    pub root_entries: u32,
    /// Sectors in the volume.
    pub total_sectors: u32,
    /// Data clusters (numbered 2..clusters+2).
    pub clusters: u32,
    /// Media descriptor (0xF8 fixed disk, 0xF0 floppy).
    pub media: u8,
    /// CHS geometry for the BPB.
    pub sectors_per_track: u16,
    /// Heads for the BPB.
    pub heads: u16,
    /// Sectors before the volume on its disk (the partition start).
    pub hidden_sectors: u32,
}

/// Number of FATs; two, as every implementation expects.
pub const NUM_FATS: u32 = 2;

impl FatType {
    /// Cluster counts this type's readers accept (MS FAT spec §3.5).
    pub fn cluster_range(self) -> (u32, u32) {
        match self {
            FatType::Fat12 => (1, 4084),
            FatType::Fat16 => (4085, 65524),
            // 0x0FFFFFF5 is the first value that is not a cluster number.
            FatType::Fat32 => (65525, 0x0FFF_FFF5 - 2),
        }
    }

    /// Bytes of FAT needed for `entries` entries.
    pub fn fat_bytes(self, entries: u64) -> u64 {
        match self {
            FatType::Fat12 => (entries * 3).div_ceil(2),
            FatType::Fat16 => entries * 2,
            FatType::Fat32 => entries * 4,
        }
    }

    /// Reserved sectors before alignment: one boot sector for FAT12/16;
    /// 32 for FAT32, holding boot sector, FSInfo and their backups at 6/7
    /// (MS FAT spec §3.1, BPB_RsvdSecCnt and BPB_BkBootSec).
    fn base_reserved(self) -> u32 {
        match self {
            FatType::Fat32 => 32,
            _ => 1,
        }
    }
}

impl Geometry {
    /// First sector of FAT `n` (0 or 1).
    pub fn fat_start(&self, n: u32) -> u64 {
        u64::from(self.reserved_sectors) + u64::from(n * self.fat_sectors)
    }

    /// First sector of the fixed root directory (FAT12/16).
    pub fn root_start(&self) -> u64 {
        self.fat_start(NUM_FATS)
    }

    /// Sectors of the fixed root directory (0 for FAT32).
    pub fn root_sectors(&self) -> u64 {
        root_sectors(self.root_entries)
    }

    /// First sector of the data area (cluster 2).
    pub fn data_start(&self) -> u64 {
        self.root_start() + self.root_sectors()
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    /// Byte offset of cluster `c` (≥ 2) from the volume start.
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start() * SECTOR + u64::from(c - 2) * self.cluster_bytes()
    }

    /// Volume size in bytes.
    pub fn volume_bytes(&self) -> u64 {
        u64::from(self.total_sectors) * SECTOR
    }
}

fn root_sectors(entries: u32) -> u64 {
    (u64::from(entries) * 32).div_ceil(SECTOR)
}

/// What a geometry is computed from.
#[derive(Debug, Clone, Copy)]
pub struct GeometryInput {
    /// The type to build.
    pub fat_type: FatType,
    /// Sectors per cluster.
    pub sectors_per_cluster: u32,
    /// Root entries (FAT12/16; ignored for FAT32).
    pub root_entries: u32,
    /// Volume size in sectors.
    pub total_sectors: u64,
    /// Align the data area to this many sectors (1 = none).
    pub align_sectors: u32,
}

/// The geometry for `input`, or `None` when the volume is too small for
/// the fixed areas or the resulting cluster count is not `fat_type`'s.
pub fn compute(input: GeometryInput) -> Option<Geometry> {
    let t = input.fat_type;
    let spc = u64::from(input.sectors_per_cluster);
    let total = input.total_sectors;
    if total > u64::from(u32::MAX) {
        return None;
    }
    let root_entries = if t == FatType::Fat32 {
        0
    } else {
        input.root_entries
    };
    let root = root_sectors(root_entries);
    let mut reserved = u64::from(t.base_reserved());
    // The FAT must cover every cluster, but the cluster count depends on
    // how much the FATs take: start small and grow until it covers.
    let need = |fat: u64| -> Option<u64> {
        let meta = reserved + u64::from(NUM_FATS) * fat + root;
        let clusters = total.checked_sub(meta)? / spc;
        Some(t.fat_bytes(clusters + 2).div_ceil(SECTOR))
    };
    let mut fat = 1u64;
    loop {
        let n = need(fat)?;
        if n <= fat {
            break;
        }
        fat = n;
    }
    // Growing by `need` overshoots a little (a bigger FAT leaves fewer
    // clusters, which need less FAT); give back what is not needed.
    while fat > 1 && need(fat - 1).is_some_and(|n| n < fat) {
        fat -= 1;
    }
    // Align the data area by growing the reserved area, so clusters sit on
    // host page boundaries (and flash erase blocks on real media).
    let align = u64::from(input.align_sectors.max(1));
    let start = reserved + u64::from(NUM_FATS) * fat + root;
    reserved += (align - start % align) % align;
    let start = reserved + u64::from(NUM_FATS) * fat + root;
    let clusters = total.checked_sub(start)? / spc;
    let (lo, hi) = t.cluster_range();
    if clusters < u64::from(lo) || clusters > u64::from(hi) || reserved > 0xFFFF {
        return None;
    }
    if t != FatType::Fat32 && fat > 0xFFFF {
        return None;
    }
    Some(Geometry {
        fat_type: t,
        sectors_per_cluster: input.sectors_per_cluster,
        reserved_sectors: reserved as u32,
        fat_sectors: fat as u32,
        root_entries,
        total_sectors: total as u32,
        clusters: clusters as u32,
        media: 0xF8,
        sectors_per_track: 63,
        heads: 255,
        hidden_sectors: 0,
    })
}

/// Smallest volume (in sectors) of type `t` with cluster size `spc` that
/// has at least `clusters` data clusters (and at least the type's minimum).
pub fn sectors_for_clusters(
    t: FatType,
    spc: u32,
    root_entries: u32,
    clusters: u64,
    align: u32,
) -> u64 {
    let (lo, _) = t.cluster_range();
    let clusters = clusters.max(u64::from(lo));
    let root = if t == FatType::Fat32 {
        0
    } else {
        root_sectors(root_entries)
    };
    let fat = t.fat_bytes(clusters + 2).div_ceil(SECTOR);
    let meta = u64::from(t.base_reserved()) + u64::from(NUM_FATS) * fat + root;
    let meta = meta.div_ceil(u64::from(align.max(1))) * u64::from(align.max(1));
    meta + clusters * u64::from(spc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(t: FatType, spc: u32, total: u64) -> Option<Geometry> {
        compute(GeometryInput {
            fat_type: t,
            sectors_per_cluster: spc,
            root_entries: 512,
            total_sectors: total,
            align_sectors: 1,
        })
    }

    #[test]
    fn the_144m_floppy_geometry_matches_the_standard() {
        let g = compute(GeometryInput {
            fat_type: FatType::Fat12,
            sectors_per_cluster: 1,
            root_entries: 224,
            total_sectors: 2880,
            align_sectors: 1,
        })
        .unwrap();
        assert_eq!(
            (g.reserved_sectors, g.fat_sectors, g.clusters),
            (1, 9, 2847)
        );
        assert_eq!(g.data_start(), 33);
    }

    #[test]
    fn fat_type_follows_cluster_count_at_the_boundaries() {
        // Find the largest FAT12 volume with 1-sector clusters and check the
        // next sector count is not FAT12 any more.
        let mut n = 4000u64;
        while geo(FatType::Fat12, 1, n + 1).is_some() {
            n += 1;
        }
        assert_eq!(geo(FatType::Fat12, 1, n).unwrap().clusters, 4084);
        assert!(geo(FatType::Fat16, 1, n).is_none());
        let g16 = (n + 1..n + 64)
            .find_map(|s| geo(FatType::Fat16, 1, s))
            .unwrap();
        assert_eq!(g16.clusters, 4085);
    }

    #[test]
    fn fat32_needs_65525_clusters() {
        assert!(geo(FatType::Fat32, 1, 65000).is_none());
        let s = sectors_for_clusters(FatType::Fat32, 1, 0, 0, 1);
        let g = geo(FatType::Fat32, 1, s).unwrap();
        assert_eq!(g.clusters, 65525);
        assert!(geo(FatType::Fat32, 1, s - 1).is_none());
    }

    #[test]
    fn fat_covers_every_cluster_and_data_is_aligned() {
        for &(t, spc, total) in &[
            (FatType::Fat16, 4, 200_000u64),
            (FatType::Fat32, 8, 4_000_000),
            (FatType::Fat12, 8, 20_000),
        ] {
            let g = compute(GeometryInput {
                fat_type: t,
                sectors_per_cluster: spc,
                root_entries: 512,
                total_sectors: total,
                align_sectors: 8,
            })
            .unwrap();
            assert!(t.fat_bytes(u64::from(g.clusters) + 2) <= u64::from(g.fat_sectors) * SECTOR);
            assert_eq!(g.data_start() % 8, 0, "{g:?}");
            assert!(g.cluster_offset(g.clusters + 1) + g.cluster_bytes() <= g.volume_bytes());
        }
    }
}
