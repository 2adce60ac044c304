//! Where partitions go ([`plan`], pure arithmetic) and the disk's region
//! map ([`build`]).
//!
//! ```text
//!  GPT (UEFI 2.10 §5.3.1, Figure 5.2), LBAs of 512-byte sectors (4096: 0, 1, 2-5, 6):
//!   0 protective MBR   1 primary header   2-33 array   34.. first usable
//!   ... partitions, each at the next multiple of `align` ...
//!   last-32..last-1 backup array   last backup header
//! ```

use std::sync::Arc;

use bytes::Bytes;
use synth::{Backing, BlockDev, RegionMapBuilder};

use super::gpt::{self, Gpt, GptPartition, Guid};
use super::mbr::{self, MbrPartition};
use super::{
    derive_guid, Disk, DiskOptions, DiskPlan, DiskReport, PartitionError, PartitionReport,
    PartitionSpec, TableKind,
};

/// Most primary partitions of an MBR.
const MBR_ENTRIES: usize = 4;
/// Most partitions a hybrid MBR mirrors (the fourth entry is the 0xEE one).
const HYBRID_MIRRORED: usize = 3;

/// The checked options: sector size, alignment, bytes the table takes
/// before the first partition and after the last.
struct Geometry {
    ss: u64,
    align: u64,
    head: u64,
    tail: u64,
}

fn geometry(opts: &DiskOptions) -> Result<Geometry, PartitionError> {
    let ss = opts.sector_size;
    if ss != 512 && ss != 4096 {
        return Err(PartitionError::SectorSize(ss));
    }
    let align = if opts.align == 0 { ss } else { opts.align };
    if !align.is_multiple_of(ss) {
        return Err(PartitionError::Align {
            align,
            sector_size: ss,
        });
    }
    let (head, tail) = match opts.table {
        TableKind::Gpt | TableKind::Hybrid => {
            (gpt::first_usable(ss) * ss, gpt::table_sectors(ss) * ss)
        }
        TableKind::Mbr => (ss, 0),
        TableKind::None => (0, 0),
    };
    Ok(Geometry {
        ss,
        align,
        head,
        tail,
    })
}

/// The bytes a table needs before the first partition (up to its aligned
/// start) and after the last (the backup GPT), for sizing a partition that
/// takes the remaining room of a disk of known size.
pub fn table_overhead(opts: &DiskOptions) -> Result<(u64, u64), PartitionError> {
    let g = geometry(opts)?;
    Ok((g.head.div_ceil(g.align) * g.align, g.tail))
}

/// Where each partition of the given sizes would start (bytes), and the
/// disk size, without building anything: a FAT needs its partition start
/// (BPB hidden sectors) before it is built.
pub fn plan(opts: &DiskOptions, sizes: &[u64]) -> Result<DiskPlan, PartitionError> {
    let labels = vec![String::new(); sizes.len()];
    plan_labelled(opts, sizes, &labels)
}

fn plan_labelled(
    opts: &DiskOptions,
    sizes: &[u64],
    labels: &[String],
) -> Result<DiskPlan, PartitionError> {
    let g = geometry(opts)?;
    let max = match opts.table {
        TableKind::Gpt | TableKind::Hybrid => gpt::ENTRIES,
        TableKind::Mbr => MBR_ENTRIES,
        TableKind::None => 1,
    };
    if opts.table == TableKind::None && sizes.len() != 1 {
        return Err(PartitionError::NotOne(sizes.len()));
    }
    if sizes.len() > max {
        return Err(PartitionError::TooMany {
            table: opts.table,
            count: sizes.len(),
            max,
        });
    }
    let mut starts = Vec::with_capacity(sizes.len());
    let mut pos = g.head;
    for (i, (&size, label)) in sizes.iter().zip(labels).enumerate() {
        if size == 0 {
            return Err(PartitionError::Empty {
                number: i + 1,
                label: label.clone(),
            });
        }
        if !size.is_multiple_of(g.ss) {
            return Err(PartitionError::NotWholeSectors {
                what: format!("{} size", super::part(i + 1, label)),
                bytes: size,
                sector_size: g.ss,
            });
        }
        let start = pos
            .checked_next_multiple_of(g.align)
            .ok_or(PartitionError::Overflow)?;
        pos = start.checked_add(size).ok_or(PartitionError::Overflow)?;
        if opts.table == TableKind::Mbr {
            // Table 5.2: StartingLBA and SizeInLBA are 32-bit.
            let limit = u64::from(u32::MAX) * g.ss;
            for (what, bytes) in [("start", start), ("size", size)] {
                if bytes > limit {
                    return Err(PartitionError::MbrLimit {
                        number: i + 1,
                        label: label.clone(),
                        what,
                        bytes,
                        max: limit,
                        sector_size: g.ss,
                    });
                }
            }
        }
        starts.push(start);
    }
    // A GPT needs at least one usable sector (§5.3.2: last >= first).
    let used = if g.tail > 0 {
        pos.max(g.head + g.ss)
    } else {
        pos
    };
    let needed = used.checked_add(g.tail).ok_or(PartitionError::Overflow)?;
    let disk_size = opts.size.unwrap_or(needed);
    if !disk_size.is_multiple_of(g.ss) {
        return Err(PartitionError::NotWholeSectors {
            what: "disk size".into(),
            bytes: disk_size,
            sector_size: g.ss,
        });
    }
    if disk_size < needed {
        return Err(PartitionError::DiskTooSmall {
            size: disk_size,
            needed,
        });
    }
    Ok(DiskPlan {
        starts,
        disk_size,
        first_usable: g.head,
        last_usable_end: disk_size - g.tail,
    })
}

