//! Broker startup and shutdown: replays the metadata log, starts one pinned shard thread per
//! core, accepts connections on every shard, and shuts down cleanly on SIGTERM/SIGINT (in a
//! cluster, a controlled shutdown first: fenced, so its partitions have other leaders; then
//! stop accepting, drain the requests in hand (`crate::drain`), finish in-flight appends,
//! flush, write clean-shutdown markers).
//!
//! Must never: start serving before every shard has opened (recovered) its partitions, or
//! exit 0 after a shard failed.

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use sluice_net::budget::RequestBudget;
use sluice_net::connection::ConnectionLimits;
use sluice_storage::{ShardStorage, StorageConfig, StorageError};
use tokio::sync::{mpsc, watch};

use crate::admission::ConnectionsPerIp;
use crate::config::BrokerConfig;
use crate::metadata::controller::Controller;
use crate::metadata::log::{MetadataLog, MetadataRecord};
use crate::metadata::MetadataStore;
use crate::runtime;
use crate::shard::{Job, Shard, ShardSet};

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Setting up the data directory or metadata failed.
    #[error("{0}")]
    Startup(String),
    /// A shard failed.
    #[error("shard {shard}: {message}")]
    Shard {
        /// which
        shard: usize,
        /// why
        message: String,
    },
}

enum ShardEvent {
    Ready(usize),
    Failed(usize, String),
}

