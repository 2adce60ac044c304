//! Command-line definition. Help text comes from these definitions, so
//! it cannot drift from what is accepted.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use synth::size::Size;

const EXAMPLES: &str = "\
Examples:
  disksynth file disk.img --serve                  NBD on 127.0.0.1:10809 (read-only)
  disksynth file disk.img --rw -U /tmp/nbd.sock    writable, on a Unix socket
  disksynth memory 1G -U /tmp/nbd.sock             sparse RAM disk
  disksynth pattern 64M --run 'qemu-img info \"$uri\"'
                                                   captive mode: exits with the command's status
  disksynth file disk.img -o copy.img              sparse raw copy
  disksynth zero 10G -o - | wc -c                  stream to stdout

In --run commands, $uri and $nbd hold the NBD URI, $exportname the export name, $unixsocket
the socket path or $port the TCP port (with -p), $tls 0. With -U or -p, --run uses that socket.
Under systemd socket activation (LISTEN_FDS), disksynth serves the passed socket.";

/// Synthesize virtual disks and serve them over NBD or write them as raw images.
#[derive(Debug, Parser)]
#[command(name = "disksynth", version, after_help = EXAMPLES, arg_required_else_help = true)]
pub struct Cli {
    /// What the disk is made from.
    #[command(subcommand)]
    pub source: Source,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Logging and progress, for every subcommand (before or after it).
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log errors only, and no progress bar (RUST_LOG still overrides the level).
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// Log lines as text (with timestamps, except under journald) or as JSON objects, one per
    /// line: {"time","level","target","message"}.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Append log lines to FILE instead of stderr.
    #[arg(long, value_name = "FILE", global = true)]
    pub log_file: Option<PathBuf>,
    /// Show progress also when stderr is not a terminal (a line every 2 s with an ETA).
    #[arg(long, global = true, conflicts_with = "no_progress")]
    pub progress: bool,
    /// Never show progress.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-01-02T03:04:05.678Z WARN message`.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sources.
#[derive(Debug, Subcommand)]
pub enum Source {
    /// A host file or block device (read-only unless --rw).
    #[command(after_help = EXAMPLES)]
    File {
        /// The file or block device.
        path: PathBuf,
        /// Let clients write to the file.
        #[arg(long)]
        rw: bool,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// A writable, sparse RAM disk of SIZE bytes.
    #[command(after_help = EXAMPLES)]
    Memory {
        /// Size, e.g. 512, 4K, 1M, 1.5G, 1MiB.
        size: Size,
        /// Accepted and changes nothing: a memory disk is always writable (-r makes it
        /// read-only). Taken so that `--rw`, as given to other sources, is not an error.
        #[arg(long)]
        rw: bool,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// SIZE bytes of zeros (read-only).
    #[command(after_help = EXAMPLES)]
    Zero {
        /// Size, e.g. 512, 4K, 1M, 1.5G, 1MiB.
        size: Size,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// A FAT disk holding a host directory, synthesized virtually: metadata in memory,
    /// file contents read from the host files on demand.
    #[command(after_help = FLOPPY_EXAMPLES)]
    Floppy {
        /// The directory to put on the disk.
        dir: PathBuf,
        #[command(flatten)]
        fat: FatArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// An ext4 filesystem holding a host directory, synthesized virtually: metadata in
    /// memory, file contents read from the host files on demand.
    #[command(after_help = EXT4_EXAMPLES)]
    Ext4 {
        /// The directory to put in the filesystem.
        dir: PathBuf,
        #[command(flatten)]
        ext4: Ext4Args,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// An ISO 9660 image (Rock Ridge, Joliet) holding a host directory, synthesized
    /// virtually: metadata in memory, file contents read from the host files on demand.
    #[command(after_help = ISO_EXAMPLES)]
    Iso {
        /// The directory to put in the image.
        dir: PathBuf,
        #[command(flatten)]
        iso: IsoArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// A whole disk (GPT, MBR, hybrid) composed of filesystems and files, from a TOML spec
    /// or --part flags: served at once, every partition virtual; -o writes each byte once.
    #[command(after_help = BUILD_EXAMPLES)]
    Build {
        /// The disk spec (TOML; relative paths are relative to it). Or give --part flags.
        spec: Option<PathBuf>,
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// What a disk holds (an image file, a block device or an NBD export): its partition
    /// table, partitions and filesystems (exit status 1 if its tables have problems).
    #[command(after_help = INSPECT_EXAMPLES)]
    Inspect {
        /// The image file or block device, or an NBD URI: nbd://HOST[:PORT][/EXPORT] or
        /// nbd+unix:///[EXPORT]?socket=PATH (read-only; TLS, nbds://, is not supported yet).
        #[arg(value_name = "FILE|URI")]
        target: PathBuf,
        /// Print JSON (the same keys as `build --json` where they overlap).
        #[arg(long)]
        json: bool,
        /// NBD: seconds to wait for the connection and for each answer of the server.
        #[arg(long, value_name = "SECS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..=86400))]
        timeout: u64,
    },
    /// A remote image over HTTP(S), read lazily with range requests (read-only).
    #[command(after_help = HTTP_EXAMPLES)]
    Http {
        /// http://, https:// or s3://BUCKET/KEY URL of the raw image.
        url: String,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// Random access into a block-indexed .xz image, a local file or an http(s) URL
    /// (read-only): only the blocks clients read are fetched and decoded.
    #[command(after_help = XZ_EXAMPLES)]
    Xz {
        /// The .xz file: a path, or an http://, https:// or s3://BUCKET/KEY URL.
        source: String,
        #[command(flatten)]
        xz: XzArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// The guest disk of a qcow2 image, a local file or an http(s) URL (read-only): only
    /// the tables and clusters clients read are fetched (compressed ones decompressed).
    #[command(after_help = QCOW2_EXAMPLES)]
    Qcow2 {
        /// The qcow2 image: a path, or an http:// or https:// URL.
        source: String,
        /// The image's backing file (raw or qcow2, a path or a URL); repeat for a chain,
        /// nearest first. Required when the image has one: it is never opened by the name
        /// stored in the image.
        #[arg(long, value_name = "FILE|URL")]
        backing: Vec<String>,
        #[command(flatten)]
        qcow2: Qcow2Args,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// Any image, its format found by its magic (raw, block-indexed xz, qcow2, and qcow2
    /// inside xz), local or remote; served as its own subcommand would (read-only).
    #[command(after_help = IMAGE_EXAMPLES)]
    Image {
        /// The image: a path, or an http://, https:// or s3:// URL.
        source: String,
        /// For a qcow2 image with a backing file: the backing image (raw or qcow2, a path or
        /// a URL); repeat for a chain, nearest first.
        #[arg(long, value_name = "FILE|URL")]
        backing: Vec<String>,
        /// qcow2: most memory for the L1 table; bigger images are refused.
        #[arg(long, value_name = "SIZE", default_value = "32M")]
        max_l1: Size,
        #[command(flatten)]
        xz: XzArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// Compress an image into a block-indexed .xz (multithreaded) that `disksynth xz`
    /// and other random-access readers serve without decompressing it all.
    #[command(after_help = XZ_EXAMPLES)]
    Pack {
        /// The image to compress; `-` reads standard input (a pipe works).
        input: PathBuf,
        /// The .xz file to write (replaced only when complete); `-` writes standard output.
        output: PathBuf,
        /// Uncompressed bytes per xz block: the unit of random access, fetched and decoded
        /// whole. 4M because a read costs a whole block: a Linux boot over HTTPS fetched 38 MiB
        /// with 4 MiB blocks and 80 MiB with 16 MiB blocks, for a file only 2.7% smaller.
        #[arg(long, value_name = "SIZE", default_value = "4M")]
        block_size: Size,
        /// Compression threads (default: all cores).
        #[arg(long, value_name = "N")]
        threads: Option<u32>,
        /// xz preset, 0 (fast) to 9 (small).
        #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
        preset: u32,
        /// Log to stderr: -v what was written.
        #[arg(short = 'v', long, action = ArgAction::Count)]
        verbose: u8,
    },
    /// A fresh, empty, throwaway filesystem for every client, deleted when it
    /// disconnects (ext4 or FAT synthesized in-process, or any mkfs by --command).
    #[command(after_help = TMPDISK_EXAMPLES)]
    Tmpdisk {
        /// Size of every client's disk, e.g. 1G.
        size: Size,
        #[command(flatten)]
        tmp: TmpdiskArgs,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// SIZE bytes where every 8-byte big-endian word holds its own offset (read-only).
    #[command(after_help = EXAMPLES)]
    Pattern {
        /// Size, e.g. 512, 4K, 1M, 1.5G, 1MiB.
        size: Size,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// Several named exports from one server, from an exports file (TOML) and/or --export
    /// flags; clients pick one by name, and NBD_OPT_LIST lists them with their descriptions.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve {
        /// The exports file (TOML): [[export]] tables with name, source or spec, description,
        /// filters, readonly.
        #[arg(value_name = "EXPORTS.toml")]
        file: Option<PathBuf>,
        /// An export, repeatable, after those of the file: NAME=SUBCOMMAND ARGS…, the
        /// subcommand and its arguments as on the command line (e.g. --export 'pat=pattern 16M').
        #[arg(long = "export", value_name = "NAME=SUBCOMMAND ARGS")]
        exports: Vec<String>,
        #[command(flatten)]
        export: ExportArgs,
    },
}

impl Source {
    /// How the disk is exported, for the subcommands that export one.
    pub fn export(&self) -> Option<&ExportArgs> {
        match self {
            Source::File { export, .. }
            | Source::Memory { export, .. }
            | Source::Zero { export, .. }
            | Source::Pattern { export, .. }
            | Source::Floppy { export, .. }
            | Source::Ext4 { export, .. }
            | Source::Iso { export, .. }
            | Source::Build { export, .. }
            | Source::Http { export, .. }
            | Source::Xz { export, .. }
            | Source::Qcow2 { export, .. }
            | Source::Image { export, .. }
            | Source::Tmpdisk { export, .. }
            | Source::Serve { export, .. } => Some(export),
            Source::Pack { .. } | Source::Inspect { .. } => None,
        }
    }
}

const SERVE_EXAMPLES: &str = "\
Examples:
  disksynth serve exports.toml -U /run/nbd.sock
  disksynth serve --export 'pat=pattern 16M' --export 'iso=iso ./dir' -p 10809
  nbdinfo --list nbd://localhost                    the names and descriptions

exports.toml:
  [[export]]
  name = \"pat\"
  source = \"pattern 16M\"          # a subcommand and its arguments, as on the command line
  description = \"test pattern\"
  filters = [\"stats\"]

  [[export]]
  name = \"boot\"
  spec = \"disk.toml\"              # a `disksynth build` spec, relative to this file

The empty name reaches the export named \"\" if there is one, else the first. Paths inside a
source are as on the command line (relative to the working directory); serving options
(-U, -p, --run, --filter, -r, ...) go on `serve` and apply to every export (-r in a source
makes that export read-only).";

const IMAGE_EXAMPLES: &str = "\
Examples:
  disksynth image debian-12-genericcloud-amd64.qcow2 --serve
  disksynth image https://host/disk.raw.xz --run 'qemu-img info \"$uri\"'
  disksynth image s3://images/top.qcow2 --backing s3://images/base.qcow2 -o flat.img

Formats are told by their magic, never by the file name: qcow2 (QFI\\xfb), xz (FD 37 7A 58
5A 00; a qcow2 inside is served as qcow2), anything else is raw. VMDK, VHDX, VDI, dynamic
VHD, qcow v1, gzip, zstd and bzip2 are refused with what to convert them to.
With xz, --cache-size is the memory for decoded blocks; with qcow2, for L2 tables and
clusters.";

const FLOPPY_EXAMPLES: &str = "\
Examples:
  disksynth floppy ./dir --serve                     a FAT disk holding ./dir, over NBD
  disksynth floppy ./dir --floppy 1.44M -o a.img     a 1.44 MB floppy image for qemu -fda
  disksynth floppy ./dir --rw -U -                   clients may write; ./dir is never changed
  disksynth floppy ./dir --size 2G --fat 32 --label DATA -o fat.img

The FAT type follows from the cluster count (Microsoft FAT spec): FAT12 below 4085
clusters, FAT16 below 65525, FAT32 above. Symlinks are followed; times are UTC;
SOURCE_DATE_EPOCH sets every timestamp; the same tree gives the same bytes. Names that
FAT sees as one (Makefile, makefile) keep the first; later ones become makefile~2 with a
warning (--strict-names: an error). Files without write permission are read-only.";

/// FAT layout options.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "FAT")]
pub struct FatArgs {
    /// Disk size (default: the data, metadata and a little slack, in whole MiB).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<Size>,
    /// FAT type: 12, 16 or 32 (default: chosen from the size).
    #[arg(long, value_name = "12|16|32")]
    pub fat: Option<formats::fat::FatType>,
    /// Volume label, up to 11 characters.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// `mbr`: one partition starting at 1 MiB; `none`: the volume is the whole disk.
    #[arg(long, value_name = "mbr|none", value_parser = ["mbr", "none"])]
    pub partition: Option<String>,
    /// A standard floppy: 1.44M or 2.88M (FAT12, no partition table).
    #[arg(long, value_name = "FORMAT")]
    pub floppy: Option<formats::fat::FloppyFormat>,
    /// Volume serial number, 8 hex digits (default: derived from the tree).
    #[arg(long, value_name = "HEX", value_parser = crate::spec::parse_serial)]
    pub serial: Option<u32>,
    /// Fail when two names in a directory are one name to FAT (`Makefile` and `makefile`,
    /// `a:b` and `a_b`), instead of keeping the first and storing the later one as
    /// `makefile~2` with a warning.
    #[arg(long)]
    pub strict_names: bool,
    #[command(flatten)]
    pub write: WriteArgs,
    /// Most host files kept open at once.
    #[arg(long, value_name = "N", default_value_t = synth::DEFAULT_POOL_FDS)]
    pub max_open_files: usize,
}

const EXT4_EXAMPLES: &str = "\
Examples:
  disksynth ext4 ./rootfs --serve                    an ext4 filesystem holding ./rootfs, over NBD
  disksynth ext4 ./rootfs --size 4G --label root -o root.img
  disksynth ext4 ./rootfs --owner root --rw --run 'qemu-system-x86_64 ... -drive file=$nbd,if=virtio'

The filesystem is the whole disk (no partition table): 4 KiB blocks, extents, hashed
directories, metadata_csum, an empty journal, lost+found. Symlinks, hard links, device
nodes, fifos and sockets are kept; sparse files stay sparse. Names and symlink targets
are stored as their bytes. Extended attributes (user.*, trusted.*, security.* such as file
capabilities and SELinux labels) and POSIX ACLs are kept unless --no-xattrs. File times
are the host's (atime is set to mtime); SOURCE_DATE_EPOCH sets the filesystem's own times
(default: the newest mtime, at most 2026-12-01, the release date; never the clock). The
UUID comes from the tree, so the same tree gives the same bytes.";

/// ext4 layout options.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "ext4")]
pub struct Ext4Args {
    /// Filesystem size, a multiple of 4 KiB (default: the data, metadata and some
    /// slack, in whole MiB).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<Size>,
    /// Volume label, up to 16 bytes.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Filesystem UUID, e.g. 0b9f4f8e-35d5-4d63-9c3e-5a1d2f7e8a10 (default: derived from
    /// the tree).
    #[arg(long, value_name = "UUID", value_parser = crate::spec::parse_uuid)]
    pub uuid: Option<[u8; 16]>,
    /// `keep` the host's uid/gid, or make everything owned by `root` (0:0).
    #[arg(long, value_name = "keep|root", default_value = "keep")]
    pub owner: formats::ext4::Owner,
    /// Leave out extended attributes and ACLs (kept by default: user.*, trusted.*,
    /// security.* such as file capabilities and SELinux labels, POSIX ACLs).
    #[arg(long)]
    pub no_xattrs: bool,
    #[command(flatten)]
    pub write: WriteArgs,
    /// Most host files kept open at once.
    #[arg(long, value_name = "N", default_value_t = synth::DEFAULT_POOL_FDS)]
    pub max_open_files: usize,
}

const ISO_EXAMPLES: &str = "\
Examples:
  disksynth iso ./dir --serve                        an ISO 9660 image of ./dir, over NBD
  disksynth iso ./dir --volid DATA -o data.iso       a sparse .iso file
  disksynth iso ./live --boot isolinux/isolinux.bin --efi-boot-dir ./esp
      --hybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin -o live.iso
                                                     boots from CD and USB stick, BIOS and UEFI

ISO 9660 level 3 (files of 4 GiB or more take several extents), Rock Ridge (names of
any length, modes, owners, times, symlinks, device nodes) and Joliet (UCS-2 names up
to 64 characters; longer ones are shortened with a warning). Times are UTC; volume
times are SOURCE_DATE_EPOCH or the newest mtime in the tree, at most 2026-12-01 (the
release date; never the clock); the same tree gives the same bytes.";

/// ISO 9660 options.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "ISO 9660")]
pub struct IsoArgs {
    /// Volume identifier: letters, digits and _, at most 32 (default: the directory's
    /// name in upper case, or CDROM).
    #[arg(long, value_name = "ID")]
    pub volid: Option<String>,
    /// Leave out Rock Ridge (then symlinks and special files are skipped and names
    /// are ISO 9660 level 3 only).
    #[arg(long)]
    pub no_rock_ridge: bool,
    /// Leave out the Joliet tree.
    #[arg(long)]
    pub no_joliet: bool,
    /// El Torito BIOS boot image (no emulation), a file of DIR, e.g. isolinux/isolinux.bin.
    #[arg(long, value_name = "PATH")]
    pub boot: Option<PathBuf>,
    /// 512-byte sectors the BIOS loads from the boot image.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub boot_load_size: u16,
    /// Do not patch the boot-info table into the boot image (isolinux needs it).
    #[arg(long)]
    pub no_boot_info_table: bool,
    /// El Torito UEFI boot image: a FAT image file of DIR, e.g. efiboot.img.
    #[arg(long, value_name = "PATH")]
    pub efi_boot: Option<PathBuf>,
    /// El Torito UEFI boot image synthesized from this directory by the FAT generator
    /// (e.g. a directory holding EFI/BOOT/BOOTX64.EFI); instead of --efi-boot.
    #[arg(long, value_name = "DIR", conflicts_with = "efi_boot")]
    pub efi_boot_dir: Option<PathBuf>,
    /// Add partition tables so the image also works as a disk (USB stick): an MBR;
    /// with an EFI image also a GPT whose EFI system partition is that image.
    #[arg(long)]
    pub hybrid: bool,
    /// MBR boot code for BIOS booting the --boot image from a disk, e.g.
    /// /usr/lib/ISOLINUX/isohdpfx.bin (implies --hybrid).
    #[arg(long, value_name = "FILE")]
    pub hybrid_mbr: Option<PathBuf>,
    #[command(flatten)]
    pub write: WriteArgs,
    /// Most host files kept open at once.
    #[arg(long, value_name = "N", default_value_t = synth::DEFAULT_POOL_FDS)]
    pub max_open_files: usize,
}

const HTTP_EXAMPLES: &str = "\
Examples:
  disksynth http https://host/disk.raw --serve
  disksynth http https://host/disk.raw --auth-env TOKEN --run 'qemu-img info \"$uri\"'
  disksynth http s3://images/disk.raw --endpoint http://minio:9000 --serve   (AWS_* credentials)

Every ranged GET must come back 206 with the range asked for; a 200, a wrong range or a
file replaced on the server (ETag/Last-Modified, sent as If-Range) fails the read with
EIO and a log line, never wrong bytes. Connection errors, truncated bodies, 5xx and 429
are retried with backoff. Credentials come from an environment variable or a file
(\"user:password\" for Basic, \"Bearer TOKEN\"), never from the command line.";

const XZ_EXAMPLES: &str = "\
Examples:
  disksynth xz https://host/fedora.raw.xz --serve    boot a compressed image without downloading it
  disksynth xz ./local.raw.xz -o disk.raw            decompress (sparse: zero blocks stay holes)
  disksynth pack disk.raw disk.raw.xz               4 MiB blocks (--block-size)
  zcat disk.raw.gz | disksynth pack - disk.raw.xz     from a pipe (`pack IN -` writes stdout)

Random access needs many blocks: plain `xz` writes one block per file (refused above
--max-block). `disksynth pack` or `xz -T0 --block-size=16MiB` write indexed files.
Decoded blocks are cached once for all clients (--cache-size); all-zero blocks are
reported as holes.";

const QCOW2_EXAMPLES: &str = "\
Examples:
  disksynth qcow2 https://host/debian-genericcloud.qcow2 --serve   boot it without downloading it
  disksynth qcow2 top.qcow2 --backing base.qcow2 -o disk.raw        flatten a chain (sparse output)
  disksynth qcow2 ./disk.qcow2 --run 'qemu-img map \"$uri\"'

qcow2 v2 and v3: standard, extended (subcluster) and compressed (deflate, zstd) clusters,
any cluster size from 512 B to 2 MiB. Zero clusters are zeros and unallocated ones holes in
block status. Refused, naming the feature: encryption, an external data file, the dirty or
corrupt bit, unknown incompatible features, and a backing file without --backing. Corrupt
tables or clusters fail the reads that need them (EIO), not the server.";

const TMPDISK_EXAMPLES: &str = "\
Examples:
  disksynth tmpdisk 1G --serve                          ext4 by default
  disksynth tmpdisk 2G --type vfat --label SCRATCH -U /run/scratch.sock --max-clients 32
  disksynth tmpdisk 10G --command 'mkfs.xfs -q \"$disk\"'   any other filesystem

A disk is made when a client connects (NBD GO, never for INFO) and deleted when it
disconnects, also if the server is killed (unlinked temp files). ext4 and vfat are
synthesized in-process: ready in about a millisecond, no disk space used until the
client writes. Other --type values run mkfs -t TYPE; --command runs under /bin/sh
with $disk, $size, $type and $label set, in a process group of its own that is
killed at --command-timeout or when the client disconnects first. Flush and FUA
are accepted and ignored.";

/// tmpdisk options.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "tmpdisk")]
pub struct TmpdiskArgs {
    /// Filesystem: ext4 or vfat (synthesized), or any TYPE mkfs -t knows.
    #[arg(long = "type", value_name = "TYPE", default_value = "ext4")]
    pub kind: String,
    /// Volume label.
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Make each disk with this shell command instead ($disk, $size, $type, $label).
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// Directory for the disks' (unlinked) temp files (default: $TMPDIR or /var/tmp).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Clients with a disk at once; the next one gets an error.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_clients: usize,
    /// Seconds --command (or mkfs) may take to make a disk; then its whole process group is
    /// killed (SIGTERM, SIGKILL a second later) and the client gets an error. A client
    /// leaving first has its command killed too.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub command_timeout: u64,
    /// Accepted and changes nothing: every client's disk is writable (-r makes them
    /// read-only).
    #[arg(long)]
    pub rw: bool,
    /// Disk space all clients' disks may use together; writes past it fail with ENOSPC.
    #[arg(long, value_name = "SIZE")]
    pub max_disk: Option<Size>,
}

const BUILD_EXAMPLES: &str = "\
Examples:
  disksynth build disk.toml --serve                  served at once over NBD, every partition virtual
  disksynth build disk.toml -o disk.img --json report.json
  disksynth build disk.toml --rw -U -                writable through an overlay
  disksynth build --table gpt --part esp:fat:./esp:64M --part root-x86-64:ext4:./rootfs -o disk.img

--part TYPE:FS:SOURCE[:SIZE]: FS is fat, ext4, iso, raw (SOURCE is a file) or empty
(no SOURCE, a SIZE); SIZE is auto, 64M, auto+20%, min:1G or remaining. The spec file
format is in the README.";

const INSPECT_EXAMPLES: &str = "\
Examples:
  disksynth inspect disk.img
  disksynth inspect /dev/sdb --json
  disksynth inspect nbd://server.example:10809/vm-disk     an export on an NBD server
  disksynth inspect 'nbd+unix:///?socket=/run/nbd.sock'     the default export on a Unix socket

Export names in URIs are percent-encoded (nbd://host/my%20disk).";

/// `build` options (flags instead of a spec file).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Disk")]
pub struct BuildArgs {
    /// Partition table: gpt, mbr, hybrid (GPT + MBR mirroring up to 3 partitions) or none.
    #[arg(long, value_name = "TABLE", conflicts_with = "spec")]
    pub table: Option<String>,
    /// A partition, repeatable, in order: TYPE:FS:SOURCE[:SIZE].
    #[arg(
        long = "part",
        value_name = "TYPE:FS:SOURCE[:SIZE]",
        conflicts_with = "spec"
    )]
    pub parts: Vec<String>,
    /// Disk size (default: exactly what the partitions need).
    #[arg(long = "disk-size", value_name = "SIZE", conflicts_with = "spec")]
    pub disk_size: Option<Size>,
    /// Seed of every GUID, UUID and serial (default: derived from the spec and the trees).
    #[arg(long, value_name = "TEXT", conflicts_with = "spec")]
    pub seed: Option<String>,
    /// Logical sector size: 512 or 4096.
    #[arg(long, value_name = "BYTES", conflicts_with = "spec")]
    pub sector_size: Option<u64>,
    /// Partition alignment (default 1M).
    #[arg(long, value_name = "SIZE", conflicts_with = "spec")]
    pub align: Option<Size>,
    /// Write a JSON report (every partition: offset, size, type, GUIDs, filesystem); `-`: stdout.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Client writes to a generated disk (`floppy`, `ext4`, `iso`, `build`).
#[derive(Debug, Args, Clone)]
pub struct WriteArgs {
    /// Let clients write: writes go to a copy-on-write overlay (pages in an unlinked
    /// temp file in --dir), never to DIR.
    #[arg(long)]
    pub rw: bool,
    /// Directory for the overlay's unlinked temp file (default: $TMPDIR or /var/tmp).
    #[arg(long = "dir", value_name = "DIR", requires = "rw")]
    pub overlay_dir: Option<PathBuf>,
    /// Disk space the clients' writes may take together; writes past it fail with ENOSPC.
    #[arg(long, value_name = "SIZE", requires = "rw")]
    pub max_disk: Option<Size>,
}

/// HTTP client options (for `http` and for `xz` of a URL).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Extra request header, repeatable: --header 'User-Agent: x'.
    #[arg(long = "header", value_name = "'K: V'")]
    pub headers: Vec<String>,
    /// Read credentials from this environment variable ("user:password" or "Bearer TOKEN";
    /// for s3:// URLs "ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]").
    #[arg(long, value_name = "VAR", conflicts_with = "auth_file")]
    pub auth_env: Option<String>,
    /// Read credentials from this file (same format as --auth-env; for s3:// URLs also an AWS
    /// shared credentials file, read with --profile).
    #[arg(long, value_name = "PATH")]
    pub auth_file: Option<PathBuf>,
    /// s3:// URLs: the bucket's region (default: AWS_REGION, AWS_DEFAULT_REGION, the
    /// profile's region in ~/.aws/config, us-east-1).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// s3:// URLs: an S3-compatible endpoint (MinIO, Ceph RGW, R2…), addressed path-style
    /// (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS itself).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// s3:// URLs: the profile of ~/.aws/credentials and ~/.aws/config (default: AWS_PROFILE,
    /// else "default"); a profile named here wins over AWS_ACCESS_KEY_ID.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// s3:// URLs: send requests unsigned (public objects); look for no credentials.
    #[arg(long, conflicts_with_all = ["auth_env", "auth_file", "profile"])]
    pub no_sign_request: bool,
    /// Most requests in flight at once (shared by all clients). A request that stalls (below
    /// --speed-limit for 2 s, or no answer yet) stops counting, up to 4×N in all, so stalled
    /// ranges cannot starve reads the origin serves fast.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub connections: usize,
    /// Seconds to wait for a connection.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Seconds a request may go without data (total silence).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// Low-speed limit, bytes per second (K, M suffixes; 0: off): a transfer slower than this
    /// for --speed-time seconds is abandoned and retried, as curl's --speed-limit.
    #[arg(long, value_name = "BYTES", default_value = "1K")]
    pub speed_limit: Size,
    /// Seconds over which --speed-limit is measured, from the response head on.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub speed_time: u64,
    /// Seconds one request may take in all, per started 4 MiB of the range (0: no limit); past
    /// it the request is abandoned and retried.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub request_timeout: u64,
    /// Retries of a failed request (with exponential backoff).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// Read ahead this much on sequential access (0: off).
    #[arg(long, value_name = "SIZE", default_value = "4M")]
    pub readahead: Size,
    /// Keep fetched ranges in this directory and reuse them (keyed by URL and ETag).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Also trust the certificate authorities in this PEM file (repeatable).
    #[arg(long = "cacert", value_name = "PEM")]
    pub ca_certs: Vec<PathBuf>,
}

/// xz view options.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "xz")]
pub struct XzArgs {
    /// Memory for decoded blocks, shared by all clients.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub cache_size: Size,
    /// Largest block (uncompressed) served; larger ones are refused unless --allow-big-blocks.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub max_block: Size,
    /// Serve files with blocks over --max-block anyway, up to 4 GiB per block (slow: every
    /// read decodes a whole block into memory).
    #[arg(long)]
    pub allow_big_blocks: bool,
    /// Do not decode the next block ahead on sequential reads.
    #[arg(long)]
    pub no_readahead: bool,
    /// Most memory for the file's index (16 bytes per block: the default holds 4 million
    /// blocks, 64 TiB in 16 MiB blocks); files listing more blocks are refused.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub max_index: Size,
}

/// qcow2 view options.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "qcow2")]
pub struct Qcow2Args {
    /// Memory for L2 tables and decompressed clusters, shared by all clients.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub cache_size: Size,
    /// Most memory for the L1 table (8 bytes per L2 table); bigger images are refused.
    #[arg(long, value_name = "SIZE", default_value = "32M")]
    pub max_l1: Size,
}

impl Default for Qcow2Args {
    fn default() -> Self {
        Qcow2Args {
            cache_size: Size(64 << 20),
            max_l1: Size(32 << 20),
        }
    }
}

/// How the disk is handed out: serve it (TCP, Unix, captive) or write it.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Export")]
pub struct ExportArgs {
    /// Serve NBD over TCP (default 127.0.0.1:10809).
    #[arg(long)]
    pub serve: bool,
    /// Listen on this address or host name (implies --serve); a name with several addresses
    /// listens on the first (and says so).
    #[arg(short = 'i', long = "ip", value_name = "ADDR")]
    pub ip: Option<String>,
    /// Listen on this TCP port; 0 picks a free one (implies --serve).
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Serve NBD on a Unix socket; `-` makes a private temporary socket.
    #[arg(short = 'U', long = "unix", value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Run CMD under /bin/sh against the server and exit with its status: on a private
    /// socket, or on the one -U/-p give. $uri, $nbd, $exportname, $port, $unixsocket, $tls.
    #[arg(long, value_name = "CMD")]
    pub run: Option<String>,
    /// Write the whole disk as a sparse raw image; `-` streams to stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Mount a FUSE filesystem on DIR holding one file, DIR/disk, whose bytes are the disk
    /// (read-only unless --rw): for loop mounts, qemu-img, cp without an NBD client. Alone it
    /// serves until SIGINT/SIGTERM; with -U/--serve both serve the disk; --run gets $fuse.
    #[arg(long, value_name = "DIR")]
    pub fuse: Option<PathBuf>,
    /// The file's name under --fuse.
    #[arg(long, value_name = "NAME", default_value = "disk", requires = "fuse")]
    pub fuse_name: std::ffi::OsString,
    /// Export name clients ask for (the empty name always works too).
    #[arg(
        short = 'e',
        long = "export-name",
        value_name = "NAME",
        default_value = ""
    )]
    pub export_name: String,
    /// Refuse writes.
    #[arg(short = 'r', long)]
    pub readonly: bool,
    /// Most worker threads per connection.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Most clients served at once; the next one is refused (NBD_REP_ERR_POLICY with the
    /// reason, and a log line) until one leaves. Default: as many as the descriptor limit
    /// holds (raised to the hard limit at start), at most 10000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,
    /// A client must finish the whole handshake within SECS seconds, or it is cut off.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_limit: u64,
    /// Most request and reply data one connection holds in memory at once; also the
    /// largest request served (the maximum block size advertised is lowered to it).
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub connection_memory: Size,
    /// Copy file data through memory instead of sendfile (for measurements).
    #[arg(long, hide = true)]
    pub no_sendfile: bool,
    /// Serve a live web view of the disk on ADDR:PORT (e.g. 127.0.0.1:8080): a map of the
    /// disk lit by reads and writes, the files read, throughput and latency; JSON at
    /// /api/stats and /api/map. Read-only; a non-loopback address is warned about.
    #[arg(long, value_name = "ADDR:PORT")]
    pub web: Option<String>,
    /// Log to stderr: -v connections, -vv requests.
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Put a layer over the disk (repeatable; the first given is the outermost, as nbdkit
    /// orders them): e.g. partition:1, offset:1M,len=64M, truncate:10G, cow, cache:dir=DIR,
    /// readahead, delay:read=10ms, error:rate=0.1,errno=EIO, log:file=F, stats,
    /// rate:read=50M, ip:allow=127.0.0.1,deny=all, limit:clients=4. `--filter help` lists
    /// them all with their arguments.
    #[arg(long = "filter", value_name = "NAME[:ARGS]")]
    pub filters: Vec<String>,
    /// Stop when the last client disconnects, after at least one came (nbdkit's exitlast).
    #[arg(long)]
    pub exit_last: bool,
    /// Stop when the process that started disksynth exits (Linux: the parent-death signal,
    /// PR_SET_PDEATHSIG, as SIGTERM; elsewhere its pid is checked every second).
    #[arg(long)]
    pub exit_with_parent: bool,
    /// Write the server's pid to FILE once it listens; removed at exit. A file naming a
    /// running process is refused (another server); a stale one is replaced.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// NBD over TLS (NBD_OPT_STARTTLS), as nbdkit's --tls: off refuses it, on serves plain
    /// and TLS clients, require refuses every option until TLS is up.
    #[arg(long, value_name = "MODE", default_value = "off", help_heading = "TLS")]
    pub tls: TlsArg,
    /// Directory with server-cert.pem, server-key.pem and ca-cert.pem (nbdkit's and
    /// qemu's layout). Re-read on SIGHUP, as the other TLS files.
    #[arg(long, value_name = "DIR", help_heading = "TLS")]
    pub tls_certificates: Option<PathBuf>,
    /// The server's certificate (PEM chain), instead of DIR/server-cert.pem.
    #[arg(long, value_name = "FILE", requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM), instead of DIR/server-key.pem.
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates for --tls-verify-peer, instead of DIR/ca-cert.pem.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_ca: Option<PathBuf>,
    /// Require a client certificate signed by the CA; its subject is logged.
    #[arg(long, help_heading = "TLS")]
    pub tls_verify_peer: bool,
    /// Serve only clients whose certificate subject (as logged, `CN=name,O=org`) matches
    /// PATTERN (`*` and `?` wildcards); implies --tls-verify-peer.
    #[arg(long, value_name = "PATTERN", help_heading = "TLS")]
    pub tls_allow_subject: Option<String>,
    /// Pre-shared keys (psktool format): not supported (see `--tls-psk` in the README).
    #[arg(long, value_name = "FILE", help_heading = "TLS", hide = true)]
    pub tls_psk: Option<PathBuf>,
}

/// `--tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsArg {
    /// STARTTLS refused.
    Off,
    /// Plain and TLS clients.
    On,
    /// TLS clients only.
    Require,
}
