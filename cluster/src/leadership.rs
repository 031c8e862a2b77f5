//! Partition leadership rules, in one place: who leads after a broker is fenced or comes back,
//! preferred and unclean elections, and every leader change bumping the leader epoch.
//!
//! Applied inside committed commands (`FenceBroker`, `UnfenceBroker`, `RegisterBroker`,
//! `ElectLeaders`), so every replica of the metadata log reaches the same leaders: pure
//! functions of the state, no clock, no I/O, no settings (policy such as
//! `unclean.leader.election.enable` is the proposer's: it decides whether to propose an unclean
//! election; applying one only checks that it is still possible).
//!
//! Invariants (asserted after every change): a leader is one of the partition's replicas and a
//! member of its ISR; the ISR is never empty and holds only replicas; the leader epoch only
//! grows, by exactly one per leader change. Kafka's rules: a new leader is the first replica in
//! assignment order that is unfenced and in the ISR; a fenced broker leaves the ISR unless it
//! is the last member (then the partition is offline, leader -1, and the member keeps its place
//! so it can lead again when it returns: it has every acknowledged record).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::{BrokerId, ClusterState, PartitionRecord, TopicRecord};

/// No leader (an offline partition).
pub const NO_LEADER: BrokerId = -1;

/// Kafka's topic config and broker setting enabling elections outside the ISR.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

/// A partition of a topic, by topic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    /// The topic's id.
    pub topic: Uuid,
    /// The partition index.
    pub partition: u32,
}

/// The kind of election (Kafka's ElectLeaders `election_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Election {
    /// Move leadership to the first replica when it is unfenced and in the ISR (type 0).
    Preferred,
    /// Give an offline partition a leader, from the ISR when possible, else from any unfenced
    /// replica, which may lose acknowledged records (type 1).
    Unclean,
}

/// What one partition's election did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionOutcome {
    /// A new leader in a new epoch.
    Elected {
        /// The new leader.
        leader: BrokerId,
        /// Its leader epoch.
        leader_epoch: i32,
    },
    /// The partition already has the leader this election would pick (ELECTION_NOT_NEEDED).
    NotNeeded,
    /// No replica may lead (PREFERRED_LEADER_NOT_AVAILABLE / ELIGIBLE_LEADERS_NOT_AVAILABLE).
    NotAvailable,
    /// No such topic or partition (UNKNOWN_TOPIC_OR_PARTITION).
    Unknown,
}

fn live(state: &ClusterState, id: BrokerId) -> bool {
    state.brokers.get(&id).is_some_and(|broker| !broker.fenced)
}

/// Sets the leader, bumping the epoch when it changes.
pub(crate) fn set_leader(partition: &mut PartitionRecord, leader: BrokerId) -> bool {
    if partition.leader == leader {
        return false;
    }
    partition.leader = leader;
    partition.leader_epoch = partition.leader_epoch.saturating_add(1);
    true
}

pub(crate) fn assert_invariants(partition: &PartitionRecord) {
    assert!(!partition.isr.is_empty(), "empty ISR: {partition:?}");
    assert!(
        partition
            .isr
            .iter()
            .all(|id| partition.replicas.contains(id)),
        "ISR member not a replica: {partition:?}"
    );
    assert!(
        partition.leader == NO_LEADER || partition.isr.contains(&partition.leader),
        "leader outside the ISR: {partition:?}"
    );
}

/// The first replica, in assignment order, that is unfenced and in the ISR.
fn first_live_in_isr(state: &ClusterState, partition: &PartitionRecord) -> Option<BrokerId> {
    partition
        .replicas
        .iter()
        .copied()
        .find(|&id| partition.isr.contains(&id) && live(state, id))
}

fn for_each_partition(
    state: &mut ClusterState,
    mut change: impl FnMut(&ClusterState, &mut PartitionRecord),
) {
    let mut topics = std::mem::take(&mut state.topics);
    for topic in topics.values_mut() {
        for partition in &mut topic.partitions {
            change(state, partition);
            assert_invariants(partition);
        }
    }
    state.topics = topics;
}

