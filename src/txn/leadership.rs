//! The transaction coordinator follows the replica roles of `__transaction_state` in a
//! cluster, as the group coordinator follows `__consumer_offsets` (`replication::offsets`):
//! the quorum creates the topic on the first FindCoordinator for a transactional id; a
//! transactional id's coordinator is the broker leading its state partition, on the shard
//! owning it; *become_leader* loads the partition's states (coordinator epoch = the
//! partition's leader epoch) and resumes what they left half done, *become_follower* or
//! losing the partition unloads them (NOT_COORDINATOR).
//!
//! Owns the topic's creation, FindCoordinator's answer for key type 1 and the two
//! transitions. Must never decide a role (only `Replicas::reconcile` does) or load a
//! partition this broker does not lead.

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_storage::Partition;

use super::TRANSACTION_STATE_TOPIC;
use crate::api::groups::Located;
use crate::errors::code;
use crate::shard::Shard;

/// Where `transactional_id`'s coordinator is (FindCoordinator key type 1): this broker on a
/// single broker; in a cluster, the leader of the id's state partition (the topic is created
/// through the quorum on first use; until then, and while its leader is fenced or unknown,
/// COORDINATOR_NOT_AVAILABLE, which clients retry).
pub fn locate(shard: &Rc<Shard>, transactional_id: &str, listener: &str) -> Located {
    let snapshot = shard.metadata.load();
    let Some(state) = snapshot.cluster.as_ref() else {
        let (host, port) = shard.config.listeners.advertised_for(listener);
        return Ok((shard.config.node_id, host, port));
    };
    let unavailable = |m: &str| Err((code::COORDINATOR_NOT_AVAILABLE, m.to_string()));
    let Some(topic) = state.topic_by_name(TRANSACTION_STATE_TOPIC) else {
        let live = state.unfenced_brokers().count();
        if live == 0 {
            return unavailable("no broker is unfenced yet");
        }
        create_state_topic(shard, live);
        return unavailable("the transaction state topic is being created");
    };
    let partition = usize::try_from(shard.txns.partition_for(transactional_id)).unwrap_or(0);
    let leader = topic.partitions.get(partition).map(|p| p.leader);
    match leader.and_then(|id| state.brokers.get(&id)) {
        Some(broker) if !broker.fenced => {
            match crate::security::listener::endpoint_of(broker, listener) {
                Some((host, port)) => Ok((broker.id, host, port)),
                None => unavailable("the transaction coordinator has no endpoint on this listener"),
            }
        }
        _ => unavailable("the transaction coordinator is not available"),
    }
}

/// Whether this broker leads `transactional_id`'s state partition (always on a single
/// broker): a request for it is served here, else answered NOT_COORDINATOR.
pub fn coordinates_here(shard: &Shard, transactional_id: &str) -> bool {
    let snapshot = shard.metadata.load();
    let Some(state) = snapshot.cluster.as_ref() else {
        return true;
    };
    let partition = usize::try_from(shard.txns.partition_for(transactional_id)).unwrap_or(0);
    state
        .topic_by_name(TRANSACTION_STATE_TOPIC)
        .and_then(|topic| topic.partitions.get(partition))
        .is_some_and(|p| p.leader == shard.config.node_id)
}

/// Asks the quorum (in the background) to create `__transaction_state`: Kafka's settings for
/// it (`transaction.state.log.replication.factor` replicas, capped at the `live` brokers as
/// Kafka caps it at creation; `min.insync.replicas` from `transaction.state.log.min.isr`,
/// capped at the replicas so a small cluster is not left with a log nothing may append to;
/// compacted: the newest record per id is the state). A second ask while one is under way
/// is refused there as a duplicate.
fn create_state_topic(shard: &Rc<Shard>, live: usize) {
    let Some(admin) = shard.metadata.admin().cloned() else {
        return;
    };
    let config = &shard.config.transactions;
    let replication_factor = i32::from(config.state_replication_factor)
        .min(i32::try_from(live).unwrap_or(i32::MAX))
        .max(1);
    let min_insync = config.state_min_isr.min(replication_factor).max(1);
    let configs: BTreeMap<String, String> = [
        ("min.insync.replicas", min_insync.to_string()),
        ("cleanup.policy", "compact".to_string()),
        ("retention.ms", "-1".to_string()),
        ("retention.bytes", "-1".to_string()),
        ("segment.bytes", config.state_segment_bytes.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let partitions = config.state_partitions;
    tokio::task::spawn_local(async move {
        let created = admin
            .call(sluice_cluster::wire::TopicAdminRequest::Create {
                name: TRANSACTION_STATE_TOPIC.to_string(),
                partitions,
                replication_factor,
                assignments: Vec::new(),
                configs,
            })
            .await;
        match created {
            Ok(_) => tracing::info!(
                replication_factor,
                min_insync,
                "created the transaction state topic through the quorum"
            ),
            Err(sluice_cluster::wire::TopicAdminError::AlreadyExists(_)) => {}
            Err(error) => tracing::warn!(%error, "creating the transaction state topic failed"),
        }
    });
}

/// This broker became the leader of state partition `index` at `leader_epoch`: drops what a
/// former leadership left loaded, then loads the partition (its whole log, to the log end,
/// served once the high watermark reached that end) and resumes its unfinished transactions.
pub(crate) fn lead(shard: &Rc<Shard>, index: i32, partition: &Partition, leader_epoch: i32) {
    shard.txns.unload_partition(index);
    let (coordinator, shard, partition) = (shard.txns.clone(), shard.clone(), partition.clone());
    tokio::task::spawn_local(async move {
        coordinator
            .lead_partition(shard, index, partition, leader_epoch)
            .await;
    });
}

/// This broker stopped leading state partition `index`: its transactional ids are unloaded
/// (their requests get NOT_COORDINATOR; a marker loop in flight stops at its next round).
pub(crate) fn stop_leading(shard: &Shard, index: i32) {
    shard.txns.unload_partition(index);
}
