//! Tests of the zero-copy writer against a real ring and real loopback TCP sockets: bytes
//! arrive identical and in order through tiny pipes and short chains, and a peer that goes
//! away mid-response leaves no pipe, segment reference or write behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Mutex;

use bytes::Bytes;
use sluice_storage::Ring;

use super::chain::{write_pieces, ChainConfig, Piece, TrackedSegment};
use super::pipe_pool::PipePool;
use super::Counters;

/// The counters are process-wide: tests that compare them, or create tracked segments, run
/// one at a time.
pub(super) static COUNTERS_LOCK: Mutex<()> = Mutex::new(());

fn pseudo_random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn segment_file(contents: &[u8]) -> (tempfile::TempDir, Rc<std::fs::File>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("00000000000000000000.log");
    std::fs::write(&path, contents).expect("write segment");
    let file = std::fs::File::open(&path).expect("open segment");
    (dir, Rc::new(file))
}

/// A connected pair: the broker side as an owned descriptor, the peer side as a std stream.
fn socket_pair(nonblocking: bool) -> (Rc<OwnedFd>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(nonblocking).expect("nonblocking");
    (Rc::new(OwnedFd::from(server)), peer)
}

fn file_piece(file: &Rc<std::fs::File>, position: u64, length: u32) -> Piece {
    Piece::File {
        segment: TrackedSegment::from_file(file.clone()),
        position,
        length,
    }
}

fn mixed_response_arrives_identical(nonblocking: bool) {
    let _serial = COUNTERS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let before = Counters::now();
    let contents = pseudo_random_bytes(3 * 1024 * 1024 + 333, 7);
    let (_dir, file) = segment_file(&contents);
    let tail = Bytes::from(pseudo_random_bytes(100 * 1024, 9));
    let small = Bytes::from_static(b"small tail batch");
    let framing = Bytes::from_static(b"\x00\x00\x00\x10framing");

    let mut expected = Vec::new();
    expected.extend_from_slice(&framing);
    expected.extend_from_slice(&contents[100..100 + 2_500_000]);
    expected.extend_from_slice(&tail);
    expected.extend_from_slice(&contents[5..12]);
    expected.extend_from_slice(&small);
    expected.extend_from_slice(&framing);
    expected.extend_from_slice(&contents[4096..4096 + 70_000]);
    let pieces = vec![
        Piece::Bytes(framing.clone()),
        file_piece(&file, 100, 2_500_000),
        Piece::Bytes(tail),
        file_piece(&file, 5, 7),
        Piece::Bytes(small),
        Piece::Bytes(Bytes::new()),
        Piece::Bytes(framing),
        file_piece(&file, 4096, 70_000),
    ];

    let (socket, mut peer) = socket_pair(nonblocking);
    let expected_len = expected.len();
    let reader = std::thread::spawn(move || {
        let mut received = vec![0u8; expected_len];
        // Read slowly at first so the socket buffer fills and sends/splices come back short
        // (or EAGAIN on a non-blocking socket).
        let mut filled = 0;
        while filled < received.len() {
            let step =
                (received.len() - filled).min(if filled < 512 * 1024 { 4096 } else { 1 << 20 });
            let n = peer
                .read(&mut received[filled..filled + step])
                .expect("read");
            assert!(n > 0, "broker side closed early at {filled}");
            filled += n;
        }
        received
    });

    tokio_uring::start(async {
        let ring = Ring::new(64).expect("ring");
        // A 16 KiB pipe and 4-entry chains force many resumptions.
        let pool = PipePool::new(2, 16 * 1024);
        let config = ChainConfig {
            send_zc_min_bytes: Some(32 * 1024),
            links_max: 4,
        };
        write_pieces(&ring, &pool, &socket, pieces, config)
            .await
            .expect("write");
        // The chain's SEND_ZC notifications arrive only once the reader has taken those
        // bytes; until then the chain keeps the pipe, and give_back closes it rather than
        // pool a pipe an operation still holds. Either way, once every CQE is in, no pipe
        // stays open beyond the pool's idle one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ring.in_flight() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(ring.in_flight(), 0);
        assert!(pool.idle_count() <= 1, "at most the one pipe is pooled");
        assert_eq!(
            Counters::now().pipes_open(),
            before.pipes_open() + pool.idle_count() as u64,
            "the pipe is either back in the pool or closed"
        );
    });
    let received = reader.join().expect("reader");
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "bytes differ from what was sent");

    let after = Counters::now();
    assert_eq!(after.segment_refs_held(), before.segment_refs_held());
    assert_eq!(after.writes_in_flight(), before.writes_in_flight());
    assert!(after.spliced_bytes() - before.spliced_bytes() >= 2_500_000 + 7 + 70_000);
    assert!(after.send_zc_bytes() - before.send_zc_bytes() >= 100 * 1024);
    assert_eq!(
        Rc::strong_count(&file),
        1,
        "no segment reference outlives the write"
    );
}

