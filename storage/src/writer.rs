//! The shard's group-commit writer: the single serialization point for every write to every
//! partition file on the shard (no per-partition locks).
//!
//! Durability contract: an append is *queued* when `Partition::append` has assigned its
//! offsets (synchronously, before any await). One flush takes queued appends in order (up to
//! the staging buffer, `group_commit_bytes_max`), copies them into the registered 4 KiB-aligned
//! staging buffer (with O_DIRECT, each file's partial last block is kept in memory and
//! rewritten in front of the new data), issues one write per dirty file with an fdatasync
//! linked after it, and then: acks=1 waiters complete when their write is in; acks=all waiters
//! complete and the high watermark advances when the fdatasync is in (default policy), or when
//! the write is in for topics with `flush.messages`/`flush.ms`. When a flush's writes are in
//! and appends are waiting the next flush starts at once, while the fdatasyncs of up to
//! `log.flush.syncing.commits.max` earlier flushes still run (they are finished in order by a
//! companion task); there is no timer on the append path.
//!
//! A failed write (ENOSPC, EIO, torn) fails that partition's appends from the first unwritten
//! one on and rolls its log end back, so no partial batch is ever visible and later appends
//! reuse the space. A failed fdatasync (of a segment or of the partition directory) poisons
//! the partition with a typed [`crate::Poisoned`] that keeps the io::Error: Linux may have
//! dropped the dirty pages, so a retried fdatasync could report success for lost data. From
//! then on its appends fail (here, in the queue and in the flushes written behind it, which
//! see the poison when they finish), its high
//! watermark never moves again (a poison from finalization, seen when a flush completes,
//! stops that flush too), and it is refused by `open_partition` until the process restarts.
//!
//! Must never: complete an append before its bytes reached the file, advance a high watermark
//! past a byte that is not durable under the partition's policy, touch the staging buffer
//! while a write from it is in flight (one write at a time: a file's partial last block is
//! never in two in-flight writes), or mark bytes durable with an fdatasync submitted before
//! they were rolled back and rewritten.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::buffer::{align_down, align_up, AlignedBuffer, DIRECT_IO_ALIGN_BYTES};
use crate::io::{FileWrite, IoBackend, IoFuture};
use crate::log::PartitionShared;
use crate::segment::Segment;
use crate::shard::ShardShared;
use crate::stamped::Stamped;
use crate::{Ack, AppendError, AppendInfo, FlushStats, Poisoned};

/// Who waits for an append and for what.
pub(crate) struct Waiter {
    pub(crate) sender: oneshot::Sender<Result<AppendInfo, AppendError>>,
    pub(crate) ack: Ack,
    pub(crate) info: AppendInfo,
}

/// An append (or the part of one that lands in one segment) waiting for the writer.
pub(crate) struct QueuedAppend {
    pub(crate) partition: Rc<PartitionShared>,
    pub(crate) segment: Rc<Segment>,
    /// Position of `data` in the segment file.
    pub(crate) position: u64,
    /// Whole batches with offsets assigned: stamped headers, the rest in the request's buffer.
    pub(crate) data: Stamped,
    /// Bytes of `data` written by earlier flushes (an append larger than one flush).
    pub(crate) consumed: usize,
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
    pub(crate) records: u64,
    /// Present on the last piece of an append with acks != 0.
    pub(crate) waiter: Option<Waiter>,
    pub(crate) enqueued_at: Instant,
}

impl QueuedAppend {
    fn complete(&mut self, stats: &mut FlushStats) {
        if let Some(waiter) = self.waiter.take() {
            let mut info = waiter.info;
            info.log_start_offset = self.partition.log.borrow().offsets.start();
            if waiter.ack == Ack::Durable {
                stats
                    .append_to_durable_ns
                    .push(self.enqueued_at.elapsed().as_nanos() as u64);
            }
            // The producer may have gone away; its append is done all the same.
            let _ = waiter.sender.send(Ok(info));
        }
    }

    fn fail(&mut self, failure: &Failure) {
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.sender.send(Err(failure.to_error()));
        }
    }
}

