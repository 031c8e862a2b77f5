//! The consume engine of `sluice bench` (also the reader half of `e2e`). Each consumer task owns
//! a share of the partitions and one connection per leader, and keeps exactly one fetch in
//! flight per connection (the next fetch needs this one's answer). In throughput mode it counts
//! records from batch headers without decompressing; in e2e mode it decodes values to read the
//! origin stamp. Control batches (transaction markers) are never counted; read_committed also
//! leaves out the batches of the aborted transactions each answer lists, and reads up to the
//! last stable offset. With `--catch-up` a monitor samples the lag (the topic's end offsets
//! against the records read) and stops the readers once it is at most the caught-up threshold.
//! It must never count a record twice (positions only move past whole batches).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::produce::STAMP_BYTES;
use super::stats::{new_latency_histogram, CatchUp, CpuTimes, LagSample};
use super::{spawn_progress, ConsumeBenchArgs, Progress, Report};
use crate::admin::OffsetSpec;
use crate::client::{Client, TopicInfo};
use crate::conn::Connection;
use crate::consumer::{submit_fetch, wait_fetch, FetchOptions};
use crate::error::{ClientError, Result};
use crate::records::{batch_record_count, decode_fetched, split_batches, AbortedFilter};

/// What a reader task measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Count records and batch bytes; latency = fetch round trip.
    Throughput,
    /// Decode values; latency = now minus the origin stamp in each value. Records whose origin
    /// is before `counted_from_ns` (the run's warm-up) are read but not counted.
    EndToEnd {
        /// Origin (ns since the bench's start) from which records count.
        counted_from_ns: u64,
    },
}

/// Shared stop conditions.
pub struct StopWhen {
    /// Set to stop all readers.
    pub stop: AtomicBool,
    /// Records read so far by all readers.
    pub records: AtomicU64,
    /// Stop once this many records were read (u64::MAX: no limit yet).
    pub records_target: AtomicU64,
}

/// One reader's result.
pub struct ReaderDone {
    /// Records read.
    pub records: u64,
    /// Bytes read (batch bytes in throughput mode, value bytes in e2e).
    pub bytes: u64,
    /// Latencies (us).
    pub histogram: hdrhistogram::Histogram<u64>,
}

/// Reads `positions` (partition -> start) from one leader until each reaches its end offset in
/// `ends` (if given) or the shared stop condition fires.
#[allow(clippy::too_many_arguments)]
pub async fn read_partitions(
    conn: Arc<Connection>,
    topic: String,
    mut positions: BTreeMap<i32, i64>,
    ends: Option<BTreeMap<i32, i64>>,
    options: FetchOptions,
    mode: ReadMode,
    stop: Arc<StopWhen>,
    progress: Arc<Progress>,
    start: Instant,
) -> Result<ReaderDone> {
    let mut histogram = new_latency_histogram();
    let (mut records_total, mut bytes_total) = (0u64, 0u64);
    loop {
        if stop.stop.load(Ordering::Relaxed)
            || stop.records.load(Ordering::Relaxed) >= stop.records_target.load(Ordering::Relaxed)
        {
            break;
        }
        let wanted: Vec<(i32, i64)> = positions
            .iter()
            .filter(|(p, o)| {
                ends.as_ref()
                    .is_none_or(|e| e.get(p).is_some_and(|end| **o < *end))
            })
            .map(|(p, o)| (*p, *o))
            .collect();
        if wanted.is_empty() {
            break;
        }
        let sent_at = Instant::now();
        let pending = submit_fetch(&conn, &topic, &wanted, &options).await?;
        let answer = wait_fetch(pending, &topic).await?;
        let now_ns = start.elapsed().as_nanos() as u64;
        let rtt_us = (sent_at.elapsed().as_micros() as u64).max(1);
        let mut interval: Vec<u64> = Vec::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        for data in answer {
            let Some(position) = positions.get(&data.partition).copied() else {
                continue;
            };
            ClientError::check(data.error_code, || {
                format!("fetch {topic}-{} at offset {position}", data.partition)
            })?;
            match mode {
                ReadMode::Throughput => {
                    let mut next = position;
                    // Empty unless read_committed: then markers and aborted batches.
                    let mut filter = AbortedFilter::new(data.aborted);
                    for (batch, base, last) in split_batches(data.records)? {
                        // Every batch goes through the filter, in order, even one before
                        // `position`: a marker there may end an aborted range.
                        let skipped = filter.skips(&batch, last);
                        if last < position {
                            continue;
                        }
                        next = next.max(last + 1);
                        if skipped {
                            continue;
                        }
                        let count = if base >= position {
                            u64::try_from(batch_record_count(&batch)?).unwrap_or(0)
                        } else {
                            u64::try_from(last + 1 - position).unwrap_or(0)
                        };
                        records += count;
                        bytes += batch.len() as u64;
                    }
                    positions.insert(data.partition, next);
                }
                ReadMode::EndToEnd { counted_from_ns } => {
                    let (decoded, next) = decode_fetched(data.partition, data.records, position)?;
                    for r in &decoded {
                        let Some(value) = r.value.as_ref().filter(|v| v.len() >= STAMP_BYTES)
                        else {
                            continue;
                        };
                        let mut stamp = [0u8; STAMP_BYTES];
                        stamp.copy_from_slice(&value[..STAMP_BYTES]);
                        let origin_ns = u64::from_be_bytes(stamp);
                        if origin_ns < counted_from_ns {
                            continue;
                        }
                        let latency_us = (now_ns.saturating_sub(origin_ns) / 1_000).max(1);
                        histogram.saturating_record(latency_us);
                        interval.push(latency_us);
                        records += 1;
                        bytes += value.len() as u64;
                    }
                    positions.insert(data.partition, next);
                }
            }
        }
        if mode == ReadMode::Throughput && records > 0 {
            histogram.saturating_record(rtt_us);
            interval.push(rtt_us);
        }
        records_total += records;
        bytes_total += bytes;
        stop.records.fetch_add(records, Ordering::Relaxed);
        progress.add(records, bytes, &interval);
    }
    Ok(ReaderDone {
        records: records_total,
        bytes: bytes_total,
        histogram,
    })
}

