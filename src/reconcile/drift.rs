//! The reconcile while serving: on a timer (everything that disagrees) and
//! for each engine event (one session), each session re-read and repaired
//! under its lock.

use std::collections::BTreeMap;

use chrono::Utc;
use futures_util::{StreamExt, stream};

use super::plan::{Purpose, plan};
use super::{ReconcileError, Reconciler};
use crate::backend::RunnerEvent;
use crate::db::{Actor, AuditAction, AuditEntry, RunnerRow};
use crate::domain::{RunnerKind, Summary};
use crate::lifecycle::REMOVAL_CONCURRENCY;
use crate::memory;

impl Reconciler {
    /// A reconcile while serving: finds the sessions that disagree, then
    /// re-reads and repairs each under its lock (a request may have changed
    /// it since the first look).
    pub async fn run_drift(&self) -> Result<Summary, ReconcileError> {
        let rows = self.db().all_tracked().await?;
        let containers = self.backend().list().await?;
        // A session that any action finds shared is repaired under the shared
        // runner's lock (`Singleton` orders after `Session`).
        let mut sessions: BTreeMap<String, RunnerKind> = BTreeMap::new();
        for action in plan(&rows, &containers, self.policy, Purpose::Drift) {
            let (session, kind) = action.session();
            let entry = sessions.entry(session.to_owned()).or_insert(kind);
            *entry = (*entry).max(kind);
        }
        // The pass held every row and runner at once; without this the
        // allocator would keep the largest pass's worth of memory for good.
        drop((rows, containers));
        memory::release_freed();
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
}
