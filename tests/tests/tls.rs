//! NBD over TLS (`--tls`, proto.md "TLS support") with real clients: libnbd (nbdinfo, nbdcopy,
//! the Python bindings) over `nbds://` and `nbds+unix://`, qemu-img and qemu-io with
//! `tls-creds-x509`, and a raw client (Python's ssl) for what they never send. Certificates are
//! made per test by tests/scripts/tls_pki.sh with openssl.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use disksynth_tests::{
    python_script, random_bytes, require_tool, run, run_ok, script, tempdir, Output, Server,
    Signal, CMD_TIMEOUT,
};

/// A CA with a server and a client certificate in `dir/name` (see tls_pki.sh), plus an
/// expired pair in `dir/name/expired`.
fn pki(dir: &Path, name: &str) -> PathBuf {
    run_ok(
        Command::new("sh")
            .arg(script("tls_pki.sh"))
            .arg(dir)
            .arg(name),
    );
    dir.join(name)
}

/// A 24 MiB host file of random bytes (several maximum-size requests, not a multiple of 64 KiB
/// pieces at every offset).
fn disk(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = random_bytes(17, 24 << 20);
    let path = dir.join("disk.img");
    fs::write(&path, &data).expect("writing the disk");
    (path, data)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The TCP port of a server that printed `nbd://127.0.0.1:PORT` or `nbds://...`.
fn port(server: &Server) -> u16 {
    let uri = server.uri();
    let rest = uri.split("127.0.0.1:").nth(1).expect("a 127.0.0.1 URI");
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().expect("a port")
}

/// A TCP server of `source` (a subcommand and its arguments) with `--tls MODE` and the
/// credentials in `pki`, then `extra` flags.
fn tls_tcp(source: &[&str], mode: &str, pki: &Path, extra: &[&str]) -> Server {
    let mut args = source.to_vec();
    args.extend(["--tls", mode, "--tls-certificates", s(pki)]);
    args.extend_from_slice(extra);
    Server::disksynth_tcp(&args)
}

fn nbds_tcp(port: u16, client_dir: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{port}/?tls-certificates={}",
        s(client_dir)
    )
}

fn nbdinfo(uri: &str) -> Output {
    run(Command::new("nbdinfo").arg(uri), CMD_TIMEOUT)
}

fn copy_and_compare(uri: &str, out: &Path, want: &[u8]) {
    run_ok(Command::new("nbdcopy").arg(uri).arg(out));
    let got = fs::read(out).expect("reading the copy");
    assert!(got == want, "{uri}: the copy differs from the disk");
}

/// qemu's client credentials object for `dir` (ca-cert.pem, client-cert.pem, client-key.pem).
fn qemu_creds(dir: &Path) -> String {
    format!("tls-creds-x509,id=tls0,dir={},endpoint=client", s(dir))
}

fn qemu_opts(port: u16) -> String {
    format!("driver=nbd,host=127.0.0.1,port={port},tls-creds=tls0")
}

/// Waits for `needle` in the server's log and says what was there if it never came.
fn assert_logged(server: &Server, needle: &str) {
    assert!(
        server.wait_stderr_contains(needle, Duration::from_secs(10)),
        "server log lacks {needle:?}:\n{}",
        server.stderr_text()
    );
}

#[test]
fn libnbd_reads_byte_for_byte_over_tcp_and_unix() {
    require_tool!("nbdinfo", "nbdcopy", "openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let (path, data) = disk(dir.path());
    let tcp = tls_tcp(&["file", s(&path)], "require", &pki, &["-v"]);
    assert!(tcp.uri().starts_with("nbds://"), "printed {}", tcp.uri());
    let uri = nbds_tcp(port(&tcp), &pki);
    let info = nbdinfo(&uri);
    assert!(info.status.success(), "{}", info.describe());
    assert!(
        info.stdout_str().contains("with TLS"),
        "{}",
        info.stdout_str()
    );
    // nbdcopy opens several connections: each its own TLS session.
    copy_and_compare(&uri, &dir.path().join("tcp.raw"), &data);

    let sock = dir.path().join("sock");
    let unix = Server::disksynth(&[
        "file",
        s(&path),
        "-U",
        s(&sock),
        "--tls",
        "require",
        "--tls-certificates",
        s(&pki),
    ]);
    assert!(
        unix.uri().starts_with("nbds+unix://"),
        "printed {}",
        unix.uri()
    );
    let uri = format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        s(&sock),
        s(&pki)
    );
    copy_and_compare(&uri, &dir.path().join("unix.raw"), &data);
    assert_logged(&tcp, "TLS established");
}

