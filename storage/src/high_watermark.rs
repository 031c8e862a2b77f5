//! The high-watermark checkpoint of a replicated partition: the partition directory's
//! `replication-offset-checkpoint` (Kafka's file name and format, one entry), so a replica
//! that restarts opens with a high watermark no higher than one this cluster committed,
//! instead of its log end.
//!
//! Why it matters: a restarted replica's log can hold records past the committed high
//! watermark (written as leader, never copied to the ISR before the crash). Opened at its
//! log end, such a replica made leader again would serve them at once, before any follower
//! has them; if it then died, the next leader would not have them and consumers would have
//! read records that no longer exist. Kafka restores the high watermark from this checkpoint
//! for the same reason.
//!
//! Owns that file: reading it at open and writing it when asked (by the replication layer,
//! periodically, and by a clean shutdown). Any checkpointed value is safe to open with, since
//! a high watermark only names committed records: a stale one only delays visibility until
//! the followers fetch again. With no file, a cluster's broker opens at the log start (as
//! Kafka opens a partition with no checkpointed entry: a partition created less than one
//! interval before a crash has none yet), a single broker at the log end. Must never open
//! with a value above the log end or below the log start (both clamp), and never be written
//! for a partition that is not replicated: a single replica's high watermark is its log end.

use std::path::Path;
use std::rc::Rc;

use crate::log::PartitionShared;
use crate::{recovery, shard, Poisoned};

/// Name of the per-partition high-watermark checkpoint (Kafka's name).
pub(crate) const HIGH_WATERMARK_CHECKPOINT: &str = "replication-offset-checkpoint";

/// What the partition directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checkpointed {
    /// No file: never replicated here; the high watermark opens at the log end.
    Absent,
    /// The last high watermark written.
    At(i64),
    /// A file that does not parse (a torn write cannot happen, the write is atomic, but a
    /// damaged disk can): nothing is known committed past the log start.
    Unreadable,
}

/// Reads the checkpoint in `dir` (a blocking read: only at open, recovery's documented
/// exception).
pub(crate) fn read_checkpoint(dir: &Path) -> Checkpointed {
    match std::fs::read_to_string(dir.join(HIGH_WATERMARK_CHECKPOINT)) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Checkpointed::Absent,
        Err(_) => Checkpointed::Unreadable,
        Ok(text) => match recovery::decode_checkpoint(&text) {
            Some(offset) if offset >= 0 => Checkpointed::At(offset),
            _ => Checkpointed::Unreadable,
        },
    }
}

/// The high watermark a partition opens with, from its checkpoint and its recovered offsets;
/// with no checkpoint, the log start when `unknown_at_log_start` (a cluster's broker: the
/// partition may be a replica whose tail the ISR never had), else the log end.
pub(crate) fn opening_high_watermark(
    checkpointed: Checkpointed,
    unknown_at_log_start: bool,
    log_start_offset: i64,
    log_end_offset: i64,
) -> i64 {
    assert!(
        log_start_offset <= log_end_offset,
        "log start {log_start_offset} past the log end {log_end_offset}"
    );
    match checkpointed {
        Checkpointed::Absent if unknown_at_log_start => log_start_offset,
        Checkpointed::Absent => log_end_offset,
        Checkpointed::At(offset) => offset.clamp(log_start_offset, log_end_offset),
        Checkpointed::Unreadable => log_start_offset,
    }
}

/// Writes the partition's current high watermark to its checkpoint (atomically, synced) if it
/// changed since the last write or read; returns whether it wrote. A failed write poisons the
/// partition, as every failed sync does.
pub(crate) async fn write_checkpoint(partition: &Rc<PartitionShared>) -> Result<bool, Poisoned> {
    // Two writers (the periodic one and a shutdown) go one after the other, so the file only
    // moves forward.
    let _guard = partition.high_watermark_lock.lock().await;
    let high_watermark = {
        let log = partition.log.borrow();
        if log.deleted || log.poisoned.is_some() {
            return Ok(false);
        }
        log.offsets.high_watermark()
    };
    if partition.high_watermark_checkpointed.get() == Some(high_watermark) {
        return Ok(false);
    }
    let Some(shard) = partition.shard.upgrade() else {
        return Ok(false);
    };
    let text =
        recovery::encode_recovery_point(&partition.topic, partition.partition, high_watermark);
    shard::write_checkpoint_or_poison(&shard, partition, HIGH_WATERMARK_CHECKPOINT, text).await?;
    partition
        .high_watermark_checkpointed
        .set(Some(high_watermark));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opening_high_watermark_is_clamped_and_conservative() {
        for cluster in [false, true] {
            assert_eq!(
                opening_high_watermark(Checkpointed::At(12), cluster, 5, 20),
                12
            );
            assert_eq!(
                opening_high_watermark(Checkpointed::At(40), cluster, 5, 20),
                20
            );
            assert_eq!(
                opening_high_watermark(Checkpointed::At(2), cluster, 5, 20),
                5
            );
            assert_eq!(
                opening_high_watermark(Checkpointed::Unreadable, cluster, 5, 20),
                5
            );
        }
        assert_eq!(
            opening_high_watermark(Checkpointed::Absent, false, 5, 20),
            20
        );
        assert_eq!(opening_high_watermark(Checkpointed::Absent, true, 5, 20), 5);
    }

    #[test]
    fn the_checkpoint_reads_back_and_garbage_is_unreadable() {
        let dir = std::env::temp_dir().join(format!("sluice-hw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_checkpoint(&dir), Checkpointed::Absent);
        let path = dir.join(HIGH_WATERMARK_CHECKPOINT);
        std::fs::write(&path, recovery::encode_recovery_point("t", 3, 17)).unwrap();
        assert_eq!(read_checkpoint(&dir), Checkpointed::At(17));
        std::fs::write(&path, "0\n1\nt 3 x\n").unwrap();
        assert_eq!(read_checkpoint(&dir), Checkpointed::Unreadable);
        std::fs::write(&path, "").unwrap();
        assert_eq!(read_checkpoint(&dir), Checkpointed::Unreadable);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