/// Why a partition's appends in a flush fail.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Its write failed (rolled back: the space is reused).
    Write(String),
    /// A sync failed, now or earlier: the partition is poisoned.
    Poison(Poisoned),
}

impl Failure {
    fn to_error(&self) -> AppendError {
        match self {
            Failure::Write(reason) => AppendError::Storage(reason.clone()),
            Failure::Poison(poisoned) => AppendError::Poisoned(poisoned.clone()),
        }
    }
}

/// The bytes one flush writes to one segment file.
struct Group {
    segment: Rc<Segment>,
    partition: usize,
    /// Logical file position where this flush's new bytes start (the file's written end).
    start_bytes: u64,
    /// The segment's rollback count when this flush was planned (see [`Covers`]).
    rollbacks: u64,
    /// Bytes of the partial last block rewritten in front (O_DIRECT), else 0.
    head_bytes: usize,
    new_bytes: usize,
    pieces: Vec<Bytes>,
    staging_offset: usize,
    write_len: usize,
    /// Written from the staging buffer (always with O_DIRECT; in buffered mode only when
    /// the pieces are too many for one writev).
    staged: bool,
}

/// Per-partition facts of one flush.
struct PartFlush {
    partition: Rc<PartitionShared>,
    /// Where to roll back to if a write fails: the first append of this flush.
    rollback_to: (Rc<Segment>, u64, i64),
    records: u64,
    sync: bool,
    failure: Option<Failure>,
}

/// Most linked writevs one buffered file write may take.
const WRITEV_CHAIN_MAX: usize = 4;
const _: () = assert!(
    WRITEV_CHAIN_MAX < crate::ring::RING_ENTRIES_MIN as usize,
    "a write chain (writevs + fdatasync) must fit the smallest ring"
);

fn key<T>(rc: &Rc<T>) -> *const T {
    Rc::as_ptr(rc)
}

/// Runs until the shard shuts down.
///
/// Writes run back to back and fdatasyncs trail them: once flush N's writes are in, it is
/// handed to the sync completer ([`complete_syncs`]) and flush N+1 is planned, copied and
/// submitted at once, whether N's fdatasyncs finished or not. Up to
/// `log.flush.syncing.commits.max` flushes may wait for their fdatasyncs; the writer waits
/// for a slot beyond that. Only one write from the staging buffer is ever in flight, so a file's
/// partial last block is never in two in-flight writes. Completions stay in order: N's
/// appends complete before N+1's (the completer finishes flushes front to back).
pub(crate) async fn run<B: IoBackend>(
    shard: Rc<ShardShared>,
    backend: B,
    staging: Rc<AlignedBuffer>,
) {
    let syncing = Rc::new(Syncing::default());
    tokio::task::spawn_local(complete_syncs(shard.clone(), syncing.clone()));
    loop {
        if shard.queue.borrow().is_empty() {
            if syncing.outstanding.get() > 0 {
                // Appends may arrive while the fdatasyncs run: start their flush at once.
                let progress = syncing.progress.notified();
                tokio::pin!(progress);
                progress.as_mut().enable();
                let woken = shard.writer_wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if shard.queue.borrow().is_empty() && syncing.outstanding.get() > 0 {
                    tokio::select! {
                        _ = progress => {}
                        _ = woken => {}
                    }
                }
                continue;
            }
            shard.writer_busy.set(false);
            shard.writer_idle.notify_waiters();
            if shard.closed.get() {
                syncing.closed.set(true);
                syncing.pushed.notify_one();
                return;
            }
            match next_sync_deadline(&shard) {
                Some(deadline) => {
                    tokio::select! {
                        _ = shard.writer_wake.notified() => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                    }
                }
                None => shard.writer_wake.notified().await,
            }
            shard.writer_busy.set(true);
            sync_due(&shard, &backend).await;
            continue;
        }
        shard.writer_busy.set(true);
        if syncing.outstanding.get() >= shard.syncing_commits_max.get() {
            let progress = syncing.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if syncing.outstanding.get() >= shard.syncing_commits_max.get() {
                progress.await;
            }
            continue;
        }
        if let Some(mut next) = start_flush(&shard, &backend, &staging) {
            finish_writes(&shard, &staging, &mut next).await;
            syncing.outstanding.set(syncing.outstanding.get() + 1);
            syncing.flushes.borrow_mut().push_back(next);
            syncing.pushed.notify_one();
        }
    }
}

