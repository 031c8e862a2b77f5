//! Shards: one pinned OS thread per core, each with its own runtime, storage ring, partitions,
//! consumer groups and metrics. Shards share nothing mutable; they talk by message passing.
//!
//! The inbox of a shard is the single serialization point for work other shards send it:
//! jobs run on the owning shard in the order each sender sent them, so two appends from one
//! connection to one partition keep their order across the hop. Must never: take a lock on
//! the produce or fetch path, or touch another shard's partitions directly.
//!
//! Inboxes are bounded (`shard.inbox.jobs.max`). A job that finds its target's inbox full
//! waits in the sending shard's outbox for that target, behind any earlier job to the same
//! target, and one forwarder task per (sender, target) moves them over in order as room
//! appears. The caller's future completes only after the job ran, so a full inbox holds the
//! request that sent it unanswered, and its connection stops reading once its limits are
//! reached: back-pressure, not a growing queue. The outbox holds one job per such waiting
//! request, so it is bounded by the request limits (`queued.max.requests`,
//! `queued.max.request.bytes`), not by a second number.
//!
//! Why this cannot deadlock (shard A waiting on B's full inbox while B waits on A's): waiting
//! for room is done by forwarder tasks, never by the thread, and draining an inbox never waits
//! on anything but the next job. Each shard's inbox task runs a job synchronously (a job only
//! spawns the work it carries, [`Shard::invoke_on`]), so B's inbox empties whenever B's thread
//! runs, whatever the state of A's inbox. No inbox's progress depends on another inbox's
//! room, so there is no cycle of waits to close.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::Either;
use sluice_cluster::state::ClusterState;
use sluice_metrics::{ShardMetrics, Stage};
use sluice_storage::{Partition, ShardStorage, StorageError};
use tokio::sync::{mpsc, oneshot};

use crate::config::BrokerConfig;
use crate::metadata::controller::Controller;
use crate::metadata::{MetadataStore, TopicMeta};
use crate::offline::OfflinePartitions;

/// Work sent to a shard: runs on its thread with its `Rc<Shard>`.
pub type Job = Box<dyn FnOnce(Rc<Shard>) + Send>;

/// The target shard has stopped (broker shutting down).
#[derive(Debug, thiserror::Error)]
#[error("shard {0} is not running")]
pub struct ShardGone(pub usize);

/// Inboxes of every shard; shared by all (Send + Sync).
pub struct ShardSet {
    senders: Vec<mpsc::Sender<Job>>,
}

/// How long a thread outside the shards (the admin endpoint) retries a full inbox.
const OUTSIDE_SEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl ShardSet {
    /// Creates `count` inboxes of `depth` jobs each; the receivers go to the shard threads.
    pub fn new(count: usize, depth: usize) -> (Arc<ShardSet>, Vec<mpsc::Receiver<Job>>) {
        assert!(count > 0, "at least one shard");
        let (senders, receivers) = (0..count).map(|_| mpsc::channel(depth.max(1))).unzip();
        (Arc::new(ShardSet { senders }), receivers)
    }

    /// Number of shards.
    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Deterministic owner of a partition: a stable hash of the topic name plus the partition
    /// index, so one topic's partitions spread round-robin over the shards. A
    /// `__consumer_offsets` partition is owned by the shard of its groups (`p % shards`), so
    /// its coordinator, its replica role and the fetches of it meet on one shard; so is a
    /// `__transaction_state` partition, by its transaction coordinator's.
    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        if topic == sluice_group::OFFSETS_TOPIC || topic == crate::txn::TRANSACTION_STATE_TOPIC {
            return usize::try_from(partition).unwrap_or(0) % self.senders.len();
        }
        let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        ((hash.wrapping_add(partition as u64)) % self.senders.len() as u64) as usize
    }

    /// Sends `job` to `target`'s inbox from a thread that is not a shard (it may block for a
    /// moment): retries a full inbox for up to two seconds.
    pub fn send_from_outside(&self, target: usize, job: Job) -> Result<(), String> {
        let sender = self
            .senders
            .get(target)
            .ok_or(ShardGone(target).to_string())?;
        let deadline = std::time::Instant::now() + OUTSIDE_SEND_PATIENCE;
        let mut job = job;
        loop {
            match sender.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(ShardGone(target).to_string())
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(format!("shard {target}'s inbox stayed full for 2 s"));
                    }
                    job = back;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }
}

