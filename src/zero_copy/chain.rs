//! Writes one response to a socket as linked io_uring chains on the shard's raw ring: framing
//! and tail-cache bytes by SENDMSG (SENDMSG_ZC above a size threshold), segment-file ranges
//! by SPLICE file -> pipe -> socket. One chain carries up to `links_max` entries in response
//! order; a short transfer ends the chain early (the kernel cancels the links after it) and
//! the next chain resumes exactly where the bytes stopped.
//!
//! Owns the write cursor of one response. Must never: put a byte on the socket out of order
//! (any link completing after a short one is treated as a broken stream), let the kernel
//! touch memory or descriptors that were freed (every buffer, message header, segment, pipe
//! and the socket itself ride in the chain's kept state until its last CQE), or return
//! before every submitted operation has produced its result (a SENDMSG_ZC's notification may
//! come later: the ring holds the chain's kept state until it does).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use bytes::Bytes;
use sluice_storage::ring::{ops, types, Entry};
use sluice_storage::{Ring, SegmentHandle};

use super::counters::{self, Gauge};
use super::pipe_pool::{Pipe, PipeLease, PipePool};

/// Iovecs gathered into one SENDMSG (well under the kernel's UIO_MAXIOV of 1024).
const IOVECS_PER_SEND_MAX: usize = 64;

/// How a response is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainConfig {
    /// Gathered sends of at least this many bytes use SENDMSG_ZC; `None`: never.
    pub(crate) send_zc_min_bytes: Option<usize>,
    /// Entries per linked chain (>= 2, so a splice pair always fits).
    pub(crate) links_max: usize,
}

/// A segment-file reference counted in [`Gauge::SegmentRefsHeld`] while it lives.
#[derive(Debug)]
pub(crate) struct TrackedSegment(SegmentRef);

#[derive(Debug, Clone)]
enum SegmentRef {
    Storage(SegmentHandle),
    /// A plain file, so the chain can be tested without a storage engine.
    #[cfg(test)]
    File(Rc<std::fs::File>),
}

impl TrackedSegment {
    pub(crate) fn new(segment: SegmentHandle) -> TrackedSegment {
        TrackedSegment::tracking(SegmentRef::Storage(segment))
    }

    #[cfg(test)]
    pub(crate) fn from_file(file: Rc<std::fs::File>) -> TrackedSegment {
        TrackedSegment::tracking(SegmentRef::File(file))
    }

    fn tracking(segment: SegmentRef) -> TrackedSegment {
        counters::add(Gauge::SegmentRefsHeld, 1);
        TrackedSegment(segment)
    }

    fn raw_fd(&self) -> i32 {
        match &self.0 {
            SegmentRef::Storage(segment) => segment.raw_fd(),
            #[cfg(test)]
            SegmentRef::File(file) => file.as_raw_fd(),
        }
    }
}

impl Clone for TrackedSegment {
    fn clone(&self) -> Self {
        TrackedSegment::tracking(self.0.clone())
    }
}

impl Drop for TrackedSegment {
    fn drop(&mut self) {
        counters::sub(Gauge::SegmentRefsHeld, 1);
    }
}

/// One piece of a response, in wire order.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Bytes in memory: framing or tail-cache batches.
    Bytes(Bytes),
    /// `length` bytes of a segment file at `position`.
    File {
        segment: TrackedSegment,
        position: u64,
        length: u32,
    },
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(bytes) => bytes.len() as u64,
            Piece::File { length, .. } => u64::from(*length),
        }
    }
}

/// A SENDMSG's header and iovecs, boxed so their addresses stay put while the kernel reads
/// them (the header points at the iovec array's heap buffer).
struct MessageHeader {
    header: libc::msghdr,
    _iovecs: Vec<libc::iovec>,
}

/// Everything a chain's entries point at or name by descriptor; the ring keeps it until the
/// chain's last CQE, even if the writer's future is dropped.
struct ChainKeep {
    _bytes: Vec<Bytes>,
    // Boxed on purpose: SQEs point at each header, which must not move when the Vec grows.
    #[allow(clippy::vec_box)]
    _headers: Vec<Box<MessageHeader>>,
    _segments: Vec<TrackedSegment>,
    _pipe: Option<Rc<Pipe>>,
    _socket: Rc<OwnedFd>,
}

