//! The labels that mark a runner as this instance's, for every backend: on
//! a container, or on a Swarm service and its containers. A restart finds
//! its runners by them and learns what each one is.

use std::collections::HashMap;

use super::RunnerSpec;
use crate::config::{
    DEFAULT_INSTANCE, INSTANCE_LABEL, POOLED_AT_LABEL, POOLED_LABEL, SESSION_LABEL,
    SINGLETON_LABEL, TOKEN_DIGEST_LABEL, TOKEN_NONCE_LABEL,
};
use crate::domain::RunnerKind;
use crate::domain::token::{self, TokenLabels};

/// The labels of `runner`, started by `instance`.
pub fn of(runner: &RunnerSpec<'_>, instance: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (SESSION_LABEL.to_owned(), runner.session_id.to_owned()),
        (INSTANCE_LABEL.to_owned(), instance.to_owned()),
    ]);
    if runner.kind == RunnerKind::Singleton {
        labels.insert(SINGLETON_LABEL.to_owned(), "true".to_owned());
    }
    if runner.pooled {
        labels.insert(POOLED_LABEL.to_owned(), "true".to_owned());
    }
    if let Some(token) = runner.token {
        labels.insert(TOKEN_NONCE_LABEL.to_owned(), token.nonce.clone());
        labels.insert(TOKEN_DIGEST_LABEL.to_owned(), token.sha256.clone());
    }
    labels
}

/// What the labels say about the runner's token, when both are there and
/// have their shapes (runners of the first orchestrator carry neither).
pub fn token_of(labels: &HashMap<String, String>) -> Option<TokenLabels> {
    let nonce = labels.get(TOKEN_NONCE_LABEL)?;
    let sha256 = labels.get(TOKEN_DIGEST_LABEL)?;
    (token::is_nonce(nonce) && token::is_digest(sha256)).then(|| TokenLabels {
        nonce: nonce.clone(),
        sha256: sha256.clone(),
    })
}

/// Runners carry their instance's label; those that carry only the session
/// label were started by the first orchestrator and belong to the default
/// instance.
pub fn owned_by(labels: &HashMap<String, String>, instance: &str) -> bool {
    match labels.get(INSTANCE_LABEL) {
        Some(owner) => owner == instance,
        None => instance == DEFAULT_INSTANCE,
    }
}

/// The kind a runner's labels say it is.
pub fn kind_of(labels: &HashMap<String, String>) -> RunnerKind {
    if labels.get(SINGLETON_LABEL).is_some_and(|v| v == "true") {
        RunnerKind::Singleton
    } else {
        RunnerKind::Session
    }
}

/// The suffix a claimed warm container's name gets when it carries no
/// start for the pool (started by an older version; see
/// [`RunnerBackend::mark_claimed`](crate::backend::RunnerBackend::mark_claimed)).
pub const CLAIMED_SUFFIX: &str = "-claimed";

/// A warm container's start for the pool (see `backend::docker::claims`),
/// when it carries one.
pub fn pooled_at(labels: &HashMap<String, String>) -> Option<i64> {
    labels.get(POOLED_AT_LABEL)?.parse().ok()
}

/// Whether the labels mark a warm-pool runner.
pub fn pooled(labels: &HashMap<String, String>) -> bool {
    labels.get(POOLED_LABEL).is_some_and(|v| v == "true")
}
