//! The service filters (`--filter delay|error|log|stats|rate|ip|limit`)
//! with real clients: qemu-img and qemu-io, libnbd (nbdinfo, nbdcopy, the
//! Python bindings) must see the errors injected, the refusals with their
//! reasons, and the bytes unchanged; the log and stats must describe what
//! the clients really did. Timing is checked loosely (lower bounds only).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use disksynth_tests::{
    nbdinfo_size, pattern, require_tool, run, run_ok, tempdir, Server, Signal, CMD_TIMEOUT, PYTHON,
};
use serde_json::Value;

/// Reads 4 KiB blocks `0..n` one by one with libnbd and prints one
/// character per block: `.` read fine, `E` failed with errno 5 (EIO), `?`
/// anything else (with the error on stderr).
const READ_BLOCKS: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
out = []
for i in range(int(sys.argv[2])):
    try:
        h.pread(4096, i * 4096)
        out.append(".")
    except nbd.Error as e:
        out.append("E" if e.errnum == 5 else "?")
        if e.errnum != 5:
            print(e, file=sys.stderr)
print("".join(out))
"#;

fn read_blocks(uri: &str, n: usize) -> String {
    let out = run_ok(Command::new(PYTHON).args(["-c", READ_BLOCKS, uri, &n.to_string()]));
    out.stdout_str().trim().to_string()
}

#[test]
fn qemu_io_qemu_img_and_libnbd_see_the_injected_eio() {
    require_tool!("qemu-io", "qemu-img", "python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(
        dir.path(),
        &["pattern", "4M", "--filter", "error:ops=read,range=1M-2M"],
    );
    // Outside the range: the pattern, byte for byte.
    let ok = run(
        Command::new("qemu-io").args(["-r", "-f", "raw", "-c", "read -v 0 16", server.uri()]),
        CMD_TIMEOUT,
    );
    assert!(ok.status.success(), "{}", ok.describe());
    assert!(
        ok.stdout_str()
            .starts_with("00000000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 08"),
        "{}",
        ok.describe()
    );
    // Inside: qemu-io's read fails with EIO.
    let bad = run(
        Command::new("qemu-io").args(["-r", "-f", "raw", "-c", "read 1M 4k", server.uri()]),
        CMD_TIMEOUT,
    );
    let text = format!("{}{}", bad.stdout_str(), bad.stderr_str());
    assert!(
        text.contains("read failed: Input/output error"),
        "{}",
        bad.describe()
    );
    // qemu-img convert of the whole disk fails on the range and says so.
    let out = dir.path().join("copy.raw");
    let conv = run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", server.uri()])
            .arg(&out),
        CMD_TIMEOUT,
    );
    assert!(!conv.status.success(), "{}", conv.describe());
    assert!(
        conv.stderr_str().contains("Input/output error"),
        "{}",
        conv.describe()
    );
    // libnbd: exactly the blocks overlapping [1M, 2M) fail, with errno EIO.
    let seen = read_blocks(server.uri(), 1024);
    let want: String = (0..1024)
        .map(|i| if (256..512).contains(&i) { 'E' } else { '.' })
        .collect();
    assert_eq!(seen, want);
    // The server says what it injected.
    assert!(
        server.wait_stderr_contains("EIO injected by --filter error", Duration::from_secs(5)),
        "{}",
        server.stderr_text()
    );
}

#[test]
fn the_same_seed_fails_the_same_requests_of_a_real_client() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let mut runs = Vec::new();
    for (i, seed) in [7, 7, 8].iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir(&sub).unwrap();
        let filter = format!("error:rate=0.3,seed={seed}");
        let server = Server::disksynth_unix(&sub, &["pattern", "1M", "--filter", &filter]);
        runs.push(read_blocks(server.uri(), 256));
    }
    let failed = runs[0].matches('E').count();
    // 256 rolls at 0.3: mean 77, sd 7.3; 40..=115 is over 5 sd either way.
    assert!((40..=115).contains(&failed), "{}", runs[0]);
    assert!(!runs[0].contains('?'), "{}", runs[0]);
    assert_eq!(runs[0], runs[1], "same seed, same failures");
    assert_ne!(runs[0], runs[2], "another seed, other failures");
}

