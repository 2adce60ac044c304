//! systemd socket activation (LISTEN_PID / LISTEN_FDS, socket on fd 3).

use std::process::Command;
use std::time::Duration;

use disksynth_tests::{
    disksynth_bin, nbdinfo_size, python_script, qemu_io, require_tool, run, tempdir, Server,
    Signal, MIB,
};

fn activated(dir: &std::path::Path, wrong_pid: bool, args: &[&str]) -> Command {
    let mut cmd = python_script("socket_activate.py");
    if wrong_pid {
        cmd.arg("--wrong-pid");
    }
    cmd.arg(dir.join("activated.sock"))
        .arg("--")
        .arg(disksynth_bin())
        .args(args);
    cmd.env_remove("LISTEN_FDS").env_remove("LISTEN_PID");
    cmd
}

#[test]
fn socket_activation_serves_on_fd_3() {
    require_tool!("nbdinfo", "qemu-io");
    let dir = tempdir();
    let mut server = Server::spawn(activated(dir.path(), false, &["memory", "64M"]));

    assert_eq!(nbdinfo_size(server.uri()), 64 * MIB);
    qemu_io(server.uri(), &["write -P 0x42 0 64k"]);
    qemu_io(server.uri(), &["read -P 0x42 0 64k"]);

    let status = server.stop_with(Signal::TERM);
    assert!(
        status.success(),
        "socket-activated disksynth exited with {status}\n{}",
        server.stderr_text()
    );
}

#[test]
fn socket_activation_is_ignored_when_listen_pid_is_not_ours() {
    let dir = tempdir();
    // No mode flag and the fd is not for us: this is a usage error, not a server.
    let out = run(
        &mut activated(dir.path(), true, &["memory", "64M"]),
        Duration::from_secs(20),
    );
    assert!(
        !out.status.success(),
        "disksynth served without a mode\n{}",
        out.describe()
    );
}
