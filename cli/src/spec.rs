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

use crate::args::{ExportArgs, Source, WriteArgs};
use synth::size::Size;

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
    /// Layers over the whole disk (`[disk] filters`), outermost first, under any
    /// `--filter` given on the command line.
    pub filters: Vec<String>,
    /// How remote (`source = "https://…"`) and compressed (`xz = …`) contents are read: the
    /// `http` and `xz` subcommands' options (their defaults for a spec file).
    pub remote: Remote,
}

/// The `http` and `xz` subcommands' options, for remote and compressed contents.
#[derive(Debug, Clone, clap::Parser)]
pub struct Remote {
    #[command(flatten)]
    pub http: crate::args::HttpArgs,
    #[command(flatten)]
    pub xz: crate::args::XzArgs,
    /// Not flattened: its option names are the xz view's (`--cache-size`).
    #[arg(skip)]
    pub qcow2: crate::args::Qcow2Args,
}

impl Default for Remote {
    fn default() -> Remote {
        <Remote as clap::Parser>::parse_from(["disksynth"])
    }
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
    /// A remote raw image (`source = "https://…"`), read lazily with range requests.
    Http(String),
    /// A block-indexed `.xz` image, a path or an http(s) URL (`xz = "…"`).
    Xz(String),
    /// A qcow2 image's guest disk, a path or an http(s) URL (`qcow2 = "…"`), with its
    /// backing chain, nearest first (`backing = "…"` or a list).
    Qcow2 {
        source: String,
        backing: Vec<String>,
    },
    /// Any image, its format told by its magic (`image = "…"`: raw, xz, qcow2 or qcow2
    /// inside xz), with a backing chain for a qcow2 (`backing = …`).
    Image {
        source: String,
        backing: Vec<String>,
    },
    /// A host file or block device, writable by clients if `writable` (`disksynth file`).
    File { path: PathBuf, writable: bool },
    /// A writable sparse RAM disk (`disksynth memory`).
    Memory,
    /// Every 8-byte big-endian word holds its own offset (`disksynth pattern`).
    Pattern,
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
    /// Layers over the partition's content (`filters = [...]`), outermost first.
    pub filters: Vec<String>,
}

/// Filesystem options a partition may carry (each applies to some filesystems only), by the
/// names of the filesystem's own subcommand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsOptions {
    /// Volume label (FAT, ext4) or volume id (ISO).
    pub fs_label: Option<String>,
    /// Filesystem UUID (ext4).
    pub uuid: Option<[u8; 16]>,
    /// Who owns the files (ext4).
    pub owner: Option<formats::ext4::Owner>,
    /// FAT type.
    pub fat: Option<formats::fat::FatType>,
    /// FAT volume serial.
    pub serial: Option<u32>,
    /// FAT: refuse names FAT sees as one.
    pub strict_names: bool,
    /// ext4: leave out extended attributes.
    pub no_xattrs: bool,
    /// ISO: no Rock Ridge.
    pub no_rock_ridge: bool,
    /// ISO: no Joliet.
    pub no_joliet: bool,
    /// ISO: El Torito BIOS boot image, a path inside the tree (`iso --boot`).
    pub boot: Option<PathBuf>,
    /// ISO: sectors of the BIOS boot image loaded (`iso --boot-load-size`).
    pub boot_load_size: Option<u16>,
    /// ISO: leave the boot image unpatched (`iso --no-boot-info-table`).
    pub no_boot_info_table: bool,
    /// ISO: El Torito UEFI boot image (a FAT image file), a path inside the tree (`iso --efi-boot`).
    pub efi_boot: Option<PathBuf>,
    /// ISO: El Torito UEFI boot image synthesized by the FAT generator from this host
    /// directory (`iso --efi-boot-dir`).
    pub efi_boot_dir: Option<PathBuf>,
    /// Most host files kept open at once (`--max-open-files`).
    pub max_open_files: Option<usize>,
    /// Whole-disk options (the filesystem is the disk: `table = "none"` only).
    pub whole_disk: WholeDisk,
}

