//! The exports one server offers, by name (proto.md "Option types":
//! `NBD_OPT_LIST` lists them, `NBD_OPT_INFO`/`NBD_OPT_GO` pick one by name).

use std::fmt;
use std::sync::Arc;

use synth::Export;

/// Longest export name and description: proto.md limits the strings of
/// the handshake to 4096 bytes.
pub const MAX_NAME: usize = 4096;

/// One export of a [`Catalog`].
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// The name clients ask for.
    pub name: String,
    /// What `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION` say about it
    /// (`None`: the export's own description).
    pub description: Option<String>,
    /// Refuse writes to this export even if it takes them.
    pub readonly: bool,
    /// The export.
    pub export: Arc<dyn Export>,
}

impl CatalogEntry {
    /// `export` under `name`, with its own description, writable if it is.
    pub fn new(name: impl Into<String>, export: Arc<dyn Export>) -> Self {
        CatalogEntry {
            name: name.into(),
            description: None,
            readonly: false,
            export,
        }
    }

    /// The description clients are told (at most [`MAX_NAME`] bytes, cut
    /// at a character boundary).
    pub fn description(&self) -> String {
        let mut d = self
            .description
            .clone()
            .unwrap_or_else(|| self.export.description());
        if d.len() > MAX_NAME {
            let mut end = MAX_NAME;
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d.truncate(end);
        }
        d
    }
}

/// A catalog that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// No exports at all.
    #[error("no exports to serve")]
    Empty,
    /// Two exports share a name.
    #[error("two exports are named {0:?}; names must differ")]
    Duplicate(String),
    /// A name longer than NBD allows.
    #[error("export name of {0} bytes; NBD allows at most 4096")]
    TooLong(usize),
}

/// Named exports. The empty name asks for the default export: the one
/// named `""` if there is one, else the first.
#[derive(Clone)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
    default: usize,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("names", &self.names())
            .field("default", &self.entries[self.default].name)
            .finish()
    }
}

impl Catalog {
    /// The exports, in the order `NBD_OPT_LIST` gives them.
    pub fn new(entries: Vec<CatalogEntry>) -> Result<Self, CatalogError> {
        if entries.is_empty() {
            return Err(CatalogError::Empty);
        }
        for (i, e) in entries.iter().enumerate() {
            if e.name.len() > MAX_NAME {
                return Err(CatalogError::TooLong(e.name.len()));
            }
            if entries[..i].iter().any(|o| o.name == e.name) {
                return Err(CatalogError::Duplicate(e.name.clone()));
            }
        }
        let default = entries.iter().position(|e| e.name.is_empty()).unwrap_or(0);
        Ok(Catalog { entries, default })
    }

    /// One export under `name` (reached by `name` and by the empty name).
    pub fn single(name: impl Into<String>, export: Arc<dyn Export>) -> Self {
        Catalog {
            entries: vec![CatalogEntry::new(name, export)],
            default: 0,
        }
    }

    /// The export a client asking for `name` gets.
    pub fn lookup(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .or_else(|| name.is_empty().then(|| &self.entries[self.default]))
    }

    /// Every export, in order.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// The default export (what the empty name reaches).
    pub fn default_entry(&self) -> &CatalogEntry {
        &self.entries[self.default]
    }

    /// Every name, quoted and comma-separated, for messages.
    pub fn names(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("{:?}", e.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synth::SharedExport;

    fn export(what: &str) -> Arc<dyn Export> {
        let dev = synth::RegionMapBuilder::new().finish();
        Arc::new(SharedExport::new(Arc::new(dev), what))
    }

    #[test]
    fn the_empty_name_reaches_the_one_named_so_else_the_first() {
        let c = Catalog::new(vec![
            CatalogEntry::new("a", export("A")),
            CatalogEntry::new("b", export("B")),
        ])
        .unwrap();
        assert_eq!(c.lookup("").unwrap().name, "a");
        assert_eq!(c.lookup("b").unwrap().description(), "B");
        assert!(c.lookup("c").is_none());
        assert_eq!(c.names(), "\"a\", \"b\"");
        let c = Catalog::new(vec![
            CatalogEntry::new("a", export("A")),
            CatalogEntry::new("", export("default")),
        ])
        .unwrap();
        assert_eq!(c.lookup("").unwrap().description(), "default");
        assert_eq!(c.default_entry().name, "");
    }

    #[test]
    fn bad_catalogs_are_refused() {
        assert_eq!(Catalog::new(vec![]).unwrap_err(), CatalogError::Empty);
        let e = Catalog::new(vec![
            CatalogEntry::new("x", export("1")),
            CatalogEntry::new("x", export("2")),
        ])
        .unwrap_err();
        assert_eq!(e, CatalogError::Duplicate("x".into()));
        let long = "n".repeat(4097);
        assert_eq!(
            Catalog::new(vec![CatalogEntry::new(long, export("1"))]).unwrap_err(),
            CatalogError::TooLong(4097)
        );
    }

    #[test]
    fn descriptions_are_cut_to_what_nbd_carries_on_a_char_boundary() {
        let mut e = CatalogEntry::new("x", export("x"));
        e.description = Some("é".repeat(3000));
        let d = e.description();
        assert!(
            d.len() <= MAX_NAME && d.len() >= MAX_NAME - 1,
            "{}",
            d.len()
        );
        assert!(d.chars().all(|c| c == 'é'));
    }
}
