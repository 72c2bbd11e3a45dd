//! Reconciliation: makes the database and the engine agree. It runs once at
//! start, before the service accepts runner requests, and again while the
//! service runs: on a timer and for each engine event about a runner (died,
//! OOM-killed, removed behind the orchestrator's back).
//!
//! [`plan`] is a pure function of (rows, containers) that says what to do;
//! [`Reconciler`] does it, removing containers through the lifecycle's one
//! removal path and writing its row changes together. Keeping the decisions
//! pure keeps every case unit-testable without Docker.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};

use std::sync::Arc;

use crate::backend::{EngineError, ObservedRunner, RunnerBackend, RunnerEvent, Stop};
use crate::config::OrphanPolicy;
use crate::db::{
    Actor, AuditAction, AuditEntry, Db, DbError, FoundRunner, RowChanges, RunnerRow, RunnerState,
};
use crate::domain::{Route, RunnerKind, Summary, token};
use crate::lifecycle::{Lifecycle, REMOVAL_CONCURRENCY, Removal, lock_key};
use crate::locks::SessionGuard;
use crate::metrics::{Metrics, ReconcileAction};

/// One step towards agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove a container that nothing should run.
    RemoveContainer {
        container: ObservedRunner,
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
pub fn plan(
    rows: &[RunnerRow],
    containers: &[ObservedRunner],
    policy: OrphanPolicy,
    purpose: Purpose,
) -> Vec<Action> {
    let mut by_session: BTreeMap<&str, Vec<&ObservedRunner>> = BTreeMap::new();
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
                    (_, false) if candidates.iter().copied().all(on_lost_node) => NODE_LOST,
                    (_, false) => "runner container is not running",
                },
            }),
        }
    }

    for (_, candidates) in by_session {
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

/// How long a create or remove that a killed service sent may still be
/// carried out by the engine after the service died.
const ENGINE_SETTLE: Duration = Duration::from_secs(2);

/// Rows left half-way by a killed service may have an engine request still
/// in flight (the engine finishes a create whose client is gone); looking
/// before it lands would drop a row whose container appears a moment later.
/// Returns how long until such a row is old enough to look at; `None` for a
/// row that is running or settled.
fn settle_wait(row: &RunnerRow, now: DateTime<Utc>) -> Option<Duration> {
    if row.state == RunnerState::Running {
        return None;
    }
    let updated = DateTime::parse_from_rfc3339(&row.updated_at).ok()?;
    let age = (now - updated.with_timezone(&Utc))
        .to_std()
        .unwrap_or_default();
    ENGINE_SETTLE
        .checked_sub(age)
        .filter(|wait| !wait.is_zero())
}

/// What the startup reconcile leaves for after readiness under one session
/// lock: container removals with the drops of their rows, and unsettled
/// rows to look at once the engine has settled.
#[derive(Debug, Default)]
struct Deferred {
    actions: Vec<Action>,
    unsettled: Vec<(RunnerRow, Duration)>,
}

/// Splits a startup plan into what is applied before the service is ready
/// and the container removals left for later, grouped by session lock.
fn defer_removals(
    actions: Vec<Action>,
    later: &mut BTreeMap<(String, RunnerKind), Deferred>,
) -> Vec<Action> {
    let removing: HashSet<String> = actions
        .iter()
        .filter(|action| matches!(action, Action::RemoveContainer { .. }))
        .map(|action| action.session().0.to_owned())
        .collect();
    let mut now = Vec::new();
    for action in actions {
        let (session, kind) = action.session();
        let deferred = removing.contains(session)
            && matches!(
                action,
                Action::RemoveContainer { .. } | Action::DropRow { .. }
            );
        if deferred {
            let key = (lock_key(session, kind).to_owned(), kind);
            later.entry(key).or_default().actions.push(action);
        } else {
            now.push(action);
        }
    }
    now
}

/// The deferred work of one session lock, with that lock held.
struct Batch {
    guard: SessionGuard,
    work: Deferred,
}

/// Work the startup reconcile left for after readiness. Each batch holds
/// its session's lock from before the service was ready until it is done,
/// so a request for that session waits for the repair instead of seeing it
/// half-way; the rows concerned are out of `running` meanwhile, so their
/// heartbeats answer 404 at once.
pub struct Repairs {
    batches: Vec<Batch>,
}

impl Repairs {
    /// How many containers are known to need removing.
    pub fn removals(&self) -> usize {
        self.batches
            .iter()
            .flat_map(|batch| &batch.work.actions)
            .filter(|action| matches!(action, Action::RemoveContainer { .. }))
            .count()
    }

    /// Carries out the work, `REMOVAL_CONCURRENCY` locks at a time.
    pub async fn run(self, reconciler: &Reconciler) -> Summary {
        let started = tokio::time::Instant::now();
        stream::iter(self.batches)
            .map(|batch| async move {
                let mut summary = reconciler.apply(batch.work.actions).await;
                for (row, wait) in batch.work.unsettled {
                    tokio::time::sleep_until(started + wait).await;
                    summary += reconciler.settle(row).await;
                }
                drop(batch.guard);
                summary
            })
            .buffer_unordered(REMOVAL_CONCURRENCY)
            .fold(Summary::default(), |mut total, summary| async move {
                total += summary;
                total
            })
            .await
    }
}

/// A running row that names this container and its port needs nothing.
fn agrees(row: &RunnerRow, container: &ObservedRunner) -> bool {
    row.state == RunnerState::Running
        && row.container_id.as_deref() == Some(container.id.as_str())
        && row.host_port == container.host_port
}

/// The container a row names, if it runs; otherwise the newest running one
/// labelled with its session (a row is never kept on a stopped container).
fn tracked_or_newest_running<'a>(
    row: &RunnerRow,
    candidates: &[&'a ObservedRunner],
) -> Option<&'a ObservedRunner> {
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

fn newest_running<'a>(candidates: &[&'a ObservedRunner]) -> Option<&'a ObservedRunner> {
    candidates
        .iter()
        .copied()
        .filter(|container| container.running)
        .max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)))
}

