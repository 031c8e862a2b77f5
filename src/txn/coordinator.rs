//! The transaction coordinator of one shard: the transactional ids whose
//! `__transaction_state` partition this shard owns (`partition % shards`), as the group
//! coordinator owns the groups of its `__consumer_offsets` partitions. In a cluster it holds
//! only the partitions this broker leads (`leadership`), each at its coordinator epoch (the
//! partition's leader epoch, carried in every marker).
//!
//! Every state change is appended (durably; in a cluster, in every ISR member with
//! `min.insync.replicas` honoured) to the id's state partition before it is acted on or
//! answered; a restart or a new leader replays the partition, finishes the commits and
//! aborts that were prepared, and aborts (fencing, with an epoch bump) the transactions that
//! were still open, as a timeout would. One operation per id runs at a time (another gets
//! CONCURRENT_TRANSACTIONS, which clients retry). Must never: answer before its state change
//! is replicated, write a Complete state before every marker is written, act on a partition
//! it stopped leading, or hold a `RefCell` borrow across an await.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use sluice_storage::{Ack, Partition, ReadBound};

use super::log::{decode_key, decode_value, encode_key, encode_value};
use super::partition::Marker;
use super::remote_markers::{MarkerChannel, RemoteMarker, Route};
use super::state::{EndAction, TxnMetadata, TxnState};
use super::{state_partition_for, TxnConfig, TRANSACTION_STATE_TOPIC};
use crate::errors::code;
use crate::shard::Shard;

/// Bytes one replay read asks for.
const REPLAY_READ_BYTES: u32 = 1 << 20;
/// Pause before a failed marker is written again.
const MARKER_RETRY_MS: u64 = 100;

/// One shard's transaction coordinator (cheap to clone).
#[derive(Clone)]
pub struct TxnCoordinator {
    inner: Rc<Inner>,
}

struct Inner {
    config: TxnConfig,
    txns: RefCell<HashMap<String, TxnMetadata>>,
    /// Ids with an operation in flight.
    busy: RefCell<HashSet<String>>,
    /// Loaded state partitions.
    logs: RefCell<HashMap<i32, StateLog>>,
    /// State partitions being replayed, with the coordinator epoch they load at.
    loading: RefCell<HashMap<i32, i32>>,
    /// Connections to the other brokers' partition leaders, for their markers.
    markers: MarkerChannel,
}

/// A loaded state partition.
#[derive(Clone)]
struct StateLog {
    partition: Partition,
    /// The partition's leader epoch in a cluster (0 on a single broker): stamped into its
    /// batches and carried in the markers as the coordinator epoch.
    coordinator_epoch: i32,
    /// In a cluster: an append counts once the ISR has it.
    replicated: bool,
}

/// An id's operation slot; released on drop (so a cancelled request frees it too).
struct Busy {
    inner: Rc<Inner>,
    id: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.inner.busy.borrow_mut().remove(&self.id);
    }
}

impl TxnCoordinator {
    /// A coordinator with nothing loaded.
    pub fn new(config: TxnConfig) -> Self {
        Self {
            inner: Rc::new(Inner {
                config,
                txns: RefCell::default(),
                busy: RefCell::default(),
                logs: RefCell::default(),
                loading: RefCell::default(),
                markers: MarkerChannel::default(),
            }),
        }
    }

    /// This shard's connections to other brokers (markers, coordinator calls).
    pub fn peers(&self) -> &super::peers::PeerConnections {
        self.inner.markers.peers()
    }

    /// The settings.
    pub fn config(&self) -> &TxnConfig {
        &self.inner.config
    }

