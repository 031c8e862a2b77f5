//! The stored form of one ACL binding: Kafka's wire codes and strings exactly as CreateAcls
//! carried them, so the cluster state and the single-broker metadata log keep the same record.
//!
//! Owns only the data; must never interpret it (what a binding allows is the broker's
//! authorizer's, `sluice::security::acl`).

use serde::{Deserialize, Serialize};

/// One ACL binding: a resource pattern and an access-control entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclRecord {
    /// Kafka's resource type code (TOPIC 2, GROUP 3, CLUSTER 4, TRANSACTIONAL_ID 5).
    pub resource_type: i8,
    /// The resource name or prefix (`*` with a literal pattern: every resource).
    pub resource_name: String,
    /// Kafka's pattern type code (LITERAL 3, PREFIXED 4).
    pub pattern_type: i8,
    /// `Type:name`, e.g. `User:alice` or `User:*`.
    pub principal: String,
    /// A client IP address, or `*`.
    pub host: String,
    /// Kafka's operation code (ALL 2, READ 3, ... IDEMPOTENT_WRITE 12).
    pub operation: i8,
    /// Kafka's permission code (DENY 2, ALLOW 3).
    pub permission: i8,
}
