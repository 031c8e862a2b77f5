//! Gives tail-cache memory back when the machine runs short of it
//! (`log.tail.cache.memory.reserve.bytes`), and takes the limit off again once memory is
//! plentiful.
//!
//! Why: the tail cache is anonymous memory (up to half of the broker's memory by default). The
//! kernel cannot reclaim it as it reclaims Kafka's page cache, so without this another process
//! on the machine (a Connect worker, a Streams application, a second broker) could only get
//! memory through the OOM killer, which picks the largest process: the broker.
//!
//! Owns the watcher thread (`sluice-memory`) and the rule each shard applies. Every check
//! interval the watcher reads what the broker could still take
//! ([`crate::memory_limit::available_bytes`]: files under /proc and /sys, read off the shard
//! threads, which never make blocking reads) and sends every shard the figure; the shard cuts
//! its cache by its share of the shortfall below the reserve, or, above 1.5 times the reserve,
//! raises its limit by its share of the surplus until the limit no longer binds. Must never:
//! take memory itself (it only lowers or raises a cap; memory is taken again as records
//! arrive), or raise a limit while what is available lies between the reserve and 1.5 times
//! it (the band keeps the limit from flapping as the cache refills).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::BrokerConfig;
use crate::periodic::PeriodicThread;
use crate::shard::{Shard, ShardSet};

/// One shard's tail-cache memory limit after a check: `None` is no limit.
///
/// `available_bytes` is what the broker could still take, `reserve_bytes` what must stay
/// available, `shards` how many shards share the shortfall or surplus, `held_bytes` the
/// shard's cache memory now, `limit_bytes` its limit now and `unlimited_from_bytes` a limit
/// at which the cache's own budget binds first (the limit is then taken off).
pub fn next_limit(
    available_bytes: u64,
    reserve_bytes: u64,
    shards: u64,
    held_bytes: u64,
    limit_bytes: Option<u64>,
    unlimited_from_bytes: u64,
) -> Option<u64> {
    let shards = shards.max(1);
    if available_bytes < reserve_bytes {
        let share = (reserve_bytes - available_bytes).div_ceil(shards);
        let cut = held_bytes.saturating_sub(share);
        return Some(limit_bytes.map_or(cut, |limit| limit.min(cut)));
    }
    let band_top = reserve_bytes.saturating_add(reserve_bytes / 2);
    match limit_bytes {
        Some(limit) if available_bytes > band_top => {
            let raised = limit.saturating_add((available_bytes - band_top) / shards);
            (raised < unlimited_from_bytes).then_some(raised)
        }
        other => other,
    }
}

/// The watcher thread; stopped and joined when dropped.
pub type Watcher = PeriodicThread;

/// Starts the watcher when `log.tail.cache.memory.reserve.bytes` and
/// `log.tail.cache.memory.check.interval.ms` are both non-zero.
pub fn start(set: Arc<ShardSet>, config: &BrokerConfig) -> Option<Watcher> {
    let reserve_bytes = config.tail_cache_memory_reserve_bytes;
    let interval = Duration::from_millis(config.tail_cache_memory_check_interval_ms);
    if reserve_bytes == 0 || interval.is_zero() {
        return None;
    }
    let check = move || {
        let Some(available_bytes) = crate::memory_limit::available_bytes() else {
            return;
        };
        for target in 0..set.count() {
            let job = Box::new(move |shard: Rc<Shard>| {
                apply(&shard, available_bytes, reserve_bytes);
            });
            // A shard that is gone, or too busy to take a job for two seconds, is skipped:
            // the next check tries again.
            let _ = set.send_from_outside(target, job);
        }
    };
    match crate::periodic::start("sluice-memory", interval, check) {
        Ok(thread) => Some(thread),
        Err(error) => {
            tracing::error!(%error, "cannot start the memory watcher thread; the tail cache never gives memory back");
            None
        }
    }
}

/// One check on `shard`: what the broker could still take is `available_bytes`.
fn apply(shard: &Shard, available_bytes: u64, reserve_bytes: u64) {
    let storage = &shard.storage;
    let limit_bytes = storage
        .tail_cache_memory_limit_bytes()
        .map(|bytes| bytes as u64);
    let held_bytes = storage.tail_cache_stats().chunk_bytes as u64;
    let next = next_limit(
        available_bytes,
        reserve_bytes,
        shard.set.count() as u64,
        held_bytes,
        limit_bytes,
        storage.tail_cache_memory_cap_bytes() as u64,
    );
    if next == limit_bytes && next.is_none() {
        return;
    }
    match (limit_bytes, next) {
        (None, Some(limit)) => tracing::info!(
            shard = shard.id,
            available_bytes,
            reserve_bytes,
            held_bytes,
            limit_bytes = limit,
            "available memory below log.tail.cache.memory.reserve.bytes: the tail cache gives memory back"
        ),
        (Some(_), None) => tracing::info!(
            shard = shard.id,
            available_bytes,
            "memory available again: the tail cache's memory limit is lifted"
        ),
        _ => tracing::debug!(shard = shard.id, available_bytes, limit = ?next, "tail cache memory limit"),
    }
    // Applied even when unchanged: chunks that responses held at the last check may be free now.
    let limit = next.map_or(usize::MAX, |bytes| {
        usize::try_from(bytes).unwrap_or(usize::MAX)
    });
    storage.limit_tail_cache_memory(limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_shortfall_is_shared_and_cuts_only_downwards() {
        // 100 MiB short over 2 shards: each gives back 50 MiB of what it holds.
        assert_eq!(
            next_limit(400 * MIB, 500 * MIB, 2, 300 * MIB, None, 10_000 * MIB),
            Some(250 * MIB)
        );
        // A limit already below that stays.
        assert_eq!(
            next_limit(
                400 * MIB,
                500 * MIB,
                2,
                300 * MIB,
                Some(100 * MIB),
                10_000 * MIB
            ),
            Some(100 * MIB)
        );
        // Shorter than the cache holds: down to nothing.
        assert_eq!(
            next_limit(0, 500 * MIB, 1, 300 * MIB, None, 10_000 * MIB),
            Some(0)
        );
    }

    #[test]
    fn the_band_holds_the_limit_and_a_surplus_raises_then_lifts_it() {
        let limited = Some(100 * MIB);
        for available in [500 * MIB, 600 * MIB, 750 * MIB] {
            assert_eq!(
                next_limit(available, 500 * MIB, 2, 80 * MIB, limited, 1_000 * MIB),
                limited,
                "within 1.5 times the reserve nothing changes ({available})"
            );
        }
        assert_eq!(
            next_limit(600 * MIB, 500 * MIB, 2, 80 * MIB, None, 1_000 * MIB),
            None
        );
        // 200 MiB above the band, 2 shards: each limit rises by 100 MiB.
        assert_eq!(
            next_limit(950 * MIB, 500 * MIB, 2, 80 * MIB, limited, 1_000 * MIB),
            Some(200 * MIB)
        );
        assert_eq!(
            next_limit(10_000 * MIB, 500 * MIB, 2, 80 * MIB, limited, 1_000 * MIB),
            None,
            "a limit the budget would bind first is taken off"
        );
    }
}
