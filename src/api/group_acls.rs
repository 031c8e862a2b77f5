//! The authorization checks of the consumer-group APIs that need more than one yes/no: the
//! topics of an OffsetCommit or OffsetDelete (READ on each, the denied ones answered with
//! TOPIC_AUTHORIZATION_FAILED and never sent to the coordinator) and the topics an
//! OffsetFetch may show (DESCRIBE on each: hidden from an all-topics fetch, an error for a
//! named one).
//!
//! Owns only these rewrites of requests and responses; must never touch group state.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::{OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchResponse};

use super::authz::Authz;
use crate::errors::code;
use crate::security::acl::Operation;

/// Takes the topics `authz` may not READ out of `request`; returns their answers.
pub(crate) fn split_commit(
    authz: &Authz,
    request: &mut OffsetCommitRequest,
    error_code: Option<i16>,
) -> Vec<OffsetCommitResponseTopic> {
    let mut denied = Vec::new();
    request.topics.retain(|topic| {
        let topic_error = error_code.or_else(|| {
            (!authz.topic(Operation::Read, topic.name.as_str()))
                .then_some(code::TOPIC_AUTHORIZATION_FAILED)
        });
        let Some(error_code) = topic_error else {
            return true;
        };
        let mut out = OffsetCommitResponseTopic::default();
        out.name = topic.name.clone();
        out.partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let mut r = OffsetCommitResponsePartition::default();
                r.partition_index = p.partition_index;
                r.error_code = error_code;
                r
            })
            .collect();
        denied.push(out);
        false
    });
    denied
}

/// Takes the topics `authz` may not READ out of an OffsetDelete; returns their answers.
pub(crate) fn split_delete(
    authz: &Authz,
    request: &mut OffsetDeleteRequest,
) -> Vec<OffsetDeleteResponseTopic> {
    let mut denied = Vec::new();
    request.topics.retain(|topic| {
        if authz.topic(Operation::Read, topic.name.as_str()) {
            return true;
        }
        let mut out = OffsetDeleteResponseTopic::default();
        out.name = topic.name.clone();
        out.partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let mut r = OffsetDeleteResponsePartition::default();
                r.partition_index = p.partition_index;
                r.error_code = code::TOPIC_AUTHORIZATION_FAILED;
                r
            })
            .collect();
        denied.push(out);
        false
    });
    denied
}

/// Applies topic DESCRIBE to a v1–7 OffsetFetch answer: an all-topics fetch drops the
/// topics, a named one reports TOPIC_AUTHORIZATION_FAILED for them.
pub(crate) fn filter_fetch(authz: &Authz, all_topics: bool, response: &mut OffsetFetchResponse) {
    filter_topics(
        authz,
        all_topics,
        &mut response.topics,
        |t| t.name.as_str(),
        |t| {
            for p in &mut t.partitions {
                p.committed_offset = -1;
                p.metadata = None;
                p.error_code = code::TOPIC_AUTHORIZATION_FAILED;
            }
        },
    );
}

/// [`filter_fetch`] for one group of a v8 OffsetFetch.
pub(crate) fn filter_fetch_group(
    authz: &Authz,
    all_topics: bool,
    group: &mut OffsetFetchResponseGroup,
) {
    filter_topics(
        authz,
        all_topics,
        &mut group.topics,
        |t| t.name.as_str(),
        |t| {
            for p in &mut t.partitions {
                p.committed_offset = -1;
                p.metadata = None;
                p.error_code = code::TOPIC_AUTHORIZATION_FAILED;
            }
        },
    );
}

fn filter_topics<T>(
    authz: &Authz,
    all_topics: bool,
    topics: &mut Vec<T>,
    name: impl Fn(&T) -> &str,
    deny: impl Fn(&mut T),
) {
    if !authz.is_on() {
        return;
    }
    if all_topics {
        topics.retain(|t| authz.topic(Operation::Describe, name(t)));
        return;
    }
    for topic in topics.iter_mut() {
        if !authz.topic(Operation::Describe, name(topic)) {
            deny(topic);
        }
    }
}

/// The v1–7 OffsetFetch answer to a principal without READ on the group.
pub(crate) fn fetch_denied() -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    response.error_code = code::GROUP_AUTHORIZATION_FAILED;
    response
}
