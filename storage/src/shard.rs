//! The shard's storage: its ring, its staging buffer, its group-commit queue and writer task,
//! its tail cache, and the partitions it owns. Also segment finalization (after a roll) and
//! clean shutdown.
//!
//! Everything here lives on one shard thread (`Rc`, `RefCell`). Must never block that thread
//! on disk I/O after startup: opening a partition (recovery) is the exception; finalization
//! and shutdown go through the I/O seam (`io::IoBackend`: fdatasync on the ring, ftruncate
//! and the small index/checkpoint/marker files on the blocking pool).
//!
//! Durability contract of what this module writes: a sealed segment is *finalized* (padding
//! cut, fdatasynced, indexes written and synced, then the recovery checkpoint moved past it
//! atomically); a clean shutdown fdatasyncs every segment with unsynced bytes, cuts and syncs
//! the active one, writes its indexes, and writes the clean-shutdown marker last. Any of
//! those failing poisons the partition (as a failed group-commit fdatasync does): its appends
//! fail, its high watermark stays put, no marker is written, and `open_partition` refuses it
//! until the process restarts and recovery reads back what the disk really holds.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::blocking::BlockingPool;
use crate::buffer::{AlignedBuffer, DIRECT_IO_ALIGN_BYTES};
use crate::cleaner::{CleanerConfig, CleanerState, CleanerStats, Throttle};
use crate::fault::{FaultBackend, FaultPlan};
use crate::high_watermark;
use crate::io::{IoBackend, RingBackend};
use crate::log::{now_ms, LogState, PartitionShared};
use crate::log_start;
use crate::offsets::{HighWatermark, LogEndOffset, LogOffsets, LogStartOffset};
use crate::recovery::{self, CleanMarker};
use crate::response_budget::ResponseBudget;
use crate::ring::Ring;
use crate::segment::{self, Segment};
use crate::tail_cache::{PartitionTail, TailCache};
use crate::writer::{self, QueuedAppend};
use crate::{FlushStats, LogConfig, PoisonObserver, Poisoned, StorageConfig, StorageError};

/// Extra staging bytes beyond `group_commit_bytes_max`, so the partial blocks and padding of
/// several files do not cut a flush short. A flush writes at most the staging size, i.e.
/// `group_commit_bytes_max` plus this slack.
const STAGING_SLACK_BYTES: usize = 256 << 10;
/// Smallest staging buffer: a flush must always fit at least a few blocks.
const STAGING_MIN_BYTES: usize = 64 << 10;
const _: () = assert!(STAGING_MIN_BYTES >= 2 * DIRECT_IO_ALIGN_BYTES);

/// Writer queue budget until the broker sets `log.append.queue.bytes.max`.
pub(crate) const DEFAULT_QUEUE_BYTES_MAX: usize = 64 << 20;

/// Group commits that may wait for their fdatasyncs at once until the broker sets
/// `log.flush.syncing.commits.max`.
pub(crate) const DEFAULT_SYNCING_COMMITS_MAX: usize = 4;

/// Group commits whose writes may be in flight at once until the broker sets
/// `log.flush.writing.commits.max`.
pub(crate) const DEFAULT_WRITING_COMMITS_MAX: usize = 4;

/// Called after every group commit.
pub(crate) type FlushObserver = Box<dyn Fn(&FlushStats)>;

