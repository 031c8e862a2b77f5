//! Partition reassignment (Kafka's AlterPartitionReassignments, KIP-455), applied inside
//! committed commands: starting a move of a partition from its replicas R to a target T,
//! completing it once every target replica is in the ISR, and cancelling it.
//!
//! While a move is in progress the partition's `replicas` are T followed by R − T (Kafka's
//! order), `adding_replicas` = T − R and `removing_replicas` = R − T. Adding replicas are
//! followers like any other (they join the ISR through `AlterPartition` once caught up); the
//! move completes inside the command that puts the last target replica in the ISR: replicas
//! become T (so T[0] is the preferred leader), the removing replicas leave the ISR, and a
//! removed leader is replaced by the first live ISR member of T (a new leader epoch). A cancel
//! drops the adding replicas from the replicas and the ISR.
//!
//! Pure functions of the state, like `leadership.rs`: no clock, no I/O, no settings. Must never
//! leave a partition with an empty ISR (a change that would is refused whole), nor count an
//! adding replica in the ISR before it joined through `AlterPartition`.
//!
//! Invariants (asserted after every change, with the leadership ones): replicas are distinct;
//! adding and removing replicas are disjoint replicas; a partition with neither is not moving.

use serde::{Deserialize, Serialize};

use crate::leadership::{self, PartitionId, NO_LEADER};
use crate::state::{BrokerId, ClusterState, PartitionRecord};

/// One partition's requested move: `Some(target)` starts (or replaces) a move, `None` cancels
/// the one in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The partition.
    pub partition: PartitionId,
    /// The target replicas, preferred leader first; None cancels.
    pub target: Option<Vec<BrokerId>>,
}

/// What one partition's reassignment did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReassignmentOutcome {
    /// The move was recorded (possibly completed at once, when every target replica was in
    /// the ISR already), or the one in progress was cancelled.
    Accepted,
    /// No such topic or partition (UNKNOWN_TOPIC_OR_PARTITION).
    Unknown,
    /// The target is empty, names a broker twice or an unregistered broker
    /// (INVALID_REPLICA_ASSIGNMENT).
    InvalidAssignment(String),
    /// The target changes the replica count and the request did not allow it
    /// (INVALID_REPLICATION_FACTOR).
    InvalidReplicationFactor(String),
    /// A cancel with no move in progress (NO_REASSIGNMENT_IN_PROGRESS).
    NoneInProgress,
    /// The change would leave no in-sync replica; nothing changed.
    Refused(String),
}

/// Whether a move is in progress.
pub fn in_progress(partition: &PartitionRecord) -> bool {
    !partition.adding_replicas.is_empty() || !partition.removing_replicas.is_empty()
}

fn live(state: &ClusterState) -> impl Fn(BrokerId) -> bool + '_ {
    |id| state.brokers.get(&id).is_some_and(|broker| !broker.fenced)
}

fn assert_move_invariants(partition: &PartitionRecord) {
    for (at, id) in partition.replicas.iter().enumerate() {
        assert!(
            !partition.replicas[..at].contains(id),
            "replica named twice: {partition:?}"
        );
    }
    for id in &partition.adding_replicas {
        assert!(
            partition.replicas.contains(id),
            "adding replica not a replica: {partition:?}"
        );
        assert!(
            !partition.removing_replicas.contains(id),
            "replica both adding and removing: {partition:?}"
        );
    }
    assert!(
        partition
            .removing_replicas
            .iter()
            .all(|id| partition.replicas.contains(id)),
        "removing replica not a replica: {partition:?}"
    );
}

/// A leader that is no replica any more gives way to the first live ISR member.
fn replace_removed_leader(partition: &mut PartitionRecord, live: &impl Fn(BrokerId) -> bool) {
    if partition.leader == NO_LEADER || partition.replicas.contains(&partition.leader) {
        return;
    }
    let next = partition
        .replicas
        .iter()
        .copied()
        .find(|&id| partition.isr.contains(&id) && live(id))
        .unwrap_or(NO_LEADER);
    leadership::set_leader(partition, next);
}

