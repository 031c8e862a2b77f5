//! Partition replication, Kafka's ISR model: each replica of a partition has a role on the
//! shard that owns it — leader (tracking its followers and the high watermark) or follower
//! (fetching from its leader) — derived from the committed cluster metadata.
//!
//! Who may change a replica's state: only [`Replicas::reconcile`] sets roles, ISR and leader
//! epoch, from the committed metadata (`become_leader` / `become_follower`); the leader's
//! follower progress changes only on a follower's fetch ([`Replicas::on_follower_fetch`]);
//! the high watermark moves only through `Partition::limit_high_watermark`, called here with
//! the rule of `leader.rs` (leader) or the leader's answer (follower, `fetcher.rs`). ISR
//! changes are asked of the active controller (`AlterPartition` through the quorum) and take
//! effect only when they come back committed. Everything lives on the owning shard's thread:
//! must never take a lock, touch another shard's replicas, or change the ISR locally.
//!
//! A partition with one replica (and every partition of a single broker) has no role here
//! or a leader role alone in its ISR: its high watermark is its durable end, as before.

pub mod fetcher;
pub mod leader;
pub mod offsets;
pub mod truncation;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_cluster::state::{BrokerId, ClusterState};
use sluice_cluster::wire::AlterPartitionRequest;
use sluice_storage::Partition;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::errors::code;
use crate::shard::Shard;
use leader::{IsrAnswer, IsrChange, Leader};

/// NOT_ENOUGH_REPLICAS: the ISR is below `min.insync.replicas`; nothing was appended.
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND: appended, but the ISR fell below `min.insync.replicas`.
pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;

/// A replica's role.
#[derive(Debug)]
pub enum Role {
    /// This broker leads the partition.
    Leader(Leader),
    /// This broker copies the partition from `leader`.
    Follower {
        /// The leader's broker id.
        leader: BrokerId,
        /// The epoch it leads at.
        leader_epoch: i32,
    },
}

struct Replica {
    partition: Partition,
    topic_id: Uuid,
    role: Role,
    /// Woken when the role or the ISR changes (acks=all waiters check the ISR again).
    changed: Rc<Notify>,
    /// A follower's log was matched to its leader's at this role's epoch (`truncation.rs`):
    /// until it is, the fetcher does not fetch the partition.
    epoch_checked: Cell<bool>,
}

impl Replica {
    /// A follower's, or a leader's with followers: its high watermark is checkpointed.
    fn is_replicated(&self) -> bool {
        match &self.role {
            Role::Leader(leader) => leader.is_replicated(),
            Role::Follower { .. } => true,
        }
    }
}

/// A partition a fetcher copies, as it was when the fetch was built.
#[derive(Clone)]
pub(crate) struct Followed {
    pub topic: String,
    pub topic_id: Uuid,
    pub index: i32,
    pub leader_epoch: i32,
    pub partition: Partition,
    /// The log was matched to the leader's at `leader_epoch` (else it is first).
    pub epoch_checked: bool,
}

/// The replica roles of the partitions one shard owns.
#[derive(Default)]
pub struct Replicas {
    roles: RefCell<HashMap<(String, i32), Replica>>,
    /// Leaders this shard runs a fetcher for.
    fetchers: RefCell<HashSet<BrokerId>>,
    /// The ISR check task runs.
    isr_checking: Cell<bool>,
    /// The high-watermark checkpoint task runs.
    checkpointing: Cell<bool>,
}

