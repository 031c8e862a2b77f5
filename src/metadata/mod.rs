//! Cluster metadata: which topics exist, their ids, partition counts and configs.
//!
//! One writer (the [`controller::Controller`] on shard 0) appends every change to the
//! [`log::MetadataLog`] and then publishes a new immutable [`MetadataSnapshot`]; every shard
//! reads the current snapshot lock-free (`ArcSwap`). In a cluster, the broker view the
//! cluster thread learns from the controller quorum (registered brokers, fencing, the active
//! controller) is published beside it the same way. Must never: be mutated in place, or be
//! changed by anyone but the controller — a replicated controller (e.g. on openraft) replaces
//! the log later without touching readers.

pub mod acls;
pub mod bootstrap_users;
pub mod cluster;
pub mod controller;
pub mod forward;
pub mod log;
pub mod quotas;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use sluice_cluster::admin::ClusterAdmin;
use sluice_cluster::broker::BrokerView;
use sluice_cluster::state::{ClusterState, PartitionRecord};
use uuid::Uuid;

/// A topic as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// Name.
    pub name: String,
    /// Stable id (Fetch v13, Metadata v10+).
    pub id: Uuid,
    /// Partition count.
    pub partitions: i32,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    /// Internal topics (`__consumer_offsets`) are hidden from normal produce.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }
}

/// An immutable view of the cluster metadata.
#[derive(Debug, Clone, Default)]
pub struct MetadataSnapshot {
    /// Increases with every published change.
    pub epoch: u64,
    /// Cluster id.
    pub cluster_id: String,
    /// Topics by name.
    pub topics: HashMap<String, Arc<TopicMeta>>,
    /// Topic names by id.
    pub names_by_id: HashMap<Uuid, String>,
    /// Producer ids below this may have been handed out; the controller allocates above it.
    pub producer_id_block_end: i64,
    /// In a cluster, the committed cluster state the user topics above were derived from
    /// (placement, leaders, fencing); None on a single broker.
    pub cluster: Option<Arc<ClusterState>>,
    /// Client quotas (`user` / `client-id` entities and their values).
    pub client_quotas: Arc<crate::security::quota::ClientQuotas>,
    /// SCRAM credentials: the user store every SASL mechanism checks (in a cluster, the
    /// quorum's credentials over this broker's own).
    pub scram: Arc<crate::security::sasl::ScramCredentials>,
    /// The credentials of this broker's own metadata log (`sluice users add --data-dir`).
    pub scram_local: Arc<crate::security::sasl::ScramCredentials>,
    /// The ACL bindings (CreateAcls), indexed for the authorizer.
    pub acls: Arc<crate::security::acl::AclSet>,
}

impl MetadataSnapshot {
    /// Looks a topic up by name.
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    /// Whether the quorum places `topic` (a cluster's user topic, or its replicated
    /// `__consumer_offsets`).
    pub fn is_placed(&self, topic: &TopicMeta) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|state| state.topics.contains_key(&topic.id))
    }

    /// In a cluster, the committed placement of one partition; None on a single broker or
    /// when the cluster does not know it.
    pub fn placement(&self, topic: &TopicMeta, index: i32) -> Option<&PartitionRecord> {
        let state = self.cluster.as_ref()?;
        let index = usize::try_from(index).ok()?;
        state.topics.get(&topic.id)?.partitions.get(index)
    }

    /// The partition's current leader epoch: the committed one in a cluster, 0 on a single
    /// broker (what Metadata reports and requests' `current_leader_epoch` is checked against).
    pub fn leader_epoch(&self, topic: &TopicMeta, index: i32) -> i32 {
        self.placement(topic, index).map_or(0, |p| p.leader_epoch)
    }

    /// Whether broker `node_id` leads the partition: always on a single broker; in a cluster,
    /// only the committed leader serves Produce, Fetch and ListOffsets (internal topics the
    /// quorum does not place are each broker's own).
    pub fn leads(&self, topic: &TopicMeta, index: i32, node_id: i32) -> bool {
        if self.cluster.is_none() || (topic.is_internal() && !self.is_placed(topic)) {
            return true;
        }
        self.placement(topic, index)
            .is_some_and(|p| p.leader == node_id)
    }
}

/// The published snapshot, readable from every shard.
#[derive(Debug, Default)]
pub struct MetadataStore {
    current: ArcSwap<MetadataSnapshot>,
    /// What this node knows of its cluster (brokers, their fencing, the active controller);
    /// None on a single broker. One writer: the cluster thread's bridge.
    cluster: ArcSwapOption<BrokerView>,
    /// Forwards topic changes to the active controller; set once the broker joined a cluster.
    admin: OnceLock<ClusterAdmin>,
}

impl MetadataStore {
    /// Starts with `snapshot`.
    pub fn new(snapshot: MetadataSnapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
            cluster: ArcSwapOption::empty(),
            admin: OnceLock::new(),
        }
    }

    /// Whether this broker runs in a cluster (topics come from the controller quorum).
    pub fn is_clustered(&self) -> bool {
        self.load().cluster.is_some()
    }

    /// The handle for forwarding topic changes; None on a single broker (or before joining).
    pub fn admin(&self) -> Option<&ClusterAdmin> {
        self.admin.get()
    }

    /// Installs the forwarding handle (once, when the cluster thread starts).
    pub(crate) fn set_admin(&self, admin: ClusterAdmin) {
        let _ = self.admin.set(admin);
    }

    /// The cluster view (cheap, lock-free); None on a single broker.
    pub fn cluster(&self) -> Option<Arc<BrokerView>> {
        self.cluster.load_full()
    }

    /// Publishes a new cluster view; only the cluster bridge calls this.
    pub(crate) fn publish_cluster(&self, view: Arc<BrokerView>) {
        self.cluster.store(Some(view));
    }

    /// The current snapshot (cheap, lock-free).
    pub fn load(&self) -> Arc<MetadataSnapshot> {
        self.current.load_full()
    }

    /// Whether the current snapshot holds any client quota. Asked for every request, so it
    /// borrows the snapshot (`ArcSwap::load`) instead of cloning its `Arc`: no write to the
    /// reference count every shard shares.
    pub fn has_client_quotas(&self) -> bool {
        !self.current.load().client_quotas.is_empty()
    }

    /// Publishes a new snapshot; only the controller calls this.
    pub(crate) fn publish(&self, snapshot: MetadataSnapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

/// Whether `name` is a legal Kafka topic name (INVALID_TOPIC_EXCEPTION otherwise).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    const TOPIC_NAME_BYTES_MAX: usize = 249;
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name '{name}' is not allowed"));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name is {} bytes, longer than {TOPIC_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "topic name '{name}' contains '{bad}'; legal characters are ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
