//! One client connection: reads frames, hands each request to the broker's [`Handler`] as soon
//! as it arrives (so pipelined requests are processed concurrently), and writes the responses
//! strictly in request order, as Kafka requires.
//!
//! Owns the socket and the per-connection limits. Must never: reorder responses, buffer an
//! unbounded number of requests or request bytes, or panic on what a client sends.
//!
//! Back-pressure: a request is handed on only once the shard's [`RequestBudget`]
//! (`queued.max.request.bytes`) has room for its bytes and the connection's in-flight queue
//! (`queued.max.requests`) has room for it; until then the connection does not read its
//! socket, so the client is held back by TCP and nothing is dropped. The bytes return to the
//! budget when the handler finishes with the request, not when its response is written: a
//! client that stops reading its responses must not keep the shard's shared budget, and so
//! every other connection on the shard, waiting. Its parked responses are bounded by its own
//! `queued.max.requests`. Memory read from one connection and not yet admitted is at most one
//! frame plus its read buffer.
//!
//! Muting: while the handler says the connection is muted (a client over its quota, KIP-219)
//! the reader hands on no request and reads nothing; responses already due are still written.
//!
//! Idle connections (`connections.max.idle.ms`): nothing in flight and nothing read or written
//! for that long closes the connection with a debug line. A request being handled or a response
//! being written (a long-poll Fetch, a slow reader) is not idleness.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::budget::RequestBudget;
use crate::fetch::Part;
use crate::frame::{next_frame, FRAME_PREFIX_BYTES};
use crate::header::RequestHeader;
use crate::transport::Transport;
use crate::wire::Reader;

/// Frames at least this large share the connection's read buffer instead of being copied
/// out. A read buffer is `read_buffer_bytes` (64 KiB) or, for a frame that does not fit, about
/// the frame's size, so a shared frame pins at most max(4 x its size, its size + 64 KiB).
/// Only work in progress holds a frame: its handler (within `queued.max.request.bytes`) and,
/// for a Produce, the storage writer's queue until the write (`log.append.queue.bytes.max`).
/// Nothing that outlives a request may keep a slice of one: the tail cache copies the batches
/// it keeps, and Fetch responses hold only those copies (`fetch.response.cache.bytes.max`).
pub const SHARED_FRAME_BYTES_MIN: usize = 16 * 1024;

/// Per-connection limits (all configurable by the broker).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `socket.request.max.bytes`: largest request frame.
    pub request_bytes_max: usize,
    /// Requests read but not yet answered, per connection.
    pub inflight_requests_max: usize,
    /// Initial read buffer size.
    pub read_buffer_bytes: usize,
    /// `connections.max.idle.ms`: idle connections are closed after this.
    pub idle_ms_max: u64,
}

/// A request handed to its handler; its budget bytes were returned when the handler finished.
type Queued<R> = tokio::task::JoinHandle<Response<R>>;

/// What the reader and the writer of one connection share for the idle check.
struct Activity {
    /// Requests read and not yet answered.
    in_flight: Cell<usize>,
    /// Last read or write completion.
    last: Cell<Instant>,
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
    /// Write this frame, then close the connection (a refused SASL login: the client reads
    /// why before the connection ends).
    FrameThenClose(Bytes),
}

/// The broker side of a connection over transport `T` (plain TCP unless said otherwise).
pub trait Handler<T: Transport = TcpStream>: 'static {
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
        stream: &'a T,
        length: u32,
        records: Self::Records,
    ) -> LocalBoxFuture<'a, io::Result<()>>;

    /// Writes one multi-part response, in order. The default writes each framing part with
    /// `write_all` and hands record parts to [`Handler::write_records`]; a handler overrides it
    /// to put framing and record data into one submission (linked io_uring entries).
    fn write_parts<'a>(
        &'a self,
        stream: &'a T,
        parts: Vec<Part<Self::Records>>,
    ) -> LocalBoxFuture<'a, io::Result<()>> {
        Box::pin(write_parts_in_order(stream, self, parts))
    }

    /// Whether the next frame is not a request but a raw token (SASL after a v0
    /// SaslHandshake): asked before each frame's header is parsed, so a handler answers it
    /// in [`Handler::handle_raw`]. Decided in arrival order, like `handle` calls.
    fn takes_raw_frame(&self) -> bool {
        false
    }

    /// Handles a raw frame (only called when [`Handler::takes_raw_frame`] said so).
    fn handle_raw(&self, frame: Bytes) -> LocalBoxFuture<'static, Response<Self::Records>> {
        let _ = frame;
        Box::pin(async { Response::Close })
    }

    /// Called once when the connection ends.
    fn closed(&self) {}

    /// Until when the connection must not be read (a client quota's throttle, KIP-219); the
    /// read loop hands on no request and reads nothing before then.
    fn muted_until(&self) -> Option<Instant> {
        None
    }
}

