//! A shard's pool of pipes for splicing segment-file ranges to sockets (file -> pipe ->
//! socket).
//!
//! Owns the idle pipes of one shard: each is created once with `pipe2`, enlarged with
//! `F_SETPIPE_SZ` so one splice moves up to a pipe's capacity, and reused by later writes.
//! Must never: hand out a pipe that may still hold bytes of an earlier response (a lease
//! that is not ended clean closes its pipe instead of returning it), keep more than
//! `idle_max` idle pipes, or block (every call is a plain, non-waiting syscall).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use super::counters::{self, Gauge};

/// One pipe: both ends, closed together when the last reference goes.
#[derive(Debug)]
pub(crate) struct Pipe {
    read_end: OwnedFd,
    write_end: OwnedFd,
    capacity_bytes: usize,
}

impl Pipe {
    /// Creates a pipe and asks for `capacity_bytes` of buffer; the kernel may give less
    /// (`fs.pipe-max-size`, per-user pipe limits), which is kept as is: a smaller pipe only
    /// means more splices per range.
    fn create(capacity_bytes: usize) -> io::Result<Pipe> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are fresh and owned by nobody else.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        counters::add(Gauge::PipesOpen, 1);
        counters::add(Gauge::PipesCreated, 1);
        let requested = capacity_bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: fcntl on an fd we own; no memory is passed.
        let set = unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, requested) };
        let capacity_bytes = if set > 0 {
            set as usize
        } else {
            // SAFETY: as above.
            let current = unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if current <= 0 {
                // Dropping the fds keeps the open-pipe gauge honest.
                let error = io::Error::last_os_error();
                drop(Pipe {
                    read_end,
                    write_end,
                    capacity_bytes: 0,
                });
                return Err(error);
            }
            current as usize
        };
        Ok(Pipe {
            read_end,
            write_end,
            capacity_bytes,
        })
    }

    /// The end splices read from (towards the socket).
    pub(crate) fn read_fd(&self) -> RawFd {
        self.read_end.as_raw_fd()
    }

    /// The end splices write into (from the file).
    pub(crate) fn write_fd(&self) -> RawFd {
        self.write_end.as_raw_fd()
    }

    /// Bytes the pipe can hold.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Bytes queued in the pipe right now (FIONREAD), for checks before reuse.
    fn queued_bytes(&self) -> io::Result<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int into `queued`.
        let result = unsafe { libc::ioctl(self.read_end.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(queued.max(0) as usize)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        counters::sub(Gauge::PipesOpen, 1);
    }
}

/// The idle pipes of one shard.
#[derive(Debug)]
pub(crate) struct PipePool {
    idle: RefCell<Vec<Pipe>>,
    idle_max: usize,
    pipe_capacity_bytes: usize,
}

impl PipePool {
    /// An empty pool whose pipes ask for `pipe_capacity_bytes` each.
    pub(crate) fn new(idle_max: usize, pipe_capacity_bytes: usize) -> PipePool {
        assert!(idle_max > 0, "a pool that keeps nothing is a bug");
        assert!(
            pipe_capacity_bytes >= 4096,
            "a pipe holds at least one page"
        );
        PipePool {
            idle: RefCell::new(Vec::with_capacity(idle_max)),
            idle_max,
            pipe_capacity_bytes,
        }
    }

    /// Takes an idle pipe, or creates one when none is idle.
    pub(crate) fn lease(&self) -> io::Result<PipeLease> {
        let reused = self.idle.borrow_mut().pop();
        let pipe = match reused {
            Some(pipe) => {
                counters::sub(Gauge::PipesIdle, 1);
                pipe
            }
            None => Pipe::create(self.pipe_capacity_bytes)?,
        };
        Ok(PipeLease {
            pipe: Some(Rc::new(pipe)),
        })
    }

    /// Ends a lease. A pipe comes back only when the lease says it is empty, nothing else
    /// still references it (no operation in the kernel) and the kernel agrees it holds no
    /// bytes; otherwise it is closed. Returns whether it went back to the pool.
    pub(crate) fn give_back(&self, mut lease: PipeLease, empty: bool) -> bool {
        let Some(shared) = lease.pipe.take() else {
            return false;
        };
        let pipe = match Rc::try_unwrap(shared) {
            Ok(pipe) => pipe,
            Err(still_shared) => {
                // An operation still holds it: its last reference closes it later.
                counters::add(Gauge::PipesDiscarded, 1);
                drop(still_shared);
                return false;
            }
        };
        let reusable = empty
            && matches!(pipe.queued_bytes(), Ok(0))
            && self.idle.borrow().len() < self.idle_max;
        if !reusable {
            counters::add(Gauge::PipesDiscarded, 1);
            return false;
        }
        self.idle.borrow_mut().push(pipe);
        counters::add(Gauge::PipesIdle, 1);
        true
    }

