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
//! Lives on one shard thread (`Rc`, `Cell`): no lock, no atomics.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::Notify;

/// Request bytes in flight on one shard, bounded.
#[derive(Debug)]
pub struct RequestBudget {
    max_bytes: usize,
    used_bytes: Cell<usize>,
    /// Peak of `used_bytes` (for tests and metrics).
    peak_bytes: Cell<usize>,
    released: Notify,
}

impl RequestBudget {
    /// A budget of `max_bytes` (at least 1).
    pub fn new(max_bytes: usize) -> Rc<RequestBudget> {
        Rc::new(RequestBudget {
            max_bytes: max_bytes.max(1),
            used_bytes: Cell::new(0),
            peak_bytes: Cell::new(0),
            released: Notify::new(),
        })
    }

    /// Waits until `bytes` fit (or nothing else is in flight) and takes them.
    pub async fn acquire(self: &Rc<Self>, bytes: usize) -> RequestPermit {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(permit) = self.try_acquire(bytes) {
                return permit;
            }
            released.await;
        }
    }

    /// Takes `bytes` if they fit now (a request larger than the whole budget fits when
    /// nothing else is in flight).
    pub fn try_acquire(self: &Rc<Self>, bytes: usize) -> Option<RequestPermit> {
        let used = self.used_bytes.get();
        let fits = used == 0 || used.saturating_add(bytes) <= self.max_bytes;
        if !fits {
            return None;
        }
        let used = used + bytes;
        self.used_bytes.set(used);
        self.peak_bytes.set(self.peak_bytes.get().max(used));
        Some(RequestPermit {
            budget: self.clone(),
            bytes,
        })
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
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let used = self.budget.used_bytes.get();
        debug_assert!(used >= self.bytes, "budget released more than it gave");
        self.budget.used_bytes.set(used.saturating_sub(self.bytes));
        self.budget.released.notify_waiters();
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
}
