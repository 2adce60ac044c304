//! From declarations to a sealed layout and a region map.
//!
//! ```text
//!  engine emission:  data(offset, bytes) ... zeros(offset, len) ...   (every non-file byte, ascending)
//!  recorded as:      [Bytes: sb+GDT][Zero][Bytes: bitmaps, used itable][Zero: unused itable] ...
//!  file extents:     Layout::extents(file) = [(image offset, bytes)] -> [Host file @ file offset][Zero to block end]
//!  region map:       all of the above, sorted; they must tile [0, size) exactly
//! ```
//! The engine never sees file contents: it only needs sizes (and the data
//! ranges of sparse files) to place everything, and the checksums cover
//! metadata only (ext4 wiki, "Checksums"), so nothing depends on the data.

use std::sync::Arc;

use bytes::Bytes;
use mkext4::{FsBuilder, InodeCount, InodeHandle, Layout, RegionSink, SparseSeg, ROOT};
use synth::{Backing, BlockDev, FilePool, HostFile, RegionMap, RegionMapBuilder};
use tree::Tree;

use super::layout::{self, BLOCK, MAX_BLOCKS};
use super::plan::{self, Plan, What};
use super::{Ext4Error, Ext4Options};

/// A built ext4 image.
#[derive(Debug)]
pub struct Ext4Image {
    /// The image, ready to serve or write.
    pub map: RegionMap,
    /// Its size in bytes.
    pub size: u64,
    /// The filesystem UUID.
    pub uuid: [u8; 16],
    /// Inodes in use, the reserved ones (1..=11) included.
    pub used_inodes: u64,
    /// Inodes the filesystem has.
    pub inodes: u64,
    /// Files declared with holes.
    pub sparse_files: usize,
    /// The pool the image's host files are read through.
    pub pool: Arc<FilePool>,
}

/// Build the ext4 image of `tree` (scanned without following symlinks).
pub fn build(tree: &Tree, opts: &Ext4Options) -> Result<Ext4Image, Ext4Error> {
    let t0 = std::time::Instant::now();
    let plan = Plan::new(tree)?;
    let t1 = std::time::Instant::now();
    let sealed = seal(tree, &plan, opts)?;
    let t2 = std::time::Instant::now();
    let pool = FilePool::new(opts.max_open_files);
    let map = region_map(&plan, &sealed, &pool)?;
    // The engine rounds the inode count up to whole inode-table blocks per
    // group; the superblock's s_inodes_count (offset 0) says what it chose.
    let mut raw = [0u8; 4];
    map.read_at(&mut raw, 1024)?;
    let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1000.0;
    log::debug!(
        "ext4: planned in {:.1} ms, declared and sealed in {:.1} ms, mapped in {:.1} ms",
        ms(t0, t1),
        ms(t1, t2),
        ms(t2, std::time::Instant::now())
    );
    Ok(Ext4Image {
        size: map.size(),
        map,
        uuid: sealed.uuid,
        used_inodes: plan.content.inodes,
        inodes: u64::from(u32::from_le_bytes(raw)),
        sparse_files: plan.sparse_files,
        pool,
    })
}

/// A sealed layout and the engine's handle of every plan entry.
pub(super) struct Sealed {
    pub layout: Layout,
    pub handles: Vec<InodeHandle>,
    pub uuid: [u8; 16],
}