pub(crate) struct ShardShared {
    pub(crate) config: StorageConfig,
    /// O_DIRECT in effect (asked for and accepted by the filesystem).
    pub(crate) direct_io: bool,
    pub(crate) ring: Ring,
    pub(crate) queue: RefCell<VecDeque<QueuedAppend>>,
    /// Bytes in `queue` not yet taken by the writer.
    pub(crate) queued_bytes: Cell<usize>,
    /// Bytes ever queued and ever taken (or removed): an append's place in the queue, for
    /// the budget's first-come wait ([`ShardShared::wait_for_queue_room`]).
    pub(crate) enqueued_bytes_total: Cell<u64>,
    pub(crate) dequeued_bytes_total: Cell<u64>,
    /// `log.append.queue.bytes.max`.
    pub(crate) queue_bytes_max: Cell<usize>,
    /// `log.flush.syncing.commits.max`: flushes written and waiting for their fdatasyncs
    /// before the writer waits for one to finish (see `writer::run`).
    pub(crate) syncing_commits_max: Cell<usize>,
    /// `log.flush.writing.commits.max`: flushes whose writes may be in flight at once.
    pub(crate) writing_commits_max: Cell<usize>,
    /// `log.flush.write.dsync`: acks=all commits of fully synced segments are written with
    /// RWF_DSYNC instead of a linked fdatasync (`writer.rs`, [`crate::io::WriteSync::Own`]).
    pub(crate) dsync_writes: Cell<bool>,
    /// A partition opened with no high-watermark checkpoint starts at its log start (a
    /// cluster's broker) instead of its log end (`high_watermark.rs`).
    pub(crate) high_watermark_unknown_at_log_start: Cell<bool>,
    /// Woken whenever bytes leave the queue.
    pub(crate) queue_drained: Notify,
    pub(crate) writer_wake: Notify,
    pub(crate) writer_idle: Notify,
    pub(crate) writer_busy: Cell<bool>,
    /// Shutdown started: appends are refused.
    pub(crate) closing: Cell<bool>,
    /// Shutdown finished: the writer exits.
    pub(crate) closed: Cell<bool>,
    pub(crate) partitions: RefCell<HashMap<(String, i32), Rc<PartitionShared>>>,
    pub(crate) tail_cache: RefCell<TailCache>,
    /// Tail-cache bytes handed to responses not yet written (`fetch.response.cache.bytes.max`).
    pub(crate) response_budget: Arc<ResponseBudget>,
    pub(crate) flush_observer: RefCell<Option<FlushObserver>>,
    pub(crate) poison_observer: RefCell<Option<PoisonObserver>>,
    pub(crate) roll_observer: RefCell<Option<crate::RollObserver>>,
    /// The I/O seam every write, sync and truncation after open goes through.
    pub(crate) io: Rc<dyn IoBackend>,
    /// The seam's jobs on the blocking pool, counted and timed.
    pub(crate) blocking: Rc<BlockingPool>,
    /// `log.cleaner.*` settings of this shard's cleaner.
    pub(crate) cleaner_config: RefCell<CleanerConfig>,
    pub(crate) cleaner_stats: RefCell<CleanerStats>,
    pub(crate) cleaner_throttle: RefCell<Throttle>,
}

impl ShardShared {
    /// Counts `bytes` into the writer queue; returns the queue position just past them.
    pub(crate) fn enqueued(&self, bytes: usize) -> u64 {
        self.queued_bytes.set(self.queued_bytes.get() + bytes);
        let total = self.enqueued_bytes_total.get() + bytes as u64;
        self.enqueued_bytes_total.set(total);
        total
    }

    /// Counts `bytes` out of the writer queue (taken into a flush, or removed) and wakes
    /// appends waiting for room.
    pub(crate) fn dequeued(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        debug_assert!(bytes <= self.queued_bytes.get(), "queue count underflow");
        self.queued_bytes
            .set(self.queued_bytes.get().saturating_sub(bytes));
        self.dequeued_bytes_total
            .set(self.dequeued_bytes_total.get() + bytes as u64);
        self.queue_drained.notify_waiters();
    }

    /// Waits until the bytes queued before `position` (an append's end, from
    /// [`ShardShared::enqueued`]) are within the budget, i.e. until the writer has taken all
    /// but `queue_bytes_max` of them. First come, first served: later appends cannot hold an
    /// earlier one back. Returns at once while shutting down (the writer drains everything).
    pub(crate) async fn wait_for_queue_room(&self, position: u64) {
        // Most appends fit at once: check before paying for a registered Notified.
        if self.has_queue_room(position) {
            return;
        }
        loop {
            let drained = self.queue_drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // Checked again after enable: a drain between the first check and the
            // registration would otherwise be missed.
            if self.has_queue_room(position) {
                return;
            }
            drained.await;
        }
    }