/// Completes the move in progress when every target replica is in the ISR: replicas become
/// the target (in its order), the removing replicas leave the ISR, a removed leader is
/// replaced. Returns whether it completed.
pub(crate) fn complete_if_caught_up(
    partition: &mut PartitionRecord,
    live: &impl Fn(BrokerId) -> bool,
) -> bool {
    if !in_progress(partition) {
        return false;
    }
    let target: Vec<BrokerId> = partition
        .replicas
        .iter()
        .copied()
        .filter(|id| !partition.removing_replicas.contains(id))
        .collect();
    if target.is_empty() || !target.iter().all(|id| partition.isr.contains(id)) {
        return false;
    }
    partition.isr.retain(|id| target.contains(id));
    partition.replicas = target;
    partition.adding_replicas.clear();
    partition.removing_replicas.clear();
    replace_removed_leader(partition, live);
    true
}

/// Drops the adding replicas of the move in progress (replicas and ISR); refused when no
/// in-sync replica would be left.
fn revert(partition: &mut PartitionRecord, live: &impl Fn(BrokerId) -> bool) -> Result<(), String> {
    let adding = std::mem::take(&mut partition.adding_replicas);
    let isr: Vec<BrokerId> = partition
        .isr
        .iter()
        .copied()
        .filter(|id| !adding.contains(id))
        .collect();
    if isr.is_empty() {
        partition.adding_replicas = adding;
        return Err(format!(
            "only the adding replicas {:?} are in sync; cancelling would leave no in-sync replica",
            partition.adding_replicas
        ));
    }
    partition.isr = isr;
    partition.replicas.retain(|id| !adding.contains(id));
    partition.removing_replicas.clear();
    replace_removed_leader(partition, live);
    Ok(())
}

/// Checks a target: non-empty, distinct, registered brokers.
fn check_target(state: &ClusterState, target: &[BrokerId]) -> Result<(), String> {
    if target.is_empty() {
        return Err("The target replica set is empty.".into());
    }
    for (at, id) in target.iter().enumerate() {
        if target[..at].contains(id) {
            return Err(format!("The target names broker {id} twice."));
        }
        if !state.brokers.contains_key(id) {
            return Err(format!(
                "The target names broker {id}, which is not registered."
            ));
        }
    }
    Ok(())
}

/// Starts a move of `partition` to `target` (a move in progress is cancelled first, as
/// Kafka's controller does with the replicas it was moving from).
fn start(
    partition: &mut PartitionRecord,
    target: &[BrokerId],
    live: &impl Fn(BrokerId) -> bool,
) -> Result<(), String> {
    if in_progress(partition) {
        revert(partition, live)?;
    }
    let current = partition.replicas.clone();
    let adding: Vec<BrokerId> = target
        .iter()
        .copied()
        .filter(|id| !current.contains(id))
        .collect();
    let removing: Vec<BrokerId> = current
        .iter()
        .copied()
        .filter(|id| !target.contains(id))
        .collect();
    let mut replicas = target.to_vec();
    replicas.extend(removing.iter().copied());
    partition.replicas = replicas;
    partition.adding_replicas = adding;
    partition.removing_replicas = removing;
    complete_if_caught_up(partition, live);
    Ok(())
}

