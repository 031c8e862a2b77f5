//! Incremental fetch sessions (KIP-227): a shard's bounded cache of sessions, each the set of
//! partitions one client fetches with their last fetch offsets and the high watermark and log
//! start it was last told, so that an incremental Fetch names only what changed and its
//! response carries only partitions with news (records, an error, a moved watermark).
//!
//! Sessions live on the shard that holds the client's connection (the shard that handles its
//! Fetch requests): no locks, no cross-shard messages. A client whose next connection lands on
//! another shard gets FETCH_SESSION_ID_NOT_FOUND there and starts a new session, as after a
//! broker restart. The cache holds at most `max.incremental.fetch.session.cache.slots`
//! sessions per broker, split evenly across shards; when full, a new session evicts the least
//! recently used one idle for longer than `fetch.session.eviction.ms` (Kafka's
//! 120 s), else the smallest one if the new session has more partitions, else is not created
//! (the client keeps doing full fetches, answered with session id 0).
//!
//! Must never: read or write a partition (the Fetch handler reads), or let a session grow past
//! what its requests named.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// FETCH_SESSION_ID_NOT_FOUND
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// INVALID_FETCH_SESSION_EPOCH
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
/// The epoch that asks for a new session (with session id 0) or closes one.
const INITIAL_EPOCH: i32 = 0;
/// The epoch of a sessionless fetch (or the last fetch of a session).
const FINAL_EPOCH: i32 = -1;

/// A partition a session fetches: resolved topic name (empty when its id is unknown), id, index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    /// Topic name.
    pub name: String,
    /// Topic id (nil below v13 when unknown).
    pub id: Uuid,
    /// Partition index.
    pub index: i32,
}

/// What a session remembers of one partition.
#[derive(Debug, Clone, Copy)]
pub struct CachedPartition {
    /// The client's last fetch offset.
    pub fetch_offset: i64,
    /// The client's per-partition byte limit.
    pub partition_max_bytes: i32,
    /// High watermark last sent (-1: never).
    pub high_watermark: i64,
    /// Log start offset last sent (-1: never).
    pub log_start_offset: i64,
    /// The client's `current_leader_epoch` (Fetch v9+; -1: no check).
    pub current_leader_epoch: i32,
}

struct Session {
    /// The epoch the client's next incremental fetch must carry.
    next_epoch: i32,
    /// In the order the client first named them.
    partitions: Vec<(PartitionKey, CachedPartition)>,
    last_used: Instant,
}

/// How a Fetch relates to the shard's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A full fetch; `session_id` is the one created for it, or 0.
    Full {
        /// Sent back to the client.
        session_id: i32,
    },
    /// An incremental fetch of session `session_id`: read every partition of the session and
    /// answer with those that have news.
    Incremental {
        /// The session.
        session_id: i32,
    },
}

/// One shard's sessions.
pub struct SessionCache {
    slots_max: usize,
    eviction_after: Duration,
    sessions: HashMap<i32, Session>,
    next_id: i32,
    /// Counters for /metrics.
    created: u64,
    closed: u64,
}

