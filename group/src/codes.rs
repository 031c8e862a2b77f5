//! Kafka protocol error codes the coordinator answers with (the subset it uses).
//!
//! Owns: the numeric values only, as Kafka's `Errors` table defines them. Must never: carry
//! behaviour; deciding which code applies belongs to the handlers.

/// NONE
pub const NONE: i16 = 0;
/// UNKNOWN_SERVER_ERROR
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
/// UNKNOWN_TOPIC_OR_PARTITION
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// NOT_LEADER_OR_FOLLOWER (a replicated offsets partition this broker stopped leading)
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// OFFSET_METADATA_TOO_LARGE
pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
/// COORDINATOR_LOAD_IN_PROGRESS
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// COORDINATOR_NOT_AVAILABLE
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// NOT_COORDINATOR
pub const NOT_COORDINATOR: i16 = 16;
/// ILLEGAL_GENERATION
pub const ILLEGAL_GENERATION: i16 = 22;
/// INCONSISTENT_GROUP_PROTOCOL
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
/// INVALID_GROUP_ID
pub const INVALID_GROUP_ID: i16 = 24;
/// UNKNOWN_MEMBER_ID
pub const UNKNOWN_MEMBER_ID: i16 = 25;
/// INVALID_SESSION_TIMEOUT
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
/// REBALANCE_IN_PROGRESS
pub const REBALANCE_IN_PROGRESS: i16 = 27;
/// INVALID_COMMIT_OFFSET_SIZE
pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
/// NON_EMPTY_GROUP
pub const NON_EMPTY_GROUP: i16 = 68;
/// GROUP_ID_NOT_FOUND
pub const GROUP_ID_NOT_FOUND: i16 = 69;
/// MEMBER_ID_REQUIRED
pub const MEMBER_ID_REQUIRED: i16 = 79;
/// GROUP_MAX_SIZE_REACHED
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
/// FENCED_INSTANCE_ID
pub const FENCED_INSTANCE_ID: i16 = 82;
/// GROUP_SUBSCRIBED_TO_TOPIC
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
/// UNSTABLE_OFFSET_COMMIT: OffsetFetch with require_stable found a transactional offset not
/// yet committed or aborted (KIP-447).
pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
