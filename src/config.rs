//! Broker configuration: every setting by its Kafka-style name, with its default, its meaning,
//! and the precedence rule config file < `--override key=value` < dedicated command-line flags.
//!
//! Owns parsing and validation of settings. Must never: read the environment behind the
//! user's back or accept an unknown key silently (a typo must not look like a setting).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_storage::{CleanerConfig, CleanupPolicy, LogConfig, TimestampType};

mod check;
mod cluster;
mod listener_config;
use check::Check;

/// `log.tail.cache.bytes` when neither the machine's nor a cgroup's memory is known.
const TAIL_CACHE_FALLBACK_BYTES: usize = 64 << 20;

/// Most of `fetch.response.cache.bytes.max` when not set: responses in flight from a large
/// tail cache are a small part of it, and a budget as large as the cache would let unread
/// responses double what the cache may hold.
const RESPONSE_CACHE_DEFAULT_MAX_BYTES: usize = 256 << 20;

/// `num.shards`, with 0 resolved to one shard per available core.
fn resolved_shards(setting: usize) -> usize {
    match setting {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// `log.tail.cache.bytes` when not set: half of `memory_bytes` split over `shards` (why half:
/// a consumer seconds behind a producer at disk speed needs gigabytes held, and the other half
/// stays for connections, the page cache that serves older reads, and other processes).
fn tail_cache_auto_bytes(memory_bytes: Option<u64>, shards: usize) -> usize {
    memory_bytes.map_or(TAIL_CACHE_FALLBACK_BYTES, |bytes| {
        usize::try_from(bytes / 2 / shards.max(1) as u64).unwrap_or(usize::MAX)
    })
}

/// Upper bound of `num.shards`: far above any core count, low enough to catch a typo.
const SHARDS_MAX: i64 = 4096;
/// Smallest `log.segment.bytes` (and topic `segment.bytes`): one direct-I/O block.
const SEGMENT_BYTES_MIN: i64 = 4096;
/// Smallest `message.max.bytes`: a record batch header alone.
const BATCH_BYTES_MIN: i64 = sluice_storage::batch::HEADER_BYTES as i64;
/// io_uring refuses submission queues above this many entries.
const RING_ENTRIES_MAX: i64 = 32768;

/// One documented setting.
pub struct Setting {
    /// Kafka-style name.
    pub name: &'static str,
    /// Default value as text.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every broker setting. The README's configuration reference is generated from this table
/// (`sluice serve --print-config-reference`).
pub const SETTINGS: &[Setting] = &[
    Setting { name: "log.dirs", default: "./sluice-data", doc: "Data directory (CLI: --data-dir)." },
    Setting { name: "listeners", default: "127.0.0.1:9092", doc: "Kafka listeners, NAME://IP:PORT,... (an empty IP = every interface; port 0 = a free port chosen at start), each with its own name and port; every shard accepts on each. A bare IP:PORT is one PLAINTEXT listener (CLI: --listen)." },
    Setting { name: "listener.security.protocol.map", default: "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL", doc: "Each listener name's security protocol, NAME:PROTOCOL,... (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL); a listener name missing here is refused at start." },
    Setting { name: "advertised.listeners", default: "", doc: "What clients are told to connect to, NAME://HOST:PORT per listener (a listener not named advertises its own address); a bare HOST:PORT is allowed with a single listener. Metadata and FindCoordinator answer with the endpoints of the listener the request arrived on (CLI: --advertised-listener)." },
    Setting { name: "inter.broker.listener.name", default: "", doc: "In a cluster: the listener other brokers use for replication and request forwarding, and whose advertised address this broker registers first. Empty: the listener named by security.inter.broker.protocol, else PLAINTEXT, else the first. An SSL or SASL inter-broker listener is spoken with its own ssl.* settings (the truststore verifies the other brokers, the keystore is this broker's client certificate) and sasl.mechanism.inter.broker.protocol with the login of its sasl.jaas.config." },
    Setting { name: "ssl.keystore.type", default: "PEM", doc: "Format of the TLS listeners' key and certificates; only PEM (JKS and PKCS12 are refused: convert them with keytool/openssl). Every ssl.* setting may be given per listener as listener.name.<name>.ssl.* (name in lower case), which wins over the broker-wide one." },
    Setting { name: "ssl.keystore.location", default: "", doc: "A PEM file with the TLS listeners' private key (PKCS#8, PKCS#1 or SEC1; encrypted PKCS#8 with ssl.key.password) and certificate chain, leaf first. Re-read when it changes (ssl.reload.check.interval.ms). Either this or ssl.keystore.certificate.chain + ssl.keystore.key." },
    Setting { name: "ssl.keystore.certificate.chain", default: "", doc: "The certificate chain as inline PEM text (with ssl.keystore.key)." },
    Setting { name: "ssl.keystore.key", default: "", doc: "The private key as inline PEM text (encrypted PKCS#8 with ssl.key.password); DescribeConfigs reports it as sensitive (no value)." },
    Setting { name: "ssl.key.password", default: "", doc: "The password of an encrypted PKCS#8 private key (-----BEGIN ENCRYPTED PRIVATE KEY-----, PBES2 as openssl pkcs8 -topk8 -v2 aes-256-cbc writes it) in the keystore; a wrong one is a start error. OpenSSL's legacy encrypted format (Proc-Type: 4,ENCRYPTED) is refused, as on Kafka. Hidden by DescribeConfigs." },
    Setting { name: "ssl.truststore.type", default: "PEM", doc: "Format of the trusted CA certificates; only PEM." },
    Setting { name: "ssl.truststore.location", default: "", doc: "A PEM file of the CA certificates client certificates are checked against (mutual TLS); re-read when it changes." },
    Setting { name: "ssl.truststore.certificates", default: "", doc: "The trusted CA certificates as inline PEM text (instead of ssl.truststore.location)." },
    Setting { name: "ssl.client.auth", default: "none", doc: "Mutual TLS: required (a client without a certificate the truststore's CAs signed and that is in its validity period is refused during the handshake), requested (a certificate is asked for; without one the client is User:ANONYMOUS, a bad one is refused) or none. The principal of a client certificate is User:<its subject DN as Kafka writes it>, e.g. User:CN=alice,OU=eng,O=Example,C=US." },
    Setting { name: "ssl.enabled.protocols", default: "TLSv1.2,TLSv1.3", doc: "TLS versions offered: TLSv1.2 and/or TLSv1.3 (older ones are not available)." },
    Setting { name: "ssl.cipher.suites", default: "", doc: "Cipher suites by IANA name (TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, ...); empty = rustls's safe defaults. An unknown name is refused at start with the list of known ones." },
    Setting { name: "ssl.principal.mapping.rules", default: "DEFAULT", doc: "How a client certificate's subject DN (RFC 2253, as Kafka writes it) becomes the principal name, Kafka's syntax: DEFAULT (the DN as is) and RULE:pattern/replacement/[L|U] entries, the first whose pattern matches the whole DN applied (every match replaced, $1 a group; L/U lower- or upper-cases). A DN no rule matches is refused." },
    Setting { name: "ssl.handshake.timeout.ms", default: "10000", doc: "A TLS connection whose handshake is not complete within this is closed (a log line), so a silent or slow client cannot hold a connection slot. No Kafka equivalent." },
    Setting { name: "ssl.io.buffer.bytes", default: "262144", doc: "Plaintext bytes sealed into TLS records per socket write on a TLS connection (its ciphertext write buffer is about this size; its read buffer is one TLS record, 18 KiB). No Kafka equivalent." },
    Setting { name: "ssl.reload.check.interval.ms", default: "10000", doc: "How often the TLS listeners' keystore and truststore files are checked for changes (modification time, size); a change is loaded for new handshakes (established sessions keep theirs), a file that does not load is logged and the previous certificates stay. 0 = never. No Kafka equivalent (Kafka reloads on an AlterConfigs of the ssl setting)." },
    Setting { name: "sasl.mechanism.inter.broker.protocol", default: "", doc: "The SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) this broker logs in with on a SASL inter-broker listener; required there (Kafka's default, GSSAPI, is not served)." },
    Setting { name: "sasl.jaas.config", default: "", doc: "The inter-broker login, as Kafka's JAAS line: e.g. org.apache.kafka.common.security.scram.ScramLoginModule required username=\"broker\" password=\"...\"; (only username and password are read). listener.name.<listener>.<mechanism>.sasl.jaas.config overrides it for one listener. The other brokers must know the user (SCRAM credentials) and, with an authorizer, list it in super.users." },
    Setting { name: "ssl.endpoint.identification.algorithm", default: "https", doc: "Whether this broker checks that another broker's certificate names the address it connects to (https), or accepts any certificate its truststore vouches for (empty)." },
    Setting { name: "security.inter.broker.protocol", default: "", doc: "Kafka's older way to pick the inter-broker listener: the listener named after this protocol. Set it or inter.broker.listener.name, not both." },
    Setting { name: "admin.listen", default: "127.0.0.1:9644", doc: "Admin HTTP listener for /metrics and /stats (CLI: --admin-listen); empty disables it." },
    Setting { name: "num.shards", default: "0", doc: "Shards (pinned threads); 0 = one per available core (CLI: --shards)." },
    Setting { name: "node.id", default: "0", doc: "This broker's id." },
    Setting { name: "num.partitions", default: "1", doc: "Partitions of an auto-created topic, or of a CreateTopics request with -1." },
    Setting { name: "max.broker.partitions", default: "5000", doc: "Partitions (all topics, the offsets log included) this broker holds at most; a CreateTopics, CreatePartitions or auto-create beyond it gets INVALID_PARTITIONS (KIP-578's name). Each partition keeps one file descriptor open (its active segment's), plus one per segment a consumer read from the file rather than the tail cache: keep it well below the open-files limit." },
    Setting { name: "auto.create.topics.enable", default: "true", doc: "Create unknown topics on Metadata requests." },
    Setting { name: "message.max.bytes", default: "1048588", doc: "Largest record batch accepted (topic: max.message.bytes)." },
    Setting { name: "socket.request.max.bytes", default: "104857600", doc: "Largest request frame; a bigger one closes the connection." },
    Setting { name: "socket.send.buffer.bytes", default: "-1", doc: "SO_SNDBUF of each accepted connection; -1 keeps the kernel's default, which it grows with the connection's needs (net.ipv4.tcp_wmem). Kafka's default is 102400; Sluice leaves the kernel's autotuning on unless told otherwise. The kernel doubles the value and caps it at net.core.wmem_max." },
    Setting { name: "socket.receive.buffer.bytes", default: "-1", doc: "SO_RCVBUF of the listening sockets, which accepted connections inherit (set before listen, so the TCP window scale fits it); -1 keeps the kernel's autotuned default (net.ipv4.tcp_rmem). Kafka's default is 102400. The kernel doubles the value and caps it at net.core.rmem_max." },
    Setting { name: "socket.listen.backlog.size", default: "1024", doc: "Connections the kernel queues per listening socket (each shard has its own, SO_REUSEPORT) before the broker accepts them; further SYNs wait or are dropped. Kafka's default is 50; Sluice's is larger so that a thousand clients connecting at once are not retried. The kernel caps it at net.core.somaxconn." },
    Setting { name: "max.connections", default: "10000", doc: "Open client connections per broker; further ones are closed at accept." },
    Setting { name: "queued.max.requests", default: "500", doc: "Requests read but not answered, per connection (pipelining depth)." },
    Setting { name: "queued.max.request.bytes", default: "268435456", doc: "Bytes of requests read but not yet answered, per broker (split evenly over the shards). When reached, connections stop reading their sockets until handled requests free bytes; a request larger than a shard's share is admitted alone. Kafka's -1 (unbounded) is refused: it is what lets slow clients exhaust memory." },
    Setting { name: "connections.max.idle.ms", default: "600000", doc: "A connection with no request in flight and nothing read or written for this long is closed (debug log line)." },
    Setting { name: "max.connections.per.ip", default: "2147483647", doc: "Open connections per client IP address, broker-wide; further ones are closed at accept (rate-limited warning)." },
    Setting { name: "max.connections.per.ip.overrides", default: "", doc: "Per-IP exceptions to max.connections.per.ip: IP:N,IP:N (IP addresses only; host names are refused)." },
    Setting { name: "fetch.max.bytes", default: "57671680", doc: "Most record bytes in one Fetch response, whatever the client asks (partition limits still apply; the first batch is returned even when larger, as Kafka does)." },
    Setting { name: "shard.inbox.jobs.max", default: "4096", doc: "Depth of each shard's inbox of cross-shard jobs; a sender finding it full waits (its request stays unanswered, so its connection stops reading)." },
    Setting { name: "log.blocking.jobs.max", default: "8", doc: "Jobs per shard running at once on the blocking pool (segment truncation, small files with their syncs: the file work io_uring has no opcode for); more wait on the shard without holding a pool thread." },
    Setting { name: "log.append.queue.bytes.max", default: "67108864", doc: "Bytes per shard queued for the storage writer and not yet written; an append that finds the queue past this waits for the writer before it completes (acks=0 included), so its producer's connection stops reading." },
    Setting { name: "log.flush.writing.commits.max", default: "4", doc: "Group commits per shard whose writes may be in flight at once, to the same files too: while a commit's write is in flight the next one starts as soon as 1 MiB (at most a quarter of the staging buffer) is queued, instead of waiting for it (a file's partial last 4 KiB block is rewritten only after the write holding it completed). 1 writes one commit at a time." },
    Setting { name: "log.flush.write.dsync", default: "false", doc: "With log.direct.io, make a group commit's write durable by itself (RWF_DSYNC: the kernel flushes the disk's cache before the write completes) instead of linking an fdatasync behind it, when the partition syncs every commit and no acks=1 append in the commit waits for the write alone (those get the write then the fdatasync, so they complete at the write). One operation per commit instead of two; such a commit may take a sync slot too (up to log.flush.writing.commits.max + log.flush.syncing.commits.max writes in flight), since its write holds its sync. Off by default: on a disk without FUA (the sync is then the same cache flush) it measured no faster and its end-to-end p99 at half load was higher (BENCHMARKS.md)." },
    Setting { name: "log.flush.syncing.commits.max", default: "4", doc: "Group commits per shard whose writes are in and whose fdatasyncs are still running while the writer writes the next one (writes run back to back, fdatasyncs trail them, appends complete in order). At the limit the writer waits for the oldest commit's fdatasyncs." },
    Setting { name: "log.segment.bytes", default: "1073741824", doc: "Segment size before a roll (topic: segment.bytes)." },
    Setting { name: "log.roll.ms", default: "604800000", doc: "Segment age before a roll (topic: segment.ms)." },
    Setting { name: "log.retention.ms", default: "604800000", doc: "Age after which whole segments are deleted; -1 keeps forever (topic: retention.ms)." },
    Setting { name: "log.retention.bytes", default: "-1", doc: "Partition size above which old segments are deleted; -1 = unlimited (topic: retention.bytes)." },
    Setting { name: "log.retention.check.interval.ms", default: "300000", doc: "How often retention runs." },
    Setting { name: "log.cleanup.policy", default: "delete", doc: "delete (retention removes old segments), compact (the cleaner keeps the newest record of each key; keyless records are refused with INVALID_RECORD) or compact,delete (topic: cleanup.policy)." },
    Setting { name: "log.cleaner.enable", default: "true", doc: "Run a cleaner per shard for compacted topics (and __consumer_offsets)." },
    Setting { name: "log.cleaner.backoff.ms", default: "15000", doc: "How often each shard's cleaner looks for a compacted partition that is due." },
    Setting { name: "log.cleaner.min.cleanable.ratio", default: "0.5", doc: "A compacted partition is cleaned once its dirty (never cleaned) bytes are at least this share of its sealed bytes, 0.0 to 1.0 (topic: min.cleanable.dirty.ratio)." },
    Setting { name: "log.cleaner.min.compaction.lag.ms", default: "0", doc: "A record stays uncompacted at least this long: the cleaner stops before the first segment holding a younger record (topic: min.compaction.lag.ms)." },
    Setting { name: "log.cleaner.max.compaction.lag.ms", default: "9223372036854775807", doc: "A partition whose oldest dirty segment is older than this is cleaned whatever its dirty ratio, and its active segment rolls at this age (topic: max.compaction.lag.ms)." },
    Setting { name: "log.cleaner.delete.retention.ms", default: "86400000", doc: "A tombstone (null value) stays this long after the cleaner pass that first cleaned its segment, then the next pass removes it (topic: delete.retention.ms)." },
    Setting { name: "log.cleaner.io.max.bytes.per.second", default: "", doc: "Bytes per second each shard's cleaner reads plus writes; empty = unthrottled (Kafka's default is unthrottled too). Per shard, not per broker." },
    Setting { name: "log.cleaner.dedupe.buffer.size", default: "134217728", doc: "Memory of one cleaner pass's key map, per shard (32 bytes per key); when full the pass stops at that batch and the next pass goes on from there." },
    Setting { name: "log.cleaner.threads", default: "1", doc: "Threads per broker that do the cleaners' record work (checksums, decompression, key hashing, rebuilding batches) for every shard; the shards keep only the cleaners' I/O." },
    Setting { name: "log.cleaner.thread.nice", default: "19", doc: "Scheduling priority (nice, -20 to 19) of the cleaner threads: at 19 the shards' request work goes first on a busy machine and the cleaner takes the CPU left over. Below the process's own value needs CAP_SYS_NICE. No Kafka equivalent." },
    Setting { name: "log.cleaner.decompressed.batch.bytes.max", default: "67108864", doc: "Largest records section a compressed batch of a compacted topic may decompress to, for the keyless check on produce (INVALID_RECORD above it) and in the cleaner (the pass stops with an error). No Kafka equivalent." },
    Setting { name: "log.index.interval.bytes", default: "4096", doc: "Bytes between offset-index entries (topic: index.interval.bytes)." },
    Setting { name: "log.flush.interval.messages", default: "", doc: "Empty: every group commit is fdatasync'ed before acks=all completes. N: fsync every N messages and acks=all completes on write (topic: flush.messages)." },
    Setting { name: "log.flush.interval.ms", default: "", doc: "Like log.flush.interval.messages, by time (topic: flush.ms)." },
    Setting { name: "log.message.timestamp.type", default: "CreateTime", doc: "CreateTime or LogAppendTime (topic: message.timestamp.type)." },
    Setting { name: "log.direct.io", default: "true", doc: "O_DIRECT appends from registered buffers; false = buffered writes." },
    Setting { name: "log.tail.cache.bytes", default: "", doc: "Recent bytes per shard served to consumers from memory, so that consumers that fall seconds behind read memory, not the disk (appends are O_DIRECT: the page cache does not hold them). Empty = half the memory the broker may use (the machine's or its cgroup's limit, whichever is lower) split evenly over the shards, 64 MiB per shard when neither is known; memory is taken only as records arrive, and kept for reuse once taken until the machine runs short (log.tail.cache.memory.reserve.bytes) (a fresh broker pays each new page's first touch, a fault and a zeroing, until the cache has filled once: on a VM whose host takes back free guest memory that measured about twice the steady CPU per GB produced, with 4 KiB pages (log.tail.cache.huge.pages); /metrics sluice_tail_cache_chunk_bytes against sluice_tail_cache_budget_bytes shows how far it is). Set it lower when other processes share the machine (several brokers on one host)." },
    Setting { name: "log.tail.cache.memory.reserve.bytes", default: "", doc: "Memory the tail cache leaves to the rest of the machine: when what the broker could still take (the machine's MemAvailable, or its control group's limit less the group's use apart from page cache, the smaller) falls below this, every shard evicts its oldest cached batches and gives the chunks back to the kernel, its share of the shortfall per check, down to nothing if need be (readers of evicted batches go to the segment files); once more than 1.5 times this is available again, the limit rises by the surplus until it is gone. The cache's memory, unlike Kafka's page cache, is not reclaimable by the kernel: without this, other processes on the machine could only get memory by the OOM killer. Empty = a tenth of the memory the broker may use (0 when that is unknown); 0 = never give memory back. No Kafka equivalent." },
    Setting { name: "log.tail.cache.memory.check.interval.ms", default: "1000", doc: "How often each shard compares the memory still available with log.tail.cache.memory.reserve.bytes (a read of /proc/meminfo and the control group's files). 0 = never. No Kafka equivalent." },
    Setting { name: "log.tail.cache.huge.pages", default: "false", doc: "Whether the tail cache's memory asks for transparent huge pages (true) or refuses them (false, also where the kernel's THP mode is always). Off by default: the cache takes its memory as records arrive, on the shard thread, and on a VM whose host takes free guest memory back (free page reporting gives back whole free 2 MiB blocks, the only place a huge page can come from) every fresh huge page was a host fault, 7x slower than the 4 KiB pages the kernel first takes from fragmented memory the host still backs (a fresh broker produced at half the rate for its first gigabytes); once taken, huge pages measured no faster (BENCHMARKS.md). No Kafka equivalent." },
    Setting { name: "fetch.response.cache.bytes.max", default: "", doc: "Tail-cache bytes per shard that Fetch responses not yet written may hold (a response keeps its batches alive after the cache evicts them, for as long as its client does not read it). A Fetch whose cached range does not fit is served from the segment file instead (spliced, or copied through the connection's buffer), which holds no memory; /metrics counts those reads (fetch_cache_budget_file_reads). Empty = log.tail.cache.bytes, at most 256 MiB; 0 = tail data always goes from the files. No Kafka equivalent." },
    Setting { name: "log.flush.batch.bytes", default: "16777216", doc: "Upper bound of one group commit write." },
    Setting { name: "io.uring.entries", default: "1024", doc: "Submission queue size of each shard's storage ring." },
    Setting { name: "fetch.zero.copy", default: "true", doc: "Send record bytes with splice/SEND_ZC; false = copy every record byte through a user-space buffer (io_uring reads from files, memcpy from the tail cache), the baseline and the fallback for kernels without splice. Tail-cache data to a peer on this host goes by plain SENDMSG from the cache's buffers (the kernel copies looped zero-copy pages anyway; `SLUICE_FETCH_SEND_ZC_LOCAL_PEERS=1` forces SEND_ZC)." },
    Setting { name: "max.incremental.fetch.session.cache.slots", default: "1000", doc: "Incremental fetch sessions (KIP-227) the broker keeps, split evenly across shards (a session lives on the shard of its client's connection); when full, a new session evicts one idle past fetch.session.eviction.ms, else a smaller one, else the client keeps doing full fetches. 0 = no sessions." },
    Setting { name: "fetch.session.eviction.ms", default: "120000", doc: "A fetch session unused for this long may be evicted for a new one (Kafka's fixed 120 s). No Kafka setting." },
    Setting { name: "fetch.max.wait.ms.max", default: "30000", doc: "Upper bound on a Fetch's max_wait_ms." },
    Setting { name: "group.initial.rebalance.delay.ms", default: "3000", doc: "Wait for more members before the first rebalance of an empty group." },
    Setting { name: "group.min.session.timeout.ms", default: "6000", doc: "Smallest session timeout a member may ask for." },
    Setting { name: "group.max.session.timeout.ms", default: "1800000", doc: "Largest session timeout a member may ask for." },
    Setting { name: "group.max.size", default: "2147483647", doc: "Members per group." },
    Setting { name: "offsets.retention.minutes", default: "10080", doc: "Committed offsets of empty groups expire after this." },
    Setting { name: "offsets.retention.check.interval.ms", default: "600000", doc: "How often committed offsets are checked for expiry." },
    Setting { name: "offset.metadata.max.bytes", default: "4096", doc: "Largest metadata string of one committed offset (OFFSET_METADATA_TOO_LARGE above it)." },
    Setting { name: "offsets.snapshot.interval.ms", default: "60000", doc: "How often a __consumer_offsets partition whose log grew is snapshotted, so startup replays only the log after the snapshot." },
    Setting { name: "producer.id.expiration.ms", default: "86400000", doc: "An idempotent producer's state (epoch, sequences) is dropped after it wrote nothing to the partition for this long; its next batch is then accepted at any sequence, as Kafka does." },
    Setting { name: "producer.id.expiration.check.interval.ms", default: "600000", doc: "How often expired producer states are removed." },
    Setting { name: "producer.states.per.partition.max", default: "10000", doc: "Producer states kept per partition; above it the least recently active ones are dropped first (duplicates of their retried batches then go undetected)." },
    Setting { name: "transaction.max.timeout.ms", default: "900000", doc: "Largest transaction.timeout.ms a transactional producer may ask for (InitProducerId answers INVALID_TRANSACTION_TIMEOUT above it)." },
    Setting { name: "transaction.state.log.segment.bytes", default: "104857600", doc: "Segment size of __transaction_state, which is compacted (the newest record per transactional id is its state, so the cleaner keeps only that): the cleaner cleans rolled segments, so smaller segments trim it sooner." },
    Setting { name: "transaction.state.log.num.partitions", default: "50", doc: "Partitions of __transaction_state; a transactional id's coordinator is the owner of partition abs(hash(id)) % this. Fixed once transactions were used: changing it moves ids away from their state." },
    Setting { name: "transaction.abort.timed.out.transaction.cleanup.interval.ms", default: "10000", doc: "How often each coordinator aborts (and fences, with an epoch bump) the transactions open longer than their timeout." },
    Setting { name: "transactional.id.expiration.ms", default: "604800000", doc: "A transactional id with no transaction open whose coordinator wrote no state for it this long is forgotten: a tombstone in __transaction_state (which compaction then drops) and, on its next InitProducerId, a new producer id." },
    Setting { name: "transaction.remove.expired.transaction.cleanup.interval.ms", default: "3600000", doc: "How often each coordinator looks for transactional ids past transactional.id.expiration.ms." },
    Setting { name: "transaction.version", default: "2", doc: "The finalized transaction.version feature (Kafka sets it with kafka-features.sh): ApiVersions advertises it (supported 0-2) with Produce 12, EndTxn 5 and TxnOffsetCommit 5 at 2, so a Kafka 4 client runs transactions on protocol v2 (KIP-890: an epoch bump per transaction, partitions added implicitly by Produce and TxnOffsetCommit); 0 or 1 keeps protocol v1 only (Produce 11, EndTxn 4, TxnOffsetCommit 3), which older clients use at any value." },
    Setting { name: "transaction.marker.delay.ms", default: "0", doc: "TEST ONLY: how long EndTxn waits between persisting PrepareCommit/PrepareAbort and writing the markers, so that a test can kill the broker inside that window. Keep 0 in production. No Kafka equivalent." },
    Setting { name: "request.timeout.ms", default: "30000", doc: "How long one partition of a WriteTxnMarkers request may wait for its marker to be durable (and, in a cluster, in every ISR member) before it is answered REQUEST_TIMED_OUT; the marker may still land." },
    Setting { name: "authorizer.class.name", default: "", doc: "Empty: no authorization (everyone may do everything). org.apache.kafka.metadata.authorizer.StandardAuthorizer: every request is checked against the ACLs in the cluster metadata (CreateAcls, `sluice acls`); any other class is refused at start." },
    Setting { name: "super.users", default: "", doc: "Principals allowed everything whatever the ACLs: User:a;User:b." },
    Setting { name: "allow.everyone.if.no.acl.found", default: "false", doc: "With the authorizer on: whether a resource no ACL names is open to everyone (true) or to super users only (false)." },
    Setting { name: "cluster.id", default: "", doc: "Cluster id; generated and stored in the metadata log when empty. In a cluster, the first registered broker's id becomes everyone's." },
    Setting { name: "process.roles", default: "", doc: "Empty: a single broker, no cluster. `broker,controller` or `broker` (or `controller`): this node joins the cluster of controller.quorum.voters in those roles." },
    Setting { name: "controller.quorum.voters", default: "", doc: "The static controller quorum, ID@IP:PORT,... (e.g. `1@127.0.0.1:19093,2@127.0.0.2:19093,3@127.0.0.3:19093`); a controller's node.id must be listed, a broker-only node's must not." },
    Setting { name: "controller.listener", default: "", doc: "IP:PORT this controller listens on for quorum and broker-registration traffic; empty = its own entry in controller.quorum.voters." },
    Setting { name: "broker.session.timeout.ms", default: "9000", doc: "A broker whose heartbeats stop for this long is fenced: left out of Metadata until it heartbeats again." },
    Setting { name: "broker.heartbeat.interval.ms", default: "2000", doc: "How often a broker heartbeats to the active controller (must be below broker.session.timeout.ms)." },
    Setting { name: "controller.quorum.election.timeout.ms", default: "1000", doc: "A controller that hears no leader for between this and twice this starts an election; the leader heartbeats at a quarter of it." },
    Setting { name: "controller.quorum.request.timeout.ms", default: "2000", doc: "Timeout of one controller RPC (connect included); a broker then tries the next voter." },
    Setting { name: "controller.quorum.frame.bytes.max", default: "67108864", doc: "Largest frame a controller connection sends or accepts; a larger one closes the connection." },
    Setting { name: "default.replication.factor", default: "1", doc: "In a cluster: replicas per partition of an auto-created topic, or of a CreateTopics request with -1 (at most the unfenced brokers)." },
    Setting { name: "min.insync.replicas", default: "1", doc: "An acks=all produce to a partition whose ISR has fewer members gets NOT_ENOUGH_REPLICAS (19) before anything is appended, or NOT_ENOUGH_REPLICAS_AFTER_APPEND (20) if the ISR shrank below it while waiting (topic: min.insync.replicas)." },
    Setting { name: "offsets.topic.replication.factor", default: "3", doc: "In a cluster: replicas of each __consumer_offsets partition. The topic is created on the first FindCoordinator only once this many brokers are unfenced (COORDINATOR_NOT_AVAILABLE until then, which clients retry); its min.insync.replicas is the broker's." },
    Setting { name: "transaction.state.log.replication.factor", default: "3", doc: "In a cluster: replicas of each __transaction_state partition. The topic is created on the first FindCoordinator for a transactional id with this many replicas, capped at the brokers then unfenced; a transactional id's coordinator is the leader of its state partition." },
    Setting { name: "transaction.coordinator.call.concurrent.retries.max", default: "20", doc: "How often a partition's check with its transaction's coordinator (Produce v12's add, a verification, TxnOffsetCommit v5's add) is retried when the coordinator answers CONCURRENT_TRANSACTIONS, before the client is told to retry." },
    Setting { name: "transaction.coordinator.call.concurrent.retry.ms", default: "5", doc: "The pause between those retries." },
    Setting { name: "transaction.coordinator.call.relocate.retries.max", default: "4", doc: "In a cluster: how often that check finds the coordinator again after it answered NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS or COORDINATOR_NOT_AVAILABLE or could not be reached." },
    Setting { name: "transaction.coordinator.call.relocate.retry.ms", default: "50", doc: "The pause before the first of those retries, doubled at each." },
    Setting { name: "transaction.state.log.min.isr", default: "2", doc: "In a cluster: the min.insync.replicas of __transaction_state. A coordinator's state change is acted on only once every ISR member has it durable and the ISR has at least this many members (else the client gets COORDINATOR_NOT_AVAILABLE and retries)." },
    Setting { name: "offsets.commit.timeout.ms", default: "5000", doc: "In a cluster: how long an offset commit or group metadata append waits for the offsets partition's high watermark (every ISR member durable) before the client is answered COORDINATOR_NOT_AVAILABLE." },
    Setting { name: "replica.lag.time.max.ms", default: "30000", doc: "A follower that has not caught up to its leader's log end for this long leaves the ISR (the leader asks the controller); it rejoins once it reaches the high watermark." },
    Setting { name: "replica.fetch.max.bytes", default: "1048576", doc: "Record bytes a follower asks for per partition in one fetch from its leader (the first batch comes whole even when larger)." },
    Setting { name: "replica.fetch.wait.max.ms", default: "500", doc: "How long a leader may hold a follower's fetch waiting for new data (below replica.lag.time.max.ms, so an idle follower stays in the ISR)." },
    Setting { name: "replica.high.watermark.checkpoint.interval.ms", default: "5000", doc: "How often each replica of a replicated partition writes its high watermark to the partition's replication-offset-checkpoint (when it moved), and a clean shutdown writes it once more: a restarted replica opens no higher than it, so it never serves records the ISR had not committed." },
    Setting { name: "replica.fetch.backoff.ms", default: "1000", doc: "A follower waits this long before fetching again after its fetch from the leader failed." },
    Setting { name: "unclean.leader.election.enable", default: "false", doc: "Broker default (a topic's config overrides it): whether the active controller gives a partition whose whole ISR is fenced a leader from its other live replicas, which may lose acknowledged records. Off: the partition stays offline until an ISR member returns." },
    Setting { name: "controlled.shutdown.enable", default: "true", doc: "In a cluster, a stopping broker first asks the controller to fence it, so its partitions get other leaders before it stops serving (Kafka's controlled shutdown)." },
    Setting { name: "controlled.shutdown.timeout.ms", default: "10000", doc: "How long a stopping broker waits for the controller to fence it before it stops anyway (without a quorum it never comes)." },
    Setting { name: "shutdown.drain.timeout.ms", default: "5000", doc: "How long each shard of a stopping broker waits for the requests it is handling to be answered before it closes its storage; new requests other than Fetch close their connection meanwhile." },
    Setting { name: "auto.leader.rebalance.enable", default: "true", doc: "Whether the active controller moves a partition's leadership back to its preferred (first) replica once that replica is live and in the ISR, checked every fencing round." },
    Setting { name: "controller.quorum.snapshot.entries.between", default: "10000", doc: "The controller snapshots its metadata state after this many raft log entries and purges the log before the snapshot." },
    Setting { name: "quota.window.num", default: "11", doc: "Samples of the windowed rate client quotas are measured with (Kafka's); a rate is measured over at least this many minus one windows." },
    Setting { name: "quota.window.size.seconds", default: "1", doc: "Span of one quota sample (Kafka's)." },
    Setting { name: "quota.entities.max", default: "10000", doc: "Quota entities (user/client-id combinations with a quota) measured at once, per shard; above it the least recently active one is forgotten (its rate restarts). Entities idle for an hour are dropped, as Kafka does. No Kafka setting." },
    Setting { name: "quota.metrics.entities.max", default: "100", doc: "Entities /metrics shows per quota type (the most recently active), so per-entity metrics stay bounded. No Kafka setting." },
    Setting { name: "quota.shard.sync.interval.ms", default: "100", doc: "How often each shard tells the others what it measured for quota entities, so every shard throttles on the broker-wide rate with no lock (a shard sees the others' traffic at most this late). No Kafka setting." },
    Setting { name: "sasl.enabled.mechanisms", default: "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512", doc: "Mechanisms a SASL_PLAINTEXT or SASL_SSL listener offers: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (Kafka's default, GSSAPI, is not served). Every mechanism checks the same user store, the SCRAM credentials in the cluster metadata: PLAIN derives the given password with the stored salt and iterations and compares." },
    Setting { name: "connections.max.reauth.ms", default: "0", doc: "A SASL session's lifetime (KIP-368), told to clients in SaslAuthenticate v1+; a connection that has not re-authenticated by then is closed at its next request. 0 = sessions never expire." },
    Setting { name: "connection.failed.authentication.delay.ms", default: "100", doc: "A failed SASL login is answered (SASL_AUTHENTICATION_FAILED) and its connection closed only after this delay, which rate-limits password guessing." },
];

/// The settings as the Markdown table the README carries (`--print-config-reference`).
pub fn reference_table() -> String {
    let mut table = String::from("| setting | default | meaning |\n|---|---|---|\n");
    for setting in SETTINGS {
        table.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            setting.name, setting.default, setting.doc
        ));
    }
    table
}

/// Topic-level config names Sluice understands, with the broker setting that gives the default.
pub const TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    ("retention.ms", "log.retention.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("max.message.bytes", "message.max.bytes"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("cleanup.policy", "log.cleanup.policy"),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
    ),
    ("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms"),
    ("max.compaction.lag.ms", "log.cleaner.max.compaction.lag.ms"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// A configuration problem, reported before the broker starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key no setting has.
    #[error("unknown setting '{0}' (see `sluice serve --print-config-reference` for the list)")]
    UnknownKey(String),
    /// An assignment or value that cannot be read at all.
    #[error("setting '{key}': {message}")]
    BadValue {
        /// the key
        key: String,
        /// why
        message: String,
    },
    /// A value that does not parse or is out of range.
    #[error("setting '{key}': invalid value '{value}'; allowed: {allowed}")]
    Invalid {
        /// the key
        key: String,
        /// the value given
        value: String,
        /// what the setting accepts
        allowed: String,
    },
    /// Values that are each valid but contradict each other.
    #[error("settings {keys}: {message}")]
    Conflict {
        /// the keys involved, e.g. "'a' and 'b'"
        keys: String,
        /// the rule broken, with the values
        message: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// the file
        path: PathBuf,
        /// why
        message: String,
        /// the OS error, when reading failed
        #[source]
        source: Option<std::io::Error>,
    },
    /// Every problem found, so one start attempt reports all of them.
    #[error("{} configuration errors:\n{}", .0.len(), list(.0))]
    Several(Vec<ConfigError>),
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// One error as itself, several as [`ConfigError::Several`]; None when there are none.
    fn from_all(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Several(errors)),
        }
    }

    /// The individual problems, owned (one, or each of [`ConfigError::Several`]).
    fn into_problems(self) -> Vec<ConfigError> {
        match self {
            ConfigError::Several(all) => all,
            one => vec![one],
        }
    }

    /// The individual problems (one, or each of [`ConfigError::Several`]).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(all) => all.iter().collect(),
            one => vec![one],
        }
    }
}

