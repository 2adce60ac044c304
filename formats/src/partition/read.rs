//! Reading what a disk holds: its partition table (GPT with 512- or 4096-byte sectors, MBR,
//! hybrid) and the filesystem at the start of the disk and of each partition (FAT, ext2/3/4,
//! ISO 9660, Linux swap). For `disksynth inspect`; everything is read through
//! [`BlockDev::read_at`], so an image file, a device or any composed disk will do.
//!
//! Nothing read is trusted: header and array CRCs are checked (a mismatch is a problem listed,
//! not a panic), entries pointing past the end are listed as problems, and names are decoded
//! lossily.

use synth::BlockDev;

use super::gpt::Guid;
use super::types::PartType;
use super::{PartitionError, TableKind};

/// A filesystem found by its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFs {
    /// `vfat`, `ext2`, `ext3`, `ext4`, `iso9660` or `swap` (the names `blkid` uses).
    pub kind: &'static str,
    /// The UUID (ext, swap), serial (`ABCD-1234`, FAT) or nothing (ISO).
    pub uuid: Option<String>,
    /// The volume label.
    pub label: Option<String>,
}

/// One partition of a table.
#[derive(Debug, Clone)]
pub struct FoundPartition {
    /// 1-based entry number.
    pub number: u32,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT partition name.
    pub label: Option<String>,
    /// GPT type GUID.
    pub type_guid: Option<Guid>,
    /// A name for the type, when it has one (`esp`, `root-x86-64`, …).
    pub type_name: Option<String>,
    /// MBR type byte.
    pub mbr_type: Option<u8>,
    /// GPT unique partition GUID.
    pub guid: Option<Guid>,
    /// GPT attribute bits.
    pub attributes: u64,
    /// MBR active flag.
    pub bootable: bool,
    /// What it holds, if recognised.
    pub filesystem: Option<FoundFs>,
}

/// What a disk holds.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Its size in bytes.
    pub size: u64,
    /// The table found (`None` when there is none).
    pub table: Option<TableKind>,
    /// Logical sector size the GPT was found with (512 for MBR-only disks).
    pub sector_size: u64,
    /// GPT disk GUID.
    pub disk_guid: Option<Guid>,
    /// MBR disk signature.
    pub mbr_signature: Option<u32>,
    /// The partitions, in table order.
    pub partitions: Vec<FoundPartition>,
    /// A filesystem starting at byte 0 (a disk without a table, or an ISO hybrid).
    pub filesystem: Option<FoundFs>,
    /// What looked wrong (bad CRCs, entries past the end).
    pub problems: Vec<String>,
}

fn read(dev: &dyn BlockDev, offset: u64, len: usize) -> Option<Vec<u8>> {
    if offset.checked_add(len as u64)? > dev.size() {
        return None;
    }
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset).ok()?;
    Some(buf)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn text(b: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// A 16-byte UUID in its usual text form, `0b9f2a4c-…` (lower case, as blkid prints it).
pub fn uuid_text(u: &[u8]) -> String {
    u.iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{}{b:02x}",
                if [4, 6, 8, 10].contains(&i) { "-" } else { "" }
            )
        })
        .collect()
}

