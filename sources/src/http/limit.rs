//! The cap on requests in flight per device, and the progress meter every
//! request reports to.
//!
//! The device is shared by every NBD connection, so without a cap a busy
//! client could open dozens of connections to the origin. But a plain
//! counting semaphore lets a few stalled requests (an origin dripping a byte
//! a second into some ranges) hold every slot, and then a read of a range the
//! origin serves at full speed waits behind them. So a request counts
//! against the cap only while it moves: one that has received less than
//! [`StallRule::min_bytes`] in the last [`StallRule::window`] (nothing yet
//! included: a response head that does not come) stops counting, and a new
//! request may start. A hard cap ([`Limit::new`]'s `hard_max`) still bounds
//! the connections and threads stalled requests can tie up; the stalled ones
//! end on their own through the low-speed limit and the request deadline
//! (see `remote.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a request waiting for a slot re-checks whether a holder has
/// stalled meanwhile (holders do not announce it).
const RECHECK: Duration = Duration::from_millis(200);
/// Samples closer together than this are merged (memory per request stays
/// bounded however small the reads).
const RESOLUTION: Duration = Duration::from_millis(100);

/// When a holder is considered stalled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StallRule {
    /// The recent span looked at (and the least time a request is given).
    pub(crate) window: Duration,
    /// Fewer body bytes than this over `window` is a stall (at least 1).
    pub(crate) min_bytes: u64,
}

/// Body bytes received by one request over time.
#[derive(Debug)]
struct Meter {
    /// `(when, total bytes by then)`, oldest first; the first is the start
    /// `(started, 0)` until pruned. Every sample is an exact observation.
    samples: VecDeque<(Instant, u64)>,
    total: u64,
}

impl Meter {
    /// Bytes received after `t` (at least: the sample used as base is the
    /// last observation at or before `t`, so bytes are never under-counted).
    fn bytes_since(&self, t: Instant) -> u64 {
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(when, _)| *when <= t)
            .or(self.samples.front())
            .map_or(0, |&(_, n)| n);
        self.total - base
    }
}

/// The progress of one request, reported by the thread reading it and
/// looked at by requests waiting for a slot.
#[derive(Debug)]
pub(crate) struct Progress {
    started: Instant,
    /// Samples older than this are pruned (one at or before it is kept).
    keep: Duration,
    meter: Mutex<Meter>,
}

