//! Sluice's consumer-group coordinator: Kafka's classic group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup) and committed offsets (OffsetCommit, OffsetFetch, OffsetDelete), plus
//! the admin views (ListGroups, DescribeGroups, DeleteGroups).
//!
//! Owns: every group whose `__consumer_offsets` partition lives on this shard, their member state
//! machines, the shard's one deadline queue for session/rebalance timeouts, and the durable
//! encoding of offsets and group metadata as Kafka v2 record batches in those partitions (plus a
//! snapshot per partition so startup replays only the log tail).
//!
//! Must never: be shared across threads (everything is `Rc`/`RefCell` on one shard), hold a
//! `RefCell` borrow across an `.await`, answer an offset commit before its batch is durable, or
//! spawn a task or timer per group or member.
//!
//! # How the broker uses it
//! 1. On each shard: `let coordinator = GroupCoordinator::new(config, topics)` inside the shard's
//!    runtime (it spawns one local timer task), then for each `__consumer_offsets` partition `p`
//!    with `p % shard_count == shard`: open it with [`GroupConfig::offsets_log_config`] and call
//!    `coordinator.load_partition(p, partition).await` (or spawn it; requests for groups of a
//!    loading partition answer COORDINATOR_LOAD_IN_PROGRESS meanwhile).
//! 2. Route each group request to the shard owning `offsets_partition_for(group_id) % shard_count`
//!    and call the matching method with the decoded request and its API version; encode the
//!    returned response with the same version. FindCoordinator answers "this broker" (the
//!    broker does that itself).
//! 3. ListGroups: call [`GroupCoordinator::list_groups`] on every shard and concatenate.
//!    OffsetFetch v8+: split `groups` by owning shard, call
//!    [`GroupCoordinator::offset_fetch_group`] per group and concatenate in request order.
//!    DescribeGroups / DeleteGroups: per group id on its shard.
//! 4. On shutdown: `coordinator.shutdown().await` (final snapshots) before storage shuts down.
#![deny(missing_docs)]

mod admin;
pub mod codes;
mod coordinator;
#[cfg(test)]
mod coordinator_tests;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod log;
mod membership;
mod offsets;
mod pending;
mod records;
mod snapshot;
mod timers;

use std::path::PathBuf;

pub use coordinator::GroupCoordinator;
pub use group::GroupState;
pub use log::{LocalFuture, MemoryLog, OffsetLog};
pub use offsets::{FetchedGroup, FetchedOffset};
pub use pending::TxnOffset;
pub use records::{
    decode_batches, encode_batch, GroupMetadataValue, MemberMetadataValue, OffsetRecordValue,
    OffsetsRecord,
};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// `offsets.topic.num.partitions`: fixed, because the group -> partition mapping depends on it.
pub const OFFSETS_PARTITION_COUNT: i32 = 50;

/// The `__consumer_offsets` partition that owns `group_id`: Kafka's
/// `Utils.abs(groupId.hashCode()) % offsets.topic.num.partitions`, with Java's `String.hashCode`
/// over UTF-16 code units and Kafka's `abs` (which maps `i32::MIN` to 0, not to itself).
pub fn offsets_partition_for(group_id: &str) -> i32 {
    let hash = java_string_hash(group_id);
    let positive = kafka_abs(hash);
    debug_assert!(positive >= 0);
    positive % OFFSETS_PARTITION_COUNT
}

/// Java's `String.hashCode()`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Kafka's `Utils.abs`: `n & 0x7fffffff` for `i32::MIN`, `|n|` otherwise.
fn kafka_abs(n: i32) -> i32 {
    if n == i32::MIN {
        0
    } else {
        n.abs()
    }
}

/// Coordinator settings; Kafka's broker config names in the field docs.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms` (default 6000).
    pub session_timeout_ms_min: i32,
    /// `group.max.session.timeout.ms` (default 1800000).
    pub session_timeout_ms_max: i32,
    /// `group.initial.rebalance.delay.ms` (default 3000): how long a new (Empty) group waits for
    /// more members before its first generation.
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size` (default i32::MAX).
    pub max_group_size: usize,
    /// `offsets.retention.minutes` (default 7 days): offsets of an empty group expire this long
    /// after it became empty (simple consumers: after the commit).
    pub offsets_retention_minutes: i64,
    /// `offsets.retention.check.interval.ms` (default 600000).
    pub offsets_retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes` (default 4096).
    pub offset_metadata_max_bytes: usize,
    /// How often a partition whose log grew is snapshotted (Sluice; default 60000).
    pub offsets_snapshot_interval_ms: u64,
    /// The broker's data dir; snapshots go to `<data_dir>/group_snapshots/`.
    pub data_dir: PathBuf,
}

