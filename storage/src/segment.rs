//! One segment of a partition log: `<base offset, 20 digits>.log` with its `.index` and
//! `.timeindex`, the write descriptor (O_DIRECT when enabled), a buffered read descriptor
//! handed to readers (opened at the first read from the file: see [`ReadFile`]), and the
//! segment's byte positions: reserved (queued appends), written, durable and visible (below
//! the high watermark).
//!
//! Owns file naming, creation, header reads and index loading. Must never rewrite a byte
//! below `visible_bytes`: readers may hold those ranges (through `SegmentHandle`) at any time.
//! Must never read with a blocking syscall after open: header reads and index loads go through
//! the I/O seam (the shard's ring), which is why they are async. Must never read another
//! file than its own through a late-opened read descriptor: the file's identity is checked.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::batch::{self, RecordBatchHeader};
use crate::index::SegmentIndex;
use crate::io::{read_exact, IoBackend};
use crate::SegmentHandle;

/// Path of a segment's log file.
pub(crate) fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

/// Path of a segment's offset index.
pub(crate) fn index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

/// Path of a segment's time index.
pub(crate) fn time_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}

/// Parses a `.log` file name back into its base offset.
pub(crate) fn parse_log_name(name: &str) -> Option<i64> {
    parse_offset_file_name(name, ".log")
}

/// Kafka's name of a per-offset file: the offset in 20 digits, then `suffix`.
pub(crate) fn offset_file_name(offset: i64, suffix: &str) -> String {
    debug_assert!(offset >= 0);
    format!("{offset:020}{suffix}")
}

/// The offset an [`offset_file_name`] with `suffix` carries, if `name` is one.
pub(crate) fn parse_offset_file_name(name: &str, suffix: &str) -> Option<i64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Mutable positions and metadata of a segment.
#[derive(Debug)]
pub(crate) struct SegmentState {
    /// End of the bytes handed to queued appends (the next append's position).
    pub(crate) reserved_bytes: u64,
    /// End of the bytes in writes the writer has submitted (the next flush starts here):
    /// written <= planned <= reserved. Several group commits' writes may be in flight.
    pub(crate) planned_bytes: u64,
    /// End of the bytes the writer has written to the file (every write before it completed).
    pub(crate) written_bytes: u64,
    /// End of the bytes covered by a completed fdatasync.
    pub(crate) durable_bytes: u64,
    /// End of the last write planned without a sync of its own (a partition with
    /// `flush.messages`/`flush.ms`): until `durable_bytes` reaches it, commits are synced
    /// with an fdatasync (which covers the file's earlier writes), not RWF_DSYNC (which covers
    /// only its own).
    pub(crate) unsynced_planned_bytes: u64,
    /// Times written bytes were rolled back (a failed write of an oversized append part of
    /// which an earlier flush wrote). An fdatasync submitted before a rollback covers bytes
    /// that may since have been forgotten and rewritten: it marks nothing durable.
    pub(crate) rollbacks: u64,
    /// End of the bytes below the high watermark: readers may see [0, visible_bytes).
    pub(crate) visible_bytes: u64,
    /// Offset after the last batch reserved in this segment.
    pub(crate) next_offset: i64,
    /// Offset after the last visible batch in this segment.
    pub(crate) visible_next_offset: i64,
    /// O_DIRECT: bytes of the partial last 4 KiB block, [align_down(planned), planned),
    /// rewritten in front of the next flush's data.
    pub(crate) tail_block: Vec<u8>,
    /// The group commit (flush sequence number) whose write holds that partial block: the
    /// next flush's write of the same block waits until that write completed, so one block
    /// is never in two in-flight writes. 0: none.
    pub(crate) tail_write_seq: u64,
    /// Sparse indexes; None until first needed for a segment opened without scanning.
    pub(crate) index: Option<SegmentIndex>,
    /// Largest visible timestamp and the offset it belongs to; None = not yet known.
    pub(crate) max_timestamp: Option<(i64, i64)>,
    /// Wall-clock creation time, for `segment.ms`.
    pub(crate) created_ms: i64,
    /// No longer active: nothing more will be reserved in it.
    pub(crate) sealed: bool,
    /// Its file was created after the partition directory was last synced.
    pub(crate) needs_dir_sync: bool,
    /// Removed from the log (retention, rollback, deletion); its files are unlinked.
    pub(crate) deleted: bool,
    /// A finalization (truncate, write indexes, sync, move the recovery point) was started.
    pub(crate) finalize_started: bool,
    /// Finalized: its files are final and retention may delete it.
    pub(crate) finalized: bool,
}

