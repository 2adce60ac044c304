//! `disksynth tmpdisk`: every client gets a fresh empty filesystem (checked by e2fsck and
//! fsck.fat after copying it out with nbdcopy), clients never see each other's data, INFO makes
//! no disk, the disk space goes away at disconnect, `--command`, limits.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use disksynth_tests::{
    nbdcopy_to, python_script, require_tool, run, run_ok, tempdir, Output, Server, CMD_TIMEOUT, MIB,
};

fn start(dir: &Path, args: &[&str]) -> Server {
    let tmp = dir.join("disks");
    fs::create_dir_all(&tmp).unwrap();
    let mut all = vec!["tmpdisk"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", tmp.to_str().unwrap(), "-v"]);
    let sockdir = dir.join("sock.d");
    fs::create_dir_all(&sockdir).unwrap();
    Server::disksynth_unix(&sockdir, &all)
}

fn clients(mode: &str, uri: &str, args: &[&str]) -> Output {
    let mut cmd = python_script("tmpdisk_clients.py");
    cmd.arg(mode).arg(uri).args(args);
    let out = run(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success() && out.stdout_str().lines().any(|l| l == "ok"),
        "{}",
        out.describe()
    );
    out
}

/// Disks made so far, from the server log (`-v`).
fn disks_made(server: &Server) -> usize {
    server
        .stderr_text()
        .lines()
        .filter(|l| l.contains("tmpdisk #") && l.contains("ready in"))
        .count()
}

/// Bytes allocated by the server's open files in `dir` (the unlinked disks), via /proc.
fn disk_bytes_in(server: &Server, dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dir = fs::canonicalize(dir).unwrap();
    let mut total = 0;
    for fd in fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap() {
        let fd = fd.unwrap().path();
        let Ok(target) = fs::read_link(&fd) else {
            continue;
        };
        if target.starts_with(&dir) {
            if let Ok(m) = fs::metadata(&fd) {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[test]
fn two_clients_at_once_never_see_each_others_data() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let server = start(dir.path(), &["64M"]);
    clients("two", server.uri(), &[]);
    assert_eq!(disks_made(&server), 3, "{}", server.stderr_text());
}

#[test]
fn every_client_gets_a_clean_ext4_with_its_own_uuid() {
    require_tool!("nbdcopy", "e2fsck", "debugfs", "dumpe2fs");
    let dir = tempdir();
    let server = start(dir.path(), &["256M", "--label", "scratch"]);
    let mut uuids = BTreeSet::new();
    for i in 0..2 {
        let img = dir.path().join(format!("c{i}.img"));
        nbdcopy_to(server.uri(), &img);
        assert_eq!(fs::metadata(&img).unwrap().len(), 256 * MIB);
        let fsck = run(Command::new("e2fsck").args(["-fn"]).arg(&img), CMD_TIMEOUT);
        assert!(fsck.status.success(), "{}", fsck.describe());
        let ls = run_ok(Command::new("debugfs").args(["-R", "ls -l /"]).arg(&img));
        assert!(ls.stdout_str().contains("lost+found"), "{}", ls.describe());
        let head = run_ok(Command::new("dumpe2fs").arg("-h").arg(&img));
        let text = head.stdout_str();
        assert!(
            text.lines()
                .any(|l| l.starts_with("Filesystem volume name:") && l.ends_with("scratch")),
            "{text}"
        );
        let uuid = text
            .lines()
            .find_map(|l| l.strip_prefix("Filesystem UUID:"))
            .unwrap()
            .trim()
            .to_string();
        uuids.insert(uuid);
    }
    assert_eq!(uuids.len(), 2, "two clients got the same UUID");
}

#[test]
fn every_client_gets_a_clean_vfat() {
    require_tool!("nbdcopy", "fsck.fat", "mdir");
    let dir = tempdir();
    let server = start(
        dir.path(),
        &["100M", "--type", "vfat", "--label", "SCRATCH"],
    );
    let img = dir.path().join("v.img");
    nbdcopy_to(server.uri(), &img);
    let fsck = run(Command::new("fsck.fat").arg("-n").arg(&img), CMD_TIMEOUT);
    assert!(fsck.status.success(), "{}", fsck.describe());
    let mdir = run_ok(Command::new("mdir").arg("-i").arg(&img).arg("::/"));
    assert!(
        mdir.stdout_str().contains("SCRATCH") && mdir.stdout_str().contains("No files"),
        "{}",
        mdir.describe()
    );
}

/// NBD_OPT_INFO describes the export without making a disk (nbdkit's tmpdisk runs mkfs for
/// it, so the disk a client sees in INFO is not the one it is served).
#[test]
fn info_makes_no_disk() {
    require_tool!("nbdsh", "nbdinfo");
    let dir = tempdir();
    let server = start(dir.path(), &["64M"]);
    let out = clients("info", server.uri(), &[]);
    assert!(out.stdout_str().contains(&format!("size={}", 64 * MIB)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        disks_made(&server),
        0,
        "INFO made a disk: {}",
        server.stderr_text()
    );
    // One nbdinfo (INFO, then GO) makes exactly one disk: the one it is served.
    run_ok(Command::new("nbdinfo").arg(server.uri()));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(disks_made(&server), 1, "{}", server.stderr_text());
}

/// A client's writes take disk space in --dir (an unlinked file: gone even if the server is
/// killed); when it disconnects, usage returns to zero. An empty synthesized disk takes none.
#[test]
fn disk_usage_returns_to_zero_after_disconnect() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let server = start(dir.path(), &["256M"]);
    let disks = dir.path().join("disks");
    let mut child = python_script("tmpdisk_clients.py")
        .args(["hold", server.uri(), "1048576", &(8 * MIB).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "written");
    let used = disk_bytes_in(&server, &disks);
    assert!(
        (8 * MIB..16 * MIB).contains(&used),
        "a client that wrote 8 MiB uses {used} bytes"
    );
    assert_eq!(
        fs::read_dir(&disks).unwrap().count(),
        0,
        "a disk has a name in --dir"
    );
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while disk_bytes_in(&server, &disks) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        disk_bytes_in(&server, &disks),
        0,
        "the disk outlived its client"
    );
    // The line is written after the file is gone: wait for it rather than race it.
    assert!(
        server.wait_stderr_contains("disk deleted", Duration::from_secs(5)),
        "{}",
        server.stderr_text()
    );
}

#[test]
fn command_makes_the_disk_with_mkfs_and_sees_no_server_descriptors() {
    require_tool!("nbdcopy", "e2fsck", "mkfs.ext4");
    let dir = tempdir();
    // The script lists its open descriptors (to stderr, which goes to the server log).
    let script = r#"for f in /proc/$$/fd/*; do echo "open fd ${f##*/}" >&2; done
mkfs.ext4 -q -F -L "$label" "$disk""#;
    let server = start(
        dir.path(),
        &["64M", "--command", script, "--label", "viacmd"],
    );
    let img = dir.path().join("m.img");
    nbdcopy_to(server.uri(), &img);
    let fsck = run(Command::new("e2fsck").args(["-fn"]).arg(&img), CMD_TIMEOUT);
    assert!(fsck.status.success(), "{}", fsck.describe());
    let log = server.stderr_text();
    let fds: BTreeSet<String> = log
        .lines()
        .filter_map(|l| l.split("open fd ").nth(1))
        .map(|s| s.trim().to_string())
        .collect();
    assert!(!fds.is_empty(), "the command did not run: {log}");
    // 0-2, plus the one the shell's glob itself may hold open while listing.
    assert!(
        fds.iter().all(|f| f.parse::<u32>().is_ok_and(|n| n <= 3)),
        "descriptors leaked into the command: {fds:?}"
    );
}

#[test]
fn a_failing_command_reaches_the_client_and_the_log() {
    require_tool!("nbdinfo", "qemu-img");
    let dir = tempdir();
    let mut server = start(
        dir.path(),
        &[
            "64M",
            "--command",
            "echo 'mkfs: bad things happened' >&2; exit 7",
        ],
    );
    // qemu shows the server's message ("server reported: ..."); libnbd only the error code.
    let out = run(
        Command::new("qemu-img")
            .args(["info", server.uri()])
            .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    );
    assert!(
        !out.status.success(),
        "the client got a disk: {}",
        out.describe()
    );
    assert!(
        out.stderr_str().contains("bad things happened"),
        "the client was not told why: {}",
        out.describe()
    );
    let info = run(Command::new("nbdinfo").arg(server.uri()), CMD_TIMEOUT);
    assert!(
        !info.status.success(),
        "nbdinfo got a disk: {}",
        info.describe()
    );
    assert!(server.stderr_text().contains("bad things happened"));
    assert!(server.is_running(), "the server exited");
}

#[test]
fn the_client_limit_refuses_the_next_client_and_spares_the_others() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let server = start(dir.path(), &["32M", "--max-clients", "2"]);
    clients("limit", server.uri(), &["2"]);
    assert!(
        server.stderr_text().contains("--max-clients 2"),
        "the refusal is not in the log: {}",
        server.stderr_text()
    );
}

/// What a refused client is told, as qemu shows it, while two others hold their disks.
#[test]
fn the_refused_client_is_told_why() {
    require_tool!("nbdsh", "qemu-img");
    let dir = tempdir();
    let server = start(dir.path(), &["32M", "--max-clients", "1"]);
    let mut holder = python_script("tmpdisk_clients.py")
        .args(["hold", server.uri(), "0", "4096"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "written");
    let out = run(
        Command::new("qemu-img")
            .args(["info", server.uri()])
            .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    );
    holder.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert!(holder.wait().unwrap().success());
    assert!(
        !out.status.success(),
        "a second client got in: {}",
        out.describe()
    );
    assert!(
        out.stderr_str().contains("--max-clients 1"),
        "unclear refusal: {}",
        out.describe()
    );
}

#[test]
fn a_full_disk_budget_gives_enospc_never_corruption() {
    require_tool!("nbdsh");
    let dir = tempdir();
    let server = start(dir.path(), &["64M", "--max-disk", "4M"]);
    clients("enospc", server.uri(), &[&(32 * MIB).to_string()]);
}

/// A type whose mkfs is not installed is a start-up error, not a failure for every client.
#[test]
fn a_type_without_its_mkfs_is_refused_at_start_up() {
    let dir = tempdir();
    let out = run(
        disksynth_tests::disksynth()
            .args(["tmpdisk", "64M", "--type", "no-such-fs", "-o"])
            .arg(dir.path().join("x.img")),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str()
            .contains("mkfs.no-such-fs is not installed"),
        "{}",
        out.describe()
    );
}

/// Whether any live (non-zombie) process is in process group `pgid`, from /proc.
fn group_alive(pgid: u32) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .any(|stat| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.get(2) == Some(&pgid.to_string().as_str()) && f.first() != Some(&"Z")
        })
}

/// Waits (bounded) until process group `pgid` is empty; returns whether it is.
fn group_ends(pgid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while group_alive(pgid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A `--command` that records its process group (its shell's pid: the command runs in a group
/// of its own) in DIR/pgids, then hangs in `sleep` while DIR/hang exists, else makes an empty
/// disk at once. Returns the script and the paths of `pgids` and `hang`.
fn hanging_command(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let pgids = dir.join("pgids");
    let hang = dir.join("hang");
    fs::write(&hang, "").unwrap();
    let script = format!(
        "echo $$ >> '{}'\nif [ -e '{}' ]; then sleep 1000; fi",
        pgids.display(),
        hang.display()
    );
    (script, pgids, hang)
}

/// Waits (bounded) for line `n` (from 0) of the pgids file: the nth command started.
fn nth_pgid(pgids: &Path, n: usize) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(pgids).unwrap_or_default();
        if let Some(l) = text.lines().nth(n) {
            return l.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "command {n} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command that hangs is killed at --command-timeout, all of it (the shell and its sleep):
/// the client is told why within about the timeout, and its slot is free again at once (with
/// --max-clients 1 the next client is served). Before, nothing stopped it.
#[test]
fn a_hung_command_is_killed_at_its_timeout_and_frees_the_slot() {
    require_tool!("qemu-img", "nbdinfo");
    let dir = tempdir();
    let (script, pgids, hang) = hanging_command(dir.path());
    let server = start(
        dir.path(),
        &[
            "64M",
            "--max-clients",
            "1",
            "--command-timeout",
            "2",
            "--command",
            &script,
        ],
    );
    let t0 = Instant::now();
    // qemu shows the server's message ("server reported: ...").
    let out = run(
        Command::new("qemu-img")
            .args(["info", server.uri()])
            .env("LC_ALL", "C"),
        Duration::from_secs(30),
    );
    let took = t0.elapsed();
    assert!(
        !out.status.success(),
        "the client got a disk: {}",
        out.describe()
    );
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(15)).contains(&took),
        "the client waited {took:?} for a 2 s timeout\n{}",
        out.describe()
    );
    assert!(
        out.stderr_str()
            .contains("did not finish within 2 s (--command-timeout)"),
        "the client was not told why: {}\n{}",
        out.describe(),
        server.stderr_text()
    );
    let pgid = nth_pgid(&pgids, 0);
    assert!(
        group_ends(pgid, Duration::from_secs(2)),
        "the command's processes (group {pgid}) outlived its timeout"
    );
    fs::remove_file(&hang).unwrap();
    let size = run(
        Command::new("nbdinfo").args(["--size", server.uri()]),
        Duration::from_secs(30),
    );
    assert!(
        size.status.success() && size.stdout_str().trim() == (64 * MIB).to_string(),
        "the next client was not served: {}\n{}",
        size.describe(),
        server.stderr_text()
    );
}

/// A client that leaves while its command runs takes its slot with it: the command is killed
/// (no need to wait for --command-timeout) and the next client is served at once. Before, the
/// command kept the slot until it ended, if ever.
#[test]
fn a_client_leaving_mid_command_kills_it_and_frees_the_slot() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let (script, pgids, hang) = hanging_command(dir.path());
    let server = start(
        dir.path(),
        &[
            "64M",
            "--max-clients",
            "1",
            "--command-timeout",
            "600",
            "--command",
            &script,
        ],
    );
    let mut client = Command::new("nbdinfo")
        .arg(server.uri())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pgid = nth_pgid(&pgids, 0);
    assert!(group_alive(pgid), "the command is not running");
    let pid = rustix::process::Pid::from_raw(client.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    client.wait().unwrap();
    assert!(
        group_ends(pgid, Duration::from_secs(5)),
        "the command (group {pgid}) outlived its client\n{}",
        server.stderr_text()
    );
    assert!(
        server.wait_stderr_contains("client left", Duration::from_secs(5)),
        "{}",
        server.stderr_text()
    );
    fs::remove_file(&hang).unwrap();
    let t0 = Instant::now();
    let size = run(
        Command::new("nbdinfo").args(["--size", server.uri()]),
        Duration::from_secs(30),
    );
    assert!(
        size.status.success() && size.stdout_str().trim() == (64 * MIB).to_string(),
        "the next client was not served: {}\n{}",
        size.describe(),
        server.stderr_text()
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}
