//! Write the hand-made seeds of every target into `corpus/<target>/seed-*`:
//!
//! ```text
//! cd fuzz && cargo run --release --example make-seeds [-- CORPUS_DIR]
//! ```
//!
//! NBD sessions a real client would send (every option and command, all three header styles),
//! `.xz` files made by the `xz` command (checks, filters, Blocks, Streams, padding), qcow2
//! images made by `qemu-img` (cluster sizes, compression, extended L2, v2, a backing file), scripted
//! HTTP origins (HEAD, range probes, 206s, redirects, retries, replaced files), and a few
//! pseudo-random inputs for the planners (their input is consumed structurally, so any bytes
//! make a tree). The rest of each corpus is what fuzzing found, minimised (`run.sh --merge`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use disksynth_fuzz::http::Script;
use disksynth_fuzz::nbd::{ClientScript, Settings};
use nbd_export::proto::*;

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("the corpus directory");
    fs::write(d.join(format!("seed-{name}")), data).expect("a seed");
}

const CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

/// Requests every export takes, ending with a disconnect.
fn transmission(c: &mut ClientScript, writes: bool) {
    c.request(0, CMD_READ, 1, 0, 4096);
    if writes {
        c.request(0, CMD_WRITE, 2, 4096, 512).raw(&[0xA5; 512]);
        c.request(CMD_FLAG_FUA, CMD_WRITE, 3, 8191, 3).raw(b"abc");
        c.request(0, CMD_READ, 4, 4096, 4200);
        c.request(0, CMD_FLUSH, 5, 0, 0);
        c.request(0, CMD_TRIM, 6, 65536, 65536);
        c.request(0, CMD_WRITE_ZEROES, 7, 131072, 4096);
        c.request(
            CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_WRITE_ZEROES,
            8,
            0,
            512,
        );
    }
    c.request(0, CMD_CACHE, 9, 0, 1 << 20);
    c.request(0, CMD_BLOCK_STATUS, 10, 0, 1 << 20);
    c.request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 11, 4096, 8192);
    c.request(CMD_FLAG_DF, CMD_READ, 12, 1000, 100_000);
    // Out of range, then an unknown command: errors, not the end.
    c.request(0, CMD_READ, 13, (1 << 20) - 10, 20);
    c.request(0, 99, 14, 0, 0);
    c.request(0, CMD_DISC, 15, 0, 0);
}