/// Aliases used by the command line and the TOML file for the Kafka names.
const ALIASES: &[(&str, &str)] = &[
    ("data-dir", "log.dirs"),
    ("listen", "listeners"),
    ("advertised-listener", "advertised.listeners"),
    ("admin-listen", "admin.listen"),
    ("shards", "num.shards"),
];

fn canonical(key: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map(|(_, name)| *name)
        .unwrap_or(key)
}

/// Raw settings by Kafka name, defaults filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        let values = SETTINGS
            .iter()
            .map(|s| (s.name.to_string(), s.default.to_string()))
            .collect();
        Self { values }
    }
}

impl Settings {
    /// Sets `key` (Kafka name or alias) to `value`; unknown keys are an error.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let key = canonical(key.trim());
        if !SETTINGS.iter().any(|s| s.name == key)
            && !crate::security::tls::config::is_listener_override(key)
            && !crate::security::inter_broker::is_listener_jaas(key)
        {
            return Err(ConfigError::UnknownKey(key.to_string()));
        }
        self.values
            .insert(key.to_string(), value.trim().to_string());
        Ok(())
    }

    /// Applies a `key=value` override.
    pub fn apply_override(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ConfigError::BadValue {
                key: assignment.to_string(),
                message: "expected key=value".into(),
            })?;
        self.set(key, value)
    }

    /// Loads a TOML file: keys are Kafka names (dotted keys nest in TOML and are flattened
    /// back) or the command-line names (`data-dir`, `listen`, ...). Every unknown key is
    /// reported, not only the first.
    pub fn load_toml(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
            source: Some(e),
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
                source: None,
            })?;
        let mut flat = Vec::new();
        flatten("", &toml::Value::Table(table), &mut flat);
        let errors = flat
            .into_iter()
            .filter_map(|(key, value)| self.set(&key, &value).err())
            .collect();
        ConfigError::from_all(errors).map_or(Ok(()), Err)
    }

    /// The raw value.
    pub fn raw(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Builds the broker configuration from a config file, `--override key=value` assignments and
/// the dedicated flags (in that precedence), then validates every value. Reports every
/// problem found in one error rather than stopping at the first.
pub fn load(
    config_file: Option<&Path>,
    overrides: &[String],
    flags: &[(&str, Option<String>)],
) -> Result<BrokerConfig, ConfigError> {
    let mut settings = Settings::default();
    let mut errors = Vec::new();
    if let Some(path) = config_file {
        if let Err(error) = settings.load_toml(path) {
            errors.extend(error.into_problems());
        }
    }
    for assignment in overrides {
        if let Err(error) = settings.apply_override(assignment) {
            errors.push(error);
        }
    }
    for (key, value) in flags {
        if let Some(value) = value {
            if let Err(error) = settings.set(key, value) {
                errors.push(error);
            }
        }
    }
    match (
        BrokerConfig::checked(settings),
        ConfigError::from_all(errors),
    ) {
        (Ok(config), None) => Ok(config),
        (Ok(_), Some(earlier)) => Err(earlier),
        (Err(invalid), None) => Err(invalid),
        (Err(invalid), Some(earlier)) => {
            let mut all = earlier.into_problems();
            all.extend(invalid.into_problems());
            Err(ConfigError::Several(all))
        }
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Typed broker configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// All settings (for DescribeConfigs).
    pub settings: Settings,
    /// Data directory.
    pub data_dir: PathBuf,
    /// The inter-broker listener's bind address (see `listeners` for all of them).
    pub listen: SocketAddr,
    /// Every listener (`listeners`, `listener.security.protocol.map`, `advertised.listeners`).
    pub listeners: crate::security::listener::Listeners,
    /// The inter-broker listener's advertised host (what this broker registers in a cluster).
    pub advertised_host: String,
    /// The inter-broker listener's advertised port.
    pub advertised_port: i32,
    /// Admin HTTP listener (None = disabled).
    pub admin_listen: Option<SocketAddr>,
    /// Shard count (resolved: never 0).
    pub shards: usize,
    /// This broker's node id.
    pub node_id: i32,
    /// Default partitions.
    pub num_partitions: i32,
    /// `max.broker.partitions`: partitions this broker holds at most.
    pub partitions_max: i32,
    /// Auto-create on Metadata.
    pub auto_create_topics: bool,
    /// Request frame limit.
    pub request_bytes_max: usize,
    /// Connections limit.
    pub connections_max: usize,
    /// `socket.send.buffer.bytes`: SO_SNDBUF of accepted connections; None keeps the kernel's.
    pub socket_send_buffer_bytes: Option<usize>,
    /// `socket.receive.buffer.bytes`: SO_RCVBUF of the listening sockets; None keeps the
    /// kernel's.
    pub socket_receive_buffer_bytes: Option<usize>,
    /// `socket.listen.backlog.size`: each listening socket's accept backlog.
    pub listen_backlog: i32,
    /// How replica fetchers and marker senders secure their connections to other brokers
    /// (the inter-broker listener's TLS and SASL login); None: PLAINTEXT or no cluster.
    pub inter_broker_security: Option<Arc<sluice_client::Security>>,
    /// `controlled.shutdown.enable`: in a cluster, be fenced before stopping.
    pub controlled_shutdown_enable: bool,
    /// `controlled.shutdown.timeout.ms`: the longest wait for that fencing.
    pub controlled_shutdown_timeout_ms: u64,
    /// `shutdown.drain.timeout.ms`: the longest wait for requests in hand at shutdown.
    pub shutdown_drain_timeout_ms: u64,
    /// Pipelining depth per connection.
    pub inflight_requests_max: usize,
    /// `queued.max.request.bytes`: request bytes read and not yet answered, broker-wide.
    pub queued_request_bytes_max: usize,
    /// `connections.max.idle.ms`.
    pub connection_idle_ms_max: u64,
    /// `max.connections.per.ip` and its overrides.
    pub connections_per_ip: crate::admission::PerIpLimits,
    /// `fetch.max.bytes`: cap on a Fetch response's record bytes.
    pub fetch_bytes_max: u32,
    /// `shard.inbox.jobs.max`: depth of each shard's inbox.
    pub inbox_jobs_max: usize,
    /// `log.append.queue.bytes.max`: writer queue budget per shard.
    pub append_queue_bytes_max: usize,
    /// `log.flush.syncing.commits.max`: group commits awaiting fdatasyncs per shard.
    pub syncing_commits_max: usize,
    /// `log.flush.writing.commits.max`: group commits with writes in flight per shard.
    pub writing_commits_max: usize,
    /// `log.flush.write.dsync`: RWF_DSYNC group-commit writes instead of write + fdatasync.
    pub dsync_writes: bool,
    /// `log.tail.cache.huge.pages`: the tail cache's chunks ask for transparent huge pages.
    pub tail_cache_huge_pages: bool,
    /// `log.blocking.jobs.max`: blocking-pool jobs per shard running at once.
    pub blocking_jobs_max: usize,
    /// Retention check period.
    pub retention_check_interval_ms: u64,
    /// `log.cleaner.enable`: a cleaner task per shard.
    pub cleaner_enable: bool,
    /// `log.cleaner.backoff.ms`: how often a shard's cleaner looks for due partitions.
    pub cleaner_backoff_ms: u64,
    /// The cleaner's shard-wide settings (`log.cleaner.*`).
    pub cleaner: CleanerConfig,
    /// Zero-copy fetch path.
    pub fetch_zero_copy: bool,
    /// Cap on max_wait_ms.
    pub fetch_wait_ms_max: u64,
    /// `max.incremental.fetch.session.cache.slots`: fetch sessions per broker.
    pub fetch_session_slots: usize,
    /// `fetch.session.eviction.ms`: idle time after which a session may be evicted.
    pub fetch_session_eviction_ms: u64,
    /// `quota.*`: client quota measurement.
    pub quotas: crate::security::quota::QuotaSettings,
    /// Default log settings for topics.
    pub log_defaults: LogConfig,
    /// O_DIRECT.
    pub direct_io: bool,
    /// Tail cache bytes per shard.
    pub tail_cache_bytes: usize,
    /// `log.tail.cache.memory.reserve.bytes`: memory the tail caches leave to the rest of the
    /// machine (0: never give memory back).
    pub tail_cache_memory_reserve_bytes: u64,
    /// `log.tail.cache.memory.check.interval.ms` (0: never).
    pub tail_cache_memory_check_interval_ms: u64,
    /// `fetch.response.cache.bytes.max`: tail-cache bytes per shard that responses not yet
    /// written may hold (`log.tail.cache.bytes` when not set).
    pub response_cache_bytes_max: usize,
    /// Group commit cap.
    pub group_commit_bytes_max: usize,
    /// Storage ring size.
    pub ring_entries: u32,
    /// The consumer-group coordinator's settings (`group.*`, `offsets.*`).
    pub groups: sluice_group::GroupConfig,
    /// `producer.id.expiration.ms`: idle time after which a producer's state is dropped.
    pub producer_id_expiration_ms: u64,
    /// `producer.id.expiration.check.interval.ms`.
    pub producer_id_expiration_check_interval_ms: u64,
    /// `producer.states.per.partition.max`.
    pub producer_states_per_partition_max: usize,
    /// The cluster this node joins (`process.roles` set); None: a single broker.
    pub cluster: Option<sluice_cluster::ClusterSettings>,
    /// Partition replication's settings (`replica.*`, `min.insync.replicas`, ...).
    pub replication: ReplicationConfig,
    /// The transaction coordinator's settings (`transaction.*`).
    pub transactions: crate::txn::TxnConfig,
    /// SASL listeners' settings (`sasl.enabled.mechanisms`, `connections.max.reauth.ms`, ...).
    pub sasl: crate::security::sasl::SaslConfig,
    /// The authorizer (`authorizer.class.name` set); None: every request is allowed.
    pub authorizer: Option<std::sync::Arc<crate::security::acl::Authorizer>>,
}

/// Partition replication's settings, Kafka's names in comments.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// `default.replication.factor`
    pub default_replication_factor: i32,
    /// `min.insync.replicas` (the broker default; topics override it)
    pub min_insync_replicas: i32,
    /// `replica.lag.time.max.ms`
    pub lag_time_ms_max: u64,
    /// `replica.fetch.max.bytes`
    pub fetch_bytes_max: i32,
    /// `replica.fetch.wait.max.ms`
    pub fetch_wait_ms_max: i32,
    /// `replica.fetch.backoff.ms`
    pub fetch_backoff_ms: u64,
    /// `offsets.topic.replication.factor`
    pub offsets_topic_replication_factor: i16,
    /// `offsets.commit.timeout.ms`
    pub offsets_commit_timeout_ms: u64,
    /// `replica.high.watermark.checkpoint.interval.ms`
    pub high_watermark_checkpoint_interval_ms: u64,
}

/// Largest value of a Kafka `int` setting.
const INT_MAX: i64 = i32::MAX as i64;

impl BrokerConfig {
    /// Each shard's share of `max.incremental.fetch.session.cache.slots` (rounded up, so the
    /// broker-wide figure is never cut to 0 by many shards).
    pub fn fetch_session_slots_per_shard(&self, shards: usize) -> usize {
        self.fetch_session_slots.div_ceil(shards.max(1))
    }

    /// Validates and types `settings`; every problem found is reported (see [`load`]).
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        Self::checked(settings)
    }

    /// Parses and range-checks every setting and the rules between them.
    fn checked(settings: Settings) -> Result<Self, ConfigError> {
        let mut check = Check::new(&settings);
        let c = &mut check;
        let data_dir = PathBuf::from(c.non_empty("log.dirs"));
        let listeners = listener_config::read(c, &settings);
        let admin_listen = c.optional_socket_addr("admin.listen");
        let shards: usize = c.int("num.shards", 0..=SHARDS_MAX);
        let log_defaults = read_log_config(c, |broker_name| broker_name);
        let request_bytes_max: usize = c.int("socket.request.max.bytes", 1..=INT_MAX);
        let mut groups = sluice_group::GroupConfig::new(data_dir.clone());
        groups.initial_rebalance_delay_ms = c.int("group.initial.rebalance.delay.ms", 0..=INT_MAX);
        groups.session_timeout_ms_min = c.int("group.min.session.timeout.ms", 1..=INT_MAX);
        groups.session_timeout_ms_max = c.int("group.max.session.timeout.ms", 1..=INT_MAX);
        groups.max_group_size = c.int("group.max.size", 1..=INT_MAX);
        groups.offsets_retention_minutes = c.int("offsets.retention.minutes", 1..=INT_MAX);
        groups.offsets_retention_check_interval_ms =
            c.int("offsets.retention.check.interval.ms", 1..=INT_MAX);
        groups.offset_metadata_max_bytes = c.int("offset.metadata.max.bytes", 0..=INT_MAX);
        groups.offsets_snapshot_interval_ms = c.int("offsets.snapshot.interval.ms", 1..=INT_MAX);
        // Kafka's -1 (unbounded) for queued.max.request.bytes is refused: an unbounded request
        // queue is what lets slow clients exhaust memory.
        let queued_request_bytes_max: usize = c.int("queued.max.request.bytes", 1..=i64::MAX);
        let memory_limit_bytes = crate::memory_limit::limit_bytes();
        let tail_cache_bytes: usize = c
            .optional_int("log.tail.cache.bytes", 0..=i64::MAX)
            .unwrap_or_else(|| tail_cache_auto_bytes(memory_limit_bytes, resolved_shards(shards)));
        let response_cache_bytes_max: Option<usize> =
            c.optional_int("fetch.response.cache.bytes.max", 0..=i64::MAX);
        let tail_cache_memory_reserve_bytes: u64 = c
            .optional_int("log.tail.cache.memory.reserve.bytes", 0..=i64::MAX)
            .unwrap_or_else(|| memory_limit_bytes.map_or(0, |bytes| bytes / 10));
        let per_ip_max: usize = c.int("max.connections.per.ip", 0..=INT_MAX);
        let connections_per_ip =
            c.per_ip_limits("max.connections.per.ip.overrides", per_ip_max, 0..=INT_MAX);
        let mut config = Self {
            authorizer: None,
            queued_request_bytes_max,
            connection_idle_ms_max: c.int("connections.max.idle.ms", 1..=i64::MAX),
            connections_per_ip: connections_per_ip
                .unwrap_or_else(crate::admission::PerIpLimits::unlimited),
            fetch_bytes_max: c.int("fetch.max.bytes", 1024..=INT_MAX),
            inbox_jobs_max: c.int("shard.inbox.jobs.max", 1..=INT_MAX),
            append_queue_bytes_max: c.int("log.append.queue.bytes.max", 1..=i64::MAX),
            syncing_commits_max: c.int("log.flush.syncing.commits.max", 1..=1024),
            writing_commits_max: c.int("log.flush.writing.commits.max", 1..=64),
            dsync_writes: c.boolean("log.flush.write.dsync"),
            tail_cache_huge_pages: c.boolean("log.tail.cache.huge.pages"),
            blocking_jobs_max: c.int("log.blocking.jobs.max", 1..=4096),
            data_dir,
            listen: listeners.as_ref().map_or_else(
                || SocketAddr::from(([127, 0, 0, 1], 0)),
                |l| l.inter_broker().bind,
            ),
            listeners: crate::security::listener::Listeners {
                all: Vec::new(),
                inter_broker: 0,
                tls_reload_interval_ms: 0,
            },
            advertised_host: String::new(),
            advertised_port: 0,
            admin_listen,
            shards,
            node_id: c.int("node.id", 0..=INT_MAX),
            num_partitions: c.int("num.partitions", 1..=INT_MAX),
            partitions_max: c.int("max.broker.partitions", 1..=INT_MAX),
            auto_create_topics: c.boolean("auto.create.topics.enable"),
            request_bytes_max,
            connections_max: c.int("max.connections", 1..=INT_MAX),
            socket_send_buffer_bytes: socket_buffer_bytes(c, "socket.send.buffer.bytes"),
            socket_receive_buffer_bytes: socket_buffer_bytes(c, "socket.receive.buffer.bytes"),
            listen_backlog: c.int("socket.listen.backlog.size", 1..=INT_MAX),
            inter_broker_security: None,
            controlled_shutdown_enable: c.boolean("controlled.shutdown.enable"),
            controlled_shutdown_timeout_ms: c.int("controlled.shutdown.timeout.ms", 0..=INT_MAX),
            shutdown_drain_timeout_ms: c.int("shutdown.drain.timeout.ms", 0..=INT_MAX),
            inflight_requests_max: c.int("queued.max.requests", 1..=INT_MAX),
            retention_check_interval_ms: c.int("log.retention.check.interval.ms", 1..=i64::MAX),
            cleaner_enable: c.boolean("log.cleaner.enable"),
            cleaner_backoff_ms: c.int("log.cleaner.backoff.ms", 1..=i64::MAX),
            cleaner: CleanerConfig {
                io_bytes_per_second_max: c
                    .optional_int("log.cleaner.io.max.bytes.per.second", 1..=i64::MAX),
                dedupe_buffer_bytes: c.int("log.cleaner.dedupe.buffer.size", 1024..=i64::MAX),
                decompressed_batch_bytes_max: c
                    .int("log.cleaner.decompressed.batch.bytes.max", 1024..=INT_MAX),
                workers: sluice_storage::CleanerWorkers::new(
                    c.int("log.cleaner.threads", 1..=64),
                    c.int("log.cleaner.thread.nice", -20..=19),
                ),
            },
            fetch_zero_copy: c.boolean("fetch.zero.copy"),
            fetch_wait_ms_max: c.int("fetch.max.wait.ms.max", 0..=INT_MAX),
            fetch_session_slots: c.int("max.incremental.fetch.session.cache.slots", 0..=INT_MAX),
            fetch_session_eviction_ms: c.int("fetch.session.eviction.ms", 0..=INT_MAX),
            quotas: crate::security::quota::QuotaSettings {
                windows: crate::security::quota::rate::Windows {
                    count: c.int("quota.window.num", 2..=1000),
                    window_ms: c.int::<u64>("quota.window.size.seconds", 1..=3600) * 1000,
                },
                entities_max: c.int("quota.entities.max", 1..=INT_MAX),
                metrics_entities_max: c.int("quota.metrics.entities.max", 0..=INT_MAX),
                shard_sync_interval_ms: c.int("quota.shard.sync.interval.ms", 1..=60_000),
            },
            direct_io: c.boolean("log.direct.io"),
            tail_cache_bytes,
            tail_cache_memory_reserve_bytes,
            tail_cache_memory_check_interval_ms: c
                .int("log.tail.cache.memory.check.interval.ms", 0..=i64::MAX),
            response_cache_bytes_max: response_cache_bytes_max
                .unwrap_or(tail_cache_bytes.min(RESPONSE_CACHE_DEFAULT_MAX_BYTES)),
            group_commit_bytes_max: c.int("log.flush.batch.bytes", 1..=INT_MAX),
            ring_entries: c.int("io.uring.entries", 1..=RING_ENTRIES_MAX),
            producer_id_expiration_ms: c.int("producer.id.expiration.ms", 1..=INT_MAX),
            producer_id_expiration_check_interval_ms: c
                .int("producer.id.expiration.check.interval.ms", 1..=INT_MAX),
            producer_states_per_partition_max: c
                .int("producer.states.per.partition.max", 1..=INT_MAX),
            transactions: crate::txn::TxnConfig {
                timeout_ms_max: c.int("transaction.max.timeout.ms", 1..=INT_MAX),
                state_partitions: c.int("transaction.state.log.num.partitions", 1..=INT_MAX),
                state_segment_bytes: c.int("transaction.state.log.segment.bytes", 1..=INT_MAX),
                abort_check_interval_ms: c.int(
                    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                    1..=INT_MAX,
                ),
                id_expiration_ms: c.int("transactional.id.expiration.ms", 1..=INT_MAX),
                id_expiration_check_interval_ms: c.int(
                    "transaction.remove.expired.transaction.cleanup.interval.ms",
                    1..=INT_MAX,
                ),
                transaction_version: c.int("transaction.version", 0..=2),
                marker_delay_ms: c.int("transaction.marker.delay.ms", 0..=INT_MAX),
                marker_write_timeout_ms: c.int("request.timeout.ms", 1..=INT_MAX),
                state_replication_factor: c.int(
                    "transaction.state.log.replication.factor",
                    1..=i64::from(i16::MAX),
                ),
                state_min_isr: c.int("transaction.state.log.min.isr", 1..=INT_MAX),
                concurrent_retries_max: c.int(
                    "transaction.coordinator.call.concurrent.retries.max",
                    0..=1000,
                ),
                concurrent_retry_ms: c.int(
                    "transaction.coordinator.call.concurrent.retry.ms",
                    0..=60_000,
                ),
                relocate_retries_max: c
                    .int("transaction.coordinator.call.relocate.retries.max", 0..=16),
                relocate_retry_ms: c
                    .int("transaction.coordinator.call.relocate.retry.ms", 0..=60_000),
            },
            sasl: crate::security::sasl::SaslConfig {
                enabled_mechanisms: c
                    .parsed(
                        "sasl.enabled.mechanisms",
                        "a comma-separated list of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
                        |v| crate::security::sasl::config::parse_mechanisms(v).ok(),
                    )
                    .unwrap_or_default(),
                reauth_ms_max: c.int("connections.max.reauth.ms", 0..=i64::MAX),
                failed_authentication_delay_ms: c
                    .int("connection.failed.authentication.delay.ms", 0..=INT_MAX),
            },
            log_defaults,
            groups,
            settings: Settings::default(),
            cluster: None,
            replication: ReplicationConfig {
                default_replication_factor: c.int("default.replication.factor", 1..=INT_MAX),
                min_insync_replicas: c.int("min.insync.replicas", 1..=INT_MAX),
                lag_time_ms_max: c.int("replica.lag.time.max.ms", 1..=INT_MAX),
                fetch_bytes_max: c.int("replica.fetch.max.bytes", 1..=INT_MAX),
                fetch_wait_ms_max: c.int("replica.fetch.wait.max.ms", 0..=INT_MAX),
                fetch_backoff_ms: c.int("replica.fetch.backoff.ms", 0..=INT_MAX),
                offsets_topic_replication_factor: c
                    .int("offsets.topic.replication.factor", 1..=i64::from(i16::MAX)),
                offsets_commit_timeout_ms: c.int("offsets.commit.timeout.ms", 1..=INT_MAX),
                high_watermark_checkpoint_interval_ms: c
                    .int("replica.high.watermark.checkpoint.interval.ms", 1..=INT_MAX),
            },
        };
        let cluster = cluster::read(c, &settings, &config.data_dir);
        if let (Some(_), Some(listeners)) = (&cluster, &listeners) {
            config.inter_broker_security =
                listener_config::inter_broker_security(c, &settings, listeners);
        }
        let allow_if_no_acls = c.boolean("allow.everyone.if.no.acl.found");
        let authorizer = match crate::security::acl::Authorizer::from_settings(
            settings.raw("authorizer.class.name"),
            settings.raw("super.users"),
            allow_if_no_acls,
        ) {
            Ok(authorizer) => authorizer.map(std::sync::Arc::new),
            Err(allowed) => {
                c.errors.push(ConfigError::Invalid {
                    key: "authorizer.class.name, super.users".into(),
                    value: settings.raw("authorizer.class.name").to_string(),
                    allowed,
                });
                None
            }
        };
        c.relation(
            (config.replication.fetch_wait_ms_max as u64) < config.replication.lag_time_ms_max,
            &["replica.fetch.wait.max.ms", "replica.lag.time.max.ms"],
            format!(
                "a follower waiting {} ms for data would fall out of an ISR that allows {} ms",
                config.replication.fetch_wait_ms_max, config.replication.lag_time_ms_max
            ),
        );
        c.relation(
            config.groups.session_timeout_ms_min <= config.groups.session_timeout_ms_max,
            &[
                "group.min.session.timeout.ms",
                "group.max.session.timeout.ms",
            ],
            format!(
                "the minimum session timeout ({} ms) is above the maximum ({} ms)",
                config.groups.session_timeout_ms_min, config.groups.session_timeout_ms_max
            ),
        );
        c.relation(
            usize::try_from(config.log_defaults.max_message_bytes)
                .is_ok_and(|batch_bytes| batch_bytes <= config.request_bytes_max),
            &["message.max.bytes", "socket.request.max.bytes"],
            format!(
                "a {}-byte batch could never arrive in a request of at most {} bytes",
                config.log_defaults.max_message_bytes, config.request_bytes_max
            ),
        );
        if let Some(error) = ConfigError::from_all(check.errors) {
            return Err(error);
        }
        let Some(listeners) = listeners else {
            return Err(ConfigError::BadValue {
                key: "listeners".into(),
                message: "no listener".into(),
            });
        };
        let inter_broker = listeners.inter_broker();
        let (advertised_host, advertised_port) = (
            inter_broker.advertised_host.clone(),
            inter_broker.advertised_port,
        );
        let shards = resolved_shards(config.shards);
        let cluster = cluster.map(|mut cluster| {
            cluster.advertised_host = advertised_host.clone();
            cluster.advertised_port = advertised_port;
            cluster
        });
        Ok(Self {
            cluster,
            listeners,
            authorizer,
            advertised_host,
            advertised_port,
            shards,
            settings,
            ..config
        })
    }

    /// The log config of a topic: broker defaults overlaid with the topic's own configs, read
    /// with the ranges of the broker settings they override (a `segment.ms` of 0 would roll a
    /// segment on every append, as a `log.roll.ms` of 0 would). Unknown or invalid topic configs
    /// are an error (INVALID_CONFIG) naming the first problem.
    pub fn topic_log_config(
        &self,
        configs: &BTreeMap<String, String>,
    ) -> Result<LogConfig, String> {
        let mut values: BTreeMap<String, String> = TOPIC_CONFIGS
            .iter()
            .filter(|(_, broker_key)| !broker_key.is_empty())
            .map(|(topic_key, broker_key)| {
                (
                    topic_key.to_string(),
                    self.settings.raw(broker_key).to_string(),
                )
            })
            .collect();
        for (key, value) in configs {
            match key.as_str() {
                known if values.contains_key(known) => {
                    values.insert(key.clone(), value.clone());
                }
                other => return Err(format!("unknown topic config '{other}'")),
            }
        }
        let merged = Settings { values };
        let mut check = Check::new(&merged);
        let log = read_log_config(&mut check, topic_config_name);
        let _: i32 = check.int("min.insync.replicas", 1..=INT_MAX);
        // Read by the active controller from the committed topic configs (leadership.rs).
        let _: bool = check.boolean("unclean.leader.election.enable");
        match check.errors.into_iter().next() {
            Some(first) => Err(first.to_string()),
            None => Ok(log),
        }
    }

    /// A topic's `min.insync.replicas` (its override, else the broker default).
    pub fn topic_min_insync_replicas(&self, configs: &BTreeMap<String, String>) -> i32 {
        configs
            .get("min.insync.replicas")
            .and_then(|value| value.parse().ok())
            .filter(|value: &i32| *value >= 1)
            .unwrap_or(self.replication.min_insync_replicas)
    }

    /// The effective value of a topic config (topic override or broker default), as text.
    pub fn topic_config_value(
        &self,
        configs: &BTreeMap<String, String>,
        name: &str,
    ) -> Option<(String, bool)> {
        if let Some(value) = configs.get(name) {
            return Some((value.clone(), false));
        }
        let (_, broker_key) = TOPIC_CONFIGS
            .iter()
            .find(|(topic_key, _)| *topic_key == name)?;
        if broker_key.is_empty() {
            return Some(("delete".into(), true));
        }
        let value = self.settings.raw(broker_key);
        Some((
            if value.is_empty() {
                "9223372036854775807".into()
            } else {
                value.to_string()
            },
            true,
        ))
    }
}

