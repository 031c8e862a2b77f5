//! The closed vocabulary of what a shard measures: latency stages, size histograms, counters,
//! and the Kafka API names used as labels.
//!
//! Owns: every metric name and label value that leaves the process, so the Prometheus text,
//! the `/stats` JSON and `sluice stats` agree. Must never: hold state or allocate on lookup;
//! every name here is a `&'static str` chosen at compile time.

/// A stage a request passes through, timed in nanoseconds into its own histogram.
///
/// Record each stage where it ends, with the time it took, on the shard that observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// From a request's last byte read off the socket to its handler starting on the shard.
    RequestQueue,
    /// From a shard sending a message to a partition's owning shard to that shard receiving it
    /// (one way).
    CrossShardHop,
    /// One group-commit write (the io_uring WRITE of coalesced batches) from submit to completion.
    AppendWrite,
    /// One group-commit fdatasync from submit to completion.
    AppendFsync,
    /// From a produce batch being handed to storage to it being durable (written and
    /// fdatasynced): what an acks=all producer waits for at the storage layer.
    AppendToDurable,
    /// How long a fetch waited for data (`max_wait_ms` / `min_bytes`) before it was answered.
    FetchWait,
    /// From a response being ready to its last byte being accepted by the socket.
    ResponseSend,
    /// One job the storage engine handed to the blocking pool (ftruncate, index, checkpoint
    /// and marker files), from submit to its result being back on the shard: queue wait and
    /// run time together.
    BlockingJob,
    /// How long the group-commit writer left the disk without a write of its shard while
    /// appends were waiting: from one flush's writes completing (with appends queued) to the
    /// next flush's submission. Planning, the staging copy and the shard's other work all
    /// count; at one partition this idle time bounds produce below the disk.
    AppendWriteGap,
}

impl Stage {
    /// Every stage, in display order.
    pub const ALL: [Stage; 9] = [
        Stage::RequestQueue,
        Stage::CrossShardHop,
        Stage::AppendWrite,
        Stage::AppendFsync,
        Stage::AppendToDurable,
        Stage::FetchWait,
        Stage::ResponseSend,
        Stage::BlockingJob,
        Stage::AppendWriteGap,
    ];

    /// How many stages exist; sizes the per-shard histogram array.
    pub const COUNT: usize = Stage::ALL.len();

    /// Dense index in `0..COUNT`, matching the position in [`Stage::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Stage::RequestQueue => 0,
            Stage::CrossShardHop => 1,
            Stage::AppendWrite => 2,
            Stage::AppendFsync => 3,
            Stage::AppendToDurable => 4,
            Stage::FetchWait => 5,
            Stage::ResponseSend => 6,
            Stage::BlockingJob => 7,
            Stage::AppendWriteGap => 8,
        }
    }

    /// The label value used in Prometheus and JSON output (`snake_case`).
    pub const fn name(self) -> &'static str {
        match self {
            Stage::RequestQueue => "request_queue",
            Stage::CrossShardHop => "cross_shard_hop",
            Stage::AppendWrite => "append_write",
            Stage::AppendFsync => "append_fsync",
            Stage::AppendToDurable => "append_to_durable",
            Stage::FetchWait => "fetch_wait",
            Stage::ResponseSend => "response_send",
            Stage::BlockingJob => "blocking_job",
            Stage::AppendWriteGap => "append_write_gap",
        }
    }
}

/// A monotonically increasing per-shard count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Counter {
    /// Request bytes read from client sockets (frames including their length prefix).
    BytesIn,
    /// Response bytes written to client sockets.
    BytesOut,
    /// Records accepted by produce requests (sum of batch record counts).
    RecordsIn,
    /// Records returned by fetch responses.
    RecordsOut,
    /// Requests answered with a non-zero error code, plus connections closed for bad input.
    Errors,
    /// Client connections accepted.
    ConnectionsOpened,
    /// Client connections closed, for any reason.
    ConnectionsClosed,
    /// io_uring submission queue entries submitted (all rings of the shard).
    UringSubmissions,
    /// io_uring completion queue entries reaped (all rings of the shard).
    UringCompletions,
    /// Fetch reads of a partition the tail cache held, served from the segment file because
    /// the shard's `fetch.response.cache.bytes.max` was spent.
    FetchCacheBudgetFileReads,
    /// Jobs the storage engine handed to the blocking pool.
    BlockingJobsSubmitted,
    /// Blocking-pool jobs whose result is back on the shard (submitted minus done is the
    /// pool's depth: jobs waiting for a thread or running).
    BlockingJobsDone,
    /// Fetch sessions (KIP-227) created.
    FetchSessionsCreated,
    /// Fetch sessions closed by their client or evicted (created minus closed is the number
    /// open).
    FetchSessionsClosed,
    /// Incremental fetches served (a Fetch of an existing session).
    IncrementalFetches,
    /// SASL authentications (and re-authentications) that succeeded.
    SaslAuthentications,
    /// SASL authentications that failed (wrong password, unknown user, bad exchange).
    SaslAuthenticationFailures,
}

