//! `disksynth serve`: several named exports from one server, from an
//! exports file and `--export NAME=SUBCOMMAND ARGS…` flags.
//!
//! ```toml
//! [[export]]
//! name = "pat"
//! source = "pattern 16M"      # a subcommand and its arguments, as on the command line
//! description = "test pattern"
//! filters = ["stats"]         # outermost first, over the source's own --filter
//! readonly = true             # refuse writes to this export
//!
//! [[export]]
//! name = "boot"
//! spec = "disk.toml"          # a `disksynth build` spec, relative to this file
//! ```
//!
//! A source is parsed by the same clap definitions as the command line
//! (split into words as a POSIX shell would, without expansions), and
//! turned into an export by the same code. Unknown keys are errors with
//! their line and column (serde's `deny_unknown_fields`, as in the build
//! spec).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use nbd_export::{Catalog, CatalogEntry};
use serde::Deserialize;

use crate::args::{Cli, ExportArgs, Source};

/// The exports file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportsFile {
    #[serde(default)]
    export: Vec<ExportToml>,
}

/// One `[[export]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportToml {
    name: String,
    source: Option<String>,
    spec: Option<PathBuf>,
    description: Option<String>,
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default)]
    readonly: bool,
}

/// What one export is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum From {
    /// A subcommand and its arguments, as words.
    Source(Vec<String>),
    /// A build spec file.
    Spec(PathBuf),
}

/// One export, parsed, not yet opened.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    name: String,
    from: From,
    description: Option<String>,
    filters: Vec<String>,
    readonly: bool,
    /// Where it was given, for messages.
    origin: String,
}

/// The words of a source, as a POSIX shell splits them (quotes and
/// backslashes; no variables, globs or other expansions).
fn words(source: &str) -> Result<Vec<String>> {
    let w = shlex::split(source).ok_or_else(|| anyhow!("unbalanced quotes in {source:?}"))?;
    if w.is_empty() {
        bail!("an empty source (give a subcommand and its arguments, e.g. \"pattern 16M\")");
    }
    Ok(w)
}

/// The exports of an exports file (TOML); relative spec paths are
/// relative to its directory.
fn from_toml(text: &str, base: &Path, file: &str) -> Result<Vec<Wanted>> {
    let parsed: ExportsFile = toml::from_str(text).map_err(|e| crate::spec::one_line(&e, text))?;
    let mut out = Vec::with_capacity(parsed.export.len());
    for (i, e) in parsed.export.into_iter().enumerate() {
        let origin = format!("{file}: export {} ({:?})", i + 1, e.name);
        let from = match (e.source, e.spec) {
            (Some(s), None) => From::Source(words(&s).with_context(|| origin.clone())?),
            (None, Some(p)) => From::Spec(base.join(p)),
            (Some(_), Some(_)) => bail!("{origin}: give source or spec, not both"),
            (None, None) => {
                bail!("{origin}: give source = \"SUBCOMMAND ARGS\" or spec = \"disk.toml\"")
            }
        };
        out.push(Wanted {
            name: e.name,
            from,
            description: e.description,
            filters: e.filters,
            readonly: e.readonly,
            origin,
        });
    }
    Ok(out)
}

/// `--export NAME=SUBCOMMAND ARGS…`.
fn from_flag(flag: &str) -> Result<Wanted> {
    let origin = format!("--export {flag:?}");
    let Some((name, source)) = flag.split_once('=') else {
        bail!("{origin}: give NAME=SUBCOMMAND ARGS, e.g. --export 'pat=pattern 16M'");
    };
    Ok(Wanted {
        name: name.to_string(),
        from: From::Source(words(source).with_context(|| origin.clone())?),
        description: None,
        filters: Vec::new(),
        readonly: false,
        origin,
    })
}

/// The serving options a source must not carry: they belong to `serve`,
/// which has one endpoint for all its exports.
fn check_source_args(a: &ExportArgs) -> Result<()> {
    let misplaced = [
        (a.serve, "--serve"),
        (a.ip.is_some(), "-i"),
        (a.port.is_some(), "-p"),
        (a.unix.is_some(), "-U"),
        (a.run.is_some(), "--run"),
        (a.output.is_some(), "-o"),
        (
            !a.export_name.is_empty(),
            "-e (the export's name is its `name`)",
        ),
        (a.pid_file.is_some(), "--pid-file"),
        (a.exit_last, "--exit-last"),
        (a.exit_with_parent, "--exit-with-parent"),
        (
            a.web.is_some(),
            "--web (one view on `serve` shows every export)",
        ),
    ];
    let given: Vec<&str> = misplaced
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    if !given.is_empty() {
        bail!(
            "{} in a source: serving options go on `disksynth serve` itself",
            given.join(", ")
        );
    }
    Ok(())
}

