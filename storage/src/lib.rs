//! Sluice's storage engine: one append-only, segmented log per partition holding Kafka v2
//! record batches byte-for-byte, with a per-shard group-commit writer on a raw io_uring.
//!
//! Owns: segment files, offset/time indexes, recovery, retention, compaction (the cleaner),
//! the tail cache and the shard's storage ring. Must never: touch the network, decompress a
//! batch outside `records` (the cleaner and the keyless check of a compacted topic's appends
//! are the only readers of records), or block the shard's thread on disk I/O after startup
//! (recovery at open is the one exception).
//!
//! This file is the API contract the broker codes against; the engine lives in the modules:
//! `batch` (header validation), `segment` and `index` (files), `recovery`, `log` (reservation,
//! reads), `offsets` (log start <= high watermark <= log end, asserted), `writer` (group
//! commit), `ring` (io_uring), `io`/`fault` (the I/O seam every write, sync and truncation
//! after open goes through, and its fault-injecting, power-losing test double),
//! `tail_cache`, `retention` and `shard`. Reads of file data after open (header walks, index
//! loads, copied chunks) are ring operations through the same seam, so the APIs that may touch
//! a file are async.
//!
//! Durability policy: under the default topic policy (`flush.messages`/`flush.ms` unset) an
//! append waited on with `Ack::Durable` completes only after the fdatasync covering it, and
//! the high watermark (what readers see) moves at the same moment; `Ack::Written` completes
//! when the write reached the file; `Ack::None` returns once validated and queued. With
//! `flush.messages`/`flush.ms` set, `Ack::Durable` completes and the high watermark moves
//! after the write, and fdatasync happens per the policy.
//!
//! A failed sync of anything a partition depends on (a group commit's fdatasync, a sealed
//! segment's finalization, clean shutdown's syncs, index and checkpoint writes) poisons that
//! partition ([`Poisoned`], KAFKA_STORAGE_ERROR): appends fail, the high watermark stays, and
//! it is not reopened until the process restarts.
#![deny(missing_docs)]

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

pub mod batch;
mod blocking;
mod buffer;
mod cleaner;
mod cleaner_txn;
mod cleaner_work;
mod cleaner_workers;
mod epoch;
pub mod fault;
mod high_watermark;
mod index;
mod io;
mod leader;
mod log;
mod log_start;
mod offsets;
pub mod producer_snapshot;
pub mod records;
mod recovery;
mod response_budget;
mod retention;
pub mod ring;
mod segment;
mod shard;
mod stamped;
pub mod stream_copy;
mod swap;
mod tail_arena;
mod tail_cache;
pub mod txn_index;
mod writer;

pub use blocking::{
    BlockingEvent, BlockingObserver, BlockingPoolStats, BLOCKING_JOBS_RUNNING_MAX_DEFAULT,
};
pub use cleaner::{CleanerConfig, CleanerStats, CleanerTxns, CleanerWorkers};
pub use cleaner_workers::{CLEANER_THREADS_DEFAULT, CLEANER_THREAD_NICE_DEFAULT};
pub use epoch::{EpochEntry, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};
pub use ring::Ring;

/// Kafka error codes the storage errors map to (subset of the protocol's error table).
pub mod codes {
    /// CORRUPT_MESSAGE
    pub const CORRUPT_MESSAGE: i16 = 2;
    /// MESSAGE_TOO_LARGE
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    /// OFFSET_OUT_OF_RANGE
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    /// RECORD_LIST_TOO_LARGE
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    /// INVALID_RECORD
    pub const INVALID_RECORD: i16 = 87;
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    /// KAFKA_STORAGE_ERROR
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    /// INVALID_TIMESTAMP
    pub const INVALID_TIMESTAMP: i16 = 32;
}

/// See [`Storage::tail_cache_stats`]. Shards' stats add up field by field (`+=`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TailCacheStats {
    /// Batch bytes cached (what `log.tail.cache.bytes` bounds).
    pub held_bytes: usize,
    /// Bytes of arena chunks in existence.
    pub chunk_bytes: usize,
    /// Batches not cached since start for want of memory under the arena's cap.
    pub uncached_batches: u64,
    /// Arena chunks allocated since start (each a first touch of fresh memory; reused chunks
    /// are not counted): it stops growing once the cache has filled its budget.
    pub chunks_made: u64,
    /// Batches cached since start in allocations of their own (too large for a chunk, or no
    /// chunk free under the cap).
    pub own_batches: u64,
    /// Batch bytes the cache may hold now: the budget, or less while its memory is limited
    /// ([`ShardStorage::limit_tail_cache_memory`]).
    pub limit_bytes: usize,
}

impl std::ops::AddAssign for TailCacheStats {
    fn add_assign(&mut self, other: TailCacheStats) {
        self.held_bytes += other.held_bytes;
        self.chunk_bytes += other.chunk_bytes;
        self.uncached_batches += other.uncached_batches;
        self.chunks_made += other.chunks_made;
        self.own_batches += other.own_batches;
        self.limit_bytes = self.limit_bytes.saturating_add(other.limit_bytes);
    }
}

/// Per-shard storage settings (broker-wide names in comments).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Root data directory; partitions live in `<data_dir>/<topic>-<partition>/`.
    pub data_dir: PathBuf,
    /// `log.direct.io`: O_DIRECT appends from registered buffers (falls back with a log line).
    pub direct_io: bool,
    /// Upper bound on the bytes one group commit writes (`log.flush.batch.bytes`).
    pub group_commit_bytes_max: usize,
    /// `log.tail.cache.bytes`: bytes of recent batches a shard keeps in memory for readers.
    pub tail_cache_bytes: usize,
    /// Submission queue entries of the shard's storage ring.
    pub ring_entries: u32,
}