#[test]
fn mixed_response_arrives_identical_on_a_blocking_socket() {
    mixed_response_arrives_identical(false);
}

#[test]
fn mixed_response_arrives_identical_on_a_non_blocking_socket() {
    mixed_response_arrives_identical(true);
}

#[test]
fn a_peer_that_disconnects_mid_response_leaks_nothing() {
    let _serial = COUNTERS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let before = Counters::now();
    let contents = pseudo_random_bytes(24 * 1024 * 1024, 3);
    let (_dir, file) = segment_file(&contents);
    let (socket, mut peer) = socket_pair(false);
    let reader = std::thread::spawn(move || {
        let mut first = vec![0u8; 64 * 1024];
        peer.read_exact(&mut first).expect("read the start");
        // Unread data in the receive queue turns the close into a reset.
        drop(peer);
        first
    });
    let pieces = vec![
        Piece::Bytes(Bytes::from_static(b"framing")),
        file_piece(&file, 0, contents.len() as u32),
    ];
    tokio_uring::start(async {
        let ring = Ring::new(64).expect("ring");
        let pool = PipePool::new(2, 1024 * 1024);
        let config = ChainConfig {
            send_zc_min_bytes: Some(64 * 1024),
            links_max: 32,
        };
        let error = write_pieces(&ring, &pool, &socket, pieces, config)
            .await
            .expect_err("the peer is gone");
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "unexpected error: {error}"
        );
        assert_eq!(pool.idle_count(), 0, "a pipe that errored is never reused");
        assert_eq!(ring.in_flight(), 0, "no operation is left in the kernel");
    });
    let first = reader.join().expect("reader");
    assert_eq!(&first[..7], b"framing");
    assert_eq!(&first[7..], &contents[..first.len() - 7]);
    let after = Counters::now();
    assert_eq!(after.segment_refs_held(), before.segment_refs_held());
    assert_eq!(after.writes_in_flight(), before.writes_in_flight());
    assert_eq!(
        Rc::strong_count(&file),
        1,
        "no segment reference outlives the write"
    );
}

#[test]
fn pipes_are_reused_across_responses() {
    let contents = pseudo_random_bytes(256 * 1024, 5);
    let (_dir, file) = segment_file(&contents);
    let (socket, mut peer) = socket_pair(false);
    let rounds = 5;
    let expected_len = contents.len() * rounds;
    let reader = std::thread::spawn(move || {
        let mut received = vec![0u8; expected_len];
        peer.read_exact(&mut received).expect("read");
        peer.write_all(b"done").expect("ack");
        received
    });
    tokio_uring::start(async {
        let ring = Ring::new(64).expect("ring");
        let pool = PipePool::new(2, 64 * 1024);
        let config = ChainConfig {
            send_zc_min_bytes: None,
            links_max: 8,
        };
        for _ in 0..rounds {
            let pieces = vec![file_piece(&file, 0, contents.len() as u32)];
            write_pieces(&ring, &pool, &socket, pieces, config)
                .await
                .expect("write");
            assert_eq!(pool.idle_count(), 1);
        }
    });
    let received = reader.join().expect("reader");
    for chunk in received.chunks(contents.len()) {
        assert!(chunk == contents.as_slice());
    }
}
