//! Logs and progress people can use (issue 18, part 1): `-v`/`-vv` say what the help says
//! (connections; every request, seen by a real client's reads), `-q` silences all but errors,
//! `RUST_LOG` overrides both, text lines carry timestamps, `--log-format json` gives one parsable
//! object per line (a hostile export name included), `--log-file` appends, and `--progress`
//! prints lines with an honest ETA when stderr is a pipe.

use std::fs;
use std::process::Command;
use std::time::Duration;

use disksynth_tests::{disksynth, require_tool, run_ok, tempdir, unix_uri, Server};

fn is_timestamped(line: &str) -> bool {
    // [2026-12-03T09:50:50.719Z INFO ] ...
    let b = line.as_bytes();
    b.len() > 26
        && b[0] == b'['
        && b[5] == b'-'
        && b[8] == b'-'
        && b[11] == b'T'
        && b[24] == b'Z'
        && line[1..5].bytes().all(|c| c.is_ascii_digit())
}

#[test]
fn vv_logs_every_request_and_v_only_connections() {
    require_tool!("nbdcopy");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "3M", "-vv"]);
    let uri = unix_uri(&dir.path().join("sock"));
    run_ok(Command::new("nbdcopy").args(["--request-size=1048576", &uri, "null:"]));
    assert!(
        server.wait_stderr_contains(
            "NBD_CMD_READ at 2097152+1048576: replied in",
            Duration::from_secs(10)
        ),
        "-vv does not show the reads:\n{}",
        server.stderr_text()
    );
    let text = server.stderr_text();
    for line in text.lines() {
        assert!(is_timestamped(line), "line without a timestamp: {line:?}");
    }
    drop(server);

    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "3M", "-v"]);
    let uri = unix_uri(&dir.path().join("sock"));
    run_ok(Command::new("nbdcopy").args([&uri, "null:"]));
    assert!(
        server.wait_stderr_contains("handshake done", Duration::from_secs(10)),
        "-v does not show the connection:\n{}",
        server.stderr_text()
    );
    let text = server.stderr_text();
    assert!(!text.contains("NBD_CMD_READ"), "-v shows requests:\n{text}");
}

#[test]
fn quiet_keeps_errors_only_and_rust_log_overrides_it() {
    let dir = tempdir();
    let out = dir.path().join("a.img");
    // -v would say what was written; -q says nothing at all.
    let quiet = run_ok(
        disksynth()
            .args(["pattern", "1M", "-v", "-q", "-o"])
            .arg(&out),
    );
    assert_eq!(quiet.stderr_str(), "", "-q printed something");
    // Errors still get through.
    let bad = disksynth()
        .args(["-q", "file", "/nonexistent/disk.img", "-o"])
        .arg(&out)
        .output()
        .expect("running disksynth");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no such file"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // RUST_LOG has the last word.
    let loud = run_ok(
        disksynth()
            .env("RUST_LOG", "info")
            .args(["pattern", "1M", "-q", "-o"])
            .arg(&out),
    );
    assert!(
        loud.stderr_str().contains("wrote 1.0 MiB"),
        "{}",
        loud.stderr_str()
    );
}

#[test]
fn json_lines_parse_even_with_a_hostile_export_name() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let server = Server::disksynth_unix(
        dir.path(),
        &["pattern", "1M", "-vv", "--log-format", "json"],
    );
    // An export name with a quote, a newline and a backslash, as a client may send it: logged
    // in the refusal, it must stay inside its JSON string.
    let sock = dir.path().join("sock");
    let nasty = "x%22%0A%5C%7B%22level%22:%22ERROR%22%7D";
    let _ = Command::new("nbdinfo")
        .arg(format!("nbd+unix:///{nasty}?socket={}", sock.display()))
        .output();
    run_ok(Command::new("nbdinfo").arg(unix_uri(&sock)));
    assert!(
        server.wait_stderr_contains("handshake done", Duration::from_secs(10)),
        "{}",
        server.stderr_text()
    );
    let text = server.stderr_text();
    let mut n = 0;
    let mut named = false;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        let obj = v.as_object().expect("an object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{line}");
        for k in ["time", "level", "target", "message"] {
            assert!(obj[k].is_string(), "{k} in {line}");
        }
        assert_ne!(obj["level"], "ERROR", "a forged level: {line}");
        // The server quotes client strings itself ({:?}); JSON escapes that again.
        named |= obj["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"no export named "x\"\n\\{\"level\""#));
        n += 1;
    }
    assert!(n >= 3, "only {n} lines:\n{text}");
    assert!(named, "the hostile name is not in the log:\n{text}");
}