/// What each link of a chain was asked to do, to apply its result to the cursor.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// Send `length_bytes` of consecutive `Piece::Bytes`.
    Send { length_bytes: u64, zero_copy: bool },
    /// Splice `length_bytes` of the current file piece into the pipe.
    SpliceIn { length_bytes: u64 },
    /// Splice `length_bytes` from the pipe to the socket.
    SpliceOut { length_bytes: u64 },
}

/// Where the response stands: the next piece, bytes of it already on the socket, and bytes
/// of it sitting in the pipe (right after those).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    piece: usize,
    offset_bytes: u64,
    piped_bytes: u64,
}

/// Writes `pieces` to `socket` in order. On error the connection must be closed: an unknown
/// prefix of the response may be on the wire.
pub(crate) async fn write_pieces(
    ring: &Ring,
    pool: &PipePool,
    socket: &Rc<OwnedFd>,
    pieces: Vec<Piece>,
    config: ChainConfig,
) -> io::Result<()> {
    assert!(config.links_max >= 2, "a splice pair must fit in one chain");
    let _in_flight = WriteInFlight::new();
    let pieces: Vec<Piece> = pieces.into_iter().filter(|p| p.len() > 0).collect();
    let mut lease: Option<PipeLease> = None;
    if pieces.iter().any(|p| matches!(p, Piece::File { .. })) {
        lease = Some(
            pool.lease()
                .map_err(|e| context(e, "creating a splice pipe"))?,
        );
    }
    let mut cursor = Cursor::default();
    let outcome = async {
        while cursor.piece < pieces.len() {
            let pipe = lease.as_ref().map(|l| l.pipe().clone());
            let (entries, links, keep) = build_chain(&pieces, cursor, pipe, socket, config);
            // SAFETY: every pointer in `entries` points into `keep` (the Bytes, the boxed
            // message headers); every descriptor is owned by `keep` (segments, pipe, socket),
            // so nothing is freed or renumbered before the chain's last CQE.
            let completions = unsafe { ring.submit_linked(entries, keep) };
            let mut results = Vec::with_capacity(completions.len());
            for completion in completions {
                results.push(completion.await);
            }
            match apply(&pieces, &mut cursor, &links, results)? {
                Next::Continue => {}
                Next::WaitWritable => wait_writable(ring, socket).await?,
            }
        }
        Ok(())
    }
    .await;
    if let Some(lease) = lease {
        let empty = outcome.is_ok() && cursor.piped_bytes == 0;
        pool.give_back(lease, empty);
    }
    outcome
}

/// Counts a write in [`Gauge::WritesInFlight`] from start until it finishes or is dropped.
struct WriteInFlight;

impl WriteInFlight {
    fn new() -> WriteInFlight {
        counters::add(Gauge::WritesInFlight, 1);
        WriteInFlight
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        counters::sub(Gauge::WritesInFlight, 1);
    }
}