impl Counter {
    /// Every counter, in display order.
    pub const ALL: [Counter; 17] = [
        Counter::BytesIn,
        Counter::BytesOut,
        Counter::RecordsIn,
        Counter::RecordsOut,
        Counter::Errors,
        Counter::ConnectionsOpened,
        Counter::ConnectionsClosed,
        Counter::UringSubmissions,
        Counter::UringCompletions,
        Counter::FetchCacheBudgetFileReads,
        Counter::BlockingJobsSubmitted,
        Counter::BlockingJobsDone,
        Counter::FetchSessionsCreated,
        Counter::FetchSessionsClosed,
        Counter::IncrementalFetches,
        Counter::SaslAuthentications,
        Counter::SaslAuthenticationFailures,
    ];

    /// How many counters exist; sizes the per-shard counter array.
    pub const COUNT: usize = Counter::ALL.len();

    /// Dense index in `0..COUNT`, matching the position in [`Counter::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Counter::BytesIn => 0,
            Counter::BytesOut => 1,
            Counter::RecordsIn => 2,
            Counter::RecordsOut => 3,
            Counter::Errors => 4,
            Counter::ConnectionsOpened => 5,
            Counter::ConnectionsClosed => 6,
            Counter::UringSubmissions => 7,
            Counter::UringCompletions => 8,
            Counter::FetchCacheBudgetFileReads => 9,
            Counter::BlockingJobsSubmitted => 10,
            Counter::BlockingJobsDone => 11,
            Counter::FetchSessionsCreated => 12,
            Counter::FetchSessionsClosed => 13,
            Counter::IncrementalFetches => 14,
            Counter::SaslAuthentications => 15,
            Counter::SaslAuthenticationFailures => 16,
        }
    }

    /// The JSON key; the Prometheus name is `sluice_<name>_total`.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::BytesIn => "bytes_in",
            Counter::BytesOut => "bytes_out",
            Counter::RecordsIn => "records_in",
            Counter::RecordsOut => "records_out",
            Counter::Errors => "errors",
            Counter::ConnectionsOpened => "connections_opened",
            Counter::ConnectionsClosed => "connections_closed",
            Counter::UringSubmissions => "uring_submissions",
            Counter::UringCompletions => "uring_completions",
            Counter::FetchCacheBudgetFileReads => "fetch_cache_budget_file_reads",
            Counter::BlockingJobsSubmitted => "blocking_jobs_submitted",
            Counter::BlockingJobsDone => "blocking_jobs_done",
            Counter::FetchSessionsCreated => "fetch_sessions_created",
            Counter::FetchSessionsClosed => "fetch_sessions_closed",
            Counter::IncrementalFetches => "incremental_fetches",
            Counter::SaslAuthentications => "sasl_authentications",
            Counter::SaslAuthenticationFailures => "sasl_authentication_failures",
        }
    }
}

/// Number of per-API histogram slots: API keys `0..API_SLOTS` that have a name below get their
/// own histogram; any other key (negative, unassigned, or too large) shares the `unknown` slot.
pub const API_SLOTS: usize = 76;

