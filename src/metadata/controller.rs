//! The metadata controller: the single writer of cluster metadata, living on shard 0.
//!
//! Every change is validated against the current snapshot, appended to the metadata log
//! (durable), applied on the owning shards (partitions opened or deleted), and only then
//! published. Changes are serialized by an async lock held across that whole sequence; this
//! is the cold path (topic admin), never produce or fetch. Handing out a producer id takes
//! the lock only to reserve a new block of ids: from the local metadata log on a single
//! broker, from the controller quorum in a cluster (so ids are unique cluster-wide). Must
//! never: publish a change that is not in the log, or hand out in a cluster an id of a block
//! the quorum has not committed to this broker.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use uuid::Uuid;

use super::log::{apply, MetadataLog, MetadataRecord};
use super::{validate_topic_name, MetadataSnapshot, TopicMeta};
use crate::errors::code;
use crate::security::quota::{self, QuotaEntity};
use crate::shard::Shard;

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions; -1 = `num.partitions`.
    pub partitions: i32,
    /// Replication factor; -1 = default. Anything but 1 fails on a single broker.
    pub replication_factor: i16,
    /// In a cluster: the replicas of each partition, preferred leader first, as the request
    /// gave them (empty: the controller places them).
    pub assignments: Vec<Vec<i32>>,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// A failed admin operation: Kafka error code and message.
pub type AdminError = (i16, String);

/// The single metadata writer.
pub struct Controller {
    /// Serializes changes: held across validate, append, apply and publish. The log lives
    /// inside it, so appending to it needs no second lock.
    lock: tokio::sync::Mutex<MetadataLog>,
    /// Next producer id to hand out and the end of the reserved block (-1: not loaded yet).
    producer_ids: std::cell::Cell<(i64, i64)>,
}

/// Producer ids reserved per metadata log record.
const PRODUCER_ID_BLOCK: i64 = 1000;

impl Controller {
    /// Takes ownership of the metadata log.
    pub fn new(log: MetadataLog) -> Self {
        Self {
            lock: tokio::sync::Mutex::new(log),
            producer_ids: std::cell::Cell::new((-1, -1)),
        }
    }

    /// Appends `record` durably (through shard 0's storage ring, so the shard thread never
    /// waits on the disk) and returns the snapshot it makes. Callers hold `lock`, whose
    /// guard gives them `log`.
    async fn commit(
        log: &mut MetadataLog,
        shard: &Shard,
        record: MetadataRecord,
    ) -> Result<MetadataSnapshot, AdminError> {
        Self::commit_all(log, shard, std::slice::from_ref(&record)).await
    }

    /// [`Controller::commit`] for several records: one write and one fdatasync for all, and
    /// one snapshot that has them all (none is published on a failed write).
    async fn commit_all(
        log: &mut MetadataLog,
        shard: &Shard,
        records: &[MetadataRecord],
    ) -> Result<MetadataSnapshot, AdminError> {
        let ring = shard.storage.ring();
        log.append_all_on(&ring, records).await.map_err(|error| {
            tracing::error!(%error, "metadata log append failed");
            (code::KAFKA_STORAGE_ERROR, error.to_string())
        })?;
        let mut next = (*shard.metadata.load()).clone();
        for record in records {
            apply(&mut next, record);
        }
        Ok(next)
    }

    /// Appends `records` in order, durable together before they are published, under the
    /// change lock (SCRAM credentials: the records were checked by the caller against the
    /// snapshot).
    pub async fn commit_records(
        &self,
        shard: &Shard,
        records: Vec<MetadataRecord>,
    ) -> Result<(), AdminError> {
        let mut log = self.lock.lock().await;
        let next = Self::commit_all(&mut log, shard, &records).await?;
        shard.metadata.publish(next);
        Ok(())
    }

