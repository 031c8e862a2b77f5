//! The shard's raw io_uring: the ONLY module that touches the `io-uring` crate.
//!
//! Owns one `IoUring` per shard, the eventfd that bridges its completions into the shard's
//! tokio reactor (`AsyncFd`), the table of in-flight operations keyed by `user_data`, and the
//! buffers registered with the ring. Submission is batched: `submit*` only queue SQEs; the
//! ring's driver task enters the kernel once per reactor turn for everything queued.
//!
//! Must never: block the shard's thread (except in `Drop`, which waits a bounded time for
//! in-flight operations), run completion callbacks inline (completions wake futures, which
//! run later), or free memory an in-flight operation may still touch: whatever an operation
//! reads or writes is kept in its table slot until its last CQE arrives, even when the
//! awaiting future was dropped.
//!
//! A failed `io_uring_enter`: EBUSY, EAGAIN and EINTR are transient (the completion queue is
//! backed up, the kernel is short of memory for a moment, a signal arrived) and are retried
//! after reaping. Any other errno means the ring itself is unusable (EBADF, EFAULT, EINVAL,
//! ENXIO after teardown, ...), and retrying would spin the shard for ever. The ring then
//! *fails*: every in-flight and later operation resolves with that error (memory the kernel
//! may still touch stays kept), one `error!` line gives the errno, and [`Ring::failed`]
//! resolves. The broker answers that by exiting non-zero (see `src/server.rs`): a shard
//! without its ring can neither write nor sync, and Kafka itself halts a broker whose every
//! log directory failed rather than keep serving half of its partitions; a supervisor's
//! restart gets a fresh ring and recovers the logs, which a half-alive process never would.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// A submission queue entry, re-exported so callers build entries with the same crate version.
pub use io_uring::squeue::Entry;
pub use io_uring::{opcode as ops, types};

/// Smallest submission queue a ring gets, whatever was asked for.
pub const RING_ENTRIES_MIN: u32 = 8;

/// A handle to the shard's storage ring. Cheap to clone; single-threaded.
#[derive(Clone)]
pub struct Ring(Rc<RingShared>);

struct RingShared {
    uring: RefCell<IoUring>,
    ops: RefCell<OpTable>,
    /// SQEs pushed since the last `io_uring_enter`.
    queued_sqes: Cell<usize>,
    /// Wakes the driver task: submissions are waiting, or the ring is being dropped.
    driver_wake: Rc<Notify>,
    /// Kept alive for the ring's lifetime; the driver task watches it through `AsyncFd`.
    _eventfd_keepalive: Rc<AsyncFd<OwnedFd>>,
    /// Set once a non-transient `io_uring_enter` error failed the ring: its errno.
    failed_errno: Cell<Option<i32>>,
    /// Woken when the ring fails.
    failed_notify: Notify,
    /// Tests: the next `io_uring_enter` fails with this errno instead of entering the kernel.
    injected_enter_errno: Cell<Option<i32>>,
}

/// How a failed `io_uring_enter` is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnterError {
    /// Worth retrying once completions are reaped (EBUSY, EAGAIN) or at once (EINTR).
    Transient,
    /// The ring is unusable: it has been failed.
    Fatal,
}

/// Whether a failed `io_uring_enter` may be retried.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
    )
}

/// One operation's bookkeeping between submission and its last CQE.
#[derive(Default)]
struct Slot {
    in_use: bool,
    /// Result of the first CQE that is not a zero-copy notification.
    result: Option<i32>,
    /// The last CQE (one without IORING_CQE_F_MORE) has arrived.
    finished: bool,
    waker: Option<Waker>,
    /// Memory the kernel may touch until `finished`.
    keep: Option<Rc<dyn Any>>,
    /// The awaiting future was dropped; free the slot when finished.
    abandoned: bool,
}

#[derive(Default)]
struct OpTable {
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_kernel: usize,
}

