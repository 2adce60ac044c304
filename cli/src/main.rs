//! `disksynth`: synthesize a virtual disk from a source and hand it out
//! over NBD or as a raw image.

mod args;
mod build;
mod exports;
mod fuse;
mod generators;
mod inspect;
mod interrupt;
mod logging;
mod progress;
mod remote;
mod serve;
mod service;
mod spec;
mod tmpdisk;
mod web;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nbd_export::{write_raw_until, FdLimit, RawOutput, ServerOptions, TlsFiles, TlsMode, TlsSetup};
use synth::{BlockDev, Export};

use crate::args::{Cli, ExportArgs, Source, TlsArg};
use crate::interrupt::{target_of, Interrupt};
use crate::progress::{Progress, ProgressMode};
use crate::serve::{serve, systemd_listener, tcp_endpoint, Endpoint};
use synth::size::Size;

/// What to do with the disk, validated from [`ExportArgs`].
enum Mode {
    Serve(Endpoint),
    Output(std::path::PathBuf),
    /// `--fuse` without an NBD endpoint: only the FUSE file (and `--run`).
    Fuse(Option<String>),
}

fn mode_of(a: &ExportArgs, systemd: bool) -> Result<Mode> {
    let tcp = a.serve || a.ip.is_some() || a.port.is_some();
    let chosen: Vec<&str> = [
        (tcp, "--serve/-i/-p"),
        (a.unix.is_some(), "-U"),
        (a.output.is_some(), "-o"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if chosen.len() > 1 {
        bail!(
            "choose one way to export the disk, not {}",
            chosen.join(" and ")
        );
    }
    if a.run.is_some() && a.output.is_some() {
        bail!("choose one way to export the disk, not --run and -o");
    }
    if a.fuse.is_some() && a.output.is_some() {
        bail!("choose one way to export the disk, not --fuse and -o");
    }
    // --fuse with -U/--serve: both (the file is mounted beside the server).
    if a.fuse.is_some() && !tcp && a.unix.is_none() {
        return Ok(Mode::Fuse(a.run.clone()));
    }
    // Where to listen; --run then uses that socket (else a private one).
    let listen = if tcp {
        Some(tcp_endpoint(a.ip.as_deref(), a.port)?)
    } else {
        a.unix.as_ref().map(|u| {
            Endpoint::Unix(if u.as_os_str() == "-" {
                None
            } else {
                Some(u.clone())
            })
        })
    };
    Ok(if let Some(cmd) = &a.run {
        Mode::Serve(Endpoint::Run(cmd.clone(), listen.map(Box::new)))
    } else if let Some(l) = listen {
        Mode::Serve(l)
    } else if let Some(o) = &a.output {
        Mode::Output(o.clone())
    } else if systemd {
        Mode::Serve(Endpoint::Systemd)
    } else {
        bail!(
            "say how to export the disk: --serve (NBD on 127.0.0.1:10809), -U PATH (Unix socket), \
             --run CMD (captive), or -o FILE (raw image); see --help"
        )
    })
}

/// Build the disk a job's spec describes: the device, with an overlay under `--rw`.
fn open_job(job: &spec::Job) -> Result<Arc<dyn BlockDev>> {
    let built = build::build(&job.spec)?;
    if let Some(path) = job.report {
        build::write_report(&built.report, path)?;
    }
    match job.write {
        Some(w) => generators::with_overlay(built.dev, w, job.export),
        None => Ok(built.dev),
    }
}

/// `-o PATH`: the raw image. SIGINT/SIGTERM stop it (exit 130/143, one
/// line, no temp file left); a closed pipe on stdout ends it quietly (141).
fn output(dev: &dyn BlockDev, path: &Path) -> Result<ExitCode> {
    let size = dev.size();
    // Not for standard output: the consumer shows its own (pv).
    let mut progress = (path.as_os_str() != "-")
        .then(|| Progress::for_image(&format!("writing {}", path.display()), dev));
    let mut on_progress = |pos: u64| {
        if let Some(p) = &mut progress {
            p.set(pos);
        }
    };
    let target = if path.as_os_str() == "-" {
        RawOutput::Stdout
    } else {
        RawOutput::File(path)
    };
    let interrupt = Interrupt::catch(target_of(path, nbd_export::temp_prefix))?;
    let result = write_raw_until(dev, target, interrupt.stop(), &mut on_progress);
    if let Some(p) = progress {
        p.finish();
    }
    let stats = match result {
        Ok(stats) => stats,
        // Whatever failed after a signal (a consumer killed by the same ^C
        // closes the pipe), the signal is the story.
        Err(_) if interrupt.signalled() => return Ok(interrupt.report()),
        Err(e) if path.as_os_str() == "-" && e.is_broken_pipe() => {
            return Ok(ExitCode::from(interrupt::BROKEN_PIPE))
        }
        Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
    };
    if path.as_os_str() != "-" {
        log::info!(
            "wrote {} ({} of data, {} left sparse) to {}",
            Size(size),
            Size(stats.written),
            Size(stats.skipped),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Source::Inspect {
        target,
        json,
        timeout,
    } = &cli.source
    {
        return Ok(if inspect::inspect(target, *json, *timeout)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if let Source::Pack {
        input,
        output,
        block_size,
        threads,
        preset,
        ..
    } = &cli.source
    {
        return remote::pack(input, output, block_size.0, *threads, *preset);
    }
    if cli
        .source
        .export()
        .is_some_and(|a| a.filters.iter().any(|f| f == "help"))
    {
        print!("{}", filter_help());
        return Ok(ExitCode::SUCCESS);
    }
    let systemd = systemd_listener()?;
    if let Source::Serve {
        file,
        exports,
        export: a,
    } = &cli.source
    {
        let mut view = web_view(a)?;
        let catalog = exports::catalog(file.as_deref(), exports, a, view.as_mut())?;
        return match mode_of(a, systemd.is_some())? {
            Mode::Output(_) => {
                bail!("-o writes one disk; `serve` has several: use -U, -p or --run")
            }
            Mode::Fuse(run) => {
                // The default export (the one the empty name reaches).
                let e = catalog.default_entry();
                let export = e.export.clone();
                start_web(view, a)?;
                fuse::serve_alone(export, a, e.readonly, run.as_deref())
            }
            Mode::Serve(endpoint) => {
                let e = catalog.default_entry();
                let _fuse = fuse::beside(&e.export, a, e.readonly)?;
                start_web(view, a)?;
                let fds = nbd_export::raise_fd_limit();
                let opts = server_options(a, fds)?;
                serve::serve_catalog(catalog, endpoint, opts, a, systemd, fds)
            }
        };
    }
    let (export, a) = open_source(&cli.source, &[])?;
    let mode = mode_of(a, systemd.is_some())?;
    let export = match (web_view(a)?, &mode) {
        (Some(_), Mode::Output(_)) => {
            bail!("--web watches a served disk; -o writes one: use -U, -p or --run")
        }
        (Some(mut view), Mode::Serve(_) | Mode::Fuse(_)) => {
            let export = web::watch(&mut view, &a.export_name, export, &cli.source)?;
            start_web(Some(view), a)?;
            export
        }
        (None, _) => export,
    };
    match mode {
        Mode::Output(path) => {
            // For tmpdisk: one fresh disk, e.g. an empty filesystem image.
            let dev = export.open()?;
            output(&*dev, &path)
        }
        Mode::Fuse(run) => fuse::serve_alone(export, a, false, run.as_deref()),
        Mode::Serve(endpoint) => {
            let _fuse = fuse::beside(&export, a, false)?;
            let fds = nbd_export::raise_fd_limit();
            let opts = server_options(a, fds)?;
            serve(export, endpoint, opts, a, systemd, fds)
        }
    }
}

/// A web view to watch exports with, if `--web` asks for one.
fn web_view(a: &ExportArgs) -> Result<Option<web_view::WebView>> {
    Ok(a.web.as_ref().map(|_| web_view::WebView::new()))
}

/// Start serving the view `--web` asked for, once its exports are watched.
fn start_web(view: Option<web_view::WebView>, a: &ExportArgs) -> Result<()> {
    if let (Some(view), Some(text)) = (view, &a.web) {
        let bound = view.start(web::address(text)?)?;
        // On stderr as the URI is: where to point the browser.
        eprintln!("disksynth: web view on http://{bound}/");
    }
    Ok(())
}

/// The export a subcommand describes, with its layers: `outer` (the
/// outermost), then its `--filter`s, then its spec's disk-wide ones; and
/// how it is to be exported.
fn open_source<'a>(
    source: &'a Source,
    outer: &[String],
) -> Result<(Arc<dyn Export>, &'a ExportArgs)> {
    Ok(match spec::from_source(source)? {
        Some(job) => {
            let dev = open_job(&job)?;
            // Command-line layers over the spec's disk-wide ones.
            let texts: Vec<String> = outer
                .iter()
                .chain(&job.export.filters)
                .chain(&job.spec.filters)
                .cloned()
                .collect();
            let base = filters::Base::Shared(dev, job.what);
            (filters::stack(&texts, base)?, job.export)
        }
        // Every client gets its own disk.
        None => match source {
            Source::Tmpdisk { size, tmp, export } => {
                let base = filters::Base::PerClient(Arc::new(tmpdisk::export(size.0, tmp)?));
                let texts: Vec<String> = outer.iter().chain(&export.filters).cloned().collect();
                (filters::stack(&texts, base)?, export)
            }
            _ => bail!("this subcommand exports no disk"),
        },
    })
}

/// The server's options from the command line.
fn server_options(a: &ExportArgs, fds: FdLimit) -> Result<ServerOptions> {
    Ok(ServerOptions {
        export_name: a.export_name.clone(),
        readonly: a.readonly,
        max_threads: a.threads as usize,
        conn_budget: a.connection_memory.0,
        handshake_limit: Duration::from_secs(a.handshake_limit),
        max_connections: max_connections(a, fds)?,
        sendfile: !a.no_sendfile,
        exit_last: a.exit_last,
        tls_mode: match a.tls {
            TlsArg::Off => TlsMode::Off,
            TlsArg::On => TlsMode::On,
            TlsArg::Require => TlsMode::Require,
        },
        tls: tls_setup(a)?,
        ..ServerOptions::default()
    })
}

/// The TLS credentials the command line names, read and checked now (a
/// bad file is an error at start, not at the first client).
fn tls_setup(a: &ExportArgs) -> Result<Option<Arc<TlsSetup>>> {
    if let Some(f) = &a.tls_psk {
        // Pre-shared keys would need OpenSSL or GnuTLS next to rustls:
        // rustls implements no TLS-PSK cipher suites (RFC 4279), and its
        // TLS 1.3 PSKs are for resumption only, not for keys given out of
        // band as psktool's files are. X.509 client certificates
        // (--tls-verify-peer) give the same mutual authentication.
        bail!(
            "--tls-psk {}: pre-shared keys are not supported (rustls, the TLS library used, \
             has no TLS-PSK); use X.509 client certificates instead: --tls-verify-peer",
            f.display()
        );
    }
    let verify = a.tls_verify_peer || a.tls_allow_subject.is_some();
    let named = a.tls_certificates.is_some() || a.tls_cert.is_some();
    if a.tls == TlsArg::Off {
        if named || verify {
            bail!("TLS options given with --tls off: add --tls on or --tls require");
        }
        return Ok(None);
    }
    let mut files = match (&a.tls_certificates, &a.tls_cert, &a.tls_key) {
        (_, Some(cert), Some(key)) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: a
                .tls_certificates
                .as_deref()
                .and_then(|d| TlsFiles::from_dir(d).ca),
        },
        (Some(dir), _, _) => {
            if !dir.is_dir() {
                bail!("--tls-certificates {}: not a directory", dir.display());
            }
            TlsFiles::from_dir(dir)
        }
        _ => bail!(
            "--tls {}: give the server's certificate: --tls-certificates DIR (server-cert.pem, \
             server-key.pem, ca-cert.pem), or --tls-cert FILE --tls-key FILE",
            if a.tls == TlsArg::On { "on" } else { "require" }
        ),
    };
    if let Some(ca) = &a.tls_ca {
        files.ca = Some(ca.clone());
    }
    let setup = TlsSetup::load(files, verify, a.tls_allow_subject.clone())
        .context("loading the TLS credentials")?;
    Ok(Some(Arc::new(setup)))
}

/// `--filter help`: every filter, its arguments and what it does.
fn filter_help() -> String {
    let mut out =
        String::from("Filters (--filter NAME[:ARGS], repeatable; the first is the outermost):\n");
    let width = filters::registry()
        .map(|e| e.usage.len())
        .max()
        .unwrap_or(0);
    for e in filters::registry() {
        out.push_str(&format!("  {:width$}  {}\n", e.usage, e.about));
    }
    out
}

/// `--max-connections`, or as many clients as the descriptor limit holds.
/// A cap the limit cannot hold is allowed (the excess is shed when
/// descriptors run out) but said once at start, not discovered later.
fn max_connections(a: &ExportArgs, fds: FdLimit) -> Result<usize> {
    if let Some(from) = fds.raised_from {
        log::debug!(
            "raised the descriptor limit from {from} to {}",
            fds.soft.map_or("unlimited".into(), |n| n.to_string())
        );
    }
    let Some(n) = a.max_connections else {
        let n = nbd_export::connections_for(fds.soft);
        log::info!("serving at most {n} clients at once (--max-connections)");
        return Ok(n);
    };
    let n = usize::try_from(n).context("--max-connections is too large")?;
    if let Some(soft) = fds.soft {
        let need = nbd_export::descriptors_for(n, soft);
        if need > soft {
            log::warn!(
                "--max-connections {n} needs about {need} descriptors but the limit is {soft}: \
                 clients past about {} will be turned away (raise `ulimit -n`)",
                nbd_export::connections_for(Some(soft))
            );
        }
    }
    Ok(n)
}

fn verbosity(src: &Source) -> u8 {
    match src {
        Source::Pack { verbose, .. } => *verbose,
        src => src.export().map_or(0, |e| e.verbose),
    }
}

/// An error and its causes on one line, each once. Our errors (synth::Error,
/// anyhow's contexts) print only their own message and give the cause as
/// `source()`; some library errors also end their message with their
/// cause's (`"...: {source}"`), and only then is that cause left out. (A test on containment
/// anywhere in the line would drop a real cause that happens to occur in
/// an earlier message.)
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let repeated = previous == text || previous.ends_with(&format!(": {text}"));
        if !text.is_empty() && !repeated {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        previous = text;
    }
    line
}

fn main() -> ExitCode {
    serve::inherited_fds_close_on_exec();
    let cli = Cli::parse();
    progress::set_mode(if cli.log.quiet || cli.log.no_progress {
        ProgressMode::Off
    } else if cli.log.progress {
        ProgressMode::On
    } else {
        ProgressMode::Auto
    });
    if let Err(e) = logging::init(&cli.log, verbosity(&cli.source)) {
        eprintln!("disksynth: error: {}", error_chain(&e));
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("disksynth: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library error that ends its message with its source's.
    #[derive(Debug)]
    struct Repeats(synth::Error);

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "building the image: {}", self.0)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let os = std::io::Error::from_raw_os_error(2);
        let os_text = os.to_string();
        let e = anyhow::Error::new(synth::Error::io("opening a.img", os)).context("serving");
        assert_eq!(
            error_chain(&e),
            format!("serving: opening a.img: {os_text}")
        );
        // A wrapper that repeats its source: that source is not said twice,
        // but the source's own cause still is said.
        let os = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(Repeats(synth::Error::io("region x", os)));
        assert_eq!(
            error_chain(&e),
            format!("building the image: region x: {os_text}")
        );
        // A cause whose text merely occurs earlier in the line is kept.
        let e = anyhow::anyhow!("denied").context("reading /srv/denied/disk.img");
        assert_eq!(error_chain(&e), "reading /srv/denied/disk.img: denied");
    }
}