    /// Hands out a producer id never used before, even across restarts: ids are reserved in
    /// blocks through the metadata log, and a restart starts after the last reserved block.
    ///
    /// An id left in the reserved block is handed out without the lock (no await between
    /// reading and advancing the counter, on one thread), so InitProducerId does not wait
    /// behind a long CreateTopics; only a refill of the block takes the lock.
    pub async fn allocate_producer_id(&self, shard: &Shard) -> Result<i64, AdminError> {
        if shard.metadata.is_clustered() {
            return self.allocate_cluster_producer_id(shard).await;
        }
        if let Some(id) = self.take_reserved_producer_id(shard) {
            return Ok(id);
        }
        let mut log = self.lock.lock().await;
        // Another allocation may have refilled the block while this one waited for the lock:
        // two must not both commit a block and hand out the same ids.
        if let Some(id) = self.take_reserved_producer_id(shard) {
            return Ok(id);
        }
        let (next, end) = self.reserved_producer_ids(shard);
        let block_end = end + PRODUCER_ID_BLOCK;
        let snapshot =
            Self::commit(&mut log, shard, MetadataRecord::ProducerIds { block_end }).await?;
        shard.metadata.publish(snapshot);
        self.producer_ids.set((next + 1, block_end));
        Ok(next)
    }

    /// In a cluster: the next id of the block the quorum committed to this broker, or a new
    /// block. Blocks are never persisted here: after a restart the rest of the last block is
    /// skipped and a new one asked for, as the quorum never hands a block out twice.
    async fn allocate_cluster_producer_id(&self, shard: &Shard) -> Result<i64, AdminError> {
        if let Some(id) = self.take_cluster_producer_id() {
            return Ok(id);
        }
        // One refill at a time: two must not each ask for a block and waste one.
        let _guard = self.lock.lock().await;
        if let Some(id) = self.take_cluster_producer_id() {
            return Ok(id);
        }
        let admin = shard.metadata.admin().ok_or_else(|| {
            (
                code::COORDINATOR_NOT_AVAILABLE,
                "this broker has not joined its cluster yet".to_string(),
            )
        })?;
        let block = admin.allocate_producer_ids().await.map_err(|error| {
            // Retriable: the producer asks again, and a controller is elected meanwhile.
            (code::COORDINATOR_NOT_AVAILABLE, error.to_string())
        })?;
        if block.first < 0 || block.len < 1 {
            return Err((
                code::COORDINATOR_NOT_AVAILABLE,
                format!("the quorum handed out an empty producer id block {block:?}"),
            ));
        }
        tracing::info!(
            first = block.first,
            len = block.len,
            "producer id block from the controller quorum"
        );
        self.producer_ids
            .set((block.first + 1, block.first.saturating_add(block.len)));
        Ok(block.first)
    }

    /// In a cluster: the next id of the committed block, if one is left (none before the
    /// first block arrives).
    fn take_cluster_producer_id(&self) -> Option<i64> {
        let (next, end) = self.producer_ids.get();
        if next < 0 || next >= end {
            return None;
        }
        self.producer_ids.set((next + 1, end));
        Some(next)
    }

    /// The next unused id and the end of the reserved block (after a restart: the block
    /// recorded in the metadata log, all of it treated as used).
    fn reserved_producer_ids(&self, shard: &Shard) -> (i64, i64) {
        let (next, end) = self.producer_ids.get();
        if next < 0 {
            let reserved = shard.metadata.load().producer_id_block_end;
            return (reserved, reserved);
        }
        (next, end)
    }

    /// Hands out the next id of the reserved block, if one is left.
    fn take_reserved_producer_id(&self, shard: &Shard) -> Option<i64> {
        let (next, end) = self.reserved_producer_ids(shard);
        if next >= end {
            return None;
        }
        self.producer_ids.set((next + 1, end));
        Some(next)
    }

