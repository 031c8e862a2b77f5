//! The bodies of Sluice's fuzz targets, one function per decoder, so that the libFuzzer
//! binaries in `fuzz_targets/` and the corpus regression test (`tests/corpus.rs`, plain
//! `cargo test` on stable) run exactly the same code on each input.
//!
//! Every function takes arbitrary bytes and must return normally: a panic (including a failed
//! invariant assertion below) or an allocation beyond libFuzzer's `-malloc_limit_mb` is a
//! finding. Where a decoder sits behind a CRC32C, the first input byte selects a mode that
//! repairs the CRC first, so the fuzzer reaches the code behind it instead of spending its
//! time forging checksums. Must never: touch the network or any file outside the dispatcher's
//! own temporary data directory.

pub mod dispatch;
mod repair;

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::protocol::Decodable;
use sluice_group::OffsetsRecord;
use sluice_net::frame::next_frame;
use sluice_net::header::{finish_response, RequestHeader};
use sluice_net::produce::{PartitionResult, ProduceRequest, PRODUCE_VERSION_MAX};
use sluice_net::Reader;
use sluice_storage::batch;

/// The broker's allocator, so the targets see what the broker does with huge allocations.
#[global_allocator]
static ALLOCATOR: sluice::alloc::Allocator = sluice::alloc::Allocator;

/// `message.max.bytes`'s default: the limit batches are validated against.
const MESSAGE_BYTES_MAX: u32 = 1_048_588;

/// Splits `data` into its mode byte and the rest (mode 0 for empty input).
fn mode_and_rest(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((mode, rest)) => (*mode, rest),
        None => (0, data),
    }
}

/// Request framing and header: `data` is what a client wrote on the socket.
pub fn request_header(data: &[u8]) {
    // The whole input as one frame's content.
    if let Ok((header, body)) = RequestHeader::parse(Bytes::copy_from_slice(data)) {
        assert!(body.remaining() <= data.len());
        let response = finish_response(header.begin_response(0), 0);
        let size = i32::from_be_bytes([response[0], response[1], response[2], response[3]]);
        assert_eq!(
            size as usize,
            response.len() - 4,
            "size prefix of the response"
        );
        assert_eq!(&response[4..8], &header.correlation_id.to_be_bytes());
        let _ = header.client_id_lossy();
    }
    // The input as a stream of size-prefixed frames, as the connection reads it.
    let mut buf = BytesMut::from(data);
    let limit_bytes = data.len().max(1);
    while let Ok(Some(frame)) = next_frame(&mut buf, limit_bytes) {
        assert!(frame.len() <= limit_bytes);
        let _ = RequestHeader::parse(frame);
    }
}

/// Produce request body (hand-written codec, v0–11), then the batch validation every
/// partition's records go through, then the response encoding.
pub fn produce_request(data: &[u8]) {
    let (mode, body) = mode_and_rest(data);
    let version = i16::from(mode) % (PRODUCE_VERSION_MAX + 1);
    let Ok(request) = ProduceRequest::decode(Reader::new(Bytes::copy_from_slice(body)), version)
    else {
        return;
    };
    let mut record_bytes = 0usize;
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        assert!(
            std::str::from_utf8(&topic.name).is_ok(),
            "topic names are UTF-8 checked"
        );
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            if let Some(records) = &partition.records {
                record_bytes += records.len();
                if let Ok(headers) = batch::validate(records, MESSAGE_BYTES_MAX) {
                    let total: usize = headers.iter().map(|h| h.size_bytes()).sum();
                    assert_eq!(total, records.len(), "validated batches cover the records");
                }
            }
            partitions.push(PartitionResult::error(partition.index, 0, None));
        }
        results.push((topic.name.clone(), partitions));
    }
    assert!(
        record_bytes <= body.len(),
        "records are slices of the frame"
    );
    let header = RequestHeader {
        api_key: 0,
        api_version: version,
        correlation_id: 1,
        client_id: None,
        flexible: version >= 9,
    };
    let response = sluice_net::produce::encode_response(&header, &results, 0, &[]);
    assert!(response.len() >= 8);
}

/// Fetch request body at every version the broker accepts (decoded by the codec library, as
/// `api::fetch::handle` does).
pub fn fetch_request(data: &[u8]) {
    let (mode, body) = mode_and_rest(data);
    let span = sluice_net::fetch::FETCH_VERSION_MAX - sluice_net::fetch::FETCH_VERSION_MIN + 1;
    let version = sluice_net::fetch::FETCH_VERSION_MIN + i16::from(mode) % span;
    let mut bytes = Bytes::copy_from_slice(body);
    if let Ok(request) = FetchRequest::decode(&mut bytes, version) {
        let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
        assert!(
            partitions <= body.len(),
            "each partition takes at least one byte"
        );
    }
}

