//! The broker side of a client connection: routes each request to the API dispatcher and
//! writes Fetch responses to the socket.
//!
//! On the zero-copy path (`fetch.zero.copy`, probed per shard by [`crate::zero_copy`]) a
//! Fetch response goes out whole through [`zero_copy::write_response`]: framing and record
//! data in linked io_uring chains, file ranges spliced, large tail-cache data by SENDMSG_ZC.
//! On the copying path, tail-cache bytes and file ranges are copied through one reusable
//! per-connection buffer. A TLS connection ([`TlsStream`]) always takes the copying path: record
//! bytes must pass through user space to be encrypted (no kTLS here), so they are copied into
//! the buffer and sealed by rustls into its ciphertext buffer on the way out.
//!
//! Tail-cache chunks carry their share of the owning shard's `fetch.response.cache.bytes.max`
//! inside their `Bytes` (see `sluice_storage::Partition::read`): a chunk gives it back when
//! dropped, once copied on the copying path, when the ring releases it on the zero-copy path,
//! or with the parked response when the connection closes. So a client that never reads its
//! responses holds at most that budget of evicted cache memory, not `queued.max.requests` x
//! `fetch.max.bytes`. Must never: keep a chunk after the write that needs it (a segment handle
//! keeps its file, a memory chunk keeps budget), or write a response before the previous one
//! is complete.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use tokio_uring::buf::BoundedBuf;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use sluice_metrics::{Counter, Stage};
use sluice_net::connection::{Handler, Response};
use sluice_net::fetch::Part;
use sluice_net::header::RequestHeader;
use sluice_net::transport::Transport;
use sluice_net::Reader;
use sluice_storage::ReadChunk;

use crate::api::{self, FetchRecords};
use crate::runtime::TcpStream;
use crate::security::quota::enforce::{Mute, RequestCharge};
use crate::security::sasl::Authenticator;
use crate::security::tls::stream::TlsStream;
use crate::security::Session;
use crate::shard::Shard;
use crate::zero_copy::{self, ShardZeroCopy};

/// Size of the buffer that file ranges are copied through on the copying path.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// One connection's handler.
pub struct BrokerConnection {
    shard: Rc<Shard>,
    /// Who the client is and which listener it came through; handed to every request.
    session: Rc<Session>,
    copy_buffer: RefCell<Option<Vec<u8>>>,
    /// This shard's fetch path and pipe pool.
    zero_copy: Rc<ShardZeroCopy>,
    /// A duplicate of the socket descriptor for io_uring operations (see
    /// [`zero_copy::duplicate_socket`]); made on the first zero-copy response.
    socket: RefCell<Option<Rc<OwnedFd>>>,
    /// Tail-cache data may go by SENDMSG_ZC (see [`ShardZeroCopy::send_zc_allowed`]);
    /// decided with the first zero-copy response.
    send_zc_allowed: Cell<bool>,
    peer: std::net::SocketAddr,
    /// Whether this connection wrote a response on the zero-copy path (for the close log).
    wrote_zero_copy: Cell<bool>,
    /// Set when a response was throttled: the connection is not read until then.
    mute: Rc<Mute>,
    /// The SASL exchange and session of a SASL listener's connection; None elsewhere.
    sasl: Option<Authenticator>,
}

impl BrokerConnection {
    /// A handler on `shard` for the connection `session` describes.
    pub fn new(shard: Rc<Shard>, session: Rc<Session>) -> Self {
        shard.connections.set(shard.connections.get() + 1);
        shard.metrics.count(Counter::ConnectionsOpened, 1);
        let peer = session.peer;
        let sasl = session
            .protocol
            .uses_sasl()
            .then(|| Authenticator::new(shard.config.sasl.clone()));
        Self {
            sasl,
            session,
            copy_buffer: RefCell::new(None),
            zero_copy: zero_copy::for_shard(&shard),
            socket: RefCell::new(None),
            send_zc_allowed: Cell::new(false),
            peer,
            wrote_zero_copy: Cell::new(false),
            mute: Rc::new(Mute::default()),
            shard,
        }
    }

    fn socket_for(&self, stream: &TcpStream) -> io::Result<Rc<OwnedFd>> {
        if let Some(socket) = self.socket.borrow().as_ref() {
            return Ok(socket.clone());
        }
        let socket = zero_copy::duplicate_socket(stream.as_raw_fd())?;
        let send_zc_allowed = self.zero_copy.send_zc_allowed(&socket, self.peer);
        self.send_zc_allowed.set(send_zc_allowed);
        if !send_zc_allowed {
            tracing::debug!(
                target: "sluice::zero_copy",
                peer = %self.peer,
                "peer on this host: tail-cache data goes by plain SENDMSG (the kernel copies \
                 zero-copy sends to local sockets anyway)"
            );
        }
        *self.socket.borrow_mut() = Some(socket.clone());
        Ok(socket)
    }
}

impl BrokerConnection {
    /// The connection's session (its listener, protocol and principal).
    pub fn session(&self) -> &Rc<Session> {
        &self.session
    }

