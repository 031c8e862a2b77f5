//! The broker's global allocator: the system allocator, except that one allocation of
//! [`NORESERVE_FROM_BYTES`] or more is an anonymous mapping with `MAP_NORESERVE`.
//!
//! Why: the codec library that decodes every cold-path request (`kafka-protocol`) pre-sizes
//! each array's `Vec` from the element count on the wire before it decodes a single element.
//! A frame of a few dozen bytes can declare 2^31 elements; the system allocator then asks for
//! hundreds of gigabytes, the kernel refuses, and Rust aborts the whole broker on a failed
//! allocation. Reserved with `MAP_NORESERVE`, such a buffer costs address space only: the
//! decoder writes the few elements the frame really holds, fails on the missing bytes, and the
//! mapping is released. Memory actually written stays bounded by what is decoded.
//!
//! Must never: serve allocations below the threshold differently from the system allocator.
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

/// See the module documentation. Installed with `#[global_allocator]` by the `sluice` binary,
/// the library's unit tests and the fuzz targets.
pub struct Allocator;

fn mapped(layout: Layout) -> bool {
    layout.size() >= NORESERVE_FROM_BYTES && layout.align() <= PAGE_BYTES
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
        if mapped(layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees (non-zero size).
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // Anonymous mappings are zero-filled by the kernel.
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `pointer` came from `map` with this size (same layout, see above).
            let rc = unsafe { libc::munmap(pointer.cast(), layout.size()) };
            debug_assert_eq!(rc, 0, "munmap of a block this allocator mapped");
        } else {
            // SAFETY: `pointer` came from `System` with this layout.
            unsafe { System.dealloc(pointer, layout) }
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !mapped(layout) && !mapped(new_layout) {
            // SAFETY: a System block resized within System.
            return unsafe { System.realloc(pointer, layout, new_size) };
        }
        if mapped(layout) && mapped(new_layout) {
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
        // SAFETY: `new_layout` is valid (above) and non-zero (it or `layout` is mapped-size, and
        // GlobalAlloc::realloc requires a non-zero new size).
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
        assert!(mapped(
            Layout::from_size_align(979_000_000, 8).expect("layout")
        ));
        assert!(!mapped(
            Layout::from_size_align(NORESERVE_FROM_BYTES - 1, 8).expect("layout")
        ));
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
}