    /// The state partition of `transactional_id`.
    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        state_partition_for(transactional_id, self.inner.config.state_partitions)
    }

    /// The partition of `id` if it is loaded here, else the error to answer.
    fn gate(&self, id: &str) -> Result<i32, i16> {
        let partition = self.partition_for(id);
        if self.inner.logs.borrow().contains_key(&partition) {
            Ok(partition)
        } else if self.inner.loading.borrow().contains_key(&partition) {
            Err(code::COORDINATOR_LOAD_IN_PROGRESS)
        } else {
            Err(code::NOT_COORDINATOR)
        }
    }

    fn claim(&self, id: &str) -> Result<Busy, i16> {
        if !self.inner.busy.borrow_mut().insert(id.to_string()) {
            return Err(code::CONCURRENT_TRANSACTIONS);
        }
        Ok(Busy {
            inner: self.inner.clone(),
            id: id.to_string(),
        })
    }

    fn metadata(&self, id: &str) -> Option<TxnMetadata> {
        self.inner.txns.borrow().get(id).cloned()
    }

    /// Whether state partition `partition` is loaded here at `coordinator_epoch`.
    fn coordinates(&self, partition: i32, coordinator_epoch: i32) -> bool {
        self.inner
            .logs
            .borrow()
            .get(&partition)
            .is_some_and(|log| log.coordinator_epoch == coordinator_epoch)
    }

    /// The coordinator epoch of a loaded state partition.
    fn coordinator_epoch(&self, partition: i32) -> Result<i32, i16> {
        self.inner
            .logs
            .borrow()
            .get(&partition)
            .map(|log| log.coordinator_epoch)
            .ok_or(code::NOT_COORDINATOR)
    }

    /// Appends `meta` as `id`'s newest state and, once durable (in a cluster: once the high
    /// watermark passed it with the ISR at `min.insync.replicas` or more), makes it current;
    /// NOT_COORDINATOR if the partition was unloaded meanwhile.
    async fn persist(
        &self,
        shard: &Shard,
        partition: i32,
        id: &str,
        meta: TxnMetadata,
    ) -> Result<(), i16> {
        debug_assert!(
            self.metadata(id)
                .is_none_or(|old| meta.state.may_follow(old.state) || old.state == meta.state),
            "illegal transition"
        );
        let records = [(encode_key(id), Some(encode_value(&meta)))];
        self.append_state(shard, partition, id, &records).await?;
        self.inner.txns.borrow_mut().insert(id.to_string(), meta);
        Ok(())
    }

    /// Appends `records` (keys and values, or tombstones) to state partition `partition`,
    /// durably and, in a cluster, replicated to the ISR with `min.insync.replicas` honoured;
    /// NOT_COORDINATOR if the partition was unloaded meanwhile. `label` names the records in
    /// the log lines.
    async fn append_state(
        &self,
        shard: &Shard,
        partition: i32,
        label: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), i16> {
        let log = self.inner.logs.borrow().get(&partition).cloned();
        let Some(log) = log else {
            return Err(code::NOT_COORDINATOR);
        };
        if log.replicated {
            // Kafka's coordinator answers a short ISR as COORDINATOR_NOT_AVAILABLE (retriable).
            shard
                .replicas
                .check_min_insync(TRANSACTION_STATE_TOPIC, partition)
                .map_err(|_| code::COORDINATOR_NOT_AVAILABLE)?;
        }
        let batch = sluice_group::encode_batch(records, crate::server::now_ms());
        let info = match log
            .partition
            .append(batch, Ack::Durable, log.coordinator_epoch)
            .await
        {
            Ok(info) => info,
            Err(error) => {
                tracing::error!(transactional_id = label, %error, "persisting transaction state failed");
                return Err(code::COORDINATOR_NOT_AVAILABLE);
            }
        };
        if log.replicated {
            let end = info.last_offset + 1;
            let timeout = Duration::from_millis(self.inner.config.marker_write_timeout_ms.max(1));
            let replicated = shard.replicas.wait_replicated(
                TRANSACTION_STATE_TOPIC,
                partition,
                &log.partition,
                end,
            );
            match tokio::time::timeout(timeout, replicated).await {
                Ok(Ok(())) => {}
                Ok(Err(code::NOT_LEADER_OR_FOLLOWER)) => return Err(code::NOT_COORDINATOR),
                Ok(Err(error_code)) => {
                    tracing::warn!(
                        transactional_id = label,
                        error_code,
                        end,
                        "transaction state not replicated"
                    );
                    return Err(code::COORDINATOR_NOT_AVAILABLE);
                }
                Err(_) => {
                    tracing::warn!(
                        transactional_id = label,
                        end,
                        "transaction state not replicated in time"
                    );
                    return Err(code::COORDINATOR_NOT_AVAILABLE);
                }
            }
        }
        if !self.coordinates(partition, log.coordinator_epoch) {
            return Err(code::NOT_COORDINATOR);
        }
        Ok(())
    }

    /// Replays state partition `partition` (opened as `log`) on a single broker, then
    /// finishes what it left half done. Requests for its ids answer
    /// COORDINATOR_LOAD_IN_PROGRESS meanwhile.
    pub async fn load_partition(&self, shard: Rc<Shard>, partition: i32, log: Partition) {
        self.load(shard, partition, log, 0, false).await
    }

    /// In a cluster, this broker leads state partition `partition` at `leader_epoch`:
    /// replays it as [`TxnCoordinator::load_partition`] does, at that coordinator epoch.
    pub async fn lead_partition(
        &self,
        shard: Rc<Shard>,
        partition: i32,
        log: Partition,
        leader_epoch: i32,
    ) {
        self.load(shard, partition, log, leader_epoch, true).await
    }

    /// Forgets state partition `partition` and its ids (this broker stopped leading it): their
    /// requests answer NOT_COORDINATOR, a load under way is dropped when it ends.
    pub fn unload_partition(&self, partition: i32) {
        let was_loaded = self.inner.logs.borrow_mut().remove(&partition).is_some();
        self.inner.loading.borrow_mut().remove(&partition);
        let partitions = self.inner.config.state_partitions;
        self.inner
            .txns
            .borrow_mut()
            .retain(|id, _| state_partition_for(id, partitions) != partition);
        if was_loaded {
            tracing::info!(partition, "unloaded transaction state");
        }
    }

    /// Replays the whole of `log` (to its log end: a new leader's log is what its followers
    /// will hold), and in a cluster waits until the high watermark reached that end, so that
    /// nothing is acted on that a later leader might not have; then serves the partition and
    /// finishes what it left half done.
    async fn load(
        &self,
        shard: Rc<Shard>,
        partition: i32,
        log: Partition,
        coordinator_epoch: i32,
        replicated: bool,
    ) {
        self.inner
            .loading
            .borrow_mut()
            .insert(partition, coordinator_epoch);
        let mut states: HashMap<String, Option<TxnMetadata>> = HashMap::new();
        let mut offset = log.log_start_offset();
        let replayed = loop {
            let read = log.read_bounded(offset, REPLAY_READ_BYTES, true, ReadBound::DurableEnd);
            let slice = match read.await {
                Ok(slice) => slice,
                Err(error) => break Err(error.to_string()),
            };
            if slice.chunks.is_empty() {
                break Ok(());
            }
            let mut bytes = Vec::new();
            for chunk in &slice.chunks {
                match log.chunk_bytes(chunk).await {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(error) => return self.load_failed(partition, &error.to_string()),
                }
            }
            let next = sluice_storage::batch::headers(&bytes)
                .last()
                .map(|h| h.last_offset() + 1);
            match sluice_group::decode_batches(&bytes) {
                Ok(records) => {
                    for (_, key, value) in records {
                        let Ok(id) = decode_key(&key) else {
                            tracing::warn!(partition, "skipping an unreadable transaction key");
                            continue;
                        };
                        match value.map(|v| decode_value(&v)) {
                            None => {
                                states.insert(id, None);
                            }
                            Some(Ok(meta)) => {
                                states.insert(id, Some(meta));
                            }
                            Some(Err(error)) => {
                                tracing::warn!(partition, %error, "skipping a transaction record")
                            }
                        }
                    }
                }
                Err(error) => break Err(error.to_string()),
            }
            match next {
                Some(next) if next > offset => offset = next,
                _ => break Ok(()),
            }
        };
        if let Err(error) = replayed {
            return self.load_failed(partition, &error);
        }
        let loaded_to = offset.max(log.log_end_offset());
        if replicated {
            let caught_up =
                shard
                    .replicas
                    .wait_replicated(TRANSACTION_STATE_TOPIC, partition, &log, loaded_to);
            match caught_up.await {
                Ok(()) | Err(crate::replication::NOT_ENOUGH_REPLICAS_AFTER_APPEND) => {}
                Err(error_code) => {
                    self.load_failed(
                        partition,
                        &format!("lost the partition while loading ({error_code})"),
                    );
                    return;
                }
            }
        }
        if self.inner.loading.borrow().get(&partition) != Some(&coordinator_epoch) {
            tracing::info!(
                partition,
                coordinator_epoch,
                "a transaction state load was overtaken by a leadership change"
            );
            return;
        }
        let mut unfinished = Vec::new();
        {
            let mut txns = self.inner.txns.borrow_mut();
            for (id, meta) in states {
                let Some(meta) = meta else { continue };
                if matches!(
                    meta.state,
                    TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
                ) {
                    unfinished.push(id.clone());
                }
                txns.insert(id, meta);
            }
        }
        self.inner.logs.borrow_mut().insert(
            partition,
            StateLog {
                partition: log,
                coordinator_epoch,
                replicated,
            },
        );
        self.inner.loading.borrow_mut().remove(&partition);
        tracing::info!(
            partition,
            coordinator_epoch,
            loaded_to,
            unfinished = unfinished.len(),
            "loaded transaction state"
        );
        for id in unfinished {
            let coordinator = self.clone();
            let shard = shard.clone();
            crate::runtime::spawn(async move {
                coordinator.finish_after_restart(&shard, &id).await;
            });
        }
    }

    fn load_failed(&self, partition: i32, error: &str) {
        self.inner.loading.borrow_mut().remove(&partition);
        self.inner.txns.borrow_mut().retain(|id, _| {
            state_partition_for(id, self.inner.config.state_partitions) != partition
        });
        tracing::error!(partition, error, "loading transaction state failed");
    }

    /// After a restart: a prepared commit or abort is finished; an open transaction is
    /// aborted with a bumped epoch (its producer is fenced, as after a timeout).
    async fn finish_after_restart(&self, shard: &Rc<Shard>, id: &str) {
        loop {
            let result = match self.metadata(id).map(|m| m.state) {
                Some(TxnState::PrepareCommit) | Some(TxnState::PrepareAbort) => {
                    match (self.gate(id), self.claim(id)) {
                        (Ok(partition), Ok(_busy)) => self
                            .write_markers_and_complete(shard, partition, id)
                            .await
                            .map(|_| ()),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    }
                }
                Some(TxnState::Ongoing) => self.fence_and_abort(shard, id).await,
                _ => Ok(()),
            };
            match result {
                Ok(()) => return,
                Err(code::NOT_COORDINATOR) => return, // the new leader finishes it
                Err(error_code) => {
                    tracing::warn!(
                        transactional_id = id,
                        error_code,
                        "finishing a transaction after restart failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(MARKER_RETRY_MS * 10)).await;
                }
            }
        }
    }

    /// InitProducerId with a transactional id: the id's producer id with its epoch bumped
    /// (a new producer id for a new id or an exhausted epoch), after aborting a transaction
    /// the previous producer left open.
    pub async fn init_producer_id(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        timeout_ms: i32,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<(i64, i16), i16> {
        if timeout_ms <= 0 || timeout_ms > self.inner.config.timeout_ms_max {
            return Err(code::INVALID_TRANSACTION_TIMEOUT);
        }
        let partition = self.gate(id)?;
        if let Some(meta) = self.metadata(id) {
            if meta.state == TxnState::Ongoing {
                // Fence the previous producer and abort what it left open first.
                self.fence_and_abort(shard, id).await?;
            }
        }
        let busy = self.claim(id)?;
        let now_ms = crate::server::now_ms();
        let next = match self.metadata(id) {
            None => {
                let allocated = crate::api::allocate_producer_id(shard).await?;
                TxnMetadata::empty(allocated, 0, timeout_ms, now_ms)
            }
            Some(meta) => {
                if meta.state.is_preparing() || meta.state == TxnState::Ongoing {
                    return Err(code::CONCURRENT_TRANSACTIONS);
                }
                // KIP-360: a producer that knows its id must still hold the current epoch.
                if producer_id >= 0
                    && (producer_id != meta.producer_id || producer_epoch != meta.producer_epoch)
                {
                    return Err(if producer_epoch < meta.producer_epoch {
                        code::PRODUCER_FENCED
                    } else {
                        code::INVALID_PRODUCER_EPOCH
                    });
                }
                let (producer_id, producer_epoch) = if meta.epoch_exhausted() {
                    (crate::api::allocate_producer_id(shard).await?, 0)
                } else {
                    (meta.producer_id, meta.producer_epoch + 1)
                };
                TxnMetadata::empty(producer_id, producer_epoch, timeout_ms, now_ms)
            }
        };
        let answer = (next.producer_id, next.producer_epoch);
        self.persist(shard, partition, id, next).await?;
        drop(busy);
        Ok(answer)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: adds `partitions` to the transaction (starting
    /// it if none is open), durably, then registers them with their owning shards so that
    /// the producer's transactional batches are admitted there. With `verify_only`, only
    /// checks that they are in the ongoing transaction (INVALID_TXN_STATE otherwise).
    /// `client_txn_version` is the protocol the client speaks (2 for the implicit adds of
    /// Produce v12 and TxnOffsetCommit v5); a transaction this starts records it.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_partitions(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
        verify_only: bool,
        client_txn_version: i16,
    ) -> Result<(), i16> {
        let partition = self.gate(id)?;
        let meta = self.metadata(id).ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        meta.check_producer(producer_id, producer_epoch)?;
        let added = meta.state == TxnState::Ongoing
            && partitions.iter().all(|p| meta.partitions.contains(p));
        if verify_only || added {
            // Already in (no slot needed, so concurrent implicit adds of the same partitions
            // do not answer each other CONCURRENT_TRANSACTIONS).
            return if added {
                Ok(())
            } else {
                Err(code::INVALID_TXN_STATE)
            };
        }
        let _busy = self.claim(id)?;
        if meta.state.is_preparing() {
            return Err(code::CONCURRENT_TRANSACTIONS);
        }
        if meta.state == TxnState::Dead {
            return Err(code::INVALID_TXN_STATE);
        }
        let now_ms = crate::server::now_ms();
        let mut next = meta.clone();
        if meta.state != TxnState::Ongoing {
            next.partitions.clear();
            next.start_ms = now_ms;
            next.client_txn_version = client_txn_version;
        } else {
            next.client_txn_version = next.client_txn_version.max(client_txn_version);
        }
        let new: Vec<(String, i32)> = partitions
            .into_iter()
            .filter(|p| !next.partitions.contains(p))
            .collect();
        if new.is_empty() && meta.state == TxnState::Ongoing {
            return Ok(());
        }
        next.partitions.extend(new.iter().cloned());
        next.state = TxnState::Ongoing;
        next.last_update_ms = now_ms;
        self.persist(shard, partition, id, next).await?;
        register_partitions(shard, producer_id, producer_epoch, &new).await
    }

    /// EndTxn: persists PrepareCommit/PrepareAbort, writes the markers, persists the
    /// Complete state, then answers the producer id and epoch the producer goes on with. A
    /// retry of an end that already completed answers NONE.
    ///
    /// With `tv2` (EndTxn v5, KIP-890) the prepared state carries the epoch bumped by one
    /// (the markers are written with it, so every batch of the transaction is older than its
    /// marker) and the answer is that epoch; an exhausted epoch rotates to a new producer id
    /// at epoch 0 once the markers are written. A retry names the epoch before the bump (or
    /// the previous producer id across a rotation). An abort with no transaction open still
    /// bumps the epoch, as Kafka does (the client may have written nothing yet).
    pub async fn end_txn(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        tv2: bool,
    ) -> Result<(i64, i16), i16> {
        let partition = self.gate(id)?;
        let meta = self.metadata(id).ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        let action = meta.end_action(producer_id, producer_epoch, commit, tv2)?;
        let _busy = self.claim(id)?;
        if action == EndAction::AlreadyEnded {
            return Ok((meta.producer_id, meta.producer_epoch));
        }
        let next_producer_id = if tv2 && meta.epoch_exhausted() {
            Some(crate::api::allocate_producer_id(shard).await?)
        } else {
            None
        };
        let prepared = meta.prepared_end(commit, tv2, next_producer_id, crate::server::now_ms());
        let (prepared_epoch, prepared_version) =
            (prepared.producer_epoch, prepared.client_txn_version);
        self.persist(shard, partition, id, prepared).await?;
        // One line per transaction end: debug, as Kafka logs it (thousands per second under
        // small transactions).
        tracing::debug!(
            transactional_id = id,
            commit,
            producer_epoch = prepared_epoch,
            client_txn_version = prepared_version,
            "transaction prepared; writing markers"
        );
        if self.inner.config.marker_delay_ms > 0 {
            // The test-only pause: its tests wait for this line to kill the broker inside it.
            tracing::info!(
                transactional_id = id,
                commit,
                producer_epoch = prepared_epoch,
                client_txn_version = prepared_version,
                "transaction prepared; writing markers"
            );
            tokio::time::sleep(Duration::from_millis(self.inner.config.marker_delay_ms)).await;
        }
        self.write_markers_and_complete(shard, partition, id).await
    }

    /// Aborts `id`'s open transaction with its epoch bumped, so the producer that opened it
    /// is fenced (timeouts, a new InitProducerId, a restart).
    async fn fence_and_abort(&self, shard: &Rc<Shard>, id: &str) -> Result<(), i16> {
        let partition = self.gate(id)?;
        let _busy = self.claim(id)?;
        let Some(meta) = self.metadata(id) else {
            return Ok(());
        };
        if meta.state != TxnState::Ongoing {
            return Ok(());
        }
        let mut prepared = meta;
        if prepared.producer_epoch < i16::MAX - 1 {
            prepared.producer_epoch += 1;
        }
        prepared.state = TxnState::PrepareAbort;
        prepared.last_update_ms = crate::server::now_ms();
        self.persist(shard, partition, id, prepared).await?;
        self.write_markers_and_complete(shard, partition, id)
            .await
            .map(|_| ())
    }

    /// Writes the markers of `id`'s prepared transaction to every partition in it (retrying
    /// each until it is written: local partitions on their shard, the others' through
    /// WriteTxnMarkers to their leader, grouped per broker), then persists
    /// CompleteCommit/CompleteAbort (with the producer id rotated if the prepared state names
    /// a next one). Stops with NOT_COORDINATOR once this broker no longer coordinates at the
    /// epoch it started with (the new coordinator resumes the transaction). The caller holds
    /// the id's slot. Returns the producer id and epoch after it.
    async fn write_markers_and_complete(
        &self,
        shard: &Rc<Shard>,
        partition: i32,
        id: &str,
    ) -> Result<(i64, i16), i16> {
        let meta = self.metadata(id).ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        let complete = meta
            .completed(crate::server::now_ms())
            .ok_or(code::INVALID_TXN_STATE)?;
        let coordinator_epoch = self.coordinator_epoch(partition)?;
        let marker = RemoteMarker {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            commit: meta.state == TxnState::PrepareCommit,
            coordinator_epoch,
            transaction_version: meta.client_txn_version,
        };
        let mut pending: Vec<(String, i32)> = meta.partitions.iter().cloned().collect();
        let mut rounds = 0u32;
        while !pending.is_empty() {
            if rounds > 0 {
                tokio::time::sleep(Duration::from_millis(MARKER_RETRY_MS)).await;
                if !self.coordinates(partition, coordinator_epoch) {
                    return Err(code::NOT_COORDINATOR);
                }
            }
            rounds += 1;
            let failed = self.write_markers_once(shard, marker, pending).await?;
            if !failed.is_empty() && (rounds == 1 || rounds % 100 == 0) {
                tracing::warn!(
                    transactional_id = id,
                    rounds,
                    failed = ?failed,
                    "writing transaction markers failed; retrying"
                );
            }
            pending = failed.into_iter().map(|(p, _)| p).collect();
        }
        let mut complete = complete;
        complete.last_update_ms = crate::server::now_ms();
        let answer = (complete.producer_id, complete.producer_epoch);
        self.persist(shard, partition, id, complete).await?;
        Ok(answer)
    }

    /// One round of markers: every partition of `partitions` routed and tried once; the
    /// ones that failed, with their codes. Err(NOT_COORDINATOR) when a leader says a newer
    /// coordinator took over (TRANSACTION_COORDINATOR_FENCED); Err when the shards stop.
    async fn write_markers_once(
        &self,
        shard: &Rc<Shard>,
        marker: RemoteMarker,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<((String, i32), i16)>, i16> {
        let mut local = Vec::new();
        let mut remote: std::collections::BTreeMap<i32, Vec<(String, i32)>> = Default::default();
        let mut failed = Vec::new();
        for (topic, index) in partitions {
            match super::remote_markers::route(shard, &topic, index) {
                Route::Local => local.push((topic, index)),
                Route::Remote(broker) => remote.entry(broker).or_default().push((topic, index)),
                Route::NoLeader => failed.push(((topic, index), code::LEADER_NOT_AVAILABLE)),
                Route::Gone => {}
            }
        }
        let local_writes = local.into_iter().map(|(topic, index)| {
            let shard = shard.clone();
            async move {
                let result = write_local_marker(&shard, &topic, index, marker).await;
                ((topic, index), result)
            }
        });
        let remote_writes = remote.into_iter().map(|(broker, partitions)| {
            let (shard, channel) = (shard.clone(), self.inner.markers.clone());
            async move {
                let codes = channel.send(&shard, broker, marker, &partitions).await;
                partitions
                    .into_iter()
                    .zip(codes)
                    .map(|(p, c)| (p, Ok(c)))
                    .collect::<Vec<_>>()
            }
        });
        let (local_results, remote_results) = futures::future::join(
            futures::future::join_all(local_writes),
            futures::future::join_all(remote_writes),
        )
        .await;
        for (key, result) in local_results
            .into_iter()
            .chain(remote_results.into_iter().flatten())
        {
            match result {
                Ok(code::NONE) => {}
                Ok(code::TRANSACTION_COORDINATOR_FENCED) => return Err(code::NOT_COORDINATOR),
                Ok(error_code) => failed.push((key, error_code)),
                // Shutting down: a restart (or the next leader) finishes the transaction.
                Err(_) => return Err(code::COORDINATOR_NOT_AVAILABLE),
            }
        }
        Ok(failed)
    }

    /// Aborts (fencing their producers) the transactions open longer than their timeout.
    pub async fn abort_expired(&self, shard: &Rc<Shard>, now_ms: i64) -> usize {
        let expired: Vec<String> = self
            .inner
            .txns
            .borrow()
            .iter()
            .filter(|(_, m)| {
                m.state == TxnState::Ongoing
                    && m.start_ms >= 0
                    && now_ms.saturating_sub(m.start_ms) > i64::from(m.timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut aborted = 0;
        for id in expired {
            match self.fence_and_abort(shard, &id).await {
                Ok(()) => {
                    aborted += 1;
                    tracing::info!(transactional_id = %id, "aborted a transaction past its timeout");
                }
                Err(error_code) => {
                    tracing::debug!(transactional_id = %id, error_code, "timed-out transaction not aborted this round")
                }
            }
        }
        aborted
    }

    /// Forgets the transactional ids idle for `transactional.id.expiration.ms`: no
    /// transaction open or ending, no operation in flight, and no state written for that
    /// long. Each gets a tombstone in its state partition (one batch per partition), so a
    /// replay forgets it too and the compacted log drops its records; then it is removed
    /// here. Its next InitProducerId starts afresh with a new producer id, as on Kafka.
    /// Returns how many were removed.
    pub async fn remove_expired_ids(&self, shard: &Rc<Shard>, now_ms: i64) -> usize {
        let expiration_ms = self.inner.config.id_expiration_ms;
        let idle = |meta: &TxnMetadata| {
            matches!(
                meta.state,
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
            ) && now_ms.saturating_sub(meta.last_update_ms) >= expiration_ms
        };
        let mut by_partition: std::collections::BTreeMap<i32, Vec<String>> = Default::default();
        for (id, meta) in self.inner.txns.borrow().iter() {
            if idle(meta) {
                by_partition
                    .entry(self.partition_for(id))
                    .or_default()
                    .push(id.clone());
            }
        }
        let mut removed = 0;
        for (partition, ids) in by_partition {
            // Hold each id's slot across the write, so no request changes it meanwhile; an
            // id busy now waits for the next round.
            let claimed: Vec<(String, Busy)> = ids
                .into_iter()
                .filter_map(|id| self.claim(&id).ok().map(|busy| (id, busy)))
                .filter(|(id, _)| self.metadata(id).is_some_and(|m| idle(&m)))
                .collect();
            if claimed.is_empty() {
                continue;
            }
            let tombstones: Vec<(Vec<u8>, Option<Vec<u8>>)> = claimed
                .iter()
                .map(|(id, _)| (encode_key(id), None))
                .collect();
            let label = format!("{} expired ids", claimed.len());
            match self
                .append_state(shard, partition, &label, &tombstones)
                .await
            {
                Ok(()) => {
                    let mut txns = self.inner.txns.borrow_mut();
                    for (id, _) in &claimed {
                        txns.remove(id);
                        tracing::info!(transactional_id = %id, partition, "transactional id expired");
                    }
                    removed += claimed.len();
                }
                Err(error_code) => {
                    tracing::debug!(
                        partition,
                        error_code,
                        "expired transactional ids not removed this round"
                    )
                }
            }
        }
        removed
    }

    /// Every transactional id this shard coordinates, with its metadata.
    pub fn list(&self) -> Vec<(String, TxnMetadata)> {
        self.inner
            .txns
            .borrow()
            .iter()
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect()
    }

    /// One id's metadata, or the error DescribeTransactions answers.
    pub fn describe(&self, id: &str) -> Result<TxnMetadata, i16> {
        self.gate(id)?;
        self.metadata(id).ok_or(code::TRANSACTIONAL_ID_NOT_FOUND)
    }

    /// Whether `id`'s producer may commit offsets in its transaction (TxnOffsetCommit):
    /// the current producer id and epoch, with the transaction ongoing.
    pub fn check_offset_commit(&self, id: &str, producer_id: i64, epoch: i16) -> Result<(), i16> {
        self.gate(id)?;
        let meta = self.metadata(id).ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        meta.check_producer(producer_id, epoch)?;
        if meta.state != TxnState::Ongoing {
            return Err(code::INVALID_TXN_STATE);
        }
        Ok(())
    }
}

/// Registers `partitions` of the producer's transaction with their owning shards; the
/// offsets partitions need nothing (their offsets wait in [`super::offsets`]).
async fn register_partitions(
    shard: &Rc<Shard>,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
) -> Result<(), i16> {
    // In a cluster, a partition led by another broker admits the producer's batches once
    // this coordinator confirms them (`implicit`: a verify-only AddPartitionsToTxn).
    let pending = partitions
        .iter()
        .filter(|(topic, _)| topic != sluice_group::OFFSETS_TOPIC)
        .filter(|(topic, index)| {
            super::remote_markers::route(shard, topic, *index) == Route::Local
        })
        .map(|(topic, index)| {
            let owner = shard.set.owner_of(topic, *index);
            let (topic, index) = (topic.clone(), *index);
            shard.invoke_on(owner, move |s| async move {
                let Some(partition) = s.partition(&topic, index) else {
                    return code::NOT_LEADER_OR_FOLLOWER;
                };
                if let Err(error) = s
                    .txn_partitions
                    .ensure_loaded(&partition, &topic, index)
                    .await
                {
                    tracing::error!(topic, index, %error, "loading the partition's transactions failed");
                    return code::KAFKA_STORAGE_ERROR;
                }
                s.txn_partitions.with(&topic, index, |state| {
                    state.register(producer_id, producer_epoch)
                });
                code::NONE
            })
        });
    for result in futures::future::join_all(pending).await {
        match result {
            Ok(code::NONE) => {}
            Ok(error_code) => return Err(error_code),
            Err(_) => return Err(code::COORDINATOR_NOT_AVAILABLE),
        }
    }
    Ok(())
}

/// Writes one marker (a data partition's control batch, or the commit/drop of an offsets
/// partition's pending offsets) on the shard that owns the partition here; its code, or
/// Err when that shard is gone.
async fn write_local_marker(
    shard: &Rc<Shard>,
    topic: &str,
    index: i32,
    marker: RemoteMarker,
) -> Result<i16, crate::shard::ShardGone> {
    let RemoteMarker {
        producer_id,
        producer_epoch,
        commit,
        coordinator_epoch,
        transaction_version,
    } = marker;
    let kind = if commit {
        Marker::Commit
    } else {
        Marker::Abort
    };
    let offsets = topic == sluice_group::OFFSETS_TOPIC;
    let owner = if offsets {
        usize::try_from(index).unwrap_or(0) % shard.set.count()
    } else {
        shard.set.owner_of(topic, index)
    };
    let topic = topic.to_string();
    shard
        .invoke_on(owner, move |s| async move {
            if offsets {
                super::offsets::complete(&s.groups, producer_id, index, commit).await
            } else {
                super::markers::write_on_owner(
                    &s,
                    &topic,
                    index,
                    super::markers::MarkerWrite {
                        producer_id,
                        producer_epoch,
                        marker: kind,
                        coordinator_epoch,
                        transaction_version,
                        origin: super::markers::MarkerOrigin::Coordinator,
                    },
                )
                .await
            }
        })
        .await
}
