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
    let stage = time_ns_per_call(|v| metrics.record_stage_ns(black_box(Stage::AppendFsync), v));
    let request = time_ns_per_call(|v| metrics.record_request_ns(black_box(0), v));
    let counter = time_ns_per_call(|v| metrics.count(black_box(Counter::BytesIn), v & 0xffff));

    println!("calls per measurement: {CALLS}");
    println!("loop + value generator:      {baseline:6.2} ns/call (subtracted below)");
    println!(
        "record_stage_ns:             {:6.2} ns/call",
        (stage - baseline).max(0.0)
    );
    println!(
        "record_request_ns:           {:6.2} ns/call",
        (request - baseline).max(0.0)
    );
    println!(
        "count:                       {:6.2} ns/call",
        (counter - baseline).max(0.0)
    );

    // The reader side: one shard's snapshot, and merging it into a running total.
    const SNAPSHOTS: u32 = 200;
    let started = Instant::now();
    let mut merged = MetricsSnapshot::empty();
    for _ in 0..SNAPSHOTS {
        let snap = metrics.snapshot();
        merged.merge(black_box(&snap));
    }
    let per_snapshot_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(SNAPSHOTS);
    println!("snapshot + merge (1 shard):  {per_snapshot_us:6.1} us each");
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