/// Flushes whose writes are in, waiting for their fdatasyncs, oldest first.
#[derive(Default)]
struct Syncing {
    flushes: RefCell<VecDeque<Flush>>,
    /// Flushes handed over and not yet finished (queued or being finished).
    outstanding: Cell<usize>,
    /// Wakes the completer: a flush was handed over, or the writer stopped.
    pushed: Notify,
    /// Wakes the writer: a flush finished.
    progress: Notify,
    /// The writer stopped: the completer exits once the queue is empty.
    closed: Cell<bool>,
}

/// Finishes handed-over flushes in order: awaits each one's fdatasyncs, then publishes and
/// completes its appends. A failed fdatasync poisons its partition; the flushes behind see
/// the poison when they finish and fail that partition's appends too.
async fn complete_syncs(shard: Rc<ShardShared>, syncing: Rc<Syncing>) {
    loop {
        let front = syncing.flushes.borrow_mut().pop_front();
        match front {
            Some(flush) => {
                finish_syncs(&shard, flush).await;
                syncing.outstanding.set(syncing.outstanding.get() - 1);
                syncing.progress.notify_one();
            }
            None if syncing.closed.get() => return,
            None => syncing.pushed.notified().await,
        }
    }
}

/// Earliest `flush.ms` deadline of a partition holding written-but-unsynced bytes.
fn next_sync_deadline(shard: &ShardShared) -> Option<Instant> {
    let partitions = shard.partitions.borrow();
    partitions
        .values()
        .filter_map(|partition| {
            let log = partition.log.borrow();
            let flush_ms = log.config.flush_ms?;
            has_unsynced(partition).then(|| log.last_sync + Duration::from_millis(flush_ms))
        })
        .min()
}

fn has_unsynced(partition: &PartitionShared) -> bool {
    let log = partition.log.borrow();
    log.poisoned.is_none() && log.segments.iter().any(|segment| segment_unsynced(segment))
}

fn segment_unsynced(segment: &Segment) -> bool {
    let state = segment.state.borrow();
    !state.deleted
        && (state.durable_bytes < state.written_bytes || state.needs_dir_sync)
        && segment.has_write_file()
}

/// fdatasyncs partitions whose `flush.ms` elapsed with unsynced bytes.
async fn sync_due<B: IoBackend>(shard: &Rc<ShardShared>, backend: &B) {
    let due: Vec<Rc<PartitionShared>> = shard
        .partitions
        .borrow()
        .values()
        .filter(|partition| {
            let log = partition.log.borrow();
            log.config
                .flush_ms
                .is_some_and(|flush_ms| log.last_sync.elapsed() >= Duration::from_millis(flush_ms))
        })
        .filter(|partition| has_unsynced(partition))
        .cloned()
        .collect();
    for partition in due {
        let pending = sync_partition(&partition, backend, &[]);
        let mut failure = None;
        for (segment, covers, future) in pending {
            match future.await {
                Ok(_) => mark_durable(&segment, covers),
                Err(error) => {
                    failure.get_or_insert(sync_failed(&partition, &segment, covers, error));
                }
            }
        }
        match failure {
            Some(poisoned) => poison(shard, &partition, poisoned, &mut []),
            None => {
                let mut log = partition.log.borrow_mut();
                log.unsynced_messages = 0;
                log.last_sync = Instant::now();
            }
        }
    }
}

/// What a completed fdatasync makes durable.
#[derive(Debug, Clone, Copy)]
enum Covers {
    /// A segment's bytes up to `end`, unless the segment was rolled back since the sync was
    /// submitted (`rollbacks` then differs from the segment's count).
    Bytes { end: u64, rollbacks: u64 },
    /// The partition directory: every segment created so far.
    Directory,
}