/// Runs the broker until a shutdown signal; returns after a clean shutdown.
pub fn serve(mut config: BrokerConfig) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServeError::Startup(format!(
            "create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let _data_dir_lock = lock_data_dir(&config.data_dir)?;
    let (mut log, mut snapshot) =
        MetadataLog::open(&config.data_dir).map_err(|e| ServeError::Startup(e.to_string()))?;
    if snapshot.cluster_id.is_empty() {
        let id = match config.settings.raw("cluster.id") {
            "" => uuid::Uuid::new_v4().simple().to_string(),
            given => given.to_string(),
        };
        let record = MetadataRecord::ClusterId { id };
        log.append(&record)
            .map_err(|e| ServeError::Startup(e.to_string()))?;
        crate::metadata::log::apply(&mut snapshot, &record);
    }
    if config.cluster.is_some() {
        // Topics are the quorum's: which partition directories are stale is only known once
        // the cluster state arrives (the bridge deletes those of topics deleted while running).
        snapshot = crate::metadata::cluster::startup(&snapshot);
    } else {
        remove_stale_partition_dirs(&config.data_dir, &snapshot);
    }

    let reservation = resolve_listener_ports(&mut config)?;

    let config = Arc::new(config);
    // New handshakes pick up replaced certificate files (ssl.reload.check.interval.ms).
    let _tls_reload = crate::security::tls::reload::start(
        crate::security::tls::acceptors(&config.listeners.all),
        Duration::from_millis(config.listeners.tls_reload_interval_ms),
    );
    let store = Arc::new(MetadataStore::new(snapshot));
    let (set, inboxes) = ShardSet::new(config.shards, config.inbox_jobs_max);
    // Gives tail-cache memory back when the machine runs short (its own thread: the shards
    // make no blocking reads, not even of /proc).
    let _memory_watcher = crate::tail_cache_memory::start(set.clone(), &config);
    let connections_per_ip = Arc::new(ConnectionsPerIp::default());
    let offline = Arc::new(crate::offline::OfflinePartitions::default());
    let _admin = match config.admin_listen {
        Some(addr) => Some(
            sluice_metrics::AdminServer::start(
                addr,
                collector(set.clone(), config.quotas, tail_cache_budget_bytes(&config)),
            )
            .map_err(|e| ServeError::Startup(format!("admin endpoint: {e}")))?,
        ),
        None => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut log = Some(log);
    let mut threads = Vec::new();
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let context = ShardContext {
            id,
            set: set.clone(),
            config: config.clone(),
            store: store.clone(),
            metadata_log: if id == 0 { log.take() } else { None },
            inbox,
            connections_per_ip: connections_per_ip.clone(),
            offline: offline.clone(),
            shutdown: shutdown_rx.clone(),
            events: events_tx.clone(),
        };
        let core = cores.get(id % cores.len().max(1)).copied();
        let thread = std::thread::Builder::new()
            .name(format!("sluice-shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = id, "could not pin shard thread to its core");
                    }
                }
                let events = context.events.clone();
                match runtime::block_on(run_shard(context)) {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => {
                        let _ = events.send(ShardEvent::Failed(id, message));
                    }
                    Err(error) => {
                        let _ = events.send(ShardEvent::Failed(id, error.to_string()));
                    }
                }
            })
            .map_err(|e| ServeError::Startup(format!("spawn shard thread: {e}")))?;
        threads.push(thread);
    }
    drop(events_tx);

    // Wait for readiness or failure, then for a signal or a failure.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Startup(format!("signal runtime: {e}")))?;
    let outcome = signals.block_on(async {
        let mut ready = 0;
        while ready < config.shards {
            match events_rx.recv().await {
                Some(ShardEvent::Ready(shard)) => {
                    tracing::debug!(shard, "shard ready");
                    ready += 1;
                }
                Some(ShardEvent::Failed(shard, message)) => {
                    return Err(ServeError::Shard { shard, message })
                }
                None => return Err(ServeError::Startup("shards exited during startup".into())),
            }
        }
        drop(reservation);
        // Join the cluster only once every shard serves: registering makes the other brokers
        // list this one in Metadata, so clients may connect the moment it registers.
        if let Some(mut cluster) = config.cluster.clone() {
            cluster.proposed_cluster_id = store.load().cluster_id.clone();
            let bridge = (store.clone(), set.clone());
            let roles = (cluster.is_broker, cluster.is_controller);
            let admin = sluice_cluster::ClusterNode::spawn_thread(cluster, move |view| {
                crate::metadata::cluster::on_view(&bridge.0, &bridge.1, view)
            })
            .map_err(|e| ServeError::Startup(format!("cluster: {e}")))?;
            if let Some(admin) = admin {
                store.set_admin(admin);
                // Runs beside the signal wait below (this runtime drives both).
                tokio::spawn(crate::metadata::bootstrap_users::hand_over(
                    store.clone(),
                    config.data_dir.clone(),
                ));
            }
            tracing::info!(broker = roles.0, controller = roles.1, "joined the cluster");
        }
        tracing::info!(
            listen = %config.listen,
            advertised = %format!("{}:{}", config.advertised_host, config.advertised_port),
            listeners = %crate::accept::describe(&config.listeners.all),
            shards = config.shards,
            data_dir = %config.data_dir.display(),
            tail_cache_bytes_per_shard = config.tail_cache_bytes,
            "sluice is serving"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| ServeError::Startup(format!("install SIGTERM handler: {e}")))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            event = events_rx.recv() => {
                if let Some(ShardEvent::Failed(shard, message)) = event {
                    let _ = shutdown_tx.send(true);
                    return Err(ServeError::Shard { shard, message });
                }
            }
        }
        let controlled = config
            .cluster
            .as_ref()
            .is_some_and(|c| c.is_broker && config.controlled_shutdown_enable);
        if controlled {
            let started = std::time::Instant::now();
            let timeout = std::time::Duration::from_millis(config.controlled_shutdown_timeout_ms);
            let fenced = crate::metadata::cluster::controlled_shutdown(
                &store,
                &set,
                config.node_id,
                timeout,
            )
            .await;
            let took_ms = started.elapsed().as_millis();
            if fenced {
                tracing::info!(took_ms, "controlled shutdown: fenced, partitions moved");
            } else {
                tracing::warn!(
                    took_ms,
                    "controlled shutdown: not fenced (no controller answered, or \
                     controlled.shutdown.timeout.ms ran out); stopping anyway"
                );
            }
        }
        Ok(())
    });
    let _ = shutdown_tx.send(true);
    for thread in threads {
        let _ = thread.join();
    }
    if outcome.is_ok() {
        tracing::info!("clean shutdown complete");
    }
    outcome
}