/// A socket buffer size: -1 (None) keeps the kernel's autotuned default, as in Kafka; 0 is
/// refused (no buffer is no size; Kafka's Java socket refuses it too).
fn socket_buffer_bytes(c: &mut Check, key: &str) -> Option<usize> {
    c.parsed(
        key,
        "-1 (the kernel's default) or an integer from 1 to 2147483647",
        |raw| match raw.parse::<i64>().ok()? {
            -1 => Some(None),
            bytes @ 1..=INT_MAX => usize::try_from(bytes).ok().map(Some),
            _ => None,
        },
    )
    .flatten()
}

/// Reads the log settings through `c`, each under `name(broker setting)`: the broker name
/// itself for the broker defaults, the topic config name for a topic's overrides, so both are
/// held to the same ranges.
fn read_log_config(c: &mut Check, name: impl Fn(&'static str) -> &'static str) -> LogConfig {
    let timestamp_type = c.one_of(
        name("log.message.timestamp.type"),
        &[
            ("CreateTime", TimestampType::CreateTime),
            ("LogAppendTime", TimestampType::LogAppendTime),
        ],
    );
    LogConfig {
        segment_bytes: c.int(name("log.segment.bytes"), SEGMENT_BYTES_MIN..=INT_MAX),
        segment_ms: c.int(name("log.roll.ms"), 1..=i64::MAX),
        retention_ms: c.int(name("log.retention.ms"), -1..=i64::MAX),
        retention_bytes: c.int(name("log.retention.bytes"), -1..=i64::MAX),
        max_message_bytes: c.int(name("message.max.bytes"), BATCH_BYTES_MIN..=INT_MAX),
        index_interval_bytes: c.int(name("log.index.interval.bytes"), 0..=INT_MAX),
        flush_messages: c.optional_int(name("log.flush.interval.messages"), 1..=i64::MAX),
        flush_ms: c.optional_int(name("log.flush.interval.ms"), 0..=i64::MAX),
        timestamp_type: timestamp_type.unwrap_or(TimestampType::CreateTime),
        cleanup_policy: c
            .parsed(
                name("log.cleanup.policy"),
                "delete, compact or compact,delete",
                CleanupPolicy::parse,
            )
            .unwrap_or(CleanupPolicy::DELETE),
        min_cleanable_dirty_ratio: c
            .parsed(
                name("log.cleaner.min.cleanable.ratio"),
                "a number from 0.0 to 1.0",
                |raw| raw.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)),
            )
            .unwrap_or(0.5),
        min_compaction_lag_ms: c.int(name("log.cleaner.min.compaction.lag.ms"), 0..=i64::MAX),
        max_compaction_lag_ms: c.int(name("log.cleaner.max.compaction.lag.ms"), 1..=i64::MAX),
        delete_retention_ms: c.int(name("log.cleaner.delete.retention.ms"), 0..=i64::MAX),
    }
}

