//! Remote and compressed sources: `http URL`, `xz FILE|URL`, and `pack`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use formats::detect::ImageFormat;
use formats::qcow2::{QcowDev, QcowError, QcowOptions};
use formats::xz::{XzDev, XzOptions};
use sources::http::{AuthSource, HttpDev, HttpOptions, S3Options};
use synth::BlockDev;

use crate::args::{HttpArgs, Qcow2Args, XzArgs};
use crate::interrupt::{Interrupt, Target};
use synth::size::Size;

/// Whether `s` names an HTTP(S) resource or an S3 object rather than a local path.
pub(crate) fn is_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("s3://")
}

/// `url` without `user:password@` (HttpDev refuses credentials in URLs;
/// the error context must not repeat them either) and without the
/// signature of a presigned URL.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => sources::http::redact_url(&format!("{scheme}://***@{}", &rest[at + 1..])),
        None => sources::http::redact_url(url),
    }
}

/// HTTP client options from the command line. Credentials come from an
/// environment variable or a file, never from the command line itself.
fn http_options(a: &HttpArgs) -> Result<HttpOptions> {
    let mut headers = Vec::with_capacity(a.headers.len());
    for h in &a.headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?}: expected 'Name: value'");
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    // Read at open: the same file is an Authorization line for http(s):// and an access key
    // for s3://.
    let auth_source = match (&a.auth_env, &a.auth_file) {
        (Some(var), _) => Some(AuthSource::Env(var.clone())),
        (None, Some(path)) => Some(AuthSource::File(path.clone())),
        (None, None) => None,
    };
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if a.speed_limit.0 > 0 && a.speed_time == 0 {
        bail!("--speed-time must be at least 1 (or turn the limit off with --speed-limit 0)");
    }
    Ok(HttpOptions {
        headers,
        auth_source,
        s3: S3Options {
            region: a.region.clone(),
            endpoint: a.endpoint.clone(),
            profile: a.profile.clone(),
            no_sign_request: a.no_sign_request,
        },
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        read_timeout: Duration::from_secs(a.timeout.max(1)),
        speed_limit: a.speed_limit.0,
        speed_time: Duration::from_secs(a.speed_time),
        request_timeout: (a.request_timeout > 0).then(|| Duration::from_secs(a.request_timeout)),
        retries: a.retries,
        max_in_flight: a.connections,
        readahead: a.readahead.0,
        cache_dir: a.cache_dir.clone(),
        ca_certs: a.ca_certs.clone(),
        ..HttpOptions::default()
    })
}

/// `disksynth http URL`: the remote file as a read-only device.
pub(crate) fn http(url: &str, a: &HttpArgs) -> Result<Arc<dyn BlockDev>> {
    if !is_url(url) {
        bail!("{url:?} is not an http://, https:// or s3:// URL");
    }
    let t0 = std::time::Instant::now();
    let dev = HttpDev::open(url, &http_options(a)?).context("opening the remote image")?;
    log::info!(
        "{}: {} ({} ms to open)",
        dev.url(),
        Size(dev.size()),
        t0.elapsed().as_millis()
    );
    let dev = Arc::new(dev);
    crate::web::http_figures(&dev);
    Ok(dev)
}

/// `disksynth xz FILE|URL`: random access into a block-indexed .xz, one
/// decoded-block cache for all clients.
pub(crate) fn xz(source: &str, x: &XzArgs, h: &HttpArgs) -> Result<Arc<dyn BlockDev>> {
    let t0 = std::time::Instant::now();
    // The xz view fetches whole blocks (and decodes the next one ahead)
    // itself; an HTTP read-ahead window on top would only split block
    // fetches into several requests.
    let compressed = open_bytes(source, h, false, ".xz file")?;
    let opts = XzOptions {
        cache_bytes: x.cache_size.0,
        max_block: x.max_block.0,
        allow_big_blocks: x.allow_big_blocks,
        readahead: !x.no_readahead,
        max_index: x.max_index.0,
    };
    let source = redacted(source);
    let dev = XzDev::open(compressed, &opts).with_context(|| format!("reading {source}"))?;
    let index = dev.index();
    log::info!(
        "{source}: {} in {} blocks (largest {}), {} compressed, {} stream(s); index read in {} ms ({} of memory)",
        Size(index.uncompressed_size()),
        index.block_count(),
        Size(index.largest_block()),
        Size(index.compressed_size()),
        index.stream_count(),
        t0.elapsed().as_millis(),
        Size(index.heap_bytes() as u64)
    );
    let dev = Arc::new(dev);
    crate::web::xz_figures(&dev);
    Ok(dev)
}

