//! Fetch (4–17; KIP-951's leader hints from v12, their endpoints from v16): with incremental
//! fetch sessions (`fetch_session.rs`, KIP-227), reads whole batches from the owning shards,
//! long-polls until `min_bytes` are
//! available or `max_wait_ms` passes (woken by appends, not by a timer loop), and answers with
//! framing plus record data that the connection writes without copying it into the response.
//!
//! A follower replica's fetch (`replica_id` >= 0, in a cluster) is served from the leader's
//! durable end instead of its high watermark, records the follower's fetch offset as its
//! durable log end (`replication::Replicas::on_follower_fetch`), and is answered at once when
//! the high watermark moved past what that follower was last told.
//!
//! read_committed (isolation level 1) stops at the partition's last stable offset and
//! carries the aborted transactions of the range (`crate::txn`).
//!
//! Must never: send a consumer a byte at or above the high watermark (a read_committed one at
//! or above the last stable offset; a follower one at or above the durable end), exceed `max_bytes` except for the first batch (Kafka's progress
//! guarantee), or keep a remote wait alive past the deadline.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use sluice_net::connection::Response;
use sluice_net::fetch::{encode_response, FetchPartitionOut, FetchTopicOut};
use sluice_net::header::RequestHeader;
use sluice_net::Reader;
use sluice_storage::{ReadBound, ReadChunk, ReadSlice, StorageError};

use super::authz::Authz;
use super::decode_or_close;
use super::fetch_session::{CachedPartition, Kind, PartitionKey};
use crate::errors::code;
use crate::security::acl::Operation;
use crate::security::quota::enforce::FetchCharge;
use crate::shard::Shard;

/// Record data of one partition in a Fetch response: tail-cache bytes or file ranges.
pub type FetchRecords = Vec<ReadChunk>;

struct PartitionFetch {
    index: i32,
    fetch_offset: i64,
    partition_max_bytes: u32,
    /// Known topic and partition (false: answered with `error_code` without reading).
    known: bool,
    error_code: i16,
}

struct TopicFetch {
    name: String,
    id: uuid::Uuid,
    partitions: Vec<PartitionFetch>,
}

/// One partition's read, whether a follower must hear its high watermark at once, its last
/// stable offset and, for read_committed, the aborted transactions overlapping the records.
struct Read {
    slice: ReadSlice,
    high_watermark_news: bool,
    last_stable_offset: i64,
    aborted: Vec<(i64, i64)>,
}

type ReadOutcome = Result<Read, (i16, i64, i64)>;

/// Fetch's `isolation_level` for read_committed.
const READ_COMMITTED: i8 = 1;