impl OpTable {
    fn insert(&mut self, keep: Option<Rc<dyn Any>>) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        assert!(!slot.in_use, "free list handed out a busy slot");
        *slot = Slot {
            in_use: true,
            keep,
            ..Slot::default()
        };
        self.in_kernel += 1;
        index
    }

    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        assert!(slot.in_use && slot.finished, "releasing an unfinished slot");
        *slot = Slot::default();
        self.free.push(index);
    }
}

impl Ring {
    /// Creates a ring with `entries` submission entries and spawns its driver task on the
    /// current tokio runtime (must be called inside a LocalSet, e.g. `tokio_uring::start`).
    /// EPERM / ENOSYS from the kernel come back unchanged so the caller can say io_uring is
    /// refused.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let uring = IoUring::builder().build(entries.max(RING_ENTRIES_MIN))?;
        // SAFETY: plain syscall; the returned fd is checked before being owned.
        let raw_eventfd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw_eventfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw_eventfd` is a fresh fd that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw_eventfd) };
        uring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and unchanged for
        // its whole life.
        let eventfd = Rc::new(unsafe { AsyncFd::register(eventfd) }.map_err(io::Error::from)?);
        let driver_wake = Rc::new(Notify::new());
        let shared = Rc::new(RingShared {
            uring: RefCell::new(uring),
            ops: RefCell::new(OpTable::default()),
            queued_sqes: Cell::new(0),
            driver_wake: driver_wake.clone(),
            _eventfd_keepalive: eventfd.clone(),
            failed_errno: Cell::new(None),
            failed_notify: Notify::new(),
            injected_enter_errno: Cell::new(None),
        });
        tokio::task::spawn_local(drive(Rc::downgrade(&shared), eventfd, driver_wake));
        Ok(Ring(shared))
    }

    /// Queues one SQE; the returned future resolves with its CQE result (negative results
    /// become `io::Error`). For operations with several CQEs (SEND_ZC: result, then a
    /// notification), it resolves at the result, so the next send need not wait for the
    /// peer's acknowledgement; the ring keeps the operation's memory until the last CQE.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until the operation finishes, which may be
    /// after the future is dropped. Use [`Ring::submit_owned`] to hand such memory to the ring.
    pub unsafe fn submit(&self, entry: Entry) -> Completion {
        self.push(entry, None)
    }

    /// Like [`Ring::submit`], keeping `keep` (the buffers `entry` points into) alive until the
    /// kernel is done with them, whether or not the future is still awaited.
    ///
    /// # Safety
    /// Every pointer in `entry` must point into `keep` or into memory that outlives the ring
    /// (such as registered buffers).
    pub unsafe fn submit_owned<T: 'static>(&self, entry: Entry, keep: T) -> Completion {
        self.push(entry, Some(Rc::new(keep)))
    }

    /// [`Ring::submit_owned`] with a keep the caller already shares: the ring holds a clone
    /// of `keep` (no second allocation around it), so the caller can take the memory back
    /// with `Rc::try_unwrap` once the operation has finished.
    ///
    /// # Safety
    /// As for [`Ring::submit_owned`].
    pub unsafe fn submit_shared(&self, entry: Entry, keep: Rc<dyn Any>) -> Completion {
        self.push(entry, Some(keep))
    }

    /// Queues `entries` as one linked chain (IOSQE_IO_LINK on all but the last): each runs
    /// only after the previous succeeded; a failure cancels the rest (-ECANCELED). Returns one
    /// completion per entry, in order, so callers can act on early links (e.g. a write) before
    /// later ones (its fdatasync) finish. A chain longer than the submission queue is refused
    /// (every completion fails with EINVAL) rather than split.
    ///
    /// # Safety
    /// As for [`Ring::submit_owned`], for every entry; `keep` is held until all have finished.
    pub unsafe fn submit_linked<T: 'static>(
        &self,
        entries: Vec<Entry>,
        keep: T,
    ) -> Vec<Completion> {
        let count = entries.len();
        // The whole chain must sit in the SQ at once: the kernel ends a chain at the end of
        // each io_uring_enter batch, so a split chain would run its halves unordered (an
        // fdatasync could overtake the write it must follow). Refuse rather than split.
        if !self.make_room(count) {
            if let Some(errno) = self.0.failed_errno.get() {
                return (0..count).map(|_| self.refused(errno)).collect();
            }
            tracing::error!(
                links = count,
                "linked chain does not fit the submission queue; refused"
            );
            return (0..count).map(|_| self.refused(libc::EINVAL)).collect();
        }
        // Every link holds the kept memory: the last link's result is not the chain's last
        // CQE when an earlier link is a SEND_ZC, whose notification may come after it.
        let keep: Rc<dyn Any> = Rc::new(keep);
        let mut completions = Vec::with_capacity(count);
        for (index, entry) in entries.into_iter().enumerate() {
            let last = index + 1 == count;
            let entry = if last {
                entry
            } else {
                entry.flags(squeue::Flags::IO_LINK)
            };
            completions.push(self.push(entry, Some(keep.clone())));
        }
        completions
    }

    /// Queues a linked chain and resolves with every link's result, in order.
    ///
    /// # Safety
    /// As for [`Ring::submit_linked`].
    pub unsafe fn submit_chain<T: 'static>(
        &self,
        entries: Vec<Entry>,
        keep: T,
    ) -> impl Future<Output = Vec<io::Result<i32>>> {
        let completions = self.submit_linked(entries, keep);
        async move {
            let mut results = Vec::with_capacity(completions.len());
            for completion in completions {
                results.push(completion.await);
            }
            results
        }
    }

    /// Registers `buffers` as the ring's fixed buffers (WRITE_FIXED / READ_FIXED index = their
    /// position). The kernel allows one registration per ring, and `ShardStorage::open`
    /// makes it (its staging buffer is index 0): a second call fails with EBUSY.
    ///
    /// # Safety
    /// The memory must stay valid and unmoved for as long as the ring lives.
    pub unsafe fn register_buffers(&self, buffers: &[libc::iovec]) -> io::Result<()> {
        self.0.uring.borrow().submitter().register_buffers(buffers)
    }

    /// Whether the running kernel supports `opcode` (for callers that probe before use).
    pub fn is_supported(&self, opcode: u8) -> bool {
        let mut probe = io_uring::Probe::new();
        if self
            .0
            .uring
            .borrow()
            .submitter()
            .register_probe(&mut probe)
            .is_err()
        {
            return false;
        }
        probe.is_supported(opcode)
    }

    /// Operations submitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.0.ops.borrow().in_kernel
    }

    /// The error that failed the ring, if one did (see the module doc).
    pub fn failure(&self) -> Option<io::Error> {
        self.0.failed_errno.get().map(io::Error::from_raw_os_error)
    }

    /// Resolves with the error once the ring has failed (at once if it already has).
    pub fn failed(&self) -> impl Future<Output = io::Error> + 'static {
        let shared = self.0.clone();
        async move {
            loop {
                let notified = shared.failed_notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(errno) = shared.failed_errno.get() {
                    return io::Error::from_raw_os_error(errno);
                }
                notified.await;
            }
        }
    }

    /// Makes the next `io_uring_enter` fail with `errno` without entering the kernel, as a
    /// broken ring would: for tests of the failure path.
    #[doc(hidden)]
    pub fn inject_enter_error(&self, errno: i32) {
        self.0.injected_enter_errno.set(Some(errno));
    }

    /// Makes room for `count` SQEs in the submission queue; false when that is impossible
    /// (more than the queue holds, or the kernel keeps refusing to take entries).
    fn make_room(&self, count: usize) -> bool {
        for _ in 0..8 {
            let free = {
                let mut uring = self.0.uring.borrow_mut();
                let sq = uring.submission();
                if count > sq.capacity() {
                    return false;
                }
                sq.capacity() - sq.len()
            };
            if free >= count {
                return true;
            }
            if self.0.failed_errno.get().is_some() {
                return false;
            }
            // Entering the kernel early only moves SQEs it would take a moment later anyway.
            match self.0.enter("making room in the SQ") {
                Ok(()) => {}
                // EBUSY: completions are backed up; reaping lets the kernel go on.
                Err(EnterError::Transient) => self.0.reap(),
                Err(EnterError::Fatal) => return false,
            }
        }
        false
    }

    /// A completion for an operation that was never submitted.
    fn refused(&self, errno: i32) -> Completion {
        let index = {
            let mut ops = self.0.ops.borrow_mut();
            let index = ops.insert(None);
            let slot = &mut ops.slots[index];
            slot.result = Some(-errno);
            slot.finished = true;
            index
        };
        Completion {
            ring: self.0.clone(),
            index,
            done: false,
        }
    }

    fn push(&self, entry: Entry, keep: Option<Rc<dyn Any>>) -> Completion {
        if let Some(errno) = self.0.failed_errno.get() {
            return self.refused(errno);
        }
        let index = self.0.ops.borrow_mut().insert(keep);
        let entry = entry.user_data(index as u64);
        loop {
            // SAFETY: the caller vouched for the entry's pointers (see `submit`).
            let pushed = unsafe { self.0.uring.borrow_mut().submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // SQ full: hand what is queued to the kernel, then retry.
            match self.0.enter("the SQ was full") {
                Ok(()) => {}
                // EBUSY: the CQ is backed up; reap before retrying.
                Err(EnterError::Transient) => self.0.reap(),
                Err(EnterError::Fatal) => {
                    // The ring failed, which gave this slot the error; the entry never reached
                    // the SQ, so nothing in the kernel holds its memory.
                    let mut ops = self.0.ops.borrow_mut();
                    let slot = &mut ops.slots[index];
                    slot.finished = true;
                    slot.keep = None;
                    break;
                }
            }
        }
        self.0.queued_sqes.set(self.0.queued_sqes.get() + 1);
        self.0.driver_wake.notify_one();
        Completion {
            ring: self.0.clone(),
            index,
            done: false,
        }
    }
}

impl RingShared {
    /// One `io_uring_enter` for everything queued. A transient error is left to the caller
    /// to retry; any other fails the ring (see the module doc).
    fn enter(&self, why: &'static str) -> Result<(), EnterError> {
        if self.failed_errno.get().is_some() {
            return Err(EnterError::Fatal);
        }
        let result = match self.injected_enter_errno.take() {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => self.uring.borrow().submit(),
        };
        match result {
            Ok(_) => {
                self.queued_sqes.set(0);
                Ok(())
            }
            Err(error) if is_transient(&error) => Err(EnterError::Transient),
            Err(error) => {
                self.fail(&error, why);
                Err(EnterError::Fatal)
            }
        }
    }

    /// Fails the ring: every operation without a result gets `error`; later ones are refused
    /// with it. Kept memory stays kept, since the kernel may still complete what it holds.
    fn fail(&self, error: &io::Error, why: &'static str) {
        let errno = error.raw_os_error().unwrap_or(libc::EIO);
        if self.failed_errno.get().is_some() {
            return;
        }
        self.failed_errno.set(Some(errno));
        let mut wakers = Vec::new();
        let mut failed_operations = 0usize;
        {
            let mut ops = self.ops.borrow_mut();
            for slot in ops.slots.iter_mut() {
                if slot.in_use && !slot.finished && slot.result.is_none() {
                    slot.result = Some(-errno);
                    failed_operations += 1;
                    wakers.extend(slot.waker.take());
                }
            }
        }
        tracing::error!(
            errno,
            %error,
            while_ = why,
            failed_operations,
            "io_uring_enter failed with a non-transient error: the storage ring is failed and \
             every pending and later operation on it fails"
        );
        for waker in wakers {
            waker.wake();
        }
        self.failed_notify.notify_waiters();
    }

    /// Enters the kernel once for every SQE queued since the last call.
    fn submit_queued(&self) {
        if self.queued_sqes.get() == 0 {
            return;
        }
        if self.enter("submitting queued operations") == Err(EnterError::Transient) {
            // The kernel will take them after we reap; the driver retries next turn.
            self.driver_wake.notify_one();
        }
    }

    /// Moves every available CQE into its slot and wakes the waiting futures.
    fn reap(&self) {
        loop {
            self.reap_once();
            // With a full CQ the kernel parks further CQEs in its overflow list (NODROP) and
            // only moves them back on an io_uring_enter: do it now, or they wait forever.
            let overflowed = self.uring.borrow_mut().submission().cq_overflow();
            if !overflowed {
                return;
            }
            match self.enter("flushing overflowed completions") {
                Ok(()) => {}
                Err(EnterError::Transient) => {
                    // Try again on the driver's next turn rather than spin here.
                    self.driver_wake.notify_one();
                    return;
                }
                Err(EnterError::Fatal) => return,
            }
        }
    }

    fn reap_once(&self) {
        let mut wakers: Vec<Waker> = Vec::new();
        {
            let mut uring = self.uring.borrow_mut();
            let mut ops = self.ops.borrow_mut();
            let mut to_release = Vec::new();
            for cqe in uring.completion() {
                let index = cqe.user_data() as usize;
                let Some(slot) = ops.slots.get_mut(index) else {
                    tracing::error!(user_data = index, "CQE for an unknown operation");
                    continue;
                };
                if !slot.in_use {
                    tracing::error!(user_data = index, "CQE for a finished operation");
                    continue;
                }
                let flags = cqe.flags();
                let first_result = !cqueue::notif(flags) && slot.result.is_none();
                if first_result {
                    slot.result = Some(cqe.result());
                }
                if cqueue::more(flags) {
                    // The result is in; the kernel still holds the memory (zero-copy pages
                    // until their notification): wake the waiter, keep the slot.
                    if first_result {
                        if let Some(waker) = slot.waker.take() {
                            wakers.push(waker);
                        }
                    }
                    continue;
                }
                slot.finished = true;
                slot.keep = None;
                if slot.abandoned {
                    to_release.push(index);
                } else if let Some(waker) = slot.waker.take() {
                    wakers.push(waker);
                }
            }
            for index in to_release {
                ops.in_kernel -= 1;
                ops.release(index);
            }
            // Finished-but-unclaimed slots still count until their future takes them.
        }
        for waker in wakers {
            waker.wake();
        }
    }
}

/// The ring's driver: enters the kernel for queued SQEs and reaps CQEs when the eventfd fires.
async fn drive(shared: Weak<RingShared>, eventfd: Rc<AsyncFd<OwnedFd>>, wake: Rc<Notify>) {
    loop {
        tokio::select! {
            guard = eventfd.readable() => {
                match guard {
                    Ok(mut guard) => {
                        drain_eventfd(guard.get_inner().as_raw_fd());
                        guard.clear_ready();
                    }
                    Err(error) => {
                        tracing::error!(%error, "io_uring eventfd failed; storage ring stops");
                        return;
                    }
                }
            }
            _ = wake.notified() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.submit_queued();
        shared.reap();
    }
}

fn drain_eventfd(fd: RawFd) {
    let mut counter = [0u8; 8];
    // A nonblocking read resets the counter; EAGAIN just means it was already zero.
    // SAFETY: reads at most 8 bytes into a local 8-byte buffer.
    let _ = unsafe { libc::read(fd, counter.as_mut_ptr().cast(), counter.len()) };
}

impl Drop for RingShared {
    fn drop(&mut self) {
        self.driver_wake.notify_one();
        let outstanding = self.ops.get_mut().in_kernel;
        if outstanding == 0 {
            return;
        }
        // The kernel may still touch kept memory: cancel everything and wait (bounded).
        let uring = self.uring.get_mut();
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(u64::MAX);
        // SAFETY: the cancel entry references no memory.
        let _ = unsafe { uring.submission().push(&cancel) };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let ops = self.ops.get_mut();
        while ops.slots.iter().any(|slot| slot.in_use && !slot.finished)
            && std::time::Instant::now() < deadline
        {
            let timeout = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&timeout);
            let _ = uring.submitter().submit_with_args(1, &args);
            for cqe in uring.completion() {
                if let Some(slot) = ops.slots.get_mut(cqe.user_data() as usize) {
                    if !cqueue::more(cqe.flags()) {
                        slot.finished = true;
                        slot.keep = None;
                    }
                }
            }
        }
        for slot in ops.slots.iter_mut() {
            if slot.in_use && !slot.finished {
                // Leaking is the only safe choice for memory the kernel may still write.
                if let Some(keep) = slot.keep.take() {
                    std::mem::forget(keep);
                }
            }
        }
    }
}

/// The result of one submitted operation. Dropping it does not cancel the operation; the
/// ring keeps its memory until the kernel is done.
#[must_use = "an operation's result says whether it happened"]
pub struct Completion {
    ring: Rc<RingShared>,
    index: usize,
    done: bool,
}

impl Future for Completion {
    type Output = io::Result<i32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<i32>> {
        assert!(!self.done, "Completion polled after it resolved");
        let index = self.index;
        let mut ops = self.ring.ops.borrow_mut();
        let slot = &mut ops.slots[index];
        let result = match (slot.result, slot.finished) {
            (Some(result), false) => {
                // More CQEs to come (a SEND_ZC's notification): the slot and its kept memory
                // stay until then and are freed by the reaper, as for a dropped future.
                slot.abandoned = true;
                slot.waker = None;
                result
            }
            (result, true) => {
                ops.in_kernel -= 1;
                ops.release(index);
                result.unwrap_or(-libc::EIO)
            }
            (None, false) => {
                match &slot.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        };
        drop(ops);
        self.done = true;
        Poll::Ready(if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result)
        })
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut ops = self.ring.ops.borrow_mut();
        let finished = ops.slots[self.index].finished;
        if finished {
            ops.in_kernel -= 1;
            ops.release(self.index);
        } else {
            let slot = &mut ops.slots[self.index];
            slot.abandoned = true;
            slot.waker = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn write_then_fsync_chain_and_read_back() {
        tokio_uring::start(async {
            let ring = Ring::new(16).expect("ring");
            let dir = tempfile::tempdir().expect("tempdir");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.path().join("f"))
                .expect("open");
            let data = b"hello ring".to_vec();
            let write = opcode::Write::new(
                types::Fd(file.as_raw_fd()),
                data.as_ptr(),
                data.len() as u32,
            )
            .offset(3)
            .build();
            let sync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            // SAFETY: `data` is moved into the ring's keep slot.
            let results = unsafe { ring.submit_chain(vec![write, sync], data) }.await;
            assert_eq!(results[0].as_ref().expect("write"), &10);
            assert_eq!(results[1].as_ref().expect("fsync"), &0);
            let contents = std::fs::read(dir.path().join("f")).expect("read");
            assert_eq!(&contents[3..], b"hello ring");
            assert_eq!(ring.in_flight(), 0);
        });
    }

    #[test]
    fn error_results_become_io_errors_and_abandoned_ops_are_freed() {
        tokio_uring::start(async {
            let ring = Ring::new(8).expect("ring");
            let sync = opcode::Fsync::new(types::Fd(-1)).build();
            // SAFETY: no memory referenced.
            let error = unsafe { ring.submit(sync) }.await.expect_err("bad fd");
            assert_eq!(error.raw_os_error(), Some(libc::EBADF));
            let nop = opcode::Nop::new().build();
            // SAFETY: no memory referenced.
            drop(unsafe { ring.submit_owned(nop, vec![0u8; 16]) });
            for _ in 0..10 {
                tokio::task::yield_now().await;
                if ring.in_flight() == 0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(ring.in_flight(), 0);
        });
    }

    #[test]
    fn send_zc_resolves_at_result_keeps_memory_until_notified_and_splices_file_bytes() {
        use std::io::Read;
        tokio_uring::start(async {
            let ring = Ring::new(16).expect("ring");
            if !ring.is_supported(opcode::SendZc::CODE) || !ring.is_supported(opcode::Splice::CODE)
            {
                eprintln!("skipped: kernel lacks SEND_ZC or SPLICE");
                return;
            }
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
            let address = listener.local_addr().expect("address");
            let reader = std::thread::spawn(move || {
                let (mut socket, _) = listener.accept().expect("accept");
                let mut received = Vec::new();
                socket.read_to_end(&mut received).expect("read");
                received
            });
            let client = std::net::TcpStream::connect(address).expect("connect");
            let payload: Vec<u8> = (0..200_000u32).map(|index| (index % 251) as u8).collect();
            let expected = payload.clone();
            let send = opcode::SendZc::new(
                types::Fd(client.as_raw_fd()),
                payload.as_ptr(),
                payload.len() as u32,
            )
            .build();
            let kept = Rc::new(());
            // SAFETY: `payload` moves into the ring and lives until the notification CQE.
            let sent = unsafe { ring.submit_owned(send, (payload, kept.clone())) }
                .await
                .expect("send_zc");
            assert!(sent > 0);
            // The result came first; the memory goes only with the notification.
            for _ in 0..500 {
                if ring.in_flight() == 0 {
                    break;
                }
                assert_eq!(
                    Rc::strong_count(&kept),
                    2,
                    "memory freed before the notification"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(ring.in_flight(), 0, "the notification never came");
            assert_eq!(
                Rc::strong_count(&kept),
                1,
                "the slot kept the memory after its last CQE"
            );

            // The rest through a file -> pipe -> socket splice, as the fetch path does.
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("segment");
            std::fs::write(&path, &expected[sent as usize..]).expect("write file");
            let file = std::fs::File::open(&path).expect("open");
            let mut pipe_fds = [0i32; 2];
            // SAFETY: pipe fills the two-element array.
            assert_eq!(unsafe { libc::pipe(pipe_fds.as_mut_ptr()) }, 0);
            let mut offset = 0i64;
            let remaining = expected.len() as i64 - i64::from(sent);
            while offset < remaining {
                let chunk = (remaining - offset).min(64 << 10) as u32;
                let to_pipe = opcode::Splice::new(
                    types::Fd(file.as_raw_fd()),
                    offset,
                    types::Fd(pipe_fds[1]),
                    -1,
                    chunk,
                )
                .build();
                let to_socket = opcode::Splice::new(
                    types::Fd(pipe_fds[0]),
                    -1,
                    types::Fd(client.as_raw_fd()),
                    -1,
                    chunk,
                )
                .build();
                // SAFETY: splices reference descriptors only.
                let results = unsafe { ring.submit_chain(vec![to_pipe, to_socket], ()) }.await;
                let moved = *results[0].as_ref().expect("splice in");
                assert_eq!(
                    results[1].as_ref().expect("splice out"),
                    &moved,
                    "short splice to the socket"
                );
                offset += i64::from(moved);
            }
            // SAFETY: closing the pipe fds we created.
            unsafe {
                libc::close(pipe_fds[0]);
                libc::close(pipe_fds[1]);
            }
            drop(client);
            let received = reader.join().expect("reader");
            assert!(
                received == expected,
                "socket received {} of {} bytes",
                received.len(),
                expected.len()
            );
        });
    }

    #[test]
    fn a_chain_longer_than_the_queue_is_refused_not_split() {
        tokio_uring::start(async {
            let ring = Ring::new(8).expect("ring");
            let entries: Vec<Entry> = (0..9).map(|_| opcode::Nop::new().build()).collect();
            // SAFETY: no memory referenced.
            let results = unsafe { ring.submit_chain(entries, ()) }.await;
            assert_eq!(results.len(), 9);
            assert!(results.iter().all(|result| result
                .as_ref()
                .err()
                .and_then(io::Error::raw_os_error)
                == Some(libc::EINVAL)));
            let entries: Vec<Entry> = (0..8).map(|_| opcode::Nop::new().build()).collect();
            // SAFETY: no memory referenced.
            let results = unsafe { ring.submit_chain(entries, ()) }.await;
            assert!(results.iter().all(|result| matches!(result, Ok(0))));
            assert_eq!(ring.in_flight(), 0);
        });
    }

    #[test]
    fn a_transient_enter_error_is_retried() {
        tokio_uring::start(async {
            let ring = Ring::new(8).expect("ring");
            for errno in [libc::EAGAIN, libc::EBUSY, libc::EINTR] {
                ring.inject_enter_error(errno);
                // SAFETY: NOPs reference no memory.
                let nop = unsafe { ring.submit(opcode::Nop::new().build()) };
                let result = tokio::time::timeout(Duration::from_secs(5), nop).await;
                assert!(matches!(result, Ok(Ok(0))), "errno {errno}: {result:?}");
            }
            assert!(ring.failure().is_none());
            assert_eq!(ring.in_flight(), 0);
        });
    }

    #[test]
    fn a_fatal_enter_error_fails_in_flight_and_later_operations() {
        tokio_uring::start(async {
            let ring = Ring::new(8).expect("ring");
            let mut pipe_fds = [0i32; 2];
            // SAFETY: pipe fills the two-element array.
            assert_eq!(unsafe { libc::pipe(pipe_fds.as_mut_ptr()) }, 0);
            // A read of an empty pipe stays in the kernel until the ring fails.
            let mut buffer = vec![0u8; 16];
            let read = opcode::Read::new(types::Fd(pipe_fds[0]), buffer.as_mut_ptr(), 16).build();
            // SAFETY: `buffer` moves into the ring's keep slot.
            let in_kernel = unsafe { ring.submit_owned(read, buffer) };
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(ring.in_flight(), 1);
            let failed = ring.failed();
            ring.inject_enter_error(libc::EBADF);
            // SAFETY: NOPs reference no memory.
            let queued = unsafe { ring.submit(opcode::Nop::new().build()) };
            let queued = tokio::time::timeout(Duration::from_secs(5), queued)
                .await
                .expect("the queued operation resolved");
            assert_eq!(
                queued.expect_err("failed").raw_os_error(),
                Some(libc::EBADF)
            );
            let in_kernel = tokio::time::timeout(Duration::from_secs(5), in_kernel)
                .await
                .expect("the in-flight operation resolved");
            assert_eq!(
                in_kernel.expect_err("failed").raw_os_error(),
                Some(libc::EBADF)
            );
            let error = tokio::time::timeout(Duration::from_secs(5), failed)
                .await
                .expect("failed() resolved");
            assert_eq!(error.raw_os_error(), Some(libc::EBADF));
            assert_eq!(
                ring.failure().and_then(|e| e.raw_os_error()),
                Some(libc::EBADF)
            );
            // Later operations are refused at once, chains included.
            // SAFETY: NOPs reference no memory.
            let later = unsafe { ring.submit(opcode::Nop::new().build()) }.await;
            assert_eq!(
                later.expect_err("refused").raw_os_error(),
                Some(libc::EBADF)
            );
            let chain: Vec<Entry> = (0..2).map(|_| opcode::Nop::new().build()).collect();
            // SAFETY: NOPs reference no memory.
            let results = unsafe { ring.submit_chain(chain, ()) }.await;
            assert!(results
                .iter()
                .all(|r| r.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::EBADF)));
            // SAFETY: closing the pipe fds we created; the kernel's read ends with the pipe.
            unsafe {
                libc::close(pipe_fds[1]);
                libc::close(pipe_fds[0]);
            }
        });
    }

    #[test]
    fn more_operations_than_the_completion_queue_holds_all_complete() {
        tokio_uring::start(async {
            let ring = Ring::new(8).expect("ring");
            // SAFETY: NOPs reference no memory.
            let completions: Vec<Completion> = (0..200)
                .map(|_| unsafe { ring.submit(opcode::Nop::new().build()) })
                .collect();
            for completion in completions {
                let result = tokio::time::timeout(Duration::from_secs(5), completion).await;
                assert!(matches!(result, Ok(Ok(0))), "{result:?}");
            }
            assert_eq!(ring.in_flight(), 0);
        });
    }
}
