//! fio through libnbd (ioengine=nbd): random writes at queue depth 16, then verify.

use std::fs;
use std::process::Command;

use disksynth_tests::{require_tool, run_ok, tempdir, Server};
use serde_json::Value;

#[test]
fn fio_random_writes_verify_on_memory_disk() {
    require_tool!("fio");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let report = dir.path().join("fio.json");

    run_ok(
        Command::new("fio")
            .current_dir(dir.path())
            .args([
                "--name=verify",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--size=16M",
            ])
            .args([
                "--iodepth=16",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_state_save=0",
            ])
            .args(["--output-format=json", "--max-jobs=1"])
            .arg(format!("--uri={}", server.uri()))
            .arg(format!("--output={}", report.display())),
    );

    let json: Value = serde_json::from_slice(&fs::read(&report).unwrap()).expect("fio JSON");
    let job = &json["jobs"][0];
    assert_eq!(job["error"].as_u64(), Some(0), "{job:#}");
    assert_eq!(job["write"]["io_bytes"].as_u64(), Some(16 << 20), "{job:#}");
    assert_eq!(
        job["read"]["io_bytes"].as_u64(),
        Some(16 << 20),
        "verify pass read back: {job:#}"
    );
}