    fn has_queue_room(&self, position: u64) -> bool {
        let ahead_bytes = position.saturating_sub(self.dequeued_bytes_total.get());
        ahead_bytes <= self.queue_bytes_max.get() as u64 || self.closed.get()
    }
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

/// Whether the filesystem under `dir` accepts O_DIRECT: an aligned write through an O_DIRECT
/// descriptor, since some filesystems accept the open flag and refuse the write.
///
/// A full filesystem cannot take the probe (ENOSPC, EDQUOT): O_DIRECT then stays on as
/// configured, so that a broker restarted on a full disk still starts and serves what it has
/// (on a filesystem that truly refuses O_DIRECT, appends then fail with a storage error).
/// Filesystems whose O_DIRECT writes honour RWF_DSYNC: their direct writes go through iomap,
/// which completes a DSYNC write only after `generic_write_sync` (or wrote it with FUA). Not
/// every filesystem does: FUSE's direct writes never send the daemon an fsync, so on FUSE an
/// RWF_DSYNC write is as volatile as any other (test_power_loss.py lost every record that way).
const DSYNC_FILESYSTEMS: [(u32, &str); 2] = [(0xEF53, "ext4"), (0x5846_5342, "xfs")];

/// The name of `dir`'s filesystem when it is one that honours RWF_DSYNC on O_DIRECT writes,
/// else why not (for the log line).
pub(crate) fn dsync_filesystem(dir: &Path) -> Result<&'static str, String> {
    use std::os::fd::AsRawFd;
    let opened = File::open(dir).map_err(|error| format!("opening the directory: {error}"))?;
    // SAFETY: fstatfs writes only into `stat`; the descriptor is open.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(opened.as_raw_fd(), &mut stat) } != 0 {
        return Err(format!("fstatfs: {}", io::Error::last_os_error()));
    }
    // f_type's width differs between architectures; the magic numbers fit in 32 bits.
    let magic = stat.f_type as u32;
    DSYNC_FILESYSTEMS
        .iter()
        .find(|(known, _)| *known == magic)
        .map(|(_, name)| *name)
        .ok_or_else(|| format!("filesystem magic {magic:#x}"))
}

fn probe_direct_io(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let out_of_space = |error: &io::Error| {
        let full = matches!(
            error.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        );
        if full {
            tracing::warn!(dir = %dir.display(), %error, "no space to probe O_DIRECT; keeping log.direct.io=true");
        }
        full
    };
    // One name per thread: every shard probes the same directory at start, and with a shared
    // name one shard's remove_file raced another's open (ENOENT on FUSE, which looks up the
    // name before it creates it).
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let probe = dir.join(format!(".sluice-direct-io-probe-{tid}"));
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let accepted = match opened {
        Ok(file) => {
            let block = AlignedBuffer::new(DIRECT_IO_ALIGN_BYTES);
            // SAFETY: nothing else uses this fresh buffer.
            let bytes = unsafe { block.slice(0, DIRECT_IO_ALIGN_BYTES) };
            match file.write_all_at(bytes, 0) {
                Ok(()) => true,
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => false,
                Err(error) if out_of_space(&error) => true,
                Err(error) => {
                    let _ = std::fs::remove_file(&probe);
                    return Err(error);
                }
            }
        }
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => false,
        Err(error) if out_of_space(&error) => true,
        Err(error) => return Err(error),
    };
    let _ = std::fs::remove_file(&probe);
    Ok(accepted)
}

