//! tmpdisk: every client gets a fresh, empty, throwaway disk.
//!
//! A disk is made when a client opens the export (NBD `GO`/`EXPORT_NAME`;
//! `INFO` never opens one) and is gone when the client disconnects. It is
//! either
//! - **synthesized**: an empty filesystem built in-process by the caller's
//!   generator (a `RegionMap`: metadata in memory, the rest zeros) under a
//!   copy-on-write overlay whose pages live in an unlinked sparse temp file
//!   in `dir`: no disk space is used until the client writes; or
//! - **made by a command** (`mkfs.xfs -q "$disk"`...): run under `/bin/sh`
//!   on a sparse temp file that is unlinked before the command even starts
//!   (it is reached as `/proc/PID/fd/N`), in a process group of its own,
//!   killed whole at its timeout or when the client leaves first (see
//!   `tmpdisk/command.rs`).
//!
//! Either way nothing outlives the client, nor a killed server. The disks
//! are throwaway, so flush and FUA are accepted and do nothing, and
//! `MULTI_CONN` is never advertised (each connection is a different disk).
//! Limits: clients at once, and optionally the disk space all of them may
//! take together (a write past it fails with `ENOSPC`).

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

mod command;

use synth::{
    BlockDev, BlockSize, Caps, CowOverlay, Error, ErrorKind, Export, Filter, Layer, OverlayOptions,
    OverlayStore, Result, SpaceQuota, ZeroFlags,
};

/// Builds a client's empty filesystem from 16 fresh random bytes (for its
/// UUID or volume serial, so no two clients' filesystems look the same).
pub type Synthesize = dyn Fn([u8; 16]) -> Result<Arc<dyn BlockDev>> + Send + Sync;

/// How a client's disk gets its empty filesystem.
pub enum Initializer {
    /// Built in-process, e.g. by the ext4 or FAT generator.
    Synthesized(Box<Synthesize>),
    /// A shell script run under `/bin/sh` with `$disk`, `$size`, `$type`
    /// and `$label` set (shell-quoted), stdin from `/dev/null`; its output
    /// goes to the server log, never to a client.
    Command {
        /// The script.
        script: String,
        /// `$type`.
        kind: String,
        /// `$label` (empty if none).
        label: String,
    },
}

impl fmt::Debug for Initializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Initializer::Synthesized(_) => f.write_str("Synthesized"),
            Initializer::Command { script, kind, .. } => f
                .debug_struct("Command")
                .field("script", script)
                .field("kind", kind)
                .finish(),
        }
    }
}

/// Settings of a [`TmpdiskExport`].
#[derive(Debug, Clone)]
pub struct TmpdiskOptions {
    /// Size of every disk.
    pub size: u64,
    /// Where the (unlinked) temp files live.
    pub dir: PathBuf,
    /// Clients served at once; the next one is refused with a clear error.
    pub max_clients: usize,
    /// Disk space all clients' disks may take together (`None`: no limit
    /// but the filesystem's).
    pub max_disk: Option<u64>,
    /// What `INFO_DESCRIPTION` says.
    pub description: String,
    /// How long a command may take to make a disk; then it is killed and
    /// the client gets an error.
    pub command_timeout: Duration,
}

/// The export: a new disk per client connection.
pub struct TmpdiskExport {
    opts: TmpdiskOptions,
    init: Arc<Initializer>,
    clients: Arc<AtomicUsize>,
    quota: Option<Arc<SpaceQuota>>,
    opened: AtomicU64,
    /// A synthesized filesystem built ahead for the next client, so that
    /// opening costs no more than creating its overlay (the build, about a
    /// millisecond for ext4, runs on another thread after each open).
    spare: Arc<(Mutex<Spare>, Condvar)>,
}

#[derive(Default)]
struct Spare {
    ready: Option<Arc<dyn BlockDev>>,
    building: bool,
}

impl fmt::Debug for TmpdiskExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TmpdiskExport")
            .field("opts", &self.opts)
            .field("init", &self.init)
            .field("clients", &self.clients.load(Ordering::Relaxed))
            .finish()
    }
}

