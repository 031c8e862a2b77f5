//! The produce engine of `sluice bench` (also driven by `e2e`). Each connection task owns its
//! share of the load: it creates records when the schedule says they are due, appends them to
//! per-partition batches (values are slices of one shared payload buffer, keys pre-rendered, so
//! creating a record allocates nothing), drains batches into Produce requests the way the Java
//! producer does (once any batch for a broker is full or lingered, take every partition with
//! data up to the request cap) and keeps up to `in_flight` requests outstanding.
//!
//! Latency of a record = acknowledgement time minus its latency origin (intended send time in
//! open loop). Records the schedule made due while the window was full are created late but keep
//! their intended time, so a broker stall shows in the tail. The engine must never count an
//! unacknowledged record, and aborts on the first broker error.
//!
//! Bounds: a task holds at most its even share of `--buffer-memory` in value bytes created and
//! not yet acknowledged (Kafka's `buffer.memory`; past it no record is created), so memory and
//! queueing stay bounded at any number of connections. A run with a duration ends at duration
//! plus one request timeout whatever is still unacknowledged (every wait, a socket write too,
//! ends there); the records left are reported, and the run fails.
//!
//! Transactional mode (`--transactional-id`): each task is a transactional producer of its own
//! id (protocol v1, `crate::transaction`). A transaction is the task's next
//! `--transaction-records` records: partitions join it (AddPartitionsToTxn) before their first
//! batch is drained, batches carry the producer id, epoch, per-partition sequence numbers and
//! the transactional attribute, and once every batch is acknowledged EndTxn commits it; only
//! then are the next transaction's records created. The run's last transaction may be shorter
//! (it is committed when the run ends). EndTxn and AddPartitionsToTxn round trips have their
//! own histograms; a record's latency stays its produce acknowledgement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::records::Compression;
use serde_json::json;

use super::batch::{BatchBuilder, ProducerFields};
use super::keys::{KeyGenerator, Rng};
use super::schedule::Schedule;
use super::stats::{new_latency_histogram, CpuTimes};
use super::timer::PreciseTimer;
use super::{spawn_progress, Phase, ProduceBenchArgs, Progress, Report};
use crate::client::{Client, TopicInfo};
use crate::conn::Connection;
use crate::error::{ClientError, Result};
use crate::produce_frame::ProduceFields;
use crate::producer::{produce_outcomes, Acks};
use crate::records::{now_ms, parse_compression, partition_for_key};
use crate::transaction::TxnSession;

/// A record's bytes beside its value, about (length, attributes, deltas, key length, header
/// count varints and a short key): sizes a batch's buffer up front.
const RECORD_OVERHEAD_BYTES: usize = 24;

/// Bytes of the e2e stamp at the start of a value: origin ns since bench start.
pub const STAMP_BYTES: usize = 8;

/// What goes in record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Slices of a shared buffer of half-compressible bytes.
    Shared,
    /// The record's latency origin (u64 ns since bench start, big endian), then filler.
    Stamped,
}

/// Fully resolved producer settings.
#[derive(Debug, Clone)]
pub struct ProduceConfig {
    /// Topic.
    pub topic: String,
    /// Value size.
    pub record_size: usize,
    /// Key distribution.
    pub keys: super::keys::KeyDistribution,
    /// Total records, if limited.
    pub records: Option<u64>,
    /// Run length, if limited: the measured part, after `warmup`.
    pub duration: Option<Duration>,
    /// Uncounted time before the measured part (zero: none).
    pub warmup: Duration,
    /// Acks.
    pub acks: Acks,
    /// Target batch size.
    pub batch_bytes: usize,
    /// Linger.
    pub linger: Duration,
    /// Connection tasks.
    pub connections: usize,
    /// Requests in flight per task.
    pub in_flight: usize,
    /// Request cap.
    pub request_bytes_max: usize,
    /// Value bytes created and not yet acknowledged, all tasks together (`buffer.memory`).
    pub buffer_memory: usize,
    /// Codec.
    pub compression: Compression,
    /// Total target rate.
    pub rate: Option<f64>,
    /// Measure from actual creation even with a rate.
    pub closed_loop: bool,
    /// Seed.
    pub seed: u64,
    /// Value contents.
    pub payload: Payload,
    /// Request timeout for the broker.
    pub timeout_ms: i32,
    /// Transactional mode, when asked for.
    pub transaction: Option<TransactionConfig>,
}

/// What a transactional run needs.
#[derive(Debug, Clone)]
pub struct TransactionConfig {
    /// Task n's transactional id is `<prefix>-<n>`.
    pub id_prefix: String,
    /// Records per transaction, per task.
    pub records_per_txn: u64,
    /// `transaction.timeout.ms` sent in InitProducerId.
    pub timeout_ms: i32,
}

impl TransactionConfig {
    /// The transactional id of producer task `task`.
    pub fn id_of(&self, task: usize) -> String {
        format!("{}-{task}", self.id_prefix)
    }
}

