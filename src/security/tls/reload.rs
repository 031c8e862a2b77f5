//! Certificate reload without a restart: one thread polls the TLS listeners' keystore and
//! truststore files every `ssl.reload.check.interval.ms` (modification time and length) and
//! swaps in a configuration rebuilt from them; new handshakes use it, established sessions keep
//! theirs. A file that does not load is logged and the previous configuration stays.
//!
//! Owns that thread. Must never run on a shard thread (it reads files) or stop serving because a
//! reload failed.

use std::sync::Arc;
use std::time::Duration;

use super::TlsAcceptor;
use crate::periodic::PeriodicThread;

/// The running reload thread; stopped and joined when dropped.
pub type Reloader = PeriodicThread;

/// Starts polling `acceptors` every `interval`; None when there is nothing to watch or the
/// interval is zero (reload disabled).
pub fn start(acceptors: Vec<Arc<TlsAcceptor>>, interval: Duration) -> Option<Reloader> {
    if acceptors.is_empty() || interval.is_zero() {
        return None;
    }
    let reload = move || {
        reload_all(&acceptors, false);
    };
    match crate::periodic::start("sluice-tls-reload", interval, reload) {
        Ok(thread) => Some(thread),
        Err(error) => {
            tracing::error!(%error, "cannot start the TLS certificate reload thread; certificates are not reloaded");
            None
        }
    }
}

/// Reloads every acceptor whose files changed (all of them with `force`), logging each
/// outcome; returns how many now use a new configuration.
pub fn reload_all(acceptors: &[Arc<TlsAcceptor>], force: bool) -> usize {
    let mut reloaded = 0;
    for acceptor in acceptors {
        match acceptor.reload_if_changed(force) {
            Ok(true) => {
                reloaded += 1;
                tracing::info!(
                    listener = acceptor.listener(),
                    "TLS certificates reloaded; new handshakes use them"
                );
            }
            Ok(false) => {}
            Err(error) => tracing::error!(
                listener = acceptor.listener(),
                %error,
                "TLS certificate reload failed; the previous certificates stay in use"
            ),
        }
    }
    reloaded
}
