//! Layers for any disksynth device, named as on the command line
//! (`--filter NAME[:ARGS]`) and in specs (`filters = [...]`).
//!
//! Each filter is a [`synth::Filter`] (it changes some answers and passes
//! the rest to the device beneath) made per client by a
//! [`synth::LayerFactory`]; [`stack`] turns a list of filter texts into an
//! export with those layers, the first text the outermost layer, as
//! nbdkit orders `--filter` options.
//!
//! Two families, one module each, so that the registry says where a name
//! lives:
//! - [`data`]: filters that change what the disk is or where its bytes come
//!   from (windows, partitions, copy-on-write, caches, read-ahead);
//! - [`service`]: filters that watch, slow, fail, limit or admit requests
//!   and clients without changing a byte.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use synth::{BlockDev, BlockSize, Caps, Export, FilteredExport, LayerFactory, SharedExport};

pub mod args;
pub mod data;
pub mod service;

pub use args::FilterArgs;

/// A filter that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The text is not `NAME[:ARGS]`.
    #[error("filter {text:?}: {why}")]
    Syntax {
        /// What was given.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// No filter has this name.
    #[error("no filter named {name:?} (there are: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The names there are, comma-separated.
        known: String,
    },
    /// The arguments do not fit the filter.
    #[error("filter {filter}: {why}")]
    Invalid {
        /// The filter's name.
        filter: String,
        /// What is wrong.
        why: String,
    },
    /// Setting the filter up failed (a file, a device read).
    #[error("filter {filter}: {source}")]
    Setup {
        /// The filter's name.
        filter: String,
        /// The failure.
        #[source]
        source: synth::Error,
    },
}

/// What a filter is put over, as known when the stack is built.
#[derive(Debug, Clone)]
pub struct Below {
    /// Size of the device beneath, bytes.
    pub size: u64,
    /// What it can do.
    pub caps: Caps,
    /// Its request-size constraints.
    pub block_size: BlockSize,
    /// The device beneath (with the inner layers), when every client shares
    /// one, for filters that must read it to be set up (a partition table).
    /// `None` for per-client disks (tmpdisk): such filters refuse them.
    pub shared: Option<Arc<dyn BlockDev>>,
}

/// How a filter is made from its arguments.
pub type Build = fn(&FilterArgs, &Below) -> Result<Arc<dyn LayerFactory>, FilterError>;

/// A filter the registry knows.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Its name.
    pub name: &'static str,
    /// Its arguments, one line (`offset:OFF[,len=LEN]`).
    pub usage: &'static str,
    /// What it does, one line.
    pub about: &'static str,
    /// How it is made.
    pub build: Build,
}

/// Every filter there is.
pub fn registry() -> impl Iterator<Item = &'static Entry> {
    CORE.iter()
        .chain(data::FILTERS.iter())
        .chain(service::FILTERS.iter())
}

/// Filters of the mechanism itself.
const CORE: &[Entry] = &[
    Entry {
        name: "nofilter",
        usage: "nofilter",
        about: "passes every request down unchanged (as nbdkit's nofilter: for measuring what a layer costs)",
        build: |args, _| {
            args.allow(&[], 0)?;
            Ok(Arc::new(NoFilter))
        },
    },
    Entry {
        name: "exitlast",
        usage: "exitlast",
        about: "stops the server when the last client of this export leaves (after at least one came)",
        build: |args, _| {
            args.allow(&[], 0)?;
            Ok(Arc::new(ExitLast::default()))
        },
    },
];

/// What `exitlast` calls when its export's last client has left: the server
/// sets it (to its shutdown) once it serves; unset (`-o`), nothing happens.
static LAST_CLIENT_GONE: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Set what `exitlast` layers call when their export's last client leaves
/// (the first call wins: one server per process).
pub fn when_last_client_leaves(hook: Box<dyn Fn() + Send + Sync>) {
    let _ = LAST_CLIENT_GONE.set(hook);
}

/// Counts the export's clients through their admissions.
#[derive(Debug, Default)]
struct ExitLast {
    clients: Arc<AtomicUsize>,
}

/// One client's place in an `exitlast` count.
#[derive(Debug)]
struct Present(Arc<AtomicUsize>);

impl Drop for Present {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            log::info!("exitlast: the last client left; stopping");
            if let Some(hook) = LAST_CLIENT_GONE.get() {
                hook();
            }
        }
    }
}

impl LayerFactory for ExitLast {
    fn name(&self) -> &str {
        "exitlast"
    }
    fn layer(
        &self,
        next: Arc<dyn BlockDev>,
        _client: &synth::Client,
    ) -> synth::Result<Arc<dyn BlockDev>> {
        Ok(next)
    }
    fn admit(&self, client: &synth::Client) -> Result<synth::Admission, String> {
        // The local client (a probe while building, `-o`) is not a client.
        if *client == synth::Client::local() {
            return Ok(synth::Admission::default());
        }
        self.clients.fetch_add(1, Ordering::SeqCst);
        Ok(synth::Admission::holding(Present(self.clients.clone())))
    }
}