impl TmpdiskExport {
    /// An export handing out disks as `opts` says, initialized by `init`.
    pub fn new(opts: TmpdiskOptions, init: Initializer) -> Self {
        let quota = opts.max_disk.map(|m| Arc::new(SpaceQuota::new(m)));
        let export = TmpdiskExport {
            opts,
            init: Arc::new(init),
            clients: Arc::new(AtomicUsize::new(0)),
            quota,
            opened: AtomicU64::new(0),
            spare: Arc::new((Mutex::new(Spare::default()), Condvar::new())),
        };
        export.build_spare();
        export
    }

    /// Start building the next client's filesystem in the background (if
    /// filesystems are synthesized and none is ready or being built).
    fn build_spare(&self) {
        let Initializer::Synthesized(_) = &*self.init else {
            return;
        };
        let (lock, _) = &*self.spare;
        {
            let mut sp = lock.lock().unwrap_or_else(|e| e.into_inner());
            if sp.ready.is_some() || sp.building {
                return;
            }
            sp.building = true;
        }
        let (init, spare) = (self.init.clone(), self.spare.clone());
        let spawned = std::thread::Builder::new()
            .name("tmpdisk-spare".into())
            .spawn(move || {
                let built = match &*init {
                    Initializer::Synthesized(build) => build(fresh_id()).ok(),
                    Initializer::Command { .. } => None,
                };
                let (lock, done) = &*spare;
                let mut sp = lock.lock().unwrap_or_else(|e| e.into_inner());
                sp.ready = built;
                sp.building = false;
                done.notify_all();
            });
        if spawned.is_err() {
            lock.lock().unwrap_or_else(|e| e.into_inner()).building = false;
        }
    }

    /// The spare filesystem: ready, or being built (then waited for, which
    /// is never longer than building one here and spends no extra CPU), or
    /// `None` (each spare is handed out once).
    fn take_spare(&self) -> Option<Arc<dyn BlockDev>> {
        let (lock, done) = &*self.spare;
        let mut sp = lock.lock().unwrap_or_else(|e| e.into_inner());
        while sp.ready.is_none() && sp.building {
            sp = done.wait(sp).unwrap_or_else(|e| e.into_inner());
        }
        sp.ready.take()
    }

    /// Clients holding a disk now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Disk space charged to all disks now (with `max_disk`).
    pub fn disk_used(&self) -> Option<u64> {
        self.quota.as_ref().map(|q| q.used())
    }

    fn synthesized(&self, build: &Synthesize) -> Result<Arc<dyn BlockDev>> {
        let base = match self.take_spare() {
            Some(b) => b,
            None => build(fresh_id())?,
        };
        self.build_spare();
        if base.size() != self.opts.size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the generator made {} bytes, not {}",
                    base.size(),
                    self.opts.size
                ),
            ));
        }
        let overlay = CowOverlay::new(
            base,
            OverlayOptions {
                store: OverlayStore::TempFile,
                // Filesystems write 4 KiB blocks: a page per block keeps a
                // scattered write from storing untouched neighbours.
                page_size: 4096,
                temp_dir: Some(self.opts.dir.clone()),
                quota: self.quota.clone(),
            },
        )
        .map_err(|e| Error::with_source(e.kind(), format!("in {}", self.opts.dir.display()), e))?;
        Ok(Arc::new(overlay))
    }

    fn commanded(
        &self,
        script: &str,
        kind: &str,
        label: &str,
        gone: &dyn Fn() -> bool,
    ) -> Result<Arc<dyn BlockDev>> {
        let dir = &self.opts.dir;
        let file = tempfile::tempfile_in(dir)
            .map_err(|e| Error::io(format!("creating a temp file in {}", dir.display()), e))?;
        file.set_len(self.opts.size)
            .map_err(|e| Error::io("sizing the temp file", e))?;
        // The file is already unlinked; the command reaches it through our
        // descriptor's /proc link (it inherits no descriptor: all of ours
        // are close-on-exec).
        let disk = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let full = format!(
            "disk={}\nsize={}\ntype={}\nlabel={}\n{script}\n",
            shell_quote(&disk),
            self.opts.size,
            shell_quote(kind),
            shell_quote(label),
        );
        command::run(&full, self.opts.command_timeout, gone)?;
        let dev = FileDisk::layer(file, self.opts.size, self.quota.clone())?;
        Ok(Arc::new(dev))
    }
}

