//! nbdinfo --map (NBD block status, base:allocation) against the truth and against nbdkit.

use disksynth_tests::{
    nbdinfo_map, qemu_io, require_tool, seek_map, tempdir, write_sparse_file, Extent, Server, MIB,
};

const fn ext(offset: u64, len: u64, kind: u32) -> Extent {
    Extent { offset, len, kind }
}

#[test]
fn map_of_memory_disk_shows_data_only_where_written() {
    require_tool!("nbdinfo", "qemu-io");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    qemu_io(server.uri(), &["write -P 0x5a 1M 1M"]);

    let map = nbdinfo_map(server.uri());

    assert_eq!(
        map,
        [ext(0, MIB, 3), ext(MIB, MIB, 0), ext(2 * MIB, 62 * MIB, 3)]
    );
}

#[test]
fn map_of_untouched_memory_and_zero_disks_is_one_hole() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let memory = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let dir2 = tempdir();
    let zero = Server::disksynth_unix(dir2.path(), &["zero", "1G"]);
    assert_eq!(nbdinfo_map(memory.uri()), [ext(0, 64 * MIB, 3)]);
    assert_eq!(nbdinfo_map(zero.uri()), [ext(0, 1024 * MIB, 3)]);
}

#[test]
fn map_of_pattern_disk_is_all_data() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "64M"]);
    assert_eq!(nbdinfo_map(server.uri()), [ext(0, 64 * MIB, 0)]);
}

fn sparse_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("sparse.img");
    write_sparse_file(&path, 16 * MIB, &[(4 * MIB, MIB), (10 * MIB, MIB / 2)]);
    path
}

#[test]
fn map_of_sparse_file_shows_its_holes() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let file = sparse_file(dir.path());
    let truth = seek_map(&file);
    assert!(
        truth.iter().any(|e| e.kind == 3),
        "host file system made no holes: {truth:?}"
    );
    let server = Server::disksynth_unix(dir.path(), &["file", file.to_str().unwrap()]);

    let map = nbdinfo_map(server.uri());

    assert_eq!(
        map, truth,
        "disksynth map vs SEEK_DATA/SEEK_HOLE of the file"
    );
}

#[test]
fn map_of_sparse_file_agrees_with_nbdkit_file() {
    require_tool!("nbdinfo", "nbdkit");
    let dir = tempdir();
    let file = sparse_file(dir.path());
    let reference = Server::nbdkit(dir.path(), &["file", file.to_str().unwrap()]);
    let ours = Server::disksynth_unix(dir.path(), &["file", file.to_str().unwrap()]);

    let expected = nbdinfo_map(reference.uri());
    let got = nbdinfo_map(ours.uri());

    assert!(expected.len() >= 5, "nbdkit saw no holes: {expected:?}");
    assert_eq!(got, expected, "disksynth vs nbdkit file");
}

#[test]
fn map_of_memory_disk_written_beyond_4gib() {
    require_tool!("nbdinfo", "qemu-io");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "8G"]);
    qemu_io(server.uri(), &["write -P 0x5a 5G 1M"]);

    let map = nbdinfo_map(server.uri());

    let g = 1024 * MIB;
    assert_eq!(
        map,
        [
            ext(0, 5 * g, 3),
            ext(5 * g, MIB, 0),
            ext(5 * g + MIB, 3 * g - MIB, 3)
        ]
    );
}

#[test]
fn map_of_odd_sized_memory_disk_ends_at_its_size() {
    require_tool!("nbdinfo", "qemu-io");
    let dir = tempdir();
    // 10,000,001 bytes: not a multiple of any page size the memory disk may use.
    let server = Server::disksynth_unix(dir.path(), &["memory", "10000001"]);
    qemu_io(server.uri(), &["write -P 0x11 4096 512"]);

    let map = nbdinfo_map(server.uri());

    assert_eq!(map.last().map(Extent::end), Some(10_000_001), "{map:?}");
    assert_eq!(
        map.last().map(|e| e.kind),
        Some(3),
        "unwritten tail is not a hole: {map:?}"
    );
    assert!(
        map.iter()
            .any(|e| e.kind == 0 && e.offset <= 4096 && e.end() >= 4608),
        "written bytes not reported as data: {map:?}"
    );
    assert!(map.iter().any(|e| e.kind == 3), "no hole reported: {map:?}");
}
