//! sluice-group (placeholder until its owner lands it).