#[test]
fn qemu_reads_and_writes_over_tls() {
    require_tool!("qemu-img", "qemu-io", "openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let (path, data) = disk(dir.path());
    let server = tls_tcp(&["file", s(&path)], "require", &pki, &[]);
    let out = dir.path().join("qemu.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "--object", &qemu_creds(&pki), "--image-opts"])
            .arg(qemu_opts(port(&server)))
            .args(["-O", "raw"])
            .arg(&out),
    );
    assert!(
        fs::read(&out).expect("the copy") == data,
        "qemu-img's copy differs"
    );

    // Writes carry payloads through TLS the other way; a 4 MiB one spans many records.
    let mem = tls_tcp(&["memory", "64M"], "require", &pki, &[]);
    let io = run_ok(
        Command::new("qemu-io")
            .args(["--object", &qemu_creds(&pki), "--image-opts"])
            .arg(qemu_opts(port(&mem)))
            .args(["-c", "write -P 0xab 1M 4M", "-c", "read -P 0xab 1M 4M"])
            .args(["-c", "read -P 0 0 1M"]),
    );
    assert!(
        !io.stdout_str().contains("Pattern verification failed"),
        "{}",
        io.describe()
    );
    assert_eq!(io.stdout_str().matches("read 1048576/1048576").count(), 1);
    assert_eq!(io.stdout_str().matches("read 4194304/4194304").count(), 1);
}

#[test]
fn require_refuses_plain_clients_and_off_refuses_tls_clients() {
    require_tool!("nbdinfo", "qemu-img", "openssl", "python3-nbd");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let (path, _) = disk(dir.path());
    let server = tls_tcp(&["file", s(&path)], "require", &pki, &["-v"]);
    let p = port(&server);
    let plain = run(
        Command::new("qemu-img")
            .arg("info")
            .arg(format!("nbd://127.0.0.1:{p}")),
        CMD_TIMEOUT,
    );
    assert!(!plain.status.success(), "{}", plain.describe());
    assert!(
        plain
            .stderr_str()
            .contains("server reported: this server requires TLS (--tls require)"),
        "{}",
        plain.describe()
    );
    assert_logged(&server, "before TLS refused (--tls require)");
    let libnbd = nbdinfo(&format!("nbd://127.0.0.1:{p}"));
    assert!(!libnbd.status.success(), "{}", libnbd.describe());

    // Raw: LIST, INFO, GO and STRUCTURED_REPLY get ERR_TLS_REQD and reveal no export;
    // EXPORT_NAME, which cannot be refused politely, ends the connection.
    let raw = raw_options(p, &pki, "plain");
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), 5, "{raw}");
    for (l, opt) in lines.iter().zip([3, 6, 7, 8]) {
        assert!(
            l.starts_with(&format!(
                "opt={opt} reply=ERR_TLS_REQD msg=this server requires TLS"
            )),
            "{raw}"
        );
    }
    assert_eq!(lines[4], "closed", "{raw}");
    assert_logged(&server, "NBD_OPT_EXPORT_NAME refused, hanging up");

    // A TLS client against a server without TLS.
    let off = Server::disksynth_tcp(&["file", s(&path), "-v"]);
    let q = port(&off);
    let tls = run(
        Command::new("qemu-img")
            .args(["info", "--object", &qemu_creds(&pki), "--image-opts"])
            .arg(qemu_opts(q)),
        CMD_TIMEOUT,
    );
    assert!(!tls.status.success(), "{}", tls.describe());
    assert!(
        tls.stderr_str()
            .contains("server reported: TLS is not enabled on this server (--tls off)"),
        "{}",
        tls.describe()
    );
    let libnbd = nbdinfo(&nbds_tcp(q, &pki));
    assert!(!libnbd.status.success(), "{}", libnbd.describe());
    // libnbd says only "connection is closed" here (as against nbdkit --tls=off): qemu's
    // message above is the one that carries the server's reason.
    assert_logged(&off, "NBD_OPT_STARTTLS refused (--tls off)");
}