/// How long an append waits (the producer's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// acks=0: do not wait (the append is still validated and enqueued).
    None,
    /// acks=1: complete once the write reached the file (page cache or device).
    Written,
    /// acks=-1/all: complete once durable under the topic's flush policy (fdatasync by default).
    Durable,
}

/// Which timestamp a topic stores (`message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Producer's timestamps are kept.
    CreateTime,
    /// The broker overwrites max timestamp in the batch header with its clock.
    LogAppendTime,
}

/// Per-topic log settings, Kafka names in comments.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `segment.bytes` (default 1 GiB)
    pub segment_bytes: u64,
    /// `segment.ms` (default 7 days)
    pub segment_ms: i64,
    /// `retention.ms` (default 7 days; -1 = forever)
    pub retention_ms: i64,
    /// `retention.bytes` (default -1 = unlimited)
    pub retention_bytes: i64,
    /// `max.message.bytes` (default 1048588): largest batch accepted
    pub max_message_bytes: u32,
    /// `index.interval.bytes` (default 4096)
    pub index_interval_bytes: u32,
    /// `flush.messages`: None = every group commit is fdatasync'ed before acks=all completes
    /// (Sluice's default); Some(n) = fsync after n messages, acks=all completes on write.
    pub flush_messages: Option<u64>,
    /// `flush.ms`: like flush_messages, by time.
    pub flush_ms: Option<u64>,
    /// `message.timestamp.type`
    pub timestamp_type: TimestampType,
    /// `cleanup.policy`: whether retention deletes old segments and whether the cleaner
    /// compacts the log (both for `compact,delete`).
    pub cleanup_policy: CleanupPolicy,
    /// `min.cleanable.dirty.ratio` (default 0.5): the cleaner takes a log once its dirty
    /// bytes are at least this share of its cleanable bytes.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms` (default 0): a segment whose newest record is younger stays
    /// dirty (uncompacted).
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms` (default i64::MAX): a log whose oldest dirty record is older
    /// is cleaned whatever its dirty ratio, and its active segment rolls at that age.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms` (default 1 day): how long a tombstone stays after the pass that
    /// first cleaned its segment.
    pub delete_retention_ms: i64,
}

/// `cleanup.policy`: `delete`, `compact` or `compact,delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Retention (`retention.ms`, `retention.bytes`) deletes whole old segments.
    pub delete: bool,
    /// The cleaner keeps only the newest record of each key.
    pub compact: bool,
}

impl CleanupPolicy {
    /// Kafka's default: `delete`.
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };

    /// Parses Kafka's list form (`compact`, `delete`, `compact,delete`, any order, spaces
    /// allowed); None for anything else, an empty list included.
    pub fn parse(value: &str) -> Option<CleanupPolicy> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for word in value.split(',').map(str::trim) {
            match word {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => return None,
            }
        }
        Some(policy)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
            flush_messages: None,
            flush_ms: None,
            timestamp_type: TimestampType::CreateTime,
            cleanup_policy: CleanupPolicy::DELETE,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}

/// Why an append was refused or failed. Each maps to one Kafka error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// CRC mismatch, truncated batch, inconsistent length: CORRUPT_MESSAGE.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// Magic other than 2: UNSUPPORTED_FOR_MESSAGE_FORMAT.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// Record count / offset delta inconsistent, empty batch: INVALID_RECORD.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// One batch over max.message.bytes: MESSAGE_TOO_LARGE.
    #[error("batch of {size_bytes} bytes exceeds max.message.bytes {limit_bytes}")]
    TooLarge {
        /// the offending batch's size
        size_bytes: usize,
        /// the limit
        limit_bytes: usize,
    },
    /// Disk error (EIO, ENOSPC) on this append's write, or the storage is shut down or the
    /// partition deleted: KAFKA_STORAGE_ERROR.
    #[error("storage error: {0}")]
    Storage(String),
    /// The partition is poisoned by a failed sync: KAFKA_STORAGE_ERROR until the process
    /// restarts.
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    /// A follower's copy of its leader's batches does not continue its log (a batch starts
    /// elsewhere than where the log, or the previous batch, ends): nothing was appended.
    #[error("replicated batch starts at offset {found}, not at the log end {expected}")]
    NotAtLogEnd {
        /// Where the batch had to start.
        expected: i64,
        /// Where it starts.
        found: i64,
    },
}

impl AppendError {
    /// The Kafka error code a broker sends for this error.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            AppendError::Corrupt(_) => codes::CORRUPT_MESSAGE,
            AppendError::UnsupportedMagic(_) => codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            AppendError::InvalidRecord(_) => codes::INVALID_RECORD,
            AppendError::NotAtLogEnd { .. } => codes::OFFSET_OUT_OF_RANGE,
            AppendError::TooLarge { .. } => codes::MESSAGE_TOO_LARGE,
            AppendError::Storage(_) | AppendError::Poisoned(_) => codes::KAFKA_STORAGE_ERROR,
        }
    }
}

/// Told of each poisoned partition once: the cause, the topic and the partition index.
pub type PoisonObserver = Box<dyn Fn(&Poisoned, &str, i32)>;

/// Told, from a task of its own after the append that did it, that a partition's log rolled
/// to a new segment at the given base offset (where a broker snapshots its producer state).
pub type RollObserver = Rc<dyn Fn(Partition, i64)>;