/// Handles Fetch.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &crate::security::Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, FetchRequest);
    let version = header.api_version;
    let snapshot = shard.metadata.load();
    // A follower replica's fetch: replica_id is its broker id (v15+ carries it in the
    // replica_state tagged field). Only a cluster has followers.
    let replica_id = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    // The follower's registration as this broker knows it (KIP-903: an ISR change that adds it
    // names it, so a restarted incarnation is not taken for this one), looked up once here.
    let replica = snapshot
        .cluster
        .as_ref()
        .filter(|_| replica_id >= 0)
        .map(|state| Follower {
            id: replica_id,
            broker_epoch: state.brokers.get(&replica_id).map(|b| b.epoch),
        });
    let resolve = |name: &kafka_protocol::messages::TopicName, id: uuid::Uuid| {
        if version >= 13 {
            let name = snapshot.names_by_id.get(&id).cloned().unwrap_or_default();
            (name, id)
        } else {
            let name = name.0.to_string();
            let id = snapshot.topic(&name).map_or(id, |m| m.id);
            (name, id)
        }
    };
    let requested: Vec<(PartitionKey, CachedPartition)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            let (name, id) = resolve(&topic.topic, topic.topic_id);
            topic.partitions.iter().map(move |p| {
                (
                    PartitionKey {
                        name: name.clone(),
                        id,
                        index: p.partition,
                    },
                    CachedPartition {
                        fetch_offset: p.fetch_offset,
                        partition_max_bytes: p.partition_max_bytes,
                        high_watermark: -1,
                        log_start_offset: -1,
                        current_leader_epoch: p.current_leader_epoch,
                    },
                )
            })
        })
        .collect();
    // Sessions are for consumers (a follower of a cluster fetches without one).
    let kind = if version >= 7 && replica.is_none() {
        let forgotten: Vec<PartitionKey> = request
            .forgotten_topics_data
            .iter()
            .flat_map(|topic| {
                let (name, id) = resolve(&topic.topic, topic.topic_id);
                topic.partitions.iter().map(move |index| PartitionKey {
                    name: name.clone(),
                    id,
                    index: *index,
                })
            })
            .collect();
        let (begun, created, closed) = {
            let mut sessions = shard.fetch_sessions.borrow_mut();
            let before = sessions.totals();
            let begun = sessions.begin(
                request.session_id,
                request.session_epoch,
                &requested,
                &forgotten,
                Instant::now(),
            );
            let after = sessions.totals();
            (begun, after.0 - before.0, after.1 - before.1)
        };
        shard
            .metrics
            .count(sluice_metrics::Counter::FetchSessionsCreated, created);
        shard
            .metrics
            .count(sluice_metrics::Counter::FetchSessionsClosed, closed);
        match begun {
            Ok(kind) => kind,
            Err(error_code) => {
                return Response::Frame(sluice_net::fetch::encode_error_response(
                    &header, error_code,
                ))
            }
        }
    } else {
        Kind::Full { session_id: 0 }
    };
    let session_id = match kind {
        Kind::Full { session_id } => session_id,
        Kind::Incremental { session_id } => {
            shard
                .metrics
                .count(sluice_metrics::Counter::IncrementalFetches, 1);
            session_id
        }
    };
    let to_read = match kind {
        Kind::Full { .. } => requested,
        Kind::Incremental { session_id } => shard.fetch_sessions.borrow().partitions(session_id),
    };
    let authz = Authz::of(&shard, session);
    let topics = topic_fetches(
        &shard,
        &snapshot,
        version,
        &to_read,
        &authz,
        replica.is_some(),
    );

    // fetch.max.bytes caps the response whatever the client asks (v0-v2 have no max_bytes of
    // their own); partition limits still apply, and the first batch goes out even when larger.
    let asked_bytes = if version >= 3 {
        request.max_bytes.max(0) as u32
    } else {
        u32::MAX
    };
    // A consumer under consumer_byte_rate gets at most what its quota allows over the
    // measured span (a follower of a cluster is never charged).
    let quota = replica
        .is_none()
        .then(|| FetchCharge::begin(&shard, &snapshot.client_quotas, session, &header))
        .flatten();
    let quota_bytes_max = quota.as_ref().map_or(u32::MAX, FetchCharge::bytes_max);
    let max_bytes = asked_bytes
        .min(shard.config.fetch_bytes_max)
        .min(quota_bytes_max);
    let min_bytes = request.min_bytes.max(0) as u64;
    let wait = Duration::from_millis(
        (request.max_wait_ms.max(0) as u64).min(shard.config.fetch_wait_ms_max),
    );
    let deadline = Instant::now() + wait;

    let committed = version >= 4 && request.isolation_level == READ_COMMITTED;
    let started = Instant::now();
    let mut outcomes = read_all(&shard, &topics, max_bytes, replica, committed).await;
    loop {
        let available: u64 = outcomes
            .iter()
            .flatten()
            .filter_map(|o| o.as_ref().ok())
            .map(|r| u64::from(r.slice.total_bytes))
            .sum();
        let any_error = outcomes.iter().flatten().any(|o| o.is_err());
        let news = outcomes
            .iter()
            .flatten()
            .any(|o| o.as_ref().is_ok_and(|r| r.high_watermark_news));
        let now = Instant::now();
        // min_bytes 0 (or less) is answered at once, as Kafka does.
        if available >= min_bytes || any_error || news || now >= deadline {
            break;
        }
        if !wait_for_any(&shard, &topics, &outcomes, deadline - now, replica).await {
            break;
        }
        outcomes = read_all(&shard, &topics, max_bytes, replica, committed).await;
    }

    shard.metrics.record_stage_ns(
        sluice_metrics::Stage::FetchWait,
        started.elapsed().as_nanos() as u64,
    );
    let response_topics = topics
        .into_iter()
        .zip(outcomes)
        .map(|(topic, partitions)| FetchTopicOut {
            name: Bytes::from(topic.name.into_bytes()),
            topic_id: topic.id,
            partitions: topic
                .partitions
                .iter()
                .zip(partitions)
                .map(|(p, outcome)| match outcome {
                    Ok(read) => FetchPartitionOut {
                        index: p.index,
                        error_code: code::NONE,
                        high_watermark: read.slice.high_watermark,
                        last_stable_offset: read.last_stable_offset,
                        log_start_offset: read.slice.log_start_offset,
                        records: Some((read.slice.total_bytes, read.slice.chunks)),
                        aborted_transactions: read.aborted,
                        current_leader: None,
                    },
                    Err((error_code, high_watermark, log_start_offset)) => FetchPartitionOut {
                        index: p.index,
                        error_code,
                        high_watermark,
                        last_stable_offset: high_watermark,
                        log_start_offset,
                        records: None,
                        aborted_transactions: Vec::new(),
                        current_leader: None,
                    },
                })
                .collect(),
        })
        .collect();
    let (response_topics, node_endpoints) =
        leader_hints(&shard, version, &session.listener, response_topics);
    let response_topics = if session_id == 0 {
        response_topics
    } else {
        sessions_filter(&shard, kind, session_id, response_topics)
    };
    let (parts, total_bytes) = encode_response(
        &header,
        0,
        code::NONE,
        session_id,
        response_topics,
        &node_endpoints,
    );
    if let Some(quota) = quota {
        let throttle_ms = quota.record(total_bytes as u64);
        if throttle_ms > 0 {
            // Over the quota: Kafka answers with no data at all, and the bytes do not count.
            drop(parts);
            let throttle_ms = i32::try_from(throttle_ms).unwrap_or(i32::MAX);
            let (empty, _) = encode_response::<FetchRecords>(
                &header,
                throttle_ms,
                code::NONE,
                session_id,
                Vec::new(),
                &[],
            );
            return Response::Parts(empty);
        }
    }
    Response::Parts(parts)
}