#[test]
fn log_has_a_json_line_for_each_request_of_an_nbdcopy_run() {
    require_tool!("nbdcopy");
    let dir = tempdir();
    let log = dir.path().join("requests.jsonl");
    let filter = format!("log:file={}", log.display());
    let mut server = Server::disksynth_unix(dir.path(), &["pattern", "8M", "--filter", &filter]);
    let copy = dir.path().join("copy.raw");
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
    assert!(std::fs::read(&copy).unwrap() == pattern(0, 8 << 20));
    assert!(server.stop_with(Signal::TERM).success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let of = |ev: &str| -> Vec<&Value> { lines.iter().filter(|v| v["event"] == ev).collect() };
    let (connects, disconnects) = (of("connect"), of("disconnect"));
    assert!(!connects.is_empty(), "{text}");
    assert_eq!(connects.len(), disconnects.len(), "{text}");
    // nbdcopy may open several connections: each has its own number.
    let conns: BTreeSet<u64> = connects
        .iter()
        .map(|v| v["conn"].as_u64().unwrap())
        .collect();
    assert_eq!(conns.len(), connects.len(), "{text}");
    for v in &connects {
        assert!(v["peer"].as_str().unwrap().starts_with("unix"), "{v}");
    }
    let mut covered = Vec::new();
    let mut per_conn = std::collections::BTreeMap::new();
    for v in of("request") {
        let conn = v["conn"].as_u64().unwrap();
        assert!(conns.contains(&conn), "{v}");
        *per_conn.entry(conn).or_insert(0u64) += 1;
        assert_eq!(v["result"], "ok", "{v}");
        assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
        assert!(v["duration_us"].is_u64(), "{v}");
        assert!(v["flags"].is_array(), "{v}");
        if v["op"] == "read" {
            let (o, l) = (v["offset"].as_u64().unwrap(), v["length"].as_u64().unwrap());
            covered.push((o, o + l));
        }
    }
    // The reads cover the disk exactly once, as nbdcopy copied it.
    covered.sort();
    let mut at = 0;
    for (s, e) in covered {
        assert_eq!(s, at, "reads overlap or leave a gap at {at}");
        at = e;
    }
    assert_eq!(at, 8 << 20);
    // Each disconnect line counts its connection's requests.
    for v in disconnects {
        let conn = v["conn"].as_u64().unwrap();
        let n = per_conn.get(&conn).copied().unwrap_or(0);
        assert_eq!(v["requests"].as_u64(), Some(n), "{v}");
    }
}

/// The row of `op` in the last table of `text` whose header goes on with
/// `head` (`(SIGUSR1)`, `(exit) of export "a"`): (requests, errors, bytes).
fn stats_row(text: &str, head: &str, op: &str) -> Option<(u64, u64, u64)> {
    let table = text
        .split("disksynth --filter stats ")
        .filter(|t| t.starts_with(head))
        .last()?;
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(op))?;
    let n: Vec<u64> = row
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|c| c.parse().unwrap())
        .collect();
    Some((n[0], n[1], n[2]))
}

#[test]
fn stats_are_printed_on_sigusr1_and_at_exit() {
    require_tool!("qemu-io");
    let dir = tempdir();
    // The error filter below the stats: its failures are counted as errors.
    let mut server = Server::disksynth_unix(
        dir.path(),
        &[
            "memory",
            "4M",
            "--filter",
            "stats",
            "--filter",
            "error:ops=read,range=2M-3M,errno=ENOSPC",
        ],
    );
    let out = run(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 7 0 64k",
            "-c",
            "read -P 7 0 64k",
            "-c",
            "read -P 0 1M 4k",
            "-c",
            "read 2M 4k",
            server.uri(),
        ]),
        CMD_TIMEOUT,
    );
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert!(
        text.contains("read failed: No space left on device"),
        "{text}"
    );

    server.signal(Signal::USR1);
    assert!(
        server.wait_stderr_contains("(SIGUSR1)", Duration::from_secs(10)),
        "{}",
        server.stderr_text()
    );
    // The table is written in one piece: wait for its last rows.
    assert!(server.wait_stderr_contains("latency, all ops", Duration::from_secs(5)));
    let err = server.stderr_text();
    let (w, w_err, w_bytes) = stats_row(&err, "(SIGUSR1)", "write").expect(&err);
    assert_eq!((w, w_err, w_bytes), (1, 0, 65536), "{err}");
    let (r, r_err, r_bytes) = stats_row(&err, "(SIGUSR1)", "read").expect(&err);
    // qemu may read more than asked (probing); never less. The failed
    // read counts as an error, its bytes not as read.
    assert!(r >= 3 && r_err == 1 && r_bytes >= 65536 + 4096, "{err}");
    assert!(err.contains("1 connections (0 open)"), "{err}");

    // The server survives the signal and still serves.
    run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 7 0 4k", server.uri()]));
    assert!(server.stop_with(Signal::TERM).success());
    let err = server.stderr_text();
    let (r2, _, _) = stats_row(&err, "(exit)", "read").expect(&err);
    assert!(r2 > r, "{err}");
    assert!(err.contains("2 connections (0 open)"), "{err}");
}

