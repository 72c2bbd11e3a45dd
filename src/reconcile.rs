//! Reconciliation: makes the database and the engine agree. It runs once at
//! start, before the service accepts runner requests, and again while the
//! service runs: on a timer and for each engine event about a runner (died,
//! OOM-killed, removed behind the orchestrator's back).
//!
//! [`plan`] is a pure function of (rows, containers) that says what to do;
//! [`Reconciler`] does it. Keeping the decisions pure keeps every case
//! unit-testable without Docker.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::OrphanPolicy;
use crate::db::{
    Actor, AuditAction, AuditEntry, Db, ObservedRunner, RunnerKind, RunnerRow, RunnerState,
};
use crate::docker::{Engine, ObservedContainer, RunnerEvent};
use crate::runners::Runners;

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

/// Why a reconcile runs; it decides whether agreeing rows are touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// After a start: every kept runner gets a fresh grace period.
    Startup,
    /// While serving: rows that already agree are left alone.
    Drift,
}

/// Decides, for every row and every container of this instance, what to do.
/// Container removals come first, then row drops, keeps and adoptions.
pub fn plan(
    rows: &[RunnerRow],
    containers: &[ObservedContainer],
    policy: OrphanPolicy,
    purpose: Purpose,
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
            Some(container) if purpose == Purpose::Drift && agrees(row, container) => {}
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

/// How long a create or remove that a killed service sent may still be
/// carried out by the engine after the service died.
const ENGINE_SETTLE: Duration = Duration::from_secs(2);

/// Rows left half-way by a killed service may have an engine request still
/// in flight (the engine finishes a create whose client is gone); looking
/// before it lands would drop a row whose container appears a moment later.
/// Returns how long to wait until the youngest such row is old enough.
fn settle_time(rows: &[RunnerRow], now: DateTime<Utc>) -> Option<Duration> {
    let youngest = rows
        .iter()
        .filter(|row| row.state != RunnerState::Running)
        .filter_map(|row| DateTime::parse_from_rfc3339(&row.updated_at).ok())
        .max()?;
    let age = (now - youngest.with_timezone(&Utc))
        .to_std()
        .unwrap_or_default();
    ENGINE_SETTLE
        .checked_sub(age)
        .filter(|wait| !wait.is_zero())
}

/// A running row that names this container and its port needs nothing.
fn agrees(row: &RunnerRow, container: &ObservedContainer) -> bool {
    row.state == RunnerState::Running
        && row.container_id.as_deref() == Some(container.id.as_str())
        && row.host_port == container.host_port
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

impl Action {
    /// The session an action is about, and whether it is the shared runner.
    fn session(&self) -> (&str, bool) {
        match self {
            Action::RemoveContainer { container, .. } | Action::Adopt { container } => {
                (&container.session_id, container.singleton)
            }
            Action::DropRow { row, .. } | Action::Keep { row, .. } => {
                (&row.session_id, row.kind == RunnerKind::Singleton)
            }
        }
    }
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

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, other: Self) {
        self.kept += other.kept;
        self.adopted += other.adopted;
        self.containers_removed += other.containers_removed;
        self.rows_dropped += other.rows_dropped;
        self.failed += other.failed;
    }
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

/// Applies plans through the runner service, so that reconciling a session
/// while serving takes the same per-session lock as the API and the reaper.
#[derive(Debug, Clone)]
pub struct Reconciler {
    runners: Runners,
    policy: OrphanPolicy,
}

impl Reconciler {
    pub fn new(runners: Runners, policy: OrphanPolicy) -> Self {
        Self { runners, policy }
    }

    pub fn runners(&self) -> &Runners {
        &self.runners
    }

    fn db(&self) -> &Db {
        self.runners.db()
    }

    fn engine(&self) -> &Engine {
        self.runners.engine()
    }

    /// The reconcile at start: nothing else touches runners yet, so the
    /// whole plan is applied without per-session locks.
    pub async fn run_startup(&self) -> anyhow::Result<Summary> {
        self.engine().ensure_runner_network().await?;
        let rows = self.db().all().await?;
        if let Some(wait) = settle_time(&rows, Utc::now()) {
            tracing::info!(
                ?wait,
                "waiting for engine requests of the previous run to settle"
            );
            tokio::time::sleep(wait).await;
        }
        let rows = self.db().all().await?;
        let containers = self.engine().list_runners().await?;
        let actions = plan(&rows, &containers, self.policy, Purpose::Startup);
        let summary = self.apply(actions).await;
        tracing::info!(%summary, rows = rows.len(), containers = containers.len(), "startup reconcile finished");
        Ok(summary)
    }

    /// A reconcile while serving: finds the sessions that disagree, then
    /// re-reads and repairs each under its lock (a request may have changed
    /// it since the first look).
    pub async fn run_drift(&self) -> anyhow::Result<Summary> {
        let rows = self.db().all().await?;
        let containers = self.engine().list_runners().await?;
        let mut sessions: BTreeMap<String, bool> = BTreeMap::new();
        for action in plan(&rows, &containers, self.policy, Purpose::Drift) {
            let (session, singleton) = action.session();
            *sessions.entry(session.to_owned()).or_default() |= singleton;
        }
        let mut summary = Summary::default();
        for (session, singleton) in sessions {
            summary += self.reconcile_session(&session, singleton, None).await?;
        }
        if summary != Summary::default() {
            tracing::info!(%summary, "drift reconcile repaired runners");
        }
        Ok(summary)
    }

    /// Repairs one session after the engine reported its runner stopped or
    /// gone, recording the event in the audit log first.
    pub async fn on_event(&self, event: &RunnerEvent) -> anyhow::Result<Summary> {
        tracing::info!(session_id = %event.session_id, container_id = %event.container_id,
            event = %event.description, "runner container event");
        self.reconcile_session(&event.session_id, event.singleton, Some(event))
            .await
    }

    async fn reconcile_session(
        &self,
        session: &str,
        singleton: bool,
        event: Option<&RunnerEvent>,
    ) -> anyhow::Result<Summary> {
        let _guard = self.runners.lock_session(session, singleton).await;
        let row = self.db().find(session).await?;
        if let (Some(row), Some(event)) = (&row, event) {
            // Only events about the tracked container concern the row; the
            // others are echoes of removals the service itself made.
            if row.container_id.as_deref() == Some(event.container_id.as_str()) {
                let reason = format!("container {}", event.description);
                let entry = AuditEntry {
                    session_id: session,
                    container_id: Some(&event.container_id),
                    actor: Actor::Reconciler,
                    action: AuditAction::EngineEvent,
                    reason: &reason,
                };
                self.db().audit(&entry, Utc::now()).await?;
            }
        }
        let mut containers = self.engine().list_session_runners(session).await?;
        if let Some(event) = event {
            // The engine's container list may still say "running" just after
            // a `die` event; asking for the container itself does not.
            for container in containers.iter_mut().filter(|c| c.id == event.container_id) {
                container.running = self.engine().is_running(&container.id).await?;
            }
        }
        let rows: Vec<RunnerRow> = row.into_iter().collect();
        Ok(self
            .apply(plan(&rows, &containers, self.policy, Purpose::Drift))
            .await)
    }

    /// Carries out a plan. A failed container removal never lets its row be
    /// dropped: the row is kept in `removing` so that the reaper retries.
    pub async fn apply(&self, actions: Vec<Action>) -> Summary {
        let mut summary = Summary::default();
        let mut unremoved: HashSet<String> = HashSet::new();
        for action in actions {
            if let Action::DropRow { row, .. } = &action {
                self.runners.forget_heartbeats(&row.session_id);
            }
            let result = match &action {
                Action::RemoveContainer { container, reason } => {
                    let removed = self.remove_container(container, reason).await;
                    if removed.is_err() {
                        unremoved.insert(container.session_id.clone());
                    }
                    removed.map(|()| {
                        summary.containers_removed += 1;
                        self.runners.metrics().reconcile_action("container_removed");
                    })
                }
                Action::DropRow { row, reason } if unremoved.contains(&row.session_id) => {
                    tracing::warn!(session_id = %row.session_id, reason, "row kept for the reaper: its container could not be removed");
                    self.db()
                        .mark_removing(&row.session_id, None, Utc::now())
                        .await
                        .map(drop)
                        .map_err(Into::into)
                }
                Action::DropRow { row, reason } => self
                    .db()
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
                    .map(|()| {
                        summary.rows_dropped += 1;
                        self.runners.metrics().reconcile_action("row_dropped");
                    })
                    .map_err(Into::into),
                Action::Keep {
                    row,
                    container,
                    reason,
                } => self
                    .record(container, row.kind, row.pooled, AuditAction::Kept, reason)
                    .await
                    .map(|()| {
                        self.runners.track_running(&row.session_id, row.kind);
                        summary.kept += 1;
                        self.runners.metrics().reconcile_action("kept");
                    }),
                Action::Adopt { container } => {
                    let kind = if container.singleton {
                        RunnerKind::Singleton
                    } else {
                        RunnerKind::Session
                    };
                    self.record(
                        container,
                        kind,
                        container.pooled,
                        AuditAction::Adopted,
                        "running runner without a row",
                    )
                    .await
                    .map(|()| {
                        self.runners.track_running(&container.session_id, kind);
                        summary.adopted += 1;
                        self.runners.metrics().reconcile_action("adopted");
                    })
                }
            };
            if let Err(error) = result {
                summary.failed += 1;
                self.runners.metrics().reconcile_action("failed");
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
        self.engine().remove(&container.id).await?;
        tracing::info!(session_id = %container.session_id, container_id = %container.id, reason, "removed runner container");
        let entry = AuditEntry {
            session_id: &container.session_id,
            container_id: Some(&container.id),
            actor: Actor::Reconciler,
            action: AuditAction::ContainerRemoved,
            reason,
        };
        self.db().audit(&entry, Utc::now()).await?;
        Ok(())
    }

    async fn record(
        &self,
        container: &ObservedContainer,
        kind: RunnerKind,
        pooled: bool,
        action: AuditAction,
        reason: &str,
    ) -> anyhow::Result<()> {
        let observed = ObservedRunner {
            pooled,
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
        self.db()
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
            pooled: false,
        }
    }

    fn container(id: &str, session: &str, running: bool, created: i64) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            name: format!("other-{id}"),
            session_id: session.into(),
            running,
            singleton: false,
            pooled: false,
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
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
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
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
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
        let actions = plan(&rows, &[], OrphanPolicy::Adopt, Purpose::Startup);
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
            &plan(&[], &containers, OrphanPolicy::Adopt, Purpose::Startup)[..],
            [Action::Adopt { container }] if container.id == "c1"
        ));
        assert_eq!(
            removed_ids(&plan(
                &[],
                &containers,
                OrphanPolicy::Remove,
                Purpose::Startup
            )),
            ["c1"]
        );
    }

    #[test]
    fn stopped_orphan_is_removed_under_either_policy() {
        let containers = [container("c1", "s", false, 1)];
        for policy in [OrphanPolicy::Adopt, OrphanPolicy::Remove] {
            let actions = plan(&[], &containers, policy, Purpose::Startup);
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
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
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
        let actions = plan(&[], &containers, OrphanPolicy::Adopt, Purpose::Startup);
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
            Purpose::Startup,
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
            Purpose::Startup,
        );
        assert_eq!(removed_ids(&actions), ["c1"]);
        assert!(matches!(actions.last(), Some(Action::DropRow { .. })));

        // Crash before create.
        provisioning.container_name = "never-created".into();
        let actions = plan(&[provisioning], &[], OrphanPolicy::Adopt, Purpose::Startup);
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
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
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
        let actions = plan(
            &[tracked],
            &[kept, second],
            OrphanPolicy::Adopt,
            Purpose::Startup,
        );
        assert_eq!(removed_ids(&actions), ["c2"]);
        assert!(
            !actions
                .iter()
                .any(|action| matches!(action, Action::Adopt { .. }))
        );
    }

    #[test]
    fn startup_waits_only_for_young_unfinished_rows() {
        let now = Utc::now();
        let at =
            |seconds_ago: i64| crate::db::timestamp(now - chrono::Duration::seconds(seconds_ago));
        let mut young = row("young", RunnerState::Provisioning, None);
        young.updated_at = at(0);
        let mut old = row("old", RunnerState::Removing, None);
        old.updated_at = at(10);
        let mut running = row("running", RunnerState::Running, None);
        running.updated_at = at(0);

        let wait = settle_time(&[young, old.clone(), running.clone()], now).unwrap();
        assert!(
            wait > Duration::from_millis(1900) && wait <= ENGINE_SETTLE,
            "{wait:?}"
        );
        assert_eq!(settle_time(&[old, running], now), None);
        assert_eq!(settle_time(&[], now), None);
    }

    #[test]
    fn drift_leaves_agreeing_rows_alone() {
        let rows = [row("s", RunnerState::Running, Some("c1"))];
        let mut containers = [container("c1", "s", true, 1)];
        containers[0].host_port = Some(40000);
        assert!(plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Drift).is_empty());
        assert_eq!(
            plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup).len(),
            1
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
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
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
