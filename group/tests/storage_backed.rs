//! The coordinator over the real storage engine: commits are durable appends to
//! `__consumer_offsets`, and a new shard (same data dir) replays them from segment files, with
//! and without a snapshot.

use std::path::Path;
use std::rc::Rc;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_group::{
    codes, offsets_partition_for, GroupConfig, GroupCoordinator, TopicLookup, OFFSETS_TOPIC,
};
use sluice_storage::{ShardStorage, StorageConfig};

struct Topics;

impl TopicLookup for Topics {
    fn partition_count(&self, topic: &str) -> Option<i32> {
        (topic == "orders").then_some(8)
    }
}

fn storage_config(dir: &Path) -> StorageConfig {
    StorageConfig {
        data_dir: dir.to_path_buf(),
        direct_io: false,
        group_commit_bytes_max: 1 << 20,
        tail_cache_bytes: 1 << 20,
        ring_entries: 64,
    }
}

fn commit_request(group: &str, partition: i32, offset: i64) -> OffsetCommitRequest {
    let mut p = OffsetCommitRequestPartition::default();
    p.partition_index = partition;
    p.committed_offset = offset;
    p.committed_metadata = Some(StrBytes::from_static_str("m"));
    let mut t = OffsetCommitRequestTopic::default();
    t.name = TopicName(StrBytes::from_static_str("orders"));
    t.partitions = vec![p];
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(StrBytes::from_string(group.to_string()));
    r.generation_id_or_member_epoch = -1;
    r.topics = vec![t];
    r
}

/// Opens a shard's storage and coordinator, loads the group's partition, runs `body`, and
/// shuts storage down (the coordinator only if `graceful`).
async fn with_shard<F, Fut>(dir: &Path, graceful: bool, body: F)
where
    F: FnOnce(GroupCoordinator) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let storage = ShardStorage::open(storage_config(dir)).expect("storage");
    let config = GroupConfig::new(dir.to_path_buf());
    let log_config = config.offsets_log_config();
    let coordinator = GroupCoordinator::new(config, Rc::new(Topics));
    let partition = offsets_partition_for("orders-group");
    let log = storage
        .open_partition(OFFSETS_TOPIC, partition, log_config)
        .expect("open partition");
    coordinator
        .load_partition(partition, log)
        .await
        .expect("load");
    body(coordinator.clone()).await;
    if graceful {
        coordinator.shutdown().await;
    }
    storage.shutdown().await.expect("storage shutdown");
}

fn fetched(c: &GroupCoordinator, partition: i32) -> i64 {
    let g = c.fetch_offsets(
        "orders-group",
        Some(&[("orders".to_string(), vec![partition])]),
    );
    assert_eq!(g.error_code, codes::NONE);
    g.topics[0].1[0].offset
}

#[test]
fn commits_survive_reopen_by_replay_and_by_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        with_shard(dir.path(), false, |c| async move {
            for (i, offset) in [(0, 100), (1, 200), (0, 150), (7, 7)] {
                let r = c
                    .offset_commit(commit_request("orders-group", i, offset), 8)
                    .await;
                assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
            }
            let r = c
                .offset_commit(commit_request("orders-group", 8, 1), 8)
                .await;
            assert_eq!(
                r.topics[0].partitions[0].error_code,
                codes::UNKNOWN_TOPIC_OR_PARTITION
            );
            assert_eq!(fetched(&c, 0), 150);
        })
        .await;
    });
    // No coordinator shutdown above: the reload replays the log (from segment files).
    tokio_uring::start(async {
        with_shard(dir.path(), true, |c| async move {
            assert_eq!(
                (fetched(&c, 0), fetched(&c, 1), fetched(&c, 7)),
                (150, 200, 7)
            );
            let r = c
                .offset_commit(commit_request("orders-group", 1, 201), 8)
                .await;
            assert_eq!(r.topics[0].partitions[0].error_code, codes::NONE);
        })
        .await;
    });
    let snapshot_dir = dir.path().join("group_snapshots");
    assert!(
        snapshot_dir
            .read_dir()
            .expect("snapshot dir")
            .next()
            .is_some(),
        "graceful shutdown snapshots"
    );
    tokio_uring::start(async {
        with_shard(dir.path(), true, |c| async move {
            assert_eq!(
                (fetched(&c, 0), fetched(&c, 1), fetched(&c, 7)),
                (150, 201, 7)
            );
        })
        .await;
    });
}

/// A commit acknowledged to the client survives a power loss of the storage under it: the
/// storage runs on the fault plan's power model, the shard dies without any shutdown, every
/// write no completed fdatasync covers is undone (the newest one torn), and the next shard
/// replays the acknowledged commits.
#[test]
fn acknowledged_commits_survive_a_power_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = sluice_storage::fault::FaultPlan::new();
    plan.model_power_loss();
    tokio_uring::start(async {
        let storage = ShardStorage::open_with_faults(storage_config(dir.path()), plan.clone())
            .expect("storage");
        let config = GroupConfig::new(dir.path().to_path_buf());
        let log_config = config.offsets_log_config();
        let coordinator = GroupCoordinator::new(config, Rc::new(Topics));
        let partition = offsets_partition_for("orders-group");
        let log = storage
            .open_partition(OFFSETS_TOPIC, partition, log_config)
            .expect("open partition");
        coordinator
            .load_partition(partition, log)
            .await
            .expect("load");
        for (index, offset) in [(0, 100), (1, 200), (0, 150), (7, 7), (3, 33)] {
            let response = coordinator
                .offset_commit(commit_request("orders-group", index, offset), 8)
                .await;
            assert_eq!(response.topics[0].partitions[0].error_code, codes::NONE);
        }
        // One more commit in flight, never acknowledged, when the power goes.
        let in_flight = coordinator.clone();
        tokio::task::spawn_local(async move {
            in_flight
                .offset_commit(commit_request("orders-group", 5, 55), 8)
                .await
        });
        tokio::task::yield_now().await;
    });
    let lost = plan.lose_power(61).expect("lose power");
    assert!(lost.changes_undone <= 2, "{lost:?}");
    tokio_uring::start(async {
        with_shard(dir.path(), true, |c| async move {
            assert_eq!(
                (
                    fetched(&c, 0),
                    fetched(&c, 1),
                    fetched(&c, 7),
                    fetched(&c, 3)
                ),
                (150, 200, 7, 33)
            );
            let unacknowledged = fetched(&c, 5);
            assert!(
                unacknowledged == 55 || unacknowledged == -1,
                "{unacknowledged}"
            );
        })
        .await;
    });
}
