//! The metadata state machine under openraft: applies committed entries to a
//! [`ClusterState`], publishes every new state on a watch channel, and builds, stores and
//! installs snapshots. The latest snapshot is kept in one file behind the [`StoreFile`] seam,
//! replaced atomically and durably before openraft is handed it (openraft purges the log up to
//! a snapshot once it has it, so the snapshot must already be on disk). Must never: apply an
//! entry twice, or change state other than by applying entries or installing a snapshot.
//!
//! On open the state is the stored snapshot's; openraft re-applies the committed entries after
//! it from the log.

use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::file::StoreFile;
use crate::state::{ClusterState, CommandReply};
use crate::{record, ClusterError, NodeId, TypeConfig};

/// A snapshot as stored on disk and sent to followers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    /// The serialized [`SnapshotData`].
    data: Vec<u8>,
}

/// The snapshot payload: everything applied up to `meta.last_log_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotData {
    state: ClusterState,
    membership: StoredMembership<NodeId, BasicNode>,
}

struct Inner<F> {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: ClusterState,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
    file: F,
}

/// The state machine (and its snapshot builder: clones share one state).
pub struct StateMachine<F> {
    inner: Arc<Mutex<Inner<F>>>,
    published: Arc<watch::Sender<Arc<ClusterState>>>,
}

impl<F> Clone for StateMachine<F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            published: self.published.clone(),
        }
    }
}

fn corrupt(message: impl ToString) -> ClusterError {
    ClusterError::Corrupt {
        what: "raft snapshot",
        message: message.to_string(),
    }
}

impl<F: StoreFile> StateMachine<F> {
    /// Opens the state machine from the snapshot in `file` (empty if none).
    pub fn open(mut file: F) -> Result<Self, ClusterError> {
        let bytes = file
            .read_all()
            .map_err(|e| ClusterError::io("raft snapshot read", e))?;
        let (records, valid_len) = record::scan(&bytes);
        // The file is only ever replaced whole (temp file, rename): anything but one intact
        // record, or nothing, is damage we must not paper over.
        if valid_len != bytes.len() || records.len() > 1 {
            return Err(corrupt(format!(
                "{} bytes, {} intact records",
                bytes.len(),
                records.len()
            )));
        }
        let mut inner = Inner {
            last_applied: None,
            membership: StoredMembership::default(),
            state: ClusterState::default(),
            snapshot: None,
            snapshots_built: 0,
            file,
        };
        if let Some(payload) = records.first() {
            let stored: StoredSnapshot = serde_json::from_slice(payload).map_err(corrupt)?;
            let data: SnapshotData = serde_json::from_slice(&stored.data).map_err(corrupt)?;
            inner.last_applied = stored.meta.last_log_id;
            inner.membership = data.membership;
            inner.state = data.state;
            inner.snapshot = Some(stored);
        }
        let (published, _) = watch::channel(Arc::new(inner.state.clone()));
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            published: Arc::new(published),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<F>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every applied state, newest last.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.published.subscribe()
    }

    /// The current applied state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.published.borrow().clone()
    }
}

fn store_snapshot<F: StoreFile>(file: &mut F, stored: &StoredSnapshot) -> Result<(), ClusterError> {
    let payload = serde_json::to_vec(stored).map_err(corrupt)?;
    let mut bytes = Vec::with_capacity(payload.len() + record::HEADER_BYTES);
    record::encode(&payload, &mut bytes);
    file.replace_synced(&bytes)
        .map_err(|e| ClusterError::io("raft snapshot write", e))
}

impl<F: StoreFile> RaftSnapshotBuilder<TypeConfig> for StateMachine<F> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = self.lock();
        let data = SnapshotData {
            state: inner.state.clone(),
            membership: inner.membership.clone(),
        };
        let data =
            serde_json::to_vec(&data).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        inner.snapshots_built += 1;
        let snapshot_id = match inner.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, inner.snapshots_built),
            None => format!("none-{}", inner.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        store_snapshot(&mut inner.file, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<F: StoreFile> RaftStateMachine<TypeConfig> for StateMachine<F> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandReply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            debug_assert!(inner
                .last_applied
                .is_none_or(|a| a.index < entry.log_id.index));
            inner.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => CommandReply::Done,
                EntryPayload::Normal(command) => inner.state.apply(entry.log_id.index, &command),
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandReply::Done
                }
            };
            inner.state.applied_index = entry.log_id.index;
            replies.push(reply);
        }
        self.published.send_replace(Arc::new(inner.state.clone()));
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        let mut inner = self.lock();
        store_snapshot(&mut inner.file, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.last_applied = meta.last_log_id;
        inner.membership = data.membership;
        inner.state = data.state;
        inner.snapshot = Some(stored);
        self.published.send_replace(Arc::new(inner.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