/// A layer that changes nothing.
#[derive(Debug)]
struct NoFilter;

impl synth::Filter for NoFilter {}

impl LayerFactory for NoFilter {
    fn name(&self) -> &str {
        "nofilter"
    }
    fn layer(
        &self,
        next: Arc<dyn BlockDev>,
        _client: &synth::Client,
    ) -> synth::Result<Arc<dyn BlockDev>> {
        Ok(Arc::new(synth::Layer::new(NoFilter, next)))
    }
}

/// The filter named `name`.
pub fn lookup(name: &str) -> Option<&'static Entry> {
    registry().find(|e| e.name == name)
}

/// Build one filter over `below` from its text.
pub fn build(text: &str, below: &Below) -> Result<Arc<dyn LayerFactory>, FilterError> {
    let args = FilterArgs::parse(text)?;
    let entry = lookup(args.name()).ok_or_else(|| FilterError::Unknown {
        name: args.name().to_string(),
        known: registry().map(|e| e.name).collect::<Vec<_>>().join(", "),
    })?;
    (entry.build)(&args, &below.clone())
}

/// What a stack is built over.
#[derive(Debug, Clone)]
pub enum Base {
    /// One device for every client, and its description.
    Shared(Arc<dyn BlockDev>, String),
    /// An export that opens a device per client (tmpdisk).
    PerClient(Arc<dyn Export>),
}

/// `texts` (outermost first) over `base`, as an export. Each filter is
/// built knowing the device beneath it with the inner layers applied, so
/// a window over a partition measures the partition.
pub fn stack(texts: &[String], base: Base) -> Result<Arc<dyn Export>, FilterError> {
    let (inner, mut shared): (Arc<dyn Export>, Option<Arc<dyn BlockDev>>) = match base {
        Base::Shared(dev, what) => (Arc::new(SharedExport::new(dev.clone(), what)), Some(dev)),
        Base::PerClient(e) => (e, None),
    };
    if texts.is_empty() {
        return Ok(inner);
    }
    let mut below = Below {
        size: inner.size(),
        caps: inner.caps(),
        block_size: inner.block_size(),
        shared: shared.clone(),
    };
    let mut factories: Vec<Arc<dyn LayerFactory>> = Vec::with_capacity(texts.len());
    for text in texts.iter().rev() {
        let f = build(text, &below)?;
        let setup = |e: synth::Error| FilterError::Setup {
            filter: f.name().to_string(),
            source: e,
        };
        below.size = f.size(below.size).map_err(setup)?;
        below.caps = f.caps(below.caps);
        below.block_size = f.block_size(below.block_size);
        if let Some(dev) = shared.take() {
            // The local client: building a layer has no side effects.
            let layered = f.layer(dev, &synth::Client::local()).map_err(setup)?;
            shared = Some(layered);
        }
        below.shared = shared.clone();
        factories.push(f);
    }
    factories.reverse();
    let name = factories
        .first()
        .map(|f| f.name().to_string())
        .unwrap_or_default();
    let export = FilteredExport::new(inner, factories).map_err(|e| FilterError::Setup {
        filter: name,
        source: e,
    })?;
    Ok(Arc::new(export))
}

#[cfg(test)]
mod tests {
    use super::*;
    use synth::{Backing, RegionMapBuilder};

    fn disk() -> (Arc<dyn BlockDev>, Vec<u8>) {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8 + 1).collect();
        let mut b = RegionMapBuilder::new();
        b.push("zeros", 8_192, Backing::Zero).unwrap();
        b.push_bytes("data", data.clone()).unwrap();
        let mut expected = vec![0u8; 8_192];
        expected.extend_from_slice(&data);
        (Arc::new(b.finish()), expected)
    }

    #[test]
    fn a_stack_of_nofilters_is_the_disk() {
        let (dev, expected) = disk();
        let texts: Vec<String> = (0..5).map(|_| "nofilter".to_string()).collect();
        let export = stack(&texts, Base::Shared(dev.clone(), "test".into())).unwrap();
        assert_eq!(export.size(), dev.size());
        assert_eq!(export.caps(), dev.caps() | Caps::MULTI_CONN);
        let opened = export.open().unwrap();
        synth::testing::check_dev(&*opened, &expected, &[8_192]);
    }

    #[test]
    fn unknown_names_and_stray_arguments_are_refused() {
        let (dev, _) = disk();
        let err = stack(&["nosuch".into()], Base::Shared(dev.clone(), "t".into())).unwrap_err();
        assert!(err.to_string().contains("nofilter"), "{err}");
        let err = stack(&["nofilter:x=1".into()], Base::Shared(dev, "t".into())).unwrap_err();
        assert!(err.to_string().contains("x"), "{err}");
    }
}
