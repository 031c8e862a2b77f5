//! What a partition log does when its leadership changes: recording a new leader epoch (the
//! epoch cache and its durable checkpoint) and cutting the log's tail (`truncate_to`, what a
//! replica that becomes follower does before it fetches from the new leader).
//!
//! Owns the truncation protocol. A truncation first writes the marker `.sluice-truncate-to`
//! (atomically and durably), then lowers the recovery point when the cut reaches a finalized
//! segment, removes the later segments, cuts the segment holding the offset and syncs it,
//! syncs the directory, and removes the marker; recovery at open finds a marker that a crash
//! left behind and finishes the cut before anything else. So a crash at any point leaves the
//! old log (no marker yet) or the truncated one. A failure after the marker is durable
//! poisons the partition (the restart's recovery completes the cut). Must never cut while an
//! append of the partition is in flight (it refuses new ones and waits for those queued),
//! and never cut below the log start.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use crate::epoch::{self, LeaderEpochCache};
use crate::log::{now_ms, PartitionShared};
use crate::offsets::LogEndOffset;
use crate::recovery;
use crate::segment::{self, Segment};
use crate::shard::{self, ShardShared};
use crate::{Poisoned, StorageError};

/// Name of the marker a truncation writes before it changes any segment.
pub(crate) const TRUNCATION_MARKER: &str = ".sluice-truncate-to";

/// The marker's text: the offset the log is cut to.
pub(crate) fn encode_marker(offset: i64) -> String {
    format!("truncate_to {offset}\n")
}

/// Reads a marker back; None when it is malformed.
pub(crate) fn decode_marker(text: &str) -> Option<i64> {
    let mut words = text.split_whitespace();
    if words.next()? != "truncate_to" {
        return None;
    }
    let offset: i64 = words.next()?.parse().ok()?;
    (offset >= 0 && words.next().is_none()).then_some(offset)
}

fn shut_down(partition: &PartitionShared) -> StorageError {
    StorageError::Io {
        context: format!("changing {}", partition.label()),
        source: io::Error::other("storage is shut down"),
    }
}

/// Writes the epoch cache's checkpoint (atomic, durable) under the partition's finalize lock,
/// so a segment finalization (which moves the recovery point past batches whose epochs
/// recovery would otherwise rebuild from a scan) never overtakes it. A failure poisons the
/// partition.
pub(crate) async fn write_epoch_checkpoint(
    partition: &Rc<PartitionShared>,
) -> Result<(), Poisoned> {
    let _guard = partition.finalize_lock.lock().await;
    write_epoch_checkpoint_locked(partition).await
}

async fn write_epoch_checkpoint_locked(partition: &Rc<PartitionShared>) -> Result<(), Poisoned> {
    let Some(shard) = partition.shard.upgrade() else {
        return Ok(());
    };
    let text = {
        let log = partition.log.borrow();
        if let Some(poisoned) = &log.poisoned {
            return Err(poisoned.clone());
        }
        if log.deleted {
            return Ok(());
        }
        log.epochs.encode()
    };
    let written = shard::write_small_file(
        &shard.io,
        partition,
        epoch::CHECKPOINT,
        text.into_bytes(),
        true,
    )
    .await;
    if let Err(poisoned) = &written {
        crate::writer::poison(&shard, partition, poisoned.clone(), &mut []);
    }
    written
}

/// Records that `leader_epoch` starts at the log end (a replica became leader) and makes the
/// checkpoint durable before returning.
pub(crate) async fn assign_epoch(
    partition: &Rc<PartitionShared>,
    leader_epoch: i32,
) -> Result<(), StorageError> {
    let changed = {
        let mut log = partition.log.borrow_mut();
        if let Some(poisoned) = &log.poisoned {
            return Err(StorageError::Poisoned(poisoned.clone()));
        }
        let end = log.offsets.end();
        log.epochs.assign(leader_epoch, end)
    };
    if changed {
        write_epoch_checkpoint(partition).await?;
    }
    Ok(())
}