impl SegmentState {
    /// The segment's positions are in order: durable <= written <= planned <= reserved, visible <=
    /// written, and its visible offsets end no later than its reserved ones. Checked (in
    /// release builds too) after every change of a position, so a bookkeeping slip stops the
    /// broker instead of serving unwritten bytes or acknowledging unsynced ones.
    pub(crate) fn assert_order(&self) {
        assert!(
            self.durable_bytes <= self.written_bytes,
            "durable {} past written {}",
            self.durable_bytes,
            self.written_bytes
        );
        assert!(
            self.written_bytes <= self.planned_bytes,
            "written {} past planned {}",
            self.written_bytes,
            self.planned_bytes
        );
        assert!(
            self.planned_bytes <= self.reserved_bytes,
            "planned {} past reserved {}",
            self.planned_bytes,
            self.reserved_bytes
        );
        assert!(
            self.visible_bytes <= self.written_bytes,
            "visible {} past written {}",
            self.visible_bytes,
            self.written_bytes
        );
        assert!(
            self.visible_next_offset <= self.next_offset,
            "visible offsets end at {} past reserved {}",
            self.visible_next_offset,
            self.next_offset
        );
    }
}

/// One segment; shared (Rc) between its partition and the writer's queued appends.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    pub(crate) dir: PathBuf,
    /// Descriptor the writer writes through (O_DIRECT when enabled); None for a segment
    /// opened sealed, and closed once a segment sealed here is finalized (nothing writes it
    /// again), so sealed segments hold no descriptor until a read opens one.
    write_file: RefCell<Option<Rc<File>>>,
    /// Buffered descriptor shared with readers, once one read the file.
    read: RefCell<ReadFile>,
    pub(crate) direct_io: bool,
    pub(crate) state: RefCell<SegmentState>,
}

/// A segment's read descriptor, opened at the first read that the tail cache does not serve.
///
/// Why: a descriptor per segment from the start held two or three per partition (the read
/// one beside the append one and the directory's), so a broker with this sandbox's 20,000
/// descriptors stopped creating partitions at about 6,500, and every sealed segment of every
/// partition held one for as long as the broker ran. Consumers that keep up read from the tail
/// cache and never open one; Kafka keeps one open for every segment.
///
/// The file behind the name must be the segment's own: a segment whose file was unlinked
/// (retention, topic deletion) opens its descriptor before the unlink so readers still holding
/// it keep reading, as before; and a late open checks the device and inode recorded when the
/// segment was made, so a name that now belongs to another file (a cleaned copy renamed over
/// it, a segment recreated at the same base offset after a truncation) fails the read instead
/// of serving another file's bytes.
#[derive(Debug)]
enum ReadFile {
    Open(SegmentHandle),
    /// Not opened yet: the `(device, inode)` of the segment's file.
    Closed((u64, u64)),
}