/// The filesystem whose signature is at `offset` (`len` bytes available), if any.
pub fn detect_filesystem(dev: &dyn BlockDev, offset: u64, len: u64) -> Option<FoundFs> {
    // ext2/3/4: the superblock at byte 1024, magic 0xEF53 at its byte 56 (ext4 disk layout,
    // "The Super Block").
    if len >= 2048 {
        if let Some(sb) = read(dev, offset + 1024, 1024) {
            if le16(&sb, 56) == 0xEF53 {
                let (compat, incompat) = (le32(&sb, 92), le32(&sb, 96));
                let kind = if incompat & 0x40 != 0 {
                    "ext4" // INCOMPAT_EXTENTS
                } else if compat & 0x4 != 0 {
                    "ext3" // COMPAT_HAS_JOURNAL
                } else {
                    "ext2"
                };
                return Some(FoundFs {
                    kind,
                    uuid: Some(uuid_text(&sb[104..120])),
                    label: text(&sb[120..136]),
                });
            }
        }
    }
    // ISO 9660: "CD001" in the primary volume descriptor at sector 16 (ECMA-119 §8.4).
    if len >= 34 * 1024 {
        if let Some(pvd) = read(dev, offset + 32768, 2048) {
            if &pvd[1..6] == b"CD001" && pvd[0] == 1 {
                return Some(FoundFs {
                    kind: "iso9660",
                    uuid: None,
                    label: text(&pvd[40..72]),
                });
            }
        }
    }
    // Linux swap: "SWAPSPACE2" at the end of the first 4 KiB page; UUID at byte 1036.
    if len >= 4096 {
        if let Some(page) = read(dev, offset, 4096) {
            if &page[4086..4096] == b"SWAPSPACE2" {
                return Some(FoundFs {
                    kind: "swap",
                    uuid: Some(uuid_text(&page[1036..1052])),
                    label: text(&page[1052..1068]),
                });
            }
        }
    }
    // FAT: a boot sector with 0x55AA, a sane BPB and the type string (Microsoft FAT spec §3.1,
    // §3.2 for FAT12/16 at 54, §3.3 for FAT32 at 82).
    if len >= 512 {
        let bs = read(dev, offset, 512)?;
        let bytes_per_sector = le16(&bs, 11);
        if bs[510..512] == [0x55, 0xAA]
            && [512, 1024, 2048, 4096].contains(&bytes_per_sector)
            && matches!(bs[0], 0xEB | 0xE9)
        {
            let (serial, label) = if &bs[82..87] == b"FAT32" {
                (le32(&bs, 67), text(&bs[71..82]))
            } else if &bs[54..57] == b"FAT" {
                (le32(&bs, 39), text(&bs[43..54]))
            } else {
                return None;
            };
            return Some(FoundFs {
                kind: "vfat",
                uuid: Some(format!("{:04X}-{:04X}", serial >> 16, serial & 0xFFFF)),
                label: label.filter(|l| l != "NO NAME"),
            });
        }
    }
    None
}

/// A GPT found with `ss`-byte sectors: its partitions, the disk GUID, problems.
fn read_gpt(
    dev: &dyn BlockDev,
    ss: u64,
    problems: &mut Vec<String>,
) -> Option<(Vec<FoundPartition>, Guid)> {
    let mut primary_problems = Vec::new();
    let primary = read_gpt_at(dev, ss, 1, &mut primary_problems);
    if primary.is_some() && primary_problems.is_empty() {
        return primary;
    }
    // The primary table is damaged (or missing): UEFI 2.10 §5.3.2 falls back to the backup
    // header in the last sector, whose array sits just before it.
    let last = (dev.size() / ss).checked_sub(1)?;
    let mut backup_problems = Vec::new();
    let backup = read_gpt_at(dev, ss, last, &mut backup_problems);
    match (primary, backup) {
        (_, Some(b)) if backup_problems.is_empty() => {
            let why = primary_problems
                .first()
                .map_or("missing".to_string(), |p| p.to_lowercase());
            problems.push(format!(
                "the primary GPT is damaged ({why}): the backup GPT was read"
            ));
            Some(b)
        }
        (Some(p), _) => {
            problems.extend(primary_problems);
            problems.push("the backup GPT does not help: the entries shown may be wrong".into());
            Some(p)
        }
        (None, b) => {
            problems.extend(backup_problems);
            b
        }
    }
}