fn build_chain(
    pieces: &[Piece],
    start: Cursor,
    pipe: Option<Rc<Pipe>>,
    socket: &Rc<OwnedFd>,
    config: ChainConfig,
) -> (Vec<Entry>, Vec<Link>, ChainKeep) {
    let socket_fd = types::Fd(socket.as_raw_fd());
    let mut entries = Vec::new();
    let mut links = Vec::new();
    let mut keep = ChainKeep {
        _bytes: Vec::new(),
        _headers: Vec::new(),
        _segments: Vec::new(),
        _pipe: pipe.clone(),
        _socket: socket.clone(),
    };
    let mut cursor = start;
    while cursor.piece < pieces.len() && entries.len() + 2 <= config.links_max {
        match &pieces[cursor.piece] {
            Piece::Bytes(_) => {
                let mut iovecs = Vec::new();
                let mut length_bytes: u64 = 0;
                let mut offset = cursor.offset_bytes as usize;
                while cursor.piece < pieces.len() && iovecs.len() < IOVECS_PER_SEND_MAX {
                    let Piece::Bytes(bytes) = &pieces[cursor.piece] else {
                        break;
                    };
                    let rest = &bytes[offset..];
                    iovecs.push(libc::iovec {
                        iov_base: rest.as_ptr() as *mut libc::c_void,
                        iov_len: rest.len(),
                    });
                    length_bytes += rest.len() as u64;
                    keep._bytes.push(bytes.clone());
                    cursor.piece += 1;
                    offset = 0;
                }
                cursor.offset_bytes = 0;
                let zero_copy = config
                    .send_zc_min_bytes
                    .is_some_and(|min| length_bytes >= min as u64);
                let more = cursor.piece < pieces.len();
                let header = message_header(iovecs);
                let flags = send_flags(more);
                let entry = if zero_copy {
                    ops::SendMsgZc::new(socket_fd, &header.header)
                        .flags(flags)
                        .build()
                } else {
                    ops::SendMsg::new(socket_fd, &header.header)
                        .flags(flags)
                        .build()
                };
                keep._headers.push(header);
                entries.push(entry);
                links.push(Link::Send {
                    length_bytes,
                    zero_copy,
                });
            }
            Piece::File {
                segment,
                position,
                length,
            } => {
                // `write_pieces` leases a pipe whenever a file piece exists.
                let Some(pipe) = pipe.as_ref() else {
                    unreachable!("file pieces always come with a pipe");
                };
                let remaining = u64::from(*length) - cursor.offset_bytes;
                let out_bytes = if cursor.piped_bytes > 0 {
                    cursor.piped_bytes
                } else {
                    let file_position = position + cursor.offset_bytes;
                    let step = splice_step_bytes(remaining, file_position, pipe.capacity_bytes());
                    entries.push(
                        ops::Splice::new(
                            types::Fd(segment.raw_fd()),
                            file_position as i64,
                            types::Fd(pipe.write_fd()),
                            -1,
                            step as u32,
                        )
                        .flags(libc::SPLICE_F_MOVE)
                        .build(),
                    );
                    links.push(Link::SpliceIn { length_bytes: step });
                    keep._segments.push(segment.clone());
                    step
                };
                cursor.offset_bytes += out_bytes;
                cursor.piped_bytes = 0;
                if cursor.offset_bytes == u64::from(*length) {
                    cursor.piece += 1;
                    cursor.offset_bytes = 0;
                }
                let more = cursor.piece < pieces.len();
                let flags = if more {
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE
                } else {
                    libc::SPLICE_F_MOVE
                };
                entries.push(
                    ops::Splice::new(
                        types::Fd(pipe.read_fd()),
                        -1,
                        socket_fd,
                        -1,
                        out_bytes as u32,
                    )
                    .flags(flags)
                    .build(),
                );
                links.push(Link::SpliceOut {
                    length_bytes: out_bytes,
                });
            }
        }
    }
    (entries, links, keep)
}

/// How much of a file range to splice into an empty pipe: the pipe holds whole pages, so
/// a range that starts mid-page gets that much less, and the splice is not short for it.
fn splice_step_bytes(remaining_bytes: u64, file_position: u64, pipe_capacity_bytes: usize) -> u64 {
    const PAGE_BYTES: u64 = 4096;
    let fits = (pipe_capacity_bytes as u64).saturating_sub(file_position % PAGE_BYTES);
    remaining_bytes.min(fits.max(1)).min(u64::from(u32::MAX))
}

fn message_header(iovecs: Vec<libc::iovec>) -> Box<MessageHeader> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = iovecs.len();
    Box::new(MessageHeader {
        header,
        _iovecs: iovecs,
    })
}

/// MSG_WAITALL makes io_uring resume a partial send itself; MSG_NOSIGNAL turns a closed
/// peer into EPIPE instead of a signal; MSG_MORE lets TCP fill segments across links.
fn send_flags(more: bool) -> u32 {
    let mut flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
    if more {
        flags |= libc::MSG_MORE;
    }
    flags as u32
}

enum Next {
    Continue,
    WaitWritable,
}