/// What every shard's tail cache may hold together (`log.tail.cache.bytes` per shard).
fn tail_cache_budget_bytes(config: &BrokerConfig) -> u64 {
    (config.tail_cache_bytes as u64).saturating_mul(config.shards as u64)
}

/// Gathers and merges every shard's metrics snapshot (called on the admin thread).
fn collector(
    set: Arc<ShardSet>,
    quota_settings: crate::security::quota::QuotaSettings,
    tail_cache_budget_bytes: u64,
) -> sluice_metrics::Collect {
    Arc::new(move || {
        let mut merged: Option<sluice_metrics::MetricsSnapshot> = None;
        // A gauge, not a counter: the tail-cache bytes responses hold right now (all shards).
        let mut response_cache_bytes_total = 0u64;
        let mut tail_cache = sluice_storage::TailCacheStats::default();
        // The cleaners' totals over the shards; the last pass duration is the longest of the
        // shards' last passes.
        let (mut cleaner_bytes_read, mut cleaner_bytes_written, mut cleaner_passes) = (0, 0, 0);
        let (mut cleaner_passes_failed, mut cleaner_segments_swapped) = (0, 0);
        let (mut cleaner_records_removed, mut cleaner_last_pass_ns) = (0, 0);
        let mut quota_rows_per_shard = Vec::with_capacity(set.count());
        for target in 0..set.count() {
            let (tx, rx) = std::sync::mpsc::channel();
            set.send_from_outside(
                target,
                Box::new(move |shard: Rc<Shard>| {
                    let _ = tx.send((
                        shard.metrics.snapshot(),
                        shard.storage.response_cache_bytes() as u64,
                        shard.storage.tail_cache_stats(),
                        shard.storage.cleaner_stats(),
                        shard.quotas.rows(),
                    ));
                }),
            )
            .map_err(|e| e.to_string())?;
            let (snapshot, response_cache_bytes, tail_stats, cleaner, quota_rows) = rx
                .recv_timeout(Duration::from_secs(2))
                .map_err(|_| format!("shard {target} did not answer within 2 s"))?;
            response_cache_bytes_total += response_cache_bytes;
            tail_cache += tail_stats;
            quota_rows_per_shard.push(quota_rows);
            cleaner_bytes_read += cleaner.bytes_read;
            cleaner_bytes_written += cleaner.bytes_written;
            cleaner_passes += cleaner.passes;
            cleaner_passes_failed += cleaner.passes_failed;
            cleaner_segments_swapped += cleaner.segments_swapped;
            cleaner_records_removed += cleaner.records_removed;
            cleaner_last_pass_ns = cleaner_last_pass_ns.max(cleaner.last_pass_ns);
            match &mut merged {
                Some(total) => total.merge(&snapshot),
                None => merged = Some(snapshot),
            }
        }
        let mut merged = merged.ok_or_else(|| "no shards".to_string())?;
        merged.set_process_value("fetch_response_cache_bytes", response_cache_bytes_total);
        merged.set_process_value("tail_cache_bytes", tail_cache.held_bytes as u64);
        merged.set_process_value("tail_cache_chunk_bytes", tail_cache.chunk_bytes as u64);
        // The ceiling the two above grow towards: memory is taken as records arrive (each new
        // page faulted in and zeroed once), then reused, so a fresh broker pays that first
        // touch until the cache has filled once.
        merged.set_process_value("tail_cache_budget_bytes", tail_cache_budget_bytes);
        merged.set_process_value("tail_cache_uncached_batches", tail_cache.uncached_batches);
        // Chunks made since start: each one fresh memory faulted in on a shard thread. It
        // should stop growing once the cache has first filled its budget; growth after that
        // is the arena failing to reuse its oldest chunks.
        merged.set_process_value("tail_cache_chunks_made", tail_cache.chunks_made);
        merged.set_process_value("tail_cache_own_batches", tail_cache.own_batches);
        // The batch bytes the caches may hold now: the budget, or less while their memory is
        // limited because the machine runs short (log.tail.cache.memory.reserve.bytes).
        merged.set_process_value("tail_cache_limit_bytes", tail_cache.limit_bytes as u64);
        for (name, value) in [
            ("cleaner_bytes_read", cleaner_bytes_read),
            ("cleaner_bytes_written", cleaner_bytes_written),
            ("cleaner_passes", cleaner_passes),
            ("cleaner_passes_failed", cleaner_passes_failed),
            ("cleaner_segments_swapped", cleaner_segments_swapped),
            ("cleaner_records_removed", cleaner_records_removed),
            ("cleaner_last_pass_ns", cleaner_last_pass_ns),
        ] {
            merged.set_process_value(name, value);
        }
        for (name, value) in crate::zero_copy::Counters::now().named() {
            merged.set_process_value(&name, value);
        }
        crate::security::quota::manager::export_rows(
            quota_settings,
            quota_rows_per_shard,
            &mut merged,
        );
        Ok(merged)
    })
}

