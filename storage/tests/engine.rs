//! End-to-end behaviour of the storage engine on real files and the real ring: append,
//! read (memory and file), offsets, roll, retention, reopen, acks, timestamps, write modes.

mod common;

use common::*;
use sluice_storage::{
    Ack, AppendError, LogConfig, ReadChunk, ShardStorage, StorageError, TimestampType,
};

fn append_read_reopen(direct_io: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), direct_io)).expect("open");
        assert_eq!(storage.direct_io(), direct_io);
        let partition = storage
            .open_partition("t", 0, LogConfig::default())
            .expect("partition");
        let mut expected = Vec::new();
        for round in 0..20u64 {
            let batch = make_batch(round, 3, 100 + round as usize * 37, 1_000 + round as i64);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 5)
                .await
                .expect("append");
            assert_eq!(info.base_offset, round as i64 * 3);
            assert_eq!(info.last_offset, round as i64 * 3 + 2);
            expected.push(expected_stored(&batch, info.base_offset, 5));
        }
        assert_eq!(partition.high_watermark(), 60);
        assert_eq!(partition.log_end_offset(), 60);
        assert_eq!(read_all(&partition, 0).await, expected);
        // Reading from the middle of a batch returns that whole batch first.
        let slice = partition.read(31, 1, true).await.expect("read");
        let mut first: Vec<u8> = Vec::new();
        for chunk in &slice.chunks {
            first.extend_from_slice(&partition.chunk_bytes(chunk).await.expect("bytes"));
        }
        assert_eq!(first, expected[10]);
        assert_eq!(slice.total_bytes as usize, expected[10].len());
        assert!(
            partition.read(61, 100, true).await.is_err(),
            "past the log end"
        );
        assert!(partition
            .read(60, 100, true)
            .await
            .expect("at hw")
            .chunks
            .is_empty());
        storage.shutdown().await.expect("shutdown");
    });
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), direct_io)).expect("reopen");
        let partition = storage
            .open_partition("t", 0, LogConfig::default())
            .expect("partition");
        assert!(partition.recovery_cuts().is_empty());
        assert_eq!(partition.log_end_offset(), 60);
        assert_eq!(partition.high_watermark(), 60);
        let all = read_all(&partition, 0).await;
        assert_eq!(all.len(), 20);
        let slice = partition.read(0, 1 << 20, true).await.expect("read");
        assert!(
            matches!(slice.chunks[0], ReadChunk::File { .. }),
            "nothing cached after reopen"
        );
        let info = partition
            .append(bytes(make_batch(99, 1, 10, 5)), Ack::Durable, 6)
            .await
            .expect("append after reopen");
        assert_eq!(info.base_offset, 60);
        assert_eq!(read_all(&partition, 0).await.len(), 21);
        storage.shutdown().await.expect("shutdown");
    });
    let log = std::fs::metadata(dir.path().join("t-0").join("00000000000000000000.log"))
        .expect("segment");
    assert!(log.len() > 0);
}

#[test]
fn append_read_reopen_direct() {
    append_read_reopen(true);
}

#[test]
fn append_read_reopen_buffered() {
    append_read_reopen(false);
}

#[test]
fn tail_cache_serves_memory_and_file_serves_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let mut config = storage_config(dir.path(), true);
        config.tail_cache_bytes = 4096;
        let storage = ShardStorage::open(config).expect("open");
        let partition = storage
            .open_partition("cache", 0, LogConfig::default())
            .expect("partition");
        for round in 0..10u64 {
            partition
                .append(bytes(make_batch(round, 1, 1000, 0)), Ack::Durable, 0)
                .await
                .expect("append");
        }
        let newest = partition.read(9, 1 << 20, true).await.expect("read");
        assert!(
            is_memory(&newest.chunks[0]),
            "newest batch comes from memory"
        );
        let oldest = partition.read(0, 1 << 20, true).await.expect("read");
        assert!(
            matches!(oldest.chunks[0], ReadChunk::File { position: 0, .. }),
            "evicted batch comes from the file"
        );
        assert_eq!(read_all(&partition, 0).await.len(), 10);
    });
}

