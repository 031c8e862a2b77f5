//! The storage's I/O seam for everything that touches a partition's files after open: the
//! group-commit writer's writes and fdatasyncs, segment finalization's and clean shutdown's
//! truncations, syncs and small-file writes, retention's unlinks, and readers' reads (fetch-path header walks,
//! index loads, copied chunks) all go through [`IoBackend`], so tests can inject EIO, ENOSPC,
//! torn writes, failed syncs, failed reads and power losses (see [`crate::fault`]) while
//! production uses the ring.
//!
//! Owns the translation of "write these staging bytes at this file position and make them
//! durable" (a linked fdatasync, or RWF_DSYNC on the write itself: [`WriteSync`])
//! and "read these bytes into this buffer" into SQEs, and the hand-off of the operations io_uring has no opcode for (ftruncate, whole
//! small files) to the blocking pool. Must never decide policy (what to sync, what to ack,
//! what a failure poisons): that is the writer's and the shard's; and must never run file
//! work on the shard thread.

use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;

use crate::blocking::BlockingPool;
use crate::buffer::AlignedBuffer;
use crate::ring::{ops, types, Ring};

/// Most iovecs one writev accepts (Linux UIO_MAXIOV).
pub(crate) const IOV_MAX: usize = 1024;

/// One contiguous write of a flush: `len` staging bytes at `staging_offset` go to `fd` at
/// `file_position`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileWrite {
    pub(crate) fd: RawFd,
    pub(crate) staging_offset: usize,
    pub(crate) len: usize,
    pub(crate) file_position: u64,
}

/// How a staged write is made durable. The writer chooses (it knows what was written before
/// and what each waiter needs); the backend only carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteSync {
    /// Not synced by this operation.
    None,
    /// An fdatasync linked behind the write: durable once it completes are this write and
    /// every write to the file that completed before the fdatasync started.
    File,
    /// The write's own bytes only, in one operation (RWF_DSYNC: the kernel flushes the disk's
    /// cache, or writes with FUA, before the write completes; no fdatasync, no second
    /// completion, no io-wq worker for the sync). A write to the file never synced before is
    /// not covered (with FUA it may still be in the disk's cache). The write completes only
    /// once durable, so nothing waiting for the write alone (acks=1) should use this; and a
    /// failed write may be a failed sync (the two are one result), so the writer treats its
    /// failure as a failed sync.
    Own,
}

/// A boxed operation result; boxing keeps backends composable (fault injection wraps the ring).
pub(crate) type IoFuture = Pin<Box<dyn Future<Output = io::Result<i32>>>>;

/// A read's result and its buffer, handed back for reuse whatever the outcome.
pub(crate) type ReadFuture = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;

/// What the group-commit writer needs from the disk.
pub(crate) trait IoBackend {
    /// Queues `write`, made durable as `sync` says. The first future resolves with the bytes
    /// written, the second (unless [`WriteSync::None`]) with the sync's result: -ECANCELED
    /// when the write was short or failed, except that a failed [`WriteSync::Own`] write's
    /// error is its sync's too.
    fn write(
        &self,
        staging: &Rc<AlignedBuffer>,
        write: FileWrite,
        sync: WriteSync,
    ) -> (IoFuture, Option<IoFuture>);

    /// Queues a vectored write of `pieces` (buffered mode: no staging copy) at
    /// `file_position`, and, when `sync`, an fdatasync linked after it. The first future
    /// resolves with the total bytes written.
    fn write_vectored(
        &self,
        fd: RawFd,
        file_position: u64,
        pieces: Vec<Bytes>,
        sync: bool,
    ) -> (IoFuture, Option<IoFuture>);

    /// Queues an fdatasync (or fsync of a directory) of `fd`.
    fn fdatasync(&self, fd: RawFd) -> IoFuture;

