//! One partition's log state and its synchronous half: validation, offset and position
//! reservation at enqueue, reads, timestamp lookups, and the bookkeeping the writer applies
//! when a group commit completes or fails (high watermark advance, rollback, poisoning).
//!
//! Offsets, in order: log start <= high watermark <= durable end <= log end. The log end
//! offset moves at enqueue (reserve before you await: offsets and file positions are assigned
//! synchronously, so two appends can never interleave); the durable end moves only when the
//! writer reports the data written (flush policy set) or durable (default), and the high
//! watermark with it as far as the replicated limit allows (`offsets.rs`). Must never let a
//! consumer read see a byte at or above the high watermark, a replica read one at or above
//! the durable end, and never accept an append once poisoned.

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::batch::{self, RecordBatchHeader};
use crate::epoch::LeaderEpochCache;
use crate::io::{read_exact, IoBackend, IoFuture};
use crate::offsets::{DurableEnd, LogEndOffset, LogOffsets};
use crate::segment::{self, Segment};
use crate::shard::ShardShared;
use crate::stamped::Stamped;
use crate::tail_cache::PartitionTail;
use crate::writer::{QueuedAppend, Waiter};
use crate::{
    Ack, AppendError, AppendInfo, LogConfig, Poisoned, ReadBound, ReadChunk, ReadSlice,
    RecoveryCut, StorageError, TimestampType,
};

/// How an append's batches get their offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamping {
    /// A producer's append: the log assigns base offsets and stamps this leader epoch.
    Assign {
        /// Written into every batch's `partition_leader_epoch`.
        leader_epoch: i32,
    },
    /// A follower's copy of its leader's batches: the headers are kept byte for byte, and the
    /// first batch must start at this log's end, each next one where the previous ended.
    Keep,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Where an append's completion arrives.
pub(crate) type AppendReceiver = oneshot::Receiver<Result<AppendInfo, AppendError>>;

/// Mutable state of a partition log.
pub(crate) struct LogState {
    pub(crate) config: LogConfig,
    /// In base-offset order; the last one is active. Never empty.
    pub(crate) segments: Vec<Rc<Segment>>,
    /// Log start <= high watermark <= log end, asserted on every change.
    pub(crate) offsets: LogOffsets,
    /// Set by a failed sync: every later append fails, the high watermark stays put, and
    /// the partition cannot be reopened until the process restarts.
    pub(crate) poisoned: Option<Poisoned>,
    pub(crate) deleted: bool,
    /// Records written since the last fdatasync (for `flush.messages`).
    pub(crate) unsynced_messages: u64,
    /// When the last fdatasync of this partition completed (for `flush.ms`).
    pub(crate) last_sync: Instant,
    pub(crate) recovery_cuts: Vec<RecoveryCut>,
    /// Which leader epoch started at which offset (checkpointed in `leader-epoch-checkpoint`).
    pub(crate) epochs: LeaderEpochCache,
    /// A truncation is cutting the tail: appends are refused until it is done.
    pub(crate) truncating: bool,
    /// Times the log was rolled back after a failed write. A group commit planned before a
    /// rollback fails its appends of this partition (they were past the failed one) and
    /// does not roll back again.
    pub(crate) rollbacks: u64,
}

impl LogState {
    pub(crate) fn active(&self) -> &Rc<Segment> {
        &self.segments[self.segments.len() - 1]
    }

    /// Whether this partition's appends are fdatasync'ed before acks=all completes.
    pub(crate) fn syncs_every_commit(&self) -> bool {
        self.config.flush_messages.is_none() && self.config.flush_ms.is_none()
    }
}

/// One partition, shared between its `Partition` handles and the writer's queue.
pub(crate) struct PartitionShared {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// The partition directory. It is fsynced after a segment is created or a file removed,
    /// through a descriptor opened for each such sync ([`PartitionShared::sync_dir`]): an idle
    /// partition holds one descriptor, its active segment's.
    pub(crate) dir: PathBuf,
    /// Weak: the shard holds its partitions, so a strong reference back would keep a
    /// storage that was dropped without `shutdown` (a simulated crash) alive for ever.
    pub(crate) shard: Weak<ShardShared>,
    pub(crate) log: RefCell<LogState>,
    pub(crate) tail: Rc<RefCell<PartitionTail>>,
    /// Woken whenever the high watermark advances.
    pub(crate) high_watermark_advanced: Notify,
    /// Serializes segment finalizations, so the recovery point only moves forward.
    pub(crate) finalize_lock: tokio::sync::Mutex<()>,
    /// Serializes DeleteRecords' checkpoint writes, so the checkpoint only moves forward.
    pub(crate) log_start_lock: tokio::sync::Mutex<()>,
    /// Held by retention and by a cleaner pass: neither removes or replaces a segment the
    /// other is working on.
    pub(crate) maintenance_lock: tokio::sync::Mutex<()>,
    /// The cleaner's progress (its checkpoint file's contents).
    pub(crate) cleaner: RefCell<crate::cleaner::CleanerState>,
    /// The high watermark in `replication-offset-checkpoint` (read at open or last written);
    /// None while the partition has no such file (never replicated here).
    pub(crate) high_watermark_checkpointed: std::cell::Cell<Option<i64>>,
    /// Serializes the high-watermark checkpoint's writes, so it only moves forward.
    pub(crate) high_watermark_lock: tokio::sync::Mutex<()>,
}

