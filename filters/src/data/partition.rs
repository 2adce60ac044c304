//! `partition:N`: one partition of the disk beneath, as a disk of its own
//! (what nbdkit's partition filter does), e.g. the root filesystem of a
//! remote qcow2 image served to a client that wants just that.
//!
//! The table is read once, when the stack is built, through the device
//! beneath (with its inner layers) by `formats::partition::inspect`: GPT
//! (512- or 4096-byte sectors, falling back to the backup header), MBR and
//! hybrid tables. MBR logical partitions inside an extended partition are
//! read here (the inspector lists primary entries only) and numbered from 5,
//! as Linux and nbdkit number them. A table with problems (a CRC that does
//! not match, entries past the end) is refused, with the problems named:
//! serving the wrong range of a disk as a partition would hand a client
//! wrong bytes with no error at all. Every client then gets a
//! [`synth::Window`] over its own device beneath.

use std::collections::HashSet;
use std::sync::Arc;

use formats::partition::{inspect, FoundPartition, TableKind};
use synth::{BlockDev, Client, Error, ErrorKind, Layer, LayerFactory, Result, Size, Window};

use crate::{Below, FilterArgs, FilterError};

/// MBR partition types of an extended partition (CHS, LBA, Linux).
const EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
/// At most this many logical partitions are followed: the chain is a
/// linked list on disk, and a crafted one may be long (or a loop).
const MAX_LOGICAL: usize = 128;

/// Makes `partition` layers: a window at the partition's place.
#[derive(Debug)]
pub struct PartitionFactory {
    number: u32,
    offset: u64,
    len: u64,
}

impl PartitionFactory {
    /// Partition `number` of `disk`, or why it cannot be served.
    pub fn find(disk: &dyn BlockDev, number: u32) -> std::result::Result<Self, String> {
        let found = inspect(disk).map_err(|e| format!("reading the partition table: {e}"))?;
        if !found.problems.is_empty() {
            return Err(format!(
                "the partition table has problems: {}",
                found.problems.join("; ")
            ));
        }
        let Some(table) = found.table else {
            return Err(format!(
                "found no partition table (MBR or GPT) on the {}-byte disk beneath{}",
                found.size,
                found
                    .filesystem
                    .as_ref()
                    .map(|f| format!(" (it holds a {} filesystem at byte 0)", f.kind))
                    .unwrap_or_default()
            ));
        };
        let mut parts: Vec<(u32, u64, u64)> = found
            .partitions
            .iter()
            .map(|p: &FoundPartition| (p.number, p.offset, p.size))
            .collect();
        if table == TableKind::Mbr {
            let logical = logical_partitions(disk, &found.partitions)?;
            parts.extend(logical);
        }
        let Some(&(_, offset, len)) = parts.iter().find(|p| p.0 == number) else {
            let there: Vec<String> = parts
                .iter()
                .map(|(n, o, l)| format!("{n} ({} at byte {o})", Size(*l)))
                .collect();
            return Err(format!(
                "the {table} table has no partition {number}; it has {}",
                if there.is_empty() {
                    "none".to_string()
                } else {
                    there.join(", ")
                }
            ));
        };
        // inspect lists a partition past the end as a problem; checked
        // again since the logical ones are read here.
        Window::new(offset, len, disk.size()).map_err(|e| e.to_string())?;
        Ok(PartitionFactory {
            number,
            offset,
            len,
        })
    }

