//! Producing records: partition choice (explicit, Java-compatible key hash, or round robin for
//! keyless records), batching per partition, one Produce request per leader with all its
//! partitions, retries of retriable errors after a metadata refresh. It must never report a
//! record as acknowledged unless the broker answered it without error (acks=0 is reported as
//! "sent", never as "acknowledged"), and never reorder records within a partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

use crate::client::{Client, TopicInfo};
use crate::error::{ClientError, Result};
use crate::records::{encode_batch, partition_for_key, ProduceRecord};

/// Required acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Fire and forget: the broker sends no answer.
    None,
    /// The leader has appended.
    Leader,
    /// All in-sync replicas have the record (Sluice: durable on disk).
    All,
}

impl Acks {
    /// The wire value.
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "0" | "none" => Ok(Acks::None),
            "1" | "leader" => Ok(Acks::Leader),
            "-1" | "all" => Ok(Acks::All),
            other => Err(format!("invalid acks '{other}' (expected 0, 1, all or -1)")),
        }
    }
}

/// Builds a Produce request for one topic from pre-encoded batches.
pub fn build_produce_request(
    topic: &str,
    batches: Vec<(i32, Bytes)>,
    acks: Acks,
    timeout_ms: i32,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks.wire())
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(
                batches
                    .into_iter()
                    .map(|(p, b)| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(b))
                    })
                    .collect(),
            )])
}

/// Per-partition outcome of a Produce response: base offset or the error.
pub fn produce_outcomes(
    response: &ProduceResponse,
    topic: &str,
) -> Vec<(i32, std::result::Result<i64, ClientError>)> {
    let mut out = Vec::new();
    for t in &response.responses {
        for p in &t.partition_responses {
            let result = ClientError::check_msg(p.error_code, p.error_message.as_deref(), || {
                format!("produce to {topic}-{}", p.index)
            })
            .map(|()| p.base_offset);
            out.push((p.index, result));
        }
    }
    out
}

/// What a produce call achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceSummary {
    /// Records the broker acknowledged (or, with acks=0, records written to the socket).
    pub records_ok: u64,
    /// Base offset of the first batch per partition (absent with acks=0).
    pub first_offsets: BTreeMap<i32, i64>,
}

/// A simple producer for tools: batches what it is given and sends it.
pub struct Producer {
    client: Arc<Client>,
    acks: Acks,
    compression: Compression,
    batch_bytes_max: usize,
    retries_max: u32,
    next_partition: std::sync::atomic::AtomicU32,
}

