//! Partitions offline in this process: poisoned by a failed sync, so they refuse appends
//! (KAFKA_STORAGE_ERROR) until the broker restarts, while still serving what they
//! acknowledged. Broker-wide, because Metadata is answered by every shard but only the owning
//! shard's storage knows: the owner reports a poison here (storage's poison observer), and
//! Metadata lists the broker as an offline replica of those partitions with
//! KAFKA_STORAGE_ERROR, as Kafka does for a replica on a failed log directory.
//!
//! Owns the set and its mutex, taken only when a partition is poisoned or deleted, and by
//! Metadata while the set is not empty (an atomic count keeps the common, empty case free of
//! the lock). Must never: be touched on the produce or fetch path, or outlive the process
//! (a restart reopens, and so recovers, every partition).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The poisoned partitions of the broker, by topic and index (each cause is in the log).
#[derive(Debug, Default)]
pub struct OfflinePartitions {
    /// Entries in `by_topic`, readable without the lock.
    count: AtomicUsize,
    by_topic: Mutex<HashMap<String, BTreeSet<i32>>>,
}

impl OfflinePartitions {
    /// Marks `topic`-`index` offline.
    pub fn insert(&self, topic: &str, index: i32) {
        if self
            .lock()
            .entry(topic.to_string())
            .or_default()
            .insert(index)
        {
            self.count.fetch_add(1, Ordering::Release);
        }
    }

    /// Forgets the partitions of a deleted topic (a topic created later under the same name
    /// is new storage).
    pub fn remove_topic(&self, topic: &str) {
        if self.is_empty() {
            return;
        }
        if let Some(removed) = self.lock().remove(topic) {
            self.count.fetch_sub(removed.len(), Ordering::Release);
        }
    }

    /// Whether no partition is offline (lock-free).
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// The offline partition indexes of `topic`, ascending.
    pub fn of_topic(&self, topic: &str) -> Vec<i32> {
        if self.is_empty() {
            return Vec::new();
        }
        self.lock()
            .get(topic)
            .map(|partitions| partitions.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Number of offline partitions.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<i32>>> {
        // A poisoned lock only means a shard panicked while updating; the set stays valid.
        self.by_topic.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_is_idempotent_and_a_deleted_topic_is_forgotten() {
        let offline = OfflinePartitions::default();
        assert!(offline.is_empty() && offline.of_topic("t").is_empty());
        offline.insert("t", 2);
        offline.insert("t", 2);
        offline.insert("t", 0);
        offline.insert("u", 1);
        assert_eq!(offline.len(), 3);
        assert_eq!(offline.of_topic("t"), vec![0, 2]);
        offline.remove_topic("t");
        assert_eq!(offline.len(), 1);
        assert!(offline.of_topic("t").is_empty());
        assert_eq!(offline.of_topic("u"), vec![1]);
        offline.remove_topic("u");
        assert!(offline.is_empty());
    }
}
