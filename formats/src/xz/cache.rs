//! Decoded Blocks shared by every reader of one [`super::XzDev`].
//!
//! One cache per device, bounded by a byte budget with least-recently-used
//! eviction. Decoding is single-flight: the first reader of a Block that is
//! neither cached nor being decoded decodes it; readers arriving meanwhile
//! wait for that result instead of decoding again. Blocks found to decode
//! to all zeros keep no buffer at all: a flag per Block remembers them for
//! good (they read as zeros and are holes in `extents`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use synth::ErrorKind;

/// A decoded Block.
#[derive(Debug, Clone)]
pub(super) enum Decoded {
    /// Every byte is zero.
    Zero,
    /// The bytes (exactly the Block's Uncompressed Size).
    Data(Bytes),
}

/// A failed decode, cloneable so every waiter gets it.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

/// One decode in progress, which later readers wait on.
#[derive(Debug, Default)]
struct Flight {
    result: Mutex<Option<Result<Decoded, Failure>>>,
    done: Condvar,
}

impl Flight {
    fn finish(&self, result: Result<Decoded, Failure>) {
        *lock(&self.result) = Some(result);
        self.done.notify_all();
    }

    fn wait(&self) -> Result<Decoded, Failure> {
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
enum Slot {
    Ready { data: Bytes, tick: u64 },
    Pending(Arc<Flight>),
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<usize, Slot>,
    /// Ready Blocks by last use (tick → Block): the first is evicted first.
    lru: BTreeMap<u64, usize>,
    tick: u64,
    bytes: u64,
    /// Bytes reserved by decodes in progress (their input and output
    /// buffers): counted against the budget too, so memory stays within it
    /// whatever the number of connections.
    in_flight: u64,
    /// Most bytes cached plus reserved at any moment.
    peak: u64,
}

/// Counters behind [`super::XzStats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub decodes: AtomicU64,
    pub failures: AtomicU64,
    pub hits: AtomicU64,
    pub waits: AtomicU64,
    pub evictions: AtomicU64,
}

/// A snapshot of what the cache holds.
pub(super) struct Usage {
    pub bytes: u64,
    pub peak: u64,
    pub blocks: usize,
    pub zero_blocks: usize,
}

#[derive(Debug)]
pub(super) struct BlockCache {
    budget: u64,
    state: Mutex<State>,
    /// Signalled when a decode gives back its reservation.
    room: Condvar,
    /// One bit per Block: known to decode to zeros. A bit, not a byte:
    /// the index itself takes 16 bytes per Block and a crafted one lists
    /// millions.
    zero: Vec<AtomicU64>,
    pub counters: Counters,
}

/// Lock, shrugging off poisoning: the state is consistent between
/// statements, and a panicking reader must not take every other one down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `data` is all zeros (4 KiB at a time, so the OR vectorizes).
pub(super) fn all_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Ends a flight even if the decoder panics, so nobody waits forever.
struct FlightGuard<'a> {
    cache: &'a BlockCache,
    block: usize,
    flight: Arc<Flight>,
    armed: bool,
}

/// A decode's share of the budget, given back when it ends (also if the
/// decode panics).
struct Reservation<'a> {
    cache: &'a BlockCache,
    cost: u64,
}

impl Reservation<'_> {
    fn give_back(mut self, st: &mut State) {
        st.in_flight -= std::mem::take(&mut self.cost);
        self.cache.room.notify_all();
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.cost > 0 {
            lock(&self.cache.state).in_flight -= self.cost;
            self.cache.room.notify_all();
        }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.cache.state).slots.remove(&self.block);
            self.flight.finish(Err(Failure {
                kind: ErrorKind::Io,
                message: format!("decoding block {} panicked", self.block),
            }));
        }
    }
}

