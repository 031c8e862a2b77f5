//! File descriptors: a partition holds one (its active segment's) until a read needs its
//! files, a segment's read descriptor is opened at its first read from the file, a slice read
//! before retention unlinked its segment still reads that segment's bytes, and a segment
//! name that now leads to another file fails the read instead of serving that file's bytes.

mod common;

use std::path::Path;

use common::*;
use sluice_storage::{LogConfig, Partition, ReadChunk, ShardStorage, StorageError};

/// Descriptors of this process open on files under `dir`.
fn descriptors_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// [`descriptors_under`] once it has come down to `expected`, or after 5 s: segments sealed by
/// a roll are finalized in the background (their write descriptor closes after), and a
/// directory fsync's descriptor closes when the ring completes it.
async fn settled_descriptors_under(dir: &Path, expected: usize) -> usize {
    for _ in 0..500 {
        if descriptors_under(dir) <= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let count = descriptors_under(dir);
    if count != expected {
        let open: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .collect();
        eprintln!("open under {}: {open:?}", dir.display());
    }
    count
}

fn log_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("partition dir")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count()
}

/// No tail cache: every read goes to the segment files.
fn uncached(dir: &Path) -> ShardStorage {
    let config = sluice_storage::StorageConfig {
        tail_cache_bytes: 0,
        ..storage_config(dir, true)
    };
    ShardStorage::open(config).expect("open")
}

/// A partition of small segments (six or more) on an uncached storage.
async fn rolled_partition(storage: &ShardStorage, config: LogConfig) -> Partition {
    let partition = storage.open_partition("r", 0, config).expect("partition");
    append_one_record_batches(&partition, 40).await;
    partition
}

#[test]
fn a_partition_holds_one_descriptor_until_a_read_needs_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        // With a tail cache, consumers that keep up never open a segment for reading.
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let mut partitions = Vec::new();
        for index in 0..20 {
            let partition = storage
                .open_partition("many", index, LogConfig::default())
                .expect("partition");
            append_one_record_batches(&partition, 2).await;
            partitions.push(partition);
        }
        for partition in &partitions {
            assert_eq!(read_all(partition, 0).await.len(), 2);
            // The broker walks recent batch headers on a partition's first append after a
            // start (idempotent producers' state): the walk's descriptor is its own.
            let headers = partition
                .recent_batch_headers(1 << 20)
                .await
                .expect("headers");
            assert_eq!(headers.len(), 2);
        }
        assert_eq!(
            settled_descriptors_under(dir.path(), 20).await,
            20,
            "one descriptor per partition, the active segment's (no read, header-walk or \
             directory ones)"
        );
        storage.shutdown().await.expect("shutdown");
        drop(partitions);
        drop(storage);
        assert_eq!(descriptors_under(dir.path()), 0, "all closed once dropped");
    });

    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = uncached(dir.path());
        let partition = rolled_partition(&storage, small_segments(3000)).await;
        let partition_dir = dir.path().join("r-0");
        let segments = log_files(&partition_dir);
        assert!(segments >= 6, "rolled by segment.bytes: {segments}");
        assert_eq!(
            settled_descriptors_under(&partition_dir, 1).await,
            1,
            "the active segment's: sealed segments closed theirs once finalized"
        );
        // Reading everything from the files opens each segment's read descriptor once.
        assert_eq!(read_all(&partition, 0).await.len(), 40);
        assert_eq!(read_all(&partition, 0).await.len(), 40);
        assert_eq!(
            settled_descriptors_under(&partition_dir, segments + 1).await,
            segments + 1
        );
        storage.shutdown().await.expect("shutdown");
        drop(partition);
        drop(storage);

        // Reopened: sealed segments hold nothing until read.
        let reopened = uncached(dir.path());
        let partition = reopened
            .open_partition("r", 0, small_segments(3000))
            .expect("partition");
        assert_eq!(
            settled_descriptors_under(&partition_dir, 1).await,
            1,
            "after reopening"
        );
        assert_eq!(read_all(&partition, 20).await.len(), 20);
        assert!(descriptors_under(&partition_dir) < segments + 1);
        reopened.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_slice_read_before_retention_deleted_its_segment_still_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = uncached(dir.path());
        let config = LogConfig {
            retention_bytes: 5000,
            ..small_segments(3000)
        };
        let partition = rolled_partition(&storage, config).await;
        let held = partition.read(0, 100_000, true).await.expect("read");
        assert!(matches!(held.chunks.as_slice(), [ReadChunk::File { .. }]));
        let expected = partition.chunk_bytes(&held.chunks[0]).await.expect("bytes");
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            partition.enforce_retention(0).await;
            if partition.log_start_offset() > 0 {
                break;
            }
        }
        assert!(
            partition.log_start_offset() > 0,
            "retention deleted the first segment"
        );
        assert!(!dir.path().join("r-0/00000000000000000000.log").exists());
        let again = partition.chunk_bytes(&held.chunks[0]).await.expect("bytes");
        assert_eq!(again, expected, "the unlinked segment's own bytes");
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_segment_whose_name_leads_to_another_file_fails_the_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = uncached(dir.path());
        let partition = rolled_partition(&storage, small_segments(3000)).await;
        // Nothing has read the first segment yet. Put the second segment's bytes under its
        // name (what a rename over it would do): a late open must notice.
        let partition_dir = dir.path().join("r-0");
        let mut names: Vec<_> = std::fs::read_dir(&partition_dir)
            .expect("dir")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().to_string_lossy().into_owned();
                name.ends_with(".log").then_some(name)
            })
            .collect();
        names.sort();
        let (first, second) = (partition_dir.join(&names[0]), partition_dir.join(&names[1]));
        let copy = partition_dir.join("copy.tmp");
        std::fs::copy(&second, &copy).expect("copy");
        std::fs::rename(&copy, &first).expect("rename over the first segment");
        match partition.read(0, 100_000, true).await {
            Err(StorageError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}")
            }
            other => panic!("expected an error, not another file's bytes: {other:?}"),
        }
        // Segments that still are their own files read as before.
        let later = read_all(&partition, 39).await;
        assert_eq!(later.len(), 1);
        storage.shutdown().await.expect("shutdown");
    });
}
