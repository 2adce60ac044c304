//! One server, several named exports (`Server::with_catalog`), seen by a
//! real client (nbdinfo): `NBD_OPT_LIST` names and describes them all,
//! `NBD_OPT_GO` picks by name, the empty name gets the default, an
//! unknown name is refused naming those there are; `exit_last` stops the
//! server when its last client leaves.

use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use disksynth_tests::{command, nbdinfo_list_json, require_tool, run, tempdir, CMD_TIMEOUT};
use nbd_export::{Catalog, CatalogEntry, Listener, Server, ServerOptions};
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
