//! Before a produce run's clock starts: wait until every partition of the topic accepts a
//! write.
//!
//! A broker that has just created or grown a topic may answer Metadata with a leader for
//! every partition and still refuse produce to the ones it is loading (Apache Kafka with
//! thousands of partitions answers NOT_LEADER_OR_FOLLOWER for a while). A timed run that
//! starts then measures the broker's start-up instead of its produce path. The probe sends
//! one single-record batch to every partition (one request per leader, acks=1), keeps the
//! partitions that were refused with a retriable error and asks again, with fresh metadata,
//! until all have accepted or the time is up. It must never hide a real refusal: a
//! non-retriable error ends it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::Client;
use crate::producer::{build_produce_request, produce_outcomes, Acks};
use kafka_protocol::records::Compression;

use crate::records::{encode_batch, ProduceRecord};

/// Pause between rounds: the broker is loading partitions, not failing.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Per-request timeout sent to the broker.
const REQUEST_TIMEOUT_MS: i32 = 30_000;

/// What the probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Partitions written (one record each).
    pub partitions: usize,
    /// Rounds it took (1: every partition accepted at once).
    pub rounds: u32,
    /// From the first request to the last acceptance.
    pub elapsed: Duration,
}

/// Writes one record to every partition of `topic`, retrying refused ones for up to `limit`;
/// a topic grown to `partitions_min` counts its new partitions once metadata shows them.
pub async fn wait_until_writable(
    client: &Arc<Client>,
    topic: &str,
    partitions_min: usize,
    limit: Duration,
) -> anyhow::Result<Readiness> {
    let started = Instant::now();
    let batch = encode_batch(
        &[ProduceRecord {
            key: None,
            value: Some(Bytes::from_static(b"sluice bench readiness probe")),
            headers: Vec::new(),
            timestamp_ms: None,
        }],
        Compression::None,
    )?;
    let mut accepted: BTreeSet<i32> = BTreeSet::new();
    let mut partitions = 0usize;
    let mut rounds = 0u32;
    let mut last_refusal = String::new();
    loop {
        rounds += 1;
        let info = client.topic(topic).await?;
        partitions = partitions.max(info.partitions.len());
        if info.partitions.len() < partitions_min {
            last_refusal = format!(
                "metadata shows {} of {partitions_min} partitions",
                info.partitions.len()
            );
        }
        let waiting: BTreeSet<i32> = info
            .partitions
            .iter()
            .map(|p| p.partition)
            .filter(|p| !accepted.contains(p))
            .collect();
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for partition in info
            .partitions
            .iter()
            .filter(|p| waiting.contains(&p.partition))
        {
            by_leader
                .entry(partition.leader)
                .or_default()
                .push(partition.partition);
        }
        for (leader, indexes) in by_leader {
            if leader < 0 {
                last_refusal = format!("{} partitions have no leader", indexes.len());
                continue;
            }
            let conn = match client.broker(leader).await {
                Ok(conn) => conn,
                Err(e) if e.is_retriable() => {
                    last_refusal = format!("broker {leader}: {e}");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let batches = indexes.iter().map(|&p| (p, batch.clone())).collect();
            let request = build_produce_request(topic, batches, Acks::Leader, REQUEST_TIMEOUT_MS);
            let response = match conn.send(&request).await {
                Ok(response) => response,
                Err(e) if e.is_retriable() => {
                    last_refusal = format!("broker {leader}: {e}");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for (partition, outcome) in produce_outcomes(&response, topic) {
                match outcome {
                    Ok(_) => {
                        accepted.insert(partition);
                    }
                    Err(e) if e.is_retriable() => last_refusal = e.to_string(),
                    Err(e) => {
                        anyhow::bail!("readiness probe: {topic}-{partition} refused produce: {e}")
                    }
                }
            }
        }
        if accepted.len() >= partitions.max(partitions_min) {
            return Ok(Readiness {
                partitions,
                rounds,
                elapsed: started.elapsed(),
            });
        }
        if started.elapsed() >= limit {
            anyhow::bail!(
                "readiness probe: {} of {} partitions of {topic} not yet accepting produce \
                 after {:.0} s ({rounds} rounds; last: {last_refusal})",
                partitions.max(partitions_min) - accepted.len(),
                partitions.max(partitions_min),
                limit.as_secs_f64()
            );
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}