    /// Queues an fdatasync of `file`, kept open by the operation until it has completed, even
    /// when the future is dropped first: for descriptors whose owner may close them meanwhile
    /// (a segment's write descriptor, closed once the segment is finalized; a directory's,
    /// opened for this one sync).
    fn fdatasync_kept(&self, file: Rc<File>) -> IoFuture {
        use std::os::fd::AsRawFd;
        let done = self.fdatasync(file.as_raw_fd());
        Box::pin(async move {
            let result = done.await;
            drop(file);
            result
        })
    }

    /// Sets `file`'s length (ftruncate, on the blocking pool: no ring opcode on the kernels
    /// Sluice supports). Durable only once an fdatasync of the file completes after it.
    fn truncate(&self, file: File, len_bytes: u64) -> IoFuture;

    /// `fd` was just created in its directory; its directory entry is durable once an fsync
    /// of the directory completes after this (the writer does that before the first
    /// acks=all append in the file completes). Production has nothing to do.
    fn file_created(&self, _fd: RawFd) {}

    /// Reads exactly `buf.len()` bytes of `file` at `position`, synchronously: for recovery
    /// at open, the one time a shard thread reads segment files itself.
    fn recovery_read(&self, file: &File, buf: &mut [u8], position: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, position)
    }

    /// Writes `dir/name` whole and fdatasyncs it, on the blocking pool; with `atomic`,
    /// through `name.tmp` renamed over it and a directory fsync, so a crash leaves the old or
    /// the new contents. Durable when the future resolves Ok.
    fn write_small_file(
        &self,
        dir: PathBuf,
        name: String,
        contents: Vec<u8>,
        atomic: bool,
    ) -> IoFuture;

    /// Removes the name `path` (IORING_OP_UNLINKAT): a segment's files after retention.
    /// Readers holding the file open keep its data.
    fn unlink(&self, path: PathBuf) -> IoFuture;

    /// A directory operation of the cleaner's swap, on the blocking pool (no ring opcode
    /// creates a file we can hand back, or fsyncs a directory after a rename in one job).
    fn swap_op(&self, op: SwapOp) -> IoFuture;

    /// The cleaner is about to take step `step` of a pass that changes files: tests make a
    /// crash happen here (the cleaner stops where it is, as a killed process would).
    /// Production always answers Ok.
    fn cleaner_step(&self, _step: &'static str) -> io::Result<()> {
        Ok(())
    }

    /// Queues one read of `len` bytes of `fd` at `file_position` into `buffer[at..at + len]`
    /// (IORING_OP_READ); resolves with the bytes read (fewer at the end of the file) and the
    /// buffer. The ring owns the buffer until the read finishes, even if the future is dropped.
    fn read(
        &self,
        fd: RawFd,
        buffer: Vec<u8>,
        at: usize,
        len: usize,
        file_position: u64,
    ) -> ReadFuture;
}

impl<T: IoBackend + ?Sized> IoBackend for Rc<T> {
    fn write(
        &self,
        staging: &Rc<AlignedBuffer>,
        write: FileWrite,
        sync: WriteSync,
    ) -> (IoFuture, Option<IoFuture>) {
        (**self).write(staging, write, sync)
    }

    fn write_vectored(
        &self,
        fd: RawFd,
        file_position: u64,
        pieces: Vec<Bytes>,
        sync: bool,
    ) -> (IoFuture, Option<IoFuture>) {
        (**self).write_vectored(fd, file_position, pieces, sync)
    }

    fn fdatasync(&self, fd: RawFd) -> IoFuture {
        (**self).fdatasync(fd)
    }

    fn fdatasync_kept(&self, file: Rc<File>) -> IoFuture {
        (**self).fdatasync_kept(file)
    }

    fn truncate(&self, file: File, len_bytes: u64) -> IoFuture {
        (**self).truncate(file, len_bytes)
    }

    fn file_created(&self, fd: RawFd) {
        (**self).file_created(fd)
    }

