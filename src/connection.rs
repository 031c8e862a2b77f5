//! The broker side of a client connection: routes each request to the API dispatcher and
//! writes Fetch record data to the socket.
//!
//! Record data from the tail cache goes out as the cache's own `Bytes`; file ranges are copied
//! through one reusable per-connection buffer (the copying path; the zero-copy splice path
//! replaces it when `fetch.zero.copy` is on and the kernel supports splice). Must never: hold
//! a segment handle longer than the write that needs it.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use sluice_metrics::{Counter, Stage};
use sluice_net::connection::{Handler, Response};
use sluice_net::fetch::Part;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;
use sluice_storage::ReadChunk;

use crate::api::{self, FetchRecords};
use crate::runtime::TcpStream;
use crate::shard::Shard;

/// Size of the buffer that file ranges are copied through on the copying path.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// One connection's handler.
pub struct BrokerConnection {
    shard: Rc<Shard>,
    /// The peer as Kafka shows it in DescribeGroups ("/127.0.0.1").
    client_host: Rc<str>,
    copy_buffer: RefCell<Option<Vec<u8>>>,
}

impl BrokerConnection {
    /// A handler on `shard`.
    pub fn new(shard: Rc<Shard>, peer: std::net::SocketAddr) -> Self {
        shard.connections.set(shard.connections.get() + 1);
        shard.metrics.count(Counter::ConnectionsOpened, 1);
        Self {
            shard,
            client_host: Rc::from(format!("/{}", peer.ip())),
            copy_buffer: RefCell::new(None),
        }
    }
}

impl Handler for BrokerConnection {
    type Records = FetchRecords;

    fn handle(
        &self,
        header: RequestHeader,
        body: Reader,
    ) -> LocalBoxFuture<'static, Response<FetchRecords>> {
        let shard = self.shard.clone();
        let client_host = self.client_host.clone();
        let read_at = std::time::Instant::now();
        // Frame prefix + the fixed header fields + the body; close enough for a byte counter.
        let bytes_in = (body.remaining() + 12) as u64;
        Box::pin(async move {
            let metrics = &shard.metrics;
            metrics.record_stage_ns(Stage::RequestQueue, read_at.elapsed().as_nanos() as u64);
            metrics.count(Counter::BytesIn, bytes_in);
            let api_key = header.api_key;
            let response = api::dispatch(shard.clone(), header, body, &client_host).await;
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
                Response::Close => metrics.count(Counter::Errors, 1),
                Response::None => {}
            }
            response
        })
    }

    fn write_records<'a>(
        &'a self,
        stream: &'a TcpStream,
        length: u32,
        records: FetchRecords,
    ) -> LocalBoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let mut written: u64 = 0;
            for chunk in records {
                match chunk {
                    ReadChunk::Memory(bytes) => {
                        written += bytes.len() as u64;
                        let (result, _) = stream.write_all(bytes).await;
                        result?;
                    }
                    ReadChunk::File {
                        segment,
                        position,
                        length,
                    } => {
                        let mut buf = self
                            .copy_buffer
                            .borrow_mut()
                            .take()
                            .unwrap_or_else(|| Vec::with_capacity(COPY_BUFFER_BYTES));
                        let mut done: u64 = 0;
                        while done < u64::from(length) {
                            let step =
                                (u64::from(length) - done).min(COPY_BUFFER_BYTES as u64) as usize;
                            buf.resize(step, 0);
                            pread_exact(segment.raw_fd(), &mut buf, position + done)?;
                            let (result, returned) = stream.write_all(buf).await;
                            buf = returned;
                            result?;
                            done += step as u64;
                        }
                        written += done;
                        *self.copy_buffer.borrow_mut() = Some(buf);
                    }
                }
            }
            if written != u64::from(length) {
                // The framing already promised `length` bytes: the stream is now unusable.
                return Err(io::Error::other(format!(
                    "record data was {written} bytes, framing said {length}"
                )));
            }
            Ok(())
        })
    }

    fn closed(&self) {
        self.shard
            .connections
            .set(self.shard.connections.get().saturating_sub(1));
        self.shard.metrics.count(Counter::ConnectionsClosed, 1);
    }
}

fn pread_exact(fd: std::os::fd::RawFd, buf: &mut [u8], mut position: u64) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: `buf[filled..]` is valid writable memory of the given length; `fd` stays
        // open because the caller holds the segment handle.
        let n = unsafe {
            libc::pread(
                fd,
                buf[filled..].as_mut_ptr().cast(),
                buf.len() - filled,
                position as libc::off_t,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment shorter than its read range",
            ));
        }
        filled += n as usize;
        position += n as u64;
    }
    Ok(())
}
