//! A TLS session over a tokio-uring `TcpStream`: rustls's `ServerConnection` fed with owned
//! buffers (`read_tls` from what io_uring read, `write_tls` into what io_uring writes), as a
//! [`Transport`] the framing loop is generic over.
//!
//! Owns the handshake (bounded by `ssl.handshake.timeout.ms`), the ciphertext buffers and the
//! ordering of TLS records on the socket: every socket write happens under one lock, so records
//! sealed by the response writer and by the reader (a KeyUpdate answer, an alert) leave in the
//! order they were sealed. Must never: hold the rustls state across an await, buffer more than
//! one read of ciphertext plus `ssl.io.buffer.bytes` of sealed output per connection, or panic on
//! what a peer sends (bad TLS is an error and the connection closes).

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection};
use sluice_net::transport::{fill, initialized, Transport};
use tokio_uring::buf::{BoundedBuf, BoundedBufMut};
use tokio_uring::BufResult;

use crate::runtime::TcpStream;

/// Ciphertext read from the socket per read: the largest TLS record (16 KiB of plaintext plus
/// header, padding and tag), so one read never holds more than one record's worth unread.
const CIPHERTEXT_READ_BYTES: usize = 16 * 1024 + 2048;

/// Per-connection TLS limits.
#[derive(Debug, Clone, Copy)]
pub struct TlsLimits {
    /// `ssl.handshake.timeout.ms`
    pub handshake_timeout: Duration,
    /// `ssl.io.buffer.bytes`: plaintext sealed per socket write.
    pub io_bytes: usize,
}

/// Ciphertext read but not yet handed to rustls.
struct Incoming {
    buf: Vec<u8>,
    consumed: usize,
}

/// A server-side TLS session over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    tls: RefCell<ServerConnection>,
    incoming: RefCell<Option<Incoming>>,
    /// Held for every socket write; keeps the (reused) ciphertext buffer.
    writing: tokio::sync::Mutex<Vec<u8>>,
    io_bytes: usize,
    peer: SocketAddr,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not TLS, or TLS rustls refuses (bad certificate, no common version...).
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// The socket failed or the peer went away.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// `ssl.handshake.timeout.ms` passed.
    #[error("no complete handshake within {0} ms (ssl.handshake.timeout.ms)")]
    Timeout(u128),
}

impl TlsStream {
    /// Runs the server side of the handshake on `tcp` within the limits.
    pub async fn accept(
        tcp: TcpStream,
        peer: SocketAddr,
        config: Arc<ServerConfig>,
        limits: TlsLimits,
    ) -> Result<TlsStream, HandshakeError> {
        let mut connection = ServerConnection::new(config)?;
        // Sealed output is drained after every write, so rustls's own cap would only split
        // writes; the writer bounds it with `io_bytes` instead.
        connection.set_buffer_limit(None);
        let stream = TlsStream {
            tcp,
            tls: RefCell::new(connection),
            incoming: RefCell::new(Some(Incoming {
                buf: Vec::with_capacity(CIPHERTEXT_READ_BYTES),
                consumed: 0,
            })),
            writing: tokio::sync::Mutex::new(Vec::with_capacity(limits.io_bytes + 4096)),
            io_bytes: limits.io_bytes.max(1024),
            peer,
        };
        let outcome = tokio::time::timeout(limits.handshake_timeout, stream.handshake()).await;
        let error = match outcome {
            Ok(Ok(())) => return Ok(stream),
            Ok(Err(error)) => error,
            Err(_) => HandshakeError::Timeout(limits.handshake_timeout.as_millis()),
        };
        // A read abandoned by the timeout stays in the kernel and keeps the socket open until
        // it completes; shutting the socket down ends it and tells the peer at once.
        Transport::shutdown(&stream);
        Err(error)
    }

    async fn handshake(&self) -> Result<(), HandshakeError> {
        loop {
            if self.tls.borrow().wants_write() {
                self.flush().await?;
            }
            if !self.tls.borrow().is_handshaking() {
                break;
            }
            if let Err(error) = self.feed().await {
                // Send the alert rustls queued (best effort), then give up.
                let _ = self.flush().await;
                return Err(error);
            }
        }
        // The last flight and TLS 1.3 session tickets.
        self.flush().await?;
        Ok(())
    }

