//! The shard's group-commit writer: the single serialization point for every write to every
//! partition file on the shard (no per-partition locks).
//!
//! Durability contract: an append is *queued* when `Partition::append` has assigned its
//! offsets (synchronously, before any await). One flush takes queued appends in order (up to
//! a free region of the staging buffer, at most `group_commit_bytes_max`), copies them into
//! the registered 4 KiB-aligned staging buffer (with O_DIRECT, each file's partial last block
//! is kept in memory and rewritten in front of the new data), issues one write per dirty file
//! with an fdatasync linked after it, and then: acks=1 waiters complete when their write is
//! in; acks=all waiters complete and the high watermark advances when the fdatasync is in
//! (default policy), or when the write is in for topics with `flush.messages`/`flush.ms`.
//! With `log.flush.write.dsync` (off by default), a commit of an every-commit-syncing partition
//! with O_DIRECT and no acks=1 waiter is one RWF_DSYNC write instead ([`WriteSync::Own`]): it
//! completes once its own bytes are durable, which is enough only when every earlier byte of
//! the file was synced by its own commit (a segment's `unsynced_planned_bytes` says), and its
//! failure poisons like a failed fdatasync, since the two cannot be told apart.
//!
//! Pipeline: the writer plans and submits a flush as soon as appends are queued, while up to
//! `log.flush.writing.commits.max` earlier flushes' writes are still in flight (to the same
//! files too: a deeper queue is what lets one partition's writes reach the disk's rate) and
//! up to `log.flush.syncing.commits.max` flushes wait for their fdatasyncs. Each flush has its
//! own region of the staging buffer. A write completer finishes writes in flush order, a sync
//! completer finishes fdatasyncs in flush order, so appends complete in order. When a file's
//! partial last block is still in an earlier flush's in-flight write, the next flush writes
//! that one block separately, only after the earlier write completed (its fdatasync is then
//! submitted once both its writes are in): one block is never in two in-flight writes, since
//! the disk may complete them in any order. There is no timer on the append path.
//!
//! A failed write (ENOSPC, EIO, torn) fails that partition's appends from the first unwritten
//! one on and rolls its log end back, so no partial batch is ever visible and later appends
//! reuse the space; before rolling back, the write completer holds the writer and waits for
//! every later in-flight write (their bytes must land before anything is rewritten), and the
//! later flushes fail that partition's appends without rolling back again. A failed
//! fdatasync (of a segment or of the partition directory) poisons
//! the partition with a typed [`crate::Poisoned`] that keeps the io::Error: Linux may have
//! dropped the dirty pages, so a retried fdatasync could report success for lost data. From
//! then on its appends fail (here, in the queue and in the flushes written behind it, which
//! see the poison when they finish), its high
//! watermark never moves again (a poison from finalization, seen when a flush completes,
//! stops that flush too), and it is refused by `open_partition` until the process restarts.
//!
//! Must never: complete an append before its bytes reached the file, advance a high watermark
//! past a byte that is not durable under the partition's policy, touch a staging region while
//! a write from it is in flight, put one file block in two in-flight writes, rewrite bytes
//! while an earlier write to them may still land, or mark bytes durable with an fdatasync
//! submitted before they were rolled back and rewritten.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::buffer::{align_down, align_up, AlignedBuffer, DIRECT_IO_ALIGN_BYTES};
use crate::io::{copy_error, FileWrite, IoBackend, IoFuture, WriteSync};
use crate::log::PartitionShared;
use crate::segment::Segment;
use crate::shard::ShardShared;
use crate::stamped::Stamped;
use crate::stream_copy::copy_streaming;
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
    /// Logical file position where this flush's new bytes start (the file's planned end).
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
    /// The write of everything but a deferred first block (None: nothing, or not submitted).
    body: Option<IoFuture>,
    /// The first block, when it had to wait for an earlier flush's write.
    head: Head,
    /// The first block was split off (deferred): no fdatasync is linked to a write.
    split: bool,
    /// How its write is made durable (Head::Whole; a split write syncs after both writes).
    sync_mode: WriteSync,
    /// The sync covering this group's bytes, when the partition syncs this flush.
    sync: Option<IoFuture>,
}

impl Group {
    fn file_position(&self) -> u64 {
        self.start_bytes - self.head_bytes as u64
    }