/// Jobs from this shard to one target that found its inbox full, in send order.
#[derive(Default)]
struct Outbox {
    jobs: VecDeque<Job>,
    /// A forwarder task is moving `jobs` over.
    forwarding: bool,
}

/// Topic lookups for the group coordinator, over the published metadata.
pub struct MetadataTopics(pub Arc<MetadataStore>);

impl sluice_group::TopicLookup for MetadataTopics {
    fn partition_count(&self, topic: &str) -> Option<i32> {
        self.0.load().topic(topic).map(|t| t.partitions)
    }
}

/// Where appends to a partition wait, in arrival order, while its producer states load.
type LoadQueue = Rc<tokio::sync::Mutex<()>>;

/// The load gates of the partitions whose producer states are being rebuilt, by (topic,
/// index). A gate lives only while someone holds a [`LoadPlace`] at it, so an empty map means
/// no rebuild anywhere on the shard (the produce path's fast check).
#[derive(Default)]
struct LoadGates(RefCell<HashMap<(String, i32), LoadQueue>>);

impl LoadGates {
    fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    fn contains(&self, key: &(String, i32)) -> bool {
        self.0.borrow().contains_key(key)
    }

    /// A place at `key`'s gate (created if none), to wait on with `place.gate.lock()`.
    fn join(&self, key: (String, i32)) -> LoadPlace<'_> {
        let gate = self.0.borrow_mut().entry(key.clone()).or_default().clone();
        LoadPlace {
            gates: self,
            key,
            gate,
        }
    }
}

/// One caller's place at a load gate. Leaving it removes the gate when nobody else holds
/// one, in `Drop` so that a caller cancelled while waiting or loading (a produce under a
/// timeout) does not leave the gate behind and push every later produce off the fast path.
struct LoadPlace<'a> {
    gates: &'a LoadGates,
    key: (String, i32),
    gate: LoadQueue,
}

impl Drop for LoadPlace<'_> {
    fn drop(&mut self) {
        let mut gates = self.gates.0.borrow_mut();
        // The map's reference and ours: nobody else waits, so later appends need not.
        let last = gates
            .get(&self.key)
            .is_some_and(|gate| Rc::ptr_eq(gate, &self.gate) && Rc::strong_count(gate) == 2);
        if last {
            gates.remove(&self.key);
        }
    }
}

/// What an append needs loaded besides its partition's producer states
/// ([`Shard::prepare_append`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendNeeds {
    /// The partition's transaction view (open transactions, aborted ranges).
    pub txn_state: bool,
    /// The partition's `transactional` flag file (before a transactional batch or marker).
    pub txn_flag: bool,
}