#[test]
fn max_bytes_and_min_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let mut config = storage_config(dir.path(), true);
        config.tail_cache_bytes = 0;
        let storage = ShardStorage::open(config).expect("open");
        let partition = storage
            .open_partition("m", 0, LogConfig::default())
            .expect("partition");
        let mut sizes = Vec::new();
        for round in 0..5u64 {
            let batch = make_batch(round, 1, 500, 0);
            sizes.push(batch.len() as u32);
            partition
                .append(bytes(batch), Ack::Durable, 0)
                .await
                .expect("append");
        }
        let slice = partition
            .read(0, sizes[0] + sizes[1] + 10, true)
            .await
            .expect("read");
        assert_eq!(slice.total_bytes, sizes[0] + sizes[1]);
        let slice = partition.read(0, 10, true).await.expect("read");
        assert_eq!(slice.total_bytes, sizes[0], "at least one whole batch");
        let slice = partition.read(0, 10, false).await.expect("read");
        assert_eq!(slice.total_bytes, 0);
        assert_eq!(slice.high_watermark, 5);
    });
}

#[test]
fn validation_errors_map_to_kafka_codes_and_append_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let config = LogConfig {
            max_message_bytes: 2000,
            ..LogConfig::default()
        };
        let partition = storage.open_partition("v", 0, config).expect("partition");
        let good = make_batch(1, 2, 10, 0);
        let mut corrupt = good.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let mut two = good.clone();
        two.extend_from_slice(&corrupt);
        let error = partition
            .append(bytes(two), Ack::Durable, 0)
            .await
            .expect_err("second batch corrupt");
        assert_eq!(
            error.kafka_error_code(),
            sluice_storage::codes::CORRUPT_MESSAGE
        );
        let error = partition
            .append(bytes(make_batch(2, 1, 3000, 0)), Ack::Durable, 0)
            .await
            .expect_err("too large");
        assert!(matches!(error, AppendError::TooLarge { .. }));
        assert_eq!(
            error.kafka_error_code(),
            sluice_storage::codes::MESSAGE_TOO_LARGE
        );
        assert_eq!(
            partition.log_end_offset(),
            0,
            "nothing of a refused set is appended"
        );
        partition
            .append(bytes(good), Ack::Durable, 0)
            .await
            .expect("good batch");
        assert_eq!(partition.high_watermark(), 2);
    });
}

#[test]
fn acks_none_and_written_complete_and_data_becomes_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("a", 0, LogConfig::default())
            .expect("partition");
        let info = partition
            .append(bytes(make_batch(1, 4, 10, 0)), Ack::None, 0)
            .await
            .expect("acks=0");
        assert_eq!((info.base_offset, info.last_offset), (0, 3));
        assert_eq!(partition.log_end_offset(), 4);
        let waiter = partition.clone();
        let waited = tokio::task::spawn_local(async move {
            waiter.wait_for_data(3).await;
            waiter.high_watermark()
        });
        let info = partition
            .append(bytes(make_batch(2, 1, 10, 0)), Ack::Written, 0)
            .await
            .expect("acks=1");
        assert_eq!(info.base_offset, 4);
        assert!(waited.await.expect("join") >= 4);
        partition
            .append(bytes(make_batch(3, 1, 10, 0)), Ack::Durable, 0)
            .await
            .expect("acks=all");
        assert_eq!(partition.high_watermark(), 6);
        assert_eq!(read_all(&partition, 0).await.len(), 3);
    });
}

#[test]
fn many_concurrent_appenders_share_group_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let flushes = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let counter = flushes.clone();
        storage.set_flush_observer(Box::new(move |stats| {
            assert!(stats.bytes > 0);
            counter.set(counter.get() + 1);
        }));
        let partitions: Vec<_> = (0..4)
            .map(|index| {
                storage
                    .open_partition("c", index, LogConfig::default())
                    .expect("partition")
            })
            .collect();
        let mut tasks = Vec::new();
        for (index, partition) in partitions.iter().enumerate() {
            for producer in 0..8u64 {
                let partition = partition.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let mut offsets = Vec::new();
                    for round in 0..25u64 {
                        let tag = (index as u64) << 32 | producer << 16 | round;
                        let info = partition
                            .append(bytes(make_batch(tag, 2, 200, 0)), Ack::Durable, 0)
                            .await
                            .expect("append");
                        offsets.push(info.base_offset);
                    }
                    offsets
                }));
            }
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("join"));
        }
        assert_eq!(all.len(), 4 * 8 * 25);
        for partition in &partitions {
            assert_eq!(partition.high_watermark(), 8 * 25 * 2);
            let batches = read_all(partition, 0).await;
            assert_eq!(batches.len(), 200);
        }
        assert!(
            flushes.get() < 800,
            "appends were grouped: {} flushes",
            flushes.get()
        );
    });
}