/// Spawns readers: partitions dealt round robin to `consumers`, one task per consumer and
/// leader, each with its own connection.
#[allow(clippy::too_many_arguments)]
pub async fn spawn_readers(
    client: &Client,
    info: &TopicInfo,
    consumers: usize,
    starts: &BTreeMap<i32, i64>,
    ends: Option<&BTreeMap<i32, i64>>,
    options: FetchOptions,
    mode: ReadMode,
    stop: &Arc<StopWhen>,
    progress: &Arc<Progress>,
    start: Instant,
) -> Result<Vec<tokio::task::JoinHandle<Result<ReaderDone>>>> {
    let consumers = consumers.max(1);
    let mut plan: BTreeMap<(usize, i32), BTreeMap<i32, i64>> = BTreeMap::new();
    for (i, p) in info.partitions.iter().enumerate() {
        if let Some(offset) = starts.get(&p.partition) {
            plan.entry((i % consumers, p.leader))
                .or_default()
                .insert(p.partition, *offset);
        }
    }
    let mut handles = Vec::new();
    for ((_, leader), positions) in plan {
        let addr = client.broker(leader).await?.addr().to_owned();
        let conn = Arc::new(Connection::connect(&addr, client.options()).await?);
        let ends = ends.map(|e| {
            positions
                .keys()
                .filter_map(|p| e.get(p).map(|o| (*p, *o)))
                .collect::<BTreeMap<_, _>>()
        });
        handles.push(tokio::spawn(read_partitions(
            conn,
            info.name.clone(),
            positions,
            ends,
            options,
            mode,
            Arc::clone(stop),
            Arc::clone(progress),
            start,
        )));
    }
    Ok(handles)
}

