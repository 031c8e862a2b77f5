//! The raft log store and the state machine against their durability contracts: openraft's
//! own storage conformance suite, torn tails, power loss through the file seam, poisoning after
//! a failed fdatasync, truncation, purge compaction, and snapshots surviving a reopen.

use std::collections::BTreeMap;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, Vote,
};
use sluice_cluster::file::{DiskFile, PowerLossFile};
use sluice_cluster::log_store::LogStore;
use sluice_cluster::state::{Command, CommandReply};
use sluice_cluster::state_machine::StateMachine;
use sluice_cluster::{NodeId, TypeConfig};
use uuid::Uuid;

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn register(term: u64, index: u64, broker: i32) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::RegisterBroker {
            id: broker,
            host: "127.0.0.1".into(),
            port: 9092,
            listeners: Vec::new(),
            incarnation: Uuid::new_v4(),
            cluster_id: String::new(),
        }),
    }
}

fn indexes(store: &LogStore<PowerLossFile>) -> Vec<u64> {
    store.log_ids().iter().map(|id| id.index).collect()
}

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore<DiskFile>, StateMachine<DiskFile>, tempfile::TempDir>
    for DiskBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<DiskFile>,
            StateMachine<DiskFile>,
        ),
        StorageError<NodeId>,
    > {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let log = DiskFile::open(&dir.path().join("raft.log"))
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        let snap = DiskFile::open(&dir.path().join("raft.snapshot"))
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        let log = LogStore::open(log).map_err(|e| openraft::StorageIOError::write(&e))?;
        let sm = StateMachine::open(snap).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite_on_disk() {
    Suite::test_all(DiskBuilder).unwrap();
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_a_failed_sync_poisons() {
    let file = PowerLossFile::new();
    let mut store = LogStore::open(file.clone()).unwrap();
    store
        .blocking_append((1..=5).map(|i| register(1, i, 1)))
        .await
        .unwrap();
    let durable = file.contents();
    file.fail_next_sync();
    // The sync fails: openraft must hear an error, not a success.
    assert!(store.blocking_append([register(1, 6, 1)]).await.is_err());
    // Poisoned: even a vote (a different record kind) is refused now.
    assert!(store.save_vote(&Vote::new(2, 1)).await.is_err());
    // The machine dies with 10 bytes of the unsynced record on the platter.
    file.lose_power(10);
    assert_eq!(file.contents().len(), durable.len() + 10);
    let mut reopened = LogStore::open(file.clone()).unwrap();
    assert_eq!(indexes(&reopened), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        file.contents(),
        durable,
        "the torn tail is cut from the file"
    );
    // The log takes writes again after the restart, at the cut.
    reopened.blocking_append([register(2, 6, 1)]).await.unwrap();
    let reopened = LogStore::open(file.clone()).unwrap();
    assert_eq!(indexes(&reopened), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(reopened.log_ids()[5].leader_id.term, 2);
}

#[tokio::test]
async fn power_loss_keeps_exactly_what_was_acknowledged() {
    let file = PowerLossFile::new();
    let mut store = LogStore::open(file.clone()).unwrap();
    store.save_vote(&Vote::new(3, 2)).await.unwrap();
    store
        .blocking_append((1..=3).map(|i| register(3, i, 1)))
        .await
        .unwrap();
    assert_eq!(file.unsynced_len(), 0, "an acknowledged append is synced");
    // The committed id is written without a sync: it may be lost, and nothing else is.
    store.save_committed(Some(log_id(3, 3))).await.unwrap();
    assert!(file.unsynced_len() > 0);
    file.lose_power(0);
    let mut reopened = LogStore::open(file.clone()).unwrap();
    assert_eq!(indexes(&reopened), vec![1, 2, 3]);
    assert_eq!(reopened.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(reopened.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn a_corrupt_record_cuts_the_log_there() {
    let file = PowerLossFile::new();
    let mut store = LogStore::open(file.clone()).unwrap();
    store.blocking_append([register(1, 1, 1)]).await.unwrap();
    let first_len = file.contents().len();
    store
        .blocking_append((2..=4).map(|i| register(1, i, 1)))
        .await
        .unwrap();
    file.corrupt_byte(first_len + 20);
    let reopened = LogStore::open(file.clone()).unwrap();
    assert_eq!(indexes(&reopened), vec![1]);
    assert_eq!(file.contents().len(), first_len);
}

#[tokio::test]
async fn truncate_and_purge_survive_reopen_and_purge_shrinks_the_file() {
    let file = PowerLossFile::new();
    let mut store = LogStore::open(file.clone()).unwrap();
    store
        .blocking_append((1..=10).map(|i| register(1, i, 1)))
        .await
        .unwrap();
    store.truncate(log_id(1, 9)).await.unwrap();
    let mut reopened = LogStore::open(file.clone()).unwrap();
    assert_eq!(indexes(&reopened), (1..=8).collect::<Vec<_>>());
    // An entry at an index replaces the conflicting suffix.
    reopened.blocking_append([register(2, 8, 1)]).await.unwrap();
    let len_before_purge = file.contents().len();
    reopened.purge(log_id(1, 5)).await.unwrap();
    assert!(file.contents().len() < len_before_purge);
    assert_eq!(file.unsynced_len(), 0);
    let mut reopened = LogStore::open(file.clone()).unwrap();
    assert_eq!(indexes(&reopened), vec![6, 7, 8]);
    assert_eq!(reopened.log_ids()[2].leader_id.term, 2);
    let state = reopened.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    let entries = reopened.try_get_log_entries(6..8).await.unwrap();
    assert_eq!(entries.len(), 2);
    // Purging everything still leaves the last purged id as the log's end.
    reopened.purge(log_id(2, 8)).await.unwrap();
    let mut reopened = LogStore::open(file.clone()).unwrap();
    let state = reopened.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    assert!(indexes(&reopened).is_empty());
}

#[tokio::test]
async fn state_machine_snapshot_survives_reopen_and_installs_elsewhere() {
    let file = PowerLossFile::new();
    let mut sm = StateMachine::open(file.clone()).unwrap();
    let replies = sm
        .apply([register(1, 1, 7), register(1, 2, 8)])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![
            CommandReply::Registered { epoch: 1 },
            CommandReply::Registered { epoch: 2 }
        ]
    );
    let fence = Entry {
        log_id: log_id(1, 3),
        payload: EntryPayload::Normal(Command::FenceBroker { id: 7, epoch: 1 }),
    };
    assert_eq!(sm.apply([fence]).await.unwrap(), vec![CommandReply::Done]);
    let before = sm.state();
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
    assert_eq!(file.unsynced_len(), 0, "a built snapshot is durable");
    file.lose_power(0);

    let mut reopened = StateMachine::open(file.clone()).unwrap();
    assert_eq!(reopened.state(), before);
    assert!(reopened.state().brokers[&7].fenced);
    let (applied, _) = reopened.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 3)));

    let other_file = PowerLossFile::new();
    let mut other = StateMachine::open(other_file.clone()).unwrap();
    let current = reopened.get_current_snapshot().await.unwrap().unwrap();
    other
        .install_snapshot(&current.meta, current.snapshot)
        .await
        .unwrap();
    assert_eq!(other.state(), before);
    let reopened_other = StateMachine::open(other_file).unwrap();
    assert_eq!(reopened_other.state(), before);
    let expected: BTreeMap<i32, i64> = [(7, 1), (8, 2)].into_iter().collect();
    let epochs: BTreeMap<i32, i64> = before.brokers.values().map(|b| (b.id, b.epoch)).collect();
    assert_eq!(epochs, expected);
}
