//! A follower's fetcher: one task per (shard, leader broker) copies every partition the shard
//! follows from that leader, with Kafka Fetch requests carrying this broker's id as
//! `replica_id` over one connection. Each answer's batches are appended with their offsets
//! unchanged and awaited durable before the next fetch, so the offset a fetch asks from is
//! always this replica's durable end (what the leader counts for its high watermark); the
//! leader's high watermark in the answer becomes this replica's limit. A partition is fetched
//! only once its log was matched to the leader's at the role's epoch (`truncation.rs`), and
//! again after an append finds the logs diverging. The idempotent producer states follow
//! every copied batch (`Shard::replay_producer_states`), so this replica can lead with them.
//! Must never append to a partition it no
//! longer follows from this leader at this epoch, and never truncate itself.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId as WireBrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_client::{ConnectOptions, Connection};
use sluice_cluster::state::BrokerId;
use sluice_storage::{Ack, AppendError};

use super::Followed;
use crate::errors::code;
use crate::shard::Shard;

/// Copies from `leader` until this shard follows nothing from it.
pub(crate) async fn run(shard: Rc<Shard>, leader: BrokerId) {
    let config = shard.config.replication.clone();
    let backoff = Duration::from_millis(config.fetch_backoff_ms);
    let options = ConnectOptions {
        client_id: format!("sluice-replica-{}", shard.config.node_id),
        security: shard.config.inter_broker_security.clone(),
        ..ConnectOptions::default()
    };
    let mut connection: Option<Connection> = None;
    tracing::info!(shard = shard.id, leader, "replica fetcher started");
    loop {
        let followed = shard.replicas.followed_from(leader);
        if followed.is_empty() {
            shard.replicas.fetcher_stopped(leader);
            tracing::info!(shard = shard.id, leader, "replica fetcher stopped");
            return;
        }
        if connection.as_ref().is_none_or(Connection::is_closed) {
            connection = None;
            let Some(address) = leader_address(&shard, leader) else {
                tokio::time::sleep(backoff).await;
                continue;
            };
            match Connection::connect(&address, &options).await {
                Ok(opened) => connection = Some(opened),
                Err(error) => {
                    tracing::debug!(leader, %address, %error, "cannot reach the leader to fetch");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let Some(open) = connection.as_ref() else {
            continue;
        };
        let unchecked: Vec<Followed> = followed
            .iter()
            .filter(|f| !f.epoch_checked)
            .cloned()
            .collect();
        if !unchecked.is_empty() && !super::truncation::match_logs(&shard, open, &unchecked).await {
            connection = None;
            tokio::time::sleep(backoff).await;
            continue;
        }
        let followed: Vec<Followed> = shard
            .replicas
            .followed_from(leader)
            .into_iter()
            .filter(|f| f.epoch_checked)
            .collect();
        if followed.is_empty() {
            tokio::time::sleep(backoff).await;
            continue;
        }
        let by_id = open.version_for::<FetchRequest>().is_ok_and(|v| v >= 13);
        let request = fetch_request(shard.config.node_id, &followed, &config, by_id);
        let answered = match open.send(&request).await {
            Ok(response) => apply(&shard, leader, &followed, response, by_id).await,
            Err(error) => {
                tracing::debug!(leader, %error, "replica fetch failed");
                connection = None;
                false
            }
        };
        if !answered {
            tokio::time::sleep(backoff).await;
        }
    }
}

/// The advertised address of `leader` in the committed state.
fn leader_address(shard: &Shard, leader: BrokerId) -> Option<String> {
    let snapshot = shard.metadata.load();
    let broker = snapshot.cluster.as_ref()?.brokers.get(&leader)?.clone();
    Some(format!("{}:{}", broker.host, broker.port))
}

/// One fetch for every followed partition, each from its log end (its durable end: the
/// previous answer's appends were awaited durable).
fn fetch_request(
    node_id: i32,
    followed: &[Followed],
    config: &crate::config::ReplicationConfig,
    by_id: bool,
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for f in followed {
        let partition = FetchPartition::default()
            .with_partition(f.index)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(f.partition.log_end_offset())
            .with_last_fetched_epoch(-1)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(config.fetch_bytes_max);
        let same = |t: &&mut FetchTopic| {
            if by_id {
                t.topic_id == f.topic_id
            } else {
                t.topic.0.as_str() == f.topic
            }
        };
        match topics.iter_mut().find(|t| same(t)) {
            Some(topic) => topic.partitions.push(partition),
            None => {
                let topic = if by_id {
                    FetchTopic::default().with_topic_id(f.topic_id)
                } else {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(f.topic.clone())))
                };
                topics.push(topic.with_partitions(vec![partition]));
            }
        }
    }
    let partitions = i32::try_from(followed.len()).unwrap_or(i32::MAX);
    FetchRequest::default()
        .with_replica_id(WireBrokerId(node_id))
        .with_max_wait_ms(config.fetch_wait_ms_max)
        .with_min_bytes(1)
        .with_max_bytes(config.fetch_bytes_max.saturating_mul(partitions))
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// Appends every partition's batches (awaited durable, all at once so they share group
/// commits) and takes the leader's high watermark; false when any partition answered an
/// error (the fetcher backs off).
async fn apply(
    shard: &Shard,
    leader: BrokerId,
    followed: &[Followed],
    response: FetchResponse,
    by_id: bool,
) -> bool {
    if response.error_code != code::NONE {
        tracing::debug!(
            leader,
            error_code = response.error_code,
            "replica fetch refused"
        );
        return false;
    }
    let mut all_ok = true;
    let mut appends = Vec::new();
    for topic in response.responses {
        for answer in topic.partitions {
            let found = followed.iter().find(|f| {
                f.index == answer.partition_index
                    && if by_id {
                        f.topic_id == topic.topic_id
                    } else {
                        f.topic == topic.topic.0.as_str()
                    }
            });
            let Some(f) = found else {
                continue;
            };
            if answer.error_code != code::NONE {
                if answer.error_code == code::OFFSET_OUT_OF_RANGE {
                    // This log may end past the leader's: match it before fetching again.
                    shard
                        .replicas
                        .set_epoch_checked(&f.topic, f.index, f.leader_epoch, false);
                }
                tracing::debug!(topic = %f.topic, partition = f.index, leader, error_code = answer.error_code, "replica fetch of a partition refused");
                all_ok = false;
                continue;
            }
            let records = answer.records.unwrap_or_default();
            appends.push(copy(
                shard,
                leader,
                f,
                records,
                answer.high_watermark,
                answer.log_start_offset,
            ));
        }
    }
    for ok in futures::future::join_all(appends).await {
        all_ok &= ok;
    }
    all_ok
}

/// Appends one partition's copied batches (if it is still followed from `leader`), then
/// takes the leader's high watermark as this replica's limit and the leader's log start
/// offset as its own (DeleteRecords on the leader, or its retention, moved it).
async fn copy(
    shard: &Shard,
    leader: BrokerId,
    f: &Followed,
    records: Bytes,
    high_watermark: i64,
    leader_log_start_offset: i64,
) -> bool {
    if !records.is_empty() {
        if !shard
            .replicas
            .follows(&f.topic, f.index, leader, f.leader_epoch)
        {
            return true;
        }
        // Loaded before the append, so a rebuild from the log sees it without these batches
        // and the replay below adds each exactly once. With transactional batches or markers,
        // the partition's transaction view follows them too (open transactions, aborted
        // ranges, coordinator epochs), loaded first, and its flag file exists before they are
        // durable here, so this replica can lead with read_committed right.
        let transactional = sluice_storage::batch::headers(&records).any(|h| h.is_transactional());
        let needs = crate::shard::AppendNeeds {
            txn_state: transactional,
            txn_flag: transactional,
        };
        if let Err(error_code) = shard
            .prepare_append(&f.partition, &f.topic, f.index, needs)
            .await
        {
            tracing::warn!(topic = %f.topic, partition = f.index, error_code, "cannot prepare a follower's transaction view");
            return false;
        }
        // The states follow the append once it completes, and the ABORT markers it copies are
        // indexed before the hold goes: no producer snapshot meanwhile, so a restart that
        // finds a marker's entry missing (a crash before its index write) replays it from
        // below the newest snapshot and indexes it then, as on a leader.
        let hold = shard.snapshot_holds.hold(&f.topic, f.index);
        let first_offset = sluice_storage::batch::headers(&records)
            .next()
            .map(|h| h.base_offset);
        let appended = f
            .partition
            .append_replicated(records.clone(), Ack::Durable)
            .await;
        if appended.is_ok() {
            shard.replay_producer_states(&f.topic, f.index, &records);
            shard
                .txn_partitions
                .replay_copied(&f.topic, f.index, &records);
            if transactional {
                if let Some(first_offset) = first_offset {
                    index_copied_aborts(shard, f, first_offset).await;
                }
            }
        } else {
            // What landed is unknown: the next load rebuilds the states from the log.
            shard.forget_producer_states(&f.topic, f.index);
            shard.txn_partitions.forget(&f.topic, f.index);
        }
        drop(hold);
        if let Err(error) = appended {
            if matches!(error, AppendError::NotAtLogEnd { .. }) {
                // The logs diverge: match this one to the leader's before fetching again.
                shard
                    .replicas
                    .set_epoch_checked(&f.topic, f.index, f.leader_epoch, false);
            }
            tracing::warn!(topic = %f.topic, partition = f.index, leader, %error, "appending the leader's batches failed");
            return false;
        }
    }
    f.partition.limit_high_watermark(Some(high_watermark));
    // Kafka's follower moves its log start up to the leader's (never past what it holds
    // below the high watermark): records deleted on the leader must not come back when
    // this replica leads. DeleteRecords makes the move durable before it is visible.
    let local_start = f.partition.log_start_offset();
    let target = leader_log_start_offset.min(f.partition.high_watermark());
    if target > local_start {
        match f.partition.delete_records(target).await {
            Ok(start) => {
                tracing::info!(topic = %f.topic, partition = f.index, leader, log_start_offset = start, "moved the log start to the leader's");
            }
            Err(error) => {
                tracing::warn!(topic = %f.topic, partition = f.index, leader, target, %error, "moving the log start to the leader's failed");
                return false;
            }
        }
    }
    true
}

/// Writes the `.txnindex` entries of the ABORT markers a follower just copied (from
/// `first_offset` on), as Kafka's follower indexes the markers it appends; if one cannot be
/// written, the partition's indexes stop being trusted (its next load replays the whole log).
async fn index_copied_aborts(shard: &Shard, f: &Followed, first_offset: i64) {
    let Some((markers, entries)) =
        shard
            .txn_partitions
            .aborted_from(&f.topic, f.index, first_offset)
    else {
        return;
    };
    for marker_offset in markers {
        if let Err(error) = f.partition.write_txn_index(marker_offset, &entries).await {
            tracing::error!(topic = %f.topic, partition = f.index, %error, "cannot index a copied ABORT marker");
            if let Err(error) = crate::txn::registry::distrust_indexes(&f.partition).await {
                tracing::error!(topic = %f.topic, partition = f.index, %error, "cannot mark the partition's transaction indexes incomplete");
            }
            return;
        }
    }
}
