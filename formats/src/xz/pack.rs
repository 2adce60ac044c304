//! [`pack`]: compress a raw image into a block-indexed `.xz` file that
//! [`super::XzDev`] serves with random access.
//!
//! liblzma's multithreaded Stream encoder cuts the input into Blocks of
//! exactly `block_size` uncompressed bytes (the last one shorter), encodes
//! them on `threads` threads, and records every Block in the Index (§4):
//! just what random access needs. The input is read as a stream (a pipe
//! works: its size is never needed). A file output appears only when
//! complete: it is written to a temp file beside it, synced and renamed;
//! standard output gets the bytes as they are made.

use std::fs::File;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use liblzma::stream::{Action, MtStreamBuilder, Status, Stream};

use super::dev::HARD_MAX_BLOCK;
use super::error::XzError;
use super::Check;

/// How [`pack`] compresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// Encoder threads; 0 means one per available core.
    pub threads: u32,
    /// Uncompressed bytes per Block: the unit a reader decodes.
    pub block_size: u64,
    /// xz preset, 0 (fast) to 9 (small).
    pub preset: u32,
    /// Integrity check of every Block (§3.4).
    pub check: Check,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            threads: 0,
            // 4 MiB: a read costs a whole block (see `disksynth pack --help`).
            block_size: 4 << 20,
            preset: 6,
            check: Check::Crc64,
        }
    }
}

/// What [`pack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackStats {
    /// Bytes read from the input.
    pub input_bytes: u64,
    /// Bytes of the `.xz` file written.
    pub output_bytes: u64,
    /// Blocks in it.
    pub blocks: u64,
    /// Encoder threads used.
    pub threads: u32,
}

/// Largest [`PackOptions::block_size`]: the largest Block
/// [`super::XzDev`] serves (each is decoded whole into memory; past its
/// 64 MiB default `max_block` only with `allow_big_blocks`). liblzma
/// itself would take up to 2^64 / 16384 bytes, which no machine holds
/// `threads` times over.
pub const MAX_BLOCK_SIZE: u64 = HARD_MAX_BLOCK;

