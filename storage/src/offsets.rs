//! A partition log's four offsets as distinct types, kept together so their order is checked
//! on every change: log start <= high watermark <= durable end <= log end.
//!
//! Owns that order and the high-watermark rule. Every change goes through [`LogOffsets::set`],
//! which asserts it in release builds too: a high watermark above the durable end would let a
//! consumer read bytes a crash can take back, one below the log start would answer fetches
//! for deleted data. Must never hand out a `&mut` to a single offset, which would let a caller
//! move one past another unchecked, and never move the high watermark back except through
//! [`LogOffsets::truncate`] (a follower cutting its tail).
//!
//! The high-watermark rule: a single replica's high watermark is its durable end. A replicated
//! partition's is capped by what the other in-sync replicas have ([`LogOffsets::limit_high_watermark`],
//! set by the replication layer: on a leader the minimum durable end over the other in-sync
//! replicas, on a follower the leader's high watermark): it is the largest offset both
//! durable here and under that limit, and it never moves back.

/// First offset still in the log (retention moves it up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LogStartOffset(pub(crate) i64);

/// Offset one past the last record consumers may see: durable here and, in a replicated
/// partition, on every in-sync replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HighWatermark(pub(crate) i64);

/// Offset one past the last record this replica holds under its flush policy (fdatasync'ed by
/// default; written under `flush.messages`/`flush.ms`): what it reports to a leader as its log
/// end and what a leader serves its followers up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DurableEnd(pub(crate) i64);

/// Next offset to be assigned (moves at enqueue, back on a failed write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LogEndOffset(pub(crate) i64);

/// The four offsets of one partition log, in order, and the replicated cap on the high
/// watermark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogOffsets {
    start: LogStartOffset,
    high_watermark: HighWatermark,
    durable_end: DurableEnd,
    end: LogEndOffset,
    /// None: the high watermark follows the durable end (one replica, or a leader alone in
    /// its ISR). Some(limit): it may not pass `limit`.
    high_watermark_limit: Option<i64>,
}

impl LogOffsets {
    /// The offsets of a log just opened: everything recovered is durable, and visible up to
    /// `high_watermark` (the log end for a single replica; a replicated partition's
    /// checkpointed high watermark, `high_watermark.rs`). The cap starts at that high
    /// watermark too: only the replication layer lifts it (to None for a replica alone).
    pub(crate) fn opened(
        start: LogStartOffset,
        high_watermark: HighWatermark,
        end: LogEndOffset,
    ) -> LogOffsets {
        let mut offsets = LogOffsets {
            start,
            high_watermark: HighWatermark(start.0),
            durable_end: DurableEnd(start.0),
            end,
            high_watermark_limit: (high_watermark.0 < end.0).then_some(high_watermark.0),
        };
        offsets.set(start, high_watermark, DurableEnd(end.0), end);
        offsets
    }

    pub(crate) fn start(&self) -> i64 {
        self.start.0
    }

    pub(crate) fn high_watermark(&self) -> i64 {
        self.high_watermark.0
    }

    pub(crate) fn durable_end(&self) -> i64 {
        self.durable_end.0
    }

    pub(crate) fn end(&self) -> i64 {
        self.end.0
    }

    /// Offsets were assigned up to `end` (exclusive) at enqueue.
    pub(crate) fn reserve(&mut self, end: LogEndOffset) {
        assert!(
            end >= self.end,
            "log end moves back at enqueue: {end:?} < {:?}",
            self.end
        );
        self.set(self.start, self.high_watermark, self.durable_end, end);
    }

    /// Appends up to `durable_end` (exclusive) are durable here; the high watermark follows
    /// as far as its limit allows.
    pub(crate) fn publish(&mut self, durable_end: DurableEnd) {
        assert!(
            durable_end > self.durable_end,
            "durable end does not advance: {durable_end:?} <= {:?}",
            self.durable_end
        );
        let high_watermark = self.high_watermark_under(durable_end, self.high_watermark_limit);
        self.set(self.start, high_watermark, durable_end, self.end);
    }

    /// Sets the replicated cap on the high watermark (None: no cap) and moves the high
    /// watermark up to what it now allows; returns whether it moved.
    pub(crate) fn limit_high_watermark(&mut self, limit: Option<i64>) -> bool {
        self.high_watermark_limit = limit;
        let high_watermark = self.high_watermark_under(self.durable_end, limit);
        let moved = high_watermark > self.high_watermark;
        self.set(self.start, high_watermark, self.durable_end, self.end);
        moved
    }

    /// The high watermark the rule gives for `durable_end` under `limit`: never back.
    fn high_watermark_under(&self, durable_end: DurableEnd, limit: Option<i64>) -> HighWatermark {
        let allowed = limit.map_or(durable_end.0, |limit| limit.min(durable_end.0));
        HighWatermark(allowed.max(self.high_watermark.0))
    }

    /// A failed write gives back the offsets from `end` on (none of them was durable).
    pub(crate) fn roll_back(&mut self, end: LogEndOffset) {
        assert!(
            end <= self.end,
            "rollback moves the log end up: {end:?} > {:?}",
            self.end
        );
        self.set(self.start, self.high_watermark, self.durable_end, end);
    }

