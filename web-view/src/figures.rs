//! Figures devices keep themselves (an xz or qcow2 cache's hits, the bytes
//! an HTTP origin sent), registered where those devices are opened and
//! read by the sampler only, twice a second: never on a request's path.
//!
//! The registry is process-wide because the devices are made deep inside
//! a disk's construction (an xz view over an HTTP source under a qcow2
//! view), long before anyone knows a view will watch them; a source holds
//! its device weakly, so registering keeps nothing alive.

use std::sync::Mutex;

/// A device's figures now, by name; `None` once the device is gone.
pub type Source = Box<dyn Fn() -> Option<Vec<(&'static str, u64)>> + Send + Sync>;

/// Most sources kept: a disk has a handful of caches and origins; the
/// registry must not grow without bound whatever opens devices.
const MAX_SOURCES: usize = 32;

static SOURCES: Mutex<Vec<(String, Source)>> = Mutex::new(Vec::new());

/// Register the figures of a device, shown as `KIND.NAME` (`xz.cache_hits`).
pub fn register(kind: &str, source: Source) {
    let mut all = SOURCES.lock().unwrap_or_else(|p| p.into_inner());
    if all.len() < MAX_SOURCES {
        all.push((kind.to_string(), source));
    }
}

/// Every registered device's figures now, summed by name over devices of
/// one kind (a qcow2 image and its qcow2 backing file: one cache figure).
pub fn current() -> Vec<(String, u64)> {
    let all = SOURCES.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<(String, u64)> = Vec::new();
    for (kind, source) in all.iter() {
        for (name, v) in source().unwrap_or_default() {
            let key = format!("{kind}.{name}");
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, sum)) => *sum = sum.saturating_add(v),
                None => out.push((key, v)),
            }
        }
    }
    out
}

/// A hit rate in percent from hits and misses (`None` before any lookup).
pub fn hit_pct(hits: u64, misses: u64) -> Option<u64> {
    let total = hits.checked_add(misses)?;
    (total > 0).then(|| hits.saturating_mul(100) / total)
}