/// Everything one shard owns.
pub struct Shard {
    /// This shard's index.
    pub id: usize,
    /// All shards' inboxes.
    pub set: Arc<ShardSet>,
    /// Broker configuration.
    pub config: Arc<BrokerConfig>,
    /// Published cluster metadata.
    pub metadata: Arc<MetadataStore>,
    /// This shard's storage engine.
    pub storage: ShardStorage,
    /// The metadata controller (shard 0 only).
    pub controller: Option<Controller>,
    /// Partitions this shard owns, by topic name then index.
    partitions: RefCell<HashMap<String, HashMap<i32, Partition>>>,
    /// Open client connections on this shard.
    pub connections: std::cell::Cell<usize>,
    /// What a broker shutdown lets this shard's connections still do, and how many requests
    /// they are handling (see [`crate::drain`]).
    pub drain: crate::drain::Drain,
    /// This shard's latency histograms and counters.
    pub metrics: ShardMetrics,
    /// The consumer groups this shard owns.
    pub groups: sluice_group::GroupCoordinator,
    /// The transactional ids this shard coordinates.
    pub txns: crate::txn::coordinator::TxnCoordinator,
    /// The transaction state of the data partitions this shard owns.
    pub txn_partitions: crate::txn::registry::TxnRegistry,
    /// Idempotent-producer state of the partitions this shard owns, by topic then index.
    producers: RefCell<HashMap<String, HashMap<i32, crate::idempotence::ProducerStates>>>,
    /// Partitions whose producer state lags an append in flight (no snapshot meanwhile).
    pub snapshot_holds: crate::producer_snapshots::Holds,
    /// Jobs waiting for room in another shard's inbox, by target.
    outboxes: RefCell<Vec<Outbox>>,
    /// Partitions whose producer states are being rebuilt from the log: appends to them wait
    /// here, in arrival order (a FIFO async mutex), until the rebuild is in.
    producer_state_loads: LoadGates,
    /// The broker's poisoned partitions (shared by every shard).
    pub offline: Arc<OfflinePartitions>,
    /// In a cluster: the id of each topic this shard opened partitions of, so a topic deleted
    /// (or deleted and re-created under the same name) has its partitions deleted here.
    cluster_topic_ids: RefCell<HashMap<String, uuid::Uuid>>,
    /// In a cluster: the replica role of each partition this shard owns.
    pub replicas: crate::replication::Replicas,
    /// Incremental fetch sessions of this shard's connections (KIP-227).
    pub fetch_sessions: RefCell<crate::api::fetch_session::SessionCache>,
    /// This shard's client quota measurements (of the broker-wide rates: shards exchange
    /// what they record, see `security::quota::exchange`).
    pub quotas: Rc<crate::security::quota::QuotaManager>,
}

impl Shard {
    /// Assembles a shard (its partitions are opened by [`Shard::open_owned_partitions`]).
    pub fn new(
        id: usize,
        set: Arc<ShardSet>,
        config: Arc<BrokerConfig>,
        metadata: Arc<MetadataStore>,
        storage: ShardStorage,
        controller: Option<Controller>,
        groups: sluice_group::GroupCoordinator,
    ) -> Self {
        let txn_config = config.transactions.clone();
        let quotas = Rc::new(crate::security::quota::QuotaManager::new(config.quotas));
        let fetch_sessions = RefCell::new(crate::api::fetch_session::SessionCache::new(
            config.fetch_session_slots_per_shard(set.count()),
            config.fetch_session_eviction_ms,
            id,
        ));
        Self {
            id,
            config,
            metadata,
            storage,
            controller,
            partitions: RefCell::new(HashMap::new()),
            connections: std::cell::Cell::new(0),
            drain: crate::drain::Drain::default(),
            metrics: ShardMetrics::new(id),
            groups,
            txns: crate::txn::coordinator::TxnCoordinator::new(txn_config),
            txn_partitions: Default::default(),
            producers: RefCell::new(HashMap::new()),
            snapshot_holds: Default::default(),
            outboxes: RefCell::new((0..set.count()).map(|_| Outbox::default()).collect()),
            set,
            producer_state_loads: LoadGates::default(),
            offline: Arc::default(),
            cluster_topic_ids: RefCell::default(),
            fetch_sessions,
            replicas: crate::replication::Replicas::default(),
            quotas,
        }
    }

    /// Shares the broker-wide set of poisoned partitions (a shard alone has its own).
    pub fn with_offline_partitions(mut self, offline: Arc<OfflinePartitions>) -> Self {
        self.offline = offline;
        self
    }

