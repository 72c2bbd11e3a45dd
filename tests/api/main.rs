//! API tests against a real Docker Engine and real SQLite files.

mod bad_input;
mod concurrency;
mod cors;
mod helpers;
mod lifecycle;
mod reaper;
mod reconcile;
mod restart;
mod singleton;
