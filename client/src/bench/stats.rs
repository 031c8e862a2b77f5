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