    /// The partition if this shard owns it and it is open.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Partition> {
        self.partitions.borrow().get(topic)?.get(&index).cloned()
    }

    /// Registers a partition opened outside [`Shard::open_partition`] (a `__consumer_offsets`
    /// partition in a cluster, opened with the group coordinator's log config), so fetches of
    /// it and its replica role find it.
    pub fn adopt_partition(&self, topic: &str, index: i32, partition: Partition) {
        self.partitions
            .borrow_mut()
            .entry(topic.to_string())
            .or_default()
            .insert(index, partition);
    }

    /// Opens (recovering) one partition this shard owns.
    pub fn open_partition(&self, topic: &TopicMeta, index: i32) -> Result<Partition, StorageError> {
        if let Some(existing) = self.partition(&topic.name, index) {
            return Ok(existing);
        }
        let log_config = self
            .config
            .topic_log_config(&topic.configs)
            .unwrap_or_else(|error| {
                tracing::warn!(topic = %topic.name, %error, "stored topic config invalid; using broker defaults");
                self.config.log_defaults.clone()
            });
        let partition = self
            .storage
            .open_partition(&topic.name, index, log_config)?;
        if self.config.cluster.is_none() {
            // One broker, one replica: everything durable is visible, whatever high-watermark
            // checkpoint a cluster left in the directory (in a cluster the replication layer
            // lifts the opening cap, `replication::Replicas::reconcile`).
            partition.limit_high_watermark(None);
        }
        self.partitions
            .borrow_mut()
            .entry(topic.name.clone())
            .or_default()
            .insert(index, partition.clone());
        Ok(partition)
    }

    /// Opens every partition of the current metadata that this shard owns.
    pub fn open_owned_partitions(&self) -> Result<usize, StorageError> {
        let snapshot = self.metadata.load();
        let mut opened = 0;
        for topic in snapshot.topics.values() {
            for index in 0..topic.partitions {
                if self.set.owner_of(&topic.name, index) == self.id {
                    self.open_partition(topic, index)?;
                    opened += 1;
                }
            }
        }
        Ok(opened)
    }

    /// In a cluster: deletes the partitions of topics the published cluster state no longer
    /// has (or has under another id), then opens every partition of it that this broker is a
    /// replica of and this shard owns; returns how many it opened. Synchronous and reading the
    /// current snapshot, so reconciliations running in any order end in the latest state.
    pub fn reconcile_cluster_partitions(self: &Rc<Self>) -> usize {
        let snapshot = self.metadata.load();
        let Some(state) = snapshot.cluster.clone() else {
            return 0;
        };
        let gone: Vec<String> = self
            .cluster_topic_ids
            .borrow()
            .iter()
            .filter(|(name, id)| state.topics.get(id).is_none_or(|t| &t.name != *name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let deleted = self.delete_topic_partitions(&name);
            self.cluster_topic_ids.borrow_mut().remove(&name);
            tracing::info!(shard = self.id, topic = %name, deleted, "deleted partitions of a topic the cluster removed");
        }
        let node_id = self.config.node_id;
        let removed = self.removed_replicas(&state);
        for (name, index) in removed {
            if self.delete_partition(&name, index) {
                tracing::info!(shard = self.id, topic = %name, index, "deleted a partition this broker is no replica of any more");
            }
        }
        let led_offsets = state
            .topic_by_name(sluice_group::OFFSETS_TOPIC)
            .map(|topic| {
                topic
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.leader == node_id)
                    .filter_map(|(index, _)| i32::try_from(index).ok())
                    .collect()
            })
            .unwrap_or_default();
        self.groups.set_coordinated(Some(led_offsets));
        let mut opened = 0;
        for topic in state.topics.values() {
            // The group coordinators own the offsets log's partitions: opening them here too
            // would put a second writer on their directories.
            if topic.name == sluice_group::OFFSETS_TOPIC {
                continue;
            }
            let Some(meta) = snapshot.topic(&topic.name).filter(|m| m.id == topic.id) else {
                continue;
            };
            for (index, placement) in topic.partitions.iter().enumerate() {
                let Ok(index) = i32::try_from(index) else {
                    break;
                };
                if !placement.replicas.contains(&node_id)
                    || self.set.owner_of(&topic.name, index) != self.id
                    || self.partition(&topic.name, index).is_some()
                {
                    continue;
                }
                self.cluster_topic_ids
                    .borrow_mut()
                    .insert(topic.name.clone(), topic.id);
                match self.open_partition(meta, index) {
                    Ok(_) => opened += 1,
                    Err(error) => {
                        tracing::error!(topic = %topic.name, index, %error, "opening a cluster partition failed")
                    }
                }
            }
        }
        if opened > 0 {
            tracing::info!(
                shard = self.id,
                opened,
                "opened partitions this broker is a replica of"
            );
        }
        self.replicas.reconcile(self, &state);
        opened
    }

    /// Applies a topic's new configs to the partitions this shard owns.
    pub fn reconfigure_topic(&self, topic: &TopicMeta) {
        let Ok(log_config) = self.config.topic_log_config(&topic.configs) else {
            return;
        };
        if let Some(parts) = self.partitions.borrow().get(&topic.name) {
            for partition in parts.values() {
                partition.set_config(log_config.clone());
            }
        }
    }

    /// Drops a partition's producer states after its log was truncated: the next check
    /// rebuilds them from the log that remains (`load_producer_states`).
    pub fn forget_producer_states(&self, topic: &str, index: i32) {
        if let Some(partitions) = self.producers.borrow_mut().get_mut(topic) {
            partitions.remove(&index);
        }
    }

    /// Takes the batches a follower copied into its log (`records`, whole batches with the
    /// leader's offsets, already appended) into the partition's producer states, as the
    /// leader's own checks put them there. The states must be loaded first
    /// (`load_producer_states`), else the rebuild would not see what came before.
    pub fn replay_producer_states(&self, topic: &str, index: i32, records: &[u8]) {
        let now_ms = crate::server::now_ms();
        self.with_producer_states(topic, index, |states| {
            for header in sluice_storage::batch::headers(records) {
                states.replay(&header, now_ms, now_ms);
            }
        });
    }

    /// Remembers that `first` (an idempotent request's first batch) was refused unwritten with
    /// the retriable `error_code` before its sequence was checked; only when the partition's
    /// producer states are loaded (a load rebuilds them from the log, where it is absent).
    pub fn note_refused_batch(
        &self,
        topic: &str,
        index: i32,
        first: &sluice_storage::batch::RecordBatchHeader,
        error_code: i16,
    ) {
        if let Some(states) = self
            .producers
            .borrow_mut()
            .get_mut(topic)
            .and_then(|parts| parts.get_mut(&index))
        {
            states.refused(first, error_code);
        }
    }

    /// Runs `f` on the producer states of one partition this shard owns.
    pub fn with_producer_states<T>(
        &self,
        topic: &str,
        index: i32,
        f: impl FnOnce(&mut crate::idempotence::ProducerStates) -> T,
    ) -> T {
        // Loaded by `load_producer_states` before the first check; empty if it could not be.
        let limits = self.producer_limits();
        let mut producers = self.producers.borrow_mut();
        // Looked up before `entry`, which would allocate the key on every produce.
        let parts = match producers.get_mut(topic) {
            Some(parts) => parts,
            None => producers.entry(topic.to_string()).or_default(),
        };
        let states = parts
            .entry(index)
            .or_insert_with(|| crate::idempotence::ProducerStates::new(limits));
        f(states)
    }

    /// The partition's producer states as snapshot entries; None if they are not loaded.
    pub fn producer_snapshot_entries(
        &self,
        topic: &str,
        index: i32,
    ) -> Option<Vec<sluice_storage::producer_snapshot::ProducerSnapshotEntry>> {
        self.producers
            .borrow()
            .get(topic)
            .and_then(|parts| parts.get(&index))
            .map(|states| states.snapshot_entries())
    }

    /// The partitions whose producer states are loaded.
    pub fn producer_state_partitions(&self) -> Vec<(String, i32)> {
        self.producers
            .borrow()
            .iter()
            .flat_map(|(topic, parts)| parts.keys().map(|index| (topic.clone(), *index)))
            .collect()
    }

    fn producer_limits(&self) -> crate::idempotence::ProducerLimits {
        crate::idempotence::ProducerLimits {
            idle_ms_max: i64::try_from(self.config.producer_id_expiration_ms).unwrap_or(i64::MAX),
            states_max: self.config.producer_states_per_partition_max,
        }
    }

    /// Drops the producer states idle for `producer.id.expiration.ms` in every partition of
    /// this shard; returns how many.
    pub fn expire_producer_states(&self, now_ms: i64) -> usize {
        let mut producers = self.producers.borrow_mut();
        producers
            .values_mut()
            .flat_map(|parts| parts.values_mut())
            .map(|states| states.remove_expired(now_ms))
            .sum()
    }

    /// Makes sure a partition's producer states are in memory before an append checks them:
    /// on its first produce since this shard opened it, they are rebuilt from the newest batch
    /// headers of its log, read through the storage ring. Appends arriving meanwhile wait in
    /// arrival order, so pipelined requests of one producer keep their order; once loaded,
    /// this returns without awaiting.
    pub async fn load_producer_states(&self, topic: &str, index: i32) {
        // The produce path: no rebuild anywhere on the shard, nothing to wait for or allocate.
        if self.producer_states_loaded(topic, index) && self.producer_state_loads.is_empty() {
            return;
        }
        let key = (topic.to_string(), index);
        if self.producer_states_loaded(topic, index) && !self.producer_state_loads.contains(&key) {
            return;
        }
        // Declared before `turn`, so on cancellation the turn is released first and then the
        // place left (which removes the gate if it was the last).
        let place = self.producer_state_loads.join(key);
        let turn = place.gate.lock().await;
        self.rebuild_producer_states_if_absent(topic, index).await;
        drop(turn);
        drop(place);
    }

    fn producer_states_loaded(&self, topic: &str, index: i32) -> bool {
        self.producers
            .borrow()
            .get(topic)
            .is_some_and(|parts| parts.contains_key(&index))
    }

    /// Rebuilds a partition's producer states from its log unless they are in memory (call
    /// with the partition's load gate held).
    async fn rebuild_producer_states_if_absent(&self, topic: &str, index: i32) {
        if self.producer_states_loaded(topic, index) {
            return;
        }
        let states = self.rebuilt_producer_states(topic, index).await;
        self.producers
            .borrow_mut()
            .entry(topic.to_string())
            .or_default()
            .entry(index)
            .or_insert(states);
    }

    /// Makes everything an append to `partition` is checked against ready, in arrival order:
    /// its producer states, and for `needs` its transaction view (`txn_state`) and its
    /// `transactional` flag file (`txn_flag`). When all are ready and no earlier append of the
    /// partition is still preparing, this returns without awaiting (the produce path).
    /// Otherwise the append queues at the partition's gate (the producer-state load gate,
    /// FIFO) and does the missing work there: every step that can await is inside the gate,
    /// so a later batch of the same producer can never overtake an earlier one that is
    /// waiting for its own step (a pipelined producer's sequences then arrive in order). The
    /// caller must reach the append's enqueue with no await after this returns.
    pub async fn prepare_append(
        &self,
        partition: &Partition,
        topic: &str,
        index: i32,
        needs: AppendNeeds,
    ) -> Result<(), i16> {
        let ready = |shard: &Shard| {
            shard.producer_states_loaded(topic, index)
                && (!needs.txn_state || shard.txn_partitions.is_loaded(topic, index))
                && (!needs.txn_flag
                    || shard
                        .txn_partitions
                        .with(topic, index, |state| state.flagged)
                        .unwrap_or(false))
        };
        if self.producer_state_loads.is_empty() && ready(self) {
            return Ok(());
        }
        let key = (topic.to_string(), index);
        if ready(self) && !self.producer_state_loads.contains(&key) {
            return Ok(());
        }
        // Declared before `turn`, so on cancellation the turn is released first and then the
        // place left (which removes the gate if it was the last).
        let place = self.producer_state_loads.join(key);
        let turn = place.gate.lock().await;
        self.rebuild_producer_states_if_absent(topic, index).await;
        if needs.txn_state || needs.txn_flag {
            if let Err(error) = self
                .txn_partitions
                .ensure_loaded(partition, topic, index)
                .await
            {
                tracing::error!(topic, index, %error, "loading the partition's transactions failed");
                return Err(crate::errors::code::KAFKA_STORAGE_ERROR);
            }
        }
        if needs.txn_flag {
            if let Err(error) = self
                .txn_partitions
                .mark_transactional(partition, topic, index)
                .await
            {
                tracing::error!(topic, index, %error, "cannot create the partition's transactional flag");
                return Err(crate::errors::code::KAFKA_STORAGE_ERROR);
            }
        }
        drop(turn);
        drop(place);
        Ok(())
    }

    /// A partition's producer states from its newest producer snapshot and the batches after
    /// it, or, with no usable snapshot, from the newest batch headers of its log.
    async fn rebuilt_producer_states(
        &self,
        topic: &str,
        index: i32,
    ) -> crate::idempotence::ProducerStates {
        let limits = self.producer_limits();
        let Some(partition) = self.partition(topic, index) else {
            return crate::idempotence::ProducerStates::new(limits);
        };
        match crate::producer_snapshots::load(&partition, limits).await {
            Ok(Some(states)) => return states,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(topic, index, %error, "cannot load the producer snapshot; rebuilding from the log's tail");
            }
        }
        match partition
            .recent_batch_headers(crate::idempotence::REBUILD_WINDOW_BYTES)
            .await
        {
            Ok(headers) => crate::idempotence::ProducerStates::rebuilt(
                &headers,
                limits,
                crate::server::now_ms(),
            ),
            Err(error) => {
                // Without the log's view, duplicates of batches written before the restart
                // go undetected; appends themselves are unaffected.
                tracing::warn!(topic, index, %error, "cannot rebuild idempotent producer state");
                crate::idempotence::ProducerStates::new(limits)
            }
        }
    }

    /// Removes and deletes the partitions of `topic` this shard owns.
    pub fn delete_topic_partitions(&self, topic: &str) -> usize {
        self.offline.remove_topic(topic);
        self.producers.borrow_mut().remove(topic);
        self.txn_partitions.remove_topic(topic);
        let removed = self.partitions.borrow_mut().remove(topic);
        let mut deleted = 0;
        for (index, partition) in removed.into_iter().flatten() {
            match self.storage.delete_partition(&partition) {
                Ok(()) => deleted += 1,
                Err(error) => tracing::error!(topic, index, %error, "deleting partition failed"),
            }
        }
        deleted
    }

    /// Open partitions of cluster topics that the committed `state` no longer places on this
    /// broker (a reassignment moved them away, or a cancel dropped this broker's copy). The
    /// offsets topic's partitions are the group coordinators' and never listed.
    fn removed_replicas(&self, state: &ClusterState) -> Vec<(String, i32)> {
        let node_id = self.config.node_id;
        let ids = self.cluster_topic_ids.borrow();
        let partitions = self.partitions.borrow();
        let mut removed = Vec::new();
        for (name, id) in ids.iter() {
            let Some(topic) = state.topics.get(id).filter(|t| &t.name == name) else {
                continue;
            };
            if topic.name == sluice_group::OFFSETS_TOPIC {
                continue;
            }
            for index in partitions
                .get(name)
                .into_iter()
                .flat_map(|parts| parts.keys())
            {
                let placed_here = usize::try_from(*index)
                    .ok()
                    .and_then(|i| topic.partitions.get(i))
                    .is_some_and(|p| p.replicas.contains(&node_id));
                if !placed_here {
                    removed.push((name.clone(), *index));
                }
            }
        }
        removed
    }

    /// Closes and deletes one partition this shard owns, with its producer states; whether it
    /// was open and its files are gone.
    pub fn delete_partition(&self, topic: &str, index: i32) -> bool {
        if let Some(parts) = self.producers.borrow_mut().get_mut(topic) {
            parts.remove(&index);
        }
        let removed = self
            .partitions
            .borrow_mut()
            .get_mut(topic)
            .and_then(|parts| parts.remove(&index));
        let Some(partition) = removed else {
            return false;
        };
        match self.storage.delete_partition(&partition) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(topic, index, %error, "deleting partition failed");
                false
            }
        }
    }

    /// All partitions this shard owns (for retention).
    pub fn owned_partitions(&self) -> Vec<Partition> {
        self.partitions
            .borrow()
            .values()
            .flat_map(|parts| parts.values().cloned())
            .collect()
    }

    /// Topic, index and size on disk of every partition this shard owns (DescribeLogDirs).
    pub fn partition_sizes(&self) -> Vec<(String, i32, u64)> {
        self.partitions
            .borrow()
            .iter()
            .flat_map(|(topic, parts)| {
                parts
                    .iter()
                    .map(|(index, partition)| (topic.clone(), *index, partition.size_bytes()))
            })
            .collect()
    }

    /// Runs `f` on shard `target` and returns its result. Runs in place when `target` is this
    /// shard. The message is sent before this returns (not on first poll), which keeps the
    /// order of jobs from one caller.
    pub fn invoke_on<F, Fut, T>(
        self: &Rc<Self>,
        target: usize,
        f: F,
    ) -> impl Future<Output = Result<T, ShardGone>> + 'static
    where
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        if target == self.id {
            let local = f(self.clone());
            return Either::Left(async move { Ok(local.await) });
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let sent_at = std::time::Instant::now();
        let sent = self.post(
            target,
            Box::new(move |shard: Rc<Shard>| {
                shard
                    .metrics
                    .record_stage_ns(Stage::CrossShardHop, sent_at.elapsed().as_nanos() as u64);
                let fut = f(shard);
                tokio::task::spawn_local(async move {
                    let _ = reply_tx.send(fut.await);
                });
            }),
        );
        Either::Right(async move {
            sent?;
            reply_rx.await.map_err(|_| ShardGone(target))
        })
    }

    /// Puts `job` into `target`'s inbox now if it has room and nothing from this shard waits
    /// before it; otherwise queues it in the outbox, behind earlier jobs to `target`.
    fn post(self: &Rc<Self>, target: usize, job: Job) -> Result<(), ShardGone> {
        let sender = self.set.senders.get(target).ok_or(ShardGone(target))?;
        let mut outboxes = self.outboxes.borrow_mut();
        let outbox = outboxes.get_mut(target).ok_or(ShardGone(target))?;
        let job = if outbox.jobs.is_empty() {
            match sender.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(ShardGone(target)),
                Err(mpsc::error::TrySendError::Full(job)) => job,
            }
        } else {
            job
        };
        outbox.jobs.push_back(job);
        if !outbox.forwarding {
            outbox.forwarding = true;
            tokio::task::spawn_local(forward_outbox(self.clone(), target));
        }
        Ok(())
    }
}

