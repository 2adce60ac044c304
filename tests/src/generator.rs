//! Running a directory generator (`disksynth floppy|ext4 TREE …`) the way the image tests need:
//! with `SOURCE_DATE_EPOCH` removed, writing `-o IMG`, and checking success or a clean failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::{disksynth, nbdcopy_to, run, run_ok, Output, Server, CMD_TIMEOUT};

/// 2038-01-20T00:00:00Z: an mtime past 32-bit `time_t` and in the future of any test run
/// before then (the generators' volume times once followed the clock for such trees).
pub const FUTURE_MTIME: i64 = 2_147_558_400;

/// 2026-12-01T00:00:00Z, the latest default volume time baked into disksynth (`formats::time`).
pub const LATEST_VOLUME_TIME: i64 = 1_796_083_200;

/// Reproducible by default: builds `disksynth KIND TREE ARGS... -o` twice, more than a second
/// apart, with `SOURCE_DATE_EPOCH` removed, and the two images must be byte-identical; then
/// serves the same command on a Unix socket and copies the export with nbdcopy, which must give
/// the `-o` bytes again. Returns the first image, `DIR/KIND-1.img`. Needs nbdcopy.
pub fn assert_reproducible(kind: &str, tree: &Path, dir: &Path, args: &[&str]) -> PathBuf {
    let a = dir.join(format!("{kind}-1.img"));
    let b = dir.join(format!("{kind}-2.img"));
    build_image(kind, tree, &a, args);
    let t0 = SystemTime::now();
    while t0.elapsed().unwrap_or_default() < Duration::from_millis(1100) {
        std::thread::sleep(Duration::from_millis(100));
    }
    build_image(kind, tree, &b, args);
    cmp_files(&a, &b);
    let served = dir.join(format!("{kind}-nbd.img"));
    {
        let mut cmd = generator_cmd(kind, tree, args);
        cmd.arg("-U").arg(dir.join(format!("{kind}.sock")));
        let server = Server::spawn(cmd);
        nbdcopy_to(server.uri(), &served);
    }
    cmp_files(&a, &served);
    a
}

/// `disksynth KIND TREE ARGS...` with `SOURCE_DATE_EPOCH` removed from the environment.
pub fn generator_cmd(kind: &str, tree: &Path, args: &[&str]) -> Command {
    let mut cmd = disksynth();
    cmd.arg(kind)
        .arg(tree)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Runs `cmd -o img`; panics unless it succeeds and the image exists.
pub fn output_with(mut cmd: Command, img: &Path) -> Output {
    let out = run(cmd.arg("-o").arg(img), CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "disksynth -o failed\n{}",
        out.describe()
    );
    assert!(
        img.is_file(),
        "{} not written\n{}",
        img.display(),
        out.describe()
    );
    out
}

/// `disksynth KIND TREE ARGS... -o IMG`, which must succeed.
pub fn build_image(kind: &str, tree: &Path, img: &Path, args: &[&str]) -> Output {
    output_with(generator_cmd(kind, tree, args), img)
}

/// `disksynth KIND TREE ARGS... -o IMG`, which must fail with an error message (not a panic)
/// and leave no IMG behind.
pub fn build_image_fails(kind: &str, tree: &Path, img: &Path, args: &[&str]) -> Output {
    let out = run(
        generator_cmd(kind, tree, args).arg("-o").arg(img),
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "disksynth {kind} should have failed\n{}",
        out.describe()
    );
    assert!(
        !img.exists(),
        "{} exists although the command failed",
        img.display()
    );
    assert!(
        !out.stderr_str().trim().is_empty(),
        "failure without a message\n{}",
        out.describe()
    );
    assert!(
        !out.stderr_str().contains("panicked"),
        "a panic, not an error message\n{}",
        out.describe()
    );
    out
}

/// `qemu-img compare` of two raw images (an NBD URI or a path, and a path) says they are equal.
pub fn qemu_img_identical(a: &str, b: &Path) {
    let out = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", a])
            .arg(b),
    );
    assert!(
        out.stdout_str().contains("Images are identical"),
        "{}",
        out.describe()
    );
}

/// `cmp` says two files hold the same bytes.
pub fn cmp_files(a: &Path, b: &Path) {
    let out = run(Command::new("cmp").arg(a).arg(b), CMD_TIMEOUT);
    assert!(out.status.success(), "images differ\n{}", out.describe());
}
