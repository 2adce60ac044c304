//! libnbd (Python) scripts: sparse structured reads, REQ_ONE block status, 64-deep aio,
//! misbehaving requests. The scripts verify data themselves and print what they measured; the
//! tests assert the contract on that output.

use disksynth_tests::{
    field, python_script, require_tool, run_ok, seek_map, tempdir, write_sparse_file, Output,
    Server, MIB,
};

fn script(name: &str, args: &[&str]) -> Output {
    run_ok(python_script(name).args(args))
}

fn line_value(out: &Output, key: &str) -> String {
    let text = out.stdout_str();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in output\n{}", out.describe()))
        .to_string()
}

#[test]
fn pread_structured_gets_hole_chunks_around_written_data() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);

    let out = script(
        "pread_structured.py",
        &[server.uri(), "--write", "1M:1M", "--range", "0:4M"],
    );

    assert_eq!(
        line_value(&out, "holes"),
        "0+1048576,2097152+2097152",
        "{}",
        out.describe()
    );
    assert_eq!(
        line_value(&out, "data"),
        "1048576+1048576",
        "{}",
        out.describe()
    );
}

#[test]
fn pread_structured_gets_hole_chunks_for_file_holes() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let file = dir.path().join("sparse.img");
    write_sparse_file(&file, 8 * MIB, &[(2 * MIB, MIB), (5 * MIB, 256 * 1024)]);
    let holes: Vec<String> = seek_map(&file)
        .iter()
        .filter(|e| e.kind == 3)
        .map(|e| format!("{}+{}", e.offset, e.len))
        .collect();
    let path = file.to_str().unwrap();
    let server = Server::disksynth_unix(dir.path(), &["file", path]);

    let out = script("pread_structured.py", &[server.uri(), "--compare", path]);

    assert_eq!(
        line_value(&out, "holes"),
        holes.join(","),
        "{}",
        out.describe()
    );
}

#[test]
fn pread_structured_of_zero_disk_is_all_holes() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["zero", "64M"]);
    let out = script("pread_structured.py", &[server.uri()]);
    assert_eq!(
        line_value(&out, "holes"),
        "0+67108864",
        "{}",
        out.describe()
    );
    assert_eq!(line_value(&out, "data"), "-", "{}", out.describe());
}

#[test]
fn block_status_with_req_one_returns_one_descriptor() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);

    let out = script(
        "block_status.py",
        &[
            server.uri(),
            "--write",
            "1M:1M",
            "--probe",
            "0:64M",
            "--probe",
            "1M:4M",
            "--probe",
            "1052672:4096",
            "--probe",
            "2M:64K",
        ],
    );

    assert_eq!(
        line_value(&out, "map"),
        "0+1048576:3,1048576+1048576:0,2097152+65011712:3",
        "{}",
        out.describe()
    );
    // (offset, count, expected flags, longest allowed length)
    let probes = [
        (0u64, 64 * MIB, 3u32, MIB),
        (MIB, 4 * MIB, 0, MIB),
        (MIB + 4096, 4096, 0, 4096),
        (2 * MIB, 64 * 1024, 3, 64 * 1024),
    ];
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("req_one ")).collect();
    assert_eq!(lines.len(), probes.len(), "{}", out.describe());
    for (line, (offset, count, flags, longest)) in lines.iter().zip(probes) {
        let get = |k: &str| {
            field(line, "req_one", k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        };
        assert_eq!(get("offset"), offset, "{line}");
        assert_eq!(get("count"), count, "{line}");
        assert_eq!(
            get("descriptors"),
            1,
            "REQ_ONE must give exactly one descriptor: {line}"
        );
        assert_eq!(get("flags"), u64::from(flags), "{line}");
        let len = get("length");
        assert!(
            len > 0 && len <= longest,
            "length out of range (0, {longest}]: {line}"
        );
    }
}

