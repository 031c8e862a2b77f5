//! The active controller's side of topic changes forwarded by brokers: creates (placing
//! replicas round-robin over the unfenced brokers with [`assign_replicas`]), deletes, and
//! partition additions, each checked against the committed state after a linearizable read
//! and then proposed through the quorum. Owns the rules a topic change must pass; must never
//! change the state except by proposing a command, or place two replicas of a partition on
//! one broker (a replication factor above the unfenced brokers is refused).

use uuid::Uuid;

use crate::controller::{read_error, write_error, Controller};
use crate::state::{
    assign_replicas, BrokerId, ClusterState, Command, CommandReply, PartitionRecord, PlacementError,
};
use crate::wire::{TopicAdminError, TopicAdminReply, TopicAdminRequest};

fn placement_error(error: PlacementError) -> TopicAdminError {
    match error {
        PlacementError::InvalidPartitions(_) => TopicAdminError::InvalidPartitions(format!(
            "Number of partitions must be larger than 0: {error}."
        )),
        PlacementError::InvalidReplicationFactor { .. } => {
            TopicAdminError::InvalidReplicationFactor(format!("{error}."))
        }
    }
}

/// Refuses a replication factor below 1 (one above the unfenced brokers is refused at
/// placement, against the committed state).
pub fn check_replication_factor(replication_factor: i32) -> Result<(), TopicAdminError> {
    if replication_factor < 1 {
        return Err(TopicAdminError::InvalidReplicationFactor(format!(
            "Replication factor must be larger than 0, got {replication_factor}."
        )));
    }
    Ok(())
}

/// Where placement starts: spread from topic to topic so that single-partition topics do not
/// all land on the lowest broker id; the placement itself is in the command, so it need not
/// be reproducible.
fn placement_start(id: Uuid, brokers: usize) -> usize {
    (id.as_u128() % brokers.max(1) as u128) as usize
}

impl Controller {
    /// Checks `request` against the committed state, proposes it, and answers once committed.
    pub async fn topic_admin(
        &self,
        request: TopicAdminRequest,
    ) -> Result<TopicAdminReply, TopicAdminError> {
        // Leadership confirmed and everything committed applied: the checks below see every
        // change acknowledged before this request.
        self.raft.ensure_linearizable().await.map_err(read_error)?;
        let state = self.state.borrow().clone();
        let (command, topic) = plan(&state, request)?;
        // Refused at apply only when another change to the same topic committed first.
        let refused: fn(String) -> TopicAdminError = match &command {
            Command::CreateTopic { .. } => TopicAdminError::AlreadyExists,
            Command::DeleteTopic { .. } => TopicAdminError::UnknownTopic,
            _ => TopicAdminError::InvalidPartitions,
        };
        let response = self.raft.client_write(command).await.map_err(write_error)?;
        match response.data {
            CommandReply::Rejected { reason } => Err(refused(reason)),
            _ => {
                let topic = match self.state.borrow().topics.get(&topic.id) {
                    Some(committed) => committed.clone(),
                    None => topic,
                };
                tracing::info!(topic = %topic.name, id = %topic.id, partitions = topic.partitions.len(), index = response.log_id.index, "topic change committed");
                Ok(TopicAdminReply {
                    topic,
                    committed_index: response.log_id.index,
                })
            }
        }
    }
}

/// Partitions placed as a request's replica assignments say: each a non-empty set of
/// unfenced registered brokers, all of one size (Kafka's rules); the first replica leads.
fn assigned(
    state: &ClusterState,
    assignments: &[Vec<BrokerId>],
) -> Result<Vec<PartitionRecord>, TopicAdminError> {
    let invalid = |message: String| Err(TopicAdminError::InvalidReplicaAssignment(message));
    let size = assignments.first().map_or(0, Vec::len);
    let mut placed = Vec::with_capacity(assignments.len());
    for (index, replicas) in assignments.iter().enumerate() {
        if replicas.is_empty() || replicas.len() != size {
            return invalid(format!(
                "Partition {index} has {} replicas; every partition needs the same number, at least 1.",
                replicas.len()
            ));
        }
        for (at, broker) in replicas.iter().enumerate() {
            if replicas[..at].contains(broker) {
                return invalid(format!("Partition {index} names broker {broker} twice."));
            }
            if state.brokers.get(broker).is_none_or(|b| b.fenced) {
                return invalid(format!(
                    "Partition {index} names broker {broker}, which is not a live broker."
                ));
            }
        }
        placed.push(PartitionRecord::new(replicas.clone()));
    }
    Ok(placed)
}

