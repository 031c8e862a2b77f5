//! The replicated cluster metadata as typed records, and what each committed [`Command`] does
//! to it. Owns the rules of registration, fencing and topic placement; must never do I/O, read
//! a clock, or depend on anything but the command and its log index, so every replica that
//! applies the same log reaches the same state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::acl::AclRecord;
use crate::leadership::{self, Election, ElectionOutcome, PartitionId};

/// A broker id (Kafka's `node.id`).
pub type BrokerId = i32;

/// One named listener a broker advertises (Kafka's endpoint: listener name, host, port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The listener's name (`PLAINTEXT`, `SSL`, `INTERNAL`...).
    pub name: String,
    /// The host clients of that listener are told.
    pub host: String,
    /// The port clients of that listener are told.
    pub port: i32,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    /// Its id.
    pub id: BrokerId,
    /// The host clients are told to connect to.
    pub host: String,
    /// The port clients are told to connect to.
    pub port: i32,
    /// Every listener it advertises; a client is told the endpoints of the listener it
    /// arrived on. Empty for a registration without listeners: `host`/`port` then serve all.
    #[serde(default)]
    pub listeners: Vec<Endpoint>,
    /// The raft log index of its latest registration (KRaft's broker epoch); heartbeats and
    /// fencing name it, so a stale process cannot act for a restarted one.
    pub epoch: i64,
    /// Random per process start, so a restart is told apart from a repeated registration.
    pub incarnation: Uuid,
    /// Fenced brokers are left out of Metadata and of new replica assignments.
    pub fenced: bool,
}

/// One partition's placement and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Replica brokers, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// Current leader (-1 when none).
    pub leader: BrokerId,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// In-sync replicas.
    pub isr: Vec<BrokerId>,
    /// Replicas a reassignment in progress adds (`reassignment.rs`); empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<BrokerId>,
    /// Replicas a reassignment in progress removes once it completes; empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<BrokerId>,
}