/// Queues fdatasyncs for `partition`'s unsynced segments not in `skip` (and its directory
/// when a segment was created since the last sync), with what each covers.
fn sync_partition<B: IoBackend>(
    partition: &PartitionShared,
    backend: &B,
    skip: &[*const Segment],
) -> Vec<(Rc<Segment>, Covers, IoFuture)> {
    let log = partition.log.borrow();
    let mut pending = Vec::new();
    let mut dir_needed = false;
    for segment in &log.segments {
        let (unsynced, covers, needs_dir) = {
            let state = segment.state.borrow();
            (
                state.durable_bytes < state.written_bytes,
                Covers::Bytes {
                    end: state.written_bytes,
                    rollbacks: state.rollbacks,
                },
                state.needs_dir_sync,
            )
        };
        dir_needed |= needs_dir;
        if !unsynced || skip.contains(&key(segment)) {
            continue;
        }
        if let Some(file) = segment.write_file() {
            pending.push((segment.clone(), covers, backend.fdatasync_kept(file)));
        }
    }
    if dir_needed {
        for segment in &log.segments {
            // The directory sync covers every segment created so far.
            if segment.state.borrow().needs_dir_sync {
                // A failed open fails like a failed sync: the caller poisons the partition.
                pending.push((
                    segment.clone(),
                    Covers::Directory,
                    partition.sync_dir(backend),
                ));
                break;
            }
        }
    }
    pending
}

/// The poison of a failed fdatasync of `segment`'s file, or of the partition directory.
fn sync_failed(
    partition: &PartitionShared,
    segment: &Segment,
    covers: Covers,
    error: io::Error,
) -> Poisoned {
    let operation = match covers {
        Covers::Directory => format!("fdatasync of directory {}", partition.dir.display()),
        Covers::Bytes { .. } => format!("fdatasync of {}", segment.log_path().display()),
    };
    Poisoned {
        partition: partition.label(),
        operation,
        source: std::sync::Arc::new(error),
    }
}

/// Records a completed fdatasync.
fn mark_durable(segment: &Segment, covers: Covers) {
    let mut state = segment.state.borrow_mut();
    match covers {
        Covers::Directory => state.needs_dir_sync = false,
        // Rolled back since: the bytes it covered may be gone, later ones are not covered.
        Covers::Bytes { rollbacks, .. } if rollbacks != state.rollbacks => {}
        Covers::Bytes { end, .. } => {
            state.durable_bytes = state.durable_bytes.max(end);
            state.assert_order();
        }
    }
}

/// One group commit between its submission and its last completion.
struct Flush {
    groups: Vec<Group>,
    parts: Vec<PartFlush>,
    part_of: HashMap<*const PartitionShared, usize>,
    taken: Vec<QueuedAppend>,
    writes: Vec<IoFuture>,
    syncs: Vec<Option<IoFuture>>,
    extra_syncs: Vec<(usize, Rc<Segment>, Covers, IoFuture)>,
    started: Instant,
    /// When the last write completed: the fdatasyncs' latency is measured from here.
    writes_done: Instant,
    stats: FlushStats,
}

