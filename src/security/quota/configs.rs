//! The client quota configuration the cluster metadata holds: which values apply to which
//! entity (`user`, `client-id`, both, with `<default>` for either), how an alteration is
//! validated and applied, which entities a DescribeClientQuotas filter matches, and which
//! entity's value governs a connection (Kafka's precedence of the eight combinations).
//!
//! Owns the configuration only; must never measure a rate or throttle anyone (that is
//! [`super::manager`]), and is changed only by applying committed metadata records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::QuotaKind;

/// The entity types Kafka's client quotas name.
pub const ENTITY_USER: &str = "user";
/// The client-id entity type.
pub const ENTITY_CLIENT_ID: &str = "client-id";

/// One component of an entity: a name, or the default for every name without its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityName {
    /// `<default>`: applies to every name that has no entry of its own.
    Default,
    /// One user or client id.
    Named(String),
}

impl EntityName {
    /// Kafka's wire form: the name, or null for the default.
    pub fn from_wire(name: Option<&str>) -> EntityName {
        match name {
            Some(name) => EntityName::Named(name.to_string()),
            None => EntityName::Default,
        }
    }

    /// The wire form back.
    pub fn wire(&self) -> Option<&str> {
        match self {
            EntityName::Default => None,
            EntityName::Named(name) => Some(name),
        }
    }
}

/// A quota entity: a user, a client id, or both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    /// The `user` component, if the entity has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<EntityName>,
    /// The `client-id` component, if the entity has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<EntityName>,
}

impl QuotaEntity {
    /// Builds an entity from its wire components; Err names what Kafka refuses with
    /// INVALID_REQUEST (no component, an unknown or repeated type, `ip`).
    pub fn from_wire<'a>(
        components: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<QuotaEntity, String> {
        let mut entity = QuotaEntity {
            user: None,
            client_id: None,
        };
        for (kind, name) in components {
            let slot = match kind {
                ENTITY_USER => &mut entity.user,
                ENTITY_CLIENT_ID => &mut entity.client_id,
                "ip" => return Err("ip quotas (connection creation rate) are not supported".into()),
                other => return Err(format!("unknown entity type '{other}'")),
            };
            if slot.is_some() {
                return Err(format!("entity type '{kind}' appears more than once"));
            }
            *slot = Some(EntityName::from_wire(name));
        }
        if entity.user.is_none() && entity.client_id.is_none() {
            return Err("the entity has no component".into());
        }
        Ok(entity)
    }

    /// The wire components, user first.
    pub fn components(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut out = Vec::with_capacity(2);
        if let Some(user) = &self.user {
            out.push((ENTITY_USER, user.wire()));
        }
        if let Some(client) = &self.client_id {
            out.push((ENTITY_CLIENT_ID, client.wire()));
        }
        out
    }
}

/// Checks one quota key and value as Kafka's controller does: known key, finite positive
/// value, a whole number for the byte rates.
pub fn validate(key: &str, value: f64) -> Result<QuotaKind, String> {
    let kind = QuotaKind::from_key(key).ok_or_else(|| format!("unknown quota key '{key}'"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{key} must be a positive number, got {value}"));
    }
    if kind.whole_number() && value.fract() != 0.0 {
        return Err(format!("{key} must be a whole number, got {value}"));
    }
    Ok(kind)
}

/// A DescribeClientQuotas filter component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchName {
    /// Match type 0: this exact name.
    Exact(String),
    /// Match type 1: the default entity.
    Default,
    /// Match type 2: any entity that names this type (named or default).
    Any,
}

/// One entity and its values, as [`ClientQuotas::describe`] finds them.
pub type EntityValues<'a> = (&'a QuotaEntity, &'a BTreeMap<String, f64>);

/// Every entity's values, by entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientQuotas {
    entries: BTreeMap<QuotaEntity, BTreeMap<String, f64>>,
    /// Whether any entity has a value of each kind (the per-request fast check).
    kinds: [bool; QuotaKind::COUNT],
}

/// The entity a connection's usage of one kind is measured under, with the value that governs
/// it: Kafka's metric tags (the user or client id a default entry stands for are filled in, so
/// each user under `<default>` has its own rate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeasuredEntity {
    /// The user tag ("" when the governing entry has no user component).
    pub user: String,
    /// The client-id tag ("" when the governing entry has no client-id component).
    pub client_id: String,
}

