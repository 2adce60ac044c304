//! One server, several named exports (`Server::with_catalog`), seen by a
//! real client (nbdinfo): `NBD_OPT_LIST` names and describes them all,
//! `NBD_OPT_GO` picks by name, the empty name gets the default, an
//! unknown name is refused naming those there are; `exit_last` stops the
//! server when its last client leaves.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disksynth_tests::{command, nbdinfo_list_json, require_tool, run, tempdir, CMD_TIMEOUT};
use nbd_export::proto::*;
use nbd_export::{Catalog, CatalogEntry, Listener, Server, ServerOptions, Stream};
use sources::PatternDev;
use synth::SharedExport;

fn entry(name: &str, size: u64, description: Option<&str>) -> CatalogEntry {
    let export = SharedExport::new(Arc::new(PatternDev::new(size)), format!("pattern {size}"));
    let mut e = CatalogEntry::new(name, Arc::new(export));
    e.description = description.map(str::to_owned);
    e
}

fn catalog() -> Catalog {
    let mut ro = entry("ro", 8192, Some("read-only"));
    ro.readonly = true;
    Catalog::new(vec![
        entry("small", 4096, Some("a small one")),
        entry("big disk/ü", 1 << 20, None),
        ro,
    ])
    .unwrap()
}

#[test]
fn list_info_and_go_by_name_with_nbdinfo() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let sock = dir.path().join("sock");
    let listener = Listener::Unix(UnixListener::bind(&sock).unwrap());
    let server = Server::with_catalog(catalog(), ServerOptions::default()).unwrap();
    let stop = server.shutdown_handle();
    let t = std::thread::spawn(move || server.run(listener).unwrap());
    let uri = |name: &str| format!("nbd+unix:///{name}?socket={}", sock.display());

    let list = nbdinfo_list_json(&uri(""));
    let exports = list["exports"].as_array().expect("an export list");
    let seen: Vec<(String, String, u64)> = exports
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap().to_owned(),
                e["description"].as_str().unwrap_or_default().to_owned(),
                e["export-size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("small".into(), "a small one".into(), 4096),
            ("big disk/ü".into(), "pattern 1048576".into(), 1 << 20),
            ("ro".into(), "read-only".into(), 8192),
        ]
    );
    let ro = &exports[2];
    assert_eq!(ro["is_read_only"], true, "{ro}");

    let size = |name: &str| {
        let out = run(&mut command("nbdinfo", ["--size", &uri(name)]), CMD_TIMEOUT);
        assert!(out.status.success(), "{}", out.describe());
        out.stdout_str().trim().parse::<u64>().unwrap()
    };
    assert_eq!(size("small"), 4096);
    assert_eq!(size("big%20disk%2F%C3%BC"), 1 << 20);
    assert_eq!(size(""), 4096, "the empty name reaches the first export");

    let out = run(
        command("nbdinfo", ["--size", &uri("nope")]).env("LIBNBD_DEBUG", "1"),
        CMD_TIMEOUT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    let err = out.stderr_str();
    assert!(
        err.contains(r#"no export named "nope" (this server has "small", "big disk/ü", "ro")"#),
        "{err}"
    );
    stop.trigger();
    t.join().unwrap();
}

#[test]
fn exit_last_stops_after_the_last_client_leaves() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let sock = dir.path().join("sock");
    let listener = Listener::Unix(UnixListener::bind(&sock).unwrap());
    let opts = ServerOptions {
        exit_last: true,
        ..ServerOptions::default()
    };
    let server = Server::with_catalog(catalog(), opts).unwrap();
    let stop = server.shutdown_handle();
    let t = std::thread::spawn(move || server.run(listener).unwrap());
    // Nobody came yet: the server waits.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!t.is_finished(), "stopped before any client came");
    let out = run(
        &mut command(
            "nbdinfo",
            [
                "--size",
                &format!("nbd+unix:///small?socket={}", sock.display()),
            ],
        ),
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.describe());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let finished = t.is_finished();
    stop.trigger();
    t.join().unwrap();
    assert!(
        finished,
        "the server kept running after its only client left"
    );
}

/// A raw option-haggling client (able to ask for anything) over a socketpair to
/// `Server::serve_connection`.
struct Raw {
    s: UnixStream,
    served: std::thread::JoinHandle<()>,
}

impl Raw {
    fn connect(server: &Arc<Server>) -> Raw {
        let (a, b) = UnixStream::pair().unwrap();
        let server = server.clone();
        let served = std::thread::spawn(move || server.serve_connection(Stream::Unix(b)));
        a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = Raw { s: a, served };
        let mut greeting = [0u8; 18];
        r.s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[0..8], &NBDMAGIC.to_be_bytes());
        r.s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        r
    }

    fn send(&mut self, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// Replies (kind, data) up to the final one.
    fn opt(&mut self, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send(opt, data);
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            assert_eq!(&h[0..8], &OPT_REPLY_MAGIC.to_be_bytes());
            assert_eq!(&h[8..12], &opt.to_be_bytes());
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut d = vec![0u8; len];
            self.s.read_exact(&mut d).unwrap();
            let last = kind == REP_ACK || kind & REP_ERR != 0;
            out.push((kind, d));
            if last {
                return out;
            }
        }
    }

    fn info(name: &[u8], reqs: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    /// The `NBD_INFO_*` reply of type `info` among `replies`.
    fn find(replies: &[(u32, Vec<u8>)], info: u16) -> Vec<u8> {
        replies
            .iter()
            .find(|(k, d)| *k == REP_INFO && d[0..2] == info.to_be_bytes())
            .map(|(_, d)| d[2..].to_vec())
            .unwrap_or_else(|| panic!("no NBD_INFO {info} in {replies:?}"))
    }

    fn abort(mut self) {
        self.send(OPT_ABORT, &[]);
        drop(self.s);
        self.served.join().unwrap();
    }
}