/// Why a partition refuses appends: a sync (fdatasync of a segment, an index, the recovery
/// checkpoint, the directory, or a truncation before one) failed. Linux may have dropped the
/// dirty pages that sync covered and a retried fsync can report success over them, so the
/// partition stays poisoned, appends fail and its high watermark stays put, until the
/// process restarts and recovery reads back what really is on disk.
#[derive(Debug, Clone)]
pub struct Poisoned {
    /// `<topic>-<partition>`
    pub partition: String,
    /// What failed (operation and path).
    pub operation: String,
    /// The OS error, shared by every append and open that reports this poison.
    pub source: Arc<std::io::Error>,
}

impl std::fmt::Display for Poisoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} is poisoned: {} failed: {}",
            self.partition, self.operation, self.source
        )
    }
}

impl std::error::Error for Poisoned {
    /// The `io::Error` itself (not the `Arc` holding it), so callers can downcast it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Errors opening, reading or managing logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O error with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// what was being done (path, operation)
        context: String,
        /// the OS error
        source: std::io::Error,
    },
    /// The kernel refused io_uring (EPERM from seccomp or kernel.io_uring_disabled).
    #[error("io_uring is not permitted: {0}")]
    UringRefused(std::io::Error),
    /// The partition is poisoned and cannot be reopened in this process.
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    /// Fetch offset below log start or above log end: OFFSET_OUT_OF_RANGE.
    #[error("offset {offset} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// requested
        offset: i64,
        /// first offset present
        log_start_offset: i64,
        /// next offset to be assigned
        log_end_offset: i64,
    },
}

impl StorageError {
    /// The Kafka error code a broker sends for this error.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            StorageError::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
            StorageError::Io { .. } | StorageError::UringRefused(_) | StorageError::Poisoned(_) => {
                codes::KAFKA_STORAGE_ERROR
            }
        }
    }
}

/// Result of a successful append of one Produce partition's record set.
#[derive(Debug, Clone, Copy)]
pub struct AppendInfo {
    /// Offset assigned to the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// Broker time when LogAppendTime is used, else -1.
    pub log_append_time_ms: i64,
    /// The log start offset after the append.
    pub log_start_offset: i64,
}

/// A reference-counted open segment file. While any handle lives, the file is neither deleted
/// nor truncated below what was handed out (retention defers the unlink).
#[derive(Debug, Clone)]
pub struct SegmentHandle(Arc<std::fs::File>);

impl SegmentHandle {
    /// A file descriptor opened for buffered reads (usable with splice, or a ring read).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

impl ReadChunk {
    /// Bytes in this chunk.
    pub fn len(&self) -> usize {
        match self {
            ReadChunk::Memory(bytes) => bytes.len(),
            ReadChunk::File { length, .. } => *length as usize,
        }
    }

    /// Whether the chunk holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one group commit did, for the metrics layer. Reused between flushes: keep observers
/// cheap.
#[derive(Debug, Clone, Default)]
pub struct FlushStats {
    /// From submission until every write of the flush completed.
    pub write_ns: u64,
    /// From the flush's last write completing until its last fdatasync completed (0: no
    /// sync). The next flushes' writes run meanwhile.
    pub fsync_ns: u64,
    /// From the previous flush's writes completing to this flush's submission, when appends
    /// were already queued at that completion (None otherwise): time the disk had no write
    /// of this shard's although there was data to write.
    pub gap_ns: Option<u64>,
    /// New log bytes written (excluding rewritten partial blocks and padding).
    pub bytes: u64,
    /// Records in the appends written.
    pub records: u64,
    /// Appends (or append pieces) written.
    pub appends: u64,
    /// Files written, i.e. writes (and fdatasyncs) submitted.
    pub files: u64,
    /// Enqueue-to-complete latency of every acks=all append completed by this flush.
    pub append_to_durable_ns: Vec<u64>,
}

/// What recovery cut from a partition after an unclean shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryCut {
    /// Segment the bytes were cut from.
    pub segment_base_offset: i64,
    /// First offset that was not kept.
    pub offset: i64,
    /// Bytes removed.
    pub bytes_cut: u64,
}

/// A piece of a read: bytes in memory (tail cache) or a byte range of a segment file.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    /// Bytes held in the tail cache: one whole batch (stamped header and rest), in the
    /// cache's own copy. Each carries a share of the shard's `fetch.response.cache.bytes.max`,
    /// given back when its last clone is dropped.
    Memory(Bytes),
    /// Whole batches in a segment file: `length` bytes at `position`.
    File {
        /// the file, kept alive
        segment: SegmentHandle,
        /// byte position in the file
        position: u64,
        /// number of bytes
        length: u32,
    },
}

/// How far a read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBound {
    /// A consumer's read: below the high watermark (what every in-sync replica has).
    HighWatermark,
    /// A follower replica's read: below the durable end (what this replica holds under its
    /// flush policy), so followers can catch up past the high watermark.
    DurableEnd,
    /// A read_committed consumer's read: below the high watermark and this offset (the
    /// last stable offset, a batch boundary), so no batch of a transaction still open is
    /// served.
    Stable(i64),
}

/// What a fetch gets back: whole batches in order, below the high watermark.
#[derive(Debug, Clone, Default)]
pub struct ReadSlice {
    /// Chunks in log order.
    pub chunks: Vec<ReadChunk>,
    /// Sum of chunk lengths.
    pub total_bytes: u32,
    /// High watermark at read time.
    pub high_watermark: i64,
    /// Log start offset at read time.
    pub log_start_offset: i64,
    /// The tail cache held the range but the shard's `fetch.response.cache.bytes.max` was
    /// spent, so it was read from the segment file (or, if the file read found nothing to
    /// serve, not at all: the client asks again).
    pub cache_budget_spent: bool,
}