impl Replicas {
    /// Sets every role from the committed `state` (become_leader / become_follower), for the
    /// partitions this broker is a replica of, this shard owns and has open; forgets the rest.
    pub fn reconcile(&self, shard: &Rc<Shard>, state: &ClusterState) {
        let node_id = shard.config.node_id;
        let now = Instant::now();
        let mut seen = HashSet::new();
        let mut followed_leaders = HashSet::new();
        let mut leads_replicated = false;
        for topic in state.topics.values() {
            let offsets_topic = topic.name == sluice_group::OFFSETS_TOPIC;
            let txn_state_topic = topic.name == crate::txn::TRANSACTION_STATE_TOPIC;
            let min_insync = shard.config.topic_min_insync_replicas(&topic.configs);
            let min_insync = usize::try_from(min_insync).unwrap_or(1);
            for (index, placement) in topic.partitions.iter().enumerate() {
                let Ok(index) = i32::try_from(index) else {
                    break;
                };
                if !placement.replicas.contains(&node_id)
                    || shard.set.owner_of(&topic.name, index) != shard.id
                    || placement.leader < 0
                {
                    continue;
                }
                let Some(partition) = shard.partition(&topic.name, index) else {
                    continue;
                };
                let key = (topic.name.clone(), index);
                seen.insert(key.clone());
                let mut roles = self.roles.borrow_mut();
                let current = roles.get_mut(&key).filter(|r| r.topic_id == topic.id);
                if placement.leader == node_id {
                    let limit = match current {
                        Some(Replica {
                            role: Role::Leader(leader),
                            changed,
                            ..
                        }) if leader.leader_epoch == placement.leader_epoch => {
                            leader.update(
                                placement.replicas.clone(),
                                placement.isr.clone(),
                                min_insync,
                                now,
                            );
                            leads_replicated |= leader.is_replicated();
                            changed.notify_waiters();
                            leader.high_watermark_limit()
                        }
                        _ => {
                            tracing::info!(topic = %topic.name, partition = index, leader_epoch = placement.leader_epoch, isr = ?placement.isr, "becoming leader");
                            start_leader_epoch(
                                &topic.name,
                                index,
                                &partition,
                                placement.leader_epoch,
                            );
                            let leader = Leader::new(
                                node_id,
                                placement.leader_epoch,
                                placement.replicas.clone(),
                                placement.isr.clone(),
                                min_insync,
                                partition.log_end_offset(),
                                now,
                            );
                            leads_replicated |= leader.is_replicated();
                            let limit = leader.high_watermark_limit();
                            replace(&mut roles, key, topic.id, &partition, Role::Leader(leader));
                            if offsets_topic {
                                offsets::lead(shard, index, &partition, placement.leader_epoch);
                            }
                            if txn_state_topic {
                                crate::txn::leadership::lead(
                                    shard,
                                    index,
                                    &partition,
                                    placement.leader_epoch,
                                );
                            }
                            limit
                        }
                    };
                    partition.limit_high_watermark(limit);
                } else {
                    followed_leaders.insert(placement.leader);
                    let same = matches!(current, Some(Replica { role: Role::Follower { leader, leader_epoch }, .. })
                        if *leader == placement.leader && *leader_epoch == placement.leader_epoch);
                    if !same {
                        tracing::info!(topic = %topic.name, partition = index, leader = placement.leader, leader_epoch = placement.leader_epoch, "becoming follower");
                        // Until the leader says otherwise, nothing new is known committed.
                        partition.limit_high_watermark(Some(partition.high_watermark()));
                        let role = Role::Follower {
                            leader: placement.leader,
                            leader_epoch: placement.leader_epoch,
                        };
                        replace(&mut roles, key, topic.id, &partition, role);
                        if offsets_topic {
                            offsets::stop_leading(shard, index);
                        }
                        if txn_state_topic {
                            crate::txn::leadership::stop_leading(shard, index);
                        }
                    }
                }
            }
        }
        self.roles.borrow_mut().retain(|key, replica| {
            let keep = seen.contains(key);
            if !keep {
                replica.changed.notify_waiters();
                if key.0 == sluice_group::OFFSETS_TOPIC && matches!(replica.role, Role::Leader(_)) {
                    offsets::stop_leading(shard, key.1);
                }
                if key.0 == crate::txn::TRANSACTION_STATE_TOPIC
                    && matches!(replica.role, Role::Leader(_))
                {
                    crate::txn::leadership::stop_leading(shard, key.1);
                }
            }
            keep
        });
        for leader in followed_leaders {
            if self.fetchers.borrow_mut().insert(leader) {
                tokio::task::spawn_local(fetcher::run(shard.clone(), leader));
            }
        }
        if leads_replicated && !self.isr_checking.replace(true) {
            tokio::task::spawn_local(check_isr(shard.clone()));
        }
        let any_replicated = self.roles.borrow().values().any(Replica::is_replicated);
        if any_replicated && !self.checkpointing.replace(true) {
            tokio::task::spawn_local(checkpoint_high_watermarks(shard.clone()));
        }
    }