/// Cuts the log so that its end is at or below `offset`: the batch holding `offset` and
/// everything after it go (batch granularity: the new log end is that batch's base offset).
/// Returns the new log end offset. A no-op when `offset` is at or past the log end.
pub(crate) async fn truncate_to(
    partition: &Rc<PartitionShared>,
    offset: i64,
) -> Result<i64, StorageError> {
    let shard = partition
        .shard
        .upgrade()
        .ok_or_else(|| shut_down(partition))?;
    // Never beside a cleaner pass or retention: they hold segments this may remove.
    let _maintenance = partition.maintenance_lock.lock().await;
    let _guard = partition.finalize_lock.lock().await;
    {
        let log = partition.log.borrow();
        if log.deleted {
            return Err(shut_down(partition));
        }
        if let Some(poisoned) = &log.poisoned {
            return Err(StorageError::Poisoned(poisoned.clone()));
        }
        if offset >= log.offsets.end() {
            return Ok(log.offsets.end());
        }
        if offset < log.offsets.start() {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: log.offsets.start(),
                log_end_offset: log.offsets.end(),
            });
        }
    }
    // Before anything is cut: a snapshot above the cut must never describe the batches that
    // later take those offsets (every snapshot offset is a batch boundary, so none lies
    // inside the batch holding `offset`, and those at or below the new end stay valid).
    crate::producer_snapshot::remove_above(partition, offset).await?;
    partition.log.borrow_mut().truncating = true;
    let result = truncate_locked(&shard, partition, offset).await;
    partition.log.borrow_mut().truncating = false;
    let new_end = result?;
    // After the cut: a crash before this leaves entries past the log end, which the unclean
    // open that follows drops (entries of markers still in the log are never lost).
    crate::txn_index::drop_past(partition, new_end).await?;
    Ok(new_end)
}

/// Waits until every append queued for `partition` is published or failed.
async fn drain_appends(partition: &PartitionShared) -> Result<(), StorageError> {
    loop {
        let advanced = partition.high_watermark_advanced.notified();
        tokio::pin!(advanced);
        advanced.as_mut().enable();
        {
            let log = partition.log.borrow();
            if let Some(poisoned) = &log.poisoned {
                return Err(StorageError::Poisoned(poisoned.clone()));
            }
            if log.offsets.durable_end() == log.offsets.end() {
                return Ok(());
            }
        }
        advanced.await;
    }
}

/// Where the cut falls: the segment kept as the new active one, the byte position in it, the
/// new log end, and the segments after it.
struct Cut {
    keep: Rc<Segment>,
    position: u64,
    new_end: i64,
    later: Vec<Rc<Segment>>,
    /// The kept segment was finalized: the recovery point may be past it.
    keep_finalized: bool,
}

async fn plan_cut(
    shard: &ShardShared,
    partition: &PartitionShared,
    offset: i64,
) -> Result<Cut, StorageError> {
    let (keep, later, interval_bytes) = {
        let log = partition.log.borrow();
        let keep_index = log
            .segments
            .partition_point(|segment| segment.base_offset < offset)
            .saturating_sub(1);
        (
            log.segments[keep_index].clone(),
            log.segments[keep_index + 1..].to_vec(),
            log.config.index_interval_bytes,
        )
    };
    let (visible_bytes, next_offset, keep_finalized) = {
        let state = keep.state.borrow();
        (state.visible_bytes, state.next_offset, state.finalized)
    };
    let (position, new_end) = if offset <= keep.base_offset {
        (0, keep.base_offset)
    } else {
        let io = shard.io.clone();
        let mut headers = keep
            .walk_headers(
                io.as_ref(),
                visible_bytes,
                segment::short_walk_window_bytes(interval_bytes),
            )
            .map_err(|source| StorageError::Io {
                context: format!("opening {}", keep.log_path().display()),
                source,
            })?;
        let found = keep
            .find_batch(&mut headers, offset, interval_bytes)
            .await
            .map_err(|source| StorageError::Io {
                context: format!("finding offset {offset} in {}", keep.log_path().display()),
                source,
            })?;
        match found {
            Some((position, header)) => (position, header.base_offset),
            None => (visible_bytes, next_offset),
        }
    };
    assert!(position <= visible_bytes, "cut past the visible bytes");
    assert!(new_end <= offset, "cut leaves offset {offset} in the log");
    Ok(Cut {
        keep,
        position,
        new_end,
        later,
        keep_finalized,
    })
}