impl ProduceConfig {
    /// Resolves command-line flags.
    pub fn from_args(args: &ProduceBenchArgs, payload: Payload) -> anyhow::Result<ProduceConfig> {
        if args.record_size < STAMP_BYTES && payload == Payload::Stamped {
            anyhow::bail!("--record-size must be at least {STAMP_BYTES} for e2e");
        }
        if args.connections == 0 || args.in_flight == 0 {
            anyhow::bail!("--connections and --in-flight must be at least 1");
        }
        if let Some(rate) = args.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                anyhow::bail!("--rate must be a positive number of records per second");
            }
        }
        if args.warmup.is_some() && args.duration.is_none() {
            anyhow::bail!("--warmup needs --duration (the measured part that follows it)");
        }
        let records = match (args.records, args.duration) {
            (None, None) => Some(1_000_000),
            (r, _) => r,
        };
        let transaction = match &args.transactional_id {
            None => None,
            Some(prefix) => {
                if args.acks != Acks::All {
                    anyhow::bail!(
                        "--transactional-id needs --acks all (as every transactional producer)"
                    );
                }
                if prefix.is_empty() {
                    anyhow::bail!("--transactional-id must not be empty");
                }
                if args.transaction_records == 0 {
                    anyhow::bail!("--transaction-records must be at least 1");
                }
                if args.transaction_timeout_ms <= 0 {
                    anyhow::bail!("--transaction-timeout-ms must be positive");
                }
                Some(TransactionConfig {
                    id_prefix: prefix.clone(),
                    records_per_txn: args.transaction_records,
                    timeout_ms: args.transaction_timeout_ms,
                })
            }
        };
        Ok(ProduceConfig {
            topic: args.common.topic.clone(),
            record_size: args.record_size,
            keys: args.keys.clone(),
            records,
            duration: args.duration,
            warmup: args.warmup.unwrap_or(Duration::ZERO),
            acks: args.acks,
            batch_bytes: args.batch_bytes.max(1),
            linger: Duration::from_millis(args.linger_ms),
            connections: args.connections,
            in_flight: args.in_flight,
            request_bytes_max: args.request_bytes_max.max(1024),
            buffer_memory: args.buffer_memory,
            compression: parse_compression(&args.compression)?,
            rate: args.rate,
            closed_loop: args.closed_loop,
            seed: args.seed,
            payload,
            timeout_ms: i32::try_from(args.common.conn.request_timeout_ms).unwrap_or(30_000),
            transaction,
        })
    }

    /// The configuration echoed in reports.
    pub fn to_json(&self, partitions: usize) -> serde_json::Value {
        json!({
            "topic": self.topic, "partitions": partitions, "record_size": self.record_size,
            "keys": format!("{:?}", self.keys), "records": self.records,
            "duration_s": self.duration.map(|d| d.as_secs_f64()), "acks": self.acks.wire(),
            "warmup_s": self.warmup.as_secs_f64(),
            "batch_bytes": self.batch_bytes, "linger_ms": self.linger.as_millis() as u64,
            "connections": self.connections, "in_flight": self.in_flight,
            "request_bytes_max": self.request_bytes_max,
            "buffer_memory": self.buffer_memory,
            "buffer_memory_per_connection": self.buffer_share_per_task(),
            "compression": format!("{:?}", self.compression).to_lowercase(),
            "rate": self.rate, "open_loop": self.schedule_for_task().is_open(),
            "transactional_id_prefix": self.transaction.as_ref().map(|t| t.id_prefix.clone()),
            "transaction_records": self.transaction.as_ref().map(|t| t.records_per_txn),
            "transaction_timeout_ms": self.transaction.as_ref().map(|t| t.timeout_ms),
        })
    }

    /// Each task's share of `buffer_memory`: value bytes it may hold created and not yet
    /// acknowledged (at least one record, or it could never send).
    pub fn buffer_share_per_task(&self) -> usize {
        (self.buffer_memory / self.connections.max(1)).max(self.record_size.max(1))
    }

    /// How long after its start a run with a duration ends whatever is still unacknowledged:
    /// the warm-up and the duration plus one request timeout (the last requests get their
    /// full timeout, and a broker that stops answering cannot hold the run).
    pub fn deadline(&self) -> Option<Duration> {
        let timeout = Duration::from_millis(u64::try_from(self.timeout_ms).unwrap_or(30_000));
        self.generation_time().map(|d| d + timeout)
    }

    /// How long after its start a run with a duration stops creating records.
    pub fn generation_time(&self) -> Option<Duration> {
        self.duration.map(|d| self.warmup + d)
    }

    /// Origin (ns since the run's start) from which records count: the warm-up's end.
    pub fn counted_from_ns(&self) -> u64 {
        u64::try_from(self.warmup.as_nanos()).unwrap_or(u64::MAX)
    }

    fn schedule_for_task(&self) -> Schedule {
        match self.rate {
            Some(rate) if !self.closed_loop => Schedule::open(rate / self.connections as f64),
            Some(rate) => Schedule::Closed {
                interval_ns: Some(1e9 * self.connections as f64 / rate),
            },
            None => Schedule::Closed { interval_ns: None },
        }
    }
}

