//! The shard's budget of request bytes read but not yet answered (`queued.max.request.bytes`,
//! the broker-wide value split over the shards).
//!
//! A connection takes a permit for every request frame it has read before handing it on, and
//! the permit is returned when the handler has finished with the request (or the connection
//! drops it), not when the response is written, so a client that never reads cannot hold it. A
//! connection that cannot get a permit stops reading its socket, so the client is held back
//! by TCP and nothing is dropped. Must never: refuse a request outright (a frame larger than
//! the whole budget is admitted alone, once nothing else is in flight), or hand out bytes it
//! does not have otherwise.
//!
//! Waiters are served in arrival order (a fair semaphore), so a large frame is not starved by a
//! stream of small ones, and a release wakes only the waiters it can satisfy. Lives on one
//! shard thread: the accounting for metrics is in `Cell`s.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::Semaphore;

/// Request bytes in flight on one shard, bounded.
#[derive(Debug)]
pub struct RequestBudget {
    max_bytes: usize,
    /// Bytes one semaphore permit stands for: 1 unless the budget exceeds what a single
    /// acquire can ask for (`u32::MAX` permits).
    unit_bytes: usize,
    /// Permits of the whole budget; a frame takes at most all of them, so an oversized frame
    /// goes alone once nothing else is in flight.
    units_max: u32,
    units: Semaphore,
    used_bytes: Cell<usize>,
    /// Peak of `used_bytes` (for tests and metrics).
    peak_bytes: Cell<usize>,
}

impl RequestBudget {
    /// A budget of `max_bytes` (at least 1).
    pub fn new(max_bytes: usize) -> Rc<RequestBudget> {
        let max_bytes = max_bytes.max(1);
        let unit_bytes = max_bytes.div_ceil(u32::MAX as usize).max(1);
        let units_max = u32::try_from(max_bytes / unit_bytes)
            .unwrap_or(u32::MAX)
            .max(1);
        Rc::new(RequestBudget {
            max_bytes,
            unit_bytes,
            units_max,
            units: Semaphore::new(units_max as usize),
            used_bytes: Cell::new(0),
            peak_bytes: Cell::new(0),
        })
    }

    /// Permits for a frame of `bytes`: all of them for one at least as large as the budget.
    fn units_for(&self, bytes: usize) -> u32 {
        let units = bytes.div_ceil(self.unit_bytes);
        u32::try_from(units).unwrap_or(u32::MAX).min(self.units_max)
    }

    /// Waits until `bytes` fit (or nothing else is in flight) and takes them. Waiters are
    /// served in arrival order.
    pub async fn acquire(self: &Rc<Self>, bytes: usize) -> RequestPermit {
        let units = self.units_for(bytes);
        match self.units.acquire_many(units).await {
            Ok(permit) => permit.forget(),
            // The semaphore is never closed; were it, admitting uncounted beats hanging.
            Err(_closed) => return self.permit(bytes, 0),
        }
        self.permit(bytes, units)
    }

    /// Takes `bytes` if they fit now (a request larger than the whole budget fits when
    /// nothing else is in flight).
    pub fn try_acquire(self: &Rc<Self>, bytes: usize) -> Option<RequestPermit> {
        let units = self.units_for(bytes);
        self.units.try_acquire_many(units).ok()?.forget();
        Some(self.permit(bytes, units))
    }

    fn permit(self: &Rc<Self>, bytes: usize, units: u32) -> RequestPermit {
        let used = self.used_bytes.get().saturating_add(bytes);
        self.used_bytes.set(used);
        self.peak_bytes.set(self.peak_bytes.get().max(used));
        RequestPermit {
            budget: self.clone(),
            bytes,
            units,
        }
    }

    /// Bytes currently taken.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.get()
    }

    /// Most bytes ever taken at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes.get()
    }

    /// The configured budget.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// Bytes of one request, returned to the budget on drop.
#[derive(Debug)]
pub struct RequestPermit {
    budget: Rc<RequestBudget>,
    bytes: usize,
    units: u32,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let used = self.budget.used_bytes.get();
        debug_assert!(used >= self.bytes, "budget released more than it gave");
        self.budget.used_bytes.set(used.saturating_sub(self.bytes));
        self.budget.units.add_permits(self.units as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_past_the_budget_wait_and_an_oversized_request_goes_alone() {
        let budget = RequestBudget::new(100);
        let first = budget.try_acquire(60).expect("fits");
        assert!(budget.try_acquire(41).is_none(), "would exceed 100");
        let second = budget.try_acquire(40).expect("exactly fills it");
        assert_eq!(budget.used_bytes(), 100);
        drop((first, second));
        assert_eq!(budget.used_bytes(), 0);
        let huge = budget.try_acquire(1000).expect("alone");
        assert!(
            budget.try_acquire(1).is_none(),
            "nothing beside an oversized one"
        );
        drop(huge);
        assert_eq!((budget.used_bytes(), budget.peak_bytes()), (0, 1000));
    }

    #[test]
    fn a_waiter_proceeds_when_bytes_are_released() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let budget = RequestBudget::new(10);
            let held = budget.try_acquire(8).expect("fits");
            let waiting = tokio::task::spawn_local({
                let budget = budget.clone();
                async move { budget.acquire(5).await.bytes }
            });
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished(), "5 more do not fit beside 8");
            drop(held);
            assert_eq!(waiting.await.expect("task"), 5);
        });
    }

    #[test]
    fn a_large_waiter_is_not_overtaken_by_smaller_ones_behind_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let budget = RequestBudget::new(10);
            let held = budget.try_acquire(8).expect("fits");
            let large = tokio::task::spawn_local({
                let budget = budget.clone();
                async move { budget.acquire(10).await }
            });
            tokio::task::yield_now().await;
            assert!(
                budget.try_acquire(1).is_none(),
                "the 2 free bytes wait for the large one"
            );
            let small = tokio::task::spawn_local({
                let budget = budget.clone();
                async move { budget.acquire(1).await.bytes }
            });
            tokio::task::yield_now().await;
            drop(held);
            let large = large.await.expect("task");
            assert_eq!(large.bytes, 10);
            tokio::task::yield_now().await;
            assert!(
                !small.is_finished(),
                "the small one waits behind the large one"
            );
            drop(large);
            assert_eq!(small.await.expect("task"), 1);
            assert_eq!(budget.used_bytes(), 0);
        });
    }
}