/// Plans the next flush (a prefix of the queue within the staging budget, the last append
/// possibly in part), copies it into staging and submits one write per file with its
/// fdatasync linked behind it. None when there is nothing to write.
///
/// Called only when no write from `staging` is in flight: the previous flush's writes have
/// completed (its fdatasyncs may still run; they do not read the buffer).
fn start_flush<B: IoBackend>(
    shard: &Rc<ShardShared>,
    backend: &B,
    staging: &Rc<AlignedBuffer>,
) -> Option<Flush> {
    let direct_io = shard.direct_io;
    let align_bytes = if shard.direct_io {
        DIRECT_IO_ALIGN_BYTES
    } else {
        1
    };
    let budget_bytes = staging.len();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<*const Segment, usize> = HashMap::new();
    let mut parts: Vec<PartFlush> = Vec::new();
    let mut part_of: HashMap<*const PartitionShared, usize> = HashMap::new();
    let mut footprint_bytes = 0usize;
    let mut taken_count = 0usize;
    let mut partial_bytes = 0usize;

    // 1. Plan.
    {
        let queue = shard.queue.borrow();
        for item in queue.iter() {
            let remaining = item.data.len() - item.consumed;
            let part = *part_of.entry(key(&item.partition)).or_insert_with(|| {
                parts.push(PartFlush {
                    partition: item.partition.clone(),
                    rollback_to: (item.segment.clone(), item.position, item.first_offset),
                    records: 0,
                    sync: false,
                    failure: None,
                });
                parts.len() - 1
            });
            let group = *group_of.entry(key(&item.segment)).or_insert_with(|| {
                let (start_bytes, rollbacks) = {
                    let state = item.segment.state.borrow();
                    (state.written_bytes, state.rollbacks)
                };
                debug_assert_eq!(
                    start_bytes,
                    item.position + item.consumed as u64,
                    "queued bytes not contiguous with the file"
                );
                groups.push(Group {
                    segment: item.segment.clone(),
                    partition: part,
                    start_bytes,
                    rollbacks,
                    head_bytes: (start_bytes % align_bytes as u64) as usize,
                    new_bytes: 0,
                    pieces: Vec::new(),
                    staging_offset: 0,
                    write_len: 0,
                    staged: direct_io,
                });
                groups.len() - 1
            });
            let entry = &mut groups[group];
            let old_footprint_bytes = if entry.new_bytes == 0 {
                0
            } else {
                align_up(entry.head_bytes + entry.new_bytes, align_bytes)
            };
            let new_footprint_bytes =
                align_up(entry.head_bytes + entry.new_bytes + remaining, align_bytes);
            if footprint_bytes - old_footprint_bytes + new_footprint_bytes <= budget_bytes {
                entry
                    .pieces
                    .extend(item.data.slice(item.consumed..item.data.len()));
                entry.new_bytes += remaining;
                footprint_bytes = footprint_bytes - old_footprint_bytes + new_footprint_bytes;
                parts[part].records += item.records;
                taken_count += 1;
                continue;
            }
            let room_bytes = budget_bytes - (footprint_bytes - old_footprint_bytes);
            let fits_bytes = (room_bytes / align_bytes * align_bytes)
                .saturating_sub(entry.head_bytes + entry.new_bytes);
            if fits_bytes > 0 {
                entry
                    .pieces
                    .extend(item.data.slice(item.consumed..item.consumed + fits_bytes));
                entry.new_bytes += fits_bytes;
                partial_bytes = fits_bytes;
            }
            break;
        }
    }
    groups.retain(|group| group.new_bytes > 0);
    for group in groups.iter_mut() {
        group.write_len = align_up(group.head_bytes + group.new_bytes, align_bytes);
        // Up to WRITEV_CHAIN_MAX linked writevs (plus the fdatasync) always fit the ring;
        // more pieces are copied into staging instead.
        group.staged |= group.pieces.len() > WRITEV_CHAIN_MAX * crate::io::IOV_MAX;
    }
    if groups.is_empty() {
        let head = shard.queue.borrow_mut().pop_front();
        if let Some(mut item) = head {
            // Cannot happen with a budget of at least two blocks; never spin on it.
            tracing::error!("group commit planned an empty flush; failing the queue head");
            // Its unwritten bytes leave the queue: count them out, or the queue budget stays
            // charged with them for good.
            shard.dequeued(item.data.len() - item.consumed);
            item.fail(&Failure::Write(
                "internal error: append does not fit the staging buffer".into(),
            ));
        }
        return None;
    }
    let taken: Vec<QueuedAppend> = {
        let mut queue = shard.queue.borrow_mut();
        let taken: Vec<QueuedAppend> = queue.drain(..taken_count).collect();
        if partial_bytes > 0 {
            if let Some(front) = queue.front_mut() {
                front.consumed += partial_bytes;
            }
        }
        taken
    };
    let new_bytes_total: usize = groups.iter().map(|group| group.new_bytes).sum();
    shard.dequeued(new_bytes_total);

    // 2. Sync decisions per partition (its policy).
    for part in parts.iter_mut() {
        let log = part.partition.log.borrow();
        part.sync = log.syncs_every_commit()
            || log
                .config
                .flush_messages
                .is_some_and(|messages| log.unsynced_messages + part.records >= messages)
            || log
                .config
                .flush_ms
                .is_some_and(|flush_ms| log.last_sync.elapsed() >= Duration::from_millis(flush_ms));
    }

    // 3. O_DIRECT: copy into staging (aligned, partial last block in front). Buffered writes
    //    go straight from the appends' buffers (writev).
    let mut staging_offset = 0usize;
    for group in groups.iter_mut().filter(|group| group.staged) {
        group.staging_offset = staging_offset;
        // SAFETY: no write from staging is in flight and this range is disjoint from every
        // other group's.
        let destination = unsafe { staging.slice_mut(staging_offset, group.write_len) };
        let state = group.segment.state.borrow();
        debug_assert_eq!(
            state.tail_block.len(),
            group.head_bytes,
            "tail block out of step with the file"
        );
        destination[..group.head_bytes].copy_from_slice(&state.tail_block[..group.head_bytes]);
        let mut at = group.head_bytes;
        for piece in &group.pieces {
            destination[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        destination[at..].fill(0);
        staging_offset += group.write_len;
    }
    debug_assert!(staging_offset <= budget_bytes);

    // 4. Submit.
    let started = Instant::now();
    let mut writes = Vec::with_capacity(groups.len());
    let mut syncs: Vec<Option<IoFuture>> = Vec::with_capacity(groups.len());
    for group in &groups {
        let sync = parts[group.partition].sync;
        let Some(file) = group.segment.write_file() else {
            writes.push(
                Box::pin(async { Err(io::Error::other("segment has no write descriptor")) })
                    as IoFuture,
            );
            syncs.push(None);
            continue;
        };
        use std::os::fd::AsRawFd;
        if !group.staged {
            let (written, synced) = backend.write_vectored(
                file.as_raw_fd(),
                group.start_bytes,
                group.pieces.clone(),
                sync,
            );
            writes.push(written);
            syncs.push(synced);
            continue;
        }
        let write = FileWrite {
            fd: file.as_raw_fd(),
            staging_offset: group.staging_offset,
            len: group.write_len,
            file_position: group.start_bytes - group.head_bytes as u64,
        };
        let (written, synced) = backend.write(staging, write, sync);
        writes.push(written);
        syncs.push(synced);
    }
    let mut extra_syncs = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        if part.sync {
            let in_flush: Vec<*const Segment> = groups
                .iter()
                .filter(|group| group.partition == index)
                .map(|group| key(&group.segment))
                .collect();
            for (segment, covers, future) in sync_partition(&part.partition, backend, &in_flush) {
                extra_syncs.push((index, segment, covers, future));
            }
        }
    }
    let stats = FlushStats {
        bytes: new_bytes_total as u64,
        files: groups.len() as u64,
        appends: taken.len() as u64,
        records: parts.iter().map(|part| part.records).sum(),
        ..FlushStats::default()
    };
    Some(Flush {
        groups,
        parts,
        part_of,
        taken,
        writes,
        syncs,
        extra_syncs,
        started,
        writes_done: started,
        stats,
    })
}

/// Awaits the flush's writes: records the new file ends (and O_DIRECT tail blocks), fails
/// and rolls back partitions whose write failed, completes acks=1 appends, and publishes
/// partitions that do not fdatasync this flush.
async fn finish_writes(shard: &ShardShared, staging: &AlignedBuffer, flush: &mut Flush) {
    let align_bytes = if shard.direct_io {
        DIRECT_IO_ALIGN_BYTES
    } else {
        1
    };
    let mut write_results = Vec::with_capacity(flush.groups.len());
    for (group, written) in flush.groups.iter().zip(std::mem::take(&mut flush.writes)) {
        let result = match written.await {
            Ok(bytes) if bytes as usize == group.write_len => Ok(()),
            Ok(bytes) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {bytes} of {} bytes", group.write_len),
            )),
            Err(error) => Err(error),
        };
        write_results.push(result);
    }
    flush.writes_done = Instant::now();
    flush.stats.write_ns = (flush.writes_done - flush.started).as_nanos() as u64;
    for (group, result) in flush.groups.iter().zip(&write_results) {
        if let Err(error) = result {
            let part = &mut flush.parts[group.partition];
            if part.failure.is_none() {
                part.failure = Some(Failure::Write(format!(
                    "write to {} failed: {error}",
                    group.segment.log_path().display()
                )));
            }
        }
    }
    for (group, result) in flush.groups.iter().zip(&write_results) {
        if result.is_err() || flush.parts[group.partition].failure.is_some() {
            continue;
        }
        let end = group.start_bytes + group.new_bytes as u64;
        let mut state = group.segment.state.borrow_mut();
        state.written_bytes = end;
        state.assert_order();
        if align_bytes > 1 {
            let block_start = align_down(end, align_bytes as u64);
            let from = group.staging_offset
                + (block_start - (group.start_bytes - group.head_bytes as u64)) as usize;
            // SAFETY: the write from this range has completed and the next flush has not
            // been planned yet.
            let block = unsafe { staging.slice(from, (end - block_start) as usize) };
            state.tail_block.clear();
            state.tail_block.extend_from_slice(block);
        }
    }
    for part in flush.parts.iter() {
        if let Some(failure @ Failure::Write(_)) = &part.failure {
            fail_partition(shard, part, failure, &mut flush.taken);
        }
    }
    // A sync that failed outside this flush (finalization, a flush.ms sync) poisoned the
    // partition after this flush was submitted: nothing more of it becomes visible.
    for part in flush.parts.iter_mut() {
        if part.failure.is_none() {
            if let Some(poisoned) = part.partition.log.borrow().poisoned.clone() {
                fail_appends(
                    shard,
                    &part.partition,
                    &Failure::Poison(poisoned.clone()),
                    &mut flush.taken,
                );
                part.failure = Some(Failure::Poison(poisoned));
            }
        }
    }
    for item in flush.taken.iter_mut() {
        let part = &flush.parts[flush.part_of[&key(&item.partition)]];
        if part.failure.is_some() {
            continue;
        }
        if !part.sync {
            item.partition
                .publish(&item.segment, item.position, &item.data, item.last_offset);
            item.complete(&mut flush.stats);
        } else if item
            .waiter
            .as_ref()
            .is_some_and(|waiter| waiter.ack == Ack::Written)
        {
            item.complete(&mut flush.stats);
        }
    }
    for part in flush.parts.iter() {
        if part.failure.is_none() && !part.sync {
            part.partition.log.borrow_mut().unsynced_messages += part.records;
            part.partition.high_watermark_advanced.notify_waiters();
        }
    }
}

