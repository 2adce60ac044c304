//! Where log lines go and what they look like: the level from `-q`/`-v`
//! (and `RUST_LOG`, which has the last word), text with timestamps or JSON
//! lines, stderr or `--log-file`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use env_logger::{Target, WriteStyle};
use log::LevelFilter;

use crate::args::{LogArgs, LogFormat};

/// The level `-q` and the count of `-v` ask for.
pub fn level(quiet: bool, verbose: u8) -> LevelFilter {
    if quiet {
        return LevelFilter::Error;
    }
    match verbose {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Install the logger. `verbose` is the subcommand's `-v` count.
pub fn init(args: &LogArgs, verbose: u8) -> Result<()> {
    let level = level(args.quiet, verbose);
    let mut b = env_logger::Builder::new();
    b.filter_level(level)
        // rustls warns of what clients do that the server copes with (libnbd
        // and qemu send an IP address as SNI, which RFC 6066 §3 forbids): a
        // line per connection that helps no one; the server logs the
        // failures that matter itself. Shown from -vv.
        .filter_module(
            "rustls",
            if level >= LevelFilter::Debug {
                level
            } else {
                LevelFilter::Error
            },
        );
    // RUST_LOG's directives are applied last, so `RUST_LOG=debug` or
    // `RUST_LOG=nbd_export=trace` override -q/-v (env_logger's syntax).
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let to_file = args.log_file.is_some();
    if let Some(path) = &args.log_file {
        b.target(Target::Pipe(Box::new(open_log(path)?)));
    }
    // journald stamps every line itself (JOURNAL_STREAM is set when stderr
    // is connected to the journal, systemd.exec(5)).
    let journal = !to_file && std::env::var_os("JOURNAL_STREAM").is_some();
    match args.log_format {
        LogFormat::Text => {
            if to_file {
                b.write_style(WriteStyle::Never);
            }
            b.format_target(false);
            if journal {
                b.format_timestamp(None);
            } else {
                b.format_timestamp_millis();
            }
        }
        LogFormat::Json => {
            b.write_style(WriteStyle::Never);
            b.format(move |buf, record| {
                let msg = record.args().to_string();
                // One object per line: the message is JSON-escaped, so a
                // client-controlled string (an export name) cannot break
                // the line or forge a field.
                let time = buf.timestamp_millis().to_string();
                writeln!(
                    buf,
                    "{{\"time\":{},\"level\":{},\"target\":{},\"message\":{}}}",
                    json_str(&time),
                    json_str(record.level().as_str()),
                    json_str(record.target()),
                    json_str(&msg)
                )
            });
        }
    }
    b.try_init().context("installing the logger")?;
    Ok(())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The log file, appended to (several runs share one file; logrotate's
/// copytruncate keeps working), created with the umask's mode.
fn open_log(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_wins_over_verbose_and_v_counts_up() {
        assert_eq!(level(true, 3), LevelFilter::Error);
        assert_eq!(level(false, 0), LevelFilter::Warn);
        assert_eq!(level(false, 1), LevelFilter::Info);
        assert_eq!(level(false, 2), LevelFilter::Debug);
        assert_eq!(level(false, 9), LevelFilter::Trace);
    }

    #[test]
    fn json_strings_escape_what_would_break_a_line() {
        assert_eq!(json_str("a\"b\nc\\"), "\"a\\\"b\\nc\\\\\"");
        assert_eq!(json_str("\u{1}"), "\"\\u0001\"");
    }
}