/// The bytes of a local path or an http(s) URL as a read-only device
/// (`what` names it in errors). `readahead: false` turns the HTTP
/// read-ahead off for views that fetch whole units themselves.
pub(crate) fn open_bytes(
    source: &str,
    h: &HttpArgs,
    readahead: bool,
    what: &str,
) -> Result<Arc<dyn BlockDev>> {
    if is_url(source) {
        let mut opts = http_options(h)?;
        if !readahead {
            opts.readahead = 0;
        }
        let dev = Arc::new(
            HttpDev::open(source, &opts)
                .with_context(|| format!("opening the remote {what} {}", redacted(source)))?,
        );
        crate::web::http_figures(&dev);
        Ok(dev)
    } else {
        let dev = sources::FileDev::open(Path::new(source), false)
            .with_context(|| format!("opening {source}"))?;
        Ok(Arc::new(dev))
    }
}

/// `disksynth image FILE|URL`: the image served as its format's own
/// subcommand serves it, the format told by its magic
/// ([`formats::detect`]); a qcow2 inside a block-indexed xz is served as
/// qcow2 over the xz view.
pub(crate) fn image(
    source: &str,
    backing: &[String],
    x: &XzArgs,
    q: &Qcow2Args,
    h: &HttpArgs,
) -> Result<Arc<dyn BlockDev>> {
    let t0 = std::time::Instant::now();
    // Probed without read-ahead: an xz view wants none, and the others
    // reopen with it (one more HEAD, only for remote images).
    let bytes = open_bytes(source, h, false, "image")?;
    let shown = redacted(source);
    let format = probe(&bytes).with_context(|| format!("reading the start of {shown}"))?;
    log::info!("{shown}: {}", describe(format));
    let reopen = |bytes: Arc<dyn BlockDev>| -> Result<Arc<dyn BlockDev>> {
        if is_url(source) && h.readahead.0 > 0 {
            open_bytes(source, h, true, "image")
        } else {
            Ok(bytes)
        }
    };
    let refuse_backing = |what: &str| -> Result<()> {
        match backing.first() {
            Some(b) => bail!("{shown} is {what}: it has no backing file for --backing {b}"),
            None => Ok(()),
        }
    };
    match format {
        ImageFormat::Raw => {
            refuse_backing("a raw image")?;
            reopen(bytes)
        }
        ImageFormat::Qcow2 => qcow2_over(reopen(bytes)?, source, backing, q, h, t0),
        ImageFormat::Unsupported(u) => bail!("{shown} is {}", u.advice()),
        ImageFormat::Xz => {
            let opts = XzOptions {
                cache_bytes: x.cache_size.0,
                max_block: x.max_block.0,
                allow_big_blocks: x.allow_big_blocks,
                readahead: !x.no_readahead,
                max_index: x.max_index.0,
            };
            let xz =
                Arc::new(XzDev::open(bytes, &opts).with_context(|| format!("reading {shown}"))?);
            crate::web::xz_figures(&xz);
            let dev: Arc<dyn BlockDev> = xz;
            let inner = probe(&dev).with_context(|| format!("decoding the start of {shown}"))?;
            match inner {
                ImageFormat::Qcow2 => {
                    log::info!("{shown}: a qcow2 image inside the xz file");
                    qcow2_over(dev, source, backing, q, h, t0)
                }
                // An xz inside an xz is a file someone compressed twice; it
                // is served as what it is (its outer decoding), like raw.
                _ => {
                    refuse_backing("an xz image of a raw disk")?;
                    Ok(dev)
                }
            }
        }
    }
}