/// `(device, inode)` of an open file.
fn identity(file: &File) -> io::Result<(u64, u64)> {
    let metadata = file.metadata()?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Opens a segment file for writing, O_DIRECT when asked.
pub(crate) fn open_for_write(path: &Path, create: bool, direct_io: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).read(true).create(create);
    if direct_io {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

impl Segment {
    /// Creates a new, empty active segment file with base `base_offset`.
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        direct_io: bool,
        now_ms: i64,
    ) -> io::Result<Segment> {
        let path = log_path(dir, base_offset);
        let write_file = open_for_write(&path, true, direct_io)?;
        let read = ReadFile::Closed(identity(&write_file)?);
        Ok(Segment {
            base_offset,
            dir: dir.to_path_buf(),
            write_file: RefCell::new(Some(Rc::new(write_file))),
            read: RefCell::new(read),
            direct_io,
            state: RefCell::new(SegmentState {
                reserved_bytes: 0,
                planned_bytes: 0,
                written_bytes: 0,
                durable_bytes: 0,
                unsynced_planned_bytes: 0,
                rollbacks: 0,
                visible_bytes: 0,
                next_offset: base_offset,
                visible_next_offset: base_offset,
                tail_block: Vec::new(),
                tail_write_seq: 0,
                index: Some(SegmentIndex::default()),
                max_timestamp: None,
                created_ms: now_ms,
                sealed: false,
                needs_dir_sync: true,
                deleted: false,
                finalize_started: false,
                finalized: false,
            }),
        })
    }

    /// Opens an existing segment whose first `size_bytes` bytes are whole, valid batches
    /// ending at offset `next_offset`. `active_tail` opens the write descriptor (the active
    /// segment) with the partial last block recovery read before cutting anything (O_DIRECT;
    /// empty when buffered).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open_existing(
        dir: &Path,
        base_offset: i64,
        size_bytes: u64,
        next_offset: i64,
        index: Option<SegmentIndex>,
        max_timestamp: Option<(i64, i64)>,
        active_tail: Option<Vec<u8>>,
        direct_io: bool,
        now_ms: i64,
    ) -> io::Result<Segment> {
        let path = log_path(dir, base_offset);
        let metadata = std::fs::metadata(&path)?;
        let read = ReadFile::Closed((metadata.dev(), metadata.ino()));
        let writable = active_tail.is_some();
        let (write_file, tail_block) = match active_tail {
            Some(tail) => {
                let file = open_for_write(&path, false, direct_io)?;
                // Padding past the logical end (O_DIRECT) or a cut torn batch goes now, so the
                // file and its logical size agree.
                file.set_len(size_bytes)?;
                let block_start = crate::buffer::align_down(
                    size_bytes,
                    crate::buffer::DIRECT_IO_ALIGN_BYTES as u64,
                );
                assert!(
                    !direct_io || tail.len() as u64 == size_bytes - block_start,
                    "tail block out of step with the segment size"
                );
                (Some(file), if direct_io { tail } else { Vec::new() })
            }
            None => (None, Vec::new()),
        };
        Ok(Segment {
            base_offset,
            dir: dir.to_path_buf(),
            write_file: RefCell::new(write_file.map(Rc::new)),
            read: RefCell::new(read),
            direct_io,
            state: RefCell::new(SegmentState {
                reserved_bytes: size_bytes,
                planned_bytes: size_bytes,
                written_bytes: size_bytes,
                durable_bytes: size_bytes,
                unsynced_planned_bytes: 0,
                rollbacks: 0,
                visible_bytes: size_bytes,
                next_offset,
                visible_next_offset: next_offset,
                tail_block,
                tail_write_seq: 0,
                index,
                max_timestamp,
                created_ms: now_ms,
                sealed: !writable,
                needs_dir_sync: false,
                deleted: false,
                finalize_started: !writable,
                finalized: !writable,
            }),
        })
    }

    /// A sealed, finalized segment from the cleaner's copy, already renamed to its `.log`
    /// name: `file` is that file (the cleaner wrote through it; readers read through it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cleaned(
        dir: &Path,
        base_offset: i64,
        file: File,
        size_bytes: u64,
        next_offset: i64,
        index: SegmentIndex,
        direct_io: bool,
        created_ms: i64,
    ) -> Segment {
        let max_timestamp = index
            .max_timestamp()
            .map(|(ts, relative)| (ts, base_offset + i64::from(relative)));
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            write_file: RefCell::new(None),
            read: RefCell::new(ReadFile::Open(SegmentHandle::new(file))),
            direct_io,
            state: RefCell::new(SegmentState {
                reserved_bytes: size_bytes,
                planned_bytes: size_bytes,
                written_bytes: size_bytes,
                durable_bytes: size_bytes,
                unsynced_planned_bytes: 0,
                rollbacks: 0,
                visible_bytes: size_bytes,
                next_offset,
                visible_next_offset: next_offset,
                tail_block: Vec::new(),
                tail_write_seq: 0,
                index: Some(index),
                max_timestamp,
                created_ms,
                sealed: true,
                needs_dir_sync: false,
                deleted: false,
                finalize_started: true,
                finalized: true,
            }),
        }
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        log_path(&self.dir, self.base_offset)
    }

    /// The descriptor the writer writes through, while the segment has one.
    pub(crate) fn write_file(&self) -> Option<Rc<File>> {
        self.write_file.borrow().clone()
    }

    pub(crate) fn has_write_file(&self) -> bool {
        self.write_file.borrow().is_some()
    }

    /// Closes the write descriptor of a finalized segment: nothing writes it again (the
    /// writer never plans an append into a sealed segment, and finalization truncated and
    /// synced it), and a clone still held by a finishing operation keeps it open until then.
    pub(crate) fn close_write_file(&self) {
        debug_assert!(
            self.state.borrow().finalized,
            "closing a segment still written"
        );
        self.write_file.borrow_mut().take();
    }

    /// The buffered read descriptor, opened now if no read has needed it yet (a blocking
    /// open and fstat on the calling thread, like a segment's creation: path lookups of a
    /// file that exists, never a read of its data). Fails, rather than reading another file,
    /// when the name no longer leads to the segment's own file (see [`ReadFile`]).
    pub(crate) fn read_handle(&self) -> io::Result<SegmentHandle> {
        let handle = self.transient_read_handle()?;
        let mut read = self.read.borrow_mut();
        if matches!(*read, ReadFile::Closed(_)) {
            *read = ReadFile::Open(handle.clone());
        }
        Ok(handle)
    }

    /// The read descriptor if one is open, else one opened for the caller alone and closed
    /// when it drops it: for walks over batch headers (the first append's producer-state
    /// rebuild, offset and time lookups), which would otherwise leave a second descriptor on
    /// every partition ever appended to (10,000 partitions would hold 20,000). Like
    /// [`Segment::read_handle`] it fails when the name no longer leads to the segment's file.
    pub(crate) fn transient_read_handle(&self) -> io::Result<SegmentHandle> {
        let expected = match &*self.read.borrow() {
            ReadFile::Open(handle) => return Ok(handle.clone()),
            ReadFile::Closed(expected) => *expected,
        };
        let path = self.log_path();
        let file = File::open(&path)?;
        if identity(&file)? != expected {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is no longer this segment's file (replaced since it was opened)",
                    path.display()
                ),
            ));
        }
        Ok(SegmentHandle::new(file))
    }

    /// Opens the read descriptor before the file's name is unlinked or replaced, so readers
    /// that already hold this segment keep reading its bytes. A failure is logged: those
    /// readers then get an error instead (never another file's bytes).
    pub(crate) fn keep_readable(&self) {
        if let Err(error) = self.read_handle() {
            tracing::warn!(%error, segment = %self.log_path().display(), "cannot keep a segment readable past its unlink");
        }
    }

    /// A header reader over the first `end_bytes` bytes, reading `window_bytes` at a time,
    /// through the segment's read descriptor (opened now if need be, and kept): for reads
    /// that go on to serve the segment's data through [`HeaderReader::file`].
    pub(crate) fn headers<'a>(
        &'a self,
        io: &'a dyn IoBackend,
        end_bytes: u64,
        window_bytes: usize,
    ) -> io::Result<HeaderReader<'a>> {
        let file = self.read_handle()?;
        Ok(self.header_reader(file, io, end_bytes, window_bytes))
    }

    /// [`Segment::headers`] for a walk over headers alone (an index rebuild, the producer
    /// state rebuild, offset and time lookups, a truncation point): a descriptor opened for
    /// it is closed after it, not kept.
    pub(crate) fn walk_headers<'a>(
        &'a self,
        io: &'a dyn IoBackend,
        end_bytes: u64,
        window_bytes: usize,
    ) -> io::Result<HeaderReader<'a>> {
        let file = self.transient_read_handle()?;
        Ok(self.header_reader(file, io, end_bytes, window_bytes))
    }

    fn header_reader<'a>(
        &'a self,
        file: SegmentHandle,
        io: &'a dyn IoBackend,
        end_bytes: u64,
        window_bytes: usize,
    ) -> HeaderReader<'a> {
        HeaderReader {
            file,
            segment: self,
            io,
            end_bytes,
            window_bytes: window_bytes.max(batch::HEADER_BYTES),
            window: Vec::new(),
            window_start: 0,
            last_batch_bytes: 0,
        }
    }

    /// [`Segment::load_index`] with blocking reads through `io`'s recovery reads, for recovery
    /// at partition open (the documented exception to "never block the shard").
    pub(crate) fn ensure_index(&self, io: &dyn IoBackend, interval_bytes: u32) -> io::Result<()> {
        crate::io::run_ready(self.load_index(&crate::io::RecoveryReads(io), interval_bytes))
    }

    /// Ensures the index is in memory: loads `.index`/`.timeindex`, or rebuilds them by
    /// walking batch headers when missing or inconsistent. Two readers may load it at once;
    /// the first to finish installs it and the other's copy is dropped.
    pub(crate) async fn load_index(
        &self,
        io: &dyn IoBackend,
        interval_bytes: u32,
    ) -> io::Result<()> {
        if self.state.borrow().index.is_some() {
            return Ok(());
        }
        let visible_bytes = self.state.borrow().visible_bytes;
        // A missing or unreadable index is only a slower first read: it is rebuilt below.
        let offsets = read_small_file(io, &index_path(&self.dir, self.base_offset))
            .await
            .unwrap_or_default();
        let times = read_small_file(io, &time_index_path(&self.dir, self.base_offset))
            .await
            .unwrap_or_default();
        let loaded = SegmentIndex::decode(&offsets, &times, visible_bytes.max(1));
        let index = match loaded {
            Some(index)
                if !(offsets.is_empty() && visible_bytes > u64::from(interval_bytes) * 2) =>
            {
                index
            }
            _ => {
                self.rebuild_index(io, visible_bytes, interval_bytes)
                    .await?
            }
        };
        let mut state = self.state.borrow_mut();
        if state.index.is_some() {
            return Ok(());
        }
        let indexed_max = index
            .max_timestamp()
            .map(|(ts, relative)| (ts, self.base_offset + i64::from(relative)));
        // Batches published while the index loaded may have set a max timestamp already.
        state.max_timestamp = match (state.max_timestamp, indexed_max) {
            (Some(published), Some(indexed)) if indexed.0 > published.0 => Some(indexed),
            (Some(published), _) => Some(published),
            (None, indexed) => indexed,
        };
        state.index = Some(index);
        Ok(())
    }

    async fn rebuild_index(
        &self,
        io: &dyn IoBackend,
        end_bytes: u64,
        interval_bytes: u32,
    ) -> io::Result<SegmentIndex> {
        tracing::info!(segment = %self.log_path().display(), "rebuilding segment index from batch headers");
        let mut index = SegmentIndex::default();
        let mut position = 0u64;
        let mut headers = self.walk_headers(io, end_bytes, LONG_WALK_WINDOW_BYTES)?;
        while let Some(header) = headers.header_at(position).await? {
            let relative =
                (header.last_offset() - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
            index.on_batch(
                relative,
                position as u32,
                header.size_bytes() as u32,
                header.max_timestamp,
                interval_bytes,
            );
            position += header.size_bytes() as u64;
        }
        index.seal_time_index();
        Ok(index)
    }

    /// Position and header of the batch holding `offset` (or the first batch after it), among
    /// the bytes `headers` reads.
    pub(crate) async fn find_batch(
        &self,
        headers: &mut HeaderReader<'_>,
        offset: i64,
        interval_bytes: u32,
    ) -> io::Result<Option<(u64, RecordBatchHeader)>> {
        debug_assert!(
            std::ptr::eq(headers.segment, self),
            "another segment's headers"
        );
        self.load_index(headers.io, interval_bytes).await?;
        let relative = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let mut position = self
            .state
            .borrow()
            .index
            .as_ref()
            .map_or(0, |index| index.position_for(relative)) as u64;
        while let Some(header) = headers.header_at(position).await? {
            if header.last_offset() >= offset {
                return Ok(Some((position, header)));
            }
            position += header.size_bytes() as u64;
        }
        Ok(None)
    }

    /// The farthest batch start in `(after_position, limit_position]` that the index knows of
    /// and the header there confirms (its last offset is the entry's), with that header, so a
    /// reader can take the whole batches before it without reading each of their headers.
    /// None when the index has no such entry or the entry is stale.
    pub(crate) async fn indexed_batch_start(
        &self,
        headers: &mut HeaderReader<'_>,
        after_position: u64,
        limit_position: u64,
    ) -> io::Result<Option<(u64, RecordBatchHeader)>> {
        debug_assert!(
            std::ptr::eq(headers.segment, self),
            "another segment's headers"
        );
        let limit = limit_position
            .min(headers.end_bytes)
            .min(u64::from(u32::MAX)) as u32;
        let Ok(after) = u32::try_from(after_position) else {
            return Ok(None);
        };
        let entry = self
            .state
            .borrow()
            .index
            .as_ref()
            .and_then(|index| index.batch_start_within(after, limit));
        let Some((relative, position)) = entry else {
            return Ok(None);
        };
        let position = u64::from(position);
        Ok(headers
            .header_at(position)
            .await?
            .filter(|header| header.last_offset() == self.base_offset + i64::from(relative))
            .map(|header| (position, header)))
    }

    /// Position and header of the first batch whose max timestamp >= `timestamp_ms`.
    pub(crate) async fn find_time(
        &self,
        headers: &mut HeaderReader<'_>,
        timestamp_ms: i64,
        interval_bytes: u32,
    ) -> io::Result<Option<(u64, RecordBatchHeader)>> {
        self.load_index(headers.io, interval_bytes).await?;
        let start_relative = self
            .state
            .borrow()
            .index
            .as_ref()
            .map_or(0, |index| index.relative_offset_for_time(timestamp_ms));
        let Some((mut position, _)) = self
            .find_batch(
                headers,
                self.base_offset + i64::from(start_relative),
                interval_bytes,
            )
            .await?
        else {
            return Ok(None);
        };
        while let Some(header) = headers.header_at(position).await? {
            if header.max_timestamp >= timestamp_ms {
                return Ok(Some((position, header)));
            }
            position += header.size_bytes() as u64;
        }
        Ok(None)
    }

    /// Largest timestamp of the segment's visible batches and its offset.
    pub(crate) async fn max_timestamp(
        &self,
        io: &dyn IoBackend,
        interval_bytes: u32,
    ) -> Option<(i64, i64)> {
        if let Some(found) = self.state.borrow().max_timestamp {
            return Some(found);
        }
        if let Err(error) = self.load_index(io, interval_bytes).await {
            tracing::warn!(%error, segment = %self.log_path().display(), "cannot load segment index");
        }
        self.state.borrow().max_timestamp
    }

    /// The segment's file names: log, offset index, time index.
    pub(crate) fn paths(&self) -> [PathBuf; 4] {
        [
            log_path(&self.dir, self.base_offset),
            index_path(&self.dir, self.base_offset),
            time_index_path(&self.dir, self.base_offset),
            crate::txn_index::path(&self.dir, self.base_offset),
        ]
    }

    /// Unlinks the segment's files with blocking syscalls on the calling thread: only for
    /// failure paths (a roll whose append failed) and topic deletion, where the name must be
    /// gone before the caller goes on, because the next append or a recreated topic may
    /// create the same name. Open descriptors (readers' handles) keep the data alive.
    pub(crate) fn unlink(&self) {
        self.keep_readable();
        self.state.borrow_mut().deleted = true;
        for path in self.paths() {
            if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(%error, path = %path.display(), "cannot remove segment file");
                }
            }
        }
    }

    /// Unlinks the segment's files through `io` (the ring's UNLINKAT), so the shard thread
    /// never blocks on them: for retention, whose segments' names are never created again
    /// (base offsets only grow). A failed unlink is logged; the file stays behind, below the
    /// log start, until the next start's recovery.
    pub(crate) async fn unlink_through(&self, io: &dyn IoBackend) {
        self.keep_readable();
        self.state.borrow_mut().deleted = true;
        let paths = self.paths();
        // All four are queued on the ring before the first is awaited.
        let unlinks = paths.clone().map(|path| io.unlink(path));
        for (path, unlinked) in paths.iter().zip(unlinks) {
            if let Err(error) = unlinked.await {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(%error, path = %path.display(), "cannot remove segment file");
                }
            }
        }
    }
}

