//! Client quotas in a cluster: an alteration (checked by the handler as the single-broker
//! controller's would be) is forwarded to the active controller of the quorum as one command
//! per entity, and answered once this broker's published snapshot has applied it; every
//! broker derives its [`ClientQuotas`] from the committed cluster state ([`from_cluster`]).
//! Must never write the local metadata log.

use std::rc::Rc;

use sluice_cluster::state::ClusterState;
use sluice_cluster::wire::TopicAdminRequest;

use super::controller::{AdminError, QuotaAlteration};
use crate::errors::code;
use crate::security::quota::{ClientQuotas, QuotaEntity};
use crate::shard::Shard;

/// The cluster state's opaque form of an entity.
fn encode_entity(entity: &QuotaEntity) -> String {
    serde_json::to_string(entity).unwrap_or_default()
}

/// The quotas the committed cluster state holds (entries this broker cannot read are skipped
/// with a warning: they came from a newer broker).
pub fn from_cluster(state: &ClusterState) -> ClientQuotas {
    let mut quotas = ClientQuotas::default();
    for (encoded, values) in &state.client_quotas {
        let Ok(entity) = serde_json::from_str::<QuotaEntity>(encoded) else {
            tracing::warn!(entity = %encoded, "unreadable client quota entity in the cluster state");
            continue;
        };
        for (key, value) in values {
            match value.parse::<f64>() {
                Ok(value) => quotas.apply(&entity, key, Some(value)),
                Err(_) => tracing::warn!(%key, %value, "unreadable client quota value"),
            }
        }
    }
    quotas
}

/// Alters client quotas (already checked: [`super::controller::check_quota_ops`]) through the
/// quorum; one outcome per alteration.
pub async fn alter_in_cluster(
    shard: &Rc<Shard>,
    alterations: Vec<QuotaAlteration>,
) -> Vec<Result<(), AdminError>> {
    let mut results = Vec::with_capacity(alterations.len());
    for (entity, ops) in alterations {
        let Some(admin) = shard.metadata.admin() else {
            results.push(Err(super::forward::not_in_cluster()));
            continue;
        };
        let request = TopicAdminRequest::SetClientQuotas {
            entity: encode_entity(&entity),
            ops: ops
                .into_iter()
                .map(|(key, value)| (key, value.map(|v| v.to_string())))
                .collect(),
        };
        match admin.call(request).await {
            Ok(reply) => {
                super::forward::applied(shard, reply.committed_index).await;
                results.push(Ok(()));
            }
            Err(error) => results.push(Err((code::REQUEST_TIMED_OUT, error.to_string()))),
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::quota::EntityName;
    use sluice_cluster::state::Command;

    #[test]
    fn cluster_state_round_trips_quotas() {
        let entity = QuotaEntity {
            user: Some(EntityName::Default),
            client_id: Some(EntityName::Named("app".into())),
        };
        let mut state = ClusterState::default();
        state.apply(
            1,
            &Command::SetClientQuotas {
                entity: encode_entity(&entity),
                ops: vec![
                    ("producer_byte_rate".into(), Some(1024.0f64.to_string())),
                    ("request_percentage".into(), Some(12.5f64.to_string())),
                ],
            },
        );
        let quotas = from_cluster(&state);
        let values: Vec<_> = quotas.entries().collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].0, &entity);
        assert_eq!(values[0].1["request_percentage"], 12.5);
        // The state survives its own serialization (raft snapshots) unchanged.
        let bytes = serde_json::to_vec(&state).expect("encode");
        let back: ClusterState = serde_json::from_slice(&bytes).expect("decode");
        assert_eq!(from_cluster(&back), quotas);
        state.apply(
            2,
            &Command::SetClientQuotas {
                entity: encode_entity(&entity),
                ops: vec![
                    ("producer_byte_rate".into(), None),
                    ("request_percentage".into(), None),
                ],
            },
        );
        assert!(state.client_quotas.is_empty());
        assert!(from_cluster(&state).is_empty());
    }

    #[test]
    fn the_local_metadata_log_replays_quotas() {
        use crate::metadata::log::{MetadataLog, MetadataRecord};
        let dir = tempfile::tempdir().expect("tempdir");
        let entity = QuotaEntity {
            user: Some(EntityName::Named("alice".into())),
            client_id: None,
        };
        {
            let (mut log, snapshot) = MetadataLog::open(dir.path()).expect("open");
            assert!(snapshot.client_quotas.is_empty());
            for (key, value) in [
                ("producer_byte_rate", Some(1000.0)),
                ("consumer_byte_rate", Some(2000.0)),
                ("producer_byte_rate", None),
            ] {
                log.append(&MetadataRecord::ClientQuota {
                    entity: entity.clone(),
                    key: key.into(),
                    value,
                })
                .expect("append");
            }
        }
        let (_, snapshot) = MetadataLog::open(dir.path()).expect("reopen");
        let entries: Vec<_> = snapshot.client_quotas.entries().collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, &entity);
        assert_eq!(entries[0].1.len(), 1);
        assert_eq!(entries[0].1["consumer_byte_rate"], 2000.0);
    }
}
