//! sluice-client (placeholder until its owner lands it).