/// Gives every listener a concrete port and checks that no one else listens on it; returns
/// the port-0 reservations (bound, not listening) to hold until every shard has bound.
/// The inter-broker listener's address becomes `listen`/`advertised_*`, and the cluster
/// registration carries every listener's advertised endpoint.
fn resolve_listener_ports(config: &mut BrokerConfig) -> Result<Vec<socket2::Socket>, ServeError> {
    let mut reservations = Vec::new();
    for listener in &mut config.listeners.all {
        if listener.bind.port() == 0 {
            // Port 0: reserve a concrete port so every shard binds the same one.
            let socket = reserve_port(listener.bind)
                .map_err(|e| ServeError::Startup(format!("bind {}: {e}", listener.bind)))?;
            let addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| ServeError::Startup("cannot read reserved port".into()))?;
            listener.bind = addr;
            if !listener.advertised_explicitly {
                listener.advertised_port = i32::from(addr.port());
            }
            reservations.push(socket);
        } else {
            // SO_REUSEPORT would let a second broker share the port silently and steal half
            // of its connections. A probe bound with SO_REUSEADDR only (TIME_WAIT leftovers of
            // a killed broker are fine) fails while anyone listens on the port.
            probe_port_free_patiently(listener.bind).map_err(|e| {
                ServeError::Startup(format!(
                    "listen on {} ({}): {e} (is another broker running?)",
                    listener.bind, listener.name
                ))
            })?;
        }
    }
    let inter_broker = config.listeners.inter_broker().clone();
    config.listen = inter_broker.bind;
    config.advertised_host = inter_broker.advertised_host.clone();
    config.advertised_port = inter_broker.advertised_port;
    let endpoints: Vec<sluice_cluster::state::Endpoint> = config
        .listeners
        .all
        .iter()
        .map(|l| sluice_cluster::state::Endpoint {
            name: l.name.clone(),
            host: l.advertised_host.clone(),
            port: l.advertised_port,
        })
        .collect();
    if let Some(cluster) = &mut config.cluster {
        cluster.advertised_host = inter_broker.advertised_host;
        cluster.advertised_port = inter_broker.advertised_port;
        cluster.advertised_listeners = endpoints;
    }
    Ok(reservations)
}

/// io_uring tears a dead process's rings down asynchronously, so the listening socket of a
/// broker that was just killed can accept for a moment after the process is gone: retry for
/// a couple of seconds before calling the port taken.
fn probe_port_free_patiently(addr: SocketAddr) -> std::io::Result<()> {
    const ATTEMPTS: u32 = 30;
    let mut last = Ok(());
    for _ in 0..ATTEMPTS {
        last = probe_port_free(addr);
        if last.is_ok() {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

fn probe_port_free(addr: SocketAddr) -> std::io::Result<()> {
    let socket = runtime::tcp_socket_for(addr, false)?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        // Sockets of a broker that was just killed can hold the port for a while; only a
        // process that accepts connections there is a conflict.
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(_) => Err(error),
                Err(_) => Ok(()),
            }
        }
        Err(error) => Err(error),
    }
}

