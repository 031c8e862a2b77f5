//! A background thread that runs one job every interval until it is dropped: for the work that
//! reads files (certificate reloads, memory checks), which must never run on a shard thread.
//!
//! Owns the thread and its stop flag. Must never: outlive its handle (dropping it stops and
//! joins the thread, within about 100 ms plus one job), or run the job more often than the
//! interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running thread; stopped and joined when dropped.
pub struct PeriodicThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PeriodicThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a thread called `name` that runs `job` every `interval` (the first time one interval
/// from now). The caller decides what a zero interval means before calling.
pub fn start(
    name: &str,
    interval: Duration,
    mut job: impl FnMut() + Send + 'static,
) -> std::io::Result<PeriodicThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut next = Instant::now() + interval;
            while !stopping.load(Ordering::Relaxed) {
                // Short sleeps, so a drop is noticed quickly whatever the interval.
                std::thread::sleep(Duration::from_millis(100).min(interval));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + interval;
                job();
            }
        })?;
    Ok(PeriodicThread {
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn runs_every_interval_and_stops_when_dropped() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let thread = start("periodic-test", Duration::from_millis(20), move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .expect("thread");
        std::thread::sleep(Duration::from_millis(300));
        drop(thread);
        let after_drop = runs.load(Ordering::Relaxed);
        assert!(after_drop >= 2, "ran {after_drop} times in 300 ms");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            runs.load(Ordering::Relaxed),
            after_drop,
            "no run after the drop"
        );
    }
}
