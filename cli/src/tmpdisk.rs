//! `disksynth tmpdisk SIZE`: the per-client export, with ext4 and FAT
//! filesystems synthesized by our own generators (no mkfs needed).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sources::tmpdisk::{Initializer, TmpdiskExport, TmpdiskOptions};
use synth::{BlockDev, ErrorKind};

use crate::args::TmpdiskArgs;
use synth::size::Size;

/// The filesystems synthesized in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Ext4,
    Fat,
}

fn builtin(kind: &str) -> Option<Builtin> {
    match kind {
        "ext4" => Some(Builtin::Ext4),
        "vfat" | "fat" | "msdos" => Some(Builtin::Fat),
        _ => None,
    }
}

/// An empty directory tree (the root only), owned by root, dated `now`.
fn empty_tree(now: i64) -> tree::Tree {
    let meta = tree::Meta {
        mode: 0o040755,
        nlink: 2,
        mtime: tree::Timestamp {
            secs: now,
            nanos: 0,
        },
        ..tree::Meta::default()
    };
    tree::Tree {
        root: tree::Node {
            name: Default::default(),
            path: PathBuf::from("/"),
            followed_link: false,
            meta,
            kind: tree::NodeKind::Dir(Vec::new()),
            xattrs: Vec::new(),
        },
        stats: tree::TreeStats {
            dirs: 1,
            ..tree::TreeStats::default()
        },
    }
}

/// Build one empty filesystem of `size` bytes with `id` as its UUID (ext4)
/// or volume serial (FAT).
fn synthesize(
    kind: Builtin,
    size: u64,
    label: Option<&str>,
    id: [u8; 16],
) -> std::result::Result<Arc<dyn BlockDev>, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let tree = empty_tree(now);
    Ok(match kind {
        Builtin::Ext4 => {
            let opts = formats::ext4::Ext4Options {
                size: Some(size),
                label: label.map(str::to_string),
                uuid: Some(id),
                owner: formats::ext4::Owner::Root,
                timestamp: Some(now),
                max_open_files: 0,
            };
            Arc::new(
                formats::ext4::build(&tree, &opts)
                    .map_err(|e| e.to_string())?
                    .map,
            )
        }
        Builtin::Fat => {
            let opts = formats::fat::FatOptions {
                size: Some(size),
                label: label.map(str::to_string),
                // A superfloppy, as mkfs.fat makes on a whole device.
                partition: formats::fat::Partitioning::None,
                serial: Some(u32::from_le_bytes([id[0], id[1], id[2], id[3]])),
                timestamp: Some(now),
                ..formats::fat::FatOptions::default()
            };
            Arc::new(
                formats::fat::build(&tree, &opts)
                    .map_err(|e| e.to_string())?
                    .map,
            )
        }
    })
}

/// The mkfs script for filesystems we do not synthesize (as nbdkit's
/// tmpdisk does it: force flags so mkfs accepts a plain file).
const MKFS: &str = r#"labelopt='-L'
case "$type" in
    ext?) extra='-F' ;;
    *fat|msdos) extra='-I' ;;
    ntfs) extra='-Q -F'; labelopt='-n' ;;
    xfs) extra='-f' ;;
    btrfs) extra='-f' ;;
    *) extra='' ;;
esac
if [ -z "$label" ]; then
    mkfs -t "$type" $extra "$disk" >&2
else
    mkfs -t "$type" $extra $labelopt "$label" "$disk" >&2
fi"#;

/// The tmpdisk export for `disksynth tmpdisk SIZE`.
/// Where unlinked temp files for client writes go without `--dir`:
/// `$TMPDIR`, else `/var/tmp` (disk-backed on most systems, unlike a tmpfs
/// `/tmp`: client writes must not fill memory).
pub(crate) fn default_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

pub(crate) fn export(size: u64, a: &TmpdiskArgs) -> Result<TmpdiskExport> {
    if size == 0 || !size.is_multiple_of(512) {
        bail!("the disk size must be a positive multiple of 512 bytes, not {size}");
    }
    if a.max_clients == 0 {
        bail!("--max-clients must be at least 1");
    }
    let dir = a.dir.clone().unwrap_or_else(default_dir);
    // The directory must take temp files now, not at the first client.
    tempfile::tempfile_in(&dir)
        .with_context(|| format!("cannot create temp files in {}", dir.display()))?;
    let label = a.label.clone();
    let (init, what) = match (&a.command, builtin(&a.kind)) {
        (Some(cmd), _) => (
            Initializer::Command {
                script: cmd.clone(),
                kind: a.kind.clone(),
                label: label.clone().unwrap_or_default(),
            },
            format!("made by {cmd:?}"),
        ),
        (None, Some(kind)) => {
            // Build one now: a size or label the generator refuses is a
            // start-up error, not something every client runs into.
            let t0 = std::time::Instant::now();
            synthesize(kind, size, label.as_deref(), [0; 16])
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("an empty {} filesystem of {}", a.kind, Size(size)))?;
            log::info!(
                "an empty {} of {} takes {:.2} ms to synthesize",
                a.kind,
                Size(size),
                t0.elapsed().as_secs_f64() * 1000.0
            );
            let build = move |id: [u8; 16]| {
                synthesize(kind, size, label.as_deref(), id)
                    .map_err(|e| synth::Error::new(ErrorKind::InvalidInput, e))
            };
            (
                Initializer::Synthesized(Box::new(build)),
                "synthesized".to_string(),
            )
        }
        (None, None) => {
            // Found now rather than failing for every client later.
            let mkfs = format!("mkfs.{}", a.kind);
            let found = std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(&mkfs).is_file())
            });
            if !found {
                bail!(
                    "--type {}: {mkfs} is not installed (ext4 and vfat need nothing; \
                     for others install their mkfs or give --command)",
                    a.kind
                );
            }
            (
                Initializer::Command {
                    script: MKFS.to_string(),
                    kind: a.kind.clone(),
                    label: label.clone().unwrap_or_default(),
                },
                format!("made by mkfs -t {}", a.kind),
            )
        }
    };
    let description = format!(
        "tmpdisk: a fresh empty {} filesystem of {} for each client ({what})",
        a.kind,
        Size(size)
    );
    Ok(TmpdiskExport::new(
        TmpdiskOptions {
            size,
            dir,
            max_clients: a.max_clients,
            max_disk: a.max_disk.map(|s| s.0),
            description,
            command_timeout: std::time::Duration::from_secs(a.command_timeout),
        },
        init,
    ))
}
