//! The runners' rows through their life: claimed, running, removing, deleted;
//! the warm pool's claims; the reaper's query.

use chrono::{DateTime, Utc};

use super::audit::insert_audit;
use super::{
    Actor, AuditAction, AuditEntry, Claim, Db, DbError, NewRunner, QueryPlan, RunnerRow,
    TrackedRunner, timestamp,
};
use crate::backend::StartedRunner;
use crate::domain::RunnerKind;

/// Every column of a [`RunnerRow`], for `SELECT` and `RETURNING` alike.
macro_rules! runner_columns {
    () => {
        "session_id, kind, state, container_name, container_id, host_port, network_mode, \
         created_at, updated_at, last_heartbeat_at, pooled, node, node_host, token"
    };
}

/// `SELECT` of every runner column followed by the rest of a query, as one
/// static string (sqlx accepts only static SQL without an audit marker).
macro_rules! select_runners {
    ($($rest:literal),+) => {
        concat!(
            "SELECT ",
            runner_columns!(),
            " FROM runners ",
            $($rest),+
        )
    };
}

/// The reaper's query (idle, unfinished, or too old), shared with its
/// `EXPLAIN QUERY PLAN`.
macro_rules! reapable_sql {
    () => {
        select_runners!(
            "WHERE (state = 'running' AND pooled = 0 AND last_heartbeat_at < ?1) \
             OR state = 'removing' \
             OR (state = 'running' AND pooled = 0 AND created_at < ?2)"
        )
    };
}