/// A running container to record, with its audit line.
fn found<'a>(
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
        session_id: &container.session_id,
        kind,
        container_name: &container.name,
        container_id: &container.id,
        host_port: container.host_port,
        network_mode: &container.network_mode,
        node: container.node.as_ref(),
        address: container.address.as_deref(),
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

impl Action {
    /// The session an action is about, and its kind of runner.
    fn session(&self) -> (&str, RunnerKind) {
        match self {
            Action::RemoveContainer { container, .. } | Action::Adopt { container } => {
                (&container.session_id, container.kind)
            }
            Action::DropRow { row, .. } | Action::Keep { row, .. } => (&row.session_id, row.kind),
        }
    }
}

/// Why a reconcile could not look at the engine or the database; what it
/// could not repair is counted in its [`Summary`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Unwritten(#[from] Unwritten),
}

/// What the reconciler uses: the records, the engine, the lifecycle's
/// removal path and session locks, and the metrics.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: Db,
    pub backend: Arc<dyn RunnerBackend>,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
}

/// Applies plans under the same per-session locks as the API and the
/// reaper, removing containers through the same path.
#[derive(Debug, Clone)]
pub struct Reconciler {
    context: Context,
    policy: OrphanPolicy,
}

impl Reconciler {
    pub fn new(context: Context, policy: OrphanPolicy) -> Self {
        Self { context, policy }
    }

    fn db(&self) -> &Db {
        &self.context.db
    }

    fn backend(&self) -> &dyn RunnerBackend {
        &*self.context.backend
    }

    fn lifecycle(&self) -> &Lifecycle {
        &self.context.lifecycle
    }

    fn count(&self, action: ReconcileAction) {
        self.context.metrics.reconcile_action(action);
    }

