//! The disk spec of `disksynth build`: a TOML file or `--part` flags, parsed into one [`Spec`].
//!
//! ```toml
//! [disk]
//! table = "gpt"        # gpt | mbr | hybrid | none
//! size = "auto"        # auto, or e.g. "8G" (a partition with size = "remaining" takes the rest)
//! seed = "ci-build-42" # every GUID, UUID and serial derives from it and the labels
//! sector_size = 512    # 512 | 4096
//! align = "1M"
//!
//! [[partition]]
//! label = "esp"
//! type = "esp"         # a Discoverable Partitions name, a GUID, or an MBR byte ("0x0c")
//! fs = "fat"           # fat | ext4 | iso | empty; or raw = "FILE"
//! source = "./esp"
//! size = "64M"         # auto | "64M" | "auto+20%" | "min:1G" | "remaining"
//! ```
//!
//! Unknown keys are errors with their line and column (serde's `deny_unknown_fields`, which
//! the `toml` crate reports with the span). Relative paths are relative to the spec file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::size::Size;

/// The whole disk.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Partition table kind: "gpt", "mbr", "hybrid" or "none".
    pub table: String,
    /// Disk size; `None` is "auto" (exactly what the partitions need).
    pub size: Option<u64>,
    /// Seed of every derived identifier; `None`: derived from the spec and the trees.
    pub seed: Option<String>,
    /// Logical sector size, 512 or 4096.
    pub sector_size: u64,
    /// Partition alignment in bytes.
    pub align: u64,
    /// The partitions in order.
    pub partitions: Vec<PartSpec>,
}

/// How big a partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSize {
    /// What its content needs.
    Auto,
    /// Exactly this many bytes.
    Fixed(u64),
    /// What its content needs plus this many percent.
    AutoPlus(u32),
    /// What its content needs, but at least this many bytes.
    AtLeast(u64),
    /// The rest of a disk of fixed size.
    Remaining,
}

/// Directories laid over each other, in order: `(host directory, where it goes in the
/// filesystem)`; `["./rootfs", "./overlay:/etc"]` is `[("./rootfs", "/"), ("./overlay", "/etc")]`.
pub type Sources = Vec<(PathBuf, PathBuf)>;

/// What a partition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A FAT filesystem of directories.
    Fat(Sources),
    /// An ext4 filesystem of directories.
    Ext4(Sources),
    /// An ISO 9660 image of directories.
    Iso(Sources),
    /// Zeros.
    Empty,
    /// A file's bytes, mapped (never copied).
    Raw(PathBuf),
}

/// One partition.
#[derive(Debug, Clone)]
pub struct PartSpec {
    /// GPT partition name; also what derived identifiers hang on.
    pub label: String,
    /// Partition type, as written (a name, a GUID or an MBR byte).
    pub kind: String,
    /// What it holds.
    pub content: Content,
    /// How big it is.
    pub size: PartSize,
    /// GPT attribute names.
    pub attributes: Vec<String>,
    /// MBR active flag.
    pub bootable: bool,
    /// Unique partition GUID (text); derived if `None`.
    pub guid: Option<String>,
    /// Filesystem options, by the names of the filesystem's own subcommand.
    pub fs: FsOptions,
}

/// Filesystem options a partition may carry (each applies to some filesystems only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsOptions {
    /// Volume label (FAT, ext4) or volume id (ISO).
    pub fs_label: Option<String>,
    /// Filesystem UUID (ext4), text.
    pub uuid: Option<String>,
    /// `keep` or `root` (ext4).
    pub owner: Option<String>,
    /// FAT type: 12, 16 or 32.
    pub fat: Option<u8>,
    /// FAT volume serial, hex.
    pub serial: Option<String>,
    /// FAT: refuse names FAT sees as one.
    pub strict_names: bool,
    /// ext4: leave out extended attributes.
    pub no_xattrs: bool,
    /// ISO: no Rock Ridge.
    pub no_rock_ridge: bool,
    /// ISO: no Joliet.
    pub no_joliet: bool,
}

