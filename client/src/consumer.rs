//! Reading partitions: Fetch requests grouped per leader, decoding, and the position of each
//! assigned partition. Used by the `consume` tool, the consumer-group member and the e2e bench.
//! It must never skip an offset silently: a position only moves past batches it has seen
//! whole, and an out-of-range position is reported, not reset behind the caller's back.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::client::{Client, TopicInfo};
use crate::conn::{Connection, Pending};
use crate::error::{ClientError, Result};
use crate::records::{decode_fetched, ConsumedRecord};

/// Which records a fetch may return (Fetch `isolation_level`, ListOffsets' too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Everything up to the high watermark, open and aborted transactions' records included.
    #[default]
    ReadUncommitted,
    /// Up to the last stable offset; the answer lists the aborted transactions to leave out.
    ReadCommitted,
}

impl IsolationLevel {
    /// The wire value.
    pub fn wire(self) -> i8 {
        match self {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        }
    }

    /// Kafka's name (`isolation.level`).
    pub fn name(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "read_uncommitted",
            IsolationLevel::ReadCommitted => "read_committed",
        }
    }
}

impl std::str::FromStr for IsolationLevel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "read_uncommitted" | "uncommitted" | "0" => Ok(IsolationLevel::ReadUncommitted),
            "read_committed" | "committed" | "1" => Ok(IsolationLevel::ReadCommitted),
            other => Err(format!(
                "invalid isolation level '{other}' (expected read_uncommitted or read_committed)"
            )),
        }
    }
}

/// Fetch sizing and waiting.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// How long the broker may hold a fetch waiting for `min_bytes`.
    pub max_wait_ms: i32,
    /// Bytes the broker should gather before answering.
    pub min_bytes: i32,
    /// Cap on the whole response.
    pub max_bytes: i32,
    /// Cap per partition (the broker still returns one whole batch if it is larger).
    pub partition_max_bytes: i32,
    /// read_uncommitted or read_committed.
    pub isolation_level: IsolationLevel,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 52_428_800,
            partition_max_bytes: 1_048_576,
            isolation_level: IsolationLevel::ReadUncommitted,
        }
    }
}

/// One partition's part of a fetch answer, records still encoded.
#[derive(Debug, Clone)]
pub struct RawPartitionData {
    /// Partition index.
    pub partition: i32,
    /// Kafka error code (0 = none).
    pub error_code: i16,
    /// High watermark.
    pub high_watermark: i64,
    /// Log start offset (-1 when the version lacks it).
    pub log_start_offset: i64,
    /// Last stable offset (-1 when the version lacks it).
    pub last_stable_offset: i64,
    /// The aborted transactions of the fetched range, `(producer_id, first_offset)`
    /// (read_committed only; empty otherwise).
    pub aborted: Vec<(i64, i64)>,
    /// The record batches.
    pub records: Bytes,
}

/// Builds a sessionless Fetch request for one topic.
pub fn build_fetch_request(
    topic: &str,
    positions: &[(i32, i64)],
    options: &FetchOptions,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(options.max_wait_ms)
        .with_min_bytes(options.min_bytes)
        .with_max_bytes(options.max_bytes)
        .with_isolation_level(options.isolation_level.wire())
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(
                positions
                    .iter()
                    .map(|(p, offset)| {
                        FetchPartition::default()
                            .with_partition(*p)
                            .with_current_leader_epoch(-1)
                            .with_fetch_offset(*offset)
                            .with_last_fetched_epoch(-1)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(options.partition_max_bytes)
                    })
                    .collect(),
            )])
        .with_rack_id(StrBytes::new())
}

/// Submits a fetch for `positions` on `conn` without waiting.
pub async fn submit_fetch(
    conn: &Connection,
    topic: &str,
    positions: &[(i32, i64)],
    options: &FetchOptions,
) -> Result<Pending<kafka_protocol::messages::FetchResponse>> {
    conn.submit(&build_fetch_request(topic, positions, options))
        .await
}

