//! Protocol details seen from real and misbehaving clients: every command with its flags,
//! 64-bit offsets, option negotiation (STARTTLS, LIST, unknown options) and broken clients.

use std::process::Command;

use disksynth_tests::{
    field, nbdinfo_size, python_script, require_tool, run, run_ok, tempdir, Output, Server,
    CMD_TIMEOUT, MIB,
};

fn assert_commands(out: &Output) {
    let text = out.stdout_str();
    for cmd in [
        "pwrite",
        "pwrite_fua",
        "flush",
        "cache",
        "pread_df",
        "zero_no_hole",
        "zero_fua",
        "trim",
    ] {
        assert!(
            text.lines().any(|l| l == format!("{cmd} ok")),
            "{cmd} not ok\n{}",
            out.describe()
        );
    }
    assert!(
        text.contains("zero_fast ok") || text.contains("zero_fast refused ENOTSUP"),
        "{}",
        out.describe()
    );
    // Block status of [base, base + 4M) relative to base: zeroed, then data, then holes.
    let status = text
        .lines()
        .find_map(|l| l.strip_prefix("status "))
        .expect("status line");
    let extents: Vec<(u64, u64, u32)> = status
        .split(',')
        .map(|e| {
            let (range, flags) = e.split_once(':').unwrap();
            let (off, len) = range.split_once('+').unwrap();
            (
                off.parse().unwrap(),
                len.parse().unwrap(),
                flags.parse().unwrap(),
            )
        })
        .collect();
    for &(off, len, flags) in &extents {
        let end = off + len;
        if end <= 192 * 1024 {
            assert!(
                flags & 2 != 0,
                "zeroed range {off}+{len} not reported zero: {status}"
            );
        } else if off >= 192 * 1024 && end <= MIB + 64 * 1024 {
            assert_eq!(flags, 0, "written range {off}+{len} not data: {status}");
        } else if off >= MIB + 64 * 1024 {
            assert_eq!(
                flags, 3,
                "unwritten/trimmed range {off}+{len} not hole+zero: {status}"
            );
        } else {
            panic!("extent {off}+{len} straddles a boundary: {status}");
        }
    }
}

#[test]
fn all_commands_and_flags_work_on_memory_disk() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "8G"]);
    assert_commands(&run_ok(python_script("commands.py").arg(server.uri())));
}

#[test]
fn all_commands_work_beyond_4gib() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "8G"]);
    assert_commands(&run_ok(python_script("commands.py").args([
        server.uri(),
        "--base",
        "5G",
    ])));
}

#[test]
fn all_commands_write_through_to_a_file_export_with_rw() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let file = dir.path().join("rw.img");
    std::fs::write(&file, vec![0u8; 8 * MIB as usize]).unwrap();
    let server = Server::disksynth_unix(dir.path(), &["file", file.to_str().unwrap(), "--rw"]);
    let out = run_ok(python_script("commands.py").arg(server.uri()));
    assert!(out.stdout_str().contains("trim ok"), "{}", out.describe());
    drop(server);
    // The data the script wrote last at [192K, 1M) is in the host file.
    let host = std::fs::read(&file).unwrap();
    assert!(
        host[192 * 1024..MIB as usize].iter().all(|&b| b != 0),
        "writes did not reach the file"
    );
}

#[test]
fn misbehaving_raw_clients_get_proper_replies_and_do_not_hurt_the_server() {
    require_tool!("python3-nbd", "nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "8G", "-e", "foo"]);
    let sock = dir.path().join("sock");

    let out = run_ok(python_script("raw_handshake.py").arg(&sock));

    let text = out.stdout_str();
    let get = |case: &str, key: &str| field(&text, case, key).unwrap_or_default();
    // fixed newstyle + NO_ZEROES
    assert_eq!(get("greeting", "flags"), "3", "{}", out.describe());
    assert_eq!(
        get("unknown_option", "reply"),
        "0x80000001",
        "NBD_REP_ERR_UNSUP\n{}",
        out.describe()
    );
    assert_eq!(
        get("starttls", "reply"),
        "0x80000002",
        "NBD_REP_ERR_POLICY\n{}",
        out.describe()
    );
    assert_eq!(get("list", "reply"), "0x1", "{}", out.describe());
    assert!(
        get("list", "names").split(',').any(|n| n == "'foo'"),
        "{}",
        out.describe()
    );
    assert_eq!(
        get("short_info", "reply"),
        "0x80000003",
        "NBD_REP_ERR_INVALID\n{}",
        out.describe()
    );
    assert!(
        matches!(get("abort", "reply").as_str(), "0x1" | "eof"),
        "{}",
        out.describe()
    );
    assert_eq!(get("bad_magic", "closed"), "yes", "{}", out.describe());
    assert_eq!(
        get("abandoned_read", "size"),
        (8u64 << 30).to_string(),
        "{}",
        out.describe()
    );
    assert_eq!(get("good_read", "error"), "0", "{}", out.describe());
    assert_eq!(get("good_read", "bytes"), "512", "{}", out.describe());
    assert_eq!(nbdinfo_size(server.uri()), 8 << 30);
}

#[test]
fn starttls_is_refused_and_libnbd_falls_back_to_plaintext() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["zero", "1M"]);
    // An nbds+unix:// URI makes libnbd require TLS: the server answers STARTTLS with
    // NBD_REP_ERR_POLICY, so the client must fail cleanly and the server must carry on.
    let tls_uri = server.uri().replacen("nbd+unix://", "nbds+unix://", 1);
    let out = run(
        Command::new("nbdinfo").args(["--size", &tls_uri]),
        CMD_TIMEOUT,
    );
    assert!(
        !out.status.success(),
        "TLS cannot be negotiated, yet nbdinfo succeeded\n{}",
        out.describe()
    );
    assert_eq!(nbdinfo_size(server.uri()), MIB);
}
