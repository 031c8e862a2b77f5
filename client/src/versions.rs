//! Which version of each Kafka API a connection speaks. Owns the client's own ceiling per API
//! (the highest version whose semantics this client implements, e.g. Fetch before topic ids)
//! and the intersection with what a broker advertises in ApiVersions. It must never pick a
//! version outside either side's range: a mismatch is reported, not guessed around.

use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::Request;

use crate::error::{ClientError, Result};

/// The highest version of `api_key` this client implements. Lower than the crate's maximum
/// where newer versions change semantics (topic ids instead of names, batched group keys).
pub fn client_version_max(api_key: i16) -> i16 {
    match ApiKey::try_from(api_key) {
        Ok(ApiKey::Produce) => 9,
        Ok(ApiKey::Fetch) => 12,
        Ok(ApiKey::ListOffsets) => 7,
        Ok(ApiKey::Metadata) => 12,
        Ok(ApiKey::OffsetCommit) => 8,
        Ok(ApiKey::OffsetFetch) => 7,
        Ok(ApiKey::FindCoordinator) => 3,
        Ok(ApiKey::JoinGroup) => 7,
        Ok(ApiKey::Heartbeat) => 4,
        Ok(ApiKey::LeaveGroup) => 4,
        Ok(ApiKey::SyncGroup) => 5,
        Ok(ApiKey::DescribeGroups) => 5,
        Ok(ApiKey::ListGroups) => 4,
        Ok(ApiKey::ApiVersions) => 3,
        Ok(ApiKey::CreateTopics) => 7,
        Ok(ApiKey::DeleteTopics) => 5,
        Ok(ApiKey::DescribeConfigs) => 4,
        Ok(ApiKey::CreatePartitions) => 3,
        Ok(ApiKey::DeleteGroups) => 2,
        Ok(ApiKey::OffsetForLeaderEpoch) => 4,
        Ok(ApiKey::DescribeAcls | ApiKey::CreateAcls | ApiKey::DeleteAcls) => 3,
        Ok(ApiKey::WriteTxnMarkers) => 2,
        Ok(ApiKey::ListTransactions) => 1,
        // Transaction protocol v1 (`transaction`): InitProducerId 5, EndTxn 5 and
        // AddPartitionsToTxn 4+ belong to protocol v2 (KIP-890) or to brokers.
        Ok(ApiKey::InitProducerId) => 4,
        Ok(ApiKey::AddPartitionsToTxn) => 3,
        Ok(ApiKey::EndTxn) => 4,
        _ => 0,
    }
}

/// A readable API name for messages.
pub fn api_name(api_key: i16) -> &'static str {
    match ApiKey::try_from(api_key) {
        Ok(ApiKey::Produce) => "Produce",
        Ok(ApiKey::Fetch) => "Fetch",
        Ok(ApiKey::ListOffsets) => "ListOffsets",
        Ok(ApiKey::Metadata) => "Metadata",
        Ok(ApiKey::OffsetCommit) => "OffsetCommit",
        Ok(ApiKey::OffsetFetch) => "OffsetFetch",
        Ok(ApiKey::FindCoordinator) => "FindCoordinator",
        Ok(ApiKey::JoinGroup) => "JoinGroup",
        Ok(ApiKey::Heartbeat) => "Heartbeat",
        Ok(ApiKey::LeaveGroup) => "LeaveGroup",
        Ok(ApiKey::SyncGroup) => "SyncGroup",
        Ok(ApiKey::DescribeGroups) => "DescribeGroups",
        Ok(ApiKey::ListGroups) => "ListGroups",
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::CreateTopics) => "CreateTopics",
        Ok(ApiKey::DeleteTopics) => "DeleteTopics",
        Ok(ApiKey::DescribeConfigs) => "DescribeConfigs",
        Ok(ApiKey::CreatePartitions) => "CreatePartitions",
        Ok(ApiKey::DeleteGroups) => "DeleteGroups",
        Ok(ApiKey::OffsetForLeaderEpoch) => "OffsetForLeaderEpoch",
        Ok(ApiKey::DescribeAcls) => "DescribeAcls",
        Ok(ApiKey::CreateAcls) => "CreateAcls",
        Ok(ApiKey::DeleteAcls) => "DeleteAcls",
        Ok(ApiKey::WriteTxnMarkers) => "WriteTxnMarkers",
        Ok(ApiKey::DescribeProducers) => "DescribeProducers",
        Ok(ApiKey::DescribeTransactions) => "DescribeTransactions",
        Ok(ApiKey::ListTransactions) => "ListTransactions",
        Ok(ApiKey::InitProducerId) => "InitProducerId",
        Ok(ApiKey::AddPartitionsToTxn) => "AddPartitionsToTxn",
        Ok(ApiKey::EndTxn) => "EndTxn",
        _ => "Unknown",
    }
}