/// Takes an exclusive lock on the data directory for the life of the process: two brokers
/// appending to the same segment files would corrupt them.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, ServeError> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServeError::Startup(format!("open {}: {e}", path.display())))?;
    // SAFETY: flock on a valid, open descriptor; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ServeError::Startup(format!(
            "data directory {} is in use by another sluice process ({})",
            data_dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(file)
}

fn reserve_port(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = runtime::tcp_socket_for(addr, true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Removes partition directories of topics the metadata no longer has (a crash between the
/// delete record and the directory removal), so a re-created topic never inherits old data.
fn remove_stale_partition_dirs(data_dir: &Path, snapshot: &crate::metadata::MetadataSnapshot) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((topic, index)) = name.rsplit_once('-') else {
            continue;
        };
        if topic.starts_with("__") || index.parse::<i32>().is_err() {
            continue;
        }
        let known = snapshot
            .topic(topic)
            .is_some_and(|t| index.parse::<i32>().is_ok_and(|i| i < t.partitions));
        if !known {
            tracing::warn!(dir = %entry.path().display(), "removing partition directory of a deleted topic");
            if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                tracing::error!(dir = %entry.path().display(), %error, "cannot remove stale partition directory");
            }
        }
    }
}

struct ShardContext {
    id: usize,
    set: Arc<ShardSet>,
    config: Arc<BrokerConfig>,
    store: Arc<MetadataStore>,
    metadata_log: Option<MetadataLog>,
    inbox: mpsc::Receiver<Job>,
    connections_per_ip: Arc<ConnectionsPerIp>,
    offline: Arc<crate::offline::OfflinePartitions>,
    shutdown: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<ShardEvent>,
}