/// Window of a header walk over a short stretch (a fetch's walk from an index entry to its
/// target, then over the batches after the last entry it may jump to): one index interval of
/// batches and the header after them, so such a walk usually takes one read.
pub(crate) fn short_walk_window_bytes(interval_bytes: u32) -> usize {
    (interval_bytes as usize).max(4096) + batch::HEADER_BYTES
}

/// Window of a walk over every header of a long stretch (the recent headers of a log, an
/// index rebuild): fewer, larger reads.
pub(crate) const LONG_WALK_WINDOW_BYTES: usize = 256 << 10;

/// Reads the batch headers of one segment's first `end_bytes` bytes through the I/O seam a
/// window at a time, so a walk over nearby headers costs one read per window rather than one
/// per 61-byte header. A header outside the window reads a new window starting at it.
pub(crate) struct HeaderReader<'a> {
    segment: &'a Segment,
    /// The segment's read descriptor, opened when the reader was made.
    file: SegmentHandle,
    io: &'a dyn IoBackend,
    end_bytes: u64,
    window_bytes: usize,
    /// The file's bytes from `window_start`; empty before the first read and after a failed
    /// one.
    window: Vec<u8>,
    window_start: u64,
    /// Size of the last batch this returned the header of. Batches at least a window long
    /// mean the next header lies past any window: it is read alone, not with a window of
    /// bytes the walk skips.
    last_batch_bytes: u64,
}