/// The shard's storage: its ring, its group-commit writer and the partitions it owns.
/// Single-threaded (lives on its shard; `!Send`).
#[derive(Clone)]
pub struct ShardStorage(Rc<shard::ShardShared>);

impl ShardStorage {
    /// Creates the ring and spawns the writer task on the current (tokio-uring/tokio
    /// current-thread) runtime. Fails with `UringRefused` when io_uring is not permitted.
    pub fn open(config: StorageConfig) -> Result<ShardStorage, StorageError> {
        shard::open(config, None).map(ShardStorage)
    }

    /// Like [`ShardStorage::open`], with the writer's I/O going through a fault-injection
    /// plan (tests: EIO, ENOSPC, torn writes, failed fdatasync).
    pub fn open_with_faults(
        config: StorageConfig,
        plan: fault::FaultPlan,
    ) -> Result<ShardStorage, StorageError> {
        shard::open(config, Some(plan)).map(ShardStorage)
    }

    /// Opens (creating if missing, recovering if unclean) a partition's log. Opening a
    /// partition that is already open returns it with `config` applied; a poisoned one is
    /// refused with [`StorageError::Poisoned`] until the process restarts (the kernel may
    /// still hold, or have dropped, pages its failed sync covered: only a fresh recovery
    /// after a restart sees what is really on disk).
    pub fn open_partition(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Partition, StorageError> {
        shard::open_partition(&self.0, topic, partition, config).map(Partition)
    }

    /// Every partition open on this shard (topics and the offsets log alike).
    pub fn partitions(&self) -> Vec<Partition> {
        self.0
            .partitions
            .borrow()
            .values()
            .cloned()
            .map(Partition)
            .collect()
    }

    /// Removes a partition's directory once no reader holds its segments.
    pub fn delete_partition(&self, partition: &Partition) -> Result<(), StorageError> {
        shard::delete_partition(&self.0, &partition.0)
    }

    /// Flushes everything, fsyncs, and writes clean-shutdown markers.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        shard::shutdown(&self.0).await
    }

    /// The shard's storage ring, for the zero-copy fetch path (SPLICE, SEND_ZC).
    pub fn ring(&self) -> Ring {
        self.0.ring.clone()
    }

    /// Whether appends bypass the page cache (O_DIRECT asked for and accepted).
    pub fn direct_io(&self) -> bool {
        self.0.direct_io
    }

    /// Calls `observer` after every group commit (on the shard thread; keep it cheap).
    pub fn set_flush_observer(&self, observer: Box<dyn Fn(&FlushStats)>) {
        *self.0.flush_observer.borrow_mut() = Some(observer);
    }

    /// Calls `observer` with the cause, topic and partition index when a partition of this
    /// shard is poisoned (once per partition; on the shard thread, inside the storage engine:
    /// it must not call back into it).
    pub fn set_poison_observer(&self, observer: PoisonObserver) {
        *self.0.poison_observer.borrow_mut() = Some(observer);
    }

    /// Calls `observer` (on the shard thread, in a task spawned after the append that rolled,
    /// so it may call back into the storage) whenever a partition of this shard rolls.
    pub fn set_roll_observer(&self, observer: RollObserver) {
        *self.0.roll_observer.borrow_mut() = Some(observer);
    }

    /// Calls `observer` (on the shard thread) for every job the storage engine hands to the
    /// blocking pool and for every such job done, with its latency.
    pub fn set_blocking_observer(&self, observer: BlockingObserver) {
        self.0.blocking.set_observer(observer);
    }

    /// Jobs this shard's storage handed to the blocking pool, and how many are done.
    pub fn blocking_pool_stats(&self) -> BlockingPoolStats {
        self.0.blocking.stats()
    }

    /// Sets this shard's cleaner settings (`log.cleaner.*`).
    pub fn set_cleaner_config(&self, config: CleanerConfig) {
        *self.0.cleaner_config.borrow_mut() = config;
    }

    /// What this shard's cleaner did so far.
    pub fn cleaner_stats(&self) -> CleanerStats {
        *self.0.cleaner_stats.borrow()
    }

