//! `--web ADDR:PORT`: the live web view, checked in a real browser (Debian's headless
//! Chromium, driven through its DevTools protocol by `tests/scripts/web_page.py`), against the
//! generator's own layout (debugfs), against the bytes a real client (libnbd) read, and as an
//! attacker would use it (garbage, huge heads, writes, other hosts' names, idle connections).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use disksynth_tests::ext4_util::debugfs_stat;
use disksynth_tests::generator::build_image;
use disksynth_tests::trees::write_file;
use disksynth_tests::{
    find_in_path, python_script, random_bytes, require_tool, run_ok, tempdir, Server,
};
use serde_json::Value;

/// The view's address, from the line the server prints on stderr.
fn web_addr(server: &Server) -> SocketAddr {
    assert!(
        server.wait_stderr_contains("web view on http://", Duration::from_secs(20)),
        "no web view line: {}",
        server.stderr_text()
    );
    // The whole line: stderr is collected as it comes, maybe mid-line.
    let start = Instant::now();
    let mut text = server.stderr_text();
    while !text
        .split("web view on http://")
        .nth(1)
        .is_some_and(|rest| rest.contains('\n'))
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
        text = server.stderr_text();
    }
    let line = text
        .lines()
        .find_map(|l| l.split("web view on http://").nth(1))
        .expect("the web view line");
    line.trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// Send `request` as is and read the whole answer: (status, body).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connecting to the web view");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A server that answers before reading all of a huge request may close
    // while it is still being sent: what it answered is what counts.
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => answer[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `/api/stats` once its figures satisfy `ok` (they are made twice a second), or the last.
fn stats_when(addr: SocketAddr, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        // A slot of the view's may be a moment from free (503) after a burst of connections.
        let (status, body) = get(addr, "/api/stats");
        if status == 503 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let st: Value = serde_json::from_slice(&body).expect("/api/stats is JSON");
        if ok(&st) || start.elapsed() > Duration::from_secs(5) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The region of `/api/map` holding the host file `path`.
fn region_of<'a>(map: &'a Value, path: &Path) -> &'a Value {
    let path = path.to_str().unwrap();
    map["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("no region of {path} in the map"))
}

fn line_value(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in\n{out}"))
        .to_string()
}

#[test]
fn the_page_names_the_file_a_client_reads_and_the_api_matches_the_generator() {
    require_tool!("chromium", "python3-nbd", "debugfs");
    let dir = tempdir();
    let tree = dir.path().join("tree");
    // A known file whose size is not a multiple of a block, among others.
    let motd = random_bytes(18, 10_000);
    let file = write_file(&tree, "etc/motd", &motd);
    write_file(&tree, "etc/hostname", b"disksynth\n");
    write_file(&tree, "usr/share/big.bin", &random_bytes(19, 300_000));

    // Where the generator puts the file, as e2fsprogs reads it.
    let img = dir.path().join("ext4.img");
    build_image("ext4", &tree, &img, &[]);
    let stat = debugfs_stat(&img, "/etc/motd");
    assert_eq!(stat.extents.len(), 1, "{stat:?}");
    let data_at = stat.extents[0].physical * 4096;

    let server = Server::disksynth_unix(
        dir.path(),
        &["ext4", tree.to_str().unwrap(), "--web", "127.0.0.1:0"],
    );
    let addr = web_addr(&server);

    // The map covers the disk in order, and the file's region is where debugfs says, exactly
    // as long as the file.
    let map = get_json(addr, "/api/map");
    let size = map["size"].as_u64().unwrap();
    let mut pos = 0;
    for r in map["regions"].as_array().unwrap() {
        assert_eq!(r["offset"].as_u64().unwrap(), pos, "{r}");
        pos += r["length"].as_u64().unwrap();
        assert!(r["path"].is_string() || r["name"].is_string(), "{r}");
    }
    assert_eq!(pos, size);
    let region = region_of(&map, &file);
    assert_eq!(region["offset"].as_u64().unwrap(), data_at, "{region}");
    assert_eq!(region["length"].as_u64().unwrap(), motd.len() as u64);
    assert_eq!(region["file_offset"], 0);
    assert_eq!(region["kind"], "file");
    // Structures are named for people.
    let names: Vec<&str> = map["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"superblock"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("inode table")),
        "{names:?}"
    );
    assert!(names.contains(&"directory /etc"), "{names:?}");
    // A range query lists what lives in one cell.
    let cell = get_json(addr, &format!("/api/map?offset={data_at}&length=4096"));
    assert_eq!(region_of(&cell, &file)["offset"], region["offset"]);

    // Nothing read yet.
    let before = stats_when(addr, |s| s["ops"].is_object());
    assert_eq!(before["ops"]["read"]["bytes"], 0);

    // The page, open in Chromium, names the file within two seconds of a client reading it.
    let chromium = find_in_path("chromium").unwrap();
    let out = run_ok(python_script("web_page.py").args([
        chromium.to_str().unwrap(),
        &format!("http://{addr}/"),
        server.uri(),
        "--offset",
        &data_at.to_string(),
        "--length",
        &motd.len().to_string(),
        "--text",
        file.to_str().unwrap(),
        "--timeout",
        "2",
    ]))
    .stdout_str();
    assert_eq!(line_value(&out, "read_bytes"), motd.len().to_string());
    assert_ne!(line_value(&out, "found_after"), "none", "{out}");

    // The counters say what the client read: these bytes, once, from this file.
    let st = stats_when(addr, |s| s["ops"]["read"]["requests"] == 1);
    assert_eq!(st["ops"]["read"]["requests"], 1, "{st}");
    assert_eq!(st["ops"]["read"]["bytes"], motd.len() as u64, "{st}");
    assert_eq!(st["ops"]["read"]["errors"], 0);
    assert!(st["ops"]["read"]["p50_us"].as_u64().unwrap() > 0);
    assert_eq!(st["connections"]["total"], 1);
    let top = &st["top_files"][0];
    assert_eq!(top["path"], file.to_str().unwrap(), "{st}");
    assert_eq!(top["read_bytes"], motd.len() as u64);
    assert_eq!(st["recent_files"].as_array().unwrap().len(), 1, "{st}");
    let map = get_json(addr, "/api/map");
    assert_eq!(region_of(&map, &file)["read_bytes"], motd.len() as u64);

    // The page and its assets are served from the binary, with a policy allowing nothing
    // from elsewhere.
    for path in ["/", "/view.js", "/view.css"] {
        assert_eq!(get(addr, path).0, 200, "{path}");
    }
    let (_, page) = raw(
        addr,
        format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    assert!(page.is_empty(), "HEAD has no body");
}

#[test]
fn hostile_http_clients_get_4xx_and_never_stop_the_disk() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let tree = dir.path().join("tree");
    write_file(&tree, "a.txt", b"hello\n");
    let server = Server::disksynth_unix(
        dir.path(),
        &["floppy", tree.to_str().unwrap(), "--web", "127.0.0.1:0"],
    );
    let addr = web_addr(&server);
    let host = format!("Host: {addr}\r\n");

    assert_eq!(raw(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").0, 400);
    assert_eq!(raw(addr, b"GET\r\n\r\n").0, 400);
    let huge = format!(
        "GET / HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    assert_eq!(raw(addr, huge.as_bytes()).0, 431);
    assert_eq!(get(addr, "/etc/passwd").0, 404);
    assert_eq!(get(addr, "/../../etc/passwd").0, 404);
    assert_eq!(get(addr, "/api/map?export=nosuch").0, 404);
    assert_eq!(get(addr, "/api/map?offset=x").0, 400);
    let post = format!("POST /api/stats HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\n{{}}");
    assert_eq!(raw(addr, post.as_bytes()).0, 405);
    let put = format!("PUT / HTTP/1.1\r\n{host}\r\n");
    assert_eq!(raw(addr, put.as_bytes()).0, 405);
    // DNS rebinding: a page of another site, its name resolved to 127.0.0.1.
    assert_eq!(
        raw(
            addr,
            b"GET /api/map HTTP/1.1\r\nHost: evil.example:80\r\n\r\n"
        )
        .0,
        403
    );

    // Idle connections fill the view's slots; the next is turned away at once, and the NBD
    // server goes on serving.
    let idle: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // (Each is taken as its thread starts: on a busy machine that may take a moment.)
    let start = Instant::now();
    let mut status = get(addr, "/api/stats").0;
    while status != 503 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        status = get(addr, "/api/stats").0;
    }
    assert_eq!(status, 503);
    let read = run_ok(std::process::Command::new("/usr/bin/python3").args([
        "-c",
        "import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); \
         print(len(h.pread(512, 0)))",
        server.uri(),
    ]));
    assert_eq!(read.stdout_str().trim(), "512");
    drop(idle);

    // Freed (each slot as soon as its thread sees the close), the view serves again, and
    // counted the read.
    let start = Instant::now();
    while get(addr, "/api/stats").0 == 503 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = stats_when(addr, |s| s["ops"]["read"]["bytes"] == 512);
    assert_eq!(st["ops"]["read"]["bytes"], 512, "{st}");
}

#[test]
fn serve_watches_every_export_and_the_page_picks_one() {
    let dir = tempdir();
    let tree = dir.path().join("tree");
    write_file(&tree, "a.txt", b"hello\n");
    let server = Server::disksynth_unix(
        dir.path(),
        &[
            "serve",
            "--export",
            &format!("fd=floppy {}", tree.display()),
            "--export",
            "zeros=zero 8M",
            "--web",
            "127.0.0.1:0",
        ],
    );
    let addr = web_addr(&server);
    let fd = get_json(addr, "/api/map");
    assert_eq!(fd["export"], "fd");
    assert!(region_of(&fd, &tree.join("a.txt"))["length"] == 6, "{fd}");
    let zeros = get_json(addr, "/api/map?export=zeros");
    assert_eq!(zeros["size"], 8 << 20);
    let st = stats_when(addr, |s| s["exports"].is_array());
    assert_eq!(st["exports"], serde_json::json!(["fd", "zeros"]));
    // A source's own --web is refused: one view on `serve` shows every export.
    let out = disksynth_tests::run(
        disksynth_tests::disksynth().args([
            "serve",
            "--export",
            "z=zero 1M --web 127.0.0.1:0",
            "-U",
            dir.path().join("s2").to_str().unwrap(),
        ]),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(out.stderr_str().contains("--web"), "{}", out.describe());
}

#[test]
fn an_xz_views_cache_figures_are_shown() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let raw_img = dir.path().join("disk.img");
    std::fs::write(&raw_img, random_bytes(20, 3 << 20)).unwrap();
    let xz = dir.path().join("disk.img.xz");
    run_ok(disksynth_tests::disksynth().args([
        "pack",
        raw_img.to_str().unwrap(),
        xz.to_str().unwrap(),
        "--block-size",
        "1M",
    ]));
    let server = Server::disksynth_unix(
        dir.path(),
        &["xz", xz.to_str().unwrap(), "--web", "127.0.0.1:0"],
    );
    let addr = web_addr(&server);
    // The same block twice: one decode, then a cache hit.
    run_ok(std::process::Command::new("/usr/bin/python3").args([
        "-c",
        "import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); \
         h.pread(4096, 0); h.pread(4096, 8192)",
        server.uri(),
    ]));
    let st = stats_when(addr, |s| s["ops"]["read"]["requests"] == 2);
    let dev = &st["device"];
    assert!(dev["xz.blocks_decoded"].as_u64().unwrap() >= 1, "{st}");
    assert!(dev["xz.cache_hits"].as_u64().unwrap() >= 1, "{st}");
    assert!(dev["xz.cache_hit_pct"].as_u64().unwrap() <= 100, "{st}");
}

#[test]
fn writes_light_the_cells_they_touch_as_written() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "16M", "--web", "127.0.0.1:0"]);
    let addr = web_addr(&server);
    let cells = get_json(addr, "/api/cells");
    let cell = cells["cell_size"].as_u64().unwrap();
    assert_eq!(
        cells["kinds"].as_str().unwrap().len() as u64,
        (16 << 20) / cell
    );
    run_ok(std::process::Command::new("/usr/bin/python3").args([
        "-c",
        "import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); \
         h.pwrite(b'x' * 65536, 1 << 20); h.trim(65536, 8 << 20)",
        server.uri(),
    ]));
    let st = stats_when(addr, |s| s["ops"]["trim"]["requests"] == 1);
    assert_eq!(st["ops"]["write"]["bytes"], 65536, "{st}");
    assert_eq!(st["ops"]["trim"]["bytes"], 65536, "{st}");
    let written: Vec<u64> = st["written_cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let first = (1 << 20) / cell;
    let last = ((1 << 20) + 65535) / cell;
    assert_eq!(written, (first..=last).collect::<Vec<_>>(), "{st}");
}
