//! qemu-img and qemu-io against disksynth, over Unix sockets and TCP.

use std::fs;
use std::process::Command;

use disksynth_tests::{
    pattern, qemu_io, qemu_io_transfers, qemu_io_unchecked, random_bytes, require_tool, run,
    run_ok, tempdir, Server, CMD_TIMEOUT, MIB,
};
use serde_json::Value;

fn qemu_img_info_size(uri: &str) -> u64 {
    let out = run_ok(Command::new("qemu-img").args(["info", "--output=json", "-f", "raw", uri]));
    let v: Value = serde_json::from_slice(&out.stdout).expect("qemu-img info JSON");
    v["virtual-size"]
        .as_u64()
        .unwrap_or_else(|| panic!("no virtual-size\n{}", out.describe()))
}

fn convert_file_export_round_trip(tcp: bool) {
    require_tool!("qemu-img");
    let dir = tempdir();
    let src = dir.path().join("random.img");
    let data = random_bytes(1, 8 * MIB as usize);
    fs::write(&src, &data).unwrap();
    let args = ["file", src.to_str().unwrap()];
    let server = if tcp {
        Server::disksynth_tcp(&args)
    } else {
        Server::disksynth_unix(dir.path(), &args)
    };

    assert_eq!(qemu_img_info_size(server.uri()), 8 * MIB);
    let out = dir.path().join("out.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", server.uri()])
            .arg(&out),
    );

    assert!(
        fs::read(&out).unwrap() == data,
        "converted image differs from the served file"
    );
}

#[test]
fn qemu_img_convert_of_file_export_is_byte_identical_over_unix() {
    convert_file_export_round_trip(false);
}

#[test]
fn qemu_img_convert_of_file_export_is_byte_identical_over_tcp() {
    convert_file_export_round_trip(true);
}

fn compare_pattern_export(tcp: bool) {
    require_tool!("qemu-img");
    let dir = tempdir();
    let local = dir.path().join("pattern.img");
    let mut expected = pattern(0, 64 * MIB as usize);
    fs::write(&local, &expected).unwrap();
    let server = if tcp {
        Server::disksynth_tcp(&["pattern", "64M"])
    } else {
        Server::disksynth_unix(dir.path(), &["pattern", "64M"])
    };

    let same = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", server.uri()])
            .arg(&local),
    );
    assert!(
        same.stdout_str().contains("Images are identical"),
        "{}",
        same.describe()
    );

    // The comparison is meaningful: one changed byte deep in the image is found at its offset.
    let changed = 40 * MIB + 12345;
    expected[changed as usize] ^= 0xff;
    fs::write(&local, &expected).unwrap();
    let diff = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", server.uri()])
            .arg(&local),
        CMD_TIMEOUT,
    );
    assert_eq!(diff.status.code(), Some(1), "{}", diff.describe());
    // qemu-img compare reports the start of the 512-byte sector that differs.
    assert!(
        diff.stdout_str()
            .contains(&format!("Content mismatch at offset {}!", changed & !511)),
        "{}",
        diff.describe()
    );
}

#[test]
fn qemu_img_compare_pattern_export_equals_local_pattern_over_unix() {
    compare_pattern_export(false);
}

#[test]
fn qemu_img_compare_pattern_export_equals_local_pattern_over_tcp() {
    compare_pattern_export(true);
}

#[test]
fn tcp_uri_names_loopback_and_real_port() {
    require_tool!("nbdinfo");
    let server = Server::disksynth_tcp(&["zero", "1M"]);
    let port = server
        .uri()
        .strip_prefix("nbd://127.0.0.1:")
        .unwrap_or_else(|| panic!("TCP URI {:?} is not nbd://127.0.0.1:PORT", server.uri()));
    let port: u16 = port.trim_end_matches('/').parse().expect("numeric port");
    assert_ne!(port, 0);
    assert_eq!(disksynth_tests::nbdinfo_size(server.uri()), MIB);
}