/// The disk: its table(s) as `Bytes` regions, each partition's content as a
/// `Dev` region at its start, padding as `Zero` regions.
pub fn build(opts: &DiskOptions, parts: Vec<PartitionSpec>) -> Result<Disk, PartitionError> {
    let g = geometry(opts)?;
    let gpt_table = matches!(opts.table, TableKind::Gpt | TableKind::Hybrid);
    for (i, p) in parts.iter().enumerate() {
        let number = i + 1;
        let units = p.label.encode_utf16().count();
        if units > 36 {
            return Err(PartitionError::Label {
                number,
                label: p.label.clone(),
                units,
            });
        }
        let content = p.content.size();
        if content > p.size {
            return Err(PartitionError::ContentTooLarge {
                number,
                label: p.label.clone(),
                content,
                size: p.size,
            });
        }
        if gpt_table && p.kind.gpt.is_none() {
            return Err(PartitionError::NoGptType {
                number,
                label: p.label.clone(),
                kind: p.kind.name(),
                table: opts.table,
            });
        }
        if opts.table == TableKind::Mbr && p.kind.mbr.is_none() {
            return Err(PartitionError::NoMbrType {
                number,
                label: p.label.clone(),
                kind: p.kind.name(),
            });
        }
    }
    let sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
    let labels: Vec<String> = parts.iter().map(|p| p.label.clone()).collect();
    let plan = plan_labelled(opts, &sizes, &labels)?;
    let ss = g.ss;
    let disk_sectors = plan.disk_size / ss;

    // GUIDs (GPT tables only): given, or derived from the seed and the
    // label; a repeated label or a colliding hash gets a counter.
    let disk_guid = gpt_table.then(|| {
        opts.disk_guid
            .unwrap_or_else(|| derive_guid(&opts.seed, 0, b"disk"))
    });
    let mut guids: Vec<Guid> = Vec::with_capacity(parts.len());
    if gpt_table {
        for p in &parts {
            let guid = p.guid.unwrap_or_else(|| {
                let mut what = p.label.as_bytes().to_vec();
                let mut k = 0u32;
                loop {
                    let g = derive_guid(&opts.seed, 1, &what);
                    if !guids.contains(&g) && Some(g) != disk_guid {
                        break g;
                    }
                    k += 1;
                    what.truncate(p.label.len());
                    what.push(0);
                    what.extend_from_slice(&k.to_le_bytes());
                }
            });
            guids.push(guid);
        }
    }
    let derived_signature = || {
        let g = derive_guid(&opts.seed, 0, b"mbr signature").0;
        u32::from_le_bytes([g[0], g[1], g[2], g[3]])
    };
    let signature = match opts.table {
        TableKind::Mbr | TableKind::Hybrid => {
            Some(opts.mbr_signature.unwrap_or_else(derived_signature))
        }
        TableKind::Gpt => opts.mbr_signature,
        TableKind::None => None,
    };
    let code = opts.mbr_boot_code.unwrap_or_else(mbr::stub_code);

    // LBA 0: the MBR (§5.2.1) or protective MBR (§5.2.3).
    let mut mbr_types: Vec<Option<u8>> = vec![None; parts.len()];
    let mbr_sector = match opts.table {
        TableKind::None => None,
        TableKind::Mbr => {
            let entries: Vec<MbrPartition> = parts
                .iter()
                .zip(&plan.starts)
                .map(|(p, &start)| MbrPartition {
                    kind: p.kind.mbr.unwrap_or_default(),
                    start: (start / ss) as u32,
                    sectors: (p.size / ss) as u32,
                    active: p.bootable,
                })
                .collect();
            for (t, p) in mbr_types.iter_mut().zip(&parts) {
                *t = p.kind.mbr;
            }
            Some(mbr::encode_with_code(
                &entries,
                signature.unwrap_or(0),
                &code,
            ))
        }
        TableKind::Gpt => Some(mbr::encode_with_code(
            &[mbr::protective(disk_sectors)],
            signature.unwrap_or(0),
            &code,
        )),
        TableKind::Hybrid => {
            // The 0xEE entry first, over the GPT up to the first partition
            // (as gdisk and xorriso lay hybrids out), then the mirrored
            // partitions; entries never overlap.
            let first = plan.starts.first().map_or(disk_sectors, |&s| s / ss);
            let sectors32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            let mut entries = vec![MbrPartition {
                kind: mbr::PROTECTIVE_TYPE,
                start: 1,
                sectors: sectors32(first - 1),
                active: false,
            }];
            for (i, (p, &start)) in parts.iter().zip(&plan.starts).enumerate() {
                let Some(kind) = p.kind.mbr else { continue };
                if entries.len() > HYBRID_MIRRORED {
                    break;
                }
                let limit = u64::from(u32::MAX) * ss;
                for (what, bytes) in [("start", start), ("size", p.size)] {
                    if bytes > limit {
                        return Err(PartitionError::MbrLimit {
                            number: i + 1,
                            label: p.label.clone(),
                            what,
                            bytes,
                            max: limit,
                            sector_size: ss,
                        });
                    }
                }
                entries.push(MbrPartition {
                    kind,
                    start: (start / ss) as u32,
                    sectors: (p.size / ss) as u32,
                    active: p.bootable,
                });
                mbr_types[i] = Some(kind);
            }
            Some(mbr::encode_with_code(
                &entries,
                signature.unwrap_or(0),
                &code,
            ))
        }
    };

    let table = gpt_table.then(|| Gpt {
        sector_size: ss,
        disk_guid: disk_guid.unwrap_or(Guid([0; 16])),
        disk_sectors,
        partitions: parts
            .iter()
            .zip(&plan.starts)
            .zip(&guids)
            .map(|((p, &start), &guid)| GptPartition {
                kind: p.kind.gpt.unwrap_or(Guid([0; 16])),
                guid,
                first: start / ss,
                last: (start + p.size) / ss - 1,
                attributes: p.attributes,
                name: p.label.clone(),
            })
            .collect(),
    });

    let mut b = RegionMapBuilder::new();
    if let Some(m) = mbr_sector {
        let name = match opts.table {
            TableKind::Gpt => "protective MBR",
            TableKind::Hybrid => "hybrid MBR",
            _ => "MBR",
        };
        b.push_bytes(name, Bytes::copy_from_slice(&m))?;
        b.pad_to(ss)?;
    }
    let mut backup = None;
    if let Some(t) = &table {
        // Header sector, then the entry array (UEFI §5.3.1); named apart for
        // people (the web view), the same bytes.
        let primary = Bytes::from(t.primary()?);
        let head = (ss as usize).min(primary.len());
        b.push_bytes("GPT header", primary.slice(..head))?;
        b.push_bytes("GPT partition entries", primary.slice(head..))?;
        backup = Some(t.backup()?);
    }
    for (i, (p, &start)) in parts.iter().zip(&plan.starts).enumerate() {
        b.pad_to(start)?;
        let name = super::part(i + 1, &p.label);
        b.push(
            &name,
            p.content.size(),
            Backing::Dev {
                dev: Arc::clone(&p.content),
                offset: 0,
            },
        )?;
        b.pad_to(start + p.size)?;
    }
    if let Some(bk) = backup {
        b.pad_to(plan.disk_size - bk.len() as u64)?;
        // The entry array, then the header in the last sector.
        let bk = Bytes::from(bk);
        let split = bk.len().saturating_sub(ss as usize);
        b.push_bytes("backup GPT partition entries", bk.slice(..split))?;
        b.push_bytes("backup GPT header", bk.slice(split..))?;
    }
    b.pad_to(plan.disk_size)?;
    let map = b.finish();
    debug_assert_eq!(map.size(), plan.disk_size);

    let partitions = parts
        .iter()
        .zip(&plan.starts)
        .enumerate()
        .map(|(i, (p, &offset))| PartitionReport {
            number: i as u32 + 1,
            label: p.label.clone(),
            offset,
            size: p.size,
            type_guid: if opts.table == TableKind::Mbr {
                None
            } else {
                p.kind.gpt
            },
            mbr_type: if opts.table == TableKind::None {
                p.kind.mbr
            } else {
                mbr_types[i]
            },
            guid: guids.get(i).copied(),
            attributes: p.attributes,
        })
        .collect();
    Ok(Disk {
        map,
        report: DiskReport {
            table: opts.table,
            sector_size: ss,
            size: plan.disk_size,
            disk_guid,
            mbr_signature: signature,
            partitions,
        },
    })
}