impl Db {
    pub async fn find(&self, session_id: &str) -> Result<Option<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!("WHERE session_id = ?"))
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(DbError::from)
    }

    pub async fn find_singleton(&self) -> Result<Option<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!("WHERE kind = 'singleton'"))
            .fetch_optional(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// Every row, oldest first: what an operator lists.
    pub async fn all(&self) -> Result<Vec<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!("ORDER BY created_at, session_id"))
            .fetch_all(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// Every row, in no particular order: what a reconcile compares with
    /// the engine. A plain scan of the table, without the sort that
    /// [`Db::all`]'s order costs (it grew faster than the rows).
    pub async fn all_unordered(&self) -> Result<Vec<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!(""))
            .fetch_all(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// What every row tracks, in no particular order: a periodic
    /// reconcile's first look.
    pub async fn all_tracked(&self) -> Result<Vec<TrackedRunner>, DbError> {
        sqlx::query_as(
            "SELECT session_id, kind, state, container_name, container_id, host_port \
             FROM runners",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DbError::from)
    }

    /// Rows the reaper must act on: running ones whose last heartbeat is older
    /// than `cutoff` or that were created before `born_before`, and removals
    /// that did not finish.
    pub async fn reapable(
        &self,
        cutoff: DateTime<Utc>,
        born_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<RunnerRow>, DbError> {
        sqlx::query_as(reapable_sql!())
            .bind(timestamp(cutoff))
            .bind(born_before.map(timestamp))
            .fetch_all(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// SQLite's plan for [`Db::reapable`].
    pub async fn explain_reapable(&self) -> Result<QueryPlan, DbError> {
        let now = timestamp(Utc::now());
        self.explain(reapable_sql!(), &[now.clone(), now]).await
    }

    /// Inserts a `provisioning` row unless the session (or, for the
    /// singleton, any shared runner) already has one, or `limit` rows (when
    /// not 0) already exist. The insert is one statement, and SQLite runs
    /// one writer at a time, so concurrent claims can neither both win nor
    /// overshoot the limit.
    pub async fn claim(
        &self,
        runner: &NewRunner<'_>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Claim, DbError> {
        let now = timestamp(now);
        let inserted = sqlx::query(
            "INSERT INTO runners (session_id, kind, state, container_name, network_mode, \
             created_at, updated_at, last_heartbeat_at, pooled, token, token_sha256) \
             SELECT ?1, ?2, 'provisioning', ?3, ?4, ?5, ?5, ?5, ?7, ?8, ?9 \
             WHERE ?6 = 0 OR (SELECT COUNT(*) FROM runners) < ?6 \
             ON CONFLICT DO NOTHING",
        )
        .bind(runner.session_id.as_str())
        .bind(runner.kind)
        .bind(runner.container_name)
        .bind(runner.network_mode.as_stored())
        .bind(&now)
        .bind(limit)
        .bind(runner.pooled)
        .bind(runner.token)
        .bind(crate::domain::token::digest(runner.token))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        let existing = match runner.kind {
            RunnerKind::Singleton => self.find_singleton().await?,
            RunnerKind::Session => self.find(runner.session_id.as_str()).await?,
        };
        Ok(existing.map_or(Claim::LimitReached, |row| Claim::Existing(Box::new(row))))
    }

    /// The `limit` oldest waiting warm runners, the next to claim first.
    pub async fn next_warm(&self, limit: u32) -> Result<Vec<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!(
            "WHERE pooled = 1 AND state = 'running' ORDER BY created_at LIMIT ?"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(DbError::from)
    }

    /// Hands the warm runners of `session_ids` to clients, those that still
    /// wait, in one transaction (two concurrent claims can never both get
    /// one). Their heartbeat clocks start now. Returns the claimed rows,
    /// in no particular order.
    pub async fn claim_warm(
        &self,
        session_ids: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunnerRow>, DbError> {
        if session_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = timestamp(now);
        let ids = serde_json::to_string(session_ids).expect("strings serialise");
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let claimed: Vec<RunnerRow> = sqlx::query_as(concat!(
            "UPDATE runners SET pooled = 0, updated_at = ?1, last_heartbeat_at = ?1 \
                 WHERE session_id IN (SELECT value FROM json_each(?2)) \
                 AND pooled = 1 AND state = 'running' \
                 RETURNING ",
            runner_columns!()
        ))
        .bind(&now)
        .bind(&ids)
        .fetch_all(&mut *transaction)
        .await?;
        for row in &claimed {
            let entry = AuditEntry {
                session_id: &row.session_id,
                container_id: row.container_id.as_deref(),
                actor: Actor::Api,
                action: AuditAction::ClaimedFromPool,
                reason: "provision without a session id",
            };
            insert_audit(&mut transaction, &now, &entry).await?;
        }
        transaction.commit().await?;
        Ok(claimed)
    }

    /// Warm runners in the pool or on their way there.
    pub async fn count_pooled(&self) -> Result<i64, DbError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM runners WHERE pooled = 1 AND state != 'removing'")
            .fetch_one(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// Records that a claimed runner's container started.
    pub async fn mark_running(
        &self,
        session_id: &str,
        started: &StartedRunner,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let now = timestamp(now);
        let container_id = started.id.as_str();
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "UPDATE runners SET state = 'running', container_id = ?2, host_port = ?3, \
             updated_at = ?4, last_heartbeat_at = ?4, node = ?5, node_host = ?6, address = ?7 \
             WHERE session_id = ?1",
        )
        .bind(session_id)
        .bind(container_id)
        .bind(started.host_port)
        .bind(&now)
        .bind(started.node.as_ref().map(|node| &node.name))
        .bind(started.node.as_ref().map(|node| &node.host))
        .bind(started.address.as_deref())
        .execute(&mut *transaction)
        .await?;
        insert_audit(
            &mut transaction,
            &now,
            &AuditEntry {
                session_id,
                container_id: Some(container_id),
                actor: Actor::Api,
                action: AuditAction::Provisioned,
                reason,
            },
        )
        .await?;
        Ok(transaction.commit().await?)
    }

    /// Moves a runner to `removing` before its container is touched, so that
    /// heartbeats stop counting and a crash leaves a removal to finish.
    /// `stale_before`, when given, makes the move of a running runner
    /// conditional on it still being idle (the reaper must not remove a runner
    /// whose heartbeat arrived after it looked). Unfinished provisions and
    /// removals always move.
    pub async fn mark_removing(
        &self,
        session_id: &str,
        stale_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let updated = sqlx::query(
            "UPDATE runners SET state = 'removing', updated_at = ?3 \
             WHERE session_id = ?1 AND (state IN ('provisioning', 'removing') \
                OR (state = 'running' AND (?2 IS NULL OR last_heartbeat_at < ?2)))",
        )
        .bind(session_id)
        .bind(stale_before.map(timestamp))
        .bind(timestamp(now))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Deletes a runner's row and says why in the audit log, atomically.
    pub async fn delete(&self, entry: &AuditEntry<'_>, now: DateTime<Utc>) -> Result<(), DbError> {
        let now = timestamp(now);
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM runners WHERE session_id = ?")
            .bind(entry.session_id)
            .execute(&mut *transaction)
            .await?;
        insert_audit(&mut transaction, &now, entry).await?;
        Ok(transaction.commit().await?)
    }
}