    fn recovery_read(&self, file: &File, buf: &mut [u8], position: u64) -> io::Result<()> {
        (**self).recovery_read(file, buf, position)
    }

    fn write_small_file(
        &self,
        dir: PathBuf,
        name: String,
        contents: Vec<u8>,
        atomic: bool,
    ) -> IoFuture {
        (**self).write_small_file(dir, name, contents, atomic)
    }

    fn unlink(&self, path: PathBuf) -> IoFuture {
        (**self).unlink(path)
    }

    fn swap_op(&self, op: SwapOp) -> IoFuture {
        (**self).swap_op(op)
    }

    fn cleaner_step(&self, step: &'static str) -> io::Result<()> {
        (**self).cleaner_step(step)
    }

    fn read(
        &self,
        fd: RawFd,
        buffer: Vec<u8>,
        at: usize,
        len: usize,
        file_position: u64,
    ) -> ReadFuture {
        (**self).read(fd, buffer, at, len, file_position)
    }
}

/// Where [`SwapOp::Create`] leaves the file it created.
pub(crate) type FileSlot = std::sync::Arc<std::sync::Mutex<Option<File>>>;

/// The cleaner's directory operations (see [`IoBackend::swap_op`]).
#[derive(Debug)]
pub(crate) enum SwapOp {
    /// Creates (or truncates) `path` for reading and writing and puts it in `slot`.
    Create {
        /// the new file
        path: PathBuf,
        /// receives the open file
        slot: FileSlot,
    },
    /// Renames `from` over `to`, then fsyncs `dir` (their directory), so the new name is
    /// durable when the operation resolves.
    Rename {
        /// old name
        from: PathBuf,
        /// new name (replaced atomically if it exists)
        to: PathBuf,
        /// the directory holding both
        dir: PathBuf,
    },
}

impl SwapOp {
    /// Does the operation with blocking syscalls (on the blocking pool).
    pub(crate) fn run_blocking(self) -> io::Result<()> {
        match self {
            SwapOp::Create { path, slot } => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                match slot.lock() {
                    Ok(mut slot) => *slot = Some(file),
                    Err(poisoned) => *poisoned.into_inner() = Some(file),
                }
                Ok(())
            }
            SwapOp::Rename { from, to, dir } => {
                std::fs::rename(&from, &to)?;
                File::open(&dir)?.sync_all()
            }
        }
    }
}

/// Writes `dir/name` (see [`IoBackend::write_small_file`]); blocking.
pub(crate) fn write_small_file_blocking(
    dir: &Path,
    name: &str,
    contents: &[u8],
    atomic: bool,
) -> io::Result<()> {
    if !atomic {
        let mut file = File::create(dir.join(name))?;
        file.write_all(contents)?;
        return file.sync_data();
    }
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(contents)?;
    file.sync_data()?;
    std::fs::rename(&temp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Reads exactly `buffer[at..at + len]` from `fd` at `file_position`, one ring read after
/// another until done: a read past the end of the file is UnexpectedEof.
pub(crate) async fn read_exact(
    io: &dyn IoBackend,
    fd: RawFd,
    mut buffer: Vec<u8>,
    at: usize,
    len: usize,
    file_position: u64,
) -> (io::Result<()>, Vec<u8>) {
    let mut done = 0usize;
    while done < len {
        let (result, returned) = io
            .read(
                fd,
                buffer,
                at + done,
                len - done,
                file_position + done as u64,
            )
            .await;
        buffer = returned;
        match result {
            Ok(0) => {
                let eof = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file ends {} bytes into a {len}-byte read at {file_position}",
                        done
                    ),
                );
                return (Err(eof), buffer);
            }
            Ok(read) => done += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return (Err(error), buffer),
        }
    }
    (Ok(()), buffer)
}