    /// Handles one request, whatever the transport.
    fn handle_request(
        &self,
        header: RequestHeader,
        body: Reader,
    ) -> LocalBoxFuture<'static, Response<FetchRecords>> {
        let (header, body) = match &self.sasl {
            Some(auth) => match api::sasl::route(auth, &self.shard, &self.session, header, body) {
                Ok(request) => request,
                Err(answer) => return answer,
            },
            None => (header, body),
        };
        let shard = self.shard.clone();
        if !shard.drain.admits(header.api_key, self.peer) {
            return Box::pin(async { Response::Close });
        }
        let in_flight = shard.drain.begin();
        let session = self.session.clone();
        let read_at = std::time::Instant::now();
        // Frame prefix + the fixed header fields + the body; close enough for a byte counter.
        let bytes_in = (body.remaining() + 12) as u64;
        let mute = self.mute.clone();
        let charge = RequestCharge::begin(&self.shard, &self.session, &header, bytes_in);
        if let Some(charge) = &charge {
            mute.throttle(charge.arrival_throttle_ms());
        }
        Box::pin(async move {
            let metrics = &shard.metrics;
            metrics.record_stage_ns(Stage::RequestQueue, read_at.elapsed().as_nanos() as u64);
            metrics.count(Counter::BytesIn, bytes_in);
            let api_key = header.api_key;
            let response = match charge {
                None => api::dispatch(shard.clone(), header, body, &session).await,
                Some(charge) => {
                    let kept_header = header.clone();
                    let dispatched = {
                        let (shard, session) = (shard.clone(), session.clone());
                        async move { api::dispatch(shard, header, body, &session).await }
                    };
                    let mut response = charge.timed(dispatched).await;
                    let throttle_ms = charge.finish(&kept_header, &mut response);
                    mute.throttle(throttle_ms);
                    response
                }
            };
            let metrics = &shard.metrics;
            metrics.record_request_ns(api_key, read_at.elapsed().as_nanos() as u64);
            match &response {
                Response::Frame(bytes) => metrics.count(Counter::BytesOut, bytes.len() as u64),
                Response::Parts(parts) => {
                    let total: u64 = parts
                        .iter()
                        .map(|part| match part {
                            Part::Framing(bytes) => bytes.len() as u64,
                            Part::Records { length, .. } => u64::from(*length),
                        })
                        .sum();
                    metrics.count(Counter::BytesOut, total);
                }
                Response::Close | Response::FrameThenClose(_) => metrics.count(Counter::Errors, 1),
                Response::None => {}
            }
            drop(in_flight);
            response
        })
    }

    /// Whether the next frame is a raw SASL token (SaslAuthenticate v0 after SaslHandshake v0).
    fn sasl_takes_raw_frame(&self) -> bool {
        self.sasl
            .as_ref()
            .is_some_and(Authenticator::takes_raw_frame)
    }

    /// Answers a raw SASL token frame.
    fn sasl_handle_raw(&self, frame: Bytes) -> LocalBoxFuture<'static, Response<FetchRecords>> {
        match &self.sasl {
            Some(auth) => api::sasl::raw_token(auth, &self.shard, &self.session, frame),
            None => Box::pin(async { Response::Close }),
        }
    }

    /// Copies record data to `stream` through the connection's buffer.
    fn copy_records<'a, T: Transport>(
        &'a self,
        stream: &'a T,
        length: u32,
        records: FetchRecords,
    ) -> LocalBoxFuture<'a, io::Result<()>> {
        // The copying path (`fetch.zero.copy=false`, or a kernel without splice): every record
        // byte passes through this connection's buffer, read from the files (ring reads, never
        // a pread on the shard thread) and copied from the tail cache, and goes out in writes
        // of up to COPY_BUFFER_BYTES. It is the baseline the zero-copy path is measured
        // against, so it copies what it says it does.
        Box::pin(async move {
            let mut buf = self
                .copy_buffer
                .borrow_mut()
                .take()
                .unwrap_or_else(|| vec![0; COPY_BUFFER_BYTES]);
            let mut filled = 0usize;
            let mut written: u64 = 0;
            for chunk in records {
                match chunk {
                    ReadChunk::Memory(bytes) => {
                        let mut rest = &bytes[..];
                        while !rest.is_empty() {
                            let step = rest.len().min(COPY_BUFFER_BYTES - filled);
                            buf[filled..filled + step].copy_from_slice(&rest[..step]);
                            filled += step;
                            rest = &rest[step..];
                            if filled == COPY_BUFFER_BYTES {
                                buf = write_filled(stream, buf, filled).await?;
                                filled = 0;
                            }
                        }
                        written += bytes.len() as u64;
                    }
                    ReadChunk::File {
                        segment,
                        position,
                        length,
                    } => {
                        let mut done: u64 = 0;
                        while done < u64::from(length) {
                            let step = (u64::from(length) - done)
                                .min((COPY_BUFFER_BYTES - filled) as u64)
                                as usize;
                            let (read, returned) = self
                                .shard
                                .storage
                                .read_exact_at(&segment, buf, filled, step, position + done)
                                .await;
                            buf = returned;
                            read?;
                            filled += step;
                            done += step as u64;
                            if filled == COPY_BUFFER_BYTES {
                                buf = write_filled(stream, buf, filled).await?;
                                filled = 0;
                            }
                        }
                        written += done;
                    }
                }
            }
            if filled > 0 {
                buf = write_filled(stream, buf, filled).await?;
            }
            *self.copy_buffer.borrow_mut() = Some(buf);
            if written != u64::from(length) {
                // The framing already promised `length` bytes: the stream is now unusable.
                return Err(io::Error::other(format!(
                    "record data was {written} bytes, framing said {length}"
                )));
            }
            Ok(())
        })
    }

    /// The end of the connection, whatever the transport (or a failed TLS handshake).
    pub fn on_closed(&self) {
        if self.wrote_zero_copy.get() {
            tracing::debug!(
                target: "sluice::zero_copy",
                shard = self.shard.id,
                "connection closed; {}",
                zero_copy::Counters::now()
            );
        }
        self.shard
            .connections
            .set(self.shard.connections.get().saturating_sub(1));
        self.shard.metrics.count(Counter::ConnectionsClosed, 1);
    }
}

