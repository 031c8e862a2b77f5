//! The arrival order of one connection's Produce requests, kept through the moment each one
//! hands its partitions to their owning shards.
//!
//! A connection's requests are handled concurrently, and a pipelined idempotent producer's
//! batches keep their order only because each Produce dispatches its partitions before its
//! first await. A Produce that must await first (protocol v2's implicit add asks the
//! transaction coordinator) takes a [`Turn`] at arrival and waits for its predecessors'
//! dispatch before its own, so a later request cannot overtake it. Owns the turn counter;
//! must never make a request wait that has nobody ahead of it (the common case returns
//! without awaiting or allocating), nor let a dropped turn block the ones behind it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use tokio::sync::Notify;

/// One connection's Produce turns.
#[derive(Debug, Default)]
pub struct DispatchOrder {
    /// The next turn handed out.
    next: Cell<u64>,
    /// The turn allowed to dispatch now.
    current: Cell<u64>,
    /// Turns given up before their time (their request returned early): skipped.
    abandoned: RefCell<BTreeSet<u64>>,
    /// Turns waiting to be woken.
    waiting: Cell<usize>,
    notify: Notify,
}

impl DispatchOrder {
    /// A turn behind every turn taken before (call in arrival order, before any await).
    pub fn take(&self) -> Turn<'_> {
        let turn = self.next.get();
        self.next.set(turn + 1);
        Turn { order: self, turn }
    }

    fn advance(&self, from: u64) {
        let mut next = from + 1;
        {
            let mut abandoned = self.abandoned.borrow_mut();
            while abandoned.remove(&next) {
                next += 1;
            }
        }
        self.current.set(next);
        if self.waiting.get() > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A request's place in its connection's order; dropping it lets the next one go.
#[derive(Debug)]
pub struct Turn<'a> {
    order: &'a DispatchOrder,
    turn: u64,
}

impl Turn<'_> {
    /// Waits until every earlier turn is done (at once when none is pending).
    pub async fn wait(&self) {
        let order = self.order;
        while order.current.get() != self.turn {
            debug_assert!(order.current.get() < self.turn, "turns advance in order");
            let notified = order.notify.notified();
            if order.current.get() == self.turn {
                break;
            }
            order.waiting.set(order.waiting.get() + 1);
            notified.await;
            order.waiting.set(order.waiting.get() - 1);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let order = self.order;
        if order.current.get() == self.turn {
            order.advance(self.turn);
        } else {
            order.abandoned.borrow_mut().insert(self.turn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_go_in_order_and_abandoned_ones_are_skipped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let order = DispatchOrder::default();
            let first = order.take();
            let second = order.take();
            let third = order.take();
            // The first has nobody ahead: no await.
            first.wait().await;
            // The second gives up early; the third waits for the first only.
            drop(second);
            let waiter = async {
                third.wait().await;
                "third"
            };
            let releaser = async {
                tokio::task::yield_now().await;
                drop(first);
                "first"
            };
            let (a, b) = tokio::join!(waiter, releaser);
            assert_eq!((a, b), ("third", "first"));
            assert_eq!(order.current.get(), 2);
            drop(third);
            assert_eq!(order.current.get(), 3);
            assert!(order.abandoned.borrow().is_empty());
        });
    }
}