fn go(c: &mut ClientScript, name: &str) {
    c.option(
        OPT_GO,
        &ClientScript::go_payload(
            name,
            &[INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
        ),
    );
}

fn nbd_seeds(dir: &Path) {
    let t = "nbd_handshake_and_requests";
    let plain = Settings::from_byte(0);

    // Simple replies, NBD_OPT_GO.
    let mut c = ClientScript::new(CLIENT_FLAGS);
    go(&mut c, "");
    transmission(&mut c, true);
    write(dir, t, "simple-go", &c.input(plain));

    // Structured replies and base:allocation.
    let mut c = ClientScript::new(CLIENT_FLAGS);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    c.option(
        OPT_LIST_META_CONTEXT,
        &ClientScript::meta_payload("", &["base:"]),
    );
    c.option(
        OPT_SET_META_CONTEXT,
        &ClientScript::meta_payload("", &[META_BASE_ALLOCATION, "qemu:dirty-bitmap:x"]),
    );
    go(&mut c, "");
    transmission(&mut c, true);
    write(dir, t, "structured", &c.input(plain));

    // Extended headers (64-bit lengths).
    let mut c = ClientScript::new(CLIENT_FLAGS);
    c.option(OPT_EXTENDED_HEADERS, &[]);
    c.option(
        OPT_SET_META_CONTEXT,
        &ClientScript::meta_payload("", &[META_BASE_ALLOCATION]),
    );
    go(&mut c, "");
    c.extended = true;
    transmission(&mut c, true);
    write(dir, t, "extended", &c.input(plain));

    // The old way in: NBD_OPT_EXPORT_NAME, with and without the 124 zero bytes.
    for (name, flags) in [
        ("export-name", CLIENT_FLAGS),
        ("export-name-zeroes", FLAG_C_FIXED_NEWSTYLE),
    ] {
        let mut c = ClientScript::new(flags);
        c.option(OPT_EXPORT_NAME, b"");
        transmission(&mut c, true);
        write(dir, t, name, &c.input(plain));
    }

    // Every other option, then an abort.
    let mut c = ClientScript::new(CLIENT_FLAGS);
    c.option(OPT_LIST, &[]);
    c.option(OPT_INFO, &ClientScript::go_payload("", &[INFO_BLOCK_SIZE]));
    c.option(OPT_INFO, &ClientScript::go_payload("nope", &[]));
    c.option(OPT_STARTTLS, &[]);
    c.option(OPT_LIST, b"junk");
    c.option(1234, b"unknown");
    c.option(OPT_ABORT, &[]);
    write(dir, t, "options-abort", &c.input(plain));

    // A named export: the wrong name, then the right one.
    let named = Settings::from_byte(4);
    let mut c = ClientScript::new(CLIENT_FLAGS);
    go(&mut c, "wrong");
    go(&mut c, "disk");
    transmission(&mut c, true);
    write(dir, t, "named", &c.input(named));

    // Read-only: writes refused.
    let ro = Settings::from_byte(1);
    let mut c = ClientScript::new(CLIENT_FLAGS);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    go(&mut c, "");
    transmission(&mut c, true);
    write(dir, t, "readonly", &c.input(ro));

    // The pattern device, one worker, a small budget, many reads in flight.
    let small = Settings::from_byte(2 | 8 | 16);
    let mut c = ClientScript::new(CLIENT_FLAGS);
    c.option(OPT_EXTENDED_HEADERS, &[]);
    go(&mut c, "");
    c.extended = true;
    for i in 0..16 {
        c.request(0, CMD_READ, 100 + i, i * 60_000, 60_000);
    }
    c.request(0, CMD_READ, 200, 0, 1 << 20);
    c.request(0, CMD_DISC, 201, 0, 0);
    write(dir, t, "pattern-pipelined", &c.input(small));

    // Garbage after the handshake, and a handshake cut short.
    let mut c = ClientScript::new(CLIENT_FLAGS);
    go(&mut c, "");
    c.raw(&[0x25, 0x60, 0x95, 0x13, 0xff, 0xff]);
    write(dir, t, "bad-request", &c.input(plain));
    let mut c = ClientScript::new(0);
    c.option(OPT_GO, &[0, 0, 0, 9]);
    write(dir, t, "not-fixed-short-go", &c.input(plain));
}

/// `xz ARGS < input`.
fn xz(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("xz")
        .args(args)
        .args(["-c", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the xz command (xz-utils)");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("xz's output");
    feeder.join().expect("feeder").expect("xz's input");
    assert!(out.status.success(), "xz {args:?} failed");
    out.stdout
}

fn xz_seeds(dir: &Path) {
    let t = "xz_index";
    let text: Vec<u8> = (0..12_000u32)
        .flat_map(|i| format!("line {} of a disk image\n", i % 97).into_bytes())
        .collect();
    let small = b"hello, disksynth\n";
    write(dir, t, "empty", &xz(&[], b""));
    for check in ["none", "crc32", "crc64", "sha256"] {
        write(
            dir,
            t,
            &format!("check-{check}"),
            &xz(&[&format!("--check={check}")], small),
        );
    }
    write(
        dir,
        t,
        "blocks-4k",
        &xz(&["-T2", "--block-size=4096"], &text[..40_000]),
    );
    write(
        dir,
        t,
        "blocks-list",
        &xz(&["--block-list=100,1,3000", "--check=none"], &text[..8_000]),
    );
    write(
        dir,
        t,
        "zeros-blocks",
        &xz(&["-T2", "--block-size=65536"], &vec![0u8; 300_000]),
    );
    write(
        dir,
        t,
        "x86-lzma2",
        &xz(
            &["--x86", "--lzma2=preset=1", "--block-size=2048"],
            &text[..6_000],
        ),
    );
    write(
        dir,
        t,
        "delta",
        &xz(&["--delta=dist=4", "--lzma2=preset=0"], &text[..3_000]),
    );
    write(
        dir,
        t,
        "lzma2-uncompressed-chunks",
        &xz(
            &["-0", "--block-size=512"],
            &(0..2048u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect::<Vec<_>>(),
        ),
    );
    // Two Streams with Stream Padding between and after.
    let mut two = xz(&["--check=crc32"], b"first stream\n");
    two.extend_from_slice(&[0; 8]);
    two.extend(xz(
        &["--block-size=16", "--check=crc64"],
        b"second stream, several blocks\n",
    ));
    two.extend_from_slice(&[0; 4]);
    write(dir, t, "two-streams-padding", &two);
}

/// `qemu-img convert -O qcow2 ARGS` of `input`, and `qemu-img create` + `qemu-io` for
/// backing files and zero clusters: small images (a few KiB) of every layout.
fn qcow2_seeds(dir: &Path) {
    let t = "qcow2";
    let tmp = std::env::temp_dir().join(format!("qcow2-seeds-{}", std::process::id()));
    fs::create_dir_all(&tmp).expect("a temp directory");
    let raw = tmp.join("in.raw");
    let mut data = vec![0u8; 48 << 10];
    for (i, b) in data[..8192].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    data[20_000..20_512].fill(0xC3);
    fs::write(&raw, &data).expect("the raw input");
    let qemu_img = |args: &[&str]| {
        let st = Command::new("qemu-img")
            .args(args)
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img {args:?} failed");
    };
    let variants: &[(&str, &[&str])] = &[
        ("512", &["-o", "cluster_size=512"]),
        ("512-compressed", &["-c", "-o", "cluster_size=512"]),
        (
            "512-zstd",
            &["-c", "-o", "cluster_size=512,compression_type=zstd"],
        ),
        (
            "16k-extended-l2",
            &["-o", "cluster_size=16k,extended_l2=on"],
        ),
        ("512-v2", &["-o", "cluster_size=512,compat=0.10"]),
    ];
    for (name, args) in variants {
        let q = tmp.join(format!("{name}.qcow2"));
        let mut a = vec!["convert", "-f", "raw", "-O", "qcow2"];
        a.extend_from_slice(args);
        a.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
        qemu_img(&a);
        write(dir, t, name, &fs::read(&q).expect("the image"));
    }
    // A backing file, a data write and zero clusters in the top image.
    let top = tmp.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "512.qcow2",
        "-F",
        "qcow2",
        "-o",
        "cluster_size=512",
        top.to_str().unwrap(),
    ]);
    let st = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x55 1k 2k",
            "-c",
            "write -z 8k 4k",
        ])
        .arg(&top)
        .stdout(Stdio::null())
        .status()
        .expect("qemu-io");
    assert!(st.success(), "qemu-io failed");
    write(
        dir,
        t,
        "backing-and-zeros",
        &fs::read(&top).expect("the image"),
    );
    let _ = fs::remove_dir_all(&tmp);
}

