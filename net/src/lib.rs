//! sluice-net (placeholder until its owner lands it).
