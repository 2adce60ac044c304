//! nbdcopy: local file -> memory export -> local file, single and multi-connection.

use std::fs;
use std::process::Command;

use disksynth_tests::{pattern, random_bytes, require_tool, run_ok, tempdir, Server, MIB};

fn round_trip(extra: &[&str]) {
    require_tool!("nbdcopy");
    let dir = tempdir();
    let src = dir.path().join("src.img");
    let data = random_bytes(3, 8 * MIB as usize);
    fs::write(&src, &data).unwrap();
    let server = Server::disksynth_unix(dir.path(), &["memory", "8M"]);
    let back = dir.path().join("back.img");

    run_ok(
        Command::new("nbdcopy")
            .args(extra)
            .arg(&src)
            .arg(server.uri()),
    );
    run_ok(
        Command::new("nbdcopy")
            .args(extra)
            .arg(server.uri())
            .arg(&back),
    );

    assert!(
        fs::read(&back).unwrap() == data,
        "nbdcopy {extra:?}: data changed in the round trip"
    );
}

#[test]
fn nbdcopy_file_to_memory_export_and_back_is_identical() {
    round_trip(&[]);
}

#[test]
fn nbdcopy_with_four_connections_round_trip_is_identical() {
    round_trip(&["--connections=4", "--requests=16"]);
}

#[test]
fn nbdcopy_of_pattern_export_with_four_connections_equals_pattern() {
    require_tool!("nbdcopy");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "32M"]);
    let out = dir.path().join("pattern.img");
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", server.uri()])
            .arg(&out),
    );
    assert!(
        fs::read(&out).unwrap() == pattern(0, 32 * MIB as usize),
        "nbdcopy of pattern differs"
    );
}

#[test]
fn odd_sized_pattern_disk_copies_exactly() {
    require_tool!("nbdcopy", "nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "4097"]);
    let out = dir.path().join("odd.img");

    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&out));

    assert_eq!(disksynth_tests::nbdinfo_size(server.uri()), 4097);
    assert!(
        fs::read(&out).unwrap() == pattern(0, 4097),
        "odd-sized copy differs"
    );
}
