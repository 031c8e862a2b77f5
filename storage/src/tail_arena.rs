//! The tail cache's memory: large chunks that cached batches are copied into one after the
//! other and that are reused once nothing refers to them any more.
//!
//! Why: a cache of seconds of produce traffic (gigabytes) turns over its whole budget every few
//! seconds. One allocation per batch made every cached byte fresh memory: the allocator hands
//! back pages the kernel must fault in and zero (measured: with a 6 GiB cache per shard, 1-partition
//! produce fell from 1,134 to 954 MB/s and broker CPU per GB rose 34%). Chunks are written
//! once, faulted once, and then recycled: the steady state costs the one memcpy the cache always
//! made, nothing more.
//!
//! Owns: the chunk being filled, the retired chunks in fill order, and the cap on how many
//! chunks exist (lowered while memory is limited: free chunks over it go back to the
//! allocator, held ones when they come free). A cached batch is a `Bytes` view into its chunk;
//! a chunk is reused only when every view into it is gone (the cache evicted its batches and
//! no response holds one), which `BytesMut::try_reclaim` checks without allocating. A batch
//! too large for a chunk, or one that finds no chunk free with the cap reached, gets an
//! allocation of its own, and chunks plus the cache's own allocations stay under one cap (the
//! budget, a quarter more for the chunks' unused ends, and one chunk): a batch that fits
//! nowhere is not cached.
//!
//! Must never: let a view see bytes written for another batch (a chunk is only rewritten once
//! it is unique), allocate past its cap, or hand out a view shorter or longer than the batch.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::stream_copy::extend_streaming;

/// Largest chunk: big enough that a chunk holds many 256 KiB batches and spans whole 2 MiB huge
/// pages; small enough that one pinned batch pins little.
const CHUNK_MAX_BYTES: usize = 8 << 20;

/// Smallest chunk; budgets below 16 of these keep one allocation per batch (tests' tiny caches).
const CHUNK_MIN_BYTES: usize = 256 << 10;

/// Retired chunks examined per refill: the oldest are the likeliest free (the cache evicts
/// oldest first), and a bounded scan keeps the append path's cost flat.
const RECLAIM_SCAN_MAX: usize = 4;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct TailArena {
    chunk_bytes: usize,
    /// Chunks that may exist now: `configured_max_chunks`, or fewer while memory is limited.
    max_chunks: usize,
    /// What chunks and the cache's own-allocated batches may take together now.
    memory_cap_bytes: usize,
    /// `max_chunks` and `memory_cap_bytes` as sized from the budget (the most they return to).
    configured_max_chunks: usize,
    configured_cap_bytes: usize,
    /// Chunks in existence (current and retired, reclaimable or not).
    chunks: usize,
    current: Option<Filled>,
    retired: VecDeque<Filled>,
    /// Fill number the next chunk taken (new or reused) gets: fills are numbered in the order
    /// batches were copied, which is the order the cache evicts in.
    next_fill: ChunkFill,
    /// Every chunk filled before this one holds no cached batch any more (the cache evicted
    /// oldest first up to a batch of this fill, [`TailArena::evicted`]): a chunk among those
    /// that is not free is held by a response only.
    cached_from: ChunkFill,
    /// Where [`TailArena::take_free_chunk`] looks next behind the oldest chunks.
    cursor: usize,
    /// Whether new chunks ask for transparent huge pages (`log.tail.cache.huge.pages`) or
    /// refuse them (see [`new_chunk`]).
    huge_pages: bool,
    /// Batches copied into chunks and batches that got an allocation of their own.
    pub(crate) chunked_batches: u64,
    pub(crate) own_batches: u64,
    /// Chunks allocated (and faulted in) since start, reused ones not counted.
    pub(crate) chunks_made: u64,
}

/// A chunk's fill: chunks are numbered each time one is taken to be filled (new or reused),
/// in the order batches are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ChunkFill(u64);

/// A chunk and the fill its batches were copied in.
#[derive(Debug)]
struct Filled {
    chunk: BytesMut,
    fill: ChunkFill,
}