pub(crate) fn open(
    config: StorageConfig,
    faults: Option<FaultPlan>,
) -> Result<Rc<ShardShared>, StorageError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_error(format!("creating {}", config.data_dir.display())))?;
    let ring = Ring::new(config.ring_entries).map_err(|error| match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) => {
            StorageError::UringRefused(error)
        }
        _ => StorageError::Io {
            context: "creating the storage io_uring".into(),
            source: error,
        },
    })?;
    let direct_io = if config.direct_io {
        let accepted = probe_direct_io(&config.data_dir).map_err(io_error(format!(
            "probing O_DIRECT in {}",
            config.data_dir.display()
        )))?;
        if !accepted {
            tracing::warn!(dir = %config.data_dir.display(), "filesystem refuses O_DIRECT; log.direct.io falls back to buffered writes");
        }
        accepted
    } else {
        false
    };
    let staging = Rc::new(AlignedBuffer::new(
        config.group_commit_bytes_max.max(STAGING_MIN_BYTES) + STAGING_SLACK_BYTES,
    ));
    // SAFETY: the staging buffer is never freed while the ring can use it: every write from it
    // holds an Rc in its ring slot, and the writer holds one for its whole life.
    let registered = match unsafe { ring.register_buffers(&[staging.iovec()]) } {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot register the staging buffer with io_uring; using plain writes");
            false
        }
    };
    let blocking = Rc::new(BlockingPool::default());
    let backend = RingBackend {
        ring: ring.clone(),
        staging_registered: registered,
        pool: blocking.clone(),
    };
    let io: Rc<dyn IoBackend> = match faults {
        None => Rc::new(backend),
        Some(plan) => Rc::new(FaultBackend {
            inner: backend,
            plan,
        }),
    };
    let shard = Rc::new(ShardShared {
        tail_cache: RefCell::new(TailCache::new(config.tail_cache_bytes)),
        // Until the broker sets it: as much again as the cache holds.
        response_budget: ResponseBudget::new(config.tail_cache_bytes),
        config,
        direct_io,
        ring: ring.clone(),
        queue: RefCell::new(VecDeque::new()),
        queued_bytes: Cell::new(0),
        enqueued_bytes_total: Cell::new(0),
        dequeued_bytes_total: Cell::new(0),
        queue_bytes_max: Cell::new(DEFAULT_QUEUE_BYTES_MAX),
        syncing_commits_max: Cell::new(DEFAULT_SYNCING_COMMITS_MAX),
        writing_commits_max: Cell::new(DEFAULT_WRITING_COMMITS_MAX),
        dsync_writes: Cell::new(false),
        high_watermark_unknown_at_log_start: Cell::new(false),
        queue_drained: Notify::new(),
        writer_wake: Notify::new(),
        writer_idle: Notify::new(),
        writer_busy: Cell::new(false),
        closing: Cell::new(false),
        closed: Cell::new(false),
        partitions: RefCell::new(HashMap::new()),
        flush_observer: RefCell::new(None),
        poison_observer: RefCell::new(None),
        roll_observer: RefCell::new(None),
        io: io.clone(),
        blocking,
        cleaner_config: RefCell::new(CleanerConfig::default()),
        cleaner_stats: RefCell::new(CleanerStats::default()),
        cleaner_throttle: RefCell::new(Throttle::default()),
    });
    tokio::task::spawn_local(writer::run(shard.clone(), io, staging));
    Ok(shard)
}