    /// Idle pipes right now.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Capacity new pipes ask for.
    pub(crate) fn pipe_capacity_bytes(&self) -> usize {
        self.pipe_capacity_bytes
    }

    /// Creates one pipe up front and keeps it idle, so a kernel or limit that refuses pipes
    /// (or their resizing) is found at startup rather than by the first consumer.
    pub(crate) fn warm_up(&self) -> io::Result<usize> {
        let lease = self.lease()?;
        let capacity_bytes = lease.pipe().capacity_bytes();
        self.give_back(lease, true);
        Ok(capacity_bytes)
    }
}

impl Drop for PipePool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().len();
        counters::sub(Gauge::PipesIdle, idle as u64);
    }
}

/// A pipe taken from the pool for one response. Dropping a lease without
/// [`PipePool::give_back`] closes the pipe (it may hold bytes).
#[derive(Debug)]
pub(crate) struct PipeLease {
    pipe: Option<Rc<Pipe>>,
}

impl PipeLease {
    /// The pipe, shared so in-flight operations can keep it open.
    pub(crate) fn pipe(&self) -> &Rc<Pipe> {
        // Only `give_back` and `drop` take the pipe out, and both consume the lease.
        self.pipe
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease holds its pipe until it ends"))
    }
}

impl Drop for PipeLease {
    fn drop(&mut self) {
        if self.pipe.take().is_some() {
            counters::add(Gauge::PipesDiscarded, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_some(pipe: &Pipe, bytes: &[u8]) {
        // SAFETY: writes `bytes` from a valid slice into a pipe we own.
        let n = unsafe { libc::write(pipe.write_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    #[test]
    fn pipes_are_reused_when_clean_and_closed_when_not() {
        let pool = PipePool::new(2, 64 * 1024);
        let first = pool.lease().expect("lease");
        assert!(first.pipe().capacity_bytes() >= 4096);
        let first_fd = first.pipe().read_fd();
        assert!(pool.give_back(first, true), "a clean pipe goes back");
        assert_eq!(pool.idle_count(), 1);

        let again = pool.lease().expect("lease");
        assert_eq!(again.pipe().read_fd(), first_fd, "the idle pipe is reused");
        assert_eq!(pool.idle_count(), 0);
        // The caller believes it is empty, but the kernel says otherwise: never reused.
        write_some(again.pipe(), b"leftover");
        assert!(!pool.give_back(again, true));
        assert_eq!(pool.idle_count(), 0);

        let dirty = pool.lease().expect("lease");
        assert!(
            !pool.give_back(dirty, false),
            "a pipe that errored is closed"
        );
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn a_pipe_still_referenced_by_an_operation_is_not_reused() {
        let pool = PipePool::new(4, 64 * 1024);
        let lease = pool.lease().expect("lease");
        let in_kernel = lease.pipe().clone();
        assert!(!pool.give_back(lease, true));
        assert_eq!(pool.idle_count(), 0);
        drop(in_kernel);
    }

    #[test]
    fn idle_pipes_are_bounded_and_dropped_leases_close_their_pipe() {
        let pool = PipePool::new(1, 64 * 1024);
        let a = pool.lease().expect("lease");
        let b = pool.lease().expect("lease");
        assert_ne!(a.pipe().read_fd(), b.pipe().read_fd());
        assert!(pool.give_back(a, true));
        assert!(!pool.give_back(b, true), "beyond idle_max a pipe is closed");
        assert_eq!(pool.idle_count(), 1);
        let c = pool.lease().expect("lease");
        let fd = c.pipe().read_fd();
        let inode = inode_of(fd).expect("open pipe");
        drop(c);
        // Another test thread may get the same fd number, but not the same live pipe inode.
        assert_ne!(inode_of(fd), Some(inode), "a dropped lease closes its pipe");
        assert_eq!(pool.idle_count(), 0);
    }

    fn inode_of(fd: RawFd) -> Option<u64> {
        // SAFETY: fstat writes one stat struct into `stat`.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; an invalid fd just fails.
        (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some(stat.st_ino)
    }

    #[test]
    fn warm_up_leaves_one_idle_pipe_of_at_least_a_page() {
        let pool = PipePool::new(4, 1024 * 1024);
        let capacity_bytes = pool.warm_up().expect("pipe");
        assert!(capacity_bytes >= 4096);
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(pool.pipe_capacity_bytes(), 1024 * 1024);
    }
}
