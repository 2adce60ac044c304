//! `disksynth inspect PATH`: what a disk image or block device holds — its partition table,
//! partitions and the filesystems in them — as a table or as JSON (`--json`), read with
//! `formats::partition::inspect` (CRCs checked; problems listed, never trusted).

use std::path::Path;

use anyhow::{Context, Result};
use formats::partition::{FoundFs, Inspection};
use serde_json::{json, Value};

use crate::size::Size;

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

/// Inspect `path` and print what it holds; exit status 1 if problems were found.
pub(crate) fn inspect(path: &Path, as_json: bool) -> Result<bool> {
    let dev = sources::FileDev::open(path, false)
        .with_context(|| format!("opening {}", path.display()))?;
    let i = formats::partition::inspect(&dev)
        .with_context(|| format!("inspecting {}", path.display()))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(&i))?);
    } else {
        println!(
            "{}: {} ({} bytes), table {}{}",
            path.display(),
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
