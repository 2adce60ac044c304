//! From a tree to a plan: every directory's names and entry count, the
//! geometry, and which clusters each directory and file gets. No bytes.
//!
//! Allocation is contiguous and in a fixed order — the FAT32 root first,
//! then every other directory (pre-order), then every file (pre-order) — so
//! metadata sits together at the front, every file is one run of clusters
//! (one region, one `sendfile`), and the same tree gives the same image.

use std::path::Path;

use tree::{Node, NodeKind, Tree};

use super::layout::{self, Geometry, GeometryInput, SECTOR};
use super::names::{self, FatName};
use super::{FatError, FatOptions, FatType, FloppyFormat, Partitioning};

/// Largest FAT file: sizes are 32-bit (MS FAT spec §6, DIR_FileSize).
pub const MAX_FILE: u64 = 0xFFFF_FFFF;
/// Most 32-byte entries in one directory (MS FAT spec §6: 65536).
pub const MAX_DIR_ENTRIES: u64 = 65536;
/// Where the partition starts on an MBR disk: 1 MiB, as every modern
/// partitioner aligns.
pub const PARTITION_START: u64 = 1 << 20;

/// The children of `dir` that FAT can hold (a FAT scan follows links and
/// drops specials, so this is all of them; the filter keeps names and
/// [`DirPlan::children`] aligned whatever the tree holds).
fn fat_children(dir: &Node) -> impl Iterator<Item = &Node> {
    dir.children()
        .iter()
        .filter(|k| matches!(k.kind, NodeKind::Dir(_) | NodeKind::File))
}

/// A child of a directory in the plan.
#[derive(Debug, Clone, Copy)]
pub enum Child {
    /// Index into [`Plan::dirs`].
    Dir(usize),
    /// Index into [`Plan::files`].
    File(usize),
}

/// A directory in the plan.
#[derive(Debug)]
pub struct DirPlan<'a> {
    /// The host directory.
    pub node: &'a Node,
    /// Index of the parent (the root is its own parent).
    pub parent: usize,
    /// FAT names of the children, in order.
    pub names: Vec<FatName>,
    /// The children, in order.
    pub children: Vec<Child>,
    /// 32-byte entries needed (dot entries, label, LFN and short entries).
    pub entries: u64,
    /// First cluster (0 for a FAT12/16 root, which lives in its own area).
    pub cluster: u32,
    /// Clusters allocated.
    pub clusters: u32,
}

/// A file in the plan.
#[derive(Debug)]
pub struct FilePlan<'a> {
    /// The host file.
    pub node: &'a Node,
    /// First cluster (0 for an empty file, MS FAT spec §6.2).
    pub cluster: u32,
    /// Clusters allocated.
    pub clusters: u32,
}

/// The whole plan.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Directories in pre-order; `dirs[0]` is the root.
    pub dirs: Vec<DirPlan<'a>>,
    /// Files in pre-order.
    pub files: Vec<FilePlan<'a>>,
    /// The volume geometry.
    pub geometry: Geometry,
    /// Byte offset of the volume on the disk.
    pub volume_offset: u64,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// First cluster number not allocated (clusters 2..next_free are used).
    pub next_free: u32,
    /// Names with characters FAT cannot store, replaced by `_` (for warnings).
    pub replaced: Vec<std::path::PathBuf>,
    /// Host files FAT sees under the same name as an earlier one in their
    /// directory, renamed (for warnings).
    pub renamed: Vec<Renamed>,
}

/// A host name renamed because FAT sees it as the same name as an earlier
/// one in its directory (see [`names::Collisions`]).
#[derive(Debug)]
pub struct Renamed {
    /// The renamed host file or directory.
    pub path: std::path::PathBuf,
    /// The earlier name that kept its name.
    pub first: String,
    /// The long name it is stored under.
    pub stored: String,
}