impl ClientQuotas {
    /// Whether no quota is configured at all (then nothing is measured).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some entity has a value of `kind`.
    pub fn has(&self, kind: QuotaKind) -> bool {
        self.kinds[kind as usize]
    }

    /// Sets (`Some`) or removes (`None`) one value; an entity left without values is gone.
    pub fn apply(&mut self, entity: &QuotaEntity, key: &str, value: Option<f64>) {
        match value {
            Some(value) => {
                self.entries
                    .entry(entity.clone())
                    .or_default()
                    .insert(key.to_string(), value);
            }
            None => {
                if let Some(values) = self.entries.get_mut(entity) {
                    values.remove(key);
                    if values.is_empty() {
                        self.entries.remove(entity);
                    }
                }
            }
        }
        self.kinds = [false; QuotaKind::COUNT];
        for key in self.entries.values().flat_map(|v| v.keys()) {
            if let Some(kind) = QuotaKind::from_key(key) {
                self.kinds[kind as usize] = true;
            }
        }
    }

    /// Every entity with its values (for snapshots and the metadata log).
    pub fn entries(&self) -> impl Iterator<Item = (&QuotaEntity, &BTreeMap<String, f64>)> {
        self.entries.iter()
    }

    /// The value of `kind` that governs user `user` with client id `client_id`, and the
    /// entity it is measured under: the first of Kafka's eight combinations, most specific
    /// first, that has a value of that kind.
    pub fn resolve(
        &self,
        kind: QuotaKind,
        user: &str,
        client_id: &str,
    ) -> Option<(f64, MeasuredEntity)> {
        if !self.has(kind) {
            return None;
        }
        let named = |n: &str| Some(EntityName::Named(n.to_string()));
        let default = || Some(EntityName::Default);
        // (user component, client component, the entity's user tag, its client tag)
        let order = [
            (named(user), named(client_id), true, true),
            (named(user), default(), true, true),
            (named(user), None, true, false),
            (default(), named(client_id), true, true),
            (default(), default(), true, true),
            (default(), None, true, false),
            (None, named(client_id), false, true),
            (None, default(), false, true),
        ];
        for (user_part, client_part, user_tag, client_tag) in order {
            let entity = QuotaEntity {
                user: user_part,
                client_id: client_part,
            };
            if let Some(value) = self.entries.get(&entity).and_then(|v| v.get(kind.key())) {
                let measured = MeasuredEntity {
                    user: if user_tag {
                        user.to_string()
                    } else {
                        String::new()
                    },
                    client_id: if client_tag {
                        client_id.to_string()
                    } else {
                        String::new()
                    },
                };
                return Some((*value, measured));
            }
        }
        None
    }

