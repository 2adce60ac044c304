//! `cow`: copy-on-write over any disk, as `--rw` is on the generators:
//! writes land in a sparse [`CowOverlay`] and the disk beneath is never
//! written (a read-only remote image, a host file to keep pristine).
//!
//! Over a disk every client shares, there is one overlay for the export,
//! built with the stack: every client sees every other client's writes, as
//! on one real disk, and a reconnect finds what it wrote (until the server
//! exits: the overlay is a temp file, unlinked at once). The overlay then
//! reads through the device beneath as the stack was built, so layers
//! beneath `cow` that act per client see the local client, not each one.
//! Over a disk made per client (tmpdisk) each client gets its own overlay,
//! all drawing from one `max-disk` budget, and the export loses
//! `MULTI_CONN` (clients no longer share one disk).

use std::path::PathBuf;
use std::sync::Arc;

use synth::{
    BlockDev, BlockSize, Caps, Client, CowOverlay, LayerFactory, OverlayOptions, OverlayStore,
    Result, SpaceQuota,
};

use crate::{Below, FilterArgs, FilterError};

/// Makes `cow` layers.
#[derive(Debug)]
pub struct CowFactory {
    /// The export's one overlay, over a shared disk.
    shared: Option<Arc<CowOverlay>>,
    /// How per-client overlays are made (with the shared budget).
    opts: OverlayOptions,
}

impl CowFactory {
    /// Overlays made with `opts`: one over `shared` if given, else one per
    /// client.
    pub fn new(shared: Option<Arc<dyn BlockDev>>, opts: OverlayOptions) -> Result<Self> {
        let shared = shared
            .map(|dev| CowOverlay::new(dev, opts.clone()).map(Arc::new))
            .transpose()?;
        Ok(CowFactory { shared, opts })
    }

    /// The export's overlay, when there is one for all clients.
    pub fn overlay(&self) -> Option<&Arc<CowOverlay>> {
        self.shared.as_ref()
    }
}

pub(crate) fn build(
    args: &FilterArgs,
    below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    args.allow(&["dir", "max-disk", "store"], 0)?;
    let store = match args.get("store") {
        None | Some("file") => OverlayStore::TempFile,
        Some("memory") => OverlayStore::Memory,
        Some(other) => {
            return Err(args.invalid(format!(
                "store={other:?}: give store=file (a temp file, the default) or store=memory"
            )))
        }
    };
    let dir = args.get("dir").map(PathBuf::from);
    if store == OverlayStore::Memory && dir.is_some() {
        return Err(args.invalid("dir= is where the temp file goes: not with store=memory"));
    }
    if let Some(d) = &dir {
        if !d.is_dir() {
            return Err(args.invalid(format!("dir={}: not a directory", d.display())));
        }
    }
    let opts = OverlayOptions {
        store,
        // ext4's block and the common guest page, as `--rw` uses: a small
        // write copies little of the page beneath.
        page_size: 4096,
        temp_dir: dir,
        quota: args.size("max-disk")?.map(|s| Arc::new(SpaceQuota::new(s))),
    };
    let f = CowFactory::new(below.shared.clone(), opts).map_err(|e| FilterError::Setup {
        filter: "cow".into(),
        source: e,
    })?;
    Ok(Arc::new(f))
}

impl LayerFactory for CowFactory {
    fn name(&self) -> &str {
        "cow"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        match &self.shared {
            Some(ov) => Ok(ov.clone()),
            None => Ok(Arc::new(CowOverlay::new(next, self.opts.clone())?)),
        }
    }
    fn caps(&self, next: Caps) -> Caps {
        // What CowOverlay can do whatever is beneath; a cache hint still
        // goes down.
        let caps = Caps::WRITE
            | Caps::FLUSH
            | Caps::TRIM
            | Caps::ZERO
            | Caps::FAST_ZERO
            | Caps::EXTENTS
            | (next & Caps::CACHE);
        match self.shared {
            Some(_) => caps | (next & Caps::MULTI_CONN),
            None => caps,
        }
    }
    fn block_size(&self, next: BlockSize) -> BlockSize {
        next
    }
}

#[cfg(test)]
mod tests {
    use synth::testing::check_dev;
    use synth::{ErrorKind, Export, SharedExport, ZeroFlags};

    use super::*;
    use crate::data::testutil::{base, below};
    use crate::{stack, Base};

    #[test]
    fn one_overlay_for_all_clients_of_a_shared_disk() {
        let (dev, mut expected) = base();
        let dir = tempfile::tempdir().unwrap();
        let text = format!("cow:dir={}", dir.path().display());
        let ex = stack(&[text], Base::Shared(dev.clone(), "t".into())).unwrap();
        assert!(ex
            .caps()
            .contains(Caps::WRITE | Caps::MULTI_CONN | Caps::EXTENTS));
        let a = ex.open_client(&Client::local(), &|| false).unwrap();
        let b = ex.open_client(&Client::local(), &|| false).unwrap();
        a.write_at(b"written by a", 100).unwrap();
        a.write_zeroes(10_000, 5_000, ZeroFlags::default()).unwrap();
        b.write_at(b"b", 24_999).unwrap();
        expected[100..112].copy_from_slice(b"written by a");
        expected[10_000..15_000].fill(0);
        expected[24_999] = b'b';
        check_dev(&*b, &expected, &[100, 112, 4096, 10_000, 15_000]);
        check_dev(&*a, &expected, &[]);
        // The disk beneath is untouched.
        let (_, pristine) = base();
        check_dev(&*dev, &pristine, &[5_000]);
        // A reconnect (a new open) sees the writes.
        drop((a, b));
        let c = ex.open().unwrap();
        check_dev(&*c, &expected, &[]);
    }

    #[test]
    fn per_client_disks_get_their_own_overlay_and_share_the_budget() {
        let (dev, expected) = base();
        let inner: Arc<dyn Export> = Arc::new(SharedExport::new(dev.clone(), "t"));
        let mut b = below(&dev);
        b.shared = None;
        let f = crate::build("cow:store=memory,max-disk=8K", &b).unwrap();
        assert!(!f.caps(b.caps).contains(Caps::MULTI_CONN));
        let ex = synth::FilteredExport::new(inner, vec![f]).unwrap();
        assert!(!ex.caps().contains(Caps::MULTI_CONN));
        let a = ex.open().unwrap();
        let c = ex.open().unwrap();
        a.write_at(&[1; 4096], 0).unwrap();
        c.write_at(&[2; 4096], 4096).unwrap();
        // The budget (two pages) is used up by the two clients together.
        let err = a.write_at(&[3; 10], 8192).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        let mut want_a = expected.clone();
        want_a[..4096].fill(1);
        let mut want_c = expected.clone();
        want_c[4096..8192].fill(2);
        check_dev(&*a, &want_a, &[4096]);
        check_dev(&*c, &want_c, &[4096]);
        // A client that leaves gives its pages back.
        drop(c);
        a.write_at(&[3; 10], 8192).unwrap();
    }

    #[test]
    fn bad_arguments_are_refused() {
        let (dev, _) = base();
        for (text, want) in [
            ("cow:store=disk", "store=file"),
            ("cow:/tmp", "bare value"),
            ("cow:dir=/nonexistent/x", "not a directory"),
            ("cow:store=memory,dir=/tmp", "not with store=memory"),
            ("cow:max-disk=lots", "not a size"),
        ] {
            let e = crate::build(text, &below(&dev)).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