/// Options of a filesystem that is the whole disk (`table = "none"`), where the generator lays
/// out its own boot records: what `floppy --floppy/--partition` and `iso --hybrid` do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WholeDisk {
    /// FAT: a standard floppy (FAT12, no partition table).
    pub floppy: Option<formats::fat::FloppyFormat>,
    /// FAT: one MBR partition at 1 MiB holding the volume (`floppy --partition mbr`).
    pub fat_mbr: bool,
    /// ISO: partition tables so the image also works as a disk.
    pub hybrid: bool,
    /// ISO: MBR boot code for BIOS booting the El Torito image from a disk.
    pub hybrid_mbr: Option<PathBuf>,
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
    filters: Option<Vec<String>>,
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
    xz: Option<String>,
    qcow2: Option<String>,
    image: Option<String>,
    backing: Option<SourceList>,
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
    boot: Option<String>,
    boot_load_size: Option<u16>,
    no_boot_info_table: Option<bool>,
    efi_boot: Option<String>,
    efi_boot_dir: Option<String>,
    max_open_files: Option<usize>,
    filters: Option<Vec<String>>,
    floppy: Option<String>,
    partition: Option<String>,
    hybrid: Option<bool>,
    hybrid_mbr: Option<String>,
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
        remote: Remote::default(),
        filters: disk.filters.unwrap_or_default(),
    };
    validate(&spec)?;
    Ok(spec)
}

