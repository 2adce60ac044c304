//! Layout arithmetic at the limits, both headers' CRCs, and disks read back
//! through the conformance check.

use std::sync::Arc;

use synth::testing::check_dev;
use synth::{BlockDev, ExtentKind, ExtentList, RegionMapBuilder};

use super::gpt::{self, HEADER_SIZE};
use super::types::{BASIC_DATA, ESP, LINUX_GENERIC};
use super::*;

const MIB: u64 = 1 << 20;

/// A content of `len` bytes: a recognisable pattern, then a hole if long.
fn content(len: u64, seed: u8) -> (Arc<dyn BlockDev>, Vec<u8>) {
    let data = len.min(3000);
    let bytes: Vec<u8> = (0..data)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect();
    let mut b = RegionMapBuilder::new();
    b.push_bytes("data", bytes.clone()).unwrap();
    b.pad_to(len).unwrap();
    let mut all = bytes;
    all.resize(len as usize, 0);
    (Arc::new(b.finish()), all)
}

fn spec(label: &str, kind: &str, size: u64, content_len: u64) -> PartitionSpec {
    PartitionSpec {
        label: label.into(),
        kind: PartType::parse(kind).unwrap(),
        content: content(content_len, label.len() as u8).0,
        size,
        attributes: 0,
        guid: None,
        bootable: false,
    }
}

fn opts(table: TableKind, sector_size: u64, align: u64) -> DiskOptions {
    DiskOptions {
        table,
        sector_size,
        align,
        seed: b"test seed".to_vec(),
        ..DiskOptions::default()
    }
}

fn read(dev: &dyn BlockDev, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset).unwrap();
    buf
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn one_partition_gpt_at_1mib() {
    let p = plan(&opts(TableKind::Gpt, 512, MIB), &[MIB]).unwrap();
    assert_eq!(p.starts, vec![MIB]);
    assert_eq!(p.disk_size, 2 * MIB + 33 * 512);
    assert_eq!(p.first_usable, 34 * 512);
    assert_eq!(p.last_usable_end, 2 * MIB);
    let (head, tail) = table_overhead(&opts(TableKind::Gpt, 512, MIB)).unwrap();
    assert_eq!((head, tail), (MIB, 33 * 512));
}

#[test]
fn alignment_4k_and_1m() {
    let sizes = [3 * 4096, 4096];
    let p = plan(&opts(TableKind::Gpt, 512, 4096), &sizes).unwrap();
    // First usable byte 17408 (LBA 34) rounds up to 20480.
    assert_eq!(p.starts, vec![20480, 32768]);
    assert_eq!(p.disk_size, 36864 + 33 * 512);
    let p = plan(&opts(TableKind::Gpt, 512, MIB), &sizes).unwrap();
    assert_eq!(p.starts, vec![MIB, 2 * MIB]);
    // Sector alignment packs partitions right after the array.
    let p = plan(&opts(TableKind::Gpt, 512, 0), &[512, 1024]).unwrap();
    assert_eq!(p.starts, vec![34 * 512, 35 * 512]);
    let p = plan(&opts(TableKind::Mbr, 512, 0), &[512]).unwrap();
    assert_eq!((p.starts[0], p.disk_size), (512, 1024));
}