    /// The reconcile at start: nothing else touches runners yet. Rows are
    /// made to agree with the engine at once; container removals are only
    /// prepared (their rows taken out of `running`, their sessions locked)
    /// and handed back as [`Repairs`] to run after the service is ready, so
    /// that a restart never waits for the engine to kill containers.
    pub async fn run_startup(&self) -> Result<(Summary, Repairs), ReconcileError> {
        // The engine's list is the slow part (its cost grows with the
        // containers); the rows and the network are asked for meanwhile.
        let started = Instant::now();
        let (network, rows, containers) = tokio::join!(
            self.backend().ensure_network(),
            self.db().all(),
            self.backend().list()
        );
        network?;
        let (rows, containers) = (rows?, containers?);
        let read = started.elapsed();
        let now = Utc::now();
        let mut later: BTreeMap<(String, RunnerKind), Deferred> = BTreeMap::new();
        let mut settled = Vec::with_capacity(rows.len());
        // An unsettled session's containers are looked at later, with its row.
        let mut unsettled: HashSet<&str> = HashSet::new();
        for row in &rows {
            match settle_wait(row, now) {
                Some(wait) => {
                    let key = (lock_key(&row.session_id, row.kind).to_owned(), row.kind);
                    later
                        .entry(key)
                        .or_default()
                        .unsettled
                        .push((row.clone(), wait));
                    unsettled.insert(&row.session_id);
                }
                None => settled.push(row.clone()),
            }
        }
        let visible: Vec<ObservedRunner> = containers
            .iter()
            .filter(|container| !unsettled.contains(container.session_id.as_str()))
            .cloned()
            .collect();
        let actions = plan(&settled, &visible, self.policy, Purpose::Startup);
        let now_actions = defer_removals(actions, &mut later);
        // Rows whose containers are removed later leave `running` now, in
        // the same transaction as the rest, so heartbeats answer 404 at once.
        let removing: Vec<&str> = later
            .values()
            .flat_map(|work| &work.actions)
            .filter_map(|action| match action {
                Action::DropRow { row, .. } => Some(row.session_id.as_str()),
                _ => None,
            })
            .collect();
        // The running set that heartbeats are answered from is made of
        // what this reconcile keeps and adopts, nothing from before. A
        // failed write fails the reconcile, which is then run again.
        self.lifecycle().forget_all_running();
        let summary = self.apply_marking(&now_actions, removing).await?;
        let mut batches = Vec::with_capacity(later.len());
        for ((session, kind), work) in later {
            let guard = self.lifecycle().lock_session(&session, kind).await;
            batches.push(Batch { guard, work });
        }
        let repairs = Repairs { batches };
        // How long the engine's list took against the rest, for operators
        // wondering why a start was slow.
        tracing::info!(%summary, rows = rows.len(), containers = containers.len(),
            removals_left = repairs.removals(), unsettled = unsettled.len(),
            read_ms = millis(read), took_ms = millis(started.elapsed()),
            "startup reconcile finished");
        Ok((summary, repairs))
    }

    /// Looks at a row left half-way once the engine has settled: finishes
    /// its provision if its container runs, undoes it otherwise. The caller
    /// holds the session's lock.
    async fn settle(&self, row: RunnerRow) -> Summary {
        match self.backend().list_session(&row.session_id).await {
            Ok(containers) => {
                let rows = [row];
                self.apply(plan(&rows, &containers, self.policy, Purpose::Startup))
                    .await
            }
            Err(error) => {
                // The row stays unfinished; the drift reconcile retries it.
                tracing::warn!(session_id = %row.session_id, %error, "could not look at an unfinished runner");
                Summary {
                    failed: 1,
                    ..Summary::default()
                }
            }
        }
    }

    /// A reconcile while serving: finds the sessions that disagree, then
    /// re-reads and repairs each under its lock (a request may have changed
    /// it since the first look).
    pub async fn run_drift(&self) -> Result<Summary, ReconcileError> {
        let rows = self.db().all().await?;
        let containers = self.backend().list().await?;
        // A session that any action finds shared is repaired under the shared
        // runner's lock (`Singleton` orders after `Session`).
        let mut sessions: BTreeMap<String, RunnerKind> = BTreeMap::new();
        for action in plan(&rows, &containers, self.policy, Purpose::Drift) {
            let (session, kind) = action.session();
            let entry = sessions.entry(session.to_owned()).or_insert(kind);
            *entry = (*entry).max(kind);
        }
        let results: Vec<_> = stream::iter(sessions)
            .map(
                |(session, kind)| async move { self.reconcile_session(&session, kind, None).await },
            )
            .buffer_unordered(REMOVAL_CONCURRENCY)
            .collect()
            .await;
        let mut summary = Summary::default();
        for result in results {
            summary += result?;
        }
        if summary != Summary::default() {
            tracing::info!(%summary, "drift reconcile repaired runners");
        }
        Ok(summary)
    }