/// The command a request makes against `state`, and the topic it concerns.
fn plan(
    state: &ClusterState,
    request: TopicAdminRequest,
) -> Result<(Command, crate::state::TopicRecord), TopicAdminError> {
    match request {
        TopicAdminRequest::Create {
            name,
            partitions,
            replication_factor,
            assignments,
            configs,
        } => {
            check_replication_factor(replication_factor)?;
            if state.topic_by_name(&name).is_some() {
                return Err(TopicAdminError::AlreadyExists(format!(
                    "Topic '{name}' already exists."
                )));
            }
            let id = Uuid::new_v4();
            let start = placement_start(id, state.unfenced_brokers().count());
            let placed = if assignments.is_empty() {
                assign_replicas(state, partitions, replication_factor, start)
                    .map_err(placement_error)?
            } else {
                assigned(state, &assignments)?
            };
            let topic = crate::state::TopicRecord {
                name: name.clone(),
                id,
                partitions: placed.clone(),
                configs: configs.clone(),
            };
            let command = Command::CreateTopic {
                name,
                id,
                partitions: placed,
                configs,
            };
            Ok((command, topic))
        }
        TopicAdminRequest::Delete { name, id } => {
            let topic = match (&name, id) {
                (Some(name), _) => state.topic_by_name(name),
                (None, Some(id)) => state.topics.get(&id),
                (None, None) => None,
            };
            let topic = topic.cloned().ok_or_else(|| {
                TopicAdminError::UnknownTopic("This server does not host this topic.".into())
            })?;
            Ok((Command::DeleteTopic { id: topic.id }, topic))
        }
        TopicAdminRequest::CreatePartitions {
            name,
            count,
            assignments,
        } => {
            let topic = state.topic_by_name(&name).cloned().ok_or_else(|| {
                TopicAdminError::UnknownTopic(format!("Topic '{name}' does not exist."))
            })?;
            let held = topic.partitions.len();
            let added = usize::try_from(count).unwrap_or(0).saturating_sub(held);
            if added == 0 {
                return Err(TopicAdminError::InvalidPartitions(format!(
                    "Topic currently has {held} partitions, which is higher than or equal to the requested {count}."
                )));
            }
            // The replica count of the topic's partitions (their target, for one moving).
            let replication_factor = topic
                .partitions
                .first()
                .map_or(1, |p| (p.replicas.len() - p.removing_replicas.len()).max(1));
            let placed = if assignments.is_empty() {
                assign_replicas(
                    state,
                    i32::try_from(added).unwrap_or(i32::MAX),
                    i32::try_from(replication_factor).unwrap_or(i32::MAX),
                    placement_start(topic.id, state.unfenced_brokers().count()) + held,
                )
                .map_err(placement_error)?
            } else {
                // Kafka's rules: one assignment per added partition, each of the topic's
                // replication factor.
                if assignments.len() != added {
                    return Err(TopicAdminError::InvalidReplicaAssignment(format!(
                        "Increasing the number of partitions by {added} but {} assignments provided.",
                        assignments.len()
                    )));
                }
                if let Some(bad) = assignments.iter().find(|a| a.len() != replication_factor) {
                    return Err(TopicAdminError::InvalidReplicaAssignment(format!(
                        "Inconsistent replication factor between partitions, partition 0 has {replication_factor} while a new partition has {} replicas.",
                        bad.len()
                    )));
                }
                assigned(state, &assignments)?
            };
            let command = Command::CreatePartitions {
                id: topic.id,
                first: held,
                partitions: placed,
            };
            Ok((command, topic))
        }
        TopicAdminRequest::SetClientQuotas { entity, ops } => {
            // Not a topic: the reply carries an empty placeholder (nil id, no partitions).
            let placeholder = crate::state::TopicRecord {
                name: String::new(),
                id: Uuid::nil(),
                partitions: Vec::new(),
                configs: std::collections::BTreeMap::new(),
            };
            Ok((Command::SetClientQuotas { entity, ops }, placeholder))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn three_brokers() -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=3 {
            state.apply(
                id as u64,
                &Command::RegisterBroker {
                    id,
                    host: format!("127.0.0.{id}"),
                    port: 9092,
                    listeners: Vec::new(),
                    incarnation: Uuid::new_v4(),
                    cluster_id: String::new(),
                },
            );
        }
        state
    }

    fn create(name: &str, partitions: i32, replication_factor: i32) -> TopicAdminRequest {
        TopicAdminRequest::Create {
            name: name.into(),
            partitions,
            replication_factor,
            assignments: Vec::new(),
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn replica_assignments_place_as_asked_or_are_refused() {
        let mut state = three_brokers();
        let with = |assignments: Vec<Vec<i32>>| TopicAdminRequest::Create {
            name: "a".into(),
            partitions: i32::try_from(assignments.len()).unwrap(),
            replication_factor: 1,
            assignments,
            configs: BTreeMap::new(),
        };
        let (_, topic) = plan(&state, with(vec![vec![3, 1], vec![2, 3]])).unwrap();
        let placed: Vec<(i32, Vec<i32>)> = topic
            .partitions
            .iter()
            .map(|p| (p.leader, p.replicas.clone()))
            .collect();
        assert_eq!(placed, vec![(3, vec![3, 1]), (2, vec![2, 3])]);
        state.apply(9, &Command::FenceBroker { id: 2, epoch: 2 });
        for bad in [
            vec![vec![1, 1]],
            vec![vec![1, 3], vec![1]],
            vec![vec![]],
            vec![vec![1, 4]],
            vec![vec![1, 2]],
        ] {
            assert!(
                matches!(
                    plan(&state, with(bad.clone())),
                    Err(TopicAdminError::InvalidReplicaAssignment(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_create_spreads_leaders_over_every_unfenced_broker() {
        let state = three_brokers();
        let (command, topic) = plan(&state, create("t", 6, 1)).unwrap();
        let mut leaders: Vec<i32> = topic.partitions.iter().map(|p| p.leader).collect();
        leaders.sort_unstable();
        assert_eq!(leaders, vec![1, 1, 2, 2, 3, 3]);
        assert!(topic
            .partitions
            .iter()
            .all(|p| p.replicas == vec![p.leader]));
        assert!(matches!(command, Command::CreateTopic { .. }));
    }

    #[test]
    fn replicas_are_placed_on_distinct_brokers_up_to_the_unfenced_count() {
        let state = three_brokers();
        let (_, topic) = plan(&state, create("t", 3, 3)).unwrap();
        for partition in &topic.partitions {
            let mut replicas = partition.replicas.clone();
            replicas.sort_unstable();
            assert_eq!(replicas, vec![1, 2, 3]);
            assert_eq!(partition.isr, partition.replicas);
            assert_eq!(partition.leader, partition.replicas[0]);
        }
        let error = plan(&state, create("t", 1, 4)).unwrap_err();
        assert!(
            matches!(&error, TopicAdminError::InvalidReplicationFactor(_)),
            "{error:?}"
        );
        assert!(matches!(
            plan(&state, create("t", 1, 0)),
            Err(TopicAdminError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            plan(&state, create("t", 0, 1)),
            Err(TopicAdminError::InvalidPartitions(_))
        ));
    }

    #[test]
    fn duplicates_and_unknown_topics_are_refused() {
        let mut state = three_brokers();
        let (command, _) = plan(&state, create("t", 2, 1)).unwrap();
        assert_eq!(state.apply(10, &command), CommandReply::Done);
        assert!(matches!(
            plan(&state, create("t", 2, 1)),
            Err(TopicAdminError::AlreadyExists(_))
        ));
        let delete = |name: &str| TopicAdminRequest::Delete {
            name: Some(name.into()),
            id: None,
        };
        assert!(matches!(
            plan(&state, delete("nope")),
            Err(TopicAdminError::UnknownTopic(_))
        ));
        let grow = |count| TopicAdminRequest::CreatePartitions {
            name: "t".into(),
            count,
            assignments: Vec::new(),
        };
        assert!(matches!(
            plan(&state, grow(2)),
            Err(TopicAdminError::InvalidPartitions(_))
        ));
        let (command, _) = plan(&state, grow(5)).unwrap();
        assert_eq!(state.apply(11, &command), CommandReply::Done);
        assert_eq!(state.topic_by_name("t").unwrap().partitions.len(), 5);
        let (command, _) = plan(&state, delete("t")).unwrap();
        assert_eq!(state.apply(12, &command), CommandReply::Done);
        assert!(state.topics.is_empty());
    }
}
