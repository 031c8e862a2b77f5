//! An in-process broker for the dispatcher fuzz target: one shard (storage ring, metadata
//! controller, group coordinator, 50 `__consumer_offsets` partitions) on a fresh temporary data
//! directory, inside one tokio-uring runtime that lives as long as the fuzz process. Request
//! frames go straight to `sluice::api::dispatch`, the function every connection calls, without
//! sockets.
//!
//! Waits are bounded so one input cannot stall the fuzzer: the fetch wait cap and the initial
//! rebalance delay are 0, session timeouts are capped at 1 s, and each request gets
//! [`REQUEST_WAIT`] before it is dropped as a closing connection would drop it; a stream stops
//! once its requests took [`STREAM_TIME_MAX`] together, so an input of many waiting frames stays
//! well inside libFuzzer's `-timeout` (scripts/fuzz.sh sets 10 s). State (topics,
//! groups, records) carries over between inputs, like a long-lived broker; the broker is shut
//! down and rebuilt on a new directory every [`REQUESTS_PER_BROKER`] requests or when inputs
//! created more than [`TOPICS_MAX`] topics, so disk and memory stay bounded over millions of
//! runs. Must never: listen on a port, or write outside its own temporary directory.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice::config::{BrokerConfig, Settings};
use sluice::metadata::controller::{Controller, NewTopic};
use sluice::metadata::log::MetadataLog;
use sluice::metadata::MetadataStore;
use sluice::security::{SecurityProtocol, Session};
use sluice::shard::{Shard, ShardSet};
use sluice_net::connection::Response;
use sluice_net::frame::next_frame;
use sluice_net::header::RequestHeader;

/// Longest a request may take before it is dropped (group joins legitimately wait for members).
pub const REQUEST_WAIT: Duration = Duration::from_millis(200);
/// Longest one input's stream is served: 16 KiB hold hundreds of frames, and at
/// [`REQUEST_WAIT`] each they would run into libFuzzer's timeout and be reported as hangs.
pub const STREAM_TIME_MAX: Duration = Duration::from_millis(1500);
/// Requests a broker serves before it is rebuilt on a fresh directory.
pub const REQUESTS_PER_BROKER: u64 = 20_000;
/// Topics the inputs may create (auto-creation, CreateTopics) before the broker is rebuilt.
pub const TOPICS_MAX: usize = 32;
/// The topic every broker starts with, named by the seeds in `corpus/dispatch/`.
pub const SEED_TOPIC: &str = "fuzz";
/// Partitions of [`SEED_TOPIC`].
pub const SEED_TOPIC_PARTITIONS: i32 = 3;
/// Largest request frame (`socket.request.max.bytes` for this broker).
const REQUEST_BYTES_MAX: usize = 2 << 20;

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response frame of this many bytes.
    Frame(usize),
    /// A response in parts (Fetch framing and record data) of this many bytes.
    Parts(usize),
    /// No response (Produce with acks=0).
    Nothing,
    /// The broker closes the connection.
    Close,
    /// The request did not finish within [`REQUEST_WAIT`].
    Waiting,
}

/// One in-process broker.
pub struct Broker {
    // Field order is drop order: the shard's tasks and rings go with the runtime, then the
    // directory is removed by `Drop`.
    shard: Rc<Shard>,
    _inboxes: Vec<tokio::sync::mpsc::Receiver<sluice::shard::Job>>,
    runtime: tokio_uring::Runtime,
    dir: PathBuf,
    requests: u64,
}

impl Broker {
    /// Starts a broker on a new directory under `$TMPDIR` (or /dev/shm when it exists: the
    /// fsyncs of acks=all produces then cost nothing).
    pub fn start() -> Broker {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "sluice-fuzz-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        remove_dead_dirs(&base);
        std::fs::create_dir_all(&dir).expect("create the fuzz broker's data directory");
        let config = Arc::new(config(&dir));
        let runtime = tokio_uring::Runtime::new(&tokio_uring::builder())
            .expect("io_uring runtime (the dispatcher target needs io_uring)");
        let (set, inboxes) = ShardSet::new(1, config.inbox_jobs_max);
        let shard = runtime.block_on(build_shard(config, set, &dir));
        Broker {
            shard,
            _inboxes: inboxes,
            runtime,
            dir,
            requests: 0,
        }
    }

