//! Booting images in `qemu-system-x86_64` (TCG, no display) and watching what the firmware and
//! the loader print: the proof that a generated disk really boots.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one boot may take to print what is expected (OVMF under TCG needs several seconds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// Debian's OVMF (package `ovmf`): code and a template for the variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The OVMF variable-store template each UEFI boot copies.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The firmware a boot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (qemu's default).
    Bios,
    /// OVMF on the q35 machine.
    Uefi,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Files a boot needs that packages provide: panics under CI=true when one is missing, else
/// returns false (the caller prints SKIPPED and returns).
pub fn require_files(files: &[&str]) -> bool {
    for f in files {
        if !Path::new(f).exists() {
            if crate::in_ci() {
                panic!(
                    "{f} is missing (CI=true makes this a failure; scripts/test.sh installs it)"
                );
            }
            eprintln!("SKIPPED: {f} is not installed");
            return false;
        }
    }
    true
}

/// Boots qemu with `drive_args` (e.g. `["-cdrom", "x.iso"]`) under `firmware`, the serial port
/// (or, with `debugcon`, the 0xE9 debug port) going to a file in `work`, until every needle has
/// appeared or [`BOOT_TIMEOUT`] passes; the process is killed either way. Returns the text seen.
pub fn boot_until(
    work: &Path,
    firmware: Firmware,
    drive_args: &[String],
    needles: &[&str],
    debugcon: bool,
) -> String {
    let log = unique(work, "console", "log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-display", "none", "-nodefaults", "-no-reboot", "-m", "256"]);
    if firmware == Firmware::Uefi {
        let vars = unique(work, "ovmf-vars", "fd");
        fs::copy(OVMF_VARS, &vars).expect("copying the OVMF variable store");
        cmd.args(["-machine", "q35", "-drive"])
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    if debugcon {
        cmd.arg("-debugcon").arg(format!("file:{}", log.display()));
    } else {
        cmd.arg("-serial").arg(format!("file:{}", log.display()));
    }
    cmd.args(drive_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut qemu = KillOnDrop(cmd.spawn().expect("spawning qemu-system-x86_64"));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = fs::read(&log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if needles.iter().all(|n| text.contains(n)) || Instant::now() > deadline {
            return text;
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = qemu.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("qemu exited early ({status}): {err}\nconsole: {text:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unique(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    (0..)
        .map(|i| dir.join(format!("{stem}-{i}.{ext}")))
        .find(|p| !p.exists())
        .expect("a free name")
}