#[test]
fn ip_policy_refuses_tcp_and_unix_clients_with_the_reason() {
    require_tool!("qemu-img", "nbdinfo");
    // 127.0.0.1 denied by its network: the client is told the reason.
    let server = Server::disksynth_tcp(&[
        "pattern",
        "1M",
        "--filter",
        "ip:allow=10.0.0.0/8,deny=127.0.0.0/8",
    ]);
    let info = run(
        Command::new("qemu-img").args(["info", server.uri()]),
        CMD_TIMEOUT,
    );
    assert!(!info.status.success(), "{}", info.describe());
    assert!(
        info.stderr_str()
            .contains("address 127.0.0.1 is denied by --filter ip (deny=127.0.0.0/8)"),
        "{}",
        info.describe()
    );
    let nbdinfo = run(Command::new("nbdinfo").arg(server.uri()), CMD_TIMEOUT);
    assert!(!nbdinfo.status.success(), "{}", nbdinfo.describe());
    drop(server);

    // Allowed by an address rule before `deny=all`.
    let server = Server::disksynth_tcp(&[
        "pattern",
        "1M",
        "--filter",
        "ip:allow=127.0.0.1,::1,deny=all",
    ]);
    assert_eq!(nbdinfo_size(server.uri()), 1 << 20);
    drop(server);

    // Unix sockets: by the client's uid.
    let uid = rustix::process::getuid().as_raw();
    let dir = tempdir();
    let ok = format!("ip:allow=uid:{uid},deny=all");
    let server = Server::disksynth_unix(dir.path(), &["pattern", "1M", "--filter", &ok]);
    assert_eq!(nbdinfo_size(server.uri()), 1 << 20);
    drop(server);
    let other = format!("ip:allow=uid:{},deny=all", uid + 1);
    let server = Server::disksynth_unix(dir.path(), &["pattern", "1M", "--filter", &other]);
    let info = run(
        Command::new("qemu-img").args(["info", server.uri()]),
        CMD_TIMEOUT,
    );
    assert!(!info.status.success(), "{}", info.describe());
    assert!(
        info.stderr_str()
            .contains(&format!("Unix-socket client unix:uid={uid},")),
        "{}",
        info.describe()
    );
}

/// Connects with libnbd, prints `started`, and holds the connection
/// until killed.
const HOLD: &str = r#"
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("started", flush=True)
time.sleep(60)
"#;

#[test]
fn limit_refuses_a_second_client_until_the_first_leaves() {
    require_tool!("python3-nbd", "qemu-img");
    let dir = tempdir();
    let server = Server::disksynth_unix(
        dir.path(),
        &["pattern", "1M", "--filter", "limit:clients=1"],
    );
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", HOLD, server.uri()]);
    let holder = Server::spawn(cmd); // line 1 is "started" once connected
    assert_eq!(holder.uri(), "started");

    let info = run(
        Command::new("qemu-img").args(["info", server.uri()]),
        CMD_TIMEOUT,
    );
    assert!(!info.status.success(), "{}", info.describe());
    assert!(
        info.stderr_str().contains("1 client(s) connected"),
        "{}",
        info.describe()
    );
    // The first client leaves (killed by pid): its seat is free again.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = run(
            Command::new("qemu-img").args(["info", server.uri()]),
            CMD_TIMEOUT,
        );
        if info.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", info.describe());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn delay_and_rate_slow_clients_and_change_no_byte() {
    require_tool!("qemu-io", "nbdcopy");
    let dir = tempdir();
    let server = Server::disksynth_unix(
        dir.path(),
        &["pattern", "4M", "--filter", "delay:read=100ms"],
    );
    let t = Instant::now();
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-r", "-f", "raw"]);
    for i in 0..10 {
        cmd.args(["-c", &format!("read {} 4k", i * 8192)]);
    }
    run_ok(cmd.arg(server.uri()));
    // Ten reads, one after another, 100 ms each at least.
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    drop(server);

    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "2M", "--filter", "rate:read=1M"]);
    let copy = dir.path().join("copy.raw");
    let t = Instant::now();
    run_ok(Command::new("nbdcopy").arg(server.uri()).arg(&copy));
    let took = t.elapsed();
    // 2 MiB at 1 MiB/s, less a tenth of a second's burst.
    assert!(took >= Duration::from_millis(1600), "{took:?}");
    assert!(std::fs::read(&copy).unwrap() == pattern(0, 2 << 20));
}

