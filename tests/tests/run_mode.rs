//! `--run CMD`: captive mode with $uri, $nbd and $unixsocket.

use std::time::Duration;

use disksynth_tests::{disksynth, require_tool, run, run_ok, CMD_TIMEOUT};

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