pub(crate) fn open_partition(
    shard: &Rc<ShardShared>,
    topic: &str,
    partition: i32,
    config: LogConfig,
) -> Result<Rc<PartitionShared>, StorageError> {
    let key = (topic.to_string(), partition);
    if let Some(existing) = shard.partitions.borrow().get(&key) {
        let mut log = existing.log.borrow_mut();
        if let Some(poisoned) = &log.poisoned {
            // Reopening would read back pages the failed sync may or may not have written
            // and the kernel may still hold: only recovery after a restart is trustworthy.
            return Err(StorageError::Poisoned(poisoned.clone()));
        }
        log.config = config;
        drop(log);
        return Ok(existing.clone());
    }
    if shard.closing.get() {
        return Err(StorageError::Io {
            context: format!("opening {topic}-{partition}"),
            source: io::Error::other("storage is shut down"),
        });
    }
    let dir = shard.config.data_dir.join(format!("{topic}-{partition}"));
    let label = format!("{topic}-{partition}");
    let recovered =
        recovery::open_dir(&*shard.io, &dir, &label, &config, shard.direct_io, now_ms())?;
    if !recovered.was_clean {
        tracing::info!(partition = %label, log_end_offset = recovered.log_end_offset, "recovered after an unclean shutdown");
        // A producer snapshot is taken at the log end as appends reserved it: one above what
        // the crash left would describe batches that later appends give other contents.
        let removed =
            crate::producer_snapshot::remove_where(&dir, |at| at > recovered.log_end_offset)
                .map_err(io_error(format!(
                    "removing producer snapshots past the log end of {}",
                    dir.display()
                )))?;
        if removed > 0 {
            tracing::warn!(partition = %label, removed, log_end_offset = recovered.log_end_offset, "removed producer snapshots past the recovered log end");
        }
        // Aborted-transaction entries of markers the crash (or a cut it finished) did not
        // keep, and torn tails, go before anything is appended after them.
        let dropped = crate::txn_index::drop_from(&dir, recovered.log_end_offset).map_err(
            io_error(format!(
                "cutting the transaction indexes of {} at the log end",
                dir.display()
            )),
        )?;
        if dropped > 0 {
            tracing::warn!(partition = %label, dropped, log_end_offset = recovered.log_end_offset, "dropped aborted-transaction entries past the recovered log end");
        }
    }
    let cleaner_state = CleanerState::load(&dir);
    let segments: Vec<Rc<Segment>> = recovered.segments.into_iter().map(Rc::new).collect();
    // A DeleteRecords checkpoint may name an offset inside the first segment (or past whole
    // segments a crash kept from deleting: retention removes them on its next pass).
    let log_start_offset = log_start::read_checkpoint(&dir)
        .map_or(segments[0].base_offset, |checkpoint| {
            checkpoint.max(segments[0].base_offset)
        })
        .min(recovered.log_end_offset);
    let checkpointed = high_watermark::read_checkpoint(&dir);
    let high_watermark = high_watermark::opening_high_watermark(
        checkpointed,
        shard.high_watermark_unknown_at_log_start.get(),
        log_start_offset,
        recovered.log_end_offset,
    );
    if high_watermark < recovered.log_end_offset {
        tracing::info!(partition = %label, high_watermark, log_end_offset = recovered.log_end_offset, ?checkpointed, "opened below the log end at the checkpointed high watermark");
    }
    let shared = Rc::new(PartitionShared {
        topic: topic.to_string(),
        partition,
        dir,
        shard: Rc::downgrade(shard),
        log: RefCell::new(LogState {
            config,
            segments,
            offsets: LogOffsets::opened(
                LogStartOffset(log_start_offset),
                HighWatermark(high_watermark),
                LogEndOffset(recovered.log_end_offset),
            ),
            poisoned: None,
            deleted: false,
            unsynced_messages: 0,
            last_sync: Instant::now(),
            recovery_cuts: recovered.cuts,
            epochs: recovered.epochs,
            truncating: false,
            rollbacks: 0,
        }),
        tail: Rc::new(RefCell::new(PartitionTail::default())),
        high_watermark_advanced: Notify::new(),
        finalize_lock: tokio::sync::Mutex::new(()),
        log_start_lock: tokio::sync::Mutex::new(()),
        maintenance_lock: tokio::sync::Mutex::new(()),
        cleaner: RefCell::new(cleaner_state),
        high_watermark_checkpointed: Cell::new(match checkpointed {
            high_watermark::Checkpointed::Absent => None,
            _ => Some(high_watermark),
        }),
        high_watermark_lock: tokio::sync::Mutex::new(()),
    });
    if let Some(old) = shard.partitions.borrow_mut().insert(key, shared.clone()) {
        shard.tail_cache.borrow_mut().remove_all(&old.tail);
    }
    maybe_finalize(&shared);
    Ok(shared)
}

/// Starts the finalization of every sealed segment whose bytes are all visible: truncate the
/// O_DIRECT padding, write its indexes, sync, and move the recovery point past it.
pub(crate) fn maybe_finalize(partition: &Rc<PartitionShared>) {
    let log = partition.log.borrow();
    for segment in &log.segments {
        {
            let mut state = segment.state.borrow_mut();
            if !state.sealed
                || state.finalize_started
                || state.deleted
                || state.visible_bytes != state.reserved_bytes
            {
                continue;
            }
            state.finalize_started = true;
        }
        tokio::task::spawn_local(finalize(partition.clone(), segment.clone()));
    }
}

async fn finalize(partition: Rc<PartitionShared>, segment: Rc<Segment>) {
    let _guard = partition.finalize_lock.lock().await;
    if partition.log.borrow().poisoned.is_some() {
        // Nothing moves forward on a poisoned partition, the recovery point included.
        return;
    }
    let (logical_bytes, offsets, times, next_offset) = {
        let mut state = segment.state.borrow_mut();
        if state.deleted {
            return;
        }
        let mut index = state.index.clone().unwrap_or_default();
        index.seal_time_index();
        let encoded = (index.encode_offsets(), index.encode_times());
        state.index = Some(index);
        (state.written_bytes, encoded.0, encoded.1, state.next_offset)
    };
    let Some(io) = partition.shard.upgrade().map(|shard| shard.io.clone()) else {
        return;
    };
    let checkpoint =
        recovery::encode_recovery_point(&partition.topic, partition.partition, next_offset);
    let result = async {
        if let Some(file) = segment.write_file() {
            truncate_and_sync(&io, &partition, &segment, &file, logical_bytes).await?;
        }
        write_indexes(&io, &partition, segment.base_offset, offsets, times).await?;
        write_small_file(
            &io,
            &partition,
            recovery::RECOVERY_CHECKPOINT,
            checkpoint.into_bytes(),
            true,
        )
        .await
    }
    .await;
    match result {
        Ok(()) => {
            segment.state.borrow_mut().finalized = true;
            segment.close_write_file();
        }
        Err(poisoned) => {
            if let Some(shard) = partition.shard.upgrade() {
                writer::poison(&shard, &partition, poisoned, &mut []);
            }
        }
    }
}

