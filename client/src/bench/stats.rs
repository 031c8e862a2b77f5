//! Measurement output for `sluice bench`: latency histograms (microseconds, HdrHistogram), the
//! percentile table, the `.hgrm` percentile-distribution file HdrHistogram's plotter reads,
//! throughput arithmetic and the bench process's own CPU use (getrusage). Pure functions, unit
//! tested on known inputs. It must never round a percentile down below what was recorded (the
//! table reports HdrHistogram's highest-equivalent values) and never divide by a zero duration.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency a histogram tracks: one hour in microseconds (larger values saturate).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    // Bounds are constants that satisfy the crate's preconditions (low >= 1, high >= 2*low,
    // sigfig <= 5), so creation cannot fail; fall back to auto-resizing just in case.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| unreachable_histogram())
}

fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new(3) only fails for sigfig > 5.
    panic!("HdrHistogram rejected constant bounds")
}

/// The percentiles the bench reports, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// 50th percentile.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises a histogram.
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                count: 0,
                mean_us: 0.0,
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                p9999_us: 0,
                max_us: 0,
            };
        }
        LatencySummary {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            p9999_us: histogram.value_at_quantile(0.9999),
            max_us: histogram.max(),
        }
    }

    /// The table printed at the end of a run, in milliseconds.
    pub fn table(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n{:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}\n",
            "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean",
            ms(self.p50_us), ms(self.p90_us), ms(self.p99_us), ms(self.p999_us),
            ms(self.p9999_us), ms(self.max_us), self.mean_us / 1000.0
        )
    }

    /// JSON object with millisecond values.
    pub fn to_json_ms(&self) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        json!({
            "count": self.count,
            "mean": self.mean_us / 1000.0,
            "p50": ms(self.p50_us),
            "p90": ms(self.p90_us),
            "p99": ms(self.p99_us),
            "p99_9": ms(self.p999_us),
            "p99_99": ms(self.p9999_us),
            "max": ms(self.max_us),
        })
    }
}

/// HdrHistogram's percentile-distribution text (".hgrm"), values in milliseconds, as written
/// by its `outputPercentileDistribution` and read by its plotter.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !histogram.is_empty() {
        for v in histogram.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value_ms = v.value_iterated_to() as f64 / 1000.0;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value_ms:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value_ms:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / 1000.0,
        histogram.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        histogram.distinct_values() / usize::from(histogram.buckets().max(1))
    );
    out
}

/// Throughput of `units` over `elapsed_s` seconds (0 when no time passed).
pub fn per_second(units: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        units as f64 / elapsed_s
    } else {
        0.0
    }
}

/// One sample of a catching-up consumer (`sluice bench consume --catch-up`). The records read
/// are counted before the topic's end offsets are asked for, so `end_records - read_records`
/// never understates the lag at that instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagSample {
    /// Seconds since the consumer started.
    pub t_s: f64,
    /// Records between the consumer's start offsets and the topic's end offsets.
    pub end_records: u64,
    /// Records the consumer had read.
    pub read_records: u64,
    /// Batch bytes the consumer had read.
    pub read_bytes: u64,
}

impl LagSample {
    /// Records the consumer is behind.
    pub fn lag_records(&self) -> u64 {
        self.end_records.saturating_sub(self.read_records)
    }
}

/// What a catch-up run came to: when the lag first reached the threshold, and the read and
/// produce rates up to then (or over the whole run when it never did).
#[derive(Debug, Clone, PartialEq)]
pub struct CatchUp {
    /// Seconds until the lag was first at most the threshold; None: not within the run.
    pub caught_up_s: Option<f64>,
    /// Lag at the first sample.
    pub lag_records_at_start: u64,
    /// Lag at the last sample considered.
    pub lag_records_at_end: u64,
    /// Records read per second while catching up.
    pub read_records_per_s: f64,
    /// Batch bytes read per second (10^6) while catching up.
    pub read_mb_per_s: f64,
    /// Records the producer added per second over the same samples.
    pub produce_records_per_s: f64,
}

