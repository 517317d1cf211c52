//! Metrics, logs and access logs.

pub mod access_log;
pub mod authn_metrics;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod trace_context;
