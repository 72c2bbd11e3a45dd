//! A reconcile's row changes, written in one transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{AuditEntry, Db, DbError, RowChanges, timestamp};
use crate::domain::RunnerKind;

impl Db {
    /// Writes a reconcile's row changes in one transaction: a restart with
    /// hundreds of runners costs one commit, not one each. Recorded runners
    /// get a last heartbeat of at least `now`, so clients whose heartbeats
    /// failed while the service was down get a full grace period. Returns
    /// the token of each recorded runner (a kept row keeps its own) and
    /// the digest its labels carry.
    pub async fn write_changes(
        &self,
        changes: &RowChanges<'_>,
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, (String, Option<String>)>, DbError> {
        if changes.is_empty() {
            return Ok(HashMap::new());
        }
        let now = timestamp(now);
        // A few statements over JSON arrays, not one per runner: statements
        // cost far more than rows here.
        let dropped = json_array(changes.dropped.iter().map(|entry| entry.session_id));
        let removing = json_array(changes.removing.iter().copied());
        let observed = json_array(changes.observed.iter().map(|(runner, _)| {
            ObservedJson {
                session_id: runner.session_id,
                kind: runner.kind,
                container_name: runner.container_name,
                container_id: runner.container_id,
                host_port: runner.host_port,
                network_mode: runner.network_mode.as_stored(),
                pooled: runner.pooled,
                node: runner.node.map(|node| node.name.as_str()),
                node_host: runner.node.map(|node| node.host.as_str()),
                address: runner.address,
                token: &runner.token,
                token_sha256: runner.token_sha256,
                created_at: chrono::DateTime::from_timestamp(runner.created, 0)
                    .filter(|_| runner.created > 0)
                    .map(timestamp),
            }
        }));
        let audit = json_array(
            changes
                .dropped
                .iter()
                .chain(changes.observed.iter().map(|(_, entry)| entry))
                .map(AuditJson::of),
        );
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM runners WHERE session_id IN (SELECT value FROM json_each(?1))")
            .bind(dropped)
            .execute(&mut *transaction)
            .await?;
        sqlx::query(
            "UPDATE runners SET state = 'removing', updated_at = ?1 \
             WHERE session_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(&now)
        .bind(removing)
        .execute(&mut *transaction)
        .await?;
        // A kept row's `pooled` only ever goes down: a row restored from a
        // backup may call warm a runner the engine says was claimed.
        let tokens: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "INSERT INTO runners (session_id, kind, state, container_name, container_id, \
             host_port, network_mode, created_at, updated_at, last_heartbeat_at, pooled, \
             node, node_host, token, token_sha256, address) \
             SELECT value ->> 'session_id', value ->> 'kind', 'running', \
                value ->> 'container_name', value ->> 'container_id', value ->> 'host_port', \
                value ->> 'network_mode', COALESCE(value ->> 'created_at', ?1), ?1, ?1, \
                value ->> 'pooled', \
                value ->> 'node', value ->> 'node_host', value ->> 'token', \
                value ->> 'token_sha256', value ->> 'address' \
             FROM json_each(?2) WHERE true \
             ON CONFLICT (session_id) DO UPDATE SET state = 'running', \
             container_name = excluded.container_name, container_id = excluded.container_id, \
             host_port = excluded.host_port, node = excluded.node, \
             node_host = excluded.node_host, address = excluded.address, updated_at = excluded.updated_at, \
             pooled = MIN(runners.pooled, excluded.pooled), \
             last_heartbeat_at = MAX(runners.last_heartbeat_at, excluded.last_heartbeat_at) \
             RETURNING session_id, token, token_sha256",
        )
        .bind(&now)
        .bind(observed)
        .fetch_all(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (at, session_id, container_id, actor, action, reason) \
             SELECT ?1, value ->> 'session_id', value ->> 'container_id', value ->> 'actor', \
                value ->> 'action', value ->> 'reason' \
             FROM json_each(?2) ORDER BY key",
        )
        .bind(&now)
        .bind(audit)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(tokens
            .into_iter()
            .map(|(session_id, token, labelled)| (session_id, (token, labelled)))
            .collect())
    }
}

/// A JSON array of `items`, for statements over `json_each`: serialised
/// straight from typed values (a `serde_json::Value` per row cost a restart
/// with 10,000 runners about 90 ms).
fn json_array<T: serde::Serialize>(items: impl Iterator<Item = T>) -> String {
    serde_json::to_string(&items.collect::<Vec<_>>()).expect("rows serialise to JSON")
}

/// A recorded runner, as the upsert of [`Db::write_changes`] reads it.
#[derive(serde::Serialize)]
struct ObservedJson<'a> {
    session_id: &'a str,
    kind: RunnerKind,
    container_name: &'a str,
    container_id: &'a str,
    host_port: Option<u16>,
    network_mode: Option<&'a str>,
    pooled: bool,
    node: Option<&'a str>,
    node_host: Option<&'a str>,
    address: Option<&'a str>,
    token: &'a str,
    token_sha256: Option<&'a str>,
    created_at: Option<String>,
}

/// An audit line, as the insert of [`Db::write_changes`] reads it.
#[derive(serde::Serialize)]
struct AuditJson<'a> {
    session_id: &'a str,
    container_id: Option<&'a str>,
    actor: &'static str,
    action: &'static str,
    reason: &'a str,
}

impl<'a> AuditJson<'a> {
    fn of(entry: &'a AuditEntry<'a>) -> Self {
        Self {
            session_id: entry.session_id,
            container_id: entry.container_id,
            actor: entry.actor.as_str(),
            action: entry.action.as_str(),
            reason: entry.reason,
        }
    }
}