/// Seal the plan at the asked size, or the automatic one. The size
/// estimate is checked by the engine; when it was short, grow by an eighth
/// until the engine agrees (and, for an asked size, report what fits).
pub(super) fn seal(tree: &Tree, plan: &Plan, opts: &Ext4Options) -> Result<Sealed, Ext4Error> {
    if let Some(l) = &opts.label {
        if l.len() > 16 {
            return Err(Ext4Error::Label(l.clone()));
        }
    }
    let c = plan.content;
    let too_big = |size| Ext4Error::BadSize {
        size,
        reason: "more than the 16 TiB an ext4 without the 64bit feature holds",
    };
    let needed = layout::min_blocks(c, 0).ok_or_else(|| too_big(c.blocks.saturating_mul(BLOCK)))?;
    let asked = opts.size;
    let mut blocks = match asked {
        Some(size) if size % BLOCK != 0 => {
            return Err(Ext4Error::BadSize {
                size,
                reason: "not a multiple of 4 KiB (the block size)",
            })
        }
        Some(size) if size / BLOCK > MAX_BLOCKS => return Err(too_big(size)),
        Some(size) if size / BLOCK < needed => {
            return Err(Ext4Error::TooSmall {
                size,
                needed: needed * BLOCK,
            })
        }
        Some(size) => size / BLOCK,
        None => layout::min_blocks(c, layout::slack(c))
            .ok_or_else(|| too_big(c.blocks.saturating_mul(BLOCK)))?,
    };
    let epoch = plan::epoch(tree, opts);
    loop {
        match try_seal(tree, plan, opts, epoch, blocks)? {
            Some(sealed) => {
                return match asked {
                    Some(size) if size != blocks * BLOCK => Err(Ext4Error::TooSmall {
                        size,
                        needed: blocks * BLOCK,
                    }),
                    _ => Ok(sealed),
                }
            }
            None => {
                log::debug!("ext4: {blocks} blocks are too few for this tree; trying more");
                blocks = (blocks + blocks / 8).next_multiple_of(256);
                if blocks > MAX_BLOCKS {
                    return Err(too_big(blocks * BLOCK));
                }
            }
        }
    }
}

/// Declare the plan in a filesystem of `blocks` and seal it; `None` when
/// the engine finds the filesystem too small.
fn try_seal(
    tree: &Tree,
    plan: &Plan,
    opts: &Ext4Options,
    epoch: i64,
    blocks: u64,
) -> Result<Option<Sealed>, Ext4Error> {
    let uuid = opts
        .uuid
        .unwrap_or_else(|| plan::derive_uuid(tree, opts, blocks * BLOCK, epoch));
    let inodes = layout::inodes_for(blocks, plan.content.inodes);
    let mut o = mkext4::Options::new(blocks * BLOCK, uuid, epoch);
    o.label = opts.label.clone();
    o.inodes = InodeCount::Exact(inodes as u32);
    let mut b = FsBuilder::new(o).map_err(Ext4Error::Engine)?;
    b.set_meta(ROOT, plan::meta(&tree.root, opts))
        .map_err(Ext4Error::Engine)?;
    for (name, value) in &plan.root_xattrs {
        b.set_xattr_bytes(ROOT, name, value)
            .map_err(|source| Ext4Error::Declare {
                path: tree.root.path.clone(),
                source,
            })?;
    }
    let mut handles: Vec<InodeHandle> = Vec::with_capacity(plan.entries.len());
    for e in &plan.entries {
        let parent = e.parent.map_or(ROOT, |p| handles[p]);
        let m = plan::meta(e.node, opts);
        let size = e.node.meta.size;
        let h = match &e.what {
            What::Dir => b.mkdir_bytes(parent, e.name, m),
            What::File { data: None } => b.file_bytes(parent, e.name, m, size),
            What::File { data: Some(r) } => {
                b.file_sparse_bytes(parent, e.name, m, &segments(r, size))
            }
            What::Link { first } => b
                .hardlink_bytes(parent, e.name, handles[*first])
                .map(|()| handles[*first]),
            What::Symlink { target } => b.symlink_bytes(parent, e.name, target, m),
            What::Special(kind) => b.mknod_bytes(parent, e.name, m, *kind),
        }
        .and_then(|h| {
            // Names and values were checked by `xattr::of`; the engine
            // sorts them on disk, so this order does not matter.
            for (name, value) in &e.xattrs {
                b.set_xattr_bytes(h, name, value)?;
            }
            Ok(h)
        })
        .map_err(|source| Ext4Error::Declare {
            path: e.node.path.clone(),
            source,
        })?;
        handles.push(h);
    }
    match b.seal() {
        Ok(layout) => Ok(Some(Sealed {
            layout,
            handles,
            uuid,
        })),
        Err(e) if too_small(&e) => Ok(None),
        Err(e) => Err(Ext4Error::Engine(e)),
    }
}