    /// The entities a DescribeClientQuotas filter matches: every filtered type matches, and
    /// with `strict` the entity names no other type. Err for a filter Kafka refuses.
    pub fn describe(
        &self,
        filter: &[(String, MatchName)],
        strict: bool,
    ) -> Result<Vec<EntityValues<'_>>, String> {
        let mut seen = Vec::new();
        for (kind, _) in filter {
            if kind != ENTITY_USER && kind != ENTITY_CLIENT_ID {
                if kind == "ip" {
                    return Err("ip quotas are not supported".into());
                }
                return Err(format!("unknown entity type '{kind}'"));
            }
            if seen.contains(&kind) {
                return Err(format!("entity type '{kind}' appears more than once"));
            }
            seen.push(kind);
        }
        let matches = |entity: &QuotaEntity| {
            let parts = [
                (ENTITY_USER, &entity.user),
                (ENTITY_CLIENT_ID, &entity.client_id),
            ];
            for (kind, part) in parts {
                let wanted = filter.iter().find(|(k, _)| k == kind).map(|(_, m)| m);
                let ok = match (wanted, part) {
                    (None, None) => true,
                    (None, Some(_)) => !strict,
                    (Some(_), None) => false,
                    (Some(MatchName::Any), Some(_)) => true,
                    (Some(MatchName::Default), Some(name)) => *name == EntityName::Default,
                    (Some(MatchName::Exact(want)), Some(name)) => {
                        matches!(name, EntityName::Named(n) if n == want)
                    }
                };
                if !ok {
                    return false;
                }
            }
            true
        };
        Ok(self.entries.iter().filter(|(e, _)| matches(e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(user: Option<Option<&str>>, client: Option<Option<&str>>) -> QuotaEntity {
        QuotaEntity {
            user: user.map(EntityName::from_wire),
            client_id: client.map(EntityName::from_wire),
        }
    }

    #[test]
    fn resolution_follows_kafkas_precedence() {
        let mut quotas = ClientQuotas::default();
        let key = QuotaKind::Produce.key();
        let all = [
            (entity(Some(Some("alice")), Some(Some("app"))), 1.0),
            (entity(Some(Some("alice")), Some(None)), 2.0),
            (entity(Some(Some("alice")), None), 3.0),
            (entity(Some(None), Some(Some("app"))), 4.0),
            (entity(Some(None), Some(None)), 5.0),
            (entity(Some(None), None), 6.0),
            (entity(None, Some(Some("app"))), 7.0),
            (entity(None, Some(None)), 8.0),
        ];
        for (e, v) in &all {
            quotas.apply(e, key, Some(*v));
        }
        let tags = |u: &str, c: &str| MeasuredEntity {
            user: u.into(),
            client_id: c.into(),
        };
        let expected = [
            tags("alice", "app"),
            tags("alice", "app"),
            tags("alice", ""),
            tags("alice", "app"),
            tags("alice", "app"),
            tags("alice", ""),
            tags("", "app"),
            tags("", "app"),
        ];
        for (i, (e, v)) in all.iter().enumerate() {
            let got = quotas.resolve(QuotaKind::Produce, "alice", "app");
            assert_eq!(got, Some((*v, expected[i].clone())), "level {}", i + 1);
            quotas.apply(e, key, None);
        }
        assert!(quotas.is_empty());
        assert_eq!(quotas.resolve(QuotaKind::Produce, "alice", "app"), None);
    }

    #[test]
    fn kinds_resolve_independently() {
        let mut quotas = ClientQuotas::default();
        quotas.apply(
            &entity(None, Some(Some("a"))),
            "producer_byte_rate",
            Some(100.0),
        );
        quotas.apply(&entity(Some(None), None), "consumer_byte_rate", Some(50.0));
        assert!(quotas.has(QuotaKind::Produce) && !quotas.has(QuotaKind::Request));
        assert_eq!(quotas.resolve(QuotaKind::Produce, "bob", "b"), None);
        assert_eq!(
            quotas.resolve(QuotaKind::Fetch, "bob", "a").map(|r| r.0),
            Some(50.0)
        );
    }

    #[test]
    fn validation_and_describe_filters() {
        assert!(validate("producer_byte_rate", 1024.0).is_ok());
        assert!(validate("producer_byte_rate", 10.5).is_err());
        assert!(validate("request_percentage", 12.5).is_ok());
        assert!(validate("producer_byte_rate", -1.0).is_err());
        assert!(validate("bogus", 1.0).is_err());
        assert!(QuotaEntity::from_wire([("user", None), ("user", Some("x"))]).is_err());
        assert!(QuotaEntity::from_wire([("ip", Some("1.2.3.4"))]).is_err());
        assert!(QuotaEntity::from_wire(std::iter::empty()).is_err());

        let mut quotas = ClientQuotas::default();
        quotas.apply(
            &entity(None, Some(Some("a"))),
            "producer_byte_rate",
            Some(1.0),
        );
        quotas.apply(&entity(None, Some(None)), "producer_byte_rate", Some(2.0));
        quotas.apply(
            &entity(Some(Some("u")), Some(Some("a"))),
            "producer_byte_rate",
            Some(3.0),
        );
        let count = |filter: &[(String, MatchName)], strict| {
            quotas
                .describe(filter, strict)
                .map(|v| v.len())
                .unwrap_or(99)
        };
        let client = |m: MatchName| vec![(ENTITY_CLIENT_ID.to_string(), m)];
        assert_eq!(count(&client(MatchName::Exact("a".into())), false), 2);
        assert_eq!(count(&client(MatchName::Exact("a".into())), true), 1);
        assert_eq!(count(&client(MatchName::Default), true), 1);
        assert_eq!(count(&client(MatchName::Any), false), 3);
        assert_eq!(count(&client(MatchName::Any), true), 2);
        assert_eq!(count(&[], false), 3);
        assert_eq!(count(&[("ip".into(), MatchName::Any)], false), 99);
    }
}