fn http_seeds(dir: &Path) {
    let t = "http_content_range";
    let size = 8192u64;
    let head = |extra: &str| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n{extra}\r\n")
            .into_bytes()
    };
    let part = |first: u64, len: u64, extra: &str| {
        let mut r = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{}/{size}\r\nContent-Length: {len}\r\n{extra}\r\n",
            first + len - 1
        )
        .into_bytes();
        r.extend((first..first + len).map(|i| i as u8));
        r
    };
    let seed =
        |name: &str, reads: &[(u64, u64)], ra: bool, retry: bool, responses: Vec<Vec<u8>>| {
            let s = Script {
                reads: reads.to_vec(),
                readahead: ra,
                retry,
                responses,
            };
            write(dir, t, name, &s.to_input());
        };
    let etag = "ETag: \"v1\"\r\n";
    let lm = "Last-Modified: Tue, 15 Nov 1994 12:45:26 GMT\r\n";
    seed(
        "head-etag-reads",
        &[(0, 16), (4096, 8)],
        false,
        false,
        vec![head(etag), part(0, 16, etag), part(4096, 8, etag)],
    );
    // HEAD refused: the range probe decides.
    seed(
        "probe",
        &[(10, 5)],
        false,
        false,
        vec![
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n".to_vec(),
            part(0, 1, lm),
            part(10, 5, lm),
        ],
    );
    seed(
        "probe-empty-file",
        &[],
        false,
        false,
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ],
    );
    seed(
        "probe-no-ranges",
        &[],
        false,
        false,
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        ],
    );
    seed(
        "not-found",
        &[],
        false,
        false,
        vec![b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec()],
    );
    seed(
        "head-no-accept-ranges-star",
        &[],
        false,
        false,
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n".to_vec(),
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/*\r\nContent-Length: 1\r\n\r\nx".to_vec(),
        ],
    );
    // The file replaced under us: 200 to If-Range, a new ETag, a new size, a 416.
    seed(
        "replaced-200",
        &[(0, 16)],
        false,
        false,
        vec![
            head(etag),
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnew!".to_vec(),
        ],
    );
    seed(
        "replaced-etag",
        &[(0, 16)],
        false,
        false,
        vec![head(etag), part(0, 16, "ETag: \"v2\"\r\n")],
    );
    seed(
        "replaced-size",
        &[(100, 4)],
        false,
        false,
        vec![
            head(""),
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-103/9000\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
        ],
    );
    seed(
        "shrunk-416",
        &[(100, 4)],
        false,
        false,
        vec![
            head(""),
            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */50\r\n\r\n".to_vec(),
        ],
    );
    // Misbehaving: wrong range, short and long bodies, chunked bodies.
    seed(
        "wrong-range",
        &[(100, 4)],
        false,
        false,
        vec![head(""), part(101, 4, "")],
    );
    seed(
        "short-body",
        &[(0, 16)],
        false,
        true,
        vec![
            head(""),
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-15/8192\r\nContent-Length: 16\r\n\r\nshort".to_vec(),
            part(0, 16, ""),
        ],
    );
    seed(
        "long-body-chunked",
        &[(0, 4)],
        false,
        false,
        vec![
            head(""),
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/8192\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n".to_vec(),
        ],
    );
    // Transient failures with Retry-After (seconds and a date), a redirect.
    seed(
        "retry-after",
        &[(0, 8)],
        false,
        true,
        vec![
            b"HTTP/1.1 405 Method Not Allowed\r\n\r\n".to_vec(),
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            part(0, 1, lm),
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"
                .to_vec(),
            part(0, 8, lm),
        ],
    );
    seed(
        "redirect",
        &[(0, 8)],
        false,
        false,
        vec![
            b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n".to_vec(),
            head(""),
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1/x\r\n\r\n".to_vec(),
            part(0, 8, ""),
        ],
    );
    seed(
        "denied",
        &[],
        false,
        false,
        vec![b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\n\r\n".to_vec()],
    );
    // Sequential reads through the read-ahead window.
    seed(
        "readahead",
        &[(0, 100), (100, 100), (200, 50)],
        true,
        false,
        vec![head(etag), part(0, 100, etag), part(100, 8092, etag)],
    );
}

/// xorshift64*: the same "random" planner seeds on every run.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn planner_seeds(dir: &Path) {
    for t in ["fat_plan", "iso_plan", "ext4_plan"] {
        for (i, len) in [16usize, 64, 256, 1024, 4096].into_iter().enumerate() {
            write(
                dir,
                t,
                &format!("random-{len}"),
                &pseudo_random(0x5eed + i as u64, len),
            );
        }
    }
}

fn main() {
    let dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"),
        PathBuf::from,
    );
    nbd_seeds(&dir);
    xz_seeds(&dir);
    qcow2_seeds(&dir);
    http_seeds(&dir);
    planner_seeds(&dir);
    println!("seeds written to {}", dir.display());
}