/// Waits for a submitted fetch and flattens its answer.
pub async fn wait_fetch(
    pending: Pending<kafka_protocol::messages::FetchResponse>,
    topic: &str,
) -> Result<Vec<RawPartitionData>> {
    let response = pending.wait().await?;
    ClientError::check(response.error_code, || format!("fetch from '{topic}'"))?;
    let mut out = Vec::new();
    for t in response.responses {
        for p in t.partitions {
            out.push(RawPartitionData {
                partition: p.partition_index,
                error_code: p.error_code,
                high_watermark: p.high_watermark,
                log_start_offset: p.log_start_offset,
                last_stable_offset: p.last_stable_offset,
                aborted: p
                    .aborted_transactions
                    .unwrap_or_default()
                    .iter()
                    .map(|a| (a.producer_id.0, a.first_offset))
                    .collect(),
                records: p.records.unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// A reader of some partitions of one topic, tracking each partition's next offset.
pub struct PartitionReader {
    client: Arc<Client>,
    info: TopicInfo,
    positions: BTreeMap<i32, i64>,
    /// Per-partition cap, doubled for a partition whose next batch did not fit.
    partition_max_bytes: BTreeMap<i32, i32>,
    options: FetchOptions,
    high_watermarks: BTreeMap<i32, i64>,
}

impl PartitionReader {
    /// A reader starting each partition at the given offset.
    pub fn new(
        client: Arc<Client>,
        info: TopicInfo,
        positions: BTreeMap<i32, i64>,
        options: FetchOptions,
    ) -> Self {
        PartitionReader {
            client,
            info,
            positions,
            partition_max_bytes: BTreeMap::new(),
            options,
            high_watermarks: BTreeMap::new(),
        }
    }

    /// The next offset per partition.
    pub fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.positions
    }

    /// Sets a partition's next offset.
    pub fn seek(&mut self, partition: i32, offset: i64) {
        self.positions.insert(partition, offset);
    }

    /// Latest high watermark seen per partition.
    pub fn high_watermarks(&self) -> &BTreeMap<i32, i64> {
        &self.high_watermarks
    }

    /// Whether every position has reached the last high watermark seen for it.
    pub fn caught_up(&self) -> bool {
        self.positions
            .iter()
            .all(|(p, offset)| self.high_watermarks.get(p).is_some_and(|hw| *offset >= *hw))
    }

    /// One fetch round across all leaders; returns the records in partition order.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>> {
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for (p, offset) in &self.positions {
            let leader = self
                .info
                .partitions
                .iter()
                .find(|x| x.partition == *p)
                .map(|x| x.leader)
                .ok_or_else(|| ClientError::UnknownPartition {
                    topic: self.info.name.clone(),
                    partition: *p,
                })?;
            by_leader.entry(leader).or_default().push((*p, *offset));
        }
        let mut pendings = Vec::new();
        for (leader, positions) in by_leader {
            let conn = self.client.broker(leader).await?;
            let mut options = self.options;
            options.partition_max_bytes = positions
                .iter()
                .map(|(p, _)| {
                    self.partition_max_bytes
                        .get(p)
                        .copied()
                        .unwrap_or(self.options.partition_max_bytes)
                })
                .max()
                .unwrap_or(self.options.partition_max_bytes);
            pendings.push(submit_fetch(&conn, &self.info.name, &positions, &options).await?);
        }
        let mut out = Vec::new();
        let mut refresh = false;
        for pending in pendings {
            for data in wait_fetch(pending, &self.info.name).await? {
                let Some(position) = self.positions.get(&data.partition).copied() else {
                    continue;
                };
                if data.error_code != 0 {
                    let err = ClientError::check(data.error_code, || {
                        format!(
                            "fetch {}-{} at offset {position}",
                            self.info.name, data.partition
                        )
                    });
                    match err {
                        Err(e) if e.is_retriable() => {
                            refresh = true;
                            continue;
                        }
                        Err(e) => return Err(e),
                        Ok(()) => {}
                    }
                }
                self.high_watermarks
                    .insert(data.partition, data.high_watermark);
                let had_bytes = !data.records.is_empty();
                let (records, next) = decode_fetched(data.partition, data.records, position)?;
                if next == position && had_bytes {
                    // Only a truncated batch came back: allow a bigger one next round.
                    let cap = self
                        .partition_max_bytes
                        .entry(data.partition)
                        .or_insert(self.options.partition_max_bytes);
                    *cap = cap.saturating_mul(2);
                }
                self.positions.insert(data.partition, next);
                out.extend(records);
            }
        }
        if refresh {
            self.info = self.client.topic(&self.info.name).await?;
        }
        Ok(out)
    }
}
