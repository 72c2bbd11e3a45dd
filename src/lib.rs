//! The Taylored Snippets runner orchestrator: provisions one Docker runner per
//! browser session, keeps its record in SQLite, and survives restarts.

pub mod backend;
pub mod backup;
pub mod capacity;
pub mod config;
pub mod db;
pub mod domain;
pub mod drift;
pub mod egress;
#[cfg(test)]
mod fast_tier;
pub mod gateway;
pub mod healthcheck;
pub mod heartbeats;
pub mod http;
pub mod keys;
pub mod lifecycle;
pub mod locks;
pub mod memory;
pub mod metrics;
pub mod operator;
pub mod readiness;
pub mod reaper;
pub mod reconcile;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod startup;
pub mod supervise;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod warm_pool;