/// One piece of an append: consecutive batches that land in the same segment.
struct Piece {
    segment: Rc<Segment>,
    position: u64,
    range: std::ops::Range<usize>,
    first_offset: i64,
    last_offset: i64,
    records: u64,
}

impl PartitionShared {
    /// Queues an fsync of the partition directory through a descriptor opened for it (a
    /// blocking open on the calling thread, as a segment's creation: rare, and never a read of
    /// data). A failed open fails the sync, as a failed fsync would.
    pub(crate) fn sync_dir<B: IoBackend + ?Sized>(&self, io: &B) -> IoFuture {
        match std::fs::File::open(&self.dir) {
            Ok(dir) => io.fdatasync_kept(Rc::new(dir)),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    pub(crate) fn label(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Poisons the partition with `poisoned` unless it already is (the first cause is kept,
    /// logged once and reported once to the shard's poison observer); returns the cause in
    /// effect. Must be called with the log not borrowed.
    pub(crate) fn mark_poisoned(&self, poisoned: Poisoned) -> Poisoned {
        let (cause, first, deleted) = {
            let mut log = self.log.borrow_mut();
            let first = log.poisoned.is_none();
            (
                log.poisoned.get_or_insert(poisoned).clone(),
                first,
                log.deleted,
            )
        };
        if first {
            tracing::error!(partition = %self.label(), error = %cause, "partition poisoned until the process restarts");
            self.high_watermark_advanced.notify_waiters();
        }
        // A deleted partition is nobody's business any more (its name may be reused).
        if first && !deleted {
            if let Some(shard) = self.shard.upgrade() {
                if let Some(observer) = shard.poison_observer.borrow().as_ref() {
                    observer(&cause, &self.topic, self.partition);
                }
            }
        }
        cause
    }

    /// Validates, assigns offsets, reserves file positions and queues the append; returns
    /// the append's result-to-be, the completion receiver (None for acks=0) and its place in
    /// the writer queue (for [`ShardShared::wait_for_queue_room`]).
    pub(crate) fn enqueue(
        self: &Rc<Self>,
        records: Bytes,
        ack: Ack,
        stamping: Stamping,
    ) -> Result<(AppendInfo, Option<AppendReceiver>, u64), AppendError> {
        let Some(shard) = self.shard.upgrade().filter(|shard| !shard.closing.get()) else {
            return Err(AppendError::Storage("storage is shut down".into()));
        };
        let mut log = self.log.borrow_mut();
        if log.deleted {
            return Err(AppendError::Storage(format!(
                "partition {} was deleted",
                self.label()
            )));
        }
        if let Some(poisoned) = &log.poisoned {
            return Err(AppendError::Poisoned(poisoned.clone()));
        }
        if log.truncating {
            return Err(AppendError::Storage(format!(
                "{} is truncating its tail",
                self.label()
            )));
        }
        let headers = batch::validate(&records, log.config.max_message_bytes)?;
        if log.config.cleanup_policy.compact {
            let decompressed_bytes_max = shard.cleaner_config.borrow().decompressed_batch_bytes_max;
            match crate::records::all_keyed(&records, &headers, decompressed_bytes_max) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(AppendError::InvalidRecord(format!(
                        "{} is compacted (cleanup.policy=compact): every record needs a key",
                        self.topic
                    )))
                }
                Err(error) => {
                    return Err(AppendError::InvalidRecord(format!(
                        "cannot read the keys of a batch for compacted {}: {error}",
                        self.topic
                    )))
                }
            }
        }
        let now = now_ms();
        if stamping == Stamping::Keep {
            check_follows_log_end(&headers, log.offsets.end())?;
        }
        let log_append_time =
            stamping != Stamping::Keep && log.config.timestamp_type == TimestampType::LogAppendTime;
        let base_before = log.active().base_offset;
        let (pieces, bases) = self.reserve(&mut log, &shard, &headers, now)?;
        let rolled_to = Some(log.active().base_offset).filter(|&base| base != base_before);
        let mut data = Stamped::stamp(&records, &headers, |index, header, rest| {
            if let Stamping::Assign { leader_epoch } = stamping {
                batch::assign(header, bases[index], leader_epoch);
            }
            if log_append_time {
                batch::set_log_append_time_in_header(header, rest, now);
            }
        });
        let first_offset = pieces[0].first_offset;
        let last_offset = pieces[pieces.len() - 1].last_offset;
        let info = AppendInfo {
            base_offset: first_offset,
            last_offset,
            log_append_time_ms: if log_append_time { now } else { -1 },
            log_start_offset: log.offsets.start(),
        };
        // A leader's first append in a new epoch starts it (an older epoch changes nothing:
        // the broker fences stale leaders before they append). A follower's copy carries its
        // leader's epochs in the batch headers: each new one starts at its batch.
        let epoch_started = match stamping {
            Stamping::Assign { leader_epoch } => log.epochs.assign(leader_epoch, first_offset),
            Stamping::Keep => headers.iter().fold(false, |started, header| {
                log.epochs
                    .assign(header.partition_leader_epoch, header.base_offset)
                    | started
            }),
        };
        drop(log);
        if let Some(base) = rolled_to {
            // In a task of its own: the observer may read this partition's state or append.
            if let Some(observer) = shard.roll_observer.borrow().clone() {
                let partition = crate::Partition(self.clone());
                tokio::task::spawn_local(async move { observer(partition, base) });
            }
        }
        if epoch_started {
            let partition = self.clone();
            tokio::task::spawn_local(async move {
                // A failure poisons the partition (and is logged there).
                let _ = crate::leader::write_epoch_checkpoint(&partition).await;
            });
        }

        // Cache every batch for readers (served only once below the high watermark).
        {
            let mut cache = shard.tail_cache.borrow_mut();
            let mut offset = first_offset;
            for (header, (stamped_header, rest)) in headers.iter().zip(data.batches()) {
                let last = offset + i64::from(header.last_offset_delta);
                cache.insert(&self.tail, offset, last, stamped_header, rest);
                offset = last + 1;
            }
        }

        let (sender, receiver) = if ack == Ack::None {
            (None, None)
        } else {
            let (sender, receiver) = oneshot::channel();
            (Some(sender), Some(receiver))
        };
        let mut sender = sender;
        let piece_count = pieces.len();
        let enqueued_at = Instant::now();
        let mut queue_position = 0u64;
        let mut queue = shard.queue.borrow_mut();
        for (index, piece) in pieces.into_iter().enumerate() {
            let last = index + 1 == piece_count;
            let waiter = if last {
                sender.take().map(|sender| Waiter { sender, ack, info })
            } else {
                None
            };
            let len = piece.range.len();
            queue.push_back(QueuedAppend {
                partition: self.clone(),
                segment: piece.segment,
                position: piece.position,
                // Usually the whole append lands in one segment: that piece takes `data`.
                data: if piece_count == 1 {
                    std::mem::take(&mut data)
                } else {
                    data.sub(piece.range)
                },
                consumed: 0,
                first_offset: piece.first_offset,
                last_offset: piece.last_offset,
                records: piece.records,
                waiter,
                enqueued_at,
            });
            queue_position = shard.enqueued(len);
        }
        drop(queue);
        shard.writer_wake.notify_one();
        Ok((info, receiver, queue_position))
    }

    /// Assigns offsets and positions, rolling segments as `segment.bytes`/`segment.ms` ask;
    /// returns the pieces and each batch's base offset. Either every batch is reserved or
    /// nothing changes.
    fn reserve(
        self: &Rc<Self>,
        log: &mut LogState,
        shard: &ShardShared,
        headers: &[RecordBatchHeader],
        now: i64,
    ) -> Result<(Vec<Piece>, Vec<i64>), AppendError> {
        let segment_bytes_max = log.config.segment_bytes.clamp(1, i32::MAX as u64);
        // Plan: which batches start a new segment, without touching any state yet.
        let (mut reserved, created_ms, active_base) = {
            let state = log.active().state.borrow();
            (
                state.reserved_bytes,
                state.created_ms,
                log.active().base_offset,
            )
        };
        let mut offset = log.offsets.end();
        let mut rolls = Vec::new();
        for (index, header) in headers.iter().enumerate() {
            let size = header.size_bytes() as u64;
            let last = offset + i64::from(header.last_offset_delta);
            let segment_base = rolls.last().map_or(active_base, |&(_, base)| base);
            // A compacted log rolls by max.compaction.lag.ms too: the cleaner never touches
            // the active segment, so a record could otherwise wait a whole segment.ms.
            let roll_ms = if log.config.cleanup_policy.compact {
                log.config.segment_ms.min(log.config.max_compaction_lag_ms)
            } else {
                log.config.segment_ms
            };
            let aged = rolls.is_empty() && now.saturating_sub(created_ms) >= roll_ms;
            let full = reserved + size > segment_bytes_max;
            let relative_overflow = last - segment_base > i64::from(i32::MAX);
            if reserved > 0 && (full || aged || relative_overflow) {
                rolls.push((index, offset));
                reserved = 0;
            }
            reserved += size;
            offset = last + 1;
        }
        let mut created = Vec::with_capacity(rolls.len());
        for &(_, base) in &rolls {
            match Segment::create(&self.dir, base, shard.direct_io, now) {
                Ok(segment) => {
                    if let Some(file) = segment.write_file() {
                        use std::os::fd::AsRawFd;
                        shard.io.file_created(file.as_raw_fd());
                    }
                    created.push(Rc::new(segment))
                }
                Err(error) => {
                    for segment in &created {
                        segment.unlink();
                    }
                    return Err(AppendError::Storage(format!(
                        "{}: cannot create segment {base}: {error}",
                        self.label()
                    )));
                }
            }
        }

        // Commit: assign base offsets, reserve positions, install new segments.
        let mut created = created.into_iter();
        let mut pieces: Vec<Piece> = Vec::new();
        let mut bases = Vec::with_capacity(headers.len());
        let mut position_in_data = 0usize;
        let mut next_roll = 0usize;
        for (index, header) in headers.iter().enumerate() {
            if next_roll < rolls.len() && rolls[next_roll].0 == index {
                next_roll += 1;
                if let Some(segment) = created.next() {
                    log.active().state.borrow_mut().sealed = true;
                    log.segments.push(segment);
                }
            }
            let size = header.size_bytes();
            let base = log.offsets.end();
            let last = base + i64::from(header.last_offset_delta);
            bases.push(base);
            let active = log.active().clone();
            let position = {
                let mut state = active.state.borrow_mut();
                let position = state.reserved_bytes;
                state.reserved_bytes += size as u64;
                state.next_offset = last + 1;
                state.assert_order();
                position
            };
            log.offsets.reserve(LogEndOffset(last + 1));
            match pieces.last_mut() {
                Some(piece) if Rc::ptr_eq(&piece.segment, &active) => {
                    piece.range.end += size;
                    piece.last_offset = last;
                    piece.records += header.records_count as u64;
                }
                _ => pieces.push(Piece {
                    segment: active,
                    position,
                    range: position_in_data..position_in_data + size,
                    first_offset: base,
                    last_offset: last,
                    records: header.records_count as u64,
                }),
            }
            position_in_data += size;
        }
        debug_assert!(!pieces.is_empty());
        Ok((pieces, bases))
    }

    /// The shard's read path (the ring, or the fault plan's wrapper in tests).
    pub(crate) fn reads(&self) -> Result<Rc<dyn IoBackend>, StorageError> {
        match self.shard.upgrade() {
            Some(shard) => Ok(shard.io.clone()),
            None => Err(StorageError::Io {
                context: format!("reading {}", self.label()),
                source: io::Error::other("storage is shut down"),
            }),
        }
    }

    /// Whole batches from the one holding `offset`, bounded by `max_bytes` and the high
    /// watermark. Served from the tail cache when it holds `offset` and the shard's response
    /// budget (`fetch.response.cache.bytes.max`) can take the cached range (without awaiting),
    /// else from the files, whose headers are read through the ring.
    ///
    /// The file may serve what the cache would have: every byte below the high watermark is
    /// in the file already. `publish` moves the high watermark and the segment's
    /// `visible_bytes` together, only after the writer's write of those bytes completed
    /// (`visible_bytes <= written_bytes` is asserted on every change), whether the write was
    /// buffered or O_DIRECT (whose later rewrites of a partial block carry the same bytes
    /// below `visible_bytes`), and the file path reads no further than `visible_bytes`. It may
    /// serve less than the cache would (one segment per read), never bytes not yet written.
    ///
    /// The log is not borrowed across an await: the segments and their visible ends are taken
    /// first. That is safe because no byte below a segment's `visible_bytes` is ever rewritten
    /// and a `SegmentHandle` keeps a deleted segment's data readable.
    ///
    /// `end_offset` bounds the read further (exclusive, at a batch boundary): the last stable
    /// offset for read_committed fetches; `i64::MAX` for the high watermark alone.
    pub(crate) async fn read(
        &self,
        offset: i64,
        max_bytes: u32,
        min_one_batch: bool,
        bound: ReadBound,
    ) -> Result<ReadSlice, StorageError> {
        let (mut slice, first, interval_bytes, limit) = {
            let log = self.log.borrow();
            if offset < log.offsets.start() || offset > log.offsets.end() {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset: log.offsets.start(),
                    log_end_offset: log.offsets.end(),
                });
            }
            let mut slice = ReadSlice {
                chunks: Vec::new(),
                total_bytes: 0,
                high_watermark: log.offsets.high_watermark(),
                log_start_offset: log.offsets.start(),
                cache_budget_spent: false,
            };
            let limit = match bound {
                ReadBound::HighWatermark => log.offsets.high_watermark(),
                ReadBound::DurableEnd => log.offsets.durable_end(),
                ReadBound::Stable(end_offset) => log.offsets.high_watermark().min(end_offset),
            };
            if offset >= limit {
                return Ok(slice);
            }
            if let Some((chunks, total_bytes)) =
                self.tail
                    .borrow()
                    .read(offset, limit, max_bytes, min_one_batch)
            {
                match self.pin_for_response(chunks, total_bytes) {
                    Some(chunks) => {
                        slice.chunks = chunks.into_iter().map(ReadChunk::Memory).collect();
                        slice.total_bytes = total_bytes;
                        return Ok(slice);
                    }
                    None => slice.cache_budget_spent = true,
                }
            }
            let first = log
                .segments
                .partition_point(|segment| segment.base_offset <= offset)
                .saturating_sub(1);
            let first = log.segments.get(first).map(|segment| {
                let visible_bytes = segment.state.borrow().visible_bytes;
                (segment.clone(), visible_bytes)
            });
            (slice, first, log.config.index_interval_bytes, limit)
        };
        let reads = self.reads()?;
        let io = reads.as_ref();
        let mut candidate = first;
        while let Some((segment, visible_bytes)) = candidate.take() {
            let io_context = |error: io::Error| StorageError::Io {
                context: format!("reading {}", segment.log_path().display()),
                source: error,
            };
            let mut headers = segment
                .headers(
                    io,
                    visible_bytes,
                    segment::short_walk_window_bytes(interval_bytes),
                )
                .map_err(io_context)?;
            let Some((start, header)) = segment
                .find_batch(&mut headers, offset, interval_bytes)
                .await
                .map_err(io_context)?
            else {
                candidate = self.segment_after(segment.base_offset);
                continue;
            };
            if header.base_offset > offset && !self.log.borrow().config.cleanup_policy.compact {
                // Offsets of a log that is not compacted are dense: the batch found must hold
                // `offset`. One that starts later means the index or the segment's bytes
                // disagree with its offsets, and a reader would silently skip records.
                tracing::error!(
                    partition = %self.label(),
                    offset,
                    found_base_offset = header.base_offset,
                    position = start,
                    segment = %segment.log_path().display(),
                    "a read found a batch starting past the offset asked for"
                );
            }
            let first_len = header.size_bytes() as u64;
            // A segment's visible bytes reach the durable end; a consumer's read stops at the
            // high watermark, which may be lower in a replicated partition.
            if header.last_offset() >= limit || (first_len > u64::from(max_bytes) && !min_one_batch)
            {
                return Ok(slice);
            }
            let mut end = start + first_len;
            // Jump over the whole batches the index vouches for; read headers only for the rest.
            let mut next = match segment
                .indexed_batch_start(&mut headers, end, start + u64::from(max_bytes))
                .await
                .map_err(io_context)?
            {
                // The jumped-over batches end where `header` starts: only below the limit.
                Some((indexed, header)) if header.base_offset <= limit => {
                    end = indexed;
                    Some(header)
                }
                _ => headers.header_at(end).await.map_err(io_context)?,
            };
            while let Some(header) = next {
                let length = header.size_bytes() as u64;
                if end + length - start > u64::from(max_bytes) || header.last_offset() >= limit {
                    break;
                }
                end += length;
                next = headers.header_at(end).await.map_err(io_context)?;
            }
            let length = (end - start) as u32;
            slice.chunks.push(ReadChunk::File {
                segment: headers.file().clone(),
                position: start,
                length,
            });
            slice.total_bytes = length;
            return Ok(slice);
        }
        Ok(slice)
    }

