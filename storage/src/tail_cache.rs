//! The per-shard tail cache (`log.tail.cache.bytes`): the newest appended batches of every
//! partition on the shard, kept in memory so consumers that keep up are served without
//! touching the disk.
//!
//! Owns the shard-wide byte budget, the limit that cuts it while the machine runs short of
//! memory (`limit_memory`, set by the broker from `log.tail.cache.memory.reserve.bytes`), and
//! the eviction order (oldest insertion first, across partitions). Must never hand out a batch
//! at or above the high watermark (the caller passes it) nor hold more than its budget or,
//! once a limit has evicted down to it, its limit.
//!
//! Memory: each cached batch is copied (stamped header and rest, contiguous) into memory the
//! cache owns: a chunk of its arena (`crate::tail_arena`), which it reuses once the batches
//! in it are evicted and no response holds them, or an allocation of its own when no chunk is
//! free. A batch never shares memory with its request frame: a slice of a frame would keep
//! the whole frame, and the connection's read buffer behind it, alive (a small batch of one
//! partition pinning a large frame whose other batches went to other partitions or shards),
//! and no budget could count that. One memcpy per batch on the append path buys a bound
//! that is hard. Batches handed to responses and evicted since are bounded separately
//! (`crate::response_budget`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use bytes::Bytes;

use crate::tail_arena::{Placement, TailArena};

/// One cached batch (already carrying its broker-assigned offsets), in memory the cache owns.
#[derive(Debug, Clone)]
pub(crate) struct CachedBatch {
    pub(crate) base_offset: i64,
    pub(crate) last_offset: i64,
    /// The stamped header followed by the rest of the batch: the bytes the file holds.
    pub(crate) data: Bytes,
    /// Insertion number, to recognise stale entries in the shard's eviction order.
    sequence: u64,
    /// Where the arena put it (own allocations count against the arena's cap while cached).
    placement: Placement,
}

impl CachedBatch {
    pub(crate) fn len_bytes(&self) -> usize {
        self.data.len()
    }
}

/// One partition's cached batches, contiguous and in offset order.
#[derive(Debug, Default)]
pub(crate) struct PartitionTail {
    batches: VecDeque<CachedBatch>,
    next_sequence: u64,
}

impl PartitionTail {
    /// Whole cached batches starting with the one holding `offset`, below `high_watermark`,
    /// at most `max_bytes` (or one batch when `min_one_batch`). None when `offset` is not in
    /// the cache.
    pub(crate) fn read(
        &self,
        offset: i64,
        high_watermark: i64,
        max_bytes: u32,
        min_one_batch: bool,
    ) -> Option<(Vec<Bytes>, u32)> {
        let first = self.batches.front()?;
        if offset < first.base_offset {
            return None;
        }
        let start = self
            .batches
            .partition_point(|batch| batch.last_offset < offset);
        let mut chunks = Vec::new();
        let mut total_bytes = 0u32;
        for batch in self.batches.iter().skip(start) {
            if batch.last_offset >= high_watermark {
                break;
            }
            let len = batch.len_bytes() as u32;
            let fits = total_bytes.saturating_add(len) <= max_bytes;
            let first_oversized = chunks.is_empty() && min_one_batch;
            if !fits && !first_oversized {
                break;
            }
            chunks.push(batch.data.clone());
            total_bytes += len;
        }
        if chunks.is_empty()
            && start < self.batches.len()
            && self.batches[start].last_offset < high_watermark
        {
            // The batch is there but over max_bytes and min_one_batch is off: an empty read.
            return Some((chunks, 0));
        }
        if start >= self.batches.len() {
            return None;
        }
        Some((chunks, total_bytes))
    }
}

