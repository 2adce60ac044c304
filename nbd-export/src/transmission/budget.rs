//! A per-connection bound on payload memory: write payloads read ahead of
//! the device and read data copied out of it hold bytes of the budget until
//! the device has them or the reply is sent.

use std::sync::{Condvar, Mutex};

/// A counting semaphore over payload bytes.
pub(super) struct Budget {
    total: u64,
    avail: Mutex<u64>,
    cv: Condvar,
}

impl Budget {
    /// A budget of `total` bytes.
    pub(super) fn new(total: u64) -> Budget {
        Budget {
            total,
            avail: Mutex::new(total),
            cv: Condvar::new(),
        }
    }

    /// Take `n` bytes, waiting while other requests hold them. `None` when
    /// `n` is more than the whole budget: no amount of waiting would make
    /// room, so the request must be refused instead.
    pub(super) fn acquire(&self, n: u64) -> Option<BudgetGuard<'_>> {
        if n > self.total {
            return None;
        }
        let mut a = self.avail.lock().unwrap_or_else(|p| p.into_inner());
        while *a < n {
            a = self.cv.wait(a).unwrap_or_else(|p| p.into_inner());
        }
        *a -= n;
        Some(BudgetGuard { b: self, n })
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
pub(super) struct BudgetGuard<'a> {
    b: &'a Budget,
    n: u64,
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        *self.b.avail.lock().unwrap_or_else(|p| p.into_inner()) += self.n;
        self.b.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_whole_budget_is_refused_not_waited_for() {
        let b = Budget::new(100);
        assert!(b.acquire(101).is_none());
        let g = b.acquire(60).expect("fits");
        let h = b.acquire(40).expect("fits");
        drop((g, h));
        assert!(b.acquire(100).is_some());
    }
}