#[test]
fn log_file_gets_the_lines_and_is_appended_to() {
    let dir = tempdir();
    let log = dir.path().join("disksynth.log");
    let out = dir.path().join("a.img");
    for _ in 0..2 {
        let o = run_ok(
            disksynth()
                .args(["pattern", "1M", "-v", "-o"])
                .arg(&out)
                .arg("--log-file")
                .arg(&log),
        );
        assert_eq!(o.stderr_str(), "", "logged to stderr despite --log-file");
    }
    let text = fs::read_to_string(&log).expect("the log file");
    assert_eq!(text.matches("wrote 1.0 MiB").count(), 2, "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file:\n{text}");
    // A log file that cannot be opened is an error before anything is done.
    let bad = disksynth()
        .args(["pattern", "1M", "-o"])
        .arg(dir.path().join("b.img"))
        .args(["--log-file", "/nonexistent/dir/x.log"])
        .output()
        .expect("running disksynth");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("opening the log file /nonexistent/dir/x.log"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!dir.path().join("b.img").exists(), "wrote the image anyway");
}

#[test]
fn progress_lines_when_stderr_is_a_pipe_count_data_not_holes() {
    let dir = tempdir();
    let out = dir.path().join("a.img");
    // A pipe: no bar by default.
    let plain = run_ok(disksynth().args(["pattern", "8M", "-o"]).arg(&out));
    assert_eq!(plain.stderr_str(), "");
    // --progress: lines, ending with where the job stopped.
    let p = run_ok(
        disksynth()
            .args(["pattern", "8M", "--progress", "-o"])
            .arg(&out),
    );
    assert!(
        p.stderr_str().contains("100% (8.0 MiB of 8.0 MiB of data)"),
        "{}",
        p.stderr_str()
    );
    // A sparse disk: its holes are not counted as work (the ETA would race through them).
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("f.bin"), vec![7u8; 3 << 20]).unwrap();
    let p = run_ok(
        disksynth()
            .arg("ext4")
            .arg(&tree)
            .args(["--size", "256M", "--progress", "-o"])
            .arg(&out),
    );
    let line = p
        .stderr_str()
        .lines()
        .find(|l| l.contains("% ("))
        .unwrap_or_else(|| panic!("no progress line: {}", p.stderr_str()))
        .to_owned();
    assert!(line.contains("100% ("), "{line}");
    assert!(!line.contains("of 256.0 MiB"), "counted the holes: {line}");
    let zero = run_ok(
        disksynth()
            .args(["zero", "1G", "--progress", "-o"])
            .arg(&out),
    );
    assert!(
        zero.stderr_str().contains("no data, only holes"),
        "{}",
        zero.stderr_str()
    );
    // --no-progress wins; both at once is a usage error.
    let none = run_ok(
        disksynth()
            .args(["pattern", "8M", "--no-progress", "-o"])
            .arg(&out),
    );
    assert_eq!(none.stderr_str(), "");
    let both = disksynth()
        .args(["pattern", "8M", "--progress", "--no-progress", "-o"])
        .arg(&out)
        .output()
        .expect("running disksynth");
    assert!(!both.status.success());
}