    /// `chunks` (a cached range of `total_bytes`) charged to the shard's response budget,
    /// each carrying its permit; None when the budget is spent (the caller reads the file).
    /// With the shard gone (dropped without shutdown) there is no budget left to keep.
    fn pin_for_response(&self, chunks: Vec<Bytes>, total_bytes: u32) -> Option<Vec<Bytes>> {
        match self.shard.upgrade() {
            Some(shard) if !chunks.is_empty() => {
                shard.response_budget.pin(chunks, total_bytes as usize)
            }
            _ => Some(chunks),
        }
    }

    /// The segment after the one based at `base_offset` and its visible end, if any.
    fn segment_after(&self, base_offset: i64) -> Option<(Rc<Segment>, u64)> {
        let log = self.log.borrow();
        let next = log
            .segments
            .partition_point(|segment| segment.base_offset <= base_offset);
        log.segments.get(next).map(|segment| {
            let visible_bytes = segment.state.borrow().visible_bytes;
            (segment.clone(), visible_bytes)
        })
    }

    /// The bytes of one chunk of a [`ReadSlice`]: a file range is read through the ring.
    pub(crate) async fn chunk_bytes(&self, chunk: &ReadChunk) -> Result<Bytes, StorageError> {
        match chunk {
            ReadChunk::Memory(bytes) => Ok(bytes.clone()),
            ReadChunk::File {
                segment,
                position,
                length,
            } => {
                let reads = self.reads()?;
                let len = *length as usize;
                let (result, buffer) = read_exact(
                    reads.as_ref(),
                    segment.raw_fd(),
                    vec![0u8; len],
                    0,
                    len,
                    *position,
                )
                .await;
                result.map_err(|source| StorageError::Io {
                    context: format!("reading {length} bytes at {position} of {}", self.label()),
                    source,
                })?;
                Ok(Bytes::from(buffer))
            }
        }
    }