/// The shard-wide budget and eviction order.
#[derive(Debug)]
pub(crate) struct TailCache {
    budget_bytes: usize,
    used_bytes: usize,
    /// (partition, insertion number) of every batch inserted, oldest first; an entry whose
    /// batch already left (truncated, dropped) is skipped when reached.
    order: VecDeque<(Weak<RefCell<PartitionTail>>, u64)>,
    arena: TailArena,
    /// Bytes of cached batches in allocations of their own.
    own_bytes: usize,
    /// Batches left out because the arena had no memory under its cap for them (chunks held
    /// by responses not yet written): their partitions' readers went to the files.
    uncached_batches: u64,
}

impl TailCache {
    pub(crate) fn new(budget_bytes: usize) -> TailCache {
        TailCache {
            budget_bytes,
            used_bytes: 0,
            order: VecDeque::new(),
            arena: TailArena::new(budget_bytes),
            own_bytes: 0,
            uncached_batches: 0,
        }
    }

    /// Caches a copy of one batch of `tail`'s partition (its stamped header and the rest),
    /// evicting the shard's oldest batches first to make room. The budget counts the copies'
    /// bytes; the arena's chunks add at most a quarter and one chunk (their unused ends). A
    /// batch the arena cannot place is not cached, nor is anything before it in the partition
    /// (what is cached must stay contiguous): readers go to the file.
    pub(crate) fn insert(
        &mut self,
        tail: &Rc<RefCell<PartitionTail>>,
        base_offset: i64,
        last_offset: i64,
        header: &[u8],
        rest: &[u8],
    ) {
        let len = header.len() + rest.len();
        if len > self.effective_budget_bytes() {
            // Too big to cache; readers go to the file, and what is cached must stay contiguous.
            self.remove_all(tail);
            return;
        }
        let follows = tail
            .borrow()
            .batches
            .back()
            .is_none_or(|last| last.last_offset + 1 == base_offset);
        if !follows {
            self.remove_all(tail);
        }
        self.evict_to_fit(len);
        let Some((data, placement)) = self.arena.copy(header, rest, self.own_bytes) else {
            self.uncached_batches += 1;
            self.remove_all(tail);
            return;
        };
        let mut partition = tail.borrow_mut();
        let sequence = partition.next_sequence;
        partition.next_sequence += 1;
        partition.batches.push_back(CachedBatch {
            base_offset,
            last_offset,
            data,
            sequence,
            placement,
        });
        self.order.push_back((Rc::downgrade(tail), sequence));
        self.used_bytes += len;
        if placement == Placement::Own {
            self.own_bytes += len;
        }
        debug_assert!(self.used_bytes <= self.effective_budget_bytes());
    }

    /// Whether chunks the arena makes from now on ask for transparent huge pages.
    pub(crate) fn set_huge_pages(&mut self, huge_pages: bool) {
        self.arena.set_huge_pages(huge_pages);
    }

    /// The batch bytes the cache may hold now.
    pub(crate) fn effective_budget_bytes(&self) -> usize {
        // Cut while memory is limited (TailCache::limit_memory).
        self.budget_bytes.min(self.arena.batch_limit_bytes())
    }

    /// Limits the cache's memory (chunks and own allocations) to `memory_bytes`, or lifts the
    /// limit when that is at least what the budget takes: evicts the oldest batches down to
    /// what fits and gives free chunks over the limit back to the allocator. Chunks held by
    /// responses not yet written go back when they come free.
    pub(crate) fn limit_memory(&mut self, memory_bytes: usize) {
        self.arena.limit_memory(memory_bytes);
        self.evict_to_fit(0);
        self.arena.release_chunks_over_cap();
    }

    /// Evicts the shard's oldest batches until `len` more bytes fit the budget.
    fn evict_to_fit(&mut self, len: usize) {
        while self.used_bytes + len > self.effective_budget_bytes() {
            let Some((weak, sequence)) = self.order.pop_front() else {
                break;
            };
            let Some(owner) = weak.upgrade() else {
                continue;
            };
            let evicted = {
                let mut owner = owner.borrow_mut();
                if owner
                    .batches
                    .front()
                    .is_some_and(|batch| batch.sequence == sequence)
                {
                    owner.batches.pop_front()
                } else {
                    None
                }
            };
            if let Some(batch) = evicted {
                if let Placement::Chunk(fill) = batch.placement {
                    self.arena.evicted(fill);
                }
                self.forget(&batch);
            }
        }
    }

