//! The set of ACL bindings the cluster metadata holds, and its lookup index: per resource
//! type, literal names (the `*` wildcard among them) and prefixes in hash maps, plus the
//! lengths of the prefixes present, so one decision costs a handful of hash lookups whatever
//! the number of bindings, and allocates nothing.
//!
//! Immutable once built: a change builds a new set (cold path) that the next metadata
//! snapshot carries; readers never lock. Owns the StandardAuthorizer matching rules (deny
//! wins, ALLOW implications, `User:*`, host `*` or exact IP, "no ACL on the resource");
//! must never know about super users or the default result (that is the [`super::Authorizer`]).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use sluice_cluster::acl::AclRecord;

use super::types::{pattern, permission, split_principal, Operation, ResourceType, WILDCARD};
use crate::security::Principal;

/// One binding as the index matches it.
#[derive(Debug, Clone)]
struct Entry {
    principal_kind: Box<str>,
    /// `*` matches every name of the kind.
    principal_name: Box<str>,
    /// None: any host.
    host: HostMatch,
    operation: Operation,
    allow: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Ip(IpAddr),
    /// Not an IP address: Kafka compares the client's address text, so it never matches.
    Never,
}

/// What the bindings of one resource say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A matching ALLOW binding and no matching DENY.
    Allowed,
    /// A matching DENY binding, or bindings exist on the resource and none allows.
    Denied,
    /// No binding names the resource at all (`allow.everyone.if.no.acl.found` decides).
    NoAcls,
}

#[derive(Debug, Default, Clone)]
struct TypeIndex {
    literal: HashMap<Box<str>, Vec<Entry>>,
    prefixed: HashMap<Box<str>, Vec<Entry>>,
    /// Distinct byte lengths of the prefixes in `prefixed`, ascending.
    prefix_lens: Vec<usize>,
}

/// Every ACL binding, with its index.
#[derive(Debug, Default, Clone)]
pub struct AclSet {
    bindings: BTreeSet<AclRecord>,
    by_type: [TypeIndex; 4],
}

impl PartialEq for AclSet {
    fn eq(&self, other: &AclSet) -> bool {
        self.bindings == other.bindings
    }
}

impl AclSet {
    /// Builds the set (and its index) from stored bindings; ones of a resource type or
    /// operation this broker does not know are kept (and listed) but never match.
    pub fn new(bindings: BTreeSet<AclRecord>) -> AclSet {
        let mut by_type: [TypeIndex; 4] = Default::default();
        for binding in &bindings {
            let (Some(rtype), Some(operation), Some((kind, name))) = (
                ResourceType::from_code(binding.resource_type),
                Operation::from_code(binding.operation),
                split_principal(&binding.principal),
            ) else {
                continue;
            };
            let host = if binding.host == WILDCARD {
                HostMatch::Any
            } else {
                binding.host.parse().map_or(HostMatch::Never, HostMatch::Ip)
            };
            let entry = Entry {
                principal_kind: kind.into(),
                principal_name: name.into(),
                host,
                operation,
                allow: binding.permission == permission::ALLOW,
            };
            let index = &mut by_type[rtype.slot()];
            let map = match binding.pattern_type {
                pattern::LITERAL => &mut index.literal,
                pattern::PREFIXED => {
                    index.prefix_lens.push(binding.resource_name.len());
                    &mut index.prefixed
                }
                _ => continue,
            };
            map.entry(binding.resource_name.as_str().into())
                .or_default()
                .push(entry);
        }
        for index in &mut by_type {
            index.prefix_lens.sort_unstable();
            index.prefix_lens.dedup();
        }
        AclSet { bindings, by_type }
    }