impl BlockCache {
    /// A cache of at most `budget` bytes for `blocks` Blocks.
    pub fn new(budget: u64, blocks: usize) -> Self {
        BlockCache {
            budget,
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            zero: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            counters: Counters::default(),
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether Block `block` is known to decode to zeros.
    pub fn is_zero(&self, block: usize) -> bool {
        self.zero
            .get(block / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (block % 64)) != 0)
    }

    fn set_zero(&self, block: usize) {
        if let Some(w) = self.zero.get(block / 64) {
            w.fetch_or(1 << (block % 64), Ordering::Relaxed);
        }
    }

    /// Whether Block `block` is cached, being decoded, or known zero (so a
    /// read-ahead of it would be wasted).
    pub fn is_present(&self, block: usize) -> bool {
        self.is_zero(block) || lock(&self.state).slots.contains_key(&block)
    }

    /// Block `block`, from the cache, from a decode in flight, or by
    /// running `decode` (then keeping the result if it fits the budget).
    /// Whether a decode of `cost` bytes could start now without waiting for
    /// others to finish (cached Blocks can always be evicted).
    pub fn has_room(&self, cost: u64) -> bool {
        let st = lock(&self.state);
        st.in_flight == 0 || st.in_flight + cost <= self.budget
    }

    /// Reserve `cost` bytes for a decode: evict least recently used Blocks
    /// until it fits beside what is cached and being decoded, waiting for
    /// other decodes to finish if they hold the budget. A decode always
    /// starts when no other is in progress (even one bigger than the
    /// budget), so this cannot wait forever: decodes holding reservations
    /// wait for nothing but their source.
    fn reserve(&self, cost: u64) {
        let mut st = lock(&self.state);
        loop {
            while st.bytes + st.in_flight + cost > self.budget {
                let Some((_, victim)) = st.lru.pop_first() else {
                    break;
                };
                if let Some(Slot::Ready { data, .. }) = st.slots.remove(&victim) {
                    st.bytes -= data.len() as u64;
                    self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            if st.in_flight == 0 || st.bytes + st.in_flight + cost <= self.budget {
                st.in_flight += cost;
                st.peak = st.peak.max(st.bytes + st.in_flight);
                return;
            }
            st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Block `block`: from the cache, from a decode another thread is
    /// running, or decoded here by `decode` within a reservation of `cost`
    /// bytes.
    pub fn get(
        &self,
        block: usize,
        cost: u64,
        decode: impl FnOnce() -> Result<Decoded, Failure>,
    ) -> Result<Decoded, Failure> {
        if self.is_zero(block) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Decoded::Zero);
        }
        let flight = {
            let mut st = lock(&self.state);
            match st.slots.get(&block) {
                Some(Slot::Ready { data, tick }) => {
                    let (data, old) = (data.clone(), *tick);
                    st.tick += 1;
                    let now = st.tick;
                    st.lru.remove(&old);
                    st.lru.insert(now, block);
                    if let Some(Slot::Ready { tick, .. }) = st.slots.get_mut(&block) {
                        *tick = now;
                    }
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Decoded::Data(data));
                }
                Some(Slot::Pending(flight)) => {
                    let flight = flight.clone();
                    drop(st);
                    self.counters.waits.fetch_add(1, Ordering::Relaxed);
                    return flight.wait();
                }
                None => {
                    let flight = Arc::new(Flight::default());
                    st.slots.insert(block, Slot::Pending(flight.clone()));
                    flight
                }
            }
        };
        let mut guard = FlightGuard {
            cache: self,
            block,
            flight,
            armed: true,
        };
        self.counters.decodes.fetch_add(1, Ordering::Relaxed);
        self.reserve(cost);
        let reservation = Reservation { cache: self, cost };
        let result = decode();
        guard.armed = false;
        {
            let mut st = lock(&self.state);
            reservation.give_back(&mut st);
            st.slots.remove(&block);
            match &result {
                Ok(Decoded::Zero) => self.set_zero(block),
                Ok(Decoded::Data(data)) => self.insert(&mut st, block, data),
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

    /// Keep `data` as Block `block`, evicting the least recently used
    /// Blocks to stay within the budget. A Block bigger than the whole
    /// budget is served to its readers but not kept.
    fn insert(&self, st: &mut State, block: usize, data: &Bytes) {
        let len = data.len() as u64;
        if len > self.budget {
            return;
        }
        while st.bytes + st.in_flight + len > self.budget {
            let Some((_, victim)) = st.lru.pop_first() else {
                break;
            };
            if let Some(Slot::Ready { data, .. }) = st.slots.remove(&victim) {
                st.bytes -= data.len() as u64;
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        st.tick += 1;
        let tick = st.tick;
        st.lru.insert(tick, block);
        st.bytes += len;
        st.peak = st.peak.max(st.bytes + st.in_flight);
        st.slots.insert(
            block,
            Slot::Ready {
                data: data.clone(),
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
            blocks: st.lru.len(),
            zero_blocks: self
                .zero
                .iter()
                .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
                .sum(),
        }
    }
}
