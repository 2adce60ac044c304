//! `disksynth inspect FILE|URI`: what a disk image, block device or NBD export holds — its
//! partition table, partitions and the filesystems in them — as a table or as JSON (`--json`),
//! read with `formats::partition::inspect` (CRCs checked; problems listed, never trusted).
//! NBD URIs (`nbd://`, `nbd+unix://`) are read through `nbd_export::NbdClient`.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use formats::partition::{FoundFs, Inspection};
use nbd_export::{is_nbd_uri, ClientOptions, NbdClient};
use serde_json::{json, Value};
use synth::BlockDev;

use synth::size::Size;

fn fs_json(f: &Option<FoundFs>) -> Value {
    match f {
        Some(f) => json!({ "type": f.kind, "uuid": f.uuid, "label": f.label }),
        None => Value::Null,
    }
}

/// The inspection as JSON (the same keys as `build --json` where they overlap).
pub(crate) fn to_json(i: &Inspection) -> Value {
    let parts: Vec<Value> = i
        .partitions
        .iter()
        .map(|p| {
            json!({
                "number": p.number,
                "label": p.label,
                "type": p.type_name,
                "offset": p.offset,
                "size": p.size,
                "type_guid": p.type_guid.map(|g| g.to_string()),
                "mbr_type": p.mbr_type.map(|t| format!("0x{t:02x}")),
                "guid": p.guid.map(|g| g.to_string()),
                "attributes": format!("0x{:016x}", p.attributes),
                "bootable": p.bootable,
                "filesystem": fs_json(&p.filesystem),
            })
        })
        .collect();
    json!({
        "size": i.size,
        "table": i.table.map(|t| t.to_string()),
        "sector_size": i.sector_size,
        "disk_guid": i.disk_guid.map(|g| g.to_string()),
        "mbr_signature": i.mbr_signature.map(|s| format!("0x{s:08x}")),
        "filesystem": fs_json(&i.filesystem),
        "partitions": parts,
        "problems": i.problems,
    })
}

fn fs_text(f: &Option<FoundFs>) -> String {
    match f {
        None => "-".into(),
        Some(f) => {
            let mut s = f.kind.to_string();
            if let Some(l) = &f.label {
                s += &format!(" {l:?}");
            }
            if let Some(u) = &f.uuid {
                s += &format!(" {u}");
            }
            s
        }
    }
}

/// A device that remembers its first failed read. `formats::partition::inspect` takes an
/// unreadable sector for an absent table; a disk that could not be read (a server's `EIO`, a
/// connection gone, a failing drive) must be an error, not reported as empty.
#[derive(Debug)]
struct FirstError {
    dev: Box<dyn BlockDev>,
    error: Mutex<Option<synth::Error>>,
}

impl BlockDev for FirstError {
    fn size(&self) -> u64 {
        self.dev.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> synth::Result<()> {
        let mut first = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = &*first {
            // The result is an error already: do not wait for more of them.
            return Err(synth::Error::new(e.kind(), format!("{e:#}")));
        }
        self.dev.read_at(buf, offset).map_err(|e| {
            let copy = synth::Error::new(e.kind(), format!("{e:#}"));
            *first = Some(e);
            copy
        })
    }
}

/// The disk at `target`: an NBD URI (`timeout` bounds every wait for the server) or a file.
fn open(target: &Path, timeout: u64) -> Result<Box<dyn BlockDev>> {
    match target.to_str() {
        Some(uri) if is_nbd_uri(uri) => {
            let opts = ClientOptions {
                connect_timeout: Duration::from_secs(timeout),
                timeout: Duration::from_secs(timeout),
            };
            // The client's errors name the server and the export themselves.
            Ok(Box::new(NbdClient::connect(uri, &opts)?))
        }
        _ => Ok(Box::new(
            sources::FileDev::open(target, false)
                .with_context(|| format!("opening {}", target.display()))?,
        )),
    }
}

/// Inspect `target` and print what it holds; exit status 1 if problems were found.
pub(crate) fn inspect(target: &Path, as_json: bool, timeout: u64) -> Result<bool> {
    let dev = FirstError {
        dev: open(target, timeout)?,
        error: Mutex::new(None),
    };
    let i = formats::partition::inspect(&dev)
        .with_context(|| format!("inspecting {}", target.display()))?;
    if let Some(e) = dev
        .error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(e).with_context(|| format!("reading {}", target.display()));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(&i))?);
    } else {
        println!(
            "{}: {} ({} bytes), table {}{}",
            target.display(),
            Size(i.size),
            i.size,
            i.table.map_or("none".to_string(), |t| t.to_string()),
            i.disk_guid
                .map_or(String::new(), |g| format!(", disk GUID {g}")),
        );
        if i.filesystem.is_some() {
            println!("  at byte 0: {}", fs_text(&i.filesystem));
        }
        for p in &i.partitions {
            let kind = p
                .type_name
                .clone()
                .or_else(|| p.type_guid.map(|g| g.to_string()))
                .or_else(|| p.mbr_type.map(|t| format!("0x{t:02x}")))
                .unwrap_or_default();
            println!(
                "  {:>2}  {:>14} +{:<14} {:<12} {:<16} {}",
                p.number,
                p.offset,
                p.size,
                kind,
                p.label.as_deref().unwrap_or(""),
                fs_text(&p.filesystem)
            );
        }
        for problem in &i.problems {
            println!("  problem: {problem}");
        }
    }
    Ok(i.problems.is_empty())
}