impl Progress {
    fn new(keep: Duration) -> Self {
        let started = Instant::now();
        Progress {
            started,
            keep,
            meter: Mutex::new(Meter {
                samples: VecDeque::from([(started, 0)]),
                total: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` more body bytes arrived.
    pub(crate) fn add(&self, n: u64) {
        let now = Instant::now();
        let mut m = self.lock();
        m.total += n;
        let total = m.total;
        let len = m.samples.len();
        // Merge into the newest sample while it is close to the one before,
        // so consecutive kept samples are at least RESOLUTION apart.
        if len >= 2 && now.duration_since(m.samples[len - 2].0) < RESOLUTION {
            m.samples[len - 1] = (now, total);
        } else {
            m.samples.push_back((now, total));
        }
        if let Some(cutoff) = now.checked_sub(self.keep) {
            while m.samples.len() >= 2 && m.samples[1].0 <= cutoff {
                m.samples.pop_front();
            }
        }
    }

    /// Whether fewer than `min_bytes` arrived over the last `span`, once
    /// the request is at least `span` old (counted from `since`).
    pub(crate) fn slower_than(&self, min_bytes: u64, span: Duration, since: Instant) -> bool {
        let now = Instant::now();
        if now.duration_since(since) < span {
            return false;
        }
        let Some(from) = now.checked_sub(span) else {
            return false;
        };
        self.lock().bytes_since(from) < min_bytes
    }

    fn stalled(&self, rule: &StallRule) -> bool {
        self.slower_than(rule.min_bytes.max(1), rule.window, self.started)
    }
}

/// The in-flight cap of one device.
#[derive(Debug)]
pub(crate) struct Limit {
    holders: Mutex<Vec<Arc<Progress>>>,
    freed: Condvar,
    max: usize,
    hard_max: usize,
    stall: StallRule,
    keep: Duration,
}

/// One slot, released on drop; reports the request's progress.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    limit: &'a Limit,
    progress: Arc<Progress>,
}

impl Limit {
    /// At most `max` requests in flight that are not stalled by `stall`,
    /// and at most `hard_max` in all (each at least `max`, at least 1).
    /// Progress samples are kept for `keep` (the longest span a caller will
    /// ask [`Progress::slower_than`] about).
    pub(crate) fn new(max: usize, hard_max: usize, stall: StallRule, keep: Duration) -> Self {
        let max = max.max(1);
        Limit {
            holders: Mutex::new(Vec::new()),
            freed: Condvar::new(),
            max,
            hard_max: hard_max.max(max),
            stall,
            keep: keep.max(stall.window),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Progress>>> {
        // A panicking holder cannot leave the list inconsistent: the
        // Permit's drop still runs.
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a slot: fewer than `max` moving holders and fewer than
    /// `hard_max` in all.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        let mut holders = self.lock();
        loop {
            let full = holders.len() >= self.hard_max;
            if !full {
                let moving = holders.iter().filter(|p| !p.stalled(&self.stall)).count();
                if moving < self.max {
                    if moving < holders.len() {
                        log::debug!(
                            "{} of {} requests to the origin stalled; not counting them against \
                             the cap of {}",
                            holders.len() - moving,
                            holders.len(),
                            self.max
                        );
                    }
                    let progress = Arc::new(Progress::new(self.keep));
                    holders.push(progress.clone());
                    return Permit {
                        limit: self,
                        progress,
                    };
                }
            }
            holders = if full {
                self.freed.wait(holders).unwrap_or_else(|e| e.into_inner())
            } else {
                // A holder may stall without a word: look again soon.
                match self.freed.wait_timeout(holders, RECHECK) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                }
            };
        }
    }
}

impl Permit<'_> {
    /// The request's progress meter.
    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut holders = self.limit.lock();
        if let Some(i) = holders.iter().position(|p| Arc::ptr_eq(p, &self.progress)) {
            holders.swap_remove(i);
        }
        drop(holders);
        self.limit.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const RULE: StallRule = StallRule {
        window: Duration::from_millis(300),
        min_bytes: 1000,
    };

    #[test]
    fn never_more_than_max_moving_holders() {
        let limit = Limit::new(3, 12, RULE, Duration::from_secs(1));
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    let p = limit.acquire();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    // Moving fast: never stalled.
                    for _ in 0..10 {
                        p.progress().add(10_000);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=3).contains(&peak), "{peak}");
    }

    #[test]
    fn stalled_holders_stop_counting_up_to_the_hard_cap() {
        let limit = Limit::new(2, 4, RULE, Duration::from_secs(1));
        let a = limit.acquire();
        let b = limit.acquire();
        // Both silent: after the window they no longer count.
        let t = Instant::now();
        let c = limit.acquire();
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        // A holder that moves counts again.
        c.progress().add(5000);
        let d = limit.acquire();
        // Hard cap: a fifth waits until one is dropped.
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let t = Instant::now();
                let _e = limit.acquire();
                t.elapsed()
            });
            std::thread::sleep(Duration::from_millis(600));
            drop(a);
            let waited = h.join().unwrap();
            assert!(waited >= Duration::from_millis(500), "{waited:?}");
        });
        drop((b, c, d));
        assert!(limit.lock().is_empty());
    }

    #[test]
    fn a_trickle_is_slow_and_a_stream_is_not() {
        let p = Progress::new(Duration::from_secs(2));
        let start = Instant::now();
        assert!(!p.slower_than(100, Duration::from_millis(200), start));
        for _ in 0..5 {
            p.add(1);
            std::thread::sleep(Duration::from_millis(60));
        }
        assert!(p.slower_than(100, Duration::from_millis(200), start));
        p.add(500);
        assert!(!p.slower_than(100, Duration::from_millis(200), start));
        // Counted from a later start, the span has not passed yet.
        assert!(!p.slower_than(1 << 40, Duration::from_secs(5), Instant::now()));
        // Samples stay few however many reads.
        for _ in 0..10_000 {
            p.add(1);
        }
        assert!(p.lock().samples.len() < 40, "{}", p.lock().samples.len());
    }
}