/// Creates the topic if it does not exist and returns its metadata.
pub async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<TopicInfo> {
    match client.topic(topic).await {
        Ok(info) => return Ok(info),
        Err(ClientError::UnknownTopic(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match client.create_topic(topic, partitions, -1, &[]).await {
        Ok(()) => {}
        Err(e) if e.kafka_code().map(|c| c.0) == Some(36) => {}
        Err(e) => return Err(anyhow::anyhow!("creating topic '{topic}': {e}")),
    }
    // Metadata may lag the create briefly.
    for _ in 0..50 {
        match client.topic(topic).await {
            Ok(info)
                if info.partitions.len() as i32 >= partitions
                    && info.partitions.iter().all(|p| p.leader >= 0) =>
            {
                return Ok(info)
            }
            Ok(_) | Err(ClientError::UnknownTopic(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(anyhow::anyhow!(
        "topic '{topic}' was created but its partitions have no leader after 5 s"
    ))
}

/// What all producer tasks achieved.
pub struct ProduceTotals {
    /// Records acknowledged.
    pub records: u64,
    /// Value bytes acknowledged.
    pub bytes: u64,
    /// Latency histogram (us).
    pub histogram: hdrhistogram::Histogram<u64>,
    /// From first send to last acknowledgement (or to the run's deadline).
    pub elapsed: Duration,
    /// Records created but not acknowledged when the run's deadline passed (0 when every
    /// record was acknowledged in time).
    pub unacknowledged: u64,
    /// Records acknowledged in the warm-up (in no other figure).
    pub warmup_records: u64,
    /// EndTxn round trips (us); empty unless transactional.
    pub end_txn: hdrhistogram::Histogram<u64>,
    /// AddPartitionsToTxn round trips (us); empty unless transactional.
    pub add_partitions: hdrhistogram::Histogram<u64>,
}

impl ProduceTotals {
    /// Value bytes acknowledged in the warm-up: what a broker's CPU per GB must count beside
    /// the reported bytes, since it worked for them too.
    pub fn warmup_bytes(&self, config: &ProduceConfig) -> u64 {
        self.warmup_records * config.record_size as u64
    }
}

/// One transactional session per producer task (InitProducerId for each task's id, all at
/// once), or one `None` per task when the run is not transactional. Called before the run's
/// clock starts: a producer initialises once in its life, not per record.
pub async fn init_sessions(
    client: &Arc<Client>,
    config: &ProduceConfig,
) -> Result<Vec<Option<TxnSession>>> {
    let Some(txn) = &config.transaction else {
        return Ok((0..config.connections).map(|_| None).collect());
    };
    let ids: Vec<String> = (0..config.connections)
        .map(|task| txn.id_of(task))
        .collect();
    let inits = ids
        .iter()
        .map(|id| TxnSession::init(Arc::clone(client), id, txn.timeout_ms));
    futures::future::join_all(inits)
        .await
        .into_iter()
        .map(|session| session.map(Some))
        .collect()
}

/// Runs `connections` producer tasks to completion; task n uses `sessions[n]` (from
/// [`init_sessions`]).
pub async fn run_producers(
    client: Arc<Client>,
    info: Arc<TopicInfo>,
    config: Arc<ProduceConfig>,
    progress: Arc<Progress>,
    start: Instant,
    sessions: Vec<Option<TxnSession>>,
) -> Result<ProduceTotals> {
    if sessions.len() != config.connections {
        return Err(ClientError::Invalid(format!(
            "{} transactional sessions for {} producer tasks",
            sessions.len(),
            config.connections
        )));
    }
    let mut handles = Vec::new();
    for (task, session) in sessions.into_iter().enumerate() {
        let records = config.records.map(|total| {
            let share = total / config.connections as u64;
            share + u64::from((task as u64) < total % config.connections as u64)
        });
        let worker = Worker::new(
            Arc::clone(&client),
            Arc::clone(&info),
            Arc::clone(&config),
            Arc::clone(&progress),
            task,
            records,
            start,
            session,
        )?;
        handles.push(tokio::spawn(worker.run()));
    }
    let mut histogram = new_latency_histogram();
    let mut end_txn = new_latency_histogram();
    let mut add_partitions = new_latency_histogram();
    let (mut records, mut bytes, mut unacknowledged, mut warmup_records) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(done)) => {
                records += done.records;
                bytes += done.bytes;
                unacknowledged += done.unacknowledged;
                warmup_records += done.warmup_records;
                let _ = histogram.add(&done.histogram);
                if let Some(txn) = &done.txn {
                    let _ = end_txn.add(&txn.end_us);
                    let _ = add_partitions.add(&txn.add_us);
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error
                    .get_or_insert(ClientError::Invalid(format!("producer task failed: {e}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(ProduceTotals {
        records,
        bytes,
        histogram,
        // The measured part only: from the warm-up's end.
        elapsed: start.elapsed().saturating_sub(config.warmup),
        unacknowledged,
        warmup_records,
        end_txn,
        add_partitions,
    })
}

/// Records waiting for one partition's next batches.
#[derive(Default)]
struct Accumulator {
    /// Batches being filled, oldest first, each of at most `records_per_batch` records and
    /// drained whole from the front, so a record's offset delta is final when it is created.
    batches: std::collections::VecDeque<BatchBuilder>,
    /// Drained builders, kept for reuse (a compressed batch's records buffer stays with its
    /// builder; an uncompressed batch leaves with its buffer).
    spare: Vec<BatchBuilder>,
    // A queue: origins are drained from the front while the generator appends at the back.
    origins_ns: std::collections::VecDeque<u64>,
    value_bytes: usize,
    opened_ns: u64,
}

impl Accumulator {
    /// No builder is queued empty (one is added just before its first record and leaves
    /// whole), so no builders means no records.
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// Encoded batches for one request, and what each will credit.
type Drained = (Vec<(i32, Bytes)>, Vec<SentBatch>);

/// A batch on the wire: which partition, its bytes (kept for a retry), and what to credit
/// when it is acknowledged.
struct SentBatch {
    partition: i32,
    batch: Bytes,
    origins_ns: Vec<u64>,
    value_bytes: usize,
    /// When this batch was first refused with a retriable error (or lost with its connection).
    refused_at_ns: Option<u64>,
}

/// A batch refused with a retriable error (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE,
/// NOT_ENOUGH_REPLICAS, a broken connection...) is sent again after this pause and a metadata
/// refresh, as Kafka's producers do (`retry.backoff.ms`), for at most `RETRY_WINDOW_NS` after
/// its first refusal (Kafka's `delivery.timeout.ms` in spirit): 30 s, longer than a leader
/// failover. A window, not a count: a count of 300 retries stretched to minutes when each
/// round's metadata refresh was slow (10,000 partitions against a Kafka still loading them).
/// Latency still counts from the record's first due time, so a failover shows in the tail.
const RETRY_BACKOFF_NS: u64 = 100_000_000;
const RETRY_WINDOW_NS: u64 = 30_000_000_000;

type InFlight = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Result<Vec<(i32, std::result::Result<i64, ClientError>)>>,
                    Vec<SentBatch>,
                ),
            > + Send,
    >,
>;

struct Worker {
    client: Arc<Client>,
    info: Arc<TopicInfo>,
    config: Arc<ProduceConfig>,
    progress: Arc<Progress>,
    schedule: Schedule,
    start: Instant,
    limit: Option<u64>,
    keys: KeyGenerator,
    rng: Rng,
    payload: Bytes,
    accs: Vec<Accumulator>,
    /// Records per batch: `batch_bytes / record_size`, at least one.
    records_per_batch: usize,
    sticky: usize,
    generated: u64,
    /// Value bytes created and not yet drained into a request.
    pending_value_bytes: usize,
    /// Value bytes drained into requests (or waiting for a retry) and not yet acknowledged.
    in_flight_value_bytes: usize,
    /// This task's share of `buffer.memory`: pending + in-flight value bytes stay within it.
    buffer_share: usize,
    /// When the run ends whatever is unacknowledged (ns since start; runs with a duration).
    deadline_ns: Option<u64>,
    encode_buf: BytesMut,
    /// Buffers of acknowledged batches, for the next batches to be written into
    /// ([`BatchBuilder::reuse_buffer`]), at most `batch_pool_max`.
    batch_pool: Vec<BytesMut>,
    /// Enough buffers for this task's share of `buffer.memory` in full batches.
    batch_pool_max: usize,
    conns: HashMap<i32, Arc<Connection>>,
    histogram: hdrhistogram::Histogram<u64>,
    records_acked: u64,
    /// Records acknowledged in the warm-up (not in `records_acked`).
    records_uncounted: u64,
    bytes_acked: u64,
    /// Reused buffer of one response's latencies.
    latencies_us: Vec<u64>,
    /// Batches to send again once `retry_at_ns` has passed (after a metadata refresh).
    retry: Vec<SentBatch>,
    retry_at_ns: u64,
    /// Transactional mode's state.
    txn: Option<TxnTask>,
    /// Paces the schedule and the linger to a tenth of a millisecond (tokio's own timers
    /// tick in whole milliseconds).
    timer: Arc<PreciseTimer>,
}

/// `future`'s output, or None when `deadline` passed first (no deadline: always its output).
async fn until<T>(
    deadline: Option<tokio::time::Instant>,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        None => Some(future.await),
        Some(at) => tokio::time::timeout_at(at, future).await.ok(),
    }
}

/// The pacing timer failed (timerfd refused: the bench cannot keep its schedule).
fn timer_error(error: std::io::Error) -> ClientError {
    ClientError::Invalid(format!("bench pacing timer (timerfd): {error}"))
}

struct WorkerDone {
    records: u64,
    bytes: u64,
    /// Records created and not acknowledged by the deadline.
    unacknowledged: u64,
    /// Records acknowledged in the warm-up.
    warmup_records: u64,
    histogram: hdrhistogram::Histogram<u64>,
    txn: Option<TxnTimes>,
}

/// A transactional task: its session, its open transaction and the sequence numbers its
/// batches carry.
struct TxnTask {
    session: TxnSession,
    records_per_txn: u64,
    /// Records created for the open transaction (at most `records_per_txn`).
    generated_in_txn: u64,
    /// Partitions in the open transaction (AddPartitionsToTxn answered).
    partitions: BTreeSet<i32>,
    /// Next base sequence per partition. Protocol v1 keeps the epoch across transactions,
    /// so sequences run on from one transaction to the next.
    sequences: HashMap<i32, i32>,
    /// Value bytes created into the sticky partition since it became sticky: a transaction's
    /// flush empties its batches, so the sticky partition moves on after `--batch-bytes`
    /// produced to it (Kafka's sticky partitioner, KIP-794), not when its pending batch fills.
    sticky_bytes: usize,
    times: TxnTimes,
}

/// The coordinator round trips a transactional task timed (us).
struct TxnTimes {
    end_us: hdrhistogram::Histogram<u64>,
    add_us: hdrhistogram::Histogram<u64>,
}

impl TxnTask {
    fn new(session: TxnSession, records_per_txn: u64) -> TxnTask {
        TxnTask {
            session,
            records_per_txn,
            generated_in_txn: 0,
            partitions: BTreeSet::new(),
            sequences: HashMap::new(),
            sticky_bytes: 0,
            times: TxnTimes {
                end_us: new_latency_histogram(),
                add_us: new_latency_histogram(),
            },
        }
    }

    /// Whether the open transaction has all its records.
    fn full(&self) -> bool {
        self.generated_in_txn >= self.records_per_txn
    }

    /// The base sequence of the next `count` records of `partition`, advancing it. A
    /// sequence past i32::MAX would wrap (Kafka wraps to 0); no bench run sends 2^31 records
    /// to one partition, so that is refused rather than implemented.
    fn take_sequence(&mut self, partition: i32, count: usize) -> Result<i32> {
        let next = self.sequences.entry(partition).or_insert(0);
        let base = *next;
        *next = i32::try_from(count)
            .ok()
            .and_then(|count| base.checked_add(count))
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "partition {partition}: sequence numbers past {} are not supported",
                    i32::MAX
                ))
            })?;
        Ok(base)
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        client: Arc<Client>,
        info: Arc<TopicInfo>,
        config: Arc<ProduceConfig>,
        progress: Arc<Progress>,
        task: usize,
        limit: Option<u64>,
        start: Instant,
        session: Option<TxnSession>,
    ) -> Result<Worker> {
        let txn =
            match (session, &config.transaction) {
                (Some(session), Some(txn)) => Some(TxnTask::new(session, txn.records_per_txn)),
                (None, None) => None,
                _ => return Err(ClientError::Invalid(
                    "a transactional session without a transactional configuration, or the reverse"
                        .into(),
                )),
            };
        let batch_pool_max = (config.buffer_share_per_task() / config.batch_bytes).max(1);
        let seed = config
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(task as u64 + 1);
        let mut rng = Rng::new(seed);
        // Half-compressible filler: random symbols from a 16-letter alphabet.
        let payload: Bytes = (0..config.record_size + 4096)
            .map(|_| b"abcdefghijklmnop"[(rng.next_u64() % 16) as usize])
            .collect::<Vec<u8>>()
            .into();
        let partitions = info.partitions.len();
        Ok(Worker {
            // A batch counts its records in an i32.
            records_per_batch: (config.batch_bytes / config.record_size.max(1))
                .clamp(1, i32::MAX as usize),
            buffer_share: config.buffer_share_per_task(),
            deadline_ns: config.deadline().map(|d| d.as_nanos() as u64),
            keys: KeyGenerator::new(config.keys.clone(), seed)?,
            schedule: config.schedule_for_task(),
            client,
            config,
            progress,
            start,
            limit,
            rng,
            payload,
            accs: (0..partitions).map(|_| Accumulator::default()).collect(),
            sticky: task % partitions.max(1),
            generated: 0,
            pending_value_bytes: 0,
            in_flight_value_bytes: 0,
            encode_buf: BytesMut::new(),
            batch_pool: Vec::new(),
            batch_pool_max,
            conns: HashMap::new(),
            histogram: new_latency_histogram(),
            timer: Arc::new(PreciseTimer::new().map_err(timer_error)?),
            records_acked: 0,
            records_uncounted: 0,
            bytes_acked: 0,
            latencies_us: Vec::new(),
            retry: Vec::new(),
            retry_at_ns: 0,
            txn,
            info,
        })
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Whether the run has created all its records (its count, or its time, is up).
    fn generation_over(&self, now_ns: u64) -> bool {
        self.limit.is_some_and(|l| self.generated >= l)
            || self
                .config
                .generation_time()
                .is_some_and(|d| now_ns >= d.as_nanos() as u64)
    }

    /// Whether no record may be created now: the run is over, or the open transaction has
    /// all its records (the next one starts once this one is committed).
    fn generation_paused(&self, now_ns: u64) -> bool {
        self.generation_over(now_ns) || self.txn.as_ref().is_some_and(TxnTask::full)
    }

    /// Creates due records (open loop) or enough to fill a request (closed loop).
    fn generate(&mut self, now_ns: u64, window_open: bool) {
        let partitions = self.accs.len();
        if partitions == 0 {
            return;
        }
        let due = self.schedule.due_count(now_ns);
        let timestamp_ms = now_ms();
        let mut made_for_request = 0usize;
        // Past the task's share of buffer.memory generation pauses until acknowledgements
        // free room (due records keep their intended time, so the wait counts as latency).
        while self.generated < due
            && !self.generation_paused(now_ns)
            && self.unacknowledged_value_bytes() + self.config.record_size <= self.buffer_share
        {
            if !self.schedule.is_open() {
                // Closed loop creates records only when they can be sent soon.
                if !window_open || made_for_request >= self.config.request_bytes_max {
                    break;
                }
            }
            let index = self.generated;
            let origin_ns = self.schedule.latency_origin_ns(index, now_ns);
            let key = self.keys.next_key();
            let slot = match &key {
                Some(k) => partition_for_key(k, partitions as i32) as usize,
                None => {
                    let filled = match &mut self.txn {
                        Some(txn) if txn.sticky_bytes >= self.config.batch_bytes => {
                            txn.sticky_bytes = 0;
                            true
                        }
                        Some(_) => false,
                        None => self.accs[self.sticky].value_bytes >= self.config.batch_bytes,
                    };
                    if filled {
                        self.sticky = (self.sticky + 1) % partitions;
                    }
                    self.sticky
                }
            };
            if let Some(txn) = &mut self.txn {
                txn.generated_in_txn += 1;
                if slot == self.sticky {
                    txn.sticky_bytes += self.config.record_size;
                }
            }
            // The value: a random window of the shared payload, or (e2e) the latency origin
            // followed by the payload; copied once, into its batch.
            let size = self.config.record_size;
            let stamp = origin_ns.to_be_bytes();
            let (head, tail): (&[u8], &[u8]) = match self.config.payload {
                Payload::Shared => {
                    let offset = (self.rng.next_u64() % 4096) as usize;
                    (&[], &self.payload[offset..offset + size])
                }
                Payload::Stamped => (&stamp, &self.payload[..size - STAMP_BYTES]),
            };
            let acc = &mut self.accs[slot];
            if acc.is_empty() {
                acc.opened_ns = now_ns;
            }
            if acc
                .batches
                .back()
                .is_none_or(|b| b.len() >= self.records_per_batch)
            {
                let expected_bytes = self.records_per_batch * (size + RECORD_OVERHEAD_BYTES);
                let mut fresh = acc
                    .spare
                    .pop()
                    .unwrap_or_else(|| BatchBuilder::with_expected_bytes(expected_bytes));
                if fresh.needs_buffer() {
                    if let Some(buf) = self.batch_pool.pop() {
                        fresh.reuse_buffer(buf);
                    }
                }
                acc.batches.push_back(fresh);
            }
            if let Some(batch) = acc.batches.back_mut() {
                batch.push(timestamp_ms, key.as_deref(), head, tail);
            }
            acc.origins_ns.push_back(origin_ns);
            acc.value_bytes += self.config.record_size;
            self.pending_value_bytes += self.config.record_size;
            made_for_request += self.config.record_size;
            self.generated += 1;
        }
    }

    /// Value bytes created and not yet acknowledged (what `buffer.memory` bounds).
    fn unacknowledged_value_bytes(&self) -> usize {
        self.pending_value_bytes + self.in_flight_value_bytes
    }

    fn leader_of_slot(&self, slot: usize) -> i32 {
        self.info.partitions.get(slot).map_or(-1, |p| p.leader)
    }

    /// Leaders with at least one batch that is full, lingered, or final.
    fn ready_leaders(&self, now_ns: u64, flush_all: bool) -> Vec<i32> {
        let linger_ns = self.config.linger.as_nanos() as u64;
        let mut leaders: Vec<i32> = self
            .accs
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                !a.is_empty()
                    && (flush_all
                        || a.value_bytes >= self.config.batch_bytes
                        || now_ns >= a.opened_ns + linger_ns)
            })
            .map(|(slot, _)| self.leader_of_slot(slot))
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        leaders
    }

    /// Earliest instant a non-empty batch lingers out.
    fn next_linger_ns(&self) -> Option<u64> {
        let linger_ns = self.config.linger.as_nanos() as u64;
        self.accs
            .iter()
            .filter(|a| !a.is_empty())
            .map(|a| a.opened_ns + linger_ns)
            .min()
    }

    /// Drains batches for `leader` (every partition with data, up to the request cap).
    fn drain_for(&mut self, leader: i32, now_ns: u64) -> Result<Drained> {
        let mut batches = Vec::new();
        let mut sent = Vec::new();
        let mut request_bytes = 0usize;
        let partitions = self.accs.len();
        for i in 0..partitions {
            // Rotate the starting partition so no partition starves under the request cap.
            let slot = (self.sticky + 1 + i) % partitions;
            if self.leader_of_slot(slot) != leader || self.accs[slot].is_empty() {
                continue;
            }
            if request_bytes >= self.config.request_bytes_max {
                break;
            }
            let partition = self
                .info
                .partitions
                .get(slot)
                .map_or(slot as i32, |p| p.partition);
            let acc = &mut self.accs[slot];
            let Some(mut builder) = acc.batches.pop_front() else {
                continue;
            };
            let take = builder.len();
            // Transactional batches: the producer's id and epoch and the partition's next
            // sequence numbers.
            let producer = match &mut self.txn {
                Some(txn) => Some(ProducerFields {
                    producer_id: txn.session.producer_id(),
                    producer_epoch: txn.session.producer_epoch(),
                    base_sequence: txn.take_sequence(partition, take)?,
                    transactional: true,
                }),
                None => None,
            };
            let batch = builder.finish(&mut self.encode_buf, self.config.compression, producer)?;
            acc.spare.push(builder);
            let origins_ns: Vec<u64> = acc.origins_ns.drain(..take).collect();
            let value_bytes = take * self.config.record_size;
            acc.value_bytes -= value_bytes;
            if !acc.is_empty() {
                acc.opened_ns = now_ns;
            }
            self.pending_value_bytes -= value_bytes;
            self.in_flight_value_bytes += value_bytes;
            request_bytes += batch.len();
            batches.push((partition, batch.clone()));
            sent.push(SentBatch {
                partition,
                batch,
                origins_ns,
                value_bytes,
                refused_at_ns: None,
            });
        }
        Ok((batches, sent))
    }

    async fn conn(&mut self, leader: i32) -> Result<Arc<Connection>> {
        if let Some(conn) = self.conns.get(&leader) {
            if !conn.is_closed() {
                return Ok(Arc::clone(conn));
            }
        }
        // A dedicated connection per task and leader: tasks must not share sockets.
        let addr = match self.client.metadata_snapshot().brokers.get(&leader) {
            Some(addr) => addr.clone(),
            None => self.client.broker(leader).await?.addr().to_owned(),
        };
        let conn = Arc::new(Connection::connect(&addr, self.client.options()).await?);
        self.conns.insert(leader, Arc::clone(&conn));
        Ok(conn)
    }

    fn credit(
        &mut self,
        sent: Vec<SentBatch>,
        outcomes: Vec<(i32, std::result::Result<i64, ClientError>)>,
    ) -> Result<()> {
        let ack_ns = self.now_ns();
        let mut by_partition: BTreeMap<i32, std::result::Result<i64, ClientError>> =
            outcomes.into_iter().collect();
        let mut latencies_us = std::mem::take(&mut self.latencies_us);
        latencies_us.clear();
        let (mut records, mut bytes) = (0u64, 0u64);
        for batch in sent {
            match by_partition.remove(&batch.partition) {
                Some(Ok(_)) => {}
                Some(Err(e)) if e.is_retriable() => {
                    self.requeue(batch, e, ack_ns)?;
                    continue;
                }
                Some(Err(e)) => return Err(e),
                None if self.config.acks == Acks::None => {}
                None => {
                    return Err(ClientError::Invalid(format!(
                        "produce response does not mention partition {}",
                        batch.partition
                    )))
                }
            }
            // Records of the warm-up are acknowledged like any other but left out of every
            // figure.
            let counted_from_ns = self.config.counted_from_ns();
            let mut counted = 0u64;
            for origin in batch.origins_ns.iter().filter(|o| **o >= counted_from_ns) {
                let latency_us = (ack_ns.saturating_sub(*origin) / 1_000).max(1);
                self.histogram.saturating_record(latency_us);
                latencies_us.push(latency_us);
                counted += 1;
            }
            self.records_uncounted += batch.origins_ns.len() as u64 - counted;
            records += counted;
            bytes += counted * self.config.record_size as u64;
            debug_assert!(self.in_flight_value_bytes >= batch.value_bytes);
            self.in_flight_value_bytes =
                self.in_flight_value_bytes.saturating_sub(batch.value_bytes);
            // Its buffer is written again by a next batch, once nothing else holds it (the
            // request's own reference is gone once written; with acks=0 it may not be yet).
            // Compressed batches are not: their builders keep their records buffers.
            if self.config.compression == Compression::None
                && self.batch_pool.len() < self.batch_pool_max
            {
                if let Ok(buf) = batch.batch.try_into_mut() {
                    self.batch_pool.push(buf);
                }
            }
        }
        self.records_acked += records;
        self.bytes_acked += bytes;
        self.progress.add(records, bytes, &latencies_us);
        self.latencies_us = latencies_us;
        Ok(())
    }

    /// Puts a refused batch on the retry list, or gives up with `error` once it has been
    /// refused for `RETRY_WINDOW_NS`.
    fn requeue(&mut self, mut batch: SentBatch, error: ClientError, now_ns: u64) -> Result<()> {
        let first_refused_ns = *batch.refused_at_ns.get_or_insert(now_ns);
        if now_ns.saturating_sub(first_refused_ns) >= RETRY_WINDOW_NS {
            return Err(error);
        }
        if self.retry.is_empty() {
            self.retry_at_ns = now_ns + RETRY_BACKOFF_NS;
        }
        self.retry.push(batch);
        Ok(())
    }

    /// A request's outcome: credits what was acknowledged, requeues what a retriable error
    /// refused (the whole request when its connection broke).
    fn settle(
        &mut self,
        result: Result<Vec<(i32, std::result::Result<i64, ClientError>)>>,
        sent: Vec<SentBatch>,
    ) -> Result<()> {
        match result {
            Ok(outcomes) => self.credit(sent, outcomes),
            Err(e) if e.is_retriable() => {
                let now_ns = self.now_ns();
                for batch in sent {
                    let error = ClientError::Invalid(format!("after a retriable failure: {e}"));
                    self.requeue(batch, error, now_ns)?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the retry list again, grouped by each partition's leader in fresh metadata.
    /// Batches whose partition has no leader yet (or whose send fails) wait another round.
    async fn resend(&mut self, in_flight: &mut FuturesOrdered<InFlight>) -> Result<()> {
        let topic = self.config.topic.clone();
        match self.client.topic(&topic).await {
            Ok(info) => self.info = Arc::new(info),
            Err(e) if e.is_retriable() => {}
            Err(e) => return Err(e),
        }
        let now_ns = self.now_ns();
        let mut by_leader: BTreeMap<i32, Vec<SentBatch>> = BTreeMap::new();
        for batch in std::mem::take(&mut self.retry) {
            let leader = self
                .info
                .partitions
                .iter()
                .find(|p| p.partition == batch.partition)
                .map_or(-1, |p| p.leader);
            by_leader.entry(leader).or_default().push(batch);
        }
        self.retry_at_ns = now_ns + RETRY_BACKOFF_NS;
        // A request names each partition once (responses are matched by partition), so
        // batches of one partition go in successive requests, oldest first.
        let mut requests: Vec<(i32, Vec<SentBatch>)> = Vec::new();
        for (leader, batches) in by_leader {
            let mut rounds: Vec<Vec<SentBatch>> = Vec::new();
            for batch in batches {
                match rounds
                    .iter_mut()
                    .find(|round| round.iter().all(|b| b.partition != batch.partition))
                {
                    Some(round) => round.push(batch),
                    None => rounds.push(vec![batch]),
                }
            }
            requests.extend(rounds.into_iter().map(|round| (leader, round)));
        }
        for (leader, sent) in requests {
            if leader < 0 {
                self.retry.extend(sent);
                continue;
            }
            let conn = match self.conn(leader).await {
                Ok(conn) => conn,
                Err(e) if e.is_retriable() => {
                    self.conns.remove(&leader);
                    self.retry.extend(sent);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let batches: Vec<(i32, Bytes)> = sent
                .iter()
                .map(|b| (b.partition, b.batch.clone()))
                .collect();
            let fields = self.produce_fields(&topic, &batches);
            let pending = match conn.submit_produce(&fields).await {
                Ok(Some(pending)) => pending,
                Ok(None) => {
                    self.credit(sent, Vec::new())?;
                    continue;
                }
                Err(e) if e.is_retriable() => {
                    self.conns.remove(&leader);
                    self.retry.extend(sent);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let topic = topic.clone();
            in_flight.push_back(Box::pin(async move {
                let result = pending.wait().await.map(|r| produce_outcomes(&r, &topic));
                (result, sent)
            }));
        }
        Ok(())
    }

    async fn run(mut self) -> Result<WorkerDone> {
        let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let topic = self.config.topic.clone();
        let deadline = self
            .deadline_ns
            .map(|ns| tokio::time::Instant::from_std(self.start + Duration::from_nanos(ns)));
        // Every wait below ends at the deadline: a broker that stops reading a socket (a
        // write that never completes) or answering cannot hold the run past it.
        'run: loop {
            let now_ns = self.now_ns();
            if self
                .deadline_ns
                .is_some_and(|deadline_ns| now_ns >= deadline_ns)
            {
                break;
            }
            if !self.retry.is_empty() && now_ns >= self.retry_at_ns {
                let Some(resent) = until(deadline, self.resend(&mut in_flight)).await else {
                    break;
                };
                resent?;
            }
            let window_open = in_flight.len() < self.config.in_flight;
            self.generate(now_ns, window_open);
            // Over for the run, or (transactional) for the open transaction: flush it all.
            let finished_generating = self.generation_paused(now_ns);
            // Send while the window has room and something is ready.
            while in_flight.len() < self.config.in_flight {
                let now_ns = self.now_ns();
                let flush_all = finished_generating || !self.schedule.is_open();
                let Some(leader) = self.ready_leaders(now_ns, flush_all).first().copied() else {
                    break;
                };
                if self.txn.is_some() {
                    let Some(added) = until(deadline, self.add_to_transaction()).await else {
                        break 'run;
                    };
                    added?;
                }
                let (batches, sent) = self.drain_for(leader, now_ns)?;
                if batches.is_empty() {
                    break;
                }
                let Some(connected) = until(deadline, self.conn(leader)).await else {
                    break 'run;
                };
                let conn = match connected {
                    Ok(conn) => conn,
                    Err(e) if e.is_retriable() && self.config.acks != Acks::None => {
                        // The leader is gone (killed, or moved): retry after a refresh.
                        self.conns.remove(&leader);
                        let now_ns = self.now_ns();
                        for batch in sent {
                            let error = ClientError::Invalid(format!("connecting: {e}"));
                            self.requeue(batch, error, now_ns)?;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let fields = self.produce_fields(&topic, &batches);
                let Some(submitted) = until(deadline, conn.submit_produce(&fields)).await else {
                    break 'run;
                };
                let pending = match submitted {
                    Ok(Some(pending)) => pending,
                    Ok(None) => {
                        // acks=0: written is all there is.
                        self.credit(sent, Vec::new())?;
                        continue;
                    }
                    Err(e) if e.is_retriable() && self.config.acks != Acks::None => {
                        // The write failed or timed out (the connection is closed): the
                        // request's batches go again on a new one after a refresh.
                        self.conns.remove(&leader);
                        let now_ns = self.now_ns();
                        for batch in sent {
                            let error = ClientError::Invalid(format!("sending: {e}"));
                            self.requeue(batch, error, now_ns)?;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let topic = topic.clone();
                in_flight.push_back(Box::pin(async move {
                    let result = pending.wait().await.map(|r| produce_outcomes(&r, &topic));
                    (result, sent)
                }));
                if !self.schedule.is_open() {
                    self.generate(self.now_ns(), in_flight.len() < self.config.in_flight);
                }
            }
            let nothing_left = self.accs.iter().all(Accumulator::is_empty) && self.retry.is_empty();
            if finished_generating && nothing_left && in_flight.is_empty() {
                // Every record of the open transaction is acknowledged: commit it, then go
                // on with the next (or stop, the run being over).
                if self.txn.as_ref().is_some_and(|t| t.generated_in_txn > 0) {
                    let Some(committed) = until(deadline, self.commit()).await else {
                        break;
                    };
                    committed?;
                    continue;
                }
                break;
            }
            // Sleep until the next record is due, a batch lingers out, or a request completes.
            let now_ns = self.now_ns();
            let mut wake_ns = now_ns + 50_000_000;
            if !finished_generating && in_flight.len() < self.config.in_flight {
                if let Some(due) = self.schedule.due_at_ns(self.generated) {
                    wake_ns = wake_ns.min(due);
                } else {
                    wake_ns = now_ns; // closed loop with room: loop again at once
                }
            }
            if let Some(linger) = self.next_linger_ns() {
                wake_ns = wake_ns.min(linger);
            }
            if !self.retry.is_empty() {
                wake_ns = wake_ns.min(self.retry_at_ns.max(now_ns));
            }
            if let Some(deadline_ns) = self.deadline_ns {
                wake_ns = wake_ns.min(deadline_ns);
            }
            let wake_at = self.start + Duration::from_nanos(wake_ns);
            if in_flight.is_empty() {
                if wake_ns > now_ns {
                    self.timer.sleep_until(wake_at).await.map_err(timer_error)?;
                }
                continue;
            }
            let timer = Arc::clone(&self.timer);
            let sleep = timer.sleep_until(wake_at);
            tokio::select! {
                biased;
                Some((result, sent)) = in_flight.next() => {
                    self.settle(result, sent)?;
                    // Drain any other completed responses without sleeping.
                    while let Some(Some((result, sent))) = futures::FutureExt::now_or_never(in_flight.next()) {
                        self.settle(result, sent)?;
                    }
                }
                slept = sleep, if wake_ns > now_ns => slept.map_err(timer_error)?,
                // The deadline may have passed since the loop's top (the sleep above is then
                // off): waiting only for responses could last a whole request timeout.
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() => {}
                else => {}
            }
        }
        Ok(WorkerDone {
            records: self.records_acked,
            bytes: self.bytes_acked,
            unacknowledged: self
                .generated
                .saturating_sub(self.records_acked + self.records_uncounted),
            warmup_records: self.records_uncounted,
            histogram: self.histogram,
            txn: self.txn.map(|t| t.times),
        })
    }

    /// What a Produce request of `batches` carries, naming the transactional id in
    /// transactional mode.
    fn produce_fields<'a>(
        &'a self,
        topic: &'a str,
        batches: &'a [(i32, Bytes)],
    ) -> ProduceFields<'a> {
        ProduceFields {
            transactional_id: self.txn.as_ref().map(|t| t.session.transactional_id()),
            acks: self.config.acks,
            timeout_ms: self.config.timeout_ms,
            topic,
            batches,
        }
    }

    /// AddPartitionsToTxn for every partition with records waiting that is not yet in the
    /// open transaction (one request for all of them), timed. Waits for the answer: no batch
    /// of a partition may be sent before its partition joined.
    async fn add_to_transaction(&mut self) -> Result<()> {
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        let new: Vec<i32> = self
            .accs
            .iter()
            .enumerate()
            .filter(|(_, acc)| !acc.is_empty())
            .map(|(slot, _)| {
                self.info
                    .partitions
                    .get(slot)
                    .map_or(slot as i32, |p| p.partition)
            })
            .filter(|partition| !txn.partitions.contains(partition))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let sent_at = Instant::now();
        txn.session.add_partitions(&self.config.topic, &new).await?;
        txn.times
            .add_us
            .saturating_record((sent_at.elapsed().as_micros() as u64).max(1));
        txn.partitions.extend(new);
        Ok(())
    }

    /// EndTxn (commit) of the open transaction, every record of which is acknowledged;
    /// timed from request to answer.
    async fn commit(&mut self) -> Result<()> {
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        let sent_at = Instant::now();
        txn.session.end(true).await?;
        txn.times
            .end_us
            .saturating_record((sent_at.elapsed().as_micros() as u64).max(1));
        txn.generated_in_txn = 0;
        txn.partitions.clear();
        Ok(())
    }
}

/// Runs `sluice bench produce`.
pub async fn run(args: ProduceBenchArgs) -> anyhow::Result<()> {
    let config = Arc::new(ProduceConfig::from_args(&args, Payload::Shared)?);
    let client = args.common.conn.connect().await?;
    let info = Arc::new(ensure_topic(&client, &config.topic, args.partitions).await?);
    if args.ready_timeout_s > 0.0 {
        let limit = Duration::from_secs_f64(args.ready_timeout_s);
        let expected = usize::try_from(args.partitions).unwrap_or(0);
        let ready =
            super::ready::wait_until_writable(&client, &config.topic, expected, limit).await?;
        eprintln!(
            "bench produce: all {} partitions accept produce ({} round(s), {:.1} s)",
            ready.partitions,
            ready.rounds,
            ready.elapsed.as_secs_f64()
        );
    }
    let sessions = init_sessions(&client, &config).await.map_err(|e| {
        anyhow::anyhow!("bench produce: initialising the transactional producers: {e}")
    })?;
    let progress = Progress::new();
    let cpu_before = CpuTimes::now();
    let start = Instant::now();
    spawn_progress(
        "produced",
        Arc::clone(&progress),
        Duration::from_secs_f64(args.common.progress_interval_s.max(0.0)),
        start,
    );
    let result = run_producers(
        client,
        Arc::clone(&info),
        Arc::clone(&config),
        Arc::clone(&progress),
        start,
        sessions,
    )
    .await;
    progress
        .done
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let totals = result.map_err(|e| anyhow::anyhow!("bench produce aborted: {e}"))?;
    let cpu = CpuTimes::now().since(cpu_before);
    let mut config_json = config.to_json(info.partitions.len());
    if let Some(map) = config_json.as_object_mut() {
        map.insert(
            "records_unacknowledged".into(),
            totals.unacknowledged.into(),
        );
        map.insert("warmup_records".into(), totals.warmup_records.into());
        map.insert("warmup_bytes".into(), totals.warmup_bytes(&config).into());
    }
    let unacknowledged = totals.unacknowledged;
    let elapsed = totals.elapsed;
    Report {
        mode: "produce",
        config: config_json,
        records: totals.records,
        bytes: totals.bytes,
        elapsed: totals.elapsed,
        latency_label: if config.schedule_for_task().is_open() {
            "acknowledgement time minus intended send time (open loop)"
        } else {
            "acknowledgement time minus record creation (closed loop)"
        },
        histogram: totals.histogram,
        cpu,
        phases: if config.transaction.is_some() {
            vec![
                Phase {
                    key: "end_txn_latency_ms",
                    label: "EndTxn (commit) request to answer, one per transaction",
                    histogram: totals.end_txn,
                },
                Phase {
                    key: "add_partitions_latency_ms",
                    label: "AddPartitionsToTxn request to answer",
                    histogram: totals.add_partitions,
                },
            ]
        } else {
            Vec::new()
        },
    }
    .emit(&args.common)?;
    if unacknowledged > 0 {
        anyhow::bail!("{}", deadline_message(&config, unacknowledged, elapsed));
    }
    Ok(())
}

/// Why a run with records still unacknowledged at its deadline failed (its report, printed
/// before, counts only what was acknowledged).
pub fn deadline_message(config: &ProduceConfig, unacknowledged: u64, elapsed: Duration) -> String {
    format!(
        "{unacknowledged} record(s) were not acknowledged by the run's deadline ({:.1} s: \
         the duration plus the {} ms request timeout); the report counts only acknowledged \
         records over {:.1} s",
        config.deadline().unwrap_or(elapsed).as_secs_f64(),
        config.timeout_ms,
        elapsed.as_secs_f64()
    )
}
