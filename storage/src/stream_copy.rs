//! Copies of record bytes into memory this CPU will not read again soon: the O_DIRECT staging
//! buffer (the disk reads it by DMA) and the tail cache's chunks (read later, if at all, by
//! the kernel's socket copy or a splice, usually after megabytes of other appends). Such a
//! destination is cold; an ordinary copy first reads every destination cache line it is about
//! to overwrite (read-for-ownership) and then leaves the lines in the cache, pushing out the
//! hot ones. Non-temporal (streaming) stores write whole lines straight to memory: on this
//! project's machines a 256 KiB batch copies about twice as fast (17 against 7-9 GB/s,
//! `BENCHMARKS.md`, "Streaming copies"), and the two copies per produced byte are the broker's
//! largest CPU cost after the kernel's receive copy.
//!
//! Owns only the copy. Must never: change a byte of the result compared with
//! `copy_from_slice` (unit and property tests), touch memory outside `dst`, or return before
//! the streamed stores are ordered before later stores (an SFENCE: the write that submits the
//! staging buffer to the kernel, or the release that publishes a cached batch to another
//! thread, must not overtake them). Small copies, and every target without SSE2, take
//! `copy_from_slice`: there the fence and the partial lines cost more than they save.

use bytes::BytesMut;

/// Copies shorter than this use `copy_from_slice`.
pub const STREAM_COPY_MIN_BYTES: usize = 4096;

/// `dst.copy_from_slice(src)`, with streaming stores for large copies.
///
/// Panics when the lengths differ, as `copy_from_slice` does (a caller bug, never input).
pub fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "streaming copy of unequal lengths");
    if src.len() < STREAM_COPY_MIN_BYTES {
        dst.copy_from_slice(src);
        return;
    }
    copy_large(dst, src);
}

/// `buf.extend_from_slice(src)`, with streaming stores for large copies.
pub fn extend_streaming(buf: &mut BytesMut, src: &[u8]) {
    if src.len() < STREAM_COPY_MIN_BYTES {
        buf.extend_from_slice(src);
        return;
    }
    buf.reserve(src.len());
    let spare = buf.spare_capacity_mut();
    // SAFETY: `reserve` left at least `src.len()` spare bytes; viewing uninitialized bytes as
    // `u8` only to overwrite them all is sound (no byte is read before it is written), and
    // `set_len` below covers exactly the bytes written.
    let spare =
        unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), src.len()) };
    copy_large(spare, src);
    let len = buf.len() + src.len();
    // SAFETY: the `src.len()` bytes after the old length were all written just above.
    unsafe { buf.set_len(len) };
}

#[cfg(target_arch = "x86_64")]
fn copy_large(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    const LINE_BYTES: usize = 64;
    // Plain copy up to the first cache-line boundary of the destination, so every streamed
    // line is whole (write combining then sends one full line, never a partial one).
    let head = (dst.as_ptr() as usize).next_multiple_of(LINE_BYTES) - dst.as_ptr() as usize;
    let head = head.min(src.len());
    dst[..head].copy_from_slice(&src[..head]);
    let lines = (src.len() - head) / LINE_BYTES;
    let body_end = head + lines * LINE_BYTES;
    // SAFETY: SSE2 is part of the x86_64 baseline. Every load reads 16 bytes inside
    // `src[head..body_end]` (unaligned loads are allowed); every store writes 16 bytes inside
    // `dst[head..body_end]`, whose start is 64-byte aligned, as `_mm_stream_si128` requires of
    // its 16-byte target.
    unsafe {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let from = src.as_ptr().add(head);
        let to = dst.as_mut_ptr().add(head);
        for line in 0..lines {
            let at = line * LINE_BYTES;
            let a = _mm_loadu_si128(from.add(at).cast::<__m128i>());
            let b = _mm_loadu_si128(from.add(at + 16).cast::<__m128i>());
            let c = _mm_loadu_si128(from.add(at + 32).cast::<__m128i>());
            let d = _mm_loadu_si128(from.add(at + 48).cast::<__m128i>());
            _mm_stream_si128(to.add(at).cast::<__m128i>(), a);
            _mm_stream_si128(to.add(at + 16).cast::<__m128i>(), b);
            _mm_stream_si128(to.add(at + 32).cast::<__m128i>(), c);
            _mm_stream_si128(to.add(at + 48).cast::<__m128i>(), d);
        }
        // Streaming stores are weakly ordered: fence them before anything that publishes the
        // destination (a submitted write, a cached batch handed to a response).
        _mm_sfence();
    }
    dst[body_end..].copy_from_slice(&src[body_end..]);
}

#[cfg(not(target_arch = "x86_64"))]
fn copy_large(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn every_alignment_and_length_around_the_lines_copies_exactly() {
        let source = pattern(3 * STREAM_COPY_MIN_BYTES + 200, 7);
        for dst_shift in 0..70 {
            for src_shift in [0, 1, 15, 63] {
                for len in [
                    STREAM_COPY_MIN_BYTES - 1,
                    STREAM_COPY_MIN_BYTES,
                    STREAM_COPY_MIN_BYTES + 1,
                    STREAM_COPY_MIN_BYTES + 63,
                    2 * STREAM_COPY_MIN_BYTES + 17,
                ] {
                    let mut dst = vec![0xAAu8; len + 200];
                    copy_streaming(
                        &mut dst[dst_shift..dst_shift + len],
                        &source[src_shift..src_shift + len],
                    );
                    assert_eq!(
                        &dst[dst_shift..dst_shift + len],
                        &source[src_shift..src_shift + len]
                    );
                    assert!(
                        dst[..dst_shift].iter().all(|&b| b == 0xAA),
                        "bytes before dst"
                    );
                    assert!(
                        dst[dst_shift + len..].iter().all(|&b| b == 0xAA),
                        "bytes after dst"
                    );
                }
            }
        }
    }

    #[test]
    fn extend_appends_after_what_the_buffer_holds() {
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(b"head");
        let large = pattern(5 * STREAM_COPY_MIN_BYTES + 3, 1);
        extend_streaming(&mut buf, &large);
        extend_streaming(&mut buf, b"tail");
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..4 + large.len()], &large[..]);
        assert_eq!(&buf[4 + large.len()..], b"tail");
    }

    proptest! {
        #[test]
        fn streaming_copy_equals_copy_from_slice(
            len in 0usize..40_000,
            dst_shift in 0usize..128,
            seed in any::<u8>(),
        ) {
            let source = pattern(len, seed);
            let mut streamed = vec![0u8; len + dst_shift];
            copy_streaming(&mut streamed[dst_shift..], &source);
            prop_assert_eq!(&streamed[dst_shift..], &source[..]);
            let mut extended = BytesMut::new();
            extended.extend_from_slice(&streamed[..dst_shift]);
            extend_streaming(&mut extended, &source);
            prop_assert_eq!(&extended[dst_shift..], &source[..]);
        }
    }
}