/// KIP-951 (v12+): a partition answered NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH gets its
/// committed leader when another live broker leads it, and (v16+) the response lists those
/// leaders' endpoints on the request's listener.
fn leader_hints(
    shard: &Shard,
    version: i16,
    listener: &str,
    mut topics: Vec<FetchTopicOut<FetchRecords>>,
) -> (
    Vec<FetchTopicOut<FetchRecords>>,
    Vec<sluice_net::leader_hint::NodeEndpoint>,
) {
    let snapshot = shard.metadata.load();
    if version < 12 || snapshot.cluster.is_none() {
        return (topics, Vec::new());
    }
    let mut hints = super::leader_hints::Hints::default();
    for topic in &mut topics {
        let name = match snapshot.names_by_id.get(&topic.topic_id) {
            Some(name) => name.clone(),
            None => String::from_utf8_lossy(&topic.name).into_owned(),
        };
        for p in topic.partitions.iter_mut().filter(|p| {
            p.error_code == code::NOT_LEADER_OR_FOLLOWER
                || p.error_code == code::FENCED_LEADER_EPOCH
        }) {
            p.current_leader =
                hints.hint(&snapshot, shard.config.node_id, listener, &name, p.index);
        }
    }
    let endpoints = if version >= 16 {
        hints.endpoints
    } else {
        Vec::new()
    };
    (topics, endpoints)
}