#[test]
fn what_a_client_is_told_about_each_export_is_that_exports_own() {
    let tricky = entry("", 512, Some("the default"));
    let long = "n".repeat(4096);
    let catalog = Catalog::new(vec![
        entry("a", 4096, None),
        tricky,
        entry(&long, 1024, Some("longest name")),
    ])
    .unwrap();
    let server = Server::with_catalog(catalog, ServerOptions::default()).unwrap();
    let mut c = Raw::connect(&server);

    // LIST: every export, name length then name then description (proto.md NBD_REP_SERVER).
    let list = c.opt(OPT_LIST, &[]);
    assert_eq!(list.len(), 4);
    let servers: Vec<(String, String)> = list[..3]
        .iter()
        .map(|(k, d)| {
            assert_eq!(*k, REP_SERVER);
            let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
            (
                String::from_utf8(d[4..4 + n].to_vec()).unwrap(),
                String::from_utf8(d[4 + n..].to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(servers[0], ("a".into(), "pattern 4096".into()));
    assert_eq!(servers[1], ("".into(), "the default".into()));
    assert_eq!(servers[2], (long.clone(), "longest name".into()));

    // The empty name reaches the export named "", not the first; INFO_NAME says so.
    for (asked, size, told) in [
        ("", 512u64, ""),
        ("a", 4096, "a"),
        (long.as_str(), 1024, long.as_str()),
    ] {
        let r = c.opt(
            OPT_INFO,
            &Raw::info(asked.as_bytes(), &[INFO_NAME, INFO_DESCRIPTION]),
        );
        assert_eq!(r.last().unwrap().0, REP_ACK, "{asked:?}");
        let export = Raw::find(&r, INFO_EXPORT);
        assert_eq!(u64::from_be_bytes(export[0..8].try_into().unwrap()), size);
        assert_eq!(Raw::find(&r, INFO_NAME), told.as_bytes());
    }
    // One byte past the longest name NBD allows: malformed, not looked up.
    let r = c.opt(OPT_INFO, &Raw::info("n".repeat(4097).as_bytes(), &[]));
    assert_eq!(r[0].0, REP_ERR_INVALID);
    // Unknown names, for INFO and for meta contexts, are refused naming what there is.
    let r = c.opt(OPT_INFO, &Raw::info(b"b", &[]));
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    let msg = String::from_utf8_lossy(&r[0].1).into_owned();
    assert!(
        msg.starts_with(r#"no export named "b" (this server has "a", "", "nnnn"#),
        "{msg}"
    );
    assert_eq!(c.opt(OPT_STRUCTURED_REPLY, &[])[0].0, REP_ACK);
    let mut meta = 1u32.to_be_bytes().to_vec();
    meta.push(b'b');
    meta.extend_from_slice(&0u32.to_be_bytes());
    let r = c.opt(OPT_LIST_META_CONTEXT, &meta);
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    c.abort();

    // NBD_OPT_EXPORT_NAME cannot fail politely: an unknown name closes the connection.
    let mut c = Raw::connect(&server);
    c.send(OPT_EXPORT_NAME, b"nope");
    let mut b = [0u8; 1];
    assert_eq!(c.s.read(&mut b).unwrap(), 0, "the connection stays open");
    c.served.join().unwrap();
}

#[test]
fn a_read_only_export_says_so_and_the_others_stay_writable() {
    let mem = |name: &str| {
        let dev = Arc::new(sources::memory(1 << 20).unwrap());
        CatalogEntry::new(name, Arc::new(SharedExport::new(dev, "memory")))
    };
    let mut ro = mem("ro");
    ro.readonly = true;
    let server = Server::with_catalog(
        Catalog::new(vec![mem("rw"), ro]).unwrap(),
        ServerOptions::default(),
    )
    .unwrap();
    let flags = |name: &str| {
        let mut c = Raw::connect(&server);
        let r = c.opt(OPT_INFO, &Raw::info(name.as_bytes(), &[]));
        c.abort();
        let e = Raw::find(&r, INFO_EXPORT);
        u16::from_be_bytes([e[8], e[9]])
    };
    assert_eq!(flags("rw") & TF_READ_ONLY, 0);
    assert_ne!(flags("ro") & TF_READ_ONLY, 0);
    // The server-wide -r still covers every export.
    let server = Server::with_catalog(
        Catalog::new(vec![mem("rw")]).unwrap(),
        ServerOptions {
            readonly: true,
            ..ServerOptions::default()
        },
    )
    .unwrap();
    let mut c = Raw::connect(&server);
    let r = c.opt(OPT_INFO, &Raw::info(b"rw", &[]));
    c.abort();
    let e = Raw::find(&r, INFO_EXPORT);
    assert_ne!(u16::from_be_bytes([e[8], e[9]]) & TF_READ_ONLY, 0);
}
