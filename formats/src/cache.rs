//! A keyed, byte-budgeted, single-flight cache shared by every reader of one
//! device: decoded xz Blocks, qcow2 L2 tables and decompressed qcow2
//! clusters.
//!
//! Least-recently-used entries are evicted to stay within the budget.
//! Loading is single-flight: the first reader of a key that is neither
//! cached nor being loaded loads it; readers arriving meanwhile wait for
//! that result instead of loading again. A load's input and output buffers
//! are reserved against the budget while it runs, so memory stays within
//! the budget whatever the number of connections.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use synth::ErrorKind;

/// A failed load, cloneable so every waiter gets it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

/// What a cached value costs (bytes held while it is cached).
pub(crate) trait Weigh: Clone {
    /// Bytes held by this value.
    fn weight(&self) -> u64;
}

impl Weigh for bytes::Bytes {
    fn weight(&self) -> u64 {
        self.len() as u64
    }
}

/// One load in progress, which later readers wait on.
#[derive(Debug)]
struct Flight<V> {
    result: Mutex<Option<Result<V, Failure>>>,
    done: Condvar,
}

impl<V: Clone> Flight<V> {
    fn new() -> Self {
        Flight {
            result: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    fn finish(&self, result: Result<V, Failure>) {
        *lock(&self.result) = Some(result);
        self.done.notify_all();
    }

    fn wait(&self) -> Result<V, Failure> {
        let mut slot = lock(&self.result);
        loop {
            if let Some(r) = slot.as_ref() {
                return r.clone();
            }
            slot = self.done.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[derive(Debug)]
enum Slot<V> {
    Ready { value: V, tick: u64 },
    Pending(Arc<Flight<V>>),
}

#[derive(Debug)]
struct State<K, V> {
    slots: HashMap<K, Slot<V>>,
    /// Ready entries by last use (tick → key): the first is evicted first.
    lru: BTreeMap<u64, K>,
    tick: u64,
    bytes: u64,
    /// Bytes reserved by loads in progress.
    in_flight: u64,
    /// Most bytes cached plus reserved at any moment.
    peak: u64,
}

/// Counters of a [`SharedCache`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Loads run (failures included).
    pub decodes: AtomicU64,
    /// Loads that failed.
    pub failures: AtomicU64,
    /// Lookups answered from the cache.
    pub hits: AtomicU64,
    /// Lookups that waited for another thread's load.
    pub waits: AtomicU64,
    /// Entries evicted to stay within the budget.
    pub evictions: AtomicU64,
}

/// A snapshot of what the cache holds.
pub(crate) struct Usage {
    pub bytes: u64,
    pub peak: u64,
    pub entries: usize,
}

/// The cache (see the module documentation).
#[derive(Debug)]
pub(crate) struct SharedCache<K, V> {
    budget: u64,
    state: Mutex<State<K, V>>,
    /// Signalled when a load gives back its reservation.
    room: Condvar,
    pub counters: Counters,
}

/// Lock, shrugging off poisoning: the state is consistent between
/// statements, and a panicking reader must not take every other one down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends a flight even if the loader panics, so nobody waits forever.
struct FlightGuard<'a, K: Hash + Eq + Copy + std::fmt::Debug, V: Weigh> {
    cache: &'a SharedCache<K, V>,
    key: K,
    flight: Arc<Flight<V>>,
    armed: bool,
}

impl<K: Hash + Eq + Copy + std::fmt::Debug, V: Weigh> Drop for FlightGuard<'_, K, V> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.cache.state).slots.remove(&self.key);
            self.flight.finish(Err(Failure {
                kind: ErrorKind::Io,
                message: format!("loading {:?} panicked", self.key),
            }));
        }
    }
}

/// A load's share of the budget, given back when it ends (also if the
/// loader panics).
struct Reservation<'a, K: Hash + Eq + Copy + std::fmt::Debug, V: Weigh> {
    cache: &'a SharedCache<K, V>,
    cost: u64,
}

impl<K: Hash + Eq + Copy + std::fmt::Debug, V: Weigh> Reservation<'_, K, V> {
    fn give_back(mut self, st: &mut State<K, V>) {
        st.in_flight -= std::mem::take(&mut self.cost);
        self.cache.room.notify_all();
    }
}

impl<K: Hash + Eq + Copy + std::fmt::Debug, V: Weigh> Drop for Reservation<'_, K, V> {
    fn drop(&mut self) {
        if self.cost > 0 {
            lock(&self.cache.state).in_flight -= self.cost;
            self.cache.room.notify_all();
        }
    }
}