    /// Headers of the visible batches in the last `window_bytes` of the log, oldest first.
    /// Each segment's walk starts at an index entry the header there confirms (or at the
    /// segment's start), so a stale index costs a longer walk, never a wrong header.
    pub(crate) async fn recent_batch_headers(
        &self,
        window_bytes: u64,
    ) -> Result<Vec<RecordBatchHeader>, StorageError> {
        let (segments, interval_bytes) = {
            let log = self.log.borrow();
            let segments: Vec<(Rc<Segment>, u64)> = log
                .segments
                .iter()
                .rev()
                .map(|segment| (segment.clone(), segment.state.borrow().visible_bytes))
                .collect();
            (segments, log.config.index_interval_bytes)
        };
        let reads = self.reads()?;
        let io = reads.as_ref();
        let mut remaining_bytes = window_bytes;
        let mut newest_first: Vec<Vec<RecordBatchHeader>> = Vec::new();
        for (segment, visible_bytes) in segments {
            if remaining_bytes == 0 {
                break;
            }
            let io_context = |error: io::Error| StorageError::Io {
                context: format!("reading batch headers of {}", segment.log_path().display()),
                source: error,
            };
            segment
                .load_index(io, interval_bytes)
                .await
                .map_err(io_context)?;
            let from = visible_bytes.saturating_sub(remaining_bytes);
            let mut reader = segment
                .walk_headers(io, visible_bytes, segment::LONG_WALK_WINDOW_BYTES)
                .map_err(io_context)?;
            let mut position = match segment
                .indexed_batch_start(&mut reader, 0, from)
                .await
                .map_err(io_context)?
            {
                Some((position, _)) => position,
                None => 0,
            };
            remaining_bytes = remaining_bytes.saturating_sub(visible_bytes - position);
            let mut headers = Vec::new();
            while let Some(header) = reader.header_at(position).await.map_err(io_context)? {
                position += header.size_bytes() as u64;
                headers.push(header);
            }
            newest_first.push(headers);
        }
        Ok(newest_first.into_iter().rev().flatten().collect())
    }

