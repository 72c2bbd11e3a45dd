//! The reconcile at start: rows are made to agree with the engine before the
//! service is ready; container removals are handed back as [`Repairs`], to
//! run after it is, under the sessions' locks.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};

use super::plan::{Action, Purpose, plan};
use super::{ReconcileError, Reconciler};
use crate::db::{RunnerRow, RunnerState};
use crate::domain::{RunnerKind, Summary};
use crate::lifecycle::{REMOVAL_CONCURRENCY, lock_key};
use crate::locks::SessionGuard;

/// How long a create or remove that a killed service sent may still be
/// carried out by the engine after the service died.
pub(super) const ENGINE_SETTLE: Duration = Duration::from_secs(2);

/// Rows left half-way by a killed service may have an engine request still
/// in flight (the engine finishes a create whose client is gone); looking
/// before it lands would drop a row whose container appears a moment later.
/// Returns how long until such a row is old enough to look at; `None` for a
/// row that is running or settled.
pub(super) fn settle_wait(row: &RunnerRow, now: DateTime<Utc>) -> Option<Duration> {
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
pub(super) struct Deferred {
    pub(super) actions: Vec<Action>,
    unsettled: Vec<(RunnerRow, Duration)>,
}

/// Splits a startup plan into what is applied before the service is ready
/// and the container removals left for later, grouped by session lock.
pub(super) fn defer_removals(
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

impl Reconciler {
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
            self.db().all_unordered(),
            self.backend().list()
        );
        network?;
        let (rows, containers) = (rows?, containers?);
        let read = started.elapsed();
        let (row_count, container_count) = (rows.len(), containers.len());
        let now = Utc::now();
        let mut later: BTreeMap<(String, RunnerKind), Deferred> = BTreeMap::new();
        // An unsettled session's containers are looked at later, with its
        // row. The rows and containers are moved, not copied: at 10,000
        // sessions each copy of them is megabytes of the start's peak.
        let mut unsettled: HashSet<String> = HashSet::new();
        let mut settled = Vec::with_capacity(rows.len());
        for row in rows {
            match settle_wait(&row, now) {
                Some(wait) => {
                    let key = (lock_key(&row.session_id, row.kind).to_owned(), row.kind);
                    unsettled.insert(row.session_id.clone());
                    later.entry(key).or_default().unsettled.push((row, wait));
                }
                None => settled.push(row),
            }
        }
        let mut visible = containers;
        visible.retain(|container| !unsettled.contains(container.session_id.as_str()));
        let actions = plan(&settled, &visible, self.policy, Purpose::Startup);
        drop((settled, visible));
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
        tracing::info!(%summary, rows = row_count, containers = container_count,
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
}

/// A duration in milliseconds, to a hundredth, for log fields.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 100_000.0).round() / 100.0
}