impl SessionCache {
    /// A cache of at most `slots_max` sessions; ids start at a per-shard offset so two shards
    /// rarely hand out the same id (a client is only ever told ids of its own shard).
    pub fn new(slots_max: usize, eviction_ms: u64, shard_id: usize) -> SessionCache {
        SessionCache {
            slots_max,
            eviction_after: Duration::from_millis(eviction_ms),
            sessions: HashMap::new(),
            next_id: (shard_id as i32).wrapping_mul(0x1000_0000).wrapping_add(1) & i32::MAX,
            created: 0,
            closed: 0,
        }
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// (sessions created, sessions closed or evicted) since start.
    pub fn totals(&self) -> (u64, u64) {
        (self.created, self.closed)
    }

    /// Applies a Fetch's session fields: `requested` are the partitions it names (with their
    /// offsets and limits), `forgotten` those an incremental fetch drops. Returns how to serve
    /// it, or the error code of the whole response.
    pub fn begin(
        &mut self,
        session_id: i32,
        epoch: i32,
        requested: &[(PartitionKey, CachedPartition)],
        forgotten: &[PartitionKey],
        now: Instant,
    ) -> Result<Kind, i16> {
        if session_id == 0 {
            return match epoch {
                FINAL_EPOCH => Ok(Kind::Full { session_id: 0 }),
                INITIAL_EPOCH => Ok(Kind::Full {
                    session_id: self.create(requested, now),
                }),
                _ => Err(FETCH_SESSION_ID_NOT_FOUND),
            };
        }
        if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
            // Closing: the client is done with `session_id` (and, at epoch 0, wants a new one).
            if self.sessions.remove(&session_id).is_some() {
                self.closed += 1;
            }
            let new_id = if epoch == INITIAL_EPOCH {
                self.create(requested, now)
            } else {
                0
            };
            return Ok(Kind::Full { session_id: new_id });
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(FETCH_SESSION_ID_NOT_FOUND);
        };
        if session.next_epoch != epoch {
            return Err(INVALID_FETCH_SESSION_EPOCH);
        }
        session.next_epoch = next_epoch(epoch);
        session.last_used = now;
        for (key, asked) in requested {
            match session.partitions.iter_mut().find(|(k, _)| k == key) {
                Some((_, cached)) => {
                    cached.fetch_offset = asked.fetch_offset;
                    cached.partition_max_bytes = asked.partition_max_bytes;
                    cached.current_leader_epoch = asked.current_leader_epoch;
                }
                None => session.partitions.push((key.clone(), *asked)),
            }
        }
        session
            .partitions
            .retain(|(key, _)| !forgotten.contains(key));
        Ok(Kind::Incremental { session_id })
    }

    /// The partitions of session `session_id`, to read.
    pub fn partitions(&self, session_id: i32) -> Vec<(PartitionKey, CachedPartition)> {
        self.sessions
            .get(&session_id)
            .map(|s| s.partitions.clone())
            .unwrap_or_default()
    }

    /// Records what was just sent for `key` in session `session_id`; returns whether an
    /// incremental response must carry it (the high watermark or log start moved, or
    /// `has_news`: records or an error).
    pub fn note_sent(
        &mut self,
        session_id: i32,
        key: &PartitionKey,
        high_watermark: i64,
        log_start_offset: i64,
        has_news: bool,
    ) -> bool {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return true;
        };
        let Some((_, cached)) = session.partitions.iter_mut().find(|(k, _)| k == key) else {
            return true;
        };
        let moved =
            cached.high_watermark != high_watermark || cached.log_start_offset != log_start_offset;
        cached.high_watermark = high_watermark;
        cached.log_start_offset = log_start_offset;
        has_news || moved
    }

    /// A new session holding `partitions`, or 0 when the cache has no room for it.
    fn create(&mut self, partitions: &[(PartitionKey, CachedPartition)], now: Instant) -> i32 {
        if self.slots_max == 0 {
            return 0;
        }
        if self.sessions.len() >= self.slots_max && !self.evict_one(partitions.len(), now) {
            return 0;
        }
        let mut id = self.next_id;
        while id == 0 || self.sessions.contains_key(&id) {
            id = id.wrapping_add(1) & i32::MAX;
        }
        self.next_id = id.wrapping_add(1) & i32::MAX;
        self.sessions.insert(
            id,
            Session {
                next_epoch: 1,
                partitions: partitions.to_vec(),
                last_used: now,
            },
        );
        self.created += 1;
        debug_assert!(self.sessions.len() <= self.slots_max);
        id
    }

    /// Kafka's eviction: the least recently used session idle past the eviction time; else
    /// the smallest session, if smaller than the newcomer.
    fn evict_one(&mut self, newcomer_partitions: usize, now: Instant) -> bool {
        let stale = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_used) >= self.eviction_after)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(id, _)| *id);
        let victim = stale.or_else(|| {
            self.sessions
                .iter()
                .min_by_key(|(_, s)| (s.partitions.len(), s.last_used))
                .filter(|(_, s)| s.partitions.len() < newcomer_partitions)
                .map(|(id, _)| *id)
        });
        match victim {
            Some(id) => {
                self.sessions.remove(&id);
                self.closed += 1;
                true
            }
            None => false,
        }
    }
}