impl PartitionRecord {
    /// A new partition on `replicas`, all in sync, the first leading at epoch 0.
    pub fn new(replicas: Vec<BrokerId>) -> Self {
        Self {
            leader: replicas
                .first()
                .copied()
                .unwrap_or(crate::leadership::NO_LEADER),
            leader_epoch: 0,
            isr: replicas.clone(),
            replicas,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Name.
    pub name: String,
    /// Stable id.
    pub id: Uuid,
    /// Partitions by index.
    pub partitions: Vec<PartitionRecord>,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The log index of the last applied entry.
    pub applied_index: u64,
    /// Registered brokers by id.
    pub brokers: BTreeMap<BrokerId, BrokerRecord>,
    /// Topics by id.
    pub topics: BTreeMap<Uuid, TopicRecord>,
    /// The cluster id every broker reports (Metadata, DescribeCluster): set by the first
    /// committed registration and never changed; empty until then.
    #[serde(default)]
    pub cluster_id: String,
    /// The first producer id of the next block handed out: every id below it belongs to a
    /// block some broker was given, so ids are unique cluster-wide and, being replicated and
    /// only ever increased, never handed out again after any restart.
    #[serde(default)]
    pub next_producer_id_block: i64,
    /// Client quota values by entity: the broker's own encoding of a quota entity (opaque
    /// here), then each key's value as decimal text (the state is `Eq`; a float is not).
    #[serde(default)]
    pub client_quotas: BTreeMap<String, BTreeMap<String, String>>,
    /// SCRAM credentials, the user store of every broker's SASL listeners.
    #[serde(default)]
    pub scram: crate::scram::ScramState,
    /// The ACL bindings every broker's authorizer uses (CreateAcls, DeleteAcls).
    #[serde(default)]
    pub acls: BTreeSet<AclRecord>,
}

/// Producer ids per block handed to a broker (Kafka's block size).
pub const PRODUCER_ID_BLOCK_LEN: i64 = 1000;

/// A change to the state, proposed by the active controller and applied once committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker (re)registers; its new epoch is this entry's log index.
    RegisterBroker {
        /// Its id.
        id: BrokerId,
        /// Advertised host.
        host: String,
        /// Advertised port.
        port: i32,
        /// Every listener it advertises (`host`/`port` are its inter-broker listener's).
        #[serde(default)]
        listeners: Vec<Endpoint>,
        /// Its process incarnation.
        incarnation: Uuid,
        /// The cluster id it proposes; the first registration's (or, when it proposes none,
        /// its incarnation) becomes the cluster's.
        #[serde(default)]
        cluster_id: String,
    },
    /// The broker with this epoch missed its session; fence it.
    FenceBroker {
        /// Its id.
        id: BrokerId,
        /// The epoch the controller saw expire.
        epoch: i64,
    },
    /// The broker with this epoch heartbeated while fenced; unfence it.
    UnfenceBroker {
        /// Its id.
        id: BrokerId,
        /// The epoch it heartbeated with.
        epoch: i64,
    },
    /// Create a topic with this placement (chosen by the controller from the state it saw).
    CreateTopic {
        /// Name.
        name: String,
        /// Id.
        id: Uuid,
        /// Partitions.
        partitions: Vec<PartitionRecord>,
        /// Config overrides.
        configs: BTreeMap<String, String>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Its id.
        id: Uuid,
    },
    /// Add partitions to a topic (placed by the controller); `first` is the index of the
    /// first added one, so a command applied against a topic that grew meanwhile is refused.
    CreatePartitions {
        /// The topic's id.
        id: Uuid,
        /// The index of the first added partition (the topic's count when proposed).
        first: usize,
        /// The added partitions.
        partitions: Vec<PartitionRecord>,
    },
    /// A partition leader changes its ISR (KRaft's AlterPartition): applied only if `leader`
    /// still leads the partition at `leader_epoch`, and the new ISR holds the leader, only
    /// replicas of the partition, and no broker that is fenced or unregistered unless it was
    /// in the ISR already (a shrink may drop anyone but the leader).
    AlterPartition {
        /// The topic's id.
        topic: Uuid,
        /// The partition index.
        partition: u32,
        /// The broker asking: it must be the leader.
        leader: BrokerId,
        /// The leader epoch it leads at.
        leader_epoch: i32,
        /// The new ISR.
        isr: Vec<BrokerId>,
        /// The broker epoch each added replica fetched under (KIP-903); empty from a leader
        /// that does not send them (checked only when present).
        #[serde(default)]
        added_epochs: Vec<(BrokerId, i64)>,
    },
    /// Elect leaders of these partitions (ElectLeaders, or the active controller's preferred
    /// and unclean elections); each bumps the leader epoch when the leader changes.
    ElectLeaders {
        /// Preferred or unclean.
        election: Election,
        /// The partitions, answered in this order.
        partitions: Vec<PartitionId>,
    },
    /// Start, replace or cancel partition moves (Kafka's AlterPartitionReassignments); each
    /// partition is checked against the state where it applies (`reassignment.rs`).
    AlterPartitionReassignments {
        /// The partitions and their targets (None cancels), answered in this order.
        reassignments: Vec<crate::reassignment::Reassignment>,
        /// Whether a target may change the number of replicas (v1's field; v0 allows it).
        allow_replication_factor_change: bool,
    },
    /// Hand the next block of `len` producer ids to a broker (KRaft's AllocateProducerIds).
    AllocateProducerIds {
        /// The broker asking (for the log; uniqueness needs only the counter).
        broker_id: BrokerId,
        /// Ids in the block.
        len: i64,
    },
    /// Set (`Some`) or remove (`None`) client quota values of one entity, all at once.
    SetClientQuotas {
        /// The entity, as the broker encodes it.
        entity: String,
        /// Each key with its value as decimal text, or None to remove it.
        ops: Vec<(String, Option<String>)>,
    },
    /// Set and remove SCRAM credentials (AlterUserScramCredentials, checked by the broker).
    AlterScramCredentials(crate::scram::AlterScramCredentials),
    /// Remove then add ACL bindings (DeleteAcls resolved to exact bindings; CreateAcls).
    AlterAcls {
        /// Bindings added.
        create: Vec<AclRecord>,
        /// Bindings removed.
        delete: Vec<AclRecord>,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandReply {
    /// Applied (or a blank/membership entry).
    Done,
    /// A broker registered with this epoch.
    Registered {
        /// The new broker epoch.
        epoch: i64,
    },
    /// A block of producer ids, `first..first + len`, now belongs to the asking broker.
    ProducerIds {
        /// The first id of the block.
        first: i64,
        /// Ids in the block.
        len: i64,
    },
    /// What an `ElectLeaders` did to each of its partitions, in order.
    Elections {
        /// One outcome per partition.
        outcomes: Vec<ElectionOutcome>,
    },
    /// What an `AlterPartitionReassignments` did to each of its partitions, in order.
    Reassignments {
        /// One outcome per partition.
        outcomes: Vec<crate::reassignment::ReassignmentOutcome>,
    },
    /// The command no longer fits the state (stale epoch, duplicate name); nothing changed.
    Rejected {
        /// Why.
        reason: String,
    },
}

impl ClusterState {
    /// Applies the command committed at `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> CommandReply {
        debug_assert!(index > self.applied_index || self.applied_index == 0);
        self.applied_index = index;
        match command {
            Command::RegisterBroker {
                id,
                host,
                port,
                listeners,
                incarnation,
                cluster_id,
            } => {
                let Ok(epoch) = i64::try_from(index) else {
                    return rejected(format!("log index {index} does not fit a broker epoch"));
                };
                if self.cluster_id.is_empty() {
                    self.cluster_id = match cluster_id.as_str() {
                        "" => incarnation.simple().to_string(),
                        proposed => proposed.to_string(),
                    };
                }
                // A new incarnation of a broker still registered unfenced: the process
                // restarted within its session. Its old incarnation is fenced first, as KRaft
                // does, so every partition it led gets a new leader epoch (another ISR
                // member, or itself again below if it was the last): records its old
                // incarnation sent followers but never made durable would otherwise sit at
                // the same epoch as what it writes now, and followers could not find the
                // divergence with OffsetForLeaderEpoch.
                let restarted = match self.brokers.get_mut(id) {
                    Some(old) if old.incarnation != *incarnation && !old.fenced => {
                        old.fenced = true;
                        true
                    }
                    _ => false,
                };
                if restarted {
                    leadership::on_fenced(self, *id);
                }
                self.brokers.insert(
                    *id,
                    BrokerRecord {
                        id: *id,
                        host: host.clone(),
                        port: *port,
                        listeners: listeners.clone(),
                        epoch,
                        incarnation: *incarnation,
                        fenced: false,
                    },
                );
                leadership::on_live(self, *id);
                CommandReply::Registered { epoch }
            }
            Command::FenceBroker { id, epoch } => {
                let reply = self.set_fenced(*id, *epoch, true);
                if reply == CommandReply::Done {
                    leadership::on_fenced(self, *id);
                }
                reply
            }
            Command::UnfenceBroker { id, epoch } => {
                let reply = self.set_fenced(*id, *epoch, false);
                if reply == CommandReply::Done {
                    leadership::on_live(self, *id);
                }
                reply
            }
            Command::ElectLeaders {
                election,
                partitions,
            } => CommandReply::Elections {
                outcomes: leadership::elect(self, *election, partitions),
            },
            Command::AlterPartitionReassignments {
                reassignments,
                allow_replication_factor_change,
            } => CommandReply::Reassignments {
                outcomes: crate::reassignment::apply(
                    self,
                    reassignments,
                    *allow_replication_factor_change,
                ),
            },
            Command::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => {
                if self.topic_by_name(name).is_some() {
                    return rejected(format!("topic '{name}' already exists"));
                }
                if self.topics.contains_key(id) {
                    return rejected(format!("topic id {id} already exists"));
                }
                self.topics.insert(
                    *id,
                    TopicRecord {
                        name: name.clone(),
                        id: *id,
                        partitions: partitions.clone(),
                        configs: configs.clone(),
                    },
                );
                CommandReply::Done
            }
            Command::DeleteTopic { id } => match self.topics.remove(id) {
                Some(_) => CommandReply::Done,
                None => rejected(format!("no topic with id {id}")),
            },
            Command::CreatePartitions {
                id,
                first,
                partitions,
            } => match self.topics.get_mut(id) {
                Some(topic) if topic.partitions.len() == *first => {
                    topic.partitions.extend(partitions.iter().cloned());
                    CommandReply::Done
                }
                Some(topic) => rejected(format!(
                    "topic '{}' has {} partitions, not {first}",
                    topic.name,
                    topic.partitions.len()
                )),
                None => rejected(format!("no topic with id {id}")),
            },
            Command::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                isr,
                added_epochs,
            } => match self.alter_partition(
                *topic,
                *partition,
                (*leader, *leader_epoch),
                isr,
                added_epochs,
            ) {
                Ok(()) => CommandReply::Done,
                Err(reason) => rejected(reason),
            },
            Command::AllocateProducerIds { broker_id, len } => {
                let first = self.next_producer_id_block;
                let end = first.checked_add(*len).filter(|_| *len >= 1);
                let Some(end) = end else {
                    return rejected(format!(
                        "broker {broker_id} asked for {len} producer ids from {first}"
                    ));
                };
                self.next_producer_id_block = end;
                CommandReply::ProducerIds { first, len: *len }
            }
            Command::SetClientQuotas { entity, ops } => {
                let values = self.client_quotas.entry(entity.clone()).or_default();
                for (key, value) in ops {
                    match value {
                        Some(value) => values.insert(key.clone(), value.clone()),
                        None => values.remove(key),
                    };
                }
                if values.is_empty() {
                    self.client_quotas.remove(entity);
                }
                CommandReply::Done
            }
            Command::AlterScramCredentials(change) => crate::scram::apply(&mut self.scram, change),
            Command::AlterAcls { create, delete } => {
                for binding in delete {
                    self.acls.remove(binding);
                }
                self.acls.extend(create.iter().cloned());
                CommandReply::Done
            }
        }
    }

    /// The checks of [`Command::AlterPartition`], then the change.
    fn alter_partition(
        &mut self,
        topic: Uuid,
        partition: u32,
        (leader, leader_epoch): (BrokerId, i32),
        isr: &[BrokerId],
        added_epochs: &[(BrokerId, i64)],
    ) -> Result<(), String> {
        let brokers = &self.brokers;
        let record = self
            .topics
            .get_mut(&topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
            .ok_or_else(|| format!("no partition {partition} of topic {topic}"))?;
        if record.leader != leader || record.leader_epoch != leader_epoch {
            return Err(format!(
                "broker {leader} at leader epoch {leader_epoch} does not lead partition                  {partition} (leader {} at epoch {})",
                record.leader, record.leader_epoch
            ));
        }
        if !isr.contains(&leader) {
            return Err(format!("the ISR {isr:?} leaves out its leader {leader}"));
        }
        for (at, member) in isr.iter().enumerate() {
            if !record.replicas.contains(member) || isr[..at].contains(member) {
                return Err(format!(
                    "ISR {isr:?} is not a set of the replicas {:?}",
                    record.replicas
                ));
            }
            let eligible = brokers.get(member).is_some_and(|b| !b.fenced);
            if !eligible && !record.isr.contains(member) {
                return Err(format!("broker {member} is fenced or unregistered"));
            }
            // KIP-903: an added replica must still be the incarnation the leader saw fetch.
            let seen = added_epochs.iter().find(|(id, _)| id == member);
            if let (Some((_, seen)), false) = (seen, record.isr.contains(member)) {
                let current = brokers.get(member).map(|b| b.epoch);
                if current != Some(*seen) {
                    return Err(format!(
                        "broker {member} fetched under broker epoch {seen}, but its registration is now {current:?}"
                    ));
                }
            }
        }
        record.isr = isr.to_vec();
        // The ISR change that brings the last target replica in completes a move.
        let live = |id: BrokerId| brokers.get(&id).is_some_and(|b| !b.fenced);
        if crate::reassignment::complete_if_caught_up(record, &live) {
            leadership::assert_invariants(record);
        }
        Ok(())
    }

    fn set_fenced(&mut self, id: BrokerId, epoch: i64, fenced: bool) -> CommandReply {
        match self.brokers.get_mut(&id) {
            Some(broker) if broker.epoch == epoch => {
                broker.fenced = fenced;
                CommandReply::Done
            }
            Some(broker) => rejected(format!(
                "broker {id} has epoch {}, not {epoch}",
                broker.epoch
            )),
            None => rejected(format!("broker {id} is not registered")),
        }
    }

    /// Looks a topic up by name.
    pub fn topic_by_name(&self, name: &str) -> Option<&TopicRecord> {
        self.topics.values().find(|t| t.name == name)
    }

    /// Unfenced brokers, by id.
    pub fn unfenced_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|b| !b.fenced)
    }
}

