//! A counting semaphore: the cap on requests in flight per device.

use std::sync::{Condvar, Mutex, MutexGuard};

/// At most `max` holders at once. The device is shared by every NBD
/// connection, so without this a busy client could open dozens of
/// connections to the origin.
#[derive(Debug)]
pub(crate) struct Semaphore {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// One slot, released on drop.
#[derive(Debug)]
pub(crate) struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    /// A semaphore of `max` slots (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Semaphore {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        // A panicking holder cannot leave the count inconsistent: the
        // Permit's drop still runs.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a free slot.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        let mut used = self.lock();
        while *used >= self.max {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn never_more_than_max_holders() {
        let sem = Semaphore::new(3);
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    let _p = sem.acquire();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=3).contains(&peak), "{peak}");
    }
}