/// Waits for readers and merges their results.
pub async fn join_readers(
    handles: Vec<tokio::task::JoinHandle<Result<ReaderDone>>>,
) -> Result<ReaderDone> {
    let mut total = ReaderDone {
        records: 0,
        bytes: 0,
        histogram: new_latency_histogram(),
    };
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(done)) => {
                total.records += done.records;
                total.bytes += done.bytes;
                let _ = total.histogram.add(&done.histogram);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(ClientError::Invalid(format!("reader task failed: {e}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// The lag monitor of `--catch-up`: every `interval`, the records read so far (counted first,
/// so the lag is never understated), then the topic's end offsets; stops the readers once the
/// lag is at most `lag_records_max`, and returns when the run stops.
#[allow(clippy::too_many_arguments)]
async fn watch_lag(
    client: Arc<Client>,
    info: TopicInfo,
    starts: BTreeMap<i32, i64>,
    lag_records_max: u64,
    interval: Duration,
    stop: Arc<StopWhen>,
    progress: Arc<Progress>,
    start: Instant,
) -> Result<Vec<LagSample>> {
    let mut samples = Vec::new();
    loop {
        let read_records = stop.records.load(Ordering::Relaxed);
        let read_bytes = progress.bytes.load(Ordering::Relaxed);
        let ends = match client.list_offsets(&info, None, OffsetSpec::Latest).await {
            Ok(ends) => ends,
            Err(e) => {
                // Without lag samples the run has no answer: stop the readers too.
                stop.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        let end_records = starts
            .iter()
            .map(|(p, from)| {
                let end = ends.get(p).map_or(*from, |(o, _)| *o);
                u64::try_from(end - from).unwrap_or(0)
            })
            .sum();
        let sample = LagSample {
            t_s: start.elapsed().as_secs_f64(),
            end_records,
            read_records,
            read_bytes,
        };
        samples.push(sample);
        if sample.lag_records() <= lag_records_max {
            stop.stop.store(true, Ordering::Relaxed);
            return Ok(samples);
        }
        if stop.stop.load(Ordering::Relaxed) {
            return Ok(samples);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Runs `sluice bench consume`.
pub async fn run(args: ConsumeBenchArgs) -> anyhow::Result<()> {
    if args.from_tail && args.records.is_none() && args.duration.is_none() {
        anyhow::bail!("--from-tail needs --records or --duration (the tail never ends)");
    }
    let client = args.common.conn.connect().await?;
    let info = client.topic(&args.common.topic).await?;
    // read_committed drains up to the last stable offset (records past it are not readable
    // until their transaction ends).
    let latest = client
        .list_offsets_isolated(&info, None, OffsetSpec::Latest, args.isolation_level)
        .await?;
    let starts: BTreeMap<i32, i64> = if args.from_tail {
        latest.iter().map(|(p, (o, _))| (*p, *o)).collect()
    } else {
        client
            .list_offsets(&info, None, OffsetSpec::Earliest)
            .await?
            .iter()
            .map(|(p, (o, _))| (*p, *o))
            .collect()
    };
    // From the beginning with no limit: drain up to the end offsets seen now (a catch-up run
    // reads past them: the producer is still writing).
    let ends: Option<BTreeMap<i32, i64>> =
        (!args.from_tail && !args.catch_up && args.records.is_none() && args.duration.is_none())
            .then(|| latest.iter().map(|(p, (o, _))| (*p, *o)).collect());
    let options = FetchOptions {
        max_wait_ms: args.fetch_max_wait_ms,
        min_bytes: 1,
        max_bytes: args.fetch_max_bytes,
        partition_max_bytes: args.fetch_partition_max_bytes,
        isolation_level: args.isolation_level,
    };
    let stop = Arc::new(StopWhen {
        stop: AtomicBool::new(false),
        records: AtomicU64::new(0),
        records_target: AtomicU64::new(args.records.unwrap_or(u64::MAX)),
    });
    let progress = Progress::new();
    let cpu_before = CpuTimes::now();
    let start = Instant::now();
    spawn_progress(
        "consumed",
        Arc::clone(&progress),
        Duration::from_secs_f64(args.common.progress_interval_s.max(0.0)),
        start,
    );
    let handles = spawn_readers(
        &client,
        &info,
        args.consumers,
        &starts,
        ends.as_ref(),
        options,
        ReadMode::Throughput,
        &stop,
        &progress,
        start,
    )
    .await?;
    if let Some(duration) = args.duration {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.stop.store(true, Ordering::Relaxed);
        });
    }
    let monitor = args.catch_up.then(|| {
        tokio::spawn(watch_lag(
            Arc::clone(&client),
            info.clone(),
            starts.clone(),
            args.caught_up_lag_records,
            Duration::from_millis(args.lag_interval_ms.max(1)),
            Arc::clone(&stop),
            Arc::clone(&progress),
            start,
        ))
    });
    let result = join_readers(handles).await;
    progress.done.store(true, Ordering::Relaxed);
    stop.stop.store(true, Ordering::Relaxed);
    let done = result.map_err(|e| anyhow::anyhow!("bench consume aborted: {e}"))?;
    let elapsed = start.elapsed();
    let catch_up = match monitor {
        Some(handle) => {
            let samples = handle
                .await
                .map_err(|e| anyhow::anyhow!("bench consume: the lag monitor failed: {e}"))?
                .map_err(|e| anyhow::anyhow!("bench consume: sampling the lag: {e}"))?;
            let summary = CatchUp::of(&samples, args.caught_up_lag_records);
            match summary.caught_up_s {
                Some(t) => eprintln!(
                    "bench consume: caught up after {t:.1} s ({} records behind at start, {:.0} records/s read)",
                    summary.lag_records_at_start, summary.read_records_per_s
                ),
                None => eprintln!(
                    "bench consume: did not catch up within {:.1} s ({} records behind at the end)",
                    elapsed.as_secs_f64(),
                    summary.lag_records_at_end
                ),
            }
            Some(summary.to_json(args.caught_up_lag_records, &samples))
        }
        None => None,
    };
    Report {
        mode: "consume",
        config: json!({
            "topic": info.name, "partitions": info.partitions.len(), "consumers": args.consumers,
            "from": if args.from_tail { "tail" } else { "beginning" }, "records": args.records,
            "catch_up": catch_up,
            "duration_s": args.duration.map(|d| d.as_secs_f64()), "fetch_max_bytes": args.fetch_max_bytes,
            "fetch_partition_max_bytes": args.fetch_partition_max_bytes, "fetch_max_wait_ms": args.fetch_max_wait_ms,
            "bytes_are": "record batch bytes as fetched",
            "isolation_level": args.isolation_level.name(),
        }),
        records: done.records,
        bytes: done.bytes,
        elapsed,
        latency_label: "fetch round trip of fetches that returned records",
        histogram: done.histogram,
        cpu: CpuTimes::now().since(cpu_before),
        phases: Vec::new(),
    }
    .emit(&args.common)
}