    /// Bytes queued for the writer and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.0.queued_bytes.get()
    }

    /// Sets `log.append.queue.bytes.max`, the writer queue's byte budget (see
    /// [`Partition::append`]); at least 1.
    pub fn set_append_queue_bytes_max(&self, bytes: usize) {
        self.0.queue_bytes_max.set(bytes.max(1));
    }

    /// Sets `log.flush.syncing.commits.max`: how many group commits may have their writes in
    /// and their fdatasyncs outstanding while the writer starts the next one; at least 1
    /// (1: each commit's fdatasyncs finish before the commit after the next is written).
    pub fn set_syncing_commits_max(&self, commits: usize) {
        self.0.syncing_commits_max.set(commits.max(1));
    }

    /// Sets `log.flush.writing.commits.max`: how many group commits may have their writes in
    /// flight at once (to the same file too); at least 1 (1: each commit's writes complete
    /// before the next commit is planned).
    pub fn set_writing_commits_max(&self, commits: usize) {
        self.0.writing_commits_max.set(commits.max(1));
    }

    /// Sets `log.flush.write.dsync`: whether O_DIRECT group commits that only acks=all (or
    /// acks=0) appends wait for are made durable by the write itself (RWF_DSYNC: one
    /// operation) instead of a write with an fdatasync linked behind it. Either way an
    /// acks=all append completes only once its bytes are durable: RWF_DSYNC is used only with
    /// O_DIRECT on a filesystem known to honour it (ext4, xfs), else refused with a log line
    /// and the fdatasync kept. Returns whether it is in use.
    pub fn set_dsync_writes(&self, enabled: bool) -> bool {
        let dir = &self.0.config.data_dir;
        let honoured = enabled
            && self.0.direct_io
            && match shard::dsync_filesystem(dir) {
                Ok(_) => true,
                Err(why) => {
                    tracing::warn!(dir = %dir.display(), %why, "RWF_DSYNC is not known to be durable on this filesystem; log.flush.write.dsync falls back to write + fdatasync");
                    false
                }
            };
        self.0.dsync_writes.set(honoured);
        honoured
    }

    /// Partitions opened from now on without a `replication-offset-checkpoint` open with
    /// their high watermark at the log start (true: a broker of a cluster, where such a
    /// partition may be a replica whose tail was never committed, as Kafka opens one with no
    /// checkpointed entry) or at the log end (false, the default: a single broker). Either
    /// way the replication layer lifts it (`Partition::limit_high_watermark`).
    pub fn set_high_watermark_unknown_at_log_start(&self, at_log_start: bool) {
        self.0.high_watermark_unknown_at_log_start.set(at_log_start);
    }

    /// Sets `log.blocking.jobs.max`: this shard's jobs (ftruncate, small files with their
    /// syncs) running on the blocking pool at once; at least 1.
    pub fn set_blocking_jobs_max(&self, jobs: usize) {
        self.0.blocking.set_jobs_running_max(jobs);
    }

    /// Sets `fetch.response.cache.bytes.max`: tail-cache bytes this shard's partitions may
    /// have handed to responses not yet written. A read that would go past it is served from
    /// the segment file instead (see [`Partition::read`]).
    pub fn set_response_cache_bytes_max(&self, bytes: usize) {
        self.0.response_budget.set_max_bytes(bytes);
    }

    /// Tail-cache bytes handed to responses and not yet given back (written or dropped).
    pub fn response_cache_bytes(&self) -> usize {
        self.0.response_budget.held_bytes()
    }

    /// The tail cache's memory: batch bytes it holds, bytes of arena chunks in existence
    /// (kept for reuse once taken, up to about 1.25 times `log.tail.cache.bytes`), and batches
    /// left out since start because no memory under that cap was free (chunks held by
    /// responses not yet written).
    pub fn tail_cache_stats(&self) -> TailCacheStats {
        let cache = self.0.tail_cache.borrow();
        TailCacheStats {
            held_bytes: cache.used_bytes(),
            chunk_bytes: cache.chunk_memory_bytes(),
            uncached_batches: cache.uncached_batches(),
            chunks_made: cache.chunks_made(),
            own_batches: cache.own_batches(),
            limit_bytes: cache.effective_budget_bytes(),
        }
    }

    /// `log.tail.cache.huge.pages`: whether the tail cache's chunks taken from now on ask for
    /// transparent huge pages (true) or refuse them (false, the default: their first touch
    /// costs several times more on a VM whose host takes free memory back).
    pub fn set_tail_cache_huge_pages(&self, huge_pages: bool) {
        self.0.tail_cache.borrow_mut().set_huge_pages(huge_pages);
    }

    /// Limits the tail cache's memory (arena chunks and batches in allocations of their own)
    /// to `memory_bytes`, or lifts the limit when that is at least what `log.tail.cache.bytes`
    /// takes: evicts the oldest batches down to what fits and gives the freed chunks back to
    /// the allocator now (those held by responses not yet written, when they come free).
    /// Readers of evicted batches go to the segment files. Memory is taken again only as
    /// records arrive.
    pub fn limit_tail_cache_memory(&self, memory_bytes: usize) {
        self.0.tail_cache.borrow_mut().limit_memory(memory_bytes);
    }

    /// The limit [`ShardStorage::limit_tail_cache_memory`] set, while it limits anything.
    pub fn tail_cache_memory_limit_bytes(&self) -> Option<usize> {
        self.0.tail_cache.borrow().memory_limit_bytes()
    }

    /// The memory `log.tail.cache.bytes` lets the tail cache take (its batches, a quarter
    /// more for the chunks' unused ends, one chunk): a limit at or above it limits nothing.
    pub fn tail_cache_memory_cap_bytes(&self) -> usize {
        self.0.tail_cache.borrow().memory_cap_bytes()
    }

    /// Reads served from the segment files because the response budget was spent.
    pub fn response_cache_spent_reads(&self) -> u64 {
        self.0.response_budget.spent_reads()
    }

    /// Reads `buffer[at..at + len]` from `segment` at `position` through this shard's ring
    /// (the copying fetch path); the buffer comes back whatever the outcome. A read past the
    /// end of the file is UnexpectedEof.
    pub async fn read_exact_at(
        &self,
        segment: &SegmentHandle,
        buffer: Vec<u8>,
        at: usize,
        len: usize,
        position: u64,
    ) -> (std::io::Result<()>, Vec<u8>) {
        let reads = self.0.io.clone();
        io::read_exact(reads.as_ref(), segment.raw_fd(), buffer, at, len, position).await
    }
}

/// One partition's log, owned by one shard. Cheap to clone (Rc).
#[derive(Clone)]
pub struct Partition(Rc<log::PartitionShared>);

