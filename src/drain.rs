//! A shard's part in a graceful shutdown: once the broker stops, its connections take no new
//! request but a Fetch (a new one closes the connection, with a log line), and the shard waits
//! for the requests already being handled to be answered before it closes its storage.
//!
//! Why: a request that reaches the storage after it closed fails its append, and a pipelined
//! idempotent producer then gets OUT_OF_ORDER_SEQUENCE_NUMBER for the batches behind the
//! failed one. librdkafka answers that by bumping its epoch and sending every unacknowledged
//! batch again, so a batch that was written but not yet acknowledged is written twice. A
//! closed connection is retried with the same sequence numbers instead, which the next
//! leader (or this broker after its restart) recognizes. Fetches stay admitted because a
//! follower's fetch is what completes the `acks=all` appends in flight; a read changes nothing.
//!
//! Owns the shard's stopping flag and its count of requests in hand. Must never: refuse a
//! request before the broker stops, or wait without bound (`shutdown.drain.timeout.ms`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Notify;

/// Kafka's Fetch API key: still admitted while draining.
const FETCH_API_KEY: i16 = 1;

#[derive(Default)]
struct Inner {
    stopping: Cell<bool>,
    in_flight: Cell<usize>,
    idle: Notify,
}

/// One shard's drain state (single-threaded: it lives on its shard).
#[derive(Default)]
pub struct Drain {
    inner: Rc<Inner>,
}

/// A request in hand; dropped when answered (or abandoned with its connection).
pub struct InFlight {
    inner: Rc<Inner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.inner.in_flight.get().saturating_sub(1);
        self.inner.in_flight.set(left);
        if left == 0 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Whether a connection may start handling a request with `api_key` now.
    pub fn admits(&self, api_key: i16, peer: SocketAddr) -> bool {
        if !self.inner.stopping.get() || api_key == FETCH_API_KEY {
            return true;
        }
        tracing::info!(%peer, api_key, "closing a connection: the broker is shutting down");
        false
    }

    /// Counts a request in hand until the returned guard drops.
    pub fn begin(&self) -> InFlight {
        self.inner.in_flight.set(self.inner.in_flight.get() + 1);
        InFlight {
            inner: self.inner.clone(),
        }
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Stops admitting new requests (but fetches) and waits up to `timeout` for those in hand
    /// to be answered; returns how many were still in hand when it gave up (0 = drained).
    pub async fn stop_and_wait(&self, timeout: Duration) -> usize {
        self.inner.stopping.set(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a last answer between the two is not missed.
            let idle = self.inner.idle.notified();
            if self.inner.in_flight.get() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.inner.in_flight.get();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn admits_everything_until_stopping_then_only_fetches() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let drain = Drain::default();
            assert!(drain.admits(0, peer()));
            let guard = drain.begin();
            assert_eq!(drain.in_flight(), 1);
            let still = drain.stop_and_wait(Duration::from_millis(20)).await;
            assert_eq!(still, 1, "one request still in hand at the deadline");
            assert!(!drain.admits(0, peer()), "Produce closes the connection");
            assert!(
                drain.admits(FETCH_API_KEY, peer()),
                "a follower's fetch goes on"
            );
            let waiting = async { drain.stop_and_wait(Duration::from_secs(5)).await };
            let answer = async {
                tokio::task::yield_now().await;
                drop(guard);
            };
            let (still, ()) = tokio::join!(waiting, answer);
            assert_eq!(still, 0);
            assert_eq!(drain.in_flight(), 0);
        });
    }
}
