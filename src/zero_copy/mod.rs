//! Zero-copy Fetch responses: record bytes go from segment files to the socket by io_uring
//! SPLICE (file -> pipe -> socket, through a per-shard pipe pool) and from the tail cache by
//! SENDMSG_ZC (plain SENDMSG from the same buffers for peers on this host, where the kernel
//! copies zero-copy pages anyway), on the shard's raw ring, with the response framing in the
//! same linked chains.
//!
//! Owns the per-shard choice of path (probed once per shard: `fetch.zero.copy`, the ring's
//! opcode probe, a pipe that can be created and sized), the shard's pipe pool and the
//! process-wide counters. Must never: copy record bytes into a buffer of its own, reorder
//! bytes of a response, or let the kernel use memory or a descriptor after it is freed (that
//! is [`chain`]'s job, with the ring keeping each chain's state until its last CQE; this
//! module only assembles the pieces).

mod chain;
mod counters;
mod pipe_pool;

use std::cell::RefCell;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Once;

use sluice_net::fetch::Part;
use sluice_storage::ring::ops;
use sluice_storage::{ReadChunk, Ring};

pub use counters::Counters;

use chain::{ChainConfig, Piece, TrackedSegment};
use pipe_pool::PipePool;

use crate::shard::Shard;

/// Pipe buffer each pooled pipe asks for (the default `fs.pipe-max-size`): one splice moves
/// up to this much, so a large file range needs few chain links.
pub const PIPE_CAPACITY_BYTES: usize = 1024 * 1024;
/// Idle pipes a shard keeps; more concurrent responses create more pipes, which are closed
/// when they come back to a full pool.
pub const IDLE_PIPES_MAX: usize = 16;
/// Gathered sends of tail-cache data at or above this size use SENDMSG_ZC; below it, the
/// page pinning and the extra notification completion cost more than the copy they save.
/// The environment variable `SLUICE_FETCH_SEND_ZC_MIN_BYTES` overrides it (benchmarks: a huge
/// value turns SENDMSG_ZC off while splice stays on).
pub const SEND_ZC_MIN_BYTES: usize = 64 * 1024;
const SEND_ZC_MIN_BYTES_ENV: &str = "SLUICE_FETCH_SEND_ZC_MIN_BYTES";
const SEND_ZC_LOCAL_PEERS_ENV: &str = "SLUICE_FETCH_SEND_ZC_LOCAL_PEERS";
/// Entries per linked submission (the shard's ring also serves storage; keep chains short).
const LINKS_PER_CHAIN_MAX: usize = 32;

/// How a shard writes Fetch record data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchPath {
    /// Splice for file ranges; SENDMSG_ZC for large tail-cache data when `send_zc`.
    ZeroCopy {
        /// The kernel supports IORING_OP_SENDMSG_ZC.
        send_zc: bool,
    },
    /// Every record byte through a buffer: pread from files, copied from the tail cache, then
    /// written (`fetch.zero.copy=false`, or the kernel lacks splice).
    Copying {
        /// Why, for the log.
        reason: String,
    },
}

/// One shard's zero-copy state.
pub struct ShardZeroCopy {
    path: FetchPath,
    pool: PipePool,
    send_zc_min_bytes: usize,
    /// `SLUICE_FETCH_SEND_ZC_LOCAL_PEERS=1`: SENDMSG_ZC to peers on this host too (benchmarks
    /// use it to measure SENDMSG_ZC on loopback).
    send_zc_to_local_peers: bool,
}

impl ShardZeroCopy {
    /// Whether tail-cache data to the peer of `socket` may go by SENDMSG_ZC: not to a peer on
    /// this host (see [`peer_is_on_this_host`]) unless forced.
    pub fn send_zc_allowed(&self, socket: &OwnedFd, peer: std::net::SocketAddr) -> bool {
        self.send_zc_to_local_peers || !peer_is_on_this_host(socket, peer)
    }

    /// The path this shard uses.
    pub fn path(&self) -> &FetchPath {
        &self.path
    }

    /// Whether record data goes out by splice/SEND_ZC.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.path, FetchPath::ZeroCopy { .. })
    }
}

thread_local! {
    /// Per-shard state of the shards running on this thread (one in the broker; tests may
    /// build several). Keyed by the shard's address, checked through the weak reference.
    static SHARDS: RefCell<Vec<(Weak<Shard>, Rc<ShardZeroCopy>)>> = const { RefCell::new(Vec::new()) };
}

static PATH_LOGGED: Once = Once::new();

/// The zero-copy state of `shard`, probed on first use.
pub fn for_shard(shard: &Rc<Shard>) -> Rc<ShardZeroCopy> {
    SHARDS.with(|shards| {
        let mut shards = shards.borrow_mut();
        shards.retain(|(weak, _)| weak.strong_count() > 0);
        if let Some((_, state)) = shards
            .iter()
            .find(|(weak, _)| std::ptr::eq(weak.as_ptr(), Rc::as_ptr(shard)))
        {
            return state.clone();
        }
        let state = Rc::new(probe(shard.config.fetch_zero_copy, &shard.storage.ring()));
        PATH_LOGGED.call_once(|| log_path(&state));
        shards.push((Rc::downgrade(shard), state.clone()));
        state
    })
}