async fn truncate_locked(
    shard: &Rc<ShardShared>,
    partition: &Rc<PartitionShared>,
    offset: i64,
) -> Result<i64, StorageError> {
    drain_appends(partition).await?;
    let cut = plan_cut(shard, partition, offset).await?;
    let io = shard.io.clone();
    // Before the marker is durable nothing changed: a failure leaves the log as it was.
    io.write_small_file(
        partition.dir.clone(),
        TRUNCATION_MARKER.to_string(),
        encode_marker(cut.new_end).into_bytes(),
        true,
    )
    .await
    .map_err(|source| StorageError::Io {
        context: format!(
            "writing {}",
            partition.dir.join(TRUNCATION_MARKER).display()
        ),
        source,
    })?;
    tracing::warn!(
        partition = %partition.label(),
        offset,
        new_log_end_offset = cut.new_end,
        segments_removed = cut.later.len(),
        "truncating the log's tail"
    );
    // From here on a crash or a failure is finished by recovery: poison on failure.
    if let Err(poisoned) = cut_files(&io, partition, &cut).await {
        crate::writer::poison(shard, partition, poisoned.clone(), &mut []);
        return Err(StorageError::Poisoned(poisoned));
    }
    // Recovery's epoch check rewrites the checkpoint without the epochs past the cut.
    if let Err(error) = reload(shard, partition, &cut) {
        let poisoned = Poisoned {
            partition: partition.label(),
            operation: "reopening the log after a truncation".into(),
            source: std::sync::Arc::new(io::Error::other(error.to_string())),
        };
        crate::writer::poison(shard, partition, poisoned.clone(), &mut []);
        return Err(StorageError::Poisoned(poisoned));
    }
    Ok(cut.new_end)
}

/// The file changes of a truncation whose marker is durable, in crash-safe order.
async fn cut_files(
    io: &Rc<dyn crate::io::IoBackend>,
    partition: &Rc<PartitionShared>,
    cut: &Cut,
) -> Result<(), Poisoned> {
    let failed = |operation: String| {
        let label = partition.label();
        move |source: io::Error| Poisoned {
            partition: label,
            operation,
            source: std::sync::Arc::new(source),
        }
    };
    if cut.keep_finalized {
        // Recovery must scan the kept segment (and what later grows after it) again.
        let text = recovery::encode_recovery_point(
            &partition.topic,
            partition.partition,
            cut.keep.base_offset,
        );
        shard::write_small_file(
            io,
            partition,
            recovery::RECOVERY_CHECKPOINT,
            text.into_bytes(),
            true,
        )
        .await?;
    }
    for segment in cut.later.iter().rev() {
        segment.state.borrow_mut().deleted = true;
        for path in segment.paths() {
            if let Err(error) = io.unlink(path.clone()).await {
                if error.kind() != io::ErrorKind::NotFound {
                    return Err(failed(format!("removing {}", path.display()))(error));
                }
            }
        }
    }
    let path = cut.keep.log_path();
    // A short blocking open on the shard thread (like a roll's segment creation): a sealed
    // segment has no write descriptor any more.
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(failed(format!("opening {}", path.display())))?;
    let duplicate = file
        .try_clone()
        .map_err(failed(format!("duplicating {}", path.display())))?;
    io.truncate(duplicate, cut.position)
        .await
        .map_err(failed(format!("truncating {}", path.display())))?;
    io.fdatasync(file.as_raw_fd())
        .await
        .map_err(failed(format!("fdatasync of {}", path.display())))?;
    for path in [
        segment::index_path(&partition.dir, cut.keep.base_offset),
        segment::time_index_path(&partition.dir, cut.keep.base_offset),
    ] {
        if let Err(error) = io.unlink(path.clone()).await {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(failed(format!("removing {}", path.display()))(error));
            }
        }
    }
    partition
        .sync_dir(io.as_ref())
        .await
        .map_err(failed(format!("fsync of {}", partition.dir.display())))?;
    let marker = partition.dir.join(TRUNCATION_MARKER);
    io.unlink(marker.clone())
        .await
        .map_err(failed(format!("removing {}", marker.display())))?;
    // The marker's removal must be durable before the log grows again past the cut: a
    // marker coming back after a crash would cut records appended later.
    partition
        .sync_dir(io.as_ref())
        .await
        .map_err(failed(format!("fsync of {}", partition.dir.display())))?;
    Ok(())
}

