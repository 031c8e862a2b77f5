//! Certificate reload without a restart: one thread polls the TLS listeners' keystore and
//! truststore files every `ssl.reload.check.interval.ms` (modification time and length) and
//! swaps in a configuration rebuilt from them; new handshakes use it, established sessions keep
//! theirs. A file that does not load is logged and the previous configuration stays.
//!
//! Owns that thread. Must never run on a shard thread (it reads files) or stop serving because a
//! reload failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::TlsAcceptor;

/// The running reload thread; stopped and joined when dropped.
pub struct Reloader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Starts polling `acceptors` every `interval`; None when there is nothing to watch or the
/// interval is zero (reload disabled).
pub fn start(acceptors: Vec<Arc<TlsAcceptor>>, interval: Duration) -> Option<Reloader> {
    if acceptors.is_empty() || interval.is_zero() {
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-tls-reload".into())
        .spawn(move || {
            let mut next = Instant::now() + interval;
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100).min(interval));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + interval;
                reload_all(&acceptors, false);
            }
        });
    match thread {
        Ok(thread) => Some(Reloader {
            stop,
            thread: Some(thread),
        }),
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

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
