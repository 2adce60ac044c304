//! Running a directory generator (`disksynth floppy|ext4 TREE …`) the way the image tests need:
//! with `SOURCE_DATE_EPOCH` removed, writing `-o IMG`, and checking success or a clean failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{disksynth, run, run_ok, Output, CMD_TIMEOUT};

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
