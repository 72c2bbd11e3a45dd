//! The plan: a pure function of (rows, containers) that says what to do for
//! each, so that every case is unit-tested without an engine.

use std::collections::HashMap;

use crate::backend::ObservedRunner;
use crate::config::OrphanPolicy;
use crate::db::{
    Actor, AuditAction, AuditEntry, FoundRunner, RunnerRow, RunnerState, TrackedRunner,
};
use crate::domain::RunnerKind;
use crate::domain::token::{self, TokenKey};

/// What the plan reads of a row: which container it tracks. A startup
/// reconcile plans over whole rows, as it writes them back; a periodic one
/// first looks over [`TrackedRunner`]s, which are cheaper to read.
pub trait Tracks: Clone {
    fn session_id(&self) -> &str;
    fn kind(&self) -> RunnerKind;
    fn state(&self) -> RunnerState;
    fn container_name(&self) -> &str;
    fn container_id(&self) -> Option<&str>;
    fn host_port(&self) -> Option<u16>;
}

macro_rules! tracks {
    ($row:ty) => {
        impl Tracks for $row {
            fn session_id(&self) -> &str {
                &self.session_id
            }
            fn kind(&self) -> RunnerKind {
                self.kind
            }
            fn state(&self) -> RunnerState {
                self.state
            }
            fn container_name(&self) -> &str {
                &self.container_name
            }
            fn container_id(&self) -> Option<&str> {
                self.container_id.as_deref()
            }
            fn host_port(&self) -> Option<u16> {
                self.host_port
            }
        }
    };
}
tracks!(RunnerRow);
tracks!(TrackedRunner);

/// One step towards agreement, about rows of type `R`. Its variants are not
/// boxed: a plan is one short-lived list per reconcile, and boxing would cost
/// an allocation per runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<R = RunnerRow> {
    /// Remove a container that nothing should run.
    RemoveContainer {
        container: ObservedRunner,
        reason: &'static str,
    },
    /// Delete a row whose runner is gone (after its containers are removed).
    DropRow { row: R, reason: &'static str },
    /// Keep a row and its running container; refresh its port and grace.
    Keep {
        row: R,
        container: ObservedRunner,
        reason: &'static str,
    },
    /// Take a running container without a row into the database.
    Adopt { container: ObservedRunner },
}

/// Why a reconcile runs; it decides whether agreeing rows are touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// After a start: every kept runner gets a fresh grace period.
    Startup,
    /// While serving: rows that already agree are left alone.
    Drift,
}

/// The reason given for a runner whose node (Swarm) is down or unreachable.
pub const NODE_LOST: &str = "its node is down or unreachable";

fn on_lost_node(container: &ObservedRunner) -> bool {
    container.node.as_ref().is_some_and(|node| !node.ready)
}

/// Decides, for every row and every container of this instance, what to do.
/// Container removals come first, then row drops, keeps and adoptions.
pub fn plan<R: Tracks>(
    rows: &[R],
    containers: &[ObservedRunner],
    policy: OrphanPolicy,
    purpose: Purpose,
) -> Vec<Action<R>> {
    // A hash map: a plan is made over every runner on each periodic pass,
    // and a tree's lookups made that pass grow faster than the runners.
    let mut by_session: HashMap<&str, Vec<&ObservedRunner>> =
        HashMap::with_capacity(containers.len());
    for container in containers {
        by_session
            .entry(&container.session_id)
            .or_default()
            .push(container);
    }
    let mut removals = Vec::new();
    let mut drops = Vec::new();
    let mut keeps = Vec::new();
    let mut adoptions = Vec::new();
    let mut singleton_taken = rows
        .iter()
        .any(|row| row.kind() == RunnerKind::Singleton && row.state() != RunnerState::Removing);

    for row in rows {
        let candidates = by_session.remove(row.session_id()).unwrap_or_default();
        let kept = match row.state() {
            RunnerState::Removing => None,
            RunnerState::Running | RunnerState::Provisioning => {
                tracked_or_newest_running(row, &candidates)
            }
        };
        for container in &candidates {
            if Some(*container) == kept {
                continue;
            }
            let reason = match (row.state(), kept.is_some(), container.running) {
                (RunnerState::Removing, _, _) => "finishing an interrupted removal",
                (_, true, _) => "duplicate runner for a session",
                (_, false, false) if on_lost_node(container) => NODE_LOST,
                (_, false, false) => "runner container is not running",
                (_, false, true) => "duplicate runner for a session",
            };
            removals.push(Action::RemoveContainer {
                container: (*container).clone(),
                reason,
            });
        }
        match kept {
            Some(container) if purpose == Purpose::Drift && agrees(row, container) => {}
            Some(container) => keeps.push(Action::Keep {
                row: row.clone(),
                container: container.clone(),
                reason: match row.state() {
                    RunnerState::Provisioning => "finishing an interrupted provision",
                    _ => "runner still running after a restart",
                },
            }),
            None => drops.push(Action::DropRow {
                row: row.clone(),
                reason: match (row.state(), candidates.is_empty()) {
                    (RunnerState::Removing, _) => "finishing an interrupted removal",
                    (RunnerState::Provisioning, true) => {
                        "provision interrupted before its container existed"
                    }
                    (_, true) => "runner container is missing",
                    (_, false) if candidates.iter().copied().all(on_lost_node) => NODE_LOST,
                    (_, false) => "runner container is not running",
                },
            }),
        }
    }

    // Containers without a row, by session so that which one of several
    // orphaned shared runners is adopted does not depend on the hash.
    let mut orphans: Vec<(&str, Vec<&ObservedRunner>)> = by_session.into_iter().collect();
    orphans.sort_unstable_by_key(|(session, _)| *session);
    for (_, candidates) in orphans {
        let adopted = match policy {
            OrphanPolicy::Adopt => newest_running(&candidates)
                .filter(|container| !(container.kind == RunnerKind::Singleton && singleton_taken)),
            OrphanPolicy::Remove => None,
        };
        for container in candidates {
            if Some(container) == adopted {
                singleton_taken |= container.kind == RunnerKind::Singleton;
                adoptions.push(Action::Adopt {
                    container: container.clone(),
                });
                continue;
            }
            let reason = match (container.running, policy, adopted.is_some()) {
                (false, _, _) => "stopped runner without a row",
                (true, OrphanPolicy::Remove, _) => {
                    "running runner without a row (ORPHAN_POLICY=remove)"
                }
                (true, _, true) => "duplicate runner for a session",
                (true, _, false) => "second shared runner",
            };
            removals.push(Action::RemoveContainer {
                container: container.clone(),
                reason,
            });
        }
    }

    removals
        .into_iter()
        .chain(drops)
        .chain(keeps)
        .chain(adoptions)
        .collect()
}

