//! The transaction coordinator of one shard: the transactional ids whose
//! `__transaction_state` partition this shard owns (`partition % shards`), as the group
//! coordinator owns the groups of its `__consumer_offsets` partitions.
//!
//! Every state change is appended (durably) to the id's state partition before it is acted
//! on or answered; a restart replays the partitions, finishes the commits and aborts that
//! were prepared, and aborts (fencing, with an epoch bump) the transactions that were still
//! open, as a timeout would. One operation per id runs at a time (another gets
//! CONCURRENT_TRANSACTIONS, which clients retry). Must never: answer before its state change
//! is durable, write a Complete state before every marker is written, or hold a `RefCell`
//! borrow across an await.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use sluice_storage::{Ack, Partition};

use super::log::{decode_key, decode_value, encode_key, encode_value};
use super::partition::Marker;
use super::state::{EndAction, TxnMetadata, TxnState};
use super::{state_partition_for, TxnConfig};
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
    logs: RefCell<HashMap<i32, Partition>>,
    /// State partitions being replayed.
    loading: RefCell<HashSet<i32>>,
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
            }),
        }
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
        } else if self.inner.loading.borrow().contains(&partition) {
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

    /// Appends `meta` as `id`'s newest state and, once durable, makes it current.
    async fn persist(&self, partition: i32, id: &str, meta: TxnMetadata) -> Result<(), i16> {
        debug_assert!(
            self.metadata(id)
                .is_none_or(|old| meta.state.may_follow(old.state) || old.state == meta.state),
            "illegal transition"
        );
        let log = self.inner.logs.borrow().get(&partition).cloned();
        let Some(log) = log else {
            return Err(code::NOT_COORDINATOR);
        };
        let batch = sluice_group::encode_batch(
            &[(encode_key(id), Some(encode_value(&meta)))],
            crate::server::now_ms(),
        );
        match log.append(batch, Ack::Durable, 0).await {
            Ok(_) => {
                self.inner.txns.borrow_mut().insert(id.to_string(), meta);
                Ok(())
            }
            Err(error) => {
                tracing::error!(transactional_id = id, %error, "persisting transaction state failed");
                Err(code::COORDINATOR_NOT_AVAILABLE)
            }
        }
    }

    /// Replays state partition `partition` (opened as `log`), then finishes what it left
    /// half done. Requests for its ids answer COORDINATOR_LOAD_IN_PROGRESS meanwhile.
    pub async fn load_partition(&self, shard: Rc<Shard>, partition: i32, log: Partition) {
        self.inner.loading.borrow_mut().insert(partition);
        let mut states: HashMap<String, Option<TxnMetadata>> = HashMap::new();
        let mut offset = log.log_start_offset();
        let replayed = loop {
            let slice = match log.read(offset, REPLAY_READ_BYTES, true).await {
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
        self.inner.logs.borrow_mut().insert(partition, log);
        self.inner.loading.borrow_mut().remove(&partition);
        tracing::info!(
            partition,
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
        self.persist(partition, id, next).await?;
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
        self.persist(partition, id, next).await?;
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
        self.persist(partition, id, prepared).await?;
        tracing::info!(
            transactional_id = id,
            commit,
            producer_epoch = prepared_epoch,
            client_txn_version = prepared_version,
            "transaction prepared; writing markers"
        );
        if self.inner.config.marker_delay_ms > 0 {
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
        self.persist(partition, id, prepared).await?;
        self.write_markers_and_complete(shard, partition, id)
            .await
            .map(|_| ())
    }

    /// Writes the markers of `id`'s prepared transaction to every partition in it (retrying
    /// each until it is written), then persists CompleteCommit/CompleteAbort (with the
    /// producer id rotated if the prepared state names a next one). The caller holds the
    /// id's slot. Returns the producer id and epoch after it.
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
        let commit = meta.state == TxnState::PrepareCommit;
        let writes = meta.partitions.iter().map(|(topic, index)| {
            write_marker_until_done(
                shard.clone(),
                topic.clone(),
                *index,
                meta.producer_id,
                meta.producer_epoch,
                meta.client_txn_version,
                commit,
            )
        });
        futures::future::join_all(writes).await;
        let mut complete = complete;
        complete.last_update_ms = crate::server::now_ms();
        let answer = (complete.producer_id, complete.producer_epoch);
        self.persist(partition, id, complete).await?;
        Ok(answer)
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
    let pending = partitions
        .iter()
        .filter(|(topic, _)| topic != sluice_group::OFFSETS_TOPIC)
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
/// partition's pending offsets) on its owning shard, retrying until it is done: a prepared
/// transaction must end everywhere.
async fn write_marker_until_done(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    producer_id: i64,
    producer_epoch: i16,
    transaction_version: i16,
    commit: bool,
) {
    let marker = if commit {
        Marker::Commit
    } else {
        Marker::Abort
    };
    let mut attempts = 0u32;
    loop {
        let (owner, topic_owned) = if topic == sluice_group::OFFSETS_TOPIC {
            (
                usize::try_from(index).unwrap_or(0) % shard.set.count(),
                topic.clone(),
            )
        } else {
            (shard.set.owner_of(&topic, index), topic.clone())
        };
        let result = shard
            .invoke_on(owner, move |s| async move {
                if topic_owned == sluice_group::OFFSETS_TOPIC {
                    super::offsets::complete(&s.groups, producer_id, index, commit).await
                } else {
                    super::markers::write_on_owner(
                        &s,
                        &topic_owned,
                        index,
                        super::markers::MarkerWrite {
                            producer_id,
                            producer_epoch,
                            marker,
                            coordinator_epoch: 0,
                            transaction_version,
                            origin: super::markers::MarkerOrigin::Coordinator,
                        },
                    )
                    .await
                }
            })
            .await;
        match result {
            Ok(code::NONE) => return,
            Ok(error_code) => {
                attempts += 1;
                if attempts == 1 || attempts % 100 == 0 {
                    tracing::warn!(
                        topic,
                        index,
                        error_code,
                        attempts,
                        "writing a transaction marker failed; retrying"
                    );
                }
            }
            Err(_) => return, // shutting down: a restart finishes the transaction
        }
        tokio::time::sleep(Duration::from_millis(MARKER_RETRY_MS)).await;
    }
}
