//! One HdrHistogram plus the exact sum of what was recorded into it: the unit every stage,
//! API and batch-size measurement is kept in, on a shard and in a merged snapshot.
//!
//! Owns: the bounds and precision of every histogram, clamping of out-of-range values, and the
//! percentile math ([`Summary`]). Must never: fail or panic on a recorded value (values past
//! the bound are clamped to it and still counted), or allocate after construction when recording.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Significant decimal digits kept: values are exact below 2,048 and within 0.1% above.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Highest latency tracked; longer ones are recorded as this value (60 s).
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Highest group-commit size in bytes tracked (16 GiB).
pub const BATCH_BYTES_MAX: u64 = 1 << 34;
/// Highest group-commit size in records tracked.
pub const BATCH_RECORDS_MAX: u64 = 1 << 32;

/// A histogram of `u64` values with its exact sum, `Send + Clone`.
///
/// The sum is kept beside the buckets because HdrHistogram only knows bucket midpoints;
/// Prometheus `_sum` and the mean must be exact.
#[derive(Debug, Clone)]
pub struct Recorded {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Recorded {
    /// An empty histogram tracking `0..=value_max` at [`SIGNIFICANT_DIGITS`].
    ///
    /// `value_max` must be at least 2; every caller passes one of this module's constants.
    pub fn new(value_max: u64) -> Self {
        // The bounds are compile-time constants of this crate (checked by the tests below),
        // so construction cannot fail at run time; a failure here is a programming error.
        let histogram = Histogram::new_with_bounds(1, value_max.max(2), SIGNIFICANT_DIGITS)
            .expect("histogram bounds are constants valid for hdrhistogram");
        Recorded { histogram, sum: 0 }
    }

    /// Records one value; values past the bound are clamped to it. Never fails.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.histogram.saturating_record(value);
        self.sum = self.sum.saturating_add(value);
    }

    /// Records `count` occurrences of `value`; values past the bound are clamped. Never fails.
    #[inline]
    pub fn record_n(&mut self, value: u64, count: u64) {
        // `saturating_record_n` clamps the value, not the count, so no error path remains.
        let _ = self
            .histogram
            .record_n(value.min(self.histogram.high()), count);
        self.sum = self.sum.saturating_add(value.saturating_mul(count));
    }

    /// Adds every value of `other` into `self`. Never fails: a value `self` cannot hold is
    /// clamped to its bound.
    pub fn merge(&mut self, other: &Recorded) {
        if self.histogram.add(&other.histogram).is_err() {
            // Only reachable when `other` has a wider range than `self`; fall back to
            // re-recording each bucket, clamped.
            for v in other.histogram.iter_recorded() {
                let value = v.value_iterated_to().min(self.histogram.high());
                let _ = self.histogram.record_n(value, v.count_at_value());
            }
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Exact sum of recorded values (saturating at `u64::MAX`).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Largest value recorded (highest equivalent value of its bucket), 0 when empty.
    pub fn max(&self) -> u64 {
        self.histogram.max()
    }

    /// Smallest value recorded (lowest equivalent value of its bucket), 0 when empty.
    pub fn min(&self) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.min()
        }
    }

    /// Exact arithmetic mean from the sum, 0.0 when empty.
    pub fn mean(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum as f64 / n as f64,
        }
    }

    /// The value at `quantile` in `[0, 1]`: the smallest recorded value `v` such that at
    /// least `quantile` of all values are `<= v` (HdrHistogram semantics). 0 when empty.
    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram.value_at_quantile(quantile.clamp(0.0, 1.0))
    }

    /// The underlying histogram, for callers that want every bucket (e.g. `.hgrm` export).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    /// The fixed set of statistics shown by `/stats` and `sluice stats`.
    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            sum: self.sum,
            min: self.min(),
            mean: self.mean(),
            p50: self.value_at_quantile(0.5),
            p90: self.value_at_quantile(0.9),
            p99: self.value_at_quantile(0.99),
            p999: self.value_at_quantile(0.999),
            max: self.max(),
        }
    }
}

/// Percentiles and totals of one histogram, in the histogram's unit (named by the section it
/// appears in: `stages_ns`, `group_commit_bytes`, ...). All zero when nothing was recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Number of values recorded.
    pub count: u64,
    /// Exact sum of the values.
    pub sum: u64,
    /// Smallest value.
    pub min: u64,
    /// Exact mean (`sum / count`).
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_constant_builds() {
        for bound in [
            LATENCY_NS_MAX,
            BATCH_BYTES_MAX,
            BATCH_RECORDS_MAX,
            0,
            1,
            u64::MAX / 2,
        ] {
            let h = Recorded::new(bound);
            assert_eq!(h.count(), 0);
        }
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_are_exact() {
        let mut h = Recorded::new(LATENCY_NS_MAX);
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.sum, 500_500);
        assert_eq!(s.min, 1);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert_eq!(s.max, 1000);
        assert!((s.mean - 500.5).abs() < 1e-9);
    }

    #[test]
    fn large_values_are_within_a_tenth_of_a_percent() {
        let mut h = Recorded::new(LATENCY_NS_MAX);
        h.record(123_456_789);
        let max = h.max();
        assert!(
            (123_456_789..=123_456_789 + 123_457).contains(&max),
            "{max}"
        );
        assert_eq!(h.sum(), 123_456_789, "sum is exact");
    }

    #[test]
    fn values_past_the_bound_are_clamped_and_counted() {
        let mut h = Recorded::new(LATENCY_NS_MAX);
        h.record(u64::MAX);
        h.record_n(u64::MAX, 3);
        assert_eq!(h.count(), 4);
        assert!(h.max() >= LATENCY_NS_MAX);
        assert_eq!(h.sum(), u64::MAX, "sum saturates instead of wrapping");
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = Recorded::new(LATENCY_NS_MAX);
        assert_eq!(h.summary(), Summary::default());
    }

    #[test]
    fn merge_across_different_bounds_clamps() {
        let mut small = Recorded::new(1000);
        let mut big = Recorded::new(LATENCY_NS_MAX);
        big.record(5_000_000);
        big.record(7);
        small.merge(&big);
        assert_eq!(small.count(), 2);
        assert_eq!(small.min(), 7);
        assert!(small.max() >= 1000 && small.max() < 1100);
    }
}
