//! The broker's global allocator: the system allocator, except for two kinds of large block
//! that are anonymous mappings of their own.
//!
//! - One allocation of [`NORESERVE_FROM_BYTES`] or more is mapped with `MAP_NORESERVE`. Why:
//!   the codec library that decodes every cold-path request (`kafka-protocol`) pre-sizes each
//!   array's `Vec` from the element count on the wire before it decodes a single element. A
//!   frame of a few dozen bytes can declare 2^31 elements; the system allocator then asks for
//!   hundreds of gigabytes, the kernel refuses, and Rust aborts the whole broker on a failed
//!   allocation. Reserved with `MAP_NORESERVE`, such a buffer costs address space only: the
//!   decoder writes the few elements the frame really holds, fails on the missing bytes, and
//!   the mapping is released. Memory actually written stays bounded by what is decoded.
//! - A block of whole huge pages below that (at least [`HUGE_ALIGNED_FROM_BYTES`], a multiple
//!   of [`HUGE_PAGE_BYTES`]) is mapped on a huge-page boundary. Why: the tail cache's chunks
//!   (`sluice_storage`'s arena, 8 MiB each, gigabytes of them) ask for transparent huge pages
//!   with `log.tail.cache.huge.pages` (and refuse them otherwise, the default); the advice
//!   covers whole aligned huge pages only, and the system allocator places such a block 16
//!   bytes into a fresh mapping, so a quarter of every chunk (its unaligned ends) was still
//!   faulted in 4 KiB at a time — measured: 166,000 page faults to fill the first 2.6 GB,
//!   against four per chunk once aligned.
//!
//! Must never: serve other allocations differently from the system allocator, or hand a block
//! back by another route than the one that made it (the route follows from the layout alone).
//! Under `vm.overcommit_memory=2` the kernel ignores `MAP_NORESERVE`, and an impossible
//! allocation still fails (and aborts) there.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped with `MAP_NORESERVE`. Low enough that an
/// element count pre-sized from a short hostile frame lands here whatever the element size
/// (a fuzzed ListOffsets asked for 979 MB, under the former 1 GiB threshold, which also made
/// AddressSanitizer's allocation limit trip over it); high enough that only the rare large
/// frame or record buffer the broker really fills is mapped this way, where the system
/// allocator would also have used a fresh mapping (glibc maps blocks above 32 MiB at most).
pub const NORESERVE_FROM_BYTES: usize = 64 << 20;

/// Alignment an anonymous mapping always has.
const PAGE_BYTES: usize = 4096;

/// A transparent huge page on x86-64 and (with 4 KiB base pages) arm64.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Blocks of whole huge pages at least this large are mapped on a huge-page boundary: the tail
/// cache's chunk size, and large enough that a growing `Vec` reaches it only when it holds a
/// large buffer, whose system allocation would have been a fresh mapping too.
pub const HUGE_ALIGNED_FROM_BYTES: usize = 8 << 20;

/// See the module documentation. Installed with `#[global_allocator]` by the `sluice` binary,
/// the library's unit tests and the fuzz targets.
pub struct Allocator;

/// How a block of a given layout is made and given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    System,
    /// `map`: a `MAP_NORESERVE` mapping.
    NoReserve,
    /// `map_huge_aligned`: a mapping that starts on a huge-page boundary.
    HugeAligned,
}

fn route(layout: Layout) -> Route {
    let size = layout.size();
    if layout.align() > PAGE_BYTES {
        Route::System
    } else if size >= NORESERVE_FROM_BYTES {
        Route::NoReserve
    } else if size >= HUGE_ALIGNED_FROM_BYTES && size % HUGE_PAGE_BYTES == 0 {
        Route::HugeAligned
    } else {
        Route::System
    }
}

/// A fresh zeroed mapping of `size_bytes` (a multiple of the huge page) that starts on a
/// huge-page boundary, or null: one huge page more is mapped and the unaligned ends unmapped.
fn map_huge_aligned(size_bytes: usize) -> *mut u8 {
    let Some(padded_bytes) = size_bytes.checked_add(HUGE_PAGE_BYTES) else {
        return std::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no existing
    // memory; the result is checked against MAP_FAILED.
    let pointer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if pointer == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = pointer as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE_BYTES);
    let head_bytes = aligned - start;
    let tail_bytes = HUGE_PAGE_BYTES - head_bytes;
    debug_assert!(
        head_bytes % PAGE_BYTES == 0 && aligned + size_bytes + tail_bytes == start + padded_bytes
    );
    // SAFETY: both ranges lie inside the mapping just made, outside the block handed out, and
    // nothing refers to them; a zero-length range is skipped (munmap refuses it).
    unsafe {
        if head_bytes > 0 {
            libc::munmap(pointer, head_bytes);
        }
        if tail_bytes > 0 {
            libc::munmap((aligned + size_bytes) as *mut libc::c_void, tail_bytes);
        }
    }
    aligned as *mut u8
}

/// A fresh zeroed mapping of `size_bytes`, or null (the allocator contract's failure value).
fn map(size_bytes: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no existing
    // memory; the result is checked against MAP_FAILED.
    let pointer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if pointer == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        pointer.cast()
    }
}