#[test]
fn roll_retention_and_out_of_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let config = LogConfig {
            retention_bytes: 5000,
            ..small_segments(3000)
        };
        let partition = storage.open_partition("r", 0, config).expect("partition");
        append_one_record_batches(&partition, 40).await;
        let segments = partition.segment_count();
        assert!(segments >= 6, "rolled by segment.bytes: {segments}");
        // Sealed segments are finalized one after another (ftruncate, fdatasync, indexes,
        // checkpoint) before retention may delete them; let them finish.
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            partition.enforce_retention(0).await;
            if partition.size_bytes() < 5000 + 3000 {
                break;
            }
        }
        let start = partition.log_start_offset();
        assert!(start > 0, "retention advanced the log start");
        assert!(partition.size_bytes() < 5000 + 3000);
        match partition.read(0, 100, true).await {
            Err(StorageError::OffsetOutOfRange {
                log_start_offset, ..
            }) => assert_eq!(log_start_offset, start),
            other => panic!("expected out of range, got {other:?}"),
        }
        let remaining = read_all(&partition, start).await;
        assert_eq!(remaining.len() as i64, 40 - start);
        storage.shutdown().await.expect("shutdown");
        let reopened = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = reopened
            .open_partition("r", 0, small_segments(3000))
            .expect("partition");
        assert_eq!(partition.log_start_offset(), start);
        assert_eq!(read_all(&partition, start).await.len() as i64, 40 - start);
    });
}

#[test]
fn time_retention_and_timestamp_lookup() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), false)).expect("open");
        let config = LogConfig {
            retention_ms: 1000,
            ..small_segments(2000)
        };
        let partition = storage.open_partition("ts", 0, config).expect("partition");
        for round in 0..20i64 {
            partition
                .append(
                    bytes(make_batch(round as u64, 1, 300, round * 100)),
                    Ack::Durable,
                    0,
                )
                .await
                .expect("append");
        }
        assert_eq!(partition.offset_for_timestamp(950).await, Some((10, 1000)));
        assert_eq!(partition.offset_for_timestamp(0).await, Some((0, 0)));
        assert_eq!(partition.offset_for_timestamp(5000).await, None);
        assert_eq!(partition.max_timestamp().await, Some((19, 1900)));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let removed = partition.enforce_retention(2500).await;
        assert!(removed > 0);
        let start = partition.log_start_offset();
        assert!(start > 0 && start <= 15, "{start}");
        assert_eq!(
            partition
                .offset_for_timestamp(0)
                .await
                .map(|(offset, _)| offset),
            Some(start)
        );
    });
}

#[test]
fn log_append_time_rewrites_max_timestamp_with_valid_crc() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let config = LogConfig {
            timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        let partition = storage.open_partition("lat", 0, config).expect("partition");
        let info = partition
            .append(bytes(make_batch(1, 2, 10, 5)), Ack::Durable, 3)
            .await
            .expect("append");
        assert!(info.log_append_time_ms > 1_600_000_000_000);
        let stored = read_all(&partition, 0).await;
        let header = sluice_storage::batch::validate_batch(&stored[0], 1 << 20).expect("crc valid");
        assert_eq!(header.max_timestamp, info.log_append_time_ms);
        assert_eq!(header.partition_leader_epoch, 3);
        storage.shutdown().await.expect("shutdown");
        // The same bytes from the file: the stamped header went to disk with the batch.
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let config = LogConfig {
            timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        let partition = storage.open_partition("lat", 0, config).expect("partition");
        let slice = partition.read(0, 1 << 20, true).await.expect("read");
        assert!(matches!(slice.chunks[0], ReadChunk::File { .. }));
        assert_eq!(
            read_all(&partition, 0).await,
            stored,
            "file and cache disagree"
        );
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn appended_batches_are_cached_in_their_own_memory_without_touching_the_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("nocopy", 0, LogConfig::default())
            .expect("partition");
        partition
            .append(bytes(make_batch(0, 1, 10, 5)), Ack::Durable, 2)
            .await
            .expect("first append");
        let request = bytes([make_batch(1, 4, 3000, 5), make_batch(2, 2, 500, 6)].concat());
        let original = request.to_vec();
        let request_range = request.as_ptr() as usize..request.as_ptr() as usize + request.len();
        let info = partition
            .append(request.clone(), Ack::Durable, 2)
            .await
            .expect("append");
        assert_eq!(info.base_offset, 1);
        assert_eq!(
            &request[..],
            &original[..],
            "the request's bytes were written to"
        );
        let slice = partition.read(1, 1 << 20, true).await.expect("read");
        let mut in_request = 0usize;
        for chunk in &slice.chunks {
            let ReadChunk::Memory(bytes) = chunk else {
                panic!("recent batches come from the tail cache");
            };
            if request_range.contains(&(bytes.as_ptr() as usize)) {
                in_request += bytes.len();
            }
        }
        assert_eq!(
            slice.chunks.len(),
            2,
            "one contiguous chunk per batch (stamped header and rest)"
        );
        assert_eq!(
            in_request, 0,
            "the cache keeps copies: a cached batch must not keep its request frame alive"
        );
        let stored = read_all(&partition, 1).await;
        assert_eq!(
            stored,
            vec![
                expected_stored(&original[..stored[0].len()], 1, 2),
                expected_stored(&original[stored[0].len()..], 5, 2),
            ]
        );
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn flush_policy_makes_data_visible_after_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let syncs = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let counter = syncs.clone();
        storage.set_flush_observer(Box::new(move |stats| {
            if stats.fsync_ns > 0 {
                counter.set(counter.get() + 1);
            }
        }));
        let config = LogConfig {
            flush_messages: Some(10),
            ..LogConfig::default()
        };
        let partition = storage.open_partition("fp", 0, config).expect("partition");
        for round in 0..9u64 {
            partition
                .append(bytes(make_batch(round, 1, 10, 0)), Ack::Durable, 0)
                .await
                .expect("append");
            assert_eq!(partition.high_watermark(), round as i64 + 1);
        }
        assert_eq!(syncs.get(), 0, "no fdatasync before flush.messages");
        partition
            .append(bytes(make_batch(9, 1, 10, 0)), Ack::Durable, 0)
            .await
            .expect("append");
        assert_eq!(syncs.get(), 1, "fdatasync at flush.messages");
    });
}

