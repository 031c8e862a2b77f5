//! Authorization with Kafka's StandardAuthorizer semantics: ACL bindings (kept in the cluster
//! metadata, [`AclSet`]), the broker's authorizer settings (`authorizer.class.name`,
//! `super.users`, `allow.everyone.if.no.acl.found`) and the decision for one request.
//!
//! Owns the decision only; must never read the metadata log or a socket, and must never be
//! consulted when no authorizer is configured (handlers skip it entirely, so a broker without
//! one behaves and costs exactly as before).

mod index;
mod types;

use std::net::IpAddr;

pub use index::{AclSet, Verdict};
pub use sluice_cluster::acl::AclRecord;
pub use types::{
    pattern, permission, split_principal, validate_new, AclFilter, Operation, ResourceType,
    ANY_CODE, CLUSTER_NAME, RESOURCE_ANY, WILDCARD,
};

use super::Principal;

/// Kafka's authorizer class name; the only one `authorizer.class.name` accepts.
pub const STANDARD_AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";
/// The class name of Kafka's ZooKeeper-era authorizer, accepted as the same semantics.
const ACL_AUTHORIZER: &str = "kafka.security.authorizer.AclAuthorizer";

/// The broker's authorizer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorizer {
    /// `super.users`, split into (kind, name).
    super_users: Vec<(Box<str>, Box<str>)>,
    /// `allow.everyone.if.no.acl.found`.
    allow_if_no_acls: bool,
}

impl Authorizer {
    /// The authorizer `authorizer.class.name` asks for: None when empty (authorization off),
    /// an error for any class but Kafka's standard one or a malformed `super.users`.
    pub fn from_settings(
        class_name: &str,
        super_users: &str,
        allow_if_no_acls: bool,
    ) -> Result<Option<Authorizer>, String> {
        match class_name.trim() {
            "" => return Ok(None),
            STANDARD_AUTHORIZER | ACL_AUTHORIZER => {}
            other => {
                return Err(format!(
                    "'{other}' is not supported; use {STANDARD_AUTHORIZER} or leave it empty"
                ))
            }
        }
        let mut users = Vec::new();
        for entry in super_users
            .split(';')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (kind, name) = split_principal(entry)
                .ok_or_else(|| format!("super user '{entry}' is not Type:name (User:admin)"))?;
            users.push((kind.into(), name.into()));
        }
        Ok(Some(Authorizer {
            super_users: users,
            allow_if_no_acls,
        }))
    }

    /// Whether `principal` is a super user.
    pub fn is_super_user(&self, principal: &Principal) -> bool {
        self.super_users
            .iter()
            .any(|(kind, name)| **kind == *principal.kind && **name == *principal.name)
    }

    /// Whether `principal` connecting from `host` may do `operation` on the named resource.
    pub fn allows(
        &self,
        acls: &AclSet,
        principal: &Principal,
        host: IpAddr,
        operation: Operation,
        rtype: ResourceType,
        name: &str,
    ) -> bool {
        if self.is_super_user(principal) {
            return true;
        }
        match acls.verdict(principal, host, operation, rtype, name) {
            Verdict::Allowed => true,
            Verdict::Denied => false,
            Verdict::NoAcls => self.allow_if_no_acls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        assert_eq!(Authorizer::from_settings("", "User:x", false), Ok(None));
        assert!(Authorizer::from_settings("com.example.Mine", "", false).is_err());
        assert!(Authorizer::from_settings(STANDARD_AUTHORIZER, "admin", false).is_err());
        let auth = Authorizer::from_settings(STANDARD_AUTHORIZER, "User:a; User:b", false)
            .ok()
            .flatten()
            .expect("authorizer");
        assert!(auth.is_super_user(&Principal::user("b")));
        assert!(!auth.is_super_user(&Principal::user("c")));
    }

    #[test]
    fn super_users_and_the_default() {
        let local = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let acls = AclSet::default();
        let strict = Authorizer::from_settings(STANDARD_AUTHORIZER, "User:root", false)
            .ok()
            .flatten()
            .expect("authorizer");
        let open = Authorizer::from_settings(STANDARD_AUTHORIZER, "", true)
            .ok()
            .flatten()
            .expect("authorizer");
        let check = |auth: &Authorizer, who: &str| {
            auth.allows(
                &acls,
                &Principal::user(who),
                local,
                Operation::Write,
                ResourceType::Topic,
                "t",
            )
        };
        assert!(check(&strict, "root"));
        assert!(!check(&strict, "alice"));
        assert!(check(&open, "alice"));
    }
}
