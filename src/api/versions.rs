//! ApiVersions: tells clients which APIs and versions Sluice serves.
//!
//! Must never: list anything that `SUPPORTED_APIS` does not.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;

use super::{encode, FetchRecords, SUPPORTED_APIS};
use crate::errors::code;

fn response(error_code: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error_code;
    response.api_keys = SUPPORTED_APIS
        .iter()
        .map(|range| {
            let mut api = ApiVersion::default();
            api.api_key = range.key;
            api.min_version = range.min;
            api.max_version = range.max;
            api
        })
        .collect();
    response
}

/// Answers a supported ApiVersions request.
pub fn handle(header: &RequestHeader) -> Response<FetchRecords> {
    encode(header, &response(code::NONE))
}

/// Answers an ApiVersions request of a version Sluice does not speak: UNSUPPORTED_VERSION in
/// the v0 format, so that the client can retry with a version from the list.
pub fn unsupported_version(header: &RequestHeader) -> Response<FetchRecords> {
    let v0 = RequestHeader {
        api_version: 0,
        flexible: false,
        ..header.clone()
    };
    encode(&v0, &response(code::UNSUPPORTED_VERSION))
}