/// Whether the engine refused to seal because the filesystem is too small
/// (mkext4 0.0.3 says so only in its messages).
fn too_small(e: &mkext4::Error) -> bool {
    let msg = match e {
        mkext4::Error::Invalid(m) | mkext4::Error::Unsupported(m) => m,
        _ => return false,
    };
    [
        "too small",
        "full",
        "inodes needed",
        "inode table",
        "journal larger",
    ]
    .iter()
    .any(|s| msg.contains(s))
}

/// A sparse file's segments for the engine: `ranges` are the data, the
/// gaps holes.
fn segments(ranges: &[(u64, u64)], size: u64) -> Vec<SparseSeg> {
    let mut segs = Vec::with_capacity(2 * ranges.len() + 1);
    let mut pos = 0;
    for &(off, len) in ranges {
        if off > pos {
            segs.push(SparseSeg::Hole(off - pos));
        }
        segs.push(SparseSeg::Data(len));
        pos = off + len;
    }
    if pos < size {
        segs.push(SparseSeg::Hole(size - pos));
    }
    segs
}

/// A recorded piece of the image.
struct Piece {
    start: u64,
    len: u64,
    what: PieceKind,
}

enum PieceKind {
    Bytes(Vec<u8>),
    Zero,
    Host { file: Arc<HostFile>, offset: u64 },
}

/// Records the engine's metadata emission as pieces, merging neighbours.
#[derive(Default)]
struct Recorder {
    pieces: Vec<Piece>,
}

impl RegionSink for Recorder {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(Piece {
            start,
            len,
            what: PieceKind::Bytes(buf),
        }) = self.pieces.last_mut()
        {
            if *start + *len == offset {
                buf.extend_from_slice(bytes);
                *len += bytes.len() as u64;
                return Ok(());
            }
        }
        self.pieces.push(Piece {
            start: offset,
            len: bytes.len() as u64,
            what: PieceKind::Bytes(bytes.to_vec()),
        });
        Ok(())
    }

    fn zeros(&mut self, offset: u64, n: u64) -> std::io::Result<()> {
        if let Some(Piece {
            start,
            len,
            what: PieceKind::Zero,
        }) = self.pieces.last_mut()
        {
            if *start + *len == offset {
                *len += n;
                return Ok(());
            }
        }
        self.pieces.push(Piece {
            start: offset,
            len: n,
            what: PieceKind::Zero,
        });
        Ok(())
    }
}

/// The region map of a sealed plan: the engine's metadata emission plus
/// every file's extents mapped onto its host file.
fn region_map(plan: &Plan, sealed: &Sealed, pool: &Arc<FilePool>) -> Result<RegionMap, Ext4Error> {
    let mut rec = Recorder::default();
    // Creating the writer emits all metadata; the data is never filled.
    drop(sealed.layout.writer(&mut rec).map_err(Ext4Error::Engine)?);
    let mut pieces = rec.pieces;
    for (i, e) in plan.entries.iter().enumerate() {
        let What::File { data } = &e.what else {
            continue;
        };
        let extents = sealed.layout.extents(sealed.handles[i]);
        if extents.is_empty() {
            continue;
        }
        let m = &e.node.meta;
        let host = crate::sparse::host_file(pool, e.node);
        let dense = [(0, m.size)];
        let ranges = data.as_deref().unwrap_or(&dense);
        map_file(&mut pieces, &host, ranges, &extents)
            .map_err(|why| Ext4Error::Internal(format!("{}: {why}", e.node.path.display())))?;
    }
    pieces.sort_unstable_by_key(|p| p.start);
    // Names for the metadata runs, read back from their bytes.
    let spans = super::names::spans(&Recorded(&pieces));
    let mut cursor = 0usize;
    let mut b = RegionMapBuilder::new();
    // Zeros waiting to be pushed, so neighbouring zero pieces (a file's
    // last-block tail and the free space after it) become one hole.
    let mut zeros = 0u64;
    for p in pieces {
        if let PieceKind::Zero = p.what {
            if p.start == b.position() + zeros {
                zeros += p.len;
                continue;
            }
        }
        b.push("free or zero", zeros, Backing::Zero)?;
        zeros = 0;
        if p.start != b.position() {
            return Err(Ext4Error::Internal(format!(
                "the engine's regions do not tile the image at {} (next region at {})",
                b.position(),
                p.start
            )));
        }
        match p.what {
            PieceKind::Bytes(mut v) => {
                v.shrink_to_fit();
                push_named(&mut b, Bytes::from(v), p.start, &spans, &mut cursor)?;
            }
            PieceKind::Zero => {
                b.push("free or zero", p.len, Backing::Zero)?;
            }
            PieceKind::Host { file, offset } => {
                b.push("file data", p.len, Backing::Host { file, offset })?;
            }
        }
    }
    b.push("free or zero", zeros, Backing::Zero)?;
    let size = sealed.layout.image_len();
    if b.position() != size {
        return Err(Ext4Error::Internal(format!(
            "the engine's regions end at {}, not at the image size {size}",
            b.position()
        )));
    }
    Ok(b.finish())
}

