//! When each benchmark record is meant to be sent, and from which instant its latency counts.
//!
//! Open loop (`--rate`): record `i` is due at `i * interval` after the start whether or not the
//! broker kept up, and its latency is measured from that intended time, so a stall that delays
//! sending shows up in every record it delayed (no coordinated omission). Closed loop: latency
//! counts from when the record was actually created, which hides such stalls; the bench offers
//! it only for throughput runs and comparison. This module is pure arithmetic on nanoseconds
//! since the bench started; it must never read a clock itself.

/// A send schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Fixed rate, latency from the intended send time.
    Open {
        /// Nanoseconds between consecutive records.
        interval_ns: f64,
    },
    /// Latency from the actual creation time; optionally paced at a rate.
    Closed {
        /// Pacing interval, if any.
        interval_ns: Option<f64>,
    },
}

impl Schedule {
    /// An open-loop schedule at `rate_per_s` records per second (must be > 0).
    pub fn open(rate_per_s: f64) -> Schedule {
        Schedule::Open {
            interval_ns: 1e9 / rate_per_s.max(1e-9),
        }
    }

    /// When record `index` becomes due, or None when it may go at once.
    pub fn due_at_ns(&self, index: u64) -> Option<u64> {
        match *self {
            Schedule::Open { interval_ns }
            | Schedule::Closed {
                interval_ns: Some(interval_ns),
            } => Some((index as f64 * interval_ns) as u64),
            Schedule::Closed { interval_ns: None } => None,
        }
    }

    /// How many records (indices 0..n) are due by `now_ns`; u64::MAX when unpaced.
    pub fn due_count(&self, now_ns: u64) -> u64 {
        match *self {
            Schedule::Open { interval_ns }
            | Schedule::Closed {
                interval_ns: Some(interval_ns),
            } => (now_ns as f64 / interval_ns) as u64 + 1,
            Schedule::Closed { interval_ns: None } => u64::MAX,
        }
    }

    /// The instant latency is measured from for record `index`, created at `created_ns`.
    pub fn latency_origin_ns(&self, index: u64, created_ns: u64) -> u64 {
        match *self {
            Schedule::Open { .. } => self.due_at_ns(index).unwrap_or(created_ns),
            Schedule::Closed { .. } => created_ns,
        }
    }

    /// Whether this is open loop.
    pub fn is_open(&self) -> bool {
        matches!(self, Schedule::Open { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{new_latency_histogram, LatencySummary};

    /// A sender with one request in flight (window 1) against a broker that answers in 1 ms but
    /// stalls completely from t = 1.0 s to t = 1.5 s; 500 records/s for 4 s.
    fn run(schedule: Schedule) -> LatencySummary {
        let service = |send_ns: u64| -> u64 {
            let (stall_from, stall_to) = (1_000_000_000, 1_500_000_000);
            if (stall_from..stall_to).contains(&send_ns) {
                stall_to + 1_000_000
            } else {
                send_ns + 1_000_000
            }
        };
        let mut histogram = new_latency_histogram();
        let mut now_ns = 0u64;
        for index in 0..2_000u64 {
            let send_ns = schedule
                .due_at_ns(index)
                .map_or(now_ns, |due| due.max(now_ns));
            let ack_ns = service(send_ns);
            let origin = schedule.latency_origin_ns(index, send_ns);
            histogram.saturating_record((ack_ns - origin) / 1_000);
            now_ns = ack_ns;
        }
        LatencySummary::of(&histogram)
    }

    #[test]
    fn open_loop_records_the_stall_closed_loop_hides() {
        let open = run(Schedule::open(500.0));
        let closed = run(Schedule::Closed {
            interval_ns: Some(2e6),
        });
        // Closed loop: only the one request caught in the stall is slow; p99 looks perfect.
        assert_eq!(closed.p99_us, 1_000);
        assert!(closed.max_us >= 499_000, "closed max {}", closed.max_us);
        // Open loop: the ~250 records that were due during the stall waited for it, and the
        // backlog took a while to drain, so the stall reaches deep into the distribution.
        assert!(open.p99_us >= 400_000, "open p99 {}", open.p99_us);
        assert!(open.p90_us >= 100_000, "open p90 {}", open.p90_us);
        assert!(open.p50_us <= 2_000, "open p50 {}", open.p50_us);
        assert!(open.max_us >= closed.max_us);
    }

    #[test]
    fn due_counts() {
        let s = Schedule::open(1000.0); // 1 ms apart
        assert_eq!(s.due_count(0), 1);
        assert_eq!(s.due_count(999_999), 1);
        assert_eq!(s.due_count(1_000_000), 2);
        assert_eq!(s.due_at_ns(3), Some(3_000_000));
        assert_eq!(s.latency_origin_ns(3, 9_000_000), 3_000_000);
        let c = Schedule::Closed { interval_ns: None };
        assert_eq!(c.due_count(5), u64::MAX);
        assert_eq!(c.latency_origin_ns(3, 9_000_000), 9_000_000);
    }
}