/// Broker `id` was just fenced: it leaves every ISR it is not the last member of, and every
/// partition it led gets the first live ISR replica as leader, or goes offline.
pub(crate) fn on_fenced(state: &mut ClusterState, id: BrokerId) {
    for_each_partition(state, |state, partition| {
        if !partition.replicas.contains(&id) {
            return;
        }
        if partition.isr.len() > 1 {
            partition.isr.retain(|&member| member != id);
        }
        if partition.leader == id || partition.leader == NO_LEADER {
            let leader = first_live_in_isr(state, partition).unwrap_or(NO_LEADER);
            set_leader(partition, leader);
        }
    });
}

/// Broker `id` is live again (unfenced or registered): an offline partition whose ISR holds
/// it gets it as leader.
pub(crate) fn on_live(state: &mut ClusterState, id: BrokerId) {
    for_each_partition(state, |state, partition| {
        if partition.leader == NO_LEADER && partition.isr.contains(&id) {
            let leader = first_live_in_isr(state, partition).unwrap_or(NO_LEADER);
            set_leader(partition, leader);
        }
    });
}

/// Runs `election` on each partition, in order.
pub(crate) fn elect(
    state: &mut ClusterState,
    election: Election,
    partitions: &[PartitionId],
) -> Vec<ElectionOutcome> {
    let mut outcomes = Vec::with_capacity(partitions.len());
    for id in partitions {
        let Some(record) = state
            .topics
            .get(&id.topic)
            .and_then(|topic| topic.partitions.get(id.partition as usize))
            .cloned()
        else {
            outcomes.push(ElectionOutcome::Unknown);
            continue;
        };
        let mut record = record;
        let outcome = match election {
            Election::Preferred => {
                let preferred = record.replicas.first().copied().unwrap_or(NO_LEADER);
                if record.leader == preferred {
                    ElectionOutcome::NotNeeded
                } else if live(state, preferred) && record.isr.contains(&preferred) {
                    set_leader(&mut record, preferred);
                    ElectionOutcome::Elected {
                        leader: preferred,
                        leader_epoch: record.leader_epoch,
                    }
                } else {
                    ElectionOutcome::NotAvailable
                }
            }
            Election::Unclean => {
                if record.leader != NO_LEADER {
                    ElectionOutcome::NotNeeded
                } else if let Some(leader) = first_live_in_isr(state, &record) {
                    set_leader(&mut record, leader);
                    ElectionOutcome::Elected {
                        leader,
                        leader_epoch: record.leader_epoch,
                    }
                } else if let Some(leader) =
                    record.replicas.iter().copied().find(|&r| live(state, r))
                {
                    // Outside the ISR: the new leader's log is the truth from now on.
                    record.isr = vec![leader];
                    set_leader(&mut record, leader);
                    ElectionOutcome::Elected {
                        leader,
                        leader_epoch: record.leader_epoch,
                    }
                } else {
                    ElectionOutcome::NotAvailable
                }
            }
        };
        assert_invariants(&record);
        if let Some(slot) = state
            .topics
            .get_mut(&id.topic)
            .and_then(|topic| topic.partitions.get_mut(id.partition as usize))
        {
            *slot = record;
        }
        outcomes.push(outcome);
    }
    outcomes
}

fn each_partition(
    state: &ClusterState,
) -> impl Iterator<Item = (&TopicRecord, PartitionId, &PartitionRecord)> {
    state.topics.values().flat_map(|topic| {
        topic
            .partitions
            .iter()
            .enumerate()
            .map(move |(index, partition)| {
                (
                    topic,
                    PartitionId {
                        topic: topic.id,
                        partition: index as u32,
                    },
                    partition,
                )
            })
    })
}

/// Partitions whose preferred replica is live and in the ISR but does not lead: what
/// `auto.leader.rebalance.enable` moves back.
pub fn preferred_imbalance(state: &ClusterState) -> Vec<PartitionId> {
    each_partition(state)
        .filter(|(_, _, partition)| {
            partition.replicas.first().is_some_and(|&preferred| {
                partition.leader != preferred
                    && live(state, preferred)
                    && partition.isr.contains(&preferred)
            })
        })
        .map(|(_, id, _)| id)
        .collect()
}