#[test]
fn mbr_holds_four_partitions() {
    let o = opts(TableKind::Mbr, 512, MIB);
    let p = plan(&o, &[MIB; 4]).unwrap();
    assert_eq!(p.starts, vec![MIB, 2 * MIB, 3 * MIB, 4 * MIB]);
    assert_eq!(p.disk_size, 5 * MIB);
    let e = plan(&o, &[MIB; 5]).unwrap_err();
    assert!(
        matches!(
            e,
            PartitionError::TooMany {
                count: 5,
                max: 4,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.to_string(), "5 partitions: an mbr table holds at most 4");
}

#[test]
fn gpt_holds_128_partitions() {
    let o = opts(TableKind::Gpt, 512, 512);
    let p = plan(&o, &[512; 128]).unwrap();
    assert_eq!(p.starts[127], (34 + 127) * 512);
    let e = plan(&o, &[512; 129]).unwrap_err();
    assert!(matches!(
        e,
        PartitionError::TooMany {
            count: 129,
            max: 128,
            ..
        }
    ));
    // And a built 128-partition disk is one every entry of which is used.
    let parts: Vec<PartitionSpec> = (0..128)
        .map(|i| spec(&format!("p{i}"), "linux-generic", 512, 100))
        .collect();
    let d = build(&o, parts).unwrap();
    let array = read(&d.map, 1024, 128 * 128);
    assert!(array.chunks(128).all(|e| e[..16] == LINUX_GENERIC.0));
    let guids: std::collections::HashSet<_> = d.report.partitions.iter().map(|p| p.guid).collect();
    assert_eq!(guids.len(), 128);
}

#[test]
fn disk_too_small_says_how_many_bytes() {
    let mut o = opts(TableKind::Gpt, 512, MIB);
    o.size = Some(2 * MIB);
    let e = plan(&o, &[MIB]).unwrap_err();
    let needed = 2 * MIB + 33 * 512;
    assert!(
        matches!(e, PartitionError::DiskTooSmall { size, needed: n } if size == 2 * MIB && n == needed)
    );
    assert!(e.to_string().contains(&needed.to_string()), "{e}");
    assert!(e.to_string().contains("16896 more"), "{e}");
    o.size = Some(needed);
    assert_eq!(plan(&o, &[MIB]).unwrap().disk_size, needed);
    o.size = Some(needed + 100);
    assert!(matches!(
        plan(&o, &[MIB]),
        Err(PartitionError::NotWholeSectors { .. })
    ));
}

#[test]
fn invalid_options_and_partitions_are_errors() {
    assert!(matches!(
        plan(&opts(TableKind::Gpt, 1024, MIB), &[MIB]),
        Err(PartitionError::SectorSize(1024))
    ));
    assert!(matches!(
        plan(&opts(TableKind::Gpt, 4096, 6144), &[MIB]),
        Err(PartitionError::Align { .. })
    ));
    assert!(matches!(
        plan(&opts(TableKind::Gpt, 512, MIB), &[0]),
        Err(PartitionError::Empty { number: 1, .. })
    ));
    let e = plan(&opts(TableKind::Gpt, 4096, MIB), &[MIB + 512]).unwrap_err();
    assert!(e.to_string().contains("3584 bytes more"), "{e}");
    assert!(matches!(
        plan(&opts(TableKind::None, 512, 0), &[512, 512]),
        Err(PartitionError::NotOne(2))
    ));
    // MBR fields are 32-bit sector counts.
    let e = plan(&opts(TableKind::Mbr, 512, MIB), &[1 << 41]).unwrap_err();
    assert!(
        matches!(e, PartitionError::MbrLimit { what: "size", .. }),
        "{e}"
    );
    assert!(plan(&opts(TableKind::Mbr, 4096, MIB), &[1 << 41]).is_ok());
    assert!(plan(&opts(TableKind::Gpt, 512, MIB), &[1 << 41]).is_ok());

    let o = opts(TableKind::Gpt, 512, MIB);
    let e = build(&o, vec![spec("big", "esp", 4096, 5000)]).unwrap_err();
    assert!(e.to_string().contains("904 bytes more"), "{e}");
    let long = "x".repeat(37);
    let e = build(&o, vec![spec(&long, "esp", 4096, 10)]).unwrap_err();
    assert!(matches!(e, PartitionError::Label { units: 37, .. }));
    assert!(build(&o, vec![spec(&"é".repeat(36), "esp", 4096, 10)]).is_ok());
    let e = build(&o, vec![spec("raw", "0x0c", 4096, 10)]).unwrap_err();
    assert!(matches!(e, PartitionError::NoGptType { .. }), "{e}");
    let e = build(
        &opts(TableKind::Mbr, 512, MIB),
        vec![spec("grub", "bios-boot", 4096, 10)],
    )
    .unwrap_err();
    assert!(matches!(e, PartitionError::NoMbrType { .. }), "{e}");
}

/// Both headers: signature, CRCs, LBAs pointing at each other, the same array.
fn check_headers(dev: &dyn BlockDev, ss: u64, first_usable: u64) {
    let size = dev.size();
    let last = size / ss - 1;
    let array_sectors = 16384 / ss;
    let primary = read(dev, ss, ss as usize);
    let backup = read(dev, last * ss, ss as usize);
    for (h, this, other, array_lba) in [
        (&primary, 1, last, 2),
        (&backup, last, 1, last - array_sectors),
    ] {
        assert_eq!(&h[..8], b"EFI PART");
        assert_eq!(u32_at(h, 8), 0x0001_0000);
        assert_eq!(u32_at(h, 12), HEADER_SIZE as u32);
        let mut z = h[..HEADER_SIZE].to_vec();
        z[16..20].fill(0);
        assert_eq!(u32_at(h, 16), crc32fast::hash(&z), "header CRC");
        assert!(h[HEADER_SIZE..].iter().all(|&b| b == 0));
        assert_eq!(u64_at(h, 24), this);
        assert_eq!(u64_at(h, 32), other);
        assert_eq!(u64_at(h, 40), first_usable);
        assert_eq!(u64_at(h, 48), last - array_sectors - 1);
        assert_eq!(u64_at(h, 72), array_lba);
        assert_eq!((u32_at(h, 80), u32_at(h, 84)), (128, 128));
        let array = read(dev, array_lba * ss, 16384);
        assert_eq!(u32_at(h, 88), crc32fast::hash(&array), "array CRC");
    }
    assert_eq!(primary[56..72], backup[56..72]);
    // Protective MBR (§5.2.3).
    let mbr = read(dev, 0, 512);
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
}

#[test]
fn gpt_headers_and_crcs_512() {
    let o = opts(TableKind::Gpt, 512, MIB);
    let d = build(
        &o,
        vec![
            spec("EFI", "esp", MIB, 1000),
            spec("root", "root", 2 * MIB, 3000),
        ],
    )
    .unwrap();
    check_headers(&d.map, 512, 34);
    let mbr = read(&d.map, 0, 512);
    assert_eq!(mbr[446 + 4], 0xEE);
    assert_eq!(u32_at(&mbr, 446 + 8), 1);
    assert_eq!(u32_at(&mbr, 446 + 12) as u64, d.map.size() / 512 - 1);
    assert!(mbr[462..510].iter().all(|&b| b == 0));
    let e = read(&d.map, 1024, 128);
    assert_eq!(e[..16], ESP.0);
    assert_eq!(
        Some(Guid(e[16..32].try_into().unwrap())),
        d.report.partitions[0].guid
    );
    assert_eq!((u64_at(&e, 32), u64_at(&e, 40)), (2048, 4095));
    assert_eq!(&e[56..62], &[b'E', 0, b'F', 0, b'I', 0]);
}

#[test]
fn gpt_with_4096_byte_sectors() {
    let o = opts(TableKind::Gpt, 4096, 4096);
    let p = plan(&o, &[8192]).unwrap();
    assert_eq!(p.starts, vec![6 * 4096]);
    assert_eq!(p.first_usable, 6 * 4096);
    assert_eq!(p.disk_size, (6 + 2 + 5) * 4096);
    let d = build(&o, vec![spec("data", "linux-generic", 8192, 5000)]).unwrap();
    check_headers(&d.map, 4096, 6);
    // LBA 0 holds the MBR in its first 512 bytes, zeros after.
    let lba0 = read(&d.map, 0, 4096);
    assert_eq!(&lba0[510..512], &[0x55, 0xAA]);
    assert!(lba0[512..].iter().all(|&b| b == 0));
    assert_eq!(u32_at(&lba0, 446 + 12), 12);
    let e = read(&d.map, 2 * 4096, 128);
    assert_eq!((u64_at(&e, 32), u64_at(&e, 40)), (6, 7));
    // MBR tables count 4096-byte sectors too.
    let d = build(
        &opts(TableKind::Mbr, 4096, MIB),
        vec![spec("a", "linux-generic", MIB, 10)],
    )
    .unwrap();
    let m = read(&d.map, 0, 512);
    assert_eq!((u32_at(&m, 454), u32_at(&m, 458)), (256, 256));
}

#[test]
fn odd_sized_content_is_padded_with_a_hole() {
    let o = opts(TableKind::Gpt, 512, 4096);
    let (c, bytes) = content(1001, 5);
    let d = build(
        &o,
        vec![PartitionSpec {
            content: c,
            ..spec("odd", "linux-generic", 8192, 1)
        }],
    )
    .unwrap();
    let start = d.report.partitions[0].offset;
    assert_eq!(start, 20480);
    assert_eq!(read(&d.map, start, 1001), bytes);
    let mut ext = ExtentList::new(start + 1001);
    d.map.extents(start + 1001, 8192 - 1001, &mut ext).unwrap();
    assert_eq!(ext.as_slice().len(), 1);
    assert_eq!(ext.as_slice()[0].kind, ExtentKind::Hole);
    assert_eq!(ext.covered(), 8192 - 1001);
}

/// A three-partition GPT disk checked byte for byte against a reference
/// assembled here, with reads across every boundary and extent walks.
#[test]
fn gpt_disk_passes_conformance() {
    for ss in [512u64, 4096] {
        let o = opts(TableKind::Gpt, ss, 4096);
        let sizes = [8192u64, 4096 * 3, 4096];
        let lens = [8192u64, 5000, 1];
        let mut parts = Vec::new();
        let mut contents = Vec::new();
        for (i, (&size, &len)) in sizes.iter().zip(&lens).enumerate() {
            let (c, bytes) = content(len, i as u8 * 40);
            contents.push(bytes);
            parts.push(PartitionSpec {
                content: c,
                ..spec(&format!("part{i}"), "linux-generic", size, 1)
            });
        }
        let d = build(&o, parts).unwrap();
        let size = d.map.size() as usize;
        let mut expected = vec![0u8; size];
        let disk_sectors = size as u64 / ss;
        let pmbr = mbr::encode(&[mbr::protective(disk_sectors)], 0);
        expected[..512].copy_from_slice(&pmbr);
        let table = Gpt {
            sector_size: ss,
            disk_guid: d.report.disk_guid.unwrap(),
            disk_sectors,
            partitions: d
                .report
                .partitions
                .iter()
                .map(|p| GptPartition {
                    kind: LINUX_GENERIC,
                    guid: p.guid.unwrap(),
                    first: p.offset / ss,
                    last: (p.offset + p.size) / ss - 1,
                    attributes: 0,
                    name: p.label.clone(),
                })
                .collect(),
        };
        let primary = table.primary().unwrap();
        expected[ss as usize..ss as usize + primary.len()].copy_from_slice(&primary);
        let backup = table.backup().unwrap();
        expected[size - backup.len()..].copy_from_slice(&backup);
        for (p, bytes) in d.report.partitions.iter().zip(&contents) {
            let at = p.offset as usize;
            expected[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let bounds: Vec<u64> = d.map.regions().iter().map(|r| r.start).collect();
        check_dev(&d.map, &expected, &bounds);
    }
}

#[test]
fn mbr_table_entries() {
    let mut o = opts(TableKind::Mbr, 512, MIB);
    o.mbr_signature = Some(0x1234_5678);
    let mut parts = vec![
        spec("a", "esp", MIB, 100),
        spec("b", "0x0c", 2 * MIB, 100),
        spec("c", "swap", MIB, 100),
        spec("d", "linux-generic", MIB, 100),
    ];
    parts[1].bootable = true;
    let d = build(&o, parts).unwrap();
    let m = read(&d.map, 0, 512);
    assert_eq!(u32_at(&m, 440), 0x1234_5678);
    let entries: Vec<(u8, u8, u32, u32)> = (0..4)
        .map(|i| {
            let e = &m[446 + 16 * i..462 + 16 * i];
            (e[0], e[4], u32_at(e, 8), u32_at(e, 12))
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            (0, 0xEF, 2048, 2048),
            (0x80, 0x0C, 4096, 4096),
            (0, 0x82, 8192, 2048),
            (0, 0x83, 10240, 2048),
        ]
    );
    assert_eq!(d.map.size(), 6 * MIB);
    assert_eq!(d.report.mbr_signature, Some(0x1234_5678));
    assert_eq!(d.report.disk_guid, None);
    assert_eq!(d.report.partitions[1].mbr_type, Some(0x0C));
    assert_eq!(d.report.partitions[1].guid, None);
    // The default boot code is the stub.
    assert_eq!(m[..440], mbr::stub_code());
}

#[test]
fn hybrid_mirrors_three_partitions_after_the_ee_entry() {
    let o = opts(TableKind::Hybrid, 512, MIB);
    let mut parts = vec![
        spec("grub", "bios-boot", MIB, 10),
        spec("EFI", "esp", MIB, 10),
        spec("root", "root", MIB, 10),
        spec("home", "home", MIB, 10),
        spec("srv", "srv", MIB, 10),
    ];
    parts[1].bootable = true;
    let d = build(&o, parts).unwrap();
    check_headers(&d.map, 512, 34);
    let m = read(&d.map, 0, 512);
    let entries: Vec<(u8, u8, u32, u32)> = (0..4)
        .map(|i| {
            let e = &m[446 + 16 * i..462 + 16 * i];
            (e[0], e[4], u32_at(e, 8), u32_at(e, 12))
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            (0, 0xEE, 1, 2047),
            (0x80, 0xEF, 4096, 2048),
            (0, 0x83, 6144, 2048),
            (0, 0x83, 8192, 2048),
        ]
    );
    let types: Vec<Option<u8>> = d.report.partitions.iter().map(|p| p.mbr_type).collect();
    assert_eq!(types, vec![None, Some(0xEF), Some(0x83), Some(0x83), None]);
    assert!(d.report.mbr_signature.is_some());
    assert!(d.report.partitions.iter().all(|p| p.guid.is_some()));
}

#[test]
fn no_table_is_the_content_padded() {
    let o = opts(TableKind::None, 512, MIB);
    let (c, bytes) = content(1000, 9);
    let d = build(
        &o,
        vec![PartitionSpec {
            content: c,
            ..spec("fs", "basic-data", 4096, 1)
        }],
    )
    .unwrap();
    assert_eq!(d.map.size(), 4096);
    assert_eq!(read(&d.map, 0, 1000), bytes);
    assert_eq!(d.report.partitions[0].offset, 0);
    assert_eq!(d.report.partitions[0].mbr_type, Some(0x07));
    assert_eq!(d.report.partitions[0].type_guid, Some(BASIC_DATA));
    assert_eq!((d.report.disk_guid, d.report.mbr_signature), (None, None));
}

#[test]
fn guids_derive_from_seed_and_label() {
    let o = opts(TableKind::Gpt, 512, MIB);
    let mk = |o: &DiskOptions| {
        build(
            o,
            vec![
                spec("a", "esp", MIB, 1),
                spec("b", "home", MIB, 1),
                spec("a", "home", MIB, 1),
            ],
        )
        .unwrap()
        .report
    };
    let r1 = mk(&o);
    let r2 = mk(&o);
    assert_eq!(r1, r2);
    let g: Vec<Guid> = r1.partitions.iter().map(|p| p.guid.unwrap()).collect();
    assert_ne!(g[0], g[1]);
    assert_ne!(g[0], g[2], "a repeated label gets its own GUID");
    assert_eq!(g[0], derive_guid(&o.seed, 1, b"a"));
    assert_eq!(r1.disk_guid, Some(derive_guid(&o.seed, 0, b"disk")));
    for guid in g.iter().chain(r1.disk_guid.iter()) {
        let s = guid.to_string();
        assert_eq!(&s[14..15], "4", "{s}");
        assert!("89AB".contains(&s[19..20]), "{s}");
    }
    let mut o2 = o.clone();
    o2.seed = b"other".to_vec();
    assert_ne!(mk(&o2).disk_guid, r1.disk_guid);
    // Given GUIDs win.
    let mut o3 = o.clone();
    let want = Guid::parse("01234567-89AB-4DEF-8123-456789ABCDEF");
    o3.disk_guid = Some(want);
    let mut p = spec("x", "esp", MIB, 1);
    p.guid = Some(want);
    let r = build(&o3, vec![p]).unwrap().report;
    assert_eq!(
        (r.disk_guid, r.partitions[0].guid),
        (Some(want), Some(want))
    );
}

#[test]
fn gpt_module_table_sizes() {
    assert_eq!(gpt::array_sectors(512), 32);
    assert_eq!(gpt::array_sectors(4096), 4);
    assert_eq!(gpt::first_usable(512), 34);
    assert_eq!(gpt::first_usable(4096), 6);
    assert_eq!(gpt::table_sectors(4096), 5);
}