impl Handler for BrokerConnection {
    type Records = FetchRecords;

    fn handle(
        &self,
        header: RequestHeader,
        body: Reader,
    ) -> LocalBoxFuture<'static, Response<FetchRecords>> {
        self.handle_request(header, body)
    }

    fn takes_raw_frame(&self) -> bool {
        self.sasl_takes_raw_frame()
    }

    fn handle_raw(&self, frame: Bytes) -> LocalBoxFuture<'static, Response<FetchRecords>> {
        self.sasl_handle_raw(frame)
    }

    fn write_records<'a>(
        &'a self,
        stream: &'a TcpStream,
        length: u32,
        records: FetchRecords,
    ) -> LocalBoxFuture<'a, io::Result<()>> {
        self.copy_records(stream, length, records)
    }

    fn write_parts<'a>(
        &'a self,
        stream: &'a TcpStream,
        parts: Vec<Part<FetchRecords>>,
    ) -> LocalBoxFuture<'a, io::Result<()>> {
        if !self.zero_copy.is_zero_copy() {
            return Box::pin(sluice_net::connection::write_parts_in_order(
                stream, self, parts,
            ));
        }
        Box::pin(async move {
            let socket = self.socket_for(stream)?;
            self.wrote_zero_copy.set(true);
            let ring = self.shard.storage.ring();
            let send_zc_allowed = self.send_zc_allowed.get();
            let written =
                zero_copy::write_response(&self.zero_copy, &ring, &socket, parts, send_zc_allowed)
                    .await;
            if let Err(error) = &written {
                // Every operation of the write has its result by now (a SENDMSG_ZC awaiting
                // its notification still holds its memory in the ring): what the counters show
                // is what the abort left behind.
                tracing::debug!(
                    target: "sluice::zero_copy",
                    client = %self.session.client_host,
                    %error,
                    "zero-copy response aborted; {}",
                    zero_copy::Counters::now()
                );
            }
            written
        })
    }

    fn muted_until(&self) -> Option<std::time::Instant> {
        self.mute.until()
    }

    fn closed(&self) {
        self.on_closed();
    }
}

/// Over TLS every response takes the copying path ([`Handler::write_parts`]'s default writes
/// framing and record data in order, all of it sealed by the TLS writer).
impl Handler<TlsStream> for BrokerConnection {
    type Records = FetchRecords;

    fn handle(
        &self,
        header: RequestHeader,
        body: Reader,
    ) -> LocalBoxFuture<'static, Response<FetchRecords>> {
        self.handle_request(header, body)
    }

    fn takes_raw_frame(&self) -> bool {
        self.sasl_takes_raw_frame()
    }

    fn handle_raw(&self, frame: Bytes) -> LocalBoxFuture<'static, Response<FetchRecords>> {
        self.sasl_handle_raw(frame)
    }

    fn write_records<'a>(
        &'a self,
        stream: &'a TlsStream,
        length: u32,
        records: FetchRecords,
    ) -> LocalBoxFuture<'a, io::Result<()>> {
        self.copy_records(stream, length, records)
    }

    fn muted_until(&self) -> Option<std::time::Instant> {
        self.mute.until()
    }

    fn closed(&self) {
        self.on_closed();
    }
}

/// Writes the first `filled` bytes of `buf` and hands the buffer back for reuse.
async fn write_filled<T: Transport>(
    stream: &T,
    buf: Vec<u8>,
    filled: usize,
) -> io::Result<Vec<u8>> {
    let (result, slice) = stream.write_all(buf.slice(..filled)).await;
    result?;
    Ok(slice.into_inner())
}