/// Where [`TailArena::copy`] put a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// In a chunk, during the fill given (the cache reports it back when it evicts the batch).
    Chunk(ChunkFill),
    /// An allocation of its own: the caller counts it against the memory cap until it drops it.
    Own,
}

impl TailArena {
    /// An arena for a cache of `budget_bytes`: chunks of about a sixteenth of the budget (within
    /// the limits above), and a memory cap of the budget plus a quarter (the unused end of each
    /// chunk) plus the chunk being filled.
    pub(crate) fn new(budget_bytes: usize) -> TailArena {
        let chunk_bytes = (budget_bytes / 16).clamp(CHUNK_MIN_BYTES, CHUNK_MAX_BYTES);
        let (max_chunks, memory_cap_bytes) = if budget_bytes < 16 * CHUNK_MIN_BYTES {
            (0, budget_bytes)
        } else {
            let chunks = (budget_bytes + budget_bytes / 4).div_ceil(chunk_bytes) + 1;
            (chunks, chunks * chunk_bytes)
        };
        TailArena {
            chunk_bytes,
            max_chunks,
            memory_cap_bytes,
            configured_max_chunks: max_chunks,
            configured_cap_bytes: memory_cap_bytes,
            chunks: 0,
            current: None,
            retired: VecDeque::new(),
            next_fill: ChunkFill(0),
            cached_from: ChunkFill(0),
            cursor: 0,
            huge_pages: false,
            chunked_batches: 0,
            own_batches: 0,
            chunks_made: 0,
        }
    }

    /// Whether chunks made from now on ask for transparent huge pages (true) or refuse them.
    pub(crate) fn set_huge_pages(&mut self, huge_pages: bool) {
        self.huge_pages = huge_pages;
    }

    /// `header` followed by `rest`, contiguous: in a chunk when it fits a chunk's quarter
    /// (larger batches would waste too much of a chunk's end), else in an allocation of its own
    /// if chunks plus `own_bytes` (the caller's own-allocated batches still held) leave room
    /// under the cap, giving free chunks back to make it. None when neither can be had: the
    /// caller does not cache the batch.
    pub(crate) fn copy(
        &mut self,
        header: &[u8],
        rest: &[u8],
        own_bytes: usize,
    ) -> Option<(Bytes, Placement)> {
        let len = header.len() + rest.len();
        if len > 0 && len <= self.chunk_bytes / 4 && self.make_room(len) {
            let Some(Filled { chunk, fill }) = self.current.as_mut() else {
                unreachable!("make_room leaves a current chunk with room");
            };
            debug_assert!(
                chunk.is_empty(),
                "every batch is split off as it is written"
            );
            chunk.extend_from_slice(header);
            extend_streaming(chunk, rest);
            self.chunked_batches += 1;
            let view = chunk.split_to(len).freeze();
            debug_assert_eq!(view.len(), len);
            return Some((view, Placement::Chunk(*fill)));
        }
        while self.chunk_memory_bytes() + own_bytes + len > self.memory_cap_bytes {
            if !self.release_free_chunk() {
                return None;
            }
        }
        self.own_batches += 1;
        let mut data = BytesMut::with_capacity(len);
        data.extend_from_slice(header);
        extend_streaming(&mut data, rest);
        Some((data.freeze(), Placement::Own))
    }