/// Replaces the partition's in-memory log with what is now on disk: the segments reopened
/// (the kept one as the active segment, scanned), offsets, tail cache and epoch cache cut.
/// Reads with blocking syscalls on the shard thread, as recovery at open does: a truncation
/// happens once per leadership change of a follower, and scans only the kept segment.
fn reload(
    shard: &Rc<ShardShared>,
    partition: &Rc<PartitionShared>,
    cut: &Cut,
) -> Result<(), StorageError> {
    let config = partition.log.borrow().config.clone();
    let recovered = recovery::open_dir(
        &*shard.io,
        &partition.dir,
        &partition.label(),
        &config,
        shard.direct_io,
        now_ms(),
    )?;
    if recovered.log_end_offset != cut.new_end {
        return Err(StorageError::Io {
            context: format!("reopening {} after a truncation", partition.label()),
            source: io::Error::other(format!(
                "the log ends at {}, not at the cut {}",
                recovered.log_end_offset, cut.new_end
            )),
        });
    }
    let mut log = partition.log.borrow_mut();
    for old in &log.segments {
        // Pending finalizations of the old objects must not touch the files again.
        old.state.borrow_mut().deleted = true;
    }
    log.segments = recovered.segments.into_iter().map(Rc::new).collect();
    log.offsets.truncate(LogEndOffset(cut.new_end));
    log.epochs = recovered.epochs;
    log.unsynced_messages = 0;
    drop(log);
    shard
        .tail_cache
        .borrow_mut()
        .truncate_from(&partition.tail, cut.new_end);
    Ok(())
}

/// Recovery's half: finishes a truncation a crash interrupted, with blocking calls, before
/// the directory is opened. Idempotent: every step may already have happened.
pub(crate) fn finish_interrupted(
    io: &dyn crate::io::IoBackend,
    dir: &std::path::Path,
    label: &str,
    bases: &mut Vec<i64>,
) -> Result<bool, StorageError> {
    let marker = dir.join(TRUNCATION_MARKER);
    let Ok(text) = std::fs::read_to_string(&marker) else {
        return Ok(false);
    };
    let at = |operation: &str, path: &std::path::Path| {
        let context = format!("recovery: {operation} {}", path.display());
        move |source: io::Error| StorageError::Io { context, source }
    };
    match decode_marker(&text) {
        None => tracing::warn!(partition = label, "unreadable truncation marker; ignored"),
        Some(offset) => {
            let keep_index = bases
                .partition_point(|&base| base < offset)
                .saturating_sub(1);
            let keep_base = bases.get(keep_index).copied();
            tracing::warn!(
                partition = label,
                offset,
                "finishing a truncation a crash interrupted"
            );
            if let Some(keep_base) = keep_base {
                let recovery_point = recovery::read_recovery_point(dir);
                if recovery_point > keep_base {
                    crate::io::write_small_file_blocking(
                        dir,
                        recovery::RECOVERY_CHECKPOINT,
                        recovery::encode_recovery_point_for_label(label, keep_base).as_bytes(),
                        true,
                    )
                    .map_err(at("writing", &dir.join(recovery::RECOVERY_CHECKPOINT)))?;
                }
                for &later in &bases[keep_index + 1..] {
                    for path in [
                        segment::log_path(dir, later),
                        segment::index_path(dir, later),
                        segment::time_index_path(dir, later),
                    ] {
                        if let Err(error) = std::fs::remove_file(&path) {
                            if error.kind() != io::ErrorKind::NotFound {
                                return Err(at("removing", &path)(error));
                            }
                        }
                    }
                }
                bases.truncate(keep_index + 1);
                let path = segment::log_path(dir, keep_base);
                let position = recovery::position_of(io, &path, keep_base, offset)
                    .map_err(at("scanning", &path))?;
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| {
                        file.set_len(position)?;
                        file.sync_all()
                    })
                    .map_err(at("cutting", &path))?;
                for path in [
                    segment::index_path(dir, keep_base),
                    segment::time_index_path(dir, keep_base),
                ] {
                    if let Err(error) = std::fs::remove_file(&path) {
                        if error.kind() != io::ErrorKind::NotFound {
                            return Err(at("removing", &path)(error));
                        }
                    }
                }
            }
        }
    }
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(at("syncing", dir))?;
    std::fs::remove_file(&marker).map_err(at("removing", &marker))?;
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(at("syncing", dir))?;
    Ok(true)
}

