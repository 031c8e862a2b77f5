//! Process-wide counters of the zero-copy fetch path: what is open or held right now (pipes,
//! segment references, writes in progress) and totals (pipes created and discarded, bytes
//! per mechanism). They let a test prove that an aborted response leaks nothing.
//!
//! Owns only atomics (relaxed: each value is independent and read for reporting, never used
//! to synchronise). Must never: be used for control decisions, or take a lock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gauge {
    /// Pipes open (idle in a pool, leased, or kept by an in-flight operation).
    PipesOpen,
    /// Pipes idle in the shards' pools.
    PipesIdle,
    /// Pipes ever created.
    PipesCreated,
    /// Pipes closed instead of returned to a pool (error, bytes left, pool full).
    PipesDiscarded,
    /// Segment-file references held by zero-copy writes and their in-flight operations.
    SegmentRefsHeld,
    /// Zero-copy response writes started and not yet finished (or dropped).
    WritesInFlight,
    /// Record bytes moved file -> pipe -> socket.
    SplicedBytes,
    /// Bytes sent with SENDMSG_ZC.
    SendZcBytes,
    /// Bytes sent with plain SENDMSG (framing, small tail-cache data).
    SendBytes,
    /// Splices or sends that moved fewer bytes than asked (resumed).
    ShortTransfers,
}

const GAUGE_COUNT: usize = 10;

static VALUES: [AtomicU64; GAUGE_COUNT] = [const { AtomicU64::new(0) }; GAUGE_COUNT];

impl Gauge {
    const ALL: [Gauge; GAUGE_COUNT] = [
        Gauge::PipesOpen,
        Gauge::PipesIdle,
        Gauge::PipesCreated,
        Gauge::PipesDiscarded,
        Gauge::SegmentRefsHeld,
        Gauge::WritesInFlight,
        Gauge::SplicedBytes,
        Gauge::SendZcBytes,
        Gauge::SendBytes,
        Gauge::ShortTransfers,
    ];

    fn name(self) -> &'static str {
        match self {
            Gauge::PipesOpen => "pipes_open",
            Gauge::PipesIdle => "pipes_idle",
            Gauge::PipesCreated => "pipes_created",
            Gauge::PipesDiscarded => "pipes_discarded",
            Gauge::SegmentRefsHeld => "segment_refs_held",
            Gauge::WritesInFlight => "writes_in_flight",
            Gauge::SplicedBytes => "spliced_bytes",
            Gauge::SendZcBytes => "send_zc_bytes",
            Gauge::SendBytes => "send_bytes",
            Gauge::ShortTransfers => "short_transfers",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub(crate) fn add(gauge: Gauge, value: u64) {
    VALUES[gauge.index()].fetch_add(value, Ordering::Relaxed);
}

pub(crate) fn sub(gauge: Gauge, value: u64) {
    VALUES[gauge.index()].fetch_sub(value, Ordering::Relaxed);
}

/// A copy of every counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters([u64; GAUGE_COUNT]);

impl Counters {
    /// Reads every counter (each one atomically; the set is not a consistent cut).
    pub fn now() -> Counters {
        let mut values = [0u64; GAUGE_COUNT];
        for (slot, value) in values.iter_mut().zip(VALUES.iter()) {
            *slot = value.load(Ordering::Relaxed);
        }
        Counters(values)
    }

    /// Pipes open right now.
    pub fn pipes_open(&self) -> u64 {
        self.0[Gauge::PipesOpen.index()]
    }

    /// Pipes idle in pools right now.
    pub fn pipes_idle(&self) -> u64 {
        self.0[Gauge::PipesIdle.index()]
    }

    /// Segment references held by zero-copy writes right now.
    pub fn segment_refs_held(&self) -> u64 {
        self.0[Gauge::SegmentRefsHeld.index()]
    }

    /// Zero-copy writes in progress right now.
    pub fn writes_in_flight(&self) -> u64 {
        self.0[Gauge::WritesInFlight.index()]
    }

    /// Bytes spliced so far.
    pub fn spliced_bytes(&self) -> u64 {
        self.0[Gauge::SplicedBytes.index()]
    }

    /// Bytes sent with SENDMSG_ZC so far.
    pub fn send_zc_bytes(&self) -> u64 {
        self.0[Gauge::SendZcBytes.index()]
    }

    /// Every counter as (`zero_copy_<name>`, value), for `/stats` and `/metrics`.
    pub fn named(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        Gauge::ALL
            .iter()
            .map(|gauge| (format!("zero_copy_{}", gauge.name()), self.0[gauge.index()]))
    }
}

impl fmt::Display for Counters {
    /// `key=value` pairs separated by spaces (what the tests parse from the log).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, gauge) in Gauge::ALL.iter().enumerate() {
            if position > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", gauge.name(), self.0[gauge.index()])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gauge_has_its_own_slot_and_name() {
        for (position, gauge) in Gauge::ALL.iter().enumerate() {
            assert_eq!(gauge.index(), position);
        }
        let text = Counters([0; GAUGE_COUNT]).to_string();
        assert_eq!(text.split(' ').count(), GAUGE_COUNT);
        assert!(text.starts_with("pipes_open=0 "));
    }
}
