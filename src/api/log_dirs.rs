//! DescribeLogDirs (1–4): Sluice's one log directory (`log.dirs`), the size on disk of every
//! partition the shards hold in it, and (v4) the file system's total and usable bytes.
//!
//! Must never: report a partition the shards do not hold, or block a shard on the file system
//! beyond one statvfs of the data directory.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;
use sluice_net::Reader;

use super::{decode_or_close, encode, str_bytes, FetchRecords};
use crate::errors::code;
use crate::security::Session;
use crate::shard::Shard;

/// Handles DescribeLogDirs.
pub async fn handle(
    shard: Rc<Shard>,
    header: RequestHeader,
    body: Reader,
    session: &Session,
) -> Response<FetchRecords> {
    let request = decode_or_close!(header, body, DescribeLogDirsRequest);
    if !super::authz::Authz::of(&shard, session).cluster(crate::security::acl::Operation::Describe)
    {
        // Kafka answers with no log dirs (v3+: and the error).
        let mut response = DescribeLogDirsResponse::default();
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        return encode(&header, &response);
    }
    // None: every partition; otherwise only the named ones (unknown names are left out).
    let wanted: Option<BTreeMap<String, Vec<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let mut by_topic: BTreeMap<String, Vec<(i32, u64)>> = BTreeMap::new();
    let lookups = (0..shard.set.count())
        .map(|target| shard.invoke_on(target, |s| async move { s.partition_sizes() }));
    for sizes in futures::future::join_all(lookups).await {
        for (topic, index, size_bytes) in sizes.unwrap_or_default() {
            let included = wanted
                .as_ref()
                .is_none_or(|w| w.get(&topic).is_some_and(|parts| parts.contains(&index)));
            if included {
                by_topic.entry(topic).or_default().push((index, size_bytes));
            }
        }
    }
    let dir = &shard.config.data_dir;
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let mut result = DescribeLogDirsResult::default();
    result.error_code = code::NONE;
    result.log_dir = str_bytes(&absolute.to_string_lossy());
    (result.total_bytes, result.usable_bytes) = file_system_bytes(&absolute).unwrap_or((-1, -1));
    result.topics = by_topic
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_unstable();
            let mut topic = DescribeLogDirsTopic::default();
            topic.name = TopicName(str_bytes(&name));
            topic.partitions = partitions
                .into_iter()
                .map(|(index, size_bytes)| {
                    let mut p = DescribeLogDirsPartition::default();
                    p.partition_index = index;
                    p.partition_size = i64::try_from(size_bytes).unwrap_or(i64::MAX);
                    p.offset_lag = 0;
                    p.is_future_key = false;
                    p
                })
                .collect();
            topic
        })
        .collect();
    let mut response = DescribeLogDirsResponse::default();
    response.error_code = code::NONE;
    response.results = vec![result];
    encode(&header, &response)
}

/// (total, usable) bytes of the file system holding `dir`, as Kafka reports them
/// (`getTotalSpace`, `getUsableSpace`: blocks available to unprivileged users).
fn file_system_bytes(dir: &std::path::Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let fragment_bytes = stat.f_frsize as i64;
    Some((
        (stat.f_blocks as i64).saturating_mul(fragment_bytes),
        (stat.f_bavail as i64).saturating_mul(fragment_bytes),
    ))
}