impl CatchUp {
    /// Summarises `samples` (in time order) against a caught-up threshold of `lag_records_max`.
    pub fn of(samples: &[LagSample], lag_records_max: u64) -> CatchUp {
        let first = samples.first().copied().unwrap_or(LagSample {
            t_s: 0.0,
            end_records: 0,
            read_records: 0,
            read_bytes: 0,
        });
        let caught = samples
            .iter()
            .find(|s| s.lag_records() <= lag_records_max)
            .copied();
        let last = caught.or(samples.last().copied()).unwrap_or(first);
        CatchUp {
            caught_up_s: caught.map(|s| s.t_s),
            lag_records_at_start: first.lag_records(),
            lag_records_at_end: last.lag_records(),
            read_records_per_s: per_second(last.read_records, last.t_s),
            read_mb_per_s: per_second(last.read_bytes, last.t_s) / 1e6,
            produce_records_per_s: per_second(
                last.end_records.saturating_sub(first.end_records),
                last.t_s - first.t_s,
            ),
        }
    }

    /// JSON object; `samples` become `[t_s, lag_records, read_records]` rows.
    pub fn to_json(&self, lag_records_max: u64, samples: &[LagSample]) -> Value {
        json!({
            "caught_up": self.caught_up_s.is_some(),
            "time_to_catch_up_s": self.caught_up_s,
            "caught_up_lag_records": lag_records_max,
            "lag_records_at_start": self.lag_records_at_start,
            "lag_records_at_end": self.lag_records_at_end,
            "read_records_per_s": self.read_records_per_s,
            "read_mb_per_s": self.read_mb_per_s,
            "produce_records_per_s": self.produce_records_per_s,
            "samples": samples
                .iter()
                .map(|s| json!([s.t_s, s.lag_records(), s.read_records]))
                .collect::<Vec<_>>(),
        })
    }
}

/// User and system CPU seconds consumed by this process so far.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuTimes {
    /// User-mode seconds.
    pub user_s: f64,
    /// Kernel-mode seconds.
    pub sys_s: f64,
}