fn rejected(reason: String) -> CommandReply {
    CommandReply::Rejected { reason }
}

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// More replicas asked for than unfenced brokers (Kafka's INVALID_REPLICATION_FACTOR).
    #[error("replication factor {asked} is larger than the {available} unfenced brokers")]
    InvalidReplicationFactor {
        /// Replicas asked for.
        asked: i32,
        /// Unfenced brokers.
        available: usize,
    },
    /// A partition count below 1 (Kafka's INVALID_PARTITIONS).
    #[error("partition count {0} is below 1")]
    InvalidPartitions(i32),
}

/// Places `partitions` partitions of `replication_factor` replicas round-robin over the
/// unfenced brokers, starting at `start`; the first replica leads.
pub fn assign_replicas(
    state: &ClusterState,
    partitions: i32,
    replication_factor: i32,
    start: usize,
) -> Result<Vec<PartitionRecord>, PlacementError> {
    let brokers: Vec<BrokerId> = state.unfenced_brokers().map(|b| b.id).collect();
    if partitions < 1 {
        return Err(PlacementError::InvalidPartitions(partitions));
    }
    let replicas_per = usize::try_from(replication_factor).unwrap_or(0);
    if replicas_per == 0 || replicas_per > brokers.len() {
        return Err(PlacementError::InvalidReplicationFactor {
            asked: replication_factor,
            available: brokers.len(),
        });
    }
    let mut placed = Vec::new();
    for partition in 0..partitions as usize {
        let first = start.wrapping_add(partition);
        let replicas: Vec<BrokerId> = (0..replicas_per)
            .map(|r| brokers[first.wrapping_add(r) % brokers.len()])
            .collect();
        placed.push(PartitionRecord::new(replicas));
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_changes_apply_and_survive_a_snapshot() {
        let binding = |name: &str| AclRecord {
            resource_type: 2,
            resource_name: name.into(),
            pattern_type: 3,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: 3,
            permission: 3,
        };
        let mut state = ClusterState::default();
        let create = vec![binding("a"), binding("b")];
        let reply = state.apply(
            1,
            &Command::AlterAcls {
                create,
                delete: Vec::new(),
            },
        );
        assert_eq!(reply, CommandReply::Done);
        state.apply(
            2,
            &Command::AlterAcls {
                create: Vec::new(),
                delete: vec![binding("a")],
            },
        );
        let restored: ClusterState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(restored.acls.iter().collect::<Vec<_>>(), [&binding("b")]);
        // A snapshot written before ACLs existed restores with none.
        let mut old = serde_json::to_value(ClusterState::default()).unwrap();
        old.as_object_mut().unwrap().remove("acls");
        let restored: ClusterState = serde_json::from_value(old).unwrap();
        assert!(restored.acls.is_empty());
    }

    fn register(state: &mut ClusterState, index: u64, id: BrokerId) -> CommandReply {
        state.apply(
            index,
            &Command::RegisterBroker {
                id,
                host: format!("127.0.0.{id}"),
                port: 9092,
                listeners: Vec::new(),
                incarnation: Uuid::new_v4(),
                cluster_id: format!("proposed-by-{id}"),
            },
        )
    }

    #[test]
    fn registration_epoch_is_the_log_index_and_fencing_names_it() {
        let mut state = ClusterState::default();
        assert_eq!(
            register(&mut state, 5, 1),
            CommandReply::Registered { epoch: 5 }
        );
        assert_eq!(state.brokers[&1].epoch, 5);
        // A stale epoch cannot fence the current registration.
        assert!(matches!(
            state.apply(6, &Command::FenceBroker { id: 1, epoch: 4 }),
            CommandReply::Rejected { .. }
        ));
        assert!(!state.brokers[&1].fenced);
        assert_eq!(
            state.apply(7, &Command::FenceBroker { id: 1, epoch: 5 }),
            CommandReply::Done
        );
        assert!(state.brokers[&1].fenced);
        assert_eq!(state.unfenced_brokers().count(), 0);
        assert_eq!(
            state.apply(8, &Command::UnfenceBroker { id: 1, epoch: 5 }),
            CommandReply::Done
        );
        assert!(!state.brokers[&1].fenced);
        // Re-registration after a restart: a new epoch, unfenced; the old epoch is dead.
        assert_eq!(
            register(&mut state, 9, 1),
            CommandReply::Registered { epoch: 9 }
        );
        assert!(matches!(
            state.apply(10, &Command::FenceBroker { id: 1, epoch: 5 }),
            CommandReply::Rejected { .. }
        ));
        assert!(!state.brokers[&1].fenced);
        assert_eq!(state.applied_index, 10);
    }

    #[test]
    fn the_first_registration_sets_the_cluster_id_for_good() {
        let mut state = ClusterState::default();
        assert_eq!(state.cluster_id, "");
        register(&mut state, 1, 2);
        register(&mut state, 2, 1);
        register(&mut state, 3, 2);
        assert_eq!(state.cluster_id, "proposed-by-2");
        // A broker that proposes none: the incarnation of the first registration.
        let mut other = ClusterState::default();
        let incarnation = Uuid::new_v4();
        other.apply(
            1,
            &Command::RegisterBroker {
                id: 1,
                host: "h".into(),
                port: 1,
                listeners: Vec::new(),
                incarnation,
                cluster_id: String::new(),
            },
        );
        assert_eq!(other.cluster_id, incarnation.simple().to_string());
        // Snapshots keep it; older ones without it read as unset.
        let back: ClusterState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back.cluster_id, "proposed-by-2");
    }

    #[test]
    fn placement_is_round_robin_over_unfenced_brokers() {
        let mut state = ClusterState::default();
        for (i, id) in [1, 2, 3].into_iter().enumerate() {
            register(&mut state, i as u64 + 1, id);
        }
        state.apply(4, &Command::FenceBroker { id: 2, epoch: 2 });
        let placed = assign_replicas(&state, 3, 2, 0).unwrap();
        let replicas: Vec<Vec<i32>> = placed.iter().map(|p| p.replicas.clone()).collect();
        assert_eq!(replicas, vec![vec![1, 3], vec![3, 1], vec![1, 3]]);
        assert_eq!(placed[1].leader, 3);
        assert_eq!(placed[1].isr, vec![3, 1]);
        assert_eq!(
            assign_replicas(&state, 1, 3, 0),
            Err(PlacementError::InvalidReplicationFactor {
                asked: 3,
                available: 2
            })
        );
        assert!(assign_replicas(&state, 0, 1, 0).is_err());
    }

    /// Brokers 1-3 registered at indexes 1-3 (their broker epochs), and topic "t" with one
    /// partition on all three created at index 4.
    fn three_brokers_and_a_topic() -> (ClusterState, Uuid) {
        let mut state = ClusterState::default();
        for (i, id) in [1, 2, 3].into_iter().enumerate() {
            register(&mut state, i as u64 + 1, id);
        }
        let topic = Uuid::new_v4();
        let partitions = assign_replicas(&state, 1, 3, 0).unwrap();
        state.apply(
            4,
            &Command::CreateTopic {
                name: "t".into(),
                id: topic,
                partitions,
                configs: BTreeMap::new(),
            },
        );
        (state, topic)
    }

    #[test]
    fn an_added_replica_must_still_be_the_incarnation_the_leader_saw() {
        let (mut state, topic) = three_brokers_and_a_topic();
        let leader = state.topics[&topic].partitions[0].leader;
        let other = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
        let rest: Vec<BrokerId> = [1, 2, 3].into_iter().filter(|&id| id != other).collect();
        let alter = |isr: Vec<BrokerId>, added_epochs: Vec<(BrokerId, i64)>| {
            let leader_epoch = 0;
            Command::AlterPartition {
                topic,
                partition: 0,
                leader,
                leader_epoch,
                isr,
                added_epochs,
            }
        };
        let isr = |state: &ClusterState| state.topics[&topic].partitions[0].isr.clone();
        assert_eq!(
            state.apply(5, &alter(rest.clone(), vec![])),
            CommandReply::Done
        );
        // `other` restarts: a new registration, a new broker epoch (the log index, 6).
        assert!(matches!(
            register(&mut state, 6, other),
            CommandReply::Registered { epoch: 6 }
        ));
        let mut back = rest.clone();
        back.push(other);
        let seen_before = other as i64; // its first registration's epoch (index 1-3)
        assert!(matches!(
            state.apply(7, &alter(back.clone(), vec![(other, seen_before)])),
            CommandReply::Rejected { .. }
        ));
        assert_eq!(isr(&state), rest);
        // Seen fetching under its current registration, it joins.
        assert_eq!(
            state.apply(8, &alter(back.clone(), vec![(other, 6)])),
            CommandReply::Done
        );
        assert_eq!(isr(&state), back);
    }

    #[test]
    fn only_the_leader_at_its_epoch_alters_the_isr() {
        let (mut state, topic) = three_brokers_and_a_topic();
        let alter = |leader, leader_epoch, isr: &[i32]| Command::AlterPartition {
            topic,
            partition: 0,
            leader,
            leader_epoch,
            isr: isr.to_vec(),
            added_epochs: Vec::new(),
        };
        let isr = |state: &ClusterState| state.topics[&topic].partitions[0].isr.clone();
        assert_eq!(state.apply(5, &alter(1, 0, &[1, 3])), CommandReply::Done);
        assert_eq!(isr(&state), vec![1, 3]);
        // Not the leader, a stale epoch, no leader in the ISR, a non-replica, a duplicate.
        for (index, bad) in [
            alter(2, 0, &[2, 3]),
            alter(1, 7, &[1]),
            alter(1, 0, &[3]),
            alter(1, 0, &[1, 4]),
            alter(1, 0, &[1, 3, 3]),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(matches!(
                state.apply(6 + index as u64, &bad),
                CommandReply::Rejected { .. }
            ));
        }
        assert_eq!(isr(&state), vec![1, 3]);
        // A fenced broker cannot rejoin; once unfenced it can.
        state.apply(20, &Command::FenceBroker { id: 2, epoch: 2 });
        assert!(matches!(
            state.apply(21, &alter(1, 0, &[1, 3, 2])),
            CommandReply::Rejected { .. }
        ));
        state.apply(22, &Command::UnfenceBroker { id: 2, epoch: 2 });
        assert_eq!(
            state.apply(23, &alter(1, 0, &[1, 3, 2])),
            CommandReply::Done
        );
        assert_eq!(isr(&state), vec![1, 3, 2]);
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut state = ClusterState::default();
        let mut blocks = Vec::new();
        for (index, broker_id) in [1, 2, 3, 1].into_iter().enumerate() {
            match state.apply(
                index as u64 + 1,
                &Command::AllocateProducerIds {
                    broker_id,
                    len: 1000,
                },
            ) {
                CommandReply::ProducerIds { first, len } => blocks.push((first, len)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            blocks,
            vec![(0, 1000), (1000, 1000), (2000, 1000), (3000, 1000)]
        );
        assert_eq!(state.next_producer_id_block, 4000);
        // A snapshot round trip keeps the counter; an empty or overflowing block is refused.
        let json = serde_json::to_string(&state).unwrap();
        let mut back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.next_producer_id_block, 4000);
        for (index, len) in [(9, 0), (10, i64::MAX)] {
            assert!(matches!(
                back.apply(index, &Command::AllocateProducerIds { broker_id: 1, len }),
                CommandReply::Rejected { .. }
            ));
        }
        assert_eq!(back.next_producer_id_block, 4000);
        // A snapshot written before the counter existed starts it at 0.
        let old: ClusterState =
            serde_json::from_str(r#"{"applied_index":3,"brokers":{},"topics":{}}"#).unwrap();
        assert_eq!(old.next_producer_id_block, 0);
    }

    #[test]
    fn topics_are_unique_by_name() {
        let mut state = ClusterState::default();
        let create = |id| Command::CreateTopic {
            name: "t".into(),
            id,
            partitions: vec![],
            configs: BTreeMap::new(),
        };
        assert_eq!(state.apply(1, &create(Uuid::new_v4())), CommandReply::Done);
        assert!(matches!(
            state.apply(2, &create(Uuid::new_v4())),
            CommandReply::Rejected { .. }
        ));
        assert_eq!(state.topics.len(), 1);
        let id = state.topic_by_name("t").unwrap().id;
        assert_eq!(
            state.apply(3, &Command::DeleteTopic { id }),
            CommandReply::Done
        );
        assert!(state.topics.is_empty());
    }

    #[test]
    fn partitions_are_added_only_to_the_count_they_were_placed_for() {
        let mut state = ClusterState::default();
        let id = Uuid::new_v4();
        let one = PartitionRecord::new(vec![1]);
        state.apply(
            1,
            &Command::CreateTopic {
                name: "t".into(),
                id,
                partitions: vec![one.clone()],
                configs: BTreeMap::new(),
            },
        );
        let grow = |first| Command::CreatePartitions {
            id,
            first,
            partitions: vec![one.clone(), one.clone()],
        };
        assert_eq!(state.apply(2, &grow(1)), CommandReply::Done);
        assert_eq!(state.topics[&id].partitions.len(), 3);
        assert!(matches!(
            state.apply(3, &grow(1)),
            CommandReply::Rejected { .. }
        ));
        assert_eq!(state.topics[&id].partitions.len(), 3);
    }
}
