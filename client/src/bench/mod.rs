//! `sluice bench produce|consume|e2e`: a Kafka-protocol load generator that works against any
//! Kafka-compatible broker. Owns the command-line surface, the once-a-second progress line and
//! the final report (text percentile table, `--json`, `--hgrm`). The engines live in
//! `produce.rs`, `consume.rs` and `e2e.rs`; the pure arithmetic in `stats.rs`, `schedule.rs` and
//! `keys.rs`. A run must never report a throughput or latency it did not measure: errors abort
//! the run with a non-zero exit instead of being averaged in.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::cli::ConnArgs;

pub mod batch;
pub mod consume;
pub mod e2e;
pub mod keys;
pub mod produce;
pub mod ready;
pub mod schedule;
pub mod stats;
pub mod timer;

use stats::{new_latency_histogram, per_second, CpuTimes, LatencySummary};

/// Arguments of `sluice bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: BenchMode,
}

impl BenchArgs {
    /// Runtime worker threads the bench wants.
    pub fn threads(&self) -> usize {
        match &self.mode {
            BenchMode::Produce(a) => a.common.threads,
            BenchMode::Consume(a) => a.common.threads,
            BenchMode::E2e(a) => a.produce.common.threads,
        }
    }
}

#[derive(Debug, Subcommand)]
enum BenchMode {
    /// Produce load and measure throughput and acknowledgement latency
    #[command(
        after_help = "Examples:\n  sluice bench produce --topic bench --records 1000000 --record-size 1024 --acks all\n  sluice bench produce --topic bench --partitions 16 --rate 100000 --duration 60s --hgrm produce.hgrm\n  sluice bench produce --keys zipf:1000 --compression lz4 --connections 4 --json\n  sluice bench produce --topic tx --transactional-id bench-tx --transaction-records 100 --duration 10s"
    )]
    Produce(ProduceBenchArgs),
    /// Read a topic as fast as possible and measure throughput and fetch latency
    #[command(
        after_help = "Examples:\n  sluice bench consume --topic bench\n  sluice bench consume --topic bench --consumers 4 --fetch-max-bytes 8388608 --json\n  sluice bench consume --topic tx --isolation-level read_committed"
    )]
    Consume(ConsumeBenchArgs),
    /// Produce at a fixed rate while consuming; measure produce-to-delivery latency
    #[command(
        after_help = "Examples:\n  sluice bench e2e --topic e2e --rate 20000 --duration 30s\n  sluice bench e2e --topic e2e --rate 50000 --records 1000000 --hgrm e2e.hgrm --json"
    )]
    E2e(E2eBenchArgs),
}