/// Open one export: its source parsed as a command line and opened as
/// `disksynth SUBCOMMAND` would, `serve`'s filters outermost, then the
/// export's own, then the source's `--filter`s.
fn open(w: &Wanted, outer: &[String], web: Option<&mut web_view::WebView>) -> Result<CatalogEntry> {
    let argv: Vec<std::ffi::OsString> = match &w.from {
        From::Source(words) => std::iter::once("disksynth".into())
            .chain(words.iter().map(Into::into))
            .collect(),
        From::Spec(p) => vec!["disksynth".into(), "build".into(), p.into()],
    };
    // clap's message is several lines with usage; its first line says what
    // is wrong, which is what a file's author needs.
    let cli = Cli::try_parse_from(argv).map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            return anyhow!("--help and --version have no place in a source");
        }
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default().trim();
        anyhow!("{}", first.strip_prefix("error: ").unwrap_or(first))
    })?;
    let Some(a) = cli.source.export() else {
        bail!("this subcommand exports no disk");
    };
    if matches!(cli.source, Source::Serve { .. }) {
        bail!("`serve` cannot be an export of `serve`");
    }
    if a.filters.iter().any(|f| f == "help") {
        bail!("--filter help lists the filters: run `disksynth pattern 1 --filter help`");
    }
    check_source_args(a)?;
    let texts: Vec<String> = outer.iter().chain(&w.filters).cloned().collect();
    let (export, a) = crate::open_source(&cli.source, &texts)?;
    let export = match web {
        Some(web) => crate::web::watch(web, &w.name, export, &cli.source)?,
        None => export,
    };
    Ok(CatalogEntry {
        name: w.name.clone(),
        description: w.description.clone(),
        readonly: w.readonly || a.readonly,
        export: Arc::clone(&export),
    })
}

