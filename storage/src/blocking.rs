//! The shard's door to the blocking pool: the file work io_uring has no opcode for on the
//! kernels Sluice supports (ftruncate, whole small files with their syncs) runs on pool threads,
//! and this counts and times every such job so the pool's use is visible (`/metrics`,
//! `sluice stats`): jobs submitted, jobs done (their difference is the pool's depth), and each
//! job's latency from submit to its result being back on the shard.
//!
//! Bounded: at most `jobs_running_max` of one shard's jobs run at once
//! ([`BLOCKING_JOBS_RUNNING_MAX_DEFAULT`], `log.blocking.jobs.max`); the others wait on the
//! shard (asynchronously, holding no pool thread) for a running one to finish, so a burst of
//! rolls or small-file writes cannot pile up pool threads.
//!
//! Owns those counts and the observer they are reported to. Must never: run a job on the shard
//! thread, call the observer from a pool thread (it records into the shard's `!Sync`
//! metrics), or turn a panicked job into a panic on the shard.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::io::IoFuture;

/// Default of `log.blocking.jobs.max`: a shard's jobs running on the pool at once.
pub const BLOCKING_JOBS_RUNNING_MAX_DEFAULT: usize = 8;

/// What the pool reports, on the shard thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockingEvent {
    /// A job was handed to the pool.
    Submitted,
    /// A job's result is back on the shard, `latency_ns` after it was submitted (queue wait
    /// plus run time).
    Done {
        /// submit to result
        latency_ns: u64,
    },
}

/// Told of every job submitted and done.
pub type BlockingObserver = Box<dyn Fn(BlockingEvent)>;

/// Counts of the jobs one shard handed to the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockingPoolStats {
    /// Jobs handed to the pool.
    pub jobs_submitted: u64,
    /// Jobs whose result is back on the shard.
    pub jobs_done: u64,
}

impl BlockingPoolStats {
    /// Jobs waiting for a pool thread or running.
    pub fn jobs_in_flight(&self) -> u64 {
        self.jobs_submitted.saturating_sub(self.jobs_done)
    }
}

/// One shard's use of the blocking pool.
pub(crate) struct BlockingPool {
    submitted: Cell<u64>,
    done: Cell<u64>,
    observer: RefCell<Option<BlockingObserver>>,
    /// Permits for jobs running on the pool; a job holds one on its pool thread until it ends.
    running: RefCell<Arc<Semaphore>>,
}

impl Default for BlockingPool {
    fn default() -> Self {
        BlockingPool {
            submitted: Cell::new(0),
            done: Cell::new(0),
            observer: RefCell::new(None),
            running: RefCell::new(Arc::new(Semaphore::new(BLOCKING_JOBS_RUNNING_MAX_DEFAULT))),
        }
    }
}

/// A job that got a permit at once, or one waiting for a running job to end.
enum Job<W> {
    Started(tokio::task::JoinHandle<io::Result<()>>),
    Waiting(W),
}

/// Runs `work` on a pool thread, holding `permit` until it ends.
fn spawn(
    work: impl FnOnce() -> io::Result<()> + Send + 'static,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> tokio::task::JoinHandle<io::Result<()>> {
    tokio::task::spawn_blocking(move || {
        let _running = permit;
        work()
    })
}

impl BlockingPool {
    /// Sets how many of this shard's jobs may run at once (at least 1). Jobs already running
    /// keep the permits of the bound they started under.
    pub(crate) fn set_jobs_running_max(&self, jobs_max: usize) {
        *self.running.borrow_mut() = Arc::new(Semaphore::new(jobs_max.max(1)));
    }

    pub(crate) fn set_observer(&self, observer: BlockingObserver) {
        *self.observer.borrow_mut() = Some(observer);
    }

    pub(crate) fn stats(&self) -> BlockingPoolStats {
        BlockingPoolStats {
            jobs_submitted: self.submitted.get(),
            jobs_done: self.done.get(),
        }
    }

    fn report(&self, event: BlockingEvent) {
        if let Some(observer) = self.observer.borrow().as_ref() {
            observer(event);
        }
    }

