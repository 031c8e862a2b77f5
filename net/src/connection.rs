//! One client connection: reads frames, hands each request to the broker's [`Handler`] as soon
//! as it arrives (so pipelined requests are processed concurrently), and writes the responses
//! strictly in request order, as Kafka requires.
//!
//! Owns the socket and the per-connection limits. Must never: reorder responses, buffer an
//! unbounded number of requests (the in-flight queue is bounded: a full queue stops reading,
//! which pushes back on the client through TCP), or panic on what a client sends.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::fetch::Part;
use crate::frame::next_frame;
use crate::header::RequestHeader;
use crate::wire::Reader;

/// Per-connection limits (all configurable by the broker).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `socket.request.max.bytes`: largest request frame.
    pub request_bytes_max: usize,
    /// Requests read but not yet answered, per connection.
    pub inflight_requests_max: usize,
    /// Initial read buffer size.
    pub read_buffer_bytes: usize,
}

/// What a handler produces for one request.
pub enum Response<R> {
    /// No response on the wire (Produce with acks=0).
    None,
    /// A complete encoded response frame.
    Frame(Bytes),
    /// A response assembled from framing and record data (Fetch).
    Parts(Vec<Part<R>>),
    /// Close the connection after the responses before this one (a protocol violation the
    /// handler has already logged).
    Close,
}

/// The broker side of a connection.
pub trait Handler: 'static {
    /// Record data inside [`Response::Parts`].
    type Records: 'static;

    /// Handles one request. Called in arrival order; the returned future may complete in any
    /// order, responses are still written in arrival order.
    fn handle(
        &self,
        header: RequestHeader,
        body: Reader,
    ) -> LocalBoxFuture<'static, Response<Self::Records>>;

    /// Writes record data to the socket (copying or zero-copy: the handler decides).
    fn write_records<'a>(
        &'a self,
        stream: &'a TcpStream,
        length: u32,
        records: Self::Records,
    ) -> LocalBoxFuture<'a, io::Result<()>>;

    /// Writes one multi-part response, in order. The default writes each framing part with
    /// `write_all` and hands record parts to [`Handler::write_records`]; a handler overrides it
    /// to put framing and record data into one submission (linked io_uring entries).
    fn write_parts<'a>(
        &'a self,
        stream: &'a TcpStream,
        parts: Vec<Part<Self::Records>>,
    ) -> LocalBoxFuture<'a, io::Result<()>> {
        Box::pin(write_parts_in_order(stream, self, parts))
    }

    /// Called once when the connection ends.
    fn closed(&self) {}
}

/// Serves `stream` until the client closes it, a write fails, or a request breaks the protocol.
pub async fn serve<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Rc<H>,
    limits: ConnectionLimits,
) {
    let stream = Rc::new(stream);
    let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(limits.inflight_requests_max.max(1));
    let writer = tokio::task::spawn_local(write_responses(
        stream.clone(),
        peer,
        handler.clone(),
        queue_rx,
    ));
    read_requests(&stream, peer, &handler, limits, queue_tx).await;
    // The writer drains what was queued before the reader stopped, then returns.
    if let Err(error) = writer.await {
        tracing::error!(%peer, %error, "connection writer task failed");
    }
    handler.closed();
}

async fn read_requests<H: Handler>(
    stream: &TcpStream,
    peer: SocketAddr,
    handler: &Rc<H>,
    limits: ConnectionLimits,
    queue_tx: tokio::sync::mpsc::Sender<tokio::task::JoinHandle<Response<H::Records>>>,
) {
    let mut buf = BytesMut::with_capacity(limits.read_buffer_bytes);
    loop {
        loop {
            let frame = match next_frame(&mut buf, limits.request_bytes_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%peer, %error, "closing connection: bad frame");
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            };
            let (header, body) = match RequestHeader::parse(frame) {
                Ok(parsed) => parsed,
                Err(error) => {
                    tracing::warn!(%peer, %error, "closing connection: unreadable request header");
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            };
            let task = tokio::task::spawn_local(handler.handle(header, body));
            if queue_tx.send(task).await.is_err() {
                return; // the writer stopped: the socket is gone
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(limits.read_buffer_bytes.max(4096));
        }
        // tokio-uring reads into the start of the buffer it is given: pass the spare tail,
        // or a frame split across reads would be overwritten.
        let filled = buf.len();
        let (result, returned) = stream.read(buf.slice(filled..)).await;
        buf = returned.into_inner();
        match result {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                if error.kind() != io::ErrorKind::ConnectionReset {
                    tracing::debug!(%peer, %error, "read failed");
                }
                return;
            }
        }
    }
}

async fn write_responses<H: Handler>(
    stream: Rc<TcpStream>,
    peer: SocketAddr,
    handler: Rc<H>,
    mut queue_rx: tokio::sync::mpsc::Receiver<tokio::task::JoinHandle<Response<H::Records>>>,
) {
    while let Some(task) = queue_rx.recv().await {
        let response = match task.await {
            Ok(response) => response,
            Err(error) => {
                tracing::error!(%peer, %error, "request handler failed; closing connection");
                Response::Close
            }
        };
        let written = match response {
            Response::None => Ok(()),
            Response::Frame(bytes) => write_bytes(&stream, bytes).await,
            Response::Parts(parts) => handler.write_parts(&stream, parts).await,
            Response::Close => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        if let Err(error) = written {
            tracing::debug!(%peer, %error, "write failed; closing connection");
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

async fn write_bytes(stream: &TcpStream, bytes: Bytes) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let (result, _) = stream.write_all(bytes).await;
    result
}

/// Writes `parts` one at a time: framing with `write_all`, records through the handler.
pub async fn write_parts_in_order<H: Handler + ?Sized>(
    stream: &TcpStream,
    handler: &H,
    parts: Vec<Part<H::Records>>,
) -> io::Result<()> {
    for part in parts {
        match part {
            Part::Framing(bytes) => write_bytes(stream, bytes).await?,
            Part::Records { length, source } => {
                handler.write_records(stream, length, source).await?
            }
        }
    }
    Ok(())
}