/// Awaits the flush's fdatasyncs: marks bytes durable, publishes and completes acks=all
/// appends; a failed fdatasync poisons its partition, failing its appends here and in the
/// queue (the flushes already written behind this one fail theirs when they finish: they
/// see the poison).
async fn finish_syncs(shard: &ShardShared, mut flush: Flush) {
    let mut any_sync = false;
    for (group, synced) in flush.groups.iter().zip(std::mem::take(&mut flush.syncs)) {
        let Some(synced) = synced else { continue };
        any_sync = true;
        let result = synced.await;
        let part = &mut flush.parts[group.partition];
        note_poisoned(part);
        if part.failure.is_some() {
            continue;
        }
        let covers = Covers::Bytes {
            end: group.start_bytes + group.new_bytes as u64,
            rollbacks: group.rollbacks,
        };
        match result {
            Ok(_) => mark_durable(&group.segment, covers),
            Err(error) => {
                part.failure = Some(Failure::Poison(sync_failed(
                    &part.partition,
                    &group.segment,
                    covers,
                    error,
                )))
            }
        }
    }
    for (part_index, segment, covers, future) in std::mem::take(&mut flush.extra_syncs) {
        any_sync = true;
        let result = future.await;
        let part = &mut flush.parts[part_index];
        note_poisoned(part);
        if part.failure.is_some() {
            continue;
        }
        match result {
            Ok(_) => mark_durable(&segment, covers),
            Err(error) => {
                part.failure = Some(Failure::Poison(sync_failed(
                    &part.partition,
                    &segment,
                    covers,
                    error,
                )))
            }
        }
    }
    if any_sync {
        flush.stats.fsync_ns = flush.writes_done.elapsed().as_nanos() as u64;
    }
    for part in flush.parts.iter_mut() {
        // A failed write was rolled back and its appends failed: nothing of it to sync.
        if !part.sync || matches!(part.failure, Some(Failure::Write(_))) {
            continue;
        }
        // Poisoned outside this flush while it ran (an earlier flush, a finalization).
        note_poisoned(part);
        match &part.failure {
            Some(Failure::Poison(poisoned)) => {
                poison(shard, &part.partition, poisoned.clone(), &mut flush.taken);
            }
            Some(Failure::Write(_)) => {}
            None => {
                let mut log = part.partition.log.borrow_mut();
                log.unsynced_messages = 0;
                log.last_sync = Instant::now();
            }
        }
    }
    for item in flush.taken.iter_mut() {
        let part = &flush.parts[flush.part_of[&key(&item.partition)]];
        if part.failure.is_some() || !part.sync {
            continue;
        }
        item.partition
            .publish(&item.segment, item.position, &item.data, item.last_offset);
        item.complete(&mut flush.stats);
    }
    for part in flush.parts.iter() {
        if part.failure.is_none() && part.sync {
            part.partition.high_watermark_advanced.notify_waiters();
        }
        crate::shard::maybe_finalize(&part.partition);
    }
    if let Some(observer) = shard.flush_observer.borrow().as_ref() {
        observer(&flush.stats);
    }
}

