//! The coordinator's view of one `__consumer_offsets` partition log: durable append of a batch and
//! reading whole batches back for replay. Implemented by `sluice_storage::Partition` (production)
//! and by [`MemoryLog`] (tests, tools).
//!
//! Owns: the adaptation to the storage API, including reading `ReadChunk::File` ranges (through
//! the storage's ring: a replay never blocks the shard thread).
//! Must never: interpret records (that is `records`), or report an append as done before the
//! storage engine says it is durable (`Ack::Durable`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use sluice_storage::batch::RecordBatchHeader;
use sluice_storage::{Ack, Partition};

use crate::{codes, GroupError};

/// A boxed, single-threaded future (the shard's runtime is current-thread).
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Bytes one replay read asks for.
const REPLAY_READ_BYTES: u32 = 1 << 20;

/// A partition log the coordinator persists into.
pub trait OffsetLog {
    /// Appends one record batch and resolves with its base offset once it is durable.
    fn append_durable(&self, batch: Bytes) -> LocalFuture<Result<i64, GroupError>>;
    /// Next offset to be assigned (includes appends still in flight).
    fn log_end_offset(&self) -> i64;
    /// First offset still present.
    fn log_start_offset(&self) -> i64;
    /// Whole batches starting at the batch containing `offset` (at least one batch if any
    /// exists), concatenated; empty at the end of the log.
    fn read_batches(&self, offset: i64, max_bytes: u32) -> LocalFuture<Result<Bytes, GroupError>>;
}

impl OffsetLog for Partition {
    fn append_durable(&self, batch: Bytes) -> LocalFuture<Result<i64, GroupError>> {
        let partition = self.clone();
        Box::pin(async move {
            partition
                .append(batch, Ack::Durable, 0)
                .await
                .map(|info| info.base_offset)
                .map_err(|e| GroupError::Storage {
                    context: "appending to __consumer_offsets".into(),
                    message: e.to_string(),
                    code: e.kafka_error_code(),
                })
        })
    }

    fn log_end_offset(&self) -> i64 {
        Partition::log_end_offset(self)
    }

    fn log_start_offset(&self) -> i64 {
        Partition::log_start_offset(self)
    }

    fn read_batches(&self, offset: i64, max_bytes: u32) -> LocalFuture<Result<Bytes, GroupError>> {
        let partition = self.clone();
        Box::pin(async move {
            let storage_error = |e: sluice_storage::StorageError| GroupError::Storage {
                context: format!("reading __consumer_offsets at offset {offset}"),
                message: e.to_string(),
                code: codes::COORDINATOR_LOAD_IN_PROGRESS,
            };
            let slice = partition
                .read(offset, max_bytes, true)
                .await
                .map_err(storage_error)?;
            if let [chunk] = slice.chunks.as_slice() {
                return partition.chunk_bytes(chunk).await.map_err(storage_error);
            }
            let mut out = BytesMut::with_capacity(slice.total_bytes as usize);
            for chunk in &slice.chunks {
                let bytes = partition.chunk_bytes(chunk).await.map_err(storage_error)?;
                out.extend_from_slice(&bytes);
            }
            Ok(out.freeze())
        })
    }
}

/// An in-memory log: appends complete immediately (or fail on demand); for tests and tools.
#[derive(Clone, Default)]
pub struct MemoryLog {
    inner: Rc<RefCell<MemoryLogInner>>,
}

#[derive(Default)]
struct MemoryLogInner {
    /// (base offset, batch bytes with the base offset written in)
    batches: Vec<(i64, Bytes)>,
    next_offset: i64,
    start_offset: i64,
    fail_appends: bool,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the following appends fail with a storage error (or succeed again).
    pub fn fail_appends(&self, fail: bool) {
        self.inner.borrow_mut().fail_appends = fail;
    }

    /// Drops whole batches below `offset`, as retention would.
    pub fn truncate_before(&self, offset: i64) {
        let mut inner = self.inner.borrow_mut();
        let next = inner.next_offset;
        inner
            .batches
            .retain(|(base, batch)| base + batch_offset_count(batch) > offset);
        inner.start_offset = inner.batches.first().map_or(next, |(base, _)| *base);
    }

