//! The shard's single deadline queue for every group timeout (member sessions, join and sync
//! deadlines, pending member ids) and the coordinator's periodic chores.
//!
//! Owns: ordering deadlines and handing back the due ones. Must never: run a task or a tokio timer
//! per group or member; a heartbeat never touches this queue (it moves the member's deadline and
//! the one queued entry re-checks it when it fires), so an idle group costs nothing here.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// What a deadline is for. Entries carry enough identity to be ignored if stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimerEvent {
    /// Check a member's session deadline.
    Session {
        group: String,
        member: String,
        token: u64,
    },
    /// A member id handed out with MEMBER_ID_REQUIRED expires if it never joins.
    PendingMember { group: String, member: String },
    /// End of a PreparingRebalance round (initial delay or rebalance timeout).
    Join { group: String, rebalance_seq: u64 },
    /// Members that did not SyncGroup within the rebalance timeout of `generation` are removed.
    Sync { group: String, generation: i32 },
    /// Expire old offsets of empty groups (per shard).
    OffsetExpiry,
    /// Snapshot partitions whose log grew (per shard).
    Snapshot,
}

#[derive(Default)]
pub(crate) struct TimerQueue {
    entries: BTreeMap<(Instant, u64), TimerEvent>,
    next_seq: u64,
}

impl TimerQueue {
    pub fn schedule(&mut self, at: Instant, event: TimerEvent) {
        self.next_seq += 1;
        let previous = self.entries.insert((at, self.next_seq), event);
        debug_assert!(previous.is_none());
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns the first entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerEvent> {
        let (&key, _) = self.entries.iter().next()?;
        if key.0 > now {
            return None;
        }
        self.entries.remove(&key)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let mut q = TimerQueue::default();
        let t0 = Instant::now();
        q.schedule(t0 + Duration::from_secs(2), TimerEvent::Snapshot);
        q.schedule(t0 + Duration::from_secs(1), TimerEvent::OffsetExpiry);
        q.schedule(t0 + Duration::from_secs(1), TimerEvent::Snapshot);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(1)),
            Some(TimerEvent::OffsetExpiry)
        );
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(1)),
            Some(TimerEvent::Snapshot)
        );
        assert_eq!(q.pop_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(q.len(), 1);
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(5)),
            Some(TimerEvent::Snapshot)
        );
        assert_eq!(q.next_deadline(), None);
    }
}
