//! What the API tests and the benchmark share: the runner images, the
//! service binary with its log, the cleanup of an instance's containers,
//! waiting for a condition, and the browser client. Included by both with
//! `#[path]` (they build as separate crates); each uses a part, hence the
//! allowance.
#![allow(dead_code)]

pub mod browser;
pub mod cleanup;
pub mod images;
pub mod netns;
pub mod service;
pub mod tier;
pub mod wait;