/// Cuts `file` (a segment's write descriptor) to `len_bytes` and fdatasyncs it.
async fn truncate_and_sync(
    io: &Rc<dyn IoBackend>,
    partition: &PartitionShared,
    segment: &Segment,
    file: &File,
    len_bytes: u64,
) -> Result<(), Poisoned> {
    use std::os::fd::AsRawFd;
    let path = segment.log_path();
    let duplicate = file.try_clone().map_err(poisoned(
        partition,
        format!("duplicating {}", path.display()),
    ))?;
    io.truncate(duplicate, len_bytes).await.map_err(poisoned(
        partition,
        format!("truncating {}", path.display()),
    ))?;
    // `segment` (and so `file`) lives across the await: the descriptor stays valid.
    io.fdatasync(file.as_raw_fd()).await.map_err(poisoned(
        partition,
        format!("fdatasync of {}", path.display()),
    ))?;
    Ok(())
}

/// Writes and syncs a segment's offset and time indexes.
async fn write_indexes(
    io: &Rc<dyn IoBackend>,
    partition: &PartitionShared,
    base_offset: i64,
    offsets: Vec<u8>,
    times: Vec<u8>,
) -> Result<(), Poisoned> {
    for (path, contents) in [
        (segment::index_path(&partition.dir, base_offset), offsets),
        (segment::time_index_path(&partition.dir, base_offset), times),
    ] {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_small_file(io, partition, &name, contents, false).await?;
    }
    Ok(())
}

/// Writes `name` in the partition's directory through the seam (atomic: temp file, rename,
/// directory fsync); a failure is the partition's poison.
pub(crate) async fn write_small_file(
    io: &Rc<dyn IoBackend>,
    partition: &PartitionShared,
    name: &str,
    contents: Vec<u8>,
    atomic: bool,
) -> Result<(), Poisoned> {
    io.write_small_file(partition.dir.clone(), name.to_string(), contents, atomic)
        .await
        .map(|_| ())
        .map_err(poisoned(
            partition,
            format!("writing {}", partition.dir.join(name).display()),
        ))
}

/// Writes the small file `name` atomically and synced (a checkpoint); a failure poisons the
/// partition (a failed sync may have dropped pages: it refuses writes until a restart) and
/// is returned.
pub(crate) async fn write_checkpoint_or_poison(
    shard: &Rc<ShardShared>,
    partition: &Rc<PartitionShared>,
    name: &str,
    contents: String,
) -> Result<(), Poisoned> {
    if let Err(poisoned) =
        write_small_file(&shard.io, partition, name, contents.into_bytes(), true).await
    {
        writer::poison(shard, partition, poisoned.clone(), &mut []);
        return Err(poisoned);
    }
    Ok(())
}

fn poisoned(partition: &PartitionShared, operation: String) -> impl FnOnce(io::Error) -> Poisoned {
    let label = partition.label();
    move |source| Poisoned {
        partition: label,
        operation,
        source: std::sync::Arc::new(source),
    }
}

pub(crate) fn delete_partition(
    shard: &Rc<ShardShared>,
    partition: &Rc<PartitionShared>,
) -> Result<(), StorageError> {
    {
        let mut partitions = shard.partitions.borrow_mut();
        let key = (partition.topic.clone(), partition.partition);
        if partitions
            .get(&key)
            .is_some_and(|current| Rc::ptr_eq(current, partition))
        {
            partitions.remove(&key);
        }
    }
    let reason = format!("partition {} was deleted", partition.label());
    writer::fail_appends(shard, partition, &writer::Failure::Write(reason), &mut []);
    {
        let mut log = partition.log.borrow_mut();
        log.deleted = true;
        for segment in &log.segments {
            segment.unlink();
        }
    }
    shard.tail_cache.borrow_mut().remove_all(&partition.tail);
    partition.high_watermark_advanced.notify_waiters();
    // Readers' descriptors keep unlinked segment data alive; the directory itself can go.
    match std::fs::remove_dir_all(&partition.dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StorageError::Io {
            context: format!("removing {}", partition.dir.display()),
            source: error,
        }),
    }
}