    /// Makes the current chunk able to take `len` more bytes without reallocating: keeps it, or
    /// retires it and takes a free retired chunk or a new one. False when none can be had.
    fn make_room(&mut self, len: usize) -> bool {
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.chunk.capacity() >= len)
        {
            return true;
        }
        if let Some(full) = self.current.take() {
            self.retired.push_back(full);
        }
        // Over the cap (memory was limited while chunks were held): free chunks go back to
        // the allocator instead of being reused.
        self.release_chunks_over_cap();
        let reused = if self.chunks <= self.max_chunks {
            self.take_free_chunk()
        } else {
            None
        };
        let chunk = if let Some(chunk) = reused {
            chunk
        } else if self.chunks < self.max_chunks {
            self.chunks += 1;
            self.chunks_made += 1;
            new_chunk(self.chunk_bytes, self.huge_pages)
        } else {
            return false;
        };
        let fill = self.next_fill;
        self.next_fill = ChunkFill(fill.0 + 1);
        self.current = Some(Filled { chunk, fill });
        true
    }

    /// A retired chunk nothing refers to any more, made whole again: from among the oldest few,
    /// else from a few further in (a cursor that walks the rest of the queue, a few chunks per
    /// call). Why the order matters: at its budget the cache evicts only the bytes each new
    /// batch needs, so when the current chunk is full the oldest one usually still holds its
    /// last cached batches, and the chunks behind it hold newer ones. A chunk that still holds
    /// cached batches keeps its place (it is the next to come free); one that holds none but is
    /// not free (a response not yet written keeps a view) goes to the back, so it never hides
    /// the free ones behind it. Sending the former to the back too (as this once did) made
    /// every scan at the budget pass over the oldest chunks just before they came free, and
    /// the arena grew by a new chunk each time, at first-touch speed, up to its cap
    /// (BENCHMARKS.md, "the cache-full collapse"). The cursor finds chunks freed out of order
    /// (a deleted topic's, behind chunks another topic still has cached) without reordering.
    fn take_free_chunk(&mut self) -> Option<BytesMut> {
        let chunk_bytes = self.chunk_bytes;
        let mut index = 0;
        for _ in 0..RECLAIM_SCAN_MAX {
            let entry = self.retired.get_mut(index)?;
            if entry.chunk.try_reclaim(chunk_bytes) {
                return self.retired.remove(index).map(|entry| entry.chunk);
            }
            if entry.fill < self.cached_from {
                if let Some(held) = self.retired.remove(index) {
                    self.retired.push_back(held);
                }
            } else {
                index += 1;
            }
        }
        // The oldest `index` chunks were just looked at; the cursor walks those behind them.
        let further = self.retired.len().saturating_sub(index);
        for _ in 0..RECLAIM_SCAN_MAX.min(further) {
            if self.cursor < index || self.cursor >= self.retired.len() {
                self.cursor = index;
            }
            let at = self.cursor;
            let entry = self.retired.get_mut(at)?;
            if entry.chunk.try_reclaim(chunk_bytes) {
                return self.retired.remove(at).map(|entry| entry.chunk);
            }
            self.cursor += 1;
        }
        None
    }

    /// The cache evicted (oldest first) a batch copied during `fill`: no chunk filled before
    /// it holds a cached batch any more.
    pub(crate) fn evicted(&mut self, fill: ChunkFill) {
        debug_assert!(fill < self.next_fill, "a fill not yet handed out");
        self.cached_from = self.cached_from.max(fill);
    }

    /// Gives one free chunk's memory back (an own allocation needs the room under the cap).
    fn release_free_chunk(&mut self) -> bool {
        match self.take_free_chunk() {
            Some(_) => {
                self.chunks -= 1;
                true
            }
            None => false,
        }
    }

    /// Bytes of chunk memory in existence.
    pub(crate) fn chunk_memory_bytes(&self) -> usize {
        self.chunks * self.chunk_bytes
    }

    /// The cap [`TailArena::limit_memory`] set, while it is below the budget's.
    pub(crate) fn memory_limit_bytes(&self) -> Option<usize> {
        (self.memory_cap_bytes < self.configured_cap_bytes).then_some(self.memory_cap_bytes)
    }

    /// The cap the budget gives: a memory limit at or above it limits nothing.
    pub(crate) fn configured_cap_bytes(&self) -> usize {
        self.configured_cap_bytes
    }

    /// Caps chunks and own allocations together at `memory_bytes` (never above the cap the
    /// budget gave) and gives every free chunk over the new cap back to the allocator now (an
    /// 8 MiB chunk is a mapping of its own: the kernel gets the memory back) once the caller
    /// has evicted and calls [`TailArena::release_chunks_over_cap`]. Chunks still held by
    /// responses go when they come free. Returns the batch bytes that fit under the cap (a
    /// quarter of a chunked cache's memory is the chunks' unused ends), or `usize::MAX` when
    /// the cap is back where the budget put it.
    pub(crate) fn limit_memory(&mut self, memory_bytes: usize) -> usize {
        if self.configured_max_chunks == 0 {
            self.memory_cap_bytes = memory_bytes.min(self.configured_cap_bytes);
        } else {
            self.max_chunks = (memory_bytes / self.chunk_bytes).min(self.configured_max_chunks);
            self.memory_cap_bytes = self.max_chunks * self.chunk_bytes;
        }
        self.batch_limit_bytes()
    }

    /// The batch bytes that fit under the memory limit (a quarter of a chunked cache's memory
    /// is the chunks' unused ends), or `usize::MAX` when no limit is in force.
    pub(crate) fn batch_limit_bytes(&self) -> usize {
        match self.memory_limit_bytes() {
            None => usize::MAX,
            Some(cap) if self.configured_max_chunks == 0 => cap,
            Some(cap) => cap / 5 * 4,
        }
    }

    /// Drops free chunks until no more than `max_chunks` exist (the one being filled too, if
    /// nothing holds it). Only ever over the cap after a limit cut: then it scans every
    /// retired chunk once, on the cut and on each refill until held chunks have come free.
    pub(crate) fn release_chunks_over_cap(&mut self) {
        if self.chunks <= self.max_chunks {
            return;
        }
        if let Some(current) = self.current.take() {
            self.retired.push_front(current);
        }
        let (chunk_bytes, max_chunks) = (self.chunk_bytes, self.max_chunks);
        let mut chunks = self.chunks;
        self.retired.retain_mut(|Filled { chunk, .. }| {
            let release = chunks > max_chunks && chunk.try_reclaim(chunk_bytes);
            if release {
                chunks -= 1;
            }
            !release
        });
        self.chunks = chunks;
    }
}

