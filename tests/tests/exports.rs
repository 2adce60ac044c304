//! One server, several named exports (`disksynth serve`), and the habits of a service
//! (--pid-file, sd_notify, --exit-with-parent, --exit-last, --run with -U/-p), with real
//! clients: nbdinfo, nbdcopy, qemu-img.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use disksynth_tests::{
    disksynth, nbdinfo_list_json, pattern, random_bytes, require_tool, run, run_ok, tempdir,
    Server, Signal, CMD_TIMEOUT,
};

/// How long a server may take to react to something (a signal, its parent dying, its last
/// client leaving): generous, this is not a speed test.
const REACT: Duration = Duration::from_secs(20);

/// An exports file in `dir` with a pattern export, a file export of random bytes and a build
/// spec export; returns its path and the file's bytes.
fn exports_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let bytes = random_bytes(16, 3 << 20);
    std::fs::write(dir.join("data.img"), &bytes).unwrap();
    std::fs::write(
        dir.join("disk.toml"),
        r#"
[disk]
table = "gpt"
seed = "exports-test"

[[partition]]
label = "blank"
type = "linux-generic"
fs = "empty"
size = "1M"
"#,
    )
    .unwrap();
    let file = dir.join("exports.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[export]]
name = "pat"
source = "pattern 1M"
description = "test pattern"
filters = ["nofilter", "nofilter"]

[[export]]
name = "img"
source = "file '{}'"

[[export]]
name = "boot disk"
spec = "disk.toml"
description = "a GPT disk"
"#,
            dir.join("data.img").display()
        ),
    )
    .unwrap();
    (file, bytes)
}

/// `nbd+unix:///NAME?socket=SOCK` with NAME percent-encoded where needed here (a space).
fn uri_of(sock: &Path, name: &str) -> String {
    format!(
        "nbd+unix:///{}?socket={}",
        name.replace(' ', "%20"),
        sock.display()
    )
}

#[test]
fn list_shows_every_name_and_description() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let (file, _) = exports_file(dir.path());
    let file = file.to_str().unwrap();
    let server = Server::disksynth_unix(dir.path(), &["serve", file, "--export", "z=zero 8K"]);
    // The printed URI names the default export: the first.
    assert!(
        server.uri().starts_with("nbd+unix:///pat?socket="),
        "{}",
        server.uri()
    );
    let list = nbdinfo_list_json(server.uri());
    let exports = list["exports"].as_array().expect("exports");
    let seen: Vec<(&str, &str, u64)> = exports
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap(),
                e["description"].as_str().unwrap_or(""),
                e["export-size"].as_u64().unwrap(),
            )
        })
        .collect();
    let data = dir.path().join("data.img");
    let img_desc = format!("file {}", data.display());
    assert_eq!(seen.len(), 4, "{list}");
    assert_eq!(seen[0], ("pat", "test pattern", 1 << 20));
    assert_eq!(seen[1], ("img", img_desc.as_str(), 3 << 20));
    assert_eq!(seen[2].0, "boot disk");
    assert_eq!(seen[2].1, "a GPT disk");
    assert_eq!(seen[3], ("z", "zero 8.0 KiB", 8192));
}