impl Partition {
    /// Validates `records` (one or more concatenated v2 batches, as in a Produce request),
    /// assigns offsets, queues them for the shard's next group commit and waits per `ack`.
    /// All batches are validated before any is enqueued: either all are appended or none.
    /// Offsets are assigned before the first await, so dropping the future does not undo
    /// the append.
    ///
    /// Back-pressure: when the shard's writer queue holds more than
    /// `log.append.queue.bytes.max` bytes ahead of this append (it included), the append
    /// (already queued, offsets assigned) waits for the writer to take them before it
    /// completes, whatever `ack` says, so the caller holds its request and stops reading more.
    /// The queue thus exceeds its budget by at most the appends whose callers are waiting.
    pub async fn append(
        &self,
        records: Bytes,
        ack: Ack,
        leader_epoch: i32,
    ) -> Result<AppendInfo, AppendError> {
        let stamping = log::Stamping::Assign { leader_epoch };
        self.append_stamped(records, ack, stamping).await
    }

    /// A follower's append of its leader's batches, offsets and headers unchanged: the first
    /// batch must start at this log's end (else [`AppendError::NotAtLogEnd`], nothing
    /// appended). Completes per `ack` like [`Partition::append`]; a follower reports only its
    /// durable end to its leader, so it appends with [`Ack::Durable`].
    pub async fn append_replicated(
        &self,
        records: Bytes,
        ack: Ack,
    ) -> Result<AppendInfo, AppendError> {
        self.append_stamped(records, ack, log::Stamping::Keep).await
    }

    async fn append_stamped(
        &self,
        records: Bytes,
        ack: Ack,
        stamping: log::Stamping,
    ) -> Result<AppendInfo, AppendError> {
        let (info, receiver, queue_position) = self.0.enqueue(records, ack, stamping)?;
        match receiver {
            None => {
                if let Some(shard) = self.0.shard.upgrade() {
                    shard.wait_for_queue_room(queue_position).await;
                }
                Ok(info)
            }
            // No separate wait for room: the writer resolves the receiver only after it took
            // this append (and so every byte queued before it) or failed it, and both count
            // those bytes out of the queue first, so the budget already holds by then.
            Some(receiver) => match receiver.await {
                Ok(result) => result,
                Err(_) => Err(AppendError::Storage(
                    "the storage writer stopped before completing the append".into(),
                )),
            },
        }
    }

