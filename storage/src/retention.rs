//! Retention: deletes whole old segments past `retention.ms` (by the segment's largest
//! timestamp) or `retention.bytes` (oldest first while the rest still exceeds the limit), or
//! wholly below a log start DeleteRecords moved (`log_start.rs`), and advances the log start
//! offset (never back). Time and size apply only under `cleanup.policy` `delete` (or
//! `compact,delete`); nothing runs while the cleaner works on the partition (the maintenance
//! lock).
//!
//! Must never delete the active segment, a segment whose bytes are not all below the high
//! watermark, or one whose finalization has not finished. A deleted segment leaves the log at
//! once and its files are unlinked through the ring (UNLINKAT, via the I/O seam) after the
//! log is unlocked; readers holding a `SegmentHandle` keep the data through their open
//! descriptor. Must never touch a file with a blocking syscall: a segment's largest timestamp,
//! when its index is not loaded yet, is read through the ring before the log is locked for
//! the deletions, and the unlinks go through the ring after.

use std::rc::Rc;

use crate::log::PartitionShared;
use crate::segment::Segment;

/// Applies the partition's retention settings at `now_ms`; returns segments removed.
pub(crate) async fn enforce(partition: &PartitionShared, now_ms: i64) -> usize {
    let _maintenance = partition.maintenance_lock.lock().await;
    let by_time = {
        let config = &partition.log.borrow().config;
        config.cleanup_policy.delete && config.retention_ms >= 0
    };
    if by_time {
        load_max_timestamps(partition, now_ms).await;
    }
    let deleted = take_expired(partition, now_ms);
    match partition.shard.upgrade() {
        Some(shard) => {
            let io = shard.io.clone();
            for segment in &deleted {
                segment.unlink_through(io.as_ref()).await;
            }
        }
        // The storage is gone (a dropped shard): no ring to go through.
        None => deleted.iter().for_each(|segment| segment.unlink()),
    }
    deleted.len()
}

/// Takes the segments retention deletes out of the log (marked deleted, files not yet
/// unlinked) and moves the log start past them.
fn take_expired(partition: &PartitionShared, now_ms: i64) -> Vec<Rc<Segment>> {
    let mut deleted = Vec::new();
    let mut log = partition.log.borrow_mut();
    // A compact-only log keeps its segments whatever their age or size (only DeleteRecords'
    // log start removes them).
    let delete_policy = log.config.cleanup_policy.delete;
    let retention_ms = if delete_policy {
        log.config.retention_ms
    } else {
        -1
    };
    let retention_bytes = if delete_policy {
        log.config.retention_bytes
    } else {
        -1
    };
    let mut total_bytes: u64 = log
        .segments
        .iter()
        .map(|segment| segment.state.borrow().written_bytes)
        .sum();
    let mut removed = 0usize;
    while log.segments.len() > 1 {
        let oldest = log.segments[0].clone();
        let (deletable, size_bytes) = {
            let state = oldest.state.borrow();
            (
                state.sealed && state.finalized && state.visible_bytes == state.reserved_bytes,
                state.written_bytes,
            )
        };
        // A replicated partition's high watermark may lag its durable end: the log start
        // never passes it (a consumer's committed range stays readable).
        let below_high_watermark = log.segments[1].base_offset <= log.offsets.high_watermark();
        if !deletable || !below_high_watermark {
            break;
        }
        // Loaded above; a timestamp still unknown (unreadable index) keeps the segment.
        let max_timestamp = oldest.state.borrow().max_timestamp;
        let expired_by_time = retention_ms >= 0
            && max_timestamp
                .is_some_and(|(max_ts, _)| now_ms.saturating_sub(max_ts) > retention_ms);
        let expired_by_size =
            retention_bytes >= 0 && total_bytes - size_bytes >= retention_bytes as u64;
        let below_start = log.segments[1].base_offset <= log.offsets.start();
        if !expired_by_time && !expired_by_size && !below_start {
            break;
        }
        log.segments.remove(0);
        oldest.state.borrow_mut().deleted = true;
        deleted.push(oldest.clone());
        total_bytes -= size_bytes;
        removed += 1;
        tracing::info!(
            partition = %partition.label(),
            segment = oldest.base_offset,
            bytes = size_bytes,
            by_time = expired_by_time,
            "retention deleted a segment"
        );
    }
    if removed > 0 {
        let start = log.segments[0].base_offset;
        if start > log.offsets.start() {
            log.offsets
                .advance_start(crate::offsets::LogStartOffset(start));
        }
    }
    debug_assert_eq!(removed, deleted.len());
    deleted
}

/// Loads, oldest first, the largest timestamp of each sealed segment retention may look at:
/// up to the first one not expired by time.
async fn load_max_timestamps(partition: &PartitionShared, now_ms: i64) {
    let Ok(reads) = partition.reads() else {
        return;
    };
    let mut index = 0usize;
    loop {
        let (segment, interval_bytes, retention_ms) = {
            let log = partition.log.borrow();
            if index + 1 >= log.segments.len() {
                return;
            }
            (
                log.segments[index].clone(),
                log.config.index_interval_bytes,
                log.config.retention_ms,
            )
        };
        let expired = segment
            .max_timestamp(reads.as_ref(), interval_bytes)
            .await
            .is_some_and(|(max_ts, _)| now_ms.saturating_sub(max_ts) > retention_ms);
        if !expired {
            return;
        }
        index += 1;
    }
}
