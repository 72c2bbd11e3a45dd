//! Startup reconciliation: makes the database and the engine agree before the
//! service accepts a request.
//!
//! [`plan`] is a pure function of (rows, containers) that says what to do;
//! [`Reconciler::apply`] does it. Keeping the decisions pure keeps every case
//! unit-testable without Docker.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono::Utc;

use crate::config::OrphanPolicy;
use crate::db::{
    Actor, AuditAction, AuditEntry, Db, ObservedRunner, RunnerKind, RunnerRow, RunnerState,
};
use crate::docker::{Engine, ObservedContainer};

/// One step towards agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove a container that nothing should run.
    RemoveContainer {
        container: ObservedContainer,
        reason: &'static str,
    },
    /// Delete a row whose runner is gone (after its containers are removed).
    DropRow {
        row: RunnerRow,
        reason: &'static str,
    },
    /// Keep a row and its running container; refresh its port and grace.
    Keep {
        row: RunnerRow,
        container: ObservedContainer,
        reason: &'static str,
    },
    /// Take a running container without a row into the database.
    Adopt { container: ObservedContainer },
}

/// Decides, for every row and every container of this instance, what to do.
/// Container removals come first, then row drops, keeps and adoptions.
pub fn plan(
    rows: &[RunnerRow],
    containers: &[ObservedContainer],
    policy: OrphanPolicy,
) -> Vec<Action> {
    let mut by_session: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
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
        .any(|row| row.kind == RunnerKind::Singleton && row.state != RunnerState::Removing);

    for row in rows {
        let candidates = by_session
            .remove(row.session_id.as_str())
            .unwrap_or_default();
        let kept = match row.state {
            RunnerState::Removing => None,
            RunnerState::Running | RunnerState::Provisioning => {
                tracked_or_newest_running(row, &candidates)
            }
        };
        for container in &candidates {
            if Some(*container) == kept {
                continue;
            }
            let reason = match (row.state, kept.is_some(), container.running) {
                (RunnerState::Removing, _, _) => "finishing an interrupted removal",
                (_, true, _) => "duplicate runner for a session",
                (_, false, false) => "runner container is not running",
                (_, false, true) => "duplicate runner for a session",
            };
            removals.push(Action::RemoveContainer {
                container: (*container).clone(),
                reason,
            });
        }
        match kept {
            Some(container) => keeps.push(Action::Keep {
                row: row.clone(),
                container: container.clone(),
                reason: match row.state {
                    RunnerState::Provisioning => "finishing an interrupted provision",
                    _ => "runner still running after a restart",
                },
            }),
            None => drops.push(Action::DropRow {
                row: row.clone(),
                reason: match (row.state, candidates.is_empty()) {
                    (RunnerState::Removing, _) => "finishing an interrupted removal",
                    (RunnerState::Provisioning, true) => {
                        "provision interrupted before its container existed"
                    }
                    (_, true) => "runner container is missing",
                    (_, false) => "runner container is not running",
                },
            }),
        }
    }

    for (_, candidates) in by_session {
        let adopted = match policy {
            OrphanPolicy::Adopt => newest_running(&candidates)
                .filter(|container| !(container.singleton && singleton_taken)),
            OrphanPolicy::Remove => None,
        };
        for container in candidates {
            if Some(container) == adopted {
                singleton_taken |= container.singleton;
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

/// The container a row names, if it runs; otherwise the newest running one
/// labelled with its session (a row is never kept on a stopped container).
fn tracked_or_newest_running<'a>(
    row: &RunnerRow,
    candidates: &[&'a ObservedContainer],
) -> Option<&'a ObservedContainer> {
    candidates
        .iter()
        .copied()
        .find(|container| {
            container.running
                && (row.container_id.as_deref() == Some(container.id.as_str())
                    || row.container_name == container.name)
        })
        .or_else(|| newest_running(candidates))
}

fn newest_running<'a>(candidates: &[&'a ObservedContainer]) -> Option<&'a ObservedContainer> {
    candidates
        .iter()
        .copied()
        .filter(|container| container.running)
        .max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)))
}

/// What one reconciliation did, for the summary log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub kept: usize,
    pub adopted: usize,
    pub containers_removed: usize,
    pub rows_dropped: usize,
    pub failed: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kept={} adopted={} containers_removed={} rows_dropped={} failed={}",
            self.kept, self.adopted, self.containers_removed, self.rows_dropped, self.failed
        )
    }
}

pub struct Reconciler<'a> {
    pub db: &'a Db,
    pub engine: &'a Engine,
    pub policy: OrphanPolicy,
}