/// Applies a chain's results to the cursor, in link order. After a short or failed link,
/// later links must have been cancelled (the paired splice out of the pipe after a short
/// splice into it is the one exception: it only moves what the pipe holds). A link that
/// moved bytes anyway means the stream's order is unknown and the connection must close.
fn apply(
    pieces: &[Piece],
    cursor: &mut Cursor,
    links: &[Link],
    results: Vec<io::Result<i32>>,
) -> io::Result<Next> {
    let mut stopped: Option<Next> = None;
    let mut pair_may_follow = false;
    for (link, result) in links.iter().zip(results) {
        let paired_out = pair_may_follow && matches!(link, Link::SpliceOut { .. });
        pair_may_follow = false;
        if stopped.is_some() && !paired_out {
            if result.is_ok() {
                return Err(io::Error::other(
                    "a link ran after a short transfer: response order lost",
                ));
            }
            // ECANCELED, or the error that follows from the cancellation: nothing moved.
            continue;
        }
        let moved = match result {
            Ok(moved) => moved as u64,
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) && paired_out => continue,
            Err(error) => match error.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    stopped = Some(Next::WaitWritable);
                    continue;
                }
                _ => return Err(context(error, link_name(link))),
            },
        };
        let asked = match *link {
            Link::Send {
                length_bytes,
                zero_copy,
            } => {
                advance_bytes(pieces, cursor, moved);
                let gauge = if zero_copy {
                    Gauge::SendZcBytes
                } else {
                    Gauge::SendBytes
                };
                counters::add(gauge, moved);
                length_bytes
            }
            Link::SpliceIn { length_bytes } => {
                if moved == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "segment file ended inside its read range",
                    ));
                }
                cursor.piped_bytes += moved;
                pair_may_follow = moved < length_bytes;
                length_bytes
            }
            Link::SpliceOut { length_bytes } => {
                if moved > cursor.piped_bytes {
                    return Err(io::Error::other("spliced more than the pipe held"));
                }
                cursor.offset_bytes += moved;
                cursor.piped_bytes -= moved;
                counters::add(Gauge::SplicedBytes, moved);
                if cursor.piped_bytes == 0 && cursor.offset_bytes == pieces[cursor.piece].len() {
                    cursor.piece += 1;
                    cursor.offset_bytes = 0;
                }
                length_bytes
            }
        };
        if moved < asked && !paired_out {
            counters::add(Gauge::ShortTransfers, 1);
            if moved == 0 && matches!(link, Link::Send { .. } | Link::SpliceOut { .. }) {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the socket took no bytes",
                ));
            }
            stopped = Some(Next::Continue);
        }
    }
    Ok(stopped.unwrap_or(Next::Continue))
}

fn advance_bytes(pieces: &[Piece], cursor: &mut Cursor, mut moved: u64) {
    while moved > 0 && cursor.piece < pieces.len() {
        let rest = pieces[cursor.piece].len() - cursor.offset_bytes;
        let take = rest.min(moved);
        cursor.offset_bytes += take;
        moved -= take;
        if cursor.offset_bytes == pieces[cursor.piece].len() {
            cursor.piece += 1;
            cursor.offset_bytes = 0;
        }
    }
}

fn link_name(link: &Link) -> &'static str {
    match link {
        Link::Send {
            zero_copy: true, ..
        } => "SENDMSG_ZC to the client",
        Link::Send { .. } => "SENDMSG to the client",
        Link::SpliceIn { .. } => "splice segment file -> pipe",
        Link::SpliceOut { .. } => "splice pipe -> client socket",
    }
}

/// Waits until the socket can take bytes (only a non-blocking socket reports EAGAIN).
async fn wait_writable(ring: &Ring, socket: &Rc<OwnedFd>) -> io::Result<()> {
    let poll = ops::PollAdd::new(types::Fd(socket.as_raw_fd()), libc::POLLOUT as u32).build();
    // SAFETY: the entry names the socket, which the kept Rc holds open.
    let completion = unsafe { ring.submit_owned(poll, socket.clone()) };
    completion
        .await
        .map(|_| ())
        .map_err(|e| context(e, "waiting for the client socket to drain"))
}