    /// Where the partition starts on the disk beneath.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The logical partitions in the first extended partition of an MBR
/// (numbered 5, 6, …). Each extended boot record (EBR) holds the logical
/// partition, relative to the EBR's own sector, and a link to the next EBR,
/// relative to the extended partition's start.
fn logical_partitions(
    disk: &dyn BlockDev,
    primary: &[FoundPartition],
) -> std::result::Result<Vec<(u32, u64, u64)>, String> {
    let Some(ext) = primary
        .iter()
        .find(|p| p.mbr_type.is_some_and(|t| EXTENDED.contains(&t)))
    else {
        return Ok(Vec::new());
    };
    let ext_start = ext.offset / 512;
    let ext_end = ext.offset.saturating_add(ext.size);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut ebr = ext_start;
    loop {
        if !seen.insert(ebr) || out.len() >= MAX_LOGICAL {
            return Err(format!(
                "the chain of extended boot records loops or holds more than {MAX_LOGICAL} \
                 logical partitions"
            ));
        }
        let at = ebr
            .checked_mul(512)
            .filter(|&a| a.saturating_add(512) <= ext_end.min(disk.size()))
            .ok_or_else(|| {
                format!(
                    "an extended boot record at sector {ebr} lies outside the extended partition"
                )
            })?;
        let mut sector = [0u8; 512];
        disk.read_at(&mut sector, at)
            .map_err(|e| format!("reading the extended boot record at byte {at}: {e:#}"))?;
        if sector[510..512] != [0x55, 0xAA] {
            return Err(format!(
                "the extended boot record at byte {at} has no 0x55AA signature"
            ));
        }
        // Entries as in the MBR (UEFI 2.10 §5.2.1 table 5-2): type at +4,
        // starting LBA at +8, size in sectors at +12.
        let entry = |i: usize| {
            let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
            let le = |o: usize| u64::from(u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]));
            (e[4], le(8), le(12))
        };
        let (kind, rel, sectors) = entry(0);
        if kind != 0 && sectors != 0 {
            let offset = (ebr + rel) * 512;
            let len = sectors * 512;
            if offset.saturating_add(len) > ext_end {
                return Err(format!(
                    "logical partition {} (sectors {}+{sectors}) reaches past its extended \
                     partition",
                    out.len() + 5,
                    ebr + rel
                ));
            }
            out.push(((out.len() + 5) as u32, offset, len));
        }
        let (next_kind, next_rel, _) = entry(1);
        if next_kind == 0 || !EXTENDED.contains(&next_kind) {
            return Ok(out);
        }
        ebr = ext_start + next_rel;
    }
}

pub(crate) fn build(
    args: &FilterArgs,
    below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    args.allow(&[], 1)?;
    let number: u32 = args
        .positional(0)
        .ok_or_else(|| args.invalid("give the partition's number: partition:N (1 is the first)"))?
        .parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| args.invalid("the partition number is 1, 2, … (1 is the first)"))?;
    let Some(disk) = &below.shared else {
        return Err(args.invalid(
            "the disk beneath is made per client (a tmpdisk), so there is no one table to read",
        ));
    };
    let f = PartitionFactory::find(&**disk, number).map_err(|why| args.invalid(why))?;
    log::info!(
        "partition {number}: {} bytes at byte {} of the disk beneath",
        f.len,
        f.offset
    );
    Ok(Arc::new(f))
}

impl LayerFactory for PartitionFactory {
    fn name(&self) -> &str {
        "partition"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        let w = Window::new(self.offset, self.len, next.size()).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("partition {}: {e}", self.number),
            )
        })?;
        Ok(Arc::new(Layer::new(w, next)))
    }
    fn size(&self, next: u64) -> Result<u64> {
        Ok(Window::new(self.offset, self.len, next)?.len())
    }
}

#[cfg(test)]
mod tests {
    use formats::partition::{build as build_disk, DiskOptions, PartType, PartitionSpec};
    use synth::testing::check_dev;
    use synth::{CowOverlay, OverlayOptions, RegionMapBuilder};

    use super::*;
    use crate::data::testutil::below;