#[test]
fn named_exports_serve_their_own_bytes_to_nbdcopy_and_qemu_img() {
    require_tool!("nbdinfo", "nbdcopy", "qemu-img");
    let dir = tempdir();
    let (file, bytes) = exports_file(dir.path());
    let server = Server::disksynth_unix(dir.path(), &["serve", file.to_str().unwrap()]);
    let sock = dir.path().join("sock");

    let out = dir.path().join("pat.raw");
    run_ok(Command::new("nbdcopy").arg(uri_of(&sock, "pat")).arg(&out));
    assert!(std::fs::read(&out).unwrap() == pattern(0, 1 << 20), "pat");

    let out = dir.path().join("img.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(uri_of(&sock, "img"))
            .arg(&out),
    );
    assert!(std::fs::read(&out).unwrap() == bytes, "img");

    // The spec export is the disk `disksynth build` writes from the same spec.
    let built = dir.path().join("built.img");
    run_ok(
        disksynth()
            .arg("build")
            .arg(dir.path().join("disk.toml"))
            .arg("-o")
            .arg(&built),
    );
    let out = dir.path().join("boot.raw");
    run_ok(
        Command::new("nbdcopy")
            .arg(uri_of(&sock, "boot disk"))
            .arg(&out),
    );
    let got = std::fs::read(&out).unwrap();
    assert!(got.len() > 1 << 20, "{}", got.len());
    assert!(got == std::fs::read(&built).unwrap(), "boot disk");
    // The empty name: the default (first) export.
    let out = run_ok(Command::new("nbdinfo").arg("--size").arg(uri_of(&sock, "")));
    assert_eq!(out.stdout_str().trim(), "1048576");
    drop(server);
}

#[test]
fn an_unknown_name_is_refused_with_the_names_there_are() {
    require_tool!("qemu-img");
    let dir = tempdir();
    let server = Server::disksynth_unix(
        dir.path(),
        &["serve", "--export", "a=pattern 1M", "--export", "b=zero 1M"],
    );
    let sock = dir.path().join("sock");
    // qemu shows the server's message ("server reported: ...").
    let out = run(
        Command::new("qemu-img")
            .args(["info"])
            .arg(uri_of(&sock, "nope"))
            .env("LC_ALL", "C"),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str()
            .contains(r#"no export named "nope" (this server has "a", "b")"#),
        "{}",
        out.describe()
    );
    drop(server);
}

#[test]
fn bad_exports_files_are_refused_saying_where() {
    let dir = tempdir();
    let file = dir.path().join("exports.toml");
    // `serve` of an exports file that must be refused: its error message.
    let refused = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = run(
            disksynth().arg("serve").arg(&file).args(["-U", "-"]),
            CMD_TIMEOUT,
        );
        assert!(!out.status.success(), "{}", out.describe());
        out.stderr_str().to_string()
    };
    let err = refused("[[export]]\nname = \"a\"\nsource = \"pattern 1M\"\ndescripton = \"typo\"\n");
    assert!(
        err.contains("descripton") && err.contains("line 4"),
        "{err}"
    );
    let err = refused("[[export]]\nname = \"a\"\nsource = \"pattern 1M -U /tmp/x\"\n");
    assert!(
        err.contains("export 1 (\"a\")") && err.contains("-U"),
        "{err}"
    );
    let err =
        refused("[[export]]\nname = \"a\"\nsource = \"pattern 1M\"\nfilters = [\"nosuch\"]\n");
    assert!(
        err.contains("export 1 (\"a\")") && err.contains("nosuch"),
        "{err}"
    );
}

#[test]
fn pid_file_is_there_while_serving_gone_after_and_guards_against_a_second_server() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let pid_file = dir.path().join("server.pid");
    let pf = pid_file.to_str().unwrap();
    let mut server = Server::disksynth_unix(dir.path(), &["pattern", "1M", "--pid-file", pf]);
    let text = std::fs::read_to_string(&pid_file).expect("the pid file, once listening");
    assert_eq!(text, format!("{}\n", server.pid()));

    // A second server with the same pid file is refused before it listens.
    let out = run(
        disksynth().args(["pattern", "1M", "-U", "-", "--pid-file", pf]),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str()
            .contains(&format!("names process {}", server.pid())),
        "{}",
        out.describe()
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        text,
        "untouched"
    );
    run_ok(Command::new("nbdinfo").arg("--size").arg(server.uri()));

    let status = server.stop_with(Signal::TERM);
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists(), "the pid file outlived the server");
}