pub(crate) async fn shutdown(shard: &Rc<ShardShared>) -> Result<(), StorageError> {
    shard.closing.set(true);
    shard.writer_wake.notify_one();
    loop {
        let idle = shard.writer_idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if shard.queue.borrow().is_empty() && !shard.writer_busy.get() {
            break;
        }
        shard.writer_wake.notify_one();
        idle.await;
    }
    let partitions: Vec<Rc<PartitionShared>> =
        shard.partitions.borrow().values().cloned().collect();
    let mut first_error = None;
    for partition in partitions {
        if let Err(error) = close_partition(shard, &partition).await {
            tracing::error!(%error, partition = %partition.label(), "clean shutdown of partition failed");
            first_error.get_or_insert(error);
        }
    }
    shard.closed.set(true);
    shard.writer_wake.notify_one();
    // Closed partitions are of no more use to the shard; callers' handles keep theirs.
    shard.partitions.borrow_mut().clear();
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Syncs every segment with unsynced bytes, cuts the active segment to its logical size and
/// syncs it, writes its indexes, and writes the clean-shutdown marker last. A failure poisons
/// the partition and leaves no marker, so the next open scans.
async fn close_partition(
    shard: &Rc<ShardShared>,
    partition: &Rc<PartitionShared>,
) -> Result<(), StorageError> {
    let _guard = partition.finalize_lock.lock().await;
    let _high_watermark_guard = partition.high_watermark_lock.lock().await;
    let (unsynced, active, marker, offsets, times, checkpoint_high_watermark) = {
        let log = partition.log.borrow();
        if log.deleted || log.poisoned.is_some() {
            // No marker: the next open scans and keeps only what is valid.
            return Ok(());
        }
        let unsynced: Vec<Rc<Segment>> = log
            .segments
            .iter()
            .filter(|segment| {
                let state = segment.state.borrow();
                segment.has_write_file() && state.durable_bytes < state.written_bytes
            })
            .cloned()
            .collect();
        let active = log.active().clone();
        let mut state = active.state.borrow_mut();
        let mut index = state.index.clone().unwrap_or_default();
        index.seal_time_index();
        let encoded = (index.encode_offsets(), index.encode_times());
        state.index = Some(index);
        debug_assert_eq!(
            log.offsets.durable_end(),
            log.offsets.end(),
            "shutdown with unflushed appends"
        );
        let marker = CleanMarker {
            log_end_offset: log.offsets.end(),
            active_bytes: state.written_bytes,
            max_timestamp: state.max_timestamp,
        };
        drop(state);
        let checkpoint_high_watermark = partition
            .high_watermark_checkpointed
            .get()
            .map(|_| log.offsets.high_watermark());
        (
            unsynced,
            active,
            marker,
            encoded.0,
            encoded.1,
            checkpoint_high_watermark,
        )
    };
    let io = shard.io.clone();
    let result = async {
        for segment in &unsynced {
            if let Some(file) = segment.write_file() {
                io.fdatasync_kept(file).await.map_err(poisoned(
                    partition,
                    format!("fdatasync of {}", segment.log_path().display()),
                ))?;
            }
        }
        if let Some(file) = active.write_file() {
            truncate_and_sync(&io, partition, &active, &file, marker.active_bytes).await?;
        }
        write_indexes(&io, partition, active.base_offset, offsets, times).await?;
        if let Some(high_watermark) = checkpoint_high_watermark {
            // A replicated partition's last high watermark, so the next open starts there.
            let text = recovery::encode_recovery_point(
                &partition.topic,
                partition.partition,
                high_watermark,
            );
            write_small_file(
                &io,
                partition,
                high_watermark::HIGH_WATERMARK_CHECKPOINT,
                text.into_bytes(),
                true,
            )
            .await?;
        }
        write_small_file(
            &io,
            partition,
            recovery::CLEAN_MARKER,
            marker.encode().into_bytes(),
            true,
        )
        .await
    }
    .await;
    result.map_err(|poisoned| {
        writer::poison(shard, partition, poisoned.clone(), &mut []);
        StorageError::Poisoned(poisoned)
    })
}
