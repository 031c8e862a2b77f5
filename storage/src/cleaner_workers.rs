//! The cleaner's CPU threads: the record work of a pass (verifying CRC32Cs, decompressing,
//! hashing keys, filtering records and rebuilding batches) runs here, on windows of whole
//! batches the shard's ring read, so it never competes with produce on a shard thread. The
//! threads run at a lower scheduling priority (`log.cleaner.thread.nice`), so on a busy
//! machine the shards' request work goes first and the cleaner takes what is left.
//!
//! One pool per broker: every shard's `CleanerConfig` holds a clone of the same handle; the
//! threads (`log.cleaner.threads`) start at the first job and end when the last handle goes.
//!
//! Owns the threads and the hand-off of jobs and results. Must never: do I/O (the shard's
//! ring does all of it, through the I/O seam the fault tests replace), touch shard state
//! (jobs take and give back owned, `Send` values only), or turn a panicking job into a panic
//! on the shard (the shard gets an error and the pass fails).

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// Default of `log.cleaner.threads` (Kafka's default too).
pub const CLEANER_THREADS_DEFAULT: usize = 1;
/// Default of `log.cleaner.thread.nice`: the cleaner yields the CPU to the shards.
pub const CLEANER_THREAD_NICE_DEFAULT: i32 = 19;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    threads: usize,
    nice: i32,
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
}

/// A handle on the broker's cleaner threads (cheap to clone; clones share the threads).
#[derive(Clone)]
pub struct CleanerWorkers(Arc<Pool>);

impl std::fmt::Debug for CleanerWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CleanerWorkers")
            .field("threads", &self.0.threads)
            .field("nice", &self.0.nice)
            .finish()
    }
}

impl Default for CleanerWorkers {
    fn default() -> Self {
        Self::new(CLEANER_THREADS_DEFAULT, CLEANER_THREAD_NICE_DEFAULT)
    }
}

impl CleanerWorkers {
    /// A pool of `threads` threads (at least 1) at scheduling priority `nice` (-20..=19;
    /// raising priority needs CAP_SYS_NICE: a refusal is logged and the thread runs at the
    /// process's priority). No thread starts before the first job.
    pub fn new(threads: usize, nice: i32) -> Self {
        CleanerWorkers(Arc::new(Pool {
            threads: threads.max(1),
            nice: nice.clamp(-20, 19),
            jobs: OnceLock::new(),
        }))
    }

    /// Threads of the pool.
    pub fn threads(&self) -> usize {
        self.0.threads
    }

    fn sender(&self) -> io::Result<mpsc::Sender<Job>> {
        let jobs = self.0.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::channel::<Job>();
            let receiver = Arc::new(Mutex::new(receiver));
            for index in 0..self.0.threads {
                let receiver = receiver.clone();
                let nice = self.0.nice;
                let spawned = std::thread::Builder::new()
                    .name(format!("sluice-cleaner-{index}"))
                    .spawn(move || run(&receiver, nice));
                if let Err(error) = spawned {
                    tracing::error!(%error, "cannot start a cleaner thread");
                }
            }
            Mutex::new(sender)
        });
        jobs.lock()
            .map(|sender| sender.clone())
            .map_err(|_| io::Error::other("the cleaner pool's queue is poisoned"))
    }

    /// Runs `work` on a cleaner thread and resolves with its result; an error if the pool has
    /// no thread or the job panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic is caught here, so the thread lives on; the dropped sender tells the
            // shard the job failed.
            if let Ok(value) = catch_unwind(AssertUnwindSafe(work)) {
                let _ = done.send(value);
            }
        });
        self.sender()?
            .send(job)
            .map_err(|_| io::Error::other("no cleaner thread is running"))?;
        result
            .await
            .map_err(|_| io::Error::other("a cleaner job panicked"))
    }
}

fn run(receiver: &Mutex<mpsc::Receiver<Job>>, nice: i32) {
    set_nice(nice);
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // every handle is gone
        }
    }
}

/// Sets the calling thread's nice value (Linux applies `setpriority` to one thread).
fn set_nice(nice: i32) {
    // SAFETY: gettid and setpriority take no pointers; they act on the calling thread only.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if result != 0 {
        let error = io::Error::last_os_error();
        tracing::warn!(%error, nice, "cannot set the cleaner thread's priority; it runs at the process's");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_off_the_calling_thread_and_a_panic_is_an_error() {
        let workers = CleanerWorkers::new(2, 19);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let caller = std::thread::current().id();
        let (on_other, name) = runtime
            .block_on(workers.run(move || {
                (
                    std::thread::current().id() != caller,
                    std::thread::current().name().map(str::to_owned),
                )
            }))
            .expect("job");
        assert!(on_other);
        assert_eq!(
            name.as_deref().map(|n| n.starts_with("sluice-cleaner-")),
            Some(true)
        );
        let failed = runtime.block_on(workers.run(|| -> u32 { panic!("a job that panics") }));
        assert!(failed.is_err());
        assert_eq!(
            runtime.block_on(workers.run(|| 7)).expect("still running"),
            7
        );
    }
}