impl<'a> Plan<'a> {
    /// Plan `tree` for `opts`.
    pub fn new(tree: &'a Tree, opts: &FatOptions) -> Result<Plan<'a>, FatError> {
        let mut plan = Plan {
            dirs: Vec::new(),
            files: Vec::new(),
            geometry: layout::compute(GeometryInput {
                fat_type: FatType::Fat12,
                sectors_per_cluster: 1,
                root_entries: 16,
                total_sectors: 64,
                align_sectors: 1,
            })
            .expect("a trivial geometry"),
            volume_offset: 0,
            disk_size: 0,
            next_free: 2,
            replaced: Vec::new(),
            renamed: Vec::new(),
        };
        plan.walk(&tree.root, 0);
        let collisions = if opts.strict_names {
            names::Collisions::Error
        } else {
            names::Collisions::Rename
        };
        plan.name_all(opts.label.is_some(), collisions)?;
        plan.choose_geometry(opts)?;
        plan.allocate();
        // A superfloppy built to sit in a partition of a larger disk
        // records where that partition starts.
        if opts.floppy.is_none() && opts.partition == Partitioning::None {
            if let Some(h) = opts.hidden_sectors {
                plan.geometry.hidden_sectors = h;
            }
        }
        Ok(plan)
    }

    /// Collect directories and files in pre-order (no names yet).
    fn walk(&mut self, node: &'a Node, parent: usize) -> usize {
        let idx = self.dirs.len();
        let kids = node.children();
        self.dirs.push(DirPlan {
            node,
            parent,
            names: Vec::new(),
            children: Vec::new(),
            entries: 0,
            cluster: 0,
            clusters: 0,
        });
        let mut children = Vec::with_capacity(kids.len());
        for k in kids {
            match &k.kind {
                NodeKind::Dir(_) => children.push(Child::Dir(self.walk(k, idx))),
                NodeKind::File => {
                    children.push(Child::File(self.files.len()));
                    self.files.push(FilePlan {
                        node: k,
                        cluster: 0,
                        clusters: 0,
                    });
                }
                // A FAT scan follows links and drops specials; anything
                // else here has no FAT representation.
                NodeKind::Symlink { .. } | NodeKind::Special => {}
            }
        }
        self.dirs[idx].children = children;
        idx
    }

    /// Give every directory's children their FAT names (in parallel: names
    /// are the bulk of layout time for big trees) and count entries.
    fn name_all(&mut self, label: bool, collisions: names::Collisions) -> Result<(), FatError> {
        let named = crate::par::par_map(&self.dirs, |_, d| -> Result<Vec<FatName>, FatError> {
            let mut host = Vec::with_capacity(d.children.len());
            for k in fat_children(d.node) {
                host.push(
                    k.name
                        .to_str()
                        .ok_or_else(|| FatError::NonUtf8(k.path.clone()))?,
                );
            }
            names::assign(&host, collisions).map_err(|source| FatError::Name {
                dir: d.node.path.clone(),
                source,
            })
        });
        for (i, names) in named.into_iter().enumerate() {
            let names = names?;
            let d = &mut self.dirs[i];
            debug_assert_eq!(names.len(), d.children.len());
            let mut entries: u64 = if i == 0 { u64::from(label) } else { 2 };
            for n in &names {
                entries += 1 + n.long.as_ref().map_or(0, |l| l.len().div_ceil(13)) as u64;
            }
            if entries > MAX_DIR_ENTRIES {
                return Err(FatError::DirTooLarge {
                    path: d.node.path.clone(),
                    entries,
                });
            }
            let kids: Vec<&Node> = fat_children(d.node).collect();
            for (k, n) in kids.iter().zip(&names) {
                if n.replaced {
                    self.replaced.push(k.path.clone());
                }
                if let Some(first) = n.collides_with {
                    let stored = match &n.long {
                        Some(l) => String::from_utf16_lossy(l),
                        None => names::short_display(&n.short),
                    };
                    self.renamed.push(Renamed {
                        path: k.path.clone(),
                        first: kids[first].name.to_string_lossy().into_owned(),
                        stored,
                    });
                }
            }
            d.names = names;
            d.entries = entries;
        }
        for f in &self.files {
            if f.node.meta.size > MAX_FILE {
                return Err(FatError::FileTooLarge {
                    path: f.node.path.clone(),
                    size: f.node.meta.size,
                });
            }
        }
        Ok(())
    }

    /// Data clusters needed with clusters of `cs` bytes (the FAT12/16 root
    /// lives outside the data area).
    fn clusters_needed(&self, cs: u64, fat32: bool) -> u64 {
        let files: u64 = self
            .files
            .iter()
            .map(|f| f.node.meta.size.div_ceil(cs))
            .sum();
        let dirs: u64 = self
            .dirs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 0 || fat32)
            .map(|(_, d)| (d.entries * 32).div_ceil(cs).max(1))
            .sum();
        files + dirs
    }

