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