/// The format of the image in `dev`, from its first bytes.
fn probe(dev: &Arc<dyn BlockDev>) -> Result<ImageFormat> {
    let n = dev.size().min(formats::detect::PROBE_BYTES as u64) as usize;
    let mut head = vec![0u8; n];
    dev.read_at(&mut head, 0)?;
    Ok(formats::detect::detect(&head))
}

fn describe(f: ImageFormat) -> String {
    match f {
        ImageFormat::Raw => "no known magic: served as a raw disk".into(),
        ImageFormat::Unsupported(_) => "an unsupported format".into(),
        other => format!("{other} image"),
    }
}

/// Longest backing chain followed (QEMU has no fixed limit; real chains
/// are a handful of images, and each link costs an L1 table in memory).
const MAX_BACKING_DEPTH: usize = 16;

/// `disksynth qcow2 FILE|URL [--backing FILE|URL]...`: the guest disk of a
/// qcow2 image over its backing chain, `backing` nearest first.
pub(crate) fn qcow2(
    source: &str,
    backing: &[String],
    q: &Qcow2Args,
    h: &HttpArgs,
) -> Result<Arc<dyn BlockDev>> {
    if backing.len() > MAX_BACKING_DEPTH {
        bail!(
            "{} backing images given: chains of at most {MAX_BACKING_DEPTH} are followed",
            backing.len()
        );
    }
    let t0 = std::time::Instant::now();
    // Over HTTP the read-ahead stays: runs of compressed clusters are
    // fetched as one read, and sequential guest reads continue them.
    let file = open_bytes(source, h, true, "qcow2 image")?;
    qcow2_over(file, source, backing, q, h, t0)
}

/// The qcow2 image in `file` (named `source`) over `backing`.
fn qcow2_over(
    file: Arc<dyn BlockDev>,
    source: &str,
    backing: &[String],
    q: &Qcow2Args,
    h: &HttpArgs,
    t0: std::time::Instant,
) -> Result<Arc<dyn BlockDev>> {
    let source = redacted(source);
    let mut opts = QcowOptions {
        cache_bytes: q.cache_size.0,
        max_l1: q.max_l1.0,
        backing: None,
    };
    // Opened without a backing first: the image says whether it has one,
    // and which format it is in.
    let dev = match (QcowDev::open(file.clone(), &opts), backing.split_first()) {
        (Ok(dev), None) => dev,
        (Ok(_), Some((b, _))) => {
            bail!("{source} has no backing file, but --backing {b} was given")
        }
        (Err(QcowError::BackingNeeded { name, format }), Some((b, rest))) => {
            let bdev = open_bytes(b, h, true, "backing image")?;
            let as_qcow2 = match format.as_deref() {
                Some("qcow2") => true,
                Some("raw") => false,
                // Only when the image does not say: by the magic.
                None => {
                    let mut magic = [0u8; 4];
                    bdev.size() >= 4
                        && bdev.read_at(&mut magic, 0).is_ok()
                        && formats::qcow2::is_qcow2(&magic)
                }
                Some(f) => bail!(
                    "{source}: its backing file {name:?} is in format {f:?}; only raw and \
                     qcow2 backing images are served"
                ),
            };
            log::info!(
                "{source}: backing file {name:?} served from {} ({})",
                redacted(b),
                if as_qcow2 { "qcow2" } else { "raw" }
            );
            opts.backing = Some(if as_qcow2 {
                qcow2_over(bdev, b, rest, q, h, std::time::Instant::now())
                    .with_context(|| format!("opening the backing image {}", redacted(b)))?
            } else {
                if let Some(r) = rest.first() {
                    bail!(
                        "the backing image {} is raw: it has no backing file for --backing {r}",
                        redacted(b)
                    );
                }
                bdev
            });
            QcowDev::open(file, &opts).with_context(|| format!("reading {source}"))?
        }
        (Err(e), _) => return Err(e).with_context(|| format!("reading {source}")),
    };
    let i = dev.info();
    log::info!(
        "{source}: qcow2 v{}, {} in {} clusters ({} compressed){}, {} file; opened in {} ms",
        i.version,
        Size(i.size),
        Size(i.cluster_size),
        i.compression,
        if i.extended_l2 { ", extended L2" } else { "" },
        Size(i.file_size),
        t0.elapsed().as_millis()
    );
    let dev = Arc::new(dev);
    crate::web::qcow2_figures(&dev);
    Ok(dev)
}