/// The Kafka protocol's name for `api_key`, or `None` for a key Sluice does not label.
///
/// Names follow the protocol's message definitions (`ProduceRequest` -> `Produce`).
pub const fn api_name(api_key: i16) -> Option<&'static str> {
    let name = match api_key {
        0 => "Produce",
        1 => "Fetch",
        2 => "ListOffsets",
        3 => "Metadata",
        4 => "LeaderAndIsr",
        5 => "StopReplica",
        6 => "UpdateMetadata",
        7 => "ControlledShutdown",
        8 => "OffsetCommit",
        9 => "OffsetFetch",
        10 => "FindCoordinator",
        11 => "JoinGroup",
        12 => "Heartbeat",
        13 => "LeaveGroup",
        14 => "SyncGroup",
        15 => "DescribeGroups",
        16 => "ListGroups",
        17 => "SaslHandshake",
        18 => "ApiVersions",
        19 => "CreateTopics",
        20 => "DeleteTopics",
        21 => "DeleteRecords",
        22 => "InitProducerId",
        23 => "OffsetForLeaderEpoch",
        24 => "AddPartitionsToTxn",
        25 => "AddOffsetsToTxn",
        26 => "EndTxn",
        27 => "WriteTxnMarkers",
        28 => "TxnOffsetCommit",
        29 => "DescribeAcls",
        30 => "CreateAcls",
        31 => "DeleteAcls",
        32 => "DescribeConfigs",
        33 => "AlterConfigs",
        34 => "AlterReplicaLogDirs",
        35 => "DescribeLogDirs",
        36 => "SaslAuthenticate",
        37 => "CreatePartitions",
        38 => "CreateDelegationToken",
        39 => "RenewDelegationToken",
        40 => "ExpireDelegationToken",
        41 => "DescribeDelegationToken",
        42 => "DeleteGroups",
        43 => "ElectLeaders",
        44 => "IncrementalAlterConfigs",
        45 => "AlterPartitionReassignments",
        46 => "ListPartitionReassignments",
        47 => "OffsetDelete",
        48 => "DescribeClientQuotas",
        49 => "AlterClientQuotas",
        50 => "DescribeUserScramCredentials",
        51 => "AlterUserScramCredentials",
        55 => "DescribeQuorum",
        57 => "UpdateFeatures",
        60 => "DescribeCluster",
        61 => "DescribeProducers",
        64 => "UnregisterBroker",
        65 => "DescribeTransactions",
        66 => "ListTransactions",
        68 => "ConsumerGroupHeartbeat",
        69 => "ConsumerGroupDescribe",
        71 => "GetTelemetrySubscriptions",
        72 => "PushTelemetry",
        74 => "ListClientMetricsResources",
        75 => "DescribeTopicPartitions",
        _ => return None,
    };
    Some(name)
}

/// Label for API keys without a slot of their own.
pub const UNKNOWN_API: &str = "unknown";

/// The histogram slot for `api_key`: its own for named keys, [`API_SLOTS`] (the shared
/// `unknown` slot) otherwise. Never out of range, whatever a client sends.
#[inline]
pub fn api_slot(api_key: i16) -> usize {
    match usize::try_from(api_key) {
        Ok(slot) if slot < API_SLOTS && NAMED_SLOTS[slot] => slot,
        _ => API_SLOTS,
    }
}

/// `NAMED_SLOTS[k]` is whether API key `k` has a name: a table so the hot path does one load
/// instead of walking the name match.
const NAMED_SLOTS: [bool; API_SLOTS] = {
    let mut named = [false; API_SLOTS];
    let mut key = 0;
    while key < API_SLOTS {
        named[key] = api_name(key as i16).is_some();
        key += 1;
    }
    named
};

/// Inverse of [`api_slot`] for display: the label of a slot.
pub fn slot_label(slot: usize) -> &'static str {
    i16::try_from(slot)
        .ok()
        .and_then(api_name)
        .unwrap_or(UNKNOWN_API)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_match_all_order() {
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(s.index(), i, "{s:?}");
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
    }

    #[test]
    fn api_slots_cover_every_key_without_overflow() {
        assert_eq!(api_slot(0), 0);
        assert_eq!(api_slot(18), 18);
        assert_eq!(slot_label(api_slot(18)), "ApiVersions");
        assert_eq!(api_slot(-1), API_SLOTS);
        assert_eq!(
            api_slot(52),
            API_SLOTS,
            "unassigned key shares unknown slot"
        );
        assert_eq!(api_slot(i16::MAX), API_SLOTS);
        assert_eq!(slot_label(API_SLOTS), UNKNOWN_API);
        for key in i16::MIN..=i16::MAX {
            assert!(api_slot(key) <= API_SLOTS);
        }
    }
}