/// The datagrams received on `rx` until one contains `READY=1` (bounded).
fn wait_ready(rx: &UnixDatagram) -> String {
    rx.set_read_timeout(Some(REACT)).unwrap();
    let mut buf = [0u8; 4096];
    let mut got = String::new();
    let deadline = Instant::now() + REACT;
    while Instant::now() < deadline {
        match rx.recv(&mut buf) {
            Ok(n) => {
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
                got.push('\n');
                if got.contains("READY=1") {
                    break;
                }
            }
            Err(e) => panic!("no READY=1 on the notify socket: {e} (got {got:?})"),
        }
    }
    got
}

#[test]
fn sd_notify_readiness_reaches_a_path_and_an_abstract_socket() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    let mut cmd = disksynth();
    cmd.args(["zero", "1M", "-U"])
        .arg(dir.path().join("sock"))
        .env("NOTIFY_SOCKET", &path);
    let mut server = Server::spawn(cmd);
    let got = wait_ready(&rx);
    assert!(
        got.contains(&format!("MAINPID={}", server.pid())),
        "{got:?}"
    );
    // Ready means listening: a client gets in at once.
    run_ok(Command::new("nbdinfo").arg("--size").arg(server.uri()));
    server.stop_with(Signal::TERM);

    use std::os::linux::net::SocketAddrExt;
    let name = format!("disksynth-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).unwrap();
    let mut cmd = disksynth();
    cmd.args(["zero", "1M", "-U"])
        .arg(dir.path().join("sock2"))
        .env("NOTIFY_SOCKET", format!("@{name}"));
    let mut server = Server::spawn(cmd);
    let got = wait_ready(&rx);
    assert!(got.contains("READY=1"), "{got:?}");
    // Commands the server runs do not inherit the socket (they would report for it).
    server.stop_with(Signal::TERM);
    let out = run_ok(
        disksynth()
            .args(["zero", "1M", "--run", "echo \"[${NOTIFY_SOCKET-unset}]\""])
            .env("NOTIFY_SOCKET", format!("@{name}")),
    );
    assert_eq!(out.stdout_str(), "[unset]\n");
}

/// Whether process `pid` is gone (or a zombie: it has exited, nobody reaped it yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // pid (comm) STATE ...; comm may hold spaces or parentheses: the state follows the
        // last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[test]
fn exit_with_parent_stops_the_server_when_its_parent_dies() {
    let dir = tempdir();
    let sock = dir.path().join("sock");
    // A shell starts the server in the background, says its pid, and waits.
    let script = format!(
        "'{}' pattern 1M -U '{}' --exit-with-parent >/dev/null 2>&1 & echo $!; wait",
        disksynth_tests::disksynth_bin().display(),
        sock.display()
    );
    let mut shell = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line.trim().parse().expect("the server's pid");
    let deadline = Instant::now() + REACT;
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sock.exists(), "the server never listened");
    assert!(!process_gone(pid), "the server died on its own");

    shell.kill().unwrap();
    shell.wait().unwrap();
    let deadline = Instant::now() + REACT;
    while !process_gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = process_gone(pid);
    if !gone {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
    }
    assert!(gone, "the server outlived its parent by {REACT:?}");
    // An orderly stop (SIGTERM), not a kill: the socket file was removed.
    let deadline = Instant::now() + REACT;
    while sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!sock.exists(), "the socket was left behind");
}

#[test]
fn exit_last_stops_when_the_last_client_leaves() {
    require_tool!("nbdinfo", "qemu-io");
    // The server option, and the filter (which stops the server through the
    // hook the server sets).
    for how in [&["--exit-last"][..], &["--filter", "exitlast"][..]] {
        let dir = tempdir();
        let mut args = vec!["memory", "1M"];
        args.extend_from_slice(how);
        let mut server = Server::disksynth_unix(dir.path(), &args);
        // Nobody has come yet: it waits for a first client.
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            server.is_running(),
            "{how:?}: exited before any client came"
        );
        let out = run_ok(Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 64k",
            server.uri(),
        ]));
        assert!(
            out.stdout_str().contains("wrote 65536/65536"),
            "{}",
            out.describe()
        );
        let status = server
            .wait_exit(REACT)
            .unwrap_or_else(|| panic!("{how:?}: still running after its last client left"));
        assert!(status.success(), "{how:?}: {status}");
    }
}

