//! Carrying out a plan: containers removed through the lifecycle's one
//! removal path, then every row change written in one transaction, with
//! its audit entries and metrics.

use std::collections::HashSet;

use chrono::Utc;

use super::Reconciler;
use super::plan::{Action, adopted_token, found};
use crate::backend::Stop;
use crate::db::{Actor, AuditAction, AuditEntry, DbError, RowChanges};
use crate::domain::{Route, Summary, token};
use crate::lifecycle::Removal;
use crate::metrics::ReconcileAction;

impl Reconciler {
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
    pub(super) async fn apply_marking(
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
                    // A row restored from a backup may call a runner warm
                    // that the engine's claim record says was handed out.
                    row.pooled && container.pooled,
                    row.token.clone(),
                    AuditAction::Kept,
                    reason,
                )),
                Action::Adopt { container } => {
                    changes.observed.push(found(
                        container,
                        container.kind,
                        container.pooled,
                        adopted_token(container, self.lifecycle().token_key()),
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
                        .and_then(|(token, labelled)| {
                            let keys = token::route_keys(&token, labelled.as_deref());
                            Route::of(keys, runner.host_port, host, runner.address)
                        });
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
