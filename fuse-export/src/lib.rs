//! A disksynth device as one file in a FUSE mount, for machines with FUSE
//! and loop devices but no NBD client (containers, CI runners, most cloud
//! VMs): `MOUNTPOINT/disk` holds the device's bytes, reads and writes go to
//! the device, `lseek(SEEK_DATA/SEEK_HOLE)` answers from its extents.
//!
//! The mount is one client of the export: the caller opens the device once
//! and hands it to [`mount`].
//!
//! The FUSE protocol is spoken by `fuser` (0.18): its `&self` filesystem
//! trait runs on several request loops at once (one cloned `/dev/fuse`
//! descriptor each, `FUSE_DEV_IOC_CLONE`), it mounts with mount(2) as root
//! and through `fusermount3` otherwise, and it brings no C library.
//! `fuse-backend-rs` (0.14) also has multi-threaded loops but is built for
//! virtio-fs: its default features pull in `vmm-sys-util` and `caps`, its
//! file API is zero-copy reader/writer traits meant for guest memory, and
//! it mounts only as root (or through `fusermount3` in a separate mode).
//! For one file of fixed size fuser is the smaller fit.

mod fs;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use synth::BlockDev;

pub use fs::{errno_of, MAX_IO};

/// The file's name when none is given.
pub const DEFAULT_NAME: &str = "disk";

/// How a device is mounted.
#[derive(Debug, Clone)]
pub struct Options {
    /// The file's name in the mount's root directory.
    pub name: OsString,
    /// Writes reach the device (the mount is read-only otherwise).
    pub writable: bool,
    /// Request loops: requests served at once.
    pub threads: usize,
    /// Every read goes to the device, past the page cache (`FOPEN_DIRECT_IO`):
    /// for a writable disk that another exporter (NBD) writes too, whose
    /// writes the kernel's cache of this file would not see.
    pub uncached: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: DEFAULT_NAME.into(),
            writable: false,
            threads: 8,
            uncached: false,
        }
    }
}

/// What can go wrong mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The mountpoint does not exist.
    #[error("{0}: no such directory (the mountpoint must exist)")]
    NoMountpoint(PathBuf),
    /// The mountpoint is not a directory.
    #[error("{0}: not a directory (the mountpoint must be one)")]
    NotADirectory(PathBuf),
    /// A FUSE mount whose server died (killed with SIGKILL) is still there.
    #[error("{0}: a dead FUSE mount is there (its server was killed?): unmount it first (umount {0}, or fusermount3 -u {0})")]
    DeadMount(PathBuf),
    /// The mountpoint could not be looked at.
    #[error("{path}: cannot use it as a mountpoint")]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file name is not one path component.
    #[error("{0:?} is not a file name (one path component: not empty, no '/', not . or ..)")]
    BadName(OsString),
    /// mount(2) or fusermount3 failed.
    #[error("mounting FUSE on {path}{hint}")]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// What likely helps.
        hint: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// umount(2) or fusermount3 -u failed.
    #[error("unmounting {path}")]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The request loops could not be started.
    #[error("starting the FUSE request loop")]
    Thread(#[source] io::Error),
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted; the request loops end.
    Done,
    /// The mount was in use (a loop device, an open file): it is detached
    /// (gone from the namespace at once) and the request loops serve its
    /// users until the last one lets go.
    Detached,
    /// It was gone already (unmounted from outside).
    Gone,
}

/// Whether the request loops have ended, with a way to wait for it.
#[derive(Debug, Default)]
struct Ended {
    done: Mutex<bool>,
    cond: Condvar,
}

/// A mounted device. Dropping it unmounts (detaching if busy) and waits a
/// little for the request loops to end.
#[derive(Debug)]
pub struct FuseMount {
    mountpoint: PathBuf,
    file: PathBuf,
    unmounter: SessionUnmounter,
    ended: Arc<Ended>,
    thread: Option<JoinHandle<()>>,
    unmounted: bool,
}