/// Serves `stream` until the client closes it, a write fails, or a request breaks the protocol.
pub async fn serve<T: Transport, H: Handler<T>>(
    stream: T,
    peer: SocketAddr,
    handler: Rc<H>,
    limits: ConnectionLimits,
    budget: Rc<RequestBudget>,
) {
    let stream = Rc::new(stream);
    let activity = Rc::new(Activity {
        in_flight: Cell::new(0),
        last: Cell::new(Instant::now()),
    });
    let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(limits.inflight_requests_max.max(1));
    let writer = tokio::task::spawn_local(write_responses(
        stream.clone(),
        peer,
        handler.clone(),
        queue_rx,
        activity.clone(),
    ));
    read_requests(
        &*stream, peer, &handler, limits, &budget, &activity, queue_tx,
    )
    .await;
    // The writer drains what was queued before the reader stopped, then returns.
    if let Err(error) = writer.await {
        tracing::error!(%peer, %error, "connection writer task failed");
    }
    handler.closed();
}

async fn read_requests<T: Transport, H: Handler<T>>(
    stream: &T,
    peer: SocketAddr,
    handler: &Rc<H>,
    limits: ConnectionLimits,
    budget: &Rc<RequestBudget>,
    activity: &Activity,
    queue_tx: tokio::sync::mpsc::Sender<Queued<<H as Handler<T>>::Records>>,
) {
    let idle_max = Duration::from_millis(limits.idle_ms_max);
    // One timer for the connection's life: reads and writes only move `activity.last`, and
    // the timer, when it fires, re-arms itself from there. A timer per read would register
    // and unregister with the timer driver on every socket read.
    let idle = tokio::time::sleep_until(idle_deadline(activity.last.get(), idle_max));
    tokio::pin!(idle);
    let mut buf = BytesMut::with_capacity(limits.read_buffer_bytes);
    loop {
        loop {
            wait_unmuted::<T, H>(handler.as_ref()).await;
            let frame = match next_frame(&mut buf, limits.request_bytes_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%peer, %error, "closing connection: bad frame");
                    stream.shutdown();
                    return;
                }
            };
            let frame_bytes = FRAME_PREFIX_BYTES + frame.len();
            // A small frame is copied out, so it never pins the read buffer: a few hundred
            // bytes waiting in the writer queue would otherwise hold a whole buffer, and the
            // buffer is reused in place once no frame shares it.
            let frame = if frame.len() < SHARED_FRAME_BYTES_MIN {
                Bytes::copy_from_slice(&frame)
            } else {
                frame
            };
            // Err: a raw frame, handed on whole.
            let request = if handler.takes_raw_frame() {
                Err(frame)
            } else {
                match RequestHeader::parse(frame) {
                    Ok(parsed) => Ok(parsed),
                    Err(error) => {
                        tracing::warn!(%peer, %error, "closing connection: unreadable request header");
                        stream.shutdown();
                        return;
                    }
                }
            };
            // The frame's bytes (prefix included) wait here for room in the shard's budget;
            // meanwhile this connection reads nothing more.
            let permit = budget.acquire(frame_bytes).await;
            // Reserve the queue slot before spawning, so a full queue holds the request back
            // unhandled instead of running it and parking its response.
            let Ok(slot) = queue_tx.reserve().await else {
                return; // the writer stopped: the socket is gone
            };
            activity.in_flight.set(activity.in_flight.get() + 1);
            let handled = match request {
                Ok((header, body)) => handler.handle(header, body),
                Err(raw) => handler.handle_raw(raw),
            };
            // The bytes go back as soon as the request is handled: a response the client does
            // not read must not hold the shard's budget while `write_all` waits on the socket.
            let task = tokio::task::spawn_local(async move {
                let response = handled.await;
                drop(permit);
                response
            });
            slot.send(task);
        }
        wait_unmuted::<T, H>(handler.as_ref()).await;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(limits.read_buffer_bytes.max(4096));
        }
        // tokio-uring reads into the start of the buffer it is given: pass the spare tail,
        // or a frame split across reads would be overwritten.
        let filled = buf.len();
        let read = stream.read(buf.slice(filled..));
        tokio::pin!(read);
        // The read is never cancelled while the connection lives (a cancelled read could lose
        // bytes the kernel already took); the idle timer only decides whether to close.
        let (result, returned) = loop {
            tokio::select! {
                done = &mut read => break done,
                () = idle.as_mut() => {
                    let idle_for = activity.last.get().elapsed();
                    if activity.in_flight.get() == 0 && idle_for >= idle_max {
                        tracing::debug!(%peer, idle_ms = idle_for.as_millis() as u64, "closing idle connection (connections.max.idle.ms)");
                        stream.shutdown();
                        return;
                    }
                    if activity.in_flight.get() > 0 {
                        // Busy is not idle: the clock restarts when the last answer is written.
                        activity.last.set(Instant::now());
                    }
                    idle.as_mut().reset(idle_deadline(activity.last.get(), idle_max));
                }
            }
        };
        activity.last.set(Instant::now());
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