impl GroupConfig {
    /// Kafka's defaults with snapshots under `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            session_timeout_ms_min: 6_000,
            session_timeout_ms_max: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_group_size: i32::MAX as usize,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            offsets_snapshot_interval_ms: 60_000,
            data_dir,
        }
    }

    /// The log config the broker must open `__consumer_offsets` partitions with: 100 MiB
    /// segments (`offsets.topic.segment.bytes`) and a retention long enough that a segment is
    /// only deleted when several snapshots already cover it (snapshots run every
    /// `offsets_snapshot_interval_ms`; retention is at least 24 h and 100 intervals).
    pub fn offsets_log_config(&self) -> sluice_storage::LogConfig {
        let interval_ms =
            i64::try_from(self.offsets_snapshot_interval_ms).unwrap_or(i64::MAX / 200);
        let retention_ms = (24 * 3600 * 1000i64).max(interval_ms.saturating_mul(100));
        sluice_storage::LogConfig {
            segment_bytes: 100 * 1024 * 1024,
            segment_ms: retention_ms / 4,
            retention_ms,
            // Compacted like Kafka's: every record has a key (group or group+partition) and a
            // deleted offset or group is a tombstone. A tombstone may only go once a snapshot
            // covers it (startup replays from the newest snapshot, so an older value below it
            // must not come back): keeping tombstones as long as retention keeps segments
            // gives the same guarantee retention already relies on.
            cleanup_policy: sluice_storage::CleanupPolicy {
                compact: true,
                delete: true,
            },
            delete_retention_ms: retention_ms,
            ..sluice_storage::LogConfig::default()
        }
    }

    pub(crate) fn offsets_retention_ms(&self) -> i64 {
        self.offsets_retention_minutes.saturating_mul(60_000)
    }

    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        // No '-' in the name: storage recognises partition dirs as `<topic>-<partition>`.
        self.data_dir.join("group_snapshots")
    }
}

/// The broker's view of its topics, used to validate OffsetCommit and OffsetDelete.
pub trait TopicLookup {
    /// Number of partitions of `topic`, or None if the topic does not exist.
    fn partition_count(&self, topic: &str) -> Option<i32>;
}

/// Who sent a JoinGroup (from the request header and the connection), shown by DescribeGroups
/// and used as the prefix of generated member ids.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The request header's client id.
    pub client_id: String,
    /// The peer address, e.g. "/127.0.0.1".
    pub client_host: String,
}

/// Errors of the coordinator's own operations (loading, persisting); protocol errors are Kafka
/// error codes inside the responses instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// Reading the offsets log or a snapshot failed.
    #[error("{context}: {source}")]
    Io {
        /// what was being done
        context: String,
        /// the OS error
        source: std::io::Error,
    },
    /// The storage engine refused or failed an operation.
    #[error("{context}: {message}")]
    Storage {
        /// what was being done
        context: String,
        /// the storage error, rendered
        message: String,
        /// the Kafka error code to answer with
        code: i16,
    },
    /// A record in the log or a snapshot could not be decoded.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// which structure
        what: &'static str,
        /// what was wrong
        detail: String,
    },
    /// The partition is not one this coordinator was given.
    #[error("__consumer_offsets partition {0} is not loaded on this shard")]
    NotLoaded(i32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // Values computed with java.lang.String#hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("my-group"), -1_906_497_762);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE (a classic Java example).
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        // Non-BMP characters hash as two UTF-16 surrogates: U+1F600 = D83D DE00.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn partition_uses_kafka_abs() {
        // Utils.abs(Integer.MIN_VALUE) == 0, so the group lands on partition 0.
        assert_eq!(offsets_partition_for("polygenelubricants"), 0);
        // Negative hash: abs before modulo, as Kafka does (a Java `%` of a negative is negative).
        assert_eq!(offsets_partition_for("my-group"), 12);
        assert_eq!(offsets_partition_for("test-group"), 12);
        assert_eq!(offsets_partition_for("\u{1F600}"), 49);
        for id in [
            "",
            "a",
            "group-1",
            "console-consumer-12345",
            "zzzzzzzzzzzz",
            "\u{1F600}x",
        ] {
            let hash = java_string_hash(id);
            let expected = if hash == i32::MIN { 0 } else { hash.abs() % 50 };
            let p = offsets_partition_for(id);
            assert_eq!(p, expected, "{id}");
            assert!((0..OFFSETS_PARTITION_COUNT).contains(&p));
        }
        assert_eq!(offsets_partition_for("hello"), 99_162_322 % 50);
    }
}