/// Flags every bench mode shares.
#[derive(Debug, Clone, Args)]
pub struct CommonBenchArgs {
    /// Topic to use (created if missing)
    #[arg(long, default_value = "sluice-bench")]
    pub topic: String,
    /// Print the final report as one JSON document on stdout
    #[arg(long)]
    pub json: bool,
    /// Also write the latency distribution to FILE in HdrHistogram's .hgrm format (ms)
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<std::path::PathBuf>,
    /// Seconds between progress lines on stderr (0 = none)
    #[arg(long, default_value_t = 1.0)]
    pub progress_interval_s: f64,
    /// Tokio worker threads for the bench itself
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connection flags.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Flags of `sluice bench produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceBenchArgs {
    /// Shared bench flags.
    #[command(flatten)]
    pub common: CommonBenchArgs,
    /// Partitions to create the topic with when it does not exist
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Value size of each record in bytes
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Key distribution: none, uniform:N, seq:N, zipf:N[:S]
    #[arg(long, default_value = "none")]
    pub keys: keys::KeyDistribution,
    /// Records to send (default 1,000,000 unless --duration is given)
    #[arg(long)]
    pub records: Option<u64>,
    /// How long to send, e.g. 30s, 2m, 500ms
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Send this long first, at the same rate, and count nothing of it (OpenMessaging
    /// Benchmark's warm-up): records whose intended send time falls in it are produced,
    /// acknowledged and (e2e) delivered as usual but left out of every figure, so a fresh
    /// process's first seconds (connections, its own memory faulted in) do not make the
    /// tail. Needs --duration, which then counts from the warm-up's end
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Acknowledgements: 0, 1 or all
    #[arg(long, default_value = "all")]
    pub acks: crate::producer::Acks,
    /// Target bytes per partition batch
    #[arg(long, default_value_t = 262_144)]
    pub batch_bytes: usize,
    /// Longest a record waits for its batch to fill
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Producer connections (each a task with its own share of the load)
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Produce requests in flight per connection
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// Largest produce request in bytes
    #[arg(long, default_value_t = 1_048_576)]
    pub request_bytes_max: usize,
    /// Value bytes created and not yet acknowledged, for all connections together (Kafka's
    /// producer `buffer.memory`, here split evenly between the connections, each getting at
    /// least one record): past its share a connection creates no record until acknowledgements
    /// free room, so 1,000 connections queue no more than a few
    #[arg(long, value_name = "BYTES", default_value_t = 268_435_456)]
    pub buffer_memory: usize,
    /// Compression: none, gzip, snappy, lz4, zstd
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Target records per second across all connections (open loop); unlimited when absent
    #[arg(long)]
    pub rate: Option<f64>,
    /// With --rate, measure latency from actual send instead of intended send time
    /// (demonstrates coordinated omission; not for reporting)
    #[arg(long)]
    pub closed_loop: bool,
    /// Seed for keys and payload
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Produce in transactions (needs --acks all): connection n is the transactional
    /// producer `<PREFIX>-<n>`, and EndTxn latency is reported beside the acknowledgements
    #[arg(long, value_name = "PREFIX")]
    pub transactional_id: Option<String>,
    /// With --transactional-id: records per transaction, per connection
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub transaction_records: u64,
    /// With --transactional-id: transaction.timeout.ms sent in InitProducerId
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub transaction_timeout_ms: i32,
    /// Before the clock starts, write one record to every partition (at least --partitions of
    /// them, once metadata shows a grown topic's new ones) and wait up to this many seconds
    /// until all accept (a broker still loading a new topic's partitions refuses produce for
    /// a while); 0 = no probe
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub ready_timeout_s: f64,
}

/// Flags of `sluice bench consume`.
#[derive(Debug, Clone, Args)]
pub struct ConsumeBenchArgs {
    /// Shared bench flags.
    #[command(flatten)]
    pub common: CommonBenchArgs,
    /// Start at the tail (only records produced after start) instead of the beginning
    #[arg(long)]
    pub from_tail: bool,
    /// Consumers (connections), each reading a share of the partitions
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Stop after this many records (default: everything up to the end offsets seen at start)
    #[arg(long)]
    pub records: Option<u64>,
    /// Stop after this long
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Fetch response cap in bytes
    #[arg(long, default_value_t = 52_428_800)]
    pub fetch_max_bytes: i32,
    /// Per-partition fetch cap in bytes (Kafka's consumer default, max.partition.fetch.bytes)
    #[arg(long, default_value_t = 1_048_576)]
    pub fetch_partition_max_bytes: i32,
    /// Longest the broker may hold a fetch
    #[arg(long, default_value_t = 500)]
    pub fetch_max_wait_ms: i32,
    /// read_uncommitted (everything up to the high watermark) or read_committed (up to the
    /// last stable offset, aborted transactions' records left out); control batches
    /// (transaction markers) are never counted
    #[arg(long, default_value = "read_uncommitted")]
    pub isolation_level: crate::consumer::IsolationLevel,
    /// A lagging consumer catching up: read from the beginning past the end offsets seen at
    /// start (a producer is still writing), sample the lag every --lag-interval-ms and stop
    /// once it is at most --caught-up-lag-records (or --duration passes); the report gains a
    /// `catch_up` object (time to catch up, read rate while catching up, lag over time)
    #[arg(long, conflicts_with_all = ["from_tail", "records"])]
    pub catch_up: bool,
    /// With --catch-up: the lag (records) that counts as caught up
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub caught_up_lag_records: u64,
    /// With --catch-up: milliseconds between lag samples (ListOffsets of the topic's ends)
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub lag_interval_ms: u64,
}

/// Flags of `sluice bench e2e`.
#[derive(Debug, Clone, Args)]
pub struct E2eBenchArgs {
    /// The producer side's flags.
    #[command(flatten)]
    pub produce: ProduceBenchArgs,
    /// Consumers reading the topic from its tail
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Longest the broker may hold a fetch (keep low: it bounds delivery latency when idle)
    #[arg(long, default_value_t = 100)]
    pub fetch_max_wait_ms: i32,
}

/// Parses "30s", "2m", "500ms", "1h" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit_s) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v * unit_s)),
        _ => Err(format!("invalid duration '{s}' (e.g. 30s, 2m, 500ms)")),
    }
}

/// Counters the engines update and the progress reporter reads.
pub struct Progress {
    /// Records completed (acknowledged, consumed or delivered).
    pub records: AtomicU64,
    /// Payload bytes completed.
    pub bytes: AtomicU64,
    /// Latencies since the last progress line.
    pub interval: Mutex<Histogram<u64>>,
    /// Set when the run is over.
    pub done: AtomicBool,
}

impl Progress {
    /// Fresh counters.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            interval: Mutex::new(new_latency_histogram()),
            done: AtomicBool::new(false),
        })
    }

    /// Adds a completed chunk of work and its latencies (microseconds). One lock per chunk;
    /// no histogram is allocated on this path.
    pub fn add(&self, records: u64, bytes: u64, latencies_us: &[u64]) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if latencies_us.is_empty() {
            return;
        }
        if let Ok(mut interval) = self.interval.lock() {
            for latency in latencies_us {
                interval.saturating_record(*latency);
            }
        }
    }
}

/// Prints a progress line to stderr every `interval` until `progress.done`.
pub fn spawn_progress(
    label: &'static str,
    progress: Arc<Progress>,
    interval: Duration,
    start: Instant,
) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut last_records = 0u64;
        let mut last_bytes = 0u64;
        let mut last = Instant::now();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            ticker.tick().await;
            if progress.done.load(Ordering::Relaxed) {
                return;
            }
            let records = progress.records.load(Ordering::Relaxed);
            let bytes = progress.bytes.load(Ordering::Relaxed);
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            let summary = match progress.interval.lock() {
                Ok(mut h) => {
                    let s = LatencySummary::of(&h);
                    h.reset();
                    s
                }
                Err(_) => LatencySummary::of(&new_latency_histogram()),
            };
            eprintln!(
                "[{:>6.1}s] {label} {:>10.0} rec/s {:>8.1} MB/s | latency ms p50 {:.2} p99 {:.2} max {:.2}",
                now.duration_since(start).as_secs_f64(),
                per_second(records - last_records, dt),
                per_second(bytes - last_bytes, dt) / 1e6,
                summary.p50_us as f64 / 1000.0,
                summary.p99_us as f64 / 1000.0,
                summary.max_us as f64 / 1000.0,
            );
            last_records = records;
            last_bytes = bytes;
            last = now;
        }
    });
}

/// A finished run, ready to print.
pub struct Report {
    /// "produce", "consume" or "e2e".
    pub mode: &'static str,
    /// The configuration, echoed.
    pub config: Value,
    /// Records completed.
    pub records: u64,
    /// Payload bytes completed.
    pub bytes: u64,
    /// Measured wall time.
    pub elapsed: Duration,
    /// What the latency measures, for the reader.
    pub latency_label: &'static str,
    /// The latencies.
    pub histogram: Histogram<u64>,
    /// CPU used by the bench process during the run.
    pub cpu: CpuTimes,
    /// Other latencies measured beside the main one (e.g. EndTxn round trips).
    pub phases: Vec<Phase>,
}

/// A latency distribution reported beside a run's main one.
pub struct Phase {
    /// Its key in the JSON report (units last: `..._latency_ms`).
    pub key: &'static str,
    /// What it measures, for the reader.
    pub label: &'static str,
    /// The latencies (us).
    pub histogram: Histogram<u64>,
}

impl Report {
    /// Prints the report (text or JSON) and writes the .hgrm file when asked.
    pub fn emit(&self, common: &CommonBenchArgs) -> anyhow::Result<()> {
        let elapsed_s = self.elapsed.as_secs_f64();
        let summary = LatencySummary::of(&self.histogram);
        if let Some(path) = &common.hgrm {
            std::fs::write(path, stats::hgrm(&self.histogram))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
        // Built whole and written once: a full disk or a closed pipe on stdout is an error
        // the caller reports, not a panic inside println!.
        let mut out = String::new();
        if common.json {
            let mut doc = json!({
                "mode": self.mode,
                "config": self.config,
                "records": self.records,
                "bytes": self.bytes,
                "duration_s": elapsed_s,
                "records_per_s": per_second(self.records, elapsed_s),
                "mb_per_s": per_second(self.bytes, elapsed_s) / 1e6,
                "latency_measures": self.latency_label,
                "latency_ms": summary.to_json_ms(),
                "cpu": self.cpu.to_json(elapsed_s),
                "hgrm": common.hgrm.as_ref().map(|p| p.display().to_string()),
            });
            if let Some(fields) = doc.as_object_mut() {
                for phase in &self.phases {
                    let mut summary = LatencySummary::of(&phase.histogram).to_json_ms();
                    if let Some(summary) = summary.as_object_mut() {
                        summary.insert("measures".into(), Value::from(phase.label));
                    }
                    fields.insert(phase.key.into(), summary);
                }
            }
            let _ = writeln!(out, "{doc}");
        } else {
            let _ = writeln!(out, "bench {}: {}", self.mode, self.config);
            let _ = writeln!(
                out,
                "{} records, {:.1} MB in {:.2} s: {:.0} records/s, {:.1} MB/s",
                self.records,
                self.bytes as f64 / 1e6,
                elapsed_s,
                per_second(self.records, elapsed_s),
                per_second(self.bytes, elapsed_s) / 1e6
            );
            let _ = writeln!(
                out,
                "latency in ms ({}; {} samples):",
                self.latency_label, summary.count
            );
            out.push_str(&summary.table());
            for phase in &self.phases {
                let phase_summary = LatencySummary::of(&phase.histogram);
                let _ = writeln!(
                    out,
                    "{} in ms ({} samples):",
                    phase.label, phase_summary.count
                );
                out.push_str(&phase_summary.table());
            }
            let _ = writeln!(out, "{}", self.cpu.line(elapsed_s));
            if let Some(path) = &common.hgrm {
                let _ = writeln!(out, "latency distribution written to {}", path.display());
            }
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| anyhow::anyhow!("cannot write the report to stdout: {e}"))?;
        Ok(())
    }
}

/// Runs `sluice bench ...`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        BenchMode::Produce(a) => produce::run(a).await,
        BenchMode::Consume(a) => consume::run(a).await,
        BenchMode::E2e(a) => e2e::run(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