/// tests/scripts/tls_options.py against 127.0.0.1:`port`: its stdout.
fn raw_options(port: u16, pki: &Path, case: &str) -> String {
    raw_options_with(port, pki, case, None)
}

/// [`raw_options`] with a client certificate directory.
fn raw_options_with(port: u16, pki: &Path, case: &str, client: Option<&Path>) -> String {
    let mut cmd = python_script("tls_options.py");
    cmd.arg("127.0.0.1")
        .arg(port.to_string())
        .arg(pki.join("ca-cert.pem"))
        .arg(case);
    if let Some(c) = client {
        cmd.arg(c);
    }
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    out.stdout_str()
}

#[test]
fn starttls_twice_is_invalid_and_a_stalled_tls_handshake_is_cut_off() {
    require_tool!("openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let server = tls_tcp(&["memory", "1M"], "on", &pki, &["--handshake-limit", "2"]);
    let p = port(&server);
    let twice = raw_options(p, &pki, "twice");
    let lines: Vec<&str> = twice.lines().collect();
    assert_eq!(
        lines,
        [
            "opt=5 reply=ACK msg=",
            "tls=TLSv1.3",
            "opt=5 reply=ERR_INVALID msg=TLS is already negotiated on this connection",
            "opt=3 reply=SERVER name=",
            "opt=3 reply=ACK msg=",
            "opt=2 reply=ACK msg=",
        ],
        "{twice}"
    );
    let payload = raw_options(p, &pki, "payload");
    assert!(
        payload.starts_with("opt=5 reply=ERR_INVALID msg=NBD_OPT_STARTTLS takes no payload\n"),
        "{payload}"
    );
    // ACKed, then no ClientHello: the handshake deadline (2 s) ends it, not the 30 s
    // timeout of the script.
    let stall = raw_options(p, &pki, "stall");
    assert_eq!(stall, "opt=5 reply=ACK msg=\nclosed\n");
    assert_logged(
        &server,
        "TLS handshake: the handshake did not finish within 2s",
    );
}

#[test]
fn tls_on_serves_plain_and_tls_clients() {
    require_tool!("nbdinfo", "openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let server = tls_tcp(&["pattern", "8M"], "on", &pki, &[]);
    let p = port(&server);
    let plain = nbdinfo(&format!("nbd://127.0.0.1:{p}"));
    assert!(plain.status.success(), "{}", plain.describe());
    assert!(
        plain.stdout_str().contains("without TLS"),
        "{}",
        plain.stdout_str()
    );
    let tls = nbdinfo(&nbds_tcp(p, &pki));
    assert!(tls.status.success(), "{}", tls.describe());
    assert!(
        tls.stdout_str().contains("with TLS"),
        "{}",
        tls.stdout_str()
    );
}

/// A client credentials directory: `ca` as ca-cert.pem, and the client pair from `from` if any.
fn client_dir(root: &Path, name: &str, ca: &Path, from: Option<&Path>) -> PathBuf {
    let d = root.join(name);
    fs::create_dir_all(&d).expect("mkdir");
    fs::copy(ca.join("ca-cert.pem"), d.join("ca-cert.pem")).expect("copy ca");
    if let Some(f) = from {
        for n in ["client-cert.pem", "client-key.pem"] {
            fs::copy(f.join(n), d.join(n)).expect("copy client pair");
        }
    }
    d
}

#[test]
fn verify_peer_refuses_missing_foreign_and_expired_client_certificates() {
    require_tool!("nbdinfo", "qemu-img", "openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let other = pki_other(dir.path());
    let server = tls_tcp(
        &["pattern", "8M"],
        "require",
        &pki,
        &["--tls-verify-peer", "-v"],
    );
    let p = port(&server);
    let good = nbdinfo(&nbds_tcp(p, &pki));
    assert!(good.status.success(), "{}", good.describe());
    assert_logged(&server, "client certificate \"O=disksynth,CN=client1\"");

    let expired = pki.join("expired");
    // GnuTLS (libnbd) sends no certificate that the CA list the server asks for does not
    // name, nor an expired one: all three reach the server without a certificate.
    let cases = [
        ("none", None),
        ("foreign", Some(other.as_path())),
        ("expired", Some(expired.as_path())),
    ];
    for (name, from) in cases {
        let d = client_dir(dir.path(), name, &pki, from);
        let out = nbdinfo(&nbds_tcp(p, &d));
        assert!(!out.status.success(), "{name}: {}", out.describe());
        assert!(
            out.stderr_str().contains("TLS") || out.stderr_str().contains("gnutls"),
            "{name}: libnbd should say TLS failed: {}",
            out.describe()
        );
        assert_logged(&server, "peer sent no certificates");
    }
    // OpenSSL (Python's ssl) sends what it is given: the server refuses with an alert that
    // says why.
    for (from, alert, logged) in [
        (
            &other,
            "tls-error=TLSV1_ALERT_UNKNOWN_CA",
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            &expired,
            "tls-error=SSLV3_ALERT_CERTIFICATE_EXPIRED",
            "invalid peer certificate: certificate expired",
        ),
    ] {
        let out = raw_options_with(p, &pki, "cert", Some(from));
        assert_eq!(
            out,
            format!("opt=5 reply=ACK msg=\ntls=TLSv1.3\n{alert}\n"),
            "client {}",
            from.display()
        );
        assert_logged(&server, logged);
    }
    let out = raw_options_with(p, &pki, "cert", Some(&pki));
    assert!(
        out.ends_with("opt=3 reply=ACK msg=\nopt=2 reply=ACK msg=\n"),
        "{out}"
    );

    // qemu, refused for want of a certificate, also fails with a TLS error.
    let d = dir.path().join("none");
    let q = run(
        Command::new("qemu-img")
            .args(["info", "--object", &qemu_creds(&d), "--image-opts"])
            .arg(qemu_opts(p)),
        CMD_TIMEOUT,
    );
    assert!(!q.status.success(), "{}", q.describe());
}

/// A second, unrelated CA (its own name, so a certificate from it is an unknown issuer).
fn pki_other(dir: &Path) -> PathBuf {
    pki(dir, "other")
}

#[test]
fn clients_refuse_a_foreign_or_expired_server_certificate() {
    require_tool!("nbdinfo", "qemu-img", "openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let other = pki_other(dir.path());
    let expired = pki.join("expired");
    let server = Server::disksynth_tcp(&[
        "pattern",
        "8M",
        "--tls",
        "require",
        "--tls-cert",
        s(&expired.join("server-cert.pem")),
        "--tls-key",
        s(&expired.join("server-key.pem")),
        "-v",
    ]);
    let p = port(&server);
    let out = nbdinfo(&nbds_tcp(p, &pki));
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains("certificate"),
        "libnbd should blame the certificate: {}",
        out.describe()
    );
    let q = run(
        Command::new("qemu-img")
            .args(["info", "--object", &qemu_creds(&pki), "--image-opts"])
            .arg(qemu_opts(p)),
        CMD_TIMEOUT,
    );
    assert!(!q.status.success(), "{}", q.describe());
    assert!(
        q.stderr_str().contains("The certificate is not trusted"),
        "qemu should say the certificate is not trusted: {}",
        q.describe()
    );
    assert_logged(&server, "the client left right after the TLS handshake");

    let fresh = tls_tcp(&["pattern", "8M"], "require", &pki, &[]);
    let out = nbdinfo(&nbds_tcp(port(&fresh), &other));
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains("certificate"),
        "libnbd should blame the certificate: {}",
        out.describe()
    );
}

#[test]
fn allow_subject_refuses_other_clients_with_the_reason() {
    require_tool!("nbdinfo", "qemu-img", "openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let args = |pattern: &'static str| {
        vec![
            "pattern".to_string(),
            "8M".into(),
            "--tls".into(),
            "require".into(),
            "--tls-certificates".into(),
            s(&pki).into(),
            "--tls-allow-subject".into(),
            pattern.into(),
        ]
    };
    let allowed: Vec<String> = args("O=disksynth,CN=client?");
    let allowed = Server::disksynth_tcp(&allowed.iter().map(String::as_str).collect::<Vec<_>>());
    let ok = nbdinfo(&nbds_tcp(port(&allowed), &pki));
    assert!(ok.status.success(), "{}", ok.describe());

    let denied: Vec<String> = args("*CN=admin");
    let denied = Server::disksynth_tcp(&denied.iter().map(String::as_str).collect::<Vec<_>>());
    let q = run(
        Command::new("qemu-img")
            .args(["info", "--object", &qemu_creds(&pki), "--image-opts"])
            .arg(qemu_opts(port(&denied))),
        CMD_TIMEOUT,
    );
    assert!(!q.status.success(), "{}", q.describe());
    assert!(
        q.stderr_str().contains(
            "server reported: refused: client certificate subject \"O=disksynth,CN=client1\" \
             does not match --tls-allow-subject \"*CN=admin\""
        ),
        "{}",
        q.describe()
    );
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_clients() {
    require_tool!("nbdinfo", "openssl", "python3-nbd");
    let dir = tempdir();
    let a = pki(dir.path(), "a");
    let b = pki_other(dir.path());
    let live = dir.path().join("live");
    fs::create_dir_all(&live).expect("mkdir");
    for n in ["server-cert.pem", "server-key.pem"] {
        fs::copy(a.join(n), live.join(n)).expect("copy");
    }
    let mut server = Server::disksynth_tcp(&[
        "pattern",
        "64M",
        "--tls",
        "require",
        "--tls-cert",
        s(&live.join("server-cert.pem")),
        "--tls-key",
        s(&live.join("server-key.pem")),
        "-v",
    ]);
    let p = port(&server);
    let mut client = Server::spawn({
        let mut c = python_script("busy_client.py");
        c.arg(nbds_tcp(p, &a));
        c
    });
    assert_eq!(client.uri(), "started");

    // Renewed by another CA: new clients must trust that one, the busy one keeps going.
    for n in ["server-cert.pem", "server-key.pem"] {
        fs::copy(b.join(n), live.join(n)).expect("copy");
    }
    server.signal(Signal::HUP);
    assert_logged(&server, "SIGHUP: TLS credentials reloaded");
    let old = nbdinfo(&nbds_tcp(p, &a));
    assert!(
        !old.status.success(),
        "the old CA still works: {}",
        old.describe()
    );
    let new = nbdinfo(&nbds_tcp(p, &b));
    assert!(new.status.success(), "{}", new.describe());

    // A broken file keeps the credentials in use.
    fs::write(live.join("server-key.pem"), "not a key").expect("write");
    server.signal(Signal::HUP);
    assert_logged(&server, "SIGHUP: keeping the TLS credentials in use");
    let still = nbdinfo(&nbds_tcp(p, &b));
    assert!(still.status.success(), "{}", still.describe());

    assert!(client.is_running(), "the busy client left");
    let status = server.stop_with(Signal::TERM);
    assert!(status.success(), "{}", server.stderr_text());
    let end = client.wait_stdout_lines(1, Duration::from_secs(10));
    let reads: u64 = end
        .first()
        .and_then(|l| l.strip_prefix("reads="))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("client said {end:?}"));
    assert!(reads > 1, "client said {end:?}");
}

#[test]
fn tls_psk_is_refused_with_the_reason() {
    let dir = tempdir();
    let keys = dir.path().join("keys.psk");
    fs::write(&keys, "alice:0123456789abcdef\n").expect("write");
    let out = run(
        disksynth_tests::disksynth()
            .args(["pattern", "1M", "-p", "0", "--tls", "require", "--tls-psk"])
            .arg(&keys),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_str().contains(
            "pre-shared keys are not supported (rustls, the TLS library used, has no TLS-PSK)"
        ),
        "{}",
        out.describe()
    );
}

#[test]
fn bad_tls_settings_are_refused_at_start() {
    require_tool!("openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let p = |n: &str| s(&pki.join(n)).to_string();
    let only_server = dir.path().join("only-server");
    fs::create_dir_all(&only_server).expect("mkdir");
    for n in ["server-cert.pem", "server-key.pem"] {
        fs::copy(pki.join(n), only_server.join(n)).expect("copy");
    }
    let on = |rest: &[String]| {
        let mut v = vec!["--tls".to_string(), "on".into()];
        v.extend_from_slice(rest);
        v
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--tls".into(), "require".into()],
            "--tls require: give the server's certificate".into(),
        ),
        (
            vec!["--tls-certificates".into(), p("")],
            "TLS options given with --tls off".into(),
        ),
        (
            on(&[
                "--tls-cert".into(),
                p("server-cert.pem"),
                "--tls-key".into(),
                p("client-key.pem"),
            ]),
            "the private key does not belong to the certificate".into(),
        ),
        (
            on(&[
                "--tls-certificates".into(),
                s(&only_server).into(),
                "--tls-verify-peer".into(),
            ]),
            "--tls-verify-peer needs the CA that signs client certificates".into(),
        ),
        (
            on(&[
                "--tls-cert".into(),
                p("nonexistent.pem"),
                "--tls-key".into(),
                p("server-key.pem"),
            ]),
            format!("{}: No such file", p("nonexistent.pem")),
        ),
    ];
    for (args, want) in cases {
        let out = run(
            disksynth_tests::disksynth()
                .args(["pattern", "1M", "-p", "0"])
                .args(&args),
            CMD_TIMEOUT,
        );
        assert!(!out.status.success(), "{args:?}: {}", out.describe());
        assert!(
            out.stderr_str().contains(&want),
            "{args:?}: wanted {want:?}\n{}",
            out.describe()
        );
    }
}

/// The qemu command line a `--tls require` server prints (line 2) works as printed: qemu takes
/// no `nbds://` URI, so it is a `tls-creds-x509` object and a `-drive` in qemu's own syntax
/// (over a Unix socket with `tls-hostname`, the certificate's CN).
#[test]
fn the_printed_qemu_command_line_works_over_tls() {
    require_tool!("qemu-img", "openssl");
    let dir = tempdir();
    let pki = pki(dir.path(), "a");
    let sock = dir.path().join("sock");
    let tls = ["--tls", "require", "--tls-certificates", s(&pki)];
    let tcp = Server::disksynth_tcp(&[&["pattern", "8M", "-e", "disk"][..], &tls].concat());
    let unix = Server::disksynth(&[&["pattern", "8M", "-U", s(&sock)][..], &tls].concat());
    for server in [&tcp, &unix] {
        let lines = server.wait_stdout_lines(1, Duration::from_secs(10));
        let line = lines.first().expect("a qemu command line");
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 5, "{line}");
        assert_eq!(
            (words[0], words[1], words[3]),
            ("qemu-system-x86_64", "-object", "-drive"),
            "{line}"
        );
        let drive = words[4].strip_suffix(",if=virtio").expect(",if=virtio");
        let out = run_ok(Command::new("qemu-img").args([
            "info",
            "--output=json",
            "--object",
            words[2],
            "--image-opts",
            drive,
        ]));
        assert!(
            out.stdout_str().contains("\"virtual-size\": 8388608"),
            "{}",
            out.describe()
        );
    }
}