/// The production backend: WRITE_FIXED from the registered staging buffer (plain WRITE when
/// registration was refused), linked to FSYNC(DATASYNC) or flagged RWF_DSYNC ([`WriteSync`]).
#[derive(Clone)]
pub(crate) struct RingBackend {
    pub(crate) ring: Ring,
    pub(crate) staging_registered: bool,
    /// Where the work without a ring opcode runs, counted and timed.
    pub(crate) pool: Rc<BlockingPool>,
}

impl IoBackend for RingBackend {
    fn write(
        &self,
        staging: &Rc<AlignedBuffer>,
        write: FileWrite,
        sync: WriteSync,
    ) -> (IoFuture, Option<IoFuture>) {
        assert!(
            write.staging_offset + write.len <= staging.len(),
            "write outside the staging buffer"
        );
        let len = u32::try_from(write.len).unwrap_or(u32::MAX);
        let rw_flags = if sync == WriteSync::Own {
            libc::RWF_DSYNC
        } else {
            0
        };
        // SAFETY: the range lies inside `staging`, which the ring keeps alive (Rc) until the
        // CQE; the writer does not touch the range until this flush's completions are in.
        let ptr = unsafe { staging.as_ptr().add(write.staging_offset) };
        let write_entry = if self.staging_registered {
            ops::WriteFixed::new(types::Fd(write.fd), ptr, len, 0)
                .offset(write.file_position)
                .rw_flags(rw_flags)
                .build()
        } else {
            ops::Write::new(types::Fd(write.fd), ptr, len)
                .offset(write.file_position)
                .rw_flags(rw_flags)
                .build()
        };
        if sync == WriteSync::Own {
            // SAFETY: as above.
            let completion = unsafe { self.ring.submit_owned(write_entry, staging.clone()) };
            return own_sync(Box::pin(completion), write.len);
        }
        let mut entries = vec![write_entry];
        if sync == WriteSync::File {
            entries.push(
                ops::Fsync::new(types::Fd(write.fd))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            );
        }
        // SAFETY: as above; the fsync references no memory.
        let mut completions =
            unsafe { self.ring.submit_linked(entries, staging.clone()) }.into_iter();
        let write_done: IoFuture = match completions.next() {
            Some(completion) => Box::pin(completion),
            None => {
                Box::pin(async { Err(io::Error::other("ring returned no completion for a write")) })
            }
        };
        let sync_done = completions
            .next()
            .map(|completion| Box::pin(completion) as IoFuture);
        (write_done, sync_done)
    }

