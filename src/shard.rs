//! Shards: one pinned OS thread per core, each with its own runtime, storage ring, partitions,
//! consumer groups and metrics. Shards share nothing mutable; they talk by message passing.
//!
//! The inbox of a shard is the single serialization point for work other shards send it:
//! jobs run on the owning shard in the order each sender sent them, so two appends from one
//! connection to one partition keep their order across the hop. Must never: take a lock on
//! the produce or fetch path, or touch another shard's partitions directly.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::Either;
use sluice_metrics::{ShardMetrics, Stage};
use sluice_storage::{Partition, ShardStorage, StorageError};
use tokio::sync::{mpsc, oneshot};

use crate::config::BrokerConfig;
use crate::metadata::controller::Controller;
use crate::metadata::{MetadataStore, TopicMeta};

/// Work sent to a shard: runs on its thread with its `Rc<Shard>`.
pub type Job = Box<dyn FnOnce(Rc<Shard>) + Send>;

/// The target shard has stopped (broker shutting down).
#[derive(Debug, thiserror::Error)]
#[error("shard {0} is not running")]
pub struct ShardGone(pub usize);

/// Inboxes of every shard; shared by all (Send + Sync).
pub struct ShardSet {
    senders: Vec<mpsc::UnboundedSender<Job>>,
}

impl ShardSet {
    /// Creates `count` inboxes; the receivers go to the shard threads.
    pub fn new(count: usize) -> (Arc<ShardSet>, Vec<mpsc::UnboundedReceiver<Job>>) {
        assert!(count > 0, "at least one shard");
        let (senders, receivers) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        (Arc::new(ShardSet { senders }), receivers)
    }

    /// Number of shards.
    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Deterministic owner of a partition: a stable hash of the topic name plus the partition
    /// index, so one topic's partitions spread round-robin over the shards.
    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        ((hash.wrapping_add(partition as u64)) % self.senders.len() as u64) as usize
    }

    /// Sends `job` to `target`'s inbox.
    pub fn send(&self, target: usize, job: Job) -> Result<(), ShardGone> {
        self.senders
            .get(target)
            .ok_or(ShardGone(target))?
            .send(job)
            .map_err(|_| ShardGone(target))
    }
}

/// Topic lookups for the group coordinator, over the published metadata.
pub struct MetadataTopics(pub Arc<MetadataStore>);

impl sluice_group::TopicLookup for MetadataTopics {
    fn partition_count(&self, topic: &str) -> Option<i32> {
        self.0.load().topic(topic).map(|t| t.partitions)
    }
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
    /// This shard's latency histograms and counters.
    pub metrics: ShardMetrics,
    /// The consumer groups this shard owns.
    pub groups: sluice_group::GroupCoordinator,
    /// Idempotent-producer state of the partitions this shard owns, by topic then index.
    producers: RefCell<HashMap<String, HashMap<i32, crate::idempotence::ProducerStates>>>,
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
        Self {
            id,
            set,
            config,
            metadata,
            storage,
            controller,
            partitions: RefCell::new(HashMap::new()),
            connections: std::cell::Cell::new(0),
            metrics: ShardMetrics::new(id),
            groups,
            producers: RefCell::new(HashMap::new()),
        }
    }

    /// The partition if this shard owns it and it is open.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Partition> {
        self.partitions.borrow().get(topic)?.get(&index).cloned()
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

    /// Runs `f` on the producer states of one partition this shard owns.
    pub fn with_producer_states<T>(
        &self,
        topic: &str,
        index: i32,
        f: impl FnOnce(&mut crate::idempotence::ProducerStates) -> T,
    ) -> T {
        let mut producers = self.producers.borrow_mut();
        if !producers.contains_key(topic) {
            producers.insert(topic.to_string(), HashMap::new());
        }
        let states = producers.get_mut(topic).map(|parts| {
            parts
                .entry(index)
                .or_insert_with(|| self.rebuilt_producer_states(topic, index))
        });
        match states {
            Some(states) => f(states),
            None => f(&mut crate::idempotence::ProducerStates::new(
                self.producer_limits(),
            )),
        }
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

    /// A partition's producer states from the newest batch headers of its log (its first
    /// produce since this shard opened it). Blocking preads on the shard thread, once per
    /// partition, like loading a consumer-offsets partition.
    fn rebuilt_producer_states(
        &self,
        topic: &str,
        index: i32,
    ) -> crate::idempotence::ProducerStates {
        let limits = self.producer_limits();
        let Some(partition) = self.partition(topic, index) else {
            return crate::idempotence::ProducerStates::new(limits);
        };
        match partition.recent_batch_headers(crate::idempotence::REBUILD_WINDOW_BYTES) {
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
        self.producers.borrow_mut().remove(topic);
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

    /// All partitions this shard owns (for retention).
    pub fn owned_partitions(&self) -> Vec<Partition> {
        self.partitions
            .borrow()
            .values()
            .flat_map(|parts| parts.values().cloned())
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
        let sent = self.set.send(
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
}
