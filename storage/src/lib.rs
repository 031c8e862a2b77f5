//! Sluice's storage engine: one append-only, segmented log per partition holding Kafka v2
//! record batches byte-for-byte, with a per-shard group-commit writer on a raw io_uring.
//!
//! Owns: segment files, offset/time indexes, recovery, retention, the tail cache and the
//! shard's storage ring. Must never: touch the network, decompress a batch, or block the
//! shard's thread on disk I/O after startup (recovery at open is the one exception).
//!
//! THIS FILE IS THE API CONTRACT the broker codes against. The bodies are placeholders to be
//! replaced by the real engine; the public names and signatures stay.
#![deny(missing_docs)]

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

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
    /// Disk error (EIO, ENOSPC) or a poisoned log: KAFKA_STORAGE_ERROR.
    #[error("storage error: {0}")]
    Storage(String),
}

impl AppendError {
    /// The Kafka error code a broker sends for this error.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            AppendError::Corrupt(_) => codes::CORRUPT_MESSAGE,
            AppendError::UnsupportedMagic(_) => codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            AppendError::InvalidRecord(_) => codes::INVALID_RECORD,
            AppendError::TooLarge { .. } => codes::MESSAGE_TOO_LARGE,
            AppendError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
        }
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
    /// A file descriptor opened for buffered reads (usable with pread or splice).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// A piece of a read: bytes in memory (tail cache) or a byte range of a segment file.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    /// Whole batches held in the tail cache.
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
}

/// The shard's storage: its ring, its group-commit writer and the partitions it owns.
/// Single-threaded (lives on its shard; `!Send`).
#[derive(Clone)]
pub struct ShardStorage(Rc<()>);

impl ShardStorage {
    /// Creates the ring and spawns the writer task on the current (tokio-uring/tokio
    /// current-thread) runtime. Fails with `UringRefused` when io_uring is not permitted.
    pub fn open(_config: StorageConfig) -> Result<ShardStorage, StorageError> {
        todo!("storage engine")
    }

    /// Opens (creating if missing, recovering if unclean) a partition's log.
    pub fn open_partition(
        &self,
        _topic: &str,
        _partition: i32,
        _config: LogConfig,
    ) -> Result<Partition, StorageError> {
        todo!("storage engine")
    }

    /// Removes a partition's directory once no reader holds its segments.
    pub fn delete_partition(&self, _partition: &Partition) -> Result<(), StorageError> {
        todo!("storage engine")
    }

    /// Flushes everything, fsyncs, and writes clean-shutdown markers.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        todo!("storage engine")
    }
}

/// One partition's log, owned by one shard. Cheap to clone (Rc).
#[derive(Clone)]
pub struct Partition(Rc<()>);

impl Partition {
    /// Validates `records` (one or more concatenated v2 batches, as in a Produce request),
    /// assigns offsets, queues them for the shard's next group commit and waits per `ack`.
    /// All batches are validated before any is enqueued: either all are appended or none.
    pub async fn append(
        &self,
        _records: Bytes,
        _ack: Ack,
        _leader_epoch: i32,
    ) -> Result<AppendInfo, AppendError> {
        todo!("storage engine")
    }

    /// Whole batches starting at the batch containing `offset`, at most `max_bytes` unless the
    /// first batch alone is larger and `min_one_batch`, never past the high watermark.
    pub fn read(
        &self,
        _offset: i64,
        _max_bytes: u32,
        _min_one_batch: bool,
    ) -> Result<ReadSlice, StorageError> {
        todo!("storage engine")
    }

    /// Resolves once the high watermark is above `offset` (cancel-safe).
    pub async fn wait_for_data(&self, _offset: i64) {
        todo!("storage engine")
    }

    /// Offset one past the last record visible to readers.
    pub fn high_watermark(&self) -> i64 {
        todo!("storage engine")
    }

    /// First offset still present.
    pub fn log_start_offset(&self) -> i64 {
        todo!("storage engine")
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        todo!("storage engine")
    }

    /// Earliest offset whose batch max timestamp >= `timestamp_ms`, with that timestamp.
    pub fn offset_for_timestamp(&self, _timestamp_ms: i64) -> Option<(i64, i64)> {
        todo!("storage engine")
    }

    /// Largest timestamp in the log and the offset of its record (ListOffsets -3).
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        todo!("storage engine")
    }

    /// Replaces the topic config (takes effect for following appends and retention).
    pub fn set_config(&self, _config: LogConfig) {
        todo!("storage engine")
    }

    /// Deletes whole segments past retention.ms / retention.bytes; returns segments removed.
    pub fn enforce_retention(&self, _now_ms: i64) -> usize {
        todo!("storage engine")
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        todo!("storage engine")
    }
}
