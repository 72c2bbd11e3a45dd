//! The audit trail: who changed which runner, and why.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Db, DbError, timestamp};

/// Who changed a runner; the `actor` column of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Api,
    Reconciler,
    Reaper,
}

impl Actor {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Actor::Api => "api",
            Actor::Reconciler => "reconciler",
            Actor::Reaper => "reaper",
        }
    }
}

/// What happened to a runner; the `action` column of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Provisioned,
    ProvisionFailed,
    Deprovisioned,
    Reaped,
    /// A row and its running container found at start and kept.
    Kept,
    /// A running labelled container without a row, taken into the database.
    Adopted,
    /// A container removed because nothing should run it (orphan, stopped,
    /// duplicate).
    ContainerRemoved,
    /// A row deleted because its container was gone or not running.
    Dropped,
    /// The engine reported the tracked container died, was OOM-killed or
    /// removed.
    EngineEvent,
    /// A warm runner handed to a client.
    ClaimedFromPool,
    /// The egress rules installed where there were none.
    EgressApplied,
    /// The egress rules put back after they were changed.
    EgressRepaired,
    /// A swarm node without the egress agent: no runner under rules goes
    /// there.
    EgressMissing,
    /// A damaged database moved aside and its rows rebuilt from the engine.
    Rebuilt,
}

impl AuditAction {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AuditAction::Provisioned => "provisioned",
            AuditAction::ProvisionFailed => "provision_failed",
            AuditAction::Deprovisioned => "deprovisioned",
            AuditAction::Reaped => "reaped",
            AuditAction::Kept => "kept",
            AuditAction::Adopted => "adopted",
            AuditAction::ContainerRemoved => "container_removed",
            AuditAction::Dropped => "dropped",
            AuditAction::EngineEvent => "engine_event",
            AuditAction::ClaimedFromPool => "claimed_from_pool",
            AuditAction::EgressApplied => "egress_applied",
            AuditAction::EgressRepaired => "egress_repaired",
            AuditAction::EgressMissing => "egress_missing",
            AuditAction::Rebuilt => "rebuilt",
        }
    }
}

/// One line of the audit trail, as written.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub session_id: &'a str,
    pub container_id: Option<&'a str>,
    pub actor: Actor,
    pub action: AuditAction,
    pub reason: &'a str,
}

/// One line of the audit trail, as read back.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: String,
    pub session_id: String,
    pub container_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub reason: String,
}

impl Db {
    pub async fn audit(&self, entry: &AuditEntry<'_>, now: DateTime<Utc>) -> Result<(), DbError> {
        let mut connection = self.pool.acquire().await?;
        insert_audit(&mut connection, &timestamp(now), entry).await
    }

    pub async fn audit_trail(&self, session_id: &str) -> Result<Vec<AuditRecord>, DbError> {
        sqlx::query_as(
            "SELECT id, at, session_id, container_id, actor, action, reason \
             FROM audit_log WHERE session_id = ? ORDER BY id",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await
        .map_err(DbError::from)
    }
}

pub(super) async fn insert_audit(
    connection: &mut sqlx::SqliteConnection,
    at: &str,
    entry: &AuditEntry<'_>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO audit_log (at, session_id, container_id, actor, action, reason) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(at)
    .bind(entry.session_id)
    .bind(entry.container_id)
    .bind(entry.actor.as_str())
    .bind(entry.action.as_str())
    .bind(entry.reason)
    .execute(connection)
    .await?;
    Ok(())
}