#[test]
fn qemu_io_writes_read_back_on_memory_disk() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let out = qemu_io(
        server.uri(),
        &[
            "write -P 0xab 0 64k",
            "write -P 0xcd 1049088 4k",   // 1 MiB + 512: unaligned
            "write -P 0xef 67043328 64k", // last 64 KiB
            "read -P 0xab 0 64k",
            "read -P 0xcd 1049088 4k",
            "read -P 0xef 67043328 64k",
            "read -P 0 64k 960k",
            "read -P 0 1048576 512",
            "read -P 0 1053184 1m",
        ],
    );
    assert_eq!(qemu_io_transfers(&out).len(), 9, "{}", out.describe());
    // Writes are visible to a second connection (one device shared by all clients).
    qemu_io(
        server.uri(),
        &["read -P 0xcd 1049088 4k", "read -P 0xef 67043328 64k"],
    );
}

#[test]
fn qemu_io_write_zeroes_and_discard_read_back_zeros() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let out = qemu_io(
        server.uri(),
        &[
            "write -P 0xab 0 1m",
            "write -z 0 64k",
            "read -P 0 0 64k",
            "read -P 0xab 64k 960k",
            "discard 512k 512k",
            "read -P 0 512k 512k",
            "read -P 0xab 64k 448k",
        ],
    );
    let text = out.stdout_str();
    assert!(
        text.contains("discard 524288/524288 bytes at offset 524288"),
        "{}",
        out.describe()
    );
    assert_eq!(qemu_io_transfers(&out).len(), 6, "{}", out.describe());
}

#[test]
fn qemu_io_concurrent_aio_writes_then_flush_read_back() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let mut cmds: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "aio_write -P 0x{:02x} {} 64k",
                0x11 * (i + 1),
                i * 3 * 65536 + 512
            )
        })
        .collect();
    cmds.push("aio_flush".into());
    cmds.extend((0..8).map(|i| {
        format!(
            "read -P 0x{:02x} {} 64k",
            0x11 * (i + 1),
            i * 3 * 65536 + 512
        )
    }));
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();

    let out = qemu_io(server.uri(), &cmds);

    let lines = qemu_io_transfers(&out);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("wrote 65536/65536"))
            .count(),
        8,
        "{}",
        out.describe()
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("read 65536/65536"))
            .count(),
        8,
        "{}",
        out.describe()
    );
}

#[test]
fn qemu_io_reads_the_whole_memory_disk_as_zeros() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let out = qemu_io(server.uri(), &["read -P 0 0 64M"]);
    assert!(
        out.stdout_str()
            .contains("read 67108864/67108864 bytes at offset 0"),
        "{}",
        out.describe()
    );
}

#[test]
fn qemu_io_reports_pattern_mismatch() {
    // Guards the helpers above: a wrong expected pattern must be detected.
    require_tool!("qemu-io");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let out = qemu_io_unchecked(server.uri(), &["write -P 0xab 0 4k", "read -P 0xcd 0 4k"]);
    assert!(
        out.stdout_str().contains("Pattern verification failed"),
        "{}",
        out.describe()
    );
}

#[test]
fn qemu_io_writes_to_file_export_with_rw_reach_the_host_file() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let path = dir.path().join("host.img");
    let mut data = random_bytes(5, 4 * MIB as usize);
    fs::write(&path, &data).unwrap();
    let server = Server::disksynth_unix(dir.path(), &["file", path.to_str().unwrap(), "--rw"]);

    qemu_io(server.uri(), &["write -P 0x99 1M 64k", "flush"]);
    drop(server);

    data[MIB as usize..MIB as usize + 65536].fill(0x99);
    assert!(
        fs::read(&path).unwrap() == data,
        "host file does not hold exactly the write"
    );
}

#[test]
fn private_unix_socket_with_dash_serves() {
    require_tool!("qemu-img");
    let server = Server::disksynth(&["pattern", "1M", "-U", "-"]);
    let sock = server
        .uri()
        .strip_prefix("nbd+unix:///?socket=")
        .unwrap_or_else(|| panic!("-U - printed {:?}", server.uri()))
        .to_string();
    assert!(
        std::path::Path::new(&sock).exists(),
        "socket {sock} does not exist"
    );
    assert_eq!(qemu_img_info_size(server.uri()), MIB);
}