/// Waits out the handler's mute, if any. A muted connection is not idle: the idle clock
/// counts from the last read or write, and the mute is bounded by the throttle time.
async fn wait_unmuted<T: Transport, H: Handler<T>>(handler: &H) {
    while let Some(until) = handler.muted_until() {
        tokio::time::sleep_until(until.into()).await;
    }
}

/// When a connection last active at `last` becomes idle; a limit too large for the clock
/// gives a deadline decades away, which re-arms if it is ever reached.
fn idle_deadline(last: Instant, idle_max: Duration) -> tokio::time::Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);
    let deadline = last
        .checked_add(idle_max)
        .or_else(|| Instant::now().checked_add(FAR_FUTURE))
        .unwrap_or(last);
    deadline.into()
}

async fn write_responses<T: Transport, H: Handler<T>>(
    stream: Rc<T>,
    peer: SocketAddr,
    handler: Rc<H>,
    mut queue_rx: tokio::sync::mpsc::Receiver<Queued<<H as Handler<T>>::Records>>,
    activity: Rc<Activity>,
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
            Response::Frame(bytes) => write_bytes(&*stream, bytes).await,
            Response::Parts(parts) => handler.write_parts(&*stream, parts).await,
            Response::Close => {
                stream.shutdown();
                return;
            }
            Response::FrameThenClose(bytes) => {
                if let Err(error) = write_bytes(&*stream, bytes).await {
                    tracing::debug!(%peer, %error, "write failed; closing connection");
                }
                stream.shutdown();
                return;
            }
        };
        // Answered: the idle clock restarts.
        activity
            .in_flight
            .set(activity.in_flight.get().saturating_sub(1));
        activity.last.set(Instant::now());
        if let Err(error) = written {
            tracing::debug!(%peer, %error, "write failed; closing connection");
            stream.shutdown();
            return;
        }
    }
}

async fn write_bytes<T: Transport>(stream: &T, bytes: Bytes) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let (result, _) = stream.write_all(bytes).await;
    result
}

/// Writes `parts` one at a time: framing with `write_all`, records through the handler.
pub async fn write_parts_in_order<T: Transport, H: Handler<T> + ?Sized>(
    stream: &T,
    handler: &H,
    parts: Vec<Part<<H as Handler<T>>::Records>>,
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