    /// Number of batches held.
    pub fn batch_count(&self) -> usize {
        self.inner.borrow().batches.len()
    }
}

/// Offsets the batch at the start of `bytes` spans (0 when there is no whole header).
fn batch_offset_count(bytes: &[u8]) -> i64 {
    RecordBatchHeader::parse(bytes).map_or(0, |h| i64::from(h.last_offset_delta) + 1)
}

impl OffsetLog for MemoryLog {
    fn append_durable(&self, batch: Bytes) -> LocalFuture<Result<i64, GroupError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Yield once so callers observe the same interleavings as with a real log.
            tokio::task::yield_now().await;
            let mut inner = inner.borrow_mut();
            if inner.fail_appends {
                return Err(GroupError::Storage {
                    context: "appending to an in-memory log".into(),
                    message: "injected failure".into(),
                    code: codes::COORDINATOR_NOT_AVAILABLE,
                });
            }
            let Some(header) = RecordBatchHeader::parse(&batch) else {
                return Err(GroupError::Corrupt {
                    what: "appended batch",
                    detail: format!("{} bytes, less than a batch header", batch.len()),
                });
            };
            let base = inner.next_offset;
            let mut bytes = batch.to_vec();
            sluice_storage::batch::assign(&mut bytes, base, header.partition_leader_epoch);
            inner.next_offset += batch_offset_count(&bytes).max(1);
            inner.batches.push((base, Bytes::from(bytes)));
            Ok(base)
        })
    }

    fn log_end_offset(&self) -> i64 {
        self.inner.borrow().next_offset
    }

    fn log_start_offset(&self) -> i64 {
        self.inner.borrow().start_offset
    }

    fn read_batches(&self, offset: i64, max_bytes: u32) -> LocalFuture<Result<Bytes, GroupError>> {
        let inner = self.inner.borrow();
        let mut out = BytesMut::new();
        for (base, batch) in &inner.batches {
            if base + batch_offset_count(batch) <= offset {
                continue;
            }
            if !out.is_empty() && out.len() + batch.len() > max_bytes as usize {
                break;
            }
            out.extend_from_slice(batch);
        }
        let read = Ok(out.freeze());
        Box::pin(async move { read })
    }
}

/// Reads every record at or after `from_offset` in log order.
pub(crate) async fn read_all_from(
    log: &dyn OffsetLog,
    from_offset: i64,
) -> Result<Vec<crate::records::LogRecord>, GroupError> {
    let mut records = Vec::new();
    let mut offset = from_offset.max(log.log_start_offset());
    let end = log.log_end_offset();
    while offset < end {
        let bytes = log.read_batches(offset, REPLAY_READ_BYTES).await?;
        if bytes.is_empty() {
            break;
        }
        let decoded = crate::records::decode_log_records(&bytes)?;
        let Some(last) = decoded.last().map(|r| r.offset) else {
            // Only skipped (control) batches: step past them by their header.
            let next = next_offset_after(&bytes).unwrap_or(end);
            if next <= offset {
                break;
            }
            offset = next;
            continue;
        };
        records.extend(decoded.into_iter().filter(|r| r.offset >= from_offset));
        let next = next_offset_after(&bytes).unwrap_or(last + 1).max(last + 1);
        if next <= offset {
            break;
        }
        offset = next;
    }
    Ok(records)
}

/// One past the last offset of the last batch in `bytes` (from the batch headers).
fn next_offset_after(bytes: &[u8]) -> Option<i64> {
    sluice_storage::batch::headers(bytes)
        .last()
        .map(|header| header.last_offset().saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::batch::builder;

    #[test]
    fn next_offset_follows_the_last_batch_header() {
        let mut bytes = builder::batch(0, &[b"a", b"b", b"c"]);
        sluice_storage::batch::assign(&mut bytes, 40, 0);
        let mut second = builder::batch(0, &[b"d", b"e"]);
        sluice_storage::batch::assign(&mut second, 43, 0);
        bytes.extend_from_slice(&second);
        assert_eq!(next_offset_after(&bytes), Some(45));
        assert_eq!(next_offset_after(&bytes[..60]), None);
        assert_eq!(batch_offset_count(&second), 2);
    }
}