/// A TOML error on one line: `line 9, column 1: unknown field `siez`, expected one of …`
/// (toml's own rendering draws the source over several lines).
pub(crate) fn one_line(e: &toml::de::Error, text: &str) -> anyhow::Error {
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

fn part_from_toml(mut p: PartToml, base: &Path) -> Result<PartSpec> {
    let filters = p.filters.take().unwrap_or_default();
    let mut part = content_from_toml(p, base)?;
    part.filters = filters;
    Ok(part)
}

fn content_from_toml(p: PartToml, base: &Path) -> Result<PartSpec> {
    let sources: Option<Vec<String>> = match p.source {
        None => None,
        Some(SourceList::One(s)) => Some(vec![s]),
        Some(SourceList::Many(v)) if v.is_empty() => bail!("source = [] names no directory"),
        Some(SourceList::Many(v)) => Some(v),
    };
    let is_url =
        |s: &str| s.starts_with("http://") || s.starts_with("https://") || s.starts_with("s3://");
    let local_or_url = |x: String| {
        if is_url(&x) {
            x
        } else {
            resolve(base, &x).to_string_lossy().into_owned()
        }
    };
    if p.backing.is_some() && p.qcow2.is_none() && p.image.is_none() {
        bail!("backing = … goes with qcow2 = … or image = …");
    }
    if p.qcow2.is_some() && p.image.is_some() {
        bail!("give either qcow2 = … or image = …, not both");
    }
    if let Some((q, is_image)) = p.qcow2.map(|q| (q, false)).or(p.image.map(|i| (i, true))) {
        let key = if is_image { "image" } else { "qcow2" };
        if p.fs.is_some() || sources.is_some() || p.raw.is_some() || p.xz.is_some() {
            bail!("{key} = … takes no fs, source, raw or xz");
        }
        let backing = match p.backing {
            None => Vec::new(),
            Some(SourceList::One(b)) => vec![b],
            Some(SourceList::Many(v)) => v,
        };
        let (source, backing) = (
            local_or_url(q),
            backing.into_iter().map(local_or_url).collect(),
        );
        return finish_part(
            p.label,
            p.kind,
            if is_image {
                Content::Image { source, backing }
            } else {
                Content::Qcow2 { source, backing }
            },
            p.size,
            p.attributes,
            p.bootable,
            p.guid,
            FsOptions::default(),
        );
    }
    if let Some(x) = p.xz {
        if p.fs.is_some() || sources.is_some() || p.raw.is_some() {
            bail!("xz = … takes no fs, source or raw");
        }
        let x = if is_url(&x) {
            x
        } else {
            resolve(base, &x).to_string_lossy().into_owned()
        };
        return finish_part(
            p.label,
            p.kind,
            Content::Xz(x),
            p.size,
            p.attributes,
            p.bootable,
            p.guid,
            FsOptions::default(),
        );
    }
    if let (None, Some(src), None) = (&p.fs, &sources, &p.raw) {
        if src.len() == 1 && is_url(&src[0]) {
            let url = src[0].clone();
            return finish_part(
                p.label,
                p.kind,
                Content::Http(url),
                p.size,
                p.attributes,
                p.bootable,
                p.guid,
                FsOptions::default(),
            );
        }
    }
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
            bail!("source = {src:?} needs fs = \"fat\", \"ext4\" or \"iso\" (or is an http(s) URL of a raw image)")
        }
        (None, None, None) => bail!("say what the partition holds: fs = \"…\" with source, fs = \"empty\", or raw = \"FILE\""),
    };
    let label = p.label.clone();
    let typed = |key: &str, e: String| anyhow::anyhow!("partition {label:?}: {key}: {e}");
    let fs = FsOptions {
        fs_label: p.fs_label,
        uuid: match &p.uuid {
            Some(u) => Some(parse_uuid(u).map_err(|e| typed("uuid", e))?),
            None => None,
        },
        owner: match &p.owner {
            Some(o) => Some(o.parse().map_err(|e| typed("owner", e))?),
            None => None,
        },
        fat: match p.fat {
            Some(n) => Some(n.to_string().parse().map_err(|e| typed("fat", e))?),
            None => None,
        },
        serial: match &p.serial {
            Some(v) => Some(parse_serial(v).map_err(|e| typed("serial", e))?),
            None => None,
        },
        strict_names: p.strict_names.unwrap_or(false),
        no_xattrs: p.no_xattrs.unwrap_or(false),
        no_rock_ridge: p.no_rock_ridge.unwrap_or(false),
        no_joliet: p.no_joliet.unwrap_or(false),
        boot: p.boot.map(PathBuf::from),
        boot_load_size: p.boot_load_size,
        no_boot_info_table: p.no_boot_info_table.unwrap_or(false),
        efi_boot: p.efi_boot.map(PathBuf::from),
        efi_boot_dir: p.efi_boot_dir.map(|d| resolve(base, &d)),
        max_open_files: p.max_open_files,
        whole_disk: WholeDisk {
            floppy: match &p.floppy {
                Some(f) => Some(f.parse().map_err(|e| typed("floppy", e))?),
                None => None,
            },
            fat_mbr: match p.partition.as_deref() {
                None | Some("none") => false,
                Some("mbr") => true,
                Some(o) => return Err(typed("partition", format!("{o:?}: use mbr or none"))),
            },
            hybrid: p.hybrid.unwrap_or(false),
            hybrid_mbr: p.hybrid_mbr.map(|f| resolve(base, &f)),
        },
    };
    check_fs_options(&content, &fs, &p.label)?;
    finish_part(
        p.label,
        p.kind,
        content,
        p.size,
        p.attributes,
        p.bootable,
        p.guid,
        fs,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish_part(
    label: String,
    kind: String,
    content: Content,
    size: Option<String>,
    attributes: Option<Vec<String>>,
    bootable: Option<bool>,
    guid: Option<String>,
    fs: FsOptions,
) -> Result<PartSpec> {
    Ok(PartSpec {
        label,
        kind,
        content,
        size: match size.as_deref() {
            None => PartSize::Auto,
            Some(s) => parse_part_size(s)?,
        },
        attributes: attributes.unwrap_or_default(),
        bootable: bootable.unwrap_or(false),
        guid,
        fs,
        filters: Vec::new(),
    })
}

/// Options that do not apply to the partition's filesystem are errors, not silently ignored.
fn check_fs_options(content: &Content, o: &FsOptions, label: &str) -> Result<()> {
    let (fat, ext4, iso) = (
        matches!(content, Content::Fat(_)),
        matches!(content, Content::Ext4(_)),
        matches!(content, Content::Iso(_)),
    );
    let w = &o.whole_disk;
    let checks: [(&str, bool, bool); 19] = [
        ("fs_label", o.fs_label.is_some(), fat || ext4 || iso),
        ("uuid", o.uuid.is_some(), ext4),
        ("owner", o.owner.is_some(), ext4),
        ("no_xattrs", o.no_xattrs, ext4),
        ("fat", o.fat.is_some(), fat),
        ("serial", o.serial.is_some(), fat),
        ("strict_names", o.strict_names, fat),
        ("no_rock_ridge", o.no_rock_ridge, iso),
        ("no_joliet", o.no_joliet, iso),
        ("boot", o.boot.is_some(), iso),
        ("boot_load_size", o.boot_load_size.is_some(), iso),
        ("no_boot_info_table", o.no_boot_info_table, iso),
        ("efi_boot", o.efi_boot.is_some(), iso),
        ("efi_boot_dir", o.efi_boot_dir.is_some(), iso),
        (
            "max_open_files",
            o.max_open_files.is_some(),
            fat || ext4 || iso,
        ),
        ("floppy", w.floppy.is_some(), fat),
        ("partition", w.fat_mbr, fat),
        ("hybrid", w.hybrid, iso),
        ("hybrid_mbr", w.hybrid_mbr.is_some(), iso),
    ];
    for (key, given, applies) in checks {
        if given && !applies {
            bail!("partition {label:?}: {key} does not apply to its content ({content:?})");
        }
    }
    if o.efi_boot.is_some() && o.efi_boot_dir.is_some() {
        bail!("partition {label:?}: give efi_boot or efi_boot_dir, not both");
    }
    if w.floppy.is_some() && w.fat_mbr {
        bail!(
            "partition {label:?}: a floppy has no partition table; leave out partition = \"mbr\""
        );
    }
    Ok(())
}

/// `01234567-89ab-cdef-0123-456789abcdef` (dashes anywhere, or none).
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    let bad = || format!("{s:?} is not a UUID (32 hex digits, dashes allowed)");
    if hex.len() != 32 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A FAT volume serial: 8 hex digits, `1234-ABCD` or `0x1234abcd`.
pub fn parse_serial(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0x").replace('-', "");
    if t.is_empty() || t.len() > 8 {
        return Err(format!(
            "{s:?} is not a serial number (8 hex digits, e.g. 1234-ABCD)"
        ));
    }
    u32::from_str_radix(&t, 16)
        .map_err(|_| format!("{s:?} is not a serial number (8 hex digits, e.g. 1234-ABCD)"))
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
    for p in &spec.partitions {
        if spec.table != "none" && p.fs.whole_disk != WholeDisk::default() {
            bail!(
                "partition {:?}: floppy, partition, hybrid and hybrid_mbr lay out a whole disk: they need [disk] table = \"none\"",
                p.label
            );
        }
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
            filters: Vec::new(),
        });
    }
    let spec = Spec {
        table: table.to_string(),
        size,
        seed,
        sector_size,
        align,
        partitions: out,
        remote: Remote::default(),
        filters: Vec::new(),
    };
    validate(&spec)?;
    Ok(spec)
}