    /// Repairs one session after the engine reported its runner stopped or
    /// gone, recording the event in the audit log first.
    pub async fn on_event(&self, event: &RunnerEvent) -> Result<Summary, ReconcileError> {
        tracing::info!(session_id = %event.session_id, container_id = %event.runner_id,
            event = %event.description, "runner container event");
        self.reconcile_session(&event.session_id, event.kind, Some(event))
            .await
    }

    async fn reconcile_session(
        &self,
        session: &str,
        kind: RunnerKind,
        event: Option<&RunnerEvent>,
    ) -> Result<Summary, ReconcileError> {
        let _guard = self.lifecycle().lock_session(session, kind).await;
        let row = self.db().find(session).await?;
        if let (Some(row), Some(event)) = (&row, event) {
            // Only events about the tracked container concern the row; the
            // others are echoes of removals the service itself made.
            if row.container_id.as_deref() == Some(event.runner_id.as_str()) {
                let reason = format!("container {}", event.description);
                let entry = AuditEntry {
                    session_id: session,
                    container_id: Some(&event.runner_id),
                    actor: Actor::Reconciler,
                    action: AuditAction::EngineEvent,
                    reason: &reason,
                };
                self.db().audit(&entry, Utc::now()).await?;
            }
        }
        let mut containers = self.backend().list_session(session).await?;
        if let Some(event) = event {
            // The engine's container list may still say "running" just after
            // a `die` event; asking for the container itself does not.
            for container in containers.iter_mut().filter(|c| c.id == event.runner_id) {
                container.running = self.backend().is_running(&container.id).await?;
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
        match self.apply_marking(&actions, Vec::new()).await {
            Ok(summary) => summary,
            Err(Unwritten {
                mut summary,
                changes,
                error,
            }) => {
                summary.failed += changes;
                for _ in 0..changes {
                    self.count(ReconcileAction::Failed);
                }
                tracing::error!(%error, changes, "could not write a reconcile's row changes");
                summary
            }
        }
    }

    /// [`Reconciler::apply`], also taking the rows of `removing` out of
    /// `running` in the same transaction. Containers are removed first; then
    /// every row change is written in one transaction.
    async fn apply_marking(
        &self,
        actions: &[Action],
        removing: Vec<&str>,
    ) -> Result<Summary, Unwritten> {
        let mut summary = Summary::default();
        let mut unremoved: HashSet<&str> = HashSet::new();
        let mut changes = RowChanges {
            removing,
            ..RowChanges::default()
        };
        for action in actions {
            match action {
                Action::RemoveContainer { container, reason } => {
                    let removal = Removal {
                        actor: Actor::Reconciler,
                        action: AuditAction::ContainerRemoved,
                        reason,
                        stale_before: None,
                        // Nobody uses a container the reconciler removes (it
                        // is stopped, a duplicate or an orphan): no grace.
                        stop: Stop::Kill,
                    };
                    match self.lifecycle().remove_container(container, removal).await {
                        Ok(()) => summary.containers_removed += 1,
                        Err(error) => {
                            unremoved.insert(&container.session_id);
                            summary.failed += 1;
                            self.count(ReconcileAction::Failed);
                            tracing::error!(?action, %error, "reconcile action failed");
                        }
                    }
                }
                Action::DropRow { row, reason } => {
                    self.lifecycle().forget_heartbeats(&row.session_id);
                    if unremoved.contains(row.session_id.as_str()) {
                        tracing::warn!(session_id = %row.session_id, reason, "row kept for the reaper: its container could not be removed");
                        changes.removing.push(&row.session_id);
                    } else {
                        changes.dropped.push(AuditEntry {
                            session_id: &row.session_id,
                            container_id: row.container_id.as_deref(),
                            actor: Actor::Reconciler,
                            action: AuditAction::Dropped,
                            reason,
                        });
                    }
                }
                Action::Keep {
                    row,
                    container,
                    reason,
                } => changes.observed.push(found(
                    container,
                    row.kind,
                    row.pooled,
                    row.token.clone(),
                    AuditAction::Kept,
                    reason,
                )),
                Action::Adopt { container } => {
                    changes.observed.push(found(
                        container,
                        container.kind,
                        container.pooled,
                        token::generate(),
                        AuditAction::Adopted,
                        "running runner without a row",
                    ));
                }
            }
        }
        match self.db().write_changes(&changes, Utc::now()).await {
            Ok(mut tokens) => {
                summary.rows_dropped += changes.dropped.len();
                for _ in &changes.dropped {
                    self.count(ReconcileAction::RowDropped);
                }
                for (runner, entry) in &changes.observed {
                    let host = runner.node.map(|node| node.host.as_str());
                    let route = tokens
                        .remove(runner.session_id)
                        .and_then(|token| Route::of(token, runner.host_port, host, runner.address));
                    self.lifecycle()
                        .track_running(runner.session_id, runner.kind, route);
                    let kept = entry.action == AuditAction::Kept;
                    if kept {
                        summary.kept += 1;
                    } else {
                        summary.adopted += 1;
                    }
                    self.count(if kept {
                        ReconcileAction::Kept
                    } else {
                        ReconcileAction::Adopted
                    });
                }
            }
            Err(error) => {
                return Err(Unwritten {
                    summary,
                    changes: changes.len(),
                    error,
                });
            }
        }
        Ok(summary)
    }
}

/// A duration in milliseconds, to a hundredth, for log fields.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 100_000.0).round() / 100.0
}

/// A reconcile's row changes that could not be written: what it did before
/// (container removals) and how many changes were lost.
/// (The database's error is in the message, not also a `source`, so that
/// it is said once however the error is printed.)
#[derive(Debug, thiserror::Error)]
#[error("could not write {changes} row changes: {error}")]
pub struct Unwritten {
    summary: Summary,
    changes: usize,
    error: DbError,
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::backend::NetworkMode;
    use crate::domain::SessionId;
    use crate::lifecycle::Provisioned;
    use crate::test_support::Harness;

