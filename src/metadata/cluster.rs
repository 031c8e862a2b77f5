//! The bridge from the controller quorum to this broker: every broker view the cluster thread
//! learns is published beside the metadata snapshot, then shard 0 (where the snapshot's single
//! writer lives) derives the snapshot's user topics from the committed cluster state, and every
//! shard opens the partitions this broker is a replica of and deletes those of topics that are
//! gone. Owns that derivation and its scheduling; must never decide placement or leadership
//! (the quorum does), or publish from the cluster thread (it would race the controller's
//! publications on shard 0).

use std::rc::Rc;
use std::sync::Arc;

use sluice_cluster::broker::BrokerView;
use sluice_cluster::state::ClusterState;

use super::{MetadataSnapshot, MetadataStore, TopicMeta};
use crate::shard::{Shard, ShardSet};

/// Called on the cluster thread with every new view: stores it and asks shard 0 to apply it.
pub fn on_view(store: &MetadataStore, set: &ShardSet, view: Arc<BrokerView>) {
    store.publish_cluster(view);
    // The job reads the latest view when it runs, so a lost or late job is made good by the
    // next one; views only move forward.
    let job = Box::new(|shard: Rc<Shard>| {
        tokio::task::spawn_local(apply_latest(shard));
    });
    if let Err(error) = set.send_from_outside(0, job) {
        // Shard 0 has stopped: the broker is shutting down (the cluster thread outlives the
        // shards by the moment its last views take), and a stopped shard has nothing to
        // apply the state to.
        tracing::info!(%error, "cluster state not handed to shard 0: it has stopped");
    }
}

/// Kafka's controlled shutdown, run on the signal thread when the broker is asked to stop:
/// asks the controller to fence this broker (its partitions get other leaders, it leaves the
/// ISRs), waits up to `timeout` until the published snapshot shows it fenced, then has every
/// shard apply that snapshot to its partitions (a leader becomes a follower and fails its
/// waiting `acks=all` appends with NOT_LEADER_OR_FOLLOWER, which clients retry at the new
/// leader). Returns whether the broker was fenced in time; on a timeout, or once no voter
/// answers at all, the broker stops anyway, as Kafka's does once its controlled shutdown
/// gives up.
pub async fn controlled_shutdown(
    store: &MetadataStore,
    set: &ShardSet,
    node_id: i32,
    timeout: std::time::Duration,
) -> bool {
    let Some(admin) = store.admin() else {
        return false;
    };
    admin.shut_down();
    let fenced = |store: &MetadataStore| {
        store
            .load()
            .cluster
            .as_ref()
            .and_then(|state| state.brokers.get(&node_id).map(|b| b.fenced))
            .unwrap_or(false)
    };
    // The broker task clears the controller once no voter answered a whole round of its
    // shutdown heartbeats: nothing can fence this broker then.
    let controller_gone = |store: &MetadataStore| {
        store
            .cluster()
            .is_some_and(|view| view.controller_id.is_none())
    };
    let deadline = tokio::time::Instant::now() + timeout;
    while !fenced(store) {
        if tokio::time::Instant::now() >= deadline || controller_gone(store) {
            return false;
        }
        tokio::time::sleep(CONTROLLED_SHUTDOWN_POLL).await;
    }
    // Shard 0 published the fenced snapshot before it reconciled the shards: reconcile each
    // once more from here, so none still leads when the connections start draining.
    let mut reconciled = Vec::new();
    for target in 0..set.count() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job = Box::new(move |shard: Rc<Shard>| {
            shard.reconcile_cluster_partitions();
            let _ = done_tx.send(());
        });
        if set.send_from_outside(target, job).is_ok() {
            reconciled.push(done_rx);
        }
    }
    let _ = tokio::time::timeout_at(deadline, futures::future::join_all(reconciled)).await;
    true
}

/// How often the controlled shutdown looks for this broker's fencing in the snapshot.
const CONTROLLED_SHUTDOWN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// On shard 0: publishes the snapshot of the latest view (synchronously, so no controller
/// publication interleaves), then reconciles every shard's partitions with it.
async fn apply_latest(shard: Rc<Shard>) {
    let Some(view) = shard.metadata.cluster() else {
        return;
    };
    let current = shard.metadata.load();
    let newer = current.cluster.as_ref().is_none_or(|known| {
        known.applied_index < view.state.applied_index || known.brokers != view.state.brokers
    });
    if !newer {
        return;
    }
    shard.metadata.publish(derive(&current, &view.state));
    let mut pending = Vec::new();
    for target in 0..shard.set.count() {
        pending.push(shard.invoke_on(target, |s| async move { s.reconcile_cluster_partitions() }));
    }
    for result in futures::future::join_all(pending).await {
        if let Err(error) = result {
            tracing::error!(%error, "reconciling partitions on a shard failed");
        }
    }
}

