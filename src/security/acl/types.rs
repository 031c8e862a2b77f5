//! Kafka's ACL vocabulary: resource types, pattern types, operations and permissions with
//! their wire codes and names, the binding filter of DescribeAcls/DeleteAcls, and the
//! validation CreateAcls applies to a new binding.
//!
//! Owns the codes and the matching of a filter against a stored binding; must never decide an
//! authorization (that is [`super::index`] and [`super::Authorizer`]).

use sluice_cluster::acl::AclRecord;

/// A resource type, with Kafka's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i8)]
pub enum ResourceType {
    /// A topic.
    Topic = 2,
    /// A consumer group.
    Group = 3,
    /// The cluster (name `kafka-cluster`).
    Cluster = 4,
    /// A transactional id.
    TransactionalId = 5,
}

/// Kafka's code for "any resource type" in a filter.
pub const RESOURCE_ANY: i8 = 1;
/// The one name of the cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name, principal name or host matching every one.
pub const WILDCARD: &str = "*";

impl ResourceType {
    /// From Kafka's code; DELEGATION_TOKEN (6) and USER (7) are not served.
    pub fn from_code(code: i8) -> Option<ResourceType> {
        match code {
            2 => Some(ResourceType::Topic),
            3 => Some(ResourceType::Group),
            4 => Some(ResourceType::Cluster),
            5 => Some(ResourceType::TransactionalId),
            _ => None,
        }
    }

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "TOPIC",
            ResourceType::Group => "GROUP",
            ResourceType::Cluster => "CLUSTER",
            ResourceType::TransactionalId => "TRANSACTIONAL_ID",
        }
    }

    /// Index into per-type tables.
    pub(crate) fn slot(self) -> usize {
        self as usize - 2
    }
}

/// Pattern type codes.
pub mod pattern {
    /// Filter: any pattern type.
    pub const ANY: i8 = 1;
    /// Filter: every binding that would apply to the named resource.
    pub const MATCH: i8 = 2;
    /// The name is the resource's name (or `*`).
    pub const LITERAL: i8 = 3;
    /// The name is a prefix of resource names.
    pub const PREFIXED: i8 = 4;

    /// Kafka's name of a code.
    pub fn name(code: i8) -> &'static str {
        match code {
            ANY => "ANY",
            MATCH => "MATCH",
            LITERAL => "LITERAL",
            PREFIXED => "PREFIXED",
            _ => "UNKNOWN",
        }
    }
}

/// An operation, with Kafka's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum Operation {
    /// Every operation (only in bindings).
    All = 2,
    /// Consume, join a group, commit offsets.
    Read = 3,
    /// Produce.
    Write = 4,
    /// Create topics.
    Create = 5,
    /// Delete topics, records, groups.
    Delete = 6,
    /// Grow topics, manage ACLs.
    Alter = 7,
    /// See that a resource exists.
    Describe = 8,
    /// Broker-to-broker requests (follower fetch).
    ClusterAction = 9,
    /// Read configs.
    DescribeConfigs = 10,
    /// Change configs.
    AlterConfigs = 11,
    /// Idempotent produce.
    IdempotentWrite = 12,
    /// Delegation tokens (stored, never checked: no token APIs are served).
    CreateTokens = 13,
    /// Delegation tokens (stored, never checked).
    DescribeTokens = 14,
}

/// Kafka's code for "any operation" and "any permission" in a filter.
pub const ANY_CODE: i8 = 1;

impl Operation {
    /// From Kafka's code (ANY and UNKNOWN are not operations).
    pub fn from_code(code: i8) -> Option<Operation> {
        use Operation::*;
        Some(match code {
            2 => All,
            3 => Read,
            4 => Write,
            5 => Create,
            6 => Delete,
            7 => Alter,
            8 => Describe,
            9 => ClusterAction,
            10 => DescribeConfigs,
            11 => AlterConfigs,
            12 => IdempotentWrite,
            13 => CreateTokens,
            14 => DescribeTokens,
            _ => return None,
        })
    }