/// Lines `key=value` of a script's output.
fn vars(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const SHOW_VARS: &str = r#"printf 'uri=%s\nnbd=%s\nport=%s\nunixsocket=%s\nexportname=%s\ntls=%s\n' \
  "$uri" "$nbd" "$port" "$unixsocket" "$exportname" "$tls""#;

#[test]
fn run_uses_the_unix_socket_given_and_sets_nbdkits_variables() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let sock = dir.path().join("public.sock");
    let script = format!(
        "{SHOW_VARS}\ntest -S \"$unixsocket\" || exit 3\n\
         echo size=$(nbdinfo --size \"nbd+unix:///b?socket=$unixsocket\")"
    );
    let out = run_ok(
        disksynth()
            .args([
                "serve",
                "--export",
                "a=pattern 1M",
                "--export",
                "b=zero 2M",
                "-U",
            ])
            .arg(&sock)
            .args(["--run", &script]),
    );
    let v = vars(&out.stdout_str());
    assert_eq!(
        v["unixsocket"],
        sock.to_str().unwrap(),
        "{}",
        out.describe()
    );
    assert_eq!(v["uri"], format!("nbd+unix:///a?socket={}", sock.display()));
    assert_eq!(v["nbd"], v["uri"]);
    assert_eq!(v["exportname"], "a");
    assert_eq!(v["port"], "");
    assert_eq!(v["tls"], "0");
    assert_eq!(v["size"], "2097152");
    assert!(!sock.exists(), "the socket outlived the server");
}

#[test]
fn run_uses_the_tcp_port_given_with_a_percent_encoded_uri() {
    require_tool!("nbdinfo");
    let script = format!("{SHOW_VARS}\necho size=$(nbdinfo --size \"$uri\")");
    let out = run_ok(disksynth().args([
        "pattern",
        "1M",
        "-e",
        "my disk/ü?#",
        "-i",
        "localhost",
        "-p",
        "0",
        "--run",
        &script,
    ]));
    let v = vars(&out.stdout_str());
    let port: u16 = v["port"].parse().expect("a port number");
    assert_ne!(port, 0);
    assert!(
        v["uri"].ends_with(&format!(":{port}/my%20disk%2F%C3%BC%3F%23")),
        "{}",
        out.describe()
    );
    assert_eq!(v["exportname"], "my disk/ü?#");
    assert_eq!(v["unixsocket"], "");
    assert_eq!(v["tls"], "0");
    // A real client decodes the URI back to the name and gets the export.
    assert_eq!(v["size"], "1048576", "{}", out.describe());
}

#[test]
fn a_host_name_given_to_i_is_resolved() {
    require_tool!("nbdinfo");
    let mut cmd = disksynth();
    cmd.args(["pattern", "1M", "-i", "localhost", "-p", "0"]);
    let server = Server::spawn(cmd);
    // The URI names the address it resolved to and listens on.
    let uri = server.uri().to_string();
    assert!(
        uri.starts_with("nbd://127.0.0.1:") || uri.starts_with("nbd://[::1]:"),
        "{uri}"
    );
    let out = run_ok(Command::new("nbdinfo").arg("--size").arg(&uri));
    assert_eq!(out.stdout_str().trim(), "1048576");
    drop(server);
    let out = run(
        disksynth().args(["pattern", "1M", "-i", "no-such-host.invalid", "-p", "0"]),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str()
            .contains("cannot resolve -i no-such-host.invalid"),
        "{}",
        out.describe()
    );
}
