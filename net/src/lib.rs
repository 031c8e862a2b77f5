//! Kafka wire protocol for Sluice: request framing with its size limit, request/response
//! headers, the hand-written hot-path codecs (Produce requests, Fetch response framing), and
//! the per-connection loop that answers pipelined requests in order.
//!
//! Owns: bytes on the wire. Must never: look at partitions, storage or cluster state — the
//! broker's handlers do that behind the [`connection::Handler`] trait.
#![deny(missing_docs)]

pub mod budget;
pub mod connection;
pub mod fetch;
pub mod frame;
pub mod header;
pub mod leader_hint;
pub mod produce;
pub mod transport;
pub mod wire;

pub use frame::FrameError;
pub use header::RequestHeader;
pub use wire::{DecodeError, Reader};