/// The partitions to read, grouped by topic in order, each checked against the metadata
/// (unknown, or led by another broker: answered with the error without reading).
fn topic_fetches(
    shard: &Shard,
    snapshot: &crate::metadata::MetadataSnapshot,
    version: i16,
    partitions: &[(PartitionKey, CachedPartition)],
    authz: &Authz,
    from_follower: bool,
) -> Vec<TopicFetch> {
    // A follower needs CLUSTER_ACTION, a consumer READ on each topic (decided once per topic
    // name, not per partition).
    let follower_allowed = !from_follower || authz.cluster(Operation::ClusterAction);
    let mut last_decision: Option<(&str, bool)> = None;
    let unknown = if version >= 13 {
        code::UNKNOWN_TOPIC_ID
    } else {
        code::UNKNOWN_TOPIC_OR_PARTITION
    };
    let mut topics: Vec<TopicFetch> = Vec::new();
    for (key, asked) in partitions {
        let meta = Some(key.name.as_str())
            .filter(|n| !n.is_empty())
            .and_then(|n| snapshot.topic(n));
        let exists = meta.is_some_and(|m| key.index >= 0 && key.index < m.partitions);
        let led_elsewhere =
            exists && meta.is_some_and(|m| !snapshot.leads(m, key.index, shard.config.node_id));
        let authorized = if !authz.is_on() {
            true
        } else if from_follower {
            follower_allowed
        } else {
            match last_decision {
                Some((name, allowed)) if name == key.name => allowed,
                _ => {
                    let allowed = authz.topic(Operation::Read, &key.name);
                    last_decision = Some((key.name.as_str(), allowed));
                    allowed
                }
            }
        };
        // v9+ (KIP-320): a consumer on an older leader epoch is fenced (it validates its
        // position with OffsetForLeaderEpoch), one ahead of this broker's metadata waits.
        let epoch_error = match meta {
            Some(m) if exists && !led_elsewhere && authorized => {
                super::leader_epochs::check_current_epoch(
                    asked.current_leader_epoch,
                    snapshot.leader_epoch(m, key.index),
                )
            }
            _ => code::NONE,
        };
        let known = authorized && exists && !led_elsewhere && epoch_error == code::NONE;
        let partition = PartitionFetch {
            index: key.index,
            fetch_offset: asked.fetch_offset,
            partition_max_bytes: asked.partition_max_bytes.max(0) as u32,
            known,
            error_code: if !authorized {
                code::TOPIC_AUTHORIZATION_FAILED
            } else if meta.is_none() {
                unknown
            } else if led_elsewhere {
                code::NOT_LEADER_OR_FOLLOWER
            } else if epoch_error != code::NONE {
                epoch_error
            } else if known {
                code::NONE
            } else {
                code::UNKNOWN_TOPIC_OR_PARTITION
            },
        };
        match topics.last_mut() {
            Some(last) if last.name == key.name && last.id == key.id => {
                last.partitions.push(partition)
            }
            _ => topics.push(TopicFetch {
                name: key.name.clone(),
                id: key.id,
                partitions: vec![partition],
            }),
        }
    }
    topics
}

/// Records in the session what each partition's answer told the client; an incremental
/// response keeps only the partitions with news (records, an error, a moved high watermark or
/// log start), a full one keeps them all.
fn sessions_filter(
    shard: &Shard,
    kind: Kind,
    session_id: i32,
    topics: Vec<FetchTopicOut<FetchRecords>>,
) -> Vec<FetchTopicOut<FetchRecords>> {
    let incremental = matches!(kind, Kind::Incremental { .. });
    let mut sessions = shard.fetch_sessions.borrow_mut();
    topics
        .into_iter()
        .filter_map(|mut topic| {
            let name = String::from_utf8_lossy(&topic.name).into_owned();
            topic.partitions.retain(|p| {
                let key = PartitionKey {
                    name: name.clone(),
                    id: topic.topic_id,
                    index: p.index,
                };
                let has_news = p.error_code != code::NONE
                    || p.records.as_ref().is_some_and(|(bytes, _)| *bytes > 0);
                let send = sessions.note_sent(
                    session_id,
                    &key,
                    p.high_watermark,
                    p.log_start_offset,
                    has_news,
                );
                send || !incremental
            });
            (!topic.partitions.is_empty() || !incremental).then_some(topic)
        })
        .collect()
}