/// Applies each reassignment, in order, and answers each one.
pub(crate) fn apply(
    state: &mut ClusterState,
    reassignments: &[Reassignment],
    allow_replication_factor_change: bool,
) -> Vec<ReassignmentOutcome> {
    let mut outcomes = Vec::with_capacity(reassignments.len());
    for reassignment in reassignments {
        let id = reassignment.partition;
        let Some(mut record) = state
            .topics
            .get(&id.topic)
            .and_then(|topic| topic.partitions.get(id.partition as usize))
            .cloned()
        else {
            outcomes.push(ReassignmentOutcome::Unknown);
            continue;
        };
        let outcome = {
            let live = live(state);
            match &reassignment.target {
                None if !in_progress(&record) => ReassignmentOutcome::NoneInProgress,
                None => match revert(&mut record, &live) {
                    Ok(()) => ReassignmentOutcome::Accepted,
                    Err(reason) => ReassignmentOutcome::Refused(reason),
                },
                Some(target) => {
                    let original = record.replicas.len() - record.adding_replicas.len();
                    if let Err(reason) = check_target(state, target) {
                        ReassignmentOutcome::InvalidAssignment(reason)
                    } else if !allow_replication_factor_change && target.len() != original {
                        ReassignmentOutcome::InvalidReplicationFactor(format!(
                        "The target has {} replicas, the partition {original}, and the request does not allow a change.",
                        target.len()
                    ))
                    } else {
                        match start(&mut record, target, &live) {
                            Ok(()) => ReassignmentOutcome::Accepted,
                            Err(reason) => ReassignmentOutcome::Refused(reason),
                        }
                    }
                }
            }
        };
        if outcome == ReassignmentOutcome::Accepted {
            leadership::assert_invariants(&record);
            assert_move_invariants(&record);
            if let Some(slot) = state
                .topics
                .get_mut(&id.topic)
                .and_then(|topic| topic.partitions.get_mut(id.partition as usize))
            {
                *slot = record;
            }
        }
        outcomes.push(outcome);
    }
    outcomes
}

