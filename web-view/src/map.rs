//! The disk's map as the view shows it: every named piece of the disk
//! ([`synth::BlockDev::describe`], taken once at start: a generated disk's
//! layout never changes), and the cells of the picture, each a fixed run of
//! bytes coloured by what holds most of it.

use std::path::Path;
use std::sync::Arc;

use synth::{BlockDev, Holds, Named};

/// Most cells of the picture: enough to see a file's extent on a 1280-pixel
/// page, few enough that one update of all of them is a few kilobytes.
pub const MAX_CELLS: usize = 2048;

/// Smallest cell: one 4 KiB block (a floppy has fewer cells than the most).
const MIN_CELL: u64 = 4096;

/// Most pieces kept: the map of a disk is in memory already (its region
/// map), this copy of its names is bounded anyway, and what is past the
/// limit is one unknown piece.
const MAX_PIECES: usize = 4_000_000;

/// What a piece holds, as the page colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A host file's bytes.
    File,
    /// Something the generator made (boot sector, FAT, inode table, …).
    Meta,
    /// Zeros nothing lives in.
    Free,
    /// The device does not say.
    Unknown,
}

impl Kind {
    /// Its name in the JSON (`"kind"`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Meta => "meta",
            Kind::Free => "free",
            Kind::Unknown => "unknown",
        }
    }
}

/// One named piece of the disk.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Where it starts on the disk.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// What it holds.
    pub kind: Kind,
    /// The host file's path, or the structure's name.
    pub name: Arc<str>,
    /// For a file: the offset in it of the piece's first byte.
    pub file_offset: u64,
    /// The component (partition) it lies in.
    pub within: Option<Arc<str>>,
}

impl Piece {
    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The pieces of a disk, in order and contiguous, and its cells.
#[derive(Debug)]
pub struct DiskMap {
    size: u64,
    pieces: Vec<Piece>,
    cell: u64,
    cells: Vec<Cell>,
}

/// One cell of the picture.
#[derive(Debug, Clone)]
pub struct Cell {
    /// What holds most of its bytes.
    pub kind: Kind,
    /// The index of the piece holding the most of its bytes.
    pub main: usize,
}

fn path_name(p: &Path) -> Arc<str> {
    p.to_string_lossy().as_ref().into()
}

impl DiskMap {
    /// The map of `dev`. A device that cannot say (an error) is one
    /// unknown piece: the view still shows its traffic.
    pub fn of(dev: &dyn BlockDev) -> DiskMap {
        let size = dev.size();
        let mut named = Vec::new();
        if let Err(e) = dev.describe(0, size, &mut named) {
            log::warn!("web view: the disk cannot say what it holds ({e}); showing traffic only");
            named.clear();
        }
        Self::from_named(size, &named)
    }

    /// The map of a `size`-byte disk from what it says it holds: adjacent
    /// pieces of one thing merged (a file's extents, a run of padding),
    /// gaps (a device that said too little) filled as unknown.
    pub fn from_named(size: u64, named: &[Named]) -> DiskMap {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut pos = 0u64;
        let unknown: Arc<str> = "unknown".into();
        let push = |pieces: &mut Vec<Piece>, p: Piece| {
            if let Some(last) = pieces.last_mut() {
                let same = last.kind == p.kind
                    && last.name == p.name
                    && last.within == p.within
                    && (p.kind != Kind::File || last.file_offset + last.len == p.file_offset);
                if same {
                    last.len += p.len;
                    return;
                }
            }
            pieces.push(p);
        };
        for n in named {
            if pieces.len() >= MAX_PIECES {
                break;
            }
            // Only what is past what is mapped already, clipped to the disk.
            let end = n.offset.saturating_add(n.len).min(size);
            if end <= pos {
                continue;
            }
            if n.offset > pos {
                let gap = Piece {
                    offset: pos,
                    len: n.offset.min(size) - pos,
                    kind: Kind::Unknown,
                    name: unknown.clone(),
                    file_offset: 0,
                    within: None,
                };
                pos += gap.len;
                push(&mut pieces, gap);
                if pos >= end {
                    continue;
                }
            }
            let skip = pos - n.offset.min(pos);
            let (kind, name, file_offset) = match &n.holds {
                Holds::File { path, offset } => (Kind::File, path_name(path), offset + skip),
                Holds::Structure(s) => (Kind::Meta, s.clone(), 0),
                Holds::Free(s) => (Kind::Free, s.clone(), 0),
                Holds::Unknown => (Kind::Unknown, unknown.clone(), 0),
            };
            push(
                &mut pieces,
                Piece {
                    offset: pos,
                    len: end - pos,
                    kind,
                    name,
                    file_offset,
                    within: n.within.clone(),
                },
            );
            pos = end;
        }
        if pos < size {
            push(
                &mut pieces,
                Piece {
                    offset: pos,
                    len: size - pos,
                    kind: Kind::Unknown,
                    name: unknown,
                    file_offset: 0,
                    within: None,
                },
            );
        }
        let cell = size
            .div_ceil(MAX_CELLS as u64)
            .max(MIN_CELL)
            .next_power_of_two();
        let count = size.div_ceil(cell) as usize;
        let mut map = DiskMap {
            size,
            pieces,
            cell,
            cells: Vec::with_capacity(count),
        };
        map.cells = (0..count).map(|c| map.cell_of(c)).collect();
        map
    }