/// A guest sees the injected error too: SeaBIOS reading the boot sector
/// of a virtio disk over NBD says it could not read it, where the same
/// disk without the filter is read and found not bootable.
#[test]
fn seabios_cannot_read_a_boot_sector_the_error_filter_fails() {
    use disksynth_tests::qemu_boot::{boot, BootOptions, Firmware};
    require_tool!("qemu-system-x86_64");
    let after_hard_disk = |filter: Option<&str>| -> String {
        let dir = tempdir();
        let mut args = vec!["pattern", "1M"];
        if let Some(f) = filter {
            args.extend(["--filter", f]);
        }
        let server = Server::disksynth_unix(dir.path(), &args);
        // graphics=off: SeaBIOS copies its screen to the serial port.
        let drive = [
            "-machine".to_string(),
            "graphics=off".to_string(),
            "-drive".to_string(),
            format!("file={},format=raw,if=virtio,readonly=on", server.uri()),
        ];
        let options = BootOptions {
            timeout: Duration::from_secs(60),
            memory_mib: 64,
            debugcon: false,
        };
        let seen = boot(
            dir.path(),
            Firmware::Bios,
            &drive,
            &["No bootable device"],
            &options,
        );
        assert!(seen.found, "{}", seen.text);
        let text = seen.text.replace('\r', "");
        let (_, rest) = text
            .split_once("Booting from Hard Disk...\n")
            .unwrap_or_else(|| panic!("{text}"));
        rest.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(
        after_hard_disk(Some("error:ops=read,range=0-512")),
        "Boot failed: could not read the boot disk"
    );
    assert_eq!(after_hard_disk(None), "Boot failed: not a bootable disk");
}

/// Writes one 4 KiB block with libnbd and prints the errno number it
/// failed with (0: it did not fail).
const WRITE_ERRNO: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x" * 4096, 0)
    print(0)
except nbd.Error as e:
    print(e.errnum)
"#;

/// Every errno the filter offers reaches the client as that errno (NBD
/// carries fixed numbers, proto.md "Error values", which are Linux's).
#[test]
fn each_errno_offered_is_the_errno_the_client_sees() {
    require_tool!("python3-nbd");
    for (name, number) in [
        ("EIO", 5),
        ("EPERM", 1),
        ("EINVAL", 22),
        ("ENOSPC", 28),
        ("ENOTSUP", 95),
    ] {
        let dir = tempdir();
        let filter = format!("error:ops=write,errno={name}");
        let server = Server::disksynth_unix(dir.path(), &["memory", "1M", "--filter", &filter]);
        let out = run_ok(Command::new(PYTHON).args(["-c", WRITE_ERRNO, server.uri()]));
        assert_eq!(out.stdout_str().trim(), number.to_string(), "{name}");
    }
}

/// A client reaching a dual-stack listener (`-i ::`) over IPv4 arrives as
/// a v4-mapped IPv6 address (`::ffff:127.0.0.1`): an IPv4 deny rule must
/// still catch it — else listening on `::` would be a way around the policy.
#[test]
fn an_ipv4_rule_catches_a_v4_mapped_client_of_a_dual_stack_listener() {
    require_tool!("qemu-img");
    let mut cmd = disksynth_tests::disksynth();
    cmd.args([
        "pattern",
        "1M",
        "-i",
        "::",
        "-p",
        "0",
        "--filter",
        "ip:deny=127.0.0.0/8",
    ]);
    let server = Server::spawn(cmd);
    let port = server
        .uri()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in {}", server.uri()));
    let info = run(
        Command::new("qemu-img").args(["info", &format!("nbd://127.0.0.1:{port}")]),
        CMD_TIMEOUT,
    );
    assert!(!info.status.success(), "{}", info.describe());
    assert!(
        info.stderr_str()
            .contains("address 127.0.0.1 is denied by --filter ip (deny=127.0.0.0/8)"),
        "{}",
        info.describe()
    );
}

/// Each export of a server has its own table, named, at exit: the
/// counts of one export's clients are not another's.
#[test]
fn each_export_has_its_own_stats_table() {
    require_tool!("nbdcopy");
    let dir = tempdir();
    let mut server = Server::disksynth_unix(
        dir.path(),
        &[
            "serve",
            "--export",
            "a=pattern 1M --filter stats",
            "--export",
            "b=pattern 2M --filter stats",
        ],
    );
    let sock = dir.path().join("sock");
    for name in ["a", "b", "b"] {
        let uri = format!("nbd+unix:///{name}?socket={}", sock.display());
        run_ok(Command::new("nbdcopy").arg(uri).arg("null:"));
    }
    assert!(server.stop_with(Signal::TERM).success());
    let err = server.stderr_text();
    let (_, a_err, a_bytes) = stats_row(&err, "(exit) of export \"a\"", "read").expect(&err);
    let (_, b_err, b_bytes) = stats_row(&err, "(exit) of export \"b\"", "read").expect(&err);
    assert_eq!((a_err, a_bytes), (0, 1 << 20), "{err}");
    assert_eq!((b_err, b_bytes), (0, 2 * (2 << 20)), "{err}");
}