    /// Headers of the visible batches from the one holding `offset` on (see
    /// [`crate::Partition::batch_headers_from`]): each segment from the one holding
    /// `offset`, walked from its start (a snapshot is taken at a roll, so the walk usually
    /// starts at a segment's start anyway).
    pub(crate) async fn batch_headers_from(
        &self,
        offset: i64,
    ) -> Result<Vec<RecordBatchHeader>, StorageError> {
        let (segments, interval_bytes) = {
            let log = self.log.borrow();
            let from_segment = log
                .segments
                .partition_point(|segment| segment.base_offset <= offset)
                .saturating_sub(1);
            let segments: Vec<(Rc<Segment>, u64)> = log.segments[from_segment..]
                .iter()
                .map(|segment| (segment.clone(), segment.state.borrow().visible_bytes))
                .collect();
            (segments, log.config.index_interval_bytes)
        };
        let reads = self.reads()?;
        let io = reads.as_ref();
        let mut headers = Vec::new();
        for (segment, visible_bytes) in segments {
            let io_context = |error: io::Error| StorageError::Io {
                context: format!("reading batch headers of {}", segment.log_path().display()),
                source: error,
            };
            segment
                .load_index(io, interval_bytes)
                .await
                .map_err(io_context)?;
            let mut reader = segment
                .walk_headers(io, visible_bytes, segment::LONG_WALK_WINDOW_BYTES)
                .map_err(io_context)?;
            let mut position = 0u64;
            while let Some(header) = reader.header_at(position).await.map_err(io_context)? {
                position += header.size_bytes() as u64;
                if header.last_offset() >= offset {
                    headers.push(header);
                }
            }
        }
        Ok(headers)
    }

