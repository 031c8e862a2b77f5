//! Entry points for the fuzz targets (`fuzz/` at the repository root) into decoders that are
//! otherwise private to this crate.
//!
//! Owns nothing: thin wrappers with stable signatures. Must never: be used by the broker, or
//! grow into a second API; the coordinator reads snapshots through `snapshot::read` only.

use crate::GroupError;

/// A snapshot's parts: partition, covered offset, records (log offset, key, value).
pub type SnapshotParts = (i32, i64, Vec<(i64, Vec<u8>, Option<Vec<u8>>)>);

/// Decodes a group snapshot file's bytes as `snapshot::read` does.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotParts, GroupError> {
    crate::snapshot::decode(bytes).map(|snapshot| {
        (
            snapshot.partition,
            snapshot.covered_offset,
            snapshot.records,
        )
    })
}

/// Encodes a snapshot of `records` (offset, key, value) the way the coordinator writes one,
/// for building fuzz seeds and checking round trips.
pub fn encode_snapshot(
    partition: i32,
    covered_offset: i64,
    records: Vec<(i64, Vec<u8>, Option<Vec<u8>>)>,
) -> Vec<u8> {
    crate::snapshot::encode(&crate::snapshot::Snapshot {
        partition,
        covered_offset,
        records,
    })
}
