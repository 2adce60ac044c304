//! [`pack`]: compress a raw image into a block-indexed `.xz` file that
//! [`super::XzDev`] serves with random access.
//!
//! liblzma's multithreaded Stream encoder cuts the input into Blocks of
//! exactly `block_size` uncompressed bytes (the last one shorter), encodes
//! them on `threads` threads, and records every Block in the Index (§4):
//! just what random access needs. The output appears only when complete:
//! it is written to a temp file beside it, synced and renamed.

use std::fs::File;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::path::Path;

use liblzma::stream::{Action, MtStreamBuilder, Status, Stream};

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
            block_size: 16 << 20,
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

/// Input read per encoder call.
const CHUNK: usize = 1 << 20;

fn encode_error(e: liblzma::stream::Error) -> XzError {
    XzError::Encode {
        what: e.to_string(),
    }
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
    let in_err = |source| XzError::File {
        path: input.to_path_buf(),
        source,
    };
    let out_err = |source| XzError::File {
        path: output.to_path_buf(),
        source,
    };
    let mut src = File::open(input).map_err(in_err)?;
    let permissions = src.metadata().map_err(in_err)?.permissions();

    let check = match opts.check {
        Check::None => liblzma::stream::Check::None,
        Check::Crc32 => liblzma::stream::Check::Crc32,
        Check::Crc64 => liblzma::stream::Check::Crc64,
        Check::Sha256 => liblzma::stream::Check::Sha256,
    };
    let mut encoder = MtStreamBuilder::new()
        .threads(threads)
        .block_size(opts.block_size)
        .preset(opts.preset)
        .check(check)
        // Block until there is output rather than spin.
        .timeout_ms(0)
        .encoder()
        .map_err(encode_error)?;

    // A hidden temp file in the output's directory, so the rename is
    // atomic; dropped (deleted) on any error below.
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(out_err)?;

    let mut inbuf = vec![0u8; CHUNK];
    let mut outbuf = vec![0u8; CHUNK];
    let mut input_bytes = 0u64;
    loop {
        let n = read_full(&mut src, &mut inbuf).map_err(in_err)?;
        let finish = n == 0;
        feed(
            &mut encoder,
            &inbuf[..n],
            &mut outbuf,
            finish,
            tmp.as_file_mut(),
        )
        .map_err(|e| match e {
            Fed::Encode(e) => encode_error(e),
            Fed::Write(e) => out_err(e),
        })?;
        if finish {
            break;
        }
        input_bytes += n as u64;
        progress(input_bytes);
    }

    let file = tmp.as_file();
    file.set_permissions(permissions).map_err(out_err)?;
    file.sync_all().map_err(out_err)?;
    let output_bytes = encoder.total_out();
    tmp.persist(output).map_err(|e| out_err(e.error))?;
    Ok(PackStats {
        input_bytes,
        output_bytes,
        blocks: input_bytes.div_ceil(opts.block_size),
        threads,
    })
}

/// Why feeding the encoder failed.
enum Fed {
    Encode(liblzma::stream::Error),
    Write(std::io::Error),
}

/// Give `data` to the encoder (all of it), or finish the Stream, writing
/// what comes out to `out`.
fn feed(
    encoder: &mut Stream,
    mut data: &[u8],
    outbuf: &mut [u8],
    finish: bool,
    out: &mut File,
) -> Result<(), Fed> {
    let action = if finish { Action::Finish } else { Action::Run };
    loop {
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
