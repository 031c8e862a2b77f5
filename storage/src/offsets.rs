//! A partition log's three offsets as distinct types, kept together so their order is checked
//! on every change: log start <= high watermark <= log end.
//!
//! Owns that order. Every change goes through [`LogOffsets::set`], which asserts it in release
//! builds too: a high watermark above the log end would serve bytes never written, one below
//! the log start would answer fetches for deleted data. Must never hand out a `&mut` to a
//! single offset, which would let a caller move one past another unchecked.

/// First offset still in the log (retention moves it up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LogStartOffset(pub(crate) i64);

/// Offset one past the last record readers may see (moves when appends become durable, or
/// written under a `flush.messages`/`flush.ms` policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HighWatermark(pub(crate) i64);

/// Next offset to be assigned (moves at enqueue, back on a failed write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LogEndOffset(pub(crate) i64);

/// The three offsets of one partition log, in order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogOffsets {
    start: LogStartOffset,
    high_watermark: HighWatermark,
    end: LogEndOffset,
}

impl LogOffsets {
    /// The offsets of a log just opened: everything recovered is visible.
    pub(crate) fn opened(start: LogStartOffset, end: LogEndOffset) -> LogOffsets {
        let mut offsets = LogOffsets {
            start,
            high_watermark: HighWatermark(start.0),
            end,
        };
        offsets.set(start, HighWatermark(end.0), end);
        offsets
    }

    pub(crate) fn start(&self) -> i64 {
        self.start.0
    }

    pub(crate) fn high_watermark(&self) -> i64 {
        self.high_watermark.0
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
        self.set(self.start, self.high_watermark, end);
    }

    /// Appends up to `high_watermark` (exclusive) are visible.
    pub(crate) fn publish(&mut self, high_watermark: HighWatermark) {
        assert!(
            high_watermark > self.high_watermark,
            "high watermark does not advance: {high_watermark:?} <= {:?}",
            self.high_watermark
        );
        self.set(self.start, high_watermark, self.end);
    }

    /// A failed write gives back the offsets from `end` on (none of them was visible).
    pub(crate) fn roll_back(&mut self, end: LogEndOffset) {
        assert!(
            end <= self.end,
            "rollback moves the log end up: {end:?} > {:?}",
            self.end
        );
        self.set(self.start, self.high_watermark, end);
    }

    /// The log's tail was cut at `end` (a follower's truncation): the high watermark cannot
    /// stay above it.
    pub(crate) fn truncate(&mut self, end: LogEndOffset) {
        assert!(
            end <= self.end,
            "truncation moves the log end up: {end:?} > {:?}",
            self.end
        );
        let high_watermark = HighWatermark(self.high_watermark.0.min(end.0));
        self.set(self.start, high_watermark, end);
    }

    /// Retention removed everything below `start`.
    pub(crate) fn advance_start(&mut self, start: LogStartOffset) {
        assert!(
            start >= self.start,
            "log start moves back: {start:?} < {:?}",
            self.start
        );
        self.set(start, self.high_watermark, self.end);
    }

    /// The one setter: every change passes the order check, in release builds too.
    fn set(&mut self, start: LogStartOffset, high_watermark: HighWatermark, end: LogEndOffset) {
        assert!(start.0 >= 0, "negative log start {start:?}");
        assert!(
            start.0 <= high_watermark.0,
            "log start {start:?} above high watermark {high_watermark:?}"
        );
        assert!(
            high_watermark.0 <= end.0,
            "high watermark {high_watermark:?} above log end {end:?}"
        );
        self.start = start;
        self.high_watermark = high_watermark;
        self.end = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_holds_through_every_change() {
        let mut offsets = LogOffsets::opened(LogStartOffset(5), LogEndOffset(9));
        assert_eq!(
            (offsets.start(), offsets.high_watermark(), offsets.end()),
            (5, 9, 9)
        );
        offsets.reserve(LogEndOffset(12));
        offsets.publish(HighWatermark(11));
        offsets.roll_back(LogEndOffset(11));
        offsets.advance_start(LogStartOffset(11));
        assert_eq!(
            (offsets.start(), offsets.high_watermark(), offsets.end()),
            (11, 11, 11)
        );
    }

    #[test]
    #[should_panic(expected = "above log end")]
    fn a_rollback_below_the_high_watermark_panics() {
        let mut offsets = LogOffsets::opened(LogStartOffset(0), LogEndOffset(4));
        offsets.roll_back(LogEndOffset(3));
    }

    #[test]
    #[should_panic(expected = "above high watermark")]
    fn log_start_above_the_high_watermark_panics() {
        let mut offsets = LogOffsets::opened(LogStartOffset(0), LogEndOffset(4));
        offsets.reserve(LogEndOffset(8));
        offsets.advance_start(LogStartOffset(6));
    }
}