    /// The segments and the log start offset, for lookups that await between segments.
    fn segments_snapshot(&self) -> (Vec<(Rc<Segment>, u64)>, i64, u32) {
        let log = self.log.borrow();
        let segments = log
            .segments
            .iter()
            .map(|segment| (segment.clone(), segment.state.borrow().visible_bytes))
            .collect();
        (
            segments,
            log.offsets.start(),
            log.config.index_interval_bytes,
        )
    }

    /// Earliest visible batch whose max timestamp >= `timestamp_ms`: (base offset, max ts).
    pub(crate) async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Option<(i64, i64)> {
        let (segments, log_start_offset, interval_bytes) = self.segments_snapshot();
        let reads = match self.reads() {
            Ok(reads) => reads,
            Err(error) => {
                tracing::warn!(%error, partition = %self.label(), "timestamp lookup failed");
                return None;
            }
        };
        let io = reads.as_ref();
        for (segment, visible_bytes) in segments {
            let Some((max_ts, _)) = segment.max_timestamp(io, interval_bytes).await else {
                continue;
            };
            if max_ts < timestamp_ms {
                continue;
            }
            let found = async {
                let mut headers = segment.walk_headers(
                    io,
                    visible_bytes,
                    segment::short_walk_window_bytes(interval_bytes),
                )?;
                segment
                    .find_time(&mut headers, timestamp_ms, interval_bytes)
                    .await
            };
            match found.await {
                Ok(Some((_, header))) => {
                    return Some((
                        header.base_offset.max(log_start_offset),
                        header.max_timestamp,
                    ))
                }
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, partition = %self.label(), "timestamp lookup failed");
                    return None;
                }
            }
        }
        None
    }

    /// Largest visible timestamp: (offset of its batch's last record, timestamp).
    pub(crate) async fn max_timestamp(&self) -> Option<(i64, i64)> {
        let (segments, _, interval_bytes) = self.segments_snapshot();
        let reads = self.reads().ok()?;
        let io = reads.as_ref();
        let mut best: Option<(i64, i64)> = None;
        for (segment, _) in segments {
            if let Some((ts, offset)) = segment.max_timestamp(io, interval_bytes).await {
                if best.is_none_or(|(best_ts, _)| ts > best_ts) {
                    best = Some((ts, offset));
                }
            }
        }
        best.map(|(ts, offset)| (offset, ts))
    }

    /// Makes the given completed bytes of `segment` visible: high watermark, indexes, max
    /// timestamp. `data` holds whole batches starting at `position`.
    pub(crate) fn publish(
        &self,
        segment: &Segment,
        position: u64,
        data: &Stamped,
        last_offset: i64,
    ) {
        let mut log = self.log.borrow_mut();
        let interval_bytes = log.config.index_interval_bytes;
        {
            let mut state = segment.state.borrow_mut();
            debug_assert_eq!(state.visible_bytes, position, "publishing out of order");
            let mut max_timestamp = state.max_timestamp;
            for (at, header) in data.batch_headers() {
                let relative = (header.last_offset() - segment.base_offset) as u32;
                if let Some(index) = state.index.as_mut() {
                    index.on_batch(
                        relative,
                        (position + at as u64) as u32,
                        header.size_bytes() as u32,
                        header.max_timestamp,
                        interval_bytes,
                    );
                }
                if max_timestamp.is_none_or(|(ts, _)| header.max_timestamp > ts) {
                    max_timestamp = Some((header.max_timestamp, header.last_offset()));
                }
            }
            state.max_timestamp = max_timestamp;
            state.visible_bytes = position + data.len() as u64;
            state.visible_next_offset = last_offset + 1;
            state.assert_order();
        }
        log.offsets.publish(DurableEnd(last_offset + 1));
    }

    /// Undoes the reservation of every append from (`segment`, `position`, `first_offset`)
    /// on, after its write failed: nothing from there is visible and the space is reused.
    pub(crate) fn roll_back(&self, segment: &Rc<Segment>, position: u64, first_offset: i64) {
        let mut log = self.log.borrow_mut();
        tracing::warn!(partition = %self.label(), offset = first_offset, "rolling back appends after a failed write");
        while log.segments.len() > 1 && !Rc::ptr_eq(log.active(), segment) {
            if let Some(removed) = log.segments.pop() {
                removed.unlink();
            }
        }
        log.offsets.roll_back(LogEndOffset(first_offset));
        log.rollbacks += 1;
        let mut state = segment.state.borrow_mut();
        state.sealed = false;
        state.reserved_bytes = position;
        state.next_offset = first_offset;
        if state.planned_bytes > position {
            // The failed write (and perhaps part of an oversized append an earlier flush
            // wrote) is forgotten; the next write starts at `position`. No write of this
            // partition is in flight any more (the writer drains before a rollback), so the
            // tail block can come back from the file.
            state.planned_bytes = position;
            state.written_bytes = state.written_bytes.min(position);
            state.durable_bytes = state.durable_bytes.min(position);
            state.rollbacks += 1;
            state.tail_write_seq = 0;
            if segment.direct_io {
                let block_start = crate::buffer::align_down(
                    position,
                    crate::buffer::DIRECT_IO_ALIGN_BYTES as u64,
                );
                let mut block = vec![0u8; (position - block_start) as usize];
                // A blocking pread on the shard thread: the failure-path exception to "never
                // block the shard", like recovery at open. It runs only after a failed write,
                // reads under 4 KiB (bytes earlier, completed flushes wrote), and the
                // partition must have its tail block back before its next append is planned.
                use std::os::unix::fs::FileExt;
                let read = if block.is_empty() {
                    Ok(())
                } else {
                    segment
                        .read_handle()
                        .and_then(|handle| handle.0.read_exact_at(&mut block, block_start))
                };
                if let Err(error) = read {
                    drop(state);
                    let poisoned = Poisoned {
                        partition: self.label(),
                        operation: format!(
                            "reloading the last block of {} after a failed write",
                            segment.log_path().display()
                        ),
                        source: std::sync::Arc::new(error),
                    };
                    drop(log);
                    self.mark_poisoned(poisoned);
                    return;
                }
                state.tail_block = block;
            }
        }
        state.assert_order();
        drop(state);
        drop(log);
        if let Some(shard) = self.shard.upgrade() {
            shard
                .tail_cache
                .borrow_mut()
                .truncate_from(&self.tail, first_offset);
            // A producer snapshot taken while the failed appends were reserved describes
            // batches that never were: gone before later appends reuse their offsets.
            let key = (self.topic.clone(), self.partition);
            if let Some(partition) = shard.partitions.borrow().get(&key).cloned() {
                tokio::task::spawn_local(async move {
                    let _maintenance = partition.maintenance_lock.lock().await;
                    if let Err(error) =
                        crate::producer_snapshot::remove_above(&partition, first_offset).await
                    {
                        tracing::warn!(partition = %partition.label(), %error, "cannot remove producer snapshots after a failed write");
                    }
                });
            }
        }
        // A truncation waiting for the partition's appends to settle counts this one out.
        self.high_watermark_advanced.notify_waiters();
    }
}

/// A follower's batches must continue its log exactly: the first at `log_end`, each next one
/// right after the previous one's last offset.
fn check_follows_log_end(headers: &[RecordBatchHeader], log_end: i64) -> Result<(), AppendError> {
    let mut expected = log_end;
    for header in headers {
        if header.base_offset != expected {
            return Err(AppendError::NotAtLogEnd {
                expected,
                found: header.base_offset,
            });
        }
        expected = header.last_offset() + 1;
    }
    Ok(())
}
