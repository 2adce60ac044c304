//! The harness itself, checked against reference servers (nbdkit, qemu-nbd): if these fail the
//! scripts or helpers are wrong, not disksynth.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use disksynth_tests::{
    field, nbdinfo_map, nbdinfo_size, python_script, require_tool, run_ok, seek_map, tempdir,
    write_sparse_file, Extent, Server, Signal, MIB,
};

#[test]
fn server_guard_reads_line_one_and_kills_by_pid_on_drop() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo nbd+unix:///?socket=/x; echo second; exec sleep 60",
    ]);
    let server = Server::spawn(cmd);
    assert_eq!(server.uri(), "nbd+unix:///?socket=/x");
    assert_eq!(
        server.wait_stdout_lines(1, Duration::from_secs(5)),
        ["second"]
    );
    let proc_dir = format!("/proc/{}", server.pid());
    assert!(Path::new(&proc_dir).exists());

    drop(server);

    assert!(
        !Path::new(&proc_dir).exists(),
        "process survived (or was not reaped)"
    );
}

#[test]
fn server_guard_reports_sigterm_exit_status() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    let mut server = Server::spawn(cmd);
    assert!(server.is_running());
    assert!(server.stop_with(Signal::TERM).success());
}

#[test]
fn scripts_pass_against_nbdkit() {
    require_tool!("nbdkit", "python3-nbd");
    let dir = tempdir();
    let pattern = Server::nbdkit(dir.path(), &["pattern", "64M"]);
    let out = run_ok(python_script("aio_reads.py").arg(pattern.uri()));
    assert_eq!(
        field(&out.stdout_str(), "issued", "completed").as_deref(),
        Some("64")
    );
    drop(pattern);

    let dir = tempdir();
    let memory = Server::nbdkit(dir.path(), &["memory", "64M"]);
    let out = run_ok(python_script("block_status.py").args([
        memory.uri(),
        "--write",
        "1M:1M",
        "--probe",
        "1M:4M",
    ]));
    assert!(out
        .stdout_str()
        .contains("map=0+1048576:3,1048576+1048576:0,2097152+65011712:3"));
    assert_eq!(
        field(&out.stdout_str(), "req_one", "descriptors").as_deref(),
        Some("1")
    );
}

#[test]
fn bad_requests_script_sees_nbdkit_errnos() {
    require_tool!("nbdkit", "python3-nbd");
    let dir = tempdir();
    let ro = Server::nbdkit(dir.path(), &["-r", "pattern", "64M"]);
    let out = run_ok(python_script("bad_requests.py").args([ro.uri(), "ro"]));
    let text = out.stdout_str();
    assert_eq!(
        field(&text, "read_past_end", "errno").as_deref(),
        Some("EINVAL")
    );
    assert_eq!(
        field(&text, "write_readonly", "errno").as_deref(),
        Some("EPERM")
    );
    drop(ro);

    let dir = tempdir();
    let limited = Server::nbdkit(
        dir.path(),
        &[
            "--filter=blocksize-policy",
            "memory",
            "64M",
            "blocksize-maximum=32M",
            "blocksize-error-policy=error",
        ],
    );
    let out = run_ok(python_script("bad_requests.py").args([limited.uri(), "rw"]));
    let text = out.stdout_str();
    assert_eq!(
        field(&text, "write_past_end", "errno").as_deref(),
        Some("ENOSPC")
    );
    assert_eq!(
        field(&text, "oversized_read", "result").as_deref(),
        Some("error")
    );
    assert_eq!(
        field(&text, "oversized_write", "after").as_deref(),
        Some("ok")
    );
}

#[test]
fn pread_structured_script_sees_qemu_nbd_hole_chunks() {
    require_tool!("qemu-nbd", "python3-nbd");
    let dir = tempdir();
    let file = dir.path().join("backing.img");
    write_sparse_file(&file, 8 * MIB, &[]);
    let server = Server::qemu_nbd(dir.path(), &[], &file);
    let out = run_ok(python_script("pread_structured.py").args([
        server.uri(),
        "--write",
        "1M:1M",
        "--range",
        "0:4M",
    ]));
    assert!(
        out.stdout_str().contains("holes=0+1048576,2097152+2097152"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout_str().contains("data=1048576+1048576"),
        "{}",
        out.describe()
    );
}

#[test]
fn socket_activate_script_works_with_nbdkit() {
    require_tool!("nbdkit", "nbdinfo", "python3-nbd");
    let dir = tempdir();
    let mut cmd = python_script("socket_activate.py");
    cmd.arg(dir.path().join("sa.sock")).args([
        "--",
        "nbdkit",
        "-f",
        "--exit-with-parent",
        "memory",
        "32M",
    ]);
    let mut server = Server::spawn(cmd);
    assert_eq!(nbdinfo_size(server.uri()), 32 * MIB);
    assert!(server.stop_with(Signal::TERM).success());
}

#[test]
fn nbdkit_file_map_matches_seek_data() {
    require_tool!("nbdkit", "nbdinfo");
    let dir = tempdir();
    let file = dir.path().join("sparse.img");
    write_sparse_file(&file, 16 * MIB, &[(4 * MIB, MIB), (10 * MIB, MIB / 2)]);
    let server = Server::nbdkit(dir.path(), &["file", file.to_str().unwrap()]);
    let map = nbdinfo_map(server.uri());
    assert_eq!(map, seek_map(&file));
    assert!(
        map.contains(&Extent {
            offset: 4 * MIB,
            len: MIB,
            kind: 0
        }),
        "{map:?}"
    );
}