/// The exports `serve` was given: the file's, then the `--export` flags'.
/// `serve`'s own `--filter`s go over every export (each its own layer:
/// a `limit:clients=N` limits each export, not the server).
/// With `web`, every export is watched by the web view.
pub fn catalog(
    file: Option<&Path>,
    flags: &[String],
    a: &ExportArgs,
    mut web: Option<&mut web_view::WebView>,
) -> Result<Catalog> {
    if !a.export_name.is_empty() {
        bail!("-e names the one export of a subcommand; with `serve`, each export has its name");
    }
    let filters = &a.filters;
    let mut wanted = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the exports file {}", path.display()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        wanted.extend(from_toml(&text, &base, &path.display().to_string())?);
    }
    for f in flags {
        wanted.push(from_flag(f)?);
    }
    if wanted.is_empty() {
        bail!(
            "no exports: give an exports file (disksynth serve exports.toml) or --export \
             NAME=SUBCOMMAND ARGS"
        );
    }
    let mut entries = Vec::with_capacity(wanted.len());
    for w in &wanted {
        entries.push(open(w, filters, web.as_deref_mut()).with_context(|| w.origin.clone())?);
    }
    Ok(Catalog::new(entries)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_files_parse_sources_as_words_and_specs_relative_to_the_file() {
        let text = r#"
[[export]]
name = "pat"
source = "pattern 16M -r"
description = "test pattern"
filters = ["stats"]

[[export]]
name = "dir"
source = "floppy 'my dir/with space' --label \"A B\""

[[export]]
name = "boot"
spec = "disk.toml"
readonly = true
"#;
        let w = from_toml(text, Path::new("/etc/ds"), "x.toml").unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(
            w[0].from,
            From::Source(vec!["pattern".into(), "16M".into(), "-r".into()])
        );
        assert_eq!(w[0].description.as_deref(), Some("test pattern"));
        assert_eq!(w[0].filters, ["stats"]);
        assert_eq!(
            w[1].from,
            From::Source(
                ["floppy", "my dir/with space", "--label", "A B"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(w[2].from, From::Spec(PathBuf::from("/etc/ds/disk.toml")));
        assert!(w[2].readonly);
    }

    #[test]
    fn unknown_keys_and_half_exports_are_refused_saying_which() {
        let e = from_toml(
            "[[export]]\nname = \"a\"\nsorce = \"pattern 1M\"\n",
            Path::new("."),
            "f",
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("sorce") && msg.contains("line 3"), "{msg}");
        let e = from_toml("[[export]]\nname = \"a\"\n", Path::new("."), "f").unwrap_err();
        assert!(format!("{e:#}").contains("give source"), "{e:#}");
        let e = from_toml(
            "[[export]]\nname = \"a\"\nsource = \"x\"\nspec = \"y\"\n",
            Path::new("."),
            "f",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("not both"), "{e:#}");
        let e = from_toml(
            "[[export]]\nname = \"a\"\nsource = \"pattern 'x\"\n",
            Path::new("."),
            "f",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("unbalanced quotes"), "{e:#}");
        let e = from_toml("[server]\nport = 1\n", Path::new("."), "f").unwrap_err();
        assert!(format!("{e:#}").contains("server"), "{e:#}");
    }

    #[test]
    fn export_flags_split_at_the_first_equals_sign() {
        let w = from_flag("a=b=pattern 1M").unwrap();
        assert_eq!(w.name, "a");
        assert_eq!(w.from, From::Source(vec!["b=pattern".into(), "1M".into()]));
        let w = from_flag("=pattern 1M").unwrap();
        assert_eq!(w.name, "", "the empty name: the default export");
        assert!(from_flag("pattern 1M").is_err());
        assert!(from_flag("x=").is_err());
    }

    #[test]
    fn sources_open_as_on_the_command_line_and_serving_flags_are_refused() {
        let w = from_flag("pat=pattern 64K -r").unwrap();
        let e = open(&w, &[], None).unwrap();
        assert_eq!(e.name, "pat");
        assert_eq!(e.export.size(), 64 << 10);
        assert!(e.readonly, "-r in a source makes that export read-only");
        assert_eq!(e.description(), e.export.description());

        let w = from_flag("pat=pattern 64K -U /tmp/x").unwrap();
        let msg = format!("{:#}", open(&w, &[], None).unwrap_err());
        assert!(
            msg.contains("-U") && msg.contains("serving options"),
            "{msg}"
        );
        let w = from_flag("pat=pattern").unwrap();
        let msg = format!("{:#}", open(&w, &[], None).unwrap_err());
        assert!(msg.contains("required") && !msg.contains('\n'), "{msg}");
        let w = from_flag("x=pattern 1M --help").unwrap();
        assert!(format!("{:#}", open(&w, &[], None).unwrap_err()).contains("no place in a source"));
        let w = from_flag("x=inspect disk.img").unwrap();
        assert!(format!("{:#}", open(&w, &[], None).unwrap_err()).contains("exports no disk"));
        let w = from_flag("x=serve --export 'y=pattern 1M'").unwrap();
        assert!(format!("{:#}", open(&w, &[], None).unwrap_err()).contains("cannot be an export"));
    }

    /// `serve`'s own export options from its flags.
    fn serve_args(extra: &[&str]) -> ExportArgs {
        let argv = ["disksynth", "serve"].iter().chain(extra);
        match Cli::try_parse_from(argv).unwrap().source {
            Source::Serve { export, .. } => export,
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn serves_filters_go_over_every_export_and_e_is_refused() {
        let flags = ["a=pattern 4K".to_string(), "b=zero 8K".to_string()];
        let c = catalog(None, &flags, &serve_args(&["--filter", "nofilter"]), None).unwrap();
        for e in c.entries() {
            assert!(
                format!("{:?}", e.export).contains("stack: [NoFilter]"),
                "{:?}",
                e.export
            );
        }
        let msg = format!(
            "{:#}",
            catalog(None, &flags, &serve_args(&["--filter", "nosuch"]), None).unwrap_err()
        );
        assert!(
            msg.contains("--export \"a=pattern 4K\"") && msg.contains("nosuch"),
            "{msg}"
        );
        let msg = format!(
            "{:#}",
            catalog(None, &flags, &serve_args(&["-e", "x"]), None).unwrap_err()
        );
        assert!(msg.contains("each export has its name"), "{msg}");
    }

    #[test]
    fn a_catalog_refuses_duplicate_names_and_nothing() {
        let flags = ["a=pattern 4K".to_string(), "a=zero 4K".to_string()];
        let a = serve_args(&[]);
        let msg = format!("{:#}", catalog(None, &flags, &a, None).unwrap_err());
        assert!(msg.contains("two exports are named \"a\""), "{msg}");
        assert!(format!("{:#}", catalog(None, &[], &a, None).unwrap_err()).contains("no exports"));
        let c = catalog(None, &["a=pattern 4K".into(), "b=zero 8K".into()], &a, None).unwrap();
        assert_eq!(c.lookup("").unwrap().name, "a");
        assert_eq!(c.lookup("b").unwrap().export.size(), 8192);
    }
}