    fn write_vectored(
        &self,
        fd: RawFd,
        file_position: u64,
        pieces: Vec<Bytes>,
        sync: bool,
    ) -> (IoFuture, Option<IoFuture>) {
        let iovecs: Vec<libc::iovec> = pieces
            .iter()
            .map(|piece| libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            })
            .collect();
        // One WRITEV per IOV_MAX iovecs, linked in order, then the fdatasync.
        let mut entries = Vec::new();
        let mut position = file_position;
        for chunk in iovecs.chunks(IOV_MAX) {
            let chunk_bytes: u64 = chunk.iter().map(|iovec| iovec.iov_len as u64).sum();
            entries.push(
                ops::Writev::new(types::Fd(fd), chunk.as_ptr(), chunk.len() as u32)
                    .offset(position)
                    .build(),
            );
            position += chunk_bytes;
        }
        let writes = entries.len();
        if sync {
            entries.push(
                ops::Fsync::new(types::Fd(fd))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            );
        }
        // SAFETY: every iovec points into `pieces` and the iovec array itself; both move into
        // the ring's keep slot (a Vec's heap buffer does not move when the Vec does) and live
        // until the last link finishes.
        let mut completions = unsafe { self.ring.submit_linked(entries, (iovecs, pieces)) };
        let sync_done = if sync {
            completions
                .pop()
                .map(|completion| Box::pin(completion) as IoFuture)
        } else {
            None
        };
        debug_assert_eq!(completions.len(), writes);
        let write_done: IoFuture = Box::pin(async move {
            let mut total = 0i32;
            for completion in completions {
                total = total.saturating_add(completion.await?);
            }
            Ok(total)
        });
        (write_done, sync_done)
    }

    fn fdatasync(&self, fd: RawFd) -> IoFuture {
        let entry = ops::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: fsync references no memory.
        Box::pin(unsafe { self.ring.submit(entry) })
    }

    fn fdatasync_kept(&self, file: Rc<File>) -> IoFuture {
        use std::os::fd::AsRawFd;
        let entry = ops::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: the ring keeps `file` (the descriptor the entry names) open until the
        // operation's last completion, even if this future is dropped first.
        Box::pin(unsafe { self.ring.submit_owned(entry, file) })
    }

    fn truncate(&self, file: File, len_bytes: u64) -> IoFuture {
        self.pool.run(move || file.set_len(len_bytes))
    }

    fn write_small_file(
        &self,
        dir: PathBuf,
        name: String,
        contents: Vec<u8>,
        atomic: bool,
    ) -> IoFuture {
        self.pool
            .run(move || write_small_file_blocking(&dir, &name, &contents, atomic))
    }

    fn unlink(&self, path: PathBuf) -> IoFuture {
        use std::os::unix::ffi::OsStrExt;
        let name = match std::ffi::CString::new(path.as_os_str().as_bytes()) {
            Ok(name) => name,
            Err(error) => {
                let error = io::Error::new(io::ErrorKind::InvalidInput, error);
                return Box::pin(std::future::ready(Err(error)));
            }
        };
        let entry = ops::UnlinkAt::new(types::Fd(libc::AT_FDCWD), name.as_ptr()).build();
        // SAFETY: the path points into `name`'s heap block, which the ring keeps until the
        // CQE (a CString's block does not move with it).
        Box::pin(unsafe { self.ring.submit_owned(entry, name) })
    }

    fn swap_op(&self, op: SwapOp) -> IoFuture {
        self.pool.run(move || op.run_blocking())
    }

    fn read(
        &self,
        fd: RawFd,
        mut buffer: Vec<u8>,
        at: usize,
        len: usize,
        file_position: u64,
    ) -> ReadFuture {
        if at.checked_add(len).is_none_or(|end| end > buffer.len()) {
            let error = io::Error::new(io::ErrorKind::InvalidInput, "read outside its buffer");
            return Box::pin(async move { (Err(error), buffer) });
        }
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        // The heap block a Vec points to does not move when the Vec moves into the Rc, so the
        // pointer stays valid for as long as the ring keeps the Rc.
        let target = buffer[at..].as_mut_ptr();
        let entry = ops::Read::new(types::Fd(fd), target, len)
            .offset(file_position)
            .build();
        let kept = Rc::new(buffer);
        // SAFETY: `target` points into `kept`'s heap block, which the ring keeps alive until
        // the read's CQE; nothing else reads or writes the block before the read resolves.
        let completion = unsafe { self.ring.submit_shared(entry, kept.clone()) };
        Box::pin(async move {
            let result = completion.await.map(|read| read as usize);
            // Resolved normally means finished and the ring has dropped its reference; after
            // the ring failed the kernel may still hold the block, so the caller gets a copy.
            let buffer =
                Rc::try_unwrap(kept).unwrap_or_else(|still_shared| (*still_shared).clone());
            (result, buffer)
        })
    }
}

/// Serves reads through the wrapped backend's [`IoBackend::recovery_read`] on the calling
/// thread: only for recovery at partition open, the documented exception to "never block the
/// shard", so a fault plan sees (and can fail) these reads like recovery's own. Its futures
/// are ready when returned, so [`run_ready`] drives them; it refuses writes.
pub(crate) struct RecoveryReads<'a>(pub(crate) &'a dyn IoBackend);

