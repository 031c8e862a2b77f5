//! ApiVersions: tells clients which APIs and versions Sluice serves, and its features
//! (`transaction.version`, supported 0–2, finalized at the `transaction.version` setting).
//!
//! Must never: list anything that `served` does not serve.

use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::protocol::StrBytes;
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;

use super::{encode, served, FetchRecords, SUPPORTED_APIS};
use crate::errors::code;
use crate::txn::TV_2;

/// Kafka's feature name for the transaction protocol version.
pub const TRANSACTION_VERSION_FEATURE: &str = "transaction.version";

/// The epoch of the finalized features. They change only with a restart (a setting), so
/// any value >= 0 does: a client ignores finalized features at epoch -1 (Kafka's "none").
const FINALIZED_FEATURES_EPOCH: i64 = 1;

fn response(error_code: i16, transaction_version: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error_code;
    response.api_keys = SUPPORTED_APIS
        .iter()
        .filter_map(|range| served(range.key, transaction_version))
        .map(|range| {
            let mut api = ApiVersion::default();
            api.api_key = range.key;
            api.min_version = range.min;
            api.max_version = range.max;
            api
        })
        .collect();
    let mut supported = SupportedFeatureKey::default();
    supported.name = StrBytes::from_static_str(TRANSACTION_VERSION_FEATURE);
    supported.min_version = 0;
    supported.max_version = TV_2;
    response.supported_features = vec![supported];
    // Kafka lists a feature finalized at 0 as not finalized at all.
    if transaction_version > 0 {
        let mut finalized = FinalizedFeatureKey::default();
        finalized.name = StrBytes::from_static_str(TRANSACTION_VERSION_FEATURE);
        finalized.min_version_level = transaction_version;
        finalized.max_version_level = transaction_version;
        response.finalized_features = vec![finalized];
    }
    response.finalized_features_epoch = FINALIZED_FEATURES_EPOCH;
    response
}

/// Answers a supported ApiVersions request.
pub fn handle(header: &RequestHeader, transaction_version: i16) -> Response<FetchRecords> {
    encode(header, &response(code::NONE, transaction_version))
}

/// Answers an ApiVersions request of a version Sluice does not speak: UNSUPPORTED_VERSION in
/// the v0 format, so that the client can retry with a version from the list.
pub fn unsupported_version(header: &RequestHeader) -> Response<FetchRecords> {
    let v0 = RequestHeader {
        api_version: 0,
        flexible: false,
        ..header.clone()
    };
    encode(&v0, &response(code::UNSUPPORTED_VERSION, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_of(response: &ApiVersionsResponse, key: i16) -> Option<i16> {
        response
            .api_keys
            .iter()
            .find(|api| api.api_key == key)
            .map(|api| api.max_version)
    }

    #[test]
    fn protocol_v2_versions_follow_the_finalized_transaction_version() {
        let v2 = response(code::NONE, 2);
        assert_eq!(max_of(&v2, 0), Some(12));
        assert_eq!(max_of(&v2, 26), Some(5));
        assert_eq!(max_of(&v2, 28), Some(5));
        assert_eq!(v2.finalized_features.len(), 1);
        assert_eq!(v2.finalized_features[0].max_version_level, 2);
        assert_eq!(v2.supported_features[0].max_version, 2);
        assert!(v2.finalized_features_epoch >= 0);
        for tv in [0, 1] {
            let v1 = response(code::NONE, tv);
            assert_eq!(max_of(&v1, 0), Some(11));
            assert_eq!(max_of(&v1, 26), Some(4));
            assert_eq!(max_of(&v1, 28), Some(3));
            assert_eq!(v1.api_keys.len(), v2.api_keys.len());
        }
        assert!(response(code::NONE, 0).finalized_features.is_empty());
        assert_eq!(
            response(code::NONE, 1).finalized_features[0].max_version_level,
            1
        );
    }
}