/// Moves `shard`'s outbox for `target` into `target`'s inbox, in order, as room appears.
/// Awaits room as a task, never blocking the thread (see the module doc on deadlock).
async fn forward_outbox(shard: Rc<Shard>, target: usize) {
    let Some(sender) = shard.set.senders.get(target).cloned() else {
        return;
    };
    loop {
        let permit = sender.reserve().await;
        let mut outboxes = shard.outboxes.borrow_mut();
        let outbox = &mut outboxes[target];
        match permit {
            Ok(permit) => match outbox.jobs.pop_front() {
                Some(job) => permit.send(job),
                None => {
                    outbox.forwarding = false;
                    return;
                }
            },
            Err(_) => {
                // The target stopped: dropping the jobs drops their reply channels, so each
                // waiting caller gets ShardGone.
                outbox.jobs.clear();
                outbox.forwarding = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (String, i32) {
        ("t".to_string(), 0)
    }

    fn block_on(test: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(test);
    }

    #[test]
    fn a_load_cancelled_while_loading_leaves_no_gate() {
        block_on(async {
            let gates = LoadGates::default();
            let mut loading = Box::pin(async {
                let place = gates.join(key());
                let _turn = place.gate.lock().await;
                // The rebuild, never finishing: the caller is dropped here.
                std::future::pending::<()>().await;
            });
            assert!(futures::poll!(loading.as_mut()).is_pending());
            assert!(gates.contains(&key()));
            drop(loading);
            assert!(gates.is_empty(), "a cancelled load left its gate");
        });
    }

    #[test]
    fn a_waiter_cancelled_after_the_load_leaves_no_gate() {
        block_on(async {
            let gates = LoadGates::default();
            let owner = gates.join(key());
            let turn = owner.gate.lock().await;
            let mut waiter = Box::pin(async {
                let place = gates.join(key());
                let _turn = place.gate.lock().await;
            });
            assert!(futures::poll!(waiter.as_mut()).is_pending());
            drop(turn);
            drop(owner);
            assert!(gates.contains(&key()), "kept for the waiter");
            drop(waiter);
            assert!(gates.is_empty(), "a cancelled waiter left the gate");
        });
    }
}