    /// Takes a batch that left the cache off the counts.
    fn forget(&mut self, batch: &CachedBatch) {
        self.used_bytes -= batch.len_bytes();
        if batch.placement == Placement::Own {
            self.own_bytes -= batch.len_bytes();
        }
    }

    /// Drops `tail`'s batches with base offset >= `offset` (an append rolled back).
    pub(crate) fn truncate_from(&mut self, tail: &Rc<RefCell<PartitionTail>>, offset: i64) {
        let mut partition = tail.borrow_mut();
        while partition
            .batches
            .back()
            .is_some_and(|batch| batch.base_offset >= offset)
        {
            if let Some(batch) = partition.batches.pop_back() {
                self.forget(&batch);
            }
        }
    }

    /// Drops `tail`'s batches that end below `offset` (the cleaner rewrote them on disk:
    /// readers must get the cleaned copy). The rest stays contiguous.
    pub(crate) fn drop_below(&mut self, tail: &Rc<RefCell<PartitionTail>>, offset: i64) {
        let mut partition = tail.borrow_mut();
        while partition
            .batches
            .front()
            .is_some_and(|batch| batch.last_offset < offset)
        {
            if let Some(batch) = partition.batches.pop_front() {
                self.forget(&batch);
            }
        }
    }

    /// Drops every batch of `tail` (partition deleted or cache made non-contiguous).
    pub(crate) fn remove_all(&mut self, tail: &Rc<RefCell<PartitionTail>>) {
        self.truncate_from(tail, i64::MIN);
    }

    /// Batch bytes held (what the budget counts).
    pub(crate) fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Bytes of arena chunks in existence.
    pub(crate) fn chunk_memory_bytes(&self) -> usize {
        self.arena.chunk_memory_bytes()
    }

    /// The memory limit in force, if one limits anything.
    pub(crate) fn memory_limit_bytes(&self) -> Option<usize> {
        self.arena.memory_limit_bytes()
    }

    /// The memory the budget lets the cache take: a limit at or above it limits nothing.
    pub(crate) fn memory_cap_bytes(&self) -> usize {
        self.arena.configured_cap_bytes()
    }

    /// Arena chunks allocated since start (each faulted in once; reused ones not counted).
    pub(crate) fn chunks_made(&self) -> u64 {
        self.arena.chunks_made
    }

    /// Batches cached in allocations of their own since start.
    pub(crate) fn own_batches(&self) -> u64 {
        self.arena.own_batches
    }

