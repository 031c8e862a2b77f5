//! Sleeps finer than tokio's timer wheel, for the open-loop send schedule.
//!
//! tokio's timers tick in whole milliseconds and round a deadline up to the next tick, so a
//! producer paced with `tokio::time::sleep` creates its records in bursts once per
//! millisecond: a record due 0.1 ms after a tick is created up to 0.9 ms late, and since open
//! loop counts latency from the record's intended time, every figure the bench reports would
//! carry up to a millisecond of its own timer. This timer is a `timerfd` on
//! `CLOCK_MONOTONIC` (the clock `Instant` reads), armed for each wait, awaited through the
//! runtime's reactor.
//!
//! A wait is never shorter than [`PACING_GRANULARITY`]: a producer woken for each record would
//! spend its time in wake-ups (a record every few microseconds at the rates the bench runs);
//! records due within one granule are created together. Must never: block the runtime's
//! thread, or return before the deadline it was given (within that granule).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

/// Shortest wait: records due within this much of each other are created in one wake-up.
pub const PACING_GRANULARITY: Duration = Duration::from_micros(100);

/// One reusable timer (a wait re-arms it; an abandoned wait leaves nothing behind: arming
/// resets the expiration count).
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// A new timer; must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<PreciseTimer> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we own from here on.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and unchanged for
        // its whole life.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(io::Error::from)?;
        Ok(PreciseTimer { fd })
    }

    /// Waits until `deadline` (at least [`PACING_GRANULARITY`] from now).
    pub async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(PACING_GRANULARITY);
        self.arm(wait)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 we own, from a descriptor we own.
            let read = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if read == std::mem::size_of::<u64>() as isize {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(error);
            }
            ready.clear_ready();
        }
    }

    /// One-shot expiry `wait` from now; replaces any earlier setting and its count.
    fn arm(&self, wait: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let result = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                0,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_the_deadline_with_sub_millisecond_precision() {
        let timer = PreciseTimer::new().expect("timerfd");
        let mut late_ns = Vec::new();
        for _ in 0..50 {
            let deadline = Instant::now() + Duration::from_micros(300);
            timer.sleep_until(deadline).await.expect("sleep");
            let now = Instant::now();
            assert!(now >= deadline, "woke before its deadline");
            late_ns.push((now - deadline).as_nanos() as u64);
        }
        late_ns.sort_unstable();
        // tokio's wheel would round each 0.3 ms wait up to a whole tick (0.7 ms late or
        // more); allow a loaded machine a generous median.
        assert!(
            late_ns[late_ns.len() / 2] < 500_000,
            "median lateness {} ns",
            late_ns[late_ns.len() / 2]
        );
    }

    #[tokio::test]
    async fn an_abandoned_wait_does_not_end_the_next_early() {
        let timer = PreciseTimer::new().expect("timerfd");
        // Armed (polled once), then dropped before it completes: the timer fires unread.
        tokio::select! {
            biased;
            _ = timer.sleep_until(Instant::now() + Duration::from_millis(1)) => {
                panic!("a 1 ms wait completed at once")
            }
            _ = std::future::ready(()) => {}
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        let deadline = Instant::now() + Duration::from_millis(20);
        timer.sleep_until(deadline).await.expect("sleep");
        assert!(Instant::now() >= deadline, "a stale expiry ended the wait");
    }
}