    /// Runs `work` on the pool; a panicked or cancelled job is an error, not a panic. The
    /// job counts as done when its result is back, or when the future is dropped before.
    pub(crate) fn run(
        self: &Rc<Self>,
        work: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> IoFuture {
        let submitted_at = Instant::now();
        self.submitted.set(self.submitted.get() + 1);
        self.report(BlockingEvent::Submitted);
        debug_assert!(self.done.get() < self.submitted.get());
        let running = self.running.borrow().clone();
        // Under the bound the job starts now, as if there were no bound; over it, it starts
        // from the future once a running job ends.
        let job = match running.clone().try_acquire_owned() {
            Ok(permit) => Job::Started(spawn(work, permit)),
            Err(_) => Job::Waiting(work),
        };
        let done = JobDone {
            pool: self.clone(),
            submitted_at,
        };
        Box::pin(async move {
            let task = match job {
                Job::Started(task) => task,
                Job::Waiting(work) => {
                    let permit = running.acquire_owned().await.map_err(|closed| {
                        io::Error::other(format!("blocking pool bound: {closed}"))
                    })?;
                    spawn(work, permit)
                }
            };
            let result = task.await;
            drop(done);
            match result {
                Ok(Ok(())) => Ok(0),
                Ok(Err(error)) => Err(error),
                Err(join) => Err(io::Error::other(format!(
                    "blocking file task failed: {join}"
                ))),
            }
        })
    }
}

/// Counts its job done when dropped: after the result, or with a dropped future (the job
/// may still run, but nobody waits for it any more).
struct JobDone {
    pool: Rc<BlockingPool>,
    submitted_at: Instant,
}

impl Drop for JobDone {
    fn drop(&mut self) {
        let pool = &self.pool;
        pool.done.set(pool.done.get() + 1);
        debug_assert!(pool.done.get() <= pool.submitted.get());
        let latency_ns = u64::try_from(self.submitted_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        pool.report(BlockingEvent::Done { latency_ns });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_counted_and_timed_and_a_panicked_job_is_an_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let pool = Rc::new(BlockingPool::default());
            let events = Rc::new(RefCell::new(Vec::new()));
            let seen = events.clone();
            pool.set_observer(Box::new(move |event| seen.borrow_mut().push(event)));
            let slow = pool.run(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                Ok(())
            });
            assert_eq!(pool.stats().jobs_in_flight(), 1);
            assert_eq!(slow.await.expect("job"), 0);
            let failed = pool.run(|| Err(io::Error::from_raw_os_error(libc::EIO)));
            let error = failed.await.expect_err("the job's error");
            assert_eq!(error.raw_os_error(), Some(libc::EIO));
            let panicked = pool.run(|| panic!("a job panicked"));
            assert!(panicked.await.is_err());
            assert_eq!(
                pool.stats(),
                BlockingPoolStats {
                    jobs_submitted: 3,
                    jobs_done: 3
                }
            );
            let events = events.borrow();
            assert_eq!(events.len(), 6);
            assert_eq!(events[0], BlockingEvent::Submitted);
            let BlockingEvent::Done { latency_ns } = events[1] else {
                panic!("{events:?}");
            };
            assert!(latency_ns >= 20_000_000, "{latency_ns} ns for a 20 ms job");
        });
    }

    #[test]
    fn no_more_jobs_run_at_once_than_the_bound() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let pool = Rc::new(BlockingPool::default());
            pool.set_jobs_running_max(2);
            let running = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let jobs: Vec<IoFuture> = (0..6)
                .map(|_| {
                    let (running, peak) = (running.clone(), peak.clone());
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
                .collect();
            assert_eq!(
                pool.stats().jobs_in_flight(),
                6,
                "waiting jobs count as in flight"
            );
            for job in jobs {
                assert_eq!(job.await.expect("job"), 0);
            }
            assert_eq!(
                peak.load(Ordering::SeqCst),
                2,
                "two ran at once, never more"
            );
            assert_eq!(pool.stats().jobs_done, 6);
        });
    }
}