/// A partition poisoned since this flush was written (by an earlier flush's fdatasync, a
/// finalization or a `flush.ms` sync) fails this flush's appends: nothing past a failed
/// fdatasync is marked durable or becomes visible.
fn note_poisoned(part: &mut PartFlush) {
    if part.failure.is_none() {
        if let Some(poisoned) = part.partition.log.borrow().poisoned.clone() {
            part.failure = Some(Failure::Poison(poisoned));
        }
    }
}

/// Fails the partition's appends in this flush and in the queue, then rolls its log back to
/// the first of them (a failed write: the space is reused).
fn fail_partition(
    shard: &ShardShared,
    part: &PartFlush,
    failure: &Failure,
    taken: &mut [QueuedAppend],
) {
    tracing::error!(partition = %part.partition.label(), ?failure, "appends failed");
    fail_appends(shard, &part.partition, failure, taken);
    let (segment, position, first_offset) = &part.rollback_to;
    part.partition.roll_back(segment, *position, *first_offset);
}

/// Marks the partition poisoned after a failed sync (the first cause is kept) and fails its
/// pending appends, in `taken` and in the queue.
pub(crate) fn poison(
    shard: &ShardShared,
    partition: &Rc<PartitionShared>,
    poisoned: Poisoned,
    taken: &mut [QueuedAppend],
) {
    let cause = partition.mark_poisoned(poisoned);
    fail_appends(shard, partition, &Failure::Poison(cause), taken);
}

/// Fails `partition`'s appends among `taken` (already out of the queue) and removes and fails
/// its appends still queued, counting their bytes out of the queue budget.
pub(crate) fn fail_appends(
    shard: &ShardShared,
    partition: &Rc<PartitionShared>,
    failure: &Failure,
    taken: &mut [QueuedAppend],
) {
    for item in taken
        .iter_mut()
        .filter(|item| Rc::ptr_eq(&item.partition, partition))
    {
        item.fail(failure);
    }
    let mut queue = shard.queue.borrow_mut();
    let mut removed_bytes = 0usize;
    queue.retain_mut(|item| {
        if Rc::ptr_eq(&item.partition, partition) {
            removed_bytes += item.data.len() - item.consumed;
            item.fail(failure);
            false
        } else {
            true
        }
    });
    shard.dequeued(removed_bytes);
}