    /// Batches not cached for want of memory under the arena's cap, since start.
    pub(crate) fn uncached_batches(&self) -> u64 {
        self.uncached_batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_evicts_oldest_across_partitions_and_reads_respect_watermark() {
        let mut cache = TailCache::new(300);
        let a = Rc::new(RefCell::new(PartitionTail::default()));
        let b = Rc::new(RefCell::new(PartitionTail::default()));
        let batch = |fill: u8| (vec![fill; 61], vec![fill; 39]);
        let (header, rest) = batch(1);
        cache.insert(&a, 0, 0, &header, &rest);
        let (header, rest) = batch(2);
        cache.insert(&b, 0, 4, &header, &rest);
        let (header, rest) = batch(3);
        cache.insert(&a, 1, 1, &header, &rest);
        assert_eq!(cache.used_bytes(), 300);
        let (header, rest) = batch(4);
        cache.insert(&b, 5, 5, &header, &rest);
        assert_eq!(cache.used_bytes(), 300);
        assert!(
            a.borrow().read(0, 10, 1000, true).is_none(),
            "oldest batch evicted"
        );
        let (chunks, total) = a.borrow().read(1, 10, 1000, true).expect("cached");
        assert_eq!(
            (chunks.len(), total),
            (1, 100),
            "header and rest, contiguous"
        );
        assert_eq!(chunks.concat(), [vec![3u8; 61], vec![3u8; 39]].concat());
        let (chunks, _) = b.borrow().read(3, 5, 1000, true).expect("cached");
        assert_eq!(chunks.len(), 1, "batch 5 is at the high watermark");
        cache.truncate_from(&b, 5);
        assert_eq!(cache.used_bytes(), 200);
        let (chunks, total) = b.borrow().read(0, 10, 50, true).expect("min one batch");
        assert_eq!((chunks.len(), total), (1, 100));
    }

    #[test]
    fn a_memory_limit_evicts_oldest_first_and_lifting_it_restores_the_budget() {
        let budget = 64 * 256 * 1024;
        let mut cache = TailCache::new(budget);
        let tail = Rc::new(RefCell::new(PartitionTail::default()));
        let rest = vec![9u8; 64 * 1024 - 61];
        let header = vec![1u8; 61];
        for offset in 0..400 {
            cache.insert(&tail, offset, offset, &header, &rest);
        }
        let full_memory = cache.chunk_memory_bytes();
        assert!(full_memory >= budget, "the cache filled its budget");
        cache.limit_memory(full_memory / 4);
        assert!(cache.chunk_memory_bytes() <= full_memory / 4);
        assert!(cache.used_bytes() <= cache.effective_budget_bytes());
        assert!(cache.effective_budget_bytes() <= full_memory / 4 / 5 * 4);
        assert!(
            tail.borrow().read(0, 400, u32::MAX, true).is_none(),
            "the oldest batches went first"
        );
        let (newest, _) = tail
            .borrow()
            .read(399, 400, u32::MAX, true)
            .expect("newest kept");
        assert_eq!(newest.concat(), [header.clone(), rest.clone()].concat());
        // While limited, new batches still come in, under the limit.
        for offset in 400..500 {
            cache.insert(&tail, offset, offset, &header, &rest);
        }
        assert!(cache.chunk_memory_bytes() <= full_memory / 4);
        cache.limit_memory(usize::MAX);
        assert_eq!(cache.effective_budget_bytes(), budget);
        for offset in 500..900 {
            cache.insert(&tail, offset, offset, &header, &rest);
        }
        assert!(
            cache.used_bytes() > budget / 2,
            "the whole budget is usable again"
        );
    }
    #[test]
    fn at_the_budget_the_oldest_chunk_is_reused_rather_than_a_new_one_made() {
        // 16 chunks of 1 MiB hold the budget; the arena may make 21 (a quarter more and one).
        let budget = 16 << 20;
        let mut cache = TailCache::new(budget);
        let tails: Vec<_> = (0..100)
            .map(|_| Rc::new(RefCell::new(PartitionTail::default())))
            .collect();
        let header = vec![1u8; 61];
        let rest = vec![2u8; 4096 - 61];
        let mut next_offset = vec![0i64; tails.len()];
        let mut made_at_budget = None;
        for round in 0..20 * budget / 4096 {
            let partition = round % tails.len();
            let offset = next_offset[partition];
            next_offset[partition] += 1;
            cache.insert(&tails[partition], offset, offset, &header, &rest);
            if made_at_budget.is_none() && cache.used_bytes() + 4096 > budget {
                made_at_budget = Some(cache.chunks_made());
            }
        }
        let made_at_budget = made_at_budget.expect("the budget was reached");
        assert_eq!(made_at_budget, 16, "the budget's bytes fill 16 chunks");
        assert!(
            cache.chunks_made() <= made_at_budget + 1,
            "{} chunks made over 19 budgets' worth of batches past the budget",
            cache.chunks_made() - made_at_budget
        );
        assert_eq!(
            cache.chunk_memory_bytes(),
            cache.chunks_made() as usize * (1 << 20)
        );
        assert!(cache.used_bytes() > budget - (2 << 20));
    }
}