    #[tokio::test]
    async fn a_runner_killed_behind_the_services_back_is_repaired_from_its_event() {
        let harness = Harness::new(&[]).await;
        let reconciler = harness.reconciler();
        let session = SessionId::parse("s-1").unwrap();
        let provisioned = harness
            .runners
            .provision(Some(session.clone()), &NetworkMode::Default)
            .await
            .unwrap();
        assert!(matches!(provisioned, Provisioned::Created(_)));
        let mut events = harness.backend.events(0);
        let id = harness.backend.runners()[0].id.clone();
        assert!(harness.backend.kill(&id));

        let event = events.next().await.unwrap().unwrap();
        assert_eq!(event.runner_id, id);
        let summary = reconciler.on_event(&event).await.unwrap();
        assert_eq!((summary.containers_removed, summary.rows_dropped), (1, 1));
        assert!(harness.backend.runners().is_empty());
        assert!(harness.db().find("s-1").await.unwrap().is_none());
        let trail = harness.db().audit_trail("s-1").await.unwrap();
        assert!(
            trail
                .iter()
                .any(|record| record.reason == "container die (exit code 137)")
        );
    }

    #[tokio::test]
    async fn the_startup_reconcile_adopts_a_running_orphan() {
        let harness = Harness::new(&[]).await;
        let orphan = harness
            .backend
            .start(&crate::backend::RunnerSpec {
                session_id: "orphan",
                name: "runner-orphan",
                network_mode: &NetworkMode::Default,
                kind: RunnerKind::Singleton,
                pooled: false,
            })
            .await
            .unwrap();
        let reconciler = harness.reconciler();
        let (summary, repairs) = reconciler.run_startup().await.unwrap();
        assert_eq!((summary.adopted, repairs.removals()), (1, 0));
        let row = harness.db().find("orphan").await.unwrap().unwrap();
        assert_eq!(row.kind, RunnerKind::Singleton);
        assert_eq!(row.container_id, Some(orphan.id));
        assert_eq!(row.host_port, orphan.host_port);
        // An adopted runner gets a token, and the gateway a route to it.
        assert!(crate::domain::token::is_token(&row.token), "{row:?}");
        let routes = harness.service.heartbeats.running();
        let address = routes.visit(&row.token, Utc::now()).unwrap();
        assert_eq!(
            address.to_string(),
            format!("127.0.0.1:{}", row.host_port.unwrap())
        );
        // Kept by the next start: the same token.
        let (summary, _) = reconciler.run_startup().await.unwrap();
        assert_eq!(summary.kept, 1);
        let kept = harness.db().find("orphan").await.unwrap().unwrap();
        assert_eq!(kept.token, row.token);
        assert!(routes.visit(&row.token, Utc::now()).is_some());
    }

