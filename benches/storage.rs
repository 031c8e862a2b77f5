//! Storage-only benchmark: appenders on one shard push Kafka v2 batches of 1 KiB records
//! through `Partition::append(.., Ack::Durable, ..)` (group commit with fdatasync) into 1 or
//! 16 partitions, and the run reports throughput, fdatasyncs per group commit, CPU-seconds
//! per GB and append-to-durable latency. `scripts/storage-bench.sh` runs it beside fio.
//!
//! Usage: cargo bench -p sluice-storage --bench storage -- [--dir D] [--mode direct|buffered]
//!        [--partitions N] [--batch-bytes B] [--total-bytes T] [--appenders A]
//!        [--group-commit-bytes G]
//! The last line is machine-readable: `RESULT key=value ...`.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use sluice_storage::batch::builder;
use sluice_storage::{Ack, LogConfig, ShardStorage, StorageConfig};

const RECORD_BYTES: usize = 1024;

struct Args {
    dir: PathBuf,
    direct_io: bool,
    partitions: usize,
    batch_bytes: usize,
    total_bytes: u64,
    appenders: usize,
    group_commit_bytes: usize,
    /// `log.flush.writing.commits.max` (0: the storage default).
    writing_commits: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::from("bench-out/storage-data"),
        direct_io: true,
        partitions: 1,
        batch_bytes: 1 << 20,
        total_bytes: 2 << 30,
        appenders: 0,
        group_commit_bytes: 16 << 20,
        writing_commits: 0,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = || words.next().ok_or_else(|| format!("{word} needs a value"));
        match word.as_str() {
            "--dir" => args.dir = PathBuf::from(value()?),
            "--mode" => {
                args.direct_io = match value()?.as_str() {
                    "direct" => true,
                    "buffered" => false,
                    other => return Err(format!("--mode direct|buffered, not {other}")),
                }
            }
            "--partitions" => args.partitions = parse(&value()?)?,
            "--batch-bytes" => args.batch_bytes = parse(&value()?)?,
            "--total-bytes" => args.total_bytes = parse(&value()?)?,
            "--appenders" => args.appenders = parse(&value()?)?,
            "--group-commit-bytes" => args.group_commit_bytes = parse(&value()?)?,
            "--writing-commits" => args.writing_commits = parse(&value()?)?,
            // Flags cargo bench passes through.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.appenders == 0 {
        // Two group commits' worth of appenders: one commit's appends in flight while the
        // next commit's are queued, as under sustained producer load.
        args.appenders =
            (2 * args.group_commit_bytes / args.batch_bytes).clamp(args.partitions, 4096);
    }
    Ok(args)
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("not a number: {text}"))
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

#[derive(Default)]
struct Totals {
    flushes: u64,
    fsyncing_flushes: u64,
    files: u64,
    bytes: u64,
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("storage bench: {error}");
            std::process::exit(2);
        }
    };
    let _ = std::fs::remove_dir_all(&args.dir);
    let records_per_batch = (args.batch_bytes / RECORD_BYTES).max(1);
    let value = vec![b'v'; RECORD_BYTES - 8];
    let values: Vec<&[u8]> = (0..records_per_batch).map(|_| value.as_slice()).collect();
    let batch = Bytes::from(builder::batch(0, &values));
    let batch_len = batch.len() as u64;
    let appends_total = args.total_bytes.div_ceil(batch_len);

    let (elapsed_s, cpu_s, mut latencies_ns, totals, direct_io) = tokio_uring::start(async {
        let config = StorageConfig {
            data_dir: args.dir.clone(),
            direct_io: args.direct_io,
            group_commit_bytes_max: args.group_commit_bytes,
            tail_cache_bytes: 64 << 20,
            ring_entries: 256,
        };
        let storage = ShardStorage::open(config).unwrap_or_else(|error| {
            eprintln!("storage bench: {error}");
            std::process::exit(1);
        });
        let totals = Rc::new(RefCell::new(Totals::default()));
        let observed = totals.clone();
        if args.writing_commits > 0 {
            storage.set_writing_commits_max(args.writing_commits);
        }
        storage.set_flush_observer(Box::new(move |stats| {
            let mut totals = observed.borrow_mut();
            totals.flushes += 1;
            totals.files += stats.files;
            totals.bytes += stats.bytes;
            if stats.fsync_ns > 0 {
                totals.fsyncing_flushes += 1;
            }
        }));
        // A 1 MiB batch of 1 KiB records plus framing is a little over Kafka's default limit.
        let log_config = LogConfig {
            max_message_bytes: 4 << 20,
            ..LogConfig::default()
        };
        let partitions: Vec<_> = (0..args.partitions)
            .map(|index| {
                storage
                    .open_partition("bench", index as i32, log_config.clone())
                    .expect("open partition")
            })
            .collect();
        let remaining = Rc::new(std::cell::Cell::new(appends_total));
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for appender in 0..args.appenders {
            let partition = partitions[appender % partitions.len()].clone();
            let remaining = remaining.clone();
            let batch = batch.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut latencies = Vec::new();
                while remaining.get() > 0 {
                    remaining.set(remaining.get() - 1);
                    let sent = Instant::now();
                    partition
                        .append(batch.clone(), Ack::Durable, 0)
                        .await
                        .expect("append");
                    latencies.push(sent.elapsed().as_nanos() as u64);
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("appender"));
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        let cpu_s = cpu_seconds() - cpu_before;
        let direct_io = storage.direct_io();
        storage.shutdown().await.expect("shutdown");
        let totals = std::mem::take(&mut *totals.borrow_mut());
        (elapsed_s, cpu_s, latencies, totals, direct_io)
    });
    latencies_ns.sort_unstable();
    let bytes = appends_total * batch_len;
    let mb_per_s = bytes as f64 / elapsed_s / 1e6;
    let gb = bytes as f64 / 1e9;
    let fsyncs_per_commit = totals.files as f64 / totals.fsyncing_flushes.max(1) as f64;
    let bytes_per_fsync = totals.bytes as f64 / totals.files.max(1) as f64;
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "storage {} partitions={} batch={}B appenders={}: {:.0} MB/s, {:.2} GB in {:.2}s, {} group commits, {:.2} fdatasync/commit, {:.0} KiB/fdatasync, {:.3} CPU-s/GB, append-to-durable p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        if direct_io { "O_DIRECT" } else { "buffered" },
        args.partitions,
        batch_len,
        args.appenders,
        mb_per_s,
        gb,
        elapsed_s,
        totals.flushes,
        fsyncs_per_commit,
        bytes_per_fsync / 1024.0,
        cpu_s / gb,
        ms(percentile(&latencies_ns, 0.5)),
        ms(percentile(&latencies_ns, 0.99)),
        ms(latencies_ns.last().copied().unwrap_or(0)),
    );
    println!(
        "RESULT mode={} partitions={} batch_bytes={} appenders={} mb_per_s={:.1} commits={} fsyncs_per_commit={:.2} bytes_per_fsync={:.0} cpu_s_per_gb={:.3} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        if direct_io { "direct" } else { "buffered" },
        args.partitions,
        batch_len,
        args.appenders,
        mb_per_s,
        totals.flushes,
        fsyncs_per_commit,
        bytes_per_fsync,
        cpu_s / gb,
        ms(percentile(&latencies_ns, 0.5)),
        ms(percentile(&latencies_ns, 0.99)),
        ms(latencies_ns.last().copied().unwrap_or(0)),
    );
    let _ = std::fs::remove_dir_all(&args.dir);
}