/// `disksynth pack IN OUT`: a block-indexed .xz, multithreaded. `-` as IN
/// reads standard input (a pipe: size unknown), as OUT writes standard
/// output (no temp file). SIGINT/SIGTERM: exit 130/143, OUT not written.
pub(crate) fn pack(
    input: &Path,
    output: &Path,
    block_size: u64,
    threads: Option<u32>,
    preset: u32,
) -> Result<ExitCode> {
    use std::io::IsTerminal;
    use std::os::unix::fs::FileTypeExt;
    let from_stdin = input.as_os_str() == "-";
    let to_stdout = output.as_os_str() == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("refusing to write compressed data to a terminal; redirect standard output");
    }
    // A regular file's size is known (a progress bar); a pipe's is not.
    let size = if from_stdin {
        None
    } else {
        let meta =
            std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?;
        let t = meta.file_type();
        (!(t.is_fifo() || t.is_char_device() || t.is_socket())).then_some(meta.len())
    };
    let mut progress =
        crate::progress::Progress::new(&format!("packing {}", name(input, "standard input")), size);
    // Past `disksynth xz`'s default --max-block, the file is served only
    // with --allow-big-blocks (pack_with refuses past what it serves at all).
    let max_block = XzOptions::default().max_block;
    if block_size > max_block && block_size <= formats::xz::pack::MAX_BLOCK_SIZE {
        log::warn!(
            "blocks of {} are over {}: `disksynth xz` serves the result only with \
             --allow-big-blocks, decoding a whole block for every read",
            Size(block_size),
            Size(max_block)
        );
    }
    let opts = formats::xz::PackOptions {
        threads: threads.unwrap_or(0),
        block_size,
        preset,
        ..formats::xz::PackOptions::default()
    };
    let pin = if from_stdin {
        formats::xz::PackInput::Stdin
    } else {
        formats::xz::PackInput::Path(input)
    };
    let (pout, target) = if to_stdout {
        (formats::xz::PackOutput::Stdout, Target::Stdout)
    } else {
        (
            formats::xz::PackOutput::Path(output),
            Target::File {
                path: output.to_owned(),
                temp: formats::xz::pack::temp_prefix(output),
            },
        )
    };
    let interrupt = Interrupt::catch(target)?;
    let t0 = std::time::Instant::now();
    let result = formats::xz::pack_with(pin, pout, &opts, interrupt.stop(), &mut |pos| {
        progress.set(pos)
    });
    progress.finish();
    let stats = match result {
        Ok(stats) => stats,
        Err(_) if interrupt.signalled() => return Ok(interrupt.report()),
        Err(formats::xz::XzError::File { path, source })
            if to_stdout && path == output && source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Ok(ExitCode::from(crate::interrupt::BROKEN_PIPE))
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "packing {} into {}",
                    name(input, "standard input"),
                    name(output, "standard output")
                )
            })
        }
    };
    log::info!(
        "{} → {}: {} blocks of {}, {} → {} ({} threads, {:.1} s)",
        name(input, "standard input"),
        name(output, "standard output"),
        stats.blocks,
        Size(block_size),
        Size(stats.input_bytes),
        Size(stats.output_bytes),
        stats.threads,
        t0.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// A path for messages, `-` as what it means (`stdio`).
fn name(p: &Path, stdio: &str) -> String {
    match p.to_str() {
        Some("-") => stdio.into(),
        _ => p.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn credentials_are_cut_from_urls() {
        assert_eq!(
            redacted("https://u:secret@host/a@b"),
            "https://***@host/a@b"
        );
        assert_eq!(redacted("http://host/x.xz"), "http://host/x.xz");
        assert_eq!(redacted("./local@file.xz"), "./local@file.xz");
    }
}
