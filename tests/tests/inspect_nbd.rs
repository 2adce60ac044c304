//! `disksynth inspect URI`: a built GPT disk read through disksynth's NBD client says the same as
//! the file, whether nbdkit (fixed newstyle, non-fixed newstyle, strict block sizes) or
//! disksynth itself (TCP, a percent-encoded export name) serves it; refused exports, TLS URIs,
//! failing reads and hostile servers are one error line each, in bounded time, never a panic.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use disksynth_tests::trees::write_file;
use disksynth_tests::{disksynth, require_tool, run, unix_uri, Output, Server, CMD_TIMEOUT};
use serde_json::Value;

/// A GPT disk with an ESP (FAT) and a root partition (ext4), built with `--part` flags.
fn gpt_disk(d: &Path) -> PathBuf {
    write_file(d, "esp/EFI/BOOT/BOOTX64.EFI", &[0xE5; 4096]);
    write_file(d, "rootfs/etc/hostname", b"inspected\n");
    let mut cmd = disksynth();
    cmd.current_dir(d)
        .args(["build", "--table", "gpt", "--seed", "inspect-nbd"])
        .args([
            "--part",
            "esp:fat:esp:34M",
            "--part",
            "root-x86-64:ext4:rootfs",
        ])
        .args(["-o", "disk.img"])
        .env_remove("SOURCE_DATE_EPOCH");
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    d.join("disk.img")
}

fn inspect(target: &str, extra: &[&str]) -> Output {
    let mut cmd = disksynth();
    cmd.args(["inspect", "--json"]).arg(target).args(extra);
    run(&mut cmd, CMD_TIMEOUT)
}

fn inspect_json(target: &str) -> Value {
    let out = inspect(target, &[]);
    assert!(out.status.success(), "{}", out.describe());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.describe()))
}

/// The command failed with exactly one line on stderr, `disksynth: error: …`; returns it.
fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "{}", out.describe());
    let err = out.stderr_str();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(
        lines[0].starts_with("disksynth: error: "),
        "{}",
        out.describe()
    );
    assert!(!err.contains("panicked"), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());
    lines[0].to_owned()
}

#[test]
fn an_nbd_export_inspects_like_the_file_it_serves() {
    require_tool!("nbdkit");
    let dir = disksynth_tests::tempdir();
    let d = dir.path();
    let img = gpt_disk(d);
    let img_s = img.to_str().unwrap();
    let want = inspect_json(img_s);
    assert_eq!(want["table"], "gpt", "{want}");
    assert_eq!(want["partitions"].as_array().unwrap().len(), 2, "{want}");
    assert_eq!(
        want["partitions"][0]["filesystem"]["type"], "vfat",
        "{want}"
    );
    assert_eq!(
        want["partitions"][1]["filesystem"]["type"], "ext4",
        "{want}"
    );

    // nbdkit as the reference server: fixed newstyle and NBD_OPT_GO; non-fixed newstyle
    // (NBD_OPT_EXPORT_NAME only); 4 KiB minimum and 64 KiB maximum blocks enforced with errors.
    for args in [
        vec!["file", img_s],
        vec!["--mask-handshake=0", "file", img_s],
        vec![
            "--filter=blocksize-policy",
            "file",
            img_s,
            "blocksize-minimum=4096",
            "blocksize-preferred=4096",
            "blocksize-maximum=65536",
            "blocksize-error-policy=error",
        ],
    ] {
        let sub = disksynth_tests::tempdir();
        let server = Server::nbdkit(sub.path(), &args);
        assert_eq!(inspect_json(server.uri()), want, "nbdkit {args:?}");
        // The table output names the URI.
        let mut cmd = disksynth();
        cmd.arg("inspect").arg(server.uri());
        let out = run(&mut cmd, CMD_TIMEOUT);
        assert!(out.status.success(), "{}", out.describe());
        assert!(
            out.stdout_str().starts_with(&format!("{}: ", server.uri())),
            "{}",
            out.describe()
        );
    }

    // disksynth serving the file over TCP under a name that needs percent-encoding.
    let name = "vm disk/ü";
    let server = Server::disksynth_tcp(&["file", img_s, "-e", name]);
    let uri = server.uri().to_owned();
    assert!(
        uri.starts_with("nbd://127.0.0.1:") && uri.ends_with("/vm%20disk%2F%C3%BC"),
        "{uri}"
    );
    assert_eq!(inspect_json(&uri), want);
    // The empty name is the default export.
    let base = &uri[..uri.rfind('/').unwrap()];
    assert_eq!(inspect_json(base), want);
    // Any other name is refused, and the error names it.
    let line = one_error_line(&inspect(&format!("{base}/other%20one"), &[]));
    assert!(line.contains("has no export named \"other one\""), "{line}");
}