    /// The log's tail was cut at `end` (a follower's truncation): neither the durable end nor
    /// the high watermark can stay above it (the one case where they move back).
    pub(crate) fn truncate(&mut self, end: LogEndOffset) {
        assert!(
            end <= self.end,
            "truncation moves the log end up: {end:?} > {:?}",
            self.end
        );
        let high_watermark = HighWatermark(self.high_watermark.0.min(end.0));
        let durable_end = DurableEnd(self.durable_end.0.min(end.0));
        self.set(self.start, high_watermark, durable_end, end);
    }

    /// Retention removed everything below `start`.
    pub(crate) fn advance_start(&mut self, start: LogStartOffset) {
        assert!(
            start >= self.start,
            "log start moves back: {start:?} < {:?}",
            self.start
        );
        self.set(start, self.high_watermark, self.durable_end, self.end);
    }

    /// The one setter: every change passes the order check, in release builds too.
    fn set(
        &mut self,
        start: LogStartOffset,
        high_watermark: HighWatermark,
        durable_end: DurableEnd,
        end: LogEndOffset,
    ) {
        assert!(start.0 >= 0, "negative log start {start:?}");
        assert!(
            start.0 <= high_watermark.0,
            "log start {start:?} above high watermark {high_watermark:?}"
        );
        assert!(
            high_watermark.0 <= durable_end.0,
            "high watermark {high_watermark:?} above durable end {durable_end:?}"
        );
        assert!(
            durable_end.0 <= end.0,
            "durable end {durable_end:?} above log end {end:?}"
        );
        self.start = start;
        self.high_watermark = high_watermark;
        self.durable_end = durable_end;
        self.end = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(offsets: &LogOffsets) -> (i64, i64, i64, i64) {
        (
            offsets.start(),
            offsets.high_watermark(),
            offsets.durable_end(),
            offsets.end(),
        )
    }

    #[test]
    fn order_holds_through_every_change() {
        let mut offsets = LogOffsets::opened(LogStartOffset(5), HighWatermark(9), LogEndOffset(9));
        assert_eq!(all(&offsets), (5, 9, 9, 9));
        offsets.reserve(LogEndOffset(12));
        offsets.publish(DurableEnd(11));
        assert_eq!(all(&offsets), (5, 11, 11, 12));
        offsets.roll_back(LogEndOffset(11));
        offsets.advance_start(LogStartOffset(11));
        assert_eq!(all(&offsets), (11, 11, 11, 11));
    }

    #[test]
    fn a_limited_high_watermark_waits_for_the_limit_and_never_moves_back() {
        let mut offsets = LogOffsets::opened(LogStartOffset(0), HighWatermark(4), LogEndOffset(4));
        assert!(!offsets.limit_high_watermark(Some(2)));
        offsets.reserve(LogEndOffset(10));
        offsets.publish(DurableEnd(10));
        assert_eq!(all(&offsets), (0, 4, 10, 10));
        assert!(offsets.limit_high_watermark(Some(7)));
        assert_eq!(offsets.high_watermark(), 7);
        // A limit past the durable end stops at the durable end.
        assert!(offsets.limit_high_watermark(Some(50)));
        assert_eq!(offsets.high_watermark(), 10);
        // A lower limit does not take back what was visible.
        assert!(!offsets.limit_high_watermark(Some(3)));
        assert_eq!(offsets.high_watermark(), 10);
        offsets.reserve(LogEndOffset(12));
        offsets.publish(DurableEnd(12));
        assert_eq!(offsets.high_watermark(), 10);
        assert!(offsets.limit_high_watermark(None));
        assert_eq!(all(&offsets), (0, 12, 12, 12));
    }

    #[test]
    fn opened_below_the_log_end_stays_there_until_the_replication_layer_lifts_it() {
        // A replicated partition reopened at its checkpointed high watermark.
        let mut offsets = LogOffsets::opened(LogStartOffset(0), HighWatermark(6), LogEndOffset(9));
        assert_eq!(all(&offsets), (0, 6, 9, 9));
        // An append before the replication layer has a say does not expose the tail.
        offsets.reserve(LogEndOffset(11));
        offsets.publish(DurableEnd(11));
        assert_eq!(all(&offsets), (0, 6, 11, 11));
        // A follower fetched up to 10 (leader), or the replica leads alone (None).
        assert!(offsets.limit_high_watermark(Some(10)));
        assert_eq!(offsets.high_watermark(), 10);
        assert!(offsets.limit_high_watermark(None));
        assert_eq!(all(&offsets), (0, 11, 11, 11));
    }

    #[test]
    #[should_panic(expected = "above log end")]
    fn a_rollback_below_the_durable_end_panics() {
        let mut offsets = LogOffsets::opened(LogStartOffset(0), HighWatermark(4), LogEndOffset(4));
        offsets.roll_back(LogEndOffset(3));
    }

    #[test]
    #[should_panic(expected = "above high watermark")]
    fn log_start_above_the_high_watermark_panics() {
        let mut offsets = LogOffsets::opened(LogStartOffset(0), HighWatermark(4), LogEndOffset(4));
        offsets.reserve(LogEndOffset(8));
        offsets.advance_start(LogStartOffset(6));
    }
}
