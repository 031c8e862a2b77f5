//! The shard's budget of tail-cache bytes handed to responses not yet written
//! (`fetch.response.cache.bytes.max`): what a Fetch may keep alive in memory beyond what the
//! tail cache itself holds, once the cache has evicted it.
//!
//! Owns the count of handed-out bytes and the permits that give them back. A read charges the
//! whole cached range first; each chunk it hands out then carries a permit for its own length
//! inside its `Bytes` (`Bytes::from_owner`), so the bytes return exactly when the last clone
//! of that chunk is dropped: when the copying path has copied it, when the ring has released
//! a send (SENDMSG_ZC keeps its memory until the notification), or when a connection that
//! never read its responses closes. No caller has to remember a release. A read that finds
//! the budget spent is served from the segment file instead, which pins no user memory.
//!
//! Must never: let the charged bytes exceed the budget (the check and the charge are one
//! atomic step), give back more than was charged, or block: a spent budget diverts a read, it
//! never waits for one. Permits may drop on any thread (a response is written by the shard
//! that owns the connection, not the one that owns the partition), so the count is atomic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// One shard's budget; shared (Arc) with every permit it handed out.
#[derive(Debug)]
pub(crate) struct ResponseBudget {
    /// Bytes handed out and not yet given back.
    held_bytes: AtomicUsize,
    /// `fetch.response.cache.bytes.max`.
    max_bytes: AtomicUsize,
    /// Reads sent to the file because the budget could not take them.
    spent_reads: AtomicU64,
}

impl ResponseBudget {
    pub(crate) fn new(max_bytes: usize) -> Arc<ResponseBudget> {
        Arc::new(ResponseBudget {
            held_bytes: AtomicUsize::new(0),
            max_bytes: AtomicUsize::new(max_bytes),
            spent_reads: AtomicU64::new(0),
        })
    }

    pub(crate) fn set_max_bytes(&self, max_bytes: usize) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn spent_reads(&self) -> u64 {
        self.spent_reads.load(Ordering::Relaxed)
    }

    /// Charges `chunks` (one read's cached range, `total_bytes` in all) and wraps each in a
    /// permit for its length; None (nothing charged, the read counted as diverted) when the
    /// budget cannot take all of them.
    pub(crate) fn pin(
        self: &Arc<Self>,
        chunks: Vec<Bytes>,
        total_bytes: usize,
    ) -> Option<Vec<Bytes>> {
        debug_assert_eq!(
            chunks.iter().map(Bytes::len).sum::<usize>(),
            total_bytes,
            "a read's total is the sum of its chunks"
        );
        if !self.try_charge(total_bytes) {
            self.spent_reads.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(
            chunks
                .into_iter()
                .map(|bytes| {
                    let permit = Permit {
                        budget: self.clone(),
                        bytes: bytes.len(),
                    };
                    Bytes::from_owner(Pinned {
                        bytes,
                        _permit: permit,
                    })
                })
                .collect(),
        )
    }

    /// Adds `bytes` to what is held if that stays within the budget.
    fn try_charge(&self, bytes: usize) -> bool {
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let charged = self
            .held_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&after| after <= max_bytes)
            });
        if let Ok(held) = charged {
            assert!(held + bytes <= max_bytes, "charged past the budget");
        }
        charged.is_ok()
    }
}

/// Gives its bytes back when dropped.
#[derive(Debug)]
struct Permit {
    budget: Arc<ResponseBudget>,
    bytes: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self
            .budget
            .held_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        assert!(before >= self.bytes, "gave back more than was charged");
    }
}

/// A chunk handed to a response, with its permit: the owner behind the `Bytes` the response
/// carries.
struct Pinned {
    bytes: Bytes,
    _permit: Permit,
}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_charged_whole_and_each_chunk_gives_its_bytes_back_when_its_last_clone_drops() {
        let budget = ResponseBudget::new(250);
        let chunks = vec![Bytes::from(vec![1u8; 100]), Bytes::from(vec![2u8; 100])];
        let pinned = budget.pin(chunks, 200).expect("fits");
        assert_eq!(budget.held_bytes(), 200);
        assert_eq!(&pinned[0][..], &[1u8; 100][..]);
        assert_eq!(&pinned[1][..], &[2u8; 100][..]);
        // 200 + 100 > 250: nothing is charged and the read is counted as diverted.
        assert!(budget.pin(vec![Bytes::from(vec![3u8; 100])], 100).is_none());
        assert_eq!((budget.held_bytes(), budget.spent_reads()), (200, 1));
        let mut pinned = pinned.into_iter();
        let first = pinned.next().expect("two chunks");
        let clone = first.slice(10..20);
        drop(first);
        assert_eq!(
            budget.held_bytes(),
            200,
            "a slice of the chunk still pins all of it"
        );
        drop(clone);
        assert_eq!(budget.held_bytes(), 100);
        drop(pinned);
        assert_eq!(budget.held_bytes(), 0);
        budget.set_max_bytes(0);
        assert!(budget.pin(vec![Bytes::from(vec![4u8; 1])], 1).is_none());
        assert!(
            budget.pin(Vec::new(), 0).is_some(),
            "nothing to charge always fits"
        );
    }
}
