//! sluice-metrics (placeholder until its owner lands it).