// ---- TOML ----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    disk: Option<DiskToml>,
    #[serde(default)]
    partition: Vec<PartToml>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiskToml {
    table: Option<String>,
    size: Option<String>,
    seed: Option<String>,
    sector_size: Option<u64>,
    align: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SourceList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartToml {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    fs: Option<String>,
    source: Option<SourceList>,
    raw: Option<String>,
    size: Option<String>,
    attributes: Option<Vec<String>>,
    bootable: Option<bool>,
    guid: Option<String>,
    fs_label: Option<String>,
    uuid: Option<String>,
    owner: Option<String>,
    fat: Option<u8>,
    serial: Option<String>,
    strict_names: Option<bool>,
    no_xattrs: Option<bool>,
    no_rock_ridge: Option<bool>,
    no_joliet: Option<bool>,
}

/// Defaults of `[disk]`.
const DEFAULT_ALIGN: u64 = 1 << 20;

/// Parse a spec file; relative paths in it are relative to its directory.
pub fn from_file(path: &Path) -> Result<Spec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the disk spec {}", path.display()))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    from_toml(&text, &base).with_context(|| format!("in the disk spec {}", path.display()))
}

/// Parse spec text; relative paths are relative to `base`.
pub fn from_toml(text: &str, base: &Path) -> Result<Spec> {
    let file: SpecFile = toml::from_str(text).map_err(|e| one_line(&e, text))?;
    let disk = file.disk.unwrap_or_default();
    let mut parts = Vec::with_capacity(file.partition.len());
    for (i, p) in file.partition.into_iter().enumerate() {
        parts.push(part_from_toml(p, base).with_context(|| format!("partition {}", i + 1))?);
    }
    let spec = Spec {
        table: disk.table.unwrap_or_else(|| "gpt".into()),
        size: match disk.size.as_deref() {
            None | Some("auto") => None,
            Some(s) => Some(parse_size(s).context("[disk] size")?),
        },
        seed: disk.seed,
        sector_size: disk.sector_size.unwrap_or(512),
        align: match disk.align.as_deref() {
            None => DEFAULT_ALIGN,
            Some(s) => parse_size(s).context("[disk] align")?,
        },
        partitions: parts,
    };
    validate(&spec)?;
    Ok(spec)
}

/// A TOML error on one line: `line 9, column 1: unknown field `siez`, expected one of …`
/// (toml's own rendering draws the source over several lines).
fn one_line(e: &toml::de::Error, text: &str) -> anyhow::Error {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow::anyhow!("line {line}, column {column}: {msg}")
        }
        None => anyhow::anyhow!("{msg}"),
    }
}

