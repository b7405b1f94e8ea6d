//! Latency histogram with log-linear buckets.
//!
//! Values are nanoseconds. Below 128 every value has its own bucket; above that each power of
//! two is split into 64 equal buckets, so a reported percentile is within about 1.6 % of the
//! true value. Recording is a couple of integer operations and one increment, cheap enough to do
//! for every operation.

/// Number of bits of linear resolution inside one power of two.
const SUB_BITS: u32 = 6;
/// Buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// A histogram of latencies in nanoseconds.
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    /// Makes an empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    /// Bucket index of a value; monotonic in `v`.
    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let shift = exp - SUB_BITS;
        let sub = (v >> shift) - SUB; // in 0..SUB
        ((shift + 1) as u64 * SUB + sub) as usize
    }

    /// Lowest value of a bucket and its width.
    fn bucket_range(i: usize) -> (u64, u64) {
        let i = i as u64;
        if i < 2 * SUB {
            return (i, 1);
        }
        let shift = i / SUB - 1;
        let sub = i % SUB;
        ((SUB + sub) << shift, 1 << shift)
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Largest recorded value, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0..=1.0): the middle of the bucket holding it, never above
    /// the largest value recorded. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bucket_range(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_monotonic_and_ranges_match() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(7).chain([u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i >= last, "index not monotonic at {v}");
            assert!(i < BUCKETS);
            let (low, width) = Histogram::bucket_range(i);
            assert!(low <= v && v - low < width, "{v} not in bucket {i} ({low}, {width})");
            last = i;
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "p50 {p50}");
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.02, "p99 {p99}");
        assert_eq!(h.quantile(1.0), 100_000_000);
        let mut merged = Histogram::new();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.total, 2 * h.total);
        assert_eq!(merged.quantile(0.5), h.quantile(0.5));
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
