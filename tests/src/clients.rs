//! Thin wrappers around the real NBD clients the tests drive.

use std::process::Command;

use serde_json::Value;

use crate::data::{coalesce, parse_map, Extent};
use crate::process::{run, run_ok, Output, CMD_TIMEOUT};

/// `qemu-io -f raw -c CMD... URI`; panics unless it exits 0 and no command reported a failure
/// (qemu-io prints e.g. `write failed: ...` or `Pattern verification failed at offset ...`).
pub fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    let out = qemu_io_unchecked(uri, cmds);
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        out.status.success() && !all.contains("failed") && !all.contains("error"),
        "qemu-io reported a failure\n{}",
        out.describe()
    );
    out
}

/// `qemu-io -r -f raw -c CMD... URI` (read-only: for exports that refuse writes), unchecked.
pub fn qemu_io_readonly(uri: &str, cmds: &[&str]) -> Output {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-r", "-f", "raw"]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    run(cmd.arg(uri), CMD_TIMEOUT)
}

/// Copies the whole export into a local file with nbdcopy.
pub fn nbdcopy_to(uri: &str, to: &std::path::Path) {
    run_ok(Command::new("nbdcopy").arg(uri).arg(to));
}

/// `qemu-io -f raw -c CMD... URI` without checking the result.
pub fn qemu_io_unchecked(uri: &str, cmds: &[&str]) -> Output {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    cmd.arg(uri);
    run(&mut cmd, CMD_TIMEOUT)
}

/// Lines of qemu-io output that report a completed transfer (`read N/N bytes at offset O`,
/// `wrote N/N bytes ...`).
pub fn qemu_io_transfers(out: &Output) -> Vec<String> {
    out.stdout_str()
        .lines()
        .filter(|l| l.starts_with("read ") || l.starts_with("wrote "))
        .map(str::to_string)
        .collect()
}

/// The first export object of `nbdinfo --json --no-content URI`.
pub fn nbdinfo_json(uri: &str) -> Value {
    let out = run_ok(Command::new("nbdinfo").args(["--json", "--no-content", uri]));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --json output is not JSON: {e}\n{}", out.describe()));
    v["exports"][0].clone()
}

/// `nbdinfo --list --json URI`, the whole document.
pub fn nbdinfo_list_json(uri: &str) -> Value {
    let out = run_ok(Command::new("nbdinfo").args(["--list", "--json", "--no-content", uri]));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --list --json is not JSON: {e}\n{}", out.describe()))
}

/// `nbdinfo --map URI`, parsed and coalesced.
pub fn nbdinfo_map(uri: &str) -> Vec<Extent> {
    let out = run_ok(Command::new("nbdinfo").args(["--map", uri]));
    coalesce(&parse_map(&out.stdout_str()))
}

/// `nbdinfo --size URI`.
pub fn nbdinfo_size(uri: &str) -> u64 {
    let out = run_ok(Command::new("nbdinfo").args(["--size", uri]));
    out.stdout_str()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("nbdinfo --size: {e}\n{}", out.describe()))
}

/// The value of `key=` in a whitespace-separated `k=v` line of script output whose first word
/// (or whole prefix) is `prefix`, e.g. `field(&out, "read_past_end", "errno")`.
pub fn field(text: &str, prefix: &str, key: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(prefix) || l.starts_with(prefix))?;
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}