/// The epoch cache recovery hands back, checked against the recovered log: entries past the
/// log end dropped, epochs that the scan of an unclean open saw starting added; a missing or
/// unreadable checkpoint is rebuilt from the batch headers of every segment (once: the
/// rebuilt checkpoint is written back).
pub(crate) fn recover_epochs(
    io: &dyn crate::io::IoBackend,
    dir: &std::path::Path,
    label: &str,
    (log_start_offset, log_end_offset): (i64, i64),
    scanned_starts: &[(i32, i64)],
    segment_bases: &[i64],
) -> Result<LeaderEpochCache, StorageError> {
    let path = dir.join(epoch::CHECKPOINT);
    let read_error = |source| StorageError::Io {
        context: format!("recovery: reading {}", path.display()),
        source,
    };
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let decoded = LeaderEpochCache::decode(&text);
            if decoded.is_none() {
                tracing::warn!(
                    partition = label,
                    "unreadable leader-epoch checkpoint; rebuilding it"
                );
            }
            decoded
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(read_error(error)),
    };
    let (mut cache, mut changed) = match stored {
        Some(cache) => (cache, false),
        None => {
            let mut cache = LeaderEpochCache::default();
            if log_end_offset > log_start_offset {
                let starts = recovery::epoch_starts_of(io, dir, segment_bases, log_end_offset)
                    .map_err(read_error)?;
                for (epoch, start_offset) in starts {
                    cache.assign(epoch, start_offset);
                }
            }
            // A new, empty log has nothing to write down yet.
            let changed = cache.latest().is_some() || dir.join(epoch::CHECKPOINT).exists();
            (cache, changed)
        }
    };
    if cache.truncate_from_end(log_end_offset) {
        tracing::info!(
            partition = label,
            log_end_offset,
            "leader epochs past the log end dropped"
        );
        changed = true;
    }
    for &(epoch, start_offset) in scanned_starts {
        if start_offset < log_end_offset && cache.assign(epoch, start_offset) {
            changed = true;
        }
    }
    if changed {
        crate::io::write_small_file_blocking(
            dir,
            epoch::CHECKPOINT,
            cache.encode().as_bytes(),
            true,
        )
        .map_err(|source| StorageError::Io {
            context: format!("recovery: writing {}", path.display()),
            source,
        })?;
    }
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips() {
        assert_eq!(decode_marker(&encode_marker(42)), Some(42));
        assert_eq!(decode_marker("truncate_to -1\n"), None);
        assert_eq!(decode_marker("garbage"), None);
        assert_eq!(decode_marker("truncate_to 3 4"), None);
    }
}