    /// Whether the broker has served its share and should be rebuilt.
    pub fn worn_out(&self) -> bool {
        self.requests >= REQUESTS_PER_BROKER || self.shard.metadata.load().topics.len() > TOPICS_MAX
    }

    /// Feeds `data` as a connection's byte stream: frames are split as the connection splits
    /// them and dispatched in order until one is malformed, answered by a close, or the
    /// stream has taken [`STREAM_TIME_MAX`].
    pub fn serve_stream(&mut self, data: &[u8]) -> Vec<Outcome> {
        self.serve_stream_within(data, STREAM_TIME_MAX)
    }

    /// [`Broker::serve_stream`] with its own time budget: no further frame is dispatched once
    /// the frames so far took `time_max` (the frame running when it passes finishes).
    pub fn serve_stream_within(&mut self, data: &[u8], time_max: Duration) -> Vec<Outcome> {
        let started = Instant::now();
        let mut buf = BytesMut::from(data);
        let mut outcomes = Vec::new();
        while let Ok(Some(frame)) = next_frame(&mut buf, REQUEST_BYTES_MAX) {
            let outcome = self.serve_frame(frame);
            outcomes.push(outcome);
            if outcome == Outcome::Close || started.elapsed() >= time_max {
                break;
            }
        }
        outcomes
    }