/// A follower replica's fetch: its broker id and its broker epoch in this broker's metadata.
#[derive(Debug, Clone, Copy)]
struct Follower {
    id: i32,
    broker_epoch: Option<i64>,
}

/// Reads every partition concurrently on its owner, then trims to `max_bytes` in request
/// order: the first partition with data always keeps its first batch; a later one that would
/// overflow the budget returns no records this time (the client asks again).
async fn read_all(
    shard: &Rc<Shard>,
    topics: &[TopicFetch],
    max_bytes: u32,
    replica: Option<Follower>,
    committed: bool,
) -> Vec<Vec<ReadOutcome>> {
    let mut pending = Vec::new();
    for topic in topics {
        for p in &topic.partitions {
            if !p.known {
                let error = p.error_code;
                pending.push(futures::future::Either::Left(futures::future::ready(Err(
                    (error, -1, -1),
                ))));
                continue;
            }
            let owner = shard.set.owner_of(&topic.name, p.index);
            let (name, index, offset) = (topic.name.clone(), p.index, p.fetch_offset);
            let limit = p.partition_max_bytes.min(max_bytes);
            let read = shard.invoke_on(owner, move |s| async move {
                read_on_owner(&s, &name, index, offset, limit, replica, committed).await
            });
            pending.push(futures::future::Either::Right(async move {
                read.await
                    .unwrap_or(Err((code::NOT_LEADER_OR_FOLLOWER, -1, -1)))
            }));
        }
    }
    let mut flat = futures::future::join_all(pending).await.into_iter();
    let mut used_bytes: u64 = 0;
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        let mut parts = Vec::with_capacity(topic.partitions.len());
        for _ in &topic.partitions {
            let Some(mut outcome) = flat.next() else {
                break;
            };
            if let Ok(Read { slice, .. }) = &mut outcome {
                let size = u64::from(slice.total_bytes);
                if used_bytes > 0 && used_bytes + size > u64::from(max_bytes) {
                    slice.chunks.clear();
                    slice.total_bytes = 0;
                }
                used_bytes += u64::from(slice.total_bytes);
            }
            parts.push(outcome);
        }
        out.push(parts);
    }
    out
}