    /// Bytes of the separately written first block (the whole write when it is one block).
    fn first_block_bytes(&self) -> usize {
        self.write_len.min(DIRECT_IO_ALIGN_BYTES)
    }
}

/// The first block of a group's write, when it is the file's partial last block and still in
/// an earlier flush's in-flight write: the disk may complete two writes of one block in any
/// order, so it is written only after that write completed.
enum Head {
    /// Not split off: the body is the whole write.
    Whole,
    /// Submitted when flush `after_seq`'s writes have completed.
    Deferred {
        after_seq: u64,
    },
    Submitted(IoFuture),
    /// Not written: the earlier write of that block failed (the partition rolls back).
    Skipped,
}

/// Per-partition facts of one flush.
struct PartFlush {
    partition: Rc<PartitionShared>,
    /// Where to roll back to if a write fails: the first append of this flush.
    rollback_to: (Rc<Segment>, u64, i64),
    /// The log's rollback count when this flush was planned: a rollback since (after an
    /// earlier flush's failed write) fails this flush's appends of the partition.
    log_rollbacks: u64,
    records: u64,
    sync: bool,
    /// An acks=1 append of this flush waits for its write alone: no RWF_DSYNC write, which
    /// would complete only once durable.
    acks_written: bool,
    /// Its groups' writes may sync themselves ([`WriteSync::Own`]) where their segment allows.
    own_sync: bool,
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
/// Plans and submits flushes while appends are queued, up to
/// `log.flush.writing.commits.max` flushes with writes in flight and
/// `log.flush.syncing.commits.max` waiting for fdatasyncs, each in its own staging region;
/// the write completer ([`complete_writes`]) and the sync completer ([`complete_syncs`])
/// finish them in order.
pub(crate) async fn run<B: IoBackend + Clone + 'static>(
    shard: Rc<ShardShared>,
    backend: B,
    staging: Rc<AlignedBuffer>,
) {
    let pipeline = Rc::new(Pipeline::new());
    tokio::task::spawn_local(complete_writes(
        shard.clone(),
        backend.clone(),
        staging.clone(),
        pipeline.clone(),
    ));
    tokio::task::spawn_local(complete_syncs(shard.clone(), pipeline.clone()));
    loop {
        if shard.queue.borrow().is_empty() {
            if pipeline.outstanding() > 0 {
                // Appends may arrive while writes and fdatasyncs run: start their flush at once.
                let progress = pipeline.progress.notified();
                tokio::pin!(progress);
                progress.as_mut().enable();
                let woken = shard.writer_wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if shard.queue.borrow().is_empty() && pipeline.outstanding() > 0 {
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
                pipeline.closed.set(true);
                pipeline.written.notify_one();
                pipeline.handed.notify_one();
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
        let region = {
            let progress = pipeline.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let woken = shard.writer_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match pipeline.next_region(&shard, staging.len()) {
                Some(region) => region,
                None => {
                    // An earlier flush finishing, or more appends (enough for a write beside
                    // the ones in flight), may let the next flush start.
                    tokio::select! {
                        _ = progress => {}
                        _ = woken => {}
                    }
                    continue;
                }
            }
        };
        if let Some(mut next) = start_flush(&shard, &backend, &staging, &pipeline, region) {
            next.stats.gap_ns = pipeline
                .idle_since
                .take()
                .map(|since| next.started.saturating_duration_since(since).as_nanos() as u64);
            if let Some((offset, len)) = next.staging_region {
                pipeline.regions.borrow_mut().push_back((offset, len));
            }
            pipeline
                .writing_outstanding
                .set(pipeline.writing_outstanding.get() + 1);
            pipeline.writing.borrow_mut().push_back(next);
            pipeline.written.notify_one();
        }
    }
}

/// The flushes between submission and completion, and the staging regions they use.
struct Pipeline {
    /// Flushes with writes submitted, oldest first, not yet taken by the write completer.
    writing: RefCell<VecDeque<Flush>>,
    /// Flushes submitted whose writes are not finished (queued or being finished).
    writing_outstanding: Cell<usize>,
    /// Flushes whose writes are in, waiting for their fdatasyncs, oldest first.
    syncing: RefCell<VecDeque<Flush>>,
    /// Flushes handed to the sync completer and not yet finished.
    syncing_outstanding: Cell<usize>,
    /// Sequence number of the next flush (from 1; a segment's `tail_write_seq` 0 is none).
    next_seq: Cell<u64>,
    /// Highest flush whose writes the write completer has finished.
    finished_seq: Cell<u64>,
    /// Staging regions (offset, bytes) of the flushes not yet finished, oldest first.
    regions: RefCell<VecDeque<(usize, usize)>>,
    /// Set while a failed write drains the pipeline: the writer plans nothing.
    held: Cell<bool>,
    /// When the last finished writes left the disk without a write of ours although appends
    /// were queued (the next flush's `gap_ns`).
    idle_since: Cell<Option<Instant>>,
    /// Wakes the write completer: a flush was submitted, or the writer stopped.
    written: Notify,
    /// Wakes the sync completer: a flush was handed over, or the writer stopped.
    handed: Notify,
    /// Wakes the writer: a flush's writes or fdatasyncs finished.
    progress: Notify,
    /// The writer stopped: the completers exit once their queues are empty.
    closed: Cell<bool>,
}

impl Pipeline {
    fn new() -> Pipeline {
        Pipeline {
            writing: RefCell::new(VecDeque::new()),
            writing_outstanding: Cell::new(0),
            syncing: RefCell::new(VecDeque::new()),
            syncing_outstanding: Cell::new(0),
            next_seq: Cell::new(1),
            finished_seq: Cell::new(0),
            regions: RefCell::new(VecDeque::new()),
            held: Cell::new(false),
            idle_since: Cell::new(None),
            written: Notify::new(),
            handed: Notify::new(),
            progress: Notify::new(),
            closed: Cell::new(false),
        }
    }

    fn outstanding(&self) -> usize {
        self.writing_outstanding.get() + self.syncing_outstanding.get()
    }

    /// The staging region (offset, bytes) the next flush may use, or None when the writer
    /// must wait for an earlier flush (limits reached, a drain, or too little room).
    /// Regions are taken and freed in flush order, so the ones in use form one circular run.
    fn next_region(&self, shard: &ShardShared, capacity_bytes: usize) -> Option<(usize, usize)> {
        // An RWF_DSYNC commit holds its write slot through its sync (the two are one
        // operation): it may use the sync slots too, so the disk sees as many commits at once
        // as with write + fdatasync (with only the write slots it measured 7-14% slower).
        let writing_max = if shard.dsync_writes.get() {
            shard.writing_commits_max.get() + shard.syncing_commits_max.get()
        } else {
            shard.writing_commits_max.get()
        };
        if self.held.get()
            || self.writing_outstanding.get() >= writing_max
            || self.syncing_outstanding.get() >= shard.syncing_commits_max.get()
        {
            return None;
        }
        // Beside writes in flight, only a write worth its own fdatasync: less waits for
        // them and goes out with what arrives meanwhile (fewer, larger commits).
        if self.writing_outstanding.get() > 0
            && shard.queued_bytes.get() < STAGING_REGION_MIN_BYTES.min(capacity_bytes / 4)
        {
            return None;
        }
        let regions = self.regions.borrow();
        let (Some(&(oldest, _)), Some(&(newest, newest_bytes))) = (regions.front(), regions.back())
        else {
            return Some((0, capacity_bytes));
        };
        // Worth a flush while others are in flight; with none in flight all of it is free.
        let useful_bytes = (capacity_bytes / 4).min(STAGING_REGION_MIN_BYTES);
        let end = newest + newest_bytes;
        let candidates = if newest >= oldest {
            [(end, capacity_bytes - end), (0, oldest)]
        } else {
            [(end, oldest - end), (0, 0)]
        };
        candidates
            .into_iter()
            .find(|&(_, bytes)| bytes >= useful_bytes)
    }
}

/// Smallest staging region worth a flush while other flushes are in flight (smaller ones wait
/// for the oldest flush's writes: many tiny writes would cost more than the wait).
const STAGING_REGION_MIN_BYTES: usize = 1 << 20;

/// Finishes submitted flushes in order: awaits each one's writes, submits the first blocks
/// that waited for them, records the new file ends, completes acks=1 appends and hands the
/// flush to the sync completer. After a failed write it holds the writer and waits for every
/// later write before the partition rolls back.
async fn complete_writes<B: IoBackend>(
    shard: Rc<ShardShared>,
    backend: B,
    staging: Rc<AlignedBuffer>,
    pipeline: Rc<Pipeline>,
) {
    loop {
        let front = pipeline.writing.borrow_mut().pop_front();
        let Some(mut flush) = front else {
            if pipeline.closed.get() {
                return;
            }
            let written = pipeline.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if pipeline.writing.borrow().is_empty() && !pipeline.closed.get() {
                written.await;
            }
            continue;
        };
        let results = match flush.write_results.take() {
            Some(results) => results,
            None => await_writes(&mut flush).await,
        };
        let failed = failed_segments(&flush, &results);
        {
            let mut writing = pipeline.writing.borrow_mut();
            resolve_heads(writing.iter_mut(), flush.seq, &failed, &backend, &staging);
        }
        let drained = !failed.is_empty() && !pipeline.writing.borrow().is_empty();
        if drained {
            pipeline.held.set(true);
            drain(&pipeline, &backend, &staging).await;
        }
        finish_writes(&shard, &backend, &mut flush, results);
        pipeline.finished_seq.set(flush.seq);
        if let Some(region) = flush.staging_region {
            let freed = pipeline.regions.borrow_mut().pop_front();
            debug_assert_eq!(freed, Some(region), "staging regions freed out of order");
        }
        if drained {
            pipeline.held.set(false);
        }
        if pipeline.writing.borrow().is_empty() && !shard.queue.borrow().is_empty() {
            pipeline.idle_since.set(Some(flush.writes_done));
        }
        pipeline
            .writing_outstanding
            .set(pipeline.writing_outstanding.get() - 1);
        pipeline
            .syncing_outstanding
            .set(pipeline.syncing_outstanding.get() + 1);
        pipeline.syncing.borrow_mut().push_back(flush);
        pipeline.handed.notify_one();
        pipeline.progress.notify_one();
    }
}

/// Awaits every later in-flight flush's writes (in order, submitting their waiting first
/// blocks as their predecessors complete) and keeps the results for when each is finished:
/// after a failed write nothing may be rewritten while an earlier write could still land.
async fn drain<B: IoBackend>(pipeline: &Pipeline, backend: &B, staging: &Rc<AlignedBuffer>) {
    let mut later: Vec<Flush> = pipeline.writing.borrow_mut().drain(..).collect();
    for index in 0..later.len() {
        if later[index].write_results.is_some() {
            continue;
        }
        let results = await_writes(&mut later[index]).await;
        let failed = failed_segments(&later[index], &results);
        let seq = later[index].seq;
        resolve_heads(
            later[index + 1..].iter_mut(),
            seq,
            &failed,
            backend,
            staging,
        );
        later[index].write_results = Some(results);
    }
    // The writer is held: nothing was submitted meanwhile.
    let mut writing = pipeline.writing.borrow_mut();
    debug_assert!(writing.is_empty(), "a flush was submitted during a drain");
    writing.extend(later);
}

/// Segments whose write in `flush` failed (or was skipped).
fn failed_segments(flush: &Flush, results: &[io::Result<()>]) -> Vec<*const Segment> {
    flush
        .groups
        .iter()
        .zip(results)
        .filter(|(_, result)| result.is_err())
        .map(|(group, _)| key(&group.segment))
        .collect()
}

/// Submits (or skips, when the earlier write of the block failed) the first blocks that
/// waited for flush `finished_seq`'s writes.
fn resolve_heads<'a, B: IoBackend>(
    flushes: impl Iterator<Item = &'a mut Flush>,
    finished_seq: u64,
    failed: &[*const Segment],
    backend: &B,
    staging: &Rc<AlignedBuffer>,
) {
    for flush in flushes {
        for group in flush.groups.iter_mut() {
            let Head::Deferred { after_seq } = group.head else {
                continue;
            };
            if after_seq > finished_seq {
                continue;
            }
            if failed.contains(&key(&group.segment)) {
                group.head = Head::Skipped;
                continue;
            }
            let future = match group.segment.write_file() {
                Some(file) => {
                    use std::os::fd::AsRawFd;
                    let write = FileWrite {
                        fd: file.as_raw_fd(),
                        staging_offset: group.staging_offset,
                        len: group.first_block_bytes(),
                        file_position: group.file_position(),
                    };
                    backend.write(staging, write, WriteSync::None).0
                }
                None => no_write_descriptor(),
            };
            group.head = Head::Submitted(future);
        }
    }
}

/// Awaits a flush's writes (bodies, then first blocks, all submitted by now) and checks
/// their lengths; records when they were all in.
async fn await_writes(flush: &mut Flush) -> Vec<io::Result<()>> {
    let mut results = Vec::with_capacity(flush.groups.len());
    for group in flush.groups.iter_mut() {
        let first_bytes = match group.head {
            Head::Whole => 0,
            _ => group.first_block_bytes(),
        };
        let mut result = match group.body.take() {
            Some(body) => check_length(body.await, group.write_len - first_bytes),
            None => Ok(()),
        };
        match std::mem::replace(&mut group.head, Head::Whole) {
            Head::Whole => {}
            Head::Submitted(head) => {
                let head_result = check_length(head.await, first_bytes);
                if result.is_ok() {
                    result = head_result;
                }
            }
            Head::Skipped => {
                if result.is_ok() {
                    result = Err(io::Error::other(
                        "an earlier write of this file's last block failed",
                    ));
                }
            }
            Head::Deferred { after_seq } => {
                debug_assert!(false, "first block still waits for flush {after_seq}");
                if result.is_ok() {
                    result = Err(io::Error::other(
                        "internal error: first block never written",
                    ));
                }
            }
        }
        results.push(result);
    }
    flush.writes_done = Instant::now();
    flush.stats.write_ns = (flush.writes_done - flush.started).as_nanos() as u64;
    results
}

/// The write of a segment whose write descriptor is gone: it fails like a failed write.
fn no_write_descriptor() -> IoFuture {
    Box::pin(async { Err(io::Error::other("segment has no write descriptor")) })
}

fn check_length(result: io::Result<i32>, expected_bytes: usize) -> io::Result<()> {
    match result {
        Ok(bytes) if usize::try_from(bytes).is_ok_and(|bytes| bytes == expected_bytes) => Ok(()),
        Ok(bytes) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {bytes} of {expected_bytes} bytes"),
        )),
        Err(error) => Err(error),
    }
}

