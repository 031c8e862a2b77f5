//! Sparse per-segment indexes in Kafka's on-disk formats: `.index` maps a relative offset to a
//! file position (8-byte entries: u32 relative offset, u32 position, big-endian) and
//! `.timeindex` maps a max timestamp to a relative offset (12-byte entries: i64 timestamp,
//! u32 relative offset).
//!
//! Owns the in-memory entry lists and their encoding. Must never read or write segment data;
//! entries are hints that the caller confirms by reading batch headers, so a stale or lost
//! index costs a scan, never a wrong answer.

/// Bytes of one `.index` entry.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry.
pub(crate) const TIME_ENTRY_BYTES: usize = 12;

/// The sparse offset and time indexes of one segment.
#[derive(Debug, Default, Clone)]
pub(crate) struct SegmentIndex {
    /// (last offset of a batch relative to the segment base, that batch's position).
    offsets: Vec<(u32, u32)>,
    /// (largest timestamp so far, relative offset of the batch holding it).
    times: Vec<(i64, u32)>,
    /// Bytes appended since the last offset entry (Kafka's `bytesSinceLastIndexEntry`).
    bytes_since_entry: u64,
    /// Largest timestamp seen and its relative offset, for the time index.
    max_timestamp: Option<(i64, u32)>,
}

impl SegmentIndex {
    /// Records one appended batch: adds an entry every `interval_bytes`.
    pub(crate) fn on_batch(
        &mut self,
        relative_last_offset: u32,
        position: u32,
        size_bytes: u32,
        max_timestamp: i64,
        interval_bytes: u32,
    ) {
        if let Some(&(last_relative, last_position)) = self.offsets.last() {
            debug_assert!(relative_last_offset > last_relative || position > last_position);
        }
        if self.max_timestamp.is_none_or(|(ts, _)| max_timestamp > ts) {
            self.max_timestamp = Some((max_timestamp, relative_last_offset));
        }
        if self.bytes_since_entry > u64::from(interval_bytes) {
            self.offsets.push((relative_last_offset, position));
            if let Some((ts, relative)) = self.max_timestamp {
                if self.times.last().is_none_or(|&(last_ts, _)| ts > last_ts) {
                    self.times.push((ts, relative));
                }
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += u64::from(size_bytes);
    }

    /// Adds the final time entry Kafka writes when a segment stops being active, so the last
    /// time entry is the segment's largest timestamp.
    pub(crate) fn seal_time_index(&mut self) {
        if let Some((ts, relative)) = self.max_timestamp {
            if self.times.last().is_none_or(|&(last_ts, _)| ts > last_ts) {
                self.times.push((ts, relative));
            }
        }
    }

    /// Position to start scanning from to find the batch holding `relative_offset`: the
    /// position of the largest entry with relative offset <= target, else 0.
    pub(crate) fn position_for(&self, relative_offset: u32) -> u32 {
        let after = self
            .offsets
            .partition_point(|&(relative, _)| relative <= relative_offset);
        if after == 0 {
            0
        } else {
            self.offsets[after - 1].1
        }
    }

    /// The last indexed batch that starts in `(after_position, limit_position]`, as (relative
    /// last offset, position): where a forward walk over batch boundaries may jump to instead of
    /// reading every header in between. A hint like every entry: the caller confirms it.
    pub(crate) fn batch_start_within(
        &self,
        after_position: u32,
        limit_position: u32,
    ) -> Option<(u32, u32)> {
        let after = self
            .offsets
            .partition_point(|&(_, position)| position <= limit_position);
        let &(relative, position) = self.offsets.get(after.checked_sub(1)?)?;
        (position > after_position).then_some((relative, position))
    }

    /// Relative offset to start scanning from to find the first batch with max timestamp >=
    /// `timestamp_ms`: the offset of the largest time entry below it, else 0.
    pub(crate) fn relative_offset_for_time(&self, timestamp_ms: i64) -> u32 {
        let after = self.times.partition_point(|&(ts, _)| ts < timestamp_ms);
        if after == 0 {
            0
        } else {
            self.times[after - 1].1
        }
    }

    /// Largest timestamp known to the index and its relative offset.
    pub(crate) fn max_timestamp(&self) -> Option<(i64, u32)> {
        self.max_timestamp.or_else(|| self.times.last().copied())
    }

    /// Encodes `.index` contents.
    pub(crate) fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES);
        for &(relative, position) in &self.offsets {
            out.extend_from_slice(&relative.to_be_bytes());
            out.extend_from_slice(&position.to_be_bytes());
        }
        out
    }