fn parse_size(s: &str) -> Result<u64> {
    s.parse::<Size>().map(|v| v.0).map_err(anyhow::Error::msg)
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `auto`, `64M`, `auto+20%`, `min:1G`, `remaining`.
pub fn parse_part_size(s: &str) -> Result<PartSize> {
    let t = s.trim();
    Ok(if t == "auto" {
        PartSize::Auto
    } else if t == "remaining" {
        PartSize::Remaining
    } else if let Some(pct) = t.strip_prefix("auto+").and_then(|r| r.strip_suffix('%')) {
        let n: u32 = pct
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{s:?}: auto+N% needs a whole number of percent"))?;
        PartSize::AutoPlus(n)
    } else if let Some(min) = t.strip_prefix("min:") {
        PartSize::AtLeast(parse_size(min).with_context(|| format!("size {s:?}"))?)
    } else {
        PartSize::Fixed(parse_size(t).with_context(|| {
            format!("size {s:?}: use auto, a size (64M), auto+20%, min:1G or remaining")
        })?)
    })
}

/// `DIR` or `DIR:/PATH` (a directory laid over the tree at PATH).
fn source_dir(base: &Path, s: &str) -> Result<(PathBuf, PathBuf)> {
    match s.rsplit_once(":/") {
        Some((dir, at)) if !dir.is_empty() => Ok((resolve(base, dir), PathBuf::from("/").join(at))),
        _ if s.is_empty() => bail!("an empty source"),
        _ => Ok((resolve(base, s), PathBuf::from("/"))),
    }
}

fn part_from_toml(p: PartToml, base: &Path) -> Result<PartSpec> {
    let sources: Option<Vec<String>> = match p.source {
        None => None,
        Some(SourceList::One(s)) => Some(vec![s]),
        Some(SourceList::Many(v)) if v.is_empty() => bail!("source = [] names no directory"),
        Some(SourceList::Many(v)) => Some(v),
    };
    let content = match (p.fs.as_deref(), sources, p.raw) {
        (_, Some(_), Some(_)) => bail!("give either source or raw, not both"),
        (Some("empty"), None, None) => Content::Empty,
        (Some("empty"), _, _) => bail!("fs = \"empty\" takes no source"),
        (Some(fs), Some(src), None) => {
            let dirs = src
                .iter()
                .map(|s| source_dir(base, s))
                .collect::<Result<Sources>>()?;
            match fs {
                "fat" | "vfat" => Content::Fat(dirs),
                "ext4" => Content::Ext4(dirs),
                "iso" | "iso9660" => Content::Iso(dirs),
                other => bail!("fs = {other:?}: use fat, ext4, iso or empty (or raw = \"FILE\")"),
            }
        }
        (Some(fs), None, None) => bail!("fs = {fs:?} needs a source directory"),
        (None, None, Some(raw)) => Content::Raw(resolve(base, &raw)),
        (Some(_), None, Some(_)) => bail!("raw partitions take no fs"),
        (None, Some(src), None) => {
            bail!("source = {src:?} needs fs = \"fat\", \"ext4\" or \"iso\"")
        }
        (None, None, None) => bail!("say what the partition holds: fs = \"…\" with source, fs = \"empty\", or raw = \"FILE\""),
    };
    let fs = FsOptions {
        fs_label: p.fs_label,
        uuid: p.uuid,
        owner: p.owner,
        fat: p.fat,
        serial: p.serial,
        strict_names: p.strict_names.unwrap_or(false),
        no_xattrs: p.no_xattrs.unwrap_or(false),
        no_rock_ridge: p.no_rock_ridge.unwrap_or(false),
        no_joliet: p.no_joliet.unwrap_or(false),
    };
    check_fs_options(&content, &fs, &p.label)?;
    Ok(PartSpec {
        label: p.label,
        kind: p.kind,
        content,
        size: match p.size.as_deref() {
            None => PartSize::Auto,
            Some(s) => parse_part_size(s)?,
        },
        attributes: p.attributes.unwrap_or_default(),
        bootable: p.bootable.unwrap_or(false),
        guid: p.guid,
        fs,
    })
}

/// Options that do not apply to the partition's filesystem are errors, not silently ignored.
fn check_fs_options(content: &Content, o: &FsOptions, label: &str) -> Result<()> {
    let (fat, ext4, iso) = (
        matches!(content, Content::Fat(_)),
        matches!(content, Content::Ext4(_)),
        matches!(content, Content::Iso(_)),
    );
    let checks: [(&str, bool, bool); 9] = [
        ("fs_label", o.fs_label.is_some(), fat || ext4 || iso),
        ("uuid", o.uuid.is_some(), ext4),
        ("owner", o.owner.is_some(), ext4),
        ("no_xattrs", o.no_xattrs, ext4),
        ("fat", o.fat.is_some(), fat),
        ("serial", o.serial.is_some(), fat),
        ("strict_names", o.strict_names, fat),
        ("no_rock_ridge", o.no_rock_ridge, iso),
        ("no_joliet", o.no_joliet, iso),
    ];
    for (key, given, applies) in checks {
        if given && !applies {
            bail!("partition {label:?}: {key} does not apply to its content ({content:?})");
        }
    }
    Ok(())
}

/// Whole-spec checks: sizes, labels, table limits.
fn validate(spec: &Spec) -> Result<()> {
    match spec.table.as_str() {
        "gpt" | "mbr" | "hybrid" | "none" => {}
        t => bail!("[disk] table = {t:?}: use gpt, mbr, hybrid or none"),
    }
    if spec.sector_size != 512 && spec.sector_size != 4096 {
        bail!("[disk] sector_size = {}: use 512 or 4096", spec.sector_size);
    }
    if !spec.align.is_power_of_two() || spec.align < spec.sector_size {
        bail!(
            "[disk] align = {}: a power of two of at least one sector ({} bytes)",
            spec.align,
            spec.sector_size
        );
    }
    if spec.partitions.is_empty() {
        bail!("the disk has no [[partition]]");
    }
    if spec.table == "none" && spec.partitions.len() != 1 {
        bail!(
            "table = \"none\" holds exactly one partition (the disk is its content), not {}",
            spec.partitions.len()
        );
    }
    let mut seen = std::collections::HashSet::new();
    for p in &spec.partitions {
        if p.label.is_empty() {
            bail!("a partition label may not be empty");
        }
        if !seen.insert(p.label.as_str()) {
            bail!("two partitions are labelled {:?}: labels must be unique (identifiers derive from them)", p.label);
        }
    }
    let remaining = spec
        .partitions
        .iter()
        .filter(|p| p.size == PartSize::Remaining)
        .count();
    if remaining > 1 {
        bail!("only one partition may have size = \"remaining\"");
    }
    if remaining == 1 && spec.size.is_none() {
        bail!("size = \"remaining\" needs a disk size ([disk] size = \"8G\")");
    }
    for p in &spec.partitions {
        match (&p.content, p.size) {
            (Content::Empty, PartSize::Auto | PartSize::AutoPlus(_)) => {
                bail!("partition {:?}: an empty partition needs a size", p.label)
            }
            (Content::Iso(_), PartSize::AutoPlus(_) | PartSize::AtLeast(_))
            | (Content::Raw(_), PartSize::AutoPlus(_)) => {}
            _ => {}
        }
    }
    Ok(())
}

/// `--part TYPE:FS:SOURCE[:SIZE]` (FS: fat, ext4, iso, raw (SOURCE is the file) or empty (no
/// SOURCE)); the label is the type's name, numbered if it repeats.
pub fn from_flags(
    table: &str,
    size: Option<u64>,
    seed: Option<String>,
    sector_size: u64,
    align: u64,
    parts: &[String],
) -> Result<Spec> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let fields: Vec<&str> = p.splitn(4, ':').collect();
        let bad = || {
            anyhow::anyhow!(
                "--part {p:?}: use TYPE:FS:SOURCE[:SIZE], e.g. esp:fat:./esp:64M, root-x86-64:ext4:./rootfs, data:empty::1G"
            )
        };
        if fields.len() < 2 {
            return Err(bad());
        }
        let (kind, fs) = (fields[0], fields[1]);
        let source = fields.get(2).copied().unwrap_or("");
        let size = match fields.get(3) {
            Some(s) if !s.is_empty() => parse_part_size(s)?,
            _ => PartSize::Auto,
        };
        let path = PathBuf::from(source);
        let dirs = vec![(path.clone(), PathBuf::from("/"))];
        let content = match fs {
            "fat" | "vfat" => Content::Fat(dirs),
            "ext4" => Content::Ext4(dirs),
            "iso" => Content::Iso(dirs),
            "raw" => Content::Raw(path),
            "empty" if source.is_empty() => Content::Empty,
            _ => return Err(bad()),
        };
        if source.is_empty() && content != Content::Empty {
            return Err(bad());
        }
        let base = kind.to_string();
        let label = if out.iter().any(|q: &PartSpec| q.label == base) {
            format!("{base}-{}", i + 1)
        } else {
            base
        };
        out.push(PartSpec {
            label,
            kind: kind.to_string(),
            content,
            size,
            attributes: Vec::new(),
            bootable: false,
            guid: None,
            fs: FsOptions::default(),
        });
    }
    let spec = Spec {
        table: table.to_string(),
        size,
        seed,
        sector_size,
        align,
        partitions: out,
    };
    validate(&spec)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[disk]
