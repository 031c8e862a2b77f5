//! The exchange that lets every shard throttle on the broker-wide rate: each
//! `quota.shard.sync.interval.ms`, a shard sends what it recorded since the last exchange to
//! every other shard as a message (see [`super::manager`] for why each shard measures on its
//! own). Must never: block, lock, or send anything when nothing was recorded (a broker with
//! no quota only wakes up to find its pending deltas empty).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::shard::Shard;

/// Runs the exchange of `shard` for as long as the shard runs (spawn it on the shard's
/// thread; a broker with one shard has nobody to tell and needs none).
pub async fn run(shard: Rc<Shard>) {
    let period = Duration::from_millis(shard.config.quotas.shard_sync_interval_ms.max(1));
    loop {
        tokio::time::sleep(period).await;
        send(&shard);
    }
}

/// Sends this shard's pending deltas to every other shard (no reply awaited: a shard that is
/// gone is shutting down, and the deltas only matter to a running one).
pub fn send(shard: &Rc<Shard>) {
    let deltas = shard.quotas.take_outgoing();
    if deltas.is_empty() {
        return;
    }
    let deltas = Arc::new(deltas);
    for target in (0..shard.set.count()).filter(|&target| target != shard.id) {
        let deltas = deltas.clone();
        drop(shard.invoke_on(target, move |other| async move {
            other.quotas.apply_remote(&deltas);
        }));
    }
}