async fn run_shard(context: ShardContext) -> Result<(), String> {
    let ShardContext {
        id,
        set,
        config,
        store,
        metadata_log,
        mut inbox,
        connections_per_ip,
        offline,
        mut shutdown,
        events,
    } = context;
    let storage = ShardStorage::open(StorageConfig {
        data_dir: config.data_dir.clone(),
        direct_io: config.direct_io,
        group_commit_bytes_max: config.group_commit_bytes_max,
        tail_cache_bytes: config.tail_cache_bytes,
        ring_entries: config.ring_entries,
    })
    .map_err(|error| match error {
        StorageError::UringRefused(e) => runtime::explain_uring_error(e).to_string(),
        other => format!("opening storage: {other}"),
    })?;
    storage.set_append_queue_bytes_max(config.append_queue_bytes_max);
    storage.set_syncing_commits_max(config.syncing_commits_max);
    storage.set_writing_commits_max(config.writing_commits_max);
    let _ = storage.set_dsync_writes(config.dsync_writes);
    storage.set_tail_cache_huge_pages(config.tail_cache_huge_pages);
    // In a cluster a partition with no high-watermark checkpoint may hold a tail its ISR never
    // had: it opens at its log start, and the replication layer lifts it.
    storage.set_high_watermark_unknown_at_log_start(config.cluster.is_some());
    storage.set_blocking_jobs_max(config.blocking_jobs_max);
    storage.set_cleaner_config(config.cleaner.clone());
    storage.set_response_cache_bytes_max(config.response_cache_bytes_max);
    let controller = metadata_log.map(Controller::new);
    let group_config = config.groups.clone();
    let offsets_log_config = group_config.offsets_log_config();
    let groups = sluice_group::GroupCoordinator::new(
        group_config,
        Rc::new(crate::shard::MetadataTopics(store.clone())),
    );
    if config.cluster.is_some() {
        // No group is this broker's until the quorum says which offsets partitions it leads.
        groups.set_coordinated(Some(Default::default()));
    }
    let shard = Rc::new(
        Shard::new(id, set, config.clone(), store, storage, controller, groups)
            .with_offline_partitions(offline.clone()),
    );
    // The storage engine's blocking-pool jobs into the shard's metrics: their count, the
    // pool's depth (submitted minus done) and each job's latency.
    let observed = Rc::downgrade(&shard);
    shard.storage.set_blocking_observer(Box::new(move |event| {
        let Some(shard) = observed.upgrade() else {
            return;
        };
        match event {
            sluice_storage::BlockingEvent::Submitted => shard
                .metrics
                .count(sluice_metrics::Counter::BlockingJobsSubmitted, 1),
            sluice_storage::BlockingEvent::Done { latency_ns } => {
                shard
                    .metrics
                    .count(sluice_metrics::Counter::BlockingJobsDone, 1);
                shard
                    .metrics
                    .record_stage_ns(sluice_metrics::Stage::BlockingJob, latency_ns);
            }
            _ => {}
        }
    }));
    // A roll snapshots the partition's producer state. Weak, as below.
    let observed = Rc::downgrade(&shard);
    shard
        .storage
        .set_roll_observer(Rc::new(move |partition, _base_offset| {
            if let Some(shard) = observed.upgrade() {
                crate::producer_snapshots::on_roll(&shard, partition);
            }
        }));
    // A poisoned partition goes offline broker-wide, for every shard's Metadata answers.
    shard
        .storage
        .set_poison_observer(Box::new(move |_cause, topic, index| {
            offline.insert(topic, index);
        }));
    // Group-commit timings into the shard's histograms. Weak: the storage engine is owned by
    // the shard, so a strong reference here would be a cycle.
    let observed = Rc::downgrade(&shard);
    shard.storage.set_flush_observer(Box::new(move |flush| {
        let Some(shard) = observed.upgrade() else {
            return;
        };
        let metrics = &shard.metrics;
        metrics.record_stage_ns(sluice_metrics::Stage::AppendWrite, flush.write_ns);
        if flush.fsync_ns > 0 {
            metrics.record_stage_ns(sluice_metrics::Stage::AppendFsync, flush.fsync_ns);
        }
        if let Some(gap_ns) = flush.gap_ns {
            metrics.record_stage_ns(sluice_metrics::Stage::AppendWriteGap, gap_ns);
        }
        metrics.record_group_commit(flush.bytes, flush.records);
        metrics.count(sluice_metrics::Counter::RecordsIn, flush.records);
        for ns in &flush.append_to_durable_ns {
            metrics.record_stage_ns(sluice_metrics::Stage::AppendToDurable, *ns);
        }
    }));
    let opened = shard
        .open_owned_partitions()
        .map_err(|e| format!("opening partitions: {e}"))?;
    tracing::debug!(shard = id, partitions = opened, "partitions open");

    // The offsets log partitions this shard owns; their groups answer
    // COORDINATOR_LOAD_IN_PROGRESS until loaded. In a cluster they are replicas like any
    // topic's: loaded only when this broker becomes their leader (`replication::offsets`).
    let shard_count = shard.set.count();
    for partition in
        (0..sluice_group::OFFSETS_PARTITION_COUNT).filter(|p| *p as usize % shard_count == id)
    {
        let log = shard
            .storage
            .open_partition(
                sluice_group::OFFSETS_TOPIC,
                partition,
                offsets_log_config.clone(),
            )
            .map_err(|e| format!("opening {}-{partition}: {e}", sluice_group::OFFSETS_TOPIC))?;
        if config.cluster.is_some() {
            shard.adopt_partition(sluice_group::OFFSETS_TOPIC, partition, log);
            continue;
        }
        let groups = shard.groups.clone();
        runtime::spawn(async move {
            if let Err(error) = groups.load_partition(partition, log).await {
                tracing::error!(partition, %error, "loading consumer offsets failed");
            }
        });
    }

    // The __transaction_state partitions this shard owns: compacted, as Kafka's (each
    // record is keyed by its transactional id and the newest one per id is the state, which
    // is all a load replays to). In a cluster they are replicas the quorum places, loaded
    // only while led (`txn::leadership`), with the same configs.
    if config.cluster.is_none() {
        let state_partitions = config.transactions.state_partitions;
        let state_log_config = sluice_storage::LogConfig {
            segment_bytes: config.transactions.state_segment_bytes,
            retention_ms: -1,
            retention_bytes: -1,
            cleanup_policy: sluice_storage::CleanupPolicy {
                compact: true,
                delete: false,
            },
            ..sluice_storage::LogConfig::default()
        };
        for partition in (0..state_partitions).filter(|p| *p as usize % shard_count == id) {
            let log = shard
                .storage
                .open_partition(
                    crate::txn::TRANSACTION_STATE_TOPIC,
                    partition,
                    state_log_config.clone(),
                )
                .map_err(|e| {
                    format!(
                        "opening {}-{partition}: {e}",
                        crate::txn::TRANSACTION_STATE_TOPIC
                    )
                })?;
            let coordinator = shard.txns.clone();
            let loading_shard = shard.clone();
            runtime::spawn(async move {
                coordinator
                    .load_partition(loading_shard, partition, log)
                    .await;
            });
        }
    }
    // Each coordinator's idle transactional ids (in a cluster, of the partitions it leads).
    {
        let txn_shard = shard.clone();
        runtime::spawn(async move {
            let period = Duration::from_millis(
                txn_shard
                    .config
                    .transactions
                    .id_expiration_check_interval_ms,
            );
            loop {
                tokio::time::sleep(period).await;
                let coordinator = txn_shard.txns.clone();
                coordinator.remove_expired_ids(&txn_shard, now_ms()).await;
            }
        });
    }
    // Each coordinator's timeouts (in a cluster, over the state partitions it leads).
    {
        let txn_shard = shard.clone();
        runtime::spawn(async move {
            let period =
                Duration::from_millis(txn_shard.config.transactions.abort_check_interval_ms);
            loop {
                tokio::time::sleep(period).await;
                let coordinator = txn_shard.txns.clone();
                coordinator.abort_expired(&txn_shard, now_ms()).await;
                txn_shard.txn_partitions.trim(|topic, index| {
                    txn_shard
                        .partition(topic, index)
                        .map(|p| p.log_start_offset())
                });
            }
        });
    }

    // Probe the fetch path now, so the log says at startup which one is in use.
    let _ = crate::zero_copy::for_shard(&shard);

    let inbox_shard = shard.clone();
    runtime::spawn(async move {
        while let Some(job) = inbox.recv().await {
            job(inbox_shard.clone());
        }
    });
    let retention_shard = shard.clone();
    runtime::spawn(async move {
        let period =
            Duration::from_millis(retention_shard.config.retention_check_interval_ms.max(100));
        loop {
            tokio::time::sleep(period).await;
            let now_ms = now_ms();
            for partition in retention_shard.owned_partitions() {
                partition.enforce_retention(now_ms).await;
            }
        }
    });

    if shard.set.count() > 1 {
        runtime::spawn(crate::security::quota::exchange::run(shard.clone()));
    }

    if config.cleaner_enable {
        let cleaner_shard = shard.clone();
        runtime::spawn(async move {
            let period = Duration::from_millis(cleaner_shard.config.cleaner_backoff_ms.max(10));
            loop {
                tokio::time::sleep(period).await;
                // Every open log of the shard, the group coordinators' offsets log included.
                for partition in cleaner_shard.storage.partitions() {
                    if !partition.is_compacted() {
                        continue;
                    }
                    // Never past the last stable offset: an open transaction stays as written.
                    let (topic, index) = partition.topic_partition();
                    let (stable_offset, aborted) = match cleaner_shard
                        .txn_partitions
                        .ensure_loaded(&partition, &topic, index)
                        .await
                    {
                        Ok(()) => {
                            let high_watermark = partition.high_watermark();
                            cleaner_shard
                                .txn_partitions
                                .with(&topic, index, |txns| {
                                    (
                                        txns.last_stable_offset(high_watermark),
                                        txns.aborted_entries(),
                                    )
                                })
                                .unwrap_or((high_watermark, Vec::new()))
                        }
                        Err(error) => {
                            tracing::warn!(%topic, partition = index, %error, "cannot load the partition's transactions; not cleaning it");
                            continue;
                        }
                    };
                    let forget_aborted = |gone: &[sluice_storage::txn_index::AbortedTxnEntry]| {
                        cleaner_shard
                            .txn_partitions
                            .with(&topic, index, |txns| txns.forget_aborted(gone));
                    };
                    let txns = sluice_storage::CleanerTxns {
                        aborted,
                        forget_aborted: &forget_aborted,
                    };
                    if let Err(error) = partition.clean(now_ms(), stable_offset, &txns).await {
                        tracing::warn!(
                            shard = cleaner_shard.id,
                            partition = %partition.dir().display(),
                            %error,
                            "cleaner pass failed; the log is unchanged or cleaned segment by segment"
                        );
                    }
                }
            }
        });
    }

    let producers_shard = shard.clone();
    runtime::spawn(async move {
        let period = Duration::from_millis(
            producers_shard
                .config
                .producer_id_expiration_check_interval_ms,
        );
        loop {
            tokio::time::sleep(period).await;
            let expired = producers_shard.expire_producer_states(now_ms());
            if expired > 0 {
                tracing::debug!(
                    shard = producers_shard.id,
                    expired,
                    "expired idle producer states"
                );
            }
        }
    });

    let sockets = crate::accept::bind_all(
        &config.listeners.all,
        config.listen_backlog,
        config.socket_receive_buffer_bytes,
    )?;
    let _ = events.send(ShardEvent::Ready(id));
    let limits = ConnectionLimits {
        request_bytes_max: config.request_bytes_max,
        inflight_requests_max: config.inflight_requests_max,
        read_buffer_bytes: 64 * 1024,
        idle_ms_max: config.connection_idle_ms_max,
    };
    // queued.max.request.bytes is per broker; each shard's connections share an even part.
    let request_budget =
        RequestBudget::new(config.queued_request_bytes_max.div_ceil(config.shards));
    // Each shard enforces its share of max.connections (SO_REUSEPORT spreads them evenly).
    let connections_max_per_shard = config.connections_max.div_ceil(config.shards).max(1);
    let admission = crate::accept::Admission {
        shard: shard.clone(),
        connections_per_ip,
        connections_max_per_shard,
        limits,
        budget: request_budget,
    };
    // One accept loop per listener; each stops accepting (drops its socket) on shutdown.
    for (listener, socket) in sockets {
        runtime::spawn(crate::accept::accept_loop(
            admission.clone(),
            listener,
            socket,
            shutdown.clone(),
        ));
    }
    drop(admission);
    // A storage ring that failed (a non-transient io_uring_enter error) takes the broker down
    // with a non-zero exit: see storage/src/ring.rs for why that beats serving on half-alive.
    tokio::select! {
        error = shard.storage.ring().failed() => {
            let errno = error.raw_os_error().unwrap_or(0);
            tracing::error!(shard = id, errno, %error, "storage ring failed; stopping the broker");
            return Err(format!("shard {id}: storage ring failed (errno {errno}): {error}"));
        }
        _ = shutdown.changed() => {}
    }
    let drain_timeout = std::time::Duration::from_millis(config.shutdown_drain_timeout_ms);
    let still = shard.drain.stop_and_wait(drain_timeout).await;
    if still > 0 {
        tracing::warn!(
            shard = id,
            requests = still,
            "requests still in hand after shutdown.drain.timeout.ms; closing storage anyway"
        );
    }
    shard.groups.shutdown().await;
    crate::producer_snapshots::write_all(&shard).await;
    if let Err(error) = shard.storage.shutdown().await {
        tracing::error!(shard = id, %error, "storage shutdown failed");
        return Err(format!("storage shutdown: {error}"));
    }
    Ok(())
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
