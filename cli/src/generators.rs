//! What the directory generators share at the command line: scanning a tree,
//! `SOURCE_DATE_EPOCH`, and the `--rw` overlay. The generators themselves run in
//! `build.rs`, for the `floppy`/`ext4`/`iso` subcommands and every `build` partition.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use synth::BlockDev;

use crate::args::{ExportArgs, WriteArgs};

pub(crate) fn scan_with(dir: &Path, opts: &tree::ScanOptions) -> Result<tree::Tree> {
    tree::scan(dir, opts).with_context(|| format!("scanning {}", dir.display()))
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org), if set.
pub(crate) fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(v.trim().parse::<i64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

/// A generated image, writable under `--rw` through an overlay whose
/// pages live in an unlinked temp file in `--dir` (clients never reach the
/// host tree, and a client writing gigabytes costs disk, not memory), with
/// `--max-disk` as the space all writes may take.
pub(crate) fn with_overlay(
    map: Arc<dyn BlockDev>,
    w: &WriteArgs,
    export: &ExportArgs,
) -> Result<Arc<dyn BlockDev>> {
    if !w.rw || export.readonly {
        return Ok(map);
    }
    let dir = w
        .overlay_dir
        .clone()
        .unwrap_or_else(crate::tmpdisk::default_dir);
    let opts = synth::OverlayOptions {
        store: synth::OverlayStore::TempFile,
        // ext4's block and the common guest page: a small write copies
        // little of the page beneath.
        page_size: 4096,
        temp_dir: Some(dir.clone()),
        quota: w.max_disk.map(|s| Arc::new(synth::SpaceQuota::new(s.0))),
    };
    let overlay = synth::CowOverlay::new(map, opts)
        .with_context(|| format!("making the --rw overlay in {}", dir.display()))?;
    Ok(Arc::new(overlay))
}