/// The broker's advertised `(min, max)` per API key.
#[derive(Debug, Clone, Default)]
pub struct VersionTable {
    ranges: Vec<Option<(i16, i16)>>,
}

impl VersionTable {
    /// The table used before ApiVersions has been answered: only ApiVersions itself.
    pub fn bootstrap() -> Self {
        let mut table = VersionTable::default();
        table.set(ApiKey::ApiVersions as i16, 0, 3);
        table
    }

    /// Builds the table from an ApiVersions response.
    pub fn from_response(response: &ApiVersionsResponse) -> Self {
        let mut table = VersionTable::default();
        for api in &response.api_keys {
            table.set(api.api_key, api.min_version, api.max_version);
        }
        table
    }

    fn set(&mut self, api_key: i16, min: i16, max: i16) {
        let Ok(index) = usize::try_from(api_key) else {
            return;
        };
        if index >= 1024 {
            return;
        }
        if self.ranges.len() <= index {
            self.ranges.resize(index + 1, None);
        }
        self.ranges[index] = Some((min, max));
    }

    /// The broker's range for an API, if it advertised one.
    pub fn broker_range(&self, api_key: i16) -> Option<(i16, i16)> {
        usize::try_from(api_key)
            .ok()
            .and_then(|i| self.ranges.get(i).copied().flatten())
    }

    /// Whether the broker supports some version of the API that this client also speaks.
    pub fn supports(&self, api_key: i16, crate_min: i16, crate_max: i16) -> bool {
        self.pick_raw(api_key, crate_min, crate_max).is_some()
    }

    fn pick_raw(&self, api_key: i16, crate_min: i16, crate_max: i16) -> Option<i16> {
        let (broker_min, broker_max) = self.broker_range(api_key)?;
        let high = broker_max.min(crate_max).min(client_version_max(api_key));
        let low = broker_min.max(crate_min);
        (high >= low).then_some(high)
    }

    /// The highest version of `R` both sides support.
    pub fn pick<R: Request>(&self, addr: &str) -> Result<i16> {
        self.pick_raw(R::KEY, R::VERSIONS.min, R::VERSIONS.max)
            .ok_or_else(|| ClientError::UnsupportedApi {
                api: api_name(R::KEY),
                addr: addr.to_owned(),
                client_min: R::VERSIONS.min,
                client_max: R::VERSIONS.max.min(client_version_max(R::KEY)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchRequest, ProduceRequest};

    #[test]
    fn picks_highest_common_version() {
        let mut table = VersionTable::default();
        table.set(ApiKey::Fetch as i16, 0, 16);
        table.set(ApiKey::Produce as i16, 0, 7);
        // Client ceiling (12) wins over broker max (16) for Fetch.
        assert_eq!(table.pick::<FetchRequest>("b").ok(), Some(12));
        // Broker max (7) wins over client ceiling (9) for Produce.
        assert_eq!(table.pick::<ProduceRequest>("b").ok(), Some(7));
    }

    #[test]
    fn disjoint_ranges_are_an_error() {
        let mut table = VersionTable::default();
        table.set(ApiKey::Produce as i16, 0, 2); // crate speaks Produce >= 3
        assert!(matches!(
            table.pick::<ProduceRequest>("b"),
            Err(ClientError::UnsupportedApi { .. })
        ));
        assert!(table.pick::<FetchRequest>("b").is_err()); // not advertised at all
    }
}