// SAFETY: every block comes either from `System` (small layouts) or from `map` (large ones),
// and goes back the same way: which one is decided by the layout alone, and the caller passes
// the same layout to `dealloc`/`realloc` as to the allocation (GlobalAlloc's contract).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match route(layout) {
            Route::NoReserve => map(layout.size()),
            Route::HugeAligned => map_huge_aligned(layout.size()),
            // SAFETY: forwarded with the caller's guarantees (non-zero size).
            Route::System => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match route(layout) {
            // Anonymous mappings are zero-filled by the kernel.
            Route::NoReserve => map(layout.size()),
            Route::HugeAligned => map_huge_aligned(layout.size()),
            // SAFETY: forwarded with the caller's guarantees.
            Route::System => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        match route(layout) {
            Route::NoReserve | Route::HugeAligned => {
                // SAFETY: `pointer` came from `map` or `map_huge_aligned` with this size (same
                // layout, see above); either mapping is exactly the block.
                let rc = unsafe { libc::munmap(pointer.cast(), layout.size()) };
                debug_assert_eq!(rc, 0, "munmap of a block this allocator mapped");
            }
            // SAFETY: `pointer` came from `System` with this layout.
            Route::System => unsafe { System.dealloc(pointer, layout) },
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (from, to) = (route(layout), route(new_layout));
        if from == Route::System && to == Route::System {
            // SAFETY: a System block resized within System.
            return unsafe { System.realloc(pointer, layout, new_size) };
        }
        if from == Route::NoReserve && to == Route::NoReserve {
            // A mapping grows or shrinks in place or moves without copying its pages.
            // SAFETY: `pointer` is a live mapping of `layout.size()` bytes made by `map`; on
            // failure mremap leaves it untouched and the caller keeps it.
            let moved = unsafe {
                libc::mremap(
                    pointer.cast(),
                    layout.size(),
                    new_size,
                    libc::MREMAP_MAYMOVE,
                )
            };
            return if moved == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                moved.cast()
            };
        }
        // Across routes, or huge-aligned (mremap could move it off the boundary): a new block.
        // SAFETY: `new_layout` is valid (above) and non-zero (GlobalAlloc::realloc requires a
        // non-zero new size).
        let new_pointer = unsafe { self.alloc(new_layout) };
        if !new_pointer.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                std::ptr::copy_nonoverlapping(pointer, new_pointer, layout.size().min(new_size));
                self.dealloc(pointer, layout);
            }
        }
        new_pointer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_vec_reserves_address_space_not_memory() {
        // 256 GiB: far beyond this machine's memory, as a hostile element count asks for.
        let mut huge: Vec<u64> = Vec::with_capacity(32 << 30);
        assert!(huge.capacity() >= 32 << 30);
        huge.extend([1, 2, 3]);
        assert_eq!(huge.iter().sum::<u64>(), 6);
        drop(huge);
        let mut grown: Vec<u8> = vec![7];
        grown.reserve_exact(NORESERVE_FROM_BYTES * 2);
        assert!(grown.capacity() >= NORESERVE_FROM_BYTES * 2);
        assert_eq!(
            grown[0], 7,
            "realloc across the threshold keeps the contents"
        );
        grown.shrink_to_fit();
        assert_eq!(&grown[..], &[7]);
    }

    #[test]
    fn a_mapped_block_moves_with_its_contents() {
        // What a fuzzed ListOffsets pre-sized: under the old 1 GiB threshold, now mapped.
        assert_eq!(
            route(Layout::from_size_align(979_000_000, 8).expect("layout")),
            Route::NoReserve
        );
        assert_eq!(
            route(Layout::from_size_align(NORESERVE_FROM_BYTES - 1, 8).expect("layout")),
            Route::System
        );
        let mut block: Vec<u8> = Vec::with_capacity(NORESERVE_FROM_BYTES);
        block.extend((0..NORESERVE_FROM_BYTES).map(|i| (i % 251) as u8));
        // Mapped to mapped: mremap, pages kept.
        block.reserve_exact(NORESERVE_FROM_BYTES * 3);
        assert!(block.capacity() >= NORESERVE_FROM_BYTES * 4);
        block.push(9);
        assert!(block[..NORESERVE_FROM_BYTES]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8));
        // Mapped to mapped, shrinking.
        block.truncate(NORESERVE_FROM_BYTES + 1);
        block.shrink_to_fit();
        assert_eq!(block[NORESERVE_FROM_BYTES], 9);
        assert_eq!(
            block[NORESERVE_FROM_BYTES - 1],
            ((NORESERVE_FROM_BYTES - 1) % 251) as u8
        );
    }

    #[test]
    fn blocks_of_whole_huge_pages_start_on_a_huge_page() {
        assert_eq!(
            route(Layout::from_size_align(HUGE_ALIGNED_FROM_BYTES, 1).expect("layout")),
            Route::HugeAligned
        );
        assert_eq!(
            route(Layout::from_size_align(HUGE_ALIGNED_FROM_BYTES + 1, 1).expect("layout")),
            Route::System,
            "only whole huge pages"
        );
        assert_eq!(
            route(
                Layout::from_size_align(HUGE_ALIGNED_FROM_BYTES - HUGE_PAGE_BYTES, 1)
                    .expect("layout")
            ),
            Route::System,
            "smaller blocks stay with the system allocator"
        );
        let mut blocks = Vec::new();
        for _ in 0..8 {
            // What the tail cache's arena asks for per chunk.
            let mut chunk = bytes::BytesMut::with_capacity(HUGE_ALIGNED_FROM_BYTES);
            assert_eq!(chunk.as_ptr() as usize % HUGE_PAGE_BYTES, 0);
            chunk.extend_from_slice(&[5; 4096]);
            blocks.push(chunk);
        }
        // Grown past the block and shrunk back: contents kept across routes.
        let mut grown: Vec<u8> = Vec::with_capacity(HUGE_ALIGNED_FROM_BYTES);
        grown.extend((0..HUGE_ALIGNED_FROM_BYTES).map(|i| (i % 253) as u8));
        grown.push(1);
        assert!(grown[..HUGE_ALIGNED_FROM_BYTES]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 253) as u8));
        grown.truncate(10);
        grown.shrink_to_fit();
        assert_eq!(&grown[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(blocks.iter().all(|b| b[..] == [5; 4096]));
    }
}
