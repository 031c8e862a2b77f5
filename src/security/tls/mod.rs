//! TLS for SSL and SASL_SSL listeners, with rustls: each TLS listener's [`TlsAcceptor`] holds
//! its current rustls configuration (swapped whole when the certificate files change, so new
//! handshakes use the new certificate and sessions already up keep theirs), runs handshakes
//! ([`stream::TlsStream`]) and turns a client certificate into the Kafka principal
//! ([`principal`]).
//!
//! Owns the TLS side of a connection up to an established session with its principal. Must
//! never: serve a TLS listener without a certificate, read files on a shard thread (loading and
//! reloading run at startup and on the reload thread), or let a failed reload replace a working
//! configuration.

pub mod client;
pub mod config;
pub mod principal;
pub mod reload;
pub mod stream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use self::config::TlsSettings;
use self::stream::{HandshakeError, TlsLimits, TlsStream};
use super::Principal;
use crate::runtime::TcpStream;

/// A watched file and what it looked like (modification time, length).
type FileStamp = (PathBuf, Option<(SystemTime, u64)>);

/// One TLS listener's configuration, shared by every shard.
pub struct TlsAcceptor {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
    /// What the watched files looked like when `current` was built.
    stamps: Mutex<Vec<FileStamp>>,
    /// Handshake timeout and write size.
    pub limits: TlsLimits,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("listener", &self.settings.listener)
            .field("client_auth", &self.settings.client_auth)
            .finish()
    }
}

impl TlsAcceptor {
    /// Loads the certificates `settings` name; Err says what is wrong with them.
    pub fn new(settings: TlsSettings, limits: TlsLimits) -> Result<TlsAcceptor, String> {
        let stamps = stamp_files(&settings);
        let current = settings.server_config()?;
        Ok(TlsAcceptor {
            settings,
            current: ArcSwap::new(current),
            stamps: Mutex::new(stamps),
            limits,
        })
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.settings.listener
    }

    /// Rebuilds the configuration from the files if any changed since the last build (or
    /// always, when `force`). Ok(true): a new configuration is in use; Err: the files are
    /// unusable and the old configuration stays.
    pub fn reload_if_changed(&self, force: bool) -> Result<bool, String> {
        let now = stamp_files(&self.settings);
        let mut stamps = self
            .stamps
            .lock()
            .map_err(|_| "reload lock poisoned".to_string())?;
        if !force && *stamps == now {
            return Ok(false);
        }
        // Remember the stamps even when the build fails, so a broken file is reported once,
        // not every poll; fixing it changes the stamps again.
        *stamps = now;
        let config = self.settings.server_config()?;
        self.current.store(config);
        Ok(true)
    }

    /// Runs a handshake on `tcp` with the current configuration; returns the session and the
    /// client's principal (its certificate's subject, or ANONYMOUS without one).
    pub async fn accept(
        &self,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Result<(TlsStream, Principal), HandshakeError> {
        let stream = TlsStream::accept(tcp, peer, self.current.load_full(), self.limits).await?;
        let principal = match stream.peer_leaf_certificate() {
            None => Principal::anonymous(),
            Some(leaf) => match principal::subject_dn(&leaf) {
                Some(dn) => match self.settings.mapping.apply(&dn) {
                    Some(name) => Principal::user(&name),
                    None => {
                        return Err(HandshakeError::Io(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("no ssl.principal.mapping.rules rule applies to {dn}"),
                        )))
                    }
                },
                None => {
                    return Err(HandshakeError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the client certificate's subject cannot be read",
                    )))
                }
            },
        };
        Ok((stream, principal))
    }
}

fn stamp_files(settings: &TlsSettings) -> Vec<FileStamp> {
    settings
        .files()
        .into_iter()
        .map(|path| {
            let stamp = config::file_stamp(&path);
            (path, stamp)
        })
        .collect()
}

/// Every TLS listener's acceptor, for the reload thread.
pub fn acceptors(listeners: &[super::listener::Listener]) -> Vec<Arc<TlsAcceptor>> {
    listeners.iter().filter_map(|l| l.tls.clone()).collect()
}
