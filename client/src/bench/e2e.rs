//! `sluice bench e2e`: produces stamped records at a fixed rate (open loop) while readers tail
//! the topic, and measures delivery latency = time a reader decoded the record minus the
//! record's intended send time. Producer and readers share one clock (the bench's start
//! instant), so no clock sync is involved. With a transactional producer the readers are
//! read_committed, so delivery waits for the commit. The producers' acknowledgement latencies
//! from the same intended send times (publish latency) are reported beside delivery's. It must
//! never report a record as delivered that the producer did not get acknowledged, and waits a
//! bounded grace period for stragglers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::consume::{join_readers, spawn_readers, ReadMode, StopWhen};
use super::produce::{
    deadline_message, ensure_topic, init_sessions, run_producers, Payload, ProduceConfig,
};
use super::stats::CpuTimes;
use super::{spawn_progress, E2eBenchArgs, Phase, Progress, Report};
use crate::admin::OffsetSpec;
use crate::client::{Client, TopicInfo};
use crate::consumer::{FetchOptions, IsolationLevel};

/// How long readers may lag behind the last acknowledgement before the run gives up on them.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// How long a just-created topic's partitions may take to get leaders (Kafka answers
/// NOT_LEADER_OR_FOLLOWER until they do).
const LEADERS_WAIT: Duration = Duration::from_secs(30);

/// The topic's end offsets, where the readers start. Retriable errors (partitions of a topic
/// created a moment ago without leaders yet) are retried for up to [`LEADERS_WAIT`].
async fn tail_offsets(client: &Client, info: &TopicInfo) -> anyhow::Result<BTreeMap<i32, i64>> {
    let deadline = Instant::now() + LEADERS_WAIT;
    loop {
        match client.list_offsets(info, None, OffsetSpec::Latest).await {
            Ok(offsets) => return Ok(offsets.into_iter().map(|(p, (o, _))| (p, o)).collect()),
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "bench e2e: end offsets of {}: {e}",
                    info.name
                ))
            }
        }
    }
}

/// Runs `sluice bench e2e`.
pub async fn run(mut args: E2eBenchArgs) -> anyhow::Result<()> {
    if args.produce.rate.is_none() {
        args.produce.rate = Some(10_000.0);
        eprintln!("bench e2e: no --rate given; using 10000 records/s");
    }
    if args.produce.records.is_none() && args.produce.duration.is_none() {
        args.produce.duration = Some(Duration::from_secs(10));
    }
    let config = Arc::new(ProduceConfig::from_args(&args.produce, Payload::Stamped)?);
    let common = args.produce.common.clone();
    let client = common.conn.connect().await?;
    let info = Arc::new(ensure_topic(&client, &config.topic, args.produce.partitions).await?);
    let starts = tail_offsets(&client, &info).await?;
    let sessions = init_sessions(&client, &config)
        .await
        .map_err(|e| anyhow::anyhow!("bench e2e: initialising the transactional producers: {e}"))?;
    let stop = Arc::new(StopWhen {
        stop: AtomicBool::new(false),
        records: AtomicU64::new(0),
        records_target: AtomicU64::new(u64::MAX),
    });
    let delivered = Progress::new();
    let produced = Progress::new();
    let cpu_before = CpuTimes::now();
    let start = Instant::now();
    let options = FetchOptions {
        max_wait_ms: args.fetch_max_wait_ms,
        isolation_level: if config.transaction.is_some() {
            IsolationLevel::ReadCommitted
        } else {
            IsolationLevel::ReadUncommitted
        },
        ..FetchOptions::default()
    };
    let readers = spawn_readers(
        &client,
        &info,
        args.consumers,
        &starts,
        None,
        options,
        ReadMode::EndToEnd {
            counted_from_ns: config.counted_from_ns(),
        },
        &stop,
        &delivered,
        start,
    )
    .await?;
    spawn_progress(
        "delivered",
        Arc::clone(&delivered),
        Duration::from_secs_f64(common.progress_interval_s.max(0.0)),
        start,
    );
    let produce_result = run_producers(
        Arc::clone(&client),
        Arc::clone(&info),
        Arc::clone(&config),
        produced,
        start,
        sessions,
    )
    .await;
    let totals = match produce_result {
        Ok(totals) => totals,
        Err(e) => {
            stop.stop.store(true, Ordering::Relaxed);
            delivered.done.store(true, Ordering::Relaxed);
            return Err(anyhow::anyhow!("bench e2e aborted (producer): {e}"));
        }
    };
    stop.records_target.store(totals.records, Ordering::Relaxed);
    let waiter = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::time::sleep(DELIVERY_GRACE).await;
            stop.stop.store(true, Ordering::Relaxed);
        })
    };
    let result = join_readers(readers).await;
    waiter.abort();
    delivered.done.store(true, Ordering::Relaxed);
    let done = result.map_err(|e| anyhow::anyhow!("bench e2e aborted (reader): {e}"))?;
    // The measured part only: from the warm-up's end.
    let elapsed = start.elapsed().saturating_sub(config.warmup);
    if done.records < totals.records {
        eprintln!(
            "bench e2e: only {} of {} acknowledged records were delivered within {} s of the last acknowledgement",
            done.records,
            totals.records,
            DELIVERY_GRACE.as_secs()
        );
    }
    let mut config_json = config.to_json(info.partitions.len());
    if let Some(map) = config_json.as_object_mut() {
        map.insert("consumers".into(), args.consumers.into());
        map.insert("fetch_max_wait_ms".into(), args.fetch_max_wait_ms.into());
        map.insert("records_acknowledged".into(), totals.records.into());
        map.insert(
            "records_unacknowledged".into(),
            totals.unacknowledged.into(),
        );
        map.insert("warmup_records".into(), totals.warmup_records.into());
        map.insert("warmup_bytes".into(), totals.warmup_bytes(&config).into());
    }
    Report {
        mode: "e2e",
        config: config_json,
        records: done.records,
        bytes: done.bytes,
        elapsed,
        latency_label: "delivery to a consumer minus intended send time",
        histogram: done.histogram,
        cpu: CpuTimes::now().since(cpu_before),
        phases: vec![Phase {
            key: "publish_latency_ms",
            label: "publish: acknowledgement time minus intended send time (open loop)",
            histogram: totals.histogram,
        }],
    }
    .emit(&common)?;
    if totals.unacknowledged > 0 {
        anyhow::bail!(
            "{}",
            deadline_message(&config, totals.unacknowledged, totals.elapsed)
        );
    }
    if done.records < totals.records {
        anyhow::bail!(
            "{} acknowledged record(s) were never delivered",
            totals.records - done.records
        );
    }
    Ok(())
}