/// A running row that names this container and its port needs nothing.
fn agrees(row: &impl Tracks, container: &ObservedRunner) -> bool {
    row.state() == RunnerState::Running
        && row.container_id() == Some(container.id.as_str())
        && row.host_port() == container.host_port
}

/// The container a row names, if it runs; otherwise the newest running one
/// labelled with its session (a row is never kept on a stopped container).
fn tracked_or_newest_running<'a>(
    row: &impl Tracks,
    candidates: &[&'a ObservedRunner],
) -> Option<&'a ObservedRunner> {
    candidates
        .iter()
        .copied()
        .find(|container| {
            container.running
                && (row.container_id() == Some(container.id.as_str())
                    || row.container_name() == container.name)
        })
        .or_else(|| newest_running(candidates))
}

fn newest_running<'a>(candidates: &[&'a ObservedRunner]) -> Option<&'a ObservedRunner> {
    candidates
        .iter()
        .copied()
        .filter(|container| container.running)
        .max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)))
}

/// A running container to record, with its audit line.
pub(super) fn found<'a>(
    container: &'a ObservedRunner,
    kind: RunnerKind,
    pooled: bool,
    token: String,
    action: AuditAction,
    reason: &'a str,
) -> (FoundRunner<'a>, AuditEntry<'a>) {
    let runner = FoundRunner {
        pooled,
        token,
        token_sha256: container
            .token
            .as_ref()
            .map(|labels| labels.sha256.as_str()),
        session_id: &container.session_id,
        kind,
        container_name: &container.name,
        container_id: &container.id,
        host_port: container.host_port,
        network_mode: &container.network_mode,
        node: container.node.as_ref(),
        address: container.address.as_deref(),
        created: container.created,
    };
    let entry = AuditEntry {
        session_id: &container.session_id,
        container_id: Some(&container.id),
        actor: Actor::Reconciler,
        action,
        reason,
    };
    (runner, entry)
}

/// The token an adopted runner's row gets: the one its labels' nonce
/// derives under `key` when their digest says it is that runner's (so its
/// endpoint is the one its client holds), else a fresh one (the first
/// orchestrator's runners, or a key that was lost: the digest in its labels
/// still routes its old host, see [`token::route_keys`]).
pub fn adopted_token(container: &ObservedRunner, key: &TokenKey) -> String {
    container
        .token
        .as_ref()
        .and_then(|labels| key.recover(labels))
        .unwrap_or_else(token::generate)
}

impl<R: Tracks> Action<R> {
    /// The session an action is about, and its kind of runner.
    pub(super) fn session(&self) -> (&str, RunnerKind) {
        match self {
            Action::RemoveContainer { container, .. } | Action::Adopt { container } => {
                (&container.session_id, container.kind)
            }
            Action::DropRow { row, .. } | Action::Keep { row, .. } => {
                (row.session_id(), row.kind())
            }
        }
    }
}