fn probe(enabled: bool, ring: &Ring) -> ShardZeroCopy {
    let pool = PipePool::new(IDLE_PIPES_MAX, PIPE_CAPACITY_BYTES);
    let path = if !enabled {
        FetchPath::Copying {
            reason: "fetch.zero.copy=false".to_string(),
        }
    } else if !ring.is_supported(ops::Splice::CODE) {
        FetchPath::Copying {
            reason: "the kernel's io_uring lacks IORING_OP_SPLICE".to_string(),
        }
    } else {
        match pool.warm_up() {
            Ok(_) => FetchPath::ZeroCopy {
                send_zc: ring.is_supported(ops::SendMsgZc::CODE),
            },
            Err(error) => FetchPath::Copying {
                reason: format!("cannot create a splice pipe: {error}"),
            },
        }
    };
    ShardZeroCopy {
        path,
        pool,
        send_zc_min_bytes: send_zc_min_bytes(),
        send_zc_to_local_peers: std::env::var_os(SEND_ZC_LOCAL_PEERS_ENV).is_some_and(|v| v == "1"),
    }
}

fn send_zc_min_bytes() -> usize {
    let Ok(text) = std::env::var(SEND_ZC_MIN_BYTES_ENV) else {
        return SEND_ZC_MIN_BYTES;
    };
    match text.trim().parse::<usize>() {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(
                "{SEND_ZC_MIN_BYTES_ENV}={text:?} is not a byte count ({error}); using \
                 {SEND_ZC_MIN_BYTES}"
            );
            SEND_ZC_MIN_BYTES
        }
    }
}

fn log_path(state: &ShardZeroCopy) {
    match &state.path {
        FetchPath::ZeroCopy { send_zc } => {
            let pipe_bytes = state.pool.pipe_capacity_bytes();
            let send_zc_min_bytes = state.send_zc_min_bytes;
            if *send_zc {
                tracing::info!(
                    "fetch path: zero copy (segment files: io_uring splice file->pipe->socket, \
                     pipes of {pipe_bytes} bytes; tail cache: SENDMSG_ZC from \
                     {send_zc_min_bytes} bytes, plain send below)"
                );
            } else {
                tracing::info!(
                    "fetch path: zero copy (segment files: io_uring splice file->pipe->socket, \
                     pipes of {pipe_bytes} bytes; tail cache: plain send, the kernel lacks \
                     IORING_OP_SENDMSG_ZC)"
                );
            }
        }
        FetchPath::Copying { reason } => {
            tracing::info!("fetch path: copying through user space ({reason})");
        }
    }
}

/// Writes a whole Fetch response (framing and record data) to the socket `socket` on the
/// zero-copy path. `socket` must be a descriptor this connection owns (a dup), so that it
/// names the same socket until every operation on it has finished. `send_zc_allowed` is
/// [`ShardZeroCopy::send_zc_allowed`] for the connection: when false, tail-cache data goes by
/// plain SENDMSG, still from the cache's own buffers.
pub async fn write_response(
    state: &ShardZeroCopy,
    ring: &Ring,
    socket: &Rc<OwnedFd>,
    parts: Vec<Part<Vec<ReadChunk>>>,
    send_zc_allowed: bool,
) -> io::Result<()> {
    let FetchPath::ZeroCopy { send_zc } = state.path else {
        return Err(io::Error::other("zero-copy write on a copying shard"));
    };
    let mut pieces = Vec::with_capacity(parts.len() * 2);
    for part in parts {
        match part {
            Part::Framing(bytes) => pieces.push(Piece::Bytes(bytes)),
            Part::Records { length, source } => {
                let total: u64 = source.iter().map(|chunk| chunk.len() as u64).sum();
                if total != u64::from(length) {
                    // Checked before anything is sent, so the stream is still intact.
                    return Err(io::Error::other(format!(
                        "record data is {total} bytes, framing says {length}"
                    )));
                }
                for chunk in source {
                    pieces.push(match chunk {
                        ReadChunk::Memory(bytes) => Piece::Bytes(bytes),
                        ReadChunk::File {
                            segment,
                            position,
                            length,
                        } => Piece::File {
                            segment: TrackedSegment::new(segment),
                            position,
                            length,
                        },
                    });
                }
            }
        }
    }
    let config = ChainConfig {
        send_zc_min_bytes: (send_zc && send_zc_allowed).then_some(state.send_zc_min_bytes),
        links_max: LINKS_PER_CHAIN_MAX,
    };
    chain::write_pieces(ring, &state.pool, socket, pieces, config).await
}

/// Whether the peer of `socket` runs on this host (a loopback address, or the socket's own
/// address). The kernel delivers such traffic to the receiving socket without a NIC and
/// copies every zero-copy page at that point ("deferred copy" for packets looped to a local
/// socket, see the kernel's msg_zerocopy documentation), so SENDMSG_ZC would add page pinning
/// and a notification completion to the same copy a plain send makes. Splice is unaffected:
/// page-cache pages are not user memory and are passed by reference.
fn peer_is_on_this_host(socket: &OwnedFd, peer: std::net::SocketAddr) -> bool {
    if peer.ip().is_loopback() {
        return true;
    }
    match socket2::SockRef::from(socket).local_addr() {
        Ok(local) => local
            .as_socket()
            .is_some_and(|local| local.ip() == peer.ip()),
        // Unknown: keep SENDMSG_ZC, which is correct either way.
        Err(_) => false,
    }
}

/// A private duplicate of a connection's socket descriptor (close-on-exec), held by every
/// operation that names it, so the number can't be reused for another connection while an
/// abandoned operation is still queued.
pub fn duplicate_socket(fd: RawFd) -> io::Result<Rc<OwnedFd>> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the caller has open; no memory passed.
    let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("duplicating the client socket: {error}"),
        ));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(Rc::new(unsafe { OwnedFd::from_raw_fd(duplicate) }))
}

#[cfg(test)]
mod tests;
