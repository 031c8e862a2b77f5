//! The group coordinator follows the replica roles of `__consumer_offsets` in a cluster: on
//! *become_leader* the partition's groups are loaded from its log (the restart path), through
//! a log whose appends are answered only once the high watermark passed them (acks=all); on
//! *become_follower* or losing the partition they are unloaded (NOT_COORDINATOR), so the
//! fetcher is the log's only writer on a follower.
//!
//! Owns [`ReplicatedOffsetLog`] and the two transitions. Must never decide a role (only
//! `Replicas::reconcile` does), append to a partition this broker does not lead, or answer a
//! coordinator append before every ISR member has it durable.

use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use sluice_group::{GroupError, LocalFuture, OffsetLog, OFFSETS_TOPIC};
use sluice_storage::{Ack, Partition};

use crate::errors::code;
use crate::shard::Shard;

/// A led `__consumer_offsets` partition as the group coordinator sees it: an append is
/// durable here, then waits (up to `offsets.commit.timeout.ms`) for the high watermark.
pub struct ReplicatedOffsetLog {
    partition: Partition,
    index: i32,
    /// The epoch this broker leads at, stamped into every batch it appends.
    leader_epoch: i32,
    /// Weak: the shard owns the coordinator that owns this log.
    shard: Weak<Shard>,
    commit_timeout: Duration,
}

impl ReplicatedOffsetLog {
    fn error(code: i16, message: String) -> GroupError {
        GroupError::Storage {
            context: format!("appending to {OFFSETS_TOPIC} (replicated)"),
            message,
            code,
        }
    }
}

impl OffsetLog for ReplicatedOffsetLog {
    fn append_durable(&self, batch: Bytes) -> LocalFuture<Result<i64, GroupError>> {
        let partition = self.partition.clone();
        let (index, leader_epoch, timeout) = (self.index, self.leader_epoch, self.commit_timeout);
        let shard = self.shard.clone();
        Box::pin(async move {
            let Some(shard) = shard.upgrade() else {
                return Err(Self::error(
                    code::NOT_LEADER_OR_FOLLOWER,
                    "shutting down".into(),
                ));
            };
            shard
                .replicas
                .check_min_insync(OFFSETS_TOPIC, index)
                .map_err(|c| Self::error(c, "the ISR is below min.insync.replicas".into()))?;
            let info = partition
                .append(batch, Ack::Durable, leader_epoch)
                .await
                .map_err(|e| Self::error(e.kafka_error_code(), e.to_string()))?;
            let end = info.last_offset + 1;
            let replicated = shard
                .replicas
                .wait_replicated(OFFSETS_TOPIC, index, &partition, end);
            match tokio::time::timeout(timeout, replicated).await {
                Ok(Ok(())) => Ok(info.base_offset),
                Ok(Err(c)) => Err(Self::error(c, format!("not replicated up to {end}"))),
                Err(_) => Err(Self::error(
                    code::REQUEST_TIMED_OUT,
                    format!("the high watermark did not reach {end} within {timeout:?}"),
                )),
            }
        })
    }

    fn log_end_offset(&self) -> i64 {
        Partition::log_end_offset(&self.partition)
    }

    fn log_start_offset(&self) -> i64 {
        Partition::log_start_offset(&self.partition)
    }

    fn read_batches(&self, offset: i64, max_bytes: u32) -> LocalFuture<Result<Bytes, GroupError>> {
        <Partition as OffsetLog>::read_batches(&self.partition, offset, max_bytes)
    }
}

/// This broker became the leader of offsets partition `index` at `leader_epoch`: drops any
/// groups a former leadership left loaded, then loads them from the log.
pub(crate) fn lead(shard: &Rc<Shard>, index: i32, partition: &Partition, leader_epoch: i32) {
    // Its log was not cut meanwhile (only a follower's is), so the snapshot stays valid.
    shard.groups.unload_partition(index, false);
    let log = Rc::new(ReplicatedOffsetLog {
        partition: partition.clone(),
        index,
        leader_epoch,
        shard: Rc::downgrade(shard),
        commit_timeout: Duration::from_millis(shard.config.replication.offsets_commit_timeout_ms),
    });
    let groups = shard.groups.clone();
    tokio::task::spawn_local(async move {
        match groups.load_led_partition(index, log).await {
            Ok(()) => tracing::info!(
                partition = index,
                leader_epoch,
                "coordinating the groups of a led offsets partition"
            ),
            Err(error) => {
                tracing::error!(partition = index, %error, "loading a led offsets partition failed")
            }
        }
    });
}

/// This broker stopped leading offsets partition `index` (it follows it, or is no replica):
/// its groups are unloaded and its snapshot forgotten (the fetcher may cut the log under it).
pub(crate) fn stop_leading(shard: &Shard, index: i32) {
    shard.groups.unload_partition(index, true);
}