impl IoBackend for RecoveryReads<'_> {
    fn write(
        &self,
        _staging: &Rc<AlignedBuffer>,
        _write: FileWrite,
        _sync: WriteSync,
    ) -> (IoFuture, Option<IoFuture>) {
        (refused_write(), None)
    }

    fn write_vectored(
        &self,
        _fd: RawFd,
        _file_position: u64,
        _pieces: Vec<Bytes>,
        _sync: bool,
    ) -> (IoFuture, Option<IoFuture>) {
        (refused_write(), None)
    }

    fn fdatasync(&self, _fd: RawFd) -> IoFuture {
        refused_write()
    }

    fn truncate(&self, _file: File, _len_bytes: u64) -> IoFuture {
        refused_write()
    }

    fn recovery_read(&self, file: &File, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.0.recovery_read(file, buf, position)
    }

    fn write_small_file(
        &self,
        _dir: PathBuf,
        _name: String,
        _contents: Vec<u8>,
        _atomic: bool,
    ) -> IoFuture {
        refused_write()
    }

    fn unlink(&self, _path: PathBuf) -> IoFuture {
        refused_write()
    }

    fn swap_op(&self, _op: SwapOp) -> IoFuture {
        refused_write()
    }

    /// Reads all `len` bytes or fails: recovery reads are exact, so a file shorter than asked
    /// is an UnexpectedEof error rather than a short count.
    fn read(
        &self,
        fd: RawFd,
        mut buffer: Vec<u8>,
        at: usize,
        len: usize,
        file_position: u64,
    ) -> ReadFuture {
        let result = match buffer.get_mut(at..at.saturating_add(len)) {
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read outside its buffer",
            )),
            Some(target) => {
                // SAFETY: the caller keeps `fd` open for the call; ManuallyDrop keeps this
                // borrowed view from closing it.
                let file = std::mem::ManuallyDrop::new(unsafe {
                    <File as std::os::fd::FromRawFd>::from_raw_fd(fd)
                });
                self.0
                    .recovery_read(&file, target, file_position)
                    .map(|()| len)
            }
        };
        Box::pin(std::future::ready((result, buffer)))
    }
}

/// Splits the one result of a [`WriteSync::Own`] write of `len` bytes into the write's and
/// the sync's: the sync succeeded when the whole write did, failed with the write's error when
/// it failed (the error may be the sync's), and is -ECANCELED for a short write (nothing past
/// it was written, and the writer fails the write anyway). The write's future must be polled
/// first (the writer awaits writes before syncs); dropped unpolled, the sync reports failure.
pub(crate) fn own_sync(written: IoFuture, len: usize) -> (IoFuture, Option<IoFuture>) {
    let (result_tx, result_rx) = tokio::sync::oneshot::channel::<io::Result<i32>>();
    let write_done: IoFuture = Box::pin(async move {
        let result = written.await;
        let _ = result_tx.send(match &result {
            Ok(bytes) => Ok(*bytes),
            Err(error) => Err(copy_error(error)),
        });
        result
    });
    let sync_done: IoFuture = Box::pin(async move {
        match result_rx.await {
            Ok(Ok(bytes)) if usize::try_from(bytes).is_ok_and(|bytes| bytes == len) => Ok(0),
            Ok(Ok(_)) => Err(io::Error::from_raw_os_error(libc::ECANCELED)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(io::Error::other("write dropped before it completed")),
        }
    });
    (write_done, Some(sync_done))
}

/// An io::Error with the same errno (or kind and message): io::Error is not Clone.
pub(crate) fn copy_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}

fn refused_write() -> IoFuture {
    Box::pin(std::future::ready(Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "recovery reads only read",
    ))))
}

/// Drives a future whose every await is already ready (one built on [`RecoveryReads`]) to its
/// end on the calling thread.
pub(crate) fn run_ready<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(io::Error::other(
            "a blocking read went pending; it must be ready at once",
        )),
    }
}
