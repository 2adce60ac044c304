//! nbdinfo --json / --list: sizes, flags, block sizes, export names.

use std::fs;

use disksynth_tests::{
    nbdinfo_json, nbdinfo_list_json, nbdinfo_size, random_bytes, require_tool, tempdir, Server, MIB,
};
use serde_json::Value;

const WRITE_FLAGS: [&str; 5] = [
    "can_trim",
    "can_zero",
    "can_fast_zero",
    "can_flush",
    "can_fua",
];
const ALWAYS_FLAGS: [&str; 3] = ["can_multi_conn", "can_cache", "can_df"];

fn flag(export: &Value, name: &str) -> bool {
    export[name]
        .as_bool()
        .unwrap_or_else(|| panic!("nbdinfo has no boolean {name}: {export:#}"))
}

fn assert_flags(export: &Value, writable: bool) {
    assert_eq!(
        flag(export, "is_read_only"),
        !writable,
        "is_read_only in {export:#}"
    );
    for name in WRITE_FLAGS {
        assert_eq!(flag(export, name), writable, "{name} in {export:#}");
    }
    for name in ALWAYS_FLAGS {
        assert!(flag(export, name), "{name} in {export:#}");
    }
}

fn assert_block_sizes(export: &Value) {
    assert_eq!(export["block_size_minimum"].as_u64(), Some(1), "{export:#}");
    assert_eq!(
        export["block_size_preferred"].as_u64(),
        Some(4096),
        "{export:#}"
    );
    assert_eq!(
        export["block_size_maximum"].as_u64(),
        Some(33_554_432),
        "{export:#}"
    );
}

fn served_file(dir: &std::path::Path) -> String {
    let path = dir.join("disk.img");
    fs::write(&path, random_bytes(2, 3 * MIB as usize)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn nbdinfo_file_export_is_read_only() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let file = served_file(dir.path());
    let server = Server::disksynth_unix(dir.path(), &["file", &file]);
    let export = nbdinfo_json(server.uri());
    assert_eq!(export["export-size"].as_u64(), Some(3 * MIB));
    assert_flags(&export, false);
    assert_block_sizes(&export);
}

#[test]
fn nbdinfo_file_export_with_rw_is_writable() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let file = served_file(dir.path());
    let server = Server::disksynth_unix(dir.path(), &["file", &file, "--rw"]);
    let export = nbdinfo_json(server.uri());
    assert_eq!(export["export-size"].as_u64(), Some(3 * MIB));
    assert_flags(&export, true);
    assert_block_sizes(&export);
}

#[test]
fn nbdinfo_memory_export_is_writable() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let export = nbdinfo_json(server.uri());
    assert_eq!(export["export-size"].as_u64(), Some(64 * MIB));
    assert_flags(&export, true);
    assert_block_sizes(&export);
    assert!(
        export["contexts"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "base:allocation")),
        "base:allocation not offered: {export:#}"
    );
}

#[test]
fn nbdinfo_memory_export_with_readonly_flag_is_read_only() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M", "-r"]);
    assert_flags(&nbdinfo_json(server.uri()), false);
}

#[test]
fn nbdinfo_zero_and_pattern_exports_are_read_only() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let zero = Server::disksynth_unix(dir.path(), &["zero", "1G"]);
    let zero_info = nbdinfo_json(zero.uri());
    drop(zero);
    let dir2 = tempdir();
    let pattern = Server::disksynth_unix(dir2.path(), &["pattern", "1.5G"]);
    let pattern_info = nbdinfo_json(pattern.uri());

    assert_eq!(zero_info["export-size"].as_u64(), Some(1 << 30));
    assert_flags(&zero_info, false);
    assert_eq!(pattern_info["export-size"].as_u64(), Some(3 << 29));
    assert_flags(&pattern_info, false);
}

#[test]
fn nbdinfo_sees_export_name_over_unix() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "2M", "-e", "disk1"]);
    let sock = dir.path().join("sock");
    assert_eq!(
        server.uri(),
        format!("nbd+unix:///disk1?socket={}", sock.display())
    );

    let export = nbdinfo_json(server.uri());
    assert_eq!(export["export-name"], "disk1");
    assert_eq!(export["export-size"].as_u64(), Some(2 * MIB));
    // The empty name reaches the export too.
    assert_eq!(
        nbdinfo_size(&format!("nbd+unix:///?socket={}", sock.display())),
        2 * MIB
    );
}

#[test]
fn nbdinfo_sees_export_name_over_tcp() {
    require_tool!("nbdinfo");
    let server = Server::disksynth_tcp(&["zero", "2M", "-e", "disk2"]);
    assert!(
        server.uri().starts_with("nbd://127.0.0.1:") && server.uri().ends_with("/disk2"),
        "URI {:?} should be nbd://127.0.0.1:PORT/disk2",
        server.uri()
    );
    let export = nbdinfo_json(server.uri());
    assert_eq!(export["export-name"], "disk2");
    assert_eq!(export["export-size"].as_u64(), Some(2 * MIB));
}

#[test]
fn nbdinfo_list_shows_the_export_name() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "4M", "-e", "listed"]);
    let list = nbdinfo_list_json(server.uri());
    let exports = list["exports"]
        .as_array()
        .unwrap_or_else(|| panic!("no exports: {list:#}"));
    let listed = exports
        .iter()
        .find(|e| e["export-name"] == "listed")
        .unwrap_or_else(|| panic!("export \"listed\" not in nbdinfo --list: {list:#}"));
    assert_eq!(listed["export-size"].as_u64(), Some(4 * MIB));
    assert_eq!(listed["is_read_only"], true);
}
