//! DeleteRecords: moves a partition's log start offset up to an offset the client names, which
//! may fall inside a segment, and keeps it across restarts and crashes in the partition's
//! `log-start-offset-checkpoint` (Kafka's checkpoint format, one entry).
//!
//! Owns that checkpoint and the order of a deletion: the checkpoint is written and synced
//! (atomically, through the I/O seam) before the log start moves in memory, so a start any
//! reader or client has seen is never lost to a crash; the segments wholly below the new start
//! are then deleted through retention's path. Must never move the log start past the high
//! watermark (what consumers can read), nor back, nor delete a segment itself: retention
//! alone unlinks files.

use std::path::Path;
use std::rc::Rc;

use crate::log::{now_ms, PartitionShared};
use crate::offsets::LogStartOffset;
use crate::{recovery, retention, shard, StorageError};

/// Name of the per-partition log-start checkpoint (Kafka's file name and format).
pub(crate) const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";

/// DeleteRecords' "up to the high watermark" offset.
pub(crate) const HIGH_WATERMARK: i64 = -1;

/// The log start a previous DeleteRecords left in `dir`, if any. Read with a blocking call:
/// only at open, recovery's documented exception.
pub(crate) fn read_checkpoint(dir: &Path) -> Option<i64> {
    std::fs::read_to_string(dir.join(LOG_START_CHECKPOINT))
        .ok()
        .and_then(|text| recovery::decode_checkpoint(&text))
}

/// Moves the log start to `offset` (`-1`: the high watermark); returns the log start after
/// the call. An offset below the current start changes nothing (Kafka answers with the
/// current low watermark); one above the high watermark is OFFSET_OUT_OF_RANGE.
pub(crate) async fn delete_records(
    partition: &Rc<PartitionShared>,
    offset: i64,
) -> Result<i64, StorageError> {
    // Two deletions write the checkpoint one after the other, so it only moves forward.
    let _guard = partition.log_start_lock.lock().await;
    let target = {
        let log = partition.log.borrow();
        if let Some(poisoned) = &log.poisoned {
            return Err(StorageError::Poisoned(poisoned.clone()));
        }
        if log.deleted {
            return Err(StorageError::Io {
                context: format!("deleting records of {}", partition.label()),
                source: std::io::Error::other("partition was deleted"),
            });
        }
        let high_watermark = log.offsets.high_watermark();
        let target = if offset == HIGH_WATERMARK {
            high_watermark
        } else {
            offset
        };
        if target < 0 || target > high_watermark {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: log.offsets.start(),
                log_end_offset: high_watermark,
            });
        }
        if target <= log.offsets.start() {
            return Ok(log.offsets.start());
        }
        target
    };
    let Some(shard) = partition.shard.upgrade() else {
        return Err(StorageError::Io {
            context: format!("deleting records of {}", partition.label()),
            source: std::io::Error::other("storage is shut down"),
        });
    };
    let checkpoint = recovery::encode_recovery_point(&partition.topic, partition.partition, target);
    // A failed sync may have dropped pages: the partition refuses writes until restart.
    shard::write_checkpoint_or_poison(&shard, partition, LOG_START_CHECKPOINT, checkpoint)
        .await
        .map_err(StorageError::Poisoned)?;
    let start = {
        let mut log = partition.log.borrow_mut();
        // Retention may have moved the start past `target` while the checkpoint was written.
        if target > log.offsets.start() {
            log.offsets.advance_start(LogStartOffset(target));
        }
        log.offsets.start()
    };
    tracing::info!(partition = %partition.label(), log_start_offset = start, "records deleted");
    retention::enforce(partition, now_ms()).await;
    Ok(start)
}