    /// Hands buffered ciphertext to rustls, reading the socket first when none is left.
    async fn feed(&self) -> Result<(), HandshakeError> {
        let needs_read = self
            .incoming
            .borrow()
            .as_ref()
            .is_none_or(|incoming| incoming.consumed >= incoming.buf.len());
        if needs_read && self.read_socket().await? == 0 {
            return Err(HandshakeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection during the handshake",
            )));
        }
        self.process_buffered()?;
        Ok(())
    }

    /// Reads one socket read of ciphertext into the incoming buffer; Ok(0) at EOF.
    async fn read_socket(&self) -> io::Result<usize> {
        let mut incoming = self
            .incoming
            .borrow_mut()
            .take()
            .ok_or_else(|| io::Error::other("two reads at once on one TLS stream"))?;
        let mut buf = std::mem::take(&mut incoming.buf);
        buf.clear();
        if buf.capacity() < CIPHERTEXT_READ_BYTES {
            buf.reserve(CIPHERTEXT_READ_BYTES);
        }
        let (result, buf) = self.tcp.read(buf).await;
        *self.incoming.borrow_mut() = Some(Incoming { buf, consumed: 0 });
        result
    }

    /// Gives rustls as much buffered ciphertext as it takes and processes it. Always makes
    /// progress or fails: the loops above await the socket whenever nothing is buffered, so
    /// they never spin.
    fn process_buffered(&self) -> Result<(), HandshakeError> {
        let mut guard = self.incoming.borrow_mut();
        let Some(incoming) = guard.as_mut() else {
            return Ok(());
        };
        let mut tls = self.tls.borrow_mut();
        while incoming.consumed < incoming.buf.len() {
            let mut rest = &incoming.buf[incoming.consumed..];
            match tls.read_tls(&mut rest)? {
                // rustls takes nothing more (the peer's close_notify came): the rest is dropped.
                0 => incoming.consumed = incoming.buf.len(),
                n => incoming.consumed += n,
            }
            tls.process_new_packets()?;
            if tls.wants_write()
                || tls
                    .reader()
                    .fill_buf()
                    .map(|b| !b.is_empty())
                    .unwrap_or(true)
            {
                break;
            }
        }
        Ok(())
    }

    /// Writes everything rustls has sealed, under the write lock.
    async fn flush(&self) -> io::Result<()> {
        let mut out = self.writing.lock().await;
        let mut buf = std::mem::take(&mut *out);
        let result = self.drain_sealed(&mut buf).map(|_| ());
        if result.is_err() || buf.is_empty() {
            *out = buf;
            return result;
        }
        let (written, mut buf) = self.tcp.write_all(buf).await;
        buf.clear();
        *out = buf;
        written
    }

    /// Moves rustls's sealed records into `out`.
    fn drain_sealed(&self, out: &mut Vec<u8>) -> io::Result<usize> {
        let mut tls = self.tls.borrow_mut();
        let mut total = 0;
        while tls.wants_write() {
            total += tls.write_tls(out)?;
        }
        Ok(total)
    }

    /// The client's certificate chain (leaf first) once the handshake is done.
    pub fn peer_leaf_certificate(&self) -> Option<Vec<u8>> {
        let tls = self.tls.borrow();
        tls.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.as_ref().to_vec())
    }

    /// The negotiated protocol version and cipher suite, for the log.
    pub fn describe(&self) -> String {
        let tls = self.tls.borrow();
        format!(
            "{:?} {:?}",
            tls.protocol_version(),
            tls.negotiated_cipher_suite().map(|s| s.suite())
        )
    }

    /// Copies decrypted bytes into `buf`: Some(n > 0), Some(0) after the peer's close_notify,
    /// None when rustls has none yet.
    fn take_plaintext<B: BoundedBufMut>(&self, buf: &mut B) -> io::Result<Option<usize>> {
        let mut tls = self.tls.borrow_mut();
        let mut reader = tls.reader();
        match reader.fill_buf() {
            Ok([]) => Ok(Some(0)),
            Ok(plaintext) => {
                let n = fill(buf, plaintext);
                reader.consume(n);
                Ok(Some(n))
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }
}

impl Transport for TlsStream {
    async fn read<B: BoundedBufMut>(&self, mut buf: B) -> BufResult<usize, B> {
        loop {
            match self.take_plaintext(&mut buf) {
                Ok(Some(n)) => return (Ok(n), buf),
                Ok(None) => {}
                Err(error) => return (Err(error), buf),
            }
            let has_buffered = self
                .incoming
                .borrow()
                .as_ref()
                .is_some_and(|incoming| incoming.consumed < incoming.buf.len());
            if !has_buffered {
                match self.read_socket().await {
                    Ok(0) => return (Ok(0), buf),
                    Ok(_) => {}
                    Err(error) => return (Err(error), buf),
                }
            }
            let processed = self.process_buffered();
            // Whatever rustls wants to say (a KeyUpdate answer, an alert) goes out in order
            // with the responses.
            if self.tls.borrow().wants_write() {
                if let Err(error) = self.flush().await {
                    return (Err(error), buf);
                }
            }
            if let Err(error) = processed {
                return (Err(io::Error::new(io::ErrorKind::InvalidData, error)), buf);
            }
        }
    }

    async fn write_all<B: BoundedBuf>(&self, buf: B) -> BufResult<(), B> {
        let mut out = self.writing.lock().await;
        let mut sealed = std::mem::take(&mut *out);
        let mut result = Ok(());
        let mut offset = 0;
        let total = buf.bytes_init();
        while offset < total {
            let end = (offset + self.io_bytes).min(total);
            let accepted = {
                let data = &initialized(&buf)[offset..end];
                self.tls.borrow_mut().writer().write(data)
            };
            match accepted {
                Ok(0) => {
                    result = Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS session refused more data",
                    ));
                    break;
                }
                Ok(n) => offset += n,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
            sealed.clear();
            if let Err(error) = self.drain_sealed(&mut sealed) {
                result = Err(error);
                break;
            }
            let (written, back) = self.tcp.write_all(sealed).await;
            sealed = back;
            if let Err(error) = written {
                result = Err(error);
                break;
            }
        }
        sealed.clear();
        *out = sealed;
        (result, buf)
    }

    fn shutdown(&self) {
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsStream({})", self.peer)
    }
}
