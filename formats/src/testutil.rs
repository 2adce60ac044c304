//! Shared by the generators' tests: a small tree with the awkward parts (a sparse file, a
//! subdirectory) and the conformance check of an image and of an overlay written over it.

use std::sync::Arc;

use synth::{BlockDev, RegionMap};

/// A directory with a small file, a 70 KB file, a 1 MiB sparse file with one data block and a
/// subdirectory.
pub(crate) fn sample_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.txt"), b"hello").unwrap();
    std::fs::write(d.path().join("b.bin"), vec![0x5Au8; 70_000]).unwrap();
    let sparse = std::fs::File::create(d.path().join("sparse.bin")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[1u8; 4096], 512 * 1024).unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    std::fs::write(d.path().join("sub/c"), vec![3u8; 9000]).unwrap();
    d
}

/// `map` passes the device conformance check, and so does a temp-file overlay on it after
/// `writes` (offset, length, byte) are written.
pub(crate) fn check_image_and_overlay(map: RegionMap, writes: &[(usize, usize, u8)]) {
    let mut expected = vec![0u8; map.size() as usize];
    map.read_at(&mut expected, 0).unwrap();
    let starts: Vec<u64> = map.regions().iter().map(|r| r.start).collect();
    synth::testing::check_dev(&map, &expected, &starts);
    let ov = synth::CowOverlay::new(
        Arc::new(map) as Arc<dyn BlockDev>,
        synth::OverlayOptions {
            store: synth::OverlayStore::TempFile,
            page_size: 4096,
            ..synth::OverlayOptions::default()
        },
    )
    .unwrap();
    for &(at, len, byte) in writes {
        ov.write_at(&vec![byte; len], at as u64).unwrap();
        expected[at..at + len].fill(byte);
    }
    synth::testing::check_dev(&ov, &expected, &starts);
}

/// Whether `tool --version` runs; when it does not, panics under `CI=true` (a missing peer is a
/// failure there) and otherwise prints a SKIPPED line naming `test` and the Debian `package`.
pub(crate) fn have_tool(tool: &str, package: &str, test: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: the `{tool}` command is missing (apt-get install {package})");
        }
        eprintln!("SKIPPED {test}: the `{tool}` command is missing (apt-get install {package})");
    }
    ok
}