    /// Root entries for a FAT12/16 root area: at least 512, as mkfs does,
    /// rounded to whole sectors.
    fn root_entries(&self) -> u64 {
        self.dirs[0].entries.max(512).div_ceil(16) * 16
    }

    fn choose_geometry(&mut self, opts: &FatOptions) -> Result<(), FatError> {
        if let Some(f) = opts.floppy {
            return self.floppy_geometry(f, opts);
        }
        self.volume_offset = match opts.partition {
            Partitioning::Mbr => PARTITION_START,
            Partitioning::None => 0,
        };
        if let Some(size) = opts.size {
            if size % SECTOR != 0 {
                return Err(FatError::Impossible(format!(
                    "--size {size}: not a multiple of 512 bytes"
                )));
            }
            let vol = size.saturating_sub(self.volume_offset) / SECTOR;
            if let Some(g) = self
                .candidates(opts.fat_type, vol)
                .find_map(|c| self.fit(c, vol))
            {
                self.geometry = g;
                self.disk_size = size;
                return Ok(());
            }
            let needed = self.auto_size(opts.fat_type, false).map(|(s, _)| s);
            return Err(match needed {
                Some(n) if n > size => FatError::TooSmall {
                    what: format!("--size {size}"),
                    needed: n,
                },
                _ => FatError::Impossible(format!(
                    "no {} geometry fits a {size}-byte disk with this tree",
                    opts.fat_type.map_or("FAT".to_string(), |t| t.to_string())
                )),
            });
        }
        let (size, g) = self.auto_size(opts.fat_type, true).ok_or_else(|| {
            FatError::Impossible(format!(
                "this tree does not fit any {} volume",
                opts.fat_type.map_or("FAT".to_string(), |t| t.to_string())
            ))
        })?;
        self.geometry = g;
        self.disk_size = size;
        Ok(())
    }

    /// Cluster sizes (in sectors) to try for each type, preferred first:
    /// the Microsoft table's choices (FAT16 up to 8 KiB clusters, FAT32
    /// 4 KiB up to 8 GiB then doubling), then the unusual ones a forced
    /// type or an odd size may need. Clusters stay at most 32 KiB: the
    /// spec's limit, and larger ones break many readers.
    fn candidates(
        &self,
        forced: Option<FatType>,
        vol_sectors: u64,
    ) -> impl Iterator<Item = (FatType, u32)> {
        let fat32_first = match vol_sectors * SECTOR {
            v if v <= 8 << 30 => 8,
            v if v <= 16 << 30 => 16,
            v if v <= 32 << 30 => 32,
            _ => 64,
        };
        let mut list: Vec<(FatType, u32)> = Vec::new();
        list.extend([1, 2, 4, 8].map(|s| (FatType::Fat12, s)));
        list.extend([4, 8, 16].map(|s| (FatType::Fat16, s)));
        list.extend(
            [8, 16, 32, 64]
                .into_iter()
                .filter(|&s| s >= fat32_first)
                .map(|s| (FatType::Fat32, s)),
        );
        list.extend([16, 32, 64].map(|s| (FatType::Fat12, s)));
        list.extend([1, 2, 32, 64].map(|s| (FatType::Fat16, s)));
        list.extend(
            [1, 2, 4, 8, 16, 32, 64]
                .into_iter()
                .filter(|&s| s < fat32_first)
                .map(|s| (FatType::Fat32, s)),
        );
        list.into_iter()
            .filter(move |(t, _)| forced.is_none_or(|f| f == *t))
    }

    /// The geometry of a `vol`-sector volume with cluster choice `c`, if
    /// its cluster count is right for the type and the tree fits.
    fn fit(&self, (t, spc): (FatType, u32), vol: u64) -> Option<Geometry> {
        let fat32 = t == FatType::Fat32;
        let root_entries = self.root_entries();
        if !fat32 && root_entries > 65520 {
            return None;
        }
        let g = layout::compute(GeometryInput {
            fat_type: t,
            sectors_per_cluster: spc,
            root_entries: root_entries as u32,
            total_sectors: vol,
            align_sectors: spc.max(8),
        })?;
        let need = self.clusters_needed(u64::from(spc) * SECTOR, fat32);
        (need <= u64::from(g.clusters)).then_some(g)
    }

