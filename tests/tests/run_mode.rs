//! `--run CMD`: captive mode with $uri, $nbd and $unixsocket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use disksynth_tests::{disksynth, require_tool, run, run_ok, Server, CMD_TIMEOUT};

#[test]
fn run_gives_the_command_a_working_uri() {
    require_tool!("nbdinfo");
    let out = run_ok(disksynth().args(["pattern", "1M", "--run", "nbdinfo --size \"$uri\""]));
    assert_eq!(
        out.stdout_str(),
        "1048576\n",
        "stdout must hold only the command's output"
    );
}

#[test]
fn run_exits_with_the_command_status() {
    let out = run(
        disksynth().args(["memory", "1M", "--run", "exit 7"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(7), "{}", out.describe());
}

#[test]
fn run_exports_nbd_and_unixsocket() {
    let script = r#"test -S "$unixsocket" || exit 3
test "$nbd" = "$uri" || exit 4
printf '%s\n%s\n' "$uri" "$unixsocket""#;
    let out = run_ok(disksynth().args(["zero", "1M", "--run", script]));
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.describe());
    assert!(!lines[1].is_empty(), "{}", out.describe());
    // nbd+unix:///?socket=PATH (empty export name; `nbd+unix://?socket=` is the same URI).
    let socket = lines[0]
        .strip_prefix("nbd+unix:///?socket=")
        .or_else(|| lines[0].strip_prefix("nbd+unix://?socket="));
    assert_eq!(
        socket,
        Some(lines[1]),
        "$uri does not name $unixsocket\n{}",
        out.describe()
    );
}

#[test]
fn run_shares_one_memory_device_between_connections() {
    require_tool!("qemu-io");
    let script = r#"qemu-io -f raw -c 'write -P 0x77 4096 64k' "$uri" >/dev/null &&
qemu-io -f raw -c 'read -P 0x77 4096 64k' "$uri""#;
    let out = run(
        disksynth().args(["memory", "16M", "--run", script]),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout_str()
            .contains("read 65536/65536 bytes at offset 4096")
            && !out.stdout_str().contains("verification failed"),
        "{}",
        out.describe()
    );
}

/// A directory named `name` (removed with the returned TempDir).
fn awkward_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let base = disksynth_tests::tempdir();
    let dir = base.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    (base, dir)
}

/// `disksynth pattern 1M -v -U DIR/s.sock`.
fn serve_in(dir: &Path) -> Server {
    let mut cmd = disksynth();
    cmd.args(["pattern", "1M", "-v", "-U"])
        .arg(dir.join("s.sock"));
    Server::spawn(cmd)
}

/// `-U PATH` with a space, `&`, `#`, `%` and `?` in PATH: the printed URI (stdout and the log)
/// is percent-encoded, so libnbd (nbdinfo) parses it and reaches the socket, and the printed
/// qemu line works too. Before, the raw path split the URI's query.
#[test]
fn unix_socket_paths_with_awkward_characters_give_a_working_uri() {
    require_tool!("nbdinfo", "qemu-img");
    let (_base, dir) = awkward_dir("dir with space & #%?");
    let server = serve_in(&dir);
    let uri = server.uri().to_string();
    assert!(
        uri.contains("%20") && uri.contains("%26") && uri.contains("%23"),
        "{uri}"
    );
    let size = run_ok(Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(size.stdout_str(), "1048576\n");
    assert!(
        server.stderr_text().contains(&format!("serving {uri}")),
        "the log names another URI: {}",
        server.stderr_text()
    );
    // qemu (10.0) decodes a URI's query twice, so no URI can carry `&` or `%` to it: the
    // printed qemu line uses its option syntax instead. Checked with qemu-img.
    let qemu = server.wait_stdout_lines(1, Duration::from_secs(5));
    let drive = qemu[0]
        .strip_prefix("qemu-system-x86_64 -drive ")
        .and_then(|d| d.strip_suffix(",if=virtio"))
        .unwrap_or_else(|| panic!("{qemu:?}"));
    let info =
        run_ok(Command::new("qemu-img").args(["info", "--output=json", "--image-opts", drive]));
    assert!(
        info.stdout_str().contains("\"virtual-size\": 1048576"),
        "{}",
        info.describe()
    );
}

/// A socket path with a space, `#`, `?` and `;`: qemu takes the URI itself.
#[test]
fn qemu_parses_the_uri_of_a_socket_path_with_spaces() {
    require_tool!("qemu-img");
    let (_base, dir) = awkward_dir("a dir #1?;x");
    let server = serve_in(&dir);
    let info = run_ok(Command::new("qemu-img").args(["info", "--output=json", server.uri()]));
    assert!(
        info.stdout_str().contains("\"virtual-size\": 1048576"),
        "{}",
        info.describe()
    );
    let qemu = server.wait_stdout_lines(1, Duration::from_secs(5));
    assert!(
        qemu[0].contains(&format!("file={},", server.uri())),
        "{qemu:?}"
    );
}

/// The same for `--run`: `$uri` is encoded while `$unixsocket` is the plain path.
#[test]
fn run_gives_a_working_uri_in_an_awkward_tmpdir() {
    require_tool!("nbdinfo");
    let (_base, dir) = awkward_dir("dir with space & #%?");
    let out = run_ok(
        disksynth()
            .args([
                "pattern",
                "1M",
                "--run",
                r#"case "$unixsocket" in *" & #%?"*) ;; *) exit 3 ;; esac; nbdinfo --size "$uri""#,
            ])
            .env("TMPDIR", &dir),
    );
    assert_eq!(out.stdout_str(), "1048576\n", "{}", out.describe());
}