// ---- the other subcommands -----------------------------------------------------------------

/// A serving subcommand, as one [`Spec`]: every disk-making subcommand is a disk without a
/// table whose one partition is what the subcommand makes, so one code path (`build::build`)
/// builds them all.
pub struct Job<'a> {
    /// The disk.
    pub spec: Spec,
    /// One line for logs and NBD export descriptions.
    pub what: String,
    /// How it is exported.
    pub export: &'a ExportArgs,
    /// Client writes through an overlay (generated disks).
    pub write: Option<&'a WriteArgs>,
    /// Where `build --json` writes its report.
    pub report: Option<&'a Path>,
}

/// One partition that is the whole disk (no table).
fn whole(label: &str, kind: &str, content: Content, size: PartSize, fs: FsOptions) -> Spec {
    Spec {
        table: "none".into(),
        size: None,
        seed: None,
        sector_size: 512,
        align: 512,
        partitions: vec![PartSpec {
            label: label.into(),
            kind: kind.into(),
            content,
            size,
            attributes: Vec::new(),
            bootable: false,
            guid: None,
            fs,
            filters: Vec::new(),
        }],
        remote: Remote::default(),
        filters: Vec::new(),
    }
}

fn fixed_or_auto(size: Option<Size>) -> PartSize {
    size.map_or(PartSize::Auto, |s| PartSize::Fixed(s.0))
}