/// `n` bytes for messages: "1 TiB", "16 MiB", "1.5 GiB".
fn human(n: u64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut v = n as f64;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else if v.fract() == 0.0 {
        format!("{v} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Memory this process may still use, as far as it can tell: the least of
/// the memory available on the machine (`MemAvailable`), its cgroup's
/// limit and its address-space limit (`ulimit -v`). `None` if none is
/// known.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    // cgroup v2: "max" or a byte count.
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let rlimit = rustix::process::getrlimit(rustix::process::Resource::As).current;
    [meminfo, cgroup, rlimit].into_iter().flatten().min()
}

/// Check `block_size` × `threads` against liblzma's limits and this
/// machine's memory before the encoder tries to allocate it (liblzma
/// would say only "cannot allocate memory", possibly after the first
/// blocks).
fn check_memory(
    builder: &MtStreamBuilder,
    opts: &PackOptions,
    threads: u32,
) -> Result<(), XzError> {
    if opts.block_size > MAX_BLOCK_SIZE {
        return Err(XzError::InvalidOption(format!(
            "a block size of {} is more than {}, the largest block `disksynth xz` serves \
             (and only with --allow-big-blocks past its 64 MiB --max-block): every read \
             decodes a whole block. Use --block-size 4M (the default): small blocks make \
             fast random access",
            human(opts.block_size),
            human(MAX_BLOCK_SIZE)
        )));
    }
    let needed = builder.memusage();
    if needed == u64::MAX {
        return Err(XzError::InvalidOption(format!(
            "liblzma refuses blocks of {} with preset {} on {threads} threads",
            human(opts.block_size),
            opts.preset
        )));
    }
    if let Some(available) = available_memory().filter(|&a| needed > a) {
        // Each thread holds a block of input and one of output.
        let per_thread = needed / u64::from(threads.max(1));
        let fit = (available / per_thread.max(1)).min(u64::from(threads));
        let hint = if fit >= 1 {
            format!("use --threads {fit} or a smaller --block-size (4M is the default)")
        } else {
            "use a smaller --block-size (4M is the default)".to_string()
        };
        return Err(XzError::InvalidOption(format!(
            "compressing blocks of {} on {threads} thread(s) at preset {} needs about {} of \
             memory, more than the {} available: {hint}",
            human(opts.block_size),
            opts.preset,
            human(needed),
            human(available)
        )));
    }
    Ok(())
}

/// Input read per encoder call.
const CHUNK: usize = 1 << 20;

/// How often (ms) a call into the encoder comes back to check `stop`.
const STOP_CHECK_MS: u32 = 100;

fn encode_error(e: liblzma::stream::Error) -> XzError {
    XzError::Encode {
        what: e.to_string(),
    }
}

/// Where [`pack_with`] reads the raw image.
#[derive(Debug, Clone, Copy)]
pub enum PackInput<'a> {
    /// A file (or anything `open` reads: a FIFO, a device).
    Path(&'a Path),
    /// Standard input, read to its end (its size need not be known).
    Stdin,
}

/// Where [`pack_with`] writes the `.xz` file.
#[derive(Debug, Clone, Copy)]
pub enum PackOutput<'a> {
    /// A file, replaced only when complete (temp file beside it, synced,
    /// renamed).
    Path(&'a Path),
    /// Standard output, as it is produced (no temp file, no rename).
    Stdout,
}

/// Compress `input` into the `.xz` file `output` with Blocks of
/// `opts.block_size` bytes, on `opts.threads` threads. `progress` is told
/// the input bytes consumed so far. On error nothing is left at `output`
/// (an existing file there is replaced only on success).
pub fn pack(
    input: &Path,
    output: &Path,
    opts: &PackOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<PackStats, XzError> {
    pack_with(
        PackInput::Path(input),
        PackOutput::Path(output),
        opts,
        &AtomicBool::new(false),
        progress,
    )
}

/// [`pack`] from a file or standard input to a file or standard output,
/// stopping with [`XzError::Interrupted`] soon after `stop` is raised (it is
/// checked for every MiB of input). A file output is then not written (the
/// temp file is removed); standard output keeps what was written.
///
/// The input is a stream: its size need not be known in advance (a pipe).
/// liblzma's multithreaded encoder cuts it into Blocks of `block_size` and
/// records each in the Index, so the result has the same random access
/// whatever the input was.
pub fn pack_with(
    input: PackInput<'_>,
    output: PackOutput<'_>,
    opts: &PackOptions,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<PackStats, XzError> {
    if opts.block_size == 0 {
        return Err(XzError::InvalidOption(
            "the block size must not be zero".into(),
        ));
    }
    if opts.preset > 9 {
        return Err(XzError::InvalidOption(format!(
            "xz presets go from 0 to 9, not {}",
            opts.preset
        )));
    }
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };
    let in_path = match input {
        PackInput::Path(p) => p,
        PackInput::Stdin => Path::new("-"),
    };
    let out_path = match output {
        PackOutput::Path(p) => p,
        PackOutput::Stdout => Path::new("-"),
    };
    let in_err = |source| XzError::File {
        path: in_path.to_path_buf(),
        source,
    };
    let out_err = |source| XzError::File {
        path: out_path.to_path_buf(),
        source,
    };
    // The descriptors themselves, not std's buffered standard streams.
    let mut src = match input {
        PackInput::Path(p) => File::open(p).map_err(in_err)?,
        PackInput::Stdin => File::from(
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(in_err)?,
        ),
    };
    // The output gets a regular input's permissions; a pipe's (0600) or a
    // device's say nothing about the image: an ordinary file's then.
    let permissions = {
        let meta = src.metadata().map_err(in_err)?;
        if meta.is_file() {
            meta.permissions()
        } else {
            std::fs::Permissions::from_mode(0o644)
        }
    };

    let check = match opts.check {
        Check::None => liblzma::stream::Check::None,
        Check::Crc32 => liblzma::stream::Check::Crc32,
        Check::Crc64 => liblzma::stream::Check::Crc64,
        Check::Sha256 => liblzma::stream::Check::Sha256,
    };
    let mut builder = MtStreamBuilder::new();
    builder
        .threads(threads)
        .block_size(opts.block_size)
        .preset(opts.preset)
        .check(check)
        // Wait for the encoder threads at most this long per call, so a
        // raised `stop` is seen within it (a 16 MiB block at preset 9 takes
        // seconds), yet never spin.
        .timeout_ms(STOP_CHECK_MS);
    check_memory(&builder, opts, threads)?;
    let mut encoder = builder.encoder().map_err(encode_error)?;

    // A file output goes to a hidden temp file in its directory, so the
    // rename is atomic; dropped (deleted) on any error below.
    let mut tmp = match output {
        PackOutput::Path(output) => {
            let (dir, prefix) = temp_prefix(output);
            Some(
                tempfile::Builder::new()
                    .prefix(&prefix)
                    .suffix(".tmp")
                    .tempfile_in(dir)
                    .map_err(out_err)?,
            )
        }
        PackOutput::Stdout => None,
    };
    let mut stdout = match &tmp {
        Some(_) => None,
        None => Some(File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(out_err)?,
        )),
    };

    let mut inbuf = vec![0u8; CHUNK];
    let mut outbuf = vec![0u8; CHUNK];
    let mut input_bytes = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(XzError::Interrupted);
        }
        let n = read_full(&mut src, &mut inbuf).map_err(in_err)?;
        let finish = n == 0;
        // A signal that ended the writer of a pipe arrives with its EOF:
        // a cut input must not become a complete-looking file.
        if finish && stop.load(Ordering::Relaxed) {
            return Err(XzError::Interrupted);
        }
        let out = match (&mut tmp, &mut stdout) {
            (Some(t), _) => t.as_file_mut(),
            (None, Some(s)) => s,
            (None, None) => unreachable!("one output is open"),
        };
        feed(&mut encoder, &inbuf[..n], &mut outbuf, finish, out, stop).map_err(|e| match e {
            Fed::Encode(e) => encode_error(e),
            Fed::Write(e) => out_err(e),
            Fed::Stopped => XzError::Interrupted,
        })?;
        if finish {
            break;
        }
        input_bytes += n as u64;
        progress(input_bytes);
    }

    let output_bytes = encoder.total_out();
    if let (Some(tmp), PackOutput::Path(output)) = (tmp, output) {
        let file = tmp.as_file();
        file.set_permissions(permissions).map_err(out_err)?;
        file.sync_all().map_err(out_err)?;
        if stop.load(Ordering::Relaxed) {
            return Err(XzError::Interrupted);
        }
        tmp.persist(output).map_err(|e| out_err(e.error))?;
    }
    Ok(PackStats {
        input_bytes,
        output_bytes,
        blocks: input_bytes.div_ceil(opts.block_size),
        threads,
    })
}