    /// From a kafka-acls name (`Read`, `IdempotentWrite`, `DESCRIBE_CONFIGS`...).
    pub fn parse(name: &str) -> Option<Operation> {
        let key: String = name
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        (2..=14)
            .filter_map(Operation::from_code)
            .find(|op| op.name().replace('_', "").eq_ignore_ascii_case(&key))
    }

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        use Operation::*;
        match self {
            All => "ALL",
            Read => "READ",
            Write => "WRITE",
            Create => "CREATE",
            Delete => "DELETE",
            Alter => "ALTER",
            Describe => "DESCRIBE",
            ClusterAction => "CLUSTER_ACTION",
            DescribeConfigs => "DESCRIBE_CONFIGS",
            AlterConfigs => "ALTER_CONFIGS",
            IdempotentWrite => "IDEMPOTENT_WRITE",
            CreateTokens => "CREATE_TOKENS",
            DescribeTokens => "DESCRIBE_TOKENS",
        }
    }

    /// Whether an ALLOW binding for `self` allows `wanted`: the same operation, ALL, or one
    /// that implies it (READ/WRITE/DELETE/ALTER imply DESCRIBE, ALTER_CONFIGS implies
    /// DESCRIBE_CONFIGS). DENY bindings never imply: a denied READ still lets DESCRIBE pass.
    pub fn allows(self, wanted: Operation) -> bool {
        use Operation::*;
        self == All
            || self == wanted
            || (wanted == Describe && matches!(self, Read | Write | Delete | Alter))
            || (wanted == DescribeConfigs && self == AlterConfigs)
    }

    /// Whether a DENY binding for `self` denies `wanted`.
    pub fn denies(self, wanted: Operation) -> bool {
        self == Operation::All || self == wanted
    }
}

/// Permission codes.
pub mod permission {
    /// Filter: either.
    pub const ANY: i8 = 1;
    /// Denies; wins over any allow.
    pub const DENY: i8 = 2;
    /// Allows.
    pub const ALLOW: i8 = 3;

    /// Kafka's name of a code.
    pub fn name(code: i8) -> &'static str {
        match code {
            ANY => "ANY",
            DENY => "DENY",
            ALLOW => "ALLOW",
            _ => "UNKNOWN",
        }
    }
}

/// Splits `Type:name` (the name may itself hold colons, as certificate subjects do).
pub fn split_principal(principal: &str) -> Option<(&str, &str)> {
    let (kind, name) = principal.split_once(':')?;
    (!kind.is_empty() && !name.is_empty()).then_some((kind, name))
}

/// Why CreateAcls refuses a binding (Kafka's INVALID_REQUEST), as Kafka's controller
/// validates it.
pub fn validate_new(binding: &AclRecord) -> Result<(), String> {
    if ResourceType::from_code(binding.resource_type).is_none() {
        return Err(match binding.resource_type {
            6 | 7 => format!(
                "resource type {} (delegation tokens, users) is not supported",
                binding.resource_type
            ),
            code => format!("Invalid resourceType {code}"),
        });
    }
    if !matches!(binding.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
        return Err(format!(
            "Invalid patternType {}",
            pattern::name(binding.pattern_type)
        ));
    }
    if Operation::from_code(binding.operation).is_none() {
        return Err(format!("Invalid operation {}", binding.operation));
    }
    if !matches!(binding.permission, permission::ALLOW | permission::DENY) {
        return Err(format!(
            "Invalid permissionType {}",
            permission::name(binding.permission)
        ));
    }
    if binding.resource_name.is_empty() {
        return Err("Resource name should not be empty".into());
    }
    if split_principal(&binding.principal).is_none() {
        return Err(format!(
            "Could not parse principal from `{}` (no colon is found between principal type and principal name)",
            binding.principal
        ));
    }
    if binding.host.is_empty() {
        return Err("Host should not be empty (use * for any host)".into());
    }
    Ok(())
}

/// A DescribeAcls/DeleteAcls filter; `None` strings match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    /// Resource type code, or ANY (1).
    pub resource_type: i8,
    /// Resource name, or None for any.
    pub resource_name: Option<String>,
    /// ANY, MATCH, LITERAL or PREFIXED.
    pub pattern_type: i8,
    /// Principal, or None for any.
    pub principal: Option<String>,
    /// Host, or None for any.
    pub host: Option<String>,
    /// Operation code, or ANY (1).
    pub operation: i8,
    /// Permission code, or ANY (1).
    pub permission: i8,
}

