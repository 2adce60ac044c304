//! Latency histograms with log2 buckets, as the `stats` filter and the web
//! view keep them: one counter per power of two of microseconds, so adding
//! a request is one increment and the counters stay few, and a percentile
//! is read off within a factor of two.

/// Buckets: bucket `b` holds latencies needing `b` bits in microseconds,
/// `[2^(b-1), 2^b)` (bucket 0: under 1 µs). 40 reach past six days;
/// anything longer lands in the last.
pub const BUCKETS: usize = 40;

/// The bucket of a latency of `us` microseconds.
pub fn bucket(us: u64) -> usize {
    ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// The upper bound (µs, exclusive) of bucket `b`.
pub fn bucket_limit(b: usize) -> u64 {
    1u64 << b
}

/// The latency under which a fraction `p` of the requests counted in
/// `hist` completed, as the upper bound of its bucket (µs): an estimate
/// within a factor of two, which is what a log2 histogram can say. `None`
/// when nothing was counted.
pub fn percentile(hist: &[u64; BUCKETS], p: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * p).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(bucket_limit(b));
        }
    }
    Some(bucket_limit(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_percentiles() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 3);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        let mut h = [0u64; BUCKETS];
        assert_eq!(percentile(&h, 0.5), None);
        h[bucket(5)] = 90; // [4, 8)
        h[bucket(100)] = 9; // [64, 128)
        h[bucket(5000)] = 1; // [4096, 8192)
        assert_eq!(percentile(&h, 0.5), Some(8));
        assert_eq!(percentile(&h, 0.9), Some(8));
        assert_eq!(percentile(&h, 0.99), Some(128));
        assert_eq!(percentile(&h, 1.0), Some(8192));
    }
}