impl Producer {
    /// A producer with the given acks and compression.
    pub fn new(client: Arc<Client>, acks: Acks, compression: Compression) -> Self {
        Producer {
            client,
            acks,
            compression,
            batch_bytes_max: 1 << 20,
            retries_max: 5,
            next_partition: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Picks the partition: explicit, else key hash, else round robin.
    pub fn choose_partition(
        &self,
        info: &TopicInfo,
        explicit: Option<i32>,
        key: Option<&[u8]>,
    ) -> Result<i32> {
        let count = info.partitions.len() as i32;
        if count == 0 {
            return Err(ClientError::UnknownTopic(info.name.clone()));
        }
        match (explicit, key) {
            (Some(p), _) if (0..count).contains(&p) => Ok(p),
            (Some(p), _) => Err(ClientError::UnknownPartition {
                topic: info.name.clone(),
                partition: p,
            }),
            (None, Some(key)) => Ok(partition_for_key(key, count)),
            (None, None) => {
                let n = self
                    .next_partition
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok((n % count as u32) as i32)
            }
        }
    }

    /// Sends `records` (each with an optional explicit partition) to `topic`, in order per
    /// partition, and waits for the acknowledgements.
    pub async fn send(
        &self,
        topic: &str,
        records: Vec<(Option<i32>, ProduceRecord)>,
    ) -> Result<ProduceSummary> {
        let mut info = self.client.topic(topic).await?;
        let mut by_partition: BTreeMap<i32, Vec<ProduceRecord>> = BTreeMap::new();
        for (explicit, record) in records {
            let p = self.choose_partition(&info, explicit, record.key.as_deref())?;
            by_partition.entry(p).or_default().push(record);
        }
        // Split each partition's records into batches of at most batch_bytes_max.
        let mut pending: BTreeMap<i32, Vec<(Bytes, u64)>> = BTreeMap::new();
        for (p, records) in by_partition {
            let mut start = 0;
            let mut size = 0usize;
            for (i, r) in records.iter().enumerate() {
                let record_size = r.key.as_ref().map_or(0, |k| k.len())
                    + r.value.as_ref().map_or(0, |v| v.len())
                    + r.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
                        .sum::<usize>()
                    + 24;
                if size + record_size > self.batch_bytes_max && i > start {
                    let batch = encode_batch(&records[start..i], self.compression)?;
                    pending
                        .entry(p)
                        .or_default()
                        .push((batch, (i - start) as u64));
                    start = i;
                    size = 0;
                }
                size += record_size;
            }
            if start < records.len() {
                let batch = encode_batch(&records[start..], self.compression)?;
                pending
                    .entry(p)
                    .or_default()
                    .push((batch, (records.len() - start) as u64));
            }
        }
        let mut summary = ProduceSummary::default();
        let mut attempt = 0;
        let timeout_ms =
            i32::try_from(self.client.options().request_timeout.as_millis()).unwrap_or(30_000);
        while !pending.is_empty() {
            // One round: for each partition, its next batch; one request per leader.
            let mut round: BTreeMap<i32, Vec<(i32, Bytes, u64)>> = BTreeMap::new();
            for (p, batches) in &pending {
                if let Some((batch, count)) = batches.first() {
                    let leader = info
                        .partitions
                        .iter()
                        .find(|x| x.partition == *p)
                        .map(|x| x.leader)
                        .unwrap_or(-1);
                    round
                        .entry(leader)
                        .or_default()
                        .push((*p, batch.clone(), *count));
                }
            }
            let mut retriable: Option<ClientError> = None;
            for (leader, batches) in round {
                let conn = self.client.broker(leader).await?;
                let counts: BTreeMap<i32, u64> = batches.iter().map(|(p, _, c)| (*p, *c)).collect();
                let request = build_produce_request(
                    topic,
                    batches.into_iter().map(|(p, b, _)| (p, b)).collect(),
                    self.acks,
                    timeout_ms,
                );
                if self.acks == Acks::None {
                    conn.send_no_response(&request).await?;
                    for (p, count) in counts {
                        summary.records_ok += count;
                        pop_first(&mut pending, p);
                    }
                    continue;
                }
                let response = conn.send(&request).await?;
                let outcomes = produce_outcomes(&response, topic);
                if let Some(missing) = counts
                    .keys()
                    .find(|p| !outcomes.iter().any(|(q, _)| q == *p))
                {
                    return Err(ClientError::Protocol {
                        api: "Produce",
                        version: conn.version_for::<ProduceRequest>().unwrap_or(-1),
                        message: format!(
                            "response does not mention partition {missing} of '{topic}'"
                        ),
                    });
                }
                for (p, outcome) in outcomes {
                    match outcome {
                        Ok(base_offset) => {
                            summary.records_ok += counts.get(&p).copied().unwrap_or(0);
                            summary.first_offsets.entry(p).or_insert(base_offset);
                            pop_first(&mut pending, p);
                        }
                        Err(e) if e.is_retriable() && attempt < self.retries_max => {
                            retriable = Some(e)
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            if retriable.is_some() {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                info = self.client.topic(topic).await?;
            }
        }
        Ok(summary)
    }
}

fn pop_first(pending: &mut BTreeMap<i32, Vec<(Bytes, u64)>>, partition: i32) {
    if let Some(batches) = pending.get_mut(&partition) {
        if !batches.is_empty() {
            batches.remove(0);
        }
        if batches.is_empty() {
            pending.remove(&partition);
        }
    }
}