/// The topic config that overrides broker setting `broker_name` (every one
/// [`read_log_config`] reads has one in [`TOPIC_CONFIGS`]).
fn topic_config_name(broker_name: &'static str) -> &'static str {
    TOPIC_CONFIGS
        .iter()
        .find(|(_, broker_key)| *broker_key == broker_name)
        .map_or(broker_name, |(topic_key, _)| topic_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_aliases_and_unknown_keys() {
        let mut settings = Settings::default();
        settings.apply_override("num.partitions=3").unwrap();
        settings.apply_override("data-dir=/tmp/x").unwrap();
        assert!(matches!(
            settings.apply_override("num.partitionz=3"),
            Err(ConfigError::UnknownKey(_))
        ));
        let config = BrokerConfig::from_settings(settings).unwrap();
        assert_eq!(config.num_partitions, 3);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.listen.port(), 9092);
        assert_eq!(config.log_defaults.max_message_bytes, 1_048_588);
        assert!(config.shards >= 1);
    }

    #[test]
    fn toml_dotted_keys_flatten_to_kafka_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:19092\"\nlog.retention.ms = 1000\n\"auto.create.topics.enable\" = false\n").unwrap();
        let mut settings = Settings::default();
        settings.load_toml(&path).unwrap();
        let config = BrokerConfig::from_settings(settings).unwrap();
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.log_defaults.retention_ms, 1000);
        assert!(!config.auto_create_topics);
    }

    /// The problems `load` reports for these overrides, rendered one per line.
    fn problems(overrides: &[&str]) -> Vec<String> {
        let overrides: Vec<String> = overrides.iter().map(|o| o.to_string()).collect();
        match load(None, &overrides, &[]) {
            Ok(_) => Vec::new(),
            Err(error) => error.problems().iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn socket_settings_keep_the_kernels_defaults_unless_set() {
        let config = BrokerConfig::from_settings(Settings::default()).unwrap();
        assert_eq!(config.socket_send_buffer_bytes, None);
        assert_eq!(config.socket_receive_buffer_bytes, None);
        assert_eq!(config.listen_backlog, 1024);
        let overrides = [
            "socket.send.buffer.bytes=102400".to_string(),
            "socket.receive.buffer.bytes=65536".to_string(),
            "socket.listen.backlog.size=50".to_string(),
        ];
        let config = load(None, &overrides, &[]).unwrap();
        assert_eq!(config.socket_send_buffer_bytes, Some(102_400));
        assert_eq!(config.socket_receive_buffer_bytes, Some(65_536));
        assert_eq!(config.listen_backlog, 50);
        assert_eq!(
            problems(&["socket.send.buffer.bytes=0", "socket.receive.buffer.bytes=-2"]),
            [
                "setting 'socket.send.buffer.bytes': invalid value '0'; allowed: -1 (the kernel's default) or an integer from 1 to 2147483647",
                "setting 'socket.receive.buffer.bytes': invalid value '-2'; allowed: -1 (the kernel's default) or an integer from 1 to 2147483647",
            ]
        );
        assert_eq!(
            problems(&["socket.listen.backlog.size=0"]),
            ["setting 'socket.listen.backlog.size': invalid value '0'; allowed: an integer from 1 to 2147483647"]
        );
    }

    #[test]
    fn defaults_are_valid_and_typed() {
        let config = BrokerConfig::from_settings(Settings::default()).unwrap();
        assert_eq!(config.groups.session_timeout_ms_min, 6_000);
        assert_eq!(config.groups.session_timeout_ms_max, 1_800_000);
        assert_eq!(config.groups.max_group_size, i32::MAX as usize);
        assert_eq!(config.groups.offsets_retention_minutes, 10_080);
        assert_eq!(config.groups.offsets_retention_check_interval_ms, 600_000);
        assert_eq!(config.producer_id_expiration_ms, 86_400_000);
        assert_eq!(config.producer_states_per_partition_max, 10_000);
        let config = BrokerConfig::from_settings({
            let mut settings = Settings::default();
            settings.set("group.max.size", "250").unwrap();
            settings.set("offsets.retention.minutes", "1").unwrap();
            settings.set("auto.create.topics.enable", "FALSE").unwrap();
            settings
        })
        .unwrap();
        assert_eq!(config.groups.max_group_size, 250);
        assert_eq!(config.groups.offsets_retention_minutes, 1);
        assert!(!config.auto_create_topics);
    }

    #[test]
    fn the_tail_cache_defaults_to_half_the_memory_split_over_the_shards() {
        assert_eq!(tail_cache_auto_bytes(Some(24 << 30), 2), 6 << 30);
        assert_eq!(
            tail_cache_auto_bytes(Some(24 << 30), 0),
            12 << 30,
            "never divides by 0"
        );
        assert_eq!(tail_cache_auto_bytes(None, 2), 64 << 20, "nothing known");
        let overrides = vec!["num.shards=3".to_string()];
        let config = load(None, &overrides, &[]).unwrap();
        let expected =
            crate::memory_limit::limit_bytes().map_or(64 << 20, |bytes| (bytes / 2 / 3) as usize);
        assert_eq!(config.tail_cache_bytes, expected);
        assert_eq!(
            config.tail_cache_memory_reserve_bytes,
            crate::memory_limit::limit_bytes().map_or(0, |bytes| bytes / 10),
            "a tenth of the memory is left to the rest of the machine"
        );
        assert_eq!(config.tail_cache_memory_check_interval_ms, 1000);
        let overrides = vec![
            "log.tail.cache.memory.reserve.bytes=0".to_string(),
            "log.tail.cache.memory.check.interval.ms=250".to_string(),
        ];
        let config = load(None, &overrides, &[]).unwrap();
        assert_eq!(config.tail_cache_memory_reserve_bytes, 0);
        assert_eq!(config.tail_cache_memory_check_interval_ms, 250);
        let overrides = vec!["log.tail.cache.memory.reserve.bytes=-1".to_string()];
        assert!(load(None, &overrides, &[]).is_err(), "negative refused");
    }

    #[test]
    fn the_response_cache_budget_defaults_to_the_tail_cache_and_is_range_checked() {
        let config = |overrides: &[&str]| {
            let overrides: Vec<String> = overrides.iter().map(|o| o.to_string()).collect();
            load(None, &overrides, &[]).map(|c| (c.tail_cache_bytes, c.response_cache_bytes_max))
        };
        assert_eq!(
            config(&["log.tail.cache.bytes=1000"]).ok(),
            Some((1000, 1000)),
            "empty: as much as the tail cache"
        );
        assert_eq!(
            config(&["log.tail.cache.bytes=1073741824"]).ok(),
            Some((1 << 30, 256 << 20)),
            "empty: at most 256 MiB"
        );
        assert_eq!(
            config(&[
                "log.tail.cache.bytes=1000",
                "fetch.response.cache.bytes.max=0"
            ])
            .ok(),
            Some((1000, 0)),
            "0: tail data always from the files"
        );
        assert_eq!(
            problems(&["fetch.response.cache.bytes.max=-1"]),
            ["setting 'fetch.response.cache.bytes.max': invalid value '-1'; allowed: empty (not set) or an integer >= 0"]
        );
    }

    #[test]
    fn a_malformed_group_setting_is_an_error_not_a_default() {
        assert_eq!(
            problems(&["group.max.size=lots"]),
            ["setting 'group.max.size': invalid value 'lots'; allowed: an integer from 1 to 2147483647"]
        );
        assert_eq!(
            problems(&["offsets.retention.minutes=0"]),
            ["setting 'offsets.retention.minutes': invalid value '0'; allowed: an integer from 1 to 2147483647"]
        );
    }

    #[test]
    fn a_value_too_big_for_its_type_is_out_of_range_not_truncated() {
        // 4294967296 + 6000 truncated `as i32` would have been 6000.
        assert_eq!(
            problems(&["group.min.session.timeout.ms=4294973296"]),
            ["setting 'group.min.session.timeout.ms': invalid value '4294973296'; allowed: an integer from 1 to 2147483647"]
        );
        assert_eq!(problems(&["num.shards=99999999999999999999"]).len(), 1);
    }

    #[test]
    fn booleans_choices_and_addresses_name_what_is_allowed() {
        assert_eq!(
            problems(&["log.direct.io=yes"]),
            ["setting 'log.direct.io': invalid value 'yes'; allowed: true or false"]
        );
        assert_eq!(
            problems(&["log.message.timestamp.type=Now"]),
            ["setting 'log.message.timestamp.type': invalid value 'Now'; allowed: CreateTime or LogAppendTime"]
        );
        assert_eq!(
            problems(&["listeners=localhost"]),
            ["setting 'listeners': 'localhost' is not NAME://IP:PORT or IP:PORT (an IP address, or empty for every interface; e.g. PLAINTEXT://127.0.0.1:9092)"]
        );
        assert_eq!(
            problems(&["advertised.listeners=broker:0"]),
            ["setting 'advertised.listeners': 'broker:0' is not NAME://HOST:PORT or HOST:PORT with a port from 1 to 65535"]
        );
        assert_eq!(
            problems(&["log.flush.interval.messages=0"]),
            ["setting 'log.flush.interval.messages': invalid value '0'; allowed: empty (not set) or an integer >= 1"]
        );
        assert!(problems(&[
            "admin.listen=",
            "log.flush.interval.ms=",
            "advertised.listeners=h:1"
        ])
        .is_empty());
    }

    #[test]
    fn relations_between_settings_are_checked() {
        assert_eq!(
            problems(&["group.min.session.timeout.ms=7000", "group.max.session.timeout.ms=6000"]),
            ["settings 'group.min.session.timeout.ms' and 'group.max.session.timeout.ms': the minimum session timeout (7000 ms) is above the maximum (6000 ms)"]
        );
        assert_eq!(
            problems(&["message.max.bytes=2000", "socket.request.max.bytes=1000"]),
            ["settings 'message.max.bytes' and 'socket.request.max.bytes': a 2000-byte batch could never arrive in a request of at most 1000 bytes"]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let all = problems(&[
            "group.max.sise=3",
            "num.partitions=0",
            "novalue",
            "group.initial.rebalance.delay.ms=-1",
            "fetch.zero.copy=1",
        ]);
        assert_eq!(all.len(), 5, "{all:#?}");
        assert!(all[0].contains("unknown setting 'group.max.sise'"));
        assert!(all[1].contains("'novalue': expected key=value"));
        assert!(all
            .iter()
            .any(|p| p.contains("'num.partitions': invalid value '0'")));
        assert!(all
            .iter()
            .any(|p| p.contains("'group.initial.rebalance.delay.ms': invalid value '-1'")));
        assert!(all
            .iter()
            .any(|p| p.contains("'fetch.zero.copy': invalid value '1'")));
        let overrides = vec!["num.partitions=0".to_string(), "node.id=x".to_string()];
        let rendered = load(None, &overrides, &[]).unwrap_err().to_string();
        assert!(
            rendered.starts_with("2 configuration errors:\n  setting"),
            "{rendered}"
        );
    }

    #[test]
    fn toml_reports_every_unknown_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "lissten = \"x\"\ngroup.max.sise = 3\n").unwrap();
        let error = load(Some(&path), &[], &[]).unwrap_err();
        let rendered: Vec<String> = error.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(rendered.len(), 2, "{rendered:?}");
    }

    #[test]
    fn listeners_take_kafkas_named_form() {
        let overrides: Vec<String> = [
            "listeners=PLAINTEXT://127.0.0.1:19092,INTERNAL://127.0.0.1:19093",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,INTERNAL:SASL_PLAINTEXT",
            "advertised.listeners=PLAINTEXT://broker-1:9092",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let config = load(None, &overrides, &[]).unwrap();
        assert_eq!(config.listeners.all.len(), 2);
        assert_eq!(config.listen, "127.0.0.1:19092".parse().unwrap());
        assert_eq!(
            (config.advertised_host.as_str(), config.advertised_port),
            ("broker-1", 9092)
        );
        assert_eq!(
            config.listeners.advertised_for("INTERNAL"),
            ("127.0.0.1".to_string(), 19093)
        );
        assert_eq!(
            problems(&["listeners=PLAINTEXT://:9092,SSL://:9092"]),
            ["setting 'listeners': port 9092 is used by two listeners (each listener needs its own port)"]
        );
        assert_eq!(
            problems(&["advertised.listeners=SSL://h:9093"]),
            ["settings 'advertised.listeners' and 'listeners': advertised listener SSL is not in listeners"]
        );
        // A SASL inter-broker listener needs the broker's own login.
        let cluster = [
            "node.id=1",
            "process.roles=broker,controller",
            "controller.quorum.voters=1@127.0.0.1:19093",
            "listeners=SASL_PLAINTEXT://127.0.0.1:9092",
        ];
        let refused = problems(&cluster);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("sasl.mechanism.inter.broker.protocol"));
        let jaas = "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
                    org.apache.kafka.common.security.scram.ScramLoginModule required \
                    username=\"broker\" password=\"pw\";";
        let with_login = [
            &cluster[..],
            &["sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512", jaas],
        ]
        .concat();
        assert_eq!(problems(&with_login), Vec::<String>::new());
        let no_password = [
            &cluster[..],
            &[
                "sasl.mechanism.inter.broker.protocol=PLAIN",
                "sasl.jaas.config=x required username=\"broker\";",
            ],
        ]
        .concat();
        let refused = problems(&no_password);
        assert!(
            refused.len() == 1 && refused[0].contains("password=") && !refused[0].contains("pw"),
            "{refused:?}"
        );
    }

    #[test]
    fn readme_carries_the_reference_table() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&reference_table()),
            "README.md's settings table differs from `sluice serve --print-config-reference`"
        );
    }

    #[test]
    fn topic_configs_validate() {
        let config = BrokerConfig::from_settings(Settings::default()).unwrap();
        let mut topic = BTreeMap::new();
        topic.insert("retention.ms".to_string(), "5000".to_string());
        assert_eq!(config.topic_log_config(&topic).unwrap().retention_ms, 5000);
        topic.insert("retention.ms".to_string(), "soon".to_string());
        assert!(config.topic_log_config(&topic).is_err());
        let mut topic = BTreeMap::new();
        topic.insert(
            "unclean.leader.election.enable".to_string(),
            "true".to_string(),
        );
        assert!(config.topic_log_config(&topic).is_ok());
        topic.insert(
            "unclean.leader.election.enable".to_string(),
            "maybe".to_string(),
        );
        assert!(config.topic_log_config(&topic).is_err());
        let mut topic = BTreeMap::new();
        topic.insert("no.such.config".to_string(), "1".to_string());
        assert!(config.topic_log_config(&topic).is_err());
        // No overrides: exactly the broker defaults (every log setting has its topic name).
        let defaults = config.topic_log_config(&BTreeMap::new()).unwrap();
        assert_eq!(
            format!("{defaults:?}"),
            format!("{:?}", config.log_defaults)
        );
    }

    #[test]
    fn topic_configs_are_held_to_the_broker_ranges() {
        let config = BrokerConfig::from_settings(Settings::default()).unwrap();
        for (key, value, allowed) in [
            ("segment.ms", "0", "an integer >= 1"),
            ("segment.ms", "-1", "an integer >= 1"),
            (
                "max.message.bytes",
                "-5",
                "an integer from 61 to 2147483647",
            ),
            ("segment.bytes", "100", "an integer from 4096 to 2147483647"),
            ("retention.ms", "-2", "an integer >= -1"),
            ("flush.messages", "0", "empty (not set) or an integer >= 1"),
        ] {
            let topic = BTreeMap::from([(key.to_string(), value.to_string())]);
            assert_eq!(
                config.topic_log_config(&topic).unwrap_err(),
                format!("setting '{key}': invalid value '{value}'; allowed: {allowed}")
            );
        }
        let topic = BTreeMap::from([("segment.ms".to_string(), "1".to_string())]);
        assert_eq!(config.topic_log_config(&topic).unwrap().segment_ms, 1);
    }

    #[test]
    fn limits_are_typed_and_unbounded_or_unparsable_ones_refused() {
        let config = BrokerConfig::from_settings(Settings::default()).unwrap();
        assert_eq!(config.fetch_bytes_max, 57_671_680);
        assert_eq!(config.connection_idle_ms_max, 600_000);
        assert_eq!(
            config
                .connections_per_ip
                .limit_for("127.0.0.1".parse().unwrap()),
            i32::MAX as usize
        );
        for bad in [
            "queued.max.request.bytes=-1",
            "fetch.max.bytes=100",
            "shard.inbox.jobs.max=0",
            "max.connections.per.ip.overrides=somehost:3",
            "max.connections.per.ip.overrides=10.1.2.3:2147483648",
            "max.connections.per.ip.overrides=10.1.2.3:-1",
        ] {
            assert_eq!(problems(&[bad]).len(), 1, "{bad} must be refused");
        }
        assert_eq!(
            problems(&["max.connections.per.ip.overrides=10.1.2.3:7,somehost:3"]),
            ["setting 'max.connections.per.ip.overrides': invalid value '10.1.2.3:7,somehost:3'; \
              allowed: IP:N,IP:N with IP addresses (no host names) and each N an integer from 0 to 2147483647"]
        );
        let mut settings = Settings::default();
        settings
            .apply_override("max.connections.per.ip.overrides=10.1.2.3:7")
            .unwrap();
        let config = BrokerConfig::from_settings(settings).unwrap();
        assert_eq!(
            config
                .connections_per_ip
                .limit_for("10.1.2.3".parse().unwrap()),
            7
        );
    }

    #[test]
    fn cluster_settings_are_read_only_with_process_roles_and_checked() {
        let config = BrokerConfig::from_settings(Settings::default()).unwrap();
        assert!(
            config.cluster.is_none(),
            "no process.roles: a single broker"
        );
        let voters =
            "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.2:19093,3@127.0.0.3:19093";
        let overrides: Vec<String> = [
            "node.id=2",
            "process.roles=broker,controller",
            voters,
            "advertised.listeners=h2:9092",
            "broker.session.timeout.ms=3000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let config = load(None, &overrides, &[]).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node_id, 2);
        assert!(cluster.is_broker && cluster.is_controller);
        assert_eq!(cluster.voters.len(), 3);
        assert_eq!(
            cluster.listen_addr(),
            Some("127.0.0.2:19093".parse().unwrap())
        );
        assert_eq!(
            (cluster.advertised_host.as_str(), cluster.advertised_port),
            ("h2", 9092)
        );
        assert_eq!(cluster.session_timeout.as_millis(), 3000);
        assert_eq!(cluster.heartbeat_interval.as_millis(), 2000);
        assert!(cluster.dir.ends_with("__cluster"));

        assert_eq!(problems(&["process.roles=broker,leader", voters]).len(), 1);
        assert_eq!(problems(&[voters]).len(), 1, "voters without process.roles");
        assert_eq!(problems(&["process.roles=broker"]).len(), 1, "no voters");
        assert_eq!(
            problems(&["node.id=4", "process.roles=broker,controller", voters]).len(),
            1,
            "a controller missing from the voters"
        );
        assert_eq!(
            problems(&["node.id=1", "process.roles=broker", voters]).len(),
            1,
            "a voter without the controller role"
        );
        assert!(problems(&["node.id=4", "process.roles=broker", voters]).is_empty());
        assert_eq!(
            problems(&[
                "node.id=1",
                "process.roles=controller",
                voters,
                "broker.heartbeat.interval.ms=9000"
            ])
            .len(),
            1,
            "heartbeat not below the session"
        );
    }
}
