//! The one place that knows Sluice runs on tokio-uring (pinned: the crate is no longer actively
//! maintained). Everything else uses these wrappers, so the runtime can be swapped later.
//!
//! Must never: leak tokio-uring types beyond sockets, or hide an io_uring refusal — a kernel
//! or seccomp profile that forbids io_uring is reported once, clearly, at startup.

use std::io;
use std::net::SocketAddr;

pub use tokio_uring::net::{TcpListener, TcpStream};

/// Runs `future` to completion on a fresh single-threaded io_uring runtime on this thread.
pub fn block_on<F: std::future::Future>(future: F) -> io::Result<F::Output> {
    let runtime =
        tokio_uring::Runtime::new(&tokio_uring::builder()).map_err(explain_uring_error)?;
    Ok(runtime.block_on(future))
}

/// Spawns a task on the current shard.
pub fn spawn<F: std::future::Future + 'static>(future: F) -> tokio::task::JoinHandle<F::Output> {
    tokio_uring::spawn(future)
}

/// Binds a listener with SO_REUSEPORT so that every shard can accept on the same port and the
/// kernel spreads connections over them. `receive_buffer_bytes` (SO_RCVBUF) is set before
/// listen: accepted connections inherit it, and the window scale their SYN-ACK offers must
/// already fit it.
pub fn reuseport_listener(
    addr: SocketAddr,
    backlog: i32,
    receive_buffer_bytes: Option<usize>,
) -> io::Result<TcpListener> {
    let socket = tcp_socket_for(addr, true)?;
    socket.set_nonblocking(true)?;
    if let Some(bytes) = receive_buffer_bytes {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Sets SO_SNDBUF of an accepted connection.
pub fn set_send_buffer_bytes(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: `stream` owns the descriptor and outlives this borrow of it.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd).set_send_buffer_size(bytes)
}

/// A TCP socket of `addr`'s family with SO_REUSEADDR (and SO_REUSEPORT when `reuse_port`),
/// not yet bound.
pub fn tcp_socket_for(addr: SocketAddr, reuse_port: bool) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    Ok(socket)
}

/// Turns EPERM/ENOSYS from io_uring_setup into an error that says what to do.
pub fn explain_uring_error(error: io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) => io::Error::new(
            error.kind(),
            format!(
                "io_uring is not permitted here ({error}). Sluice needs io_uring: allow it with \
                 `sysctl kernel.io_uring_disabled=0`, or, in a container, run with a seccomp \
                 profile that permits io_uring_setup/io_uring_enter/io_uring_register \
                 (e.g. docker run --security-opt seccomp=unconfined)"
            ),
        ),
        _ => error,
    }
}
