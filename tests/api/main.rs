//! API tests against a real Docker Engine and real SQLite files.

mod bad_input;
mod browser;
mod concurrency;
mod cors;
mod crash;
mod faults;
mod gateway;
mod heartbeats;
mod helpers;
mod hostile;
mod isolation;
mod lifecycle;
mod operator;
mod reaper;
mod reconcile;
mod restart;
mod signals;
mod singleton;
mod warm_pool;
mod websocket;