/// Mount `dev` as `mountpoint/NAME` and serve it on background threads.
/// `on_end` runs once when the request loops end: after [`FuseMount::unmount`],
/// or when someone else unmounts it.
pub fn mount(
    dev: Arc<dyn BlockDev>,
    mountpoint: &Path,
    opts: &Options,
    on_end: Box<dyn FnOnce() + Send>,
) -> Result<FuseMount, FuseError> {
    check_name(&opts.name)?;
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(FuseError::NotADirectory(mountpoint.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FuseError::NoMountpoint(mountpoint.to_owned()))
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => {
            return Err(FuseError::DeadMount(mountpoint.to_owned()))
        }
        Err(e) => {
            return Err(FuseError::Mountpoint {
                path: mountpoint.to_owned(),
                source: e,
            })
        }
    }
    // Absolute, so that unmounting works whatever the working directory
    // becomes, and the printed path is usable from anywhere.
    let mountpoint = std::path::absolute(mountpoint).map_err(|e| FuseError::Mountpoint {
        path: mountpoint.to_owned(),
        source: e,
    })?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("disksynth".into()),
        MountOption::Subtype("disksynth".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        // The kernel checks the file's mode (0444 read-only, 0644 writable)
        // before a request reaches us.
        MountOption::DefaultPermissions,
        if opts.writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
    ];
    config.acl = SessionACL::Owner;
    config.n_threads = Some(opts.threads.clamp(1, 64));
    config.clone_fd = true;
    let fs = fs::DiskFs::new(dev, opts.name.clone(), opts.writable, opts.uncached);
    let mut session = Session::new(fs, &mountpoint, &config).map_err(|e| FuseError::Mount {
        hint: if e.kind() == io::ErrorKind::NotFound {
            " (no /dev/fuse, or no fusermount3: load the fuse module or install fuse3)"
        } else if e.kind() == io::ErrorKind::PermissionDenied && dev_fuse_refused() {
            // fusermount3 opens the device with the user's own rights too
            // (libfuse util/fusermount.c drops to the user's fsuid first),
            // so its mode is the system's word on who may use FUSE.
            " (/dev/fuse is closed to this user: FUSE is for root only on this system; run as root, \
             or open the device to users as udev's default rule does: chmod 0666 /dev/fuse)"
        } else if e.kind() == io::ErrorKind::PermissionDenied {
            " (not allowed: run as root, or install fuse3 for fusermount3)"
        } else {
            ""
        },
        path: mountpoint.clone(),
        source: e,
    })?;
    let unmounter = session.unmount_callable();
    let ended = Arc::new(Ended::default());
    let thread = {
        let ended = ended.clone();
        let path = mountpoint.clone();
        std::thread::Builder::new()
            .name("fuse".into())
            .spawn(move || {
                if let Err(e) = session.run() {
                    log::warn!("FUSE on {}: {e}", path.display());
                }
                *ended.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
                ended.cond.notify_all();
                on_end();
            })
            .map_err(FuseError::Thread)?
    };
    Ok(FuseMount {
        file: mountpoint.join(&opts.name),
        mountpoint,
        unmounter,
        ended,
        thread: Some(thread),
        unmounted: false,
    })
}

/// Whether this process, not root, may not open `/dev/fuse`.
fn dev_fuse_refused() -> bool {
    !rustix::process::geteuid().is_root()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_err_and(|e| e.kind() == io::ErrorKind::PermissionDenied)
}

/// One path component: not empty, no `/` or NUL, not `.` or `..`, at most
/// 255 bytes (NAME_MAX).
fn check_name(name: &OsStr) -> Result<(), FuseError> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty()
        || b.len() > 255
        || b.contains(&b'/')
        || b.contains(&0)
        || b == b"."
        || b == b".."
    {
        return Err(FuseError::BadName(name.to_owned()));
    }
    Ok(())
}

impl FuseMount {
    /// The file's path (`MOUNTPOINT/NAME`, absolute).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The mountpoint (absolute).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the request loops have ended.
    pub fn ended(&self) -> bool {
        *self.ended.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unmount; a mount in use is detached instead (see [`Unmounted`]).
    pub fn unmount(&mut self) -> Result<Unmounted, FuseError> {
        if self.unmounted || self.ended() {
            self.unmounted = true;
            return Ok(Unmounted::Gone);
        }
        self.unmounted = true;
        match self.unmounter.unmount() {
            Ok(()) => Ok(Unmounted::Done),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
                    .map_err(|e| FuseError::Unmount {
                        path: self.mountpoint.clone(),
                        source: e.into(),
                    })?;
                Ok(Unmounted::Detached)
            }
            Err(e) => Err(FuseError::Unmount {
                path: self.mountpoint.clone(),
                source: e,
            }),
        }
    }

    /// Wait until the request loops end, at most `limit`; whether they did.
    pub fn wait(&mut self, limit: Option<Duration>) -> bool {
        let deadline = limit.map(|l| Instant::now() + l);
        let mut done = self.ended.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = match deadline {
                None => self
                    .ended
                    .cond
                    .wait(done)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.ended
                        .cond
                        .wait_timeout(done, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        drop(done);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        true
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        match self.unmount() {
            // The loops end at once; bounded all the same.
            Ok(Unmounted::Done) => {
                let _ = self.wait(Some(Duration::from_secs(5)));
            }
            Ok(Unmounted::Detached) => log::warn!(
                "{} was in use: detached; its users lose it when this process exits",
                self.mountpoint.display()
            ),
            Ok(Unmounted::Gone) => {}
            Err(e) => log::warn!("{e}: {}", e.source_text()),
        }
    }
}

impl FuseError {
    /// The underlying cause's text, for one-line log messages.
    fn source_text(&self) -> String {
        std::error::Error::source(self).map_or_else(String::new, |s| s.to_string())
    }
}

#[cfg(test)]
mod tests;