#[test]
fn read_results_can_cross_shards() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<sluice_storage::ReadSlice>();
    assert_send::<sluice_storage::ReadChunk>();
    assert_send::<sluice_storage::SegmentHandle>();
}

#[test]
fn segment_ms_rolls_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let config = LogConfig {
            segment_ms: 0,
            ..LogConfig::default()
        };
        let partition = storage.open_partition("age", 0, config).expect("partition");
        for round in 0..4u64 {
            partition
                .append(bytes(make_batch(round, 1, 10, 0)), Ack::Durable, 0)
                .await
                .expect("append");
        }
        assert_eq!(
            partition.segment_count(),
            4,
            "every append after the first rolls"
        );
        assert_eq!(read_all(&partition, 0).await.len(), 4);
    });
}

#[test]
fn appends_work_on_tmpfs_with_or_without_o_direct() {
    let shm = std::path::Path::new("/dev/shm");
    let is_tmpfs = std::fs::read_to_string("/proc/mounts")
        .map(|mounts| {
            mounts.lines().any(|line| {
                line.split_whitespace().nth(1) == Some("/dev/shm") && line.contains("tmpfs")
            })
        })
        .unwrap_or(false);
    if !is_tmpfs {
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    }
    let dir = tempfile::tempdir_in(shm).expect("tempdir on tmpfs");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        // Kernels before 6.6 refuse O_DIRECT on tmpfs (the engine falls back to buffered
        // writes); later ones accept it. Either way appends must work.
        eprintln!("tmpfs direct_io in effect: {}", storage.direct_io());
        let partition = storage
            .open_partition("shm", 0, LogConfig::default())
            .expect("partition");
        let batch = make_batch(1, 2, 100, 0);
        let info = partition
            .append(bytes(batch.clone()), Ack::Durable, 0)
            .await
            .expect("append");
        assert_eq!(
            read_all(&partition, 0).await,
            vec![expected_stored(&batch, info.base_offset, 0)]
        );
    });
}