    fn content(len: usize, seed: u8) -> Arc<dyn BlockDev> {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 241) as u8 ^ seed).collect();
        let mut b = RegionMapBuilder::new();
        b.push_bytes("c", bytes).unwrap();
        Arc::new(b.finish())
    }

    fn flat(dev: &dyn BlockDev) -> Vec<u8> {
        let mut v = vec![0u8; dev.size() as usize];
        dev.read_at(&mut v, 0).unwrap();
        v
    }

    fn disk(table: TableKind, ss: u64) -> (Arc<dyn BlockDev>, Vec<(u64, u64)>) {
        let parts = (0..3)
            .map(|i| PartitionSpec {
                label: format!("p{i}"),
                kind: PartType::parse("linux-generic").unwrap(),
                content: content(10_000 + 4096 * i, 0x10 * (i as u8 + 1)),
                size: (i as u64 + 1) << 20,
                attributes: 0,
                guid: None,
                bootable: false,
            })
            .collect();
        let opts = DiskOptions {
            table,
            sector_size: ss,
            seed: b"partition filter".to_vec(),
            ..DiskOptions::default()
        };
        let d = build_disk(&opts, parts).unwrap();
        let places = d
            .report
            .partitions
            .iter()
            .map(|p| (p.offset, p.size))
            .collect();
        (Arc::new(d.map), places)
    }

    fn make(text: &str, dev: &Arc<dyn BlockDev>) -> std::result::Result<Arc<dyn BlockDev>, String> {
        let f = crate::build(text, &below(dev)).map_err(|e| e.to_string())?;
        Ok(f.layer(dev.clone(), &Client::local()).unwrap())
    }

    #[test]
    fn every_partition_of_gpt_mbr_and_hybrid_disks() {
        for (table, ss) in [
            (TableKind::Gpt, 512),
            (TableKind::Gpt, 4096),
            (TableKind::Mbr, 512),
            (TableKind::Hybrid, 512),
        ] {
            let (dev, places) = disk(table, ss);
            let all = flat(&*dev);
            for (i, (off, len)) in places.iter().enumerate() {
                let p = make(&format!("partition:{}", i + 1), &dev).unwrap();
                let want = &all[*off as usize..(off + len) as usize];
                // The content ends before the partition does: a boundary.
                check_dev(&*p, want, &[10_000 + 4096 * i as u64]);
            }
            let e = make("partition:4", &dev).unwrap_err();
            assert!(
                e.contains("no partition 4") && e.contains("1 (1.0 MiB at byte"),
                "{table:?}: {e}"
            );
        }
    }

    #[test]
    fn refusals_say_why() {
        let (dev, _) = disk(TableKind::Gpt, 512);
        for (text, want) in [
            ("partition", "partition:N"),
            ("partition:0", "1, 2"),
            ("partition:x", "1, 2"),
            ("partition:1,2", "at most 1"),
            ("partition:1,n=2", "no argument"),
        ] {
            let e = make(text, &dev).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        // No table at all.
        let blank = content(1 << 20, 0);
        let zero: Arc<dyn BlockDev> = {
            let mut b = RegionMapBuilder::new();
            b.push("z", 1 << 20, synth::Backing::Zero).unwrap();
            Arc::new(b.finish())
        };
        for d in [blank, zero] {
            let e = make("partition:1", &d).unwrap_err();
            assert!(e.contains("no partition table"), "{e}");
        }
        // A per-client disk beneath: no table to read at build time.
        let mut b = below(&dev);
        b.shared = None;
        let e = crate::build("partition:1", &b).unwrap_err().to_string();
        assert!(e.contains("per client"), "{e}");
    }

    #[test]
    fn a_damaged_table_is_refused_with_its_problems() {
        let (dev, _) = disk(TableKind::Gpt, 512);
        let ov: Arc<dyn BlockDev> =
            Arc::new(CowOverlay::new(dev, OverlayOptions::default()).unwrap());
        // Both GPT headers' entry arrays damaged: the CRCs no longer match.
        ov.write_at(&[0xAB; 512], 1024).unwrap();
        let backup_array = ov.size() - 512 - 128 * 128;
        ov.write_at(&[0xCD; 512], backup_array).unwrap();
        let e = make("partition:1", &ov).unwrap_err();
        assert!(e.contains("problems") && e.contains("CRC"), "{e}");
    }

    /// An MBR disk of `size` with primary entries `prim` (type, start
    /// sector, sectors) and, when given, an EBR chain at the extended
    /// entry's start: each EBR (sector, logical rel start, sectors, next
    /// rel or 0).
    fn mbr_disk(
        size: u64,
        prim: &[(u8, u32, u32)],
        ebrs: &[(u32, u32, u32, u32)],
    ) -> Arc<dyn BlockDev> {
        let ov = CowOverlay::blank(size, OverlayOptions::default()).unwrap();
        let entry = |s: &mut [u8], i: usize, (kind, start, n): (u8, u32, u32)| {
            let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        };
        let mut mbr = [0u8; 512];
        for (i, p) in prim.iter().enumerate() {
            entry(&mut mbr, i, *p);
        }
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        ov.write_at(&mbr, 0).unwrap();
        for &(sector, rel, n, next) in ebrs {
            let mut s = [0u8; 512];
            entry(&mut s, 0, (0x83, rel, n));
            if next != 0 {
                entry(&mut s, 1, (0x05, next, 1));
            }
            s[510] = 0x55;
            s[511] = 0xAA;
            ov.write_at(&s, u64::from(sector) * 512).unwrap();
        }
        // Content to tell partitions apart: each sector's first 8 bytes
        // hold its number (not over the table sectors).
        for sec in 1..size / 512 {
            if ebrs.iter().any(|e| u64::from(e.0) == sec) {
                continue;
            }
            ov.write_at(&sec.to_le_bytes(), sec * 512).unwrap();
        }
        Arc::new(ov)
    }

    #[test]
    fn logical_partitions_are_numbered_from_5() {
        // Primary 1 at sector 2048 (1 MiB), extended 2 at sector 4096 (2 MiB),
        // logical 5 at 4096+63, logical 6 in the second EBR at 4096+2048.
        let dev = mbr_disk(
            8 << 20,
            &[(0x83, 2048, 2048), (0x05, 4096, 8192)],
            &[(4096, 63, 1000, 2048), (4096 + 2048, 63, 500, 0)],
        );
        let all = flat(&*dev);
        for (n, start, sectors) in [
            (1, 2048u64, 2048u64),
            (5, 4096 + 63, 1000),
            (6, 4096 + 2048 + 63, 500),
        ] {
            let p = make(&format!("partition:{n}"), &dev).unwrap();
            let (o, l) = (start * 512, sectors * 512);
            check_dev(&*p, &all[o as usize..(o + l) as usize], &[512]);
            let mut first = [0u8; 8];
            p.read_at(&mut first, 0).unwrap();
            assert_eq!(u64::from_le_bytes(first), start, "partition {n}");
        }
        let e = make("partition:7", &dev).unwrap_err();
        assert!(e.contains("5 (") && e.contains("6 ("), "{e}");
    }

    #[test]
    fn hostile_ebr_chains_are_refused() {
        // A loop: the second EBR links back to the first.
        let looped = mbr_disk(
            8 << 20,
            &[(0x05, 4096, 8192)],
            &[(4096, 63, 10, 2048), (4096 + 2048, 63, 10, 0)],
        );
        looped
            .write_at(
                &{
                    let mut e = [0u8; 16];
                    e[4] = 0x05;
                    e
                },
                (4096 + 2048) * 512 + 462,
            )
            .unwrap();
        let e = make("partition:1", &looped).unwrap_err();
        assert!(e.contains("loops"), "{e}");
        // A logical partition past its extended partition.
        let past = mbr_disk(8 << 20, &[(0x05, 4096, 1000)], &[(4096, 63, 5000, 0)]);
        let e = make("partition:5", &past).unwrap_err();
        assert!(e.contains("past its extended"), "{e}");
        // A link out of the extended partition.
        let out = mbr_disk(8 << 20, &[(0x05, 4096, 1000)], &[(4096, 63, 10, 900_000)]);
        let e = make("partition:5", &out).unwrap_err();
        assert!(e.contains("outside the extended"), "{e}");
    }
}
