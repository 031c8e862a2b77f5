//! The byte stream under a connection's framing loop: plain TCP (tokio-uring's `TcpStream`)
//! or a TLS session over it (the broker's `TlsStream`).
//!
//! The framing loop and the response writers are generic over [`Transport`], so the PLAINTEXT
//! path compiles to the same direct io_uring reads and writes as before: no boxing, no dynamic
//! dispatch, no extra copy. Must never: hide a partial write (`write_all` writes everything or
//! fails), or block the shard thread.

use tokio_uring::buf::{BoundedBuf, BoundedBufMut};
use tokio_uring::net::TcpStream;
use tokio_uring::BufResult;

/// A connection's byte stream. One reader task and one writer task use it at once (the
/// framing loop reads requests while responses are written), never two of either.
// The futures are !Send by design (one shard thread owns each connection), so the
// `async fn in trait` lint's concern about Send bounds does not apply.
#[allow(async_fn_in_trait)]
pub trait Transport: 'static {
    /// Reads into `buf`'s spare room (from its start, as tokio-uring does); Ok(0) at the end
    /// of the stream.
    async fn read<B: BoundedBufMut>(&self, buf: B) -> BufResult<usize, B>;

    /// Writes all of `buf`.
    async fn write_all<B: BoundedBuf>(&self, buf: B) -> BufResult<(), B>;

    /// Shuts both directions down (best effort: the connection is being dropped).
    fn shutdown(&self);
}

impl Transport for TcpStream {
    async fn read<B: BoundedBufMut>(&self, buf: B) -> BufResult<usize, B> {
        TcpStream::read(self, buf).await
    }

    async fn write_all<B: BoundedBuf>(&self, buf: B) -> BufResult<(), B> {
        TcpStream::write_all(self, buf).await
    }

    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, std::net::Shutdown::Both);
    }
}

/// The bytes `buf` holds, as a slice.
pub fn initialized<B: BoundedBuf>(buf: &B) -> &[u8] {
    // SAFETY: `BoundedBuf` guarantees `stable_ptr` points at `bytes_init` initialized bytes
    // that stay put while `buf` is borrowed.
    unsafe { std::slice::from_raw_parts(buf.stable_ptr(), buf.bytes_init()) }
}

/// Copies `data` into `buf`'s room from its start and marks it initialized; returns how many
/// bytes fit.
pub fn fill<B: BoundedBufMut>(buf: &mut B, data: &[u8]) -> usize {
    let n = data.len().min(buf.bytes_total());
    // SAFETY: `stable_mut_ptr` points at `bytes_total` writable bytes; `n` is within them, and
    // `set_init(n)` declares exactly the bytes just written.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf.stable_mut_ptr(), n);
        buf.set_init(n);
    }
    n
}
