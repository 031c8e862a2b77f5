//! `fetch.response.cache.bytes.max`: tail-cache bytes handed to responses not yet written are
//! charged to the shard's budget; once it is spent a read that the cache holds is served from
//! the segment file (the same bytes), and the bytes come back when the response lets go of
//! its chunks, whichever way (written and dropped, or dropped with a closed connection).

mod common;

use common::{bytes, expected_stored, is_memory, make_batch, storage_config};
use sluice_storage::{Ack, LogConfig, ReadChunk, ShardStorage};

fn run_with(direct_io: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), direct_io)).expect("open");
        let partition = storage
            .open_partition("pinned", 0, LogConfig::default())
            .expect("partition");
        let mut stored = Vec::new();
        for tag in 0..4u64 {
            let batch = make_batch(tag, 2, 1000, 5);
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 1)
                .await
                .expect("append");
            stored.push(expected_stored(&batch, info.base_offset, 1));
        }
        let batch_bytes = stored[0].len();
        // Room for two batches in responses.
        storage.set_response_cache_bytes_max(2 * batch_bytes);
        assert_eq!(storage.response_cache_bytes(), 0);

        let first = partition
            .read(0, batch_bytes as u32, true)
            .await
            .expect("read");
        assert!(first.chunks.iter().all(is_memory) && !first.cache_budget_spent);
        assert_eq!(storage.response_cache_bytes(), batch_bytes);
        let second = partition
            .read(2, batch_bytes as u32, true)
            .await
            .expect("read");
        assert!(second.chunks.iter().all(is_memory));
        assert_eq!(storage.response_cache_bytes(), 2 * batch_bytes);

        // Spent: the cache still holds offset 4, but the read goes to the file.
        let diverted = partition
            .read(4, 2 * batch_bytes as u32, true)
            .await
            .expect("read");
        assert!(diverted.cache_budget_spent, "the budget was spent");
        assert!(
            matches!(diverted.chunks.as_slice(), [ReadChunk::File { .. }]),
            "one file range: {:?}",
            diverted.chunks
        );
        assert_eq!(diverted.total_bytes as usize, 2 * batch_bytes);
        assert_eq!(
            storage.response_cache_bytes(),
            2 * batch_bytes,
            "a file chunk pins nothing"
        );
        assert_eq!(storage.response_cache_spent_reads(), 1);
        let from_file = partition
            .chunk_bytes(&diverted.chunks[0])
            .await
            .expect("file bytes");
        assert_eq!(
            &from_file[..],
            &[stored[2].clone(), stored[3].clone()].concat()[..]
        );

        // A response written by the copying path drops each chunk once copied; a zero-copy
        // send keeps a clone until the ring lets go of it. Either way the last clone returns
        // the bytes.
        let kept = match &first.chunks[0] {
            ReadChunk::Memory(bytes) => bytes.slice(..10),
            other => panic!("a memory chunk, not {other:?}"),
        };
        drop(first);
        assert_eq!(
            storage.response_cache_bytes(),
            2 * batch_bytes,
            "a clone is still out"
        );
        drop(kept);
        assert_eq!(storage.response_cache_bytes(), batch_bytes);
        let again = partition
            .read(4, batch_bytes as u32, true)
            .await
            .expect("read");
        assert!(
            again.chunks.iter().all(is_memory),
            "room again: from the cache"
        );
        let mut from_cache = Vec::new();
        for chunk in &again.chunks {
            from_cache.extend_from_slice(&partition.chunk_bytes(chunk).await.expect("bytes"));
        }
        assert_eq!(from_cache, stored[2]);
        drop(second);
        drop(again);
        assert_eq!(storage.response_cache_bytes(), 0);

        // A budget of 0: every read of the tail goes to the file.
        storage.set_response_cache_bytes_max(0);
        let slice = partition.read(7, 1 << 20, true).await.expect("read");
        assert!(matches!(slice.chunks.as_slice(), [ReadChunk::File { .. }]));
        assert_eq!(
            &partition
                .chunk_bytes(&slice.chunks[0])
                .await
                .expect("bytes")[..],
            &stored[3][..]
        );
        storage.shutdown().await.expect("shutdown");
    });
}

#[test]
fn spent_budget_serves_the_file_and_chunks_give_bytes_back_when_dropped_direct() {
    run_with(true);
}

#[test]
fn spent_budget_serves_the_file_and_chunks_give_bytes_back_when_dropped_buffered() {
    run_with(false);
}
