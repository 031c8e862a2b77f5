//! The leader-epoch cache of one partition: which leader epoch started at which offset, and
//! its checkpoint file `leader-epoch-checkpoint` in Kafka's text layout (version `0`, the
//! entry count, then one `epoch start_offset` line per entry).
//!
//! Owns the epoch -> start-offset map and its order: epochs strictly increase and start
//! offsets never decrease, checked when an entry is added and when the file is read back.
//! Answers OffsetForLeaderEpoch's question (the end offset of an epoch) with Kafka's rules.
//! Must never do I/O itself: the log writes the encoded text through the storage's I/O seam
//! (atomically and durably) and recovery reads it at open.

/// Name of the per-partition checkpoint file (Kafka's).
pub(crate) const CHECKPOINT: &str = "leader-epoch-checkpoint";
/// Kafka's epoch for "no epoch" (UNDEFINED_EPOCH).
pub const UNDEFINED_EPOCH: i32 = -1;
/// Kafka's offset for "no offset" (UNDEFINED_EPOCH_OFFSET).
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// One leader epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// The first offset of that epoch.
    pub start_offset: i64,
}

/// Epoch -> start offset, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub(crate) fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`; false (nothing changes) when `epoch`
    /// is not newer than the latest one. Entries starting at or after `start_offset` are
    /// dropped first: an epoch that began there wrote nothing (Kafka does the same), so the
    /// start offsets stay non-decreasing.
    pub(crate) fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 {
            return false;
        }
        if self.latest().is_some_and(|latest| latest.epoch >= epoch) {
            return false;
        }
        self.entries
            .retain(|entry| entry.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.assert_order();
        true
    }

    /// Drops every entry starting at or after `end_offset` (the log was cut there); true
    /// when something was dropped.
    pub(crate) fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < end_offset);
        self.entries.len() != before
    }

    /// The end offset of `requested` and the epoch it belongs to, as OffsetForLeaderEpoch
    /// answers (Kafka's `LeaderEpochFileCache.endOffsetFor`): the latest epoch ends at the
    /// log end; an older one ends where the next larger epoch starts, reported with the
    /// largest epoch at or below the requested one (the requested one itself when it is older
    /// than every entry); an epoch newer than the latest, or an empty cache, has no answer
    /// (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET).
    pub(crate) fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        let undefined = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        let Some(latest) = self.latest() else {
            return undefined;
        };
        if requested == UNDEFINED_EPOCH {
            return undefined;
        }
        if requested == latest.epoch {
            return (requested, log_end_offset);
        }
        let Some(higher) = self.entries.iter().find(|entry| entry.epoch > requested) else {
            return undefined;
        };
        let floor = self
            .entries
            .iter()
            .rev()
            .find(|entry| entry.epoch <= requested);
        match floor {
            Some(floor) => (floor.epoch, higher.start_offset),
            None => (requested, higher.start_offset),
        }
    }

    /// Kafka's checkpoint text.
    pub(crate) fn encode(&self) -> String {
        let mut text = format!("0\n{}\n", self.entries.len());
        for entry in &self.entries {
            text.push_str(&format!("{} {}\n", entry.epoch, entry.start_offset));
        }
        text
    }

    /// Reads a checkpoint back; None when it is malformed or out of order (the caller then
    /// rebuilds the cache).
    pub(crate) fn decode(text: &str) -> Option<LeaderEpochCache> {
        let mut lines = text.lines();
        if lines.next()?.trim() != "0" {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut entries = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let mut words = lines.next()?.split_whitespace();
            let epoch: i32 = words.next()?.parse().ok()?;
            let start_offset: i64 = words.next()?.parse().ok()?;
            if words.next().is_some() || epoch < 0 || start_offset < 0 {
                return None;
            }
            let in_order = entries.last().is_none_or(|last: &EpochEntry| {
                last.epoch < epoch && last.start_offset <= start_offset
            });
            if !in_order {
                return None;
            }
            entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        if lines.any(|line| !line.trim().is_empty()) {
            return None;
        }
        Some(LeaderEpochCache { entries })
    }

    fn assert_order(&self) {
        for pair in self.entries.windows(2) {
            assert!(
                pair[0].epoch < pair[1].epoch,
                "leader epochs out of order: {pair:?}"
            );
            assert!(
                pair[0].start_offset <= pair[1].start_offset,
                "epoch start offsets go back: {pair:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::default();
        for &(epoch, start) in entries {
            assert!(cache.assign(epoch, start));
        }
        cache
    }

    #[test]
    fn end_offsets_follow_kafkas_rules() {
        let cache = cache(&[(1, 0), (3, 10), (6, 25)]);
        assert_eq!(cache.end_offset_for(6, 40), (6, 40), "latest: the log end");
        assert_eq!(cache.end_offset_for(3, 40), (3, 25));
        assert_eq!(
            cache.end_offset_for(4, 40),
            (3, 25),
            "a gap: the floor epoch"
        );
        assert_eq!(cache.end_offset_for(0, 40), (0, 0), "older than all");
        assert_eq!(cache.end_offset_for(7, 40), (-1, -1), "newer than all");
        assert_eq!(cache.end_offset_for(-1, 40), (-1, -1));
        assert_eq!(
            LeaderEpochCache::default().end_offset_for(0, 5),
            (-1, -1),
            "empty"
        );
    }

    #[test]
    fn assign_keeps_the_order_and_drops_empty_epochs() {
        let mut cache = cache(&[(1, 0), (2, 10)]);
        assert!(!cache.assign(2, 12), "same epoch");
        assert!(!cache.assign(1, 20), "older epoch");
        assert!(cache.assign(4, 10), "epoch 2 wrote nothing");
        assert_eq!(
            cache.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 4,
                    start_offset: 10
                }
            ]
        );
        assert!(cache.truncate_from_end(10));
        assert_eq!(cache.latest().map(|entry| entry.epoch), Some(1));
        assert!(!cache.truncate_from_end(10));
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_garbage() {
        let cache = cache(&[(0, 0), (5, 123)]);
        assert_eq!(cache.encode(), "0\n2\n0 0\n5 123\n");
        assert_eq!(LeaderEpochCache::decode(&cache.encode()), Some(cache));
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n1\n0 x\n",
            "0\n2\n3 0\n2 5\n",
            "0\n2\n1 9\n2 5\n",
            "0\n1\n1 0 7\n",
            "0\n1\n1 0\n2 4\n",
        ] {
            assert_eq!(LeaderEpochCache::decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            LeaderEpochCache::decode("0\n0\n"),
            Some(LeaderEpochCache::default())
        );
    }
}