table = "gpt"
size = "auto"
seed = "ci-build-42"
sector_size = 512
align = "1M"

[[partition]]
label = "esp"
type = "esp"
fs = "fat"
source = "./esp"
size = "64M"

[[partition]]
label = "root"
type = "root-x86-64"
fs = "ext4"
source = ["./rootfs", "over:/etc"]
owner = "root"
fs_label = "root"
uuid = "01234567-89ab-cdef-0123-456789abcdef"
attributes = ["no-auto", "grow-fs"]
size = "auto+20%"

[[partition]]
label = "blob"
type = "linux-generic"
raw = "/abs/blob.bin"
"#;

    #[test]
    fn a_full_spec_parses_with_paths_relative_to_the_spec() {
        let s = from_toml(FULL, Path::new("/specs")).unwrap();
        assert_eq!(s.table, "gpt");
        assert_eq!(s.seed.as_deref(), Some("ci-build-42"));
        assert_eq!(s.align, 1 << 20);
        assert_eq!(s.partitions.len(), 3);
        assert_eq!(
            s.partitions[0].content,
            Content::Fat(vec![("/specs/./esp".into(), "/".into())])
        );
        assert_eq!(
            s.partitions[1].content,
            Content::Ext4(vec![
                ("/specs/./rootfs".into(), "/".into()),
                ("/specs/over".into(), "/etc".into())
            ])
        );
        assert_eq!(s.partitions[0].size, PartSize::Fixed(64 << 20));
        assert_eq!(s.partitions[1].size, PartSize::AutoPlus(20));
        assert_eq!(s.partitions[1].attributes, ["no-auto", "grow-fs"]);
        assert_eq!(s.partitions[1].fs.owner.as_deref(), Some("root"));
        assert_eq!(
            s.partitions[2].content,
            Content::Raw("/abs/blob.bin".into())
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_with_line_and_column() {
        let text = "[disk]\ntable = \"gpt\"\n\n[[partition]]\nlabel = \"a\"\ntype = \"esp\"\nfs = \"fat\"\nsource = \"x\"\nsiez = \"1M\"\n";
        let e = format!("{:#}", from_toml(text, Path::new(".")).unwrap_err());
        assert!(e.contains("siez") && e.contains("line 9"), "{e}");
    }

    #[test]
    fn bad_specs_give_one_clear_error_each() {
        let cases = [
            ("[disk]\ntable = \"apm\"\n[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"empty\"\nsize=\"1M\"", "table"),
            ("[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"empty\"\nsize=\"1M\"\n[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"empty\"\nsize=\"1M\"", "two partitions are labelled"),
            ("[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"empty\"", "needs a size"),
            ("[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"fat\"", "needs a source"),
            ("[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"fat\"\nsource=\"x\"\nowner=\"root\"", "owner does not apply"),
            ("[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"empty\"\nsize=\"remaining\"", "needs a disk size"),
            ("[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"empty\"\nsize=\"lots\"", "size \"lots\""),
            ("[disk]\nsector_size = 1024\n[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"empty\"\nsize=\"1M\"", "sector_size"),
            ("[disk]\ntable = \"gpt\"", "no [[partition]]"),
            ("[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nraw=\"f\"\nsource=\"d\"", "either source or raw"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", from_toml(text, Path::new(".")).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn part_sizes() {
        assert_eq!(parse_part_size("auto").unwrap(), PartSize::Auto);
        assert_eq!(parse_part_size("64M").unwrap(), PartSize::Fixed(64 << 20));
        assert_eq!(parse_part_size("auto+20%").unwrap(), PartSize::AutoPlus(20));
        assert_eq!(
            parse_part_size("min:1G").unwrap(),
            PartSize::AtLeast(1 << 30)
        );
        assert_eq!(parse_part_size("remaining").unwrap(), PartSize::Remaining);
        assert!(parse_part_size("auto+x%").is_err());
    }

    #[test]
    fn flags_make_the_same_spec() {
        let s = from_flags(
            "gpt",
            None,
            None,
            512,
            1 << 20,
            &[
                "esp:fat:./esp:64M".into(),
                "root-x86-64:ext4:./rootfs".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.partitions[0].label, "esp");
        assert_eq!(s.partitions[0].size, PartSize::Fixed(64 << 20));
        assert_eq!(s.partitions[1].label, "root-x86-64");
        assert_eq!(
            s.partitions[1].content,
            Content::Ext4(vec![("./rootfs".into(), "/".into())])
        );
        assert!(from_flags("gpt", None, None, 512, 1 << 20, &["esp".into()]).is_err());
    }
}
