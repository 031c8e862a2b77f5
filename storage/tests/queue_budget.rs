//! The writer queue's byte budget (`log.append.queue.bytes.max`): appends past it are queued
//! (offsets assigned at once) but do not complete until the writer has taken the bytes ahead
//! of them, whatever their acks; first come, first served.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::*;
use sluice_storage::{Ack, AppendError, AppendInfo, LogConfig, ShardStorage};

type Append<'a> = Pin<Box<dyn Future<Output = Result<AppendInfo, AppendError>> + 'a>>;

/// Polls `future` once without a waker that matters.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn appends_past_the_queue_budget_wait_for_the_writer_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), true)).expect("open");
        let partition = storage
            .open_partition("budget", 0, LogConfig::default())
            .expect("partition");
        let batch = make_batch(1, 4, 1000, 5);
        let batch_bytes = batch.len();
        // Room for two whole appends ahead of (and including) an append.
        storage.set_append_queue_bytes_max(2 * batch_bytes + batch_bytes / 2);

        let mut appends: Vec<Append> = (0..6)
            .map(|_| Box::pin(partition.append(bytes(batch.clone()), Ack::None, 0)) as Append)
            .collect();
        // First poll of each, before the writer task has run: every append is queued and has
        // its offsets, but only the first two fit the budget.
        let ready: Vec<bool> = appends
            .iter_mut()
            .map(|append| poll_once(append.as_mut()).is_ready())
            .collect();
        assert_eq!(ready, [true, true, false, false, false, false]);
        assert_eq!(partition.log_end_offset(), 24, "all six are queued");
        assert_eq!(storage.queued_bytes(), 6 * batch_bytes);

        // Once the writer drains, the waiting ones complete with the offsets they were given.
        for (index, append) in appends.into_iter().enumerate().skip(2) {
            let info = append.await.expect("append");
            assert_eq!(info.base_offset, index as i64 * 4);
        }
        assert!(storage.queued_bytes() <= 2 * batch_bytes + batch_bytes / 2);
        storage.shutdown().await.expect("shutdown");
        assert_eq!(read_all(&partition, 0).await.len(), 6);
    });
}

#[test]
fn an_append_larger_than_the_budget_completes_once_taken() {
    let dir = tempfile::tempdir().expect("tempdir");
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir.path(), false)).expect("open");
        let partition = storage
            .open_partition("big", 0, LogConfig::default())
            .expect("partition");
        storage.set_append_queue_bytes_max(100);
        let info = partition
            .append(bytes(make_batch(2, 10, 2000, 5)), Ack::None, 0)
            .await
            .expect("an oversized append is not refused, it waits its turn");
        assert_eq!(info.last_offset, 9);
        assert_eq!(
            storage.queued_bytes(),
            0,
            "the writer took it before it completed"
        );
        storage.shutdown().await.expect("shutdown");
    });
}