fn read_gpt_at(
    dev: &dyn BlockDev,
    ss: u64,
    lba: u64,
    problems: &mut Vec<String>,
) -> Option<(Vec<FoundPartition>, Guid)> {
    let hdr = read(dev, lba.checked_mul(ss)?, ss as usize)?;
    if &hdr[..8] != b"EFI PART" {
        return None;
    }
    // UEFI 2.10 §5.3.2: the header CRC covers HeaderSize bytes with its own field zeroed.
    let hsize = le32(&hdr, 12) as usize;
    if !(92..=ss as usize).contains(&hsize) {
        problems.push(format!(
            "GPT header size {hsize} is not between 92 and {ss}"
        ));
        return None;
    }
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != le32(&hdr, 16) {
        problems.push("GPT header CRC does not match".into());
    }
    let disk_guid = Guid(hdr[56..72].try_into().expect("16 bytes"));
    let (array_lba, entries, entry_size) = (le64(&hdr, 72), le32(&hdr, 80), le32(&hdr, 84));
    if entry_size < 128 || entries > 4096 || entry_size > 4096 {
        problems.push(format!(
            "GPT entry array of {entries} entries of {entry_size} bytes is not plausible"
        ));
        return Some((Vec::new(), disk_guid));
    }
    let array_len = entries as usize * entry_size as usize;
    let Some(array) = read(dev, array_lba.saturating_mul(ss), array_len) else {
        problems.push(format!(
            "GPT entry array at LBA {array_lba} is past the end"
        ));
        return Some((Vec::new(), disk_guid));
    };
    if crc32fast::hash(&array) != le32(&hdr, 88) {
        problems.push("GPT entry array CRC does not match".into());
    }
    let mut parts = Vec::new();
    for (i, e) in array.chunks(entry_size as usize).enumerate() {
        let type_guid = Guid(e[..16].try_into().expect("16 bytes"));
        if type_guid.0 == [0; 16] {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let offset = first.saturating_mul(ss);
        let size = (last + 1).saturating_sub(first).saturating_mul(ss);
        if last < first || offset.saturating_add(size) > dev.size() {
            problems.push(format!(
                "GPT entry {} (LBA {first}–{last}) does not fit the disk",
                i + 1
            ));
        }
        // A name only when the type has one (name() falls back to the GUID text).
        let type_name = PartType {
            gpt: Some(type_guid),
            mbr: None,
        }
        .name();
        let type_name = (type_name != type_guid.to_string()).then_some(type_name);
        parts.push(FoundPartition {
            number: i as u32 + 1,
            offset,
            size,
            label: Some(String::from_utf16_lossy(&units)),
            type_guid: Some(type_guid),
            type_name,
            mbr_type: None,
            guid: Some(Guid(e[16..32].try_into().expect("16 bytes"))),
            attributes: le64(e, 48),
            bootable: false,
            filesystem: None,
        });
    }
    Some((parts, disk_guid))
}

/// The MBR's partition entries, if sector 0 holds a plausible MBR (not a FAT boot sector).
fn read_mbr(dev: &dyn BlockDev, mbr: &[u8], problems: &mut Vec<String>) -> Vec<FoundPartition> {
    if mbr[510..512] != [0x55, 0xAA] {
        return Vec::new();
    }
    let mut parts = Vec::new();
    for i in 0..4 {
        let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        let (status, kind) = (e[0], e[4]);
        let (start, sectors) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if kind == 0 || sectors == 0 {
            continue;
        }
        if status != 0 && status != 0x80 {
            // Not a partition table (a volume boot record, most likely).
            return Vec::new();
        }
        if (start + sectors) * 512 > dev.size() && kind != 0xEE {
            problems.push(format!(
                "MBR entry {} (sectors {start}+{sectors}) does not fit the disk",
                i + 1
            ));
        }
        parts.push(FoundPartition {
            number: i as u32 + 1,
            offset: start * 512,
            size: sectors * 512,
            label: None,
            type_guid: None,
            type_name: None,
            mbr_type: Some(kind),
            guid: None,
            attributes: 0,
            bootable: status == 0x80,
            filesystem: None,
        });
    }
    parts
}

/// What `dev` holds.
pub fn inspect(dev: &dyn BlockDev) -> Result<Inspection, PartitionError> {
    let size = dev.size();
    let mut problems = Vec::new();
    let mbr = read(dev, 0, 512);
    let whole = detect_filesystem(dev, 0, size);
    let mut out = Inspection {
        size,
        table: None,
        sector_size: 512,
        disk_guid: None,
        mbr_signature: None,
        partitions: Vec::new(),
        filesystem: whole.clone(),
        problems: Vec::new(),
    };
    let Some(mbr) = mbr else {
        return Ok(out);
    };
    let mbr_parts = if whole.as_ref().is_some_and(|f| f.kind == "vfat") {
        // A FAT volume at byte 0 (a "superfloppy"): sector 0 is its boot sector.
        Vec::new()
    } else {
        read_mbr(dev, &mbr, &mut problems)
    };
    let gpt = [512u64, 4096]
        .into_iter()
        .find_map(|ss| read_gpt(dev, ss, &mut problems).map(|g| (ss, g)));
    match gpt {
        Some((ss, (parts, guid))) => {
            let hybrid = mbr_parts.iter().any(|p| p.mbr_type != Some(0xEE));
            out.table = Some(if hybrid {
                TableKind::Hybrid
            } else {
                TableKind::Gpt
            });
            out.sector_size = ss;
            out.disk_guid = Some(guid);
            out.partitions = parts;
            if hybrid {
                out.mbr_signature = Some(le32(&mbr, 440));
            }
        }
        None if !mbr_parts.is_empty() => {
            out.table = Some(TableKind::Mbr);
            out.mbr_signature = Some(le32(&mbr, 440));
            out.partitions = mbr_parts;
        }
        None => {}
    }
    for p in &mut out.partitions {
        if p.offset.saturating_add(p.size) <= size {
            p.filesystem = detect_filesystem(dev, p.offset, p.size);
        }
    }
    out.problems = problems;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use synth::{BlockDev, CowOverlay, OverlayOptions, RegionMapBuilder};

    use super::*;
    use crate::partition::{build, DiskOptions, PartType, PartitionSpec, TableKind};

    fn content(len: usize, fill: u8) -> Arc<dyn BlockDev> {
        let mut b = RegionMapBuilder::new();
        b.push_bytes("c", vec![fill; len]).unwrap();
        Arc::new(b.finish())
    }

    fn disk(table: TableKind, ss: u64) -> (crate::partition::Disk, Arc<dyn BlockDev>) {
        let parts = vec![
            PartitionSpec {
                label: "esp".into(),
                kind: PartType::parse("esp").unwrap(),
                content: content(4096, 1),
                size: 1 << 20,
                attributes: 1 << 59,
                guid: None,
                bootable: true,
            },
            PartitionSpec {
                label: "data".into(),
                kind: PartType::parse("linux-generic").unwrap(),
                content: content(8192, 2),
                size: 2 << 20,
                attributes: 0,
                guid: None,
                bootable: false,
            },
        ];
        let opts = DiskOptions {
            table,
            sector_size: ss,
            seed: b"inspect".to_vec(),
            ..DiskOptions::default()
        };
        let d = build(&opts, parts).unwrap();
        let dev: Arc<dyn BlockDev> = Arc::new(d.map.clone());
        (d, dev)
    }

    #[test]
    fn inspect_reads_back_what_build_wrote() {
        for (table, ss) in [
            (TableKind::Gpt, 512),
            (TableKind::Gpt, 4096),
            (TableKind::Hybrid, 512),
            (TableKind::Mbr, 512),
        ] {
            let (d, dev) = disk(table, ss);
            let i = inspect(&*dev).unwrap();
            assert_eq!(i.table, Some(table), "{table:?}");
            assert!(i.problems.is_empty(), "{:?}", i.problems);
            assert_eq!(
                i.sector_size,
                if table == TableKind::Mbr { 512 } else { ss }
            );
            assert_eq!(i.partitions.len(), 2);
            for (f, r) in i.partitions.iter().zip(&d.report.partitions) {
                assert_eq!((f.offset, f.size), (r.offset, r.size), "{table:?}");
                if table != TableKind::Mbr {
                    assert_eq!(f.guid, r.guid);
                    assert_eq!(f.type_guid, r.type_guid);
                    assert_eq!(f.label.as_deref(), Some(r.label.as_str()));
                    assert_eq!(f.attributes, r.attributes);
                } else {
                    assert_eq!(f.mbr_type, r.mbr_type);
                }
            }
            if table != TableKind::Mbr {
                assert_eq!(i.partitions[0].type_name.as_deref(), Some("esp"));
                assert_eq!(i.disk_guid, d.report.disk_guid);
            }
        }
    }

    #[test]
    fn a_damaged_primary_gpt_falls_back_to_the_backup() {
        let (d, dev) = disk(TableKind::Gpt, 512);
        let ov = CowOverlay::new(dev, OverlayOptions::default()).unwrap();
        ov.write_at(&[0xAB; 512], 1024).unwrap(); // the first sector of the entry array
        let i = inspect(&ov).unwrap();
        assert_eq!(i.partitions.len(), 2);
        assert_eq!(i.partitions[1].offset, d.report.partitions[1].offset);
        assert_eq!(i.problems.len(), 1, "{:?}", i.problems);
        assert!(i.problems[0].contains("backup"), "{:?}", i.problems);
        // Both copies gone: problems, no panic.
        let last = ov.size() - 512;
        ov.write_at(&[0xCD; 512], last).unwrap();
        let i = inspect(&ov).unwrap();
        assert!(!i.problems.is_empty());
    }

    #[test]
    fn zeros_and_junk_are_no_table() {
        let zeros = synth::RegionMapBuilder::new();
        let mut zeros = zeros;
        zeros.push("z", 1 << 20, synth::Backing::Zero).unwrap();
        let z = zeros.finish();
        let i = inspect(&z).unwrap();
        assert_eq!(i.table, None);
        assert!(i.partitions.is_empty() && i.filesystem.is_none());
        let mut junk = RegionMapBuilder::new();
        let bytes: Vec<u8> = (0..1u32 << 16)
            .map(|x| (x.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        junk.push_bytes("j", bytes).unwrap();
        let i = inspect(&junk.finish()).unwrap();
        assert!(i.partitions.iter().all(|p| p.filesystem.is_none()));
    }
}