    /// What holds most of cell `c`'s bytes (files before structures before
    /// free space at a tie: the picture shows where data lives).
    fn cell_of(&self, c: usize) -> Cell {
        let start = c as u64 * self.cell;
        let end = (start + self.cell).min(self.size);
        let mut best = (0u64, Kind::Unknown, 0usize);
        let mut by_kind = [0u64; 4];
        for (i, p) in self.overlapping(start, end - start) {
            let n = p.end().min(end) - p.offset.max(start);
            let k = p.kind as usize;
            by_kind[k] += n;
            if n > best.0 {
                best = (n, p.kind, i);
            }
        }
        let order = [Kind::File, Kind::Meta, Kind::Free, Kind::Unknown];
        let most = order
            .iter()
            .map(|k| by_kind[*k as usize])
            .max()
            .unwrap_or(0);
        let kind = order
            .into_iter()
            .find(|k| most > 0 && by_kind[*k as usize] == most)
            .unwrap_or(Kind::Unknown);
        Cell { kind, main: best.2 }
    }

    /// The disk's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes per cell (a power of two).
    pub fn cell_size(&self) -> u64 {
        self.cell
    }

    /// The cells, in disk order.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Index of the first piece ending after `offset`.
    pub fn first_at(&self, offset: u64) -> usize {
        self.pieces.partition_point(|p| p.end() <= offset)
    }

    /// The pieces overlapping `len` bytes at `offset`, with their indexes.
    pub fn overlapping(&self, offset: u64, len: u64) -> impl Iterator<Item = (usize, &Piece)> {
        let end = offset.saturating_add(len);
        let first = self.first_at(offset);
        self.pieces[first..]
            .iter()
            .enumerate()
            .take_while(move |(_, p)| p.offset < end)
            .map(move |(i, p)| (first + i, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synth::{Backing, RegionMapBuilder};

    fn named(offset: u64, len: u64, holds: Holds) -> Named {
        Named {
            offset,
            len,
            holds,
            within: None,
        }
    }

    #[test]
    fn file_extents_merge_and_gaps_are_unknown() {
        let f = |o| Holds::File {
            path: Path::new("/srv/a").into(),
            offset: o,
        };
        let pieces = [
            named(0, 512, Holds::Structure("boot sector".into())),
            named(1024, 100, f(0)),
            named(1124, 100, f(100)),
            // Not contiguous in the file: a piece of its own.
            named(1224, 100, f(1000)),
            // Overlapping what is mapped (a device that says too much).
            named(1300, 100, Holds::Free("padding".into())),
        ];
        let m = DiskMap::from_named(2000, &pieces);
        let got: Vec<(u64, u64, Kind, u64)> = m
            .pieces()
            .iter()
            .map(|p| (p.offset, p.len, p.kind, p.file_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 512, Kind::Meta, 0),
                (512, 512, Kind::Unknown, 0),
                (1024, 200, Kind::File, 0),
                (1224, 100, Kind::File, 1000),
                (1324, 76, Kind::Free, 0),
                (1400, 600, Kind::Unknown, 0),
            ]
        );
        let found: Vec<usize> = m.overlapping(1100, 200).map(|(i, _)| i).collect();
        assert_eq!(found, vec![2, 3]);
    }

    #[test]
    fn cells_cover_the_disk_and_name_what_holds_most() {
        let mut b = RegionMapBuilder::new();
        b.push_bytes("superblock", vec![1u8; 4096]).unwrap();
        b.push("free blocks", 3 * 4096, Backing::Zero).unwrap();
        let m = DiskMap::of(&b.finish());
        assert_eq!(m.cell_size(), 4096);
        assert_eq!(m.cells().len(), 4);
        assert_eq!(m.cells()[0].kind, Kind::Meta);
        assert!(m.cells()[1..].iter().all(|c| c.kind == Kind::Free));
        // A large disk: at most MAX_CELLS cells of a power-of-two size.
        let big = DiskMap::from_named(10 << 30, &[]);
        assert!(big.cells().len() <= MAX_CELLS);
        assert!(big.cell_size().is_power_of_two());
        assert_eq!(big.pieces().len(), 1);
        // An empty disk has no cells and no pieces.
        let empty = DiskMap::from_named(0, &[]);
        assert!(empty.cells().is_empty() && empty.pieces().is_empty());
    }
}