impl<K: Hash + Eq + Copy + std::fmt::Debug, V: Weigh> SharedCache<K, V> {
    /// A cache of at most `budget` bytes.
    pub fn new(budget: u64) -> Self {
        SharedCache {
            budget,
            state: Mutex::new(State {
                slots: HashMap::new(),
                lru: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                in_flight: 0,
                peak: 0,
            }),
            room: Condvar::new(),
            counters: Counters::default(),
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether `key` is cached or being loaded.
    pub fn contains(&self, key: K) -> bool {
        lock(&self.state).slots.contains_key(&key)
    }

    /// Whether a load of `cost` bytes could start now without waiting for
    /// others to finish (cached entries can always be evicted).
    pub fn has_room(&self, cost: u64) -> bool {
        let st = lock(&self.state);
        st.in_flight == 0 || st.in_flight + cost <= self.budget
    }

    fn evict_until(&self, st: &mut State<K, V>, need: u64) {
        while st.bytes + st.in_flight + need > self.budget {
            let Some((_, victim)) = st.lru.pop_first() else {
                break;
            };
            if let Some(Slot::Ready { value, .. }) = st.slots.remove(&victim) {
                st.bytes -= value.weight();
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reserve `cost` bytes for a load: evict least recently used entries
    /// until it fits beside what is cached and being loaded, waiting for
    /// other loads to finish if they hold the budget. A load always starts
    /// when no other is in progress (even one bigger than the budget), so
    /// this cannot wait forever: loads holding reservations wait for
    /// nothing but their source.
    fn reserve(&self, cost: u64) {
        let mut st = lock(&self.state);
        loop {
            self.evict_until(&mut st, cost);
            if st.in_flight == 0 || st.bytes + st.in_flight + cost <= self.budget {
                st.in_flight += cost;
                st.peak = st.peak.max(st.bytes + st.in_flight);
                return;
            }
            st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The value of `key`: from the cache, from a load another thread is
    /// running, or loaded here by `load` within a reservation of `cost`
    /// bytes. `keep` decides (under the cache's lock, before waiters are
    /// woken) whether a loaded value is cached.
    pub fn get(
        &self,
        key: K,
        cost: u64,
        load: impl FnOnce() -> Result<V, Failure>,
        keep: impl FnOnce(&V) -> bool,
    ) -> Result<V, Failure> {
        let flight = {
            let mut st = lock(&self.state);
            match st.slots.get(&key) {
                Some(Slot::Ready { value, tick }) => {
                    let (value, old) = (value.clone(), *tick);
                    st.tick += 1;
                    let now = st.tick;
                    st.lru.remove(&old);
                    st.lru.insert(now, key);
                    if let Some(Slot::Ready { tick, .. }) = st.slots.get_mut(&key) {
                        *tick = now;
                    }
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(value);
                }
                Some(Slot::Pending(flight)) => {
                    let flight = flight.clone();
                    drop(st);
                    self.counters.waits.fetch_add(1, Ordering::Relaxed);
                    return flight.wait();
                }
                None => {
                    let flight = Arc::new(Flight::new());
                    st.slots.insert(key, Slot::Pending(flight.clone()));
                    flight
                }
            }
        };
        let mut guard = FlightGuard {
            cache: self,
            key,
            flight,
            armed: true,
        };
        self.counters.decodes.fetch_add(1, Ordering::Relaxed);
        self.reserve(cost);
        let reservation = Reservation { cache: self, cost };
        let result = load();
        guard.armed = false;
        {
            let mut st = lock(&self.state);
            reservation.give_back(&mut st);
            st.slots.remove(&key);
            match &result {
                Ok(value) => {
                    if keep(value) {
                        self.insert(&mut st, key, value);
                    }
                }
                Err(_) => {
                    // Not remembered: the next reader tries again (the
                    // source may have had a passing failure).
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        guard.flight.finish(result.clone());
        result
    }

    /// Keep `value` as `key`, evicting the least recently used entries to
    /// stay within the budget. A value bigger than the whole budget is
    /// served to its readers but not kept.
    fn insert(&self, st: &mut State<K, V>, key: K, value: &V) {
        let len = value.weight();
        if len > self.budget {
            return;
        }
        self.evict_until(st, len);
        st.tick += 1;
        let tick = st.tick;
        st.lru.insert(tick, key);
        st.bytes += len;
        st.peak = st.peak.max(st.bytes + st.in_flight);
        st.slots.insert(
            key,
            Slot::Ready {
                value: value.clone(),
                tick,
            },
        );
    }

    /// What the cache holds now.
    pub fn usage(&self) -> Usage {
        let st = lock(&self.state);
        Usage {
            bytes: st.bytes,
            peak: st.peak,
            entries: st.lru.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn evicts_least_recently_used_within_the_budget() {
        let c: SharedCache<u32, Bytes> = SharedCache::new(300);
        let load = |n: u8| move || Ok(Bytes::from(vec![n; 100]));
        for k in 0..3u32 {
            c.get(k, 100, load(k as u8), |_| true).unwrap();
        }
        // Touch 0 so that 1 is the oldest.
        c.get(0, 100, || panic!("cached"), |_| true).unwrap();
        c.get(3, 100, load(3), |_| true).unwrap();
        assert!(c.contains(0) && !c.contains(1) && c.contains(2) && c.contains(3));
        let u = c.usage();
        assert!(u.bytes <= 300 && u.peak <= 300, "{} {}", u.bytes, u.peak);
        assert_eq!(c.counters.evictions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn failures_and_unkept_values_are_not_remembered() {
        let c: SharedCache<u32, Bytes> = SharedCache::new(1000);
        let e = c.get(
            1,
            10,
            || {
                Err(Failure {
                    kind: ErrorKind::Io,
                    message: "x".into(),
                })
            },
            |_| true,
        );
        assert!(e.is_err());
        assert!(!c.contains(1));
        c.get(2, 10, || Ok(Bytes::from_static(b"ab")), |_| false)
            .unwrap();
        assert!(!c.contains(2));
        assert_eq!(c.counters.failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn concurrent_readers_share_one_load() {
        let c: Arc<SharedCache<u32, Bytes>> = Arc::new(SharedCache::new(1 << 20));
        let loads = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, loads) = (c.clone(), loads.clone());
                std::thread::spawn(move || {
                    c.get(
                        7,
                        10,
                        || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(Bytes::from_static(b"seven"))
                        },
                        |_| true,
                    )
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(&t.join().unwrap()[..], b"seven");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