#[test]
fn refusals_tls_uris_and_failing_reads_are_one_error_line() {
    let t0 = Instant::now();
    let line = one_error_line(&inspect("nbds://127.0.0.1/disk", &[]));
    assert!(line.contains("TLS is not supported yet"), "{line}");
    let line = one_error_line(&inspect("nbds+unix:///disk?socket=/nonexistent", &[]));
    assert!(line.contains("TLS is not supported yet"), "{line}");
    let line = one_error_line(&inspect("nbd+unix:///disk", &[]));
    assert!(line.contains("socket=PATH"), "{line}");
    let line = one_error_line(&inspect("nbd://127.0.0.1:99999/", &[]));
    assert!(line.contains("bad port \"99999\""), "{line}");
    // Nobody listens on this port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let line = one_error_line(&inspect(&format!("nbd://127.0.0.1:{port}/x"), &[]));
    assert!(
        line.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{line}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));

    require_tool!("nbdkit");
    let dir = disksynth_tests::tempdir();
    let img = dir.path().join("blank.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let img_s = img.to_str().unwrap();
    // nbdkit refusing names it does not serve (NBD_REP_ERR_UNKNOWN).
    let sub = disksynth_tests::tempdir();
    let server = Server::nbdkit(
        sub.path(),
        &[
            "--filter=exportname",
            "file",
            img_s,
            "exportname=good",
            "exportname-strict=true",
        ],
    );
    let bad = server.uri().replacen(":///", ":///b%61d", 1);
    let line = one_error_line(&inspect(&bad, &[]));
    assert!(line.contains("has no export named \"bad\""), "{line}");
    let good = server.uri().replacen(":///", ":///good", 1);
    assert_eq!(inspect_json(&good)["table"], Value::Null);
    drop(server);
    // Every read failing with EIO: an error, not an empty disk.
    let sub = disksynth_tests::tempdir();
    let server = Server::nbdkit(
        sub.path(),
        &[
            "--filter=error",
            "file",
            img_s,
            "error-pread=EIO",
            "error-pread-rate=1",
        ],
    );
    let line = one_error_line(&inspect(server.uri(), &[]));
    assert!(line.contains("NBD_EIO"), "{line}");
    drop(server);
    // Oldstyle negotiation has no export names.
    let sub = disksynth_tests::tempdir();
    let server = Server::nbdkit(sub.path(), &["-o", "file", img_s]);
    let line = one_error_line(&inspect(server.uri(), &[]));
    assert!(line.contains("oldstyle"), "{line}");
}

// --- Hostile servers: scripted in a test thread --------------------------------------------

const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// A socket serving one connection with `script` in a thread (its errors are ignored: the
/// client may hang up first). Returns the URI, and the directory of a Unix socket.
fn hostile(unix: bool, script: Script) -> (String, Option<tempfile::TempDir>) {
    if unix {
        let dir = disksynth_tests::tempdir();
        let sock = dir.path().join("hostile.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = script(&mut s);
            }
        });
        (unix_uri(&sock), Some(dir))
    } else {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!(
            "nbd://127.0.0.1:{}/x",
            listener.local_addr().unwrap().port()
        );
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = script(&mut s);
            }
        });
        (uri, None)
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// Greeting (fixed newstyle, no zeroes), client flags, and the option the client sends.
fn greet_and_read_option(s: &mut dyn ReadWrite) -> std::io::Result<u32> {
    let mut g = Vec::new();
    g.extend_from_slice(NBDMAGIC);
    g.extend_from_slice(IHAVEOPT);
    g.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&g)?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags)?;
    let mut h = [0u8; 16];
    s.read_exact(&mut h)?;
    let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
    assert!(len < 8192);
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)?;
    Ok(opt)
}

fn option_reply(s: &mut dyn ReadWrite, kind: u32, len: u32, data: &[u8]) -> std::io::Result<()> {
    let mut m = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

/// A complete handshake for a 1 GiB export; returns the first request's cookie.
fn handshake_then_first_cookie(s: &mut dyn ReadWrite) -> std::io::Result<u64> {
    greet_and_read_option(s)?;
    let mut info = 0u16.to_be_bytes().to_vec();
    info.extend_from_slice(&(1u64 << 30).to_be_bytes());
    info.extend_from_slice(&3u16.to_be_bytes());
    option_reply(s, REP_INFO, 12, &info)?;
    option_reply(s, REP_ACK, 0, &[])?;
    let mut req = [0u8; 28];
    s.read_exact(&mut req)?;
    Ok(u64::from_be_bytes(req[8..16].try_into().unwrap()))
}

fn simple_reply(s: &mut dyn ReadWrite, cookie: u64, data: &[u8]) -> std::io::Result<()> {
    let mut m = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

type Script = fn(&mut dyn ReadWrite) -> std::io::Result<()>;

#[test]
fn hostile_servers_get_one_error_line_in_bounded_time() {
    let cases: [(&str, bool, Script, &str); 7] = [
        (
            "an HTTP server",
            false,
            |s| s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
            "not an NBD server: its greeting starts with \"HTTP/1.1\"",
        ),
        (
            "wrong second magic",
            true,
            |s| s.write_all(b"NBDMAGICIHAVEOPX\x00\x03"),
            "bad magic 0x49484156454f5058",
        ),
        (
            "a 4 GiB option reply",
            true,
            |s| {
                greet_and_read_option(s)?;
                option_reply(s, REP_INFO, u32::MAX, b"\0\0")?;
                thread::sleep(Duration::from_secs(5));
                Ok(())
            },
            "of 4294967295 bytes, more than the 65536-byte limit",
        ),
        (
            "hangs up mid-greeting",
            false,
            |s| s.write_all(&NBDMAGIC[..]),
            "the connection was closed (reading its greeting)",
        ),
        (
            "silence",
            false,
            |_| {
                thread::sleep(Duration::from_secs(10));
                Ok(())
            },
            "no answer within 1 s (waiting for its greeting)",
        ),
        (
            "a reply to another request",
            false,
            |s| {
                let cookie = handshake_then_first_cookie(s)?;
                simple_reply(s, cookie ^ 0x5555, &[0; 512])
            },
            "a reply with cookie",
        ),
        (
            "a reply cut short",
            true,
            |s| {
                let cookie = handshake_then_first_cookie(s)?;
                simple_reply(s, cookie, &[0; 100])
            },
            "the server closed the connection",
        ),
    ];
    for (what, unix, script, expect) in cases {
        let (uri, _dir) = hostile(unix, script);
        let t0 = Instant::now();
        let out = inspect(&uri, &["--timeout", "1"]);
        let line = one_error_line(&out);
        assert!(line.contains(expect), "{what}: {line}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            t0.elapsed()
        );
    }
}