/// The recorded pieces, sorted, as the bytes names are read from.
struct Recorded<'a>(&'a [Piece]);

impl super::names::Bytes for Recorded<'_> {
    fn at(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let i = self.0.partition_point(|p| p.start + p.len <= offset);
        let p = self.0.get(i)?;
        let PieceKind::Bytes(v) = &p.what else {
            return None;
        };
        let from = usize::try_from(offset.checked_sub(p.start)?).ok()?;
        v.get(from..from.checked_add(usize::try_from(len).ok()?)?)
    }
}

/// Push a run of metadata at `start`, split where the named `spans` (sorted,
/// `cursor` the first that may still matter) begin and end; what no span
/// covers is "ext4 metadata". The bytes are the same, only named.
fn push_named(
    b: &mut RegionMapBuilder,
    bytes: Bytes,
    start: u64,
    spans: &[super::names::Span],
    cursor: &mut usize,
) -> synth::Result<()> {
    let end = start + bytes.len() as u64;
    let mut pos = start;
    while pos < end {
        while spans.get(*cursor).is_some_and(|s| s.1 <= pos) {
            *cursor += 1;
        }
        let (upto, name) = match spans.get(*cursor) {
            Some((s, e, name)) if *s <= pos => ((*e).min(end), name.as_str()),
            Some((s, _, _)) => ((*s).min(end), "ext4 metadata"),
            None => (end, "ext4 metadata"),
        };
        let piece = bytes.slice((pos - start) as usize..(upto - start) as usize);
        b.push_bytes(name, piece)?;
        pos = upto;
    }
    Ok(())
}

/// Add the pieces of one file: each extent `(image offset, bytes)` takes
/// the next `bytes` of the file's data `ranges`, in order; a partial last
/// block is zero-padded.
fn map_file(
    pieces: &mut Vec<Piece>,
    host: &Arc<HostFile>,
    ranges: &[(u64, u64)],
    extents: &[(u64, u64)],
) -> Result<(), String> {
    let mut ranges = ranges.iter().copied().filter(|r| r.1 > 0);
    let mut cur = ranges.next();
    let mut used = 0u64;
    for &(img, len) in extents {
        let Some((off, rlen)) = cur else {
            return Err("the engine placed more data than the file has".into());
        };
        if used + len > rlen {
            return Err("an extent spans two data ranges".into());
        }
        pieces.push(Piece {
            start: img,
            len,
            what: PieceKind::Host {
                file: host.clone(),
                offset: off + used,
            },
        });
        let tail = len.next_multiple_of(BLOCK) - len;
        if tail > 0 {
            pieces.push(Piece {
                start: img + len,
                len: tail,
                what: PieceKind::Zero,
            });
        }
        used += len;
        if used == rlen {
            cur = ranges.next();
            used = 0;
        }
    }
    if cur.is_some() {
        return Err("the engine placed less data than the file has".into());
    }
    Ok(())
}

/// What a content needs, for tests.
#[cfg(test)]
pub(super) fn content_of(tree: &Tree) -> layout::Content {
    Plan::new(tree).unwrap().content
}
