//! The admin endpoint over real TCP on 127.0.0.1, fed by shard threads that each own a
//! `ShardMetrics` and answer snapshot requests over channels, the way the broker does.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_metrics::stats_cli::fetch_report;
use sluice_metrics::{AdminServer, Collect, Counter, MetricsSnapshot, ShardMetrics, Stage};

type SnapshotRequest = mpsc::Sender<MetricsSnapshot>;

/// Spawns `n` shard threads. Shard `i` records AppendFsync values `i*100+1 ..= i*100+100` ns
/// and 1,000 bytes in, then serves snapshot requests until its channel closes.
fn spawn_shards(n: usize) -> Vec<mpsc::Sender<SnapshotRequest>> {
    (0..n)
        .map(|shard| {
            let (tx, rx) = mpsc::channel::<SnapshotRequest>();
            std::thread::spawn(move || {
                let metrics = ShardMetrics::new(shard);
                for v in 1..=100u64 {
                    metrics.record_stage_ns(Stage::AppendFsync, shard as u64 * 100 + v);
                }
                metrics.record_request_ns(0, 1_000 * (shard as u64 + 1));
                metrics.count(Counter::BytesIn, 1_000);
                for reply in rx {
                    let _ = reply.send(metrics.snapshot());
                }
            });
            tx
        })
        .collect()
}

fn collector(shards: Vec<mpsc::Sender<SnapshotRequest>>) -> Collect {
    let shards = Mutex::new(shards);
    Arc::new(move || {
        let shards = shards
            .lock()
            .map_err(|_| "shard list poisoned".to_string())?;
        let mut merged = MetricsSnapshot::empty();
        for (i, shard) in shards.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            shard.send(tx).map_err(|_| format!("shard {i} is gone"))?;
            let snap = rx
                .recv_timeout(Duration::from_secs(2))
                .map_err(|e| format!("shard {i} did not answer: {e}"))?;
            merged.merge(&snap);
        }
        Ok(merged)
    })
}

fn start() -> AdminServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    AdminServer::start(addr, collector(spawn_shards(2))).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends raw bytes, half-closes, returns (status code, body).
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // The server may answer and close before we finish writing garbage; that is fine.
    let _ = s.write_all(request);
    let _ = s.shutdown(Shutdown::Write);
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
}

#[test]
fn metrics_merges_every_shard() {
    let server = start();
    let (status, body) = get(server.local_addr(), "/metrics");
    assert_eq!(status, 200, "{body}");
    // Shards recorded 1..=200 ns between them: count 200, max 200 ns, sum 20,100 ns.
    assert!(
        body.contains("sluice_stage_latency_seconds_count{stage=\"append_fsync\"} 200\n"),
        "{body}"
    );
    assert!(
        body.contains(
            "sluice_stage_latency_seconds{stage=\"append_fsync\",quantile=\"1\"} 0.0000002\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("sluice_stage_latency_seconds_sum{stage=\"append_fsync\"} 0.0000201\n"),
        "{body}"
    );
    assert!(body.contains("sluice_bytes_in_total 2000\n"), "{body}");
    assert!(
        body.contains("sluice_requests_total{api=\"Produce\"} 2\n"),
        "{body}"
    );
    assert!(body.contains("sluice_shards 2\n"), "{body}");
}

#[test]
fn stats_is_json_and_stats_cli_reads_it() {
    let server = start();
    let (status, body) = get(server.local_addr(), "/stats");
    assert_eq!(status, 200);
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["shards"], 2);
    assert_eq!(json["stages_ns"]["append_fsync"]["p50"], 100);
    assert_eq!(json["stages_ns"]["append_fsync"]["p99"], 198);

    let report = fetch_report(&server.local_addr().to_string())
        .unwrap_or_else(|e| panic!("fetch_report: {e}"));
    assert_eq!(report.shards, 2);
    assert_eq!(report.stages_ns["append_fsync"].count, 200);
    assert_eq!(report.requests_ns["Produce"].max, 2_000);
    assert_eq!(report.counters["bytes_in"], 2_000);
}

#[test]
fn healthz_and_not_found() {
    let server = start();
    assert_eq!(
        get(server.local_addr(), "/healthz"),
        (200, "ok\n".to_string())
    );
    assert_eq!(get(server.local_addr(), "/admin/../etc/passwd").0, 404);
    assert_eq!(
        exchange(server.local_addr(), b"DELETE /metrics HTTP/1.1\r\n\r\n").0,
        405
    );
}

#[test]
fn survives_garbage_and_answers_afterwards() {
    let server = start();
    let addr = server.local_addr();

    // Binary noise with a terminator, a header flood, and a request line with no HTTP version.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut noisy = noise.clone();
    noisy.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(addr, &noisy).0, 400);
    assert_eq!(exchange(addr, &vec![b'A'; 64 * 1024]).0, 431);
    assert_eq!(exchange(addr, b"GET /metrics\r\n\r\n").0, 400);
    assert_eq!(exchange(addr, b"GET /metrics HTTP/9.9\r\n\r\n").0, 505);
    // A peer that sends half a request and disconnects gets nothing and costs nothing.
    assert_eq!(exchange(addr, b"GET /met").0, 400);
    assert_eq!(exchange(addr, b"").0, 0);

    // A silent peer holding its connection open does not block a scrape.
    let idle = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(addr, "/healthz").0, 200);
    drop(idle);

    // More simultaneous peers than the limit: the excess get 503, the server lives on.
    let hold: Vec<TcpStream> = (0..sluice_metrics::CONNECTIONS_MAX + 4)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let mut last = hold.last().unwrap_or_else(|| panic!("no connection held"));
    // Generous: under a loaded test run the server may take seconds to reach the excess peer.
    last.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let mut refused = Vec::new();
    let _ = last.read_to_end(&mut refused);
    assert!(
        refused.starts_with(b"HTTP/1.1 503"),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );
    drop(hold);
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("sluice_shards 2"));
}

#[test]
fn collector_failure_is_503_and_shutdown_frees_the_port() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let failing: Collect = Arc::new(|| Err("shard 1 did not answer within 2s".to_string()));
    let server = AdminServer::start(addr, failing).unwrap_or_else(|e| panic!("{e}"));
    let bound = server.local_addr();
    let (status, body) = get(bound, "/stats");
    assert_eq!(status, 503);
    assert!(body.contains("shard 1 did not answer"), "{body}");
    let cli_err = fetch_report(&bound.to_string())
        .err()
        .map(|e| e.to_string());
    assert!(cli_err.is_some_and(|e| e.contains("503")));

    server.shutdown();
    assert!(TcpStream::connect_timeout(&bound, Duration::from_millis(500)).is_err());
    let again = AdminServer::start(bound, Arc::new(|| Ok(MetricsSnapshot::empty())));
    assert!(
        again.is_ok(),
        "port is free again after shutdown: {again:?}"
    );
}

#[test]
fn bind_error_names_the_address() {
    let first = start();
    let taken = first.local_addr();
    let err = AdminServer::start(taken, Arc::new(|| Ok(MetricsSnapshot::empty())))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&taken.to_string()), "{err}");
}