/// A failed disk read answers KAFKA_STORAGE_ERROR for this partition only; the request's
/// other partitions and the connection go on.
async fn read_on_owner(
    shard: &Shard,
    topic: &str,
    index: i32,
    offset: i64,
    limit_bytes: u32,
    replica: Option<Follower>,
    committed: bool,
) -> ReadOutcome {
    let Some(partition) = shard.partition(topic, index) else {
        return Err((code::NOT_LEADER_OR_FOLLOWER, -1, -1));
    };
    let bound = match replica {
        Some(follower) => {
            shard
                .replicas
                .on_follower_fetch(topic, index, follower.id, offset, follower.broker_epoch)
                .map_err(|error_code| {
                    (
                        error_code,
                        partition.high_watermark(),
                        partition.log_start_offset(),
                    )
                })?;
            ReadBound::DurableEnd
        }
        None => ReadBound::HighWatermark,
    };
    // read_committed: no batch at or past the last stable offset, and the aborted
    // transactions of the range. read_uncommitted never loads transaction state.
    let stable = if committed && replica.is_none() {
        if let Err(error) = shard
            .txn_partitions
            .ensure_loaded(&partition, topic, index)
            .await
        {
            tracing::error!(topic, partition = index, %error, "loading the partition's transactions failed");
            return Err((code::KAFKA_STORAGE_ERROR, -1, -1));
        }
        let high_watermark = partition.high_watermark();
        shard.txn_partitions.with(topic, index, |txns| {
            let lso = txns.last_stable_offset(high_watermark);
            (lso, txns.aborted_between(offset, lso))
        })
    } else {
        None
    };
    let (bound, aborted) = match stable {
        Some((lso, aborted)) => (ReadBound::Stable(lso), Some((lso, aborted))),
        None => (bound, None),
    };
    // min_one_batch: Kafka returns at least one whole batch even above the limits, so a
    // consumer can always make progress.
    let read = partition
        .read_bounded(offset, limit_bytes, true, bound)
        .await
        .map(|slice| {
            let high_watermark_news = replica.is_some_and(|follower| {
                shard.replicas.take_high_watermark_news(
                    topic,
                    index,
                    follower.id,
                    slice.high_watermark,
                )
            });
            let (last_stable_offset, aborted) = aborted.unwrap_or_else(|| {
                let lso = shard
                    .txn_partitions
                    .with(topic, index, |txns| {
                        txns.last_stable_offset(slice.high_watermark)
                    })
                    .unwrap_or(slice.high_watermark);
                (lso, Vec::new())
            });
            Read {
                slice,
                high_watermark_news,
                last_stable_offset,
                aborted,
            }
        });
    if read.as_ref().is_ok_and(|r| r.slice.cache_budget_spent) {
        shard
            .metrics
            .count(sluice_metrics::Counter::FetchCacheBudgetFileReads, 1);
    }
    read.map_err(|error| match error {
        StorageError::OffsetOutOfRange {
            log_start_offset, ..
        } => (
            code::OFFSET_OUT_OF_RANGE,
            partition.high_watermark(),
            log_start_offset,
        ),
        other => {
            tracing::error!(topic, partition = index, error = %other, "read failed");
            (code::KAFKA_STORAGE_ERROR, -1, -1)
        }
    })
}

/// Waits until any polled partition's high watermark moves past what the last read saw, or
/// `timeout`. Returns false on timeout.
async fn wait_for_any(
    shard: &Rc<Shard>,
    topics: &[TopicFetch],
    outcomes: &[Vec<ReadOutcome>],
    timeout: Duration,
    replica: Option<Follower>,
) -> bool {
    let mut waits = Vec::new();
    for (topic, parts) in topics.iter().zip(outcomes) {
        for (p, outcome) in topic.partitions.iter().zip(parts) {
            let Ok(Read { slice, .. }) = outcome else {
                continue;
            };
            let owner = shard.set.owner_of(&topic.name, p.index);
            let name = topic.name.clone();
            let index = p.index;
            // Wake when the high watermark passes what we saw (or passes the fetch offset);
            // a follower also when the durable end passes its fetch offset.
            let seen = slice.high_watermark.max(p.fetch_offset);
            let (fetch_offset, high_watermark) = (p.fetch_offset, slice.high_watermark);
            waits.push(Box::pin(shard.invoke_on(owner, move |s| async move {
                let Some(partition) = s.partition(&name, index) else {
                    return;
                };
                let wait = async {
                    match replica {
                        Some(_) => {
                            tokio::select! {
                                _ = partition.wait_for_durable(fetch_offset) => {}
                                _ = partition.wait_for_data(high_watermark) => {}
                            }
                        }
                        None => partition.wait_for_data(seen).await,
                    }
                };
                let _ = tokio::time::timeout(timeout, wait).await;
            })));
        }
    }
    if waits.is_empty() {
        tokio::time::sleep(timeout).await;
        return false;
    }
    tokio::select! {
        _ = futures::future::select_all(waits) => true,
        _ = tokio::time::sleep(timeout) => false,
    }
}