fn aio_reads(server: &Server) {
    let out = script("aio_reads.py", &[server.uri(), "--depth", "64"]);
    let text = out.stdout_str();
    assert_eq!(
        field(&text, "issued", "issued").as_deref(),
        Some("64"),
        "{}",
        out.describe()
    );
    assert_eq!(
        field(&text, "issued", "completed").as_deref(),
        Some("64"),
        "{}",
        out.describe()
    );
    assert_eq!(
        field(&text, "issued", "verified_bytes").as_deref(),
        Some("4194304"),
        "{}",
        out.describe()
    );
}

#[test]
fn aio_reads_64_deep_return_pattern_data_over_unix() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    aio_reads(&Server::disksynth_unix(dir.path(), &["pattern", "64M"]));
}

#[test]
fn aio_reads_64_deep_return_pattern_data_over_tcp() {
    require_tool!("python3-nbd");
    aio_reads(&Server::disksynth_tcp(&["pattern", "64M"]));
}

fn assert_case(out: &Output, case: &str, result: &str, errno: Option<&str>) {
    let text = out.stdout_str();
    assert_eq!(
        field(&text, case, "result").as_deref(),
        Some(result),
        "{case}\n{}",
        out.describe()
    );
    if let Some(errno) = errno {
        assert_eq!(
            field(&text, case, "errno").as_deref(),
            Some(errno),
            "{case}\n{}",
            out.describe()
        );
    }
    assert_eq!(
        field(&text, case, "after").as_deref(),
        Some("ok"),
        "{case}\n{}",
        out.describe()
    );
}

#[test]
fn bad_requests_on_read_only_export_fail_and_connection_survives() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["pattern", "64M"]);

    let out = script("bad_requests.py", &[server.uri(), "ro"]);

    assert_case(&out, "read_past_end", "error", Some("EINVAL"));
    assert_case(&out, "read_beyond_end", "error", Some("EINVAL"));
    // Zero-length reads are harmless: either answer is fine, the connection must survive.
    assert!(field(&out.stdout_str(), "zero_length_read", "after").as_deref() == Some("ok"));
    assert_case(&out, "oversized_read", "error", None);
    assert_case(&out, "write_readonly", "error", Some("EPERM"));
    assert_case(&out, "trim_readonly", "error", Some("EPERM"));
    assert_case(&out, "zero_readonly", "error", Some("EPERM"));
    assert!(out.stdout_str().contains("\ndone\n"), "{}", out.describe());
}

#[test]
fn bad_requests_on_writable_export_fail_and_connection_survives() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);

    let out = script("bad_requests.py", &[server.uri(), "rw"]);

    assert_case(&out, "read_past_end", "error", Some("EINVAL"));
    assert_case(&out, "oversized_read", "error", None);
    assert_case(&out, "write_past_end", "error", Some("ENOSPC"));
    assert_case(&out, "oversized_write", "error", None);
    assert_case(&out, "good_write", "ok", None);
    assert!(out.stdout_str().contains("\ndone\n"), "{}", out.describe());
}

#[test]
fn aio_reads_reach_the_end_of_a_2t_pattern_disk() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    aio_reads(&Server::disksynth_unix(dir.path(), &["pattern", "2T"]));
}

#[test]
fn pread_structured_unaligned_range_crossing_hole_and_data_boundaries() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);

    // An unaligned range with 4097 zero bytes on each side of the written MiB. (Zero runs
    // shorter than 4 KiB may be sent as data: a chunk header would cost more than it saves.)
    let range = format!("{}:{}", MIB - 4097, MIB + 2 * 4097);
    let out = script(
        "pread_structured.py",
        &[server.uri(), "--write", "1M:1M", "--range", &range],
    );

    assert_eq!(
        line_value(&out, "holes"),
        "1044479+4097,2097152+4097",
        "{}",
        out.describe()
    );
    assert_eq!(
        line_value(&out, "data"),
        "1048576+1048576",
        "{}",
        out.describe()
    );
}
