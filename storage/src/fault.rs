//! Fault injection for tests: a [`FaultPlan`] handed to
//! [`ShardStorage::open_with_faults`](crate::ShardStorage::open_with_faults) makes the writer's
//! I/O fail on demand (EIO, ENOSPC, torn writes, failed fdatasync) while everything else runs
//! on the real ring and real files.
//!
//! Owns the plan and the wrapping backend. Must never be used by the broker in production; it
//! only changes behaviour when a test arms a fault.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use bytes::Bytes;

use crate::buffer::AlignedBuffer;
use crate::io::{FileWrite, IoBackend, IoFuture};

/// One armed fault, consumed by the next matching operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The next write fails with this errno and writes nothing.
    WriteError(i32),
    /// The next write stores only its first `bytes`, then fails with EIO.
    TornWrite(usize),
    /// The next fdatasync fails with this errno (after its write succeeded).
    SyncError(i32),
}

#[derive(Debug, Default)]
struct PlanState {
    faults: VecDeque<Fault>,
    /// While set, every write fails with ENOSPC (a full disk).
    disk_full: bool,
    writes: u64,
    syncs: u64,
}

/// A shared, mutable list of faults to inject. Clone it to keep arming faults after open.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan(Rc<RefCell<PlanState>>);

impl FaultPlan {
    /// A plan with no faults armed.
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// The next write fails with `errno` (e.g. `libc::EIO`) without writing.
    pub fn fail_next_write(&self, errno: i32) {
        self.0
            .borrow_mut()
            .faults
            .push_back(Fault::WriteError(errno));
    }

    /// The next write stores only its first `bytes` bytes and then reports EIO.
    pub fn tear_next_write(&self, bytes: usize) {
        self.0
            .borrow_mut()
            .faults
            .push_back(Fault::TornWrite(bytes));
    }

    /// The next fdatasync fails with `errno`.
    pub fn fail_next_sync(&self, errno: i32) {
        self.0
            .borrow_mut()
            .faults
            .push_back(Fault::SyncError(errno));
    }

    /// While `full`, every write fails with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.0.borrow_mut().disk_full = full;
    }

    /// Writes and fdatasyncs submitted so far (including failed ones).
    pub fn operation_counts(&self) -> (u64, u64) {
        let state = self.0.borrow();
        (state.writes, state.syncs)
    }

    fn take_write_fault(&self) -> Option<Fault> {
        let mut state = self.0.borrow_mut();
        state.writes += 1;
        if state.disk_full {
            return Some(Fault::WriteError(libc::ENOSPC));
        }
        let position = state
            .faults
            .iter()
            .position(|fault| matches!(fault, Fault::WriteError(_) | Fault::TornWrite(_)))?;
        state.faults.remove(position)
    }

    fn take_sync_fault(&self) -> Option<i32> {
        let mut state = self.0.borrow_mut();
        state.syncs += 1;
        let position = state
            .faults
            .iter()
            .position(|fault| matches!(fault, Fault::SyncError(_)))?;
        match state.faults.remove(position) {
            Some(Fault::SyncError(errno)) => Some(errno),
            _ => None,
        }
    }
}

/// Wraps a backend and applies a [`FaultPlan`].
pub(crate) struct FaultBackend<B> {
    pub(crate) inner: B,
    pub(crate) plan: FaultPlan,
}

fn failed(errno: i32) -> IoFuture {
    Box::pin(async move { Err(io::Error::from_raw_os_error(errno)) })
}

/// A torn write: lets the partial write land, then reports the failure the device gave.
fn torn(written: IoFuture) -> IoFuture {
    Box::pin(async move {
        let _ = written.await;
        Err(io::Error::from_raw_os_error(libc::EIO))
    })
}

impl<B> FaultBackend<B> {
    /// Runs `write(sync)` with the plan's next sync fault applied: a failing fdatasync still
    /// lets the write itself happen.
    fn with_sync_fault(
        &self,
        sync: bool,
        write: impl FnOnce(bool) -> (IoFuture, Option<IoFuture>),
    ) -> (IoFuture, Option<IoFuture>) {
        if !sync {
            return write(false);
        }
        match self.plan.take_sync_fault() {
            None => write(true),
            Some(errno) => {
                let (written, _) = write(false);
                (written, Some(failed(errno)))
            }
        }
    }
}

impl<B: IoBackend> IoBackend for FaultBackend<B> {
    fn write(
        &self,
        staging: &Rc<AlignedBuffer>,
        write: FileWrite,
        sync: bool,
    ) -> (IoFuture, Option<IoFuture>) {
        let canceled = || sync.then(|| failed(libc::ECANCELED));
        match self.plan.take_write_fault() {
            Some(Fault::WriteError(errno)) => return (failed(errno), canceled()),
            Some(Fault::TornWrite(bytes)) => {
                let torn_write = FileWrite {
                    len: bytes.min(write.len),
                    ..write
                };
                let (written, _) = self.inner.write(staging, torn_write, false);
                return (torn(written), canceled());
            }
            Some(Fault::SyncError(_)) | None => {}
        }
        self.with_sync_fault(sync, |sync| self.inner.write(staging, write, sync))
    }

    fn write_vectored(
        &self,
        fd: RawFd,
        file_position: u64,
        pieces: Vec<Bytes>,
        sync: bool,
    ) -> (IoFuture, Option<IoFuture>) {
        let canceled = || sync.then(|| failed(libc::ECANCELED));
        match self.plan.take_write_fault() {
            Some(Fault::WriteError(errno)) => return (failed(errno), canceled()),
            Some(Fault::TornWrite(bytes)) => {
                let mut left = bytes;
                let mut torn_pieces = Vec::new();
                for piece in pieces {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(piece.len());
                    torn_pieces.push(piece.slice(..take));
                    left -= take;
                }
                let (written, _) = self
                    .inner
                    .write_vectored(fd, file_position, torn_pieces, false);
                return (torn(written), canceled());
            }
            Some(Fault::SyncError(_)) | None => {}
        }
        self.with_sync_fault(sync, |sync| {
            self.inner.write_vectored(fd, file_position, pieces, sync)
        })
    }

    fn fdatasync(&self, fd: RawFd) -> IoFuture {
        match self.plan.take_sync_fault() {
            Some(errno) => failed(errno),
            None => self.inner.fdatasync(fd),
        }
    }
}
