//! Cost of recording on the hot path: ns per `record_stage_ns`, `record_request_ns`, `count`,
//! and per snapshot + merge. Run with `cargo bench -p sluice-metrics --bench record`.
//!
//! A plain timing loop (no harness) so it runs anywhere; values come from a xorshift over a
//! realistic 1 us .. 100 ms spread so the bucket index varies like real latencies do, and the
//! generator's own cost is measured and subtracted.

use std::hint::black_box;
use std::time::Instant;

use sluice_metrics::{Counter, MetricsSnapshot, ShardMetrics, Stage};

const CALLS: u64 = 20_000_000;

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    // 1 us .. ~134 ms
    1_000 + (*state & ((1 << 27) - 1))
}

fn time_ns_per_call(mut f: impl FnMut(u64)) -> f64 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    // Warm up: first touch of the histogram pages and the branch predictors.
    for _ in 0..CALLS / 10 {
        f(next(&mut state));
    }
    let started = Instant::now();
    for _ in 0..CALLS {
        f(next(&mut state));
    }
    started.elapsed().as_nanos() as f64 / CALLS as f64
}

fn main() {
    let metrics = ShardMetrics::new(0);
    let baseline = time_ns_per_call(|v| {
        black_box(v);
    });
    // black_box(&metrics) on every call keeps the compiler from hoisting state out of the loop.
    let stage =
        time_ns_per_call(|v| black_box(&metrics).record_stage_ns(black_box(Stage::AppendFsync), v));
    let request = time_ns_per_call(|v| black_box(&metrics).record_request_ns(black_box(0), v));
    let counter =
        time_ns_per_call(|v| black_box(&metrics).count(black_box(Counter::BytesIn), v & 0xffff));

    println!("calls per measurement: {CALLS}");
    println!(
        "{:<22}{:>12}{:>22}",
        "operation", "ns/call", "minus loop+generator"
    );
    println!("{:<22}{:>12.2}", "loop + generator", baseline);
    for (name, raw) in [
        ("record_stage_ns", stage),
        ("record_request_ns", request),
        ("count", counter),
    ] {
        println!("{name:<22}{raw:>12.2}{:>22.2}", (raw - baseline).max(0.0));
    }

    // The reader side. snapshot() runs on the shard thread (the shard's cost of a scrape);
    // merge + first read (decode) runs on the admin thread.
    const SNAPSHOTS: u32 = 200;
    let started = Instant::now();
    let mut snap = metrics.snapshot();
    for _ in 1..SNAPSHOTS {
        snap = black_box(metrics.snapshot());
    }
    let per_snapshot_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(SNAPSHOTS);
    println!(
        "snapshot (shard thread):     {per_snapshot_us:6.1} us each ({} KiB encoded)",
        snap.encoded_len_bytes() / 1024
    );
    let started = Instant::now();
    let mut merged = MetricsSnapshot::empty();
    for _ in 0..SNAPSHOTS {
        merged.merge(black_box(&snap));
        black_box(merged.stage(Stage::AppendFsync).count());
    }
    let per_merge_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(SNAPSHOTS);
    println!("merge + decode (admin):      {per_merge_us:6.1} us each");
    let started = Instant::now();
    let text = merged.to_prometheus();
    println!(
        "to_prometheus:               {:6.1} us ({} bytes)",
        started.elapsed().as_secs_f64() * 1e6,
        text.len()
    );
    assert_eq!(
        merged.stage(Stage::AppendFsync).count(),
        u64::from(SNAPSHOTS) * (CALLS + CALLS / 10)
    );
}