/// Epochs wrap from i32::MAX to 1 (0 and -1 are reserved).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: i32) -> PartitionKey {
        PartitionKey {
            name: "t".into(),
            id: Uuid::nil(),
            index,
        }
    }

    fn asked(index: i32, offset: i64) -> (PartitionKey, CachedPartition) {
        (
            key(index),
            CachedPartition {
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                high_watermark: -1,
                log_start_offset: -1,
                current_leader_epoch: -1,
            },
        )
    }

    #[test]
    fn a_session_is_created_then_fetched_incrementally_with_checked_epochs() {
        let mut cache = SessionCache::new(10, 120_000, 0);
        let now = Instant::now();
        let Ok(Kind::Full { session_id }) =
            cache.begin(0, 0, &[asked(0, 0), asked(1, 0)], &[], now)
        else {
            panic!("full fetch");
        };
        assert!(session_id > 0);
        assert_eq!(cache.open_sessions(), 1);
        assert_eq!(
            cache.begin(session_id, 2, &[], &[], now),
            Err(INVALID_FETCH_SESSION_EPOCH)
        );
        assert_eq!(
            cache.begin(session_id + 1, 1, &[], &[], now),
            Err(FETCH_SESSION_ID_NOT_FOUND)
        );
        assert_eq!(
            cache.begin(session_id, 1, &[asked(1, 7)], &[key(0)], now),
            Ok(Kind::Incremental { session_id })
        );
        let parts = cache.partitions(session_id);
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].0.index, parts[0].1.fetch_offset), (1, 7));
        // Only a moved watermark (or news) goes out.
        assert!(cache.note_sent(session_id, &key(1), 10, 0, false));
        assert!(!cache.note_sent(session_id, &key(1), 10, 0, false));
        assert!(cache.note_sent(session_id, &key(1), 10, 0, true));
        // Epoch -1 closes it.
        assert_eq!(
            cache.begin(session_id, -1, &[], &[], now),
            Ok(Kind::Full { session_id: 0 })
        );
        assert_eq!(cache.open_sessions(), 0);
        assert_eq!(cache.totals(), (1, 1));
    }

    #[test]
    fn a_full_cache_evicts_stale_then_smaller_sessions_or_creates_none() {
        let mut cache = SessionCache::new(2, 1_000, 0);
        let t0 = Instant::now();
        let big: Vec<_> = (0..5).map(|i| asked(i, 0)).collect();
        let first = cache.begin(0, 0, &[asked(0, 0)], &[], t0);
        let second = cache.begin(0, 0, &big, &[], t0);
        assert!(matches!(first, Ok(Kind::Full { session_id }) if session_id > 0));
        assert!(matches!(second, Ok(Kind::Full { session_id }) if session_id > 0));
        // Full, nothing stale, the newcomer is not bigger than the smallest: no session.
        assert_eq!(
            cache.begin(0, 0, &[asked(0, 0)], &[], t0),
            Ok(Kind::Full { session_id: 0 })
        );
        // A bigger newcomer evicts the smallest.
        let third = cache.begin(0, 0, &big[..3], &[], t0);
        assert!(matches!(third, Ok(Kind::Full { session_id }) if session_id > 0));
        assert_eq!(cache.open_sessions(), 2);
        // Past the eviction time, any newcomer evicts the least recently used.
        let later = t0 + Duration::from_millis(1_500);
        let fourth = cache.begin(0, 0, &[asked(0, 0)], &[], later);
        assert!(matches!(fourth, Ok(Kind::Full { session_id }) if session_id > 0));
        assert_eq!(cache.open_sessions(), 2);
        assert_eq!(cache.totals(), (4, 2));
    }
}
