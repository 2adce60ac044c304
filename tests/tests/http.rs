//! `disksynth http URL` against a misbehaving HTTP server, through NBD: every fault gives the
//! client the right bytes (retried) or a clean EIO, never wrong bytes, and the server keeps
//! serving.

use std::time::Duration;

use disksynth_tests::httpd::{Fault, FaultServer};
use disksynth_tests::{random_bytes, require_tool, run, tempdir, Output, Server, CMD_TIMEOUT};

const SIZE: usize = 8 << 20;

/// nbdsh (as `python3 -m nbd`, Debian's interpreter): read `len` bytes at `off` as hex (or
/// fail).
fn pread(uri: &str, off: usize, len: usize) -> Output {
    run(
        disksynth_tests::command(
            disksynth_tests::PYTHON,
            [
                "-m",
                "nbd",
                "-u",
                uri,
                "-c",
                &format!("import sys; sys.stdout.write(h.pread({len}, {off}).hex())"),
            ],
        )
        .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The read must succeed with exactly the file's bytes.
fn assert_reads(uri: &str, data: &[u8], off: usize, len: usize, what: &str) {
    let out = pread(uri, off, len);
    assert!(
        out.status.success(),
        "{what}: read failed: {}",
        out.describe()
    );
    assert!(
        out.stdout_str() == hex(&data[off..off + len]),
        "{what}: WRONG BYTES at {off}+{len}"
    );
}

/// The read must fail with an I/O error (and print no data).
fn assert_eio(uri: &str, off: usize, len: usize, what: &str) {
    let out = pread(uri, off, len);
    assert!(!out.status.success(), "{what}: the read succeeded");
    assert!(
        out.stderr_str().contains("Input/output error"),
        "{what}: not EIO: {}",
        out.describe()
    );
    assert!(out.stdout_str().is_empty(), "{what}: bytes were returned");
}

#[test]
fn faults_give_right_bytes_or_eio_and_the_server_keeps_serving() {
    require_tool!("nbdsh", "nbdinfo");
    let dir = tempdir();
    let data = random_bytes(31, SIZE);
    let web = FaultServer::start(data.clone());
    let url = web.url();
    // No read-ahead: each NBD read is one request, so each fault hits the read it is meant for.
    let server = Server::disksynth_unix(
        dir.path(),
        &[
            "http",
            &url,
            "--readahead",
            "0",
            "--retries",
            "3",
            "--timeout",
            "1",
        ],
    );
    let uri = server.uri().to_string();
    assert_reads(&uri, &data, 0, 65536, "no fault");

    let transient = [
        (Fault::Status503, "503 then OK"),
        (Fault::TruncatedBody, "truncated body"),
        (Fault::ResetConnection, "connection reset"),
        (
            Fault::Status429 {
                retry_after: Some("1".into()),
            },
            "429 with Retry-After: 1",
        ),
        (
            Fault::Stall(Duration::from_secs(3)),
            "a stall past the read timeout",
        ),
    ];
    for (i, (fault, what)) in transient.into_iter().enumerate() {
        let before = web.gets();
        web.fail_next(1, fault);
        assert_reads(&uri, &data, (i + 1) * 1_000_000 + 17, 40_000, what);
        assert!(
            web.gets() >= before + 2,
            "{what}: the fault was not hit and retried ({} GETs)",
            web.gets() - before
        );
    }

    // A wrong Content-Range is never served: EIO, then the next read is fine again.
    web.fail_every(Some((1, Fault::WrongContentRange)));
    assert_eio(&uri, 123_456, 4096, "wrong Content-Range");
    web.clear_faults();
    assert_reads(&uri, &data, 123_456, 4096, "after a wrong Content-Range");

    // Retries run out: EIO; the server still answers.
    web.fail_every(Some((1, Fault::Status503)));
    assert_eio(&uri, 7_000_000, 4096, "503 forever");
    web.clear_faults();
    assert_reads(&uri, &data, 7_000_000, 4096, "after 503s");

    // The file is replaced on the server: EIO naming the change, never the new bytes, while
    // the NBD server keeps answering (the size is still served).
    web.replace(random_bytes(32, SIZE));
    assert_eio(&uri, 0, 65536, "file replaced");
    assert_eio(&uri, 5_000_000, 4096, "file replaced, later read");
    let info = run(
        &mut disksynth_tests::command("nbdinfo", ["--size", &uri]),
        CMD_TIMEOUT,
    );
    assert!(
        info.status.success() && info.stdout_str().trim() == SIZE.to_string(),
        "the server stopped serving: {}",
        info.describe()
    );
    assert!(
        server.stderr_text().contains("changed") || server.stderr_text().contains("replaced"),
        "no log line about the change: {}",
        server.stderr_text()
    );
}