fn context(error: io::Error, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_steps_end_on_page_boundaries() {
        let capacity = 1024 * 1024;
        assert_eq!(splice_step_bytes(10, 0, capacity), 10);
        assert_eq!(splice_step_bytes(5_000_000, 0, capacity), capacity as u64);
        assert_eq!(
            splice_step_bytes(5_000_000, 100, capacity),
            capacity as u64 - 100
        );
        let step = splice_step_bytes(5_000_000, 4096 + 7, capacity);
        assert_eq!((4096 + 7 + step) % 4096, 0);
        // A one-page pipe still makes progress from an unaligned start.
        assert_eq!(splice_step_bytes(5_000, 4000, 4096), 96);
    }

    fn bytes_piece(length: usize) -> Piece {
        Piece::Bytes(Bytes::from(vec![7u8; length]))
    }

    fn file_piece(length: u32) -> Piece {
        let file = std::fs::File::open("/dev/null").expect("open");
        Piece::File {
            segment: TrackedSegment::from_file(Rc::new(file)),
            position: 0,
            length,
        }
    }

    /// Live tracked segments change the process-wide counters other tests compare.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        crate::zero_copy::tests::COUNTERS_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn cancelled() -> io::Result<i32> {
        Err(io::Error::from_raw_os_error(libc::ECANCELED))
    }

    #[test]
    fn a_short_splice_into_the_pipe_resumes_from_what_the_pipe_holds() {
        let _serial = serial();
        let pieces = vec![bytes_piece(10), file_piece(100), bytes_piece(5)];
        let mut cursor = Cursor::default();
        let links = [
            Link::Send {
                length_bytes: 10,
                zero_copy: false,
            },
            Link::SpliceIn { length_bytes: 100 },
            Link::SpliceOut { length_bytes: 100 },
            Link::Send {
                length_bytes: 5,
                zero_copy: false,
            },
        ];
        // 60 of 100 bytes reach the pipe; the paired splice out moves 50 of them.
        let results = vec![Ok(10), Ok(60), Ok(50), cancelled()];
        let next = apply(&pieces, &mut cursor, &links, results).expect("consistent");
        assert!(matches!(next, Next::Continue));
        assert_eq!(
            cursor,
            Cursor {
                piece: 1,
                offset_bytes: 50,
                piped_bytes: 10
            }
        );
        // The next chain first drains the pipe, then splices the rest of the range.
        let (_, built, _) = build_chain(
            &pieces,
            cursor,
            Some(Rc::new(test_pipe())),
            &Rc::new(dev_null_fd()),
            ChainConfig {
                send_zc_min_bytes: None,
                links_max: 8,
            },
        );
        assert!(matches!(built[0], Link::SpliceOut { length_bytes: 10 }));
        assert!(matches!(built[1], Link::SpliceIn { length_bytes: 40 }));
        assert!(matches!(built[2], Link::SpliceOut { length_bytes: 40 }));
        assert!(matches!(
            built[3],
            Link::Send {
                length_bytes: 5,
                ..
            }
        ));
    }

    #[test]
    fn a_short_send_resumes_inside_the_gathered_pieces() {
        let _serial = serial();
        let pieces = vec![bytes_piece(10), bytes_piece(20), file_piece(8)];
        let mut cursor = Cursor::default();
        let links = [
            Link::Send {
                length_bytes: 30,
                zero_copy: true,
            },
            Link::SpliceIn { length_bytes: 8 },
            Link::SpliceOut { length_bytes: 8 },
        ];
        let results = vec![Ok(25), cancelled(), cancelled()];
        apply(&pieces, &mut cursor, &links, results).expect("consistent");
        assert_eq!(
            cursor,
            Cursor {
                piece: 1,
                offset_bytes: 15,
                piped_bytes: 0
            }
        );
    }

    #[test]
    fn a_link_that_runs_after_a_short_one_closes_the_connection() {
        let pieces = vec![bytes_piece(10), bytes_piece(10)];
        let mut cursor = Cursor::default();
        let links = [
            Link::Send {
                length_bytes: 10,
                zero_copy: false,
            },
            Link::Send {
                length_bytes: 10,
                zero_copy: false,
            },
        ];
        let error = apply(&pieces, &mut cursor, &links, vec![Ok(4), Ok(10)])
            .err()
            .expect("order lost");
        assert!(error.to_string().contains("order"), "{error}");
    }

    #[test]
    fn errors_name_the_operation_and_a_file_that_ends_early_is_an_error() {
        let _serial = serial();
        let pieces = vec![file_piece(100)];
        let links = [
            Link::SpliceIn { length_bytes: 100 },
            Link::SpliceOut { length_bytes: 100 },
        ];
        let mut cursor = Cursor::default();
        let error = apply(&pieces, &mut cursor, &links, vec![Ok(0), cancelled()])
            .err()
            .expect("eof");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let mut cursor = Cursor::default();
        let reset = Err(io::Error::from_raw_os_error(libc::ECONNRESET));
        let error = apply(&pieces, &mut cursor, &links, vec![Ok(100), reset])
            .err()
            .expect("reset");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        assert!(
            error.to_string().contains("pipe -> client socket"),
            "{error}"
        );
    }

    fn test_pipe() -> Pipe {
        let pool = PipePool::new(1, 64 * 1024);
        let lease = pool.lease().expect("pipe");
        let pipe = lease.pipe().clone();
        drop(lease);
        Rc::try_unwrap(pipe).expect("sole owner")
    }

    fn dev_null_fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").expect("open"))
    }
}