impl HeaderReader<'_> {
    /// The segment's read descriptor this reader reads through.
    pub(crate) fn file(&self) -> &SegmentHandle {
        &self.file
    }

    /// The batch header at `position`; None at the end or on bytes that are not a plausible
    /// header (zero padding, garbage), which end the readable data.
    pub(crate) async fn header_at(
        &mut self,
        position: u64,
    ) -> io::Result<Option<RecordBatchHeader>> {
        let header_bytes = batch::HEADER_BYTES as u64;
        if position
            .checked_add(header_bytes)
            .is_none_or(|header_end| header_end > self.end_bytes)
        {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if position < self.window_start || position + header_bytes > window_end {
            self.fill(position).await?;
        }
        let from = (position - self.window_start) as usize;
        let Some(header) = self.window.get(from..).and_then(RecordBatchHeader::parse) else {
            return Ok(None);
        };
        let plausible = header.magic == batch::MAGIC_V2
            && header.batch_length >= (batch::HEADER_BYTES - batch::LOG_OVERHEAD_BYTES) as i32
            && header.last_offset_delta >= 0
            && position + header.size_bytes() as u64 <= self.end_bytes;
        if !plausible {
            return Ok(None);
        }
        self.last_batch_bytes = header.size_bytes() as u64;
        Ok(Some(header))
    }

    /// Reads the window starting at `position` (at least a header: the caller checked that
    /// one fits below the end).
    async fn fill(&mut self, position: u64) -> io::Result<()> {
        let wanted_bytes = if self.last_batch_bytes >= self.window_bytes as u64 {
            batch::HEADER_BYTES
        } else {
            self.window_bytes
        };
        let len = (self.end_bytes - position).min(wanted_bytes as u64) as usize;
        let mut window = std::mem::take(&mut self.window);
        window.resize(len, 0);
        let (result, window) =
            read_exact(self.io, self.file.raw_fd(), window, 0, len, position).await;
        self.window = window;
        self.window_start = position;
        if let Err(error) = result {
            self.window.clear();
            return Err(error);
        }
        debug_assert!(self.window.len() >= batch::HEADER_BYTES);
        Ok(())
    }
}

impl SegmentHandle {
    pub(crate) fn new(file: File) -> SegmentHandle {
        SegmentHandle(Arc::new(file))
    }
}

/// The whole contents of a small file (an index), read through the seam. Opening it and
/// reading its size stay plain syscalls: they touch only the inode, not file data.
async fn read_small_file(io: &dyn IoBackend, path: &Path) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "index file too large"))?;
    let (result, contents) = read_exact(io, file.as_raw_fd(), vec![0u8; len], 0, len, 0).await;
    result.map(|()| contents)
}
