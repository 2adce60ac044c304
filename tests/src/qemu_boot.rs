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
    let options = BootOptions {
        debugcon,
        ..BootOptions::default()
    };
    boot(work, firmware, drive_args, needles, &options).text
}

/// How [`boot`] runs qemu.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Give up (kill qemu and return what was seen) after this long.
    pub timeout: Duration,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Watch the 0xE9 debug port instead of the serial port.
    pub debugcon: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            timeout: BOOT_TIMEOUT,
            memory_mib: 256,
            debugcon: false,
        }
    }
}

/// What a [`boot`] saw.
#[derive(Debug)]
pub struct Boot {
    /// Everything the guest printed on the watched port.
    pub text: String,
    /// Whether every needle appeared (else the time ran out).
    pub found: bool,
    /// From spawning qemu until every needle had appeared (or the time ran out).
    pub elapsed: Duration,
}

/// [`boot_until`] with [`BootOptions`]: boots under TCG until every needle has appeared or
/// `options.timeout` passes, then kills qemu (by its pid). A qemu that exits before the needles
/// appear is a panic showing its stderr and the console.
pub fn boot(
    work: &Path,
    firmware: Firmware,
    drive_args: &[String],
    needles: &[&str],
    options: &BootOptions,
) -> Boot {
    let log = unique(work, "console", "log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-accel",
        "tcg",
    ])
    .arg("-m")
    .arg(options.memory_mib.to_string());
    if firmware == Firmware::Uefi {
        let vars = unique(work, "ovmf-vars", "fd");
        fs::copy(OVMF_VARS, &vars).expect("copying the OVMF variable store");
        cmd.args(["-machine", "q35", "-drive"])
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    if options.debugcon {
        cmd.arg("-debugcon").arg(format!("file:{}", log.display()));
    } else {
        cmd.arg("-serial").arg(format!("file:{}", log.display()));
    }
    cmd.args(drive_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut qemu = KillOnDrop(cmd.spawn().expect("spawning qemu-system-x86_64"));
    let deadline = started + options.timeout;
    let read_log = || {
        fs::read(&log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    loop {
        let exited = qemu.0.try_wait().ok().flatten();
        // Read after the exit check: a guest that prints and powers off at once is not a failure.
        let text = read_log();
        let found = needles.iter().all(|n| text.contains(n));
        if found || Instant::now() > deadline {
            return Boot {
                text,
                found,
                elapsed: started.elapsed(),
            };
        }
        if let Some(status) = exited {
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