/// Every partition with a move in progress.
pub fn ongoing(state: &ClusterState) -> Vec<(PartitionId, &PartitionRecord)> {
    let mut moving = Vec::new();
    for topic in state.topics.values() {
        for (index, partition) in topic.partitions.iter().enumerate() {
            if in_progress(partition) {
                let id = PartitionId {
                    topic: topic.id,
                    partition: u32::try_from(index).unwrap_or(u32::MAX),
                };
                moving.push((id, partition));
            }
        }
    }
    moving
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use uuid::Uuid;

    use super::*;
    use crate::state::{Command, CommandReply};

    /// Brokers 1-4 registered (epochs 1-4), topic "t" with one partition on `replicas`.
    fn cluster(replicas: &[BrokerId]) -> (ClusterState, PartitionId) {
        let mut state = ClusterState::default();
        for id in 1..=4 {
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
        let topic = Uuid::new_v4();
        state.apply(
            5,
            &Command::CreateTopic {
                name: "t".into(),
                id: topic,
                partitions: vec![PartitionRecord::new(replicas.to_vec())],
                configs: BTreeMap::new(),
            },
        );
        (
            state,
            PartitionId {
                topic,
                partition: 0,
            },
        )
    }

    fn reassign(
        state: &mut ClusterState,
        index: u64,
        partition: PartitionId,
        target: Option<&[BrokerId]>,
    ) -> Vec<ReassignmentOutcome> {
        match state.apply(
            index,
            &Command::AlterPartitionReassignments {
                reassignments: vec![Reassignment {
                    partition,
                    target: target.map(<[BrokerId]>::to_vec),
                }],
                allow_replication_factor_change: true,
            },
        ) {
            CommandReply::Reassignments { outcomes } => outcomes,
            other => panic!("{other:?}"),
        }
    }

    fn record(state: &ClusterState, id: PartitionId) -> PartitionRecord {
        state.topics[&id.topic].partitions[0].clone()
    }

    fn alter_isr(state: &mut ClusterState, index: u64, id: PartitionId, isr: &[BrokerId]) {
        let p = record(state, id);
        let reply = state.apply(
            index,
            &Command::AlterPartition {
                topic: id.topic,
                partition: 0,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                isr: isr.to_vec(),
                added_epochs: Vec::new(),
            },
        );
        assert_eq!(reply, CommandReply::Done);
    }

    #[test]
    fn a_move_adds_first_and_completes_when_the_targets_are_in_sync() {
        let (mut state, id) = cluster(&[1, 2]);
        assert_eq!(
            reassign(&mut state, 10, id, Some(&[2, 3])),
            [ReassignmentOutcome::Accepted]
        );
        let p = record(&state, id);
        assert_eq!(
            (p.replicas.as_slice(), p.adding_replicas.as_slice()),
            (&[2, 3, 1][..], &[3][..])
        );
        assert_eq!(p.removing_replicas, [1]);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.as_slice()),
            (1, 0, &[1, 2][..])
        );
        assert_eq!(ongoing(&state).len(), 1);
        // The new replica catches up: the same command completes the move, the removed
        // leader gives way to the first target replica in the ISR, in a new epoch.
        alter_isr(&mut state, 11, id, &[1, 2, 3]);
        let p = record(&state, id);
        assert_eq!(p.replicas, [2, 3]);
        assert_eq!(p.isr, [2, 3]);
        assert_eq!((p.leader, p.leader_epoch), (2, 1));
        assert!(!in_progress(&p));
        assert!(ongoing(&state).is_empty());
        // Snapshots carry a move in progress.
        reassign(&mut state, 12, id, Some(&[4, 2]));
        let back: ClusterState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(record(&back, id).adding_replicas, [4]);
        assert_eq!(record(&back, id).removing_replicas, [3]);
    }

    #[test]
    fn a_cancel_reverts_and_bad_targets_are_refused() {
        let (mut state, id) = cluster(&[1, 2]);
        assert_eq!(
            reassign(&mut state, 10, id, None),
            [ReassignmentOutcome::NoneInProgress]
        );
        for (index, bad) in [(11, &[][..]), (12, &[3, 3]), (13, &[3, 9])] {
            assert!(matches!(
                reassign(&mut state, index, id, Some(bad))[..],
                [ReassignmentOutcome::InvalidAssignment(_)]
            ));
        }
        assert_eq!(record(&state, id).replicas, [1, 2]);
        reassign(&mut state, 20, id, Some(&[3, 4]));
        alter_isr(&mut state, 21, id, &[1, 2, 3]);
        assert_eq!(record(&state, id).isr, [1, 2, 3]);
        assert_eq!(
            reassign(&mut state, 22, id, None),
            [ReassignmentOutcome::Accepted]
        );
        let p = record(&state, id);
        assert_eq!(
            (p.replicas.as_slice(), p.isr.as_slice()),
            (&[1, 2][..], &[1, 2][..])
        );
        assert!(!in_progress(&p));
        assert_eq!((p.leader, p.leader_epoch), (1, 0));
        // An unknown partition; a target already in sync completes at once.
        let unknown = PartitionId {
            topic: id.topic,
            partition: 7,
        };
        assert_eq!(
            reassign(&mut state, 23, unknown, Some(&[1])),
            [ReassignmentOutcome::Unknown]
        );
        assert_eq!(
            reassign(&mut state, 24, id, Some(&[2])),
            [ReassignmentOutcome::Accepted]
        );
        let p = record(&state, id);
        assert_eq!(
            (p.replicas.as_slice(), p.leader, p.leader_epoch),
            (&[2][..], 2, 1)
        );
    }

    #[test]
    fn the_replica_count_may_be_kept_fixed() {
        let (mut state, id) = cluster(&[1, 2]);
        let reply = state.apply(
            10,
            &Command::AlterPartitionReassignments {
                reassignments: vec![Reassignment {
                    partition: id,
                    target: Some(vec![3]),
                }],
                allow_replication_factor_change: false,
            },
        );
        assert!(matches!(
            reply,
            CommandReply::Reassignments { ref outcomes }
                if matches!(outcomes[..], [ReassignmentOutcome::InvalidReplicationFactor(_)])
        ));
        assert_eq!(record(&state, id).replicas, [1, 2]);
    }
}
