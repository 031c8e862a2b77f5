//! The crate's typed errors. Owns the error enums; must never drop an `io::Error` source.

use std::io;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A cluster setting is missing or malformed.
    #[error("cluster setting '{setting}': {message}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Disk I/O on the raft log, vote or snapshot failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An earlier write or fdatasync of the raft log failed; the log refuses further writes
    /// until the process restarts, because a retried fsync can report success over lost pages.
    #[error("raft log is poisoned by an earlier failed write or fdatasync")]
    Poisoned,
    /// A stored record or snapshot could not be decoded.
    #[error("corrupt {what}: {message}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// Binding the controller listener failed.
    #[error("cannot listen on {addr} for controller traffic: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

impl ClusterError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
