//! A parallel map over a slice for the CPU-bound parts of layout (names,
//! directory bytes), which are independent per directory. Threads are
//! scoped and pull indexes from a counter, so uneven items balance out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `items.iter().enumerate().map(f).collect()`, on all cores, same order.
pub(crate) fn par_map<T, R, F>(items: &[T], f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &T) -> R + Sync,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 || items.len() < 16 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(t) = items.get(i) else { break };
                    mine.push((i, f(i, t)));
                }
                done.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// `f(0)`, …, `f(n - 1)` on all cores, for a request's independent
/// pieces of work (a run of compressed clusters): a client with fewer
/// requests in flight than there are cores still gets them all. The pool
/// stays up between calls (rayon's global pool); this thread waits for it.
pub(crate) fn par_for(n: usize, f: impl Fn(usize) + Sync + Send) {
    use rayon::prelude::*;
    if n <= 1 {
        return (0..n).for_each(f);
    }
    (0..n).into_par_iter().for_each(f);
}

#[cfg(test)]
mod tests {
    #[test]
    fn par_map_keeps_order() {
        let v: Vec<u64> = (0..1000).collect();
        let out = super::par_map(&v, |i, x| (i as u64) * 1000 + x);
        assert_eq!(out, v.iter().map(|x| x * 1001).collect::<Vec<_>>());
    }

    #[test]
    fn par_for_calls_each_index_once() {
        use std::sync::atomic::{AtomicU64, Ordering};
        for n in [0usize, 1, 2, 3, 17] {
            let seen: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            super::par_for(n, |i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }
}