/// The record-batch validator (Produce path) and the stored-batch check (recovery and fetch).
pub fn record_batch(data: &[u8]) {
    let (mode, rest) = mode_and_rest(data);
    let mut records = rest.to_vec();
    if mode & 1 == 1 {
        repair::batch_crcs(&mut records);
    }
    let limit_bytes = if mode & 2 == 2 {
        256
    } else {
        MESSAGE_BYTES_MAX
    };
    let _ = batch::read_log_overhead(&records);
    if let Some(header) = batch::RecordBatchHeader::parse(&records) {
        let _ = header.size_bytes();
    }
    let _ = batch::verify_stored(&records);
    let Ok(headers) = batch::validate(&records, limit_bytes) else {
        return;
    };
    let mut position = 0usize;
    for header in headers {
        let end = position + header.size_bytes();
        assert!(end <= records.len());
        let one = &mut records[position..end];
        assert_eq!(
            batch::verify_stored(one),
            Some(header),
            "a valid batch reads back"
        );
        batch::assign(one, 42, 7);
        batch::set_log_append_time(one, 1_700_000_000_000);
        let stamped = batch::verify_stored(one).expect("stamping keeps the batch valid");
        assert_eq!(stamped.base_offset, 42);
        assert_eq!(
            stamped.last_offset(),
            42 + i64::from(header.records_count) - 1
        );
        assert_eq!(stamped.max_timestamp, 1_700_000_000_000);
        assert_eq!(stamped.records_count, header.records_count);
        position = end;
    }
    assert_eq!(position, records.len());
}

/// Metadata log replay: mode bit 0 gives every line a correct CRC so the JSON decoding and
/// the application of records are reached.
pub fn metadata_log(data: &[u8]) {
    let (mode, rest) = mode_and_rest(data);
    let text = if mode & 1 == 1 {
        repair::metadata_lines(rest)
    } else {
        rest.to_vec()
    };
    let (snapshot, valid_bytes) = sluice::metadata::log::replay(&text);
    assert!(valid_bytes <= text.len());
    assert!(
        valid_bytes == 0 || text[valid_bytes - 1] == b'\n',
        "cut at a line end"
    );
    let (again, again_bytes) = sluice::metadata::log::replay(&text[..valid_bytes]);
    assert_eq!(again_bytes, valid_bytes, "the kept prefix replays whole");
    assert_eq!(again.epoch, snapshot.epoch);
    assert_eq!(again.topics.len(), snapshot.topics.len());
    for (name, topic) in &snapshot.topics {
        assert_eq!(&topic.name, name);
    }
}

/// `__consumer_offsets` records: batch splitting (mode bit 1 repairs CRCs) then key/value
/// decoding, or (mode bit 2) the key/value decoders directly on a split of the input.
/// Every decoded record must survive encode → decode unchanged.
pub fn group_records(data: &[u8]) {
    let (mode, rest) = mode_and_rest(data);
    if mode & 2 == 2 {
        let Some((&split, rest)) = rest.split_first() else {
            return;
        };
        let at = usize::from(split).min(rest.len());
        let (key, value) = rest.split_at(at);
        let value = (mode & 4 == 0).then_some(value);
        check_offsets_record(key, value);
        return;
    }
    let mut log = rest.to_vec();
    if mode & 1 == 1 {
        repair::batch_crcs(&mut log);
    }
    let Ok(records) = sluice_group::decode_batches(&log) else {
        return;
    };
    for (_, key, value) in records {
        check_offsets_record(&key, value.as_deref());
    }
}

fn check_offsets_record(key: &[u8], value: Option<&[u8]>) {
    let Ok(Some(record)) = OffsetsRecord::decode(key, value) else {
        return;
    };
    let key = record.encode_key();
    let value = record.encode_value();
    let again = OffsetsRecord::decode(&key, value.as_deref())
        .expect("a re-encoded record decodes")
        .expect("a re-encoded record is of a known kind");
    assert_eq!(again, record, "encode/decode round trip");
}

/// Group snapshot files: mode bit 0 repairs the trailing CRC so the record walk is reached.
pub fn group_snapshot(data: &[u8]) {
    let (mode, rest) = mode_and_rest(data);
    let mut file = rest.to_vec();
    if mode & 1 == 1 {
        repair::snapshot_crc(&mut file);
    }
    let Ok((partition, covered_offset, records)) = sluice_group::fuzzing::decode_snapshot(&file)
    else {
        return;
    };
    let encoded =
        sluice_group::fuzzing::encode_snapshot(partition, covered_offset, records.clone());
    let again = sluice_group::fuzzing::decode_snapshot(&encoded).expect("re-encoded snapshot");
    assert_eq!(again, (partition, covered_offset, records), "round trip");
}

/// The dispatcher target's broker, started on first use and rebuilt when worn out.
struct BrokerSlot(Option<dispatch::Broker>);

impl Drop for BrokerSlot {
    fn drop(&mut self) {
        // At thread exit the runtime's own thread-locals may already be gone, so the broker
        // cannot shut down cleanly: leak it (the next start sweeps its directory).
        std::mem::forget(self.0.take());
    }
}

thread_local! {
    static BROKER: RefCell<BrokerSlot> = const { RefCell::new(BrokerSlot(None)) };
}

/// The whole request path: `data` is a connection's byte stream (size-prefixed frames), each
/// frame dispatched to an in-process broker (see [`dispatch`]).
pub fn dispatch_stream(data: &[u8]) {
    dispatch_outcomes(data);
}

/// [`dispatch_stream`], returning what each request came to.
pub fn dispatch_outcomes(data: &[u8]) -> Vec<dispatch::Outcome> {
    BROKER.with(|cell| {
        let slot = &mut cell.borrow_mut().0;
        if slot.as_ref().is_some_and(dispatch::Broker::worn_out) {
            *slot = None;
        }
        let broker = slot.get_or_insert_with(dispatch::Broker::start);
        broker.serve_stream(data)
    })
}
