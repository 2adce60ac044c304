//! Errors a user sees, and SIZE parsing.

use std::time::Duration;

use disksynth_tests::{disksynth, require_tool, run, run_ok, tempdir};

const QUICK: Duration = Duration::from_secs(20);

#[test]
fn file_that_does_not_exist_fails_naming_the_path() {
    let out = run(disksynth().args(["file", "/nonexistent", "--serve"]), QUICK);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains("/nonexistent"),
        "message should name the path\n{}",
        out.describe()
    );
}

#[test]
fn bad_size_fails_clearly_and_writes_nothing() {
    let dir = tempdir();
    let x = dir.path().join("x");
    let out = run(disksynth().args(["memory", "12Q", "-o"]).arg(&x), QUICK);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains("12Q"),
        "message should quote the bad size\n{}",
        out.describe()
    );
    assert!(!x.exists(), "output file created despite the error");
}

#[test]
fn missing_mode_is_a_usage_error() {
    let out = run(
        disksynth()
            .args(["memory", "1M"])
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS"),
        QUICK,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        !out.stderr_str().trim().is_empty(),
        "no message on stderr\n{}",
        out.describe()
    );
}

#[test]
fn unknown_mode_is_a_usage_error() {
    let out = run(disksynth().args(["no-such-mode", "1M", "-o", "-"]), QUICK);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.is_empty(),
        "nothing may be written to stdout\n{}",
        out.describe()
    );
}

#[test]
fn size_suffixes_are_powers_of_1024() {
    require_tool!("nbdinfo");
    let cases = [
        ("512", 512u64),
        ("4K", 4096),
        ("1M", 1 << 20),
        ("1MiB", 1 << 20),
        ("64KB", 64 << 10),
        ("1.5G", 3 << 29),
        ("2T", 2 << 40),
    ];
    for (size, bytes) in cases {
        let out = run_ok(disksynth().args(["zero", size, "--run", "nbdinfo --size \"$uri\""]));
        assert_eq!(out.stdout_str().trim(), bytes.to_string(), "SIZE {size}");
    }
}

#[test]
fn output_size_matches_the_size_argument() {
    let dir = tempdir();
    let out = dir.path().join("small.img");
    run_ok(disksynth().args(["pattern", "4K", "-o"]).arg(&out));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 4096);
}

/// Sizes are exact: a fraction is fine when it makes whole bytes, whatever its trailing zeros
/// (this was 6144), and a size past 2^63 - 1 is refused, not wrapped (this was 1024 bytes).
#[test]
fn sizes_are_exact_or_refused() {
    let dir = tempdir();
    let x = dir.path().join("x");
    run_ok(
        disksynth()
            .args(["memory", "1.5000000000000000000000000000000K", "-o"])
            .arg(&x),
    );
    assert_eq!(std::fs::metadata(&x).unwrap().len(), 1536);
    for size in [
        "332306998946228968225951765070086145K",
        "8E",
        "9223372036854775808",
    ] {
        let y = dir.path().join("y");
        let out = run(disksynth().args(["zero", size, "-o"]).arg(&y), QUICK);
        assert!(!out.status.success(), "{size}: {}", out.describe());
        assert!(
            out.stderr_str().contains("too large") && out.stderr_str().contains("2^63 - 1"),
            "{size}: {}",
            out.describe()
        );
        assert!(!y.exists(), "{size}: output written");
    }
    let out = run(disksynth().args(["zero", "1.1K", "-o", "-"]), QUICK);
    assert!(
        !out.status.success() && out.stderr_str().contains("not a whole number of bytes"),
        "{}",
        out.describe()
    );
}

/// The OS's reason is said once: causes come from the error chain, not from each message.
#[test]
fn a_missing_file_says_the_os_reason_once() {
    let out = run(
        disksynth()
            .args(["file", "/nonexistent/disk.img", "-o", "-"])
            .env("LC_ALL", "C"),
        QUICK,
    );
    assert!(!out.status.success(), "{}", out.describe());
    let err = out.stderr_str();
    assert_eq!(err.lines().count(), 1, "{}", out.describe());
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "{}",
        out.describe()
    );
    assert!(err.contains("/nonexistent/disk.img"), "{}", out.describe());
}

/// `-i` with an address this host does not have (TEST-NET-1) is a wrong address, not a busy
/// port: no "another NBD server" guess.
#[test]
fn listening_on_an_address_not_on_this_host_says_so() {
    let out = run(
        disksynth().args(["memory", "1M", "-i", "192.0.2.1", "-p", "0"]),
        QUICK,
    );
    assert!(!out.status.success(), "{}", out.describe());
    let err = out.stderr_str();
    assert!(
        err.contains("192.0.2.1 is not an address of this host"),
        "{}",
        out.describe()
    );
    assert!(!err.contains("another NBD server"), "{}", out.describe());
}

/// A port in use still suggests another server.
#[test]
fn listening_on_a_busy_port_suggests_another_server() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = run(
        disksynth().args(["memory", "1M", "-i", "127.0.0.1", "-p", &port]),
        QUICK,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains("another NBD server"),
        "{}",
        out.describe()
    );
}

/// `memory SIZE --rw` is accepted (memory disks are always writable) instead of clap's
/// "to pass '--rw' as a value, use '-- --rw'".
#[test]
fn memory_accepts_rw_and_is_writable() {
    require_tool!("qemu-io");
    let dir = tempdir();
    let server = disksynth_tests::Server::disksynth_unix(dir.path(), &["memory", "1G", "--rw"]);
    let out = disksynth_tests::qemu_io(
        server.uri(),
        &["write -P 0x5a 4096 64k", "read -P 0x5a 4096 64k"],
    );
    assert!(
        !out.stdout_str().contains("Pattern verification failed"),
        "{}",
        out.describe()
    );
}