    fn row(session: &str, state: RunnerState, container: Option<&str>) -> RunnerRow {
        RunnerRow {
            session_id: session.into(),
            kind: RunnerKind::Session,
            state,
            container_name: format!("name-{session}"),
            container_id: container.map(Into::into),
            host_port: Some(40000),
            network_mode: NetworkMode::Default,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            last_heartbeat_at: "2026-01-01T00:00:00.000Z".into(),
            pooled: false,
            node: None,
            node_host: None,
            token: format!("token-{session}"),
        }
    }

    fn container(id: &str, session: &str, running: bool, created: i64) -> ObservedRunner {
        ObservedRunner {
            id: id.into(),
            name: format!("other-{id}"),
            session_id: session.into(),
            running,
            kind: RunnerKind::Session,
            pooled: false,
            host_port: running.then_some(41000),
            network_mode: NetworkMode::Default,
            created,
            node: None,
            address: None,
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
    fn a_runner_on_a_lost_node_is_removed_and_its_row_dropped_naming_the_node() {
        let rows = [row("s", RunnerState::Running, Some("c1"))];
        let mut lost = container("c1", "s", false, 1);
        lost.node = Some(crate::backend::RunnerNode {
            name: "node-3".into(),
            host: "10.0.0.3".into(),
            ready: false,
        });
        let actions = plan(&rows, &[lost], OrphanPolicy::Remove, Purpose::Drift);
        assert_eq!(removed_ids(&actions), ["c1"]);
        let reasons: Vec<&str> = actions
            .iter()
            .map(|action| match action {
                Action::RemoveContainer { reason, .. } | Action::DropRow { reason, .. } => *reason,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(reasons, [NODE_LOST, NODE_LOST]);
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
        kept.kind = RunnerKind::Singleton;
        let mut second = container("c2", "s2", true, 2);
        second.kind = RunnerKind::Singleton;
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
    fn only_young_unfinished_rows_wait_for_the_engine_to_settle() {
        let now = Utc::now();
        let at =
            |seconds_ago: i64| crate::db::timestamp(now - chrono::Duration::seconds(seconds_ago));
        let mut young = row("young", RunnerState::Provisioning, None);
        young.updated_at = at(0);
        let mut old = row("old", RunnerState::Removing, None);
        old.updated_at = at(10);
        let mut running = row("running", RunnerState::Running, None);
        running.updated_at = at(0);

        let wait = settle_wait(&young, now).unwrap();
        assert!(
            wait > Duration::from_millis(1900) && wait <= ENGINE_SETTLE,
            "{wait:?}"
        );
        assert_eq!(settle_wait(&old, now), None);
        assert_eq!(settle_wait(&running, now), None);
    }

    #[test]
    fn startup_defers_container_removals_with_their_rows() {
        let rows = [
            row("kept", RunnerState::Running, Some("k1")),
            row("dead", RunnerState::Running, Some("d1")),
            row("gone", RunnerState::Running, Some("g1")),
        ];
        let containers = [
            container("k1", "kept", true, 1),
            container("k2", "kept", true, 2),
            container("d1", "dead", false, 1),
            container("o1", "orphan", false, 1),
        ];
        let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
        let mut later = BTreeMap::new();
        let now = defer_removals(actions, &mut later);
        // Applied at once: the kept row and the drop of a row without any
        // container; everything that waits for the engine is deferred.
        assert!(
            matches!(&now[..], [Action::DropRow { row, .. }, Action::Keep { .. }] if row.session_id == "gone")
        );
        let deferred: Vec<(&str, usize)> = later
            .iter()
            .map(|((session, _), work)| (session.as_str(), work.actions.len()))
            .collect();
        assert_eq!(deferred, [("dead", 2), ("kept", 1), ("orphan", 1)]);
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
