//! The authorizer as request handlers see it: one [`Authz`] per request, holding the
//! principal, the client's address and the ACL set of the current metadata snapshot, or
//! nothing at all when no authorizer is configured (then every check is a constant `true`
//! and nothing is loaded or cloned).
//!
//! Owns only the plumbing from a [`Session`] to [`Authorizer::allows`]; must never decide
//! which operation an API needs (each handler names it, after Kafka's table).

use std::net::IpAddr;
use std::sync::Arc;

use crate::security::acl::{AclSet, Authorizer, Operation, ResourceType, CLUSTER_NAME};
use crate::security::{Principal, Session};
use crate::shard::Shard;

/// One request's view of the authorizer.
pub(crate) enum Authz {
    /// No authorizer configured: everything is allowed.
    Off,
    /// Checks against these ACLs.
    On {
        /// The configured authorizer.
        authorizer: Arc<Authorizer>,
        /// The ACLs of the snapshot current when the request arrived.
        acls: Arc<AclSet>,
        /// Who asks.
        principal: Principal,
        /// From where.
        host: IpAddr,
    },
}

impl Authz {
    /// The view for a request of `session` on `shard`.
    pub(crate) fn of(shard: &Shard, session: &Session) -> Authz {
        match &shard.config.authorizer {
            None => Authz::Off,
            Some(authorizer) => Authz::On {
                authorizer: authorizer.clone(),
                acls: shard.metadata.load().acls.clone(),
                principal: session.principal(),
                host: session.peer.ip(),
            },
        }
    }

    /// Whether an authorizer is configured.
    pub(crate) fn is_on(&self) -> bool {
        matches!(self, Authz::On { .. })
    }

    /// Whether the request may do `operation` on the named resource.
    pub(crate) fn allows(&self, operation: Operation, rtype: ResourceType, name: &str) -> bool {
        match self {
            Authz::Off => true,
            Authz::On {
                authorizer,
                acls,
                principal,
                host,
            } => authorizer.allows(acls, principal, *host, operation, rtype, name),
        }
    }

    /// `allows` on a topic.
    pub(crate) fn topic(&self, operation: Operation, name: &str) -> bool {
        self.allows(operation, ResourceType::Topic, name)
    }

    /// `allows` on a group.
    pub(crate) fn group(&self, operation: Operation, name: &str) -> bool {
        self.allows(operation, ResourceType::Group, name)
    }

    /// `allows` on a transactional id.
    pub(crate) fn transactional_id(&self, operation: Operation, name: &str) -> bool {
        self.allows(operation, ResourceType::TransactionalId, name)
    }

    /// `allows` on the cluster.
    pub(crate) fn cluster(&self, operation: Operation) -> bool {
        self.allows(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Whether an idempotent producer may start: IDEMPOTENT_WRITE on the cluster, or (Kafka
    /// 3.0+) WRITE on some topic.
    pub(crate) fn idempotent_write(&self) -> bool {
        match self {
            Authz::Off => true,
            Authz::On {
                authorizer,
                acls,
                principal,
                host,
            } => {
                self.cluster(Operation::IdempotentWrite)
                    || authorizer.is_super_user(principal)
                    || acls.any_topic_allows(principal, *host, Operation::Write)
            }
        }
    }
}