    /// Whole batches starting at the batch containing `offset`, at most `max_bytes` unless the
    /// first batch alone is larger and `min_one_batch`, never past the high watermark. Resolves
    /// without awaiting when the tail cache holds `offset` and the shard's response budget
    /// (`fetch.response.cache.bytes.max`) can take the range: its `ReadChunk::Memory` chunks
    /// then hold their share of the budget until the last clone of each is dropped, so keep
    /// them only as long as the response that sends them. Otherwise the range comes as a
    /// file chunk (`cache_budget_spent` says why) whose batch headers are read through the
    /// shard's ring (a failed read is `StorageError::Io`: KAFKA_STORAGE_ERROR).
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: u32,
        min_one_batch: bool,
    ) -> Result<ReadSlice, StorageError> {
        self.0
            .read(offset, max_bytes, min_one_batch, ReadBound::HighWatermark)
            .await
    }

    /// Runs small file work about this partition (a flag file in its directory, with its
    /// sync) on the shard's blocking pool, so the shard thread never waits on it.
    pub async fn run_blocking(
        &self,
        work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Some(shard) = self.0.shard.upgrade() else {
            return Err(std::io::Error::other("storage is shut down"));
        };
        let job = shard.blocking.run(work);
        drop(shard);
        job.await.map(|_| ())
    }

    /// Like [`Partition::read`], bounded by `bound` instead of always the high watermark
    /// (a leader serves its followers up to its durable end).
    pub async fn read_bounded(
        &self,
        offset: i64,
        max_bytes: u32,
        min_one_batch: bool,
        bound: ReadBound,
    ) -> Result<ReadSlice, StorageError> {
        self.0.read(offset, max_bytes, min_one_batch, bound).await
    }

    /// The bytes of `chunk` (one of a [`ReadSlice`]'s), a file range read through the ring:
    /// for callers that need the records in memory (group replay, timestamp lookups, tests).
    pub async fn chunk_bytes(&self, chunk: &ReadChunk) -> Result<Bytes, StorageError> {
        self.0.chunk_bytes(chunk).await
    }

    /// Headers of the visible batches in the last `window_bytes` of the log (whole batches,
    /// below the high watermark), oldest first, read through the ring: for state a broker
    /// keeps from batch headers, rebuilt after a restart (idempotent producers).
    pub async fn recent_batch_headers(
        &self,
        window_bytes: u64,
    ) -> Result<Vec<batch::RecordBatchHeader>, StorageError> {
        self.0.recent_batch_headers(window_bytes).await
    }

    /// Headers of the visible batches from the one holding `offset` to the high watermark,
    /// oldest first, read through the ring: the batches a broker replays after a producer
    /// snapshot taken at `offset`.
    pub async fn batch_headers_from(
        &self,
        offset: i64,
    ) -> Result<Vec<batch::RecordBatchHeader>, StorageError> {
        self.0.batch_headers_from(offset).await
    }

    /// Writes the producer snapshot at `offset` (`<offset>.snapshot`, atomically and durably,
    /// through the I/O seam), then removes the snapshots below the first segment's base
    /// offset. Serialized with truncation (the maintenance lock): a snapshot above the log
    /// end when its turn comes is not written (Ok(false)), so none survives a cut below it.
    /// A failure poisons nothing: the snapshot only shortens a later load.
    pub async fn write_producer_snapshot(
        &self,
        offset: i64,
        entries: &[producer_snapshot::ProducerSnapshotEntry],
    ) -> Result<bool, StorageError> {
        producer_snapshot::write(&self.0, offset, entries).await
    }

    /// Rewrites the `.txnindex` of the segment holding `marker_offset` (an ABORT marker just
    /// made durable) with the entries of `aborted` whose marker lies in that segment,
    /// atomically and durably through the I/O seam. See the `txn_index` module for the
    /// durability contract.
    pub async fn write_txn_index(
        &self,
        marker_offset: i64,
        aborted: &[txn_index::AbortedTxnEntry],
    ) -> Result<(), StorageError> {
        txn_index::write_for_marker(&self.0, marker_offset, aborted).await
    }

    /// Rewrites the `.txnindex` of every segment holding a marker of `aborted` (after a full
    /// replay rebuilt them), one atomic write per segment through the I/O seam.
    pub async fn rewrite_txn_indexes(
        &self,
        aborted: &[txn_index::AbortedTxnEntry],
    ) -> Result<(), StorageError> {
        txn_index::rewrite_all(&self.0, aborted).await
    }

    /// Every entry of the live segments' `.txnindex` files whose marker is at or past the
    /// log start, in offset order; read on the blocking pool.
    pub async fn aborted_txns(&self) -> Result<Vec<txn_index::AbortedTxnEntry>, StorageError> {
        txn_index::read(&self.0).await
    }

    /// The newest producer snapshot at or below `max_offset` that passes its checks, with its
    /// offset (corrupt ones are logged and skipped); read on the blocking pool.
    pub async fn load_producer_snapshot(
        &self,
        max_offset: i64,
    ) -> Result<Option<(i64, Vec<producer_snapshot::ProducerSnapshotEntry>)>, StorageError> {
        producer_snapshot::load(&self.0, max_offset).await
    }

    /// Resolves once the high watermark is above `offset` (cancel-safe), or the partition
    /// was deleted.
    pub async fn wait_for_data(&self, offset: i64) {
        loop {
            let advanced = self.0.high_watermark_advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            {
                let log = self.0.log.borrow();
                if log.offsets.high_watermark() > offset || log.deleted {
                    return;
                }
            }
            advanced.await;
        }
    }

    /// Resolves once the durable end is above `offset` (cancel-safe), or the partition was
    /// deleted: a leader's wait for data to send a follower.
    pub async fn wait_for_durable(&self, offset: i64) {
        loop {
            let advanced = self.0.high_watermark_advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            {
                let log = self.0.log.borrow();
                if log.offsets.durable_end() > offset || log.deleted {
                    return;
                }
            }
            advanced.await;
        }
    }

    /// Offset one past the last record visible to consumers.
    pub fn high_watermark(&self) -> i64 {
        self.0.log.borrow().offsets.high_watermark()
    }

    /// Offset one past the last record this replica holds durably (under its flush policy).
    pub fn durable_end(&self) -> i64 {
        self.0.log.borrow().offsets.durable_end()
    }

    /// Caps the high watermark at `limit` (None: it follows the durable end, as for a single
    /// replica) and moves it up as far as the new cap and the durable end allow, waking
    /// readers if it moved; it never moves back. Set by the replication layer only.
    pub fn limit_high_watermark(&self, limit: Option<i64>) -> bool {
        let moved = self.0.log.borrow_mut().offsets.limit_high_watermark(limit);
        if moved {
            self.0.high_watermark_advanced.notify_waiters();
        }
        moved
    }

    /// First offset still present.
    pub fn log_start_offset(&self) -> i64 {
        self.0.log.borrow().offsets.start()
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.0.log.borrow().offsets.end()
    }

    /// Earliest batch whose max timestamp >= `timestamp_ms`, as (its base offset, its max
    /// timestamp). Batch granularity: records are never decompressed.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Option<(i64, i64)> {
        self.0.offset_for_timestamp(timestamp_ms).await
    }

    /// Largest timestamp in the log, as (offset of the last record of the batch holding it,
    /// the timestamp) — the same (offset, timestamp) order as `offset_for_timestamp`.
    pub async fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.0.max_timestamp().await
    }

    /// Replaces the topic config (takes effect for following appends and retention).
    pub fn set_config(&self, config: LogConfig) {
        self.0.log.borrow_mut().config = config;
    }

    /// DeleteRecords: moves the log start offset to `offset` (`-1`: the high watermark),
    /// durably (a `log-start-offset-checkpoint` synced before the start moves), and deletes
    /// the segments wholly below it; returns the log start after the call. Above the high
    /// watermark: `StorageError::OffsetOutOfRange`.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, StorageError> {
        log_start::delete_records(&self.0, offset).await
    }

    /// Writes the high watermark to the partition's `replication-offset-checkpoint` if it
    /// moved since the last write (atomically, synced), so a restart opens no higher than a
    /// committed high watermark; returns whether it wrote. For replicated partitions only
    /// (the replication layer's periodic call; a clean shutdown writes it again for any
    /// partition that has the file). A failed write poisons the partition.
    pub async fn checkpoint_high_watermark(&self) -> Result<bool, StorageError> {
        high_watermark::write_checkpoint(&self.0)
            .await
            .map_err(StorageError::Poisoned)
    }

    /// Deletes whole segments past retention.ms / retention.bytes; returns segments removed.
    /// A segment's largest timestamp not yet in memory is read through the ring first.
    pub async fn enforce_retention(&self, now_ms: i64) -> usize {
        retention::enforce(&self.0, now_ms).await
    }

    /// Runs one cleaner pass over this partition if it is compacted and due at `now_ms`
    /// (see the cleaner's settings on [`LogConfig`] and [`CleanerConfig`]); returns whether
    /// a pass ran. Reads and writes go through the shard's ring, directory operations through
    /// the blocking pool; never touches the active segment or bytes at or above the high
    /// watermark. A failed pass leaves the log as it was or with some segments cleaned,
    /// each whole (a crash, likewise, leaves each segment old or new: see recovery).
    ///
    /// `stable_offset` bounds the pass further: only segments wholly below it are cleaned.
    /// The broker passes the last stable offset, so an undecided transaction's records are
    /// never cleaned (pass `i64::MAX` when the partition has no transactions).
    ///
    /// `txns` gives the partition's aborted transactions (their records are dropped, their
    /// ABORT markers go after `delete.retention.ms` once no data of theirs is left) and is
    /// told of the aborted ranges whose markers a pass removes, before it removes them
    /// ([`CleanerTxns::none`] for a partition without transactions).
    pub async fn clean(
        &self,
        now_ms: i64,
        stable_offset: i64,
        txns: &CleanerTxns<'_>,
    ) -> Result<bool, StorageError> {
        cleaner::clean(&self.0, now_ms, stable_offset, txns).await
    }

    /// Whether this log is compacted (`cleanup.policy` includes `compact`).
    pub fn is_compacted(&self) -> bool {
        self.0.log.borrow().config.cleanup_policy.compact
    }

    /// The topic this partition belongs to and its index.
    pub fn topic_partition(&self) -> (String, i32) {
        (self.0.topic.clone(), self.0.partition)
    }

    /// The offset below which the cleaner has mapped every key (its checkpoint).
    pub fn cleaner_first_dirty_offset(&self) -> i64 {
        self.0.cleaner.borrow().first_dirty_offset
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        let log = self.0.log.borrow();
        log.segments
            .iter()
            .map(|segment| segment.state.borrow().written_bytes)
            .sum()
    }

    /// Sealed segments whose finalization (truncate, indexes, sync) has not finished yet:
    /// neither retention nor the cleaner takes them until it has.
    pub fn segments_finalizing(&self) -> usize {
        let log = self.0.log.borrow();
        log.segments
            .iter()
            .filter(|segment| {
                let state = segment.state.borrow();
                state.sealed && !state.finalized
            })
            .count()
    }

    /// Segments in the log (the last one is active).
    pub fn segment_count(&self) -> usize {
        self.0.log.borrow().segments.len()
    }

    /// What recovery cut when this partition was opened after an unclean shutdown.
    pub fn recovery_cuts(&self) -> Vec<RecoveryCut> {
        self.0.log.borrow().recovery_cuts.clone()
    }

    /// Why appends are refused after a failed sync, if they are.
    pub fn poisoned(&self) -> Option<Poisoned> {
        self.0.log.borrow().poisoned.clone()
    }

    /// The partition's directory.
    pub fn dir(&self) -> PathBuf {
        self.0.dir.clone()
    }

    /// The leader epochs of this log and the offsets they start at, oldest first (stamped
    /// into each batch a leader appends, checkpointed in `leader-epoch-checkpoint`).
    pub fn leader_epochs(&self) -> Vec<EpochEntry> {
        self.0.log.borrow().epochs.entries().to_vec()
    }

    /// The leader epoch `offset` was written in (the newest epoch starting at or below it),
    /// if the log recorded any.
    pub fn epoch_for_offset(&self, offset: i64) -> Option<i32> {
        self.0
            .log
            .borrow()
            .epochs
            .entries()
            .iter()
            .rev()
            .find(|entry| entry.start_offset <= offset)
            .map(|entry| entry.epoch)
    }

    /// The newest leader epoch of this log, if any batch or leadership recorded one.
    pub fn latest_leader_epoch(&self) -> Option<i32> {
        self.0.log.borrow().epochs.latest().map(|entry| entry.epoch)
    }

    /// OffsetForLeaderEpoch's answer for `epoch`: (the epoch found, its end offset), Kafka's
    /// rules (the latest epoch ends at the log end offset; an unknown newer epoch, or a log
    /// with no epochs, is (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let log = self.0.log.borrow();
        log.epochs.end_offset_for(epoch, log.offsets.end())
    }

    /// Records that `leader_epoch` starts at the current log end (this replica became the
    /// leader), durably, before the first append of the epoch. No-op for an epoch not newer
    /// than the latest.
    pub async fn assign_leader_epoch(&self, leader_epoch: i32) -> Result<(), StorageError> {
        leader::assign_epoch(&self.0, leader_epoch).await
    }

    /// Cuts the log's tail: the batch holding `offset` and every later one go, so the log
    /// ends at or below `offset` (at that batch's base offset); returns the new log end.
    /// Crash-safe (the old log or the truncated one survives a crash at any point; see the
    /// `leader` module). Appends are refused while it runs and those already queued finish
    /// first. Cuts the segments, indexes, tail cache, high watermark and leader epochs; state
    /// the broker derives from batches (idempotent producers) must be rebuilt by the caller.
    /// A failure after the cut started poisons the partition; the restart finishes the cut.
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, StorageError> {
        leader::truncate_to(&self.0, offset).await
    }
}