    /// The stored bindings, in a stable order.
    pub fn bindings(&self) -> &BTreeSet<AclRecord> {
        &self.bindings
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// The set with `added` bindings (duplicates are one binding).
    pub fn with(&self, added: &[AclRecord]) -> AclSet {
        let mut bindings = self.bindings.clone();
        bindings.extend(added.iter().cloned());
        AclSet::new(bindings)
    }

    /// The set without `removed` bindings.
    pub fn without(&self, removed: &[AclRecord]) -> AclSet {
        let mut bindings = self.bindings.clone();
        for binding in removed {
            bindings.remove(binding);
        }
        AclSet::new(bindings)
    }

    /// What the bindings say about `principal` from `host` doing `operation` on the named
    /// resource, with StandardAuthorizer's rules.
    pub fn verdict(
        &self,
        principal: &Principal,
        host: IpAddr,
        operation: Operation,
        rtype: ResourceType,
        name: &str,
    ) -> Verdict {
        let index = &self.by_type[rtype.slot()];
        let mut found = false;
        let mut allowed = false;
        let mut consider = |entries: Option<&Vec<Entry>>| -> bool {
            for entry in entries.into_iter().flatten() {
                found = true;
                if !entry.applies_to(principal, host) {
                    continue;
                }
                if entry.allow {
                    allowed |= entry.operation.allows(operation);
                } else if entry.operation.denies(operation) {
                    return true;
                }
            }
            false
        };
        if consider(index.literal.get(name)) || consider(index.literal.get(WILDCARD)) {
            return Verdict::Denied;
        }
        for &len in &index.prefix_lens {
            if len > name.len() {
                break;
            }
            if !name.is_char_boundary(len) {
                continue;
            }
            if consider(index.prefixed.get(&name[..len])) {
                return Verdict::Denied;
            }
        }
        match (found, allowed) {
            (false, _) => Verdict::NoAcls,
            (true, true) => Verdict::Allowed,
            (true, false) => Verdict::Denied,
        }
    }

    /// Whether some topic ALLOW binding for WRITE (or ALL) applies to `principal` from
    /// `host`, and no wildcard DENY of it does: the check Kafka 3+ makes for an idempotent
    /// producer without IDEMPOTENT_WRITE on the cluster (`authorizeByResourceType`, here
    /// simplified to the wildcard deny, since a literal or prefixed deny leaves other topics
    /// writable anyway).
    pub fn any_topic_allows(
        &self,
        principal: &Principal,
        host: IpAddr,
        operation: Operation,
    ) -> bool {
        let index = &self.by_type[ResourceType::Topic.slot()];
        let applies = |entry: &&Entry| entry.applies_to(principal, host);
        let denied = index
            .literal
            .get(WILDCARD)
            .into_iter()
            .flatten()
            .filter(applies)
            .any(|e| !e.allow && e.operation.denies(operation));
        !denied
            && index
                .literal
                .values()
                .chain(index.prefixed.values())
                .flatten()
                .filter(applies)
                .any(|e| e.allow && e.operation.allows(operation))
    }
}

impl Entry {
    fn applies_to(&self, principal: &Principal, host: IpAddr) -> bool {
        let principal_matches = *self.principal_kind == *principal.kind
            && (&*self.principal_name == WILDCARD || *self.principal_name == *principal.name);
        let host_matches = match self.host {
            HostMatch::Any => true,
            HostMatch::Ip(ip) => ip == host,
            HostMatch::Never => false,
        };
        principal_matches && host_matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn acl(
        rtype: ResourceType,
        name: &str,
        pattern: i8,
        who: &str,
        op: Operation,
        allow: bool,
    ) -> AclRecord {
        AclRecord {
            resource_type: rtype as i8,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: who.into(),
            host: "*".into(),
            operation: op as i8,
            permission: if allow {
                permission::ALLOW
            } else {
                permission::DENY
            },
        }
    }

    fn set(acls: Vec<AclRecord>) -> AclSet {
        AclSet::new(acls.into_iter().collect())
    }

    fn topic(set: &AclSet, who: &str, op: Operation, name: &str) -> Verdict {
        set.verdict(&Principal::user(who), LOCAL, op, ResourceType::Topic, name)
    }

    #[test]
    fn literal_prefixed_and_wildcard_names() {
        let acls = set(vec![
            acl(
                ResourceType::Topic,
                "orders",
                pattern::LITERAL,
                "User:alice",
                Operation::Read,
                true,
            ),
            acl(
                ResourceType::Topic,
                "pay",
                pattern::PREFIXED,
                "User:bob",
                Operation::Write,
                true,
            ),
            acl(
                ResourceType::Topic,
                "*",
                pattern::LITERAL,
                "User:carol",
                Operation::All,
                true,
            ),
        ]);
        assert_eq!(
            topic(&acls, "alice", Operation::Read, "orders"),
            Verdict::Allowed
        );
        // The literal `orders` is not a prefix: `orders2` has bindings (the wildcard) but
        // none for alice.
        assert_eq!(
            topic(&acls, "alice", Operation::Read, "orders2"),
            Verdict::Denied
        );
        assert_eq!(
            topic(&acls, "bob", Operation::Write, "payments"),
            Verdict::Allowed
        );
        assert_eq!(topic(&acls, "bob", Operation::Write, "pa"), Verdict::Denied);
        assert_eq!(
            topic(&acls, "carol", Operation::Delete, "anything"),
            Verdict::Allowed
        );
        assert_eq!(
            topic(&acls, "alice", Operation::Write, "orders"),
            Verdict::Denied
        );
        // Groups have no bindings at all.
        let group = acls.verdict(
            &Principal::user("alice"),
            LOCAL,
            Operation::Read,
            ResourceType::Group,
            "g",
        );
        assert_eq!(group, Verdict::NoAcls);
    }

    #[test]
    fn deny_wins_and_does_not_imply() {
        let acls = set(vec![
            acl(
                ResourceType::Topic,
                "t",
                pattern::LITERAL,
                "User:*",
                Operation::All,
                true,
            ),
            acl(
                ResourceType::Topic,
                "t",
                pattern::PREFIXED,
                "User:mallory",
                Operation::Read,
                false,
            ),
        ]);
        assert_eq!(
            topic(&acls, "alice", Operation::Read, "t"),
            Verdict::Allowed
        );
        assert_eq!(
            topic(&acls, "mallory", Operation::Read, "t"),
            Verdict::Denied
        );
        assert_eq!(
            topic(&acls, "mallory", Operation::Read, "tx"),
            Verdict::Denied
        );
        // A denied READ does not deny DESCRIBE; the wildcard ALL still allows it.
        assert_eq!(
            topic(&acls, "mallory", Operation::Describe, "t"),
            Verdict::Allowed
        );
        assert_eq!(
            topic(&acls, "mallory", Operation::Write, "t"),
            Verdict::Allowed
        );
    }

    #[test]
    fn allow_implies_describe() {
        let acls = set(vec![acl(
            ResourceType::Topic,
            "t",
            pattern::LITERAL,
            "User:a",
            Operation::Write,
            true,
        )]);
        assert_eq!(
            topic(&acls, "a", Operation::Describe, "t"),
            Verdict::Allowed
        );
        assert_eq!(topic(&acls, "a", Operation::Read, "t"), Verdict::Denied);
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard() {
        let mut only_remote = acl(
            ResourceType::Topic,
            "t",
            pattern::LITERAL,
            "User:a",
            Operation::Read,
            true,
        );
        only_remote.host = "10.0.0.1".into();
        let mut by_name = only_remote.clone();
        by_name.host = "localhost".into();
        let acls = set(vec![only_remote, by_name]);
        assert_eq!(topic(&acls, "a", Operation::Read, "t"), Verdict::Denied);
        let remote = "10.0.0.1".parse().expect("ip");
        let verdict = acls.verdict(
            &Principal::user("a"),
            remote,
            Operation::Read,
            ResourceType::Topic,
            "t",
        );
        assert_eq!(verdict, Verdict::Allowed);
    }

    #[test]
    fn prefixes_respect_char_boundaries() {
        let acls = set(vec![acl(
            ResourceType::Topic,
            "é",
            pattern::PREFIXED,
            "User:a",
            Operation::Read,
            true,
        )]);
        assert_eq!(topic(&acls, "a", Operation::Read, "éa"), Verdict::Allowed);
        assert_eq!(topic(&acls, "a", Operation::Read, "e"), Verdict::NoAcls);
    }

    #[test]
    fn idempotent_write_by_any_topic() {
        let acls = set(vec![acl(
            ResourceType::Topic,
            "p",
            pattern::PREFIXED,
            "User:a",
            Operation::Write,
            true,
        )]);
        assert!(acls.any_topic_allows(&Principal::user("a"), LOCAL, Operation::Write));
        assert!(!acls.any_topic_allows(&Principal::user("b"), LOCAL, Operation::Write));
        let denied = acls.with(&[acl(
            ResourceType::Topic,
            "*",
            pattern::LITERAL,
            "User:a",
            Operation::Write,
            false,
        )]);
        assert!(!denied.any_topic_allows(&Principal::user("a"), LOCAL, Operation::Write));
        assert_eq!(
            denied.without(&[acl(
                ResourceType::Topic,
                "*",
                pattern::LITERAL,
                "User:a",
                Operation::Write,
                false
            )]),
            acls
        );
    }
}