#[test]
fn clean_reopen_does_not_scan_and_lost_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_segments(8000);
    let mut expected = Vec::new();
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("idx", 0, config.clone())
            .expect("partition");
        for round in 0..60u64 {
            let batch = make_batch(round, 2, 300, 1000 + round as i64 * 10);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
        }
        assert!(partition.segment_count() >= 5);
        storage.shutdown().await.expect("shutdown");
    });
    let partition_dir = dir.path().join("idx-0");
    let mut logs: Vec<std::path::PathBuf> = std::fs::read_dir(&partition_dir)
        .expect("dir")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    // Damage the middle of the first segment: a clean open must not read it (no scan).
    let mut first = std::fs::read(&logs[0]).expect("read");
    let middle = first.len() / 2;
    first[middle] ^= 0xff;
    std::fs::write(&logs[0], &first).expect("write");
    // Lose the indexes of a sealed segment: they are rebuilt when needed.
    std::fs::remove_file(logs[1].with_extension("index")).expect("index existed");
    std::fs::remove_file(logs[1].with_extension("timeindex")).expect("timeindex existed");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = storage
            .open_partition("idx", 0, config.clone())
            .expect("partition");
        assert!(
            partition.recovery_cuts().is_empty(),
            "a clean open cuts nothing"
        );
        assert_eq!(
            partition.log_end_offset(),
            120,
            "end offset from the marker"
        );
        let second_base: i64 = logs[1]
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| stem.parse().ok())
            .expect("base");
        let slice = partition
            .read(second_base + 3, 1, true)
            .await
            .expect("read in the segment without index");
        let got = partition
            .chunk_bytes(&slice.chunks[0])
            .await
            .expect("bytes");
        let batch_index = ((second_base + 3) / 2) as usize;
        assert!(
            got[..] == expected[batch_index][..],
            "the batch holding the offset"
        );
        assert_eq!(
            partition.offset_for_timestamp(1000 + 40 * 10).await,
            Some((80, 1400))
        );
        assert_eq!(partition.max_timestamp().await, Some((119, 1590)));
    });
}

#[test]
fn thousands_of_tiny_appends_in_one_buffered_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let mut config = storage_config(dir.path(), false);
        config.ring_entries = 8;
        let storage = ShardStorage::open(config).expect("open");
        let partition = storage
            .open_partition("tiny", 0, LogConfig::default())
            .expect("partition");
        let mut expected = Vec::new();
        // acks=0 appends return without yielding, so all of them are queued for one flush:
        // more pieces than one writev takes, and more writevs than the 8-entry ring holds in
        // one linked chain.
        for round in 0..10_000u64 {
            let batch = make_batch(round, 1, 10, 0);
            let info = partition
                .append(bytes(batch.clone()), Ack::None, 0)
                .await
                .expect("append");
            expected.push(expected_stored(&batch, info.base_offset, 0));
        }
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            partition.wait_for_data(9_999),
        )
        .await;
        assert!(waited.is_ok(), "all appends became visible");
        assert!(read_all(&partition, 0).await == expected);
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn recent_batch_headers_cover_the_window_across_segments_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        ..LogConfig::default()
    };
    let mut sizes = Vec::new();
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("recent", 0, config.clone())
            .expect("partition");
        for round in 0..30u64 {
            let batch = make_batch(round, 2, 300, 7);
            sizes.push(batch.len() as u64);
            partition
                .append(bytes(batch), Ack::Durable, 1)
                .await
                .expect("append");
        }
        let all = partition
            .recent_batch_headers(1 << 30)
            .await
            .expect("headers");
        let bases: Vec<i64> = all.iter().map(|header| header.base_offset).collect();
        assert_eq!(bases, (0..30).map(|round| round * 2).collect::<Vec<_>>());
        storage.shutdown().await.expect("shutdown");
    });
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("reopen");
        let partition = storage
            .open_partition("recent", 0, config.clone())
            .expect("partition");
        // A window of the last five batches' bytes holds at least those five, newest last.
        let window: u64 = sizes.iter().rev().take(5).sum();
        let recent = partition
            .recent_batch_headers(window)
            .await
            .expect("headers");
        let bases: Vec<i64> = recent.iter().map(|header| header.base_offset).collect();
        assert!(bases.len() >= 5, "{bases:?}");
        assert!(
            bases.windows(2).all(|pair| pair[1] == pair[0] + 2),
            "{bases:?}"
        );
        assert_eq!(bases.last(), Some(&58));
        assert!(partition
            .recent_batch_headers(0)
            .await
            .expect("empty")
            .is_empty());
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn storage_dropped_without_shutdown_closes_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    // Descriptors of this process that point into this test's directory (other tests run
    // in parallel in their own directories).
    let open_here = move || {
        std::fs::read_dir("/proc/self/fd")
            .expect("fd list")
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .filter(|target| target.starts_with(&root))
            .count()
    };
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("crash", 0, LogConfig::default())
            .expect("partition");
        partition
            .append(bytes(make_batch(1, 2, 100, 5)), Ack::Durable, 1)
            .await
            .expect("append");
        assert!(open_here() > 0, "the partition's files are open");
        // A crash as the tests simulate it: no shutdown, handles dropped.
        drop(partition);
        drop(storage);
    });
    assert_eq!(
        open_here(),
        0,
        "a storage dropped without shutdown kept files open"
    );
}
