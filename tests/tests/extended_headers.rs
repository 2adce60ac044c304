//! NBD_OPT_EXTENDED_HEADERS: qemu 10 negotiates it, libnbd 1.14 does not. `-v` logs which.

use std::process::Command;
use std::time::Duration;

use disksynth_tests::{nbdinfo_size, qemu_io, require_tool, run_ok, tempdir, Server, MIB};
use serde_json::Value;

const LOG_WAIT: Duration = Duration::from_secs(5);

/// `qemu-img map --output=json` coalesced into (start, length, data, zero).
fn qemu_img_map(uri: &str) -> Vec<(u64, u64, bool, bool)> {
    let out = run_ok(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", uri]));
    let v: Value = serde_json::from_slice(&out.stdout).expect("qemu-img map JSON");
    let mut map: Vec<(u64, u64, bool, bool)> = Vec::new();
    for e in v
        .as_array()
        .unwrap_or_else(|| panic!("not an array\n{}", out.describe()))
    {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        let data = e["data"].as_bool().unwrap();
        let zero = e["zero"].as_bool().unwrap();
        match map.last_mut() {
            Some(last) if last.0 + last.1 == start && last.2 == data && last.3 == zero => {
                last.1 += len
            }
            _ => map.push((start, len, data, zero)),
        }
    }
    map
}

#[test]
fn qemu_negotiates_extended_headers_and_reads_correct_data() {
    require_tool!("qemu-io", "qemu-img");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M", "-v"]);

    qemu_io(server.uri(), &["write -P 0x5a 1M 1M"]);
    let out = qemu_io(
        server.uri(),
        &["read -P 0x5a 1M 1M", "read -P 0 0 64k", "read -P 0 2M 62M"],
    );
    let map = qemu_img_map(server.uri());

    assert!(
        out.stdout_str()
            .contains("read 1048576/1048576 bytes at offset 1048576"),
        "{}",
        out.describe()
    );
    assert_eq!(
        map,
        [
            (0, MIB, false, true),
            (MIB, MIB, true, false),
            (2 * MIB, 62 * MIB, false, true)
        ],
        "qemu-img map over extended headers"
    );
    assert!(
        server.wait_stderr_contains("extended headers", LOG_WAIT),
        "server -v stderr lacks 'extended headers':\n{}",
        server.stderr_text()
    );
}

#[test]
fn libnbd_client_gets_structured_replies_without_extended_headers() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "1M", "-v"]);

    assert_eq!(nbdinfo_size(server.uri()), MIB);

    assert!(
        server.wait_stderr_contains("structured replies", LOG_WAIT),
        "server -v stderr lacks 'structured replies':\n{}",
        server.stderr_text()
    );
    assert!(
        !server.stderr_text().contains("extended headers"),
        "libnbd 1.14 cannot negotiate extended headers, yet the log says so:\n{}",
        server.stderr_text()
    );
}