impl Reconciler<'_> {
    /// Reads both sides, plans, and applies the plan.
    pub async fn run(&self) -> anyhow::Result<Summary> {
        let rows = self.db.all().await?;
        let containers = self.engine.list_runners().await?;
        let actions = plan(&rows, &containers, self.policy);
        let summary = self.apply(actions).await;
        tracing::info!(%summary, rows = rows.len(), containers = containers.len(), "startup reconcile finished");
        Ok(summary)
    }

    /// Carries out a plan. A failed container removal never lets its row be
    /// dropped: the row is kept in `removing` so that the reaper retries.
    pub async fn apply(&self, actions: Vec<Action>) -> Summary {
        let mut summary = Summary::default();
        let mut unremoved: HashSet<String> = HashSet::new();
        for action in actions {
            let result = match &action {
                Action::RemoveContainer { container, reason } => {
                    let removed = self.remove_container(container, reason).await;
                    if removed.is_err() {
                        unremoved.insert(container.session_id.clone());
                    }
                    removed.map(|()| summary.containers_removed += 1)
                }
                Action::DropRow { row, reason } if unremoved.contains(&row.session_id) => {
                    tracing::warn!(session_id = %row.session_id, reason, "row kept for the reaper: its container could not be removed");
                    self.db
                        .mark_removing(&row.session_id, None, Utc::now())
                        .await
                        .map(drop)
                        .map_err(Into::into)
                }
                Action::DropRow { row, reason } => self
                    .db
                    .delete(
                        &self.entry(
                            row,
                            AuditAction::Dropped,
                            reason,
                            row.container_id.as_deref(),
                        ),
                        Utc::now(),
                    )
                    .await
                    .map(|()| summary.rows_dropped += 1)
                    .map_err(Into::into),
                Action::Keep {
                    row,
                    container,
                    reason,
                } => self
                    .record(container, row.kind, AuditAction::Kept, reason)
                    .await
                    .map(|()| summary.kept += 1),
                Action::Adopt { container } => {
                    let kind = if container.singleton {
                        RunnerKind::Singleton
                    } else {
                        RunnerKind::Session
                    };
                    self.record(
                        container,
                        kind,
                        AuditAction::Adopted,
                        "running runner without a row",
                    )
                    .await
                    .map(|()| summary.adopted += 1)
                }
            };
            if let Err(error) = result {
                summary.failed += 1;
                tracing::error!(?action, error = %error, "reconcile action failed");
            }
        }
        summary
    }

    async fn remove_container(
        &self,
        container: &ObservedContainer,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.engine.remove(&container.id).await?;
        tracing::info!(session_id = %container.session_id, container_id = %container.id, reason, "removed runner container");
        let entry = AuditEntry {
            session_id: &container.session_id,
            container_id: Some(&container.id),
            actor: Actor::Reconciler,
            action: AuditAction::ContainerRemoved,
            reason,
        };
        self.db.audit(&entry, Utc::now()).await?;
        Ok(())
    }

    async fn record(
        &self,
        container: &ObservedContainer,
        kind: RunnerKind,
        action: AuditAction,
        reason: &str,
    ) -> anyhow::Result<()> {
        let observed = ObservedRunner {
            session_id: &container.session_id,
            kind,
            container_name: &container.name,
            container_id: &container.id,
            host_port: container.host_port,
            network_mode: container.network_mode.as_deref(),
        };
        let entry = AuditEntry {
            session_id: &container.session_id,
            container_id: Some(&container.id),
            actor: Actor::Reconciler,
            action,
            reason,
        };
        self.db
            .record_observed(&observed, &entry, Utc::now())
            .await?;
        Ok(())
    }

    fn entry<'b>(
        &self,
        row: &'b RunnerRow,
        action: AuditAction,
        reason: &'b str,
        container_id: Option<&'b str>,
    ) -> AuditEntry<'b> {
        AuditEntry {
            session_id: &row.session_id,
            container_id,
            actor: Actor::Reconciler,
            action,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(session: &str, state: RunnerState, container: Option<&str>) -> RunnerRow {
        RunnerRow {
            session_id: session.into(),
            kind: RunnerKind::Session,
            state,
            container_name: format!("name-{session}"),
            container_id: container.map(Into::into),
            host_port: Some(40000),
            network_mode: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            last_heartbeat_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn container(id: &str, session: &str, running: bool, created: i64) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            name: format!("other-{id}"),
            session_id: session.into(),
            running,
            singleton: false,
            host_port: running.then_some(41000),
            network_mode: None,
            created,
        }
    }

    fn removed_ids(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::RemoveContainer { container, .. } => Some(container.id.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn row_with_running_container_is_kept_with_the_observed_port() {
        let rows = [row("s", RunnerState::Running, Some("c1"))];
        let containers = [container("c1", "s", true, 1)];
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt);
        assert_eq!(actions.len(), 1);
        let Action::Keep { container, .. } = &actions[0] else {
            panic!("expected keep, got {actions:?}")
        };
        assert_eq!(container.host_port, Some(41000));
    }

    #[test]
    fn row_with_stopped_container_removes_it_then_drops_the_row() {
        let rows = [row("s", RunnerState::Running, Some("c1"))];
        let containers = [container("c1", "s", false, 1)];
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt);
        assert_eq!(removed_ids(&actions), ["c1"]);
        assert!(matches!(
            &actions[1],
            Action::DropRow {
                reason: "runner container is not running",
                ..
            }
        ));
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn row_without_container_is_dropped() {
        let rows = [row("s", RunnerState::Running, Some("c1"))];
        let actions = plan(&rows, &[], OrphanPolicy::Adopt);
        assert!(matches!(
            &actions[..],
            [Action::DropRow {
                reason: "runner container is missing",
                ..
            }]
        ));
    }

    #[test]
    fn running_orphan_is_adopted_or_removed_by_policy() {
        let containers = [container("c1", "s", true, 1)];
        assert!(matches!(
            &plan(&[], &containers, OrphanPolicy::Adopt)[..],
            [Action::Adopt { container }] if container.id == "c1"
        ));
        assert_eq!(
            removed_ids(&plan(&[], &containers, OrphanPolicy::Remove)),
            ["c1"]
        );
    }

    #[test]
    fn stopped_orphan_is_removed_under_either_policy() {
        let containers = [container("c1", "s", false, 1)];
        for policy in [OrphanPolicy::Adopt, OrphanPolicy::Remove] {
            let actions = plan(&[], &containers, policy);
            assert_eq!(removed_ids(&actions), ["c1"]);
            assert_eq!(actions.len(), 1);
        }
    }

    #[test]
    fn duplicates_keep_the_tracked_container() {
        let rows = [row("s", RunnerState::Running, Some("old"))];
        let containers = [
            container("old", "s", true, 1),
            container("new", "s", true, 9),
        ];
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt);
        assert_eq!(removed_ids(&actions), ["new"]);
        assert!(
            matches!(actions.last(), Some(Action::Keep { container, .. }) if container.id == "old")
        );
    }

    #[test]
    fn duplicate_orphans_adopt_the_newest_running_one() {
        let containers = [
            container("a", "s", true, 1),
            container("b", "s", true, 5),
            container("c", "s", false, 9),
        ];
        let actions = plan(&[], &containers, OrphanPolicy::Adopt);
        let mut removed = removed_ids(&actions);
        removed.sort();
        assert_eq!(removed, ["a", "c"]);
        assert!(matches!(actions.last(), Some(Action::Adopt { container }) if container.id == "b"));
    }

    #[test]
    fn interrupted_provision_is_finished_or_undone() {
        // Crash after the container was created and started, before the row
        // said so: the container is found by its deterministic name.
        let mut provisioning = row("s", RunnerState::Provisioning, None);
        let mut started = container("c1", "s", true, 1);
        started.name = provisioning.container_name.clone();
        let actions = plan(
            std::slice::from_ref(&provisioning),
            &[started],
            OrphanPolicy::Adopt,
        );
        assert!(matches!(
            &actions[..],
            [Action::Keep {
                reason: "finishing an interrupted provision",
                ..
            }]
        ));

        // Crash before start: the created container is removed, the row dropped.
        let mut created = container("c1", "s", false, 1);
        created.name = provisioning.container_name.clone();
        let actions = plan(
            std::slice::from_ref(&provisioning),
            &[created],
            OrphanPolicy::Adopt,
        );
        assert_eq!(removed_ids(&actions), ["c1"]);
        assert!(matches!(actions.last(), Some(Action::DropRow { .. })));

        // Crash before create.
        provisioning.container_name = "never-created".into();
        let actions = plan(&[provisioning], &[], OrphanPolicy::Adopt);
        assert!(matches!(
            &actions[..],
            [Action::DropRow {
                reason: "provision interrupted before its container existed",
                ..
            }]
        ));
    }

    #[test]
    fn interrupted_removal_is_finished() {
        let rows = [row("s", RunnerState::Removing, Some("c1"))];
        let containers = [container("c1", "s", true, 1)];
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt);
        assert_eq!(removed_ids(&actions), ["c1"]);
        assert!(matches!(
            actions.last(),
            Some(Action::DropRow {
                reason: "finishing an interrupted removal",
                ..
            })
        ));
    }

    #[test]
    fn at_most_one_shared_runner() {
        let mut tracked = row("s1", RunnerState::Running, Some("c1"));
        tracked.kind = RunnerKind::Singleton;
        let mut kept = container("c1", "s1", true, 1);
        kept.singleton = true;
        let mut second = container("c2", "s2", true, 2);
        second.singleton = true;
        let actions = plan(&[tracked], &[kept, second], OrphanPolicy::Adopt);
        assert_eq!(removed_ids(&actions), ["c2"]);
        assert!(
            !actions
                .iter()
                .any(|action| matches!(action, Action::Adopt { .. }))
        );
    }

    #[test]
    fn removals_come_before_everything_else() {
        let rows = [
            row("a", RunnerState::Running, Some("a1")),
            row("b", RunnerState::Running, None),
        ];
        let containers = [
            container("a1", "a", true, 1),
            container("o1", "orphan", true, 1),
            container("o2", "stopped", false, 1),
        ];
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt);
        let order: Vec<u8> = actions
            .iter()
            .map(|action| match action {
                Action::RemoveContainer { .. } => 0,
                Action::DropRow { .. } => 1,
                Action::Keep { .. } => 2,
                Action::Adopt { .. } => 3,
            })
            .collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }
}
