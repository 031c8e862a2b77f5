//! One HdrHistogram plus the exact sum of what was recorded into it: the unit every stage,
//! API and batch-size measurement is kept in, on a shard and in a merged snapshot.
//!
//! Owns: the bounds and precision of every histogram, clamping of out-of-range values, and the
//! percentile math ([`Summary`]). Must never: fail or panic on a recorded value (values past
//! the bound are clamped to it and still counted), or allocate after construction when recording.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
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

/// The recording form: a dense HdrHistogram plus the exact sum, owned by one shard.
///
/// The sum is kept beside the buckets because HdrHistogram only knows bucket bounds;
/// Prometheus `_sum` and the mean must be exact.
#[derive(Debug)]
pub(crate) struct Recorder {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Recorder {
    /// An empty histogram tracking `0..=value_max` at [`SIGNIFICANT_DIGITS`].
    pub(crate) fn new(value_max: u64) -> Self {
        Recorder {
            histogram: dense(value_max),
            sum: 0,
        }
    }

    /// Records one value; values past the bound are clamped to it. Never fails.
    #[inline]
    pub(crate) fn record(&mut self, value: u64) {
        self.histogram.saturating_record(value);
        self.sum = self.sum.saturating_add(value);
    }

    /// The compact copy sent off the shard: HdrHistogram's V2 encoding (run-length zeros,
    /// varint counts), tens of KiB at most. Encoding walks the counts array directly, which is
    /// several times cheaper than cloning the 220 KiB array into fresh, page-faulting memory
    /// or iterating it value by value. An empty histogram encodes to nothing.
    pub(crate) fn encode(&self, serializer: &mut V2Serializer) -> Encoded {
        let mut bytes = Vec::new();
        if !self.histogram.is_empty() {
            if let Err(e) = serializer.serialize(&self.histogram, &mut bytes) {
                // Writing into a Vec cannot fail for I/O; report rather than panic if the
                // encoder ever refuses a histogram, and ship the sum alone.
                tracing::warn!(error = %e, "encoding a shard histogram failed; its buckets are left out of this snapshot");
                bytes.clear();
            }
        }
        Encoded {
            bytes,
            sum: self.sum,
        }
    }
}

/// An empty dense histogram over `0..=value_max`.
fn dense(value_max: u64) -> Histogram<u64> {
    // The bounds are constants of this crate (every one is built by the tests below), so
    // construction cannot fail at run time; a failure here is a programming error.
    Histogram::new_with_bounds(1, value_max.max(2), SIGNIFICANT_DIGITS)
        .expect("histogram bounds are constants valid for hdrhistogram")
}

/// A shard histogram in transit: V2-encoded buckets plus the exact sum. `Send + Clone`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    sum: u64,
}

impl Encoded {
    /// Size of the encoded buckets.
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Why a shard's histogram could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("decoding a shard histogram: {0}")]
pub(crate) struct DecodeError(String);

/// A merged histogram with its exact sum: what snapshots hold and percentiles come from.
///
/// Percentiles are HdrHistogram's: the value at quantile `q` is the top of the first bucket
/// where the running count reaches `ceil(q * count)`, exact below 2,048 and within 0.1% above.
#[derive(Debug, Clone)]
pub struct Distribution {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Distribution {
    /// An empty distribution over `0..=value_max`.
    pub fn empty(value_max: u64) -> Self {
        Distribution {
            histogram: dense(value_max),
            sum: 0,
        }
    }

    /// Decodes a shard's histogram.
    #[cfg(test)]
    pub(crate) fn decode(
        encoded: &Encoded,
        deserializer: &mut Deserializer,
    ) -> Result<Self, DecodeError> {
        let mut d = Distribution::empty(LATENCY_NS_MAX);
        d.add_encoded(encoded, deserializer)?;
        Ok(d)
    }

    /// Adds a shard's histogram into this one.
    pub(crate) fn add_encoded(
        &mut self,
        encoded: &Encoded,
        deserializer: &mut Deserializer,
    ) -> Result<(), DecodeError> {
        if !encoded.bytes.is_empty() {
            let h: Histogram<u64> = deserializer
                .deserialize(&mut &encoded.bytes[..])
                .map_err(|e| DecodeError(format!("{e:?}")))?;
            self.add_histogram(&h);
        }
        self.sum = self.sum.saturating_add(encoded.sum);
        Ok(())
    }

    /// Adds every value of `other` into `self`.
    pub fn merge(&mut self, other: &Distribution) {
        self.add_histogram(&other.histogram);
        self.sum = self.sum.saturating_add(other.sum);
    }

