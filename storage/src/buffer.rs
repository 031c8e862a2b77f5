//! The group-commit staging buffer: one 4 KiB-aligned allocation per shard, touched once at
//! open (first touch of fresh memory is slow on this machine) and reused by every flush.
//!
//! Owns the raw allocation. Must never be resized or freed while a write from it is in
//! flight: writes hold an `Rc` to it in their ring slot until their CQE arrives.

use std::alloc::{alloc, dealloc, Layout};
use std::cell::UnsafeCell;

/// Alignment of O_DIRECT buffers, file positions and lengths.
pub(crate) const DIRECT_IO_ALIGN_BYTES: usize = 4096;

/// An aligned, pre-touched byte buffer.
pub(crate) struct AlignedBuffer {
    ptr: *mut u8,
    layout: Layout,
    /// Marks the buffer as shared mutable memory the kernel also reads.
    _kernel_shared: UnsafeCell<()>,
}

impl AlignedBuffer {
    /// Allocates `len_bytes` (rounded up to the alignment) and writes every page once.
    pub(crate) fn new(len_bytes: usize) -> AlignedBuffer {
        let len_bytes = align_up(len_bytes.max(DIRECT_IO_ALIGN_BYTES), DIRECT_IO_ALIGN_BYTES);
        let layout = match Layout::from_size_align(len_bytes, DIRECT_IO_ALIGN_BYTES) {
            Ok(layout) => layout,
            Err(error) => panic!("staging buffer layout of {len_bytes} bytes: {error}"),
        };
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `ptr` points to `len_bytes` writable bytes; writing them faults every page in
        // now instead of on the first flush.
        unsafe { std::ptr::write_bytes(ptr, 0, len_bytes) };
        AlignedBuffer {
            ptr,
            layout,
            _kernel_shared: UnsafeCell::new(()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The bytes at `range`, for the writer to fill before it submits a write from them.
    ///
    /// # Safety
    /// No in-flight write may cover `range`, and no other slice of it may be alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [u8] {
        assert!(start + len <= self.len(), "staging slice out of bounds");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }

    /// Reads back bytes the writer filled.
    ///
    /// # Safety
    /// No mutable slice of `range` may be alive.
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &[u8] {
        assert!(start + len <= self.len(), "staging slice out of bounds");
        std::slice::from_raw_parts(self.ptr.add(start), len)
    }

    /// The iovec to register with the ring.
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len(),
        }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(value: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

/// Rounds `value` down to a multiple of `align` (a power of two).
pub(crate) fn align_down(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    value & !(align - 1)
}