    /// The automatic disk size and its geometry: the first candidate whose
    /// type can hold the data plus slack (1/32 of it plus 16 clusters, so a
    /// `--rw` client has room to work), rounded up to whole MiB.
    fn auto_size(&self, forced: Option<FatType>, slack: bool) -> Option<(u64, Geometry)> {
        // The candidate order depends on the size for FAT32; estimate it
        // from the data with 4 KiB clusters.
        let estimate = self.clusters_needed(4096, true) * 8;
        for (t, spc) in self.candidates(forced, estimate) {
            let cs = u64::from(spc) * SECTOR;
            let need = self.clusters_needed(cs, t == FatType::Fat32);
            let want = if slack { need + need / 32 + 16 } else { need };
            let (_, hi) = t.cluster_range();
            if want > u64::from(hi) {
                continue;
            }
            let root = self.root_entries().min(65520) as u32;
            let vol = layout::sectors_for_clusters(t, spc, root, want, spc.max(8));
            let disk = self.volume_offset + vol * SECTOR;
            let disk = if slack {
                disk.div_ceil(1 << 20) << 20
            } else {
                disk
            };
            let vol = (disk - self.volume_offset) / SECTOR;
            if let Some(g) = self.fit((t, spc), vol) {
                return Some((disk, g));
            }
        }
        None
    }

    fn floppy_geometry(&mut self, f: FloppyFormat, opts: &FatOptions) -> Result<(), FatError> {
        let (total, spc, root, spt, name) = match f {
            FloppyFormat::F1440 => (2880, 1, 224, 18, "a 1.44M floppy"),
            FloppyFormat::F2880 => (5760, 2, 240, 36, "a 2.88M floppy"),
        };
        if opts.fat_type.is_some_and(|t| t != FatType::Fat12) {
            return Err(FatError::Impossible("floppies are FAT12".into()));
        }
        if opts.size.is_some() {
            return Err(FatError::Impossible(
                "--size and --floppy do not go together: a floppy's size is fixed".into(),
            ));
        }
        let mut g = layout::compute(GeometryInput {
            fat_type: FatType::Fat12,
            sectors_per_cluster: spc,
            root_entries: root,
            total_sectors: total,
            align_sectors: 1,
        })
        .expect("standard floppy geometry");
        g.media = 0xF0;
        g.sectors_per_track = spt;
        g.heads = 2;
        let need = self.clusters_needed(u64::from(spc) * SECTOR, false);
        if self.dirs[0].entries > u64::from(root) || need > u64::from(g.clusters) {
            let needed = self.auto_size(None, false).map_or(0, |(s, _)| s);
            return Err(FatError::TooSmall {
                what: name.into(),
                needed,
            });
        }
        self.geometry = g;
        self.volume_offset = 0;
        self.disk_size = total * SECTOR;
        Ok(())
    }

    fn allocate(&mut self) {
        let g = self.geometry;
        let cs = g.cluster_bytes();
        let fat32 = g.fat_type == FatType::Fat32;
        let mut next = 2u32;
        for (i, d) in self.dirs.iter_mut().enumerate() {
            if i == 0 && !fat32 {
                continue;
            }
            d.clusters = (d.entries * 32).div_ceil(cs).max(1) as u32;
            d.cluster = next;
            next += d.clusters;
        }
        for f in &mut self.files {
            f.clusters = f.node.meta.size.div_ceil(cs) as u32;
            if f.clusters > 0 {
                f.cluster = next;
                next += f.clusters;
            }
        }
        debug_assert!(next - 2 <= g.clusters);
        self.next_free = next;
        // Also set the host-independent geometry fields.
        self.geometry.hidden_sectors = (self.volume_offset / SECTOR) as u32;
    }

    /// The host path of a directory (for messages).
    pub fn dir_path(&self, i: usize) -> &Path {
        &self.dirs[i].node.path
    }
}