/// Finishes handed-over flushes in order: awaits each one's fdatasyncs, then publishes and
/// completes its appends. A failed fdatasync poisons its partition; the flushes behind see
/// the poison when they finish and fail that partition's appends too.
async fn complete_syncs(shard: Rc<ShardShared>, pipeline: Rc<Pipeline>) {
    loop {
        let front = pipeline.syncing.borrow_mut().pop_front();
        match front {
            Some(flush) => {
                finish_syncs(&shard, flush).await;
                pipeline
                    .syncing_outstanding
                    .set(pipeline.syncing_outstanding.get() - 1);
                pipeline.progress.notify_one();
            }
            None if pipeline.closed.get() => return,
            None => {
                let handed = pipeline.handed.notified();
                tokio::pin!(handed);
                handed.as_mut().enable();
                if pipeline.syncing.borrow().is_empty() && !pipeline.closed.get() {
                    handed.await;
                }
            }
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
    /// Order of submission, from 1.
    seq: u64,
    groups: Vec<Group>,
    parts: Vec<PartFlush>,
    part_of: HashMap<*const PartitionShared, usize>,
    taken: Vec<QueuedAppend>,
    extra_syncs: Vec<(usize, Rc<Segment>, Covers, IoFuture)>,
    /// The staging region (offset, bytes) its writes read, None when it staged nothing.
    staging_region: Option<(usize, usize)>,
    /// Its writes' results, when a drain awaited them before the write completer took it.
    write_results: Option<Vec<io::Result<()>>>,
    started: Instant,
    /// When the last write completed: the fdatasyncs' latency is measured from here.
    writes_done: Instant,
    stats: FlushStats,
}

/// Plans the next flush (a prefix of the queue within the staging region, the last append
/// possibly in part), copies it into the region and submits one write per file with its
/// fdatasync linked behind it. A file whose partial last block is still in an earlier
/// flush's in-flight write gets that block split off and deferred ([`Head::Deferred`]); its
/// fdatasync is then submitted when both writes are in. None when there is nothing to write.
///
/// `region` is free: no write from it is in flight and no other flush will use it until
/// this one's writes have completed.
fn start_flush<B: IoBackend>(
    shard: &Rc<ShardShared>,
    backend: &B,
    staging: &Rc<AlignedBuffer>,
    pipeline: &Pipeline,
    region: (usize, usize),
) -> Option<Flush> {
    let direct_io = shard.direct_io;
    let align_bytes = if shard.direct_io {
        DIRECT_IO_ALIGN_BYTES
    } else {
        1
    };
    let (region_offset, budget_bytes) = region;
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
                    log_rollbacks: item.partition.log.borrow().rollbacks,
                    records: 0,
                    sync: false,
                    acks_written: false,
                    own_sync: false,
                    failure: None,
                });
                parts.len() - 1
            });
            let group = *group_of.entry(key(&item.segment)).or_insert_with(|| {
                let (start_bytes, rollbacks) = {
                    let state = item.segment.state.borrow();
                    (state.planned_bytes, state.rollbacks)
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
                    body: None,
                    head: Head::Whole,
                    split: false,
                    sync_mode: WriteSync::None,
                    sync: None,
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
                parts[part].acks_written |= item
                    .waiter
                    .as_ref()
                    .is_some_and(|waiter| waiter.ack == Ack::Written);
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
    let seq = pipeline.next_seq.get();
    pipeline.next_seq.set(seq + 1);

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
        part.own_sync = part.sync
            && direct_io
            && shard.dsync_writes.get()
            && log.syncs_every_commit()
            && !part.acks_written;
    }

    // 3. O_DIRECT: copy into the region (aligned, partial last block in front), then the
    //    segment's planned end and tail block move past this flush; a first block that is
    //    still in an earlier in-flight write is deferred. Buffered writes go straight from
    //    the appends' buffers (writev).
    let mut staging_offset = region_offset;
    for group in groups.iter_mut() {
        let mut state = group.segment.state.borrow_mut();
        let end = group.start_bytes + group.new_bytes as u64;
        let part = &parts[group.partition];
        // An RWF_DSYNC write covers only its own bytes: used once every earlier byte of the
        // file was written with a sync of its own (or is durable already).
        group.sync_mode = if !part.sync {
            state.unsynced_planned_bytes = end;
            WriteSync::None
        } else if part.own_sync
            && group.staged
            && state.durable_bytes >= state.unsynced_planned_bytes
        {
            WriteSync::Own
        } else {
            WriteSync::File
        };
        if !group.staged {
            state.planned_bytes = end;
            state.assert_order();
            continue;
        }
        group.staging_offset = staging_offset;
        // SAFETY: the region is free (no write from it in flight) and this range is disjoint
        // from every other group's.
        let destination = unsafe { staging.slice_mut(staging_offset, group.write_len) };
        debug_assert_eq!(
            state.tail_block.len(),
            group.head_bytes,
            "tail block out of step with the file"
        );
        destination[..group.head_bytes].copy_from_slice(&state.tail_block[..group.head_bytes]);
        let mut at = group.head_bytes;
        for piece in &group.pieces {
            copy_streaming(&mut destination[at..at + piece.len()], piece);
            at += piece.len();
        }
        destination[at..].fill(0);
        if group.head_bytes > 0 && state.tail_write_seq > pipeline.finished_seq.get() {
            group.head = Head::Deferred {
                after_seq: state.tail_write_seq,
            };
            group.split = true;
            // Two plain writes, then an fdatasync once both are in (finish_writes).
            if group.sync_mode == WriteSync::Own {
                group.sync_mode = WriteSync::File;
            }
        }
        let tail_from = (align_down(end, align_bytes as u64) - group.file_position()) as usize;
        state.tail_block.clear();
        state
            .tail_block
            .extend_from_slice(&destination[tail_from..at]);
        state.tail_write_seq = seq;
        state.planned_bytes = end;
        state.assert_order();
        staging_offset += group.write_len;
    }
    let staged_bytes = staging_offset - region_offset;
    debug_assert!(staged_bytes <= budget_bytes);
    let staging_region = (staged_bytes > 0).then_some((region_offset, staged_bytes));

    // 4. Submit.
    let started = Instant::now();
    for group in groups.iter_mut() {
        let sync = parts[group.partition].sync;
        let Some(file) = group.segment.write_file() else {
            group.body = Some(no_write_descriptor());
            group.head = Head::Whole;
            group.split = false;
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
            group.body = Some(written);
            group.sync = synced;
            continue;
        }
        let whole = FileWrite {
            fd: file.as_raw_fd(),
            staging_offset: group.staging_offset,
            len: group.write_len,
            file_position: group.file_position(),
        };
        match group.head {
            Head::Whole => {
                debug_assert_eq!(sync, group.sync_mode != WriteSync::None);
                let (written, synced) = backend.write(staging, whole, group.sync_mode);
                group.body = Some(written);
                group.sync = synced;
            }
            _ => {
                // The first block waits; the rest (if any) goes now, its fdatasync later.
                let first_bytes = group.first_block_bytes();
                if group.write_len > first_bytes {
                    let rest = FileWrite {
                        staging_offset: whole.staging_offset + first_bytes,
                        len: whole.len - first_bytes,
                        file_position: whole.file_position + first_bytes as u64,
                        ..whole
                    };
                    group.body = Some(backend.write(staging, rest, WriteSync::None).0);
                }
            }
        }
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
        seq,
        groups,
        parts,
        part_of,
        taken,
        extra_syncs,
        staging_region,
        write_results: None,
        started,
        writes_done: started,
        stats,
    })
}