/// The prefix of the hidden temp file [`pack`] writes `output` under, in
/// `output`'s directory: `.NAME.PID.` (then random characters and `.tmp`).
/// The process id lets a caller that must exit at once remove its own temp
/// file and nobody else's.
pub fn temp_prefix(output: &Path) -> (PathBuf, String) {
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, format!(".{name}.{}.", std::process::id()))
}

/// Why feeding the encoder failed.
enum Fed {
    Encode(liblzma::stream::Error),
    Write(std::io::Error),
    Stopped,
}

/// Give `data` to the encoder (all of it), or finish the Stream, writing
/// what comes out to `out`.
fn feed(
    encoder: &mut Stream,
    mut data: &[u8],
    outbuf: &mut [u8],
    finish: bool,
    out: &mut File,
    stop: &AtomicBool,
) -> Result<(), Fed> {
    let action = if finish { Action::Finish } else { Action::Run };
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Fed::Stopped);
        }
        let (in_before, out_before) = (encoder.total_in(), encoder.total_out());
        let status = encoder.process(data, outbuf, action).map_err(Fed::Encode)?;
        let used = (encoder.total_in() - in_before) as usize;
        let made = (encoder.total_out() - out_before) as usize;
        data = &data[used..];
        out.write_all(&outbuf[..made]).map_err(Fed::Write)?;
        let done = if finish {
            matches!(status, Status::StreamEnd)
        } else {
            data.is_empty()
        };
        if done {
            return Ok(());
        }
    }
}

/// Read until `buf` is full or the file ends; the number of bytes read.
fn read_full(src: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