    /// Encodes `.timeindex` contents.
    pub(crate) fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES);
        for &(ts, relative) in &self.times {
            out.extend_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&relative.to_be_bytes());
        }
        out
    }

    /// Decodes index files written by [`encode_offsets`](Self::encode_offsets) and
    /// [`encode_times`](Self::encode_times). Returns None when they are inconsistent (odd
    /// length, entries out of order, positions past `segment_bytes`): the caller rebuilds.
    pub(crate) fn decode(offsets: &[u8], times: &[u8], segment_bytes: u64) -> Option<SegmentIndex> {
        if offsets.len() % OFFSET_ENTRY_BYTES != 0 || times.len() % TIME_ENTRY_BYTES != 0 {
            return None;
        }
        let mut index = SegmentIndex::default();
        for entry in offsets.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
            let position = u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]);
            if u64::from(position) >= segment_bytes {
                return None;
            }
            if let Some(&(last_relative, last_position)) = index.offsets.last() {
                if relative <= last_relative || position <= last_position {
                    return None;
                }
            }
            index.offsets.push((relative, position));
        }
        for entry in times.chunks_exact(TIME_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&entry[..8]);
            let ts = i64::from_be_bytes(ts);
            let relative = u32::from_be_bytes([entry[8], entry[9], entry[10], entry[11]]);
            if let Some(&(last_ts, last_relative)) = index.times.last() {
                if ts <= last_ts || relative < last_relative {
                    return None;
                }
            }
            index.times.push((ts, relative));
        }
        index.max_timestamp = index.times.last().copied();
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_start_within_picks_the_last_entry_in_the_window() {
        let mut index = SegmentIndex::default();
        // 5,000-byte batches of 10 records: with a 4,096-byte interval every batch after the
        // first gets an entry.
        for batch in 0..10u32 {
            index.on_batch(batch * 10 + 9, batch * 5_000, 5_000, 0, 4_096);
        }
        assert_eq!(index.batch_start_within(0, 22_000), Some((49, 20_000)));
        assert_eq!(index.batch_start_within(0, 20_000), Some((49, 20_000)));
        assert_eq!(index.batch_start_within(20_000, 24_999), None);
        assert_eq!(index.batch_start_within(0, 4_999), None);
        assert_eq!(index.batch_start_within(5_000, 1 << 30), Some((99, 45_000)));
        assert_eq!(SegmentIndex::default().batch_start_within(0, 1 << 30), None);
    }

    #[test]
    fn entries_every_interval_and_round_trip() {
        let mut index = SegmentIndex::default();
        let mut position = 0u32;
        for batch in 0..100u32 {
            index.on_batch(batch, position, 1000, i64::from(batch) * 10, 4096);
            position += 1000;
        }
        assert!(
            (15..=25).contains(&index.offsets.len()),
            "{}",
            index.offsets.len()
        );
        let found = index.position_for(50);
        assert!(found <= 50_000 && found + 5 * 1000 >= 50_000, "{found}");
        assert_eq!(index.position_for(0), 0);
        index.seal_time_index();
        assert_eq!(index.max_timestamp(), Some((990, 99)));
        let decoded = SegmentIndex::decode(&index.encode_offsets(), &index.encode_times(), 100_000)
            .expect("decodes");
        assert_eq!(decoded.offsets, index.offsets);
        assert_eq!(decoded.times, index.times);
        assert!(decoded.relative_offset_for_time(500) <= 50);
        assert!(
            SegmentIndex::decode(&index.encode_offsets(), &[], 10).is_none(),
            "position past the end"
        );
    }
}