/// Records the flush's write results: the new file ends, failures (rolling back a partition
/// whose write failed, unless an earlier flush's failure rolled it back already), acks=1
/// completions, and publication of partitions that do not fdatasync this flush. Submits the
/// fdatasyncs of groups whose first block was written separately (not linked to a write).
fn finish_writes<B: IoBackend>(
    shard: &ShardShared,
    backend: &B,
    flush: &mut Flush,
    write_results: Vec<io::Result<()>>,
) {
    for (group, result) in flush.groups.iter().zip(&write_results) {
        if let Err(error) = result {
            let part = &mut flush.parts[group.partition];
            // An RWF_DSYNC write's error may be its sync's (one result for both): the disk
            // may have lost more than this write, so it poisons like a failed fdatasync. A
            // short write is only short (the writer fails and rolls it back).
            if group.sync_mode == WriteSync::Own && error.raw_os_error().is_some() {
                if !matches!(part.failure, Some(Failure::Poison(_))) {
                    part.failure = Some(Failure::Poison(Poisoned {
                        partition: part.partition.label(),
                        operation: format!(
                            "durable (RWF_DSYNC) write of {}",
                            group.segment.log_path().display()
                        ),
                        source: std::sync::Arc::new(copy_error(error)),
                    }));
                }
            } else if part.failure.is_none() {
                part.failure = Some(Failure::Write(format!(
                    "write to {} failed: {error}",
                    group.segment.log_path().display()
                )));
            }
        }
    }
    // Poisoned by a failed RWF_DSYNC write: its appends, queued ones included, fail now (the
    // flushes behind see the poison when they finish); nothing is rolled back.
    for part in flush.parts.iter() {
        if let Some(Failure::Poison(poisoned)) = &part.failure {
            poison(shard, &part.partition, poisoned.clone(), &mut flush.taken);
        }
    }
    // Rolled back since this flush was planned (an earlier flush's write failed): this
    // flush's appends of the partition came after the failed one and fail too.
    let mut rolled_back = vec![false; flush.parts.len()];
    for (index, part) in flush.parts.iter_mut().enumerate() {
        if part.partition.log.borrow().rollbacks != part.log_rollbacks {
            rolled_back[index] = true;
            if part.failure.is_none() {
                part.failure = Some(Failure::Write(
                    "an earlier write of this partition failed; its log was rolled back".into(),
                ));
            }
        }
    }
    for (group, result) in flush.groups.iter_mut().zip(&write_results) {
        if result.is_err() || flush.parts[group.partition].failure.is_some() {
            continue;
        }
        let end = group.start_bytes + group.new_bytes as u64;
        {
            let mut state = group.segment.state.borrow_mut();
            state.written_bytes = end;
            state.assert_order();
        }
        // Its first block was written on its own: the fdatasync follows both writes now.
        if group.split && flush.parts[group.partition].sync && group.sync.is_none() {
            if let Some(file) = group.segment.write_file() {
                group.sync = Some(backend.fdatasync_kept(file));
            }
        }
    }
    for (index, part) in flush.parts.iter().enumerate() {
        if let Some(failure @ Failure::Write(_)) = &part.failure {
            if rolled_back[index] {
                fail_appends(shard, &part.partition, failure, &mut flush.taken);
            } else {
                fail_partition(shard, part, failure, &mut flush.taken);
            }
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
    for group in flush.groups.iter_mut() {
        let Some(synced) = group.sync.take() else {
            continue;
        };
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
