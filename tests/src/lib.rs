//! Helpers for the end-to-end tests of `disksynth`.
//!
//! The tests drive the real binary with real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy,
//! libnbd's Python bindings) and compare against reference servers (nbdkit, qemu-nbd). The
//! principal pieces:
//!
//! * [`require_tool!`] skips a test when a client is missing (panics under `CI=true`);
//! * [`Server`] spawns a server, reads its URI and kills it by pid on drop;
//! * [`run`] / [`run_ok`] run a client with a time bound and capture its output;
//! * [`pattern`], [`random_bytes`], [`Extent`] build and check expected data;
//! * [`trees`] builds, snapshots and compares host directory trees (the `floppy` tests);
//! * [`ext4_util`] drives e2fsck, debugfs and dumpe2fs for the `ext4` tests;
//! * [`iso_util`] parses isoinfo listings and drives xorriso and 7z for the `iso` tests;
//! * [`qemu_boot`] boots images in qemu (SeaBIOS or OVMF) and watches the console;
//! * [`rootfs`] the cached Debian root filesystem, ESP and GPT disk of the Linux boot tests.
//! * [`s3`] a real S3-compatible server (moto) for the `s3://` tests.
//!
//! ```no_run
//! use disksynth_tests::{require_tool, run_ok, tempdir, Server};
//! # fn t() {
//! require_tool!("nbdinfo");
//! let dir = tempdir();
//! let server = Server::disksynth_unix(dir.path(), &["pattern", "1M"]);
//! let out = run_ok(std::process::Command::new("nbdinfo").arg("--size").arg(server.uri()));
//! assert_eq!(out.stdout_str().trim(), "1048576");
//! # }
//! ```

mod clients;
mod data;
pub mod ext4_util;
pub mod generator;
pub mod httpd;
pub mod iso_util;
pub mod nginx;
mod process;
pub mod qemu_boot;
pub mod rootfs;
pub mod s3;
mod server;
pub mod trees;

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub use clients::{
    field, nbdcopy_to, nbdinfo_json, nbdinfo_list_json, nbdinfo_map, nbdinfo_size, qemu_io,
    qemu_io_readonly, qemu_io_transfers, qemu_io_unchecked,
};
pub use data::{
    civil_from_days, coalesce, days_from_civil, parse_map, pattern, random_bytes, seek_map,
    write_sparse_file, Extent, MIB,
};
pub use process::{command, run, run_ok, Output, CMD_TIMEOUT};
pub use rustix::process::Signal;
pub use server::Server;

/// Debian's interpreter, which has the `nbd` module (python3-libnbd); a pyenv `python3` may not.
pub const PYTHON: &str = "/usr/bin/python3";

/// True when running under CI (`CI=true` or `CI=1`): missing tools are then failures.
pub fn in_ci() -> bool {
    matches!(env::var("CI").as_deref(), Ok("true") | Ok("1") | Ok("yes"))
}

/// Whether `name` is usable. `python3-nbd` is a pseudo-tool: `/usr/bin/python3 -c 'import nbd'`.
pub fn tool_available(name: &str) -> bool {
    static PY_NBD: OnceLock<bool> = OnceLock::new();
    if name == "python3-nbd" {
        return *PY_NBD.get_or_init(|| {
            Path::new(PYTHON).exists()
                && run(
                    Command::new(PYTHON).args(["-c", "import nbd"]),
                    Duration::from_secs(30),
                )
                .status
                .success()
        });
    }
    find_in_path(name).is_some()
}

/// Looks `name` up in `$PATH` like a shell would.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Skips the calling test (returns early) when a tool is missing; under `CI=true` it panics.
///
/// `require_tool!("nbdinfo")`, `require_tool!("qemu-img", "qemu-io")`; `"python3-nbd"` checks the
/// libnbd Python bindings of `/usr/bin/python3`.
#[macro_export]
macro_rules! require_tool {
    ($($tool:expr),+ $(,)?) => {
        $(
            if !$crate::tool_available($tool) {
                if $crate::in_ci() {
                    panic!("required tool {:?} is missing (CI=true makes this a failure)", $tool);
                }
                eprintln!("SKIPPED: required tool {:?} is not installed", $tool);
                return;
            }
        )+
    };
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `tests/scripts/NAME`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// A `Command` running `tests/scripts/NAME` with Debian's python3 (which has libnbd bindings).
pub fn python_script(name: &str) -> Command {
    let mut cmd = Command::new(PYTHON);
    // Keep the source tree clean: no __pycache__ next to the scripts.
    cmd.env("PYTHONDONTWRITEBYTECODE", "1").arg(script(name));
    cmd
}

/// Path of the `disksynth` binary: `$DISKSYNTH_BIN`, else `<target>/debug/disksynth` where
/// `<target>` is `$CARGO_TARGET_DIR` or `<workspace>/target`. If that file is missing,
/// `cargo build -p disksynth` runs once (per test process).
pub fn disksynth_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = env::var_os("DISKSYNTH_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "DISKSYNTH_BIN={} does not exist",
                bin.display()
            );
            return bin;
        }
        let root = workspace_root();
        let target = env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_relative() { root.join(t) } else { t })
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug").join("disksynth");
        if !bin.is_file() {
            let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            eprintln!(
                "{} is missing: running cargo build -p disksynth",
                bin.display()
            );
            let out = run(
                Command::new(cargo)
                    .current_dir(&root)
                    .args(["build", "-p", "disksynth"]),
                Duration::from_secs(900),
            );
            assert!(
                out.status.success(),
                "cargo build -p disksynth failed:\n{}",
                out.stderr_str()
            );
        }
        assert!(
            bin.is_file(),
            "{} still missing after cargo build",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A `Command` for the `disksynth` binary.
pub fn disksynth() -> Command {
    Command::new(disksynth_bin())
}

/// A fresh temporary directory (removed on drop); every test uses its own for sockets and files.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("disksynth-test.")
        .tempdir()
        .expect("creating a temporary directory")
}

/// `nbd+unix:///?socket=PATH` (what nbdkit and qemu-nbd listen on with `-U`/`-k`).
pub fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}
