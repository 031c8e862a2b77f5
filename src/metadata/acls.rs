//! ACL changes (CreateAcls, DeleteAcls) carried to the metadata's writer: on a single broker
//! the controller on shard 0 (one `CreateAcls`/`DeleteAcls` record in the metadata log), in a
//! cluster the active controller of the quorum (one `Command`), so every broker's snapshot
//! gets the same bindings. A delete is resolved to the exact bindings its filters match, and
//! that list is what is stored, so replaying it is deterministic.
//!
//! Owns the routing and the filter resolution; must never authorize (the handler checked
//! ALTER on the cluster) or publish a snapshot itself.

use std::collections::BTreeSet;

use super::controller::AdminError;
use super::log::MetadataRecord;
use super::MetadataSnapshot;
use crate::errors::code;
use crate::security::acl::{AclFilter, AclRecord};
use crate::shard::Shard;
use std::rc::Rc;

/// The bindings each filter matches in `snapshot`, per filter, and all of them once.
pub fn resolve(
    snapshot: &MetadataSnapshot,
    filters: &[AclFilter],
) -> (Vec<Vec<AclRecord>>, Vec<AclRecord>) {
    let mut all = BTreeSet::new();
    let per_filter = filters
        .iter()
        .map(|filter| {
            let matched: Vec<AclRecord> = snapshot
                .acls
                .bindings()
                .iter()
                .filter(|b| filter.matches(b))
                .cloned()
                .collect();
            all.extend(matched.iter().cloned());
            matched
        })
        .collect();
    (per_filter, all.into_iter().collect())
}

/// Adds `bindings` (already validated) durably; answers once this broker's snapshot has them.
pub async fn create(shard: &Rc<Shard>, bindings: Vec<AclRecord>) -> Result<(), AdminError> {
    if shard.metadata.is_clustered() {
        return super::forward::change_acls(shard, bindings, Vec::new()).await;
    }
    on_controller(shard, move |snapshot: &MetadataSnapshot| {
        let new: Vec<AclRecord> = bindings
            .into_iter()
            .filter(|b| !snapshot.acls.bindings().contains(b))
            .collect();
        let record = (!new.is_empty()).then_some(MetadataRecord::CreateAcls { acls: new });
        Ok((record, Vec::new()))
    })
    .await
    .map(|_| ())
}

/// Removes every binding a filter matches; answers with the matches, per filter.
pub async fn delete(
    shard: &Rc<Shard>,
    filters: Vec<AclFilter>,
) -> Result<Vec<Vec<AclRecord>>, AdminError> {
    if shard.metadata.is_clustered() {
        let (per_filter, all) = resolve(&shard.metadata.load(), &filters);
        if !all.is_empty() {
            super::forward::change_acls(shard, Vec::new(), all).await?;
        }
        return Ok(per_filter);
    }
    on_controller(shard, move |snapshot: &MetadataSnapshot| {
        let (per_filter, all) = resolve(snapshot, &filters);
        let record = (!all.is_empty()).then_some(MetadataRecord::DeleteAcls { acls: all });
        Ok((record, per_filter))
    })
    .await
}

async fn on_controller<F>(shard: &Rc<Shard>, change: F) -> Result<Vec<Vec<AclRecord>>, AdminError>
where
    F: FnOnce(
            &MetadataSnapshot,
        ) -> Result<(Option<MetadataRecord>, Vec<Vec<AclRecord>>), AdminError>
        + Send
        + 'static,
{
    let outcome = shard
        .invoke_on(0, move |s| async move {
            match &s.controller {
                Some(controller) => controller.commit_change(&s, change).await,
                None => Err((
                    code::NOT_COORDINATOR,
                    "the metadata controller is not running".to_string(),
                )),
            }
        })
        .await;
    match outcome {
        Ok(result) => result,
        Err(gone) => Err((code::NOT_COORDINATOR, gone.to_string())),
    }
}