    fn add_histogram(&mut self, other: &Histogram<u64>) {
        if self.histogram.add(other).is_err() {
            // Only reachable when `other` has a wider range than `self`: re-record each
            // bucket, clamped to our bound, instead of failing the scrape.
            for v in other.iter_recorded() {
                self.histogram
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Exact sum of recorded values (saturating at `u64::MAX`).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Largest value recorded (top of its bucket), 0 when empty.
    pub fn max(&self) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.max()
        }
    }

    /// Smallest value recorded (bottom of its bucket), 0 when empty.
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

    /// The value at `quantile` in `[0, 1]` (clamped; NaN reads as 0). 0 when empty.
    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        let quantile = if quantile.is_nan() {
            0.0
        } else {
            quantile.clamp(0.0, 1.0)
        };
        self.histogram.value_at_quantile(quantile)
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

    /// Records `values` on a "shard", encodes, and decodes on the "admin side".
    fn dist(values: impl IntoIterator<Item = u64>) -> Distribution {
        let mut r = Recorder::new(LATENCY_NS_MAX);
        for v in values {
            r.record(v);
        }
        let encoded = r.encode(&mut V2Serializer::new());
        Distribution::decode(&encoded, &mut Deserializer::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_bound_constant_builds() {
        for bound in [LATENCY_NS_MAX, BATCH_BYTES_MAX, BATCH_RECORDS_MAX, 0, 1] {
            assert_eq!(Distribution::empty(bound).count(), 0);
        }
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_are_exact() {
        let s = dist(1..=1000).summary();
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
    fn encoding_round_trip_keeps_every_bucket() {
        // A skewed spread across many buckets, compared with a histogram that never left.
        let values: Vec<u64> = (1..=20_000u64)
            .map(|i| i * i * 37 % 5_000_000_000)
            .collect();
        let d = dist(values.iter().copied());
        let mut h = dense(LATENCY_NS_MAX);
        for v in &values {
            h.saturating_record(*v);
        }
        assert_eq!(d.histogram(), &h);
        for q in [0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(d.value_at_quantile(q), h.value_at_quantile(q), "q={q}");
        }
        assert_eq!(d.sum(), values.iter().sum::<u64>());
    }

    #[test]
    fn large_values_are_within_a_tenth_of_a_percent() {
        let d = dist([123_456_789]);
        assert!(
            (123_456_789..=123_456_789 + 123_457).contains(&d.max()),
            "{}",
            d.max()
        );
        assert_eq!(d.sum(), 123_456_789, "sum is exact");
    }

    #[test]
    fn values_past_the_bound_are_clamped_and_counted() {
        let d = dist([u64::MAX, u64::MAX]);
        assert_eq!(d.count(), 2);
        assert!(d.max() >= LATENCY_NS_MAX);
        assert_eq!(d.sum(), u64::MAX, "sum saturates instead of wrapping");
    }

    #[test]
    fn empty_distribution_reports_zeros_and_encodes_to_nothing() {
        assert_eq!(dist([]).summary(), Summary::default());
        assert_eq!(dist([]).value_at_quantile(f64::NAN), 0);
        let r = Recorder::new(LATENCY_NS_MAX);
        assert_eq!(r.encode(&mut V2Serializer::new()).len_bytes(), 0);
    }

    #[test]
    fn merge_equals_recording_everything_in_one_place() {
        let mut merged = dist((1..=5000).map(|v| v * 101));
        merged.merge(&dist((2500..=9000).map(|v| v * 53)));
        merged.merge(&dist([]));
        let together = dist(
            (1..=5000)
                .map(|v| v * 101)
                .chain((2500..=9000).map(|v| v * 53)),
        );
        assert_eq!(merged.histogram(), together.histogram());
        assert_eq!(merged.sum(), together.sum());
    }

    #[test]
    fn merge_across_different_bounds_clamps() {
        let mut small = Distribution::empty(1000);
        small.merge(&dist([5_000_000, 7]));
        assert_eq!(small.count(), 2);
        assert_eq!(small.min(), 7);
        assert!((1000..1100).contains(&small.max()), "{}", small.max());
    }

    #[test]
    fn garbage_bytes_are_a_decode_error() {
        let bad = Encoded {
            bytes: vec![0x1c, 0x84, 0x93, 0x13, 0, 0, 0, 0xff, 1, 2, 3],
            sum: 0,
        };
        assert!(Distribution::decode(&bad, &mut Deserializer::new()).is_err());
    }
}