/// The snapshot `current` becomes under cluster state `state`: its user topics are exactly
/// the cluster's, and so is the cluster id once the quorum has one; internal topics stay this
/// broker's own (so does the local producer-id reservation, unused in a cluster: ids come from
/// the quorum's blocks).
pub fn derive(current: &MetadataSnapshot, state: &Arc<ClusterState>) -> MetadataSnapshot {
    let mut next = current.clone();
    next.topics.retain(|_, topic| topic.is_internal());
    next.names_by_id
        .retain(|_, name| next.topics.contains_key(name.as_str()));
    // The offsets topic is the quorum's once it created it (its id is what followers fetch
    // it by); until then it keeps its local meta. Its partitions are opened with the group
    // coordinator's log config (at startup), not from these configs.
    // `__transaction_state` is the quorum's alone in a cluster (a broker opens it only as a
    // replica the quorum placed here).
    let replicated_internal = |name: &str| {
        name == sluice_group::OFFSETS_TOPIC || name == crate::txn::TRANSACTION_STATE_TOPIC
    };
    let cluster_topic = |name: &str| !name.starts_with("__") || replicated_internal(name);
    for name in [
        sluice_group::OFFSETS_TOPIC,
        crate::txn::TRANSACTION_STATE_TOPIC,
    ] {
        if state.topic_by_name(name).is_some() {
            next.topics.remove(name);
            next.names_by_id.retain(|_, known| known.as_str() != name);
        }
    }
    for topic in state.topics.values().filter(|t| cluster_topic(&t.name)) {
        let meta = TopicMeta {
            name: topic.name.clone(),
            id: topic.id,
            partitions: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
            configs: topic.configs.clone(),
        };
        next.names_by_id.insert(meta.id, meta.name.clone());
        next.topics.insert(meta.name.clone(), Arc::new(meta));
    }
    if !state.cluster_id.is_empty() {
        next.cluster_id = state.cluster_id.clone();
    }
    next.client_quotas = Arc::new(super::quotas::from_cluster(state));
    next.scram = Arc::new(crate::security::sasl::credentials::with_cluster(
        &state.scram,
    ));
    // ACLs are the quorum's alone; the index is rebuilt only when they changed.
    if *next.acls.bindings() != state.acls {
        next.acls = Arc::new(crate::security::acl::AclSet::new(state.acls.clone()));
    }
    next.epoch += 1;
    next.cluster = Some(state.clone());
    next
}

/// A broker's snapshot at startup in a cluster: no user topics until the quorum says which
/// exist (topics of a single-broker past are not carried over, and their files are left
/// alone).
pub fn startup(snapshot: &MetadataSnapshot) -> MetadataSnapshot {
    derive(snapshot, &Arc::new(ClusterState::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_cluster::state::Command;
    use std::collections::BTreeMap;

    #[test]
    fn user_topics_come_from_the_cluster_state_only() {
        let mut local = MetadataSnapshot {
            cluster_id: "c".into(),
            producer_id_block_end: 7,
            ..Default::default()
        };
        for name in ["old", "__consumer_offsets"] {
            let meta = TopicMeta {
                name: name.into(),
                id: uuid::Uuid::new_v4(),
                partitions: 1,
                configs: BTreeMap::new(),
            };
            local.names_by_id.insert(meta.id, name.into());
            local.topics.insert(name.into(), Arc::new(meta));
        }
        let mut state = ClusterState::default();
        let id = uuid::Uuid::new_v4();
        state.apply(
            1,
            &Command::CreateTopic {
                name: "new".into(),
                id,
                partitions: sluice_cluster::state::assign_replicas(&state, 1, 1, 0)
                    .unwrap_or_default(),
                configs: BTreeMap::new(),
            },
        );
        let next = derive(&local, &Arc::new(state));
        let mut names: Vec<&str> = next.topics.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["__consumer_offsets", "new"]);
        assert_eq!(next.names_by_id.len(), 2);
        assert_eq!(next.names_by_id[&id], "new");
        assert_eq!(
            (next.cluster_id.as_str(), next.producer_id_block_end),
            ("c", 7)
        );
        assert!(next.cluster.is_some());
        assert!(startup(&local).topics.keys().all(|n| n.starts_with("__")));
        // Once the quorum has a cluster id, every broker reports it instead of its own.
        let named = ClusterState {
            cluster_id: "quorum".into(),
            ..ClusterState::default()
        };
        assert_eq!(derive(&local, &Arc::new(named)).cluster_id, "quorum");
    }

    #[test]
    fn acls_come_from_the_cluster_state() {
        let binding = sluice_cluster::acl::AclRecord {
            resource_type: 2,
            resource_name: "t".into(),
            pattern_type: 3,
            principal: "User:a".into(),
            host: "*".into(),
            operation: 3,
            permission: 3,
        };
        let mut state = ClusterState::default();
        state.apply(
            1,
            &Command::AlterAcls {
                create: vec![binding.clone()],
                delete: Vec::new(),
            },
        );
        let next = derive(&MetadataSnapshot::default(), &Arc::new(state));
        assert_eq!(next.acls.bindings().iter().collect::<Vec<_>>(), [&binding]);
        assert!(startup(&next).acls.is_empty());
    }
}