impl Export for TmpdiskExport {
    fn size(&self) -> u64 {
        self.opts.size
    }

    fn caps(&self) -> Caps {
        // Never MULTI_CONN: each connection is a different disk.
        Caps::WRITE | Caps::FLUSH | Caps::TRIM | Caps::ZERO | Caps::FAST_ZERO | Caps::EXTENTS
    }

    fn block_size(&self) -> BlockSize {
        BlockSize {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        }
    }

    fn description(&self) -> String {
        self.opts.description.clone()
    }

    fn open(&self) -> Result<Arc<dyn BlockDev>> {
        self.open_for(&|| false)
    }

    /// The slot is held only while the client is: a command still running
    /// when it leaves is stopped, and the slot given back.
    fn open_for(&self, gone: &dyn Fn() -> bool) -> Result<Arc<dyn BlockDev>> {
        let slot = ClientSlot::take(&self.clients, self.opts.max_clients)?;
        let n = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let t0 = std::time::Instant::now();
        let dev = match &*self.init {
            Initializer::Synthesized(build) => self.synthesized(build.as_ref())?,
            Initializer::Command {
                script,
                kind,
                label,
            } => self.commanded(script, kind, label, gone)?,
        };
        log::info!(
            "tmpdisk #{n}: ready in {:.1} ms ({} clients)",
            t0.elapsed().as_secs_f64() * 1000.0,
            self.clients()
        );
        Ok(Arc::new(Layer::new(Throwaway { n, _slot: slot }, dev)))
    }
}

/// 16 random bytes from the OS (a fresh filesystem UUID per client).
fn fresh_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // Best effort: fastrand is seeded from the OS and per thread; mixing in
    // the time and pid keeps ids distinct even if that ever failed.
    let a = fastrand::u64(..) ^ u64::from(std::process::id()).rotate_left(32);
    let b = fastrand::u64(..)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    id[..8].copy_from_slice(&a.to_le_bytes());
    id[8..].copy_from_slice(&b.to_le_bytes());
    id
}