fn one_dir(dir: &Path) -> Sources {
    vec![(dir.to_path_buf(), PathBuf::from("/"))]
}

/// The spec a subcommand describes; `None` for those that make no single disk (`tmpdisk`,
/// `pack`, `inspect`).
pub fn from_source(src: &Source) -> Result<Option<Job<'_>>> {
    let job = |spec, what, export, write| Job {
        spec,
        what,
        export,
        write,
        report: None,
    };
    Ok(Some(match src {
        Source::File { path, rw, export } => job(
            whole(
                "file",
                "linux-generic",
                Content::File {
                    path: path.clone(),
                    writable: *rw && !export.readonly,
                },
                PartSize::Auto,
                FsOptions::default(),
            ),
            format!("file {}", path.display()),
            export,
            None,
        ),
        // `--rw` changes nothing: memory disks are always writable.
        Source::Memory { size, export, .. } => job(
            whole(
                "memory",
                "linux-generic",
                Content::Memory,
                PartSize::Fixed(size.0),
                FsOptions::default(),
            ),
            format!("memory {}", Size(size.0)),
            export,
            None,
        ),
        Source::Zero { size, export } => job(
            whole(
                "zero",
                "linux-generic",
                Content::Empty,
                PartSize::Fixed(size.0),
                FsOptions::default(),
            ),
            format!("zero {size}"),
            export,
            None,
        ),
        Source::Pattern { size, export } => job(
            whole(
                "pattern",
                "linux-generic",
                Content::Pattern,
                PartSize::Fixed(size.0),
                FsOptions::default(),
            ),
            format!("pattern {size}"),
            export,
            None,
        ),
        Source::Floppy {
            dir,
            fat: a,
            export,
        } => {
            if a.partition.as_deref() == Some("mbr") && a.floppy.is_some() {
                bail!("--floppy images have no partition table; leave out --partition mbr");
            }
            let fs = FsOptions {
                fs_label: a.label.clone(),
                fat: a.fat,
                serial: a.serial,
                strict_names: a.strict_names,
                max_open_files: Some(a.max_open_files),
                whole_disk: WholeDisk {
                    floppy: a.floppy,
                    // An MBR unless --partition none or a floppy.
                    fat_mbr: a.floppy.is_none() && a.partition.as_deref() != Some("none"),
                    ..WholeDisk::default()
                },
                ..FsOptions::default()
            };
            job(
                whole(
                    "fat",
                    "basic-data",
                    Content::Fat(one_dir(dir)),
                    fixed_or_auto(a.size),
                    fs,
                ),
                format!("FAT disk of {}", dir.display()),
                export,
                Some(&a.write),
            )
        }
        Source::Ext4 {
            dir,
            ext4: a,
            export,
        } => {
            let fs = FsOptions {
                fs_label: a.label.clone(),
                uuid: a.uuid,
                owner: Some(a.owner),
                no_xattrs: a.no_xattrs,
                max_open_files: Some(a.max_open_files),
                ..FsOptions::default()
            };
            job(
                whole(
                    "ext4",
                    "linux-generic",
                    Content::Ext4(one_dir(dir)),
                    fixed_or_auto(a.size),
                    fs,
                ),
                format!("ext4 filesystem of {}", dir.display()),
                export,
                Some(&a.write),
            )
        }
        Source::Iso {
            dir,
            iso: a,
            export,
        } => {
            let volume_id = match &a.volid {
                Some(v) => v.clone(),
                None => {
                    let name = std::fs::canonicalize(dir)
                        .ok()
                        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .unwrap_or_default();
                    formats::iso::volume_id_from_name(&name)
                }
            };
            let fs = FsOptions {
                fs_label: Some(volume_id),
                no_rock_ridge: a.no_rock_ridge,
                no_joliet: a.no_joliet,
                boot: a.boot.clone(),
                boot_load_size: Some(a.boot_load_size),
                no_boot_info_table: a.no_boot_info_table,
                efi_boot: a.efi_boot.clone(),
                efi_boot_dir: a.efi_boot_dir.clone(),
                max_open_files: Some(a.max_open_files),
                whole_disk: WholeDisk {
                    hybrid: a.hybrid,
                    hybrid_mbr: a.hybrid_mbr.clone(),
                    ..WholeDisk::default()
                },
                ..FsOptions::default()
            };
            job(
                whole(
                    "iso",
                    "basic-data",
                    Content::Iso(one_dir(dir)),
                    PartSize::Auto,
                    fs,
                ),
                format!("ISO 9660 image of {}", dir.display()),
                export,
                Some(&a.write),
            )
        }
        Source::Http { url, http, export } => {
            let mut spec = whole(
                "http",
                "linux-generic",
                Content::Http(url.clone()),
                PartSize::Auto,
                FsOptions::default(),
            );
            spec.remote.http = http.clone();
            job(spec, url.clone(), export, None)
        }
        Source::Xz {
            source,
            xz,
            http,
            export,
        } => {
            let mut spec = whole(
                "xz",
                "linux-generic",
                Content::Xz(source.clone()),
                PartSize::Auto,
                FsOptions::default(),
            );
            spec.remote = Remote {
                http: http.clone(),
                xz: xz.clone(),
                qcow2: Default::default(),
            };
            job(spec, format!("xz view of {source}"), export, None)
        }
        Source::Qcow2 {
            source,
            backing,
            qcow2,
            http,
            export,
        } => {
            let mut spec = whole(
                "qcow2",
                "linux-generic",
                Content::Qcow2 {
                    source: source.clone(),
                    backing: backing.clone(),
                },
                PartSize::Auto,
                FsOptions::default(),
            );
            spec.remote.http = http.clone();
            spec.remote.qcow2 = qcow2.clone();
            job(spec, format!("qcow2 view of {source}"), export, None)
        }
        Source::Image {
            source,
            backing,
            max_l1,
            xz,
            http,
            export,
        } => {
            let mut spec = whole(
                "image",
                "linux-generic",
                Content::Image {
                    source: source.clone(),
                    backing: backing.clone(),
                },
                PartSize::Auto,
                FsOptions::default(),
            );
            spec.remote.http = http.clone();
            spec.remote.xz = xz.clone();
            spec.remote.qcow2 = crate::args::Qcow2Args {
                cache_size: xz.cache_size,
                max_l1: *max_l1,
            };
            job(spec, format!("image {source}"), export, None)
        }
        Source::Build {
            spec,
            build: b,
            export,
        } => {
            let (s, what) = match spec {
                Some(path) => (from_file(path)?, format!("disk of {}", path.display())),
                None => {
                    if b.parts.is_empty() {
                        bail!("give a spec file (disksynth build disk.toml) or --part flags");
                    }
                    let s = from_flags(
                        b.table.as_deref().unwrap_or("gpt"),
                        b.disk_size.map(|s| s.0),
                        b.seed.clone(),
                        b.sector_size.unwrap_or(512),
                        b.align.map_or(DEFAULT_ALIGN, |a| a.0),
                        &b.parts,
                    )?;
                    (s, "disk of --part flags".to_string())
                }
            };
            Job {
                spec: s,
                what,
                export,
                write: Some(&b.write),
                report: b.json.as_deref(),
            }
        }
        Source::Tmpdisk { .. }
        | Source::Pack { .. }
        | Source::Inspect { .. }
        | Source::Serve { .. } => return Ok(None),
    }))
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
    fn qcow2_partitions_take_a_backing_chain() {
        let text = r#"
[[partition]]
label = "root"
type = "root-x86-64"
qcow2 = "top.qcow2"
backing = ["mid.qcow2", "https://host/base.qcow2"]

[[partition]]
label = "data"
type = "linux-generic"
qcow2 = "https://host/d.qcow2"
"#;
        let s = from_toml(text, Path::new("/specs")).unwrap();
        assert_eq!(
            s.partitions[0].content,
            Content::Qcow2 {
                source: "/specs/top.qcow2".into(),
                backing: vec!["/specs/mid.qcow2".into(), "https://host/base.qcow2".into()],
            }
        );
        assert_eq!(
            s.partitions[1].content,
            Content::Qcow2 {
                source: "https://host/d.qcow2".into(),
                backing: vec![],
            }
        );
        let s = from_toml(
            "[[partition]]\nlabel = \"i\"\ntype = \"linux-generic\"\nimage = \"d.qcow2.xz\"\nbacking = \"s3://b/base\"\n",
            Path::new("/specs"),
        )
        .unwrap();
        assert_eq!(
            s.partitions[0].content,
            Content::Image {
                source: "/specs/d.qcow2.xz".into(),
                backing: vec!["s3://b/base".into()],
            }
        );
        for bad in [
            "[[partition]]\nlabel = \"x\"\ntype = \"linux-generic\"\nimage = \"i\"\nqcow2 = \"q\"\n",
            "[[partition]]\nlabel = \"x\"\ntype = \"linux-generic\"\nimage = \"i\"\nxz = \"q\"\n",
            "[[partition]]\nlabel = \"x\"\ntype = \"linux-generic\"\nbacking = \"b.qcow2\"\nraw = \"r\"\n",
            "[[partition]]\nlabel = \"x\"\ntype = \"linux-generic\"\nqcow2 = \"q\"\nfs = \"ext4\"\n",
        ] {
            assert!(from_toml(bad, Path::new("/")).is_err(), "{bad}");
        }
    }

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
        assert_eq!(s.partitions[1].fs.owner, Some(formats::ext4::Owner::Root));
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

    #[test]
    fn whole_disk_keys_parse_typed_and_need_table_none() {
        let text = "[disk]\ntable = \"none\"\n[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"fat\"\nsource=\"d\"\nfloppy=\"2.88M\"\nserial=\"1234-abcd\"\nfat=12\nmax_open_files=7\n";
        let s = from_toml(text, Path::new("/specs")).unwrap();
        let fs = &s.partitions[0].fs;
        assert_eq!(
            fs.whole_disk.floppy,
            Some(formats::fat::FloppyFormat::F2880)
        );
        assert_eq!(fs.serial, Some(0x1234_ABCD));
        assert_eq!(fs.fat, Some(formats::fat::FatType::Fat12));
        assert_eq!(fs.max_open_files, Some(7));
        let iso = "[disk]\ntable = \"none\"\n[[partition]]\nlabel=\"a\"\ntype=\"esp\"\nfs=\"iso\"\nsource=\"d\"\nefi_boot_dir=\"esp\"\nhybrid_mbr=\"/usr/lib/ISOLINUX/isohdpfx.bin\"\n";
        let s = from_toml(iso, Path::new("/specs")).unwrap();
        let fs = &s.partitions[0].fs;
        assert_eq!(fs.efi_boot_dir.as_deref(), Some(Path::new("/specs/esp")));
        assert_eq!(
            fs.whole_disk.hybrid_mbr.as_deref(),
            Some(Path::new("/usr/lib/ISOLINUX/isohdpfx.bin"))
        );
        let in_gpt = text.replace("table = \"none\"", "table = \"gpt\"");
        let e = format!("{:#}", from_toml(&in_gpt, Path::new(".")).unwrap_err());
        assert!(e.contains("table = \"none\""), "{e}");
        let both = iso.replace("efi_boot_dir", "efi_boot=\"x\"\nefi_boot_dir");
        let e = format!("{:#}", from_toml(&both, Path::new(".")).unwrap_err());
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn serials_and_uuids_are_checked() {
        assert_eq!(parse_serial("0x1234abcd"), Ok(0x1234_ABCD));
        assert_eq!(parse_serial("1234-ABCD"), Ok(0x1234_ABCD));
        assert!(parse_serial("123456789").is_err());
        assert!(parse_serial("").is_err());
        assert!(parse_serial("xyz").is_err());
        assert!(parse_uuid("0b9f4f8e-35d5-4d63-9c3e-5a1d2f7e8a10").is_ok());
        assert!(parse_uuid("0b9f4f8e").is_err());
        assert!(parse_uuid("0b9f4f8e-35d5-4d63-9c3e-5a1d2f7e8aZZ").is_err());
    }
}