    /// Dispatches one request frame (without its size prefix).
    pub fn serve_frame(&mut self, frame: Bytes) -> Outcome {
        self.requests += 1;
        let Ok((header, body)) = RequestHeader::parse(frame) else {
            return Outcome::Close;
        };
        let correlation_id = header.correlation_id;
        let shard = self.shard.clone();
        // A PLAINTEXT client from 127.0.0.1, as the TCP harness would have.
        let session = Session::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
            Rc::from("PLAINTEXT"),
            SecurityProtocol::Plaintext,
        );
        let dispatched = sluice::api::dispatch(shard, header, body, &session);
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(REQUEST_WAIT, dispatched).await });
        match response {
            Err(_) => Outcome::Waiting,
            Ok(Response::Close) => Outcome::Close,
            // Only a SASL refusal answers then closes; this harness's session is PLAINTEXT.
            Ok(Response::FrameThenClose(_)) => Outcome::Close,
            Ok(Response::None) => Outcome::Nothing,
            Ok(Response::Parts(parts)) => {
                let Some(sluice_net::fetch::Part::Framing(first)) = parts.first() else {
                    panic!("a response in parts starts with its framing");
                };
                assert!(
                    first.len() >= 8,
                    "the first part holds size and correlation id"
                );
                let size = i32::from_be_bytes([first[0], first[1], first[2], first[3]]);
                assert_eq!(
                    &first[4..8],
                    &correlation_id.to_be_bytes(),
                    "correlation id"
                );
                let total: usize = parts
                    .iter()
                    .map(|part| match part {
                        sluice_net::fetch::Part::Framing(bytes) => bytes.len(),
                        sluice_net::fetch::Part::Records { length, .. } => *length as usize,
                    })
                    .sum();
                assert_eq!(
                    size as usize,
                    total - 4,
                    "size prefix of a response in parts"
                );
                Outcome::Parts(total)
            }
            Ok(Response::Frame(bytes)) => {
                assert!(
                    bytes.len() >= 8,
                    "a response has a size and a correlation id"
                );
                let size = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                assert_eq!(size as usize, bytes.len() - 4, "response size prefix");
                assert_eq!(
                    &bytes[4..8],
                    &correlation_id.to_be_bytes(),
                    "correlation id"
                );
                Outcome::Frame(bytes.len())
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let shard = self.shard.clone();
        self.runtime.block_on(async move {
            shard.groups.shutdown().await;
            if let Err(error) = shard.storage.shutdown().await {
                eprintln!("fuzz broker: storage shutdown failed: {error}");
            }
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut settings = Settings::default();
    let dir = dir.to_string_lossy();
    let request_bytes_max = REQUEST_BYTES_MAX.to_string();
    for (key, value) in [
        ("log.dirs", dir.as_ref()),
        ("listeners", "127.0.0.1:0"),
        ("admin.listen", ""),
        ("num.shards", "1"),
        // Few partitions: a CreateTopics of tens of thousands would make every such input slow.
        ("max.broker.partitions", "500"),
        ("log.direct.io", "false"),
        ("log.segment.bytes", "1048576"),
        ("log.tail.cache.bytes", "4194304"),
        ("log.flush.batch.bytes", "1048576"),
        ("io.uring.entries", "64"),
        ("socket.request.max.bytes", request_bytes_max.as_str()),
        ("fetch.max.wait.ms.max", "0"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("group.min.session.timeout.ms", "1"),
        ("group.max.session.timeout.ms", "1000"),
    ] {
        settings.set(key, value).expect("fuzz broker setting");
    }
    BrokerConfig::from_settings(settings).expect("fuzz broker config")
}

/// Assembles the shard as `server::run_shard` does, minus the listener.
async fn build_shard(
    config: Arc<BrokerConfig>,
    set: Arc<ShardSet>,
    dir: &std::path::Path,
) -> Rc<Shard> {
    let (log, snapshot) = MetadataLog::open(dir).expect("metadata log");
    let store = Arc::new(MetadataStore::new(snapshot));
    let storage = sluice_storage::ShardStorage::open(sluice_storage::StorageConfig {
        data_dir: config.data_dir.clone(),
        direct_io: config.direct_io,
        group_commit_bytes_max: config.group_commit_bytes_max,
        tail_cache_bytes: config.tail_cache_bytes,
        ring_entries: config.ring_entries,
    })
    .expect("shard storage");
    storage.set_append_queue_bytes_max(config.append_queue_bytes_max);
    storage.set_syncing_commits_max(config.syncing_commits_max);
    storage.set_writing_commits_max(config.writing_commits_max);
    let _ = storage.set_dsync_writes(config.dsync_writes);
    storage.set_blocking_jobs_max(config.blocking_jobs_max);
    // `config()` set the group limits (rebalance delay 0, session timeouts 1..=1000 ms).
    let group_config = config.groups.clone();
    let offsets_log_config = group_config.offsets_log_config();
    let groups = sluice_group::GroupCoordinator::new(
        group_config,
        Rc::new(sluice::shard::MetadataTopics(store.clone())),
    );
    let shard = Rc::new(Shard::new(
        0,
        set,
        config,
        store,
        storage,
        Some(Controller::new(log)),
        groups,
    ));
    for partition in 0..sluice_group::OFFSETS_PARTITION_COUNT {
        let log = shard
            .storage
            .open_partition(
                sluice_group::OFFSETS_TOPIC,
                partition,
                offsets_log_config.clone(),
            )
            .expect("offsets partition");
        shard
            .groups
            .load_partition(partition, log)
            .await
            .expect("load an empty offsets partition");
    }
    let controller = shard
        .controller
        .as_ref()
        .expect("shard 0 has the controller");
    let created = controller
        .create_topics(
            &shard,
            vec![NewTopic {
                name: SEED_TOPIC.to_string(),
                partitions: SEED_TOPIC_PARTITIONS,
                replication_factor: 1,
                assignments: Vec::new(),
                configs: Default::default(),
            }],
            false,
        )
        .await;
    assert!(created.iter().all(Result::is_ok), "seed topic: {created:?}");
    shard
}

/// Removes the directories of fuzz processes that are gone (libFuzzer exits without running
/// thread-local destructors, so a process never removes its last directory itself).
fn remove_dead_dirs(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("sluice-fuzz-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