/// `s` as one word for `/bin/sh`: single-quoted, `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One of `--max-clients` places, given back when the disk is dropped.
#[derive(Debug)]
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Result<ClientSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| {
                Error::new(
                    ErrorKind::NoSpace,
                    format!("{max} clients already have a disk (--max-clients {max}); try later"),
                )
            })?;
        Ok(ClientSlot(count.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client's disk: the device beneath, with flush a no-op (the disk is
/// thrown away) and without `MULTI_CONN`; the client's slot is held as
/// long as the layer is.
#[derive(Debug)]
struct Throwaway {
    n: u64,
    _slot: ClientSlot,
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        log::info!("tmpdisk #{}: client gone, disk deleted", self.n);
    }
}

impl Filter for Throwaway {
    fn flush(&self, _next: &dyn BlockDev) -> Result<()> {
        // Throwaway disks: nothing is ever made durable.
        Ok(())
    }
    fn caps(&self, next: &dyn BlockDev) -> Caps {
        (next.caps() | Caps::FLUSH) - Caps::MULTI_CONN
    }
}

/// A command-made disk: an unlinked sparse temp file served by
/// [`FileDev`](crate::FileDev) (trim and zeroing punch holes, holes are
/// reported), its allocated space charged to the quota.
#[derive(Debug)]
struct FileDisk {
    /// The same open file as the device beneath, for `fstat`.
    stat: File,
    quota: Option<Arc<SpaceQuota>>,
    /// Bytes of the file charged to the quota.
    charged: AtomicU64,
}

impl FileDisk {
    /// The file as a device, its allocated space charged to `quota`.
    fn layer(file: File, size: u64, quota: Option<Arc<SpaceQuota>>) -> Result<Layer<Self>> {
        let stat = file
            .try_clone()
            .map_err(|e| Error::io("duplicating the temp file's descriptor", e))?;
        let disk = FileDisk {
            stat,
            quota,
            charged: AtomicU64::new(0),
        };
        disk.recharge()?;
        let dev: Arc<dyn BlockDev> = Arc::new(crate::FileDev::from_file(file, size, true));
        Ok(Layer::new(disk, dev))
    }

    /// Bring the quota charge in line with the file's allocated space.
    /// Fails with `NoSpace` if the file now takes more than is left (the
    /// charge is taken anyway: the space is used).
    fn recharge(&self) -> Result<()> {
        let Some(q) = &self.quota else { return Ok(()) };
        let now = self
            .stat
            .metadata()
            .map_err(|e| Error::io("fstat of the temp file", e))?
            .blocks()
            * 512;
        let before = self.charged.swap(now, Ordering::AcqRel);
        if now > before {
            if !q.try_take(now - before) {
                q.force_take(now - before);
                return Err(q.used_up());
            }
        } else {
            q.give(before - now);
        }
        Ok(())
    }
}

impl Drop for FileDisk {
    fn drop(&mut self) {
        if let Some(q) = &self.quota {
            q.give(*self.charged.get_mut());
        }
    }
}

/// Every change to the file may change its allocated space: recharge.
impl Filter for FileDisk {
    fn write_at(&self, next: &dyn BlockDev, buf: &[u8], offset: u64) -> Result<()> {
        if let Some(q) = &self.quota {
            // The file system decides what a write allocates; once the
            // budget is used up, writes are refused (the last one may go a
            // little over, which `recharge` accounts for).
            if q.used() >= q.limit() {
                return Err(q.used_up().at(offset));
            }
        }
        next.write_at(buf, offset)?;
        self.recharge()
    }

    fn trim(&self, next: &dyn BlockDev, offset: u64, len: u64) -> Result<()> {
        next.trim(offset, len)?;
        self.recharge()
    }

    fn write_zeroes(
        &self,
        next: &dyn BlockDev,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<()> {
        next.write_zeroes(offset, len, flags)?;
        self.recharge()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synth::ExtentList;

    fn blank(size: u64) -> Box<Synthesize> {
        Box::new(move |_id| Ok(Arc::new(crate::ZeroDev::new(size)) as Arc<dyn BlockDev>))
    }

    fn opts(dir: &std::path::Path, max_clients: usize, max_disk: Option<u64>) -> TmpdiskOptions {
        TmpdiskOptions {
            size: 1 << 20,
            dir: dir.to_path_buf(),
            max_clients,
            max_disk,
            description: "test".into(),
            command_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn each_open_is_a_separate_disk_and_the_client_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let ex = TmpdiskExport::new(
            opts(dir.path(), 2, None),
            Initializer::Synthesized(blank(1 << 20)),
        );
        assert!(!ex.caps().contains(Caps::MULTI_CONN));
        let a = ex.open().unwrap();
        let b = ex.open().unwrap();
        a.write_at(b"aaaa", 4096).unwrap();
        b.write_at(b"bbbb", 4096).unwrap();
        let mut buf = [0u8; 4];
        a.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"aaaa");
        b.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"bbbb");
        let err = ex.open().unwrap_err();
        assert!(err.to_string().contains("--max-clients 2"), "{err}");
        drop(a);
        let c = ex.open().unwrap();
        c.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, [0; 4], "a new client sees a fresh disk");
        assert_eq!(ex.clients(), 2);
    }

    /// A fragmented "filesystem" (zeros, metadata, zeros, metadata ...), as
    /// the synthesized ones are.
    fn fragmented(size: u64) -> Box<Synthesize> {
        Box::new(move |_id| {
            let mut b = synth::RegionMapBuilder::new();
            let mut at = 0;
            while at + 12_288 <= size {
                b.push("gap", 8192, synth::Backing::Zero)?;
                b.push_bytes("meta", vec![0xC0u8; 4096])?;
                at += 12_288;
            }
            b.pad_to(size)?;
            Ok(Arc::new(b.finish()) as Arc<dyn BlockDev>)
        })
    }

    #[test]
    fn a_written_tmpdisk_disk_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let ex = TmpdiskExport::new(
            opts(dir.path(), 2, None),
            Initializer::Synthesized(fragmented(size)),
        );
        let disk = ex.open().unwrap();
        let mut expected = vec![0u8; size as usize];
        disk.read_at(&mut expected, 0).unwrap();
        for (at, len) in [
            (0usize, 512usize),
            (9000, 100),
            (200_000, 70_000),
            (size as usize - 10, 10),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 250) as u8 + 1).collect();
            disk.write_at(&data, at as u64).unwrap();
            expected[at..at + len].copy_from_slice(&data);
        }
        disk.write_zeroes(400_000, 50_000, synth::ZeroFlags::default())
            .unwrap();
        expected[400_000..450_000].fill(0);
        let bounds: Vec<u64> = (0..size / 4096).map(|i| i * 4096).collect();
        synth::testing::check_dev(&*disk, &expected, &bounds);
    }

    #[test]
    fn the_disk_budget_gives_enospc_and_is_returned_on_disconnect() {
        let dir = tempfile::tempdir().unwrap();
        let ex = TmpdiskExport::new(
            opts(dir.path(), 4, Some(64 << 10)),
            Initializer::Synthesized(blank(1 << 20)),
        );
        let a = ex.open().unwrap();
        a.write_at(&[1u8; 48 << 10], 0).unwrap();
        let b = ex.open().unwrap();
        b.write_at(&[2u8; 16 << 10], 0).unwrap();
        let err = b.write_at(&[2u8; 4096], 512 << 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        // Rewriting what a client already has still works.
        a.write_at(&[3u8; 4096], 0).unwrap();
        // Trim gives space back.
        a.trim(0, 16 << 10).unwrap();
        b.write_at(&[2u8; 4096], 512 << 10).unwrap();
        drop(a);
        drop(b);
        assert_eq!(ex.disk_used(), Some(0));
    }

    #[test]
    fn a_command_makes_the_disk_and_its_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ex = TmpdiskExport::new(
            opts(dir.path(), 4, None),
            Initializer::Command {
                script: "printf 'made by %s %s %s' \"$type\" \"$label\" \"$size\" | dd of=\"$disk\" conv=notrunc 2>/dev/null".into(),
                kind: "ext4".into(),
                label: "it's".into(),
            },
        );
        let d = ex.open().unwrap();
        let mut buf = [0u8; 27];
        d.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"made by ext4 it's 1048576\0\0");
        // The temp file is unlinked: the directory stays empty.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut ext = ExtentList::new(0);
        d.extents(0, 1 << 20, &mut ext).unwrap();
        assert!(ext
            .iter_offsets()
            .any(|(_, e)| e.kind == synth::ExtentKind::Hole));

        // A command printing 20 MB on one line is logged (capped), not kept.
        let chatty = TmpdiskExport::new(
            opts(dir.path(), 4, None),
            Initializer::Command {
                script: "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo done".into(),
                kind: "ext4".into(),
                label: String::new(),
            },
        );
        chatty.open().unwrap();

        let bad = TmpdiskExport::new(
            opts(dir.path(), 4, None),
            Initializer::Command {
                script: "echo 'mkfs: no such luck' >&2; exit 3".into(),
                kind: "xfs".into(),
                label: String::new(),
            },
        );
        let err = bad.open().unwrap_err().to_string();
        assert!(err.contains("no such luck") && err.contains('3'), "{err}");
        assert_eq!(bad.clients(), 0, "a failed open gives its slot back");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