/// A chunk of `chunk_bytes` whose whole 2 MiB pages ask for transparent huge pages
/// (`huge_pages`, MADV_HUGEPAGE) or refuse them (MADV_NOHUGEPAGE, so a kernel whose THP mode is
/// `always` does not use them either). Why refuse by default: a chunk is faulted in once, on
/// the shard thread while records arrive, and on a VM whose host takes free guest memory back
/// (virtio-balloon free page reporting gives back whole free 2 MiB blocks, the only place a
/// huge page can come from) a fresh huge page's first touch measured 0.46 GB/s, a host fault
/// each, against 3.3 GB/s for 4 KiB pages while the kernel finds them in fragmented memory the
/// host still backs (about 4 GiB here; past that they measured as slow): a fresh broker's
/// produce ran at half the rate and twice the CPU per GB for its first gigabytes. Once faulted
/// in, huge pages measured no faster for the cache's copies (BENCHMARKS.md, "Tail-cache
/// pages"). Only whole huge pages inside the block can be either: the broker's allocator
/// starts a block of whole huge pages (an 8 MiB chunk) on a huge-page boundary; under the
/// system allocator (this crate's tests) the unaligned ends keep the kernel's default.
fn new_chunk(chunk_bytes: usize, huge_pages: bool) -> BytesMut {
    let mut chunk = BytesMut::with_capacity(chunk_bytes);
    let start = chunk.as_mut_ptr() as usize;
    const HUGE_PAGE_BYTES: usize = 2 << 20;
    let aligned_start = start.next_multiple_of(HUGE_PAGE_BYTES);
    let end = start + chunk_bytes;
    if aligned_start + HUGE_PAGE_BYTES <= end {
        let aligned_len = (end - aligned_start) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
        let advice = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: the range lies inside the chunk's own allocation, which nothing has touched
        // yet; the advice only changes how the kernel backs it, never its contents. A refusal
        // (no THP in this kernel) changes nothing, so the result is not checked.
        unsafe {
            libc::madvise(aligned_start as *mut libc::c_void, aligned_len, advice);
        }
    }
    // Fault the whole chunk in now, in one call, rather than a page at a time inside the
    // copies that fill it: measured 4.4 against 3.1 GB/s for fresh 4 KiB pages, and a fresh
    // broker's 1-partition produce took 0.92 against 1.16 CPU-s per GB until its cache had
    // filled once. Only whole pages inside the block (an 8 MiB chunk from the broker's
    // allocator is page-aligned; the system allocator's may not be).
    const PAGE_BYTES: usize = 4096;
    let first_page = start.next_multiple_of(PAGE_BYTES);
    if first_page + PAGE_BYTES <= end {
        let pages_len = (end - first_page) / PAGE_BYTES * PAGE_BYTES;
        // SAFETY: as above, the range lies inside the chunk's own allocation; populating for
        // writing only faults its pages in (zeroed, as the allocation's first touch would).
        // Kernels before 5.14 refuse the advice (EINVAL), and then the copies fault the pages
        // in as they go, as before; so the result is not checked.
        unsafe {
            libc::madvise(
                first_page as *mut libc::c_void,
                pages_len,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 16 * CHUNK_MIN_BYTES;

    fn chunk(arena: &mut TailArena, header: &[u8], rest: &[u8]) -> Bytes {
        chunk_and_fill(arena, header, rest).0
    }

    /// `chunks` whole chunks of quarter-chunk batches of `byte`, four views a chunk.
    fn fill_chunks(arena: &mut TailArena, chunks: usize, byte: u8) -> Vec<Bytes> {
        (0..chunks * 4)
            .map(|_| chunk(arena, &[], &vec![byte; CHUNK_MIN_BYTES / 4]))
            .collect()
    }

    fn chunk_and_fill(arena: &mut TailArena, header: &[u8], rest: &[u8]) -> (Bytes, ChunkFill) {
        match arena.copy(header, rest, 0).expect("room") {
            (view, Placement::Chunk(fill)) => (view, fill),
            (_, Placement::Own) => panic!("not in a chunk"),
        }
    }

    #[test]
    fn batches_share_a_chunk_and_keep_their_own_bytes() {
        let mut arena = TailArena::new(BUDGET);
        let a = chunk(&mut arena, &[1; 61], &[2; 1000]);
        let b = chunk(&mut arena, &[3; 61], &[4; 500]);
        assert_eq!(a.len(), 1061);
        assert_eq!(&a[..61], &[1; 61][..]);
        assert_eq!(&a[61..], &[2; 1000][..]);
        assert_eq!(&b[..61], &[3; 61][..]);
        assert_eq!(&b[61..], &[4; 500][..]);
        assert_eq!(
            b.as_ptr() as usize,
            a.as_ptr() as usize + a.len(),
            "one chunk, one after the other"
        );
        assert_eq!((arena.chunked_batches, arena.own_batches), (2, 0));
        assert_eq!(arena.chunk_memory_bytes(), CHUNK_MIN_BYTES);
    }

    #[test]
    fn a_chunk_is_reused_only_once_every_view_is_gone() {
        let mut arena = TailArena::new(BUDGET);
        let quarter = CHUNK_MIN_BYTES / 4;
        let first: Vec<Bytes> = (0..4)
            .map(|_| chunk(&mut arena, &[], &vec![7; quarter]))
            .collect();
        let first_chunk = first[0].as_ptr() as usize;
        // The next batch retires the full chunk; a view is still alive, so a new chunk is made.
        let held = first[1].clone();
        drop(first);
        let second = chunk(&mut arena, &[], &[9; 100]);
        assert_ne!(second.as_ptr() as usize, first_chunk);
        assert_eq!(arena.chunk_memory_bytes(), 2 * CHUNK_MIN_BYTES);
        assert_eq!(
            &held[..],
            &vec![7; quarter][..],
            "a held view never changes"
        );
        // Fill the second chunk; with the held view dropped the first one comes back.
        drop(held);
        let rest: Vec<Bytes> = (0..3)
            .map(|_| chunk(&mut arena, &[], &vec![8; quarter]))
            .collect();
        // The second chunk has less than a quarter left: this batch retires it and takes the
        // first chunk back.
        let reused = chunk(&mut arena, &[], &vec![5; quarter]);
        assert_eq!(
            reused.as_ptr() as usize,
            first_chunk,
            "the free chunk is reused"
        );
        assert_eq!(arena.chunk_memory_bytes(), 2 * CHUNK_MIN_BYTES);
        assert!(rest.iter().all(|view| view.iter().all(|&byte| byte == 8)));
        assert_eq!(&second[..], &[9; 100][..]);
    }

    #[test]
    fn held_chunks_do_not_hide_free_ones_behind_them() {
        let mut arena = TailArena::new(BUDGET);
        let quarter = CHUNK_MIN_BYTES / 4;
        let mut views = Vec::new();
        let mut fills = Vec::new();
        for _ in 0..(RECLAIM_SCAN_MAX + 2) * 4 {
            let (view, fill) = chunk_and_fill(&mut arena, &[], &vec![1; quarter]);
            views.push(view);
            fills.push(fill);
        }
        // The oldest RECLAIM_SCAN_MAX chunks stay held (one view each, by responses: the cache
        // evicted past them); the next one is free.
        let held: Vec<Bytes> = (0..RECLAIM_SCAN_MAX)
            .map(|c| views[c * 4].clone())
            .collect();
        let free_chunk = views[RECLAIM_SCAN_MAX * 4].as_ptr() as usize;
        arena.evicted(fills[RECLAIM_SCAN_MAX * 4 + 3]);
        drop(views);
        let made = arena.chunk_memory_bytes();
        // Two refills: the first scan only sends the held chunks to the back (and makes one new
        // chunk), the second finds the free one.
        let first = chunk(&mut arena, &[], &[2; 10]);
        let mut reused = first.as_ptr() as usize;
        if reused != free_chunk {
            let _fill: Vec<Bytes> = (0..3)
                .map(|_| chunk(&mut arena, &[], &vec![3; quarter]))
                .collect();
            reused = chunk(&mut arena, &[], &vec![4; quarter]).as_ptr() as usize;
        }
        assert_eq!(
            reused, free_chunk,
            "the free chunk behind the held ones is reused"
        );
        assert!(
            arena.chunk_memory_bytes() <= made + CHUNK_MIN_BYTES,
            "one new chunk at most"
        );
        assert!(held.iter().all(|view| view.iter().all(|&byte| byte == 1)));
    }

    #[test]
    fn chunks_freed_behind_cached_ones_are_found_before_a_new_one_is_made() {
        let mut arena = TailArena::new(BUDGET);
        let quarter = CHUNK_MIN_BYTES / 4;
        let views = fill_chunks(&mut arena, 10, 1);
        // The oldest six chunks still hold cached batches (no eviction yet); the four behind
        // them were freed out of order (their partitions' batches dropped).
        let cached: Vec<Bytes> = views[..6 * 4].to_vec();
        let mut freed: Vec<usize> = (6..10).map(|c| views[c * 4].as_ptr() as usize).collect();
        drop(views);
        let made = arena.chunk_memory_bytes();
        let mut reused = Vec::new();
        let mut kept = Vec::new();
        for round in 0..4 {
            let first = chunk(&mut arena, &[], &vec![2; quarter]);
            reused.push(first.as_ptr() as usize);
            kept.push(first);
            for _ in 0..3 {
                kept.push(chunk(&mut arena, &[], &vec![3; quarter]));
            }
            assert_eq!(
                arena.chunk_memory_bytes(),
                made,
                "round {round}: no new chunk"
            );
        }
        reused.sort_unstable();
        freed.sort_unstable();
        assert_eq!(reused, freed, "each freed chunk reused once");
        // Every chunk is held now: the next refill makes one.
        chunk(&mut arena, &[], &vec![4; quarter]);
        assert_eq!(arena.chunk_memory_bytes(), made + CHUNK_MIN_BYTES);
        assert!(cached.iter().all(|view| view.iter().all(|&byte| byte == 1)));
        assert!(kept.iter().all(|view| view[0] == 2 || view[0] == 3));
    }

    #[test]
    fn chunks_and_own_allocations_share_one_cap() {
        let mut arena = TailArena::new(BUDGET);
        let quarter = CHUNK_MIN_BYTES / 4;
        let mut kept = Vec::new();
        for _ in 0..(arena.max_chunks * 4) {
            kept.push(chunk(&mut arena, &[], &vec![1; quarter]));
        }
        assert_eq!(arena.chunk_memory_bytes(), arena.memory_cap_bytes);
        assert!(
            arena.copy(&[], &[1; 100], 0).is_none(),
            "every chunk held and the cap reached: not cached"
        );
        // The oldest chunk's batches go: a large batch gets that chunk's memory, given back
        // (the failed attempt above sent the oldest chunks to the back of the scan, so the
        // free one is found within a few attempts, each scanning a few chunks).
        kept.drain(..4);
        let (big, placement) = (0..arena.max_chunks)
            .find_map(|_| arena.copy(&[2; 61], &vec![3; CHUNK_MIN_BYTES / 2], 0))
            .expect("a free chunk was released for it");
        assert_eq!(placement, Placement::Own);
        assert_eq!(big.len(), 61 + CHUNK_MIN_BYTES / 2);
        assert_eq!(
            arena.chunk_memory_bytes(),
            arena.memory_cap_bytes - CHUNK_MIN_BYTES
        );
        assert!(
            arena
                .copy(&[], &vec![4; CHUNK_MIN_BYTES], big.len())
                .is_none(),
            "the own bytes still held count against the cap"
        );
        assert!(kept.iter().all(|view| view.iter().all(|&byte| byte == 1)));
    }

    #[test]
    fn large_batches_and_small_budgets_keep_their_own_allocations() {
        let mut arena = TailArena::new(BUDGET);
        let (big, placement) = arena
            .copy(&[1; 61], &vec![2; CHUNK_MIN_BYTES / 4], 0)
            .expect("room under the cap");
        assert_eq!(
            (big.len(), placement),
            (61 + CHUNK_MIN_BYTES / 4, Placement::Own)
        );
        assert_eq!((arena.chunked_batches, arena.own_batches), (0, 1));
        let mut tiny = TailArena::new(300);
        let (view, placement) = tiny.copy(&[1; 61], &[2; 39], 0).expect("fits the budget");
        assert_eq!((view.len(), placement), (100, Placement::Own));
        assert!(
            tiny.copy(&[1; 61], &[2; 39], 250).is_none(),
            "over the budget"
        );
        assert_eq!(tiny.chunk_memory_bytes(), 0);
    }

    #[test]
    fn a_memory_limit_gives_free_chunks_back_and_held_ones_when_they_come_free() {
        let mut arena = TailArena::new(BUDGET);
        let quarter = CHUNK_MIN_BYTES / 4;
        let views = fill_chunks(&mut arena, 8, 5);
        assert_eq!(arena.chunk_memory_bytes(), 8 * CHUNK_MIN_BYTES);
        // One view of the oldest chunk is still held (a response not yet written).
        let held = views[0].clone();
        drop(views);
        assert_eq!(
            arena.limit_memory(2 * CHUNK_MIN_BYTES),
            2 * CHUNK_MIN_BYTES / 5 * 4
        );
        arena.release_chunks_over_cap();
        assert_eq!(
            arena.chunk_memory_bytes(),
            2 * CHUNK_MIN_BYTES,
            "free chunks over the cap went back"
        );
        assert_eq!(arena.limit_memory(0), 0);
        arena.release_chunks_over_cap();
        assert_eq!(
            arena.chunk_memory_bytes(),
            CHUNK_MIN_BYTES,
            "every free chunk went back; the held one stays until it comes free"
        );
        assert!(
            held.iter().all(|&byte| byte == 5),
            "a held view never changes"
        );
        drop(held);
        assert!(
            arena.copy(&[], &[6; 100], 0).is_none(),
            "no memory may be taken"
        );
        assert_eq!(
            arena.chunk_memory_bytes(),
            0,
            "the refill gave the free chunk back"
        );
        // Limited to two chunks, the arena takes memory again up to them and no further.
        arena.limit_memory(2 * CHUNK_MIN_BYTES);
        assert_eq!(arena.memory_limit_bytes(), Some(2 * CHUNK_MIN_BYTES));
        let _limited: Vec<Bytes> = (0..4 * 4)
            .filter_map(|_| arena.copy(&[], &vec![7; quarter], 0).map(|(view, _)| view))
            .collect();
        assert_eq!(arena.chunk_memory_bytes(), 2 * CHUNK_MIN_BYTES);
        // Lifting the limit lets chunks be made again, up to the budget's cap.
        assert_eq!(arena.limit_memory(usize::MAX), usize::MAX);
        assert_eq!(arena.memory_limit_bytes(), None);
        let _more = fill_chunks(&mut arena, 12, 8);
        assert!(arena.chunk_memory_bytes() >= 12 * CHUNK_MIN_BYTES);
    }

    /// The VmFlags of the mapping that holds `address`, from /proc/self/smaps.
    fn vm_flags(address: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = first.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = (start..end).contains(&address);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.to_string());
                }
            }
        }
        None
    }

    #[test]
    fn chunks_refuse_huge_pages_unless_asked() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            return; // No THP in this kernel: the advice is refused and changes nothing.
        }
        for huge_pages in [false, true] {
            // Budget for the largest chunks, which always span whole 2 MiB pages.
            let mut arena = TailArena::new(16 * CHUNK_MAX_BYTES);
            arena.set_huge_pages(huge_pages);
            let view = chunk(&mut arena, &[], &[7; 1024]);
            let chunk_start = view.as_ptr() as usize;
            let inside = chunk_start.next_multiple_of(2 << 20) + 4096;
            assert!(inside < chunk_start + CHUNK_MAX_BYTES);
            let flags = vm_flags(inside).expect("the chunk is mapped");
            let words: Vec<&str> = flags.split_whitespace().collect();
            let (wanted, unwanted) = if huge_pages {
                ("hg", "nh")
            } else {
                ("nh", "hg")
            };
            assert!(
                words.contains(&wanted),
                "huge_pages {huge_pages}: VmFlags {flags}"
            );
            assert!(
                !words.contains(&unwanted),
                "huge_pages {huge_pages}: VmFlags {flags}"
            );
        }
    }

    /// Whether this kernel takes MADV_POPULATE_WRITE (5.14 and later).
    fn populate_write_supported() -> bool {
        let page_bytes = 4096;
        // SAFETY: a fresh private anonymous page of our own, advised and unmapped here.
        unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                page_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED);
            let supported = libc::madvise(page, page_bytes, libc::MADV_POPULATE_WRITE) == 0;
            libc::munmap(page, page_bytes);
            supported
        }
    }

    #[test]
    fn a_new_chunk_is_faulted_in_whole() {
        if !populate_write_supported() {
            return; // Before Linux 5.14 the advice is refused and the copies fault pages in.
        }
        let mut arena = TailArena::new(16 * CHUNK_MAX_BYTES);
        let view = chunk(&mut arena, &[], &[7; 1024]);
        let page_bytes = 4096;
        let first_page = (view.as_ptr() as usize).next_multiple_of(page_bytes);
        // Whole pages of the chunk past the one the batch was copied into.
        let pages = (CHUNK_MAX_BYTES - page_bytes) / page_bytes - 1;
        let mut resident = vec![0u8; pages];
        // SAFETY: the range lies inside the chunk, which `view` keeps alive; mincore writes
        // one byte per page into `resident`, which has one per page.
        let result = unsafe {
            libc::mincore(
                first_page as *mut libc::c_void,
                pages * page_bytes,
                resident.as_mut_ptr(),
            )
        };
        assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
        let faulted = resident.iter().filter(|page| *page & 1 == 1).count();
        assert_eq!(faulted, pages, "pages of a new chunk faulted in");
    }
}