impl AclFilter {
    /// Why the filter cannot match anything meaningful (INVALID_REQUEST), as Kafka refuses
    /// UNKNOWN codes.
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type != RESOURCE_ANY
            && ResourceType::from_code(self.resource_type).is_none()
            && !matches!(self.resource_type, 6 | 7)
        {
            return Err(format!("Unknown resource type {}", self.resource_type));
        }
        if !(pattern::ANY..=pattern::PREFIXED).contains(&self.pattern_type) {
            return Err("Unknown patternFilter.".into());
        }
        if self.operation != ANY_CODE && Operation::from_code(self.operation).is_none() {
            return Err("Unknown entryFilter.".into());
        }
        if !(permission::ANY..=permission::ALLOW).contains(&self.permission) {
            return Err("Unknown entryFilter.".into());
        }
        Ok(())
    }

    /// Whether `binding` matches, with Kafka's `AclBindingFilter.matches` rules.
    pub fn matches(&self, binding: &AclRecord) -> bool {
        if self.resource_type != RESOURCE_ANY && self.resource_type != binding.resource_type {
            return false;
        }
        if !matches!(self.pattern_type, pattern::ANY | pattern::MATCH)
            && self.pattern_type != binding.pattern_type
        {
            return false;
        }
        let name_matches = match self.resource_name.as_deref() {
            None => true,
            Some(name) if self.pattern_type == pattern::MATCH => match binding.pattern_type {
                pattern::LITERAL => {
                    name == binding.resource_name || binding.resource_name == WILDCARD
                }
                pattern::PREFIXED => name.starts_with(binding.resource_name.as_str()),
                _ => false,
            },
            Some(name) => name == binding.resource_name,
        };
        name_matches
            && self
                .principal
                .as_deref()
                .is_none_or(|p| p == binding.principal)
            && self.host.as_deref().is_none_or(|h| h == binding.host)
            && (self.operation == ANY_CODE || self.operation == binding.operation)
            && (self.permission == permission::ANY || self.permission == binding.permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(rtype: i8, name: &str, pattern: i8) -> AclRecord {
        AclRecord {
            resource_type: rtype,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: Operation::Read as i8,
            permission: permission::ALLOW,
        }
    }

    fn filter(name: Option<&str>, pattern: i8) -> AclFilter {
        AclFilter {
            resource_type: RESOURCE_ANY,
            resource_name: name.map(String::from),
            pattern_type: pattern,
            principal: None,
            host: None,
            operation: ANY_CODE,
            permission: permission::ANY,
        }
    }

    #[test]
    fn implications_apply_to_allow_only() {
        assert!(Operation::Read.allows(Operation::Describe));
        assert!(Operation::Alter.allows(Operation::Describe));
        assert!(!Operation::Create.allows(Operation::Describe));
        assert!(Operation::AlterConfigs.allows(Operation::DescribeConfigs));
        assert!(!Operation::DescribeConfigs.allows(Operation::AlterConfigs));
        assert!(Operation::All.allows(Operation::IdempotentWrite));
        assert!(!Operation::Read.denies(Operation::Describe));
        assert!(Operation::All.denies(Operation::Describe));
    }

    #[test]
    fn operation_names_parse_as_kafka_acls_writes_them() {
        assert_eq!(Operation::parse("Read"), Some(Operation::Read));
        assert_eq!(
            Operation::parse("IdempotentWrite"),
            Some(Operation::IdempotentWrite)
        );
        assert_eq!(
            Operation::parse("DESCRIBE_CONFIGS"),
            Some(Operation::DescribeConfigs)
        );
        assert_eq!(Operation::parse("Any"), None);
    }

    #[test]
    fn filters_match_as_kafka() {
        let literal = binding(2, "orders", pattern::LITERAL);
        let wildcard = binding(2, "*", pattern::LITERAL);
        let prefixed = binding(2, "ord", pattern::PREFIXED);
        let any = filter(None, pattern::ANY);
        assert!(any.matches(&literal) && any.matches(&wildcard) && any.matches(&prefixed));
        let exact = filter(Some("orders"), pattern::ANY);
        assert!(exact.matches(&literal) && !exact.matches(&wildcard) && !exact.matches(&prefixed));
        let matching = filter(Some("orders"), pattern::MATCH);
        assert!(matching.matches(&literal) && matching.matches(&wildcard));
        assert!(matching.matches(&prefixed));
        assert!(!filter(Some("other"), pattern::MATCH).matches(&prefixed));
        let only_prefixed = filter(Some("ord"), pattern::PREFIXED);
        assert!(only_prefixed.matches(&prefixed) && !only_prefixed.matches(&literal));
        let mut deny = filter(None, pattern::ANY);
        deny.permission = permission::DENY;
        assert!(!deny.matches(&literal));
    }

    #[test]
    fn new_bindings_are_validated() {
        assert!(validate_new(&binding(2, "t", pattern::LITERAL)).is_ok());
        assert!(validate_new(&binding(1, "t", pattern::LITERAL)).is_err());
        assert!(validate_new(&binding(6, "t", pattern::LITERAL)).is_err());
        assert!(validate_new(&binding(2, "t", pattern::MATCH)).is_err());
        assert!(validate_new(&binding(2, "", pattern::LITERAL)).is_err());
        let mut no_colon = binding(2, "t", pattern::LITERAL);
        no_colon.principal = "alice".into();
        assert!(validate_new(&no_colon).is_err());
        let mut any_op = binding(2, "t", pattern::LITERAL);
        any_op.operation = ANY_CODE;
        assert!(validate_new(&any_op).is_err());
    }
}