/// Offline partitions that an unclean election could give a leader, whose topic allows it
/// (its `unclean.leader.election.enable`, else `broker_default`).
pub fn unclean_candidates(state: &ClusterState, broker_default: bool) -> Vec<PartitionId> {
    each_partition(state)
        .filter(|(topic, _, partition)| {
            let allowed = topic
                .configs
                .get(UNCLEAN_LEADER_ELECTION)
                .map_or(broker_default, |value| value.eq_ignore_ascii_case("true"));
            allowed
                && partition.leader == NO_LEADER
                && partition.replicas.iter().any(|&r| live(state, r))
        })
        .map(|(_, id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::{Command, CommandReply};

    /// Brokers 1-3 registered at indexes 1-3 (epochs 1-3), one topic of one partition on
    /// `replicas`, led by the first; returns the topic id.
    fn cluster(replicas: &[BrokerId], configs: &[(&str, &str)]) -> (ClusterState, Uuid) {
        let mut state = ClusterState::default();
        for id in 1..=3 {
            state.apply(
                id as u64,
                &Command::RegisterBroker {
                    id,
                    host: "h".into(),
                    port: 1,
                    listeners: Vec::new(),
                    incarnation: Uuid::new_v4(),
                    cluster_id: String::new(),
                },
            );
        }
        let id = Uuid::new_v4();
        state.apply(
            4,
            &Command::CreateTopic {
                name: "t".into(),
                id,
                partitions: vec![PartitionRecord::new(replicas.to_vec())],
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            },
        );
        (state, id)
    }

    fn partition(state: &ClusterState, topic: Uuid) -> PartitionRecord {
        state.topics[&topic].partitions[0].clone()
    }

    fn fence(state: &mut ClusterState, index: u64, id: BrokerId) {
        let epoch = state.brokers[&id].epoch;
        assert_eq!(
            state.apply(index, &Command::FenceBroker { id, epoch }),
            CommandReply::Done
        );
    }

    fn unfence(state: &mut ClusterState, index: u64, id: BrokerId) {
        let epoch = state.brokers[&id].epoch;
        assert_eq!(
            state.apply(index, &Command::UnfenceBroker { id, epoch }),
            CommandReply::Done
        );
    }

    #[test]
    fn a_fenced_leader_is_replaced_by_the_first_live_isr_replica() {
        let (mut state, topic) = cluster(&[2, 3, 1], &[]);
        fence(&mut state, 5, 2);
        let p = partition(&state, topic);
        assert_eq!((p.leader, p.leader_epoch), (3, 1));
        assert_eq!(p.isr, vec![3, 1], "the fenced broker left the ISR");
        // A fenced follower leaves the ISR; the leader stays, same epoch.
        fence(&mut state, 6, 1);
        let p = partition(&state, topic);
        assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (3, 1, vec![3]));
        // The last ISR member fenced: offline, and it keeps its ISR place.
        fence(&mut state, 7, 3);
        let p = partition(&state, topic);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (NO_LEADER, 2, vec![3])
        );
        // Broker 2 returns, but it is not in the ISR: still offline (no unclean election).
        unfence(&mut state, 8, 2);
        assert_eq!(partition(&state, topic).leader, NO_LEADER);
        assert_eq!(preferred_imbalance(&state), vec![]);
        assert_eq!(unclean_candidates(&state, false), vec![]);
        // The ISR member returns (here by registering again after a restart): it leads.
        state.apply(
            9,
            &Command::RegisterBroker {
                id: 3,
                host: "h".into(),
                port: 1,
                listeners: Vec::new(),
                incarnation: Uuid::new_v4(),
                cluster_id: String::new(),
            },
        );
        let p = partition(&state, topic);
        assert_eq!((p.leader, p.leader_epoch), (3, 3));
    }

    fn register(state: &mut ClusterState, index: u64, id: BrokerId, incarnation: Uuid) {
        state.apply(
            index,
            &Command::RegisterBroker {
                id,
                host: "h".into(),
                port: 1,
                listeners: Vec::new(),
                incarnation,
                cluster_id: String::new(),
            },
        );
    }

    #[test]
    fn a_restart_within_the_session_moves_leadership_to_a_new_epoch() {
        let (mut state, topic) = cluster(&[1, 2, 3], &[]);
        // Broker 1 (the leader) restarts before its session expired: a new incarnation.
        register(&mut state, 5, 1, Uuid::new_v4());
        let p = partition(&state, topic);
        assert_eq!(
            (p.leader, p.leader_epoch),
            (2, 1),
            "the next ISR replica leads"
        );
        assert_eq!(
            p.isr,
            vec![2, 3],
            "the restarted broker rejoins when caught up"
        );
        assert!(!state.brokers[&1].fenced);
        // The same incarnation registering again (its own retry) changes nothing.
        let incarnation = state.brokers[&2].incarnation;
        register(&mut state, 6, 2, incarnation);
        let p = partition(&state, topic);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (2, 1, vec![2, 3])
        );
        // The last ISR member restarts: it leads again, in a newer epoch.
        fence(&mut state, 7, 3);
        register(&mut state, 8, 2, Uuid::new_v4());
        let p = partition(&state, topic);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
        assert_eq!(p.leader_epoch, 3, "offline (2), then led again (3)");
    }

    #[test]
    fn unclean_elections_only_where_allowed_and_needed() {
        let (mut state, topic) = cluster(&[1, 2], &[(UNCLEAN_LEADER_ELECTION, "true")]);
        fence(&mut state, 5, 2);
        fence(&mut state, 6, 1);
        assert_eq!(partition(&state, topic).isr, vec![1]);
        unfence(&mut state, 7, 2);
        let id = PartitionId {
            topic,
            partition: 0,
        };
        assert_eq!(
            unclean_candidates(&state, false),
            vec![id],
            "the topic allows it"
        );
        let outcomes = elect(&mut state, Election::Unclean, &[id]);
        assert_eq!(
            outcomes,
            vec![ElectionOutcome::Elected {
                leader: 2,
                leader_epoch: 2
            }]
        );
        assert_eq!(partition(&state, topic).isr, vec![2]);
        assert_eq!(
            elect(&mut state, Election::Unclean, &[id]),
            vec![ElectionOutcome::NotNeeded]
        );
        // A topic saying false overrides a broker default of true.
        let (mut other, other_topic) = cluster(&[1], &[(UNCLEAN_LEADER_ELECTION, "false")]);
        fence(&mut other, 5, 1);
        assert_eq!(unclean_candidates(&other, true), vec![]);
        assert_eq!(partition(&other, other_topic).leader, NO_LEADER);
    }

    #[test]
    fn preferred_election_moves_leadership_back_and_bumps_the_epoch() {
        let (mut state, topic) = cluster(&[1, 2, 3], &[]);
        fence(&mut state, 5, 1);
        assert_eq!(partition(&state, topic).leader, 2);
        unfence(&mut state, 6, 1);
        let id = PartitionId {
            topic,
            partition: 0,
        };
        // Back, but not in the ISR until it caught up: not eligible yet.
        assert_eq!(preferred_imbalance(&state), vec![]);
        assert_eq!(
            elect(&mut state, Election::Preferred, &[id]),
            vec![ElectionOutcome::NotAvailable]
        );
        // Rejoined the ISR (as the replication path will commit it).
        state.topics.get_mut(&topic).unwrap().partitions[0]
            .isr
            .push(1);
        assert_eq!(preferred_imbalance(&state), vec![id]);
        assert_eq!(
            elect(&mut state, Election::Preferred, &[id]),
            vec![ElectionOutcome::Elected {
                leader: 1,
                leader_epoch: 2
            }]
        );
        assert_eq!(
            elect(&mut state, Election::Preferred, &[id]),
            vec![ElectionOutcome::NotNeeded]
        );
        let missing = PartitionId {
            topic,
            partition: 9,
        };
        assert_eq!(
            elect(&mut state, Election::Preferred, &[missing]),
            vec![ElectionOutcome::Unknown]
        );
    }
}