impl CpuTimes {
    /// Reads getrusage(RUSAGE_SELF); zeros if the call fails.
    pub fn now() -> CpuTimes {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a complete rusage into the pointer we own; on failure we
        // never read it.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return CpuTimes::default();
        }
        // SAFETY: rc == 0 means the kernel filled the struct.
        let usage = unsafe { usage.assume_init() };
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        CpuTimes {
            user_s: secs(usage.ru_utime),
            sys_s: secs(usage.ru_stime),
        }
    }

    /// CPU used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            sys_s: (self.sys_s - earlier.sys_s).max(0.0),
        }
    }

    /// Percent of one core over `wall_s` seconds.
    pub fn percent_of_core(self, wall_s: f64) -> f64 {
        if wall_s > 0.0 {
            100.0 * (self.user_s + self.sys_s) / wall_s
        } else {
            0.0
        }
    }

    /// One line for the text report.
    pub fn line(self, wall_s: f64) -> String {
        format!(
            "bench cpu: user {:.2} s, sys {:.2} s = {:.1}% of one core over {:.2} s wall",
            self.user_s,
            self.sys_s,
            self.percent_of_core(wall_s),
            wall_s
        )
    }

    /// JSON object.
    pub fn to_json(self, wall_s: f64) -> Value {
        json!({"user_s": self.user_s, "sys_s": self.sys_s, "percent_of_core": self.percent_of_core(wall_s)})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_thousand() {
        // Values up to 2048 are exact at 3 significant digits, so the answers are exact.
        let mut h = new_latency_histogram();
        for v in 1..=1000u64 {
            h.saturating_record(v);
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p90_us, 900);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.p999_us, 999);
        assert_eq!(s.p9999_us, 1000);
        assert_eq!(s.max_us, 1000);
        assert!((s.mean_us - 500.5).abs() < 1e-9);
    }

    #[test]
    fn one_outlier_owns_the_tail() {
        let mut h = new_latency_histogram();
        for _ in 0..9_999 {
            h.saturating_record(100);
        }
        h.saturating_record(2_000_000); // one 2 s stall
        let s = LatencySummary::of(&h);
        assert_eq!(s.p99_us, 100);
        assert_eq!(s.p999_us, 100);
        // 99.99% of 10,000 = 9,999 samples are <= 100 us; the stall only shows at max.
        assert_eq!(s.p9999_us, 100);
        // HdrHistogram reports the highest value equivalent to 2 s at 3 significant digits.
        assert!(
            s.max_us >= 2_000_000 && s.max_us <= 2_002_000,
            "{}",
            s.max_us
        );
        assert_eq!(LatencySummary::of(&new_latency_histogram()).count, 0);
    }

    #[test]
    fn json_reports_every_percentile_in_ms() {
        let mut h = new_latency_histogram();
        for v in 1..=10_000u64 {
            h.saturating_record(v);
        }
        let doc = LatencySummary::of(&h).to_json_ms();
        // Above 8,192 us HdrHistogram's buckets at 3 significant digits are 8 us wide and the
        // summary reports a bucket's highest equivalent value (9,990 -> 9,991; 10,000 ->
        // 10,007); p99.99 is the 9,999th value, distinct from the maximum.
        assert_eq!(doc["p50"], json!(5.003));
        assert_eq!(doc["p99"], json!(9.903));
        assert_eq!(doc["p99_9"], json!(9.991));
        assert_eq!(doc["p99_99"], json!(9.999));
        assert_eq!(doc["max"], json!(10.007));
        assert_eq!(doc["count"], json!(10_000));
    }

    #[test]
    fn catch_up_finds_the_first_sample_at_the_threshold() {
        let sample = |t_s: f64, end_records: u64, read_records: u64| LagSample {
            t_s,
            end_records,
            read_records,
            read_bytes: read_records * 1000,
        };
        // 10,000 records behind at start; the producer adds 1,000/s, the reader takes 3,000/s.
        let samples = [
            sample(0.0, 10_000, 0),
            sample(2.0, 12_000, 6_000),
            sample(4.0, 14_000, 12_000),
            sample(5.0, 15_000, 14_900),
            sample(6.0, 16_000, 16_000),
        ];
        let c = CatchUp::of(&samples, 100);
        assert_eq!(c.caught_up_s, Some(5.0));
        assert_eq!(c.lag_records_at_start, 10_000);
        assert_eq!(c.lag_records_at_end, 100);
        assert!((c.read_records_per_s - 2_980.0).abs() < 1e-9);
        assert!((c.read_mb_per_s - 2.98).abs() < 1e-9);
        assert!((c.produce_records_per_s - 1_000.0).abs() < 1e-9);
        // A threshold never met: not caught up, rates over the whole run.
        let never = CatchUp::of(&samples[..3], 100);
        assert_eq!(never.caught_up_s, None);
        assert_eq!(never.lag_records_at_end, 2_000);
        assert!((never.read_records_per_s - 3_000.0).abs() < 1e-9);
        let doc = never.to_json(100, &samples[..2]);
        assert_eq!(doc["caught_up"], json!(false));
        assert_eq!(
            doc["samples"],
            json!([[0.0, 10_000, 0], [2.0, 6_000, 6_000]])
        );
        // No samples at all: nothing to divide by.
        assert_eq!(CatchUp::of(&[], 100).read_records_per_s, 0.0);
    }

    #[test]
    fn hgrm_has_header_rows_and_footer() {
        let mut h = new_latency_histogram();
        // Values up to 2048 us are exact at 3 significant digits.
        for v in [500u64, 1000, 1500, 2000] {
            h.saturating_record(v);
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        assert!(text.contains("       0.500 0.000000000000          1           1.00"));
        let last_row = text.lines().rfind(|l| !l.starts_with('#') && !l.is_empty());
        assert_eq!(last_row, Some("       2.000 1.000000000000          4"));
        assert!(text.contains("#[Max     =        2.000, Total count    =            4]"));
    }

    #[test]
    fn throughput_and_cpu_arithmetic() {
        assert_eq!(per_second(1000, 2.0), 500.0);
        assert_eq!(per_second(1000, 0.0), 0.0);
        let cpu = CpuTimes {
            user_s: 1.5,
            sys_s: 0.5,
        };
        assert!((cpu.percent_of_core(4.0) - 50.0).abs() < 1e-9);
        let later = CpuTimes::now();
        assert!(later.user_s + later.sys_s >= 0.0);
    }
}