    /// The partitions this shard holds a replica of that have other replicas (a follower's,
    /// or a leader's with followers): the ones whose high watermark is checkpointed.
    fn replicated_partitions(&self) -> Vec<Partition> {
        self.roles
            .borrow()
            .values()
            .filter(|replica| replica.is_replicated())
            .map(|replica| replica.partition.clone())
            .collect()
    }

    /// Before an acks=all append: NOT_ENOUGH_REPLICAS when the ISR is below
    /// `min.insync.replicas`.
    pub fn check_min_insync(&self, topic: &str, index: i32) -> Result<(), i16> {
        // A single broker has no roles: skip the key's allocation on every produce.
        if self.roles.borrow().is_empty() {
            return Ok(());
        }
        match self.roles.borrow().get(&(topic.to_string(), index)) {
            Some(Replica {
                role: Role::Leader(leader),
                ..
            }) if leader.is_replicated() && leader.isr.len() < leader.min_insync_replicas => {
                Err(NOT_ENOUGH_REPLICAS)
            }
            _ => Ok(()),
        }
    }

    /// After an acks=all append ending at `end` (exclusive) was durable here: waits until the
    /// high watermark passes it, then NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR is below
    /// `min.insync.replicas` (Kafka's rule). Immediate for a partition with one replica.
    pub async fn wait_replicated(
        &self,
        topic: &str,
        index: i32,
        partition: &Partition,
        end: i64,
    ) -> Result<(), i16> {
        if self.roles.borrow().is_empty() {
            // A single broker (no roles): the unreplicated rule below, without the key's
            // allocation on every acks=all produce.
            return if partition.high_watermark() >= end {
                Ok(())
            } else {
                Err(code::NOT_LEADER_OR_FOLLOWER)
            };
        }
        let key = (topic.to_string(), index);
        loop {
            let changed = match self.roles.borrow().get(&key) {
                Some(Replica {
                    role: Role::Leader(leader),
                    changed,
                    ..
                }) => {
                    if !leader.is_replicated() {
                        return Ok(());
                    }
                    if partition.high_watermark() >= end {
                        return if leader.isr.len() >= leader.min_insync_replicas {
                            Ok(())
                        } else {
                            Err(NOT_ENOUGH_REPLICAS_AFTER_APPEND)
                        };
                    }
                    changed.clone()
                }
                None if partition.high_watermark() >= end => return Ok(()),
                _ => return Err(code::NOT_LEADER_OR_FOLLOWER),
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if partition.high_watermark() >= end {
                continue;
            }
            tokio::select! {
                _ = partition.wait_for_data(end - 1) => {}
                _ = notified => {}
            }
        }
    }

    /// A follower fetched `fetch_offset` from this leader: records it as the follower's
    /// durable end and moves the high watermark by the rule. NOT_LEADER_OR_FOLLOWER when
    /// this broker does not lead the partition or `follower` is no replica of it;
    /// OFFSET_OUT_OF_RANGE (nothing recorded) when it fetches past this log's end.
    pub fn on_follower_fetch(
        &self,
        topic: &str,
        index: i32,
        follower: BrokerId,
        fetch_offset: i64,
        broker_epoch: Option<i64>,
    ) -> Result<(), i16> {
        let mut roles = self.roles.borrow_mut();
        let Some(Replica {
            role: Role::Leader(leader),
            partition,
            ..
        }) = roles.get_mut(&(topic.to_string(), index))
        else {
            return Err(code::NOT_LEADER_OR_FOLLOWER);
        };
        let log_end = partition.log_end_offset();
        if fetch_offset > log_end || fetch_offset < 0 {
            return Err(sluice_storage::codes::OFFSET_OUT_OF_RANGE);
        }
        leader
            .on_fetch(
                follower,
                fetch_offset,
                log_end,
                Instant::now(),
                broker_epoch,
            )
            .map_err(|_| code::NOT_LEADER_OR_FOLLOWER)?;
        let limit = leader.high_watermark_limit();
        let partition = partition.clone();
        drop(roles);
        partition.limit_high_watermark(limit);
        Ok(())
    }

    /// Whether `follower` should be answered at once because the high watermark moved past
    /// what it was last told (so followers learn it without waiting for new data).
    pub fn take_high_watermark_news(
        &self,
        topic: &str,
        index: i32,
        follower: BrokerId,
        high_watermark: i64,
    ) -> bool {
        match self.roles.borrow_mut().get_mut(&(topic.to_string(), index)) {
            Some(Replica {
                role: Role::Leader(leader),
                ..
            }) => leader.take_high_watermark_news(follower, high_watermark),
            _ => false,
        }
    }

    /// The partitions this shard follows from `leader`.
    pub(crate) fn followed_from(&self, leader: BrokerId) -> Vec<Followed> {
        self.roles
            .borrow()
            .iter()
            .filter_map(|((topic, index), replica)| match replica.role {
                Role::Follower {
                    leader: l,
                    leader_epoch,
                } if l == leader => Some(Followed {
                    topic: topic.clone(),
                    topic_id: replica.topic_id,
                    index: *index,
                    leader_epoch,
                    partition: replica.partition.clone(),
                    epoch_checked: replica.epoch_checked.get(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Whether this shard still follows (`topic`, `index`) from `leader` at `leader_epoch`.
    pub(crate) fn follows(
        &self,
        topic: &str,
        index: i32,
        leader: BrokerId,
        leader_epoch: i32,
    ) -> bool {
        matches!(
            self.roles.borrow().get(&(topic.to_string(), index)),
            Some(Replica { role: Role::Follower { leader: l, leader_epoch: e }, .. })
                if *l == leader && *e == leader_epoch
        )
    }

    /// Whether this shard still follows (`topic`, `index`) at `leader_epoch`.
    pub(crate) fn follows_at_epoch(&self, topic: &str, index: i32, leader_epoch: i32) -> bool {
        matches!(
            self.roles.borrow().get(&(topic.to_string(), index)),
            Some(Replica { role: Role::Follower { leader_epoch: e, .. }, .. }) if *e == leader_epoch
        )
    }

    /// Whether the follower log of (`topic`, `index`) must be matched to its leader's before
    /// the next fetch: `checked` false after an append found it diverging (NotAtLogEnd), true
    /// once the truncation matched it at the role's `leader_epoch` (ignored if the role moved).
    pub(crate) fn set_epoch_checked(
        &self,
        topic: &str,
        index: i32,
        leader_epoch: i32,
        checked: bool,
    ) {
        if let Some(replica) = self.roles.borrow().get(&(topic.to_string(), index)) {
            if matches!(replica.role, Role::Follower { leader_epoch: e, .. } if e == leader_epoch) {
                replica.epoch_checked.set(checked);
            }
        }
    }

    /// The fetcher for `leader` stops (it follows nothing from it any more).
    pub(crate) fn fetcher_stopped(&self, leader: BrokerId) {
        self.fetchers.borrow_mut().remove(&leader);
    }

    /// The ISR this shard's replicated leaders want, marked pending: (key, request).
    fn isr_changes(
        &self,
        node_id: BrokerId,
        lag_max: Duration,
    ) -> Vec<((String, i32), AlterPartitionRequest)> {
        let now = Instant::now();
        let mut changes = Vec::new();
        for ((topic, index), replica) in self.roles.borrow_mut().iter_mut() {
            let Role::Leader(leader) = &mut replica.role else {
                continue;
            };
            if !leader.is_replicated() || leader.isr_change_pending {
                continue;
            }
            let high_watermark = replica.partition.high_watermark();
            // A change whose answer was lost goes again, unchanged, before any new one.
            let change = leader.unresolved_isr().or_else(|| {
                leader
                    .wanted_isr(lag_max, now, high_watermark)
                    .map(|wanted| leader.change_to(wanted))
            });
            let (Some(change), Ok(partition)) = (change, u32::try_from(*index)) else {
                continue;
            };
            leader.asked_isr(&change.isr);
            changes.push((
                (topic.clone(), *index),
                AlterPartitionRequest {
                    topic: replica.topic_id,
                    partition,
                    leader: node_id,
                    leader_epoch: leader.leader_epoch,
                    isr: change.isr,
                    added_epochs: change.added_epochs,
                },
            ));
        }
        changes
    }

    fn isr_change_done(&self, key: &(String, i32), leader_epoch: i32, answer: IsrAnswer) {
        if let Some(Replica {
            role: Role::Leader(leader),
            ..
        }) = self.roles.borrow_mut().get_mut(key)
        {
            if leader.leader_epoch == leader_epoch {
                leader.isr_change_answered(answer);
            }
        }
    }
}

fn replace(
    roles: &mut HashMap<(String, i32), Replica>,
    key: (String, i32),
    topic_id: Uuid,
    partition: &Partition,
    role: Role,
) {
    let replica = Replica {
        partition: partition.clone(),
        topic_id,
        role,
        changed: Rc::new(Notify::new()),
        epoch_checked: Cell::new(false),
    };
    if let Some(old) = roles.insert(key, replica) {
        old.changed.notify_waiters();
    }
}

/// How often leaders look for ISR changes: a quarter of `replica.lag.time.max.ms`, so a
/// lagging follower leaves at most a quarter late.
fn isr_check_period(lag_max: Duration) -> Duration {
    (lag_max / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// On each shard that leads a replicated partition: asks the controller for the ISR changes
/// its leaders want (one in flight per partition).
async fn check_isr(shard: Rc<Shard>) {
    let lag_max = Duration::from_millis(shard.config.replication.lag_time_ms_max);
    loop {
        tokio::time::sleep(isr_check_period(lag_max)).await;
        let Some(admin) = shard.metadata.admin().cloned() else {
            continue;
        };
        for (key, request) in shard.replicas.isr_changes(shard.config.node_id, lag_max) {
            let shard = shard.clone();
            let admin = admin.clone();
            tokio::task::spawn_local(async move {
                let leader_epoch = request.leader_epoch;
                let asked = IsrChange {
                    isr: request.isr.clone(),
                    added_epochs: request.added_epochs.clone(),
                };
                tracing::info!(topic = %key.0, partition = key.1, isr = ?request.isr, "asking the controller for an ISR change");
                let answer = match admin.alter_partition(request).await {
                    Ok(_) => IsrAnswer::Committed,
                    Err(sluice_cluster::wire::BrokerRpcError::Refused(reason)) => {
                        tracing::warn!(topic = %key.0, partition = key.1, %reason, "ISR change refused");
                        IsrAnswer::Refused
                    }
                    Err(error) => {
                        tracing::warn!(topic = %key.0, partition = key.1, %error, "ISR change unanswered; asking again");
                        IsrAnswer::Unknown(asked)
                    }
                };
                shard.replicas.isr_change_done(&key, leader_epoch, answer);
            });
        }
    }
}

/// On each shard with replicated partitions: writes their high watermarks to their
/// checkpoints (those that moved) at once and every
/// `replica.high.watermark.checkpoint.interval.ms`, so a restart opens each no higher than a
/// committed high watermark (`sluice_storage`'s `high_watermark.rs` says why).
async fn checkpoint_high_watermarks(shard: Rc<Shard>) {
    let period = Duration::from_millis(
        shard
            .config
            .replication
            .high_watermark_checkpoint_interval_ms,
    );
    loop {
        for partition in shard.replicas.replicated_partitions() {
            if let Err(error) = partition.checkpoint_high_watermark().await {
                let (topic, index) = partition.topic_partition();
                tracing::error!(%topic, index, %error, "writing the high-watermark checkpoint failed");
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// A new leader starts its epoch at its log end (Kafka's makeLeader), durably, so
/// OffsetForLeaderEpoch ends the previous epoch there before the first append of the new one;
/// a no-op when the log already knows this epoch (a restart into the same epoch).
fn start_leader_epoch(topic: &str, index: i32, partition: &Partition, leader_epoch: i32) {
    if partition
        .latest_leader_epoch()
        .is_some_and(|known| known >= leader_epoch)
    {
        return;
    }
    let (topic, partition) = (topic.to_string(), partition.clone());
    tokio::task::spawn_local(async move {
        if let Err(error) = partition.assign_leader_epoch(leader_epoch).await {
            tracing::error!(%topic, index, leader_epoch, %error, "cannot record a new leader epoch");
        }
    });
}