    /// Creates topics (or only validates them).
    pub async fn create_topics(
        &self,
        shard: &Rc<Shard>,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<Arc<TopicMeta>, AdminError>> {
        let mut log = self.lock.lock().await;
        let mut results = Vec::with_capacity(topics.len());
        for topic in topics {
            results.push(Self::create_one(&mut log, shard, topic, validate_only).await);
        }
        results
    }

    async fn create_one(
        log: &mut MetadataLog,
        shard: &Rc<Shard>,
        topic: NewTopic,
        validate_only: bool,
    ) -> Result<Arc<TopicMeta>, AdminError> {
        validate_topic_name(&topic.name).map_err(|m| (code::INVALID_TOPIC_EXCEPTION, m))?;
        // The offsets log's partitions are opened by the group coordinators under this name; a
        // user topic of the same name would be a second writer on the same directories.
        if topic.name == sluice_group::OFFSETS_TOPIC {
            return Err((
                code::INVALID_REQUEST,
                format!("'{}' is reserved for committed offsets", topic.name),
            ));
        }
        if shard.metadata.load().topic(&topic.name).is_some() {
            return Err((
                code::TOPIC_ALREADY_EXISTS,
                format!("Topic '{}' already exists.", topic.name),
            ));
        }
        let partitions = requested_partitions(shard, topic.partitions)?;
        check_partition_budget(shard, partitions)?;
        if topic.replication_factor != -1 && topic.replication_factor != 1 {
            return Err((
                code::INVALID_REPLICATION_FACTOR,
                format!(
                    "Replication factor {} is larger than the 1 available broker.",
                    topic.replication_factor
                ),
            ));
        }
        shard
            .config
            .topic_log_config(&topic.configs)
            .map_err(|m| (code::INVALID_CONFIG, m))?;
        let meta = TopicMeta {
            name: topic.name.clone(),
            id: Uuid::new_v4(),
            partitions,
            configs: topic.configs.clone(),
        };
        if validate_only {
            return Ok(Arc::new(meta));
        }
        let meta = Arc::new(meta);
        // Partitions first, the record second: a create that fails (a full disk) leaves no
        // topic behind, neither in the live metadata nor in the log replayed at restart, and
        // the same create can be retried once the disk has room.
        let record = MetadataRecord::CreateTopic {
            name: meta.name.clone(),
            id: meta.id,
            partitions,
            configs: meta.configs.clone(),
        };
        let committed = match open_partitions(shard, &meta, 0..partitions).await {
            Ok(()) => Self::commit(log, shard, record).await,
            Err(error) => Err(error),
        };
        let next = match committed {
            Ok(next) => next,
            Err(error) => {
                delete_partitions(shard, &meta.name).await;
                return Err(error);
            }
        };
        shard.metadata.publish(next);
        tracing::info!(topic = %meta.name, id = %meta.id, partitions, "created topic");
        Ok(meta)
    }

    /// Deletes a topic by name or id.
    pub async fn delete_topic(
        &self,
        shard: &Rc<Shard>,
        name: Option<String>,
        id: Option<Uuid>,
    ) -> Result<Arc<TopicMeta>, AdminError> {
        let mut log = self.lock.lock().await;
        let snapshot = shard.metadata.load();
        let topic = match (&name, id) {
            (Some(name), _) if !name.is_empty() => snapshot.topic(name).cloned(),
            (_, Some(id)) => snapshot
                .names_by_id
                .get(&id)
                .and_then(|n| snapshot.topic(n))
                .cloned(),
            _ => None,
        };
        let Some(topic) = topic else {
            let unknown = if id.is_some() && name.as_deref().is_none_or(str::is_empty) {
                code::UNKNOWN_TOPIC_ID
            } else {
                code::UNKNOWN_TOPIC_OR_PARTITION
            };
            return Err((unknown, "This server does not host this topic.".into()));
        };
        let next = Self::commit(
            &mut log,
            shard,
            MetadataRecord::DeleteTopic { id: topic.id },
        )
        .await?;
        // Publish first so no new request reaches the partitions, then delete them.
        shard.metadata.publish(next);
        delete_partitions(shard, &topic.name).await;
        tracing::info!(topic = %topic.name, id = %topic.id, "deleted topic");
        Ok(topic)
    }

    /// Grows a topic to `count` partitions.
    pub async fn create_partitions(
        &self,
        shard: &Rc<Shard>,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let mut log = self.lock.lock().await;
        let topic = existing_topic(shard, name)?;
        if count <= topic.partitions {
            return Err((
                code::INVALID_PARTITIONS,
                format!(
                    "Topic currently has {} partitions, which is higher than or equal to the requested {count}.",
                    topic.partitions
                ),
            ));
        }
        check_partition_budget(shard, count - topic.partitions)?;
        if validate_only {
            return Ok(());
        }
        let grown = Arc::new(TopicMeta {
            partitions: count,
            ..(*topic).clone()
        });
        // As in create_one: a failure to open leaves the topic as it was, live and in the log
        // (partitions opened before the failure stay unreachable until a retry reuses them).
        open_partitions(shard, &grown, topic.partitions..count).await?;
        let next = Self::commit(
            &mut log,
            shard,
            MetadataRecord::SetPartitions {
                id: topic.id,
                partitions: count,
            },
        )
        .await?;
        shard.metadata.publish(next);
        Ok(())
    }

    /// Commits the record `change` builds from the current snapshot (under the lock, so it
    /// sees every earlier change) and publishes it; `Ok(None)` from `change`: nothing to
    /// write. For changes no shard has to act on (ACLs); returns what `change` returned.
    pub async fn commit_change<T>(
        &self,
        shard: &Shard,
        change: impl FnOnce(&MetadataSnapshot) -> Result<(Option<MetadataRecord>, T), AdminError>,
    ) -> Result<T, AdminError> {
        let mut log = self.lock.lock().await;
        let (record, outcome) = change(&shard.metadata.load())?;
        if let Some(record) = record {
            let next = Self::commit(&mut log, shard, record).await?;
            shard.metadata.publish(next);
        }
        Ok(outcome)
    }

    /// Replaces (incremental = false) or merges topic config overrides.
    pub async fn alter_topic_configs(
        &self,
        shard: &Rc<Shard>,
        name: &str,
        changes: Vec<(String, Option<String>)>,
        incremental: bool,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        if shard.metadata.is_clustered() {
            return Err((
                code::INVALID_REQUEST,
                "topic configs cannot be changed in a cluster yet: they live in the controller quorum".into(),
            ));
        }
        let mut log = self.lock.lock().await;
        let topic = existing_topic(shard, name)?;
        let mut configs = if incremental {
            topic.configs.clone()
        } else {
            BTreeMap::new()
        };
        for (key, value) in changes {
            match value {
                Some(value) => configs.insert(key, value),
                None => configs.remove(&key),
            };
        }
        shard
            .config
            .topic_log_config(&configs)
            .map_err(|m| (code::INVALID_CONFIG, m))?;
        if validate_only {
            return Ok(());
        }
        let next = Self::commit(
            &mut log,
            shard,
            MetadataRecord::SetConfigs {
                id: topic.id,
                configs: configs.clone(),
            },
        )
        .await?;
        shard.metadata.publish(next);
        let updated = Arc::new(TopicMeta {
            configs,
            ..(*topic).clone()
        });
        for target in 0..shard.set.count() {
            let topic = updated.clone();
            let _ = shard
                .invoke_on(target, move |s| async move { s.reconfigure_topic(&topic) })
                .await;
        }
        Ok(())
    }
}

impl Controller {
    /// Sets and removes client quota values, one entity at a time: each value is one record,
    /// and an entity's records are durable together. The handler checked every entity's
    /// changes ([`check_quota_ops`]) first.
    pub async fn alter_client_quotas(
        &self,
        shard: &Rc<Shard>,
        alterations: Vec<QuotaAlteration>,
    ) -> Vec<Result<(), AdminError>> {
        let mut log = self.lock.lock().await;
        let mut results = Vec::with_capacity(alterations.len());
        for (entity, ops) in alterations {
            let records: Vec<MetadataRecord> = ops
                .into_iter()
                .map(|(key, value)| MetadataRecord::ClientQuota {
                    entity: entity.clone(),
                    key,
                    value,
                })
                .collect();
            if records.is_empty() {
                results.push(Ok(()));
                continue;
            }
            let outcome = Self::commit_all(&mut log, shard, &records).await;
            results.push(outcome.map(|next| shard.metadata.publish(next)));
        }
        results
    }
}

/// One entity's quota changes: each key set to a value or removed (None).
pub type QuotaAlteration = (QuotaEntity, Vec<(String, Option<f64>)>);

/// Checks an entity's changes as Kafka's controller does: known keys with valid values, and
/// no key twice (INVALID_REQUEST otherwise, and nothing of that entity changes).
pub fn check_quota_ops(ops: &[(String, Option<f64>)]) -> Result<(), String> {
    for (i, (key, value)) in ops.iter().enumerate() {
        if ops[..i].iter().any(|(k, _)| k == key) {
            return Err(format!("quota key '{key}' appears more than once"));
        }
        match value {
            Some(value) => {
                quota::configs::validate(key, *value)?;
            }
            None => {
                if quota::QuotaKind::from_key(key).is_none() {
                    return Err(format!("unknown quota key '{key}'"));
                }
            }
        }
    }
    Ok(())
}

/// The current metadata of topic `name`, or UNKNOWN_TOPIC_OR_PARTITION.
/// The partition count a CreateTopics entry asks for: -1 is `num.partitions`.
pub(super) fn requested_partitions(shard: &Shard, requested: i32) -> Result<i32, AdminError> {
    match requested {
        -1 => Ok(shard.config.num_partitions),
        n if n >= 1 => Ok(n),
        n => Err((
            code::INVALID_PARTITIONS,
            format!("Number of partitions must be larger than 0, got {n}."),
        )),
    }
}

fn existing_topic(shard: &Shard, name: &str) -> Result<Arc<TopicMeta>, AdminError> {
    shard.metadata.load().topic(name).cloned().ok_or_else(|| {
        (
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("Topic '{name}' does not exist."),
        )
    })
}

/// Removes and deletes the open partitions of topic `name` on every shard.
async fn delete_partitions(shard: &Rc<Shard>, name: &str) {
    let mut pending = Vec::new();
    for target in 0..shard.set.count() {
        let name = name.to_string();
        pending.push(shard.invoke_on(
            target,
            move |s| async move { s.delete_topic_partitions(&name) },
        ));
    }
    for result in futures::future::join_all(pending).await {
        if let Err(error) = result {
            tracing::error!(%error, "deleting partitions on a shard failed");
        }
    }
}

/// Refuses `added` more partitions when the broker would then hold more than
/// `max.broker.partitions` (the offsets log's partitions count too): each partition keeps file
/// descriptors open, and opening tens of thousands in one request ran the process out of them.
fn check_partition_budget(shard: &Rc<Shard>, added: i32) -> Result<(), AdminError> {
    let held: i64 = shard
        .metadata
        .load()
        .topics
        .values()
        .filter(|topic| topic.name != sluice_group::OFFSETS_TOPIC)
        .map(|topic| i64::from(topic.partitions))
        .sum::<i64>()
        + i64::from(sluice_group::OFFSETS_PARTITION_COUNT);
    let limit = i64::from(shard.config.partitions_max);
    if held + i64::from(added) > limit {
        return Err((
            code::INVALID_PARTITIONS,
            format!(
                "{added} more partitions would exceed max.broker.partitions={limit}: the broker holds {held}."
            ),
        ));
    }
    Ok(())
}

/// Opens partitions `range` of `topic` on their owning shards.
///
/// Opens the partitions one at a time, yielding between them: opening a partition does file
/// work on its shard's thread (the documented startup/open exception), so a request opening
/// many must leave room for that shard's produce and fetch traffic in between.
async fn open_partitions(
    shard: &Rc<Shard>,
    topic: &Arc<TopicMeta>,
    range: std::ops::Range<i32>,
) -> Result<(), AdminError> {
    for index in range {
        let owner = shard.set.owner_of(&topic.name, index);
        let opened = {
            let topic = topic.clone();
            shard
                .invoke_on(owner, move |s| async move {
                    let opened = s
                        .open_partition(&topic, index)
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    tokio::task::yield_now().await;
                    opened
                })
                .await
        };
        match opened {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(topic = %topic.name, %error, "opening partition failed");
                return Err((code::KAFKA_STORAGE_ERROR, error));
            }
            Err(error) => return Err((code::KAFKA_STORAGE_ERROR, error.to_string())),
        }
    }
    Ok(())
}
